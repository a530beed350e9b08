"""bench/peers.py's reading of JUnit reports and its verdict on a difference (no download, no suite run)."""

from __future__ import annotations

from pathlib import Path

from bench import peers

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_a.TestThing" name="test_ok[asyncio]" time="0.1"/>
<testcase classname="tests.test_a" name="test_broken" time="0.1"><failure message="assert 1 == 2"/></testcase>
<testcase classname="tests.sub.test_b" name="test_skip" time="0"><skipped message="no"/></testcase>
<testcase classname="tests.sub.test_b" name="test_error" time="0"><error message="fixture"/></testcase>
</testsuite></testsuites>
"""


def test_a_junit_report_reads_as_outcomes_by_the_node_id_pytest_runs_again(tmp_path: Path) -> None:
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    (tmp_path / "tests" / "test_a.py").write_text("")
    (tmp_path / "tests" / "sub" / "test_b.py").write_text("")
    report = tmp_path / "report.xml"
    report.write_text(REPORT)
    assert peers.outcomes(report, tmp_path) == {
        "tests/test_a.py::TestThing::test_ok[asyncio]": "passed",
        "tests/test_a.py::test_broken": "failed",
        "tests/sub/test_b.py::test_skip": "skipped",
        "tests/sub/test_b.py::test_error": "error",
    }


def test_only_a_test_that_always_passes_plainly_and_never_under_loopstat_is_blamed_on_loopstat() -> None:
    n = peers.RERUNS
    assert peers.verdict(f"{n}/{n}", f"0/{n}", "passed", "failed") == "under loopstat-run only"
    assert peers.verdict(f"{n}/{n}", f"0/{n}", "failed", "passed") == "flaky: fails plainly too"
    assert peers.verdict(f"{n}/{n}", f"{n}/{n}", "passed", "failed") == "flaky: not reproduced"
    assert peers.verdict(f"{n - 1}/{n}", f"0/{n}", "passed", "failed") == "flaky: fails plainly too"
    assert peers.verdict(f"{n}/{n}", f"1/{n}", "passed", "failed") == "flaky: varies under loopstat-run"


def test_a_test_missing_from_one_run_is_a_difference() -> None:
    plain = peers.Run({"t::a": "passed", "t::b": "passed"}, 1.0, 0, 0, "")
    monitored = peers.Run({"t::a": "passed", "t::c": "failed"}, 1.0, 1, 3, "")
    assert peers.differences(plain, monitored) == [("t::b", "passed", "absent"), ("t::c", "absent", "failed")]
