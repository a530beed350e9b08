"""One counted run, the child that valgrind watches for ``python -m bench instructions``.

``python -m bench.counted MODE WORKLOAD LOOP VARIANT SIZE STATSD_PORT [LAYOUT]``: MODE
``parked`` (the variant's intervals and thresholds an hour) or ``busy`` (its real
settings) runs SIZE operations of WORKLOAD; ``idle`` idles SIZE milliseconds.
LAYOUT (default 0) is how many small objects of every size
class the child allocates and keeps before the run: each layout starts the
allocator's pools at different places, which moves the per-operation count by
a few hundred instructions (see ``instructions.LAYOUTS``).
Prints the wall seconds of that part as JSON. It imports only what the run
needs: every module here is start-up that each of the many children pays for.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from time import perf_counter
from typing import List, Optional

from bench import loops, variants, workloads

MODES = ("parked", "busy", "idle")
# Lengths of the kept bytes objects: 35 to 507 bytes each, two per size class of the allocator's small objects.
PAD_SIZES = range(2, 482, 8)


def pad(layout: int) -> List[bytes]:
    """``layout`` x 58 objects of each allocator size class from 48 to 512 bytes, to keep: a different memory layout.

    29 per length (a prime; 7 moved the counts less): layouts land at different offsets in pools of any block size.
    """
    return [bytes(size) for size in PAD_SIZES for _ in range(layout * 29)]


async def _child(mode: str, workload: str, variant: str, size: int, port: int, layout: int) -> float:
    kept = pad(layout)
    attached = variants.attach(variant, port, parked=mode == "parked")
    # Start-up objects (modules a variant imports, the variant itself) out of the collector's sight:
    # in a process this small they would change how often full collections run, by heap size alone.
    gc.freeze()
    try:
        started = perf_counter()
        if mode == "idle":
            await asyncio.sleep(size / 1000.0)
        else:
            await workloads.BODIES[workload](workloads.Ops(size))
        return perf_counter() - started
    finally:
        await attached.detach()
        del kept


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of one child."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (6, 7) or args[0] not in MODES:
        print(
            "usage: python -m bench.counted parked|busy|idle WORKLOAD LOOP VARIANT SIZE PORT [LAYOUT]", file=sys.stderr
        )
        return 2
    variants.quiet_loopstat()
    mode, workload, loop, variant, size, port = args[0], args[1], args[2], args[3], int(args[4]), int(args[5])
    layout = int(args[6]) if len(args) == 7 else 0
    run = lambda: _child(mode, workload, variant, size, port, layout)  # noqa: E731
    seconds = loops.run_on(run, variants.new_loop(variant, loop))
    print(json.dumps({"seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
