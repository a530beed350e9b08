"""Shutting down leaves nothing behind: no warnings under `python -X dev`, nothing lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.receiver import Receiver

APP = """
import asyncio, gc, sys, time
import loopstat
from tests.inside import send_lines

END = "{end}"

def new_loop():
    if "{loop}" == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()

async def main():
    monitor = loopstat.install("127.0.0.1", {port}, interval=0.01)
    await asyncio.sleep(0.1)
    time.sleep(0.05)
    send_lines(monitor, [("last", "g", 1.0)])  # the last line before main() returns
    if END == "stop":
        await monitor.stop()

if END in ("stop", "run"):
    asyncio.set_event_loop_policy(None)
    if "{loop}" == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
else:
    loop = new_loop()
    loop.run_until_complete(main())
    if END == "close":
        loop.close()  # without cancelling the monitor first
    del loop
    gc.collect()
print("clean exit")
"""

# How an application can end its loop.
ENDINGS = (
    "stop",  # await monitor.stop(), then asyncio.run() returns
    "run",  # asyncio.run() cancels the monitor
    "close",  # loop.close() by hand, monitor still running
    "drop",  # the loop is never closed: the collector ends the monitor
)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("end", ENDINGS)
def test_ending_the_loop_leaves_no_warnings_and_flushes(
    tmp_path: Path, receiver: Receiver, loop: str, end: str
) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP.format(port=receiver.port, loop=loop, end=end)))
    done = subprocess.run(
        # The warning about the loop left open is the application's, not loopstat's.
        [sys.executable, "-X", "dev", "-W", "error", "-W", "ignore:unclosed event loop:ResourceWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == ""
    assert done.stdout == "clean exit\n"
    assert done.returncode == 0
    lines = receiver.settle(lambda lines: any(x.name == "loopstat.last" for x in lines))
    assert any(x.name == "loopstat.lag" for x in lines)
