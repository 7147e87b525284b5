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

from statscache_exporter.influx import InfluxSink, LineBuilder, WriteResult
from statscache_exporter.pipeline import influx_sink_for
from statscache_exporter.store import Outbox, Pending, SeriesInfo

T0 = 1_700_000_000


class Scripted:
    """A writer that records what it is sent and answers from a script (default: 204)."""

    def __init__(self, answers: Sequence[WriteResult] = (), refuse: str | None = None) -> None:
        self.answers = list(answers)
        self.refuse = refuse
        self.batches: list[list[str]] = []

    def write(self, lines: Sequence[str]) -> WriteResult:
        self.batches.append(list(lines))
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


def test_line_builder_escapes_with_point_and_formats_fields() -> None:
    lb = LineBuilder("statscache_", {"instance": "a b"})
    lb.learn(1, SeriesInfo("messages_by_user", json.dumps({"user": 'o"b, x=y é'}), "counter"))
    lb.learn(2, SeriesInfo("level", json.dumps({"thing": "t"}), "gauge"))
    lb.learn(3, SeriesInfo("messages_by_user", json.dumps({"user": "new\nline"}), "counter"))
    assert lb.line(Pending(T0, 1, 3.0)) == (
        'statscache_messages_by_user,instance=a\\ b,user=o"b\\,\\ x\\=y\\ é count=3i ' + str(T0)
    )
    assert lb.line(Pending(T0, 2, 2.5)) == f"statscache_level,instance=a\\ b,thing=t value=2.5 {T0}"
    assert lb.line(Pending(T0, 3, 1.0)) is None  # line protocol cannot carry a newline
    assert lb.known(1) and not lb.known(4)


def test_only_base_resolution_buckets_are_queued_and_sent_with_full_counts(open_store: Any) -> None:
    p = open_store(influxdb=influx_section())
    for i in range(3):
        p.handle(fedmsg(i, T0 + 0.5))  # three messages in one second
    p.handle(fedmsg(3, T0 + 1.2))
    p.flush()
    writer = Scripted()
    sink = sink_for(p, writer)
    outbox = Outbox(p.store.path, 1)
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
    outbox = Outbox(p.store.path, 1)
    read = outbox.next_batch(100)
    assert len(read.rows) == 6  # 2 seconds x (volume, category, topic)
    p.handle(fedmsg(2, T0 + 0.3))  # second T0 changes before the ack...
    p.handle(fedmsg(3, T0 + 3))  # ...and a new second inside the batch's key range appears
    p.flush()
    outbox.acknowledge_batch(read)  # unqueues only what it read, as it read it
    infos = outbox.series_info(range(1, 10))
    messages = next(sid for sid, info in infos.items() if info.metric == "messages")
    again = [(r.start, r.value) for r in outbox.next_batch(100).rows if r.series == messages]
    assert again == [(T0, 2), (T0 + 3, 1)]
    assert len(outbox_rows(p.store.path)) == 6  # T0 and T0+3, three series each


def test_reading_ahead_of_an_unacknowledged_batch(open_store: Any) -> None:
    p = open_store(influxdb=influx_section())
    for i in range(10):
        p.handle(fedmsg(i, T0 + i))
    p.flush()
    outbox = Outbox(p.store.path, 1)
    first = outbox.next_batch(12)
    second = outbox.next_batch(12, after=first.last)
    rest = outbox.next_batch(100, after=second.last)
    keys = [(r.start, r.series) for b in (first, second, rest) for r in b.rows]
    assert len(keys) == 30 and keys == sorted(set(keys))


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
    outbox = Outbox(p.store.path, 1)
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
    outbox = Outbox(p.store.path, 1)
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
    outbox = Outbox(p.store.path, 1)
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
