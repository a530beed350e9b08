"""The probes running on one monitor, each kept apart: one that fails to attach or keeps failing to read
is left out with one warning, and the others go on."""

from __future__ import annotations

import contextlib
import logging
from typing import Dict, List, Tuple

from loopstat import _options
from loopstat._metrics import METRICS, Line
from loopstat.probes import Attach, Probe, Reading, Watched
from loopstat.probes import blocking as _blocking
from loopstat.probes import cpu as _cpu
from loopstat.probes import executor as _executor
from loopstat.probes import gc as _gc
from loopstat.probes import iteration as _iteration
from loopstat.probes import lag as _lag
from loopstat.probes import profile as _profile
from loopstat.probes import stalls as _stalls
from loopstat.probes import tasks as _tasks
from loopstat.probes import throttled as _throttled
from loopstat.probes import utilization as _utilization

# The monitor's logger: the name users filter loopstat's warnings by.
log = logging.getLogger("loopstat.monitor")

# A probe whose read fails this many samples in a row is closed; one or two failures may be passing.
READ_FAILURES = 3
# The exception's text in the warning about a lost probe is cut to this many characters.
REASON_CHARS = 200

# Each probe with its module's attach(), in the metric catalogue's order (a test checks they agree).
ATTACH: Tuple[Tuple[str, Attach], ...] = (
    ("lag", _lag.attach),
    ("tasks", _tasks.attach),
    ("utilization", _utilization.attach),
    ("iteration", _iteration.attach),
    ("cpu", _cpu.attach),
    ("throttled", _throttled.attach),
    ("stalls", _stalls.attach),
    ("executor", _executor.attach),
    ("gc", _gc.attach),
    ("blocking", _blocking.attach),
    ("profile", _profile.attach),
)


class ProbeSet:
    """One monitor's probes: attached, read and closed each on its own."""

    def __init__(self, settings: _options.Settings) -> None:
        self.settings = settings
        #: The probes running, by name, in the catalogue's order.
        self.running: Dict[str, Probe] = {}
        # How many reads in a row each probe failed.
        self._failing: Dict[str, int] = {}

    def attach(self, watched: Watched) -> None:
        """Attach each probe; one that fails is left out, with a warning, and the others go on."""
        for name, attach in ATTACH:
            try:
                probe = attach(watched)
            except Exception as exc:
                _lost(name, self.settings, exc)
                continue
            if probe is not None:
                self.running[name] = probe

    def read(self, lines: List[Line]) -> Reading:
        """Add every probe's lines for this sample and return their readings; a failed read adds and returns
        none of its own (the monitor keeps the values it had)."""
        readings: Reading = {}
        failed: List[Tuple[str, Exception]] = []
        for name, probe in self.running.items():
            start = len(lines)
            try:
                reading = probe.read(lines)
            except Exception as exc:
                del lines[start:]  # what a failed read added may be half of its lines
                failed.append((name, exc))
                continue
            if reading:
                readings.update(reading)
            if self._failing:
                self._failing.pop(name, None)
        for name, error in failed:
            self._read_failed(name, error)
        return readings

    def close(self) -> None:
        """Close every probe, each even if one before it raised."""
        probes, self.running = self.running, {}
        self._failing.clear()
        with contextlib.ExitStack() as later:
            for name, probe in reversed(probes.items()):
                later.callback(_close, name, probe)

    def _read_failed(self, name: str, exc: Exception) -> None:
        """A probe's read raised: after READ_FAILURES in a row it is closed, with a warning."""
        failures = self._failing[name] = self._failing.get(name, 0) + 1
        if failures < READ_FAILURES:
            log.debug("loopstat: the %s probe failed to read (%d in a row)", name, failures, exc_info=exc)
            return
        del self._failing[name]
        _close(name, self.running.pop(name))
        _lost(name, self.settings, exc, failures)


def stopped_metrics(probe: str, settings: _options.Settings) -> str:
    """The metrics a probe sends, from the catalogue, named as they go on the wire, with their verb."""
    on = settings.distributions
    wire = (m.distribution if on and m.distribution else m.name for m in METRICS if m.probe == probe)
    names = list(dict.fromkeys(f"{settings.prefix}.{name}" if settings.prefix else name for name in wire))
    return f"{names[0]} is" if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]} are"


def _lost(probe: str, settings: _options.Settings, exc: Exception, failures: int = 0) -> None:
    """The one warning about a probe left out at start, or closed after ``failures`` failed reads."""
    reason = f"{type(exc).__name__}: {exc}"
    if len(reason) > REASON_CHARS:
        reason = reason[: REASON_CHARS - 3] + "..."
    metrics = stopped_metrics(probe, settings)
    if failures:
        log.warning(
            "loopstat: the %s probe failed %d samples in a row (%s) and is closed: %s no longer sent; "
            "the other metrics go on",
            probe,
            failures,
            reason,
            metrics,
        )
    else:
        log.warning(
            "loopstat: the %s probe could not start (%s): %s not sent; the other metrics are", probe, reason, metrics
        )
    log.debug("loopstat: how the %s probe failed", probe, exc_info=exc)


def _close(name: str, probe: Probe) -> None:
    # A probe's close() must not raise; if one does, the rest of the shutdown still runs.
    try:
        probe.close()
    except Exception:
        log.debug("loopstat: the %s probe failed to close", name, exc_info=True)
