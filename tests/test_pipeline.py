"""The pipeline end to end in-process: dedup, commutativity, restarts, isolation, gauges,
roll-ups, retention and the checkpoint, on the real corpus and on hand-made messages."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import bundled, corpus_messages

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter as CounterMetric
from statscache_exporter.plugin import Gauge, Output, Plugin
from statscache_exporter.store import StoreError


def unique_by_id(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The corpus reuses some fedmsg test ids for different bodies; keep the first of each
    (ids counted by msg_id/id; messages without an id are all distinct)."""
    seen: set[str] = set()
    out = []
    for m in messages:
        mid = m.get("msg_id") or m.get("id")
        if mid:
            if mid in seen:
                continue
            seen.add(mid)
        out.append(m)
    return out


def fedmsg(topic: str, ts: float, mid: str, **body: Any) -> dict[str, Any]:
    return {"topic": topic, "msg": body, "timestamp": ts, "msg_id": mid}


def totals(pipeline: Any, metric: str) -> dict[str, float]:
    return pipeline.store.totals_by_metric(metric)


# --- dedup and order -------------------------------------------------------------------------


def test_replaying_twice_counts_nothing_twice(open_store: Any) -> None:
    p = open_store()
    msgs = corpus_messages()
    outcomes = Counter(p.handle(m) for m in msgs)
    p.flush()
    first = p.store.dump()
    again = Counter(p.handle(m) for m in msgs)
    p.flush()
    assert again == {"duplicate": outcomes["processed"] + outcomes["duplicate"], "rejected": 24}
    assert p.store.dump() == first


def test_replay_twice_across_a_restart(open_store: Any) -> None:
    msgs = corpus_messages()
    p = open_store()
    for m in msgs:
        p.handle(m)
    p.close()
    first_totals = open_store().store.dump()["totals"]
    q = open_store()
    assert Counter(q.handle(m) for m in msgs)["processed"] == 0
    q.flush()
    assert q.store.dump()["totals"] == first_totals


