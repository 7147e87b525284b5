#!/usr/bin/env python3
"""Benchmark: messages per second backfilled from a local datagrepper by the gap filler
(``Backfill``), against a naive sequential walk of ``/raw`` pages over the same range, with how
many messages each got right.

Against a real datagrepper 1.1.0 over a private PostgreSQL cluster that it starts itself (the
tests' harness, tests/datagrepper.py: loopback, free ports, a temporary directory, stopped at
the end):

1. a seeded dataset of real corpus messages (tests/data: fedmsg-era envelopes and datagrepper
   items, and fedora-messaging messages; each with a fresh id) on whole-second timestamps, as
   fedora-messaging's ``sent-at`` has no fractions: spread over the range, a few bursts of
   several messages a second, and a few busy seconds holding 100-1,000 messages of one
   identical timestamp; and a few messages outside the range on each side. Inserted with
   ``datanommer.models.add()`` through the harness (untimed, but its time is printed);
2. the truth: the ids the database holds in ``[start, end)``, read with ``psql`` straight from
   PostgreSQL (never through datagrepper or our client);
3. rounds, the order alternating, each of both walkers over ``[start, end)``:
   - ours: ``Backfill(BackfillConfig(url, concurrency, window), deliver, cover).run([Range(start,
     end)])``, every delivered item collected;
   - naive: one ``requests.Session`` asking ``/raw?start&end&order=asc&rows_per_page=100&page=1``,
     then pages 2..``pages`` (``pages`` from the first answer), every item collected;
4. one more round after ``ANALYZE``, as information. The rounds before run on the table as
   loaded, without planner statistics (autovacuum is off for it, so its plan cannot change
   during a round): PostgreSQL then sorts the range for each page, and ties at page boundaries
   come out in a different order from page to page (the naive walk misses and repeats). With
   statistics it reads the timestamp index in order, which is stable between requests here.

5. with ``--latency`` (0.25 s by default), one more round of both walkers through a proxy that
   holds every request that long before forwarding it, standing for production's page time
   (on loopback datagrepper's own CPU is the limit, which four requests at once cannot raise;
   against a remote, slower datagrepper, concurrency hides the wait): the ratio there is the
   issue's target too.

Each is timed (``time.perf_counter``, wall) and checked against the truth: distinct ids right,
missing, extra, repeated; datagrepper's CPU time during each walk is shown too (its
process's, from /proc). **messages/s** = messages the database holds in the range / wall time
of the walk; the **ratio** is ours/naive of the medians (target ≥ 3x, printed as PASS/FAIL
information, as is "exact where the naive walk is not"). Markdown on stdout, progress on
stderr, ``--json PATH`` also writes the figures. Exit status: 0; 1 if a correctness check fails
(ours not exact, out of order, or the database not holding the dataset); 2 if datagrepper or
PostgreSQL cannot start.

    .venv/bin/python bench/backfill.py [--messages 10000] [--hours 2] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import common
import requests
from common import loadavg, log

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the datagrepper harness the integration tests use

from conftest import corpus_messages  # noqa: E402
from datagrepper import Datagrepper as Server  # noqa: E402
from datagrepper import datagrepper_server, datagrepper_venv  # noqa: E402

from statscache_exporter.backfill import Backfill, Range  # noqa: E402
from statscache_exporter.config import BackfillConfig  # noqa: E402
from statscache_exporter.datagrepper import Item  # noqa: E402

NAME = "backfill"
TARGET_RATIO = 3.0  # issue 6: at least 3x the naive walk's speed (information only)
#: 2024-03-01T12:00:00Z: the dataset's range starts here
T0 = 1_709_294_400
#: messages inserted per call of the harness (a VACUUM after each, see insert())
CHUNK = 1000
#: messages outside the range, on each side (neither walker may return them)
OUTSIDE = 10


# --- the dataset --------------------------------------------------------------------------------


@dataclass
class Dataset:
    start: int
    end: int
    messages: list[Item]  # in time order, the ones outside the range included
    inside: set[str]  # ids of the messages in [start, end)
    busy: list[int]  # sizes of the busy seconds (one identical timestamp each)
    bursts: int  # messages in the bursts
    modern: int  # fedora-messaging messages among them (the rest: fedmsg-era shapes)


def make_dataset(n: int, hours: float, busy_seconds: int, seed: int) -> Dataset:
    """``n`` corpus messages over ``hours`` from :data:`T0`, seeded (see the module doc)."""
    rng = random.Random(seed)
    span = round(hours * 3600)
    start, end = T0, T0 + span
    # busy seconds: 100-1,000 ties each, the largest 1,000, at most 30% of the messages
    budget = int(0.3 * n)
    busy: list[int] = []
    for k in range(busy_seconds):
        size = min(1000 if k == 0 else rng.randint(100, 1000), budget - sum(busy))
        if size < 100:
            break
        busy.append(size)
    seconds = rng.sample(range(start, end), len(busy))
    times = [t for t, size in zip(seconds, busy, strict=True) for _ in range(size)]
    # bursts: a fifth of the rest in six two-minute bursts (a mass rebuild, a compose)
    rest = n - len(times)
    bursts = rest // 5
    burst_starts = [rng.randrange(start, end - 120) for _ in range(6)]
    times += [rng.choice(burst_starts) + rng.randrange(120) for _ in range(bursts)]
    times += [rng.randrange(start, end) for _ in range(rest - bursts)]
    times.sort()
    outside = [start - rng.randint(1, 600) for _ in range(OUTSIDE)]
    outside += [end + rng.randint(1, 600) for _ in range(OUTSIDE)]

    base = corpus_base()
    messages: list[Item] = []
    modern = 0
    for t in sorted(times + outside):
        m = dict(rng.choice(base))
        fresh = uuid.UUID(int=rng.getrandbits(128), version=4)
        if "body" in m:  # fedora-messaging: the time is the sent-at header
            m["id"] = str(fresh)
            when = datetime.fromtimestamp(t, UTC).isoformat()
            m["headers"] = {**(m.get("headers") or {}), "sent-at": when}
            modern += start <= t < end
        else:  # a fedmsg envelope or a /raw item
            m["msg_id"] = f"{datetime.fromtimestamp(t, UTC).year}-{fresh}"
            m["timestamp"] = float(t)
        messages.append(m)
    inside = {message_id(m) for m in messages if start <= message_time(m) < end}
    return Dataset(start, end, messages, inside, busy, bursts, modern)


def corpus_base() -> list[Item]:
    """The corpus messages that can be stored at any time: fedmsg envelopes and datagrepper
    items with a timestamp, fedora-messaging messages (tests/conftest.py)."""
    return [
        m
        for m in corpus_messages()
        if "body" in m or ("msg" in m and isinstance(m.get("timestamp"), int | float))
    ]


def message_id(m: Item) -> str:
    return str(m["id"] if "body" in m else m["msg_id"])


def message_time(m: Item) -> float:
    if "body" in m:
        return datetime.fromisoformat(m["headers"]["sent-at"]).timestamp()
    return float(m["timestamp"])


# --- the database, read directly ----------------------------------------------------------------


def psql(server: Server, sql: str) -> list[list[str]]:
    """Rows of ``sql`` run by PostgreSQL's own ``psql`` on the harness's cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(
        [
            str(server.cluster.bindir / "psql"), server.cluster.url, "-X", "-q", "-A", "-t",
            "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql,
        ],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"psql {sql!r} exited {done.returncode}: {done.stderr[-2000:]}")
    return [line.split("\t") for line in done.stdout.splitlines() if line]


