"""The InfluxDB sender against a scripted writer: faults a real InfluxDB cannot be made to
show on demand (429 with Retry-After, 5xx, a bucket changed while its batch is in flight, a
refused line among good ones). tests/test_influx.py runs the real server."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from statscache_exporter.aggregate import Batch, GaugeValue, Series
from statscache_exporter.influx import InfluxSink, LineKeys, WriteResult
from statscache_exporter.ledger import LedgerChanges, Window
from statscache_exporter.outbox import Outbox, OutboxWriter
from statscache_exporter.pipeline import influx_sink_for
from statscache_exporter.plugin import Counter, Gauge
from statscache_exporter.reader import Reader
from statscache_exporter.store import Store

T0 = 1_700_000_000


class Scripted:
    """A writer that records what it is sent and answers from a script (default: 204)."""

    def __init__(self, answers: Sequence[WriteResult] = (), refuse: str | None = None) -> None:
        self.answers = list(answers)
        self.refuse = refuse
        self.batches: list[list[str]] = []

    def write(self, body: str) -> WriteResult:
        lines = body.split("\n")
        self.batches.append(lines)
        if self.answers:
            return self.answers.pop(0)
        if self.refuse and any(self.refuse in line for line in lines):
            return WriteResult(False, 400, bad_data=True, error="unable to parse")
        return WriteResult(True, 204)

    def close(self) -> None:
        pass

    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def fedmsg(
    i: int, ts: float, topic: str = "org.fedoraproject.prod.bodhi.update.comment"
) -> dict[str, Any]:
    return {"topic": topic, "msg": {}, "timestamp": ts, "msg_id": f"m{i}"}


def influx_section(**extra: Any) -> dict[str, Any]:
    return {"enabled": True, "url": "http://127.0.0.1:9", "tags": {"instance": "t1"}, **extra}


#: a dedup window that forgets no id
KEEP_IDS = Window(float("-inf"), 0)


def attach_outbox(store: Store, keys: LineKeys, part_lines: int) -> None:
    """The InfluxDB outbox on a store, as open_pipeline attaches it (1 s base resolution)."""
    store.attach(OutboxWriter(1, keys.fingerprint, keys.series_key, part_lines))


def counted(*ids: str) -> LedgerChanges:
    """A flush's ledger part for these message ids (message time T0)."""
    return LedgerChanges(ids={i: (T0, n) for n, i in enumerate(ids)})


def sink_for(p: Any, writer: Scripted) -> InfluxSink:
    sink = influx_sink_for(p)
    assert sink is not None
    sink.writer = writer
    return sink


def pending(store: Path) -> list[str]:
    """The queued lines, in the order they go out."""
    db = sqlite3.connect(store)
    try:
        bodies = db.execute("SELECT body FROM outbox ORDER BY id").fetchall()
        return [line for (body,) in bodies for line in body.split("\n")]
    finally:
        db.close()


def aside(store: Path) -> list[tuple[int, str, str | None]]:
    """The points set aside: (bucket start, metric, line or None)."""
    db = sqlite3.connect(store)
    try:
        return sorted(
            db.execute(
                "SELECT a.start, s.metric, a.line FROM outbox_aside a "
                "JOIN series s ON s.id = a.series"
            ),
            key=repr,
        )
    finally:
        db.close()


def test_series_keys_are_escaped_by_point() -> None:
    keys = LineKeys("statscache_", {"instance": "a b"})
    labels = json.dumps({"user": 'o"b, x=y é'})
    assert keys.series_key("messages_by_user", labels) == (
        'statscache_messages_by_user,instance=a\\ b,user=o"b\\,\\ x\\=y\\ é'
    )
    assert keys.series_key("level", "{}") == "statscache_level,instance=a\\ b"
    # line protocol cannot carry a newline, nor end a tag value with a backslash
    assert keys.series_key("messages_by_user", json.dumps({"user": "new\nline"})) is None
    assert keys.series_key("messages_by_user", json.dumps({"user": "x\\"})) is None
    assert LineKeys("statscache_", {"instance": "b"}).fingerprint != keys.fingerprint


