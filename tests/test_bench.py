"""The benchmarks' own machinery (no timings): the scaled corpus generator (bench/corpus.py) is
reproducible, keeps the corpus's topic mix, varies ids, users, packages and timestamps, and the
pipeline reads its messages as meant; bench/report.py builds its table from benchmark JSON."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, REPO

sys.path.insert(0, str(REPO / "bench"))

import corpus
import report

USER_FLAG = "fedora_messaging_user_"
PACKAGE_FLAG = "fedora_messaging_rpm_"


def corpus_topics() -> Counter[str]:
    """The topic of every corpus message, read from tests/data directly."""
    topics = Counter(
        json.loads(line)["envelope"]["topic"] for line in (DATA / "fedmsg_envelopes.jsonl").open()
    )
    page = json.loads((DATA / "datagrepper_raw_page_2017.json").read_text())["raw_messages"]
    topics.update(m["topic"] for m in page)
    topics.update(
        json.loads(line)["message"]["topic"] for line in (DATA / "fedora_messaging.jsonl").open()
    )
    return topics


def message_id(m: dict[str, Any]) -> str:
    return str(m.get("id") or m.get("msg_id"))


def carried(m: dict[str, Any], kind: str) -> list[str]:
    """The users (or packages) a generated message carries, as the bus carries them."""
    flag = USER_FLAG if kind == "users" else PACKAGE_FLAG
    names = [k[len(flag) :] for k in m.get("headers") or {} if k.startswith(flag)]
    return names + list(m.get(kind) or [])


# --- the generator -------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_messages_and_a_shorter_run_is_a_prefix() -> None:
    a = corpus.generate(3000, seed=7)
    assert a == corpus.generate(3000, seed=7)
    assert corpus.generate(1000, seed=7) == a[:1000]
    b = corpus.generate(3000, seed=8)
    assert {message_id(m) for m in a}.isdisjoint(message_id(m) for m in b)


def test_whole_passes_keep_the_corpus_topic_mix_exactly() -> None:
    topics = corpus_topics()
    passes = 3
    n = passes * sum(topics.values())  # 942 corpus messages
    got = Counter(m["topic"] for m in corpus.generate(n, seed=1))
    assert got == Counter({t: passes * c for t, c in topics.items()})
    # part of a pass: every topic between its whole passes and one more
    partial = Counter(m["topic"] for m in corpus.generate(n + 500, seed=1))
    for topic, count in topics.items():
        assert passes * count <= partial[topic] <= (passes + 1) * count


def test_one_kind_keeps_that_kinds_topic_mix() -> None:
    fm = Counter(
        json.loads(line)["message"]["topic"] for line in (DATA / "fedora_messaging.jsonl").open()
    )
    n = 2 * sum(fm.values())
    got = corpus.generate(n, seed=2, kinds=["fedora-messaging"])
    assert Counter(m["topic"] for m in got) == Counter({t: 2 * c for t, c in fm.items()})
    assert all("headers" in m and "body" in m for m in got)


def test_ids_are_fresh_and_timestamps_follow_the_rate() -> None:
    start, rate, n = 1_700_000_000.0, 50.0, 5000
    msgs = corpus.generate(n, seed=3, start=start, rate=rate)
    ids = [message_id(m) for m in msgs]
    assert len(set(ids)) == n
    corpus_ids = {
        m.get("msg_id") for m in map(json.loads, (DATA / "fedmsg_envelopes.jsonl").open())
    }
    assert corpus_ids.isdisjoint(ids)

    def epoch(m: dict[str, Any]) -> float:
        if "body" in m:  # fedora-messaging: sent-at, whole seconds, UTC
            sent = m["headers"]["sent-at"]
            assert sent.endswith("+00:00")
            return datetime.fromisoformat(sent).timestamp()
        return float(m["timestamp"])

    times = [epoch(m) for m in msgs]
    assert min(times) >= start
    assert max(times) <= start + n / rate + 1
    # about `rate` a second: the first and the last tenth are ~90% of the span apart
    first, last = sorted(times[: n // 10]), sorted(times[-n // 10 :])
    assert (last[len(last) // 2] - first[len(first) // 2]) * rate == pytest.approx(
        0.9 * n, rel=0.05
    )
    late = sum(1 for a, b in itertools.pairwise(times) if b < a - 1)
    assert 0 < late < n * 0.1  # some arrive late, most in order


def test_users_and_packages_are_drawn_from_the_populations() -> None:
    msgs = corpus.generate(4000, seed=4, users=300, packages=1000)
    users = Counter(u for m in msgs for u in carried(m, "users"))
    packages = Counter(p for m in msgs for p in carried(m, "packages"))
    assert 100 < len(users) <= 300
    assert 100 < len(packages) <= 1000
    # Zipf: the most named user is named far more often than the median one
    counts = sorted(users.values())
    assert counts[-1] > 5 * counts[len(counts) // 2]
    for m in msgs:  # no name twice in one message
        assert len(carried(m, "users")) == len(set(carried(m, "users")))


def test_skew_0_uses_every_name_of_the_population_in_turn() -> None:
    msgs = corpus.generate(3000, seed=5, users=200, packages=100_000, skew=0)
    users = Counter(u for m in msgs for u in carried(m, "users"))
    assert len(users) == 200
    assert max(users.values()) - min(users.values()) <= 1
    assert sum(1 for m in msgs for _ in carried(m, "packages")) == len(
        {p for m in msgs for p in carried(m, "packages")}
    )  # fewer draws than names: all distinct


def test_the_pipeline_counts_every_generated_message_and_the_names_it_carries(
    open_store: Any,
) -> None:
    """Only the kinds that carry their names (datagrepper items, fedora-messaging header
    flags): the users and packages the store counts are exactly those the messages carry."""
    msgs = corpus.generate(2500, seed=6, users=400, packages=800, kinds=["raw", "fedora-messaging"])
    pipeline = open_store()
    outcomes = Counter(pipeline.handle(json.dumps(m)) for m in msgs)
    pipeline.flush()
    assert outcomes == {"processed": len(msgs)}
    expected_users = Counter(u for m in msgs for u in carried(m, "users"))
    expected_packages = Counter(p for m in msgs for p in carried(m, "packages"))
    got = read_totals(pipeline.config.store.path)
    assert got.get("messages", {}) == {(): len(msgs)}
    assert got["messages_by_user"] == {(u,): n for u, n in expected_users.items()}
    assert got["messages_by_package"] == {(p,): n for p, n in expected_packages.items()}


def read_totals(path: Path) -> dict[str, dict[tuple[str, ...], int]]:
    """Every counter total in the store, by metric and label values, read with SQLite."""
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT s.metric, s.labels, t.value FROM totals t JOIN series s ON s.id = t.series"
        ).fetchall()
    finally:
        db.close()
    out: dict[str, dict[tuple[str, ...], int]] = {}
    for metric, labels, value in rows:
        out.setdefault(metric, {})[tuple(json.loads(labels).values())] = int(value)
    return out


# --- the report ----------------------------------------------------------------------------------


def sample_results(directory: Path) -> None:
    """Benchmark JSON as the benchmarks write it, with figures written by hand."""
    machine = {"cpu": "Test CPU", "nproc": 2, "loadavg": "0.50"}
    files: dict[str, dict[str, Any]] = {
        "pipeline": {
            "benchmark": "pipeline",
            "date": "2026-01-01 00:00 UTC",
            "machine": machine,
            "loadavg_end": "1.00",
            "target_ratio": 0.5,
            "results": [
                {
                    "messages": 10_000,
                    "pipeline_messages_per_second": 9000.0,
                    "loads_messages_per_second": 90000.0,
                    "ratio": 0.1,
                    "us_per_message": 111.1,
                },
                {
                    "messages": 1_000_000,
                    "pipeline_messages_per_second": 60000.0,
                    "loads_messages_per_second": 100000.0,
                    "ratio": 0.6,
                    "us_per_message": 16.7,
                },
            ],
        },
        "memory": {
            "benchmark": "memory",
            "date": "2026-01-01 00:05 UTC",
            "machine": machine,
            "baseline": {"peak_rss_mb": 50.0},
            "results": [
                {"live_series": 10_050, "peak_rss_mb": 80.0},
                {"live_series": 100_100, "peak_rss_mb": 150.0},
            ],
            "target": {"series": 100_100, "peak_rss_mb": 150.0, "target_mb": 200.0, "pass": True},
        },
        "latency": {
            "benchmark": "latency",
            "date": "2026-01-01 00:07 UTC",
            "machine": machine,
            "results": [
                {
                    "rate": 10,
                    "p50_ms": 500.0,
                    "p99_ms": 1500.0,
                    "target_ms": 1250.0,
                    "counted_rate": 10.0,
                    "missing": 0,
                    "pass": False,
                }
            ],
        },
        "amqp_consume": {
            "benchmark": "amqp_consume",
            "date": "2026-01-01 00:09 UTC",
            "machine": {"cpu": "Other CPU", "nproc": 8, "loadavg": "0.1"},
            "messages": 10_000,
            "median_messages_per_second": {"ours": 500.0, "bare": 400.0},
            "ratio": 1.25,
            "target_ratio": 0.9,
        },
    }
    for name, data in files.items():
        (directory / f"{name}.json").write_text(json.dumps(data))
    (directory / "backfill.json").write_text("{not json")


def test_report_builds_one_table_from_the_benchmarks_json(tmp_path: Path, capsys: Any) -> None:
    sample_results(tmp_path)
    assert report.main(["--dir", str(tmp_path)]) == 0
    table = (tmp_path / "README-table.md").read_text()
    assert capsys.readouterr().out == table
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = [
        (
            r["benchmark"],
            r["figure"],
            r["measured"],
            r["compared"],
            r["ratio"],
            r["target"],
            r["result"],
        )
        for r in summary["rows"]
    ]
    assert rows[:3] == [
        (
            "pipeline",
            "messages/s through every plugin into the store, 10,000 messages",
            "9,000",
            "json.loads 90,000/s",
            "0.100",
            "ratio >= 0.5",
            "FAIL",
        ),
        (
            "pipeline",
            "messages/s through every plugin into the store, 1,000,000 messages",
            "60,000",
            "json.loads 100,000/s",
            "0.600",
            "ratio >= 0.5",
            "PASS",
        ),
        (
            "pipeline",
            "time a message at 1,000,000 vs 10,000 messages",
            "16.7 µs",
            "111.1 µs",
            "0.15",
            "<= 1.1 (linear or better)",
            "PASS",
        ),
    ]
    by_figure = {r[1]: r for r in rows}
    assert by_figure["peak RSS at 100,100 live series"][2:] == (
        "150.0 MB",
        "target 200 MB",
        "0.75",
        "<= 200 MB",
        "PASS",
    )
    assert by_figure["peak RSS at 10,050 live series"][-1] == "-"  # no target at 10k
    p99 = next(r for r in rows if r[1].startswith("publish → /metrics p99 at 10 messages/s"))
    assert p99[2:] == ("1,500 ms", "target 1,250 ms", "1.20", p99[5], "FAIL")
    amqp = next(r for r in rows if r[0] == "amqp_consume")
    assert amqp[2:5] == ("500", "bare fedora-messaging consumer 400/s", "1.250")
    # unreadable and missing benchmarks are listed, not dropped
    assert ("backfill", "(unreadable)") in {(r[0], r[1]) for r in rows}
    missing = {r[0] for r in rows if r[1] == "(not run)"}
    assert missing == {"metrics_render", "influx_write"}
    # the machine, and a benchmark measured elsewhere is flagged
    assert table.startswith("Machine: ")
    assert summary["machine"]["nproc"] >= 1 and "kernel" in summary["machine"]
    assert (
        "amqp_consume: 2026-01-01 00:09 UTC" in table and "on another machine: Other CPU" in table
    )
    assert (
        "| pipeline | messages/s through every plugin into the store, 10,000 messages | 9,000 |"
        in table
    )


def test_the_pipeline_benchmarks_fast_lines_decode_to_the_messages() -> None:
    import pipeline as bench_pipeline

    lines = bench_pipeline.Lines()
    for m in corpus.generate(2000, seed=9):
        assert json.loads(lines(m)) == m


def test_report_rows_of_a_history_run_carry_its_growth_tenths_memory_and_store() -> None:
    """make bench-history's JSON (figures written by hand) → its rows: rate at the largest
    size, the growth against its target, the tenths, peak RSS against 300 MB, the store."""
    run = {
        "benchmark": "pipeline-history",
        "target_growth": 1.1,
        "memory": {"target_peak_rss_mb": 300.0},
        "results": [
            {"messages": 10_000, "us_per_message": 50.0},
            {
                "messages": 10_000_000,
                "pipeline_messages_per_second": 16_000.0,
                "loads_messages_per_second": 80_000.0,
                "ratio": 0.2,
                "us_per_message": 60.0,
                "us_per_message_by_tenth": [55.0, 65.0],
                "peak_rss_mb": 330.0,
                "store_bytes": 1_000 * 2**20,
            },
        ],
    }
    rows = [tuple(vars(r).values()) for r in report.pipeline_history_rows(run)]
    name = "pipeline-history"
    assert rows == [
        (name, "messages/s through every plugin into the store, 10,000,000 messages", "16,000",
         "json.loads 80,000/s", "0.200", "-", "-"),
        (name, "time a message at 10,000,000 vs 10,000 messages", "60.0 µs", "50.0 µs",
         "1.20", "<= 1.1", "FAIL"),
        (name, "µs a message over each tenth of the 10,000,000", "55, 65", "-", "-", "-", "-"),
        (name, "peak RSS of the run, 10,000,000 messages", "330 MB", "-", "1.10", "<= 300 MB",
         "FAIL"),
        (name, "store on disk, 10,000,000 messages", "1,000.0 MB", "105 bytes a message", "-",
         "-", "-"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["pipeline.py", "--sizes", "500", "1000"],
        ["metrics_render.py", "--series", "200", "--repeat", "1"],
    ],
    ids=["pipeline", "metrics_render"],
)
def test_the_benchmarks_without_servers_run_through_at_a_tiny_size(
    argv: list[str], tmp_path: Path
) -> None:
    """make bench runs them at full size only: a change to what they build on (the
    aggregator's restore broke metrics_render once) shows here, in seconds. Each writes its
    figures as JSON and exits 0 (its own correctness checks passed)."""
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / argv[0]), *argv[1:], "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text())
