"""Demo: the watch receiver next to a small service whose loop goes bad and recovers (``demo_service.py``).

Five phases: awaiting the backend; reading it with a blocking socket on the
loop, then in a thread; pure-Python CPU work on the loop, then in a process
pool. With ``--throttle``, a sixth: the same CPU work on the loop in a cgroup
with a CPU quota, where the kernel throttles it for real (root and a writable
cgroup ``cpu`` controller only; skipped otherwise, with the reason in the
summary). The summary holds what the receiver saw in each phase, and advice
drawn from those numbers.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, TextIO

import loopstat
from loopstat import _cgroup, _options
from loopstat.cli import fmt, statsd
from loopstat.cli.board import Board, listen
from loopstat.cli.demo_service import (
    INTERVAL,
    PHASES,
    PREFIX,
    SERVICE_FILE,
    STALL_SECONDS,
    TAGS,
    THROTTLED,
    THROTTLED_MIN_SECONDS,
    WORK_SECONDS,
    Phase,
    Service,
    serve_backend,
    throttle_group,
    write_service,
)
from loopstat.cli.watch import View, address, open_view, redraw_until, stop_on_signals

#: Metrics that arrive this soon after blocking on the loop ends still belong to that phase:
#: the request in progress finishes first, and its stall is reported when it ends.
GRACE_SECONDS = WORK_SECONDS + 2 * INTERVAL
#: Seconds between two redraws: the table follows a phase change within a few samples, not a second later.
REDRAW_SECONDS = 0.25


class DemoError(Exception):
    """The demo cannot start; the message is one line for a person."""


@dataclass
class PhaseTally:
    """What the receiver saw during one phase, and the monitor's stall count at its latest sample."""

    phase: Phase
    #: None until a lag sample arrives.
    lag_max: Optional[float] = None
    utilization: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)
    stalls_seen: int = 0
    stall: Optional[loopstat.Stall] = None
    requests: int = 0
    #: The throttled shares sent (only under a CPU limit), and the stalls by their cause tag.
    throttled: List[float] = field(default_factory=list)
    causes: Dict[str, float] = field(default_factory=dict)


