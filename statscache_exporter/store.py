"""The embedded store: SQLite in WAL mode, one transaction per flush.

A flush writes, atomically: the ids of the messages it covers, the touched buckets, the touched
totals and the checkpoint. A message is therefore either entirely in the store (its id, its
counts) or not at all, and a restart that sees the same message again skips it by id: nothing
is lost or counted twice across a crash.

Tables:

- ``series``: one row per (metric, labels), with the plugin and kind; labels as sorted JSON.
- ``buckets``: (series, resolution, start) → the bucket's full value; for gauges also the
  (ts, msg_id) of the message that set it, so a late older message never overwrites it.
- ``totals``: series → cumulative count (counters) or current value (gauges).
- ``seen``: ids of processed messages, kept for the dedup window (by the time they were stored).
- ``outbox``: base-resolution buckets changed since InfluxDB last acknowledged them (only when
  the InfluxDB sink is on); queued in the flush that changes the bucket, removed by the sender.
- ``meta``: schema version and the checkpoint ``covered_until``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from statscache_exporter.aggregate import Batch, GaugeValue, Series, SeriesKey
from statscache_exporter.plugin import Metric

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    plugin TEXT NOT NULL,
    metric TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('counter', 'gauge')),
    labels TEXT NOT NULL,
    created REAL NOT NULL DEFAULT 0,
    UNIQUE (metric, labels)
);
CREATE TABLE IF NOT EXISTS buckets (
    series INTEGER NOT NULL REFERENCES series(id),
    resolution INTEGER NOT NULL,
    start INTEGER NOT NULL,
    value NOT NULL,
    ts REAL,
    msg_id TEXT,
    PRIMARY KEY (series, resolution, start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buckets_by_time ON buckets (resolution, start);
CREATE TABLE IF NOT EXISTS totals (
    series INTEGER PRIMARY KEY REFERENCES series(id),
    value NOT NULL,
    ts REAL,
    msg_id TEXT
);
CREATE TABLE IF NOT EXISTS seen (msg_id TEXT PRIMARY KEY, stored_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (stored_at);
CREATE TABLE IF NOT EXISTS outbox (
    start INTEGER NOT NULL,
    series INTEGER NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    value NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (start, series)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_age ON outbox (failed, since);
"""

_ADD_COUNT = """
INSERT INTO buckets (series, resolution, start, value) VALUES (?, ?, ?, ?)
ON CONFLICT (series, resolution, start) DO UPDATE SET value = value + excluded.value
"""
_SET_GAUGE = """
INSERT INTO buckets (series, resolution, start, value, ts, msg_id) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (series, resolution, start) DO UPDATE
SET value = excluded.value, ts = excluded.ts, msg_id = excluded.msg_id
WHERE (excluded.ts, excluded.msg_id) > (buckets.ts, buckets.msg_id)
"""
_SET_TOTAL = "INSERT OR REPLACE INTO totals (series, value, ts, msg_id) VALUES (?, ?, ?, ?)"
# A bucket changed: (re)queue it for InfluxDB with its full value as this flush leaves it,
# stamped with the flush's sequence number. The sender unqueues only rows stamped no later than
# the flush it had seen when it read them: a change while they were in flight keeps them queued.
# Rows are clustered by time, so a batch is one range read and one range delete.
_QUEUE = """
INSERT INTO outbox (start, series, seq, value, since)
SELECT start, series, ?, value, ? FROM buckets WHERE series = ? AND resolution = ? AND start = ?
ON CONFLICT (start, series) DO UPDATE
SET seq = excluded.seq, failed = 0, value = excluded.value
"""


class StoreError(Exception):
    """The store cannot be opened or written; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush committed."""

    messages: int
    buckets: int
    totals: int
    new_series: int
    #: base buckets not queued for InfluxDB: recreated after retention pruned them (see _queue)
    late_unqueued: int = 0


def labels_json(series: Series) -> str:
    """Canonical text of a series' labels: JSON with sorted keys, no spaces."""
    return json.dumps(series.label_dict(), sort_keys=True, separators=(",", ":"))


