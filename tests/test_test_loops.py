"""The test suite's own loops: pytest-asyncio runs each async test on the loop its id names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LOOPS


def id_names(request: pytest.FixtureRequest, loop_kind: str) -> bool:
    """Whether the test's id names ``loop_kind`` (and no other loop) as its loop."""
    params = request.node.name.partition("[")[2].rstrip("]").split("-")
    return [part for part in params if part in LOOPS] == [loop_kind]


async def test_an_async_test_runs_on_the_loop_its_id_names(loop_kind: str, request: pytest.FixtureRequest) -> None:
    assert id_names(request, loop_kind), request.node.name
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop) == (loop_kind == "uvloop"), type(loop)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers())
async def test_each_hypothesis_example_runs_on_the_loop_its_id_names(
    loop_kind: str, request: pytest.FixtureRequest, number: int
) -> None:
    assert id_names(request, loop_kind), request.node.name
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop) == (loop_kind == "uvloop"), type(loop)


@pytest.fixture
async def fixture_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    loop = asyncio.get_running_loop()
    yield loop
    assert asyncio.get_running_loop() is loop  # its teardown too


async def test_an_async_fixture_runs_on_its_tests_loop(
    fixture_loop: asyncio.AbstractEventLoop, loop_kind: str, request: pytest.FixtureRequest
) -> None:
    assert id_names(request, loop_kind), request.node.name
    assert fixture_loop is asyncio.get_running_loop()
    assert isinstance(fixture_loop, uvloop.Loop) == (loop_kind == "uvloop"), type(fixture_loop)


def test_a_plain_test_is_not_parametrized_by_loop(loop_kind: str, request: pytest.FixtureRequest) -> None:
    assert "[" not in request.node.name
    assert loop_kind == "asyncio"  # the fixture's default: nothing to run on
