"""Real servers for integration tests: a private Prometheus, a private InfluxDB 1.x, and
`statscache-exporter run` as a process. Everything binds to 127.0.0.1 on free ports, keeps its
data under the test's tmp_path, and is stopped at the end (terminate, then kill if it does not
stop).

A missing binary skips the test on a developer machine and fails it in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

#: Result of a PromQL instant query: [{"metric": {label: value}, "value": [time, "number"]}]
PromResult = list[dict[str, Any]]
#: The samples of an exposition: (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# No proxy for loopback servers, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- small helpers -------------------------------------------------------------------------------

#: The Debian package that provides each server binary (`make test-deps` installs them).
_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "influxd": "influxdb",
    "influx": "influxdb-client",
}


def require_binary(name: str) -> str:
    """The path of an executable (``/usr/bin/<name>`` first, then PATH). Missing: the test
    fails when ``CI=true`` and is skipped, saying why, on a developer machine."""
    candidate = Path("/usr/bin") / name
    path = str(candidate) if os.access(candidate, os.X_OK) else shutil.which(name)
    if path is None:
        package = _PACKAGES.get(name, name)
        missing(
            f"{name} not found in /usr/bin or on PATH: install it with `make test-deps` "
            f"(the Debian package {package} provides it)"
        )
    return path


def missing(reason: str) -> NoReturn:
    """Something a test needs is not installed: the test fails in CI (``CI=true``), where
    `make test` installs everything, and is skipped, saying why, on a developer machine."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


#: Where :func:`free_port` looks: from here up to the kernel's ephemeral range.
LOWEST_PORT = 10000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, chosen at random below the kernel's ephemeral
    range (``net.ipv4.ip_local_port_range``). A server stopped and started again on the same
    port (RabbitMQ's AMQP and Erlang distribution ports, InfluxDB's, the exporter's) cannot
    then find it taken meanwhile by the local end of some client's connection, which the kernel
    takes from that range: a restart of RabbitMQ once failed on ``dist_port_already_used``."""
    ephemeral = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(LOWEST_PORT, ephemeral)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free TCP port on 127.0.0.1 in {LOWEST_PORT}-{ephemeral - 1}")


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (Linux's default when unreadable)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low if low > LOWEST_PORT + 1000 else 32768


def wait_until(
    probe: Callable[[], T],
    predicate: Callable[[T], bool],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.2,
) -> T:
    """Call ``probe`` until ``predicate`` holds on its result; fail after ``timeout`` seconds,
    naming ``what`` was awaited and the last result (or error) seen."""
    deadline = time.monotonic() + timeout
    last: Any = "nothing yet"
    while True:
        try:
            value = probe()
        except Exception as exc:  # a server still starting: retry until the deadline
            last = f"error: {exc!r}"
        else:
            if predicate(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
    """GET without proxies and without raising on HTTP error statuses."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def http_post(
    url: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> Response:
    """POST without proxies and without raising on HTTP error statuses."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def parse_text(exposition: str) -> Samples:
    """Every sample of a text-format exposition, keyed by name and labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str) -> float:
    """The sum of every series of sample ``name``."""
    return sum(v for (n, _), v in samples.items() if n == name)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Send ``sig``, wait; kill if it does not stop in time. The exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


# --- Prometheus ----------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``; the ``data`` of a successful answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        r = http_get(url)
        answer = json.loads(r.body)
        if r.status != 200 or answer.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: HTTP {r.status}: {answer}")
        return answer["data"]

    def instant(self, promql: str) -> PromResult:
        """One instant query; a vector result as a list of {"metric", "value"} dicts."""
        data = self.api("query", query=promql)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: PromResult = data["result"]
        return result

    def query(
        self,
        promql: str,
        predicate: Callable[[PromResult], bool] = bool,
        timeout: float = 30.0,
    ) -> PromResult:
        """Poll an instant query until ``predicate`` holds on its result (by default: not
        empty); fail after ``timeout`` with the last result."""
        return wait_until(
            lambda: self.instant(promql),
            predicate,
            f"PromQL {promql!r} to satisfy its predicate",
            timeout,
            interval=0.25,
        )

    def wait_for_scrape_after(self, when: float, job: str = "statscache") -> None:
        """Wait until every target of ``job`` has been scraped (successfully) after the wall-clock
        time ``when``, so that what a query returns reflects the target's state since then."""
        wait_until(
            # timestamp() of a bare selector is the sample's (scrape's) time; of an
            # expression it would be the evaluation time
            lambda: self.instant(f'timestamp(up{{job="{job}"}}) and up{{job="{job}"}} == 1'),
            lambda r: bool(r) and all(float(s["value"][1]) > when for s in r),
            f"a successful scrape of job {job} after {when:.3f}",
        )