class Tally:
    """Sorts the metrics the receiver gets into the phase the demo was in when they arrived."""

    def __init__(self, board: Board, service: Service, service_file: str = SERVICE_FILE, loop: str = "asyncio") -> None:
        self.phases: List[PhaseTally] = []
        #: Where the service's blocking functions are, as the stall locations name it.
        self.service_file = service_file
        #: The kind of loop the service runs on (``asyncio (_UnixSelectorEventLoop)``).
        self.loop = loop
        self._board = board
        self._service = service
        self._switched = board.now()
        #: Why the throttled phase did not run, when it was asked for and could not.
        self.skipped: Optional[str] = None
        board.listen(self._on_sample)

    def switch(self, phase: Phase) -> None:
        self.phases.append(PhaseTally(phase, stalls_seen=self.phases[-1].stalls_seen if self.phases else 0))
        self._switched = self._board.now()

    def _on_sample(self, now: float, sample: statsd.Sample) -> None:
        if not self.phases:
            return
        tally = self.phases[-1]
        if len(self.phases) > 1 and self.phases[-2].phase.blocks and now - self._switched < GRACE_SECONDS:
            tally = self.phases[-2]  # the last blocked request of the phase before, and its samples
        if sample.name == f"{PREFIX}.lag" and sample.type == "g":
            tally.lag_max = max(tally.lag_max or 0.0, sample.value)
        elif sample.name == f"{PREFIX}.utilization":
            tally.utilization.append(sample.value)
        elif sample.name == f"{PREFIX}.cpu":
            tally.cpu.append(sample.value)
        elif sample.name == f"{PREFIX}.throttled":
            tally.throttled.append(sample.value)
        elif sample.name == f"{PREFIX}.stalls" and sample.type == "c":
            cause = dict(sample.tags).get("cause", "unknown")
            tally.causes[cause] = tally.causes.get(cause, 0.0) + sample.value
        tally.stalls_seen = max(tally.stalls_seen, self._service.stalls)
        monitor = self._service.monitor
        if monitor is not None:
            stall = monitor.last_stall
            if stall is not None and stall.location and tally.phase.blocks:
                tally.stall = stall

    @staticmethod
    def legend() -> List[str]:
        """What each column of the summary means, in lines that fit 80 columns."""
        return [
            "  lag max: the most a timer ran late · utilization: share of the time the loop",
            "  ran code rather than waited · cpu: share of a core its thread used (equal to",
            "  utilization when the loop computes, below it when callbacks wait on I/O) ·",
            f"  stalls: times it made no progress for over {STALL_SECONDS * 1000:.0f} ms ·",
            "  requests: requests the service finished",
        ]

    def summary(self, interrupted: bool) -> str:
        rows = ["", "loopstat demo: what the service's loop went through", f"  on {self.loop}", ""]
        rows.append(f"  {'phase':<20}{'lag max':>10}{'utilization':>13}{'cpu':>7}{'stalls':>8}{'requests':>10}")
        stalls_before = 0
        for index, tally in enumerate(self.phases):
            use, cpu = (fmt.value(sum(v) / len(v), "%") if v else "-" for v in (tally.utilization, tally.cpu))
            stalls, stalls_before = tally.stalls_seen - stalls_before, tally.stalls_seen
            name = tally.phase.name + (" (cut)" if interrupted and index == len(self.phases) - 1 else "")
            lag = "-" if tally.lag_max is None else fmt.value(tally.lag_max, "ms")
            rows.append(f"  {name:<20}{lag:>10}{use:>13}{cpu:>7}{stalls:>8}{tally.requests:>10}")
        rows += ["", *self.legend(), ""]
        folder = os.path.join(os.path.dirname(self.service_file), "")
        for tally in self.phases:
            if tally.stall is not None and tally.stall.location is not None:
                rows.append(f"  {tally.phase.name} stalled at {tally.stall.location.replace(folder, '', 1)}")
        if any(tally.stall is not None for tally in self.phases):
            rows.append(f"  the service's code, to read: {self.service_file}")
        for tally in self.phases:
            if tally.phase is THROTTLED:
                rows += throttled_lines(tally)
        if self.skipped is not None:
            rows.append(f"  no throttled phase: {self.skipped}")
        rows += advice({tally.phase.name: tally.lag_max for tally in self.phases if tally.lag_max is not None})
        return "\n".join(rows) + "\n"


def throttled_lines(tally: PhaseTally) -> List[str]:
    """What the throttled phase showed: the share of time the kernel froze the service, and the stalls' causes."""
    share = fmt.value(sum(tally.throttled) / len(tally.throttled), "%") if tally.throttled else "-"
    causes = ", ".join(f"{cause} {count:.0f}" for cause, count in sorted(tally.causes.items(), key=lambda c: -c[1]))
    return [
        f"  throttled: the CPU quota froze the service {share} of the time;",
        f"    its stalls by cause: {causes or 'none'}",
    ]


def advice(lags: Dict[str, float]) -> List[str]:
    """What the lag of each phase showed (by phase name), for each kind of work whose two phases ran."""
    out = []
    for on_loop, moved, work, remedy in (
        ("I/O on loop", "I/O in thread", "Blocking I/O", "a thread (asyncio.to_thread, run_in_executor)"),
        ("CPU on loop", "CPU in process", "CPU-bound Python", "a process pool (threads share the GIL)"),
    ):
        if on_loop not in lags or moved not in lags:
            continue
        before, after = fmt.value(lags[on_loop], "ms"), fmt.value(lags[moved], "ms")
        if lags[moved] < lags[on_loop] / 2:
            out.append(f"  {work}: lag max {before} on the loop, {after} in {remedy.split(' (')[0]}.")
            out.append(f"    Move it off the loop, to {remedy}.")
        else:
            out.append(f"  {work}: lag max {before} on the loop and {after} moved off it:")
            out.append("    no clear gain this time (the machine may be short of CPU).")
    return out


