"""Real servers for the pipeline tests: Etsy statsd 0.9.0 writing into a Graphite carbon-cache,
and graphite-web 1.1 answering render queries over carbon's files and tag index.

All are installed beforehand by ``python3 -m tests.provision`` (tests/provision.py);
a test that finds one missing fails saying so. Each server runs in a temporary
folder of its own, on ephemeral ports of 127.0.0.1 only, in a process group of
its own that ``stop()`` and ``kill()`` end as a whole.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import whisper  # type: ignore[import-untyped]

from tests.ports import free_port
from tests.provision import command, statsd_script

LOOPBACK = "127.0.0.1"
# A statsd flush every second into 1-second whisper slots: statsd stamps each
# flush with its second, and its flushes fall on whole seconds, so no flush
# overwrites another's slot (with 500 ms flushes, every other one would).
FLUSH_MS = 1000
RETENTION = "1s:10m"

#: One stored point: (unix timestamp, value).
Point = Tuple[int, float]


class ServerError(RuntimeError):
    """A server could not be started."""


def carbon_cache() -> str:
    """The ``carbon-cache`` command, as provisioned."""
    return command("carbon-cache")


def _script_python(script_path: str) -> str:
    """The interpreter a Python script runs on (its ``#!`` line)."""
    with open(script_path, "rb") as script:
        first = script.readline().decode("utf-8", "replace")
    if not first.startswith("#!") or not first[2:].split():
        raise ServerError(f"{script_path} has no #! line: {first!r}")
    return first[2:].split()[0]


def carbon_python() -> str:
    """The interpreter carbon-cache runs on, which can import ``carbon``."""
    return _script_python(carbon_cache())


def graphite_web_python() -> str:
    """The interpreter graphite-web is installed for (that of ``graphite-manage``), which can import ``graphite``."""
    return _script_python(command("graphite-manage"))


def _udp_bound(port: int) -> bool:
    """Whether some socket is bound to 127.0.0.1:``port`` (UDP), from /proc/net/udp."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as table:
            return any(line.split()[1] == wanted for line in list(table)[1:])
    except OSError:
        return True  # no /proc: rely on the process staying alive


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


class Process:
    """A server process in a session (and process group) of its own, its output in a file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        cwd: Path,
        env: Optional[Mapping[str, str]] = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        # The child writes to its own copy of the descriptor; ours is closed at once.
        with open(log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=None if env is None else {**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return self._popen.poll()

    def output(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-limit:]
        except OSError:
            return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)

    def kill(self) -> None:
        """End the whole process group at once (SIGKILL), as a crash would."""
        self._signal_group(signal.SIGKILL)
        self._popen.wait()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(grace)
        # Whatever the leader did, leave nothing of its group running.
        self._signal_group(signal.SIGKILL)
        self._popen.wait()


def _wait_until(ready: Callable[[], bool], process: Process, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not process.alive():
            raise ServerError(f"{what} exited with code {process.returncode}:\n{process.output()}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} was not ready within {timeout}s:\n{process.output()}")
        time.sleep(0.05)


def _start_retrying(launch: Callable[[], Process], ready: Callable[[Process], None]) -> Process:
    """Start a server, up to three times: a port free when chosen may be taken before the server binds it.

    ``launch`` picks ports and starts the process; ``ready`` waits for it and raises
    ServerError if it does not come up, and then the process is stopped.
    """
    for tries_left in (2, 1, 0):
        process = launch()
        try:
            ready(process)
        except ServerError:
            process.stop()
            if not tries_left:
                raise
        else:
            return process
    raise AssertionError("unreachable")


def tagged_series(name: str, tags: Mapping[str, str]) -> str:
    """A Graphite tagged series as carbon stores it: ``name;k1=v1;k2=v2``, tags sorted.

    This is carbon's own normalisation (carbon.util.TaggedSeries.format), which
    carbon-cache applies to every name it receives.
    """
    return name + "".join(sorted(f";{key}={value}" for key, value in tags.items()))


def series_file(data_dir: Path, series: str) -> Path:
    """The whisper file carbon-cache 1.1 writes ``series`` to (carbon.util.TaggedSeries.encode).

    A plain name becomes folders, one per dot. A tagged name (``name;k=v...``,
    already normalised as by ``tagged_series``) goes under ``_tagged/``, in
    folders named after the first 3 and next 3 hex digits of the SHA-256 of the
    name, in a file named after the whole digest (TAG_HASH_FILENAMES, on by default).
    """
    if ";" in series:
        digest = hashlib.sha256(series.encode("utf-8")).hexdigest()
        return data_dir / "_tagged" / digest[0:3] / digest[3:6] / f"{digest}.wsp"
    return data_dir.joinpath(*series.split(".")).with_suffix(".wsp")


class Carbon:
    """A Graphite carbon-cache writing whisper files with 1-second slots.

    With ``graphite_url`` (a graphite-web's address) it indexes tags: every new
    series is posted to graphite-web's ``/tags/tagMultiSeries``.
    """

    def __init__(self, root: Path, graphite_url: Optional[str] = None) -> None:
        self.root = root
        self.conf_dir = root / "conf"
        self.data_dir = root / "whisper"
        self.graphite_url = graphite_url
        self.line_port = 0
        #: Where graphite-web's carbonlink asks for points not yet written.
        self.cache_query_port = 0
        self._process: Optional[Process] = None

    def _write_config(self) -> Path:
        for folder in (self.conf_dir, self.data_dir, self.root / "log", self.root / "run"):
            folder.mkdir(parents=True, exist_ok=True)
        carbon_conf = self.conf_dir / "carbon.conf"
        carbon_conf.write_text(
            f"""[cache]
STORAGE_DIR = {self.root}/
LOCAL_DATA_DIR = {self.data_dir}/
CONF_DIR = {self.conf_dir}/
LOG_DIR = {self.root}/log/
PID_DIR = {self.root}/run/
DATABASE = whisper
USER =
ENABLE_LOGROTATION = False
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = {LOOPBACK}
LINE_RECEIVER_PORT = {self.line_port}
ENABLE_UDP_LISTENER = False
UDP_RECEIVER_INTERFACE = {LOOPBACK}
UDP_RECEIVER_PORT = 0
PICKLE_RECEIVER_INTERFACE = {LOOPBACK}
PICKLE_RECEIVER_PORT = 0
CACHE_QUERY_INTERFACE = {LOOPBACK}
CACHE_QUERY_PORT = {self.cache_query_port}
MANHOLE_INTERFACE = {LOOPBACK}
ENABLE_MANHOLE = False
# The tag index lives in graphite-web (carbon posts new series to it); whisper files do not need it.
ENABLE_TAGS = {self.graphite_url is not None}
{f"GRAPHITE_URL = {self.graphite_url}" if self.graphite_url else ""}
TAG_HASH_FILENAMES = True
CARBON_METRIC_INTERVAL = 0
LOG_LISTENER_CONN_SUCCESS = False
LOG_CACHE_HITS = False
LOG_UPDATES = False
LOG_CREATES = True
"""
        )
        (self.conf_dir / "storage-schemas.conf").write_text(f"[everything]\npattern = .*\nretentions = {RETENTION}\n")
        (self.conf_dir / "storage-aggregation.conf").write_text(
            "[everything]\npattern = .*\nxFilesFactor = 0\naggregationMethod = last\n"
        )
        return carbon_conf

    def _listening(self, process: Process) -> bool:
        """Carbon says it listens on its line and cache-query ports, and it does (not someone else)."""
        log = process.output(100_000)
        said = all(
            f"{factory} starting on {port}" in log
            for factory, port in (("CarbonReceiverFactory", self.line_port), ("ServerFactory", self.cache_query_port))
        )
        return said and _tcp_open(self.line_port) and _tcp_open(self.cache_query_port)

    def start(self, timeout: float = 60.0) -> None:
        executable = carbon_cache()

        def launch() -> Process:
            # Carbon cannot report an ephemeral port; pick free ones, and
            # others if something takes one before carbon does.
            self.line_port = free_port("tcp")
            self.cache_query_port = free_port("tcp")
            config = self._write_config()
            for stale in (self.root / "run").glob("*.pid"):
                stale.unlink()
            return Process([executable, f"--config={config}", "--debug", "start"], self.root / "carbon.log", self.root)

        def ready(process: Process) -> None:
            _wait_until(functools.partial(self._listening, process), process, timeout, "carbon-cache")

        self._process = _start_retrying(launch, ready)

    def stop(self) -> None:
        """Kill carbon-cache: its files are thrown away, and a clean stop waits on its writer's sleep."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()

    @property
    def pid(self) -> int:
        assert self._process is not None, "carbon-cache is not running"
        return self._process.pid

    def file(self, series: str) -> Path:
        return series_file(self.data_dir, series)

    def points(self, series: str) -> List[Point]:
        """The points stored for ``series`` (oldest first); [] while its file is not there yet."""
        try:
            (start, _end, step), values = whisper.fetch(str(self.file(series)), 0)
        except (OSError, whisper.WhisperException, ValueError):
            return []  # not created yet, or caught halfway through its creation
        return [(start + i * step, value) for i, value in enumerate(values) if value is not None]

    def wait_points(self, series: str, condition: Callable[[List[Point]], bool], timeout: float = 30.0) -> List[Point]:
        """Poll ``series`` until ``condition`` holds for its points: carbon writes asynchronously."""
        deadline = time.monotonic() + timeout
        while True:
            points = self.points(series)
            if condition(points):
                return points
            if time.monotonic() > deadline:
                stored = sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*.wsp"))
                raise AssertionError(
                    f"{series}: condition not met within {timeout}s; points {points[-10:]}, "
                    f"file {self.file(series)}; {len(stored)} files stored: {stored[:40]}"
                )
            time.sleep(0.1)


# graphite-web in one process: ``migrate`` creates its tag database, then its WSGI application
# serves on a listening socket the test process bound (descriptor in argv[1]), so there is
# no port to guess and none can be taken meanwhile. The database is a throwaway: SQLite
# without fsync and in WAL mode (readers never wait for carbon's writes), where the
# defaults take about 70 ms per series carbon registers on this kind of disk.
_GRAPHITE_WEB_SERVER = """
import socket, socketserver, sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import django
from django.core.management import call_command
from django.db.backends.signals import connection_created

def throwaway_sqlite(sender, connection, **kwargs):
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=OFF")

connection_created.connect(throwaway_sqlite)
django.setup()
call_command("migrate", interactive=False, verbosity=0)

class Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

server = Server(("127.0.0.1", 0), WSGIRequestHandler, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=int(sys.argv[1]))
server.server_name, server.server_port = server.socket.getsockname()[:2]
server.setup_environ()
from graphite.wsgi import application
server.set_app(application)
print("graphite-web serving", flush=True)
server.serve_forever()
"""


class GraphiteWeb:
    """graphite-web 1.1 on 127.0.0.1: render API over a carbon's whisper files, with its tag index.

    Its listening socket is bound as soon as the object exists, so that carbon can be
    given ``url`` before either starts. It runs from a private settings module
    (``GRAPHITE_SETTINGS_MODULE``): its local tag database in a fresh SQLite file
    (Django's ``migrate``), ``WHISPER_DIR`` at carbon's data, and carbonlink at
    carbon's cache-query port for points carbon has not written yet.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((LOOPBACK, 0))
        self._socket.listen(64)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._process: Optional[Process] = None

    def _environment(self, carbon: Carbon) -> Dict[str, str]:
        settings_dir = self.root / "settings"
        for folder in (settings_dir, self.root / "storage", self.root / "log"):
            folder.mkdir(parents=True, exist_ok=True)
        (settings_dir / "loopstat_graphite_settings.py").write_text(
            f"""SECRET_KEY = "loopstat-tests"
ALLOWED_HOSTS = ["{LOOPBACK}"]
STORAGE_DIR = {str(self.root / "storage")!r}
LOG_DIR = {str(self.root / "log")!r}
WHISPER_DIR = {str(carbon.data_dir)!r}
STANDARD_DIRS = [WHISPER_DIR]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {str(self.root / "graphite.db")!r}}}}}
TAGDB = "graphite.tags.localdatabase.LocalDatabaseTagDB"
CARBONLINK_HOSTS = ["{LOOPBACK}:{carbon.cache_query_port}"]
LOG_ROTATION = False
"""
        )
        return {
            "PYTHONPATH": str(settings_dir),
            "DJANGO_SETTINGS_MODULE": "graphite.settings",
            "GRAPHITE_SETTINGS_MODULE": "loopstat_graphite_settings",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def start(self, carbon: Carbon, timeout: float = 60.0) -> None:
        """Create the tag database, then serve; ``carbon`` must be running (its cache-query port is known)."""
        assert self._process is None, "graphite-web is running already"
        process = Process(
            [graphite_web_python(), "-c", _GRAPHITE_WEB_SERVER, str(self._socket.fileno())],
            self.root / "graphite-web.log",
            self.root,
            self._environment(carbon),
            pass_fds=[self._socket.fileno()],
        )
        self._process = process
        _wait_until(lambda: "graphite-web serving" in process.output(), process, timeout, "graphite-web")
        # Only graphite-web holds its socket now: if it dies, requests are refused, not left waiting.
        self._socket.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop()
        self._socket.close()

    def get(self, path: str, params: Sequence[Tuple[str, str]] = (), timeout: float = 30.0) -> Any:
        """GET ``path`` with query ``params``; its JSON answer."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(list(params))}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            try:  # graphite-web logs its exceptions here, not on its output
                logged = (self.root / "log" / "exception.log").read_text("utf-8", "replace")[-4000:]
            except OSError:
                logged = ""
            body = exc.read().decode("utf-8", "replace")[:2000]
            raise ServerError(f"graphite-web answered {exc.code} to {url}: {body}\n{logged}") from exc

    def render(self, target: str, **params: str) -> List[Dict[str, Any]]:
        """``/render`` one target as JSON: a list of ``{"target", "tags", "datapoints": [[value, ts], ...]}``."""
        result: List[Dict[str, Any]] = self.get("/render", [("target", target), ("format", "json"), *params.items()])
        return result

    def output(self) -> str:
        return self._process.output() if self._process is not None else ""


# One `key: value` pair in node's util.inspect of a flat object of numbers.
_INSPECT_ITEM = re.compile(r"""(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([A-Za-z_$][\w$]*))\s*:\s*([^,\s}]+)""")


def parse_inspect(text: str) -> Dict[str, float]:
    """Parse node's util.inspect of a flat ``{key: number}`` object, as statsd's console prints it."""
    items: Dict[str, float] = {}
    for quoted, double_quoted, bare, value in _INSPECT_ITEM.findall(text):
        key = quoted or double_quoted or bare
        items[key.replace("\\'", "'")] = float(value)
    return items


class Statsd:
    """Etsy statsd 0.9.0 on 127.0.0.1: UDP on ``port``, its console on ``mgmt_port``.

    With ``graphite_port`` it flushes to carbon there every second, under
    Graphite's non-legacy names (``stats.gauges.P``, ``stats.timers.P.upper``,
    ``stats.counters.P.count``), or with ``legacy_namespace`` the legacy ones
    (``stats_counts.P`` for counters); without, it aggregates and discards.
    ``percent_threshold`` sets the timer percentiles (``upper_90``…; statsd's default is 90).
    """

    def __init__(
        self,
        root: Path,
        port: Optional[int] = None,
        graphite_port: Optional[int] = None,
        *,
        legacy_namespace: bool = False,
        percent_threshold: Sequence[int] = (),
    ) -> None:
        self.root = root
        self.port = port or 0
        self.mgmt_port = 0
        self.graphite_port = graphite_port
        self.legacy_namespace = legacy_namespace
        self.percent_threshold = list(percent_threshold)
        self._fixed_port = port is not None
        self._process: Optional[Process] = None
        self._starts = 0

    def _config(self) -> Dict[str, object]:
        config: Dict[str, object] = {
            "port": self.port,
            "address": LOOPBACK,
            "mgmt_port": self.mgmt_port,
            "mgmt_address": LOOPBACK,
            "flushInterval": FLUSH_MS,
            "backends": ["./backends/graphite"],
            "automaticConfigReload": False,
            "graphite": {"legacyNamespace": self.legacy_namespace},
        }
        if self.percent_threshold:
            config["percentThreshold"] = self.percent_threshold
        if self.graphite_port is not None:
            config.update(graphiteHost=LOOPBACK, graphitePort=self.graphite_port)
        return config

    def start(self, timeout: float = 60.0) -> None:
        """Start statsd, on ``port`` if one was given (a restart keeps it) or a free one."""
        assert self._process is None, "statsd is running already"
        script = statsd_script()
        node = command("node")
        self.root.mkdir(parents=True, exist_ok=True)

        def launch() -> Process:
            if not self._fixed_port:
                self.port = free_port("udp")
            self.mgmt_port = free_port("tcp")
            self._starts += 1
            config = self.root / f"config-{self._starts}.js"
            config.write_text(json.dumps(self._config(), indent=2))
            return Process([node, str(script), str(config)], self.root / "statsd.log", script.parent)

        def ready(process: Process) -> None:
            what = f"statsd on udp {self.port}"
            _wait_until(lambda: _tcp_open(self.mgmt_port) and _udp_bound(self.port), process, timeout, what)
            # statsd dies when its UDP port is taken: give that a moment to show.
            time.sleep(0.05)
            if not process.alive() or "health: up" not in self.command("health"):
                raise ServerError(f"{what} did not come up:\n{process.output()}")

        self._process = _start_retrying(launch, ready)

    def kill(self) -> None:
        """Kill statsd outright (SIGKILL), as a crash would; ``start()`` brings it back on the same port."""
        process, self._process = self._process, None
        assert process is not None, "statsd is not running"
        process.kill()
        self._fixed_port = True

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None, "statsd is not running"
        return self._process.pid

    def command(self, command: str, timeout: float = 10.0) -> str:
        """Send one console command; return its answer."""
        end = b"\n" if command == "health" else b"END\n\n"
        answer = b""
        with socket.create_connection((LOOPBACK, self.mgmt_port), timeout=timeout) as sock:
            sock.sendall(command.encode() + b"\n")
            while not answer.endswith(end):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer.decode("utf-8", "replace")

    def gauges(self) -> Dict[str, float]:
        """The gauges statsd holds now (kept from flush to flush), by name."""
        return parse_inspect(self.command("gauges"))

    def stats(self) -> Dict[str, float]:
        """statsd's own counts since it started, e.g. ``messages.bad_lines_seen``."""
        stats: Dict[str, float] = {}
        for line in self.command("stats").splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                with contextlib.suppress(ValueError):
                    stats[key] = float(value)
        return stats

    def output(self) -> str:
        return self._process.output() if self._process is not None else ""


@contextlib.contextmanager
def running_carbon(root: Path) -> Iterator[Carbon]:
    carbon = Carbon(root)
    carbon.start()
    try:
        yield carbon
    finally:
        carbon.stop()


@contextlib.contextmanager
def running_statsd(
    root: Path,
    port: Optional[int] = None,
    graphite_port: Optional[int] = None,
    *,
    legacy_namespace: bool = False,
    percent_threshold: Sequence[int] = (),
) -> Iterator[Statsd]:
    statsd = Statsd(root, port, graphite_port, legacy_namespace=legacy_namespace, percent_threshold=percent_threshold)
    statsd.start()
    try:
        yield statsd
    finally:
        statsd.stop()


@contextlib.contextmanager
def running_graphite(root: Path) -> Iterator[Tuple[Carbon, GraphiteWeb]]:
    """A carbon-cache indexing tags into a graphite-web that serves its series."""
    web = GraphiteWeb(root / "graphite-web")
    try:
        carbon = Carbon(root / "carbon", graphite_url=web.url)
        carbon.start()
        try:
            web.start(carbon)
            yield carbon, web
        finally:
            carbon.stop()
    finally:
        web.stop()
