"""The InfluxDB sink against a real InfluxDB 1.6 (Debian's influxd): what lands there is exactly
what was fed in, after a replay, through an outage, a SIGKILL, a late message, odd tag values,
lines InfluxDB refuses and a missing database; and the v2 writer against a recorded exchange
(no server with /api/v2/write can run here).

Needs ``influxd`` (Debian package influxdb; ``make test-deps`` installs it): without it these
tests skip on a developer machine and fail in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import scaled_messages
from servers import (
    InfluxDB,
    ReplayPipe,
    Samples,
    exporter_process,
    free_port,
    influxdb_server,
    total,
    wait_until,
    write_jsonl,
)

from statscache_exporter import config as configuration
from statscache_exporter.influx import V2Writer, WriteResult, make_writer

pytestmark = pytest.mark.integration

#: The default messages.environments of config.yaml.
ENVIRONMENTS = {"dev", "local", "prod", "stage", "stg", "test"}
T0 = 1_700_000_000
DAY = 86400
MESSAGES = "statscache_messages"
BY_CATEGORY = "statscache_messages_by_category"
BY_TOPIC = "statscache_messages_by_topic"
BY_USER = "statscache_messages_by_user"


def category(topic: str) -> str:
    """The category by the README's rule, written independently of the exporter."""
    parts = topic.split(".")
    return parts[3] if len(parts) > 3 and parts[2] in ENVIRONMENTS else parts[0]


def fedmsg(i: int, ts: int, topic: str, **extra: Any) -> dict[str, Any]:
    """A fedmsg envelope (a datagrepper /raw item when ``extra`` has users/packages)."""
    return {"topic": topic, "msg": {"i": i}, "timestamp": ts, "msg_id": f"m-{i}", **extra}


def sink_settings(server: InfluxDB, db: str, **extra: Any) -> dict[str, Any]:
    """The config's influxdb section: retries kept short so that a test waits little after an
    outage ends; a generous shutdown_timeout (a replay stops as soon as its outbox is empty)."""
    return {
        "enabled": True,
        "url": server.url,
        "database": db,
        "create_database": True,
        "tags": {"instance": "t1"},
        "retry_initial": "200ms",
        "retry_max": "1s",
        "shutdown_timeout": "60s",
        **extra,
    }


def daemon_settings(server: InfluxDB, db: str, **extra: Any) -> dict[str, Any]:
    """The same for `statscache-exporter run`, which a test stops when its outbox is empty: a
    short shutdown_timeout, so that a failing test does not wait for InfluxDB."""
    return sink_settings(server, db, shutdown_timeout="5s", **extra)


def replay(tmp_path: Path, name: str, files: list[Path], influxdb: dict[str, Any]) -> Any:
    """`statscache-exporter replay --json` of ``files`` into the store ``<name>/store.sqlite``
    (kept from call to call) with the given influxdb section; its summary."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    config = home / "config.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "store": {"path": str(home / "store.sqlite"), "flush_interval": "250ms"},
                "influxdb": influxdb,
                "logging": {"level": "INFO"},
            }
        )
    )
    command = [sys.executable, "-m", "statscache_exporter", "replay", "--config", str(config)]
    done = subprocess.run(
        [*command, "--json", *map(str, files)],
        cwd=home,
        capture_output=True,
        timeout=120,
    )
    log = done.stderr.decode(errors="replace")[-3000:]
    assert done.returncode == 0, f"replay exited {done.returncode}:\n{log}"
    return json.loads(done.stdout)


def outbox(store: Path) -> list[tuple[str, dict[str, str], int, int]]:
    """The store's outbox as (metric, labels, bucket start, set aside or not), read-only: the
    queued lines, by their series' key, and the points set aside."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        series = {
            key: (metric, labels)
            for key, metric, labels in db.execute(
                "SELECT k.key, s.metric, s.labels FROM influx_keys k "
                "JOIN series s ON s.id = k.series"
            )
        }
        bodies = db.execute("SELECT body FROM outbox").fetchall()
        rows = [
            (*series[key], int(start), 0)
            for (body,) in bodies
            for key, _, start in (line.rsplit(" ", 2) for line in body.split("\n"))
        ]
        rows += db.execute(
            "SELECT s.metric, s.labels, a.start, 1 FROM outbox_aside a "
            "JOIN series s ON s.id = a.series"
        ).fetchall()
    finally:
        db.close()
    return [(m, json.loads(labels), start, aside) for m, labels, start, aside in sorted(rows)]


