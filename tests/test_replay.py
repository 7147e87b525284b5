"""Replay: file formats, the CLI summary against counts made independently from the input, and
a replay killed with SIGKILL at random points that still ends with exact totals."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, REPO, corpus_messages, scaled_messages

from statscache_exporter.sources.replay import ReplayError, read


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "statscache_exporter", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def config_file(tmp_path: Path, store: Path, **store_keys: Any) -> Path:
    cfg = tmp_path / "config.yaml"
    keys = "".join(f"  {k}: {v}\n" for k, v in store_keys.items())
    cfg.write_text(f"store:\n  path: {store}\n{keys}logging:\n  level: ERROR\n")
    return cfg


# --- formats -----------------------------------------------------------------------------------


def test_reads_json_lines_gzip_pages_lists_and_documents(tmp_path: Path) -> None:
    msgs = corpus_messages()[:5]
    page = json.loads((DATA / "datagrepper_raw_page_2017.json").read_text())
    plain = write_jsonl(tmp_path / "a.jsonl", msgs)
    zipped = tmp_path / "b.log"  # gzip recognised by content, not name
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    pretty_page = tmp_path / "page.json"
    pretty_page.write_text(json.dumps(page, indent=2))
    pages_as_lines = write_jsonl(tmp_path / "pages.jsonl", [page, page])
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps(msgs, indent=1))
    assert list(read(plain)) == msgs
    assert list(read(zipped)) == msgs
    assert list(read(pretty_page)) == page["raw_messages"]
    assert list(read(pages_as_lines)) == page["raw_messages"] * 2
    assert list(read(listing)) == msgs


def test_bad_lines_are_handed_on_as_text_to_be_rejected(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    good = corpus_messages()[0]
    f.write_text('{"broken": \n' + json.dumps(good) + "\n\nnot json at all\n")
    assert list(read(f)) == ['{"broken": ', good, "not json at all"]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert list(read(empty)) == []
    with pytest.raises(ReplayError, match=r"nope\.jsonl"):
        list(read(tmp_path / "nope.jsonl"))


# --- the CLI summary against independent counts -----------------------------------------------


def independent_counts(items: list[dict[str, Any]]) -> dict[str, Any]:
    """What a replay of ``items`` must count, worked out without the exporter's code:
    no timestamp → rejected; an id (or, without one, the same topic/time/body) seen before →
    duplicate; the category is part 4 of a prefixed topic (part 3 is the environment)."""
    seen: set[str] = set()
    rejected = duplicates = 0
    topics: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    for m in items:
        when = m.get("timestamp") if "msg" in m else m.get("headers", {}).get("sent-at")
        if when is None:
            rejected += 1
            continue
        key = (
            m.get("msg_id")
            or m.get("id")
            or json.dumps([m["topic"], when, m["msg"]], sort_keys=True)
        )
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        parts = m["topic"].split(".")
        topics[m["topic"]] += 1
        env = len(parts) >= 4 and parts[2] in ("prod", "stg", "dev", "stage")
        categories[parts[3] if env else parts[0]] += 1
    return {
        "rejected": rejected,
        "duplicates": duplicates,
        "topics": topics,
        "categories": categories,
    }


def test_replay_of_the_whole_corpus_prints_a_summary_matching_the_input(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    cfg = config_file(tmp_path, store)
    corpus = REPO / "examples" / "corpus.jsonl.gz"
    items = [i for i in read(corpus)]
    want = independent_counts(items)
    summary = json.loads(cli("replay", "--config", str(cfg), "--json", str(corpus)).stdout)
    processed = len(items) - want["rejected"] - want["duplicates"]
    assert summary["messages_read"] == len(items)
    assert summary["rejected"] == {"bad_timestamp": want["rejected"]}
    assert summary["duplicates"] == want["duplicates"]
    assert summary["processed"] == processed
    assert summary["plugins"]["volume"] == {"series": 1, "errors": 0}
    assert summary["plugins"]["volume_by_topic"]["series"] == len(want["topics"])
    assert summary["plugins"]["volume_by_category"]["series"] == len(want["categories"])
    db = sqlite3.connect(store)
    rows = db.execute(
        "SELECT s.metric, s.labels, t.value FROM totals t JOIN series s ON s.id = t.series"
    ).fetchall()
    got: dict[str, dict[str, int]] = {}
    for metric, labels, value in rows:
        got.setdefault(metric, {})[next(iter(json.loads(labels).values()), "")] = value
    assert got["messages"] == {"": processed}
    assert got["messages_by_topic"] == dict(want["topics"])
    assert got["messages_by_category"] == dict(want["categories"])
    # and the text summary names every plugin
    text = cli("replay", "--config", str(cfg), str(corpus)).stdout
    assert f"duplicates      {len(items) - want['rejected']:>10}" in text
    for ident in summary["plugins"]:
        assert ident in text


# --- crash safety ------------------------------------------------------------------------------


def store_totals(store: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(store)
    try:
        return sorted(
            db.execute(
                "SELECT s.metric, s.labels, t.value FROM totals t JOIN series s ON s.id = t.series"
            )
        )
    finally:
        db.close()


def seen_count(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT count(*) FROM seen").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_replay_then_restart_ends_with_exact_totals(tmp_path: Path) -> None:
    n = 40_000
    items = scaled_messages(n, seed=11)
    infile = write_jsonl(tmp_path / "in.jsonl", items)
    reference = tmp_path / "reference.sqlite"
    (tmp_path / "r").mkdir()
    cli("replay", "--config", str(config_file(tmp_path / "r", reference)), str(infile))

    crashed = tmp_path / "crashed.sqlite"
    (tmp_path / "c").mkdir()
    cfg = config_file(tmp_path / "c", crashed, max_batch=700)
    rng = random.Random(2024)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "statscache_exporter",
                "replay",
                "--config",
                str(cfg),
                str(infile),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        before = seen_count(crashed)
        target = before + rng.randrange(2_000, 8_000)  # kill after this many more are stored
        deadline = time.monotonic() + 120
        while proc.poll() is None and seen_count(crashed) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        # and somewhere between two flushes (700 messages: ~25 ms at today's speed); a longer
        # wait let a fast replay run to its end before the kill (the four runs must not reach n)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        assert before < seen_count(crashed) < n or proc.returncode == 0
    assert kills >= 3, "the replay finished before it could be killed: make the input larger"
    cli("replay", "--config", str(cfg), str(infile))
    assert seen_count(crashed) == n
    assert store_totals(crashed) == store_totals(reference)
    want = independent_counts(items)
    totals = {(m, lab): v for m, lab, v in store_totals(crashed)}
    assert totals[("messages", "{}")] == n
    for category, count in want["categories"].items():
        assert (
            totals[
                ("messages_by_category", json.dumps({"category": category}, separators=(",", ":")))
            ]
            == count
        )


def test_ctrl_c_mid_replay_keeps_what_was_processed_and_exits_130(tmp_path: Path) -> None:
    n = 30_000
    infile = write_jsonl(tmp_path / "in.jsonl", scaled_messages(n, seed=5))
    store = tmp_path / "store.sqlite"
    cfg = config_file(tmp_path, store, max_batch=500)
    proc = subprocess.Popen(
        [sys.executable, "-m", "statscache_exporter", "replay", "--config", str(cfg), str(infile)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and seen_count(store) < 3_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "replay interrupted; run it again to go on" in err
    stored = seen_count(store)
    assert 3_000 <= stored < n
    assert f"processed       {stored:>10}" in out  # everything processed was flushed
    cli("replay", "--config", str(cfg), str(infile))
    totals = {(m, lab): v for m, lab, v in store_totals(store)}
    assert totals[("messages", "{}")] == n
