#!/usr/bin/env python3
"""Benchmark: the InfluxDB sender draining its outbox, against a plain requests.post loop.

In one process, against an ``influxd`` it starts itself (temporary directory, free loopback
ports, stopped at the end):

1. a store whose outbox holds N pending points (default 1,000,000), built through the store's
   own ``Store.commit(batch)`` (the outbox filled by the sink's hook, ``OutboxWriter.after_write``,
   at a 1 s base resolution), one flush per 10 seconds of data, as
   the pipeline would have committed them (buckets at every resolution, totals, outbox rows);
2. ours: ``InfluxSink(config.influxdb, store_path).drain(outbox)``, the sender thread's own
   path, until the outbox is empty (read a batch's lines as one body, POST it, acknowledge
   it; the next batch is read and the last acknowledged while a write is in flight), into
   database A, timed as a whole, with the time spent in each part;
3. plain: the exact same lines (read from the outbox beforehand, untimed), POSTed in batches
   of the same size with a ``requests.Session``, into database B;
4. both databases checked to hold the same points, equal to what was put in.

Prints points/s for both and the ratio ours/plain, with the target (>= 0.9) as information
only: the exit status is 1 only if the databases do not hold the expected points, 2 if no
``influxd`` can be started. Markdown on stdout, progress on stderr, ``--json PATH`` also
writes the figures. Seeded: the same arguments give the same series, points and values.

    .venv/bin/python bench/influx_write.py [--points 1000000] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import common
import requests
from common import CATEGORIES, loadavg, log, names, username, word

from statscache_exporter import config as configuration
from statscache_exporter.aggregate import Batch, Series, SeriesKey
from statscache_exporter.config import InfluxConfig
from statscache_exporter.influx import InfluxSink, V1Writer, WriteResult
from statscache_exporter.outbox import Outbox, Queued, writer_of
from statscache_exporter.pipeline import Pipeline, open_pipeline
from statscache_exporter.plugin import Plugin, discover

NAME = "influx_write"
TARGET_RATIO = 0.9
DB_OURS = "bench_ours"
DB_PLAIN = "bench_plain"
START = 1_767_225_600  # 2026-01-01 00:00 UTC: the first second of the data
FLUSH_SECONDS = 10  # seconds of data per store flush while building the outbox


# --- the data ----------------------------------------------------------------------------------


OBJECTS = names("update build tag package repo pull-request issue commit compose task image chroot")
ACTIONS = names("created comment complete edit request.testing state.change start end failed")
PREFIXES = ("org.fedoraproject.prod.",) * 6 + ("org.fedoraproject.stg.", "io.pagure.prod.")
PACKAGE_PREFIXES = ("",) * 6 + ("python-", "python-", "rust-", "golang-github-", "perl-")


def label_value(metric: str, rng: random.Random) -> str:
    if metric == "messages_by_topic":
        return (
            f"{rng.choice(PREFIXES)}{rng.choice(CATEGORIES)}."
            f"{rng.choice(OBJECTS)}.{rng.choice(ACTIONS)}"
        )
    if metric == "messages_by_package":
        words = [word(rng, rng.randint(1, 4)) for _ in range(rng.randint(1, 3))]
        return rng.choice(PACKAGE_PREFIXES) + "-".join(words)
    return username(rng)  # messages_by_user, messages_by_agent


@dataclass
class Data:
    """The series and the points: per second, ``per_second`` of the series have a bucket."""

    series: list[tuple[SeriesKey, Series]]
    points: int
    per_second: int
    seconds: int
    #: measurement (metric name, without the prefix) → [points, sum of the counts]
    expected: dict[str, list[int]] = field(default_factory=dict)
    #: what queueing the lines cost the flushes (``OutboxWriter.after_write``, timed in each commit)
    queue_seconds: float = 0.0


def make_series(n: int, pipeline: Pipeline, rng: random.Random) -> list[tuple[SeriesKey, Series]]:
    """``n`` series over the bundled volume plugins' counters, spread as a busy bus spreads
    them: the unlabelled total, every category, then topics, agents, users and packages."""
    metrics = pipeline.metrics()
    shares = {
        "messages": 1,
        "messages_by_category": min(len(CATEGORIES), max(1, n // 50)),
        "messages_by_topic": n * 15 // 100,
        "messages_by_agent": n * 10 // 100,
        "messages_by_user": n * 30 // 100,
    }
    shares["messages_by_package"] = n - sum(shares.values())
    if shares["messages_by_package"] < 1:
        raise SystemExit(f"--series {n}: too few series to spread over the metrics (use >= 100)")
    out: list[tuple[SeriesKey, Series]] = []
    for name, count in shares.items():
        ident, metric = metrics[name]
        if name == "messages":
            values: list[tuple[str, ...]] = [()]
        elif name == "messages_by_category":
            values = [(c,) for c in CATEGORIES[:count]]
        else:
            seen: dict[tuple[str, ...], None] = {}
            while len(seen) < count:
                value = label_value(name, rng)
                seen[(value if (value,) not in seen else f"{value}-{len(seen)}",)] = None
            values = list(seen)
        created = float(START - 86_400)
        out += [((name, labels), Series(ident, metric, labels, created)) for labels in values]
    return out


def count_value(rng: random.Random) -> int:
    """Messages per series in one second: mostly 1-3, a few in the tens."""
    return int(rng.lognormvariate(0.3, 0.9)) + 1


def fill_store(
    pipeline: Pipeline, n_points: int, n_series: int, per_second: int, seed: int
) -> Data:
    """Commit the points through ``Store.commit`` with the outbox on, a flush per
    ``FLUSH_SECONDS`` seconds of data, as the pipeline commits its aggregator's batches."""
    rng = random.Random(seed)
    series = make_series(n_series, pipeline, rng)
    per_second = min(per_second, len(series))
    seconds = -(-n_points // per_second)
    data = Data(series, n_points, per_second, seconds)
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    resolutions = pipeline.config.resolutions()
    writer = writer_of(pipeline.store.hooks)
    assert writer is not None and writer.resolution == resolutions[0] == 1, (
        "the benchmark assumes the outbox on, at a 1 s base resolution"
    )
    totals: dict[SeriesKey, int] = {}
    written = 0
    batch = Batch(resolutions=resolutions)
    queue = writer.after_write  # timed: the flushes' part of the sink's work

    def timed_queue(*args: Any) -> None:
        t0 = time.perf_counter()
        queue(*args)
        data.queue_seconds += time.perf_counter() - t0

    writer.after_write = timed_queue  # type: ignore[method-assign,assignment]
    for second in range(seconds):
        t = START + second
        take = min(per_second, n_points - written)
        # the unlabelled total has a bucket every second, the others a sample of the rest
        chosen = [0, *rng.sample(range(1, len(series)), take - 1)] if take > 1 else [0]
        for index in chosen:
            key, s = series[index]
            amount = count_value(rng)
            bkey = (key[0], key[1], 1, t)
            batch.counter_deltas[bkey] = batch.counter_deltas.get(bkey, 0) + amount
            totals[key] = batch.totals[key] = totals.get(key, 0) + amount
            batch.series[key] = s
            e = expected[key[0]]
            e[0] += 1
            e[1] += amount
        written += take
        if (second + 1) % FLUSH_SECONDS == 0 or second == seconds - 1:
            pipeline.store.commit(batch)
            batch = Batch(resolutions=resolutions)
            if (second + 1) % (FLUSH_SECONDS * 20) == 0:
                log(f"  store: {written:,} / {n_points:,} points")
    data.expected = dict(expected)
    return data


# --- influxd -----------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


INFLUXD_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[http]
  bind-address = "127.0.0.1:{http}"
  log-enabled = false

[monitor]
  store-enabled = false
"""


@dataclass
class Influxd:
    process: subprocess.Popen[bytes]
    url: str
    version: str
    log_path: Path

    def cpu_seconds(self) -> float:
        """influxd's user + system CPU time so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def query(self, q: str, db: str | None = None) -> Any:
        params = {"q": q, **({"db": db} if db else {})}
        response = requests.post(f"{self.url}/query", params=params, timeout=300)
        response.raise_for_status()
        return response.json()


class InfluxdUnavailable(Exception):
    pass


@contextmanager
def influxd(binary: str, root: Path) -> Iterator[Influxd]:
    """An influxd on free loopback ports with everything under ``root``; stopped at exit."""
    for attempt in range(3):
        http, rpc = free_ports(2)
        conf = root / "influxdb.conf"
        conf.write_text(INFLUXD_CONFIG.format(root=root, http=http, rpc=rpc))
        log_path = root / f"influxd-{attempt}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [binary, "run", "-config", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{http}"
        try:
            found = wait_ready(process, url)
        except BaseException:
            stop(process)
            raise
        if found is None:  # exited early: a port taken meanwhile, or a real failure
            if attempt == 2:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise InfluxdUnavailable(f"influxd exited at start-up; its log ends:\n{tail}")
            continue
        try:
            yield Influxd(process, url, found, log_path)
        finally:
            stop(process)
        return


def wait_ready(process: subprocess.Popen[bytes], url: str) -> str | None:
    """influxd's version once /ping answers, None if it exited first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        try:
            response = requests.get(f"{url}/ping", timeout=1)
            if response.status_code == 204:
                return response.headers.get("X-Influxdb-Version", "unknown")
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise InfluxdUnavailable(f"influxd did not answer {url}/ping within 60 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- ours, instrumented ------------------------------------------------------------------------
# Timed per batch only (a few perf_counter calls per 5000 points), never per line, so the
# instrumented run is the run measured. The parts overlap: drain() keeps a write in flight (in
# its own thread) while it reads the next batch and acknowledges the last one.


@dataclass
class Split:
    read: float = 0.0  # Outbox.next_batch
    state: float = 0.0  # Outbox.state (InfluxSink._refresh_state: every 30 s at most)
    http: float = 0.0  # V1Writer.write: encode, POST, read the response
    acknowledge: float = 0.0  # Outbox.acknowledge_batch
    checkpoint: float = 0.0  # Outbox.checkpoint inside drain (every 100 batches)
    checkpoint_after: float = 0.0  # the one the sender loop runs after drain (not in the run)
    batches: int = 0  # calls of V1Writer.write
    state_calls: int = 0


class TimedOutbox(Outbox):
    def __init__(self, path: str | Path, split: Split) -> None:
        super().__init__(path)
        self.split = split

    def next_batch(self, limit: int, after: int | None = None) -> Queued | None:
        t0 = time.perf_counter()
        try:
            return super().next_batch(limit, after)
        finally:
            self.split.read += time.perf_counter() - t0

    def acknowledge_batch(self, batch: Queued, refused: Sequence[str] = ()) -> None:
        t0 = time.perf_counter()
        try:
            super().acknowledge_batch(batch, refused)
        finally:
            self.split.acknowledge += time.perf_counter() - t0

    def checkpoint(self) -> None:
        t0 = time.perf_counter()
        try:
            super().checkpoint()
        finally:
            self.split.checkpoint += time.perf_counter() - t0

    def state(self) -> tuple[int, int, float | None]:
        t0 = time.perf_counter()
        try:
            return super().state()
        finally:
            self.split.state += time.perf_counter() - t0
            self.split.state_calls += 1


class TimedWriter(V1Writer):
    def __init__(self, config: InfluxConfig, split: Split) -> None:
        super().__init__(config)
        self.split = split

    def write(self, body: str) -> WriteResult:
        t0 = time.perf_counter()
        try:
            return super().write(body)
        finally:
            self.split.http += time.perf_counter() - t0
            self.split.batches += 1


@dataclass
class Round:
    number: int
    plain_first: bool
    ours: Run
    plain: Run
    split: Split

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "order": "plain first" if self.plain_first else "ours first",
            "ours": self.ours.as_dict(),
            "plain": self.plain.as_dict(),
            "ratio": self.ours.rate / self.plain.rate,
        }


@dataclass
class Run:
    name: str
    points: int
    seconds: float
    client_cpu: float
    influxd_cpu: float
    batches: int

    @property
    def rate(self) -> float:
        return self.points / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "sender": self.name,
            "points": self.points,
            "batches": self.batches,
            "seconds": round(self.seconds, 4),
            "points_per_second": round(self.rate, 1),
            "client_cpu_seconds": round(self.client_cpu, 3),
            "influxd_cpu_seconds": round(self.influxd_cpu, 3),
        }


def run_ours(
    server: Influxd, pipeline: Pipeline, store_path: str, points: int
) -> tuple[Run, Split, int]:
    """The sender thread's own path, ``drain`` until the outbox is empty."""
    split = Split()
    influx_config = pipeline.config.influxdb
    outbox = TimedOutbox(store_path, split)
    sink = InfluxSink(influx_config, store_path, writer=TimedWriter(influx_config, split))
    try:
        gc.collect()
        cpu0, server0 = time.process_time(), server.cpu_seconds()
        t0 = time.perf_counter()
        if sink.drain(outbox) < 0:
            raise RuntimeError(f"InfluxDB write failed: {sink.stats.last_error}")
        elapsed = time.perf_counter() - t0
        cpu, server_cpu = time.process_time() - cpu0, server.cpu_seconds() - server0
        t1 = time.perf_counter()
        Outbox.checkpoint(outbox)  # as InfluxSink._loop does after a drain
        split.checkpoint_after = time.perf_counter() - t1
        pending = outbox.state()[0]
    finally:
        sink.writer.close()
        outbox.close()
    if split.batches == 0:
        log("  warning: the writer was never called: the split no longer matches influx.py")
    if sink.stats.points_written != points:
        raise RuntimeError(f"the sink wrote {sink.stats.points_written:,} points, not {points:,}")
    run = Run("ours", points, elapsed, cpu, server_cpu, sink.stats.batches_written)
    return run, split, pending


def collect_lines(store_path: str) -> list[str]:
    """Every queued point's line, in the order the sender sends them (for the plain loop,
    untimed)."""
    db = sqlite3.connect(store_path)
    try:
        bodies = db.execute("SELECT body FROM outbox ORDER BY id")
        return [line for (body,) in bodies for line in body.split("\n")]
    finally:
        db.close()


def run_plain(server: Influxd, lines: list[str], batch_size: int, timeout: float) -> Run:
    """The baseline: the same lines, POSTed to /write in batches with one Session."""
    session = requests.Session()
    url = f"{server.url}/write"
    params = {"db": DB_PLAIN, "precision": "s"}
    batches = 0
    try:
        gc.collect()
        cpu0, server0 = time.process_time(), server.cpu_seconds()
        t0 = time.perf_counter()
        for i in range(0, len(lines), batch_size):
            body = "\n".join(lines[i : i + batch_size]).encode("utf-8")
            response = session.post(url, params=params, data=body, timeout=timeout)
            response.raise_for_status()
            batches += 1
        elapsed = time.perf_counter() - t0
        cpu, server_cpu = time.process_time() - cpu0, server.cpu_seconds() - server0
    finally:
        session.close()
    return Run("plain", len(lines), elapsed, cpu, server_cpu, batches)


def join_encode_seconds(lines: list[str], batch_size: int) -> float:
    """What building the request bodies alone costs (the part of the HTTP step spent in
    Python before the POST), measured apart."""
    t0 = time.perf_counter()
    for i in range(0, len(lines), batch_size):
        "\n".join(lines[i : i + batch_size]).encode("utf-8")
    return time.perf_counter() - t0


def contents(server: Influxd, db: str) -> dict[str, list[int]]:
    """measurement → [count("count"), sum("count")]."""
    answer = server.query('SELECT count("count"), sum("count") FROM /.*/', db)
    found: dict[str, list[int]] = {}
    for result in answer.get("results", []):
        if "error" in result:
            raise RuntimeError(f"query on {db}: {result['error']}")
        for s in result.get("series", []):
            _, count, total = s["values"][0]
            found[s["name"]] = [int(count), int(total)]
    return found


# --- report ------------------------------------------------------------------------------------


def machine(server_version: str) -> dict[str, Any]:
    return common.machine(
        influxd=server_version, requests=version("requests"), sqlite=sqlite3.sqlite_version
    )


def markdown(report: dict[str, Any], rounds: list[Round], middle: Round) -> str:
    m = report["machine"]
    ratio = report["ratio"]
    medians = report["median_points_per_second"]
    ours, plain, split = middle.ours, middle.plain, middle.split
    lines = [
        f"### {NAME}: outbox → InfluxDB vs a plain requests.post loop",
        "",
        f"{report['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['python']} · "
        f"InfluxDB {m['influxd']} · requests {m['requests']} · SQLite {m['sqlite']} · "
        f"{report['points']:,} points, {report['series']:,} series ({report['per_second']:,} a "
        f"second over {report['seconds']:,} s) · batch {report['batch_size']:,} · "
        f"{len(rounds)} rounds, the order alternating · seed {report['seed']} · "
        f"load average {m['loadavg']} at start, {report['loadavg_end']} at end",
        "",
        "Each round writes all the points with each sender, into freshly created databases, "
        "ours from a fresh copy of the same store.",
        "",
        "| round | order | ours s | ours points/s | plain s | plain points/s | ratio |"
        " ours client CPU s | plain client CPU s | influxd CPU s (ours, plain) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.number} | {'plain first' if r.plain_first else 'ours first'} "
            f"| {r.ours.seconds:.2f} | {r.ours.rate:,.0f} | {r.plain.seconds:.2f} "
            f"| {r.plain.rate:,.0f} | {r.ours.rate / r.plain.rate:.3f} "
            f"| {r.ours.client_cpu:.2f} | {r.plain.client_cpu:.2f} "
            f"| {r.ours.influxd_cpu:.2f}, {r.plain.influxd_cpu:.2f} |"
        )
    ours_rate, plain_rate = medians["ours"], medians["plain"]
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    lines += [
        "",
        "| target | ours points/s (median) | plain points/s (median) | ratio of the medians "
        "| target | result |",
        "|---|---:|---:|---:|---:|---|",
        f"| {report['points']:,} points | {ours_rate:,.0f} | {plain_rate:,.0f} | {ratio:.3f} "
        f"| >= {TARGET_RATIO} | {verdict} |",
        "",
        f"Time in each part of our sender in round {middle.number} (its median run, "
        f"{split.batches:,} batches). The parts overlap: "
        "a write is in flight (in its own thread) while the next batch is read and the last "
        "one acknowledged, so they add up to more than the run.",
        "",
        "| part | what is timed | seconds | of the run | ms per batch |",
        "|---|---|---:|---:|---:|",
    ]
    parts = [
        ("read the outbox", "`Outbox.next_batch`: whole parts, as one text", split.read),
        (
            "outbox size",
            f"`Outbox.state` ({split.state_calls} calls, by `_refresh_state`)",
            split.state,
        ),
        ("HTTP", "`V1Writer.write`: encode, POST, response", split.http),
        ("acknowledge", "`Outbox.acknowledge_batch` (one DELETE of its parts)", split.acknowledge),
        (
            "checkpoint",
            "`Outbox.checkpoint`: the store's WAL into the database, every 100 batches",
            split.checkpoint,
        ),
    ]
    for name, what, seconds in parts:
        lines.append(
            f"| {name} | {what} | {seconds:.2f} | {seconds / ours.seconds:.1%} "
            f"| {seconds / max(1, split.batches) * 1e3:.2f} |"
        )
    joined, building = report["join_encode_seconds"], report["queue_seconds"]
    lines += [
        f"| plain loop, all of it | join, encode, POST, response | {plain.seconds:.2f} "
        f"| {plain.seconds / ours.seconds:.1%} "
        f"| {plain.seconds / max(1, plain.batches) * 1e3:.2f} |",
        "",
        f"- the lines were built and queued, in parts, by the flushes that changed the "
        f"buckets, in SQLite; that step of their commits (`OutboxWriter.after_write`, timed "
        f"while the store was built) took {building:.2f} s "
        f"({building / report['points'] * 1e6:.2f} µs a point), not in the run",
        f"- after the drain, the sender's loop checkpoints the store's WAL (what the last "
        f"acknowledgements wrote): {split.checkpoint_after:.2f} s, not in the run (every point "
        "is in InfluxDB by then)",
        f"- joining and encoding the plain loop's bodies alone takes {joined:.3f} s "
        "(measured apart); the rest of its time is requests and InfluxDB",
    ]
    v = report["verification"]
    lines.append(
        f"- verification: {v['summary']}" + ("" if v["ok"] else " — **MISMATCH**, see stderr")
    )
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------


def bench_plugins() -> dict[str, type[Plugin]]:
    return {i: c for i, c in discover().items() if c.__module__.startswith("statscache_plugins")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="default 1000000")
    parser.add_argument("--series", type=int, default=3000, help="series in all (default 3000)")
    parser.add_argument(
        "--per-second",
        type=int,
        default=1000,
        help="series with a bucket in each second (default 1000: 1M points = 1000 s)",
    )
    parser.add_argument("--batch-size", type=int, default=5000, help="default 5000 (the sink's)")
    parser.add_argument(
        "--plain-first",
        action="store_true",
        help="start with the plain loop (default: ours first); later rounds alternate",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both senders (default 5)")
    parser.add_argument("--seed", type=int, default=20240601, help="default 20240601")
    parser.add_argument("--influxd", default=shutil.which("influxd"), help="default: on PATH")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.points, args.batch_size, args.per_second, args.rounds) < 1:
        parser.error("--points, --per-second, --batch-size and --rounds must be at least 1")
    if not args.influxd or not Path(args.influxd).exists():
        log(
            "influxd not found (on PATH or --influxd): this benchmark needs a local InfluxDB 1.x "
            "server binary, e.g. Debian's `apt-get install influxdb`"
        )
        return 2

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="bench-influx-") as tmp:
        root = Path(tmp)
        (root / "influxdb").mkdir()
        try:
            with influxd(args.influxd, root / "influxdb") as server:
                log(f"influxd {server.version} at {server.url}")
                return run(args, root, server, started)
        except InfluxdUnavailable as exc:
            log(f"cannot run the benchmark: {exc}")
            return 2


