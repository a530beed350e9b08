"""The release: ``python -m build`` makes an sdist and a wheel that ``twine check`` accepts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List

import pytest

pytestmark = pytest.mark.e2e  # whole programs and real servers: run once, in the e2e env

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> List[Path]:
    """Built once, both from the source tree (half the time of building the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: no network; the build backend is the test environment's own setuptools.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return sorted(out.iterdir())


def test_build_makes_one_sdist_and_one_wheel(dist: List[Path]) -> None:
    assert [path.name.split("-")[0] for path in dist] == ["loopstat", "loopstat"]
    assert sorted(path.suffix for path in dist) == [".gz", ".whl"]


def test_twine_check_accepts_both(dist: List[Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_wheel_ships_the_bootstrap_the_cli_and_the_console_scripts(dist: List[Path]) -> None:
    (wheel,) = [path for path in dist if path.suffix == ".whl"]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "loopstat/bootstrap/pythonpath/sitecustomize.py" in names
    assert "loopstat/py.typed" in names
    assert {"loopstat/cli/main.py", "loopstat/contrib/starlette.py", "loopstat/contrib/aiohttp.py"} <= names
    assert "loopstat = loopstat.cli.main:script" in scripts
    assert "loopstat-run = loopstat.cli.main:run_script" in scripts