class Store:
    """The SQLite store. Not thread-safe: the pipeline's own thread owns it."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._series_ids: dict[SeriesKey, int] = {}
        #: resolution → the bucket start before which retention has pruned
        self._pruned_before = {
            int(key.split(":")[1]): int(value)
            for key, value in self.db.execute(
                "SELECT key, value FROM meta WHERE key LIKE 'pruned_before:%'"
            )
        }

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        row = None
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {row[0]}, newer than this exporter's "
                f"{SCHEMA_VERSION}: upgrade the exporter or point store.path elsewhere"
            )
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(series)")}
            if "created" not in columns:  # schema 1 → 2
                self.db.execute("ALTER TABLE series ADD COLUMN created REAL NOT NULL DEFAULT 0")
            outbox_columns = {r[1] for r in self.db.execute("PRAGMA table_info(outbox)")}
            if "seq" not in outbox_columns:  # schema 3 → 4: by time, value and seq inside
                self._rebuild_outbox()
            self.db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _rebuild_outbox(self) -> None:
        self.db.execute("ALTER TABLE outbox RENAME TO outbox_3")
        self.db.execute("DROP INDEX IF EXISTS outbox_pending")
        self.db.execute("DROP INDEX IF EXISTS outbox_age")
        for statement in _SCHEMA.split(";"):
            if "outbox" in statement:
                self.db.execute(statement)
        self.db.execute(
            "INSERT INTO outbox (start, series, seq, failed, value, since) "
            "SELECT o.start, o.series, 0, o.failed, b.value, o.since FROM outbox_3 o "
            "JOIN buckets b ON b.series = o.series AND b.start = o.start AND b.resolution = "
            "(SELECT min(resolution) FROM buckets)"
        )
        self.db.execute("DROP TABLE outbox_3")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # --- reading -----------------------------------------------------------------------

    def is_seen(self, msg_id: str) -> bool:
        """Whether a message with this id is already counted in the store."""
        return (
            self.db.execute("SELECT 1 FROM seen WHERE msg_id = ?", (msg_id,)).fetchone() is not None
        )

    def covered_until(self) -> datetime | None:
        """The time up to which every message is known to be processed, if any."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'covered_until'").fetchone()
        return datetime.fromtimestamp(float(row[0]), UTC) if row else None

    def load(
        self, metrics: Mapping[str, tuple[str, Metric]]
    ) -> tuple[dict[SeriesKey, Series], dict[SeriesKey, int | GaugeValue]]:
        """The series and totals of the given metrics (name → (plugin, declaration)).

        Series of metrics no longer declared stay in the store untouched but are not loaded.
        """
        series: dict[SeriesKey, Series] = {}
        totals: dict[SeriesKey, int | GaugeValue] = {}
        rows = self.db.execute(
            "SELECT s.id, s.metric, s.labels, s.created, t.value, t.ts, t.msg_id "
            "FROM series s LEFT JOIN totals t ON t.series = s.id"
        )
        for sid, name, labels, created, value, ts, msg_id in rows:
            if name not in metrics:
                continue
            plugin, metric = metrics[name]
            stored = json.loads(labels)
            if set(stored) != set(metric.labels):
                continue  # the plugin changed its labels; the old series stays in the store
            key: SeriesKey = (name, tuple(stored[label] for label in metric.labels))
            series[key] = Series(plugin, metric, key[1], created)
            self._series_ids[key] = sid
            if value is None:
                continue
            if metric.kind == "counter":
                totals[key] = int(value)
            else:
                totals[key] = GaugeValue(float(ts), str(msg_id), float(value))
        return series, totals

    # --- writing -----------------------------------------------------------------------

    def commit(
        self,
        batch: Batch,
        message_ids: Iterable[str],
        covered_until: datetime | None = None,
        outbox_resolution: int | None = None,
    ) -> FlushResult:
        """Write one flush in one transaction; on any error nothing of it is written."""
        ids = list(message_ids)
        now = time.time()
        new_keys = [key for key in batch.series if key not in self._series_ids]
        late: set[tuple[int, int]] = set()
        try:
            with self._transaction() as db:
                self._insert_series(db, [(key, batch.series[key]) for key in new_keys])
                if outbox_resolution is not None:
                    late = self._recreated(db, batch, outbox_resolution)
                db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", ((i, now) for i in ids))
                sid = self._series_ids
                db.executemany(
                    _ADD_COUNT,
                    (
                        (sid[(m, lv)], res, start, n)
                        for (m, lv, res, start), n in batch.counter_deltas.items()
                    ),
                )
                db.executemany(
                    _SET_GAUGE,
                    (
                        (sid[(m, lv)], res, start, g.value, g.ts, g.msg_id)
                        for (m, lv, res, start), g in batch.gauge_candidates.items()
                    ),
                )
                db.executemany(
                    _SET_TOTAL,
                    (
                        (sid[key], t.value, t.ts, t.msg_id)
                        if isinstance(t, GaugeValue)
                        else (sid[key], t, None, None)
                        for key, t in batch.totals.items()
                    ),
                )
                if outbox_resolution is not None:
                    self._queue(db, batch, outbox_resolution, now, late)
                if covered_until is not None:
                    self._advance_checkpoint(db, covered_until)
        except sqlite3.Error as exc:
            for key in new_keys:  # their ids were rolled back with the transaction
                self._series_ids.pop(key, None)
            raise StoreError(
                f"flush to {self.path} failed, nothing of it was written: {exc}"
            ) from exc
        return FlushResult(
            messages=len(ids),
            buckets=len(batch.counter_deltas) + len(batch.gauge_candidates),
            totals=len(batch.totals),
            new_series=len(new_keys),
            late_unqueued=len(late),
        )

    def _insert_series(self, db: sqlite3.Connection, new: list[tuple[SeriesKey, Series]]) -> None:
        for key, s in new:
            row = db.execute(
                "INSERT INTO series (plugin, metric, kind, labels, created) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (metric, labels) DO UPDATE SET plugin = excluded.plugin RETURNING id",
                (s.plugin, s.metric.name, s.metric.kind, labels_json(s), s.created),
            ).fetchone()
            self._series_ids[key] = int(row[0])

    def _base_keys(self, batch: Batch, resolution: int) -> set[tuple[int, int]]:
        sid = self._series_ids
        return {
            (sid[(m, lv)], start)
            for bucket_keys in (batch.counter_deltas, batch.gauge_candidates)
            for (m, lv, res, start) in bucket_keys
            if res == resolution
        }

    def _recreated(
        self, db: sqlite3.Connection, batch: Batch, resolution: int
    ) -> set[tuple[int, int]]:
        """Base buckets this flush is about to create below the retention line. Retention may
        have pruned them after InfluxDB had their full count: writing the new, partial count
        would overwrite it. (Read before the flush writes its buckets.)"""
        line = self._pruned_before.get(resolution)
        if line is None:
            return set()
        return {
            (series, start)
            for series, start in self._base_keys(batch, resolution)
            if start < line
            and db.execute(
                "SELECT 1 FROM buckets WHERE series = ? AND resolution = ? AND start = ?",
                (series, resolution, start),
            ).fetchone()
            is None
        }

    def _queue(
        self,
        db: sqlite3.Connection,
        batch: Batch,
        resolution: int,
        now: float,
        skip: set[tuple[int, int]],
    ) -> None:
        touched = self._base_keys(batch, resolution) - skip
        if not touched:
            return
        row = db.execute("SELECT value FROM meta WHERE key = 'outbox_seq'").fetchone()
        seq = int(row[0]) + 1 if row else 1
        db.execute(
            "INSERT INTO meta VALUES ('outbox_seq', ?) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value",
            (str(seq),),
        )
        db.executemany(
            _QUEUE, ((seq, now, series, resolution, start) for series, start in sorted(touched))
        )

    @staticmethod
    def _advance_checkpoint(db: sqlite3.Connection, covered_until: datetime) -> None:
        db.execute(
            "INSERT INTO meta VALUES ('covered_until', ?) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value "
            "WHERE CAST(excluded.value AS REAL) > CAST(meta.value AS REAL)",
            (repr(covered_until.timestamp()),),
        )

    def prune(
        self, retention: Mapping[int, float | None], reference: float, dedup_window: float
    ) -> int:
        """Delete buckets older than their resolution's retention (seconds before
        ``reference``; None keeps them forever) and ids older than the dedup window."""
        deleted = 0
        with self._transaction() as db:
            for res, keep in retention.items():
                if keep is not None:
                    line = max(int(reference - keep), self._pruned_before.get(res, 0))
                    db.execute(
                        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                        "SET value = excluded.value",
                        (f"pruned_before:{res}", str(line)),
                    )
                    self._pruned_before[res] = line
                    # a bucket InfluxDB has not acknowledged yet stays until it has
                    cur = db.execute(
                        "DELETE FROM buckets WHERE resolution = ? AND start < ? AND NOT EXISTS "
                        "(SELECT 1 FROM outbox o WHERE o.series = buckets.series "
                        "AND o.start = buckets.start AND o.failed = 0)",
                        (res, int(reference - keep)),
                    )
                    deleted += cur.rowcount
            db.execute("DELETE FROM seen WHERE stored_at < ?", (time.time() - dedup_window,))
            # rows InfluxDB refused, whose bucket retention has now removed
            db.execute(
                "DELETE FROM outbox WHERE failed = 1 AND NOT EXISTS (SELECT 1 FROM buckets b "
                "WHERE b.series = outbox.series AND b.start = outbox.start)"
            )
        return deleted

    # --- inspection --------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The store's logical contents, free of surrogate ids: for tests and debugging."""
        buckets = sorted(
            self.db.execute(
                "SELECT s.metric, s.labels, b.resolution, b.start, b.value, b.ts, b.msg_id "
                "FROM buckets b JOIN series s ON s.id = b.series"
            )
        )
        totals = sorted(
            self.db.execute(
                "SELECT s.metric, s.labels, t.value, t.ts, t.msg_id FROM totals t "
                "JOIN series s ON s.id = t.series"
            )
        )
        seen = sorted(r[0] for r in self.db.execute("SELECT msg_id FROM seen"))
        return {"buckets": buckets, "totals": totals, "seen": seen}

    def series_per_plugin(self) -> dict[str, int]:
        return dict(
            self.db.execute("SELECT plugin, count(*) FROM series GROUP BY plugin ORDER BY plugin")
        )

    def totals_by_metric(self, metric: str) -> dict[str, float]:
        """Labels JSON → total, for one metric."""
        return dict(
            self.db.execute(
                "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
                "WHERE s.metric = ?",
                (metric,),
            )
        )


