"""The gap filler (statscache_exporter/backfill.py) against a real datagrepper 1.1.0 over
PostgreSQL (tests/datagrepper.py).

- :func:`plan` alone: what is fetched after a checkpoint, on a first start, with an epoch, with
  outages recorded.
- One dataset, inserted once for the module and only read by the tests: over 5,000 corpus
  messages with fresh ids over three hours, one second holding 350 of them, hundreds of seconds
  of ties, fractional times, and messages on and just before window boundaries. What a backfill
  delivers is compared with the rows read from PostgreSQL itself.
- :class:`Backfill` directly (every id once, windows in order, checkpoints after them), into a
  real pipeline and store, and through a fault-injecting proxy: every third request failing
  (no answer, 500, 502, 504), a gateway timing out long requests, a window that always fails.
- ``statscache-exporter run`` as a process with a live (fedmsg) source: the backfill at start
  counts exactly; SIGKILLed in the middle and restarted, it ends identical; the store's
  ``covered_until`` only moves forward and never past a message it has not counted.
- A daemon in this process with a real ZeroMQ publisher: messages delivered live during the
  backfill, before and after the backfill reaches them, are counted once.

Every wait is bounded; nothing asserts how long anything took.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import json
import math
import random
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import datagrepper as harness
import pytest
import zmq
from conftest import make_config, scaled_messages
from servers import exporter_process, free_port

from statscache_exporter import message as messages
from statscache_exporter.backfill import (
    Backfill,
    BackfillError,
    BackfillStats,
    BarProgress,
    Covered,
    GapFiller,
    LogProgress,
    Range,
    _pieces,
    plan,
    windows,
)
from statscache_exporter.config import BackfillConfig
from statscache_exporter.daemon import Daemon
from statscache_exporter.datagrepper import Item

integration = pytest.mark.integration

DEADLINE = 60.0
HOUR = 3600.0
MINUTE = 60.0
US = 1_000_000


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def micro(t: float) -> int:
    return round(t * US)


# --- plan(): no server ----------------------------------------------------------------------


def config(**kw: Any) -> BackfillConfig:
    return BackfillConfig(url="http://127.0.0.1:9", **kw)


NOW = 1_709_294_400.0  # 2024-03-01T12:00:00Z


def test_plan_from_the_checkpoint_with_the_overlap_on_both_sides() -> None:
    c = config(overlap=timedelta(minutes=5))
    assert plan(c, NOW - HOUR, NOW) == [Range(NOW - HOUR - 300, NOW + 300)]
    # the checkpoint wins over initial_backfill: the store is not empty
    c = config(overlap=timedelta(minutes=1), initial_backfill=timedelta(days=7))
    assert plan(c, NOW - HOUR, NOW) == [Range(NOW - HOUR - 60, NOW + 60)]


def test_plan_on_an_empty_store() -> None:
    assert plan(config(), None, NOW) == []  # initial_backfill: none by default
    c = config(overlap=timedelta(minutes=2), initial_backfill=timedelta(hours=6))
    assert plan(c, None, NOW) == [Range(NOW - 6 * HOUR, NOW + 120)]
    # without initial_backfill, recorded outages are still fetched
    assert plan(config(overlap=timedelta(0)), None, NOW, [(NOW - 50, NOW - 40)]) == [
        Range(NOW - 50, NOW - 40)
    ]


def test_plan_clips_at_the_epoch() -> None:
    epoch = datetime.fromtimestamp(NOW - 2 * HOUR, UTC).isoformat().replace("+00:00", "Z")
    c = config(overlap=timedelta(minutes=5), epoch=epoch, initial_backfill=timedelta(days=1))
    assert plan(c, None, NOW) == [Range(NOW - 2 * HOUR, NOW + 300)]
    assert plan(c, NOW - 3 * HOUR, NOW) == [Range(NOW - 2 * HOUR, NOW + 300)]
    # a checkpoint after the epoch is not moved
    assert plan(c, NOW - HOUR, NOW) == [Range(NOW - HOUR - 300, NOW + 300)]
    # an outage wholly before the epoch is dropped, one across it is clipped
    c = config(overlap=timedelta(0), epoch=epoch)
    gaps = [(NOW - 5 * HOUR, NOW - 4 * HOUR), (NOW - 2 * HOUR - 10, NOW - 2 * HOUR + 10)]
    assert plan(c, None, NOW, gaps) == [Range(NOW - 2 * HOUR, NOW - 2 * HOUR + 10)]
    # an epoch in the future leaves nothing to fetch
    future = datetime.fromtimestamp(NOW + HOUR, UTC).isoformat()
    assert plan(config(epoch=future), NOW - HOUR, NOW, [(NOW - 10, NOW)]) == []


def test_plan_merges_overlapping_ranges_in_order() -> None:
    c = config(overlap=timedelta(seconds=30))
    gaps = [
        (NOW - 100, NOW - 90),  # inside the checkpoint's range
        (NOW - 10 * HOUR, NOW - 9 * HOUR),
        (NOW - 9 * HOUR + 50, NOW - 8 * HOUR),  # within twice the overlap of the one before
        (NOW - 20 * HOUR, NOW - 19 * HOUR),
        (NOW - 12 * HOUR, NOW - 11 * HOUR),
        (NOW - 12 * HOUR, NOW - 11 * HOUR),  # recorded twice
    ]
    assert plan(c, NOW - HOUR, NOW, gaps) == [
        Range(NOW - 20 * HOUR - 30, NOW - 19 * HOUR + 30),
        Range(NOW - 12 * HOUR - 30, NOW - 11 * HOUR + 30),
        Range(NOW - 10 * HOUR - 30, NOW - 8 * HOUR + 30),
        Range(NOW - HOUR - 30, NOW + 30),
    ]
    # a range ending where the next starts is one range
    assert plan(config(overlap=timedelta(0)), NOW - 10, NOW, [(NOW - 20, NOW - 10)]) == [
        Range(NOW - 20, NOW)
    ]


def test_plan_drops_empty_ranges() -> None:
    c = config(overlap=timedelta(0))
    # a checkpoint ahead of the start (the clock went back): nothing before it is missing
    assert plan(c, NOW + 10, NOW) == []
    # an outage of no length, and one that ends before it starts
    assert plan(c, None, NOW, [(NOW - 5, NOW - 5), (NOW - 1, NOW - 3)]) == []
    assert plan(c, NOW, NOW) == []


def test_windows_cut_each_range_from_its_start() -> None:
    got = list(windows([Range(0.5, 25.5), Range(100, 110)], 10))
    assert got == [
        Range(0.5, 10.5),
        Range(10.5, 20.5),
        Range(20.5, 25.5),
        Range(100, 110),
    ]


# --- progress: no server ------------------------------------------------------------------------


def test_the_progress_bar_redraws_one_line_with_rate_and_eta() -> None:
    out = io.StringIO()
    stats = BackfillStats(windows_total=4, range_seconds=4 * HOUR, remaining_seconds=4 * HOUR)
    stats.started = time.monotonic() - 10  # as if the run began 10 s ago
    bar = BarProgress(out)
    bar(stats)
    assert out.getvalue().startswith("\r\x1b[K[" + "." * 24 + "] 0/4 windows, 0 messages")
    assert out.getvalue().endswith("4h00m of history left, 0 msg/s, ETA ?")
    stats.windows_done, stats.messages, stats.remaining_seconds = 1, 2000, 3 * HOUR
    bar(stats)
    line = out.getvalue().split("\r")[-1]
    assert line.startswith("\x1b[K[" + "#" * 6 + "." * 18 + "] 1/4 windows, 2,000 messages")
    rate = float(line.split(" of history left, ")[1].split(" msg/s")[0])
    assert 150 <= rate <= 200  # 2,000 in a little over 10 s
    minutes = int(line.split("ETA ")[1].split("m")[0])
    assert 0 <= minutes <= 1  # 3 h of history left at 1 h per ~10 s: about 30 s
    bar(stats, done=True)
    assert out.getvalue().endswith("\n") and "\n" not in out.getvalue()[:-1]


def test_log_progress_says_at_most_every_so_often_and_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = BackfillStats(windows_total=3)
    progress = LogProgress(every=3600)
    with caplog.at_level("INFO", logger="statscache_exporter.backfill"):
        progress(stats)
        progress(stats)
        assert caplog.records == []
        progress(stats, done=True)
    assert [r.getMessage()[:31] for r in caplog.records] == ["backfill: 0/3 windows, 0 messag"]


# --- the dataset: a real datagrepper, filled once ---------------------------------------------

#: Message times: [base, base + SPAN)
SPAN = 3 * HOUR
#: Backfill.run's windows in the tests that call it directly
WINDOW = 10 * MINUTE
CROWDED = 350

# Inserting with datanommer's Message.create (what the harness's add() calls, through
# datanommer.models.add) in one transaction: the same rows as add() stores, in a fraction of its
# time. Prints every stored (msg_id, time) as PostgreSQL holds them.
_INSERT = r"""
import datetime, json, sys
import datanommer.models as dm
import sqlalchemy as sa

