"""Bootstrap of ``loopstat-run``: settings from ``LOOPSTAT_*`` variables, and what installs
loopstat on every event loop a program runs.

``loopstat-run`` puts ``pythonpath/`` (beside this file) first on the child's
``PYTHONPATH``; its ``sitecustomize.py`` imports nothing as Python starts and
calls ``on_run()`` (importing this module) when the first event loop runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple

from loopstat import _options
from loopstat._options import Settings

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
    """Validate loopstat-run's own ``LOOPSTAT_*`` variables as install() will; return the install() arguments.

    Shared variables (``DD_*``, ``STATSD_*``) are left out: other clients read
    them too, so a value loopstat cannot use only makes install() warn and
    fall back, it never stops the program.
    """
    kwargs = options(environ)
    own = {name: value for name, value in environ.items() if name.startswith("LOOPSTAT_")}
    _options.resolve(**kwargs, environ=own)
    return kwargs


_lock = threading.Lock()
_seen: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
# install() arguments from the environment, read at the first loop; None: loopstat is off.
_arguments: Optional[Dict[str, Any]] = None
_read = False
# The settings every loop of this process gets, resolved at the first loop; None: loopstat is off.
_settings: Optional[Settings] = None
_resolved = False


def arguments(environ: Mapping[str, str] = os.environ) -> Optional[Dict[str, Any]]:
    """loopstat-run's install() arguments, read once; None, with one warning, if a variable is bad."""
    global _arguments, _read
    with _lock:
        if not _read:
            _read = True
            try:
                # loopstat-run's own defaults (the worker tag on), then what the variables say.
                _arguments = {**_options.run_defaults(), **check(environ)}
            except ValueError as exc:
                log.warning("loopstat-run: loopstat is off: %s", exc)
        return _arguments


def settings(environ: Mapping[str, str] = os.environ) -> Optional[Settings]:
    """The settings of every monitor loopstat-run starts, resolved once per process; None, with one
    warning, if they cannot be had.

    A process may run thousands of short loops (``asyncio.run()`` per request):
    each of them gets these, without resolving them again. Where ``profile`` is
    not available (a free-threaded Python without the GIL) it is dropped, with
    one warning, and the rest is monitored.
    """
    global _settings, _resolved
    kwargs = arguments(environ)
    with _lock:
        if not _resolved and kwargs is not None:
            _resolved = True
            try:
                found = _options.resolve(**kwargs, environ=environ)
            except ValueError as exc:  # a shared DD_*/STATSD_* value install() refuses outright
                log.warning("loopstat-run: loopstat is off: %s", exc)
            else:
                if found.profile:
                    found = _without_unsafe_profile(found)
                _settings = found
        return _settings


def _without_unsafe_profile(found: Settings) -> Settings:
    """``found`` without ``profile`` where install() refuses it (a free-threaded Python), with one warning."""
    from loopstat.probes import frames

    if not frames.free_threaded():
        return found
    log.warning("loopstat-run: profile is off: %s; the other probes run", frames.FREE_THREADED)
    return dataclasses.replace(found, profile=False)


# _install.install_lazily, imported at the first loop (loopstat-run's command line imports this module too).
_install: Optional[Callable[[Settings, asyncio.AbstractEventLoop], object]] = None


def on_run(loop: asyncio.AbstractEventLoop) -> None:
    """Install loopstat on ``loop``, which starts running (called by the sitecustomize's hook); never raises.

    A loop is instrumented on its first run only: ``asyncio.run()`` runs its
    loop again to shut down, after it cancelled the monitor. The monitor costs
    next to nothing until its first sample (a loop that ends sooner opened
    nothing, attached nothing, started no thread).
    """
    global _install
    try:
        resolved = _settings if _resolved else settings()
        if resolved is None:
            return
        with _lock:
            try:
                if loop in _seen:
                    return
                _seen.add(loop)
            except TypeError:  # a loop class without weak references: instrument each run
                pass
        if _install is None:
            from loopstat._install import install_lazily

            _install = install_lazily
        _install(resolved, loop)
    except Exception as exc:
        # Monitoring must never stop the program it watches.
        log.warning("loopstat-run: could not install loopstat on %r: %s", loop, exc)
