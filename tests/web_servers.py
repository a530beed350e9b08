"""Programs that serve HTTP, run for the end-to-end tests: start one until it says it is ready, fetch, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from typing import Optional, Sequence


def free_tcp_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def start_server(
    command: Sequence[str], ready: str, env: Optional[Mapping[str, str]] = None, cwd: Optional[os.PathLike[str]] = None
) -> subprocess.Popen[str]:
    """Run ``command`` until it writes ``ready`` to stderr."""
    proc = subprocess.Popen(list(command), env=env, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if ready in line:
            return proc
        assert time.monotonic() < deadline, "the server did not start"
    raise AssertionError(f"the server exited with {proc.wait()} before it was ready: {''.join(seen)}")


def http_get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        body: bytes = response.read()
    return body


def stop_server(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C the server; return what it wrote to stderr while shutting down."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err
