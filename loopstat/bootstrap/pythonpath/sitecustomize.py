"""Run by Python at start-up under ``loopstat-run``: chains to the sitecustomize it hides, then waits for asyncio.

Every Python process started under ``loopstat-run`` runs this, including the
many that never run an event loop, so it imports nothing: it puts a finder on
``sys.meta_path`` that acts only when ``asyncio`` is imported, and then wraps
``asyncio.events._set_running_loop``, which every asyncio loop, stdlib or
uvloop, calls as it starts running. loopstat itself (``loopstat.bootstrap``)
is imported on the first call, so early patchers such as gevent's
``monkey.patch_all()`` see a clean process.

The assumption is checked: if ``_set_running_loop`` is missing, or a loop runs
without calling it (asyncio's own ``events.get_running_loop()``, as
``asyncio.sleep`` and ``create_task`` call it, finds a loop the wrapper never
saw), everything is put back and the program runs unmonitored, with one
warning. The checks go once the wrapper has been called.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any, Callable, List, Optional, Sequence, Tuple

# asyncio's functions this module replaced: (module, name, original, stand-in).
_replaced: List[Tuple[ModuleType, str, Callable[..., Any], Callable[..., Any]]] = []
# "waiting" for asyncio, "watching" its loops, "proven" (the hook fired), or "off".
_state = "waiting"


def _chain() -> None:
    """Run the sitecustomize that would have run without loopstat-run (if any), as Python would."""
    import os  # already imported by site

    here = os.path.dirname(os.path.abspath(__file__))
    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    finder: Any = next((f for f in sys.meta_path if getattr(f, "__name__", "") == "PathFinder"), None)
    spec: Optional[ModuleSpec] = None if finder is None else finder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    import importlib.util  # only when there is a sitecustomize to run

    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _warn(message: str) -> None:
    """One warning through logging, as loopstat logs (imported only on this path)."""
    import logging

    logging.getLogger("loopstat.bootstrap").warning("loopstat-run: %s; the program runs unmonitored", message)


class _Loader:
    """asyncio's own loader, which hooks the package once it has run; afterwards the module names the original."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> Optional[ModuleType]:
        create = getattr(self.loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader
        _safely_hook()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _AsyncioFinder:
    """On ``sys.meta_path`` until asyncio is imported: finds nothing itself, wraps asyncio's loader."""

    @staticmethod
    def find_spec(name: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None) -> Any:
        if name != "asyncio":
            return None
        _forget_finder()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            _warn("asyncio is loaded by an unknown loader")
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def _forget_finder() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not _AsyncioFinder]


def _arm() -> None:
    """Wait for asyncio, or hook it now if a hidden sitecustomize imported it already."""
    if "asyncio" in sys.modules:
        _safely_hook()
    else:
        sys.meta_path.insert(0, _AsyncioFinder)


def _safely_hook() -> None:
    """``_hook()``, which must never fail asyncio's import."""
    try:
        _hook()
    except Exception as exc:
        _unhook(get_only=False)
        _warn(f"asyncio cannot be hooked ({type(exc).__name__}: {exc})")


def _hook() -> None:
    """Wrap ``_set_running_loop`` where asyncio and uvloop look it up; check ``get_running_loop`` until it fires."""
    global _state
    if _state != "waiting":
        return
    asyncio = sys.modules.get("asyncio")
    events = sys.modules.get("asyncio.events")
    original = getattr(events, "_set_running_loop", None)
    if asyncio is None or events is None or not callable(original):
        _state = "off"
        _warn("asyncio.events._set_running_loop is missing on this Python")
        return
    _state = "watching"

    def _set_running_loop(loop: Any) -> None:
        original(loop)
        if loop is not None and _state != "off":
            _on_run(loop)

    stand_ins: List[Tuple[str, Callable[..., Any]]] = [("_set_running_loop", _set_running_loop)]
    for name in ("get_running_loop", "_get_running_loop"):
        get = getattr(events, name, None)
        if callable(get):
            stand_ins.append((name, _checked(get)))
    for name, stand_in in stand_ins:
        real: Callable[..., Any] = getattr(events, name)
        # uvloop reads asyncio._set_running_loop when it is imported; the checks stay in
        # asyncio.events, where asyncio's own code looks them up, and the public names
        # (which libraries copy) stay the originals.
        for module in (events, asyncio) if name == "_set_running_loop" else (events,):
            if getattr(module, name, None) is real:
                setattr(module, name, stand_in)
                _replaced.append((module, name, real, stand_in))


def _checked(get: Callable[[], Any]) -> Callable[[], Any]:
    """``get`` (asyncio's ``get_running_loop``), noticing a running loop that never called the hook."""

    def checked() -> Any:
        loop = get()
        if loop is not None and _state == "watching":
            _unhook(get_only=False)
            _warn(f"{type(loop).__name__} runs without calling asyncio.events._set_running_loop")
        return loop

    checked.__name__ = checked.__qualname__ = get.__name__
    checked.__doc__ = get.__doc__
    return checked


def _unhook(get_only: bool) -> None:
    """Put asyncio's originals back: the checks once the hook is proven, everything when it is not."""
    global _state
    _state = "proven" if get_only else "off"
    for module, name, real, stand_in in _replaced:
        if (name != "_set_running_loop" or not get_only) and getattr(module, name, None) is stand_in:
            setattr(module, name, real)


# loopstat's on_run(), imported when the first loop runs.
_on_run_of_loopstat: Optional[Callable[[Any], None]] = None


def _on_run(loop: Any) -> None:
    global _on_run_of_loopstat
    if _on_run_of_loopstat is None:
        if _state == "watching":
            _unhook(get_only=True)
        try:
            from loopstat.bootstrap import on_run
        except Exception as exc:  # ImportError, or a broken install: the program runs on
            _unhook(get_only=False)
            _warn(f"loopstat cannot be imported by {sys.executable} ({type(exc).__name__}: {exc})")
            return
        _on_run_of_loopstat = on_run
    _on_run_of_loopstat(loop)


try:
    _chain()
finally:
    _arm()
