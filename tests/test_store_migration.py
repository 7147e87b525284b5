"""A store written by the schema-7 exporter opens in place as schema 8, with nothing lost.

``tests/data/stores/store-v7.sqlite.gz`` was written by the exporter at commit f189a8a (the
last with schema 7), by ``tests/data/stores/make_store_v7.py``: the first 300 corpus messages
replayed in two flushes with the InfluxDB sink on (its outbox left queued) and a checkpoint;
``store-v7.json.gz`` holds what that exporter's ``Store.dump()`` returned then.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import bundled, corpus_messages, make_config

from statscache_exporter.pipeline import open_pipeline
from statscache_exporter.reader import Reader
from statscache_exporter.store import SCHEMA_VERSION

DATA = Path(__file__).parent / "data" / "stores"
KEEP_ALL = {"1s": "forever", "1m": "forever", "1h": "forever", "1d": "forever"}


def written_by_schema_7(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "store.sqlite"
    with gzip.open(DATA / "store-v7.sqlite.gz") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    recorded = json.loads(gzip.decompress((DATA / "store-v7.json.gz").read_bytes()))
    return path, recorded


def as_lists(dump: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dump))


def open_it(path: Path) -> Any:
    cfg = make_config(
        path,
        store={"retention": KEEP_ALL},
        influxdb={"enabled": True, "url": "http://127.0.0.1:1"},
    )
    return open_pipeline(cfg, bundled())


def test_a_schema_7_store_is_migrated_in_place_with_everything_it_held(tmp_path: Path) -> None:
    path, recorded = written_by_schema_7(tmp_path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("7",)
    db.close()
    p = open_it(path)
    try:
        dump = as_lists(p.store.dump())
        assert dump.pop("dangling") == []
        assert dump == recorded["dump"]
        version = p.store.db.execute("SELECT value FROM meta WHERE key='schema_version'")
        assert version.fetchone() == (str(SCHEMA_VERSION),)
        assert p.store.covered_until() is not None
        assert p.store.covered_until().timestamp() == recorded["covered_until"]
        pending, aside, _ = Reader(path).outbox_state()
        assert pending == recorded["outbox_lines"] and aside == 0
        key = [r[1] for r in sorted(p.store.db.execute("PRAGMA table_info(buckets)")) if r[5]]
        assert key == ["resolution", "start", "series"]
        # every id is known again: the same messages are all duplicates
        again = Counter(p.handle(m) for m in corpus_messages()[:300])
        assert set(again) == {"duplicate", "rejected"}  # none processed
        assert again["duplicate"] >= len(recorded["dump"]["seen"])
    finally:
        p.close()


def test_a_migrated_store_goes_on_counting_like_one_that_never_stopped(tmp_path: Path) -> None:
    """The rest of the corpus on the migrated store ends where the whole corpus on a new store
    ends (the first 300 messages were what schema 7 stored)."""
    path, _ = written_by_schema_7(tmp_path)
    migrated = open_it(path)
    for m in corpus_messages()[300:]:
        migrated.handle(m)
    migrated.flush()
    fresh = open_it(tmp_path / "fresh.sqlite")
    msgs = corpus_messages()
    for m in msgs[: len(msgs[:300]) // 2]:
        fresh.handle(m)
    fresh.flush()
    for m in msgs[len(msgs[:300]) // 2 :]:
        fresh.handle(m)
    fresh.flush()
    try:
        assert migrated.store.dump() == fresh.store.dump()
        assert migrated.aggregator.totals == fresh.aggregator.totals
    finally:
        migrated.close()
        fresh.close()