@dataclass
class Truth:
    ids: set[str]
    per_second: Counter[int]
    rows: int  # rows in the range (a msg_id stored twice would show here)


def truth(server: Server, start: float, end: float) -> Truth:
    """What the database holds in ``[start, end)`` (its timestamps are naive UTC)."""
    rows = psql(
        server,
        "SELECT msg_id, extract(epoch FROM timestamp) FROM messages "
        f"WHERE timestamp >= to_timestamp({start}) AT TIME ZONE 'UTC' "
        f"AND timestamp < to_timestamp({end}) AT TIME ZONE 'UTC'",
    )
    per_second = Counter(int(float(t)) for _, t in rows)
    return Truth({msg_id for msg_id, _ in rows}, per_second, len(rows))


def insert(server: Server, messages: list[Item]) -> float:
    """Store the messages with the harness (``datanommer.models.add()``, in time order), in
    chunks; the seconds it took. The harness counts the table around every message to spot
    duplicates: a ``VACUUM`` after each chunk keeps that count an index-only scan, without which
    inserting grows quadratic (the rows are wide). Autovacuum is off for the table, and nothing
    runs ``ANALYZE``: the rounds run on a table without planner statistics, whose plan cannot
    change in the middle of a round (see ``analyze``)."""
    psql(server, "ALTER TABLE messages SET (autovacuum_enabled = off)")
    t0 = time.perf_counter()
    for i in range(0, len(messages), CHUNK):
        chunk = messages[i : i + CHUNK]
        added = server.add(chunk)
        if added != len(chunk):
            raise RuntimeError(f"datanommer stored {added} of {len(chunk)} messages")
        psql(server, "VACUUM messages")
        done = i + len(chunk)
        elapsed = time.perf_counter() - t0
        log(f"  inserted {done:,}/{len(messages):,} ({done / elapsed:,.0f} messages/s)")
    return time.perf_counter() - t0