def queued(store: Path) -> int:
    """Lines still to send (not set aside)."""
    return sum(1 for *_, aside in outbox(store) if not aside)


def gauge(samples: Samples, name: str) -> float:
    """A self-metric without labels (``statscache_exporter_<name>``); -1 when absent."""
    return samples.get((f"statscache_exporter_{name}", ()), -1.0)


def per_second(server: InfluxDB, db: str, measurement: str, where: str = "") -> dict[int, int]:
    """sum("count") per second of a measurement, over the seconds of the messages used here
    (GROUP BY time needs a time range; empty seconds left out)."""
    lo, hi = T0 - 7 * DAY, T0 + 60 * DAY
    q = (
        f'SELECT sum("count") FROM "{measurement}" WHERE time >= {lo}s AND time < {hi}s '
        f"{where} GROUP BY time(1s) fill(none)"
    )
    series = server.series(q, db)
    return {t: n for s in series for t, n in s["values"]}


def per_tag(server: InfluxDB, db: str, measurement: str, tag: str) -> dict[str, int]:
    """sum("count") of a measurement per value of ``tag``."""
    series = server.series(f'SELECT sum("count") FROM "{measurement}" GROUP BY "{tag}"', db)
    out: dict[str, int] = {}
    for s in series:
        value = s["tags"][tag]
        assert value not in out, f"{tag}={value!r} twice in {series}"
        [[_, out[value]]] = s["values"]
    return out


def points(server: InfluxDB, db: str, measurement: str = MESSAGES) -> int:
    """How many points a measurement has (0 when none; the database must exist)."""
    series = server.series(f'SELECT count("count") FROM "{measurement}"', db)
    return int(series[0]["values"][0][1]) if series else 0


def sums(server: InfluxDB, db: str) -> dict[str, Any]:
    """Per measurement: sum("count") per second and per tag set: to compare two databases."""
    measurements = [v[0] for s in server.series("SHOW MEASUREMENTS", db) for v in s["values"]]
    by_tags = {
        (s["name"], tuple(sorted(s["tags"].items()))): s["values"]
        for s in server.series('SELECT sum("count") FROM /.*/ GROUP BY *', db)
    }
    return {
        "per second": {m: per_second(server, db, m) for m in measurements},
        "per tag set": by_tags,
    }


# --- 1. a replay, exactly ------------------------------------------------------------------------


def test_a_replay_lands_in_influxdb_exactly(tmp_path: Path) -> None:
    n = 20_000
    messages = scaled_messages(n, seed=41)
    infile = write_jsonl(tmp_path / "in.jsonl", messages)
    seconds = Counter(int(m["timestamp"]) for m in messages)
    by_category = Counter(category(m["topic"]) for m in messages)
    by_topic = Counter(m["topic"] for m in messages)
    with influxdb_server(tmp_path) as influx:
        summary = replay(tmp_path, "exporter", [infile], sink_settings(influx, "x"))
        assert summary["processed"] == n
        assert summary["influxdb"]["pending"] == 0
        assert summary["influxdb"]["points_refused"] == 0

        assert per_second(influx, "x", MESSAGES) == seconds
        assert points(influx, "x", MESSAGES) == len(seconds)  # one point per second
        assert per_tag(influx, "x", BY_CATEGORY, "category") == by_category
        assert per_tag(influx, "x", BY_TOPIC, "topic") == by_topic
        # every point carries the configured tag
        dump = influx.dump("x")
        assert {name for name, _ in dump} >= {MESSAGES, BY_CATEGORY, BY_TOPIC}
        assert [key for key in dump if dict(key[1]).get("instance") != "t1"] == []
        instances = influx.series('SHOW TAG VALUES WITH KEY = "instance"', "x")
        assert {v[1] for s in instances for v in s["values"]} == {"t1"}
        assert summary["influxdb"]["points_written"] >= sum(len(v) for v in dump.values())
    assert queued(tmp_path / "exporter" / "store.sqlite") == 0


# --- 2. an outage in the middle of a replay ------------------------------------------------------