def test_the_flush_queues_each_point_with_its_line(tmp_path: Path) -> None:
    """Counters carry their full count as an integer, gauges their value in its shortest exact
    form, each flush's lines in a part of their own (a bucket changed again is queued again,
    with its new full count); a series line protocol cannot carry is set aside, without a
    line."""
    count, level = Counter("c", "c", ("user",)), Gauge("g", "g")
    odd = Counter("odd", "odd", ("user",))
    series = {
        ("c", ("o b",)): Series("p", count, ("o b",), 0.0),
        ("g", ()): Series("p", level, (), 0.0),
        ("odd", ("a\tb",)): Series("p", odd, ("a\tb",), 0.0),
    }
    path = tmp_path / "s.sqlite"
    store = Store(path)
    keys = LineKeys("x_", {})
    attach_outbox(store, keys, 5000)
    for value, n in ((0.1 + 0.2, 3), (1e21, 4)):
        batch = Batch(series=dict(series))
        batch.counter_deltas = {("c", ("o b",), 1, T0): n, ("odd", ("a\tb",), 1, T0): 1}
        batch.gauge_candidates = {("g", (), 1, T0): GaugeValue(T0 + n, f"m{n}", value)}
        store.commit(batch, counted(f"m{n}"))
    assert pending(path) == [
        f"x_c,user=o\\ b count=3i {T0}",
        f"x_g value=0.30000000000000004 {T0}",
        f"x_c,user=o\\ b count=7i {T0}",
        f"x_g value=1e+21 {T0}",
    ]
    assert aside(path) == [(T0, "odd", None)]
    assert Reader(path).outbox_state()[:2] == (4, 1)
    store.close()


def test_a_batch_made_by_hand_with_new_objects_for_known_series_is_written(
    tmp_path: Path,
) -> None:
    """Series objects the store never gave an id to (a batch built by hand each time) get the
    ids of their series before anything is written: the outbox and the buckets."""
    count = Counter("c", "c", ("user",))
    path = tmp_path / "s.sqlite"
    store = Store(path)
    attach_outbox(store, LineKeys("x_", {}), 5000)
    for n in (2, 3):
        batch = Batch(series={("c", ("u",)): Series("p", count, ("u",), 0.0)})
        batch.counter_deltas = {("c", ("u",), 1, T0): n}
        store.commit(batch, counted(f"m{n}"))
    assert pending(path) == [f"x_c,user=u count=2i {T0}", f"x_c,user=u count=5i {T0}"]
    assert store.dump()["buckets"] == [("c", '{"user":"u"}', 1, T0, 5, None, None)]
    store.close()


def test_a_flush_is_cut_into_parts_of_batch_size_lines_in_time_order(tmp_path: Path) -> None:
    count = Counter("c", "c", ("user",))
    users = [f"u{i}" for i in range(5)]
    series = {("c", (u,)): Series("p", count, (u,), 0.0) for u in users}
    path = tmp_path / "s.sqlite"
    store = Store(path)
    keys = LineKeys("x_", {})
    attach_outbox(store, keys, 4)
    batch = Batch(series=dict(series))
    batch.counter_deltas = {("c", (u,), 1, T0 + t): 1 for u in users for t in (2, 0, 1)}
    store.commit(batch, counted("m1"))
    db = sqlite3.connect(path)
    parts = db.execute("SELECT first_start, lines, body FROM outbox ORDER BY id").fetchall()
    db.close()
    store.close()
    assert [(first, n) for first, n, _ in parts] == [(T0, 4), (T0, 4), (T0 + 1, 4), (T0 + 2, 3)]
    assert "\n".join(body for *_, body in parts) == "\n".join(
        f"x_c,user={u} count=1i {T0 + t}" for t in range(3) for u in users
    )


