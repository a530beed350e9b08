"""``loopstat watch`` names the loop each sender watches, from what its metrics tell (iteration or not)."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time
from typing import List

import pytest
from rich.console import Console

import loopstat
from loopstat.cli.board import NO_SELECTOR_LOOP, SELECTOR_LOOP, Board, listen
from loopstat.cli.live import Live
from loopstat.cli.watch import Plain

LOOPSTAT = [sys.executable, "-m", "loopstat"]
# Generous: samples come every 50 ms, but the machine may be loaded.
DEADLINE = 30.0


def expected(loop: asyncio.AbstractEventLoop) -> str:
    return SELECTOR_LOOP if isinstance(loop, asyncio.SelectorEventLoop) else NO_SELECTOR_LOOP


async def test_watch_names_the_loop_of_a_real_monitor(loop_kind: str) -> None:
    board = Board()
    enough = asyncio.Event()
    # Enough samples for the verdict without iteration, and a few more for one that came late.
    board.listen(lambda now, sample: enough.set() if board.lines >= 60 else None)
    transport, port = await listen(board, "127.0.0.1", 0)
    try:
        async with loopstat.install("127.0.0.1", port, interval=0.05, tags={"service": "api"}):
            await asyncio.wait_for(enough.wait(), DEADLINE)
    finally:
        transport.close()
    kind = expected(asyncio.get_running_loop())
    assert kind == (SELECTOR_LOOP if loop_kind == "asyncio" else NO_SELECTOR_LOOP)
    assert board.loops() == {"api": kind}
    out = io.StringIO()
    Plain(board, out, io.StringIO()).tick()
    assert out.getvalue().splitlines()[0] == f"# loop of service:api: {kind}"
    screen = io.StringIO()
    with Live(board, "127.0.0.1:1", Console(file=screen, width=120, height=40, force_terminal=False)) as live:
        live.tick()
    assert f"service:api  loop: {kind}" in screen.getvalue()


def test_a_loop_is_named_once_and_again_only_when_its_metrics_change() -> None:
    board = Board()
    out = io.StringIO()
    plain = Plain(board, out, io.StringIO())
    board.feed(b"app.utilization:0.5|g|#service:a")
    plain.tick()
    assert "# loop" not in out.getvalue(), "one sample without iteration: its iteration line may come next"
    board.feed(b"app.utilization:0.5|g|#service:a\napp.lag:1|g|#service:b")
    plain.tick()
    board.feed(b"app.utilization:0.5|g|#service:a\napp.lag:1|g|#service:b")
    plain.tick()
    notes = [line for line in out.getvalue().splitlines() if line.startswith("# ")]
    assert notes == [f"# loop of service:a: {NO_SELECTOR_LOOP}"], "b sends no utilization: not named"
    board.feed(b"app.iteration:3|g|#service:a")
    plain.tick()
    notes = [line for line in out.getvalue().splitlines() if line.startswith("# ")]
    assert notes[-1] == f"# loop of service:a: {SELECTOR_LOOP}"


def test_a_sender_without_a_service_tag_and_any_prefix_is_named() -> None:
    board = Board()
    board.feed(b"my.app.iteration:3|g\nmy.app.utilization:0.1|g")
    assert board.loops() == {"": SELECTOR_LOOP}
    board.feed(b"iterations:3|g")
    assert board.loops() == {"": SELECTOR_LOOP}, "a name that only ends like one is not it"


@pytest.mark.e2e  # two processes and the real clock, as test_cli's piped runs
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_watch_piped_names_the_loop_and_ends_quietly_when_head_quits(loop: str) -> None:
    # As `loopstat watch | head -30` beside an application: the reader quits after a few ticks' lines.
    watch = subprocess.Popen([*LOOPSTAT, "watch", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert watch.stdout is not None
        assert watch.stderr is not None
        first = watch.stdout.readline().decode()
        port = int(first.rsplit(":", 1)[1])
        app = subprocess.Popen([sys.executable, "-c", APP, str(port), loop])
        try:
            head = subprocess.run(["head", "-30"], stdin=watch.stdout, capture_output=True, timeout=DEADLINE)
            watch.stdout.close()
            deadline = time.monotonic() + DEADLINE
            while watch.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            app.kill()
            app.wait()
        lines: List[str] = head.stdout.decode().splitlines()
        kind = SELECTOR_LOOP if loop == "asyncio" else NO_SELECTOR_LOOP
        assert f"# loop of (no service tag): {kind}" in lines
        assert watch.returncode == 128 + signal.SIGPIPE
        assert watch.stderr.read() == b""
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.communicate()


# An application: a monitor sampling every 50 ms on a loop of the kind asked, until killed.
APP = """
import asyncio, sys
import uvloop
import loopstat

async def main():
    async with loopstat.install("127.0.0.1", int(sys.argv[1]), interval=0.05):
        await asyncio.sleep(3600)

loop = uvloop.new_event_loop() if sys.argv[2] == "uvloop" else asyncio.new_event_loop()
loop.run_until_complete(main())
"""
