"""Validators: how each type of setting is checked, as an ``install()`` argument and as a variable's text.

Each raises ValueError naming the argument or variable and the accepted form.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from typing import Any, Generic, List, Literal, Optional, Tuple, TypeVar

from loopstat import tags as _tags
from loopstat._metrics import LONGEST_SUFFIX
from loopstat.tags import show

T = TypeVar("T")

# sun_path holds 108 bytes on Linux, the last one the terminating NUL.
MAX_SOCKET_PATH = 107
MAX_EXTERNAL_ENV = 256
# Datadog metric names are at most 200 characters.
MAX_PREFIX_LENGTH = 200 - LONGEST_SUFFIX
# A day: anything longer is a mistake rather than a choice, and waits of
# about 1e10 s overflow (threading.Event.wait raises OverflowError).
MAX_SECONDS = 86400.0


class Validator(Generic[T]):
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


class Seconds(Validator[Optional[float]]):
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


class Port(Validator[int]):
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


class Host(Validator[str]):
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


class Prefix(Validator[str]):
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


class Choice(Validator[str]):
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


class Switch(Validator[Any]):
    """On or off; with ``auto``, also None: loopstat decides, loop by loop."""

    _TRUE = ("1", "true", "yes", "on")
    _FALSE = ("0", "false", "no", "off")

    def __init__(self, auto: bool = False, letters: bool = False) -> None:
        self.auto = auto
        self.type_doc = "bool or None" if auto else "bool"
        # A variable Datadog's clients share: the off words each reads (f: the Go and PHP clients, n: datadogpy).
        self._true = (*self._TRUE, "t", "y") if letters else self._TRUE
        self._false = (*self._FALSE, "f", "n") if letters else self._FALSE

    def accepted(self) -> str:
        return "True, False or None (auto)" if self.auto else "True or False"

    def accepted_text(self) -> str:
        letters = ", t/f, y/n" if len(self._true) > len(self._TRUE) else ""
        return f"1 or 0 (true/false, yes/no, on/off{letters})" + (", or auto" if self.auto else "")

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
        if word not in self._true + self._false:
            raise self._bad(text, source, text=True)
        return word in self._true


class TagList(Validator[_tags.Tags]):
    """Tags: checked here, merged and made safe for the wire by ``tags.render``."""

    type_doc = "mapping or iterable"

    def __init__(self, one_tag: Mapping[str, str]) -> None:
        #: Variables whose whole value is one tag's value, by the tag's key.
        self.one_tag = one_tag

    def accepted(self) -> str:
        return _tags.ACCEPTED

    def accepted_text(self) -> str:
        return '"key:value" or "key" items separated by commas or spaces'

    def as_text(self, value: Any) -> str:
        return _tags.joined(value) or "none"

    def check(self, value: object, source: str) -> _tags.Tags:
        return _tags.parse(value, source)

    def parse(self, text: str, source: str) -> List[str]:
        if source in self.one_tag:
            return [f"{self.one_tag[source]}:{text}"]
        return _tags.split_env(text, source)


#: Unix socket schemes, as Datadog's clients read them: the socket type each asks for.
UNIX_SCHEMES = {"unix": "auto", "unixgram": "datagram", "unixstream": "stream"}
SocketType = Literal["auto", "datagram", "stream"]


def socket_type(socket_path: str) -> Tuple[SocketType, str]:
    """The socket type and file of a checked ``socket_path``: a bare path or ``unix://`` is ``auto``.

    ``auto`` (as datadogpy and datadog-go do): a datagram socket, or a stream
    one if the file is a stream socket.
    """
    scheme, sep, rest = socket_path.partition("://")
    if sep and scheme in UNIX_SCHEMES:
        return UNIX_SCHEMES[scheme], rest  # type: ignore[return-value]
    return "auto", socket_path


class NoneOr(Validator[Optional[str]]):
    """A text setting that may also be None (unset); a variable holds the text itself."""

    type_doc = "str or None"

    def accepted(self) -> str:
        return f"None, or {self.accepted_text()}"

    def check(self, value: object, source: str) -> Optional[str]:
        return None if value is None else self.check_set(value, source)

    def check_set(self, value: object, source: str) -> str:
        """The checked value of an argument that is not None."""
        raise NotImplementedError


class SocketPath(NoneOr):
    """The Agent's Unix socket: an absolute path, or ``unix://``, ``unixgram://``, ``unixstream://`` and the path."""

    def accepted_text(self) -> str:
        return (
            f"the absolute path of a Unix socket (at most {MAX_SOCKET_PATH} bytes), "
            "or unix://, unixgram:// or unixstream:// and that path"
        )

    def check_set(self, value: object, source: str) -> str:
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
                    raise self._bad(value, source, why(exc, rest), text) from None
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


class ExternalEnv(NoneOr):
    """The external environment Datadog's admission controller injects (``it-false,cn-web,pu-<pod uid>``)."""

    # Printable ASCII but "|" (which ends a DogStatsD field) and spaces: the characters the admission controller writes.
    _FORM = re.compile(rf"[!-{{}}~]{{1,{MAX_EXTERNAL_ENV}}}")

    def accepted_text(self) -> str:
        return (
            f"up to {MAX_EXTERNAL_ENV} printable ASCII characters but pipes and spaces "
            "(as Datadog's admission controller writes it: it-false,cn-web,pu-{pod UID})"
        )

    def check_set(self, value: object, source: str) -> str:
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


def why(exc: ValueError, value: object) -> str:
    """What a validator's error says is wrong with ``value``: its message without the value and the accepted form."""
    message = str(exc).split("; expected")[0]
    quoted = show(value) + " "
    return message[len(quoted) :] if message.startswith(quoted) else message
