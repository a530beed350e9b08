"""Profile (opt-in): where a loop's busy time goes, by code site, sampled from its thread's stack."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from typing import Optional

import pytest

import loopstat
from loopstat import _threads
from loopstat.probes import profile
from tests.receiver import Receiver


def hot(seconds: float) -> None:
    spin_until = time.perf_counter() + seconds
    while time.perf_counter() < spin_until:
        pass


def warm(seconds: float) -> None:
    spin_until = time.perf_counter() + seconds
    while time.perf_counter() < spin_until:
        pass


HOT = f"test_profile.py:{inspect.getsourcelines(hot)[1] + 2} in hot"
WARM = f"test_profile.py:{inspect.getsourcelines(warm)[1] + 2} in warm"


@pytest.mark.e2e  # shares of wall time on the real clock: run once, in the e2e env
async def test_busy_time_is_attributed_to_the_code_that_spent_it(receiver: Receiver) -> None:
    interval = 0.05
    async with loopstat.install("127.0.0.1", receiver.port, interval=interval, profile=True) as monitor:
        window = interval * profile.WINDOW_SAMPLES
        started = time.perf_counter()
        while time.perf_counter() - started < 2.5 * window:
            # About half the time in hot(), a quarter in warm(), a quarter idle: each longer than the
            # interpreter's switch interval (5 ms), the resolution of a sampler that needs the GIL.
            hot(0.024)
            warm(0.012)
            await asyncio.sleep(0.012)
        top = {site.rsplit("/", 1)[-1]: share for site, share in monitor.top()}
        busy = receiver.values("loopstat.busy", "g")
    assert list(top)[:2] == [HOT, WARM], top
    # A loaded machine takes time from the loop while it spins; the shares are of wall time.
    assert 0.25 <= top[HOT] <= 0.75
    assert 0.08 <= top[WARM] <= 0.45
    assert top[HOT] > top[WARM]
    assert busy, "sent as P.busy gauges, one per site"
    sites = {dict(line.tags)["site"].rsplit("/", 1)[-1] for line in receiver.lines if line.name == "loopstat.busy"}
    assert HOT.replace(" ", "_") in sites, "tag values have no spaces"


def is_loopstats(site: str) -> bool:
    """The site names a file of the loopstat package (sites are relative to the working directory)."""
    return os.path.abspath(site.split(":")[0]).startswith(os.path.join(os.path.dirname(loopstat.__file__), ""))


async def test_loopstats_own_code_is_never_a_site_and_counts_apart(receiver: Receiver) -> None:
    """A loop kept busy by two application functions, sampled often, hands the GIL over mostly in
    loopstat's own sends: those looks are its own, and only the two functions are sites."""
    interval = 0.005
    async with loopstat.install("127.0.0.1", receiver.port, interval=interval, profile=True) as monitor:
        named, deadline = 0, time.monotonic() + 60
        owns: list[Optional[float]] = []
        seen: set[str] = set()
        # Windows that name both functions, and one that found loopstat's own: the sampler sees hot() and
        # warm() (each longer than the 5 ms switch interval it needs the GIL in) and the sends between.
        while named < 3 or not any(owns) or not {HOT, WARM} <= seen:
            assert time.monotonic() < deadline, f"{named} windows named {seen}, own shares {owns}"
            sent = len(receiver.values("loopstat.busy", "g"))
            while len(receiver.values("loopstat.busy", "g")) == sent:
                hot(0.008)
                await asyncio.sleep(0)
                warm(0.006)
                await asyncio.sleep(0)
            top = monitor.top()
            named += any(site != profile.OTHER for site, _ in top)
            seen |= {site.rsplit("/", 1)[-1] for site, _ in top}
            owns.append(monitor.own)
        tags = {dict(line.tags)["site"] for line in receiver.lines if line.name == "loopstat.busy"}
    assert [tag for tag in tags if is_loopstats(tag)] == []
    assert all(own is not None and 0 <= own < 1 for own in owns), owns


async def test_off_by_default_no_table_no_thread(receiver: Receiver) -> None:
    async with loopstat.install("127.0.0.1", receiver.port, interval=0.02) as monitor:
        await receiver.wait_count("loopstat.tasks", "g", 3)
        assert monitor.top() == []
        assert monitor.own is None
        assert _threads.running("loopstat-profiler") == []
    assert receiver.values("loopstat.busy", "g") == []


def test_the_sites_sent_stay_bounded_however_the_code_moves() -> None:
    window = profile.Window()
    sent = set()
    for moved in range(30):
        for n in range(10):
            for _ in range(10 - n):
                window.count(f"app.py:{moved * 10 + n} in f")
        table, _ = window.take()
        sent |= {site for site, _ in table}
    assert len(sent - {profile.OTHER}) == profile.MAX_SITES


@pytest.mark.parametrize("variable", ["1", "0"])
def test_loopstat_profile_variable(variable: str) -> None:
    from loopstat import _options

    assert _options.run_arguments({"LOOPSTAT_PROFILE": variable}) == {"profile": variable == "1"}
