"""Shutting down leaves nothing behind: no warnings under `python -X dev`, nothing lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.receiver import Receiver

APP = """
import asyncio, sys, time
import loopstat

STOP = {stop}

async def main():
    monitor = loopstat.install("127.0.0.1", {port}, interval=0.01)
    await asyncio.sleep(0.1)
    time.sleep(0.05)
    monitor._sink.send([("last", "g", 1.0)])  # still queued when main() returns
    if STOP:
        await monitor.stop()

if "{loop}" == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
print("clean exit")
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("stop", [True, False], ids=["after-stop", "without-stop"])
def test_asyncio_run_ends_without_warnings_and_flushes(
    tmp_path: Path, receiver: Receiver, loop: str, stop: bool
) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP.format(port=receiver.port, loop=loop, stop=stop)))
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == ""
    assert done.stdout == "clean exit\n"
    assert done.returncode == 0
    lines = receiver.settle(lambda lines: any(x.name == "loopstat.last" for x in lines))
    assert any(x.name == "loopstat.lag" for x in lines)
