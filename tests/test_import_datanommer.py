"""``statscache-exporter import --datanommer``, and the gap filler reading the database, against
a real PostgreSQL with datanommer's schema (tests/history_data.py: 11,000 messages of both eras
over three hours, one second holding 600, hundreds of tied seconds, stored out of order).

- the store's totals equal counts computed from the database with SQL (volume, per topic, per
  user and package from the join tables, per agent where the database has one), and every
  plugin's store equals that of the same rows read by one plain query and handed to the
  pipeline as datagrepper ``/raw`` items (the pipeline's generic path);
- SIGKILLed mid-import, the same command again ends with the store of an uninterrupted run,
  and reads only what the store did not have (no duplicate: the resume point is exact);
- the database going away mid-import (its backend terminated, connections refused): retried
  with backoff and finished identical; refused for good, a clear error naming the range and the
  committed resume point, and the rerun finishes identical;
- the gap filler with ``backfill.datanommer_url``: windows in order, each row once, checkpoints
  after complete windows; in a daemon with a live fedmsg source, messages also delivered live
  (before the gap filler reaches them and after it counted them) count once.

Dedup rules these tests rely on: a message is counted once per id while the store remembers
its id (``store.dedup_window``, 48 h; the data is a day old) or it is pending in the flush: the
live-overlap test needs that. The kill and outage tests need no dedup at all: they assert the
rerun reads no message twice.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagrepper as harness
import history_data as hd
import psycopg
import pytest
import yaml
import zmq
from conftest import bundled, make_config

from statscache_exporter.backfill import BackfillError, DatanommerBackfill, GapFiller, Range
from statscache_exporter.config import BackfillConfig, DatanommerConfig
from statscache_exporter.daemon import Daemon
from statscache_exporter.history import ImportError_, import_database
from statscache_exporter.pipeline import open_pipeline
from statscache_exporter.store import Store

pytestmark = pytest.mark.integration

DEADLINE = 60.0
REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def data(datagrepper_session: harness.Datagrepper) -> hd.History:
    return hd.history(datagrepper_session)


def config_file(tmp_path: Path, name: str = "store.sqlite", **sections: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    settings: dict[str, Any] = {
        "store": {"path": str(tmp_path / name), "flush_interval": "200ms"},
        "http": {"enabled": False},
        "datanommer": {"batch_size": 250, "retry_initial": "20ms", "retry_max": "200ms"},
        **sections,
    }
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def import_command(config: Path, url: str, *more: str) -> list[str]:
    return [
        sys.executable, "-m", "statscache_exporter", "import", "--config", str(config),
        "--datanommer", url, "--json", *more,
    ]  # fmt: skip


def run_import(config: Path, url: str, *more: str) -> dict[str, Any]:
    done = subprocess.run(
        import_command(config, url, *more), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def dump(store: Path) -> dict[str, Any]:
    s = Store(store)
    try:
        return s.dump()
    finally:
        s.close()


def totals(store: Path, metric: str) -> Counter[str]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.metric = ?",
            (metric,),
        ).fetchall()
    finally:
        db.close()
    out: Counter[str] = Counter()
    for labels, value in rows:
        values = list(json.loads(labels).values())
        out[values[0] if values else ""] = int(value)
    return out


@pytest.fixture(scope="module")
def whole(
    data: hd.History, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """One uninterrupted import of the whole database."""
    home = tmp_path_factory.mktemp("whole")
    summary = run_import(config_file(home), data.url)
    return home / "store.sqlite", summary


def test_the_dataset_is_what_the_issue_asks_for(data: hd.History) -> None:
    (rows,) = hd.sql(data.url, "SELECT count(*) FROM messages")
    assert rows[0] == len(data.sent) >= 10_000
    per_second = Counter(
        int(n) for (n,) in hd.sql(data.url, "SELECT count(*) FROM messages GROUP BY "
                                  "date_trunc('second', timestamp)")
    )  # fmt: skip
    assert max(per_second) > 500
    assert sum(k for n, k in per_second.items() if n > 1) >= 300  # many tied seconds
    (spread,) = hd.sql(
        data.url, "SELECT extract(epoch FROM max(timestamp) - min(timestamp)) FROM messages"
    )
    assert spread[0] > 2.5 * hd.HOUR
    # both eras: fedmsg-era rows (no headers, fedmsg.meta's users) and fedora-messaging rows
    # (headers with sent-at and the schema)
    (eras,) = hd.sql(
        data.url,
        "SELECT count(*) FILTER (WHERE headers IS NULL), "
        "count(*) FILTER (WHERE headers ? 'fedora_messaging_schema') FROM messages",
    )
    assert eras[0] > 5000 and eras[1] > 2000
    assert sum(hd.counted_by(data.url, "user").values()) > 5000
    assert sum(hd.counted_by(data.url, "package").values()) > 5000


def test_an_import_counts_what_the_database_holds(
    data: hd.History, whole: tuple[Path, dict[str, Any]]
) -> None:
    store, summary = whole
    assert summary["processed"] == summary["messages_read"] == len(data.sent)
    assert (summary["duplicates"], summary["rejected_total"]) == (0, 0)
    assert summary["batches"] >= len(data.sent) // 250
    assert totals(store, "messages") == Counter({"": len(data.sent)})
    assert totals(store, "messages_by_topic") == hd.counted_by(data.url, "topic")
    assert totals(store, "messages_by_user") == hd.counted_by(data.url, "user")
    assert totals(store, "messages_by_package") == hd.counted_by(data.url, "package")
    # an agent the database has is the one counted (one it lacks is the schema class's)
    by_agent = totals(store, "messages_by_agent")
    for agent, n in hd.counted_by(data.url, "agent").items():
        assert by_agent[agent] >= n
    # the resume point is the last row
    (last,) = hd.sql(data.url, "SELECT timestamp, id FROM messages ORDER BY 1 DESC, 2 DESC LIMIT 1")
    assert summary["resume_point"] == f"{last[0].isoformat(timespec='microseconds')} {last[1]}"


def test_every_plugin_counts_as_from_the_rows_read_by_one_plain_query(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The import's fast path gives the store the pipeline's generic path gives the same rows
    as datagrepper /raw items: every plugin, every bucket, every gauge's time and id."""
    pipeline = open_pipeline(make_config(tmp_path / "raw.sqlite"), bundled())
    for row in hd.rows_in_order(data.url):
        assert pipeline.handle(hd.raw_item(row), "raw") == "processed"
    pipeline.close()
    assert dump(tmp_path / "raw.sqlite") == dump(whole[0])


