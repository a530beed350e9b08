"""Options: each setting declared once, and everything derived from that declaration.

One concept per module: ``validators`` (how a type of setting is checked),
``table`` (the options themselves, as ``Settings``' fields), ``environ``
(settings from arguments and variables, ``DD_DOGSTATSD_URL`` included) and
``docs`` (the README table and ``loopstat-run --help``). The names the rest of
loopstat uses are re-exported here.
"""

from loopstat._options.docs import markdown_table, run_help
from loopstat._options.environ import URL_FORM, forget, resolve, run_arguments, run_defaults
from loopstat._options.table import (
    DEFAULT_HOST,
    DEFAULT_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    DEFAULT_STALL_THRESHOLD,
    FLAVORS,
    MAX_CONTAINER_FIELD,
    MAX_DATAGRAM,
    MAX_UNIX_DATAGRAM,
    MIN_INTERVAL,
    MIN_STALL_THRESHOLD,
    OPTIONS,
    ORIGIN_VARIABLE,
    RUN_VARIABLES,
    URL_VARIABLE,
    VARIABLES,
    Flavor,
    Option,
    Settings,
)
from loopstat._options.validators import (
    MAX_EXTERNAL_ENV,
    MAX_PREFIX_LENGTH,
    MAX_SECONDS,
    MAX_SOCKET_PATH,
    UNIX_SCHEMES,
    Port,
    Seconds,
    Validator,
    socket_type,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_STALL_THRESHOLD",
    "FLAVORS",
    "MAX_CONTAINER_FIELD",
    "MAX_DATAGRAM",
    "MAX_EXTERNAL_ENV",
    "MAX_PREFIX_LENGTH",
    "MAX_SECONDS",
    "MAX_SOCKET_PATH",
    "MAX_UNIX_DATAGRAM",
    "MIN_INTERVAL",
    "MIN_STALL_THRESHOLD",
    "OPTIONS",
    "ORIGIN_VARIABLE",
    "RUN_VARIABLES",
    "UNIX_SCHEMES",
    "URL_FORM",
    "URL_VARIABLE",
    "VARIABLES",
    "Flavor",
    "Option",
    "Port",
    "Seconds",
    "Settings",
    "Validator",
    "forget",
    "markdown_table",
    "resolve",
    "run_arguments",
    "run_defaults",
    "run_help",
    "socket_type",
]
