"""``python -m bench peers``: other projects' own test suites, plain and under ``loopstat-run``.

Downloads each project's sdist from PyPI with pip (its tests ship in it),
installs it with its test dependencies into a venv of this Python kept under
``$XDG_CACHE_HOME/loopstat-peers`` (default ``~/.cache/loopstat-peers``),
installs loopstat from this checkout into the same venv, and runs a fixed
subset of each suite twice: plainly, and under ``loopstat-run`` with every
probe on. Each suite runs on asyncio and on uvloop. The report lists every
test whose outcome differs between the two runs; each of those runs three more
times each way, which tells a flaky test from loopstat's doing.

Needs the network (PyPI) on the first run and a few minutes; not part of CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench import report
from bench.precise import progress
from bench.udp import Receiver

ROOT = Path(__file__).resolve().parent.parent

# A test that hangs fails after this long and the run goes on (seen plainly on a loaded machine: uvicorn's
# runner waiting at exit for a default-executor thread).
TIMEOUT = 120

# Every probe on: the heaviest loopstat-run there is.
LOOPSTAT_ENV = {"LOOPSTAT_BLOCKING_CALLS": "1", "LOOPSTAT_PROFILE": "1", "LOOPSTAT_GC": "1"}

# A pytest plugin that makes every loop made through the default policy a uvloop loop, for suites whose
# async tests run on the default loop (uvicorn's fix anyio's backend to plain "asyncio"), and says how
# many it made, so the report shows it. Policies are the only way in there: deprecated from Python 3.14
# (its warning silenced here, as pytest-asyncio does), gone from 3.16.
UVLOOP_PLUGIN = """\
import asyncio
import warnings

import pytest
import uvloop

made = 0


def pytest_configure(config):
    if not hasattr(asyncio, "set_event_loop_policy"):
        raise pytest.UsageError("peers_uvloop: this Python has no event-loop policies")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        class Policy(uvloop.EventLoopPolicy):
            def new_event_loop(self):
                global made
                made += 1
                return super().new_event_loop()

        asyncio.set_event_loop_policy(Policy())


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"peers: {made} uvloop loops made")
"""


@dataclass(frozen=True)
class Suite:
    """One way of running a project's fixed test subset on one loop."""

    loop: str
    args: Tuple[str, ...]
    # Extra pytest plugins (module names) that choose the loop.
    plugins: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Peer:
    """A project whose sdist ships its tests, and the subset of them run here."""

    name: str
    version: str
    # What pip installs besides the unpacked sdist (its test dependencies, pinned where the suite needs it).
    extras: str
    deps: Tuple[str, ...]
    suites: Tuple[Suite, ...]


# Fixed subsets: tests that pass plainly on loopback, a few hundred each, under two minutes on two cores.
ANYIO_TESTS = (
    "tests/test_taskgroups.py",
    "tests/test_synchronization.py",
    "tests/test_to_thread.py",
    "tests/test_from_thread.py",
    "tests/test_eventloop.py",
    "tests/test_debugging.py",
    "tests/streams/test_memory.py",
    "tests/streams/test_buffered.py",
    "tests/streams/test_text.py",
    "tests/streams/test_stapled.py",
    "tests/test_lowlevel.py",
)
UVICORN_TESTS = (
    "tests/protocols",
    "tests/test_lifespan.py",
    "tests/middleware",
    "tests/test_config.py",
    "tests/test_server.py",
    "tests/test_default_headers.py",
    "tests/test_main.py",
    "tests/test_ssl.py",
    # Fails plainly with the dependency releases of late 2026 (httptools' handling of a closed transport).
    "--deselect",
    "tests/protocols/test_http.py::test_close_connection_with_multiple_requests[httptools]",
)

PEERS = (
    Peer(
        "anyio",
        # 4.6.2 itself is yanked on PyPI (it held 4.5.2's code); .post1 is the 4.6.2 release.
        "4.6.2.post1",
        "test",
        (),
        # anyio's own backend parameters: "asyncio" (the stdlib loop) and "asyncio+uvloop"; trio is not ours.
        (Suite("asyncio and uvloop", (*ANYIO_TESTS, "-m", "not network", "-k", "not trio")),),
    ),
    Peer(
        "uvicorn",
        "0.32.0",
        "standard",
        # The versions uvicorn 0.32.0's requirements.txt pins (websockets 14 warns on import: an error there).
        (
            "pytest==8.3.3",
            "pytest-mock==3.14.0",
            "trustme==1.1.0",
            "httpx==0.27.2",
            "a2wsgi==1.10.7",
            "wsproto==1.2.0",
            "websockets==13.1",
            "httptools==0.6.4",
        ),
        (
            Suite("asyncio", UVICORN_TESTS),
            # uvicorn's tests run on the loop anyio makes through the default policy.
            Suite("uvloop", UVICORN_TESTS, ("peers_uvloop",)),
        ),
    ),
)