def test_new_global_tags_rebuild_the_queued_lines(tmp_path: Path) -> None:
    """Queued points go out with the tags of the configuration that sends them."""
    count = Counter("c", "c", ("user",))
    s = {
        ("c", ("u",)): Series("p", count, ("u",), 0.0),
        ("c", ("a b",)): Series("p", count, ("a b",), 0.0),
        ("c", ("a\tb",)): Series("p", count, ("a\tb",), 0.0),
    }
    path = tmp_path / "s.sqlite"
    store = Store(path)
    old = LineKeys("x_", {"instance": "a"})
    attach_outbox(store, old, 5000)
    batch = Batch(series=dict(s))
    batch.counter_deltas = {("c", ("u",), 1, T0): 2, ("c", ("a b",), 1, T0): 3}
    batch.counter_deltas[("c", ("a\tb",), 1, T0)] = 1
    store.commit(batch, counted("m1"))
    store.close()
    store = Store(path)
    new = LineKeys("y_", {"instance": "b c"})
    attach_outbox(store, new, 5000)
    store.close()
    assert pending(path) == [
        f"y_c,instance=b\\ c,user=u count=2i {T0}",
        f"y_c,instance=b\\ c,user=a\\ b count=3i {T0}",
    ]
    assert aside(path) == [(T0, "c", None)]


def test_a_tag_that_makes_a_series_unwritable_sets_its_queued_points_aside(tmp_path: Path) -> None:
    count = Counter("c", "c", ("user",))
    s = {("c", ("u",)): Series("p", count, ("u",), 0.0)}
    path = tmp_path / "s.sqlite"
    store = Store(path)
    keys = LineKeys("x_", {})
    attach_outbox(store, keys, 5000)
    batch = Batch(series=dict(s))
    batch.counter_deltas = {("c", ("u",), 1, T0): 2, ("c", ("u",), 1, T0 + 1): 1}
    store.commit(batch, counted("m1"))
    store.close()
    store = Store(path)
    keys = LineKeys("x_", {"site": "trailing\\"})  # no longer writable: set aside
    attach_outbox(store, keys, 5000)
    store.close()
    assert pending(path) == []
    assert aside(path) == [(T0, "c", None), (T0 + 1, "c", None)]
    store = Store(path)
    keys = LineKeys("x_", {"site": "s"})  # writable again: queued again, with full counts
    attach_outbox(store, keys, 5000)
    store.close()
    assert pending(path) == [
        f"x_c,site=s,user=u count=2i {T0}",
        f"x_c,site=s,user=u count=1i {T0 + 1}",
    ]
    assert aside(path) == []


def test_a_schema_4_outbox_is_carried_over_and_lined(tmp_path: Path) -> None:
    """A store written by version 4, with points queued: they keep their place, get their
    lines at the next start, and a queued row whose bucket is gone is dropped."""
    path = tmp_path / "s.sqlite"
    count = Counter("c", "c")
    store = Store(path)
    batch = Batch(series={("c", ()): Series("p", count, (), 0.0)})
    batch.counter_deltas = {("c", (), 1, T0): 5, ("c", (), 1, T0 + 1): 6}
    store.commit(batch, counted("m1"))
    store.close()
    db = sqlite3.connect(path)  # back to schema 4, as version 4 wrote it
    db.executescript(
        f"""
        DROP TABLE IF EXISTS outbox; DROP TABLE IF EXISTS outbox_aside;
        DROP TABLE IF EXISTS influx_keys;
        CREATE TABLE outbox (start INTEGER NOT NULL, series INTEGER NOT NULL,
            seq INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
            value NOT NULL, since REAL NOT NULL, PRIMARY KEY (start, series)) WITHOUT ROWID;
        CREATE INDEX outbox_age ON outbox (failed, since);
        INSERT INTO outbox VALUES ({T0}, 1, 3, 0, 5, 1.0), ({T0 + 1}, 1, 3, 0, 6, 1.0),
            ({T0 - 9}, 1, 2, 0, 1, 1.0);
        UPDATE meta SET value = '4' WHERE key = 'schema_version';
        """
    )
    db.commit()
    db.close()
    store = Store(path)
    keys = LineKeys("x_", {})
    attach_outbox(store, keys, 5000)
    store.close()
    assert pending(path) == [f"x_c count=5i {T0}", f"x_c count=6i {T0 + 1}"]
    assert aside(path) == []  # T0 - 9: its bucket is gone, nothing to send