def run(args: argparse.Namespace, root: Path, server: Influxd, started: str) -> int:
    info = machine(server.version)
    for db in (DB_OURS, DB_PLAIN):
        server.query(f'CREATE DATABASE "{db}"')
    store_path = str(root / "store.sqlite")
    cfg = configuration.from_dict(
        {
            "store": {"path": store_path},
            "influxdb": {
                "enabled": True,
                "url": server.url,
                "database": DB_OURS,
                "batch_size": args.batch_size,
                "max_pending": max(2_000_000, args.points),
            },
        }
    )
    pipeline = open_pipeline(cfg, bench_plugins())
    try:
        log(f"store: {args.points:,} points over {args.series:,} series (seed {args.seed})")
        t0 = time.perf_counter()
        data = fill_store(pipeline, args.points, args.series, args.per_second, args.seed)
        log(f"  built in {time.perf_counter() - t0:.1f} s")
    finally:
        pipeline.store.close()
    prefix = cfg.prometheus.prefix
    lines = collect_lines(store_path)
    if len(lines) != args.points:
        raise RuntimeError(f"the outbox holds {len(lines):,} points, not {args.points:,}")
    log(f"  {len(lines):,} lines, {sum(map(len, lines)) / len(lines):.0f} characters on average")

    timeout = cfg.influxdb.timeout.total_seconds()
    expected = {prefix + name: v for name, v in data.expected.items()}
    pristine = root / "store.pristine.sqlite"
    shutil.copyfile(store_path, pristine)  # closed: its WAL is checkpointed and gone

    def fresh(db: str) -> None:
        server.query(f'DROP DATABASE "{db}"')
        server.query(f'CREATE DATABASE "{db}"')

    def plain_run() -> Run:
        fresh(DB_PLAIN)
        log(f"plain: requests.post loop into {DB_PLAIN}")
        plain = run_plain(server, lines, args.batch_size, timeout)
        log(f"  {plain.seconds:.2f} s, {plain.rate:,.0f} points/s")
        return plain

    def ours_run() -> tuple[Run, Split, int]:
        fresh(DB_OURS)
        for suffix in ("", "-wal", "-shm"):
            Path(store_path + suffix).unlink(missing_ok=True)
        shutil.copyfile(pristine, store_path)
        log(f"ours: InfluxSink.drain into {DB_OURS}")
        ours, split, pending = run_ours(server, pipeline, store_path, args.points)
        log(f"  {ours.seconds:.2f} s, {ours.rate:,.0f} points/s; outbox now holds {pending:,}")
        return ours, split, pending

    rounds: list[Round] = []
    problems: list[str] = []
    for number in range(1, args.rounds + 1):
        plain_first = args.plain_first != (number % 2 == 0)  # alternate the order
        log(f"round {number} of {args.rounds} ({'plain' if plain_first else 'ours'} first)")
        plain = plain_run() if plain_first else None
        ours, split, pending = ours_run()
        plain = plain or plain_run()
        rounds.append(Round(number, plain_first, ours, plain, split))
        in_ours, in_plain = contents(server, DB_OURS), contents(server, DB_PLAIN)
        if not in_ours == in_plain == expected or pending:
            problems.append(
                f"round {number}: expected {expected}, ours {in_ours}, plain {in_plain}, "
                f"outbox pending after ours {pending}"
            )
            log(f"  MISMATCH: {problems[-1]}")
    joined = join_encode_seconds(lines, args.batch_size)

    ok = not problems
    total_sum = sum(v[1] for v in expected.values())
    if ok:
        summary = (
            f"after every round both databases hold {args.points:,} points, sum of counts "
            f"{total_sum:,}, equal per measurement ({len(expected)} measurements) to what was "
            "put in; the outbox empty after each of our runs"
        )
    else:
        summary = "the databases do not hold the points put in"
    ours_rate = statistics.median(r.ours.rate for r in rounds)
    plain_rate = statistics.median(r.plain.rate for r in rounds)
    ratio = ours_rate / plain_rate
    middle = sorted(rounds, key=lambda r: r.ours.rate)[len(rounds) // 2]  # for the split
    ours, plain, split = middle.ours, middle.plain, middle.split
    report: dict[str, Any] = {
        "benchmark": NAME,
        "date": started,
        "machine": info,
        "points": args.points,
        "series": len(data.series),
        "per_second": data.per_second,
        "seconds": data.seconds,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "first_round_order": "plain first" if args.plain_first else "ours first",
        "seed": args.seed,
        "unit": "points/s",
        "results": [r.as_dict() for r in rounds],
        "median_points_per_second": {"ours": ours_rate, "plain": plain_rate},
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "pass": ratio >= TARGET_RATIO,
        "split_round": middle.number,
        "split_seconds": {
            "read_outbox": round(split.read, 4),
            "outbox_state": round(split.state, 4),
            "http": round(split.http, 4),
            "acknowledge": round(split.acknowledge, 4),
            "checkpoint": round(split.checkpoint, 4),
            "checkpoint_after_drain": round(split.checkpoint_after, 4),
        },
        "join_encode_seconds": joined,
        "queue_seconds": round(data.queue_seconds, 4),
        "state_calls": split.state_calls,
        "verification": {"ok": ok, "summary": summary, "expected": expected, "problems": problems},
    }
    report["loadavg_end"] = loadavg()
    text = markdown(report, rounds, middle)
    report["ok"] = ok
    common.publish(report, text, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