def test_the_same_import_again_reads_nothing(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    store = tmp_path / "again.sqlite"
    store.write_bytes(whole[0].read_bytes())
    summary = run_import(config_file(tmp_path, "again.sqlite"), data.url)
    assert summary["resumed_from"] == whole[1]["resume_point"]
    assert (summary["messages_read"], summary["processed"]) == (0, 0)
    assert dump(store) == dump(whole[0])


def resume_point(store: Path) -> str | None:
    if not store.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT value FROM meta WHERE key LIKE 'resume:%'").fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def test_killed_mid_import_the_same_command_again_ends_identical(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    config = config_file(tmp_path, store={"path": str(tmp_path / "store.sqlite"),
                                           "flush_interval": "50ms"})  # fmt: skip
    store = tmp_path / "store.sqlite"
    process = subprocess.Popen(
        import_command(config, data.url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: resume_point(store) is not None, "a first committed resume point")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    committed = len(dump(store)["seen"])
    assert 0 < committed < len(data.sent), "the kill came after the import ended"
    summary = run_import(config, data.url)
    assert summary["resumed_from"] is not None
    # it read only what the store did not hold: not one message twice
    assert summary["messages_read"] == len(data.sent) - committed
    assert (summary["processed"], summary["duplicates"]) == (len(data.sent) - committed, 0)
    assert dump(store) == dump(whole[0])


def test_sigterm_stops_the_import_between_messages_and_the_rerun_ends_identical(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    config = config_file(tmp_path, store={"path": str(tmp_path / "store.sqlite"),
                                           "flush_interval": "50ms"})  # fmt: skip
    store = tmp_path / "store.sqlite"
    process = subprocess.Popen(
        import_command(config, data.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: resume_point(store) is not None, "a first committed resume point")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "import interrupted; run it again to go on" in err
    summary = json.loads(out)
    assert summary["complete"] is False and 0 < summary["processed"] < len(data.sent)
    # the final flush committed every message handed over, with its position
    assert len(dump(store)["seen"]) == summary["processed"]
    again = run_import(config, data.url)
    assert again["processed"] == len(data.sent) - summary["processed"]
    assert again["duplicates"] == 0
    assert dump(store) == dump(whole[0])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "give --datanommer URL or dump files"),
        (["--datanommer", "mysql://h/db"], "must start with postgresql:// or postgres://"),
        (["--datanommer", "postgresql://h/db", "x.tar"], "give --datanommer URL or dump files"),
        (["--datanommer", "postgresql://h/db", "--since", "2024-01-02T00:00:00Z", "--until",
          "2024-01-01T00:00:00Z"], "--until must be after --since"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_and_say_what_is_wrong(
    tmp_path: Path, args: list[str], said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "statscache_exporter", "import", "--config",
         str(config_file(tmp_path)), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert said in done.stderr


def test_a_password_in_the_url_is_never_printed(tmp_path: Path) -> None:
    """A database that cannot be reached: the error names host, port and database only."""
    config = config_file(
        tmp_path, datanommer={"retries": 2, "retry_initial": "10ms", "retry_max": "20ms",
                              "connect_timeout": "1s"},
    )  # fmt: skip
    url = "postgresql://reader:s3cret-pw@127.0.0.1:9/datanommer"
    done = subprocess.run(
        import_command(config, url), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "datanommer 127.0.0.1:9/datanommer: could not read" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


# --- the database going away ---------------------------------------------------------------------


def admin(url: str, statement: str) -> None:
    """Run ``statement`` as the cluster's superuser from its maintenance database."""
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def refuse(url: str, refused: bool) -> None:
    name = url.rsplit("/", 1)[1]
    admin(url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'false' if refused else 'true'}")
    if refused:
        admin(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )


def test_a_database_that_goes_away_for_a_while_is_retried_and_the_import_ends_identical(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    cfg = make_config(
        tmp_path / "store.sqlite",
        datanommer={"batch_size": 250, "retries": 30, "retry_initial": "50ms",
                    "retry_max": "200ms"},
    )  # fmt: skip
    pipeline = open_pipeline(cfg, bundled())
    timers: list[threading.Timer] = []

    def progress(stats: Any, done: bool = False) -> None:
        if not timers and stats.messages >= 5000:  # the server ends our session, refuses more
            refuse(data.url, True)
            timers.append(threading.Timer(1.0, refuse, (data.url, False)))
            timers[0].start()

    try:
        result = import_database(pipeline, data.url, None, None, threading.Event(), progress)
    finally:
        for t in timers:
            t.join()
        refuse(data.url, False)
        pipeline.close()
    assert timers, "the outage never happened"
    assert result.complete
    assert result.details["queries_retried"] >= 1 and result.details["connections"] >= 2
    assert dump(tmp_path / "store.sqlite") == dump(whole[0])


def test_a_database_gone_for_good_stops_with_the_range_and_the_resume_point(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    settings = {"batch_size": 250, "retries": 3, "retry_initial": "10ms", "retry_max": "20ms"}
    cfg = make_config(tmp_path / "store.sqlite", datanommer=settings)
    pipeline = open_pipeline(cfg, bundled())

    def progress(stats: Any, done: bool = False) -> None:
        if stats.messages >= 5000:
            refuse(data.url, True)

    try:
        with pytest.raises(ImportError_) as caught:
            import_database(pipeline, data.url, None, None, threading.Event(), progress)
    finally:
        refuse(data.url, False)
        point = pipeline.store.resume_point(_only_resume_name(pipeline.store))
        pipeline.close()
    text = str(caught.value)
    assert "could not read the rows from " in text and "to the end after 3 attempts" in text
    assert point is not None and f"the resume point stays at {point} (committed)" in text
    committed = len(dump(tmp_path / "store.sqlite")["seen"])
    assert 5000 <= committed < len(data.sent)
    # the same import again goes on from there and ends identical
    pipeline = open_pipeline(cfg, bundled())
    try:
        result = import_database(pipeline, data.url, None, None, threading.Event())
    finally:
        pipeline.close()
    assert result.stats.messages == len(data.sent) - committed
    assert dump(tmp_path / "store.sqlite") == dump(whole[0])


def _only_resume_name(store: Store) -> str:
    rows = store.db.execute("SELECT key FROM meta WHERE key LIKE 'resume:%'").fetchall()
    assert len(rows) == 1, rows
    return str(rows[0][0]).removeprefix("resume:")


def test_import_ranges_have_their_own_resume_points_and_add_up(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    config = config_file(tmp_path)
    cut = datetime.fromtimestamp(data.crowded, UTC).isoformat().replace("+00:00", "Z")
    first = run_import(config, data.url, "--until", cut)
    second = run_import(config, data.url, "--since", cut)
    assert first["resumed_from"] is None and second["resumed_from"] is None
    (before,) = hd.sql(
        data.url, "SELECT count(*) FROM messages WHERE timestamp < %s",
        (datetime.fromtimestamp(data.crowded, UTC).replace(tzinfo=None),),
    )  # fmt: skip
    assert first["processed"] == before[0]
    assert first["processed"] + second["processed"] == len(data.sent)
    assert second["duplicates"] == 0  # the crowded second is the second range's, whole
    assert dump(tmp_path / "store.sqlite") == dump(whole[0])


# --- the gap filler ------------------------------------------------------------------------------


def gap_config(url: str, **kw: Any) -> BackfillConfig:
    return BackfillConfig(datanommer_url=url, window=timedelta(minutes=10), **kw)


def test_the_gap_filler_reads_windows_from_the_database_exactly_in_order(
    data: hd.History,
) -> None:
    events: list[Any] = []
    covered: list[float] = []

    def deliver(item: dict[str, Any]) -> None:
        events.append(item)

    def cover(until: float) -> None:
        covered.append(until)
        events.append(("covered", until))

    start, end = data.start + 0.5, data.end - 600.5  # windows cut at .5 s, the last one short
    backfill = DatanommerBackfill(
        gap_config(data.url), DatanommerConfig(batch_size=100), deliver, cover
    )
    delivered = backfill.run([Range(start, end)])
    wanted = {hd.message_id(m) for m in data.sent if start <= hd.message_time(m) < end}
    ids = [e["msg_id"] for e in events if isinstance(e, dict)]
    assert delivered == len(ids) == len(set(ids)) == len(wanted)
    assert set(ids) == wanted
    assert covered == sorted(covered) and covered[-1] == end
    assert backfill.stats.windows_done == backfill.stats.windows_total == len(covered)
    # each item between the checkpoints of its own window, at its whole time
    lower = start
    for event in events:
        if isinstance(event, tuple):
            lower = event[1]
            continue
        when = datetime.fromisoformat(event["timestamp"]).timestamp()
        assert lower <= when < lower + 600 + 1e-6
        assert when == pytest.approx(hd.message_time(data.by_id[event["msg_id"]]), abs=1e-6)


def test_a_window_the_database_keeps_failing_stops_the_gap_filler_before_it(
    data: hd.History,
) -> None:
    """From the window ``bad`` on, the server refuses: the connection is closed under the
    reader and every new one fails."""
    covered: list[float] = []
    connections: list[psycopg.Connection[Any]] = []
    bad = Range(data.start + 1800, data.start + 2400)

    def connect() -> psycopg.Connection[Any]:
        if covered and covered[-1] >= bad.start:
            raise psycopg.OperationalError("connection refused (the test's)")
        connections.append(psycopg.connect(data.url, autocommit=True))
        return connections[-1]

    def cover(until: float) -> None:
        covered.append(until)
        if until >= bad.start:
            connections[-1].close()

    settings = DatanommerConfig(retries=2, retry_initial=timedelta(milliseconds=10),
                                retry_max=timedelta(milliseconds=20))  # fmt: skip
    backfill = DatanommerBackfill(
        gap_config(data.url), settings, lambda i: None, cover, connect=connect
    )
    with pytest.raises(BackfillError) as caught:
        backfill.run([Range(data.start, data.end)])
    assert f"the window {bad} could not be read" in str(caught.value)
    assert "after 2 attempts" in str(caught.value)
    assert covered[-1] == bad.start  # the checkpoint stays before it
    assert caught.value.remaining[0].start == bad.start


class Publisher:
    """A fedmsg publisher (XPUB: it hears the subscription before the test publishes)."""

    def __init__(self) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"

    def wait_subscribed(self) -> None:
        if not self.socket.poll(int(DEADLINE * 1000)) or self.socket.recv()[:1] != b"\x01":
            pytest.fail(f"no subscription reached {self.endpoint}")

    def send(self, item: dict[str, Any]) -> None:
        self.socket.send_multipart([item["topic"].encode(), json.dumps(item).encode()])

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


def test_live_messages_and_the_gap_filler_reading_the_database_count_each_once(
    data: hd.History, whole: tuple[Path, dict[str, Any]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A daemon with a live fedmsg source and backfill.datanommer_url: the gap filler reads
    the whole range from the database while the bus delivers 600 of its fedmsg-era messages
    again, 300 after the gap filler counted them and 300 before it reaches them (it waits at a
    gate in the middle of the range until they are in)."""
    from statscache_exporter.sources import datanommer

    gate_at = datanommer.naive_utc(data.midnight)
    gate = threading.Event()
    reached = threading.Event()
    read_batch = datanommer.DatanommerReader._read_batch

    def gated(self: Any, position: Any, end: Any, until: Any) -> Any:
        if position.timestamp >= gate_at:
            reached.set()
            gate.wait(DEADLINE)
        return read_batch(self, position, end, until)

    monkeypatch.setattr(datanommer.DatanommerReader, "_read_batch", gated)
    fedmsg = [m for m in data.sent if "body" not in m]
    early = [m for m in fedmsg if hd.message_time(m) < data.midnight - 1200][:300]
    late = [m for m in fedmsg if hd.message_time(m) >= data.midnight + 1200][:300]
    publisher = Publisher()
    epoch = datetime.fromtimestamp(data.start, UTC).isoformat().replace("+00:00", "Z")
    store = tmp_path / "store.sqlite"
    cfg = make_config(
        store,
        sources=[{"type": "fedmsg", "name": "bus", "endpoints": [publisher.endpoint]}],
        backfill={"enabled": True, "datanommer_url": data.url, "initial_backfill": "3d",
                  "epoch": epoch, "window": "10m", "overlap": "1m"},
        datanommer={"batch_size": 250},
        http={"enabled": False},
        store={"flush_interval": "250ms"},
    )  # fmt: skip
    made: list[Daemon] = []
    started = threading.Event()

    def run() -> None:
        try:
            made.append(Daemon(cfg))
            made[0].start()
        finally:
            started.set()
        try:
            made[0].loop()
        finally:
            made[0].shutdown()

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        wait_for(started.is_set, "the daemon to start")
        daemon = made[0]
        stats = daemon.pipeline.stats
        publisher.wait_subscribed()
        wait_for(reached.is_set, "the gap filler to reach the gate")
        for m in early + late:
            publisher.send(m)
        wait_for(lambda: stats.received["bus"] == 600, "the live messages to be handled")
        gate.set()
        filler = daemon.filler
        assert filler is not None and isinstance(filler, GapFiller)
        wait_for(filler.idle, "the gap filler to finish")
        wait_for(lambda: len(dump(store)["seen"]) == len(data.sent), "every message to be stored")
    finally:
        gate.set()
        if made:
            made[0].request_stop()
        thread.join(timeout=DEADLINE)
        publisher.close()
    assert filler.backfill.stats.failed is None
    assert (stats.processed["bus"], stats.duplicates["bus"]) == (300, 300)
    assert stats.duplicates["backfill"] == 300
    assert stats.processed["backfill"] == len(data.sent) - 300
    assert totals(store, "messages") == Counter({"": len(data.sent)})
    assert totals(store, "messages_by_topic") == hd.counted_by(data.url, "topic")