def test_a_schema_6_outbox_is_carried_over_in_parts(tmp_path: Path) -> None:
    """A store written by version 6 (a row per queued point, with its line): the queued lines
    become parts, in time order; refused ones stay set aside, with their line."""
    path = tmp_path / "s.sqlite"
    count = Counter("c", "c", ("user",))
    store = Store(path)
    batch = Batch(series={("c", (u,)): Series("p", count, (u,), 0.0) for u in "ab"})
    batch.counter_deltas = {("c", (u,), 1, T0): 1 for u in "ab"}
    store.commit(batch, counted("m1"))
    store.close()
    queued = [
        (T0 + t, 1 + i, f"x_c,user={u} count=1i {T0 + t}")
        for t in (1, 0)
        for i, u in enumerate("ab")
    ]
    db = sqlite3.connect(path)
    db.executescript(
        f"""
        DROP TABLE IF EXISTS outbox; DROP TABLE IF EXISTS outbox_aside;
        CREATE TABLE outbox (start INTEGER NOT NULL, series INTEGER NOT NULL,
            seq INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
            since REAL NOT NULL, line TEXT, PRIMARY KEY (start, series)) WITHOUT ROWID;
        CREATE INDEX outbox_failed ON outbox (failed) WHERE failed = 1;
        INSERT INTO outbox VALUES ({T0 + 5}, 2, 3, 1, 1.0, 'x_c,user=b count=x {T0 + 5}');
        INSERT INTO meta VALUES ('outbox_seq', '3');
        UPDATE meta SET value = '6' WHERE key = 'schema_version';
        """
    )
    db.executemany("INSERT INTO outbox VALUES (?, ?, 2, 0, 2.0, ?)", queued)
    db.commit()
    db.close()
    store = Store(path)
    attach_outbox(store, LineKeys("x_", {}), 5000)
    store.close()
    assert Reader(path).outbox_state() == (4, 1, 2.0)
    assert pending(path) == [line for *_, line in sorted(queued)]
    assert aside(path) == [(T0 + 5, "c", f"x_c,user=b count=x {T0 + 5}")]


def test_only_base_resolution_buckets_are_queued_and_sent_with_full_counts(open_store: Any) -> None:
    p = open_store(influxdb=influx_section())
    for i in range(3):
        p.handle(fedmsg(i, T0 + 0.5))  # three messages in one second
    p.handle(fedmsg(3, T0 + 1.2))
    p.flush()
    writer = Scripted()
    sink = sink_for(p, writer)
    outbox = Outbox(p.store.path)
    assert sink.send_batch(outbox) > 0
    assert sink.send_batch(outbox) == 0
    lines = writer.lines()
    assert f"statscache_messages,instance=t1 count=3i {T0}" in lines
    assert f"statscache_messages,instance=t1 count=1i {T0 + 1}" in lines
    assert all(line.rsplit(" ", 1)[1] in (str(T0), str(T0 + 1)) for line in lines)  # no 1m/1h
    assert pending(p.store.path) == []
    assert sink.stats.points_written == len(lines)