@dataclass
class Run:
    """One pytest run: each test's outcome, the wall time and what loopstat sent."""

    outcomes: Dict[str, str]
    seconds: float
    exit_code: int
    datagrams: int
    summary: str
    # What the uvloop plugin said ("N uvloop loops made"), if it ran.
    uvloop_loops: str = ""


def cache_dir() -> Path:
    """Where the sdists and venvs are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loopstat-peers"


def sh(cmd: Sequence[str], **kwargs: object) -> None:
    """Run a setup step; its output goes to stderr, a failure stops the bench."""
    progress("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr, **kwargs)  # type: ignore[call-overload]


def prepare(peer: Peer, cache: Path) -> Tuple[Path, Path]:
    """The unpacked sdist and a venv with it, its test dependencies and this checkout of loopstat."""
    tag = f"{peer.name}-{peer.version}"
    source = cache / "src" / tag
    venv = cache / f"venv-py{sys.version_info[0]}{sys.version_info[1]}" / tag
    if not source.exists():
        sdists = cache / "sdist"
        sdists.mkdir(parents=True, exist_ok=True)
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        sh([*download, f"{peer.name}=={peer.version}", "-d", str(sdists)])
        (archive,) = sdists.glob(f"{tag}.tar.gz")
        with tarfile.open(archive) as tar:
            if sys.version_info >= (3, 12):
                tar.extractall(cache / "src", filter="data")
            else:
                tar.extractall(cache / "src")  # sdists from PyPI; 3.12+ also filters their paths
    python = venv / "bin" / "python"
    wanted = [f"{source}[{peer.extras}]", *peer.deps, "pytest-timeout", str(ROOT)]
    installed = venv / "peers-installed.txt"  # what the venv was made with: a changed list makes it again
    if not python.exists() or not installed.exists() or installed.read_text() != "\n".join(wanted):
        sh([sys.executable, "-m", "venv", "--clear", str(venv)])
        # setuptools-scm reads the version from PKG-INFO in an sdist, so no git is needed.
        sh([str(python), "-m", "pip", "install", "-q", *wanted])
        installed.write_text("\n".join(wanted))
    # This checkout's loopstat, every run: the report is about the commit it names.
    sh([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)])
    (venv / "plugins").mkdir(exist_ok=True)
    (venv / "plugins" / "peers_uvloop.py").write_text(UVLOOP_PLUGIN)
    return source, venv


def outcomes(junit: Path, source: Path) -> Dict[str, str]:
    """Each test's outcome (passed, failed, error or skipped) from a JUnit XML report, by pytest node id."""
    found: Dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        found[node_id(source, case.get("classname") or "", case.get("name") or "")] = next(
            (
                {"failure": "failed"}.get(child.tag, child.tag)
                for child in case
                if child.tag in ("failure", "error", "skipped")
            ),
            "passed",
        )
    return found


def node_id(source: Path, classname: str, name: str) -> str:
    """``tests/x.py::Class::name`` from JUnit's ``tests.x.Class`` and ``name``: the longest prefix that is a file."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (source / path).is_file():
            return "::".join([path, *parts[cut:], name])
    return f"{classname}::{name}"


def run(
    source: Path, venv: Path, suite: Suite, under_loopstat: bool, out: Path, tests: Optional[Sequence[str]] = None
) -> Run:
    """The suite (or only ``tests``, node ids) once, with its JUnit report in ``out``."""
    python = str(venv / "bin" / "python")
    chosen = suite.args if tests is None else tests
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--timeout={TIMEOUT}", f"--junitxml={out}", *chosen]
    for plugin in suite.plugins:
        cmd += ["-p", plugin]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(venv / "plugins")
    for name in list(env):
        if name.startswith(("LOOPSTAT_", "STATSD_", "DD_")):
            del env[name]
    receiver = Receiver()
    if under_loopstat:
        cmd = [str(venv / "bin" / "loopstat-run"), *cmd]
        env.update(LOOPSTAT_ENV, STATSD_HOST="127.0.0.1", STATSD_PORT=str(receiver.port))
    what = "the suite" if tests is None else f"{len(tests)} tests again"
    progress(f"{source.name} on {suite.loop}, {what}, {'under loopstat-run' if under_loopstat else 'plain'}")
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    datagrams = receiver.settle()
    receiver.close()
    lines = done.stdout.strip().splitlines()
    if not out.exists():
        raise SystemExit(f"peers: {' '.join(cmd)} wrote no report (exit {done.returncode}):\n" + "\n".join(lines[-30:]))
    summary = "; ".join(line for line in lines[-3:] if ("passed" in line or "failed" in line) and "peers:" not in line)
    extra = [line for line in lines if line.startswith("peers:")]
    made = " ".join(line.split()[1] for line in extra)
    return Run(
        outcomes(out, source), seconds, done.returncode, datagrams, "; ".join([summary, *extra]).strip("; "), made
    )


def differences(plain: Run, monitored: Run) -> List[Tuple[str, str, str]]:
    """Tests whose outcome differs between the two runs (missing from one counts too)."""
    names = sorted(set(plain.outcomes) | set(monitored.outcomes))
    return [
        (name, plain.outcomes.get(name, "absent"), monitored.outcomes.get(name, "absent"))
        for name in names
        if plain.outcomes.get(name) != monitored.outcomes.get(name)
    ]


# Each differing test runs this many more times each way: a flaky test is told from loopstat's doing.
RERUNS = 3


def rerun(source: Path, venv: Path, suite: Suite, tests: List[str], out: Path) -> Dict[str, Tuple[str, str]]:
    """For each test, its passes out of RERUNS plain and under loopstat-run, e.g. ("3/3", "0/3")."""
    passes: Dict[Tuple[str, bool], int] = {}
    for under_loopstat in (False, True):
        for attempt in range(RERUNS):
            again = run(source, venv, suite, under_loopstat, out / f"rerun-{under_loopstat}-{attempt}.xml", tests)
            for test in tests:
                ok = again.outcomes.get(test) == "passed"
                passes[test, under_loopstat] = passes.get((test, under_loopstat), 0) + ok
    return {test: (f"{passes[test, False]}/{RERUNS}", f"{passes[test, True]}/{RERUNS}") for test in tests}


def verdict(plain: str, monitored: str, plain_first: str = "passed", monitored_first: str = "failed") -> str:
    """Loopstat's doing only if the test passed every time plainly and never under loopstat-run, first run included."""
    full, none = f"{RERUNS}/{RERUNS}", f"0/{RERUNS}"
    plain_always = plain == full and plain_first == "passed"
    if plain_always and monitored == none and monitored_first != "passed":
        return "under loopstat-run only"
    if not plain_always:
        return "flaky: fails plainly too"
    return "flaky: not reproduced" if monitored == full else "flaky: varies under loopstat-run"


