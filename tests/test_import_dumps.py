"""``statscache-exporter import FILE.tar...``: Fedora's daily incremental CSV dumps, without a
database. The dumps are made here from the database of tests/history_data.py with PostgreSQL's
``COPY (...) TO STDOUT WITH CSV HEADER``, in Fedora's layout: one tar a UTC day, a folder
``YYYY-MM-DD-datanommer-incremental/`` with ``YYYY-MM-DD-<table>.csv`` for messages, users,
packages and both join tables, and ``-alembic_version.txt``. A day's users and packages files
hold only the names new that day (the first day's: those it uses), so the second day's
messages name users only the first dump resolves.

Each import must give exactly the store of the database import (buckets, totals, ids, gauges'
times and ids); a reference no table resolves is counted and named, never fatal; stopped in the
middle, the same command goes on from its resume point.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import datagrepper as harness
import history_data as hd
import psycopg
import pytest
from conftest import bundled, make_config
from test_import_datanommer import dump, totals

from statscache_exporter.history import import_database, import_dumps
from statscache_exporter.pipeline import open_pipeline

pytestmark = pytest.mark.integration

TABLES = ("messages", "users", "packages", "users_messages", "packages_messages")


@pytest.fixture(scope="module")
def data(datagrepper_session: harness.Datagrepper) -> hd.History:
    return hd.history(datagrepper_session)


def copy_csv(conn: psycopg.Connection[Any], query: str) -> bytes:
    out = bytearray()
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT WITH CSV HEADER") as copy:  # type: ignore[arg-type]
        for chunk in copy:
            out += chunk
    return bytes(out)


def day_tables(url: str, day: date, first: bool) -> dict[str, bytes]:
    """The five CSV files of one day, as Fedora's incremental dump holds them."""
    lo = datetime(day.year, day.month, day.day)  # noqa: DTZ001 (naive UTC, as datanommer's)
    hi = lo + timedelta(days=1)
    day_of = f"timestamp >= '{lo.isoformat()}' AND timestamp < '{hi.isoformat()}'"
    join_of = f"msg_timestamp >= '{lo.isoformat()}' AND msg_timestamp < '{hi.isoformat()}'"
    # names new that day: used that day and not on any day before
    new = (
        "SELECT * FROM {names} WHERE id IN (SELECT {key} FROM {join} WHERE {join_of}) "
        + ("" if first else "AND id NOT IN (SELECT {key} FROM {join} WHERE msg_timestamp < "
           f"'{lo.isoformat()}')")
        + " ORDER BY id"
    )  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return {
            "messages": copy_csv(conn, f"SELECT * FROM messages WHERE {day_of} ORDER BY id"),
            "users": copy_csv(conn, new.format(names="users", key="user_id",
                                               join="users_messages", join_of=join_of)),
            "packages": copy_csv(conn, new.format(names="packages", key="package_id",
                                                  join="packages_messages", join_of=join_of)),
            "users_messages": copy_csv(conn, f"SELECT * FROM users_messages WHERE {join_of}"),
            "packages_messages": copy_csv(
                conn, f"SELECT * FROM packages_messages WHERE {join_of}"
            ),
        }  # fmt: skip