def test_an_influxdb_outage_in_the_middle_of_a_replay_loses_nothing(tmp_path: Path) -> None:
    """InfluxDB stops while the exporter is still reading (its replay file is a pipe the test
    writes, so the replay is certainly not over), comes back later on the same data: what it
    ends up with is what an uninterrupted run wrote into another database."""
    n1, n2 = 4000, 4000
    messages = scaled_messages(n1 + n2, seed=42)
    whole = write_jsonl(tmp_path / "all.jsonl", messages)
    pipe = ReplayPipe(tmp_path / "feed.jsonl")
    with influxdb_server(tmp_path) as influx:
        summary = replay(tmp_path, "reference", [whole], sink_settings(influx, "ref"))
        assert summary["influxdb"]["pending"] == 0
        settings = {"influxdb": daemon_settings(influx, "x", batch_size=1000)}
        with exporter_process(tmp_path, [pipe.path], settings=settings) as exporter:
            try:
                pipe.write_messages(messages[:n1])
                wait_until(lambda: points(influx, "x"), bool, "the first points in InfluxDB")
                influx.stop()
                assert total(exporter.samples(), "statscache_exporter_source_connected") == 1

                pipe.write_messages(messages[n1:])  # the exporter goes on without InfluxDB
                pipe.close()
                exporter.wait_replayed(n1 + n2)
                samples = wait_until(
                    exporter.samples,
                    lambda s: gauge(s, "influxdb_pending_points") > 0,
                    "points to pile up in the outbox",
                )
                assert gauge(samples, "influxdb_up") == 0
                assert queued(exporter.store) > 0

                influx.start()
                wait_until(
                    lambda: (
                        queued(exporter.store),
                        gauge(exporter.samples(), "influxdb_pending_points"),
                    ),
                    lambda state: state == (0, 0),
                    "the outbox to drain into InfluxDB (rows, pending gauge)",
                )
                assert gauge(exporter.samples(), "influxdb_up") == 1
            finally:
                pipe.close()
        assert influx.dump("x") == influx.dump("ref")
        assert sums(influx, "x") == sums(influx, "ref")
        assert per_second(influx, "x", MESSAGES) == Counter(int(m["timestamp"]) for m in messages)


# --- 3. SIGKILL with points pending --------------------------------------------------------------


def test_sigkill_with_points_pending_loses_nothing(tmp_path: Path) -> None:
    n = 6000
    messages = scaled_messages(n, seed=43)
    infile = write_jsonl(tmp_path / "in.jsonl", messages)
    with influxdb_server(tmp_path) as influx:
        replay(tmp_path, "reference", [infile], sink_settings(influx, "ref"))
        influx.stop()  # the points of the run below pile up in its outbox
        settings = {"influxdb": daemon_settings(influx, "x")}
        with exporter_process(tmp_path, [infile], settings=settings) as exporter:
            exporter.wait_replayed(n)
            wait_until(
                exporter.samples,
                lambda s: gauge(s, "influxdb_pending_points") > 0,
                "points to pile up in the outbox",
            )
            before = queued(exporter.store)
            assert before > 0
            exporter.kill()
            assert queued(exporter.store) == before

            influx.start()
            exporter.start()  # the same file: nothing new, every message a duplicate
            exporter.wait_replayed(n, stored_before=n)
            wait_until(
                lambda: (
                    queued(exporter.store),
                    gauge(exporter.samples(), "influxdb_pending_points"),
                ),
                lambda state: state == (0, 0),
                "the outbox to drain into InfluxDB (rows, pending gauge)",
            )
        assert influx.dump("x") == influx.dump("ref")
        assert sums(influx, "x") == sums(influx, "ref")


# --- 4. a late message ---------------------------------------------------------------------------


