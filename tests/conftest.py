from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest
import uvloop

from loopstat import _origin
from loopstat._options import RUN_VARIABLES, VARIABLES, forget
from tests.receiver import Receiver

# Every variable loopstat reads (install()'s and loopstat-run's); tests start from none of them set.
ENV_VARS = VARIABLES + RUN_VARIABLES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    forget()  # settings resolved (and warned about) by an earlier test


@pytest.fixture(autouse=True)
def no_container(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as outside any container wherever the suite runs (tests/test_origin.py gives them one)."""
    for name in ("CGROUP_PATH", "MOUNTINFO_PATH", "NAMESPACE_PATH"):
        monkeypatch.setattr(_origin, name, os.devnull)
    _origin.forget()


@pytest.fixture(autouse=True)
def close_leftover_loop() -> Iterator[None]:
    """Close the unused loop pytest-asyncio leaves set on the policy after an async test.

    A later ``asyncio.run()`` would drop it unclosed, and its ResourceWarning
    (an error here) would land on whichever test the collector runs in.
    """
    yield
    policy = asyncio.get_event_loop_policy()
    loop = getattr(getattr(policy, "_local", None), "_loop", None)
    if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_running() and not loop.is_closed():
        loop.close()


# Whole programs and real servers: run once per tox run (the e2e env), not once per Python.
E2E_MODULES = {
    "test_pipeline",
    "test_agent_faults",
    "test_cli",
    "test_run",
    "test_contrib",
    "test_dashboards",
    "test_grafana_render",
    "test_pre_fork",
    "test_package",
    "test_soak_smoke",
    "test_bench_smoke",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)


LOOPS = ("asyncio", "uvloop")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every async test once on the stdlib loop and once on uvloop."""
    if inspect.iscoroutinefunction(metafunc.function):
        metafunc.parametrize("event_loop_policy", LOOPS, indirect=True)


@pytest.fixture
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if getattr(request, "param", "asyncio") == "uvloop":
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()
    assert rx.bad == [], f"malformed lines received: {rx.bad}"


@pytest.fixture
def free_port() -> int:
    """A loopback UDP port on which nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def loopstat_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="loopstat")
    return caplog


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; whatever still runs at the end is killed."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