class _ToView(logging.Handler):
    """Shows loopstat's log lines (the stall warnings) in the view, from whichever thread logs them."""

    def __init__(self, view: View, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.view = view
        self.loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        # The view is drawn by the receiver's loop; hand the line over to it.
        self.loop.call_soon_threadsafe(self.view.note, f"{record.levelname}: {record.getMessage()}")


@contextmanager
def _logs_to(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("loopstat")
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # the lines go in the view, not over it
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


async def _phases(
    view: View,
    service: Service,
    tally: Tally,
    stop: asyncio.Event,
    seconds: float,
    group: Optional[_cgroup.QuotaGroup] = None,
) -> None:
    """Take the service through every phase, ``seconds`` in all, unless ``stop`` is set first.

    With ``group``, the throttled phase comes last: the process is in the group for that phase only.
    """
    loop = asyncio.get_running_loop()
    phases: Sequence[Phase] = PHASES if group is None else (*PHASES, THROTTLED)
    for index, phase in enumerate(phases):
        length = seconds / len(phases)
        if phase is THROTTLED and group is not None:
            try:
                group.add(os.getpid())
            except OSError as exc:
                tally.skipped = f"the process could not join the cgroup ({os.strerror(exc.errno or errno.EIO)})"
                return
            service.restart()  # loopstat finds the CPU limit as it starts
            length = max(length, THROTTLED_MIN_SECONDS)
        before = service.requests
        service.phase = phase
        tally.switch(phase)
        view.set_status(f"phase {index + 1}/{len(phases)}: {phase.text}")
        view.tick()  # show the new phase now, not at the next redraw
        try:
            await redraw_until(view, stop, loop.time() + length, REDRAW_SECONDS)
        finally:
            if phase is THROTTLED and group is not None:
                group.release(os.getpid())
        tally.phases[index].requests = service.requests - before
        if stop.is_set():
            return


async def demo(seconds: float, out: TextIO, err: TextIO, throttle: bool = False) -> int:
    """Run the demo for ``seconds`` (or until Ctrl-C), write a summary to ``out``; return the exit status.

    ``throttle``: add the throttled phase where a cgroup with a CPU quota can be made.
    """
    board = Board()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    group: Optional[_cgroup.QuotaGroup] = None
    with stop_on_signals(stop) as received, ExitStack() as cgroups:
        transport, port = await listen(board, "127.0.0.1", 0)
        backend = await asyncio.start_server(serve_backend, "127.0.0.1", 0)
        try:
            try:
                # Same checks install() makes in the service thread, here, to fail in one line.
                _options.resolve("127.0.0.1", port, prefix=PREFIX, tags=TAGS, interval=INTERVAL, environ=os.environ)
            except ValueError as exc:
                raise DemoError(str(exc)) from None
            service_file = write_service()
            service = Service(port, backend.sockets[0].getsockname()[1])
            tally = Tally(board, service, service_file, service.loop_name())
            if throttle:
                made = throttle_group(cgroups)
                group, tally.skipped = (None, made) if isinstance(made, str) else (made, None)
            title = f"loopstat demo · service on {tally.loop.split()[0]}"
            view_cm = open_view(board, address("127.0.0.1", port), out, err, title)
            with view_cm as view, _logs_to(_ToView(view, loop)):
                service.start()
                try:
                    await _phases(view, service, tally, stop, seconds, group)
                finally:
                    await service.stop()
                await asyncio.sleep(0.05)  # the last datagrams, sent as the monitor stopped
                view.tick()
            if service.error is not None:
                raise DemoError(f"the demo service failed: {service.error!r}")
            out.write(tally.summary(interrupted=bool(received)))
            out.flush()
        finally:
            backend.close()
            transport.close()
    return 128 + received[0] if received else 0
