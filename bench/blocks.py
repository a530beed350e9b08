"""Blocks: which short blocks of the loop lag, the stall watchdog and ``P.iteration`` see.

Blocks of 10, 20, 50 and 80 ms (``time.sleep`` in a callback) at random
moments, one at a time with a quiet gap of 0.3 to 0.6 s after each, so that
at least one sample (0.25 s, the default interval) falls in the gap. A block is
seen by lag when the sample it delayed (arriving within 20 ms of its end) shows at least 1 ms,
by the watchdog when a stall is reported for it (its threshold is 100 ms: these
blocks are shorter, and the watchdog is not meant to see them), and by
``P.iteration`` when a gauge after it reaches 90 % of the block.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Dict, List, Tuple

from bench.udp import Receiver

SIZES_MS = (10.0, 20.0, 50.0, 80.0)
GAP_SECONDS = (0.3, 0.6)
LAG_FLOOR_MS = 1.0
# A lag sample the block delayed arrives within this of the block's end.
LAG_WINDOW_SECONDS = 0.02
SEEN_SHARE = 0.9
SEERS = ("lag", "watchdog", "iteration")


def _block(seconds: float, ended: List[float]) -> None:
    time.sleep(seconds)
    ended.append(time.perf_counter())


async def _run(port: int, receiver: Receiver, blocks: int, rng: random.Random) -> Dict[Tuple[float, str], int]:
    import loopstat

    seen = {(size, seer): 0 for size in SIZES_MS for seer in SEERS}
    order = [size for size in SIZES_MS for _ in range(blocks)]
    rng.shuffle(order)
    async with loopstat.install("127.0.0.1", port, prefix="blocks") as monitor:
        await asyncio.sleep(0.5)
        for size in order:
            await asyncio.sleep(rng.uniform(*GAP_SECONDS))  # a random moment against the sampler's beat
            before, stalls = len(receiver.lines()), monitor.stalls
            ended: List[float] = []
            asyncio.get_running_loop().call_soon(_block, size / 1000.0, ended)
            await asyncio.sleep(rng.uniform(*GAP_SECONDS))
            after = receiver.lines()[before:]
            # Lag sees the block only by the sample it delayed, sent as the block ends; later ones are jitter.
            lag = [
                line.value
                for line in after
                if line.name == "blocks.lag" and line.type == "g" and line.at - ended[0] < LAG_WINDOW_SECONDS
            ]
            turns = [line.value for line in after if line.name == "blocks.iteration"]
            seen[(size, "lag")] += any(value >= LAG_FLOOR_MS for value in lag)
            seen[(size, "watchdog")] += monitor.stalls > stalls
            seen[(size, "iteration")] += any(value >= SEEN_SHARE * size for value in turns)
    return seen


def table(blocks: int, seed: int = 1) -> str:
    """A markdown table: per block size, the share of blocks each of lag, the watchdog and iteration saw (asyncio)."""
    receiver = Receiver(keep=True)
    try:
        seen = asyncio.run(_run(receiver.port, receiver, blocks, random.Random(seed)))
    finally:
        receiver.close()
    rows = ["| block | " + " | ".join(SEERS) + " |", "|---|" + "---|" * len(SEERS)]
    for size in SIZES_MS:
        cells = [f"{seen[(size, seer)]}/{blocks}" for seer in SEERS]
        rows.append(f"| {size:g} ms | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
