"""A stand-in for a method of one object (``loop.close``, ``selector.select``) that can be taken back cleanly."""

from __future__ import annotations

from typing import Any, Callable, Optional

# The object had no instance attribute of that name: its class's method served.
_ABSENT: Any = object()


class StandIn:
    """Sets ``stand_in`` as ``obj.<name>`` and, on ``remove()``, puts back what was there before.

    What was there may be another tool's wrapper: it is put back, not deleted.
    If another tool wrapped the stand-in after us, removing ours would remove
    theirs: ours stays inside theirs, and the caller makes it only pass calls on.
    """

    def __init__(self, obj: object, name: str, stand_in: Callable[..., Any]) -> None:
        self._obj = obj
        self._name = name
        self._stand_in = stand_in
        self._previous = getattr(obj, "__dict__", {}).get(name, _ABSENT)
        setattr(obj, name, stand_in)  # AttributeError for objects without instance attributes

    @classmethod
    def try_set(cls, obj: object, name: str, stand_in: Callable[..., Any]) -> Optional[StandIn]:
        """The stand-in, or None where ``obj`` takes no instance attributes."""
        try:
            return cls(obj, name, stand_in)
        except AttributeError:
            return None

    def remove(self) -> None:
        """Put back what was there, unless another tool has wrapped the stand-in since."""
        if getattr(self._obj, "__dict__", {}).get(self._name) is not self._stand_in:
            return
        if self._previous is _ABSENT:
            delattr(self._obj, self._name)
        else:
            setattr(self._obj, self._name, self._previous)
