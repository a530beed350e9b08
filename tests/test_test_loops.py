"""The test suite's own loops: each async test runs on the loop its id names, with no event-loop policy."""

from __future__ import annotations

import asyncio

import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LOOPS


async def test_an_async_test_runs_on_the_loop_its_id_names(loop_kind: str) -> None:
    assert loop_kind in LOOPS
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop) == (loop_kind == "uvloop"), type(loop)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers())
async def test_each_hypothesis_example_runs_on_the_loop_its_id_names(loop_kind: str, number: int) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop) == (loop_kind == "uvloop"), type(loop)


def test_a_plain_test_is_not_parametrized_by_loop(loop_kind: str) -> None:
    assert loop_kind == "asyncio"  # the fixture's default: nothing to run on