KEEP_ALL = {"1s": "forever", "1m": "forever", "1h": "forever", "1d": "forever"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_order_gives_identical_store(open_store: Any, seed: int) -> None:
    """Retention is off here: pruning depends on when it runs, by design not commutative."""
    msgs = unique_by_id(corpus_messages())
    ordered = open_store("ordered.sqlite", store={"retention": KEEP_ALL})
    for m in msgs:
        ordered.handle(m)
    ordered.flush()
    shuffled_msgs = list(msgs)
    random.Random(seed).shuffle(shuffled_msgs)
    # Flushing at other points too: every 37 messages.
    shuffled = open_store("shuffled.sqlite", store={"max_batch": 37, "retention": KEEP_ALL})
    for m in shuffled_msgs:
        shuffled.handle(m)
    shuffled.flush()
    a, b = ordered.store.dump(), shuffled.store.dump()
    assert a["buckets"] and a["totals"]
    assert a == b


def test_restart_goes_on_from_stored_totals(open_store: Any) -> None:
    msgs = unique_by_id(corpus_messages())
    whole = open_store("whole.sqlite", store={"retention": KEEP_ALL})
    for m in msgs:
        whole.handle(m)
    whole.flush()
    half = len(msgs) // 2
    first = open_store("split.sqlite", store={"retention": KEEP_ALL})
    for m in msgs[:half]:
        first.handle(m)
    first.close()
    second = open_store("split.sqlite", store={"retention": KEEP_ALL})
    assert second.aggregator.totals  # restored, not empty
    for m in msgs[half:]:
        second.handle(m)
    second.flush()
    assert second.store.dump() == whole.store.dump()
    assert second.aggregator.totals == whole.aggregator.totals


def test_a_resume_point_is_committed_with_the_flush_and_only_with_it(open_store: Any) -> None:
    """A reader's resume point lands in the same transaction as the counts before it: a flush
    that fails leaves the old one, and a pipeline closed without flushing left none."""
    msgs = unique_by_id(corpus_messages())[:3]
    p = open_store("resume.sqlite")
    assert p.store.resume_point("import") is None
    p.handle(msgs[0])
    p.resume("import", "after-0")
    assert p.store.resume_point("import") is None  # not before the flush
    p.flush()
    assert p.store.resume_point("import") == "after-0"
    p.handle(msgs[1])
    p.resume("import", "after-1")
    p.store.db.execute(
        "CREATE TRIGGER fail BEFORE INSERT ON seen BEGIN SELECT RAISE(FAIL, 'x'); END"
    )
    with pytest.raises(StoreError):
        p.flush()
    assert p.store.resume_point("import") == "after-0"
    p.store.db.execute("DROP TRIGGER fail")
    p.flush()  # the failed flush's batch, resume point included, goes with the next
    assert p.store.resume_point("import") == "after-1"
    assert p.store.resume_point("other") is None


# --- plugin isolation ------------------------------------------------------------------------


class Exploding(Plugin):
    """Emits, then raises on every message whose topic mentions bodhi."""

    ident = "exploding"
    name = "Exploding"
    summary = "raises on bodhi"
    metrics = (CounterMetric("exploding_seen", "messages before the explosion"),)

    def process(self, message: Message, out: Output) -> None:
        out.inc("exploding_seen")
        if "bodhi" in message.topic:
            raise RuntimeError("boom")


class Misdeclared(Plugin):
    """Emits in every wrong way, one per category."""

    ident = "misdeclared"
    name = "Misdeclared"
    summary = "emits what it did not declare"
    metrics = (
        CounterMetric("mis_counter", "a counter", ("kind",)),
        Gauge("mis_gauge", "a gauge"),
    )

    def process(self, message: Message, out: Output) -> None:
        mistakes = {
            "bodhi": lambda: out.inc("undeclared"),
            "buildsys": lambda: out.inc("mis_counter", wrong="x"),
            "copr": lambda: out.inc("mis_counter", kind=3),  # type: ignore[arg-type]
            "pagure": lambda: out.inc("mis_gauge"),
            "anitya": lambda: out.inc("mis_counter", -1, kind="x"),
            "compose": lambda: out.set("mis_gauge", float("nan")),
        }
        mistake = mistakes.get(message.category or "")
        if mistake:
            mistake()
        else:
            out.inc("mis_counter", kind="ok")


def independent_category(topic: str) -> str:
    parts = topic.split(".")
    return parts[3] if len(parts) >= 4 and parts[2] in ("prod", "stg", "dev", "stage") else parts[0]


def test_a_plugin_that_raises_does_not_stop_the_others(open_store: Any) -> None:
    plugins = {**bundled(), "exploding": Exploding, "misdeclared": Misdeclared}
    p = open_store(plugins=plugins)
    processed = [m for m in unique_by_id(corpus_messages()) if p.handle(m) == "processed"]
    p.flush()
    assert totals(p, "messages") == {"{}": len(processed)}
    bodhi = sum(1 for m in processed if "bodhi" in m["topic"])
    assert bodhi > 0
    assert p.stats.plugin_errors["exploding"] == bodhi
    # what a plugin emitted before raising is discarded with the message
    assert totals(p, "exploding_seen") == {"{}": len(processed) - bodhi}
    categories = Counter(independent_category(m["topic"]) for m in processed)
    wrong = sum(categories[c] for c in ("bodhi", "buildsys", "copr", "pagure", "anitya", "compose"))
    assert p.stats.plugin_errors["misdeclared"] == wrong
    assert totals(p, "mis_counter") == {'{"kind":"ok"}': len(processed) - wrong}


# --- gauges, buckets and totals --------------------------------------------------------------


class LastStatus(Plugin):
    ident = "last_status"
    name = "Last status"
    summary = "the status in the newest message"
    metrics = (Gauge("last_status", "status of the newest message", ("thing",)),)

    def process(self, message: Message, out: Output) -> None:
        out.set("last_status", message.body["status"], thing=message.body["thing"])


T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def test_gauge_keeps_the_newest_message_value_whatever_the_order(open_store: Any) -> None:
    msgs = [
        fedmsg("org.fedoraproject.prod.x.y", T0 + 5, "m5", status=5, thing="a"),
        fedmsg("org.fedoraproject.prod.x.y", T0 + 1, "m1", status=1, thing="a"),
        fedmsg("org.fedoraproject.prod.x.y", T0 + 3, "m3", status=3, thing="a"),
        # same second as m5, larger id: wins the tie
        fedmsg("org.fedoraproject.prod.x.y", T0 + 5, "m6", status=6, thing="a"),
    ]
    results = []
    for i, order in enumerate([msgs, msgs[::-1], [msgs[2], msgs[0], msgs[3], msgs[1]]]):
        p = open_store(f"g{i}.sqlite", plugins={"last_status": LastStatus})
        for m in order:
            p.handle(m)
            p.flush()  # a flush between each: the store's own comparison must hold too
        results.append(p.store.dump())
        assert totals(p, "last_status") == {'{"thing":"a"}': 6.0}
        one_minute = [b for b in p.store.dump()["buckets"] if b[2] == 60]
        assert [b[4] for b in one_minute] == [6.0]
        per_second = {b[3]: b[4] for b in p.store.dump()["buckets"] if b[2] == 1}
        assert per_second == {int(T0) + 1: 1.0, int(T0) + 3: 3.0, int(T0) + 5: 6.0}
    assert results[0] == results[1] == results[2]


def test_a_late_older_message_does_not_overwrite_a_restored_gauge(open_store: Any) -> None:
    p = open_store(plugins={"last_status": LastStatus})
    p.handle(fedmsg("a.prod.x.y", T0 + 10, "new", status=10, thing="a"))
    p.close()
    q = open_store(plugins={"last_status": LastStatus})
    q.handle(fedmsg("a.prod.x.y", T0 + 2, "old", status=2, thing="a"))
    q.flush()
    assert totals(q, "last_status") == {'{"thing":"a"}': 10.0}


def test_buckets_at_every_resolution_sum_to_the_totals(open_store: Any) -> None:
    rng = random.Random(7)
    stamps = [T0 + rng.uniform(0, 3 * 86400) for _ in range(500)]
    msgs = [
        fedmsg(f"org.fedoraproject.prod.{rng.choice(['bodhi', 'koji', 'copr'])}.e", ts, f"id{i}")
        for i, ts in enumerate(stamps)
    ]
    p = open_store(store={"max_batch": 50, "retention": KEEP_ALL})
    for m in msgs:
        p.handle(m)
    p.flush()
    buckets = p.store.dump()["buckets"]
    for res in (1, 60, 3600, 86400):
        expected = Counter(int(ts // res) * res for ts in stamps)
        got = {b[3]: b[4] for b in buckets if b[0] == "messages" and b[2] == res}
        assert got == dict(expected), res
        by_cat = Counter()
        for b in buckets:
            if b[0] == "messages_by_category" and b[2] == res:
                by_cat[json.loads(b[1])["category"]] += b[4]
        want = Counter(m["topic"].split(".")[3] for m in msgs)
        assert by_cat == want
    assert totals(p, "messages") == {"{}": 500}


def test_bucket_boundaries_are_aligned_to_the_utc_epoch(open_store: Any) -> None:
    day = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    p = open_store()
    p.handle(fedmsg("org.fedoraproject.prod.bodhi.x", day - 0.5, "before-midnight"))
    p.handle(fedmsg("org.fedoraproject.prod.bodhi.x", day, "at-midnight"))
    p.flush()
    daily = {b[3]: b[4] for b in p.store.dump()["buckets"] if b[0] == "messages" and b[2] == 86400}
    assert daily == {int(day) - 86400: 1, int(day): 1}


# --- rejection, failure, retention, checkpoint -----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf-8", "not_json"),
        ("{not json", "not_json"),
        ("[1, 2]", "not_object"),
        ({"msg": {}, "timestamp": 1}, "no_topic"),
        ({"topic": "a.prod.b.c", "msg": {}, "timestamp": "yesterday"}, "bad_timestamp"),
        ({"topic": "a.prod.b.c", "msg": [], "timestamp": 1}, "bad_body"),
        ({"topic": "a.prod.b.c"}, "unknown_shape"),
    ],
)
def test_malformed_messages_are_counted_and_the_pipeline_goes_on(
    open_store: Any, raw: Any, reason: str
) -> None:
    p = open_store()
    assert p.handle(raw, "src") == "rejected"
    assert p.stats.rejected == {("src", reason): 1}
    assert p.handle(fedmsg("org.fedoraproject.prod.bodhi.x", T0, "ok")) == "processed"
    p.flush()
    assert totals(p, "messages") == {"{}": 1}


def test_future_timestamps_are_rejected_beyond_the_clock_skew(open_store: Any) -> None:
    p = open_store(clock=lambda: T0, messages={"max_clock_skew": "1h"})
    assert p.handle(fedmsg("a.prod.b.c", T0 + 3599, "near")) == "processed"
    assert p.handle(fedmsg("a.prod.b.c", T0 + 3601, "far")) == "rejected"
    assert p.stats.rejected_by_reason() == {"future_timestamp": 1}


def test_a_failed_flush_loses_nothing_and_counts_nothing_twice(
    open_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error is a fault the real SQLite cannot be made to show on demand: simulate it."""
    p = open_store(store={"retention": KEEP_ALL})
    msgs = unique_by_id(corpus_messages())
    for m in msgs[:300]:
        p.handle(m)
    real_commit = p.store.commit
    calls = {"n": 0}

    def failing_commit(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        raise StoreError("disk full")

    monkeypatch.setattr(p.store, "commit", failing_commit)
    with pytest.raises(StoreError):
        p.flush()
    monkeypatch.setattr(p.store, "commit", real_commit)
    for m in msgs[300:]:
        p.handle(m)
    p.flush()
    reference = open_store("reference.sqlite", store={"retention": KEEP_ALL})
    for m in msgs:
        reference.handle(m)
    reference.flush()
    assert calls["n"] == 1
    assert p.store.dump() == reference.store.dump()


def test_a_store_dump_names_every_row_that_refers_to_no_series(open_store: Any) -> None:
    """The flush does not have SQLite check references row by row; the dumps the tests
    compare do, so a bucket or total written for a series the store lacks shows up."""
    p = open_store()
    p.handle(fedmsg("org.fedoraproject.prod.bodhi.x", T0, "one"))
    p.flush()
    assert p.store.dump()["dangling"] == []
    p.store.db.execute(
        "INSERT INTO buckets (resolution, start, series, value) VALUES (1, 0, 999999, 1)"
    )
    p.store.db.execute("INSERT INTO totals (series, value) VALUES (999998, 1)")
    assert sorted(row[0] for row in p.store.dump()["dangling"]) == ["buckets", "totals"]


def test_retention_prunes_relative_to_the_newest_message(open_store: Any) -> None:
    p = open_store(store={"retention": {"1s": "1h", "1m": "1d", "1h": "forever", "1d": "forever"}})
    p.handle(fedmsg("a.prod.b.c", T0 - 7200, "old"))
    p.handle(fedmsg("a.prod.b.c", T0, "new"))
    p.flush()
    p._last_prune = 0.0
    p._maybe_prune()
    kept = {(b[2], b[3]) for b in p.store.dump()["buckets"] if b[0] == "messages"}
    assert (1, int(T0)) in kept and (1, int(T0) - 7200) not in kept
    assert (60, int(T0) - 7200) in kept
    assert totals(p, "messages") == {"{}": 2}


def test_checkpoint_is_stored_with_the_flush_and_never_moves_back(open_store: Any) -> None:
    p = open_store()
    assert p.store.covered_until() is None
    t1 = datetime(2024, 3, 1, 12, tzinfo=UTC)
    p.cover(t1)
    p.flush()
    assert p.store.covered_until() == t1
    p.cover(t1 - timedelta(hours=1))
    p.flush()
    assert p.store.covered_until() == t1
    p.cover(t1 + timedelta(seconds=30))
    p.flush()
    assert p.store.covered_until() == t1 + timedelta(seconds=30)
