"""``python -m loopstat watch|demo`` as a person runs them: in a pseudo-terminal, and piped."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Callable, List

import pyte
import pytest

COLUMNS, LINES = 120, 40
LOOPSTAT = [sys.executable, "-m", "loopstat"]


class Terminal:
    """A loopstat command on a pseudo-terminal, with the screen as a terminal emulator renders it."""

    def __init__(self, *args: str, prelude: str = "") -> None:
        self.screen = pyte.Screen(COLUMNS, LINES)
        self._stream = pyte.ByteStream(self.screen)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal
            os.environ.update(COLUMNS=str(COLUMNS), LINES=str(LINES), TERM="xterm-256color")
            code = f"{prelude}import sys; from loopstat.cli.main import main; sys.exit(main(sys.argv[1:]))"
            os.execv(sys.executable, [sys.executable, "-c", code, *args])
        self.status: int | None = None

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self._stream.feed(data)
        return bool(data)

    def wait_for(self, condition: Callable[[str], bool], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while not condition(self.text()):
            if time.monotonic() > deadline or not self._read(0.05):
                if condition(self.text()):
                    break
                raise AssertionError(f"screen never matched; it shows:\n{self.text()}")
        return self.text()

    def wait_exit(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.05) and time.monotonic() < deadline:
            pass
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            time.sleep(0.02)
        raise AssertionError("the command did not exit")

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: List[Terminal] = []

    def open_terminal(*args: str, prelude: str = "") -> Terminal:
        opened.append(Terminal(*args, prelude=prelude))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


def send(port: int, *lines: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for line in lines:
            sock.sendto(line.encode(), ("127.0.0.1", port))


def bound_port(text: str) -> int:
    match = re.search(r"udp://127\.0\.0\.1:(\d+)", text)
    assert match, text
    return int(match[1])


def test_watch_shows_a_live_table_of_received_metrics_in_a_terminal(terminal: Callable[..., Terminal]) -> None:
    term = terminal("watch", "--port", "0")
    port = bound_port(term.wait_for(lambda text: "waiting for metrics" in text))
    send(port, "app.lag:2.5|g|#team:payments", "app.lag:7.5|g|#team:payments", "app.hits:3|c")
    screen = term.wait_for(lambda text: "app.lag" in text and "app.hits" in text)
    row = next(line for line in screen.splitlines() if line.startswith("app.lag"))
    # name, tags, type, last, min, avg, max, then the sparkline
    assert row.split()[:7] == ["app.lag", "team:payments", "g", "7.50", "2.50", "5", "7.50"]
    assert re.search(r"[▁▂▃▄▅▆▇█]", row)
    assert "metric" in screen
    assert "last 30 s" in screen


def test_watch_counts_bad_lines_on_screen(terminal: Callable[..., Terminal]) -> None:
    term = terminal("watch", "--port", "0")
    port = bound_port(term.wait_for(lambda text: "waiting for metrics" in text))
    send(port, "not a metric", "app.ok:1|g")
    screen = term.wait_for(lambda text: "1 bad" in text and "app.ok" in text)
    assert "2 lines, 1 bad" in screen
    assert "not a metric" in screen


def test_watch_exits_cleanly_on_ctrl_c(terminal: Callable[..., Terminal]) -> None:
    term = terminal("watch", "--port", "0")
    term.wait_for(lambda text: "waiting for metrics" in text)
    os.write(term.fd, b"\x03")  # what the keyboard sends
    assert term.wait_exit() == 0
    assert "Traceback" not in term.text()


def test_watch_in_a_terminal_without_rich_names_the_extra_to_install(terminal: Callable[..., Terminal]) -> None:
    # None in sys.modules makes "import rich" fail as if it were not installed.
    term = terminal("watch", "--port", "0", prelude="import sys; sys.modules['rich'] = None; ")
    assert term.wait_exit() == 1
    screen = term.text()
    assert "pip install 'loopstat[cli]'" in screen
    assert "Traceback" not in screen


@pytest.fixture
def watch_piped() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*LOOPSTAT, "watch", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_watch_prints_one_plain_line_per_metric_each_second_when_not_a_terminal(
    watch_piped: subprocess.Popen[str],
) -> None:
    assert watch_piped.stdout is not None
    port = bound_port(watch_piped.stdout.readline())
    send(port, "app.lag:2.5|ms|#env:dev", "app.tasks:4|g")
    seen = [watch_piped.stdout.readline().rstrip("\n") for _ in range(4)]
    assert seen[:2] == [
        "app.lag ms env:dev last=2.50 min=2.50 avg=2.50 max=2.50 n=1",
        "app.tasks g - last=4 min=4 avg=4 max=4 n=1",
    ]
    assert seen[2:] == seen[:2], "a second later, the same metrics again"


def test_watch_reports_bad_lines_on_stderr_when_not_a_terminal(watch_piped: subprocess.Popen[str]) -> None:
    assert watch_piped.stdout is not None
    assert watch_piped.stderr is not None
    port = bound_port(watch_piped.stdout.readline())
    send(port, "app.lag:oops|g")
    assert watch_piped.stderr.readline() == "loopstat watch: 1 bad lines so far, last: 'app.lag:oops|g'\n"


def test_watch_exits_cleanly_on_sigint_when_not_a_terminal(watch_piped: subprocess.Popen[str]) -> None:
    assert watch_piped.stdout is not None
    watch_piped.stdout.readline()
    watch_piped.send_signal(signal.SIGINT)
    _, err = watch_piped.communicate(timeout=10)
    assert watch_piped.returncode == 0
    assert err == ""


def test_watch_on_a_port_in_use_fails_in_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run([*LOOPSTAT, "watch", "--port", str(port)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert (
        done.stderr == f"loopstat watch: cannot listen on udp://127.0.0.1:{port}: the port is in use "
        "(is another receiver or agent running?)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["watch", "--port", "99999"], "'99999' is out of range"),
        (["demo", "--seconds", "x"], "'x' is not valid"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_arguments_fail_in_one_line(args: List[str], message: str) -> None:
    done = subprocess.run([*LOOPSTAT, *args], capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr


def test_demo_in_a_terminal_shows_the_loop_go_bad_and_names_the_blocking_function(
    terminal: Callable[..., Terminal],
) -> None:
    term = terminal("demo", "--seconds", "2")
    during = term.wait_for(lambda text: "phase 2/4" in text)
    assert "crunch_numbers() runs on the loop" in during
    assert term.wait_exit(20) == 0
    screen = term.text()
    assert re.search(r"WARNING: loopstat: the event loop was blocked for \d+ ms", screen)
    assert re.search(r"stall log: .* at .*demo\.py:\d+ in crunch_numbers", screen.replace("\n", ""))
    for metric in ("loopstat.lag", "loopstat.utilization", "loopstat.stalls", "loopstat.executor.threads"):
        assert metric in screen
    assert "what the service's loop went through" in screen
    assert "Traceback" not in screen


def test_demo_piped_prints_phases_lines_and_a_summary_that_shows_lag_rise_and_fall() -> None:
    done = subprocess.run([*LOOPSTAT, "demo", "--seconds", "2"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "# phase 1/4: healthy" in out
    assert re.search(r"^loopstat\.lag g service:demo last=", out, re.M)
    summary = out.split("what the service's loop went through")[1]
    lag = {m[1]: float(m[2]) for m in re.finditer(r"^  (healthy|on the loop|executor)\s+([\d.]+) ms", summary, re.M)}
    # The stall threshold is 100 ms and each request blocks for 150 ms.
    assert lag["on the loop"] > 100
    assert lag["executor"] < lag["on the loop"]
    stalls = re.search(r"^  on the loop .* (\d+)\s+\d+$", summary, re.M)
    assert stalls
    assert int(stalls[1]) >= 1
    assert re.search(r"stall log: .*blocked for \d+ ms at .* in crunch_numbers$", summary, re.M)
