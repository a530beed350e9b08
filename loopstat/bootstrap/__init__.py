"""Bootstrap of ``loopstat-run``: settings from ``LOOPSTAT_*`` variables, and the hook that
installs loopstat on every event loop a program runs.

``loopstat-run`` puts ``pythonpath/`` (beside this file) first on the child's
``PYTHONPATH``; its ``sitecustomize.py`` calls ``activate()`` as Python starts.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import logging
import math
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

log = logging.getLogger("loopstat")

#: The directory ``loopstat-run`` puts first on ``PYTHONPATH``: it holds only ``sitecustomize.py``.
PYTHONPATH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pythonpath")

#: Variables read by ``options()``, with what each accepts; the DD_*/STATSD_* ones are install()'s own.
VARIABLES: Dict[str, str] = {
    "LOOPSTAT_PREFIX": "metric prefix (wins over STATSD_PREFIX)",
    "LOOPSTAT_INTERVAL": "seconds between samples, a number > 0",
    "LOOPSTAT_TAGS": "key:value items separated by commas or spaces (win over DD_SERVICE/DD_ENV/DD_TAGS)",
    "LOOPSTAT_FLAVOR": "dogstatsd or statsd",
    "LOOPSTAT_STALL_THRESHOLD": "seconds without progress that count as a stall, or 'off'",
    "LOOPSTAT_UTILIZATION": "1/0: send the utilization gauge",
    "LOOPSTAT_EXECUTOR": "1/0: send the executor gauges",
    "LOOPSTAT_GC": "1/0: send GC pauses and collections",
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _seconds(name: str, text: str, off: bool = False) -> Optional[float]:
    if off and text.lower() in ("off", "none", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        more = ", or 'off'" if off else ""
        raise ValueError(f"{name}: {text!r} is not valid; expected a number of seconds > 0{more}")
    return value


def _switch(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"{name}: {text!r} is not valid; expected 1 or 0 (true/false, yes/no, on/off)")


def options(environ: Mapping[str, str]) -> Dict[str, Any]:
    """``install()`` keyword arguments from the ``LOOPSTAT_*`` variables; ValueError names a bad one.

    Only the variables that are set become arguments, so everything else keeps
    install()'s default (and its own DD_*/STATSD_* variables).
    """
    kwargs: Dict[str, Any] = {}

    def get(name: str) -> Optional[str]:
        # As for install()'s own variables, "" means unset.
        return environ.get(name, "").strip() or None

    text = get("LOOPSTAT_PREFIX")
    if text is not None:
        kwargs["prefix"] = text
    text = get("LOOPSTAT_INTERVAL")
    if text is not None:
        kwargs["interval"] = _seconds("LOOPSTAT_INTERVAL", text)
    text = get("LOOPSTAT_STALL_THRESHOLD")
    if text is not None:
        kwargs["stall_threshold"] = _seconds("LOOPSTAT_STALL_THRESHOLD", text, off=True)
    text = get("LOOPSTAT_FLAVOR")
    if text is not None:
        if text not in ("dogstatsd", "statsd"):
            raise ValueError(f"LOOPSTAT_FLAVOR: {text!r} is not valid; expected 'dogstatsd' or 'statsd'")
        kwargs["flavor"] = text
    text = get("LOOPSTAT_TAGS")
    if text is not None:
        from loopstat.tags import parse_env

        kwargs["tags"] = parse_env(text, "LOOPSTAT_TAGS")
    for name, key in (
        ("LOOPSTAT_UTILIZATION", "utilization"),
        ("LOOPSTAT_EXECUTOR", "executor"),
        ("LOOPSTAT_GC", "gc"),
    ):
        text = get(name)
        if text is not None:
            kwargs[key] = _switch(name, text)
    return kwargs


def check(environ: Mapping[str, str]) -> Dict[str, Any]:
    """Validate every variable loopstat reads, as install() will; return the install() arguments."""
    from loopstat import settings

    kwargs = options(environ)
    try:
        settings.resolve(**kwargs, environ=environ)
    except ValueError as exc:
        # resolve() names the argument; here the argument came from a variable.
        message = str(exc)
        if message.startswith("prefix:"):
            message = "LOOPSTAT_PREFIX:" + message[len("prefix:") :]
        raise ValueError(message) from None
    return kwargs


_lock = threading.Lock()
_seen: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_active = False


def activate(environ: Mapping[str, str] = os.environ) -> bool:
    """Install loopstat on every event loop that starts running from now on; False if the settings are bad.

    Every asyncio loop, stdlib or uvloop, however it was made (asyncio.run,
    a policy, a ``loop_factory``, ``uvloop.run``), announces itself through
    ``asyncio._set_running_loop`` when it starts running, so that is the one
    place hooked; loop classes and policies are left alone. A loop is
    instrumented on its first run only: ``asyncio.run()`` runs its loop again
    to shut down, after it cancelled the monitor.
    """
    global _active
    try:
        kwargs = check(environ)
    except ValueError as exc:
        log.warning("loopstat-run: loopstat is off: %s", exc)
        return False
    if _active:
        return True
    original: Callable[[Optional[asyncio.AbstractEventLoop]], None] = asyncio.events._set_running_loop

    def _set_running_loop(loop: Optional[asyncio.AbstractEventLoop]) -> None:
        original(loop)
        if loop is not None:
            _on_run(loop, kwargs)

    asyncio.events._set_running_loop = _set_running_loop
    # uvloop reads asyncio._set_running_loop once, when it is imported (after this runs).
    asyncio._set_running_loop = _set_running_loop
    _active = True
    return True


def _on_run(loop: asyncio.AbstractEventLoop, kwargs: Dict[str, Any]) -> None:
    with _lock:
        try:
            if loop in _seen:
                return
            _seen.add(loop)
        except TypeError:  # a loop class without weak references: instrument each run
            pass
    try:
        import loopstat

        loopstat.install(loop=loop, **kwargs)
    except Exception as exc:
        # Monitoring must never stop the program it watches.
        log.warning("loopstat-run: could not install loopstat on %r: %s", loop, exc)
