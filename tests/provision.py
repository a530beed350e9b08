"""Install the real servers the end-to-end tests run against: ``python3 -m tests.provision``.

The tests never install anything themselves: they find what this step put in
place, or fail saying to run it. It runs outside tox, with the caller's whole
environment (npm needs ``NODE_EXTRA_CA_CERTS`` on some machines, which tox does
not pass on), and it is idempotent: what is there already is kept.

* Graphite carbon (``carbon-cache``), graphite-web (``graphite-manage``) and
  valgrind, from Debian's packages (needs root and apt);
* Node.js and npm, from Debian's packages, only if missing;
* Etsy statsd, with npm, into ``CACHE_DIR`` (see ``statsd_script``).

A registry that cannot be reached gives a clear error and a non-zero exit
within a minute, instead of a silent hang. Standard library only: it runs
before any test dependency is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Dict, Optional

STATSD_VERSION = "0.9.0"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loopstat-tests"
COMMAND = "python3 -m tests.provision"

#: Debian package that provides each command the tests (or the bench) run.
APT_COMMANDS: Dict[str, str] = {
    "carbon-cache": "graphite-carbon",
    "graphite-manage": "graphite-web",
    "valgrind": "valgrind",
}
# A registry that does not answer within this long is reported as unreachable.
REACH_SECONDS = 45.0


class ProvisionError(RuntimeError):
    """Something the tests need is missing or could not be installed."""


def missing(what: str) -> ProvisionError:
    """The error a test raises when a server is not installed: it says which command installs it."""
    return ProvisionError(f"{what} is not installed; run `{COMMAND}` from the checkout (needs root for apt)")


def _statsd_in(folder: Path) -> Optional[Path]:
    package = folder / "node_modules" / "statsd"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    script = package / "stats.js"
    return script if version == STATSD_VERSION and script.is_file() else None


def statsd_script() -> Path:
    """Etsy statsd's ``stats.js``, as provisioned; ProvisionError if it is not there."""
    script = _statsd_in(CACHE_DIR / f"statsd-{STATSD_VERSION}")
    if script is None:
        raise missing(f"Etsy statsd {STATSD_VERSION} (in {CACHE_DIR})")
    return script


def command(name: str) -> str:
    """The path of an installed command (``node``, ``carbon-cache``, …); ProvisionError if missing."""
    found = shutil.which(name)
    if found is None:
        raise missing(f"`{name}`")
    return found


def _run(argv: Sequence[str], timeout: float, env: Optional[Mapping[str, str]] = None) -> str:
    """Run a command to completion; its output on success, ProvisionError with its tail otherwise."""
    try:
        result = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
            check=False,
            start_new_session=True,  # so a timeout can end npm's children too
        )
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"`{' '.join(argv)}` gave no answer within {timeout:.0f} s") from exc
    output = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise ProvisionError(f"`{' '.join(argv)}` failed with exit code {result.returncode}:\n{output[-3000:]}")
    return output


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock, so two provisioning runs never install the same thing at once."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def apt_install(packages: Sequence[str]) -> None:
    """``apt-get install`` Debian packages after refreshing the package lists."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ProvisionError(f"{', '.join(packages)}: not installed, and installing needs apt-get as root")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    quick = ["-o", "Acquire::Retries=0", "-o", "Acquire::http::Timeout=20", "-o", "Acquire::https::Timeout=20"]
    with _lock("apt.lock"):
        try:
            # --error-on=any: an unreachable mirror is an error, not a warning followed by stale lists.
            _run(["apt-get", "update", "-q", "--error-on=any", *quick], timeout=REACH_SECONDS + 15, env=env)
        except ProvisionError as exc:
            raise ProvisionError(f"cannot reach Debian's package mirrors (apt-get update): {exc}") from exc
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], timeout=900, env=env)


def provision_apt() -> None:
    wanted = sorted({package for name, package in APT_COMMANDS.items() if shutil.which(name) is None})
    if shutil.which("node") is None or shutil.which("npm") is None:
        wanted += ["nodejs", "npm"]
    if wanted:
        print(f"provision: apt-get install {' '.join(wanted)}", flush=True)
        apt_install(wanted)
    for name in (*APT_COMMANDS, "node", "npm"):
        command(name)


def provision_statsd() -> Path:
    """Install Etsy statsd with npm into the cache folder, unless it is there already."""
    with contextlib.suppress(ProvisionError):
        return statsd_script()
    npm = command("npm")
    target = CACHE_DIR / f"statsd-{STATSD_VERSION}"
    with _lock("statsd.lock"):
        with contextlib.suppress(ProvisionError):
            return statsd_script()  # another run finished meanwhile
        print(f"provision: npm install statsd@{STATSD_VERSION} into {target}", flush=True)
        timeouts = ["--fetch-timeout=20000", "--fetch-retries=1"]
        try:
            _run([npm, "view", f"statsd@{STATSD_VERSION}", "version", *timeouts], timeout=REACH_SECONDS)
        except ProvisionError as exc:
            raise ProvisionError(
                f"cannot reach the npm registry (is NODE_EXTRA_CA_CERTS or npm's cafile set?): {exc}"
            ) from exc
        # Install beside the target, then move it in whole: a half-done install is never used.
        staging = Path(tempfile.mkdtemp(prefix=".statsd-", dir=CACHE_DIR))
        staging.chmod(0o755)
        try:
            _run(
                [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--no-save",
                 "--loglevel=error", *timeouts, f"statsd@{STATSD_VERSION}"],
                timeout=300,
            )  # fmt: skip
            if _statsd_in(staging) is None:
                raise ProvisionError(f"npm installed statsd into {staging}, but not version {STATSD_VERSION}")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return statsd_script()


def main() -> int:
    started = time.monotonic()
    try:
        provision_apt()
        script = provision_statsd()
    except ProvisionError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    print(f"provision: ready in {time.monotonic() - started:.0f} s (statsd: {script})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
