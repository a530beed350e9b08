"""The option table: each setting declared once, with its type, default, bounds, variables and doc.

``Settings`` is the table: one field per option. ``install()`` checks its
arguments through it, ``resolve()`` fills the rest from the environment in the
order each row gives, ``loopstat-run`` reads its ``LOOPSTAT_*`` variables and
writes its ``--help`` from it, and the tests check the README's configuration
table and their list of variables against it. Adding an option is one field
here plus the code that uses it (and its ``install()`` parameter).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import socket
import threading
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Generic, List, Literal, Optional, Tuple, TypeVar, get_args

from loopstat import _worker
from loopstat import tags as _tags
from loopstat._metrics import LINE_TAG_ROOM, LONGEST_SUFFIX
from loopstat.tags import show

T = TypeVar("T")
log = logging.getLogger(__name__)

# DogStatsD's guidance for UDP: larger datagrams may be fragmented or dropped.
MAX_DATAGRAM = 1432
# Over a Unix socket nothing fragments; the Agent reads each datagram into a
# buffer of dogstatsd_buffer_size bytes (8192 by default) and cuts what is
# longer, so datadogpy sends up to 8192 bytes there too.
MAX_UNIX_DATAGRAM = 8192
# sun_path holds 108 bytes on Linux, the last one the terminating NUL.
MAX_SOCKET_PATH = 107
# What a line holds after the prefix, besides the monitor's tags: the longest
# metric name, ":", a value of up to 24 characters, "|ms|#", the line's own
# tags, and room to spare.
_LINE_OVERHEAD = LONGEST_SUFFIX + 1 + 24 + len("|ms|#") + LINE_TAG_ROOM + 16
# DogStatsD's origin fields: "|c:" and a container ID (64 hex digits at most,
# or "in-" and a cgroup inode), then "|e:" and the external environment.
MAX_CONTAINER_FIELD = len("|c:") + 64
MAX_EXTERNAL_ENV = 256
ORIGIN_VARIABLE = "DD_ORIGIN_DETECTION_ENABLED"
# Datadog metric names are at most 200 characters.
MAX_PREFIX_LENGTH = 200 - LONGEST_SUFFIX
Flavor = Literal["dogstatsd", "statsd"]
FLAVORS: Tuple[str, ...] = get_args(Flavor)

# At 1 ms the sampler already wakes the loop 1,000 times a second; below it,
# asyncio.sleep() returns at once and the sampler runs on every loop turn.
MIN_INTERVAL = 0.001
# The watchdog wakes every threshold / 10: at 10 ms that is 1,000 times a
# second, and ordinary GC pauses and scheduling noise start to count as stalls.
MIN_STALL_THRESHOLD = 0.01
# A day: anything longer is a mistake rather than a choice, and waits of
# about 1e10 s overflow (threading.Event.wait raises OverflowError).
MAX_SECONDS = 86400.0

DEFAULT_HOST = "localhost"
# The Datadog Agent's and Etsy statsd's port (aiodogstatsd's own default is 9125).
DEFAULT_PORT = 8125
DEFAULT_PREFIX = "loopstat"
DEFAULT_INTERVAL = 0.25
# asyncio's own slow_callback_duration.
DEFAULT_STALL_THRESHOLD = 0.1

URL_VARIABLE = "DD_DOGSTATSD_URL"
# Datadog's unified service tagging, then the pod's id the Kubernetes admission
# controller sets for origin detection (read as datadogpy reads it): each
# variable is one tag.
_TAG_VARIABLES = {
    "DD_SERVICE": "service",
    "DD_ENV": "env",
    "DD_VERSION": "version",
    "DD_ENTITY_ID": "dd.internal.entity_id",
}


class Kind(Generic[T]):
    """How one type of setting is checked, as an argument and as environment text."""

    #: The type, as the docs name it.
    type_doc = ""

    def accepted(self) -> str:
        """What an argument may be, for errors and docs."""
        raise NotImplementedError

    def accepted_text(self) -> str:
        """What a variable may hold, for errors and ``--help``."""
        return self.accepted()

    def as_text(self, value: Any) -> str:
        """``value`` as a variable would hold it."""
        return str(value)

    def check(self, value: object, source: str) -> T:
        """The checked value of an argument; ValueError naming ``source`` and the accepted form."""
        raise NotImplementedError

    def parse(self, text: str, source: str) -> object:
        """An ``install()`` argument from a variable's text; ValueError naming the variable."""
        return self.check(text, source)

    def _bad(self, value: object, source: str, why: str = "is not valid", text: bool = False) -> ValueError:
        named = f"{source}: " if source else ""
        return ValueError(f"{named}{show(value)} {why}; expected {self.accepted_text() if text else self.accepted()}")