def plan(server: Server, data: Dataset) -> str:
    """How PostgreSQL runs the naive walk's query (datanommer's ``grep``: ``BETWEEN``,
    ``ORDER BY timestamp``, ``LIMIT``/``OFFSET``), in a few words."""
    bounds = [f"(to_timestamp({t}) AT TIME ZONE 'UTC')" for t in (data.start, data.end)]
    rows = psql(
        server,
        f"EXPLAIN SELECT * FROM messages WHERE timestamp BETWEEN {bounds[0]} AND {bounds[1]} "
        "ORDER BY timestamp LIMIT 100 OFFSET 1000",
    )
    steps = [r[0].strip().removeprefix("->").split("  (")[0].strip() for r in rows]
    return " <- ".join(s for s in steps if s and ":" not in s)


def server_cpu(server: Server) -> float:
    """datagrepper's user + system CPU seconds so far (its process and, under gunicorn, its
    live workers; Linux /proc)."""
    if server.process is None:
        return float("nan")
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(stat.parent.name)] = fields
    root = server.process.pid
    if root not in stats:
        return float("nan")
    tree = {root} | {pid for pid, f in stats.items() if int(f[1]) == root}
    ticks = sum(int(stats[pid][11]) + int(stats[pid][12]) for pid in tree)
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the two walkers ----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    seconds: float
    cpu: float  # this process's CPU seconds during the walk (the client's work)
    ids: list[str]  # every id received, in order, repeats included
    requests: int  # GET /raw answered, from datagrepper's own log
    server_cpu: float = 0.0  # datagrepper's CPU seconds during the walk
    notes: dict[str, Any] = field(default_factory=dict)
    # set by check()
    right: int = 0
    missing: int = 0
    extra: int = 0
    repeated: int = 0

    def check(self, expected: set[str]) -> None:
        got = set(self.ids)
        self.right = len(got & expected)
        self.missing = len(expected - got)
        self.extra = len(got - expected)
        self.repeated = len(self.ids) - len(got)

    @property
    def exact(self) -> bool:
        return self.missing == self.extra == self.repeated == 0

    def as_dict(self, messages: int) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "messages_per_second": messages / self.seconds,
            "right_per_second": self.right / self.seconds,
            "client_cpu_seconds": self.cpu,
            "datagrepper_cpu_seconds": self.server_cpu,
            "requests": self.requests,
            "rows_received": len(self.ids),
            "right": self.right,
            "missing": self.missing,
            "extra": self.extra,
            "repeated": self.repeated,
            "exact": self.exact,
            **self.notes,
        }


