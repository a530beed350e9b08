"""``loopstat-run COMMAND …``: run a program with loopstat on every event loop, without code changes.

Like ``ddtrace-run``: the command is exec'd (not wrapped), with the bootstrap
directory first on ``PYTHONPATH``, so its pid, exit status and signals are
its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from typing import Dict, List, Optional, TextIO

from loopstat import bootstrap

USAGE = """usage: {prog} COMMAND [ARGS...]

Runs COMMAND (a Python program: python app.py, uvicorn app:app, gunicorn ...) with
loopstat installed on every asyncio event loop it runs. Configured by environment,
through install()'s own variables

{install_variables}

and these, which win over them:
{variables}
"""


def usage(prog: str) -> str:
    width = max(len(name) for name in bootstrap.VARIABLES)
    variables = "\n".join(
        textwrap.fill(text, 100, initial_indent=f"  {name:<{width}}  ", subsequent_indent=" " * (width + 4))
        for name, text in bootstrap.VARIABLES.items()
    )
    install_variables = textwrap.fill(
        ", ".join(bootstrap.INSTALL_VARIABLES), 100, initial_indent="  ", subsequent_indent="  "
    )
    return USAGE.format(prog=prog, install_variables=install_variables, variables=variables)


def child_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """``environ`` with the bootstrap directory first on PYTHONPATH (once, however often nested)."""
    env = dict(environ)
    entries = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    entries = [bootstrap.PYTHONPATH_DIR] + [entry for entry in entries if entry != bootstrap.PYTHONPATH_DIR]
    env["PYTHONPATH"] = os.pathsep.join(entries)
    return env


def main(argv: List[str], prog: str = "loopstat-run", err: Optional[TextIO] = None) -> int:
    """Exec ``argv`` under the bootstrap; returns only on an error (or on Windows, the child's status)."""
    err = sys.stderr if err is None else err
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else err).write(usage(prog))
        return 0 if argv else 2
    try:
        bootstrap.check(os.environ)
    except ValueError as exc:
        err.write(f"{prog}: {exc}\n")
        return 2
    env = child_environment(os.environ)
    command = argv[0]
    path = command if os.sep in command else shutil.which(command, path=env.get("PATH"))
    if path is None:
        err.write(f"{prog}: {command}: command not found\n")
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    if sys.platform == "win32":  # no exec there: wait, and hand the status on
        return subprocess.call([path, *argv[1:]], env=env)
    try:
        os.execve(path, argv, env)
    except OSError as exc:
        err.write(f"{prog}: {command}: {exc.strerror or exc}\n")
        return 126
    raise AssertionError("unreachable")  # pragma: no cover