engine = sa.create_engine(sys.argv[1], future=True)
dm.init(engine=engine)
items = json.load(sys.stdin)
for item in items:
    when = datetime.datetime.fromtimestamp(float(item["timestamp"]), datetime.timezone.utc)
    dm.Message.create(
        i=item.get("i") or 0,
        msg_id=item["msg_id"],
        topic=item["topic"],
        timestamp=when,
        msg=item["msg"],
        headers=item.get("headers"),
        agent_name=item.get("agent_name", item.get("username")),
        crypto=item.get("crypto"),
        certificate=item.get("certificate"),
        signature=item.get("signature"),
        users=list(item.get("users") or []),
        packages=list(item.get("packages") or []),
        **{k: item[k] for k in ("source_name", "source_version") if k in item},
    )
dm.session.commit()
"""

_ROWS = r"""
import json, sys
import sqlalchemy as sa

engine = sa.create_engine(sys.argv[1], future=True)
with engine.connect() as c:
    rows = c.execute(sa.text(
        "SELECT msg_id, to_char(timestamp, 'YYYY-MM-DD HH24:MI:SS.US') FROM messages"
    )).all()
json.dump([list(r) for r in rows], sys.stdout)
"""


def in_datanommer(dg: harness.Datagrepper, script: str, data: Any = None) -> str:
    """Run ``script`` with the datagrepper virtualenv's Python on the database; its stdout."""
    done = subprocess.run(
        [str(dg.venv / "bin" / "python"), "-c", script, dg.cluster.url],
        input=json.dumps(data).encode(),
        capture_output=True,
        env=harness._child_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode()


def database_rows(dg: harness.Datagrepper) -> dict[str, int]:
    """msg_id → time in microseconds, read from PostgreSQL (not through datagrepper)."""
    rows = json.loads(in_datanommer(dg, _ROWS))
    out: dict[str, int] = {}
    for msg_id, text in rows:
        day, frac = text.split(".")
        whole = datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        assert msg_id not in out, f"{msg_id} twice in the database"
        out[msg_id] = int(whole.timestamp()) * US + int(frac)
    return out


@dataclass
class Dataset:
    base: float  # the first second of the data
    start: float  # the range Backfill.run reads in the direct tests (windows cut at .5 s)
    end: float
    sent: list[Item]
    stored: dict[str, int]  # from PostgreSQL: msg_id → µs
    crowded: int  # the second holding CROWDED messages
    by_id: dict[str, Item] = field(default_factory=dict)
    in_time_order: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_id = {m["msg_id"]: m for m in self.sent}
        self.in_time_order = sorted((us, i) for i, us in self.stored.items())

    def ids_before(self, t: float) -> set[str]:
        """The stored messages strictly before ``t``."""
        n = bisect.bisect_left(self.in_time_order, (micro(t), ""))
        return {i for _, i in self.in_time_order[:n]}

    def windows(self) -> list[Range]:
        return list(windows([Range(self.start, self.end)], WINDOW))


def dataset_times(base: int, start: float, rng: random.Random) -> tuple[list[float], int]:
    crowded = base + 1800
    boundary = start + 5 * WINDOW  # a window boundary in the middle of a busy second
    second = math.floor(boundary)
    times = [float(crowded)] * CROWDED
    times += [float(second)] * 110
    times += [second + k / 100 for k in range(1, 100)]  # .01 to .99, across the boundary
    times += [boundary, boundary - 0.000001]
    for k in range(1, int((base + SPAN - start) // WINDOW) + 1):  # on and just before boundaries
        times += [start + k * WINDOW, start + k * WINDOW - 0.000001]
    busy = {crowded, second}
    tied = [s for s in rng.sample(range(base, base + int(SPAN)), 500) if s not in busy][:420]
    for s in tied:
        times += [float(s)] * rng.randint(2, 6)
    times += [round(base + rng.uniform(0, SPAN), 6) for _ in range(2900)]
    return times, crowded


@pytest.fixture(scope="module")
def dg(datagrepper_session: harness.Datagrepper) -> harness.Datagrepper:
    """The session's datagrepper (conftest.py), for this module's tests."""
    return datagrepper_session


@pytest.fixture(scope="module")
def data(dg: harness.Datagrepper) -> Dataset:
    """The module's dataset (the tests only read it): times relative to now, so that a
    daemon's initial_backfill of 4 h covers it, and no message is in the future."""
    dg.reset()
    rng = random.Random(61)
    base = math.floor(time.time()) - int(3.5 * HOUR)
    start, end = base - 60.5, base + SPAN + 60.5
    times, crowded = dataset_times(base, start, rng)
    sent = scaled_messages(len(times), seed=61)
    for m, t in zip(sent, times, strict=True):
        m["timestamp"] = t
    order = list(sent)
    rng.shuffle(order)  # stored out of time order
    assert dg.add(order[:200]) == 200  # some through the harness's datanommer.models.add()
    in_datanommer(dg, _INSERT, order[200:])
    stored = database_rows(dg)
    assert set(stored) == {m["msg_id"] for m in sent}
    return Dataset(base, start, end, sent, stored, crowded)


@integration
def test_the_dataset_is_what_the_issue_asks_for(data: Dataset) -> None:
    assert len(data.stored) >= 5000
    per_second = Counter(us // US for us in data.stored.values())
    assert per_second[data.crowded] >= CROWDED > 300
    assert sum(1 for n in per_second.values() if n > 1) >= 300  # many seconds with ties
    assert sum(1 for us in data.stored.values() if us % US) >= 2500  # fractional times
    spread = max(data.stored.values()) - min(data.stored.values())
    assert spread > 2.5 * HOUR * US
    # as sent, to the microsecond
    assert all(data.stored[m["msg_id"]] == micro(m["timestamp"]) for m in data.sent)


# --- Backfill.run directly --------------------------------------------------------------------


class Recorder:
    """deliver and cover of a Backfill, in one list, in the order they were called."""

    def __init__(self) -> None:
        self.events: list[Item | Covered] = []

    def deliver(self, item: Item) -> None:
        self.events.append(item)

    def cover(self, until: float) -> None:
        self.events.append(Covered(until))

    @property
    def items(self) -> list[Item]:
        return [e for e in self.events if not isinstance(e, Covered)]

    @property
    def covered(self) -> list[float]:
        return [e.until for e in self.events if isinstance(e, Covered)]


def backfill_config(url: str, **kw: Any) -> BackfillConfig:
    settings: dict[str, Any] = {
        "window": timedelta(seconds=WINDOW),
        "concurrency": 4,
        "retries": 8,
        "retry_initial": timedelta(milliseconds=10),
        "retry_max": timedelta(milliseconds=100),
        "timeout": timedelta(seconds=30),
        **kw,
    }
    return BackfillConfig(url=url, **settings)


def assert_delivered_in_windows(rec: Recorder, data: Dataset, done: list[Range]) -> None:
    """The checkpoints are the ends of ``done``, in order, and each item came between the
    checkpoints of its own window, once."""
    assert rec.covered == [w.end for w in done]
    window = iter(done)
    current = next(window, None)
    seen: set[str] = set()
    for event in rec.events:
        if isinstance(event, Covered):
            current = next(window, None)
            continue
        assert current is not None, "an item delivered after the last checkpoint"
        msg_id = event["msg_id"]
        assert msg_id not in seen, f"{msg_id} delivered twice"
        seen.add(msg_id)
        at = data.stored[msg_id]
        assert micro(current.start) <= at < micro(current.end), (msg_id, at, current)
        assert event["timestamp"] < current.end  # as /raw shows it: its second


@dataclass
class Run:
    recorder: Recorder
    returned: int
    stats: BackfillStats


@pytest.fixture(scope="module")
def whole(dg: harness.Datagrepper, data: Dataset) -> Run:
    """One backfill over the whole dataset (concurrency 4, 10-minute windows)."""
    rec = Recorder()
    backfill = Backfill(backfill_config(dg.url), rec.deliver, rec.cover)
    returned = backfill.run([Range(data.start, data.end)])
    return Run(rec, returned, backfill.stats)


@integration
def test_a_backfill_delivers_exactly_the_database_each_once_in_order(
    data: Dataset, whole: Run
) -> None:
    ids = [i["msg_id"] for i in whole.recorder.items]
    assert [k for k, n in Counter(ids).items() if n > 1] == []
    assert set(ids) == set(data.stored)
    assert whole.returned == len(data.stored) == whole.stats.messages
    assert whole.stats.windows_done == whole.stats.windows_total == len(data.windows()) > 15
    assert whole.stats.remaining_seconds == pytest.approx(0, abs=1e-6)
    covered = whole.recorder.covered
    assert covered == sorted(set(covered)) and covered[-1] == data.end
    assert_delivered_in_windows(whole.recorder, data, data.windows())
    # the items are datagrepper's, as stored
    for item in whole.recorder.items:
        sent = data.by_id[item["msg_id"]]
        assert (item["topic"], item["msg"]) == (sent["topic"], sent["msg"])


def expected_counts(sent: list[Item]) -> tuple[int, Counter[str]]:
    """Messages, and messages per category, worked out from what was inserted."""
    by_category: Counter[str] = Counter()
    for m in sent:
        category = messages.normalize(m).category
        if category:
            by_category[category] += 1
    return len(sent), by_category


@integration
def test_a_backfill_through_a_pipeline_counts_what_was_inserted(
    open_store: Any, data: Dataset, whole: Run
) -> None:
    pipeline = open_store(store={"flush_interval": "1h"})
    for event in whole.recorder.events:
        if isinstance(event, Covered):
            pipeline.cover(datetime.fromtimestamp(event.until, UTC))
        else:
            assert pipeline.handle(event, "backfill") == "processed"
    pipeline.flush()
    total, by_category = expected_counts(data.sent)
    assert pipeline.store.totals_by_metric("messages") == {"{}": total}
    got = {
        json.loads(k)["category"]: v
        for k, v in pipeline.store.totals_by_metric("messages_by_category").items()
    }
    assert got == dict(by_category)
    assert pipeline.store.covered_until() == datetime.fromtimestamp(data.end, UTC)
    assert set(pipeline.store.dump()["seen"]) == set(data.stored)


@integration
def test_the_spans_of_one_window_are_read_side_by_side_each_message_once(
    data: Dataset, proxy: Proxy
) -> None:
    """One window of an hour (the crowded second, fractional times, ties): after its first
    page, the rest of it is asked for in spans at once. Every span after the first waits at
    the proxy's gate until two of them are waiting together; then each message comes once."""
    end = data.start + HOUR
    proxy.gate_from, proxy.gate_until = data.start + 0.5, end  # all but the window's page 1
    rec = Recorder()
    settings = backfill_config(proxy.url, window=timedelta(hours=1), concurrency=4)
    backfill = Backfill(settings, rec.deliver, rec.cover)
    returned: list[int] = []
    thread = threading.Thread(
        target=lambda: returned.append(backfill.run([Range(data.start, end)]))
    )
    thread.start()

    def waiting() -> int:
        with proxy.lock:
            return sum(1 for p in proxy.requests if float(p["start"]) >= proxy.gate_from)

    try:
        wait_for(lambda: waiting() >= 2, "two spans of the window asked for at once")
    finally:
        proxy.open_gate()
        thread.join(timeout=DEADLINE)
    ids = [i["msg_id"] for i in rec.items]
    assert [k for k, n in Counter(ids).items() if n > 1] == []
    assert set(ids) == data.ids_before(end) and returned == [len(ids)]
    assert data.crowded < end and rec.covered == [end]
    assert_delivered_in_windows(rec, data, [Range(data.start, end)])
    assert backfill.stats.requests == len(proxy.requests)


def test_the_rest_of_a_span_is_cut_into_spans_that_tile_it_at_whole_seconds() -> None:
    """However the counts come out, the spans to read after a page 1 are disjoint, in order,
    cover the rest exactly and are cut at whole seconds (the window's own ends may not be)."""
    rng = random.Random(7)
    for _ in range(2000):
        lo = rng.randrange(1, 10**6 * 10**4)
        cursor = (lo // US + rng.randint(1, 900)) * US
        hi = cursor + rng.choice([1, 500_000, US, 7 * US, 600 * US + 123, 3600 * US])
        taken, tied = rng.randint(0, 100), rng.randint(0, 100)
        rest = rng.choice([1, 50, 101, 1000, 20_000])
        spans = _pieces(lo, cursor, hi, taken, tied, rest, 100)
        assert spans[0][0] == cursor and spans[-1][1] == hi
        assert all(a < b for a, b in spans)
        assert all(b == c and b % US == 0 for (_, b), (c, _) in itertools.pairwise(spans))
        assert len(spans) <= max(1, -(-rest // 100)) + 1


# --- a datagrepper that fails ----------------------------------------------------------------


class Proxy:
    """An HTTP proxy on 127.0.0.1 in front of datagrepper. ``fault(params)`` may answer
    "500", "502", "504" or "hang" (no answer for ``hang`` seconds) instead of forwarding;
    ``gate_from``: requests starting at or after it (and before ``gate_until``) wait until
    :meth:`open_gate`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fault: Callable[[dict[str, str]], str | None] = lambda params: None
        self.hang = 0.0
        self.gate_from = math.inf
        self.gate_until = math.inf
        self.gate = threading.Event()
        self.gated = threading.Event()  # a request is waiting at the gate
        self.lock = threading.Lock()
        self.answers: Counter[str] = Counter()
        self.requests: list[dict[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                # the client may have given up (its timeout), or been killed
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proxy.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        params = {k: v[0] for k, v in query.items()}
        with self.lock:
            self.requests.append(params)
            fault = self.fault(params)
        if fault is None and self.gate_from <= float(params.get("start", 0)) < self.gate_until:
            self.gated.set()
            self.gate.wait(DEADLINE)
        with self.lock:
            self.answers[fault or "forwarded"] += 1
        if fault == "hang":
            time.sleep(self.hang)
            h.close_connection = True
            return
        if fault is not None:
            status = int(fault)
            body, kind = f"<html><h1>{status} injected</h1></html>".encode(), "text/html"
        else:
            request = urllib.request.Request(
                self.upstream + h.path, headers={"Accept": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    status, body = r.status, r.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            kind = "application/json"
        h.send_response(status)
        h.send_header("Content-Type", kind)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def open_gate(self) -> None:
        self.gate_from = math.inf
        self.gate.set()

    def close(self) -> None:
        self.open_gate()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(dg: harness.Datagrepper) -> Iterator[Proxy]:
    p = Proxy(dg.url)
    yield p
    p.close()


def every_third_request(halvings: int = 3) -> Callable[[dict[str, str]], str | None]:
    """Every third request (counted over all of them, whichever window or thread asks) fails:
    no answer (past the client's timeout), then 500, 502, 500, 504, 500, 500, 500 in turn,
    round and round. A 502 or 504 makes the client read the rest of that window in requests of
    half the span, never longer again (datagrepper.py): after ``halvings`` of each, a 500
    instead, so that the window is not read one second at a time."""
    kinds = ("hang", "500", "502", "500", "504", "500", "500", "500")
    counter = itertools.count(1)
    given: Counter[str] = Counter()

    def fault(params: dict[str, str]) -> str | None:
        n = next(counter)
        if n % 3:
            return None
        kind = kinds[(n // 3 - 1) % len(kinds)]
        if kind in ("502", "504") and given[kind] >= halvings:
            kind = "500"
        given[kind] += 1
        return kind

    return fault


@integration
def test_failing_requests_are_retried_and_the_result_stays_exact(
    data: Dataset, proxy: Proxy
) -> None:
    """Over the first hour (the crowded second, a window boundary inside a busy second):
    datagrepper's 500, a gateway's 502 and 504, and no answer at all."""
    proxy.fault = every_third_request()
    proxy.hang = 4.0
    part = data.windows()[:6]
    rec = Recorder()
    settings = backfill_config(proxy.url, timeout=timedelta(seconds=3))
    backfill = Backfill(settings, rec.deliver, rec.cover)
    assert backfill.run([Range(part[0].start, part[-1].end)]) == len(data.ids_before(part[-1].end))
    assert_delivered_in_windows(rec, data, part)
    assert {i["msg_id"] for i in rec.items} == data.ids_before(part[-1].end)
    assert all(proxy.answers[k] > 0 for k in ("500", "502", "504", "hang")), proxy.answers
    assert backfill.stats.requests_retried > 0
    assert backfill.stats.requests == len(proxy.requests)


@integration
def test_a_gateway_timeout_on_a_long_request_is_halved_not_asked_again(
    data: Dataset, proxy: Proxy
) -> None:
    """What production's gunicorn does to a request too long to answer in time: the client
    asks for half the span instead; the same request again would time out again."""

    def span(params: dict[str, str]) -> float:
        return float(params["end"]) - float(params["start"])

    proxy.fault = lambda params: "504" if span(params) > 250 else None
    rec = Recorder()
    settings = backfill_config(proxy.url, window=timedelta(seconds=400), concurrency=1)
    backfill = Backfill(settings, rec.deliver, rec.cover)
    end = data.start + 1200
    assert backfill.run([Range(data.start, end)]) == len(data.ids_before(end))
    assert {i["msg_id"] for i in rec.items} == data.ids_before(end)
    long = [json.dumps(p, sort_keys=True) for p in proxy.requests if span(p) > 250]
    assert long and len(long) == len(set(long)) == proxy.answers["504"]
    assert backfill.stats.requests_retried == backfill.stats.requests_failed == 0
    assert backfill.stats.splits == proxy.answers["504"]
    assert backfill.stats.requests == len(proxy.requests)


@integration
def test_a_window_that_keeps_failing_stops_the_backfill_before_it(
    data: Dataset, proxy: Proxy
) -> None:
    all_windows = data.windows()
    bad = all_windows[5]  # after the crowded second, and starting inside a busy second

    def fault(params: dict[str, str]) -> str | None:
        start, end = float(params["start"]), float(params["end"])  # end inclusive
        return "500" if start < bad.end and end >= bad.start else None

    proxy.fault = fault
    rec = Recorder()
    backfill = Backfill(backfill_config(proxy.url, retries=3), rec.deliver, rec.cover)
    with pytest.raises(BackfillError) as caught:
        backfill.run([Range(data.start, data.end)])
    message = str(caught.value)
    assert f"the window {bad} failed 3 times" in message
    assert "HTTP 500" in message and "the checkpoint stays before it" in message
    assert rec.covered and rec.covered[-1] <= bad.start
    assert_delivered_in_windows(rec, data, all_windows[:5])
    assert {i["msg_id"] for i in rec.items} == data.ids_before(bad.start)
    assert backfill.stats.windows_done == 5
    assert backfill.stats.requests_failed >= 3  # the bad window's three reads, at least


@integration
def test_the_gap_filler_goes_on_from_a_window_that_failed_every_retry(
    data: Dataset, proxy: Proxy
) -> None:
    """In ``run``, a window that failed every retry is tried again after a pause, from that
    window: stuck meanwhile (for /readyz and the self-metrics), and exact once it goes on."""
    part = data.windows()[:6]
    bad = part[3]
    failing = threading.Event()
    failing.set()

    def fault(params: dict[str, str]) -> str | None:
        start, end = float(params["start"]), float(params["end"])  # end inclusive
        overlaps = start < bad.end and end >= bad.start
        return "500" if failing.is_set() and overlaps else None

    proxy.fault = fault
    settings = backfill_config(
        proxy.url, retries=2, retry_max=timedelta(milliseconds=100), concurrency=2
    )
    rec = Recorder()
    stop = threading.Event()

    def emit(event: object) -> None:
        rec.events.append(event)  # type: ignore[arg-type]

    filler = GapFiller(settings, emit, stop, [Range(part[0].start, part[-1].end)])
    thread = threading.Thread(target=filler.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: filler.backfill.stats.failed is not None, "the window to fail")
        assert f"the window {bad} failed 2 times" in (filler.backfill.stats.failed or "")
        assert rec.covered == [w.end for w in part[:3]]  # nothing past it meanwhile
        failing.clear()
        wait_for(filler.caught_up.is_set, "the gap filler to go on and finish")
    finally:
        stop.set()
        thread.join(timeout=DEADLINE)
    assert filler.backfill.stats.failed is None
    assert_delivered_in_windows(rec, data, part)
    assert {i["msg_id"] for i in rec.items} == data.ids_before(part[-1].end)


# --- statscache-exporter run: a process with a live source -------------------------------------


def store_totals(store: Path) -> dict[tuple[str, str], float]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        return {
            (metric, labels): value
            for metric, labels, value in db.execute(
                "SELECT s.metric, s.labels, t.value FROM totals t JOIN series s ON s.id = t.series"
            )
        }
    finally:
        db.close()


def expected_totals(sent: list[Item]) -> dict[tuple[str, str], float]:
    total, by_category = expected_counts(sent)
    out = {("messages", "{}"): float(total)}
    for category, n in by_category.items():
        out[("messages_by_category", json.dumps({"category": category}, separators=(",", ":")))] = (
            float(n)
        )
    return out


def only_counted(totals: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {k: v for k, v in totals.items() if k[0] in ("messages", "messages_by_category")}


class CheckpointWatch:
    """Reads the store's covered_until and counted ids together (one read transaction) every
    few milliseconds while the exporter runs: the checkpoint must only move forward, and
    every message before it must be counted when it is seen."""

    def __init__(self, store: Path, data: Dataset, since: float | None = None) -> None:
        self.store = store
        self.data = data
        # before the backfill's range: not its business
        self.before_range = data.ids_before(since) if since is not None else set()
        self.values: list[float] = []
        self.problems: list[str] = []
        self.seen = 0
        self.looks = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def covered(self) -> float:
        return self.values[-1] if self.values else -math.inf

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        while not self.stop.wait(0.02):
            if db is None:
                if not self.store.exists():
                    continue
                db = sqlite3.connect(
                    f"file:{self.store}?mode=ro", uri=True, timeout=10, isolation_level=None
                )
            try:
                self._look(db)
            except sqlite3.OperationalError:  # tables not made yet
                continue
        if db is not None:
            db.close()

    def _look(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN")
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'covered_until'").fetchone()
            seen = {r[0] for r in db.execute("SELECT msg_id FROM seen")}
        finally:
            db.execute("COMMIT")
        self.seen = len(seen)
        self.looks += 1
        if row is None:
            return
        covered = float(row[0])
        if not self.values or covered != self.values[-1]:
            self.values.append(covered)
        missing = self.data.ids_before(covered) - self.before_range - seen
        if missing and len(self.problems) < 5:
            self.problems.append(
                f"covered_until {covered} but {len(missing)} earlier messages not counted, "
                f"e.g. {sorted(missing)[:3]}"
            )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def check(self) -> None:
        assert self.problems == []
        assert self.values == sorted(self.values), "covered_until moved back"


def run_settings(url: str, **backfill: Any) -> dict[str, Any]:
    """A live source that stays disconnected (fedmsg on a port nobody listens on), and a
    backfill of the last 4 h at start."""
    return {
        "sources": [
            {"type": "fedmsg", "name": "bus", "endpoints": [f"tcp://127.0.0.1:{free_port()}"]}
        ],
        "backfill": {
            "enabled": True,
            "url": url,
            "initial_backfill": "4h",
            "window": "10m",
            "overlap": "1m",
            "retry_initial": "10ms",
            **backfill,
        },
    }


def wait_backfilled(watch: CheckpointWatch, started_after: float) -> None:
    """The last window ends at the start plus the overlap; no earlier window ends that late."""
    wait_for(
        lambda: watch.covered >= started_after + MINUTE,
        "the backfill to cover its last window",
    )


@dataclass
class Uninterrupted:
    totals: dict[tuple[str, str], float]
    watch: CheckpointWatch


@pytest.fixture(scope="module")
def uninterrupted(
    dg: harness.Datagrepper, data: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Uninterrupted:
    """``statscache-exporter run`` backfilling the dataset at its start, left to finish."""
    home = tmp_path_factory.mktemp("uninterrupted")
    watch = CheckpointWatch(home / "exporter" / "store.sqlite", data)
    try:
        before = time.time()
        with exporter_process(home, [], settings=run_settings(dg.url)) as exporter:
            wait_backfilled(watch, before)
            wait_for(lambda: watch.seen == len(data.stored), "every message to be counted")
    finally:
        watch.close()
    return Uninterrupted(store_totals(exporter.store), watch)


@integration
def test_run_backfills_exactly_what_datagrepper_holds(
    data: Dataset, uninterrupted: Uninterrupted
) -> None:
    assert only_counted(uninterrupted.totals) == expected_totals(data.sent)
    uninterrupted.watch.check()
    # window by window: the checkpoint stops at window ends on the way (how many of them a look
    # every 20 ms sees depends on the machine's speed), the last one at the start plus overlap
    values = uninterrupted.watch.values
    assert len(values) >= 2
    off_the_grid = [v for v in values[:-1] if abs((v - values[0]) / WINDOW % 1 - 0.5) < 0.4999]
    assert off_the_grid == []


@integration
def test_run_killed_in_the_middle_of_a_backfill_then_restarted_ends_identical(
    tmp_path: Path, data: Dataset, proxy: Proxy, uninterrupted: Uninterrupted
) -> None:
    # the backfill cannot get past 2 h into the data until the gate opens: the kill comes
    # before its end, whenever it comes
    proxy.gate_from = data.base + 2 * HOUR
    watch = CheckpointWatch(tmp_path / "exporter" / "store.sqlite", data)
    try:
        settings = run_settings(proxy.url, concurrency=1)
        with exporter_process(tmp_path, [], settings=settings) as exporter:
            past = data.crowded + 1
            wait_for(lambda: watch.covered >= past, "the checkpoint past the crowded second")
            exporter.kill()
            looks = watch.looks
            wait_for(lambda: watch.looks > looks + 1, "a look at the killed store")
            killed_at, counted_then = watch.covered, watch.seen
            assert killed_at < proxy.gate_from + WINDOW  # before the gate's window
            assert counted_then < len(data.stored)
            proxy.open_gate()
            asked_before = len(proxy.requests)
            before = time.time()
            exporter.start()
            wait_backfilled(watch, before)
            wait_for(lambda: watch.seen == len(data.stored), "every message to be counted")
    finally:
        watch.close()
    watch.check()
    # the restart read from its checkpoint minus the overlap, not its initial_backfill again
    restarted = [float(p["start"]) for p in proxy.requests[asked_before:]]
    assert min(restarted) == pytest.approx(killed_at - MINUTE, abs=1e-5)
    totals = store_totals(exporter.store)
    assert totals == uninterrupted.totals
    assert only_counted(totals) == expected_totals(data.sent)


# --- live during the backfill ------------------------------------------------------------------


class Publisher:
    """A fedmsg publisher on 127.0.0.1: an XPUB socket (fedmsg's PUB on the wire, and it
    hears the subscriptions, so the test publishes once the subscriber is there)."""

    def __init__(self) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"

    def wait_subscribed(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(int(left * 1000)):
                pytest.fail(f"no subscription reached {self.endpoint}")
            if self.socket.recv()[:1] == b"\x01":
                return

    def send(self, item: Item) -> None:
        self.socket.send_multipart([item["topic"].encode(), json.dumps(item).encode()])

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@integration
def test_messages_also_delivered_live_during_the_backfill_are_counted_once(
    tmp_path: Path, data: Dataset, proxy: Proxy
) -> None:
    gate = data.base + 1.5 * HOUR
    proxy.gate_from = gate
    # the backfill starts at the epoch (not at now - initial_backfill, which the test cannot
    # know to the microsecond): the last 100 minutes of the data
    epoch = gate - 4 * WINDOW
    wanted = [m for m in data.sent if m["timestamp"] >= epoch]
    rng = random.Random(5)
    # live after the backfill has counted them, and live before it gets to them
    early = rng.sample([m for m in wanted if m["timestamp"] < gate - 2 * WINDOW], 300)
    late = rng.sample([m for m in wanted if m["timestamp"] >= gate + 2 * WINDOW], 300)
    publisher = Publisher()
    iso = datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
    settings = run_settings(proxy.url, concurrency=2, epoch=iso)
    settings["sources"][0]["endpoints"] = [publisher.endpoint]
    store = tmp_path / "store.sqlite"
    cfg = make_config(
        store,
        sources=settings["sources"],
        backfill=settings["backfill"],
        http={"enabled": False},
        store={"flush_interval": "250ms"},
    )
    started = threading.Event()
    made: list[Daemon] = []

    def run() -> None:  # as `run` does, in one thread: the store is the pipeline thread's
        try:
            made.append(Daemon(cfg))
            made[0].start()
        finally:
            started.set()
        try:
            made[0].loop()
        finally:
            made[0].shutdown()

    thread = threading.Thread(target=run, name="daemon", daemon=True)
    watch = CheckpointWatch(store, data, since=epoch)
    try:
        thread.start()
        wait_for(started.is_set, "the daemon to start")
        assert made, "the daemon did not start"
        daemon = made[0]
        stats = daemon.pipeline.stats
        publisher.wait_subscribed()
        wait_for(lambda: watch.covered >= gate - 2 * WINDOW, "the backfill to count `early`")
        assert not stats.processed["bus"]
        for m in early + late:
            publisher.send(m)
        wait_for(lambda: stats.received["bus"] == 600, "the live messages to be handled")
        assert watch.covered < gate + WINDOW  # the backfill has not got to `late`
        proxy.open_gate()
        filler = daemon.filler
        assert filler is not None
        wait_for(filler.idle, "the backfill to finish")
        wait_for(lambda: watch.seen == len(wanted), "every message to be counted")
    finally:
        if made:
            made[0].request_stop()
        thread.join(timeout=DEADLINE)
        watch.close()
        publisher.close()
    assert not thread.is_alive()
    assert filler.backfill.stats.failed is None
    assert stats.received["bus"] == 600
    assert (stats.processed["bus"], stats.duplicates["bus"]) == (300, 300)
    assert stats.duplicates["backfill"] == 300
    assert stats.processed["backfill"] == len(wanted) - 300
    watch.check()
    assert only_counted(store_totals(store)) == expected_totals(wanted)


# --- a plugin added later ------------------------------------------------------------------------


def plugin_row(store: Path, ident: str) -> tuple[float | None, float | None, float | None]:
    """(history_start, history_end, covered_until) of a plugin in the store's registry."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute(
            "SELECT history_start, history_end, covered_until FROM plugins WHERE ident = ?",
            (ident,),
        ).fetchone()
        assert row is not None, f"plugin {ident} not registered"
        return row
    finally:
        db.close()


def by_topic(totals: dict[tuple[str, str], float]) -> dict[str, float]:
    return {
        json.loads(labels)["topic"]: v
        for (metric, labels), v in totals.items()
        if metric == "messages_by_topic"
    }


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@integration
def test_a_plugin_added_later_backfills_its_own_range_for_itself_alone(
    tmp_path: Path, data: Dataset, proxy: Proxy
) -> None:
    """Run 1 counts the data from ``first`` with volume_by_topic disabled. Run 2 enables it
    with history back to ``earlier`` (backfill.epoch): it gets those messages, the ones run 1
    counted included, and the other plugins' counts do not move; killed in the middle of
    that history and restarted, it still counts each message once."""
    earlier, first = data.base + 0.5 * HOUR, data.base + 1.5 * HOUR
    counted_first = [m for m in data.sent if m["timestamp"] >= first]
    wanted = [m for m in data.sent if m["timestamp"] >= earlier]
    off = {"volume_by_topic": {"enabled": False}}
    store = tmp_path / "exporter" / "store.sqlite"
    watch = CheckpointWatch(store, data, since=first)
    try:
        before = time.time()
        settings = run_settings(proxy.url, epoch=iso(first))
        with exporter_process(tmp_path, [], plugins=off, settings=settings) as exporter:
            wait_backfilled(watch, before)
            wait_for(lambda: watch.seen == len(counted_first), "run 1 to count its messages")
    finally:
        watch.close()
    after_run_1 = store_totals(store)
    assert only_counted(after_run_1) == expected_totals(counted_first)
    assert by_topic(after_run_1) == {}

    # run 2: its history waits at the gate (2 h into the data) until the kill
    proxy.gate_from, proxy.gate_until = data.base + 2 * HOUR, data.base + SPAN + MINUTE
    exporter.plugins = {"volume_by_topic": {"enabled": True}}
    exporter.settings = run_settings(proxy.url, epoch=iso(earlier))
    exporter.reconfigure([])
    exporter.start()
    try:
        wait_for(proxy.gated.is_set, "the plugin's history to reach the gate")
        wait_for(
            lambda: (plugin_row(store, "volume_by_topic")[2] or 0) >= proxy.gate_from - WINDOW,
            "the windows before the gate to be committed",
        )
        start, end, _ = plugin_row(store, "volume_by_topic")
        assert start == earlier and end is not None and end > time.time() - HOUR
        exporter.kill()
    finally:
        if exporter.process is not None:
            exporter.kill()
    partial = store_totals(store)
    assert only_counted(partial) == only_counted(after_run_1)
    assert 0 < sum(by_topic(partial).values()) < len(wanted)

    proxy.open_gate()
    exporter.start()
    try:
        wait_for(
            lambda: (plugin_row(store, "volume_by_topic")[2] or 0) >= end,
            "the plugin's history to be all counted",
        )
    finally:
        exporter.stop_cleanly()
    totals = store_totals(store)
    assert only_counted(totals) == only_counted(after_run_1)  # the others did not move
    expected = Counter(m["topic"] for m in wanted)
    assert by_topic(totals) == {topic: float(n) for topic, n in expected.items()}
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:  # its own ids are dropped once its history is done
        assert db.execute("SELECT count(*) FROM plugin_seen").fetchone() == (0,)
    finally:
        db.close()
