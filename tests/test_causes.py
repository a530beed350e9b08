"""Causes of stalls: the classifier as a pure function of injected signals, and the signals themselves read for real."""

from __future__ import annotations

import gc
import os
import threading
import time
from time import perf_counter
from typing import Any, List, Optional

import pytest

from loopstat import _cgroup
from loopstat._metrics import METRICS
from loopstat.probes import signals
from loopstat.probes.causes import CAUSES, During, classify, importing


def stall(**given: Any) -> During:
    """A stall of 400 ms the watchdog watched for the last 300 ms, with these signals."""
    arguments: Any = {"duration": 0.4, "wall": 0.3, **given}
    return During(**arguments)


def cause(**given: Any) -> str:
    return classify(stall(**given)).cause


def test_a_thread_on_the_cpu_most_of_the_time_is_cpu_bound() -> None:
    verdict = classify(stall(cpu=0.29, run_delay=0.005, others_cpu=0.0, gc=0.0, blocked=0.0))
    assert verdict.cause == "cpu"
    assert verdict.why == "its thread ran on the CPU for 290 ms of the 300 ms watched"


def test_a_thread_off_the_cpu_with_nothing_else_running_waits_in_a_call() -> None:
    assert cause(cpu=0.002, run_delay=0.001, others_cpu=0.01) == "blocking_call"
    verdict = classify(stall(cpu=0.002, blocked=0.31))
    assert (verdict.cause, verdict.why) == (
        "blocking_call",
        "its thread was in blocking calls for 300 ms of the 300 ms watched",
    )


def test_a_garbage_collection_over_most_of_the_stall_is_gc_even_when_the_watchdog_came_late() -> None:
    verdict = classify(During(duration=0.4, wall=0.004, kept_out=0.3, gc=0.38, cpu=0.004))
    assert (verdict.cause, verdict.why) == ("gc", "the garbage collector ran for 380 ms of it")
    assert cause(gc=0.1, cpu=0.3) == "cpu", "a short collection inside a CPU-bound stall is not its cause"


def test_a_cpu_limit_that_froze_a_thread_ready_to_run_is_throttling() -> None:
    verdict = classify(stall(cpu=0.06, run_delay=0.24, throttled=0.22))
    assert (verdict.cause, verdict.why) == (
        "throttled",
        "the container was CPU-throttled for 220 ms of the 300 ms watched",
    )


def test_throttling_of_other_threads_does_not_explain_a_thread_that_slept() -> None:
    assert cause(cpu=0.001, run_delay=0.0, throttled=0.2) == "blocking_call"


def test_a_thread_ready_to_run_but_without_a_cpu_waited_on_the_scheduler() -> None:
    assert cause(cpu=0.1, run_delay=0.19, throttled=0.0) == "scheduler"
    assert cause(cpu=0.1, run_delay=0.19) == "scheduler", "no cgroup limit: the run queue alone"


def test_a_thread_off_the_cpu_while_other_threads_run_waits_for_the_gil() -> None:
    verdict = classify(stall(cpu=0.02, run_delay=0.01, others_cpu=0.28))
    assert (verdict.cause, verdict.why) == (
        "gil",
        "its thread waited for the GIL while other threads ran for 280 ms of the 300 ms watched",
    )


def test_waiting_for_the_gil_and_for_a_cpu_the_longer_wait_names_the_cause() -> None:
    # Each time the thread gets the GIL back it may wait for a CPU too, on a busy host.
    assert cause(cpu=0.02, run_delay=0.08, others_cpu=0.2) == "gil"
    assert cause(cpu=0.02, run_delay=0.2, others_cpu=0.16) == "scheduler"


def test_an_import_names_its_module_whatever_the_thread_did() -> None:
    verdict = classify(stall(cpu=0.3, importing="app/slow_module.py"))
    assert (verdict.cause, verdict.why) == ("import", "it was importing a module (app/slow_module.py)")
    assert cause(cpu=0.0, importing="") == "import"


def test_a_look_kept_out_by_the_gil_until_the_end_means_the_thread_held_it() -> None:
    verdict = classify(During(duration=0.4, wall=0.002, kept_out=0.29, cpu=0.0, gc=0.0))
    assert (verdict.cause, verdict.why) == ("cpu", "its thread held the GIL for 290 ms of it (in C code, most likely)")
    assert cause(wall=0.002, kept_out=0.29, importing="m.py") == "import"


def test_a_look_made_late_while_the_thread_was_in_a_watched_call_is_that_call_not_the_gil() -> None:
    # A time.sleep of 310 ms on a loaded machine: the watchdog, off the CPU, looked 182 ms late, during the call.
    verdict = classify(During(duration=0.31, wall=0.028, kept_out=0.182, cpu=0.001, gc=0.0, blocked=0.3))
    assert (verdict.cause, verdict.why) == (
        "blocking_call",
        "its thread was in blocking calls for 28 ms of the 28 ms watched",
    )
    # Only a short call at the end of a long hold of the GIL: still the GIL's.
    assert cause(wall=0.028, kept_out=0.182, cpu=0.001, gc=0.0, blocked=0.03) == "cpu"


def test_a_look_made_late_while_the_cgroup_limit_froze_the_process_is_throttling_not_the_gil() -> None:
    # 10 ms of CPU per 100 ms: the watchdog, in the same cgroup, was frozen with the loop and looked 92 ms late.
    frozen = During(duration=0.4, wall=0.06, kept_out=0.092, cpu=0.006, gc=0.0, run_delay=0.05, throttled=0.05)
    verdict = classify(frozen)
    assert (verdict.cause, verdict.why) == (
        "throttled",
        "the container was CPU-throttled for 50 ms of the 60 ms watched",
    )
    # Not frozen as it looked: a late look is the GIL's.
    assert cause(wall=0.06, kept_out=0.092, cpu=0.006, gc=0.0, run_delay=0.05, throttled=0.001) == "cpu"