def test_a_bucket_changed_while_its_batch_is_in_flight_is_sent_again(open_store: Any) -> None:
    p = open_store(influxdb=influx_section())
    p.handle(fedmsg(0, T0))
    p.handle(fedmsg(1, T0 + 7))
    p.flush()
    outbox = Outbox(p.store.path)
    read = outbox.next_batch(100)
    assert read is not None and read.count == 6  # 2 seconds x (volume, category, topic)
    p.handle(fedmsg(2, T0 + 0.3))  # second T0 changes before the ack...
    p.handle(fedmsg(3, T0 + 3))  # ...and a new second inside the batch's key range appears
    p.flush()
    outbox.acknowledge_batch(read)  # unqueues only what it read, as it read it
    again = outbox.next_batch(100)
    assert again is not None
    assert [line for line in again.body.split("\n") if line.startswith("statscache_messages,")] == [
        f"statscache_messages,instance=t1 count=2i {T0}",
        f"statscache_messages,instance=t1 count=1i {T0 + 3}",
    ]
    assert len(pending(p.store.path)) == 6  # T0 and T0+3, three series each


def test_reading_ahead_of_an_unacknowledged_batch(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=12))
    for i in range(10):
        p.handle(fedmsg(i, T0 + i))
    p.flush()  # 30 points: parts of 12, 12 and 6
    outbox = Outbox(p.store.path)
    first = outbox.next_batch(12)
    assert first is not None
    second = outbox.next_batch(12, after=first.last)
    assert second is not None
    rest = outbox.next_batch(100, after=second.last)
    assert rest is not None and outbox.next_batch(100, after=rest.last) is None
    assert [b.count for b in (first, second, rest)] == [12, 12, 6]
    assert [line for b in (first, second, rest) for line in b.lines()] == pending(p.store.path)
    assert [int(line.rsplit(" ", 1)[1]) for line in pending(p.store.path)] == sorted(
        T0 + i for i in range(10) for _ in range(3)
    )


def test_a_batch_is_whole_parts_up_to_the_limit_and_at_least_one(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=12))
    for i in range(10):
        p.handle(fedmsg(i, T0 + i))
    p.flush()  # parts of 12, 12 and 6
    outbox = Outbox(p.store.path)
    counts = [(b.count, len(b.lines())) for b in map(outbox.next_batch, (100, 30, 24, 23, 5))]
    assert counts == [(30, 30), (30, 30), (24, 24), (12, 12), (12, 12)]


def test_retry_after_and_exponential_backoff_with_nothing_lost(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(retry_initial="1s", retry_max="8s"))
    p.handle(fedmsg(0, T0))
    p.flush()
    answers = [
        WriteResult(False, 429, retry_after=5.0, error="too many"),
        WriteResult(False, 503, error="unavailable"),
        WriteResult(False, 503, error="unavailable"),
        WriteResult(False, 503, error="unavailable"),
        WriteResult(False, error="ConnectionError: refused"),
    ]
    writer = Scripted(answers)
    sink = sink_for(p, writer)
    outbox = Outbox(p.store.path)
    waits = []
    for _ in answers:
        assert sink.send_batch(outbox) == -1
        waits.append(sink._next_wait)
    assert waits[0] >= 5.0  # Retry-After honoured
    assert all(w <= 8.0 for w in waits)  # never past retry_max
    assert sink._backoff == 8.0  # 1, 2, 4, 8, capped
    assert sink.stats.batches_failed == 5 and not sink.stats.connected
    assert len(pending(p.store.path)) == 3  # volume, by category, by topic: all queued
    assert sink.send_batch(outbox) == 3  # InfluxDB is back
    assert pending(p.store.path) == [] and sink.stats.connected and sink._backoff == 0.0


def test_a_refused_line_is_set_aside_and_the_rest_goes_through(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=64))
    for i in range(40):
        p.handle(fedmsg(i, T0 + i, f"org.fedoraproject.prod.cat{i % 5}.x"))
    p.flush()
    writer = Scripted(refuse="category=cat3")
    sink = sink_for(p, writer)
    outbox = Outbox(p.store.path)
    while sink.send_batch(outbox) > 0:
        pass
    refused = aside(p.store.path)
    assert [(start, metric) for start, metric, _ in refused] == [
        (T0 + i, "messages_by_category") for i in range(3, 40, 5)
    ]  # the eight seconds of category cat3, each with its line
    assert all(line and "category=cat3" in line for *_, line in refused)
    assert sink.stats.points_refused == 8
    assert pending(p.store.path) == []
    good_sent = {line for line in writer.lines() if "cat3" not in line}
    assert sum(1 for line in good_sent if line.startswith("statscache_messages,")) == 40