class Seconds(Kind[Optional[float]]):
    """A finite number of seconds within bounds; ``off`` also allows None (the feature off)."""

    type_doc = "float (seconds)"
    # Plain decimal notation only: float() would also take "1_0", "nan" and non-ASCII digits.
    _NUMBER = re.compile(r"\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
    _OFF = ("off", "none", "0")

    def __init__(self, minimum: float, maximum: float = MAX_SECONDS, off: bool = False) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.off = off

    def _range(self) -> str:
        return f"a finite number of seconds from {self.minimum:g} to {self.maximum:g}"

    def accepted(self) -> str:
        return self._range() + (", or None to turn it off" if self.off else "")

    def accepted_text(self) -> str:
        return self._range() + (", or 'off'" if self.off else "")

    def as_text(self, value: Any) -> str:
        return "off" if value is None else f"{value:g}"

    def check(self, value: object, source: str) -> Optional[float]:
        if value is None and self.off:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(value, source)
        # A float must be finite; an int small enough for a float (float(10**400) raises).
        finite = math.isfinite(value) if isinstance(value, float) else value.bit_length() <= 64
        if not finite:
            raise self._bad(value, source)
        if not self.minimum <= value <= self.maximum:
            raise self._bad(value, source, "is out of range")
        return float(value)

    def parse(self, text: str, source: str) -> Optional[float]:
        if self.off and text.lower() in self._OFF:
            return None
        number = float(text) if self._NUMBER.fullmatch(text) else math.nan
        if not math.isfinite(number):
            raise self._bad(text, source, text=True)
        if not self.minimum <= number <= self.maximum:
            raise self._bad(text, source, "is out of range", text=True)
        return number


class Port(Kind[int]):
    """A UDP port number; ``any_port`` also allows 0 (listen on any free port)."""

    type_doc = "int"

    def __init__(self, any_port: bool = False) -> None:
        self.lowest = 0 if any_port else 1

    def accepted(self) -> str:
        return f"an integer in {self.lowest}..65535" + (" (0: any free port)" if self.lowest == 0 else "")

    def check(self, value: object, source: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(value, source, "is not a port")
        if not self.lowest <= value <= 65535:
            raise self._bad(value, source, "is out of range")
        return value

    def parse(self, text: str, source: str) -> int:
        # ASCII digits only: int() takes "²"-like digits of any script, and raises
        # its own message past 4,300 digits.
        if not re.fullmatch(r"[0-9]+", text):
            raise self._bad(text, source, "is not a port")
        if len(text.lstrip("0")) > 5 or not self.lowest <= int(text) <= 65535:
            raise self._bad(text, source, "is out of range")
        return int(text)


class Host(Kind[str]):
    """A host name or an IP address, as the sink can resolve and connect to it."""

    type_doc = "str"
    # Letters (IDN names included), digits, "-", "_" (container names) and dots.
    _NAME = re.compile(r"[\w-]{1,63}(?:\.[\w-]{1,63})*\.?")

    def accepted(self) -> str:
        return "a host name or IP address (at most 253 characters; IPv6 without brackets or %zone)"

    def check(self, value: object, source: str) -> str:
        if not isinstance(value, str):
            raise self._bad(value, source, "is not a host")
        if "%" in value:
            raise self._bad(value, source, "is a scoped IPv6 address, which loopstat cannot send to")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if len(value) > 253 or not self._NAME.fullmatch(value):
                name, colon, port = value.rpartition(":")
                if colon and port.isdigit() and self._NAME.fullmatch(name):
                    raise self._bad(value, source, "is not a host (the port is a setting of its own)") from None
                raise self._bad(value, source, "is not a host") from None
        return value


class Prefix(Kind[str]):
    """A metric prefix: a dotted name that keeps metric names within Datadog's limit."""

    type_doc = "str"
    _FORM = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")

    def accepted(self) -> str:
        return "'' or " + self.accepted_text()

    def accepted_text(self) -> str:
        return f"a letter, then letters, digits, '_' and single '.' separators (at most {MAX_PREFIX_LENGTH} characters)"

    def check(self, value: object, source: str) -> str:
        if not isinstance(value, str) or (
            value and (len(value) > MAX_PREFIX_LENGTH or not self._FORM.fullmatch(value))
        ):
            raise self._bad(value, source, "is not a valid prefix")
        return value


class Choice(Kind[str]):
    """One of a few words."""

    type_doc = "str"

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def accepted(self) -> str:
        return " or ".join(repr(choice) for choice in self.choices)

    def check(self, value: object, source: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self._bad(value, source)
        return value


class Switch(Kind[Any]):
    """On or off; with ``auto``, also None: loopstat decides, loop by loop."""

    _TRUE = ("1", "true", "yes", "on")
    _FALSE = ("0", "false", "no", "off")

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto
        self.type_doc = "bool or None" if auto else "bool"

    def accepted(self) -> str:
        return "True, False or None (auto)" if self.auto else "True or False"

    def accepted_text(self) -> str:
        return "1 or 0 (true/false, yes/no, on/off)" + (", or auto" if self.auto else "")

    def as_text(self, value: Any) -> str:
        return "auto" if value is None else "1" if value else "0"

    def check(self, value: object, source: str) -> Optional[bool]:
        if value is None and self.auto:
            return None
        if not isinstance(value, bool):
            raise self._bad(value, source)
        return value

    def parse(self, text: str, source: str) -> Optional[bool]:
        word = text.lower()
        if word == "auto" and self.auto:
            return None
        if word not in self._TRUE + self._FALSE:
            raise self._bad(text, source, text=True)
        return word in self._TRUE


class TagList(Kind[_tags.Tags]):
    """Tags: checked here, merged and made safe for the wire by ``tags.render``."""

    type_doc = "mapping or iterable"

    def accepted(self) -> str:
        return _tags.ACCEPTED

    def accepted_text(self) -> str:
        return '"key:value" or "key" items separated by commas or spaces'

    def as_text(self, value: Any) -> str:
        return _tags.joined(value) or "none"

    def check(self, value: object, source: str) -> _tags.Tags:
        return _tags.parse(value, source)

    def parse(self, text: str, source: str) -> List[str]:
        if source in _TAG_VARIABLES:
            return [f"{_TAG_VARIABLES[source]}:{text}"]
        return _tags.split_env(text, source)


#: Unix socket schemes, as Datadog's clients read them: the socket type each asks for.
UNIX_SCHEMES = {"unix": "auto", "unixgram": "datagram", "unixstream": "stream"}
SocketKind = Literal["auto", "datagram", "stream"]


def socket_kind(socket_path: str) -> Tuple[SocketKind, str]:
    """The socket type and file of a checked ``socket_path``: a bare path or ``unix://`` is ``auto``.

    ``auto`` (as datadogpy and datadog-go do): a datagram socket, or a stream
    one if the file is a stream socket.
    """
    scheme, sep, rest = socket_path.partition("://")
    if sep and scheme in UNIX_SCHEMES:
        return UNIX_SCHEMES[scheme], rest  # type: ignore[return-value]
    return "auto", socket_path


class SocketPath(Kind[Optional[str]]):
    """The Agent's Unix socket: an absolute path, or ``unix://``, ``unixgram://``, ``unixstream://`` and the path."""

    type_doc = "str or None"

    def accepted(self) -> str:
        return f"None, or {self.accepted_text()}"

    def accepted_text(self) -> str:
        return (
            f"the absolute path of a Unix socket (at most {MAX_SOCKET_PATH} bytes), "
            "or unix://, unixgram:// or unixstream:// and that path"
        )

    def check(self, value: object, source: str) -> Optional[str]:
        if value is None:
            return None
        return self._path(os.fspath(value) if isinstance(value, os.PathLike) else value, source, text=False)

    def parse(self, text: str, source: str) -> str:
        return self._path(text, source, text=True)

    def _path(self, value: object, source: str, text: bool) -> str:
        if isinstance(value, str):
            scheme, sep, rest = value.partition("://")
            if sep and scheme.lower() in UNIX_SCHEMES:
                if not rest.startswith("/"):
                    raise self._bad(value, source, f"has no absolute path (three slashes: {scheme}:///path)", text)
                kind = UNIX_SCHEMES[scheme.lower()]
                try:
                    path = self._file(rest, "", text)
                except ValueError as exc:
                    raise self._bad(value, source, _why(exc, rest), text) from None
                # A bare path means the same as unix://; the other two keep their scheme.
                return path if kind == "auto" else f"{scheme.lower()}://{path}"
        return self._file(value, source, text)

    def _file(self, value: object, source: str, text: bool) -> str:
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise self._bad(value, source, "is not an absolute path", text)
        try:
            size = len(os.fsencode(value))
        except UnicodeError:
            raise self._bad(value, source, "cannot be encoded as a file name", text) from None
        if size > MAX_SOCKET_PATH:
            raise self._bad(value, source, f"is too long ({size} bytes)", text)
        if not hasattr(socket, "AF_UNIX"):
            raise ValueError(f"{source}: Unix sockets are not available on this platform; use host and port")
        return value


class ExternalEnv(Kind[Optional[str]]):
    """The external environment Datadog's admission controller injects (``it-false,cn-web,pu-<pod uid>``)."""

    type_doc = "str or None"
    # Printable ASCII but "|" (which ends a DogStatsD field) and spaces: the characters the admission controller writes.
    _FORM = re.compile(rf"[!-{{}}~]{{1,{MAX_EXTERNAL_ENV}}}")

    def accepted(self) -> str:
        return "None, or " + self.accepted_text()

    def accepted_text(self) -> str:
        return (
            f"up to {MAX_EXTERNAL_ENV} printable ASCII characters but pipes and spaces "
            "(as Datadog's admission controller writes it: it-false,cn-web,pu-{pod UID})"
        )

    def check(self, value: object, source: str) -> Optional[str]:
        if value is None:
            return None
        if not isinstance(value, str) or not self._FORM.fullmatch(value):
            raise self._bad(value, source)
        return value

    def parse(self, text: str, source: str) -> str:
        if not self._FORM.fullmatch(text):
            raise self._bad(text, source, text=True)
        return text


HOST = Host()
PORT = Port()
SOCKET_PATH = SocketPath()


@dataclass(frozen=True)
class Option:
    """One row of the table."""

    name: str
    default: object
    kind: Kind[Any]
    doc: str
    #: install()'s own variables, strongest first.
    env: Tuple[str, ...]
    #: The variable loopstat-run reads it from, if any.
    run: Optional[str]
    #: Its value under loopstat-run when that variable is not set.
    run_default: object


_SAME: Any = object()


def _row(
    default: T,
    kind: Kind[Any],
    doc: str,
    env: Tuple[str, ...] = (),
    run: Optional[str] = None,
    run_default: Any = _SAME,
) -> T:
    run_default = default if run_default is _SAME else run_default
    return field(default=default, metadata={"option": (kind, doc, env, run, run_default)})


@dataclass(frozen=True)
class Settings:
    """Everything a monitor needs, resolved from arguments and environment; each field is one option."""

    host: str = _row(DEFAULT_HOST, HOST, "agent host", (URL_VARIABLE, "DD_AGENT_HOST", "STATSD_HOST"))
    port: int = _row(DEFAULT_PORT, PORT, "agent port", (URL_VARIABLE, "DD_DOGSTATSD_PORT", "STATSD_PORT"))
    #: The Agent's Unix datagram socket; when set, host and port are not used.
    socket_path: Optional[str] = _row(None, SOCKET_PATH, "agent Unix socket, instead of host and port", (URL_VARIABLE,))
    prefix: str = _row(DEFAULT_PREFIX, Prefix(), "metric prefix", ("STATSD_PREFIX",), "LOOPSTAT_PREFIX")
    #: ``(key, value)`` pairs as sent; value "" for a tag without value.
    tags: Tuple[Tuple[str, str], ...] = _row(
        (), TagList(), "tags on every line", (*_TAG_VARIABLES, "DD_TAGS", "DATADOG_TAGS"), "LOOPSTAT_TAGS"
    )
    interval: float = _row(DEFAULT_INTERVAL, Seconds(MIN_INTERVAL), "sample interval", run="LOOPSTAT_INTERVAL")
    flavor: Literal["dogstatsd", "statsd"] = _row("dogstatsd", Choice(*FLAVORS), "line format", run="LOOPSTAT_FLAVOR")
    #: Seconds without progress that make a stall; None: no stall watchdog.
    stall_threshold: Optional[float] = _row(
        DEFAULT_STALL_THRESHOLD,
        Seconds(MIN_STALL_THRESHOLD, off=True),
        "stall threshold: seconds without progress",
        run="LOOPSTAT_STALL_THRESHOLD",
    )
    utilization: bool = _row(True, Switch(), "utilization gauge", run="LOOPSTAT_UTILIZATION")
    executor: bool = _row(True, Switch(), "executor gauges", run="LOOPSTAT_EXECUTOR")
    gc: bool = _row(False, Switch(), "GC pause and collection metrics", run="LOOPSTAT_GC")
    profile: bool = _row(False, Switch(), "where busy time goes: `P.busy` by code site", run="LOOPSTAT_PROFILE")
    #: Tag each process with ``worker:<slot>``, a number its siblings under one parent do not hold.
    worker_tag: bool = _row(
        False,
        Switch(),
        "`worker:<slot>` tag telling apart the processes of a pre-fork server (dogstatsd only)",
        run="LOOPSTAT_WORKER_TAG",
        run_default=True,
    )
    #: None: on for loops without a Python selector (uvloop), where it is cheap and utilization needs it.
    blocking_calls: Optional[bool] = _row(
        None,
        Switch(auto=True),
        "blocking calls on the loop's thread counted and named (auto: on uvloop)",
        run="LOOPSTAT_BLOCKING_CALLS",
    )
    #: Send lag, stall and blocking-time samples as distributions (``d``), not timings (``ms``).
    distributions: bool = _row(
        False,
        Switch(),
        "lag, stall and blocking-time samples as distributions `d`, for percentiles across every pod (dogstatsd only)",
        run="LOOPSTAT_DISTRIBUTIONS",
    )
    #: Append the container ID (``|c:``) and external environment (``|e:``) that tell the Agent the sender's pod.
    origin_detection: bool = _row(
        True,
        Switch(),
        "origin detection: the container ID (from `/proc/self/cgroup`) and the external environment in "
        "DogStatsD's `c:` and `e:` fields, after the tags (dogstatsd only; off for servers other than the "
        "Datadog Agent, such as Etsy statsd)",
        (ORIGIN_VARIABLE,),
    )
    external_env: Optional[str] = _row(
        None,
        ExternalEnv(),
        "external environment, sent in the `e:` field with origin detection (Datadog's admission controller sets it)",
        ("DD_EXTERNAL_ENV",),
    )

    @property
    def address(self) -> str:
        """Where metrics go, for messages: ``host:port``, ``[v6]:port`` or ``unix:///path``."""
        if self.socket_path is not None:
            return self.socket_path if "://" in self.socket_path else f"unix://{self.socket_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: The table, in install()'s order.
OPTIONS: Tuple[Option, ...] = tuple(Option(f.name, f.default, *f.metadata["option"]) for f in fields(Settings))
_BY_NAME = {option.name: option for option in OPTIONS}
#: Every variable install() reads.
VARIABLES: Tuple[str, ...] = tuple(dict.fromkeys(name for option in OPTIONS for name in option.env))
#: Every variable loopstat-run reads for install()'s arguments.
RUN_VARIABLES: Tuple[str, ...] = tuple(option.run for option in OPTIONS if option.run)


def _env(environ: Mapping[str, str], name: str) -> Optional[str]:
    # Deployment templates often export a variable as "" to mean "not set".
    value = environ.get(name, "").strip()
    return value or None


_URL_FORM = (
    "udp://host:port, udp://host (IPv6 in brackets: udp://[::1]:8125), host:port, "
    "unix://, unixgram:// or unixstream:// and an absolute path, or an absolute path"
)


def _url(text: str) -> Dict[str, Any]:
    """Host, port and socket path (each None when left out) from DD_DOGSTATSD_URL, in every form Datadog's clients read.

    ValueError quotes the whole value, whatever part of it is wrong.
    """
    name = URL_VARIABLE

    def bad(why: str = "is not valid") -> ValueError:
        return ValueError(f"{name}: {show(text)} {why}; expected {_URL_FORM}")

    scheme, sep, rest = text.partition("://")
    if text.startswith("/") or (sep and scheme.lower() in UNIX_SCHEMES):
        try:
            # The path as written: a socket file may hold any byte but NUL ("%" and "#" too).
            return {"host": None, "port": None, "socket_path": SOCKET_PATH.parse(text, "")}
        except ValueError as exc:
            raise bad(_why(exc, text)) from None
    if sep and scheme.lower() == "udp":
        netloc = rest
    elif not sep and ":" in text and "/" not in text:
        netloc = text  # host:port, as datadog-go reads it
    else:
        raise bad()
    netloc, slash, _ = netloc.partition("/")
    if slash or any(char in netloc for char in "@?#"):
        raise bad("has a path, user, query or fragment")
    port_text: Optional[str] = None
    if netloc.startswith("["):
        host, bracket, after = netloc[1:].partition("]")
        if not bracket:
            raise bad("has an unclosed '['")
        if after:
            if not after.startswith(":"):
                raise bad()
            port_text = after[1:]
        if "%" not in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise bad("has no IPv6 address in brackets") from None
    else:
        host, colon, port_text_or_host = netloc.rpartition(":")
        if not colon:
            host = netloc
        else:
            port_text = port_text_or_host
        if ":" in host:
            raise bad("has an IPv6 address without brackets")
    # The part named, the whole value quoted: 'udp://agent:81250' has port '81250', which is out of range.
    try:
        port = None if port_text is None else PORT.parse(port_text, "")
    except ValueError as exc:
        raise bad(f"has port {show(port_text)}, which {_why(exc, port_text)}") from None
    try:
        checked = HOST.check(host, "")
    except ValueError as exc:
        raise bad(f"has host {show(host)}, which {_why(exc, host)}") from None
    if not sep and port is None:
        raise bad("has no port (host:port)")
    return {"host": checked, "port": port, "socket_path": None}


def _why(exc: ValueError, value: object) -> str:
    """What a Kind's error says is wrong with ``value``: its message without the value and the accepted form."""
    message = str(exc).split("; expected")[0]
    quoted = show(value) + " "
    return message[len(quoted) :] if message.startswith(quoted) else message


def _shared(variable: str, read: Callable[[], T]) -> Optional[T]:
    """``read()``; None, with one warning, if a shared variable holds what loopstat cannot use.

    Other clients in the process read DD_* and STATSD_* too: a value they take
    and loopstat does not must never stop the application, so loopstat goes
    on with the next source (the next variable, or the default).
    """
    try:
        return read()
    except ValueError as exc:
        log.warning("loopstat: %s; %s is not used", exc, variable)
        return None


def _from_environment(option: Option, environ: Mapping[str, str], url: Optional[Dict[str, Any]]) -> Any:
    """The checked value the first usable variable gives ``option``, or its default."""
    for variable in option.env:
        if variable == URL_VARIABLE:
            value = None if url is None else url[option.name]
            if value is not None:
                return value
            continue
        text = _env(environ, variable)
        if text is None:
            continue
        kind = option.kind
        value = _shared(variable, lambda: kind.check(kind.parse(text, variable), variable))  # noqa: B023
        if value is not None:
            return value
    return option.default


def _tag_sources(explicit: _tags.Tags, environ: Mapping[str, str]) -> List[_tags.Tags]:
    """Explicit tags, then each usable tag variable's, strongest first."""
    option = _BY_NAME["tags"]
    sources = [explicit]
    for variable in option.env:
        text = _env(environ, variable)
        if text is not None:
            kind = option.kind
            tags = _shared(variable, lambda: kind.check(kind.parse(text, variable), variable))  # noqa: B023
            if tags is not None:
                sources.append(tags)
    return sources


_UNSET: Any = object()


def _resolve(arguments: Mapping[str, object], environ: Mapping[str, str]) -> Settings:
    values: Dict[str, Any] = {}
    url_text = _env(environ, URL_VARIABLE)
    url = None if url_text is None else _shared(URL_VARIABLE, lambda: _url(url_text))
    for option in OPTIONS:
        given = arguments.get(option.name, _UNSET)
        if option.name == "tags":
            values["tags"] = [] if given is _UNSET else option.kind.check(given, "tags")
        elif given is _UNSET or (given is None and option.env):
            values[option.name] = _from_environment(option, environ, url)
        else:
            values[option.name] = option.kind.check(given, option.name)

    # host or port given beats DD_DOGSTATSD_URL=unix://, as any argument beats
    # any variable; given together with socket_path, they are a contradiction.
    addressed = [name for name in ("host", "port") if arguments.get(name) is not None]
    if addressed and values["socket_path"] is not None:
        if arguments.get("socket_path") is not None:
            raise ValueError(
                f"socket_path: cannot be combined with {' or '.join(addressed)}; "
                "expected either socket_path or host and port"
            )
        values["socket_path"] = None

    if values["distributions"] and values["flavor"] != "dogstatsd":
        raise ValueError(
            "distributions: True needs flavor='dogstatsd' (StatsD has no distribution type); "
            "expected distributions=False with flavor='statsd'"
        )
    if values["flavor"] == "dogstatsd":
        budget = MAX_DATAGRAM - len(values["prefix"]) - _LINE_OVERHEAD
        if values["worker_tag"]:
            budget -= len(f",{_worker.TAG}:{_worker.MAX_SLOTS - 1}")
        # The origin fields follow the tags: their room is kept whatever container ID is found later.
        if values["origin_detection"]:
            budget -= MAX_CONTAINER_FIELD + (len("|e:") + len(values["external_env"]) if values["external_env"] else 0)
        values["tags"] = tuple(_tags.render(_tag_sources(values["tags"], environ), budget))
    else:
        if values["tags"]:
            _tags.log.warning("loopstat: tags are not sent with flavor='statsd'; use flavor='dogstatsd' to send them")
        values["tags"] = ()
    return Settings(**values)


# Settings already resolved, by arguments and environment: install() called
# again to fetch the running monitor neither checks nor warns again.
_CACHE_SIZE = 64
_resolved: Dict[Hashable, Settings] = {}
_resolved_lock = threading.Lock()


def forget() -> None:
    """Drop the resolved settings kept, so the next resolve() checks and warns afresh (for tests)."""
    with _resolved_lock:
        _resolved.clear()


class _Unhashable(Exception):
    pass


def _scalar(value: object) -> Hashable:
    # The type goes in too: True == 1 == 1.0, but only 1 and 1.0 are valid seconds.
    if value is None or isinstance(value, (str, int, float)):
        return (type(value), value)
    raise _Unhashable


def _frozen(value: object) -> Hashable:
    """``value`` as part of a cache key; one level deep, as no valid argument is deeper."""
    if isinstance(value, Mapping):
        return (Mapping, tuple((_scalar(k), _scalar(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (list, tuple(_scalar(item) for item in value))
    return _scalar(value)


def resolve(host: object = None, port: object = None, *, environ: Mapping[str, str], **arguments: object) -> Settings:
    """Check arguments, fill the rest from ``environ``; raise ValueError naming what is wrong.

    Every option may be passed by name (``prefix=``, ``interval=``, …);
    an option left out, or None where variables are read, comes from the
    environment or the default.
    """
    unknown = sorted(set(arguments) - set(_BY_NAME))
    if unknown:
        raise TypeError(f"resolve() got unexpected keyword arguments: {', '.join(unknown)}")
    arguments.update(host=host, port=port)
    tags = arguments.get("tags")
    if isinstance(tags, Iterable) and not isinstance(tags, (str, bytes, Mapping, list, tuple)):
        arguments["tags"] = list(tags)  # a generator can be read once, and must be for the key
    try:
        key: Optional[Hashable] = (
            tuple((name, _frozen(value)) for name, value in sorted(arguments.items())),
            tuple(environ.get(name) for name in VARIABLES),
        )
    except _Unhashable:
        key = None
    if key is not None:
        with _resolved_lock:
            cached = _resolved.get(key)
        if cached is not None:
            return cached
    settings = _resolve(arguments, environ)
    if key is not None:
        with _resolved_lock:
            if len(_resolved) >= _CACHE_SIZE:
                del _resolved[next(iter(_resolved))]
            _resolved[key] = settings
    return settings


# What the docs add after a variable's name.
_NOTES = {
    URL_VARIABLE: (
        "(`udp://host:port`, `udp://[v6]:port`, `host:port`, `unix:///path`, `unixgram:///path`, "
        "`unixstream:///path`, `/path`)"
    ),
    "DD_VERSION": "(as `service`, `env`, `version`)",
    "DD_ENTITY_ID": "(as `dd.internal.entity_id`)",
}


_NONE = "\N{EN DASH}"


def markdown_table() -> str:
    """The README's configuration table."""
    rows = [
        "| setting | argument | type | accepted | default | environment, in order of precedence | `loopstat-run` |",
        "|---|---|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        env = ", ".join(" ".join(filter(None, (f"`{name}`", _NOTES.get(name)))) for name in option.env)
        default = f"`{option.default!r}`" if option.default != () else "none"
        cells = (
            option.doc,
            f"`{option.name}`",
            option.kind.type_doc,
            option.kind.accepted(),
            default,
            env or _NONE,
            _NONE if not option.run else f"`{option.run}`" + _run_default(option),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _run_default(option: Option) -> str:
    """For the docs: loopstat-run's own default, where it is not install()'s."""
    return "" if option.run_default == option.default else f" (default `{option.run_default!r}`)"


def run_help() -> Dict[str, str]:
    """Each ``LOOPSTAT_*`` variable with what it holds, for ``loopstat-run --help``."""
    return {
        option.run: f"{option.doc}: {option.kind.accepted_text()} (default: {option.kind.as_text(option.run_default)})"
        for option in OPTIONS
        if option.run
    }


def run_defaults() -> Dict[str, Any]:
    """``install()`` arguments loopstat-run passes while their variable is unset: its defaults that differ."""
    return {
        option.name: option.run_default for option in OPTIONS if option.run and option.run_default != option.default
    }


def run_arguments(environ: Mapping[str, str]) -> Dict[str, Any]:
    """``install()`` keyword arguments from the ``LOOPSTAT_*`` variables that are set; ValueError names a bad one."""
    arguments: Dict[str, Any] = {}
    for option in OPTIONS:
        text = _env(environ, option.run) if option.run else None
        if option.run and text is not None:
            value = option.kind.parse(text, option.run)
            option.kind.check(value, option.run)
            arguments[option.name] = value
    return arguments
