"""Ctrl-C where it hurts: trace functions that raise KeyboardInterrupt at chosen points, as SIGINT's handler can."""

from __future__ import annotations

import types
from typing import Any, Callable


def interrupting_at_the_call_of(code: types.CodeType) -> Callable[..., Any]:
    """A trace function that raises KeyboardInterrupt as ``code`` is first called, before its first line.

    A signal's handler runs at the interpreter's next check, and one comes as
    a Python function starts: a Ctrl-C can end a callback before it did anything.
    (Python removes a trace function that raises: it fires once.)
    """

    def tracer(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is code:
            raise KeyboardInterrupt

    return tracer