class GoesAway(Scripted):
    """Refuses lines with ``refuse`` in them, and goes away once it has refused a line on
    its own, until ``back`` is set."""

    back = False

    def write(self, body: str) -> WriteResult:
        if not self.back and any(len(b) == 1 and self.refuse in b[0] for b in self.batches):
            self.batches.append(body.split("\n"))
            return WriteResult(False, error="ConnectionError: refused")
        return super().write(body)


def test_influxdb_going_away_while_a_refused_batch_is_split_keeps_it_queued(
    open_store: Any,
) -> None:
    p = open_store(influxdb=influx_section(batch_size=64))
    for i in range(8):
        p.handle(fedmsg(i, T0 + i, f"org.fedoraproject.prod.cat{i % 4}.x"))
    p.flush()  # 24 points, one part, in time order: cat3 at T0 + 3 (first half), T0 + 7
    before = pending(p.store.path)
    cat3 = [line for line in before if "category=cat3" in line]
    writer = GoesAway(refuse="category=cat3")
    sink = sink_for(p, writer)
    outbox = Outbox(p.store.path)
    assert sink.send_batch(outbox) == -1  # T0 + 3's line found alone, then InfluxDB left
    assert [cat3[0]] in writer.batches
    assert pending(p.store.path) == before and aside(p.store.path) == []
    assert sink.stats.batches_failed == 1 and not sink.stats.connected
    assert sink.stats.points_refused == 0  # nothing set aside yet
    writer.back = True
    assert sink.send_batch(outbox) == 24
    assert pending(p.store.path) == []
    assert aside(p.store.path) == [
        (T0 + 3, "messages_by_category", cat3[0]),
        (T0 + 7, "messages_by_category", cat3[1]),
    ]
    assert sink.stats.points_refused == 2  # each once, though T0 + 3 was refused twice


def test_a_bucket_changed_again_while_influxdb_is_away_ends_with_its_latest_count(
    open_store: Any,
) -> None:
    """Each change is queued (the outbox keeps no bucket index to merge them into); they go
    out in the order they were queued, so the last write of the point is its full count."""
    p = open_store(influxdb=influx_section())
    for i in range(3):
        p.handle(fedmsg(i, T0 + 0.1 * i))
        p.flush()
    writer = Scripted([WriteResult(False, 503, error="unavailable")])
    sink = sink_for(p, writer)
    outbox = Outbox(p.store.path)
    assert sink.send_batch(outbox) == -1
    assert sink.drain(outbox) == 9
    volume = [line for line in writer.lines() if line.startswith("statscache_messages,")]
    assert volume[-3:] == [f"statscache_messages,instance=t1 count={n}i {T0}" for n in (1, 2, 3)]
    assert pending(p.store.path) == []


def test_the_outbox_is_bounded_and_the_overflow_counted(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=10, max_pending=10))
    sink = sink_for(p, Scripted())
    sink.stats.pending = 11  # as the sender last saw it
    p.handle(fedmsg(0, T0))
    p.flush()
    assert pending(p.store.path) == []
    assert sink.queued.overflow == 3  # volume, by category, by topic
    sink.stats.pending = 0
    p.handle(fedmsg(1, T0 + 5))
    p.flush()
    assert len(pending(p.store.path)) == 3