def values_by(result: PromResult, label: str) -> dict[str, float]:
    """A query result as {value of ``label``: sample value}."""
    out: dict[str, float] = {}
    for s in result:
        key = s["metric"].get(label, "")
        assert key not in out, f"two series with {label}={key!r} in {result}"
        out[key] = float(s["value"][1])
    return out


def single_value(result: PromResult) -> float:
    assert len(result) == 1, f"expected one series, got {result}"
    return float(result[0]["value"][1])


@contextlib.contextmanager
def prometheus_server(
    tmp_path: Path, targets: list[str], scrape_interval: str = "1s"
) -> Iterator[Prometheus]:
    """A private Prometheus scraping ``targets`` (``host:port``) as job ``statscache`` every
    ``scrape_interval``, ready when yielded, stopped at the end."""
    binary = require_binary("prometheus")
    port = free_port()
    home = tmp_path / f"prometheus-{port}"
    home.mkdir(parents=True)
    config = home / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": scrape_interval,
                    "scrape_timeout": scrape_interval,
                    "evaluation_interval": scrape_interval,
                },
                "scrape_configs": [
                    {
                        "job_name": "statscache",
                        "honor_labels": False,
                        "static_configs": [{"targets": targets}],
                    }
                ],
            },
            indent=2,
        )
    )
    log = home / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
            ],
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> int:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited {process.returncode} at start:\n{_tail(log)}")
            return http_get(f"{server.url}/-/ready", timeout=2).status

        wait_until(ready, lambda status: status == 200, f"Prometheus at {server.url}/-/ready")
        yield server
    finally:
        _stop(process)


# --- InfluxDB 1.x --------------------------------------------------------------------------------

#: InfluxQL answers: {"results": [{"statement_id": 0, "series": [...]}]}
InfluxSeries = list[dict[str, Any]]


