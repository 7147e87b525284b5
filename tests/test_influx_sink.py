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
from statscache_exporter.outbox import Outbox
from statscache_exporter.pipeline import influx_sink_for
from statscache_exporter.plugin import Counter, Gauge
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


def sink_for(p: Any, writer: Scripted) -> InfluxSink:
    sink = influx_sink_for(p)
    assert sink is not None
    sink.writer = writer
    return sink


def outbox_rows(store: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(store)
    try:
        return sorted(db.execute("SELECT start, seq, failed FROM outbox"))
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


def queued_lines(path: Path) -> dict[tuple[int, str], tuple[int, str | None]]:
    """(start, metric) → (failed, line), for outboxes of one series per metric."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT o.start, s.metric, o.failed, o.line FROM outbox o "
            "JOIN series s ON s.id = o.series"
        )
        return {(start, metric): (failed, line) for start, metric, failed, line in rows}
    finally:
        db.close()


def test_the_flush_queues_each_point_with_its_line(tmp_path: Path) -> None:
    """Counters carry their full count as an integer, gauges their value in its shortest exact
    form; a series line protocol cannot carry is queued as failed, without a line."""
    count, level = Counter("c", "c", ("user",)), Gauge("g", "g")
    odd = Counter("odd", "odd", ("user",))
    series = {
        ("c", ("o b",)): Series("p", count, ("o b",), 0.0),
        ("g", ()): Series("p", level, (), 0.0),
        ("odd", ("a\tb",)): Series("p", odd, ("a\tb",), 0.0),
    }
    store = Store(tmp_path / "s.sqlite")
    keys = LineKeys("x_", {})
    store.prepare_outbox(1, keys.fingerprint, keys.series_key)
    for value, n in ((0.1 + 0.2, 3), (1e21, 4)):
        batch = Batch(series=dict(series))
        batch.counter_deltas = {("c", ("o b",), 1, T0): n, ("odd", ("a\tb",), 1, T0): 1}
        batch.gauge_candidates = {("g", (), 1, T0): GaugeValue(T0 + n, f"m{n}", value)}
        store.commit(batch, [f"m{n}"], outbox_resolution=1)
    assert queued_lines(tmp_path / "s.sqlite") == {
        (T0, "c"): (0, f"x_c,user=o\\ b count=7i {T0}"),
        (T0, "g"): (0, f"x_g value=1e+21 {T0}"),
        (T0, "odd"): (1, None),
    }
    batch = Batch(series=dict(series))
    batch.gauge_candidates = {("g", (), 1, T0 + 1): GaugeValue(T0 + 1, "m9", 0.1 + 0.2)}
    store.commit(batch, ["m9"], outbox_resolution=1)
    assert queued_lines(tmp_path / "s.sqlite")[(T0 + 1, "g")] == (
        0,
        f"x_g value=0.30000000000000004 {T0 + 1}",
    )
    store.close()


def test_new_global_tags_rebuild_the_queued_lines(tmp_path: Path) -> None:
    """Queued points go out with the tags of the configuration that sends them."""
    count = Counter("c", "c", ("user",))
    s = {
        ("c", ("u",)): Series("p", count, ("u",), 0.0),
        ("c", ("a\tb",)): Series("p", count, ("a\tb",), 0.0),
    }
    store = Store(tmp_path / "s.sqlite")
    old = LineKeys("x_", {"instance": "a"})
    store.prepare_outbox(1, old.fingerprint, old.series_key)
    batch = Batch(series=dict(s))
    batch.counter_deltas = {("c", ("u",), 1, T0): 2, ("c", ("a\tb",), 1, T0): 1}
    store.commit(batch, ["m1"], outbox_resolution=1)
    store.close()
    store = Store(tmp_path / "s.sqlite")
    new = LineKeys("x_", {"instance": "b"})
    store.prepare_outbox(1, new.fingerprint, new.series_key)
    store.close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    lines = sorted(db.execute("SELECT failed, line FROM outbox"), key=repr)
    db.close()
    assert lines == [(0, f"x_c,instance=b,user=u count=2i {T0}"), (1, None)]


def test_a_schema_4_outbox_is_carried_over_and_lined(tmp_path: Path) -> None:
    """A store written by the previous version, with points queued: they keep their place,
    get their lines at the next start, and a queued row whose bucket is gone is set aside."""
    path = tmp_path / "s.sqlite"
    count = Counter("c", "c")
    store = Store(path)
    batch = Batch(series={("c", ()): Series("p", count, (), 0.0)})
    batch.counter_deltas = {("c", (), 1, T0): 5, ("c", (), 1, T0 + 1): 6}
    store.commit(batch, ["m1"])
    store.close()
    db = sqlite3.connect(path)  # back to schema 4, as version 4 wrote it
    db.executescript(
        f"""
        DROP TABLE outbox; DROP TABLE influx_keys;
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
    store.prepare_outbox(1, keys.fingerprint, keys.series_key)
    store.close()
    assert queued_lines(path) == {
        (T0, "c"): (0, f"x_c count=5i {T0}"),
        (T0 + 1, "c"): (0, f"x_c count=6i {T0 + 1}"),
        (T0 - 9, "c"): (1, None),  # its bucket is gone: nothing to send
    }


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
    assert outbox_rows(p.store.path) == []
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
    assert len(outbox_rows(p.store.path)) == 6  # T0 and T0+3, three series each


def test_reading_ahead_of_an_unacknowledged_batch(open_store: Any) -> None:
    p = open_store(influxdb=influx_section())
    for i in range(10):
        p.handle(fedmsg(i, T0 + i))
    p.flush()
    outbox = Outbox(p.store.path)
    first = outbox.next_batch(12)
    assert first is not None
    second = outbox.next_batch(12, after=first.last)
    assert second is not None
    rest = outbox.next_batch(100, after=second.last)
    assert rest is not None and outbox.next_batch(100, after=rest.last) is None
    assert [b.count for b in (first, second, rest)] == [12, 12, 6]
    keys = [(p.start, p.series) for b in (first, second, rest) for p in outbox.points(b)]
    assert len(keys) == 30 and keys == sorted(set(keys))
    assert [b.body for b in (first, second, rest)] == [
        "\n".join(p.line for p in outbox.points(b)) for b in (first, second, rest)
    ]


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
    assert len(outbox_rows(p.store.path)) == 3  # volume, by category, by topic: all queued
    assert sink.send_batch(outbox) == 3  # InfluxDB is back
    assert outbox_rows(p.store.path) == [] and sink.stats.connected and sink._backoff == 0.0


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
    refused = [r for r in outbox_rows(p.store.path) if r[2] == 1]
    assert len(refused) == 8  # the eight seconds of category cat3
    assert sink.stats.points_refused == 8
    assert [r for r in outbox_rows(p.store.path) if r[2] == 0] == []
    good_sent = {line for line in writer.lines() if "cat3" not in line}
    assert sum(1 for line in good_sent if line.startswith("statscache_messages,")) == 40


def test_the_outbox_is_bounded_and_the_overflow_counted(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=10, max_pending=10))
    sink = sink_for(p, Scripted())
    sink.stats.pending = 11  # as the sender last saw it
    p.handle(fedmsg(0, T0))
    p.flush()
    assert outbox_rows(p.store.path) == []
    assert p.stats.outbox_overflow == 3  # volume, by category, by topic
    sink.stats.pending = 0
    p.handle(fedmsg(1, T0 + 5))
    p.flush()
    assert len(outbox_rows(p.store.path)) == 3


