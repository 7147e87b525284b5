#!/usr/bin/env python3
"""Benchmark: messages per second imported from a datanommer database (``statscache-exporter
import --datanommer``'s code: ``history.import_database``), against a bare psycopg read of the
same rows (the limit) and the datagrepper backfill of the same data, in the same run; with the
projection for 250 million messages (Fedora's datanommer held 180 million in 2021).

Against a real PostgreSQL with datanommer's schema and a real datagrepper 1.1.0 over it (the
tests' harness, tests/datagrepper.py: a private cluster on loopback, gunicorn with 4 workers
as production serves it, a temporary directory, stopped at the end):

1. ``--messages`` messages of the scaled corpus (bench/corpus.py ``Generator``: real corpus
   topics and bodies, fresh ids, synthetic users and packages; both eras: fedmsg envelopes,
   /raw items, fedora-messaging messages) loaded into datanommer's tables with PostgreSQL's
   ``COPY`` (untimed; as a dump is loaded: datanommer's own ``add()`` stores ~100-400 rows/s
   here). Users and packages: the corpus's names (the /raw items' lists, the fedora-messaging
   header flags) into ``users``/``packages`` and the join tables; agent_name: the /raw item's,
   the envelope's ``username``, or the fedora-messaging schema class's, as datanommer's
   consumer stores it. Then ``ANALYZE``.
2. Timed (``time.perf_counter``, wall), one after the other:
   - **bare read**: psycopg 3 running the reader's own queries (keyset batches of
     ``--batch-size`` rows, each batch's users and packages), rows fetched and dropped;
   - **reader**: ``DatanommerReader`` + ``records``: every row made a ``Message`` (JSON
     parsed), no pipeline;
   - **reader, /raw items**: the same rows made ``/raw`` items and normalized by
     ``message.normalize`` (the pipeline's generic path), no pipeline: what the fast path saves;
   - **import**: ``import_database`` into a fresh store with every bundled plugin: the whole
     import (reader + pipeline + flushes);
   - **datagrepper backfill**: ``Backfill`` (concurrency 4, 10-minute windows) over the first
     ``--datagrepper-messages`` messages of the same data (a slice: the whole would take
     minutes at its speed), items collected, no pipeline.
   Each checks its count against the database's. **pipeline cost** = import time - reader time.

Targets (issue 15, printed as PASS/FAIL information): import ≥ 10x the datagrepper backfill,
≥ 0.3 of the bare read, 250M messages in under 4 hours. The pipeline is being made faster
(issue 14): the reader's own figures show what the import will reach once it is.

    .venv/bin/python bench/history.py [--messages 200000] [--datagrepper-messages 20000]
        [--batch-size 5000] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import common
import psycopg
from common import loadavg, log
from corpus import Generator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the datagrepper harness the integration tests use

from datagrepper import datagrepper_server  # noqa: E402

from statscache_exporter import config as configuration  # noqa: E402
from statscache_exporter import message as messages  # noqa: E402
from statscache_exporter import schemas  # noqa: E402
from statscache_exporter.backfill import Backfill, Range  # noqa: E402
from statscache_exporter.config import BackfillConfig, DatanommerConfig  # noqa: E402
from statscache_exporter.history import import_database  # noqa: E402
from statscache_exporter.pipeline import open_pipeline  # noqa: E402
from statscache_exporter.plugin import discover  # noqa: E402
from statscache_exporter.sources.datanommer import (  # noqa: E402
    _BATCH,
    Converter,
    DatanommerReader,
    Position,
    items,
    records,
)

NAME = "history"
T0 = 1_709_294_400.0  # 2024-03-01T12:00:00Z
PROJECTED = 250_000_000
TARGETS = {"vs_datagrepper": 10.0, "vs_bare": 0.3, "projection_hours": 4.0}
USER_FLAG, PACKAGE_FLAG = "fedora_messaging_user_", "fedora_messaging_rpm_"


# --- loading ----------------------------------------------------------------------------------


def rows_of(gen: Generator, n: int) -> Iterator[tuple[dict[str, Any], list[str], list[str]]]:
    """(messages row, users, packages) for each generated message."""
    for i, m in enumerate(gen.messages(n), 1):
        if "body" in m:
            headers = m["headers"]
            when = datetime.fromisoformat(headers["sent-at"])
            users = [k[len(USER_FLAG) :] for k in headers if k.startswith(USER_FLAG)]
            packages = [k[len(PACKAGE_FLAG) :] for k in headers if k.startswith(PACKAGE_FLAG)]
            agent = schemas.facts_for(m["topic"], m["body"], headers).agent
            row = {"id": i, "msg_id": m["id"], "i": 0, "topic": m["topic"], "timestamp": when,
                   "msg": m["body"], "headers": headers, "agent_name": agent}  # fmt: skip
        else:
            when = datetime.fromtimestamp(float(m["timestamp"]), UTC)
            users, packages = list(m.get("users") or ()), list(m.get("packages") or ())
            agent = m.get("agent_name", m.get("username"))
            row = {"id": i, "msg_id": m["msg_id"], "i": m.get("i") or 1, "topic": m["topic"],
                   "timestamp": when, "msg": m["msg"], "headers": None, "agent_name": agent,
                   "crypto": m.get("crypto"), "certificate": m.get("certificate"),
                   "signature": m.get("signature")}  # fmt: skip
        yield row, users, packages


def _csv_field(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return '"' + text.replace('"', '""') + '"'


def load(url: str, gen: Generator, n: int) -> tuple[float, float, float]:
    """COPY the messages into datanommer's tables; (seconds, first time, last time)."""
    t0 = time.perf_counter()
    user_ids: dict[str, int] = {}
    package_ids: dict[str, int] = {}
    columns = (
        "id", "msg_id", "i", "topic", "timestamp", "category", "agent_name", "crypto",
        "certificate", "signature", "source_name", "source_version", "msg", "headers",
    )  # fmt: skip
    first, last = float("inf"), float("-inf")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        with conn.cursor() as cur:
            joins_u: list[tuple[int, int, datetime]] = []
            joins_p: list[tuple[int, int, datetime]] = []
            copy_sql = f"COPY messages ({', '.join(columns)}) FROM STDIN WITH CSV"
            with cur.copy(copy_sql) as copy:
                buffer = io.StringIO()
                for row, users, packages in rows_of(gen, n):
                    naive = row["timestamp"].astimezone(UTC).replace(tzinfo=None)
                    epoch = row["timestamp"].timestamp()
                    first, last = min(first, epoch), max(last, epoch)
                    parts = row["topic"].split(".")
                    values = [
                        row["id"], row["msg_id"], row["i"], row["topic"],
                        naive.isoformat(sep=" "), parts[3] if len(parts) > 3 else parts[0],
                        row["agent_name"], row.get("crypto"), row.get("certificate"),
                        row.get("signature"), "datanommer", "1.5.0", json.dumps(row["msg"]),
                        None if row["headers"] is None else json.dumps(row["headers"]),
                    ]  # fmt: skip
                    buffer.write(",".join(_csv_field(v) for v in values) + "\n")
                    for name in set(users):
                        uid = user_ids.setdefault(name, len(user_ids) + 1)
                        joins_u.append((uid, row["id"], naive))
                    for name in set(packages):
                        pid = package_ids.setdefault(name, len(package_ids) + 1)
                        joins_p.append((pid, row["id"], naive))
                    if buffer.tell() > 1 << 20:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
            for table, names in (("users", user_ids), ("packages", package_ids)):
                with cur.copy(f"COPY {table} (id, name) FROM STDIN") as copy:
                    for name, ident in names.items():
                        copy.write_row((ident, name))
            for table, key, rows in (("users_messages", "user_id", joins_u),
                                     ("packages_messages", "package_id", joins_p)):  # fmt: skip
                with cur.copy(f"COPY {table} ({key}, msg_id, msg_timestamp) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(r)
            cur.execute("SELECT setval('messages_id_seq', %s)", (n,))
        conn.execute("ANALYZE")
    return time.perf_counter() - t0, first, last


# --- the walkers -----------------------------------------------------------------------------


def bare_read(url: str, batch: int) -> int:
    """The reader's query (each row with its users and packages) by plain psycopg, in the
    reader's session settings (JIT off), rows fetched and dropped."""
    rows = 0
    position = Position(datetime(1970, 1, 1), -1)  # noqa: DTZ001
    end = datetime(9999, 12, 31)  # noqa: DTZ001
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET jit = off")
        while True:
            got = conn.execute(
                _BATCH, {"t": position.timestamp, "id": position.id, "until": end, "n": batch}
            ).fetchall()
            if not got:
                return rows
            rows += len(got)
            position = Position(got[-1][1], got[-1][0])
            if len(got) < batch:
                return rows


def reader_only(url: str, settings: DatanommerConfig, raw: bool) -> int:
    reader = DatanommerReader(url, settings)
    n = 0
    try:
        if raw:
            for item in items(reader.batches(None, None)):
                messages.normalize(item)
                n += 1
        else:
            converter = Converter(configuration.MessagesConfig())
            for _ in records(reader.batches(None, None), converter):
                n += 1
    finally:
        reader.close()
    return n


def full_import(url: str, store: Path, batch: int) -> tuple[int, dict[str, Any]]:
    cfg = configuration.from_dict(
        {"store": {"path": str(store)}, "http": {"enabled": False},
         "datanommer": {"batch_size": batch}}
    )  # fmt: skip
    pipeline = open_pipeline(cfg, discover())
    try:
        result = import_database(pipeline, url, None, None, threading.Event())
        processed = pipeline.stats.processed["import"]
        flushes = pipeline.stats.flushes
    finally:
        pipeline.close()
    return processed, {"flushes": flushes, "complete": result.complete, **result.details}


def datagrepper_backfill(url: str, start: float, end: float) -> int:
    config = BackfillConfig(url=url, concurrency=4, window=timedelta(minutes=10))
    got: list[Any] = []
    Backfill(config, got.append, lambda _t: None).run([Range(start, end)])
    return len({i["msg_id"] for i in got})


def count_in(url: str, start: float, end: float) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        row = conn.execute(
            "SELECT count(*) FROM messages WHERE timestamp >= %s AND timestamp < %s",
            (datetime.fromtimestamp(start, UTC).replace(tzinfo=None),
             datetime.fromtimestamp(end, UTC).replace(tzinfo=None)),
        ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


def timed(what: str, run: Any, *args: Any) -> tuple[float, Any]:
    log(f"  {what}")
    t0 = time.perf_counter()
    out = run(*args)
    seconds = time.perf_counter() - t0
    log(f"    {seconds:.2f} s")
    return seconds, out


# --- report ------------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    m, f = r["machine"], r["figures"]
    n, dgn = r["messages"], r["datagrepper_messages"]
    rows = [
        ("bare psycopg read (the limit)", f["bare"]),
        ("reader: rows to Message, no pipeline", f["reader"]),
        ("reader: rows to /raw items + normalize, no pipeline", f["reader_raw"]),
        ("import: reader + pipeline (every bundled plugin) + store", f["import"]),
        (f"datagrepper backfill, first {dgn:,} messages, no pipeline", f["datagrepper"]),
    ]
    t = r["targets"]
    lines = [
        f"### {NAME}: importing from a datanommer database vs a bare read and the datagrepper "
        "backfill",
        "",
        f"{r['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['python']} · psycopg "
        f"{m['psycopg']} · PostgreSQL {m['postgresql']} · datagrepper 1.1.0 (gunicorn, 4 "
        f"workers) · batch {r['batch_size']:,} rows · load average {m['loadavg']} at start, "
        f"{r['loadavg_end']} at end · a shared, busy machine",
        "",
        f"Data: {n:,} scaled-corpus messages (bench/corpus.py, seed {r['seed']}) over "
        f"{r['hours']:.1f} h, COPY-loaded into datanommer's tables in {r['load_seconds']:.0f} s "
        f"(untimed); {r['users']:,} user and {r['packages']:,} package join rows.",
        "",
        "| walk | messages | s | messages/s | µs a message |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, fig in rows:
        lines.append(
            f"| {label} | {fig['messages']:,} | {fig['seconds']:.2f} | "
            f"{fig['rate']:,.0f} | {1e6 / fig['rate']:.1f} |"
        )
    lines += [
        "",
        f"Pipeline cost: {r['pipeline_us']:.1f} µs a message (import - reader); the reader "
        f"alone is {f['reader']['rate'] / f['bare']['rate']:.2f} of the bare read, the fast "
        f"path {f['reader']['rate'] / f['reader_raw']['rate']:.2f}x the /raw-item path. "
        f"Projection for {PROJECTED:,} messages: import {r['projection_hours']:.1f} h, reader "
        f"alone {r['projection_reader_hours']:.1f} h, datagrepper backfill "
        f"{r['projection_datagrepper_hours']:.0f} h.",
        "",
        "| target | measured | target | result |",
        "|---|---:|---|---|",
        f"| import / datagrepper backfill | {r['vs_datagrepper']:.1f}x | >= "
        f"{TARGETS['vs_datagrepper']:g}x | {'PASS' if t['vs_datagrepper'] else 'FAIL'} |",
        f"| import / bare read | {r['vs_bare']:.3f} | >= {TARGETS['vs_bare']:g} | "
        f"{'PASS' if t['vs_bare'] else 'FAIL'} |",
        f"| 250M messages, projected | {r['projection_hours']:.1f} h | < "
        f"{TARGETS['projection_hours']:g} h | {'PASS' if t['projection'] else 'FAIL'} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--datagrepper-messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s of the data (20)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    if min(args.messages, args.datagrepper_messages, args.batch_size) < 1:
        parser.error("--messages, --datagrepper-messages and --batch-size must be > 0")
    args.datagrepper_messages = min(args.datagrepper_messages, args.messages)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gen = Generator(args.seed, start=T0, rate=args.rate)
    settings = DatanommerConfig(batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp, contextlib.ExitStack() as st:
        root = Path(tmp) / "datagrepper"
        root.mkdir()
        log("starting datagrepper over a private PostgreSQL cluster")
        try:
            server = st.enter_context(datagrepper_server(root, workers=4))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the harness skips or fails when something is missing
            log(f"cannot start datagrepper: {type(exc).__name__}: {exc}")
            return 2
        url = server.cluster.url
        log(f"loading {args.messages:,} messages with COPY")
        load_seconds, first, last = load(url, gen, args.messages)
        with psycopg.connect(url, autocommit=True) as conn:
            pg = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
            counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                      for t in ("messages", "users_messages", "packages_messages")]  # fmt: skip
        if counts[0] != args.messages:
            log(f"the database holds {counts[0]} messages, not {args.messages}")
            return 1
        info = common.machine(psycopg=version("psycopg"), postgresql=pg)
        figures: dict[str, dict[str, float]] = {}

        def figure(key: str, seconds: float, n: int) -> None:
            figures[key] = {"messages": n, "seconds": seconds, "rate": n / seconds}

        s, n = timed("bare read", bare_read, url, args.batch_size)
        figure("bare", s, n)
        s, n = timed("reader", reader_only, url, settings, False)
        figure("reader", s, n)
        s, n = timed("reader, /raw items", reader_only, url, settings, True)
        figure("reader_raw", s, n)
        s, (n, details) = timed("import", full_import, url, Path(tmp) / "store.sqlite",
                                args.batch_size)  # fmt: skip
        figure("import", s, n)
        # the datagrepper slice: its first messages (the generator's times are in order)
        slice_end = T0 + args.datagrepper_messages / args.rate
        expected = count_in(url, first, slice_end)
        s, n = timed("datagrepper backfill", datagrepper_backfill, server.url, first, slice_end)
        figure("datagrepper", s, n)
        wrong = [k for k, want in (("bare", args.messages), ("reader", args.messages),
                                   ("reader_raw", args.messages), ("import", args.messages),
                                   ("datagrepper", expected))
                 if figures[k]["messages"] != want]  # fmt: skip
    imp = figures["import"]["rate"]
    report: dict[str, Any] = {
        "benchmark": NAME,
        "date": started,
        "machine": info,
        "seed": args.seed,
        "messages": args.messages,
        "datagrepper_messages": expected,
        "batch_size": args.batch_size,
        "hours": (last - first) / 3600,
        "load_seconds": load_seconds,
        "users": counts[1],
        "packages": counts[2],
        "unit": "messages/s",
        "figures": figures,
        "import_details": details,
        "pipeline_us": 1e6
        * (figures["import"]["seconds"] - figures["reader"]["seconds"])
        / args.messages,
        "vs_datagrepper": imp / figures["datagrepper"]["rate"],
        "vs_bare": imp / figures["bare"]["rate"],
        "ratio": imp / figures["bare"]["rate"],
        "projection_hours": PROJECTED / imp / 3600,
        "projection_reader_hours": PROJECTED / figures["reader"]["rate"] / 3600,
        "projection_datagrepper_hours": PROJECTED / figures["datagrepper"]["rate"] / 3600,
        "loadavg_end": loadavg(),
        "wrong_counts": wrong,
        "ok": not wrong,
    }
    report["targets"] = {
        "vs_datagrepper": report["vs_datagrepper"] >= TARGETS["vs_datagrepper"],
        "vs_bare": report["vs_bare"] >= TARGETS["vs_bare"],
        "projection": report["projection_hours"] < TARGETS["projection_hours"],
    }
    common.publish(report, markdown(report), args.json)
    if wrong:
        log(f"counts differ from the database's: {wrong}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
