"""A clock tests move by hand, for the timing logic that takes a ``Clock`` (as trio's ``MockClock``)."""

from __future__ import annotations


class FakeClock:
    """Seconds that pass only when the test says so: ``jump(seconds)`` or set ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def jump(self, seconds: float) -> None:
        """Move time forward; a clock never goes back."""
        if seconds < 0:
            raise ValueError(f"seconds: {seconds!r} is negative; expected a duration of 0 or more")
        self.now += seconds