def test_retention_keeps_buckets_influxdb_has_not_acknowledged(open_store: Any) -> None:
    retention = {"1s": "1h", "1m": "forever", "1h": "forever", "1d": "forever"}
    p = open_store(influxdb=influx_section(), store={"retention": retention})
    p.handle(fedmsg(0, T0 - 7200))
    p.handle(fedmsg(1, T0))
    p.flush()
    p.store.prune(p.config.retention_seconds(), T0, 86400)
    seconds = {b[3] for b in p.store.dump()["buckets"] if b[0] == "messages" and b[2] == 1}
    assert seconds == {T0 - 7200, T0}  # the old one is still queued
    outbox = Outbox(p.store.path)
    sink = sink_for(p, Scripted())
    while sink.send_batch(outbox) > 0:
        pass
    p.store.prune(p.config.retention_seconds(), T0, 86400)
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
    assert len(outbox_rows(p.store.path)) == 3  # still queued for the next start


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
    assert outbox_rows(p.store.path) == [] and sink.stats.points_written == 60


def test_drain_stops_at_a_failed_write_and_keeps_the_rest_queued(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=10))
    many(p, 20)
    down = WriteResult(False, 503, error="unavailable")
    writer = Scripted([WriteResult(True, 204), down])
    sink = sink_for(p, writer)
    assert sink.drain(Outbox(p.store.path)) == -1
    # the first batch is acknowledged; the second failed; the third, read ahead, was not sent
    assert len(writer.batches) == 2
    assert len(outbox_rows(p.store.path)) == 50
    assert sink.drain(Outbox(p.store.path)) == 50  # InfluxDB is back
    assert outbox_rows(p.store.path) == []
    assert set(writer.lines()) >= set(writer.batches[1])


def test_drain_sets_a_refused_line_aside_and_goes_on(open_store: Any) -> None:
    p = open_store(influxdb=influx_section(batch_size=16))
    many(p, 40)
    writer = Scripted(refuse="category=cat3")
    sink = sink_for(p, writer)
    assert sink.drain(Outbox(p.store.path)) == 120
    assert [r for r in outbox_rows(p.store.path) if r[2] == 0] == []
    assert len([r for r in outbox_rows(p.store.path) if r[2] == 1]) == 8
    assert sink.stats.points_refused == 8