def write_tar(path: Path, day: date, tables: dict[str, bytes]) -> Path:
    folder = f"{day.isoformat()}-datanommer-incremental"
    files = {f"{day.isoformat()}-{t}.csv": body for t, body in tables.items()}
    files[f"{day.isoformat()}-alembic_version.txt"] = b"a7d5fa8a9c21\n"
    mode = {".gz": "w:gz", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for name, body in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


@pytest.fixture(scope="module")
def days(data: hd.History) -> list[tuple[date, dict[str, bytes]]]:
    first = datetime.fromtimestamp(data.start, UTC).date()
    second = datetime.fromtimestamp(data.end, UTC).date()
    assert second == first + timedelta(days=1), "the data crosses one midnight"
    return [
        (first, day_tables(data.url, first, True)),
        (second, day_tables(data.url, second, False)),
    ]


def tars(home: Path, days: list[tuple[date, dict[str, bytes]]], suffix: str = ".tar") -> list[Path]:
    home.mkdir(parents=True, exist_ok=True)
    return [
        write_tar(home / f"{d.isoformat()}-datanommer-incremental-csv{suffix}", d, tables)
        for d, tables in days
    ]


@pytest.fixture(scope="module")
def from_database(data: hd.History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of the database import (in this process)."""
    store = tmp_path_factory.mktemp("db") / "store.sqlite"
    pipeline = open_pipeline(make_config(store), bundled())
    try:
        assert import_database(pipeline, data.url, None, None, threading.Event()).complete
    finally:
        pipeline.close()
    return store


def run_cli(store: Path, files: list[Path]) -> dict[str, Any]:
    config = store.parent / "config.yaml"
    config.write_text(json.dumps({"store": {"path": str(store)}, "http": {"enabled": False}}))
    done = subprocess.run(
        [sys.executable, "-m", "statscache_exporter", "import", "--config", str(config),
         "--json", *map(str, files)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_the_days_dumps_are_in_fedoras_layout(
    days: list[tuple[date, dict[str, bytes]]], tmp_path: Path, data: hd.History
) -> None:
    paths = tars(tmp_path, days)
    with tarfile.open(paths[1]) as tar:
        names = sorted(tar.getnames())
    d = days[1][0].isoformat()
    assert names == sorted(
        f"{d}-datanommer-incremental/{d}-{t}"
        for t in (*(f"{t}.csv" for t in TABLES), "alembic_version.txt")
    )
    header = days[0][1]["messages"].split(b"\n", 1)[0].decode()
    assert header.split(",")[:5] == ["id", "msg_id", "i", "topic", "timestamp"]
    rows = sum(body.count(b"\n") for _, t in days for body in [t["messages"]])
    assert rows > len(data.sent)  # the rows (some hold newlines in quotes) and the headers
    # the second day's users file leaves out users the first day introduced
    assert len(days[1][1]["users"].splitlines()) < len(days[0][1]["users"].splitlines())


def test_the_dumps_import_to_the_store_of_the_database_import(
    days: list[tuple[date, dict[str, bytes]]], tmp_path: Path, from_database: Path,
    data: hd.History,
) -> None:  # fmt: skip
    paths = tars(tmp_path / "tars", days)
    summary = run_cli(tmp_path / "store.sqlite", paths[::-1])  # given out of date order
    assert summary["dumps"] == [p.name for p in paths]  # read in date order
    assert summary["dumps_done"] == summary["dumps"]
    assert summary["processed"] == len(data.sent)
    assert (summary["unresolved_total"], summary["duplicates"]) == (0, 0)
    assert dump(tmp_path / "store.sqlite") == dump(from_database)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz"])
def test_compressed_dumps_import_alike(
    days: list[tuple[date, dict[str, bytes]]], tmp_path: Path, from_database: Path, suffix: str
) -> None:
    summary = run_cli(tmp_path / "store.sqlite", tars(tmp_path / "tars", days, suffix))
    assert summary["unresolved_total"] == 0
    assert dump(tmp_path / "store.sqlite") == dump(from_database)


def test_a_reference_no_table_resolves_is_counted_and_named(
    days: list[tuple[date, dict[str, bytes]]], tmp_path: Path, data: hd.History
) -> None:
    """The second day alone: the users and packages the first day introduced are unknown."""
    summary = run_cli(tmp_path / "store.sqlite", tars(tmp_path / "tars", days[1:]))
    missing: Counter[tuple[str, int]] = Counter()
    for kind in ("users", "packages"):
        known = {int(r.split(",")[0]) for r in days[1][1][kind].decode().splitlines()[1:]}
        for row in days[1][1][f"{kind}_messages"].decode().splitlines()[1:]:
            ref = int(row.split(",")[0])
            if ref not in known:
                missing[(kind, ref)] += 1
    assert missing, "the second day names users and packages of the first"
    assert summary["unresolved_total"] == sum(missing.values())
    for kind in ("users", "packages"):
        named = summary["unresolved"][kind]
        assert named and all(missing[(kind, int(k))] == n for k, n in named.items())
    # the messages are counted all the same, only without those names
    (day_rows,) = hd.sql(
        data.url, "SELECT count(*) FROM messages WHERE timestamp >= %s",
        (datetime(days[1][0].year, days[1][0].month, days[1][0].day),),  # noqa: DTZ001
    )  # fmt: skip
    assert summary["processed"] == day_rows[0] > 0
    assert totals(tmp_path / "store.sqlite", "messages")[""] == day_rows[0]


def test_a_stopped_dump_import_goes_on_from_its_resume_point(
    days: list[tuple[date, dict[str, bytes]]], tmp_path: Path, from_database: Path,
    data: hd.History,
) -> None:  # fmt: skip
    paths = tars(tmp_path / "tars", days)
    cfg = make_config(tmp_path / "store.sqlite")
    stop = threading.Event()

    def progress(stats: Any, done: bool = False) -> None:
        if stats.messages >= 5000:
            stop.set()

    pipeline = open_pipeline(cfg, bundled())
    try:
        first = import_dumps(pipeline, paths, None, None, stop, progress)
    finally:
        pipeline.close()
    assert not first.complete
    stored = len(dump(tmp_path / "store.sqlite")["seen"])
    assert 5000 <= stored < len(data.sent)
    pipeline = open_pipeline(cfg, bundled())
    try:
        second = import_dumps(pipeline, paths, None, None, threading.Event())
        duplicates = pipeline.stats.duplicates["import"]
    finally:
        pipeline.close()
    assert second.complete and duplicates == 0
    assert second.stats.messages == len(data.sent) - stored
    assert dump(tmp_path / "store.sqlite") == dump(from_database)
