"""The bench's arithmetic on fixed inputs: confidence intervals, verdicts, and instruction slopes."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest

from bench import counted, instructions, report, stats
from bench.instructions import Cost, Count, Job, Plan


def test_t_quantiles_come_from_the_table_rounding_down_and_reach_the_normal_one() -> None:
    assert stats.t95(1) == 12.706
    assert stats.t95(10) == 2.228
    # 11 is between rows: the smaller df, so the interval is never too narrow.
    assert stats.t95(11) == 2.228
    assert stats.t95(120) == 1.980
    assert stats.t95(121) == stats.Z95


def test_t_quantile_without_degrees_of_freedom_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="df: expected at least 1"):
        stats.t95(0)


def test_two_rounds_give_the_textbook_t_interval_on_logarithms() -> None:
    # Worked by hand: logs -0.10536 and 0.09531, mean -0.005025, sd 0.14190,
    # half-width 12.706 x 0.14190 / sqrt(2) = 1.27491.
    r = stats.ratio_interval([0.9, 1.1])
    assert r.rounds == 2
    assert r.estimate == pytest.approx(math.sqrt(0.99), rel=1e-9)
    assert r.low == pytest.approx(0.27807, rel=1e-4)
    assert r.high == pytest.approx(3.56027, rel=1e-4)
    assert r.within_noise


def test_a_steady_slowdown_is_outside_the_noise() -> None:
    r = stats.ratio_interval([0.80, 0.82, 0.81, 0.79, 0.80])
    assert r.estimate == pytest.approx(0.80394, rel=1e-4)
    assert r.low == pytest.approx(0.78993, rel=1e-4)
    assert r.high == pytest.approx(0.81819, rel=1e-4)
    assert not r.within_noise


def test_identical_rounds_have_a_zero_width_interval_at_one() -> None:
    r = stats.ratio_interval([1.0, 1.0, 1.0])
    assert (r.estimate, r.low, r.high) == (1.0, 1.0, 1.0)
    assert r.within_noise


def test_one_round_has_no_interval_and_shows_no_difference() -> None:
    r = stats.ratio_interval([0.5])
    assert r.estimate == 0.5
    assert math.isnan(r.low)
    assert math.isnan(r.high)
    assert r.within_noise
    assert report.ratio(r) == "0.500 (no interval: 1 round)"


def test_ratios_pair_rounds_and_skip_missing_or_zero_baselines() -> None:
    r = stats.ratios([2.0, None, 3.0, 4.0], [2.0, 1.0, 0.0, 4.0])
    assert r.rounds == 2
    assert r.estimate == 1.0


def test_no_rounds_is_nan_and_prints_a_dash() -> None:
    r = stats.ratios([], [])
    assert r.rounds == 0
    assert math.isnan(r.estimate)
    assert report.ratio(r) == "-"


def test_percentile_interpolates_linearly() -> None:
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50.0) == 2.5
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], 25.0) == 1.75
    assert stats.median([7.0]) == 7.0
    assert math.isnan(stats.median([]))


def test_a_ratio_prints_its_interval_and_says_within_noise_when_it_holds_one() -> None:
    noisy = stats.Ratio(0.987, 0.962, 1.013, 5)
    clear = stats.Ratio(0.951, 0.930, 0.972, 5)
    assert report.ratio(noisy) == "0.987 [0.962, 1.013] within noise"
    assert report.ratio(clear) == "0.951 [0.930, 0.972]"
    assert report.change(noisy) == "-1.3% [-3.8%, +1.3%], within noise"
    assert report.change(clear) == "-4.9% [-7.0%, -2.8%]"


def test_a_target_passes_or_misses_only_when_the_whole_interval_agrees() -> None:
    assert report.judge(stats.Ratio(1.0, 0.996, 1.004, 9), lowest=0.995) is True
    assert report.judge(stats.Ratio(0.98, 0.97, 0.99, 9), lowest=0.995) is False
    assert report.judge(stats.Ratio(1.0, 0.96, 1.04, 9), lowest=0.995) is None
    assert report.judge(stats.Ratio(1.02, 1.01, 1.03, 9), highest=1.005) is False
    assert report.judge(stats.Ratio(1.0, math.nan, math.nan, 1), lowest=0.995) is None


PLAN = Plan({"ping-pong": (100, 600)}, ("none", "loopstat"), ("none", "loopstat"), (1000, 5000), 1)


def test_per_operation_cost_is_the_slope_and_timers_are_the_busy_extra_per_wall_second() -> None:
    counts = {
        Job("parked", "ping-pong", "asyncio", "none", 100): Count(1_000_000 + 100 * 50, 0.1),
        Job("parked", "ping-pong", "asyncio", "none", 600): Count(1_000_000 + 600 * 50, 0.6),
        # Start-up differs (imports), per operation 5 more.
        Job("parked", "ping-pong", "asyncio", "loopstat", 100): Count(2_000_000 + 100 * 55, 0.1),
        Job("parked", "ping-pong", "asyncio", "loopstat", 600): Count(2_000_000 + 600 * 55, 0.6),
        Job("busy", "ping-pong", "asyncio", "loopstat", 600): Count(2_000_000 + 600 * 55 + 8_000, 2.0),
    }
    found = instructions.costs(counts, PLAN)
    assert found[("ping-pong", "asyncio", "none")] == (Cost(50.0, 0.0),)
    assert found[("ping-pong", "asyncio", "loopstat")] == (Cost(55.0, 4_000.0),)
    # At a native 1,000 operations per second, none runs 50,000 instructions a second.
    per_op, per_second = instructions.share(Cost(55.0, 4_000.0), Cost(50.0, 0.0), 50_000.0)
    assert per_op == pytest.approx(0.1)
    assert per_second == pytest.approx(0.08)


def test_idle_cost_is_the_slope_between_the_two_windows() -> None:
    counts = {
        Job("idle", "-", "uvloop", "loopstat", 1000): Count(5_000_000 + 1_000_000, 1.0),
        Job("idle", "-", "uvloop", "loopstat", 5000): Count(5_000_000 + 5_200_000, 5.2),
    }
    assert instructions.idle_rates(counts) == {("uvloop", "loopstat"): pytest.approx(1_000_000.0)}


def test_every_probe_runs_on_both_loops_and_timerless_variants_get_no_busy_run() -> None:
    plan = Plan({"ping-pong": (100, 600)}, ("none", "loopstat-utilization"), ("none",), (1000, 5000), 1)
    jobs = instructions.jobs_of(plan, ["asyncio", "uvloop"], list(plan.counted), list(plan.idle))
    assert {(j.loop, j.variant) for j in jobs if j.mode != "idle"} == {
        ("asyncio", "none"),
        ("asyncio", "loopstat-utilization"),
        ("uvloop", "none"),
        ("uvloop", "loopstat-utilization"),
    }
    assert not [j for j in jobs if j.mode == "busy" and j.variant == "none"]
    assert len([j for j in jobs if j.mode == "idle"]) == 4


def test_instruction_table_shows_shares_against_the_baseline_and_dashes_without_one() -> None:
    found = {
        ("ping-pong", "asyncio", "none"): (Cost(50_000.0, 0.0),),
        ("ping-pong", "asyncio", "loopstat"): (Cost(51_000.0, 2_000_000.0),),
        ("ping-pong", "uvloop", "loopstat"): (Cost(30_000.0, 0.0),),
    }
    # 50,000 instructions x 200,000 operations a second = 10 G instructions a second.
    native = {("ping-pong", "asyncio"): 200_000.0, ("ping-pong", "uvloop"): 300_000.0}
    text = report.instruction_tables(found, native, ["none", "loopstat"], {})
    loopstat = next(line for line in text.splitlines() if line.startswith("| loopstat"))
    cells = [c.strip() for c in loopstat.split("|")[2:-1]]
    assert cells == ["51,000", "+1,000 (+2.00%)", "2.00M (0.020%)", "**+2.02%**", "30,000", "-", "-", "-"]
    assert "- uvloop: no `none` run, so no shares." in text
    assert "= 10.00 G instructions per second" in text


def test_instruction_targets_compare_ping_pong_with_the_naive_sampler_and_peers_with_their_match() -> None:
    found = {
        ("ping-pong", "asyncio", "none"): (Cost(100.0, 0.0),),
        ("ping-pong", "asyncio", "naive"): (Cost(101.0, 0.0),),
        ("ping-pong", "asyncio", "loopstat"): (Cost(103.0, 0.0),),
        ("ping-pong", "asyncio", "loopstat-lag"): (Cost(101.5, 0.0),),
        ("ping-pong", "asyncio", "loopmon"): (Cost(101.2, 0.0),),
    }
    targets = report.instruction_targets(found, {("ping-pong", "asyncio"): 1000.0})
    naive, loopmon = targets
    assert naive.what == "ping-pong vs naive"
    assert naive.measured.startswith("+2.00 points")
    assert naive.met is False
    # loopmon samples lag and tasks: it is matched with loopstat's sampler alone.
    assert loopmon.what == "ping-pong: `loopstat-lag` below `loopmon`"
    assert loopmon.met is False


def test_a_spread_is_the_median_lowest_and_highest_and_nan_without_values() -> None:
    assert stats.spread([3.0, 1.0, 10.0]) == stats.Spread(3.0, 1.0, 10.0)
    assert stats.spread([2.0, 1.0, 4.0, 3.0]) == stats.Spread(2.5, 1.0, 4.0)
    empty = stats.spread([])
    assert all(math.isnan(x) for x in (empty.median, empty.low, empty.high))


def test_a_limit_inside_the_range_over_layouts_is_within_the_noise_else_the_median_decides() -> None:
    assert stats.at_most(stats.Spread(0.3, 0.2, 0.4), 0.5) is True
    assert stats.at_most(stats.Spread(0.7, 0.6, 0.8), 0.5) is False
    # The median meets the limit, one layout does not: no verdict either way.
    assert stats.at_most(stats.Spread(0.45, 0.3, 0.62), 0.5) is None
    assert stats.at_most(stats.Spread(0.55, 0.3, 0.62), 0.5) is None
    # Right on an end of the range counts as inside it.
    assert stats.at_most(stats.Spread(0.4, 0.4, 0.5), 0.5) is None
    # One layout: a zero-width range, decided unless it sits on the limit.
    assert stats.at_most(stats.Spread(0.49, 0.49, 0.49), 0.5) is True
    assert stats.at_most(stats.Spread(math.nan, math.nan, math.nan), 0.5) is None


def test_each_layout_is_a_whole_measurement_its_busy_run_over_its_own_big_run() -> None:
    plan = dataclasses.replace(PLAN, layouts=2)
    counts = {}
    for layout, (start, per_op, busy_extra) in enumerate([(1_000_000, 55, 8_000), (1_300_000, 57, 6_000)]):
        counts[Job("parked", "ping-pong", "asyncio", "loopstat", 100, layout)] = Count(start + 100 * per_op, 0.1)
        counts[Job("parked", "ping-pong", "asyncio", "loopstat", 600, layout)] = Count(start + 600 * per_op, 0.6)
        busy = Count(start + 600 * per_op + busy_extra, 2.0)
        counts[Job("busy", "ping-pong", "asyncio", "loopstat", 600, layout)] = busy
    found = instructions.costs(counts, plan)
    assert found[("ping-pong", "asyncio", "loopstat")] == (Cost(55.0, 4_000.0), Cost(57.0, 3_000.0))
    assert instructions.middle(found[("ping-pong", "asyncio", "loopstat")]) == Cost(56.0, 3_500.0)


def test_a_figure_over_layouts_pairs_the_variants_layout_by_layout() -> None:
    found = {
        ("ping-pong", "uvloop", "loopstat"): (Cost(110.0, 0.0), Cost(104.0, 0.0), Cost(107.0, 0.0)),
        ("ping-pong", "uvloop", "none"): (Cost(100.0, 0.0), Cost(100.0, 0.0), Cost(101.0, 0.0)),
    }
    keys = [("ping-pong", "uvloop", "loopstat"), ("ping-pong", "uvloop", "none")]
    # Differences layout by layout: 10, 4, 6 (not 110 - 100 and 104 - 101 mixed).
    assert instructions.across(found, keys, lambda c, b: c.per_op - b.per_op) == stats.Spread(6.0, 4.0, 10.0)


def test_every_child_runs_in_every_layout_and_idle_windows_in_the_first() -> None:
    plan = Plan({"ping-pong": (100, 600)}, ("none", "loopstat"), ("none",), (1000, 5000), 1, layouts=3)
    jobs = instructions.jobs_of(plan, ["uvloop"], list(plan.counted), list(plan.idle))
    assert sorted({j.layout for j in jobs if j.mode != "idle"}) == [0, 1, 2]
    # Per layout: two sizes of each variant, and one busy run of loopstat.
    assert len([j for j in jobs if j.mode != "idle"]) == 3 * (2 * 2 + 1)
    assert {j.layout for j in jobs if j.mode == "idle"} == {0}


def test_layouts_keep_different_objects_of_every_size_class() -> None:
    assert counted.pad(0) == []
    one, two = counted.pad(1), counted.pad(2)
    assert len(two) == 2 * len(one) > 0
    # Every small-object size class of the allocator (16 bytes apart) from 48 to 512 bytes gets some.
    assert {(sys.getsizeof(b) + 15) // 16 for b in one} == set(range(3, 33))
    assert len({id(b) for b in two}) == len(two)


def test_a_target_within_the_range_over_layouts_says_so_and_a_clear_one_is_decided_on_the_median() -> None:
    def costs(*per_op: float) -> tuple[Cost, ...]:
        return tuple(Cost(p, 0.0) for p in per_op)

    found = {
        ("ping-pong", "uvloop", "none"): costs(100.0, 100.0, 100.0),
        ("ping-pong", "uvloop", "naive"): costs(101.0, 101.0, 101.0),
        # Over naive: +0.3, +0.7, +0.4 points; the 0.5 limit is inside.
        ("ping-pong", "uvloop", "loopstat"): costs(101.3, 101.7, 101.4),
        ("ping-pong", "asyncio", "none"): costs(100.0, 100.0, 100.0),
        ("ping-pong", "asyncio", "naive"): costs(101.0, 101.0, 101.0),
        # Over naive: +0.2, +0.6, +0.4 points, all under the 1.0 limit.
        ("ping-pong", "asyncio", "loopstat"): costs(101.2, 101.6, 101.4),
    }
    native = {("ping-pong", "uvloop"): 1000.0, ("ping-pong", "asyncio"): 1000.0}
    uv, aio = report.instruction_targets(found, native)
    assert (uv.loop, uv.met) == ("uvloop", None)
    assert uv.measured.startswith("+0.40 [+0.30, +0.70] points over naive")
    assert (aio.loop, aio.met) == ("asyncio", True)
    table = report.targets_table([uv, aio])
    assert "within the noise" in table.splitlines()[2]
    assert table.splitlines()[3].endswith("| PASS |")


def test_instruction_cells_give_the_median_and_the_range_over_layouts() -> None:
    found = {
        ("ping-pong", "asyncio", "none"): (Cost(1_000.0, 0.0), Cost(1_000.0, 0.0), Cost(1_000.0, 0.0)),
        ("ping-pong", "asyncio", "loopstat"): (Cost(1_010.0, 0.0), Cost(1_030.0, 0.0), Cost(1_020.0, 0.0)),
    }
    text = report.instruction_tables(found, {("ping-pong", "asyncio"): 1000.0}, ["none", "loopstat"], {})
    loopstat = next(line for line in text.splitlines() if line.startswith("| loopstat"))
    cells = [c.strip() for c in loopstat.split("|")[2:-1]]
    assert cells == ["1,020 [1,010, 1,030]", "+20 [+10, +30] (+2.00%)", "0.00M (0.000%)", "**+2.00%** [+1.00, +3.00]"]
    assert "the median over 3 memory layouts" in text
