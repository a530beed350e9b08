"""CPU: the share of one core the loop's thread uses, on every kind of loop.

Read at each sample on the loop's own thread: its CPU time over the wall time
since the previous sample. Next to utilization it tells where busy time goes:
a loop 90 % utilized at 20 % CPU spends most of its time blocked off the CPU
inside callbacks (synchronous I/O, sleeps, locks).
"""

from __future__ import annotations

from typing import List

from loopstat._metrics import Line
from loopstat.probes import Reading, Watched


class Cpu:
    """Sends the loop thread's CPU share of the sampling window (read once per sample, see ``Watched.sample``)."""

    def __init__(self, watched: Watched) -> None:
        self._watched = watched

    def read(self, lines: List[Line]) -> Reading:
        self._watched.thread.check()  # a CPU clock that stopped working closes the probe
        share = self._watched.cpu_share
        if share is not None:
            lines.append(("cpu", "g", round(share, 4)))
        return {"cpu": share}

    def close(self) -> None:
        pass


def attach(watched: Watched) -> Cpu:
    watched.thread.check()  # no CPU clock for the thread on this platform: the probe is left out
    return Cpu(watched)