def test_without_signals_the_cause_is_unknown_and_says_why() -> None:
    assert classify(During(duration=0.4)).why == "it ended before the watchdog could look"
    verdict = classify(stall())
    assert (verdict.cause, verdict.why) == ("unknown", "no single cause (no signals to tell on this system)")
    assert cause(cpu=0.12, run_delay=0.01, others_cpu=0.05) == "unknown", "a bit of everything"


def test_every_cause_is_one_of_the_fixed_set() -> None:
    seen = {
        cause(cpu=0.3),
        cause(cpu=0.0),
        cause(gc=0.4),
        cause(cpu=0.05, run_delay=0.25, throttled=0.2),
        cause(cpu=0.0, others_cpu=0.3),
        cause(importing=""),
        cause(cpu=0.1, run_delay=0.2),
        cause(),
    }
    assert seen == set(CAUSES)


def test_an_import_is_found_in_the_stack_with_the_module_it_runs() -> None:
    frames = [
        ("app.py", 10, "handler"),
        ("<frozen importlib._bootstrap>", 1176, "_find_and_load"),
        ("<frozen importlib._bootstrap_external>", 940, "exec_module"),
        ("<frozen importlib._bootstrap>", 241, "_call_with_frames_removed"),
        ("/srv/app/slow_module.py", 3, "<module>"),
        ("/srv/app/slow_module.py", 1, "build_table"),
    ]
    assert importing(frames) == "/srv/app/slow_module.py"
    assert importing(frames[:3]) == ""
    assert importing([("app.py", 10, "handler"), ("app.py", 1, "<module>")]) is None


def test_the_run_queue_delay_is_the_second_field_of_schedstat() -> None:
    assert signals.run_delay("49235 1500000000 12\n") == pytest.approx(1.5)
    assert signals.run_delay("") is None
    assert signals.run_delay("1 x 2") is None


def test_signals_read_the_loop_thread_s_own_clocks_from_another_thread() -> None:
    # Real clocks: a thread spins, another reads its CPU clock and run queue from outside.
    ready, done = threading.Event(), threading.Event()
    found: List[signals.LoopThread] = []

    def spin() -> None:
        found.append(signals.this_thread())
        ready.set()
        while not done.is_set():
            pass

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        ready.wait(5)
        reader = signals.Signals(lambda: 1.5)
        first = reader.read(found[0])
        time.sleep(0.2)
        then = reader.read(found[0])
    finally:
        done.set()
        thread.join()
    if found[0].clock is None:
        pytest.skip("no per-thread CPU clock on this system")
    spent = signals.between(first.cpu, then.cpu)
    assert spent is not None
    assert spent > 0.01, "the spinning thread used CPU"
    assert signals.between(first.run_delay, then.run_delay) is not None
    assert then.blocked == 1.5
    assert then.throttled is None, "no cgroup limit given"


def test_a_thread_that_is_gone_reads_as_unknown() -> None:
    holder: List[signals.LoopThread] = []
    thread = threading.Thread(target=lambda: holder.append(signals.this_thread()))
    thread.start()
    thread.join()
    native = holder[0].native
    deadline = time.monotonic() + 10.0
    while os.path.exists(f"/proc/self/task/{native}"):  # the kernel lets the thread go a moment after join()
        assert time.monotonic() < deadline, "the finished thread never left /proc"
        time.sleep(0.01)
    reading = signals.Signals(lambda: None).read(holder[0])
    assert reading.run_delay is None
    # The kernel may give a finished thread's ID to a new thread: a clock may then read, but never raises.
    assert reading.cpu is None or reading.cpu >= 0


def test_the_throttled_time_comes_from_the_cgroup_s_cpu_stat(tmp_path: Any) -> None:
    (tmp_path / "cpu.stat").write_text("nr_periods 1\nthrottled_usec 250000\n")
    reading = signals.Signals(lambda: None, _cgroup.Throttling(2, str(tmp_path))).read(signals.this_thread())
    assert reading.throttled == pytest.approx(0.25)


def _cyclic_heap(objects: int) -> None:
    for _ in range(objects):
        node: List[Any] = []
        node.append(node)


def test_long_collections_are_counted_where_they_fall_between_two_readings() -> None:
    signals.watch_gc()
    try:
        kept: Optional[float] = None
        objects = 20_000
        while kept is None or kept < signals.GC_KEPT_SECONDS:  # size the heap until a collection is long
            gc.disable()
            try:
                _cyclic_heap(objects)
                start = perf_counter()
                gc.collect()
                end = perf_counter()
            finally:
                gc.enable()
            kept = signals.gc_between(start, end)
            objects *= 2
            assert objects < 10_000_000, "no collection ever took a millisecond"
        assert kept == pytest.approx(end - start, abs=0.001)
        assert signals.gc_between(end, end + 1.0) == 0.0
    finally:
        signals.unwatch_gc()
    assert signals._on_gc not in gc.callbacks


def test_the_catalogue_names_every_cause_the_stalls_tag_takes() -> None:
    [stalls] = [metric for metric in METRICS if metric.name == "stalls"]
    assert all(f"`{name}`" in stalls.doc for name in CAUSES)
