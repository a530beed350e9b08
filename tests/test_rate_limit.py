"""The one rate limiter behind loopstat's repeated warnings, on a fake clock: exact, without sleeping."""

from __future__ import annotations

from loopstat._rate_limit import EVERY_SECONDS, RateLimit
from tests.fake_clock import FakeClock


def test_a_key_passes_the_first_time_with_nothing_held() -> None:
    limit: RateLimit[str] = RateLimit(clock=FakeClock())
    assert limit.due("a") == 0


def test_a_key_is_held_back_for_a_minute_then_passes_with_the_count_held() -> None:
    clock = FakeClock()
    limit: RateLimit[str] = RateLimit(clock=clock)
    assert limit.due("a") == 0
    for _ in range(3):
        clock.jump(19.9)
        assert limit.due("a") is None
    clock.jump(EVERY_SECONDS - 3 * 19.9)  # exactly a minute after it passed
    assert limit.due("a") == 3
    assert limit.due("a") is None  # and the minute starts again


def test_keys_are_limited_each_on_its_own() -> None:
    clock = FakeClock()
    limit: RateLimit[str] = RateLimit(clock=clock)
    assert limit.due("a") == 0
    clock.jump(1.0)
    assert limit.due("b") == 0
    assert limit.due("a") is None
    clock.jump(EVERY_SECONDS - 1.0)
    assert limit.due("a") == 1
    assert limit.due("b") is None


def test_the_period_is_a_parameter() -> None:
    clock = FakeClock()
    limit: RateLimit[None] = RateLimit(seconds=1.0, clock=clock)
    assert limit.due(None) == 0
    clock.jump(0.5)
    assert limit.due(None) is None
    clock.jump(0.5)
    assert limit.due(None) == 1


def test_a_flood_of_new_keys_makes_it_start_afresh_rather_than_grow() -> None:
    clock = FakeClock()
    limit: RateLimit[int] = RateLimit(keys=3, clock=clock)
    assert [limit.due(key) for key in range(3)] == [0, 0, 0]
    assert limit.due(0) is None  # remembered
    assert limit.due(3) == 0  # a fourth key: the memory starts afresh
    assert limit.due(0) == 0  # forgotten, so it passes again


def test_clear_forgets_every_key() -> None:
    clock = FakeClock()
    limit: RateLimit[str] = RateLimit(clock=clock)
    assert limit.due("a") == 0
    limit.clear()
    assert limit.due("a") == 0