class RequestLog:
    """Counts ``GET /raw`` lines in datagrepper's log (Werkzeug's or gunicorn's access log)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def _count(self) -> int:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().count(b'"GET /raw?')

    def since(self) -> int:
        """Requests logged since the last call (waiting until the log stops growing)."""
        count, last = self._count(), -1
        while count != last:
            time.sleep(0.2)
            count, last = self._count(), count
        self.offset = self.path.stat().st_size
        return count


def run_ours(url: str, data: Dataset, concurrency: int, window: float, log_: RequestLog) -> Run:
    config = BackfillConfig(url=url, concurrency=concurrency, window=timedelta(seconds=window))
    items: list[Item] = []
    covered: list[float] = []
    backfill = Backfill(config, items.append, covered.append)
    c0, t0 = time.process_time(), time.perf_counter()
    delivered = backfill.run([Range(data.start, data.end)])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    run = Run("ours", seconds, cpu, [str(i["msg_id"]) for i in items], log_.since())
    times = [float(i["timestamp"]) for i in items]
    ordered = times == sorted(times) and covered == sorted(covered)
    if delivered != len(items) or not ordered or not covered or covered[-1] != data.end:
        raise RuntimeError(
            f"ours: {delivered} delivered for {len(items)} items, in order: {ordered}, "
            f"covered until {covered[-1:]} (want {data.end})"
        )
    run.notes = {
        "windows": backfill.stats.windows_total,
        "requests_failed": backfill.stats.requests_failed,
    }
    return run


def run_naive(url: str, data: Dataset, log_: RequestLog) -> Run:
    """Pages 1..pages of the range (``pages`` from the first answer), 100 rows each. The range
    holds no message at exactly ``end``, so datagrepper's inclusive end changes nothing."""
    session = requests.Session()
    session.headers["Accept"] = "application/json"
    params: dict[str, str | int] = {
        "start": data.start,
        "end": data.end,
        "order": "asc",
        "rows_per_page": 100,
    }
    ids: list[str] = []
    totals: list[int] = []
    c0, t0 = time.process_time(), time.perf_counter()
    page, pages = 1, 1
    while page <= pages:
        r = session.get(f"{url}/raw", params={**params, "page": page}, timeout=120)
        r.raise_for_status()
        answer = r.json()
        if page == 1:
            pages = int(answer["pages"])
        totals.append(int(answer["total"]))
        ids += [str(i["msg_id"]) for i in answer["raw_messages"]]
        page += 1
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    session.close()
    run = Run("naive", seconds, cpu, ids, log_.since())
    run.notes = {"pages": pages, "totals": sorted(set(totals))}
    return run


class LatencyProxy:
    """A proxy in front of datagrepper that holds every request for ``latency`` seconds
    before forwarding it: production's page time (a busy datanommer behind a remote
    datagrepper, ~0.25 s a page and more) is what concurrency can hide, the loopback's is not.
    Threaded, so requests in flight wait side by side."""

    def __init__(self, upstream: str, latency: float) -> None:
        import http.client
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        target = urllib.parse.urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(latency)
                conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=300)
                try:
                    conn.request("GET", self.path, headers={"Accept": "application/json"})
                    answer = conn.getresponse()
                    body = answer.read()
                finally:
                    conn.close()
                with proxy.lock:
                    proxy.requests += 1
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.getheader("Content-Type") or "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.lock = threading.Lock()
        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def since(self) -> int:
        """Requests forwarded since the last call."""
        with self.lock:
            n, self.requests = self.requests, 0
        return n

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def latency_round(server: Server, data: Dataset, expected: set[str], args: Any) -> dict[str, Any]:
    """Both walkers once through a :class:`LatencyProxy` (ours first)."""
    proxy = LatencyProxy(server.url, args.latency)
    out: dict[str, Any] = {"latency_seconds": args.latency}
    try:
        for name in ("ours", "naive"):
            log(f"  {name}, {args.latency * 1000:.0f} ms a request")
            request_log = RequestLog(server.log)
            if name == "ours":
                run = run_ours(proxy.url, data, args.concurrency, args.window, request_log)
            else:
                run = run_naive(proxy.url, data, request_log)
            run.requests = proxy.since()
            run.check(expected)
            log(f"    {run.seconds:.2f} s, {len(expected) / run.seconds:,.0f} messages/s")
            out[name] = run.as_dict(len(expected))
    finally:
        proxy.close()
    out["ratio"] = out["naive"]["seconds"] / out["ours"]["seconds"]
    out["target"] = TARGET_RATIO
    out["pass"] = out["ratio"] >= TARGET_RATIO and out["ours"]["exact"]
    return out


def latency_markdown(lat: dict[str, Any], n: int) -> list[str]:
    ours, naive = lat["ours"], lat["naive"]
    return [
        "",
        f"Through a proxy adding {lat['latency_seconds'] * 1000:.0f} ms to every request "
        "(standing for production's page time, which concurrency can hide; on loopback "
        "datagrepper's own CPU is the limit and four requests at once gain little):",
        "",
        "| walker | s | messages/s | requests | right | exact |",
        "|---|---:|---:|---:|---:|---|",
        f"| ours | {ours['seconds']:.2f} | {n / ours['seconds']:,.0f} | {ours['requests']:,} "
        f"| {ours['right']:,} | {'yes' if ours['exact'] else 'no'} |",
        f"| naive | {naive['seconds']:.2f} | {n / naive['seconds']:,.0f} "
        f"| {naive['requests']:,} | {naive['right']:,} | {'yes' if naive['exact'] else 'no'} |",
        "",
        "| target | ours | naive | ratio | target | result |",
        "|---|---:|---:|---:|---|---|",
        f"| speed through the latency proxy | {n / ours['seconds']:,.0f} "
        f"| {n / naive['seconds']:,.0f} | {lat['ratio']:.2f}x | >= {TARGET_RATIO:g}x "
        f"| {'PASS' if lat['pass'] else 'FAIL'} |",
    ]