def test_a_late_message_rewrites_its_second_with_the_full_count(tmp_path: Path) -> None:
    n = 3000
    messages = scaled_messages(n, seed=44)
    seconds = Counter(int(m["timestamp"]) for m in messages)
    second, count = seconds.most_common(1)[0]
    twin = next(m for m in messages if int(m["timestamp"]) == second)
    late = {**twin, "msg_id": "late-1"}  # the same second, topic and category
    in_that_category = sum(
        1
        for m in messages
        if int(m["timestamp"]) == second and category(m["topic"]) == category(twin["topic"])
    )
    first = write_jsonl(tmp_path / "a.jsonl", messages)
    then = write_jsonl(tmp_path / "b.jsonl", [late])
    with influxdb_server(tmp_path) as influx:
        settings = sink_settings(influx, "x")
        replay(tmp_path, "exporter", [first], settings)
        at = f"WHERE time = {second}s"
        assert influx.series(f'SELECT "count" FROM "{MESSAGES}" {at}', "x")[0]["values"] == [
            [second, count]
        ]

        summary = replay(tmp_path, "exporter", [then], settings)  # the same store
        assert summary["processed"] == 1 and summary["influxdb"]["pending"] == 0
        [s] = influx.series(f'SELECT "count" FROM "{MESSAGES}" {at}', "x")
        assert s["values"] == [[second, count + 1]]
        [s] = influx.series(f'SELECT count("count") FROM "{MESSAGES}" {at}', "x")
        assert s["values"] == [[second, 1]]  # rewritten, not a second point
        where = f"{at} AND \"category\" = '{category(twin['topic'])}'"
        [s] = influx.series(f'SELECT "count" FROM "{BY_CATEGORY}" {where}', "x")
        assert s["values"] == [[second, in_that_category + 1]]
        assert per_second(influx, "x", MESSAGES) == seconds + Counter([second])


def test_a_late_message_past_the_stores_1s_retention_does_not_shrink_its_point(
    tmp_path: Path,
) -> None:
    """The store keeps 1 s buckets for ``store.retention`` 1s (2 days by default, counted back
    from the newest message), InfluxDB keeps its points. A late message for a second whose
    bucket the store has pruned since InfluxDB acknowledged it must not replace InfluxDB's point
    by the count of that one message. The exporter no longer knows the second's full count, so
    it leaves InfluxDB's 5 as it is and counts the late change as not sent (documented)."""
    topic = "org.fedoraproject.prod.bodhi.update.comment"
    second = T0 + 10
    first = [fedmsg(i, second, topic) for i in range(5)] + [fedmsg(5, T0 + 3 * DAY, topic)]
    files = [
        write_jsonl(tmp_path / "a.jsonl", first),
        # a later replay: its flush prunes the 1 s buckets older than 2 days before T0 + 3 d
        write_jsonl(tmp_path / "b.jsonl", [fedmsg(6, T0 + 3 * DAY + 1, topic)]),
        write_jsonl(tmp_path / "c.jsonl", [fedmsg(7, second, topic)]),  # the late one
    ]
    with influxdb_server(tmp_path) as influx:
        settings = sink_settings(influx, "x")
        at = f'SELECT "count" FROM "{MESSAGES}" WHERE time = {second}s'
        # the late message changes three series' buckets: messages, by category, by topic
        for path, late in zip(files, [0, 0, 3], strict=True):
            summary = replay(tmp_path, "exporter", [path], settings)  # the same store
            assert summary["processed"] > 0 and summary["influxdb"]["pending"] == 0
            assert summary["influxdb"]["late_unsent"] == late, path.name
            [s] = influx.series(at, "x")
            assert s["values"] == [[second, 5]], f"after {path.name}"


# --- 5. tag values -------------------------------------------------------------------------------

#: User names that line protocol can carry, each odd in its own way.
USERS = [
    "a b",
    "a,b",
    "a=b",
    "x=1,y=2 z",
    'o"brien',
    "o'brien",
    'say "hi", ok',
    " lead",
    "trailing ",
    "back\\slash",
    "literal\\n",  # a backslash and an n, not a newline
    "ünïcødé",
    "汉字 😀",
    "😀",
]


def user_items(users: list[str], groups: list[list[str]]) -> list[dict[str, Any]]:
    """Datagrepper /raw items: user u named by u + 1 messages of its own, then one message per
    group naming several; each message in its own second."""
    named = [[user] for u, user in enumerate(users) for _ in range(u + 1)] + groups
    return [
        fedmsg(
            i,
            T0 + i,
            "org.fedoraproject.prod.fas.user.update",
            username="apache",
            users=names,
            packages=[],
        )
        for i, names in enumerate(named)
    ]