@dataclass
class InfluxDB:
    """A private ``influxd`` (1.x), started by :func:`influxdb_server`. :meth:`stop` and
    :meth:`start` stop it and start it again on the same data and port (outage tests)."""

    binary: str
    port: int
    home: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.home / "influxdb.conf"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.runs += 1
        # INFLUXDB_* variables would override the config file
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        with self.log.open("ab") as out:
            out.write(f"--- run {self.runs} ---\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [self.binary, "run", "-config", str(self.config)],
                cwd=self.home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def ping() -> int:
            if process.poll() is not None:
                pytest.fail(f"influxd exited {process.returncode} at start:\n{_tail(self.log)}")
            return http_get(f"{self.url}/ping", timeout=2).status

        wait_until(ping, lambda status: status == 204, f"InfluxDB at {self.url}/ping")

    def stop(self) -> int:
        """SIGTERM (killed if it does not stop); the exit code."""
        assert self.process is not None, "not running"
        code = _stop(self.process, signal.SIGTERM)
        self.process = None
        return code

    def query(self, q: str, db: str | None = None, epoch: str = "s") -> Any:
        """One InfluxQL request (POST /query, so that CREATE and DROP work too), the parsed
        JSON answer; an HTTP error or an error in any statement fails the call."""
        params = {"q": q, "epoch": epoch, **({"db": db} if db is not None else {})}
        r = http_post(
            f"{self.url}/query",
            urllib.parse.urlencode(params).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        answer = json.loads(r.body) if r.body else {}
        errors = [answer.get("error")] + [s.get("error") for s in answer.get("results", [])]
        if r.status != 200 or any(errors):
            raise AssertionError(f"InfluxDB {q!r} on {db}: HTTP {r.status}: {answer}")
        return answer

    def series(self, q: str, db: str | None = None) -> InfluxSeries:
        """The series of a single-statement query (an empty list when nothing matched)."""
        results = self.query(q, db)["results"]
        assert len(results) == 1, results
        series: InfluxSeries = results[0].get("series", [])
        return series

    def write(self, lines: list[str], db: str) -> Response:
        """POST line protocol to /write (precision s), as it is: the answer, not raised."""
        return http_post(
            f"{self.url}/write?{urllib.parse.urlencode({'db': db, 'precision': 's'})}",
            "\n".join(lines).encode("utf-8"),
        )

    def databases(self) -> set[str]:
        return {v[0] for s in self.series("SHOW DATABASES") for v in s.get("values", [])}

    def dump(self, db: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[list[Any]]]:
        """Every point of every measurement: (measurement, sorted tags) → its [time, fields...]
        rows, sorted."""
        out: dict[tuple[str, tuple[tuple[str, str], ...]], list[list[Any]]] = {}
        for s in self.series("SELECT * FROM /.*/ GROUP BY *", db):
            key = (s["name"], tuple(sorted((s.get("tags") or {}).items())))
            assert key not in out, f"series {key} twice"
            out[key] = sorted(s["values"])
        return out


_INFLUXDB_CONF = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{home}/meta"

[data]
  dir = "{home}/data"
  wal-dir = "{home}/wal"
  query-log-enabled = false

[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-row-limit = 0

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false
"""


@contextlib.contextmanager
def influxdb_server(tmp_path: Path) -> Iterator[InfluxDB]:
    """A private InfluxDB 1.x on free ports of 127.0.0.1 (HTTP, and the RPC port it insists on)
    with its data under ``tmp_path``, answering /ping when yielded, stopped at the end."""
    binary = require_binary("influxd")
    port, rpc_port = free_port(), free_port()
    home = tmp_path / f"influxdb-{port}"
    home.mkdir(parents=True)
    server = InfluxDB(binary, port, home, home / "influxd.log")
    server.config.write_text(_INFLUXDB_CONF.format(home=home, port=port, rpc_port=rpc_port))
    try:
        server.start()
        yield server
    finally:
        if server.process is not None:
            server.stop()


# --- the exporter --------------------------------------------------------------------------------


@dataclass
class Exporter:
    """`statscache-exporter run` as a process (start it with :func:`exporter_process`)."""

    port: int
    store: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    plugins: dict[str, Any] | None = None  # the config's plugins section
    settings: dict[str, Any] | None = None  # more config sections (e.g. influxdb)
    returncode: int | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.runs += 1
        with self.log.open("ab") as out:
            out.write(f"--- run {self.runs} ---\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "statscache_exporter", "run", "--config", str(self.config)],
                cwd=self.config.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def healthz() -> int:
            if process.poll() is not None:
                pytest.fail(f"the exporter exited {process.returncode}:\n{_tail(self.log)}")
            return http_get(f"{self.url}/healthz", timeout=2).status

        wait_until(healthz, lambda status: status == 200, f"the exporter at {self.url}/healthz")

    def stop(self) -> int:
        """SIGTERM (killed if it does not stop); the exit code."""
        assert self.process is not None, "not running"
        self.returncode = _stop(self.process, signal.SIGTERM)
        self.process = None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL: no final flush, no goodbye to InfluxDB."""
        assert self.process is not None, "not running"
        self.returncode = _stop(self.process, signal.SIGKILL)
        self.process = None

    def stop_cleanly(self) -> None:
        """SIGTERM, and the exit code must be 0."""
        code = self.stop()
        assert code == 0, f"the exporter exited {code} on SIGTERM:\n{_tail(self.log)}"

    def reconfigure(self, paths: list[Path]) -> None:
        """Rewrite the config (same store, port and plugins) with other replay files; it takes
        effect at the next :meth:`start`."""
        write_exporter_config(
            self.config, self.store, self.port, paths, self.plugins, self.settings
        )

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None) -> Response:
        return http_get(self.url + path, headers)

    def samples(self) -> Samples:
        """The current /metrics (text format), parsed."""
        r = self.get("/metrics")
        assert r.status == 200, r
        return parse_text(r.body.decode("utf-8"))

    def wait_replayed(
        self, items: int, stored_before: int | None = 0, timeout: float = 60.0
    ) -> Samples:
        """Wait until this run has handled ``items`` messages (received, and each processed,
        a duplicate or rejected), its replay is over, and what it processed is flushed:
        statscache_messages_total (which only moves after a committed flush) is
        ``stored_before`` plus the messages processed. ``stored_before=None``: every message
        already in the store is seen again by this run, as a duplicate. The samples then."""

        def done(s: Samples) -> bool:
            received = total(s, "statscache_exporter_messages_received_total")
            processed = total(s, "statscache_exporter_messages_processed_total")
            duplicates = total(s, "statscache_exporter_messages_duplicate_total")
            rejected = total(s, "statscache_exporter_messages_rejected_total")
            reading = total(s, "statscache_exporter_source_connected")
            counted = s.get(("statscache_messages_total", ()), 0)
            before = duplicates if stored_before is None else stored_before
            return (
                received == processed + duplicates + rejected == items
                and reading == 0
                and counted == before + processed
            )

        return wait_until(
            self.samples, done, f"the replay of {items} messages on {self.url}", timeout
        )


def write_exporter_config(
    path: Path,
    store: Path,
    port: int,
    paths: list[Path],
    plugins: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """``settings``: more top-level sections; one that exists already (store, http, logging)
    is updated key by key."""
    data: dict[str, Any] = {
        "store": {"path": str(store), "flush_interval": "250ms"},
        "sources": [{"type": "replay", "name": "file", "paths": [str(p) for p in paths]}],
        "http": {"enabled": True, "address": "127.0.0.1", "port": port},
        "logging": {"level": "INFO"},
        # never Fedora's datagrepper from a test; the backfill tests give their own
        "backfill": {"enabled": False},
    }
    if plugins:
        data["plugins"] = plugins
    for key, value in (settings or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML


@contextlib.contextmanager
def exporter_process(
    tmp_path: Path,
    paths: list[Path],
    plugins: dict[str, Any] | None = None,
    port: int | None = None,
    settings: dict[str, Any] | None = None,
) -> Iterator[Exporter]:
    """`statscache-exporter run` replaying ``paths`` into a store under ``tmp_path``, serving
    HTTP on a free port of 127.0.0.1; started (answering /healthz) when yielded. At the end it
    gets SIGTERM and, when the test body went through, must exit 0. ``port``: one chosen in
    advance (e.g. already a Prometheus target), else a free one. ``settings``: more config
    sections (see :func:`write_exporter_config`)."""
    home = tmp_path / "exporter"
    home.mkdir(parents=True, exist_ok=True)
    exporter = Exporter(
        port=port if port is not None else free_port(),
        store=home / "store.sqlite",
        config=home / "config.yaml",
        log=home / "exporter.log",
        plugins=plugins,
        settings=settings,
    )
    exporter.reconfigure(paths)
    try:
        exporter.start()
        yield exporter
    except BaseException:
        if exporter.process is not None:
            exporter.stop()
        raise
    if exporter.process is not None:
        exporter.stop_cleanly()


def write_jsonl(path: Path, messages: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(m) + "\n" for m in messages), encoding="utf-8")
    return path


class ReplayPipe:
    """A named pipe to give the exporter as a replay file, written by the test at its own
    pace: the replay reads what was written and waits for more until :meth:`close`. So a test
    can act (stop a server, kill the exporter) while a replay is certainly not over.

    The replay opens the file twice (a look at the first bytes for gzip, then the reading): the
    first bytes written are blank lines, read by the look, and the rest waits until they are
    gone. The writer stays open throughout, so nothing written is lost between the two opens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd: int | None = None

    def _open(self, timeout: float) -> int:
        def open_for_writing() -> int | None:
            try:  # fails (ENXIO) until a reader has it open
                return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                return None

        found = wait_until(
            open_for_writing,
            lambda fd: fd is not None,
            f"the exporter to open the replay pipe {self.path}",
            timeout,
            interval=0.05,
        )
        assert found is not None
        fd: int = found
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        os.write(fd, b"\n\n")  # for the look at the magic bytes
        wait_until(lambda: self._unread(fd), lambda n: n == 0, "the replay's first look", timeout)
        return fd

    @staticmethod
    def _unread(fd: int) -> int:
        buf = bytearray(4)
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    def write(self, data: bytes, timeout: float = 30.0) -> None:
        """Hand ``data`` over (blocks while the pipe is full)."""
        if self.fd is None:
            self.fd = self._open(timeout)
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BrokenPipeError:  # between the look and the reading: no reader for now
                if time.monotonic() > deadline:
                    pytest.fail(f"nobody reads the replay pipe {self.path}")
                time.sleep(0.02)

    def write_messages(self, messages: list[dict[str, Any]]) -> None:
        self.write("".join(json.dumps(m) + "\n" for m in messages).encode("utf-8"))

    def close(self) -> None:
        """End of file for the replay."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