def counts(r: Run) -> str:
    """passed/failed/skipped counts of a run."""
    tally: Dict[str, int] = {}
    for outcome in r.outcomes.values():
        tally[outcome] = tally.get(outcome, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))


def commit() -> str:
    """This checkout's commit (with '+dirty' for uncommitted changes), or 'unknown'."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty.strip() else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__.split("\n\n")[1])
    parser.add_argument("--project", default=",".join(p.name for p in PEERS), help="comma-separated projects")
    parser.add_argument("--cache", type=Path, default=None, help="where sdists and venvs are kept")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.project.split(",") if name.strip()]
    known = {p.name: p for p in PEERS}
    for name in chosen:
        if name not in known:
            parser.error(f"--project: {name!r} is not one of {', '.join(known)}")
    cache: Path = args.cache or cache_dir()
    measured = commit()  # now: the checkout installed below, even if it changes while the suites run
    rows: List[List[str]] = []
    found: List[Tuple[str, ...]] = []
    for name in chosen:
        peer = known[name]
        source, venv = prepare(peer, cache)
        for suite in peer.suites:
            out = cache / "junit"
            out.mkdir(parents=True, exist_ok=True)
            stem = f"{name}-{suite.loop.replace(' ', '-')}"
            plain = run(source, venv, suite, False, out / f"{stem}-plain.xml")
            monitored = run(source, venv, suite, True, out / f"{stem}-loopstat.xml")
            diff = differences(plain, monitored)
            again = rerun(source, venv, suite, [d[0] for d in diff], out) if diff else {}
            found += [
                (f"{name} {peer.version}", suite.loop, test, a, b, *again[test], verdict(*again[test], a, b))
                for test, a, b in diff
            ]
            ratio = monitored.seconds / plain.seconds if plain.seconds else float("nan")
            loopstats = sum(1 for test, a, b in diff if verdict(*again[test], a, b) == "under loopstat-run only")
            loop = suite.loop + (
                f" ({plain.uvloop_loops} / {monitored.uvloop_loops} loops made)" if suite.plugins else ""
            )
            rows.append(
                [
                    f"{name} {peer.version}",
                    loop,
                    counts(plain),
                    counts(monitored),
                    f"{len(diff)} ({loopstats} under loopstat-run only)",
                    f"{plain.seconds:.1f} s",
                    f"{monitored.seconds:.1f} s ({ratio - 1:+.0%})",
                    str(monitored.datagrams),
                ]
            )
            for r, label in ((plain, "plain"), (monitored, "loopstat-run")):
                progress(f"  {label}: exit {r.exit_code}, {r.summary}")
    print(f"loopstat {measured}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d', time.gmtime())}\n")
    header = ["project", "loop", "plain", "under loopstat-run", "differences", "plain time", "loopstat-run time"]
    # Differences: tests whose outcome differed in the first runs; in brackets those that then failed
    # under loopstat-run in every rerun and passed plainly in every one.
    print(report.table([*header, "datagrams sent"], rows))
    if found:
        print()
        first = ["project", "loop", "test", "plain", "under loopstat-run"]
        reruns = [f"passed in {RERUNS} reruns plain", f"passed in {RERUNS} reruns under loopstat-run", "verdict"]
        print(report.table([*first, *reruns], [list(f) for f in found]))
    return 0
