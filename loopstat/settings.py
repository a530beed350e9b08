"""Settings: arguments and environment, validated once into a frozen value.

The option table and the checks live in ``loopstat._options``; this module
keeps the names the rest of loopstat imports.
"""

from loopstat._options import (
    DEFAULT_HOST,
    DEFAULT_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    DEFAULT_STALL_THRESHOLD,
    FLAVORS,
    MAX_DATAGRAM,
    MAX_PREFIX_LENGTH,
    MAX_UNIX_DATAGRAM,
    MIN_INTERVAL,
    MIN_STALL_THRESHOLD,
    OPTIONS,
    Settings,
    resolve,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_STALL_THRESHOLD",
    "FLAVORS",
    "MAX_DATAGRAM",
    "MAX_PREFIX_LENGTH",
    "MAX_UNIX_DATAGRAM",
    "MIN_INTERVAL",
    "MIN_STALL_THRESHOLD",
    "OPTIONS",
    "Settings",
    "resolve",
]
