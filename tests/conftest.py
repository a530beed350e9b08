from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Callable, Optional

import pytest
import uvloop

from loopstat import _origin, _worker
from loopstat._options import RUN_VARIABLES, VARIABLES, forget
from tests import ports
from tests.receiver import Receiver

# A module whose every test is end-to-end says so at its top (docs/testing.md).
E2E_MODULE = re.compile(r"^pytestmark = pytest\.mark\.e2e\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    """Under the default ``-m "not e2e"``, a module marked e2e as a whole is not imported at all.

    Every test in it would be deselected anyway; not importing it spares each run (and each
    pytest-xdist worker) the import, and lets the library's environments go without the
    end-to-end tools such modules import (pyte, datadog-api-client: setup.cfg).
    """
    if config.getoption("markexpr") != "not e2e" or collection_path.suffix != ".py":
        return None
    try:
        source = collection_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # collected as usual: pytest reports whatever is wrong with it
    return True if E2E_MODULE.search(source) else None


# Every variable loopstat reads (install()'s and loopstat-run's); tests start from none of them set.
ENV_VARS = VARIABLES + RUN_VARIABLES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    forget()  # settings resolved (and warned about) by an earlier test


@pytest.fixture(autouse=True)
def no_worker_slot_left() -> Iterator[None]:
    """A worker slot a test claimed (worker_tag=True) is let go after it: held, it would mark every later log line."""
    yield
    if _worker.held() is not None:
        _worker.after_fork_in_child()  # closes the slot's lock and forgets it, as a forked child does


@pytest.fixture(autouse=True)
def no_container(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as outside any container wherever the suite runs (tests/test_origin.py gives them one)."""
    for name in ("CGROUP_PATH", "MOUNTINFO_PATH", "NAMESPACE_PATH"):
        monkeypatch.setattr(_origin, name, os.devnull)
    _origin.forget()


LOOPS = ("asyncio", "uvloop")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOP_FACTORIES: dict[str, LoopFactory] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

# pytest-asyncio runs every async test once per loop. From 1.4 (Python 3.10+) it takes loop factories
# from the hook below; 1.2, the last release for 3.9, only takes an event-loop policy (deprecated from 3.14).
FACTORY_HOOK = sys.version_info >= (3, 10)

if FACTORY_HOOK:

    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
        """Each async test on a new stdlib loop and on a new uvloop loop, the name in its id."""
        return LOOP_FACTORIES

else:

    def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
        """Run every async test once on the stdlib loop and once on uvloop."""
        inner = getattr(getattr(metafunc.function, "hypothesis", None), "inner_test", metafunc.function)
        if inspect.iscoroutinefunction(inner):  # a coroutine function, or one Hypothesis's @given wraps
            metafunc.parametrize("loop_kind", LOOPS, indirect=True)

    @pytest.fixture
    def event_loop_policy(loop_kind: str) -> asyncio.AbstractEventLoopPolicy:
        """The policy pytest-asyncio 1.2 makes the test's loop with (3.9 only: no warning there)."""
        if loop_kind == "uvloop":
            policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
            return policy
        return asyncio.DefaultEventLoopPolicy()

    @pytest.fixture(autouse=True)
    def close_leftover_loop() -> Iterator[None]:
        """Close the unused loop pytest-asyncio 1.2 leaves set on the policy after a test.

        Dropped unclosed, its ResourceWarning (an error here) would land on whichever later test the
        collector runs in.
        """
        yield
        policy = asyncio.get_event_loop_policy()
        loop = getattr(getattr(policy, "_local", None), "_loop", None)
        if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_running() and not loop.is_closed():
            loop.close()


@pytest.fixture(autouse=True)  # autouse: every test's closure has it, so any async test can be parametrized (3.9)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The loop an async test runs on: "asyncio" or "uvloop" ("asyncio" for a plain test)."""
    if not FACTORY_HOOK:
        kind: str = getattr(request, "param", "asyncio")
        return kind
    # The factory pytest-asyncio parametrized the test with, named back by its key.
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    for name, factory in LOOP_FACTORIES.items():
        if any(value is factory for value in params.values()):
            return name
    return "asyncio"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()
    assert rx.bad == [], f"malformed lines received: {rx.bad}"


@pytest.fixture
def free_port() -> int:
    """A loopback UDP port on which nothing listens."""
    return ports.free_port("udp")


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
