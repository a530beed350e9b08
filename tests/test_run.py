"""``loopstat-run COMMAND``: real programs, run with loopstat on their loops, sending to a loopback receiver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from loopstat import _options
from tests.ports import free_port
from tests.receiver import Line, Receiver
from tests.web_servers import aiohttp_app, check_serves_and_sends, http_get, start_server

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

BIN = Path(sys.executable).parent
LOOPSTAT_RUN = str(BIN / "loopstat-run")


# The programs run their loop for a second, 20 intervals: loopstat is imported as the first loop starts, a monitor
# begins at its first sample and sends from the second, and on a loaded machine the import alone can outlast
# 0.1 s (a loop that ends within one interval is not watched).
def environment(receiver: Receiver, **extra: str) -> Dict[str, str]:
    env = dict(os.environ, STATSD_HOST="127.0.0.1", STATSD_PORT=str(receiver.port), LOOPSTAT_INTERVAL="0.05")
    env.update(extra)
    return env


def program(tmp_path: Path, source: str, name: str = "app.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


BLOCKS_THEN_EXITS_3 = """
    import asyncio, sys, time

    async def main():
        await asyncio.sleep(0.2)
        time.sleep(0.25)   # blocks the loop: loopstat has to see it
        await asyncio.sleep(0.2)

    asyncio.run(main())
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[int, List[Line]]:
    """BLOCKS_THEN_EXITS_3 run once under loopstat-run: its exit status and what the receiver got."""
    receiver = Receiver()
    try:
        app = program(tmp_path_factory.mktemp("blocked"), BLOCKS_THEN_EXITS_3)
        env = environment(receiver, LOOPSTAT_PREFIX="runtest", LOOPSTAT_TAGS="team:payments,tier:web")
        done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, timeout=30)
        lines = receiver.settle(lambda lines: any(x.name == "runtest.lag" and x.value >= 150 for x in lines))
    finally:
        receiver.close()
    return done.returncode, lines


def test_asyncio_run_program_sends_lag_with_prefix_and_tags_from_the_environment(
    blocked_run: Tuple[int, List[Line]],
) -> None:
    _, lines = blocked_run
    lag = [line for line in lines if line.name == "runtest.lag"]
    assert {line.type for line in lag} == {"g", "ms"}
    # The worker tag is loopstat-run's default: the program is the only child of this test holding a slot.
    assert all(dict(line.tags) == {"team": "payments", "tier": "web", "worker": "0"} for line in lag)


def test_exit_status_of_the_program_passes_through(blocked_run: Tuple[int, List[Line]]) -> None:
    status, _ = blocked_run
    assert status == 3


def test_python_m_loopstat_run_works_like_loopstat_run(tmp_path: Path, receiver: Receiver) -> None:
    app = program(tmp_path, "import asyncio, sys\nasyncio.run(asyncio.sleep(1.0))\nsys.exit(3)\n")
    done = subprocess.run(
        [sys.executable, "-m", "loopstat", "run", "--", sys.executable, app], env=environment(receiver), timeout=30
    )
    assert done.returncode == 3
    receiver.settle(lambda lines: any(x.name == "loopstat.lag" for x in lines))


def test_the_program_replaces_loopstat_run_and_gets_its_signals(tmp_path: Path, receiver: Receiver) -> None:
    app = program(
        tmp_path,
        """
        import asyncio, os
        async def main():
            print(os.getpid(), flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """,
    )
    proc = subprocess.Popen([LOOPSTAT_RUN, sys.executable, app], env=environment(receiver), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert int(proc.stdout.readline()) == proc.pid, "exec'd, not wrapped in a waiting parent"
    receiver.settle(lambda lines: any(x.name == "loopstat.tasks" for x in lines))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    proc.stdout.close()


def test_every_loop_the_program_runs_is_monitored(tmp_path: Path, receiver: Receiver) -> None:
    # Two asyncio.run() calls in a row, and a third loop in a thread, told apart by the task count.
    app = program(
        tmp_path,
        """
        import asyncio, threading

        async def tasks(n):
            held = [asyncio.ensure_future(asyncio.sleep(1)) for _ in range(n - 1)]
            await asyncio.sleep(0.15)
            for task in held:
                task.cancel()

        asyncio.run(tasks(2))
        asyncio.run(tasks(3))
        thread = threading.Thread(target=asyncio.run, args=(tasks(5),))
        thread.start()
        thread.join()
        """,
    )
    subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=environment(receiver), timeout=30, check=True)
    receiver.settle(lambda lines: {2.0, 3.0, 5.0} <= {x.value for x in lines if x.name == "loopstat.tasks"})


