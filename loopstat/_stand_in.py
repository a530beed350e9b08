"""A stand-in for a method of one object (``loop.close``, ``selector.select``), or for a function of a module or
class (``time.sleep``, ``socket.socket.recv``), that can be taken back cleanly."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional, Type, TypeVar

S = TypeVar("S", bound="_Swap")

# The object had no instance attribute of that name: its class's method served.
ABSENT: Any = object()


def own_attribute(obj: object, name: str) -> Any:
    """What ``obj`` holds as its own attribute ``name`` (another tool's wrapper, say), or ``ABSENT``.

    Told apart from the class's method without reading ``obj.__dict__``: on
    Python 3.11+ reading it turns the object's compact attribute storage into
    a dict for good, and every attribute access of the loop's hot path slows
    down (measured: +8,000 instructions per ping-pong round trip).
    """
    if isinstance(obj, (type, ModuleType)):
        # A class's or a module's attributes are a dict anyway. (Not read the
        # instance's way: a module's builtin function has the module as
        # ``__self__``, and a class's inherited method is not its own.)
        return vars(obj).get(name, ABSENT)
    value = getattr(obj, name, ABSENT)
    method = getattr(type(obj), name, ABSENT)
    if getattr(value, "__self__", None) is obj and getattr(value, "__func__", ABSENT) is method:
        return ABSENT
    return value


class _Swap:
    """What both kinds of stand-in share: setting one where the object may refuse it."""

    def __init__(self, obj: object, name: str, stand_in: Callable[..., Any], **options: Any) -> None:
        raise NotImplementedError

    @classmethod
    def try_set(cls: Type[S], obj: object, name: str, stand_in: Callable[..., Any], **options: Any) -> Optional[S]:
        """The stand-in, or None where ``obj`` refuses it (no instance attributes, a class that cannot change)."""
        try:
            return cls(obj, name, stand_in, **options)
        except (AttributeError, TypeError):
            return None


class StandIn(_Swap):
    """Sets ``stand_in`` as ``obj.<name>`` and, on ``remove()``, puts back what was there before.

    What was there may be another tool's wrapper: it is put back, not deleted.
    If another tool wrapped the stand-in after us, removing ours would remove
    theirs: ours stays inside theirs, and the caller makes it only pass calls on.
    """

    def __init__(self, obj: object, name: str, stand_in: Callable[..., Any], previous: Any = ABSENT) -> None:
        """``previous``: what ``remove()`` puts back if what is there now is ``stand_in`` itself (left there by
        another tool that put back what it had saved); by default, what is there."""
        self._obj = obj
        self._name = name
        self._stand_in = stand_in
        there = own_attribute(obj, name)
        self._previous = previous if there is stand_in and previous is not ABSENT else there
        setattr(obj, name, stand_in)  # AttributeError for objects without instance attributes

    def remove(self) -> None:
        """Put back what was there, unless another tool has wrapped the stand-in since."""
        if getattr(self._obj, self._name, None) is not self._stand_in:
            return
        if self._previous is ABSENT:
            delattr(self._obj, self._name)
        else:
            setattr(self._obj, self._name, self._previous)


class ClassStandIn(_Swap):
    """Makes ``obj`` an instance of a subclass of its class whose ``<name>`` method is ``stand_in``.

    For objects whose attributes live in a plain ``__dict__`` (a Cython class's
    Python subclass, such as uvloop's loop): an instance attribute would change
    that dict's keys and slow every method call on the object (measured: +490
    instructions per ping-pong round trip on uvloop), a subclass does not.
    ``remove()`` puts the class back unless another tool has changed it since.
    """

    def __init__(self, obj: object, name: str, stand_in: Callable[..., Any]) -> None:
        self._obj = obj
        self._base = type(obj)
        self._class = type(self._base.__name__, (self._base,), {name: stand_in, "__module__": self._base.__module__})
        obj.__class__ = self._class  # TypeError where the layout forbids it

    def remove(self) -> None:
        if type(self._obj) is self._class:
            self._obj.__class__ = self._base
