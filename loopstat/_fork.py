"""Fork safety in one place: modules whose state must not cross ``os.fork()`` join this registry themselves.

A module calls ``join(after_in_child=…)`` (and ``before=…`` if it must
prepare the parent) as it is imported; the one pair of hooks registered with
``os.register_at_fork`` walks the registry, as datadogpy's clients are walked.
Hooks run in the order the modules joined, so a module's hook runs after those
of the modules it imports; ``before`` hooks run in reverse, as
``pthread_atfork`` runs its prepare handlers. ``LOOPSTAT_FORK_SUPPORT=0``
registers nothing: for a process that forks often and never uses loopstat in
the child (where the parent's monitors would then be left as copied).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, List, Mapping, Optional

log = logging.getLogger(__name__)

Hook = Callable[[], None]

#: The variable that turns fork support off.
VARIABLE = "LOOPSTAT_FORK_SUPPORT"

_before: List[Hook] = []
_after_in_child: List[Hook] = []
# Whether the hooks are registered with os (once per process; they cannot be removed).
_registered = False


def join(before: Optional[Hook] = None, after_in_child: Optional[Hook] = None) -> None:
    """Run ``before`` in the parent before each fork, ``after_in_child`` in each child; call at import."""
    if before is not None:
        _before.append(before)
    if after_in_child is not None:
        _after_in_child.append(after_in_child)


def leave(hook: Hook) -> None:
    """Stop running ``hook`` at forks (for tests that join a hook of their own)."""
    for hooks in (_before, _after_in_child):
        while hook in hooks:
            hooks.remove(hook)


def joined() -> List[Hook]:
    """The ``after_in_child`` hooks, in the order they run."""
    return list(_after_in_child)


def _run(hooks: List[Hook]) -> None:
    # One module's failing hook must not keep the others from resetting their state.
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.debug("loopstat: a fork hook failed", exc_info=True)


def _run_before() -> None:
    _run(list(reversed(_before)))


def _run_after_in_child() -> None:
    _run(list(_after_in_child))


def supported(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` leaves fork support on; a value loopstat cannot read warns once and leaves it on."""
    from loopstat._options.validators import Switch  # here: the options import modules that join this registry

    text = environ.get(VARIABLE, "").strip()
    if not text:
        return True
    try:
        return bool(Switch().parse(text, VARIABLE))
    except ValueError as exc:
        log.warning("loopstat: %s; fork support stays on", exc)
        return True


def register(environ: Mapping[str, str]) -> bool:
    """Register the fork hooks with os, unless ``environ`` turns fork support off; True if they are registered."""
    global _registered
    if not _registered and hasattr(os, "register_at_fork") and supported(environ):
        os.register_at_fork(before=_run_before, after_in_child=_run_after_in_child)
        _registered = True
    return _registered