# --- rounds and report --------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    naive_first: bool
    ours: Run
    naive: Run
    analyzed: bool = False  # the round after ANALYZE (information, not in the medians)

    @property
    def label(self) -> str:
        return f"{self.number} (analyzed)" if self.analyzed else str(self.number)

    @property
    def ratio(self) -> float:
        return self.naive.seconds / self.ours.seconds


def one_round(
    server: Server, data: Dataset, expected: set[str], args: Any, number: int, analyzed: bool
) -> Round:
    naive_first = (number % 2 == 0) != args.naive_first
    request_log = RequestLog(server.log)
    runs: dict[str, Run] = {}
    for name in ("naive", "ours") if naive_first else ("ours", "naive"):
        log(f"  {name}")
        cpu0 = server_cpu(server)
        if name == "ours":
            run = run_ours(server.url, data, args.concurrency, args.window, request_log)
        else:
            run = run_naive(server.url, data, request_log)
        run.server_cpu = server_cpu(server) - cpu0
        run.check(expected)
        runs[name] = run
        log(
            f"    {run.seconds:.2f} s, {len(expected) / run.seconds:,.0f} messages/s, "
            f"{run.requests} requests, {run.right:,} right, {run.missing} missing, "
            f"{run.extra} extra, {run.repeated} repeated"
        )
    return Round(number, naive_first, runs["ours"], runs["naive"], analyzed)


def describe(data: Dataset, real: Truth) -> dict[str, Any]:
    ties = [n for n in real.per_second.values() if n > 1]
    return {
        "messages": len(real.ids),
        "outside_the_range": 2 * OUTSIDE,
        "start": datetime.fromtimestamp(data.start, UTC).isoformat(),
        "end": datetime.fromtimestamp(data.end, UTC).isoformat(),
        "busy_seconds": data.busy,
        "in_bursts": data.bursts,
        "fedora_messaging": data.modern,
        "distinct_seconds": len(real.per_second),
        "seconds_with_ties": len(ties),
        "messages_in_tied_seconds": sum(ties),
        "seconds_over_100": sum(1 for n in real.per_second.values() if n > 100),
        "largest_second": max(real.per_second.values(), default=0),
    }


