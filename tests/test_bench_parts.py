"""The instruction bench's subsets, options and children, the stand-in cost bench's children, without valgrind, and the
causes bench's lines for misnamed stalls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import __main__ as bench_main
from bench import causes, instructions, stand_in_cost
from bench.web import ROOT, child_env


def test_a_subset_keeps_the_workloads_and_variants_named_and_always_the_baseline() -> None:
    plan = instructions.subset(instructions.FULL, ["ping-pong"], ["naive", "loopstat"])
    assert plan.sizes == {"ping-pong": instructions.FULL.sizes["ping-pong"]}
    assert plan.counted == ("none", "naive", "loopstat")
    assert plan.idle == ("none", "naive", "loopstat")
    assert instructions.subset(instructions.FULL) == instructions.FULL


@pytest.mark.parametrize(
    ("workloads", "variants", "message"),
    [(["pingpong"], [], "workload: 'pingpong' is not one of"), ([], ["loopstat-x"], "variant: 'loopstat-x'")],
)
def test_an_unknown_workload_or_variant_is_refused_by_name(
    workloads: list[str], variants: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        instructions.subset(instructions.FULL, workloads, variants)


@pytest.mark.parametrize(("where", "call"), stand_in_cost.CASES)
@pytest.mark.parametrize("on", ["on", "off"])
def test_every_stand_in_cost_child_runs(where: str, call: str, on: str) -> None:
    command = [sys.executable, "-m", "bench.stand_in_cost", "child", where, call, on, "100"]
    done = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("layout", ["0", "2"])
def test_a_counted_child_runs_in_a_layout_and_prints_its_seconds(layout: str) -> None:
    command = [sys.executable, "-m", "bench.counted", "parked", "ping-pong", "asyncio", "none", "20", "9", layout]
    done = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["seconds"] > 0


@pytest.mark.parametrize("option", ["--layouts", "--jobs"])
def test_fewer_than_one_layout_or_job_is_refused_by_name(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_main.parse(["instructions", option, "0"])
    assert f"{option}: at least 1" in capsys.readouterr().err


def test_a_stall_of_a_cause_named_otherwise_is_said_with_its_reason_and_one_named_right_is_not() -> None:
    found = [("gil", "its thread waited for the GIL"), ("cpu", "its thread held the GIL for 60 ms of it")]
    assert causes.misses("uvloop", "gil", found) == [
        "gil on uvloop: a stall named cpu: its thread held the GIL for 60 ms of it"
    ]