def influxql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_tag_values_round_trip_through_influxdb(tmp_path: Path) -> None:
    messages = user_items(USERS, [[USERS[0], USERS[4], USERS[0]], [USERS[5], USERS[12]]])
    expected = Counter(user for m in messages for user in set(m["users"]))
    page = write_jsonl(tmp_path / "page.json", [{"raw_messages": messages, "pages": 1}])
    with influxdb_server(tmp_path) as influx:
        summary = replay(tmp_path, "exporter", [page], sink_settings(influx, "x"))
        assert summary["processed"] == len(messages)
        assert summary["influxdb"]["points_refused"] == 0
        assert summary["influxdb"]["pending"] == 0

        found = influx.series(f'SHOW TAG VALUES FROM "{BY_USER}" WITH KEY = "user"', "x")
        assert sorted(v[1] for s in found for v in s["values"]) == sorted(expected)
        assert per_tag(influx, "x", BY_USER, "user") == expected
        for user, count in expected.items():  # and a query selects each one back
            where = f'WHERE "user" = {influxql_string(user)}'
            [s] = influx.series(f'SELECT sum("count") FROM "{BY_USER}" {where}', "x")
            assert s["values"][0][1] == count, user


def test_tag_values_line_protocol_cannot_carry_are_never_written_under_another_name(
    tmp_path: Path,
) -> None:
    """Line protocol 1.x has no escape for a newline, a carriage return or a tab in a tag value
    (influxdb-client's Point writes them as backslash-n, -r, -t, which InfluxDB 1.x keeps as
    they are), nor for a backslash that ends one (Point adds a space after it, and backslash-space
    reads as an escaped space). Such a user must not land in InfluxDB under another user's name:
    either it arrives exactly, or its points are refused, counted and set aside; and the rest
    arrives whatever happens to them. Each has a twin: the name it would turn into."""
    uncarriable = {
        "trailing\\": "trailing ",
        "new\nline": "new\\nline",
        "cr\rx": "cr\\rx",
        "tab\there": "tab\\there",
    }
    users = ["plain", *uncarriable.values(), *uncarriable]
    groups = [[odd, twin] for odd, twin in uncarriable.items()]  # both in one message
    messages = user_items(users, groups)
    expected = Counter(user for m in messages for user in set(m["users"]))
    page = write_jsonl(tmp_path / "page.json", [{"raw_messages": messages, "pages": 1}])
    with influxdb_server(tmp_path) as influx:
        summary = replay(tmp_path, "exporter", [page], sink_settings(influx, "x"))
        assert summary["processed"] == len(messages)
        # the rest arrived
        assert per_second(influx, "x", MESSAGES) == {T0 + i: 1 for i in range(len(messages))}
        assert summary["influxdb"]["pending"] == 0

        stored = per_tag(influx, "x", BY_USER, "user")
        # the users line protocol can carry: exactly what was fed in, nobody else's points
        wrong = {
            user: (stored.get(user), count)
            for user, count in expected.items()
            if user not in uncarriable and stored.get(user) != count
        }
        assert wrong == {}, (
            f"InfluxDB holds other counts than fed in for these users (InfluxDB, fed in): "
            f"{wrong}: the points of {list(uncarriable)} were written under their names"
        )
        assert set(stored) <= set(expected), f"users nobody named: {set(stored) - set(expected)}"
        # the others: exactly there, or refused, counted and set aside in the outbox
        refused = [u for u in uncarriable if u not in stored]
        assert {u: stored[u] for u in uncarriable if u in stored} == {
            u: expected[u] for u in uncarriable if u in stored
        }
        # set aside when queued: InfluxDB never saw them
        assert summary["influxdb"]["set_aside"] == sum(expected[u] for u in refused)
        assert summary["influxdb"]["points_refused"] == 0
        set_aside = Counter(
            labels["user"]
            for _, labels, _, failed in outbox(tmp_path / "exporter" / "store.sqlite")
            if failed
        )
        assert set_aside == {u: expected[u] for u in refused}


# --- 6. lines InfluxDB refuses -------------------------------------------------------------------


