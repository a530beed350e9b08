"""The one place tests reach inside a monitor, for what the public API rightly does not offer."""

from __future__ import annotations

from typing import List

import loopstat
from loopstat.sink import Line


def send_lines(monitor: loopstat.Monitor, lines: List[Line]) -> None:
    """Hand ``(name, type, value)`` lines to the monitor's sink, as a probe would."""
    monitor._sink.send(lines)