@dataclass(frozen=True, slots=True)
class BucketQuery:
    """Which bucket rows the REST API asks for; labels: name → accepted values (OR)."""

    plugin: str
    resolution: int
    start: int
    stop: int
    metrics: tuple[str, ...] = ()
    labels: Mapping[str, tuple[str, ...]] | None = None
    descending: bool = True


class Reader:
    """Read-only queries, for the HTTP threads: each call opens its own connection, so a
    reader never shares one with the pipeline thread (WAL lets both run at once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # a URI, for mode=ro; '?', '#' and '%' in the path must be percent-encoded in it
        uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _where(q: BucketQuery) -> tuple[str, list[Any]]:
        clauses = ["s.plugin = ?", "b.resolution = ?", "b.start >= ?", "b.start <= ?"]
        params: list[Any] = [q.plugin, q.resolution, q.start, q.stop]
        if q.metrics:
            clauses.append(f"s.metric IN ({','.join('?' * len(q.metrics))})")
            params.extend(q.metrics)
        for name, values in (q.labels or {}).items():
            clauses.append(f"json_extract(s.labels, ?) IN ({','.join('?' * len(values))})")
            params.append(f'$."{name}"')
            params.extend(values)
        return " AND ".join(clauses), params

    def outbox_state(self) -> tuple[int, int, float | None]:
        """The InfluxDB outbox as it is now: (pending, failed, oldest pending's queue time)."""
        with self._connect() as db:
            return outbox_state(db)

    def ping(self) -> None:
        """Raise if the store cannot be opened and read."""
        with self._connect() as db:
            db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()

    def count(self, q: BucketQuery) -> int:
        where, params = self._where(q)
        with self._connect() as db:
            row = db.execute(
                f"SELECT count(*) FROM buckets b JOIN series s ON s.id = b.series WHERE {where}",
                params,
            ).fetchone()
        return int(row[0])

    def rows(
        self, q: BucketQuery, offset: int, limit: int
    ) -> list[tuple[int, str, dict[str, str], float]]:
        """(bucket start, metric, labels, value), by start then metric and labels, so that
        pages are stable."""
        where, params = self._where(q)
        direction = "DESC" if q.descending else "ASC"
        with self._connect() as db:
            found = db.execute(
                f"SELECT b.start, s.metric, s.labels, b.value FROM buckets b "
                f"JOIN series s ON s.id = b.series WHERE {where} "
                f"ORDER BY b.start {direction}, s.metric, s.labels LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [(start, name, json.loads(labels), value) for start, name, labels, value in found]


class Pending(NamedTuple):
    """A queued bucket as the InfluxDB sender reads it: its full value as of the last flush."""

    start: int
    series: int
    value: float


@dataclass(frozen=True, slots=True)
class Queued:
    """A batch read from the outbox, and the last flush whose changes it includes."""

    rows: list[Pending]
    seq: int

    @property
    def last(self) -> tuple[int, int]:
        return self.rows[-1].start, self.rows[-1].series


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    metric: str
    labels: str  # JSON
    kind: str


class Outbox:
    """The InfluxDB sender's side of the outbox, on its own connection (its own thread)."""

    def __init__(self, path: str | Path, resolution: int) -> None:
        self.path = Path(path)
        self.resolution = resolution
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        # an acknowledgement lost to a power cut only means the points are sent again
        self.db.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        self.db.close()

    def next_batch(self, limit: int, after: tuple[int, int] | None = None) -> Queued:
        """The oldest queued buckets (after a key, to read ahead of an unacknowledged batch)."""
        start, series = after if after is not None else (-(2**62), -1)
        self.db.execute("BEGIN")  # one snapshot: the rows and the flush they include
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'outbox_seq'").fetchone()
            # "+failed": walk the table in key (time) order, not the (failed, since) index,
            # which would sort the whole queue for every batch
            rows = self.db.execute(
                "SELECT start, series, value FROM outbox WHERE +failed = 0 "
                "AND (start, series) > (?, ?) ORDER BY start, series LIMIT ?",
                (start, series, limit),
            ).fetchall()
        finally:
            self.db.execute("COMMIT")
        return Queued(list(map(Pending._make, rows)), int(row[0]) if row else 0)

    def series_info(self, ids: Iterable[int]) -> dict[int, SeriesInfo]:
        wanted = list(ids)
        found: dict[int, SeriesInfo] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows = self.db.execute(
                f"SELECT id, metric, labels, kind FROM series WHERE id IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update((sid, SeriesInfo(m, lab, k)) for sid, m, lab, k in rows)
        return found

    def acknowledge_batch(self, batch: Queued) -> None:
        """InfluxDB has the whole batch: unqueue its key range in one statement, but not rows a
        later flush changed (or added) since it was read, nor rows set aside as failed."""
        first = batch.rows[0]
        self._write(
            "DELETE FROM outbox WHERE (start, series) >= (?, ?) AND (start, series) <= (?, ?) "
            "AND +failed = 0 AND seq <= ?",
            [(first.start, first.series, *batch.last, batch.seq)],
        )

    def acknowledge(self, sent: Iterable[Pending], seq: int) -> None:
        """InfluxDB has these (some of a batch): unqueue them unless changed since."""
        self._write(
            "DELETE FROM outbox WHERE start = ? AND series = ? AND seq <= ?",
            [(p.start, p.series, seq) for p in sent],
        )

    def mark_failed(self, refused: Iterable[Pending], seq: int) -> None:
        """InfluxDB refused these for their data: keep them aside (a later change requeues)."""
        self._write(
            "UPDATE outbox SET failed = 1 WHERE start = ? AND series = ? AND seq <= ?",
            [(p.start, p.series, seq) for p in refused],
        )

    def _write(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(sql, params)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def state(self) -> tuple[int, int, float | None]:
        return outbox_state(self.db)


def outbox_state(db: sqlite3.Connection) -> tuple[int, int, float | None]:
    """(pending rows, failed rows, when the oldest pending row was queued): index-only."""
    pending, oldest = db.execute(
        "SELECT count(*), min(since) FROM outbox WHERE failed = 0"
    ).fetchone()
    failed = db.execute("SELECT count(*) FROM outbox WHERE failed = 1").fetchone()[0]
    return int(pending), int(failed), oldest