def test_refused_lines_are_set_aside_and_do_not_block_the_rest(tmp_path: Path) -> None:
    """A field type conflict, the classic way to make InfluxDB 1.x refuse lines: ``count`` is
    written as a float first into a shard (a week, in the default retention policy) a month
    after the bulk of the messages, so every point of that measurement in that shard is refused
    (HTTP 400, partial write), and only those."""
    bulk = scaled_messages(3000, seed=46)  # T0 .. T0 + 1 day
    later = T0 + 30 * DAY  # another shard
    topics = [
        "org.fedoraproject.prod.bodhi.update.comment",
        "org.fedoraproject.prod.buildsys.build.state.change",
        "org.fedoraproject.stg.copr.build.end",
        "io.pagure.prod.pagure.pull-request.new",
        "org.centos.prod.ci.pipeline.complete",
    ]
    late = [fedmsg(i, later + i, topics[i % len(topics)]) for i in range(40)]
    messages = bulk + late
    infile = write_jsonl(tmp_path / "in.jsonl", messages)
    refused = {(category(m["topic"]), m["timestamp"]) for m in late}
    arrived = Counter((category(m["topic"]), int(m["timestamp"])) for m in bulk)
    with influxdb_server(tmp_path) as influx:
        influx.query('CREATE DATABASE "x"')
        poison = f"{BY_CATEGORY},category=bodhi,instance=t1 count=1.5 {later}"
        r = influx.write([poison], "x")
        assert r.status == 204, r
        summary = replay(tmp_path, "exporter", [infile], sink_settings(influx, "x", batch_size=500))

        assert summary["influxdb"]["points_refused"] == len(refused)
        assert summary["influxdb"]["pending"] == 0
        rows = outbox(tmp_path / "exporter" / "store.sqlite")
        assert {(labels["category"], start) for _, labels, start, _ in rows} == refused
        assert all(
            metric == "messages_by_category" and failed == 1 for metric, _, _, failed in rows
        )
        # the rest arrived: every second of every message, and the categories of the bulk
        seconds = Counter(int(m["timestamp"]) for m in messages)
        assert per_second(influx, "x", MESSAGES) == seconds
        assert per_tag(influx, "x", BY_TOPIC, "topic") == Counter(m["topic"] for m in messages)
        got = {
            (s["tags"]["category"], t): n
            for s in influx.series(f'SELECT "count" FROM "{BY_CATEGORY}" GROUP BY "category"', "x")
            for t, n in s["values"]
        }
        assert got == {**arrived, ("bodhi", later): 1.5}  # the poison stays as it was


# --- 7. a missing database -----------------------------------------------------------------------


def test_writes_to_a_missing_database_wait_until_it_exists(tmp_path: Path) -> None:
    n = 2000
    messages = scaled_messages(n, seed=47)
    infile = write_jsonl(tmp_path / "in.jsonl", messages)
    with influxdb_server(tmp_path) as influx:
        settings = {"influxdb": daemon_settings(influx, "late", create_database=False)}
        with exporter_process(tmp_path, [infile], settings=settings) as exporter:
            exporter.wait_replayed(n)
            samples = wait_until(
                exporter.samples,
                lambda s: (
                    total(s, "statscache_exporter_influxdb_batches_failed_total") > 0
                    and gauge(s, "influxdb_pending_points") == queued(exporter.store) > 0
                ),
                "a write to fail and the points to stay queued",
            )
            assert gauge(samples, "influxdb_up") == 0
            assert "late" not in influx.databases()

            influx.query('CREATE DATABASE "late"')
            wait_until(
                lambda: (
                    queued(exporter.store),
                    gauge(exporter.samples(), "influxdb_pending_points"),
                ),
                lambda state: state == (0, 0),
                "the outbox to drain into the new database (rows, pending gauge)",
            )
        assert per_second(influx, "late", MESSAGES) == Counter(
            int(m["timestamp"]) for m in messages
        )
        assert per_tag(influx, "late", BY_CATEGORY, "category") == Counter(
            category(m["topic"]) for m in messages
        )


# --- 7. the pending gauge while InfluxDB does not answer --------------------------------------


def test_the_pending_gauge_counts_the_outbox_while_a_write_hangs(tmp_path: Path) -> None:
    """InfluxDB takes the connection and never answers (overloaded, a half-dead proxy): the
    write waits for influxdb.timeout (60 s here). Meanwhile /metrics must show the points piling
    up in the outbox, not what the sender saw before the write began."""
    n = 2000
    infile = write_jsonl(tmp_path / "in.jsonl", scaled_messages(n, seed=48))
    # a server whose connections the kernel completes and that never answers
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        section = {
            "enabled": True,
            "url": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "database": "x",
            "timeout": "60s",
            "shutdown_timeout": "1s",
        }
        with exporter_process(tmp_path, [infile], settings={"influxdb": section}) as exporter:
            try:
                exporter.wait_replayed(n)
                rows = queued(exporter.store)
                assert rows > 0
                wait_until(
                    lambda: gauge(exporter.samples(), "influxdb_pending_points"),
                    lambda pending: pending == rows,
                    f"statscache_exporter_influxdb_pending_points to show the {rows} queued "
                    f"points (the write has been hanging since the first flush)",
                    timeout=10,
                )
            finally:
                silent.close()  # resets the waiting connection: the sender stops at once
    finally:
        silent.close()


