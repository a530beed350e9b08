"""What a blocking-call stand-in adds to one call that it does not count, in instructions (valgrind).

``python -m bench.stand_in_cost`` runs each case in a child under ``valgrind --tool=cachegrind``, with the
blocking-call probe on (``blocking_calls=True``) and off, at two call counts; the slope between them is
the cost per call, start-up cancels out. The cases are the calls a stand-in passes on:

- ``thread``: in another thread (an executor's) while a loop is watched: one thread-id check.
- ``loop``: on the watched loop's thread, calls that cannot block: ``time.sleep(0)``, and a
  non-blocking socket's ``sendto`` (the stdlib loop's own I/O).

``python -m bench.stand_in_cost child WHERE CALL ON N`` is one child.
"""

from __future__ import annotations

import asyncio
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from bench.instructions import VALGRIND, valgrind
from bench.web import ROOT, child_env

SIZES = (20_000, 100_000)
CASES = (("thread", "time.sleep"), ("thread", "sendto"), ("loop", "time.sleep"), ("loop", "sendto"))


def _call(name: str) -> Tuple[Callable[[], object], Callable[[], None]]:
    """The call to repeat, and how to release what it needs."""
    if name == "time.sleep":
        return lambda: time.sleep(0), lambda: None
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    address = sink.getsockname()
    sendto = out.sendto

    def send() -> object:
        try:
            return sendto(b"x", address)
        except BlockingIOError:  # a full buffer: the datagram is dropped, as a loop's would be
            return 0

    def release() -> None:
        out.close()
        sink.close()

    return send, release


async def _child(where: str, name: str, on: bool, n: int) -> None:
    import loopstat

    settings = {"interval": 3600.0, "stall_threshold": None, "blocking_calls": on}
    async with loopstat.install("127.0.0.1", 9, **settings):  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the probes attach
        call, release = _call(name)
        try:

            def repeat() -> None:
                for _ in range(n):
                    call()

            if where == "thread":
                worker = threading.Thread(target=repeat)
                worker.start()
                await asyncio.get_running_loop().run_in_executor(None, worker.join)
            else:
                repeat()
        finally:
            release()


def count(where: str, name: str, on: bool, n: int) -> int:
    """Instructions of one child."""
    command = [valgrind() or "valgrind", *VALGRIND, sys.executable, "-m", "bench.stand_in_cost", "child"]
    command += [where, name, "on" if on else "off", str(n)]
    env = child_env()
    env["PYTHONHASHSEED"] = "0"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{command[-5:]}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_call(where: str, name: str, on: bool) -> float:
    small, big = (count(where, name, on, n) for n in SIZES)
    return (big - small) / (SIZES[1] - SIZES[0])


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "child":
        asyncio.run(_child(args[1], args[2], args[3] == "on", int(args[4])))
        return 0
    if valgrind() is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    rows: Dict[Tuple[str, str], Tuple[float, float]] = {}
    for where, name in CASES:
        rows[(where, name)] = (per_call(where, name, False), per_call(where, name, True))
    print(
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}; instructions per call, "
        f"the slope between {SIZES[0]:,} and {SIZES[1]:,} calls.\n"
    )
    print("| where | call | without stand-ins | with | added per call |")
    print("|---|---|---|---|---|")
    for (where, name), (without, with_) in rows.items():
        thread = "another thread" if where == "thread" else "the watched loop's thread"
        print(f"| {thread} | `{name}` | {without:,.0f} | {with_:,.0f} | {with_ - without:+,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