def markdown(report: dict[str, Any], rounds: list[Round], analyzed: Round | None) -> str:
    m, d, n = report["machine"], report["dataset"], report["dataset"]["messages"]
    lines = [
        f"### {NAME}: the gap filler vs a naive page walk, from a local datagrepper",
        "",
        f"{report['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['python']} · datagrepper "
        f"{m['datagrepper']} ({m['server']}) · datanommer.models {m['datanommer']} · PostgreSQL "
        f"{m['postgresql']} · requests {m['requests']} · {len(rounds)} rounds, the order "
        f"alternating{', then one after ANALYZE' if analyzed else ''} · seed {report['seed']} "
        f"· load average {m['loadavg']} at start, {report['loadavg_end']} at end",
        "",
        f"Dataset: {n:,} messages over {report['hours']:g} h ({d['start'][:16]} to "
        f"{d['end'][11:16]} UTC) and {d['outside_the_range']} outside it; whole-second "
        f"timestamps: {d['distinct_seconds']:,} distinct seconds, {d['seconds_with_ties']:,} of "
        f"them with ties ({d['messages_in_tied_seconds']:,} messages), "
        f"{len(d['busy_seconds'])} busy second(s) of "
        f"{', '.join(f'{s:,}' for s in d['busy_seconds'])} identical timestamps, "
        f"{d['in_bursts']:,} messages in six 2-minute bursts; {d['fedora_messaging']:,} "
        f"fedora-messaging and {n - d['fedora_messaging']:,} fedmsg-era corpus messages, "
        f"fresh ids. Inserted with datanommer.models.add() through the tests' harness in "
        f"{report['insert_seconds']:.0f} s ({report['insert_rate']:,.0f} messages/s, untimed).",
        "",
        f"Ours: `Backfill`, concurrency {report['concurrency']}, windows of "
        f"{report['window_seconds']:g} s ({rounds[0].ours.notes['windows']} windows). Naive: "
        f"one session, `/raw?start&end&order=asc&rows_per_page=100&page=1..pages` "
        f"({rounds[0].naive.notes['pages']} pages). messages/s = the {n:,} messages the "
        "database holds in the range / wall time; right = distinct ids that are in the "
        "database's range (read with psql); repeated = rows received more than once; "
        "datagrepper CPU = its processes' CPU time during the walk.",
        "",
        f"Rounds 1-{len(rounds)}: the table as loaded, without planner statistics (autovacuum "
        f"off); PostgreSQL pages the naive walk's query by `{report['plan']}`."
        + (
            f" Round {analyzed.number} (analyzed), information only: after `ANALYZE`, "
            f"by `{report['plan_analyzed']}`."
            if analyzed
            else ""
        ),
        "",
        "| round | walker | s | messages/s | requests | datagrepper CPU s | rows received "
        "| right | missing | extra | repeated | exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rounds + ([analyzed] if analyzed else []):
        order = [("naive", r.naive), ("ours", r.ours)]
        for k, (name, run) in enumerate(order if r.naive_first else order[::-1]):
            lines.append(
                f"| {r.label} | {name}{' (first)' if k == 0 else ''} | {run.seconds:.2f} "
                f"| {n / run.seconds:,.0f} | {run.requests:,} | {run.server_cpu:.1f} "
                f"| {len(run.ids):,} | {run.right:,} | {run.missing:,} | {run.extra:,} "
                f"| {run.repeated:,} | {'yes' if run.exact else 'no'} |"
            )
    med = report["median_messages_per_second"]
    ratio = report["ratio"]
    ours_exact = all(r.ours.exact for r in rounds + ([analyzed] if analyzed else []))
    naive_exact = all(r.naive.exact for r in rounds)
    low, high = min(r.naive.right for r in rounds), max(r.naive.right for r in rounds)
    right_text = f"{low:,}" if low == high else f"{low:,} to {high:,}"
    lines += [
        "",
        "Per-round ratio (naive s / ours s): "
        + ", ".join(f"{r.ratio:.2f}" for r in rounds)
        + (f"; after ANALYZE {analyzed.ratio:.2f}" if analyzed else "")
        + ".",
        "",
        "| target | ours | naive | ratio | target | result |",
        "|---|---:|---:|---:|---|---|",
        f"| speed: messages/s, median of rounds 1-{len(rounds)} | {med['ours']:,.0f} "
        f"| {med['naive']:,.0f} | {ratio:.2f}x | >= {TARGET_RATIO:g}x "
        f"| {'PASS' if ratio >= TARGET_RATIO else 'FAIL'} |",
        f"| exact: right of {n:,} in rounds 1-{len(rounds)} | "
        f"{'all, every round' if ours_exact else 'NOT EXACT'} "
        f"| {right_text}{'' if naive_exact else ' (not exact)'} | - "
        f"| ours exact, naive not "
        f"| {'PASS' if ours_exact and not naive_exact else 'FAIL'} |",
    ]
    if naive_exact:
        lines += ["", "The naive walk was exact in every round: the dataset did not trip it."]
    return "\n".join(lines) + "\n"


def versions(server: Server) -> dict[str, str]:
    found = {}
    site = next(datagrepper_venv().glob("lib/python3*/site-packages"))
    for name, dist in (("datagrepper", "datagrepper"), ("datanommer", "datanommer_models")):
        info = sorted(site.glob(f"{dist}-*.dist-info"))
        found[name] = info[0].name.removesuffix(".dist-info").split("-")[1] if info else "?"
    found["postgresql"] = psql(server, "SHOW server_version")[0][0].split()[0]
    found["requests"] = version("requests")
    found["server"] = (
        f"gunicorn, {server.workers} workers" if server.workers else "flask run, one process"
    )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="in the range (10000)")
    parser.add_argument("--hours", type=float, default=2.0, help="the range's length (2)")
    parser.add_argument(
        "--busy-seconds", type=int, default=8, help="seconds of 100-1,000 ties (8; ≤ 30%%)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="default 3")
    parser.add_argument("--concurrency", type=int, default=4, help="ours: requests at once (4)")
    parser.add_argument(
        "--window", type=float, default=600.0, help="ours: seconds a window (600, the default)"
    )
    parser.add_argument("--naive-first", action="store_true", help="round 1 starts with naive")
    parser.add_argument(
        "--analyzed-round",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more round after ANALYZE, as information (default: on)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=4,
        help="datagrepper's gunicorn workers, as production serves it (4); 0: flask run",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.25,
        help="one more round of both walkers through a proxy adding this many seconds to "
        "each request (0.25, production's page time; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.messages, args.rounds, args.concurrency) < 1 or min(args.hours, args.window) <= 0:
        parser.error("--messages, --rounds, --concurrency, --hours and --window must be > 0")
    if args.messages < 2 * OUTSIDE or args.hours * 3600 < 600:
        parser.error("--messages at least 20 and --hours at least 1/6")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    data = make_dataset(args.messages, args.hours, args.busy_seconds, args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp) / "datagrepper"
        root.mkdir()
        log("starting datagrepper over a private PostgreSQL cluster")
        try:
            server = stack.enter_context(datagrepper_server(root, workers=args.workers))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the harness skips or fails when something is missing
            log(f"cannot start datagrepper: {type(exc).__name__}: {exc}")
            return 2
        info = common.machine(**versions(server))
        log(f"inserting {len(data.messages):,} messages")
        insert_seconds = insert(server, data.messages)
        real = truth(server, data.start, data.end)
        if real.ids != data.inside or real.rows != len(real.ids):
            log(
                f"the database holds {real.rows} rows, {len(real.ids)} ids in the range, "
                f"not the {len(data.inside)} inserted"
            )
            return 1
        plans = {"plan": plan(server, data)}
        rounds = []
        for i in range(args.rounds):
            log(f"round {i + 1} (no planner statistics: {plans['plan']})")
            rounds.append(one_round(server, data, real.ids, args, i + 1, analyzed=False))
        analyzed = None
        if args.analyzed_round:
            psql(server, "ANALYZE")
            plans["plan_analyzed"] = plan(server, data)
            log(f"round {args.rounds + 1}, after ANALYZE ({plans['plan_analyzed']})")
            analyzed = one_round(server, data, real.ids, args, args.rounds + 1, analyzed=True)
        latency = None
        if args.latency > 0:
            log(f"round through a proxy adding {args.latency * 1000:.0f} ms a request")
            latency = latency_round(server, data, real.ids, args)
        if truth(server, data.start, data.end).ids != real.ids:
            log("the database changed during the rounds")
            return 1
    ours = statistics.median(len(real.ids) / r.ours.seconds for r in rounds)
    naive = statistics.median(len(real.ids) / r.naive.seconds for r in rounds)
    ours_exact = all(r.ours.exact for r in rounds + ([analyzed] if analyzed else []))
    report: dict[str, Any] = {
        "benchmark": NAME,
        "date": started,
        "machine": info,
        "seed": args.seed,
        "hours": args.hours,
        "concurrency": args.concurrency,
        "window_seconds": args.window,
        "dataset": describe(data, real),
        "insert_seconds": insert_seconds,
        "insert_rate": len(data.messages) / insert_seconds,
        **plans,
        "unit": "messages/s",
        "results": [
            {
                "round": r.number,
                "analyzed": r.analyzed,
                "order": "naive first" if r.naive_first else "ours first",
                "ours": r.ours.as_dict(len(real.ids)),
                "naive": r.naive.as_dict(len(real.ids)),
                "ratio": r.ratio,
            }
            for r in rounds + ([analyzed] if analyzed else [])
        ],
        "median_messages_per_second": {"ours": ours, "naive": naive},
        "ratio": ours / naive,
        "targets": {
            "ratio": {"target": TARGET_RATIO, "pass": ours / naive >= TARGET_RATIO},
            "exact": {
                "ours_exact": ours_exact,
                "naive_exact": all(r.naive.exact for r in rounds),
            },
        },
        "ok": ours_exact and (latency is None or latency["ours"]["exact"]),
        "latency": latency,
        "loadavg_end": loadavg(),
    }
    text = markdown(report, rounds, analyzed)
    if latency is not None:
        text += "\n".join(latency_markdown(latency, len(real.ids))) + "\n"
    common.publish(report, text, args.json)
    if not report["ok"]:
        log("ours was not exact: see the table")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