# --- 8. v2, against a recorded exchange ----------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A tiny HTTP server on 127.0.0.1 that records each request and answers from a script of
    (status, headers, body)."""

    url: str
    answers: list[tuple[int, dict[str, str], bytes]]
    requests: list[Recorded] = field(default_factory=list)


@contextlib.contextmanager
def recorder(answers: list[tuple[int, dict[str, str], bytes]]) -> Iterator[Recorder]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            parts = urllib.parse.urlsplit(self.path)
            with lock:
                rec.requests.append(
                    Recorded(
                        self.command,
                        parts.path,
                        urllib.parse.parse_qs(parts.query),
                        dict(self.headers.items()),
                        body,
                    )
                )
                status, headers, payload = rec.answers.pop(0) if rec.answers else (500, {}, b"")
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec = Recorder(f"http://127.0.0.1:{server.server_address[1]}", list(answers))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def influx_config(url: str, mode: str) -> configuration.InfluxConfig:
    section = {
        "enabled": True,
        "mode": mode,
        "url": url,
        "database": "db1",
        "org": "fedora",
        "bucket": "stats",
        "token": "s3cr3t",
        "timeout": "5s",
    }
    return configuration.from_dict({"influxdb": section}).influxdb


BODY = "\n".join(
    [
        "statscache_messages,instance=t1 count=3i 1700000000",
        'statscache_messages_by_user,instance=t1,user=o"b\\,\\ x\\=y count=1i 1700000001',
    ]
)


def test_v2_writer_against_a_recorded_exchange() -> None:
    # A recorded exchange, not a server: no InfluxDB with /api/v2/write can be installed here
    # (Debian has 1.6.7 only; PyPI's "influxdb" is a client library). The requests are what
    # influxdb-client sends; the answers are those InfluxDB 2.x documents for its write API.
    error = {"code": "invalid", "message": "unable to parse 'x': missing fields"}
    answers = [
        (204, {}, b""),
        (503, {"Retry-After": "2"}, b""),
        (400, {"Content-Type": "application/json"}, json.dumps(error).encode()),
    ]
    with recorder(answers) as rec:
        writer = V2Writer(influx_config(rec.url, "v2"))
        try:
            assert writer.write(BODY) == WriteResult(True, 204)
            [sent] = rec.requests
            assert sent.method == "POST"
            assert sent.path == "/api/v2/write"
            assert sent.query == {"org": ["fedora"], "bucket": ["stats"], "precision": ["s"]}
            assert sent.headers["Authorization"] == "Token s3cr3t"
            assert sent.body == BODY.encode()

            busy = writer.write(BODY)
            assert (busy.ok, busy.status, busy.bad_data, busy.retry_after) == (
                False,
                503,
                False,
                2.0,
            )
            bad = writer.write(BODY)
            assert (bad.ok, bad.status, bad.bad_data, bad.retry_after) == (
                False,
                400,
                True,
                None,
            )
            assert "missing fields" in bad.error
            assert len(rec.requests) == 3  # the client retried nothing behind the sink's back
            assert all(r.body == sent.body for r in rec.requests)
        finally:
            writer.close()

    nobody = V2Writer(influx_config(f"http://127.0.0.1:{free_port()}", "v2"))
    try:
        down = nobody.write(BODY)  # a connection error: to retry, not bad data
    finally:
        nobody.close()
    assert (down.ok, down.status, down.bad_data) == (False, None, False)
    assert down.error


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_retry_after_is_read_whatever_the_case_of_its_header_name(mode: str) -> None:
    """HTTP header names are case-insensitive (RFC 9110, 5.1); a proxy in front of InfluxDB
    (HTTP/2, Envoy) may well send ``retry-after``."""
    with recorder([(429, {"retry-after": "3"}, b"")]) as rec:
        writer = make_writer(influx_config(rec.url, mode))
        try:
            result = writer.write(BODY)
        finally:
            writer.close()
    assert (result.ok, result.status, result.bad_data) == (False, 429, False)
    assert result.retry_after == 3.0
