"""`statscache-exporter backfill`: a manual range from a real datagrepper into the store."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import datagrepper as harness
import pytest
import yaml
from conftest import scaled_messages
from test_cli import run_cli

from statscache_exporter.message import category_of

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def dg(datagrepper_session: harness.Datagrepper) -> harness.Datagrepper:
    """The session's datagrepper (conftest.py), for this module's tests."""
    return datagrepper_session


def config_for(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.yaml"
    data = {
        "store": {"path": str(tmp_path / "store.sqlite")},
        "backfill": {"url": url, "window": "10m", "retry_initial": "10ms", "retries": 2},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def totals_by_category(store: Path) -> Counter[str]:
    db = sqlite3.connect(store)
    try:
        rows = db.execute(
            "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.metric = 'messages_by_category'"
        )
        return Counter({json.loads(labels)["category"]: int(n) for labels, n in rows})
    finally:
        db.close()


def test_backfill_fetches_the_range_once_and_skips_it_the_second_time(
    dg: harness.Datagrepper, tmp_path: Path
) -> None:
    dg.reset()
    messages = scaled_messages(120, seed=71)
    for i, m in enumerate(messages):  # 120 messages over an hour, some seconds shared
        m["timestamp"] = T0 + (i // 3) * 90
    dg.add(messages)
    outside = scaled_messages(5, seed=72)
    for m in outside:
        m["timestamp"] = T0 + 7200  # after --until: not fetched
    dg.add(outside)
    config = config_for(tmp_path, dg.url)
    args = ["backfill", "--config", str(config), "--since", "2026-01-01T00:00:00Z"]
    args += ["--until", str(T0 + 3600), "--json"]

    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["fetched"], summary["processed"], summary["duplicates"]) == (120, 120, 0)
    expected = Counter(category_of(m["topic"]) or "" for m in messages)
    assert totals_by_category(tmp_path / "store.sqlite") == expected

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["processed"], summary["duplicates"]) == (0, 120)
    assert totals_by_category(tmp_path / "store.sqlite") == expected


def test_dry_run_lists_the_windows_and_fetches_nothing(tmp_path: Path) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9")  # nothing listens: must not be asked
    done = run_cli(
        "backfill", "--config", str(config), "--since", str(T0), "--until", str(T0 + 1800),
        "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "would fetch 3 windows from http://127.0.0.1:9:",
        "  2026-01-01T00:00:00Z to 2026-01-01T00:10:00Z",
        "  2026-01-01T00:10:00Z to 2026-01-01T00:20:00Z",
        "  2026-01-01T00:20:00Z to 2026-01-01T00:30:00Z",
    ]
    assert not (tmp_path / "store.sqlite").exists()


def test_a_datagrepper_that_does_not_answer_is_an_error_naming_the_window(tmp_path: Path) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9")
    done = run_cli("backfill", "--config", str(config), "--since", str(T0), "--until", str(T0 + 60))
    assert done.returncode == 1
    assert "the window 2026-01-01T00:00:00Z to 2026-01-01T00:01:00Z failed 2 times" in done.stderr
    assert "http://127.0.0.1:9/raw" in done.stderr


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("yesterday", "'yesterday' is neither an ISO 8601 time"),
        ("2026-01-01T00:00:00", "has no time zone"),
    ],
)
def test_bad_times_are_usage_errors(tmp_path: Path, since: str, message: str) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9")
    done = run_cli("backfill", "--config", str(config), "--since", since)
    assert done.returncode == 2 and message in done.stderr
