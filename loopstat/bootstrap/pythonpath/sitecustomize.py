"""Run by Python at startup under ``loopstat-run``: chains to the sitecustomize it hides, then
hooks loopstat onto every event loop the program runs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _chain() -> None:
    """Run the sitecustomize that would have run without loopstat-run (if any), as Python would."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _activate() -> None:
    try:
        from loopstat.bootstrap import activate
    except ImportError as exc:
        print(
            f"loopstat-run: loopstat cannot be imported by {sys.executable} ({exc}); running without it",
            file=sys.stderr,
        )
        return
    activate()


try:
    _chain()
finally:
    _activate()