def test_an_existing_sitecustomize_still_runs(tmp_path: Path, receiver: Receiver) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['FROM_SITECUSTOMIZE'] = 'yes'\n")
    app = program(
        tmp_path,
        """
        import asyncio, os
        print(os.environ.get("FROM_SITECUSTOMIZE"))
        asyncio.run(asyncio.sleep(1.0))
        """,
    )
    env = environment(receiver, PYTHONPATH=str(site))
    done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout == "yes\n"
    assert done.stderr == ""
    receiver.settle(lambda lines: any(x.name == "loopstat.lag" for x in lines))


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOOPSTAT_INTERVAL", "soon"),
        ("LOOPSTAT_STALL_THRESHOLD", "-1"),
        ("LOOPSTAT_TAGS", "team:"),
        ("LOOPSTAT_PREFIX", "9lives"),
    ],
)
def test_a_bad_variable_is_named_in_one_line_and_the_command_does_not_run(
    tmp_path: Path, variable: str, value: str
) -> None:
    marker = tmp_path / "ran"
    env = dict(os.environ, **{variable: value})
    command = [LOOPSTAT_RUN, sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith(f"loopstat-run: {variable}: ")
    assert repr(value) in done.stderr
    assert done.stderr.count("\n") == 1
    assert not marker.exists()


def test_an_unknown_command_fails_like_a_shell() -> None:
    done = subprocess.run([LOOPSTAT_RUN, "no-such-command-here"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 127
    assert done.stderr == "loopstat-run: no-such-command-here: command not found\n"


ASGI_APP = """
    import time

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        time.sleep(0.001)  # a blocking call: counted where loopstat counts them by default, on uvloop
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_uvicorn_app_is_monitored_without_code_changes(
    tmp_path: Path, receiver: Receiver, spawned: List[subprocess.Popen[str]], loop: str
) -> None:
    program(tmp_path, ASGI_APP)
    port = free_port("tcp")
    command = [LOOPSTAT_RUN, str(BIN / "uvicorn"), "app:app", "--port", str(port), "--loop", loop]
    proc = start_server(command, "Uvicorn running on", spawned, environment(receiver), tmp_path)
    # loopstat-run's monitor begins at its first sample: the request comes after, to be watched.
    receiver.settle(lambda lines: any(x.name == "loopstat.tasks" for x in lines))
    assert http_get(port) == b"ok"
    lines = receiver.settle(lambda lines: sum(x.name == "loopstat.tasks" for x in lines) >= 4)
    assert any(x.name == "loopstat.utilization" for x in lines)
    # Blocking calls are counted by default on uvloop only: proof of the loop used.
    counted = [x for x in lines if x.name == "loopstat.blocking_calls"]
    assert [dict(x.tags)["call"] for x in counted] == (["time.sleep"] if loop == "uvloop" else [])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_aiohttp_run_app_is_monitored_without_code_changes(
    tmp_path: Path, receiver: Receiver, spawned: List[subprocess.Popen[str]]
) -> None:
    port = free_port("tcp")
    app = program(tmp_path, aiohttp_app(port, '"ok"'))
    proc = start_server([LOOPSTAT_RUN, sys.executable, app], "Running on", spawned, environment(receiver), tmp_path)
    check_serves_and_sends(port, b"ok", receiver, "loopstat.lag")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


# What start-up must not import: loopstat waits for the program's first running loop.
HEAVY = ("asyncio", "ssl", "subprocess", "loopstat", "logging", "threading")

MODULES_THEN_A_BLOCK = """
    import sys
    print(sorted(m for m in sys.modules if m.split(".")[0] in %r))
    import asyncio, time

    async def main():
        await asyncio.sleep(0.2)
        time.sleep(0.25)   # blocks the loop: loopstat has to see it
        await asyncio.sleep(0.2)

    asyncio.run(main())
"""


def test_start_up_imports_nothing_heavy_and_the_first_loop_is_monitored(tmp_path: Path, receiver: Receiver) -> None:
    app = program(tmp_path, MODULES_THEN_A_BLOCK % (HEAVY,))
    env = environment(receiver)
    done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
    receiver.settle(lambda lines: any(x.name == "loopstat.stall" and x.value >= 200 for x in lines))


def test_a_process_that_never_runs_a_loop_never_imports_loopstat(tmp_path: Path) -> None:
    source = "import asyncio, sys\nprint(sorted(m for m in sys.modules if m.startswith('loopstat')))\n"
    done = subprocess.run(
        [LOOPSTAT_RUN, sys.executable, "-c", source], capture_output=True, text=True, timeout=30, check=True
    )
    assert (done.stdout, done.stderr) == ("[]\n", "")


# A hidden sitecustomize runs before loopstat's hook and plays a later Python's asyncio.
LATER_PYTHONS = {
    "set_running_loop_missing": """
        import asyncio.base_events, asyncio.events, types
        # The loop sets itself running through a function asyncio.events no longer has under this name.
        asyncio.base_events.events = types.SimpleNamespace(**vars(asyncio.events))
        del asyncio.events._set_running_loop, asyncio._set_running_loop
    """,
    "loop_calls_another_function": """
        import asyncio.base_events, asyncio.events, types
        # The loop class calls its own copy: asyncio.events._set_running_loop (hooked next) is never called.
        asyncio.base_events.events = types.SimpleNamespace(**vars(asyncio.events))
    """,
}
APP_WITH_OUTPUT = """
    import asyncio, sys, time

    async def main():
        await asyncio.sleep(0.1)
        time.sleep(0.25)
        await asyncio.sleep(0.1)
        return "finished"

    print(asyncio.run(main()))
    sys.exit(4)
"""


@pytest.mark.parametrize("later", sorted(LATER_PYTHONS))
def test_an_asyncio_whose_loops_do_not_call_the_hook_runs_the_program_unmonitored_with_one_warning(
    tmp_path: Path, receiver: Receiver, later: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(LATER_PYTHONS[later]))
    app = program(tmp_path, APP_WITH_OUTPUT)
    env = environment(receiver, PYTHONPATH=str(site))
    plain = subprocess.run([sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
    assert (plain.returncode, plain.stdout, plain.stderr) == (4, "finished\n", "")
    done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (plain.returncode, plain.stdout)
    assert done.stderr.startswith("loopstat-run: ")
    assert done.stderr.endswith("; the program runs unmonitored\n")
    assert done.stderr.count("\n") == 1
    assert receiver.quiet(0.3) == 0


GEVENT_APP = """
    from gevent import monkey; monkey.patch_all()
    import asyncio, gc, time

    async def main():
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.01)
        await asyncio.sleep(0.3)
        gc.collect()
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:  # a 300 ms block no greenlet can interrupt
            pass
        await asyncio.sleep(0.5)

    asyncio.run(main())
    print("done")
"""


def test_gevent_patching_first_sees_a_clean_process_every_probe_runs_and_the_block_counts_a_stall(
    tmp_path: Path, receiver: Receiver
) -> None:
    pytest.importorskip("gevent", reason="gevent is not installed for this Python")
    app = program(tmp_path, GEVENT_APP)
    env = environment(receiver, LOOPSTAT_GC="1", LOOPSTAT_PROFILE="1", LOOPSTAT_BLOCKING_CALLS="1")
    done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "failed" not in done.stderr, done.stderr
    wanted = {"loopstat.stalls", "loopstat.executor.threads", "loopstat.gc.collections", "loopstat.utilization"}
    lines = receiver.settle(lambda lines: wanted <= {x.name for x in lines})
    # The block is a stall of its full length (a loaded machine may add short ones of its own).
    assert sum(x.value for x in lines if x.name == "loopstat.stalls") >= 1
    receiver.settle(lambda lines: any(x.name == "loopstat.stall" and x.value >= 250 for x in lines))


# anyio's thread-pool test (its test_run_sync_from_thread_pooling counts threads with threading), on a loop
# that lasts 30 intervals and blocks once: the monitor starts, every probe with it, and a stall wakes the watchdog.
ANYIO_THREAD_POOL = """
    import sys, threading, time
    import anyio
    from anyio import to_thread

    async def main():
        workers = {await to_thread.run_sync(threading.get_ident) for _ in range(5)}
        await anyio.sleep(1.0)
        time.sleep(0.3)
        await anyio.sleep(0.2)
        workers |= {await to_thread.run_sync(threading.get_ident) for _ in range(5)}
        from loopstat import _threads
        print("loopstat's threads:", sorted({t.name for t in _threads._running.values()}))
        print("anyio's workers:", len(workers), "threads added:", threading.active_count() - initial)

    initial = threading.active_count()
    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": sys.argv[1] == "uvloop"})
    deadline = time.monotonic() + 10
    while threading.active_count() != initial and time.monotonic() < deadline:
        time.sleep(0.01)
    print("threads added after the loop:", threading.active_count() - initial)
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_anyios_thread_pool_counts_threads_as_without_loopstat_with_every_probe_on(
    tmp_path: Path, receiver: Receiver, loop: str
) -> None:
    pytest.importorskip("anyio", reason="anyio is not installed for this Python")
    app = program(tmp_path, ANYIO_THREAD_POOL)
    env = environment(receiver, LOOPSTAT_GC="1", LOOPSTAT_PROFILE="1", LOOPSTAT_BLOCKING_CALLS="1")
    done = subprocess.run(
        [LOOPSTAT_RUN, sys.executable, app, loop], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "loopstat's threads: ['loopstat-profiler', 'loopstat-watchdog']\n"
        "anyio's workers: 1 threads added: 1\n"
        "threads added after the loop: 0\n"
    ), done.stderr
    receiver.settle(lambda lines: any(x.name == "loopstat.stall" and x.value >= 250 for x in lines))


@pytest.mark.parametrize(
    "form", ["udp://127.0.0.1:{port}", "127.0.0.1:{port}", "unix://{path}", "unixgram://{path}", "{path}"]
)
def test_loopstat_run_runs_the_command_and_sends_for_each_dogstatsd_url_form(tmp_path: Path, form: str) -> None:
    path = str(tmp_path / "dsd.socket")
    receiver = Receiver(path=path) if "{path}" in form else Receiver()
    try:
        env = dict(os.environ, DD_DOGSTATSD_URL=form.format(port=receiver.port, path=path), LOOPSTAT_INTERVAL="0.05")
        app = program(tmp_path, "import asyncio\nasyncio.run(asyncio.sleep(1.0))\nprint('ran')\n")
        done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (0, "ran\n", "")
        receiver.settle(lambda lines: any(x.name == "loopstat.lag" for x in lines))
    finally:
        receiver.close()


def test_loopstat_run_sends_over_a_unixstream_dogstatsd_url(tmp_path: Path) -> None:
    from tests.test_unix_socket import StreamAgent

    path = str(tmp_path / "dsd.socket")
    agent = StreamAgent(path)
    try:
        env = dict(os.environ, DD_DOGSTATSD_URL=f"unixstream://{path}", LOOPSTAT_INTERVAL="0.05")
        app = program(tmp_path, "import asyncio\nasyncio.run(asyncio.sleep(1.0))\nprint('ran')\n")
        done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (0, "ran\n", "")
        deadline = time.monotonic() + 10
        while not any(line.startswith("loopstat.lag:") for line in agent.lines()):
            assert time.monotonic() < deadline, "lag over the stream socket"
            time.sleep(0.02)
    finally:
        agent.close()


def test_a_dogstatsd_url_loopstat_cannot_use_warns_once_and_the_command_runs(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = environment(receiver, DD_DOGSTATSD_URL="udp://agent:81250", DD_AGENT_HOST="127.0.0.1")
    env["DD_DOGSTATSD_PORT"] = env.pop("STATSD_PORT")
    app = program(tmp_path, "import asyncio\nasyncio.run(asyncio.sleep(1.0))\nprint('ran')\n")
    done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "ran\n")
    assert done.stderr == (
        "loopstat: DD_DOGSTATSD_URL: 'udp://agent:81250' has port '81250', which is out of range; expected "
        + _options.URL_FORM
        + "; DD_DOGSTATSD_URL is not used\n"
    )
    receiver.settle(lambda lines: any(x.name == "loopstat.lag" for x in lines))


def test_asyncio_looks_as_without_loopstat_run_apart_from_the_hook(tmp_path: Path, receiver: Receiver) -> None:
    source = """
        import asyncio, asyncio.events, _asyncio

        def originals():
            return (
                asyncio.get_running_loop is _asyncio.get_running_loop,
                asyncio.events.get_running_loop is _asyncio.get_running_loop,
                asyncio.events._get_running_loop is _asyncio._get_running_loop,
                type(asyncio.__loader__).__name__,
                type(asyncio.__spec__.loader).__name__,
            )

        print(originals())
        asyncio.run(asyncio.sleep(1.0))  # intervals enough on a loaded machine: loopstat is imported as the loop starts
        print(originals())
    """
    app = program(tmp_path, source)
    plain = subprocess.run([sys.executable, app], capture_output=True, text=True, timeout=30, check=True)
    assert plain.stdout.splitlines()[0] == "(True, True, True, 'SourceFileLoader', 'SourceFileLoader')"
    env = environment(receiver)
    done = subprocess.run([LOOPSTAT_RUN, sys.executable, app], env=env, capture_output=True, text=True, timeout=30)
    # Until the first loop runs, asyncio.events checks that the hook sees it; afterwards all is as plain.
    first, after = done.stdout.splitlines()
    assert first == "(True, False, False, 'SourceFileLoader', 'SourceFileLoader')"
    assert after == plain.stdout.splitlines()[1]
    receiver.settle(lambda lines: any(x.name == "loopstat.lag" for x in lines))
