"""Logging without flooding: each key (a fault, a stall's location, a call site) at most once a minute."""

from __future__ import annotations

import math
import time
from typing import Dict, Generic, Hashable, Optional, Tuple, TypeVar

from loopstat._clock import Clock

K = TypeVar("K", bound=Hashable)

# A key that keeps coming back is let through at most this often.
EVERY_SECONDS = 60.0
# Keys remembered; beyond this the memory starts afresh (a flood of new keys logs again, once each).
MAX_KEYS = 1000


class RateLimit(Generic[K]):
    """Lets each key through at most once every ``seconds``, and counts the times it held one back."""

    def __init__(self, seconds: float = EVERY_SECONDS, keys: int = MAX_KEYS, clock: Clock = time.monotonic) -> None:
        self.seconds = seconds
        self._keys = keys
        self._clock = clock
        # Per key: when it last passed, and how many times it was held back since.
        self._passed: Dict[K, Tuple[float, int]] = {}

    def due(self, key: K) -> Optional[int]:
        """None if ``key`` passed less than ``seconds`` ago (this time is counted);
        else it passes now, and the result is how many times it was held back since it last passed."""
        now = self._clock()
        at, held = self._passed.get(key, (-math.inf, 0))
        if now - at < self.seconds:
            self._passed[key] = (at, held + 1)
            return None
        if key not in self._passed and len(self._passed) >= self._keys:
            self._passed.clear()
        self._passed[key] = (now, 0)
        return held

    def clear(self) -> None:
        """Forget every key: each passes at its next call."""
        self._passed.clear()
