"""The provisioning step (tests/provision.py): tests never install servers, and a missing one says how to get it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _provision(code: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(cache), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_server_names_the_command_that_installs_it(tmp_path: Path) -> None:
    done = _provision("from tests.provision import statsd_script; statsd_script()", tmp_path)
    assert done.returncode == 1
    assert "Etsy statsd 0.9.0" in done.stderr
    assert "run `python3 -m tests.provision` from the checkout" in done.stderr


@pytest.mark.e2e
def test_an_unreachable_npm_registry_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    # A registry on a loopback port where nothing listens: refused at once, no traffic leaves the machine.
    started = time.monotonic()
    done = _provision(
        "import sys, tests.provision as p; sys.exit(p.main())", tmp_path, npm_config_registry="http://127.0.0.1:9/"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "provision: cannot reach the npm registry" in done.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "loopstat-tests" / "statsd-0.9.0").exists()
