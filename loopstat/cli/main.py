"""Entry points: ``python -m loopstat``, the ``loopstat`` script and the ``loopstat-run`` script."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from contextlib import suppress
from typing import Callable, List, NoReturn, Optional, TypeVar

import loopstat
from loopstat import _options
from loopstat.cli.board import STALE_DROP, STALE_MARK

T = TypeVar("T")

DEMO_SECONDS = 25.0
#: One second a phase.
DEMO_MIN_SECONDS = 5.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the usage is one --help away.
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _argument(validator: _options.Validator[T]) -> Callable[[str], T]:
    """An argparse type that checks a flag as loopstat checks its settings."""

    def convert(text: str) -> T:
        try:
            return validator.check(validator.parse(text, ""), "")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


_port = _argument(_options.Port(any_port=True))


def _seconds_at_least(least: float) -> Callable[[str], Optional[float]]:
    return _argument(_options.Seconds(least))


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="loopstat",
        description="Event-loop health for asyncio services: see it live, run programs with it.",
    )
    top.add_argument("--version", action="version", version=f"loopstat {loopstat.__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    watch = commands.add_parser(
        "watch",
        help="receive StatsD/DogStatsD metrics on a local port and show them live",
        description="A StatsD/DogStatsD receiver for development: a live table in a terminal; otherwise, "
        "each second, one line per metric that received data in it. Ctrl-C quits (exit 0).",
    )
    watch.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    watch.add_argument("--port", type=_port, default=8125, help="UDP port to listen on (default: 8125)")
    watch.add_argument(
        "--stale",
        metavar="SECONDS",
        type=_seconds_at_least(1.0),
        default=STALE_DROP,
        help=f"drop a row after this many seconds without data (default: {STALE_DROP:g}; "
        f"marked stale after {STALE_MARK:g} s, or half of it if shorter)",
    )

    demo = commands.add_parser(
        "demo",
        help="watch a demo service block its loop, then move the work off it",
        description="Starts the receiver and a small service with loopstat installed, and shows how "
        "blocking I/O and CPU work on the loop look next to the same work in a thread or a process pool. "
        "Exits 0, or 130 on Ctrl-C.",
    )
    demo.add_argument(
        "--seconds",
        type=_seconds_at_least(DEMO_MIN_SECONDS),
        default=DEMO_SECONDS,
        help=f"length of the demo (default: {DEMO_SECONDS:g})",
    )
    demo.add_argument(
        "--throttle",
        action="store_true",
        help="add a last phase: the CPU work on the loop in a cgroup with a 20%% CPU quota, throttled by the "
        "kernel (needs root and the cgroup cpu controller; skipped otherwise, saying why)",
    )

    commands.add_parser(
        "run",
        help="run a Python program with loopstat on every event loop (same as loopstat-run)",
        description="loopstat run -- COMMAND [ARGS...]",
        add_help=False,
    )
    return top


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m loopstat COMMAND``; returns the exit status."""
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["run"]:
        # Everything after "run" belongs to the command: argparse must not read it.
        from loopstat.cli.run import main as run_main

        return run_main(args_list[1:], prog="loopstat run")
    args = parser().parse_args(args_list)
    try:
        if args.command == "watch":
            return _watch(args.host, args.port, args.stale)
        return _demo(args.seconds, args.throttle)
    except BrokenPipeError:
        return _pipe_closed()
    except KeyboardInterrupt:
        # Ctrl-C before the handlers are in place: quitting watch is a clean exit, cutting the demo short is not.
        return 0 if args.command == "watch" else 128 + signal.SIGINT


def _pipe_closed() -> int:
    """The reader of stdout went away (``loopstat watch | head -5``): end quietly, as Unix tools do."""
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that flush from failing too.
    with suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _watch(host: str, port: int, stale: float) -> int:
    from loopstat.cli.board import ListenError
    from loopstat.cli.watch import NeedsRich, watch

    try:
        asyncio.run(watch(host, port, sys.stdout, sys.stderr, stale))
    except (ListenError, NeedsRich) as exc:
        print(f"loopstat watch: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(seconds: float, throttle: bool = False) -> int:
    from loopstat.cli.board import ListenError
    from loopstat.cli.demo import DemoError, demo
    from loopstat.cli.watch import NeedsRich

    try:
        return asyncio.run(demo(seconds, sys.stdout, sys.stderr, throttle))
    except (ListenError, NeedsRich, DemoError) as exc:
        print(f"loopstat demo: {exc}", file=sys.stderr)
        return 1


def run_script() -> NoReturn:
    """The ``loopstat-run`` console script."""
    from loopstat.cli.run import main as run_main

    sys.exit(run_main(sys.argv[1:], prog="loopstat-run"))


def script() -> NoReturn:
    """The ``loopstat`` console script."""
    sys.exit(main())
