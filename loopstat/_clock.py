"""The clock seam: timing logic reads the time through a ``Clock`` it is given, never from ``time`` directly.

Production code passes ``time.monotonic`` (how long ago something was logged
or revived) or ``time.perf_counter`` (lag, which needs sub-millisecond steps);
tests pass a clock they move by hand, as trio's ``MockClock`` lets them, so the
arithmetic is checked without sleeping.
"""

from __future__ import annotations

from typing import Callable

#: Seconds on a scale that never goes back; only differences mean anything.
Clock = Callable[[], float]
