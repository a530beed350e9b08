from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, Callable, Optional, TypeVar

import pytest
import uvloop

from loopstat import _origin
from loopstat._options import RUN_VARIABLES, VARIABLES, forget
from tests import ports
from tests.receiver import Receiver

T = TypeVar("T")

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


LOOPS = ("asyncio", "uvloop")
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def coroutine_test(function: Callable[..., object]) -> Optional[Callable[..., Coroutine[Any, Any, None]]]:
    """The coroutine function a test runs: itself, or the test Hypothesis wraps; None for a plain test."""
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    return inner if inspect.iscoroutinefunction(inner) else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every async test once on the stdlib loop and once on uvloop."""
    if coroutine_test(metafunc.function) is not None:
        metafunc.parametrize("loop_kind", LOOPS, indirect=True)


@pytest.fixture(autouse=True)  # autouse: every test's closure has it, so any async test can be parametrized
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The loop an async test runs on: "asyncio" or "uvloop"."""
    kind: str = getattr(request, "param", "asyncio")
    return kind


def run_on(kind: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new loop of ``kind``, as ``asyncio.run`` would.

    No event-loop policy is involved: policies are deprecated from Python 3.14.
    """
    factory = LOOP_FACTORIES[kind]
    if sys.version_info < (3, 11):
        return run_without_runner(factory, coro)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def run_without_runner(factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run()``'s steps with the loop from ``factory``: 3.9 and 3.10 have no ``asyncio.Runner``."""
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:  # an empty gather() would make its future on the policy's loop, not this one
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Optional[bool]:
    """Run an async test on the loop its ``loop_kind`` names (each example on a new loop under Hypothesis)."""
    test = pyfuncitem.obj
    inner = coroutine_test(test)
    if inner is None:
        return None
    kind = str(pyfuncitem.funcargs["loop_kind"])
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    if inner is test:
        run_on(kind, inner(**kwargs))
        return True

    def each_example(*args: Any, **kwargs: Any) -> None:
        run_on(kind, inner(*args, **kwargs))

    # Hypothesis's documented hook for running a test that is not a plain function.
    handle = test.hypothesis
    handle.inner_test = each_example
    try:
        test(**kwargs)
    finally:
        handle.inner_test = inner
    return True


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
