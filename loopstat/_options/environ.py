"""Settings from ``install()``'s arguments and the environment, and ``loopstat-run``'s arguments from its variables.

Arguments beat variables; a shared variable (``DD_*``, ``STATSD_*``) that
loopstat cannot use is skipped with one warning, as other clients in the
process may read it differently.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Callable, Dict, List, Optional, TypeVar

from loopstat import _worker
from loopstat import tags as _tags
from loopstat._metrics import LINE_TAG_ROOM, LONGEST_SUFFIX
from loopstat._options.table import (
    BY_NAME,
    MAX_CONTAINER_FIELD,
    MAX_DATAGRAM,
    OPTIONS,
    URL_VARIABLE,
    VARIABLES,
    Option,
    Settings,
)
from loopstat._options.validators import HOST, PORT, SOCKET_PATH, UNIX_SCHEMES, why
from loopstat.tags import show

T = TypeVar("T")
log = logging.getLogger("loopstat._options")

# What a line holds after the prefix, besides the monitor's tags: the longest
# metric name, ":", a value of up to 24 characters, "|ms|#", the line's own
# tags, and room to spare.
_LINE_OVERHEAD = LONGEST_SUFFIX + 1 + 24 + len("|ms|#") + LINE_TAG_ROOM + 16


def _env(environ: Mapping[str, str], name: str) -> Optional[str]:
    # Deployment templates often export a variable as "" to mean "not set".
    value = environ.get(name, "").strip()
    return value or None


URL_FORM = (
    "udp://host:port, udp://host (IPv6 in brackets: udp://[::1]:8125), host:port, "
    "unix://, unixgram:// or unixstream:// and an absolute path, or an absolute path"
)


def _url(text: str) -> Dict[str, Any]:
    """Host, port and socket path (each None when left out) from DD_DOGSTATSD_URL, in every form Datadog's clients read.

    ValueError quotes the whole value, whatever part of it is wrong.
    """
    name = URL_VARIABLE

    def bad(why: str = "is not valid") -> ValueError:
        return ValueError(f"{name}: {show(text)} {why}; expected {URL_FORM}")

    scheme, sep, rest = text.partition("://")
    if text.startswith("/") or (sep and scheme.lower() in UNIX_SCHEMES):
        try:
            # The path as written: a socket file may hold any byte but NUL ("%" and "#" too).
            return {"host": None, "port": None, "socket_path": SOCKET_PATH.parse(text, "")}
        except ValueError as exc:
            raise bad(why(exc, text)) from None
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
        raise bad(f"has port {show(port_text)}, which {why(exc, port_text)}") from None
    try:
        checked = HOST.check(host, "")
    except ValueError as exc:
        raise bad(f"has host {show(host)}, which {why(exc, host)}") from None
    if not sep and port is None:
        raise bad("has no port (host:port)")
    return {"host": checked, "port": port, "socket_path": None}


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
        validator = option.validator
        value = _shared(variable, lambda: validator.check(validator.parse(text, variable), variable))  # noqa: B023
        if value is not None:
            return value
    return option.default


def _tag_sources(explicit: _tags.Tags, environ: Mapping[str, str]) -> List[_tags.Tags]:
    """Explicit tags, then each usable tag variable's, strongest first."""
    option = BY_NAME["tags"]
    sources = [explicit]
    for variable in option.env:
        text = _env(environ, variable)
        if text is not None:
            validator = option.validator
            tags = _shared(variable, lambda: validator.check(validator.parse(text, variable), variable))  # noqa: B023
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
            values["tags"] = [] if given is _UNSET else option.validator.check(given, "tags")
        elif given is _UNSET or (given is None and option.env):
            values[option.name] = _from_environment(option, environ, url)
        else:
            values[option.name] = option.validator.check(given, option.name)

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
    unknown = sorted(set(arguments) - set(BY_NAME))
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
            value = option.validator.parse(text, option.run)
            option.validator.check(value, option.run)
            arguments[option.name] = value
    return arguments
