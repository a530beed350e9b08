"""Settings: arguments and environment, validated once into a frozen value."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import urlsplit

from loopstat import tags as _tags

DEFAULT_HOST = "localhost"
# The Datadog Agent's and Etsy statsd's port (aiodogstatsd's own default is 9125).
DEFAULT_PORT = 8125
DEFAULT_PREFIX = "loopstat"
DEFAULT_INTERVAL = 0.25
# asyncio's own slow_callback_duration.
DEFAULT_STALL_THRESHOLD = 0.1
FLAVORS = ("dogstatsd", "statsd")

# DogStatsD's guidance for UDP: larger datagrams may be fragmented or dropped.
MAX_DATAGRAM = 1432
# Longest metric suffix, value and type loopstat writes after the prefix,
# with room to spare: ".executor.threads:" + 24-character value + "|ms|#".
_LINE_OVERHEAD = 64
# Datadog metric names are at most 200 characters.
MAX_PREFIX_LENGTH = 200 - len(".executor.threads")

_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_PREFIX_FORM = (
    "a letter followed by letters, digits, '_' and single '.' separators "
    f"(^[A-Za-z][A-Za-z0-9_.]*$, no empty segment, at most {MAX_PREFIX_LENGTH} characters), or ''"
)


@dataclass(frozen=True)
class Settings:
    """Everything a monitor needs, resolved from arguments and environment."""

    host: str
    port: int
    prefix: str
    tags: Tuple[Tuple[str, str], ...]
    interval: float
    flavor: str
    #: Seconds without progress that make a stall; None: no stall watchdog.
    stall_threshold: Optional[float] = DEFAULT_STALL_THRESHOLD
    utilization: bool = True
    executor: bool = True
    gc: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _env(environ: Mapping[str, str], name: str) -> Optional[str]:
    # Deployment templates often export a variable as "" to mean "not set".
    value = environ.get(name, "").strip()
    return value or None


def _port(value: object, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{source}: {value!r} is not a port; expected an integer in 1..65535")
    return value


def _env_port(text: str, variable: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{variable}: {text!r} is not a port; expected an integer in 1..65535")
    return _port(int(text), variable)


def _host(value: object, source: str) -> str:
    if not isinstance(value, str) or not value or value != value.strip() or len(value) > 253:
        raise ValueError(f"{source}: {value!r} is not a host; expected a host name or IP address")
    return value


def _prefix(value: object, source: str) -> str:
    if not isinstance(value, str) or (value and (len(value) > MAX_PREFIX_LENGTH or not _PREFIX.fullmatch(value))):
        raise ValueError(f"{source}: {value!r} is not a valid prefix; expected {_PREFIX_FORM}")
    return value


def _seconds(value: object, name: str, off: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: {value!r} is not valid; expected a finite number of seconds > 0{off}")
    return float(value)


def _stall_threshold(value: object) -> Optional[float]:
    return None if value is None else _seconds(value, "stall_threshold", ", or None to turn it off")


def _switch(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: {value!r} is not valid; expected True or False")
    return value


def _flavor(value: object) -> str:
    if value not in FLAVORS:
        raise ValueError(f"flavor: {value!r} is not valid; expected 'dogstatsd' or 'statsd'")
    assert isinstance(value, str)
    return value


def _url(text: str) -> tuple[Optional[str], Optional[int]]:
    name = "DD_DOGSTATSD_URL"
    parts = urlsplit(text)
    if parts.scheme == "unix":
        raise ValueError(f"{name}: unix:// sockets are not supported yet; use udp://host:port")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "udp" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise ValueError(f"{name}: {text!r} is not valid; expected udp://host:port")
    return parts.hostname, None if port is None else _port(port, name)


def _address(host: object, port: object, environ: Mapping[str, str]) -> tuple[str, int]:
    url = _env(environ, "DD_DOGSTATSD_URL")
    url_host, url_port = _url(url) if url else (None, None)

    if host is not None:
        resolved_host = _host(host, "host")
    elif url_host is not None:
        resolved_host = url_host
    else:
        resolved_host = DEFAULT_HOST
        for name in ("DD_AGENT_HOST", "STATSD_HOST"):
            value = _env(environ, name)
            if value is not None:
                resolved_host = _host(value, name)
                break

    if port is not None:
        resolved_port = _port(port, "port")
    elif url_port is not None:
        resolved_port = url_port
    else:
        resolved_port = DEFAULT_PORT
        for name in ("DD_DOGSTATSD_PORT", "STATSD_PORT"):
            value = _env(environ, name)
            if value is not None:
                resolved_port = _env_port(value, name)
                break
    return resolved_host, resolved_port


def _dogstatsd_tags(explicit: _tags.Tags, environ: Mapping[str, str]) -> _tags.Tags:
    # Highest precedence first, so a key keeps its strongest value and, should
    # the datagram run out of room, the weakest tags are the ones dropped.
    merged = dict(explicit)
    for name, key in (("DD_SERVICE", "service"), ("DD_ENV", "env"), ("DD_VERSION", "version")):
        value = _env(environ, name)
        if value is not None:
            merged.setdefault(key, value)
    for name in ("DD_TAGS", "DATADOG_TAGS"):
        value = _env(environ, name)
        if value is not None:
            for key, tag_value in _tags.parse_env(value, name).items():
                merged.setdefault(key, tag_value)
    return merged


def resolve(
    host: object = None,
    port: object = None,
    *,
    prefix: object = None,
    tags: object = None,
    interval: object = DEFAULT_INTERVAL,
    flavor: object = "dogstatsd",
    stall_threshold: object = DEFAULT_STALL_THRESHOLD,
    utilization: object = True,
    executor: object = True,
    gc: object = False,
    environ: Mapping[str, str],
) -> Settings:
    """Validate arguments, fill the rest from ``environ``; raise ValueError naming what is wrong."""
    checked_interval = _seconds(interval, "interval")
    checked_threshold = _stall_threshold(stall_threshold)
    checked_flavor = _flavor(flavor)
    explicit = _tags.parse(tags)
    resolved_host, resolved_port = _address(host, port, environ)

    if prefix is not None:
        resolved_prefix = _prefix(prefix, "prefix")
    else:
        env_prefix = _env(environ, "STATSD_PREFIX")
        resolved_prefix = DEFAULT_PREFIX if env_prefix is None else _prefix(env_prefix, "STATSD_PREFIX")

    rendered: _tags.Tags = {}
    if checked_flavor == "dogstatsd":
        budget = MAX_DATAGRAM - len(resolved_prefix) - _LINE_OVERHEAD
        rendered = _tags.render(_dogstatsd_tags(explicit, environ), budget)
    elif explicit:
        _tags.log.warning("loopstat: tags are not sent with flavor='statsd'; use flavor='dogstatsd' to send them")

    return Settings(
        host=resolved_host,
        port=resolved_port,
        prefix=resolved_prefix,
        tags=tuple(rendered.items()),
        interval=checked_interval,
        flavor=checked_flavor,
        stall_threshold=checked_threshold,
        utilization=_switch(utilization, "utilization"),
        executor=_switch(executor, "executor"),
        gc=_switch(gc, "gc"),
    )