def test_retention_keeps_buckets_influxdb_has_not_acknowledged(open_store: Any) -> None:
    retention = {"1s": "1h", "1m": "forever", "1h": "forever", "1d": "forever"}
    p = open_store(influxdb=influx_section(), store={"retention": retention})
    p.handle(fedmsg(0, T0 - 7200))
    p.handle(fedmsg(1, T0))
    p.flush()
    p.store.prune(p.config.retention_seconds(), T0, KEEP_IDS)
    seconds = {b[3] for b in p.store.dump()["buckets"] if b[0] == "messages" and b[2] == 1}
    assert seconds == {T0 - 7200, T0}  # the old one is still queued
    outbox = Outbox(p.store.path)
    sink = sink_for(p, Scripted())
    while sink.send_batch(outbox) > 0:
        pass
    p.store.prune(p.config.retention_seconds(), T0, KEEP_IDS)
    seconds = {b[3] for b in p.store.dump()["buckets"] if b[0] == "messages" and b[2] == 1}
    assert seconds == {T0}


def test_stop_gives_up_within_the_shutdown_timeout_when_influxdb_is_away(open_store: Any) -> None:
    p = open_store(
        influxdb=influx_section(shutdown_timeout="1s", retry_initial="30s", retry_max="60s")
    )
    p.handle(fedmsg(0, T0))
    p.flush()
    always_down = Scripted([WriteResult(False, error="ConnectionError")] * 1000)
    sink = sink_for(p, always_down)
    sink.start()
    started = time.monotonic()
    sink.stop()
    assert time.monotonic() - started < 10  # bounded: not the 30 s backoff
    assert len(pending(p.store.path)) == 3  # still queued for the next start


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0", 0.0), ("-3", 0.0), ("junk", None), ("", None), (None, None)],
)
def test_retry_after_header_forms(header: str | None, seconds: float | None) -> None:
    """An unreadable Retry-After is ignored (it once killed the sender thread)."""
    from statscache_exporter.influx import _retry_after

    assert _retry_after(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    import email.utils

    from statscache_exporter.influx import _retry_after

    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (_retry_after(later) or 0) <= 31


# --- drain(): the sender thread's path, a write in flight while the next batch is read ----------


def many(p: Any, n: int) -> None:
    for i in range(n):
        p.handle(fedmsg(i, T0 + i, f"org.fedoraproject.prod.cat{i % 5}.x"))
    p.flush()


def test_drain_sends_every_queued_line_once_and_empties_the_outbox(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=7))
    many(p, 20)  # 20 seconds x (volume, category, topic) = 60 points
    writer = Scripted()
    sink = sink_for(p, writer)
    assert sink.drain(Outbox(p.store.path)) == 60
    assert [len(b) for b in writer.batches] == [7] * 8 + [4]
    lines = writer.lines()
    assert len(lines) == len(set(lines)) == 60
    assert sorted(int(line.rsplit(" ", 1)[1]) for line in lines) == sorted(
        T0 + i for i in range(20) for _ in range(3)
    )
    assert pending(p.store.path) == [] and sink.stats.points_written == 60


def test_drain_stops_at_a_failed_write_and_keeps_the_rest_queued(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=10))
    many(p, 20)
    down = WriteResult(False, 503, error="unavailable")
    writer = Scripted([WriteResult(True, 204), down])
    sink = sink_for(p, writer)
    assert sink.drain(Outbox(p.store.path)) == -1
    # the first batch is acknowledged; the second failed; the third, read ahead, was not sent
    assert len(writer.batches) == 2
    assert len(pending(p.store.path)) == 50
    assert sink.drain(Outbox(p.store.path)) == 50  # InfluxDB is back
    assert pending(p.store.path) == []
    assert set(writer.lines()) >= set(writer.batches[1])


def test_drain_sets_a_refused_line_aside_and_goes_on(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=16))
    many(p, 40)
    writer = Scripted(refuse="category=cat3")
    sink = sink_for(p, writer)
    assert sink.drain(Outbox(p.store.path)) == 120
    assert pending(p.store.path) == []
    assert len(aside(p.store.path)) == 8
    assert sink.stats.points_refused == 8
