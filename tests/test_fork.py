"""The fork registry: modules join it themselves, and a real os.fork() runs their hooks (or none, when turned off)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

import loopstat
from loopstat import _fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# Forks from a fresh interpreter: the test process has threads, and Python 3.12+ warns about forking those.
FORKING = """
import json, os, sys
import loopstat
from loopstat import _fork

ran = []
def before_a(): ran.append("before a")
def before_b(): ran.append("before b")
def after_a(): ran.append("after a")
def failing(): raise OSError("this hook fails")
def after_b(): ran.append("after b")

_fork.join(before=before_a, after_in_child=after_a)
_fork.join(after_in_child=failing)
_fork.join(before=before_b, after_in_child=after_b)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, json.dumps(ran).encode())
    os._exit(0)
os.close(write)
child = json.loads(os.read(read, 4096))
os.waitpid(pid, 0)
print(json.dumps({{"parent": ran, "child": child}}))
"""


def fork_with(variable: Optional[str]) -> Dict[str, Any]:
    environ = {key: value for key, value in os.environ.items() if key != _fork.VARIABLE}
    if variable is not None:
        environ[_fork.VARIABLE] = variable
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(FORKING.format())],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    result: Dict[str, Any] = json.loads(done.stdout)
    result["stderr"] = done.stderr
    return result


def test_a_real_fork_runs_before_hooks_in_reverse_and_child_hooks_in_order_past_a_failing_one() -> None:
    result = fork_with(None)
    assert result["parent"] == ["before b", "before a"]
    assert result["child"] == ["before b", "before a", "after a", "after b"]
    assert result["stderr"] == ""


@pytest.mark.parametrize("off", ["0", "false", "off"])
def test_loopstat_fork_support_off_registers_no_hook(off: str) -> None:
    result = fork_with(off)
    assert result["parent"] == []
    assert result["child"] == []


def test_an_unreadable_fork_support_value_warns_once_and_leaves_it_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="loopstat._fork")
    assert _fork.supported({_fork.VARIABLE: "maybe"})
    assert [r.getMessage() for r in caplog.records] == [
        "loopstat: LOOPSTAT_FORK_SUPPORT: 'maybe' is not valid; expected 1 or 0 (true/false, yes/no, on/off); "
        "fork support stays on"
    ]
    result = fork_with("maybe")
    assert result["child"] == ["before b", "before a", "after a", "after b"]
    assert "LOOPSTAT_FORK_SUPPORT: 'maybe' is not valid" in result["stderr"]


def test_fork_support_is_on_by_default_and_with_1() -> None:
    assert _fork.supported({})
    assert _fork.supported({_fork.VARIABLE: ""})
    assert _fork.supported({_fork.VARIABLE: "1"})
    assert not _fork.supported({_fork.VARIABLE: "0"})


def test_every_module_with_an_after_fork_hook_has_joined_the_registry() -> None:
    hooks = _fork.joined()
    modules = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(loopstat.__path__, "loopstat.")
        if not info.name.startswith(("loopstat.cli", "loopstat.contrib", "loopstat.bootstrap", "loopstat.__main__"))
    ]
    with_hooks = [module for module in modules if hasattr(module, "after_fork_in_child")]
    assert len(with_hooks) >= 9
    for module in with_hooks:
        assert module.after_fork_in_child in hooks, module.__name__
