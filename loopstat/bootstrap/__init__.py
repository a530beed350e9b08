"""Bootstrap of ``loopstat-run``: settings from ``LOOPSTAT_*`` variables, and the hook that
installs loopstat on every event loop a program runs.

``loopstat-run`` puts ``pythonpath/`` (beside this file) first on the child's
``PYTHONPATH``; its ``sitecustomize.py`` calls ``activate()`` as Python starts.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple

from loopstat import _options

log = logging.getLogger(__name__)

#: The directory ``loopstat-run`` puts first on ``PYTHONPATH``: it holds only ``sitecustomize.py``.
PYTHONPATH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pythonpath")

#: Variables read by ``options()``, with what each accepts (from the option table).
VARIABLES: Dict[str, str] = _options.run_help()
#: install()'s own variables, which the program reads as it would without loopstat-run.
INSTALL_VARIABLES: Tuple[str, ...] = _options.VARIABLES


def options(environ: Mapping[str, str]) -> Dict[str, Any]:
    """``install()`` keyword arguments from the ``LOOPSTAT_*`` variables; ValueError names a bad one.

    Only the variables that are set become arguments, so everything else keeps
    install()'s default (and its own DD_*/STATSD_* variables).
    """
    return _options.run_arguments(environ)


def check(environ: Mapping[str, str]) -> Dict[str, Any]:
    """Validate every variable loopstat reads, as install() will; return the install() arguments."""
    kwargs = options(environ)
    _options.resolve(**kwargs, environ=environ)
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
        # loopstat-run's own defaults (the worker tag on), then what the variables say.
        kwargs = {**_options.run_defaults(), **check(environ)}
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
