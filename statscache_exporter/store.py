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
- ``outbox``: the lines of line protocol InfluxDB has not acknowledged yet (only when the
  InfluxDB sink is on). A flush appends the lines of the base-resolution buckets it changed as
  parts of at most ``influxdb.batch_size`` lines, each part one text that is a request body as
  it stands; the sender (``outbox.py``) sends whole parts and deletes them once acknowledged.
  A bucket that changes again is appended again with its new full count: parts go out in
  order, so InfluxDB ends with the latest.
- ``outbox_aside``: points set aside, by (bucket start, series): refused by InfluxDB for their
  data (with the line), or of a series line protocol cannot carry (no line). A later change
  of the bucket queues it again.
- ``influx_keys``: series → its escaped measurement and tags, from which the flush builds the
  lines; NULL for a series line protocol cannot carry.
- ``gaps``: times a live source was disconnected (epoch seconds), for the gap filler.
- ``plugins``: every plugin the store has run, since when, and for one added to a store that
  already had history, the range of history the gap filler fetches for it alone (and how far
  that got); ``plugin_seen``: the ids counted for such a plugin alone, until its range is done.
- ``meta``: schema version and the checkpoint ``covered_until``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from statscache_exporter.aggregate import Batch, GaugeValue, Series, SeriesKey
from statscache_exporter.plugin import Metric

SCHEMA_VERSION = 7

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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    since REAL NOT NULL,
    first_start INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_aside (
    start INTEGER NOT NULL,
    series INTEGER NOT NULL,
    since REAL NOT NULL,
    line TEXT,
    PRIMARY KEY (start, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    source TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    filled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS influx_keys (
    series INTEGER PRIMARY KEY REFERENCES series(id),
    key TEXT,
    counter INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS plugins (
    ident TEXT PRIMARY KEY,
    registered_at REAL NOT NULL,
    history_start REAL,
    history_end REAL,
    cutoff REAL,
    covered_until REAL
);
CREATE TABLE IF NOT EXISTS plugin_seen (
    ident TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    PRIMARY KEY (ident, msg_id)
) WITHOUT ROWID;
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
# A bucket's point in line protocol: its series' key, its full value as a field (an integer
# count, or a float gauge in Python's shortest exact form) and its start (precision: seconds).
# NULL when the series has no key.
_LINE = (
    "k.key || CASE WHEN k.counter THEN ' count=' || CAST(b.value AS INTEGER) || 'i ' "
    "ELSE ' value=' || influx_float(b.value) || ' ' END || b.start"
)
# Buckets a flush changed, queued for InfluxDB as this flush leaves them: their lines, in time
# order, cut into parts of at most :part lines, each part one text (a request body as it is).
# :keys is a JSON array of [series, start]; series without a key are set aside in Python.
_QUEUE = f"""
INSERT INTO outbox (since, first_start, lines, body)
SELECT :since, min(start), count(*), group_concat(line, char(10)) FROM (
    SELECT b.start AS start, {_LINE} AS line,
           (row_number() OVER (ORDER BY b.start, b.series) - 1) / :part AS part
    FROM json_each(:keys) j
    CROSS JOIN buckets b ON b.series = json_extract(j.value, '$[0]')
        AND b.resolution = :resolution AND b.start = json_extract(j.value, '$[1]')
    CROSS JOIN influx_keys k ON k.series = b.series
    WHERE k.key IS NOT NULL
) GROUP BY part ORDER BY part
"""
#: lines per part when a store carries an outbox of an older schema over (the default batch)
_CARRIED_PART = 5000

#: (metric, labels JSON) → the series' escaped measurement and tags, None if unwritable
LineKey = Callable[[str, str], "str | None"]


def _influx_float(value: float) -> str:
    return repr(float(value))


def _keyless(db: sqlite3.Connection) -> set[int]:
    return {row[0] for row in db.execute("SELECT series FROM influx_keys WHERE key ISNULL")}


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


@dataclass(frozen=True)
class PluginHistory:
    """History a plugin added to a store that already had some gets for itself alone: the
    messages from ``start`` to ``end`` (epoch seconds) that the store counted before the plugin
    was registered (their ids ``seen`` before ``registered_at``), or, not seen, that are older
    than ``cutoff`` (from where the shared backfill counts them for every plugin).
    ``covered_until``: how far the gap filler has fetched it, committed."""

    ident: str
    registered_at: float
    start: float
    end: float
    cutoff: float
    covered_until: float | None = None


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
            self.db.create_function("influx_float", 1, _influx_float, deterministic=True)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._series_ids: dict[SeriesKey, int] = {}
        self._line_key: LineKey | None = None
        # set by prepare_outbox: series whose points line protocol cannot carry, and how the
        # outbox is cut
        self._keyless: set[int] = set()
        self._outbox_resolution = 1
        self._part_lines = _CARRIED_PART
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
            if "start" in outbox_columns:  # schema 3 to 6 → 7: a row per point → parts
                self._carry_outbox_over("line" in outbox_columns)
            self.db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _carry_outbox_over(self, has_lines: bool) -> None:
        """A row per queued point (schemas 3 to 6) → parts of lines; rows refused, or without a
        line (schemas 3 and 4 stored none), are set aside: :meth:`prepare_outbox` queues those
        again once their series has a key."""
        self.db.execute("ALTER TABLE outbox RENAME TO outbox_old")
        for index in ("outbox_pending", "outbox_age", "outbox_failed"):
            self.db.execute(f"DROP INDEX IF EXISTS {index}")
        for statement in _SCHEMA.split(";"):
            if "EXISTS outbox (" in statement:
                self.db.execute(statement)
        line = "line" if has_lines else "NULL"
        self.db.execute(
            "INSERT INTO outbox (since, first_start, lines, body) "
            "SELECT min(since), min(start), count(*), group_concat(line, char(10)) FROM ("
            f"SELECT since, start, {line} AS line, "
            f"(row_number() OVER (ORDER BY start, series) - 1) / {_CARRIED_PART} AS part "
            f"FROM outbox_old WHERE failed = 0 AND {line} IS NOT NULL"
            ") GROUP BY part ORDER BY part"
        )
        self.db.execute(
            f"INSERT OR IGNORE INTO outbox_aside SELECT start, series, since, {line} "
            f"FROM outbox_old WHERE failed = 1 OR {line} IS NULL"
        )
        self.db.execute("DROP TABLE outbox_old")
        self.db.execute("DELETE FROM meta WHERE key = 'outbox_seq'")

    def prepare_outbox(
        self, resolution: int, fingerprint: str, line_key: LineKey, part_lines: int
    ) -> None:
        """Keep ``influx_keys`` for every series from now on (new ones in the flush that
        creates them) and queue ``resolution``'s bucket changes in parts of ``part_lines``.
        ``fingerprint`` names what the keys depend on (the measurement prefix, the global
        tags): when it differs from the stored one, every key and queued line is rebuilt, so
        nothing queued goes out with the old tags."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'influx_keys_for'").fetchone()
            old_keys: dict[str, int] | None = None
            if row is None or row[0] != fingerprint:
                old_keys = dict(db.execute("SELECT key, series FROM influx_keys WHERE key NOTNULL"))
                db.execute("DELETE FROM influx_keys")
                db.execute(
                    "INSERT INTO meta VALUES ('influx_keys_for', ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value",
                    (fingerprint,),
                )
            missing = db.execute(
                "SELECT id, metric, labels, kind FROM series "
                "WHERE id NOT IN (SELECT series FROM influx_keys)"
            ).fetchall()
            db.executemany(
                "INSERT INTO influx_keys VALUES (?, ?, ?)",
                ((sid, line_key(m, labels), kind == "counter") for sid, m, labels, kind in missing),
            )
            self._keyless = _keyless(db)
            self._outbox_resolution, self._part_lines = resolution, part_lines
            if old_keys:
                self._rekey_outbox(db, old_keys)
            self._requeue_keyed(db)
        self._line_key = line_key

    def _rekey_outbox(self, db: sqlite3.Connection, old_keys: Mapping[str, int]) -> None:
        """Rewrite the queued lines with the keys just rebuilt (``old_keys``: key → series
        before). A point whose series has no key now is set aside."""
        new_keys = dict(db.execute("SELECT series, key FROM influx_keys"))
        for part, since, body in db.execute("SELECT id, since, body FROM outbox").fetchall():
            kept: list[str] = []
            for line in body.split("\n"):
                # "<key> <field> <time>": neither the field nor the time has a space
                key, value, start = line.rsplit(" ", 2)
                series = old_keys.get(key)
                if series is None:
                    kept.append(line)  # no series had this key: leave it as it was
                elif new_keys.get(series) is None:
                    db.execute(
                        "INSERT OR IGNORE INTO outbox_aside VALUES (?, ?, ?, NULL)",
                        (int(start), series, since),
                    )
                else:
                    kept.append(f"{new_keys[series]} {value} {start}")
            if kept:
                db.execute(
                    "UPDATE outbox SET lines = ?, body = ? WHERE id = ?",
                    (len(kept), "\n".join(kept), part),
                )
            else:
                db.execute("DELETE FROM outbox WHERE id = ?", (part,))

    def _requeue_keyed(self, db: sqlite3.Connection) -> None:
        """Queue again the points set aside for want of a key whose series has one now."""
        found = db.execute(
            "SELECT a.series, a.start FROM outbox_aside a JOIN influx_keys k ON k.series = "
            "a.series WHERE a.line ISNULL AND k.key NOTNULL"
        ).fetchall()
        if found:
            db.executemany("DELETE FROM outbox_aside WHERE series = ? AND start = ?", found)
            self._append(db, found, time.time(), self._outbox_resolution)

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

    def seen_at(self, msg_id: str) -> float | None:
        """When the message with this id was counted for every plugin (epoch seconds), if it
        was and the dedup window still remembers it."""
        row = self.db.execute("SELECT stored_at FROM seen WHERE msg_id = ?", (msg_id,)).fetchone()
        return float(row[0]) if row else None

    def seen_by_plugin(self, ident: str, msg_id: str) -> bool:
        """Whether this message was counted for this plugin alone (see :class:`PluginHistory`)."""
        return (
            self.db.execute(
                "SELECT 1 FROM plugin_seen WHERE ident = ? AND msg_id = ?", (ident, msg_id)
            ).fetchone()
            is not None
        )

    def unregistered(self, idents: Iterable[str]) -> list[str]:
        """Those of these plugins the store has never run."""
        known = {r[0] for r in self.db.execute("SELECT ident FROM plugins")}
        return [i for i in idents if i not in known]

    def has_series(self, ident: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM series WHERE plugin = ? LIMIT 1", (ident,)).fetchone()
            is not None
        )

    def register_plugin(
        self, ident: str, registered_at: float, history: tuple[float, float, float] | None
    ) -> None:
        """Record that this plugin runs from now on, with the (start, end, cutoff) of the
        history it gets for itself alone, if any (see :class:`PluginHistory`)."""
        start, end, cutoff = history if history is not None else (None, None, None)
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO plugins VALUES (?, ?, ?, ?, ?, NULL)",
                (ident, registered_at, start, end, cutoff),
            )

    def plugin_histories(self) -> list[PluginHistory]:
        """The plugins whose own history is not all fetched yet."""
        return [
            PluginHistory(*row)
            for row in self.db.execute(
                "SELECT ident, registered_at, history_start, history_end, cutoff, covered_until "
                "FROM plugins WHERE history_start IS NOT NULL "
                "AND (covered_until IS NULL OR covered_until < history_end) ORDER BY ident"
            )
        ]

    def resume_point(self, name: str) -> str | None:
        """Where the reader ``name`` (e.g. one import) had got to at the last committed flush:
        the text it gave :meth:`~statscache_exporter.pipeline.Pipeline.resume`, committed with
        the counts of the messages before it."""
        row = self.db.execute(
            "SELECT value FROM meta WHERE key = ?", (f"resume:{name}",)
        ).fetchone()
        return str(row[0]) if row else None

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
        plugin_ids: Mapping[str, Iterable[str]] | None = None,
        plugin_covered: Mapping[str, float] | None = None,
        resume: Mapping[str, str] | None = None,
    ) -> FlushResult:
        """Write one flush in one transaction; on any error nothing of it is written.
        ``plugin_ids``: plugin → ids counted for it alone; ``plugin_covered``: plugin → how
        far its own history is now fetched (see :class:`PluginHistory`); ``resume``: name →
        a reader's resume point (see :meth:`resume_point`)."""
        ids = list(message_ids)
        now = time.time()
        new_keys = [key for key in batch.series if key not in self._series_ids]
        late: set[tuple[int, int]] = set()
        try:
            with self._transaction() as db:
                self._insert_series(db, [(key, batch.series[key]) for key in new_keys])
                if self._line_key is not None:
                    self._insert_line_keys(db, new_keys, batch)
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
                if plugin_ids or plugin_covered:
                    self._advance_plugins(db, plugin_ids or {}, plugin_covered or {})
                if resume:
                    db.executemany(
                        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                        "SET value = excluded.value",
                        ((f"resume:{name}", value) for name, value in resume.items()),
                    )
        except sqlite3.Error as exc:
            for key in new_keys:  # their ids were rolled back with the transaction
                self._series_ids.pop(key, None)
            if self._line_key is not None:
                self._keyless = _keyless(self.db)
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

    def _insert_line_keys(self, db: sqlite3.Connection, new: list[SeriesKey], batch: Batch) -> None:
        assert self._line_key is not None
        line_key = self._line_key
        rows = [
            (
                self._series_ids[key],
                line_key(batch.series[key].metric.name, labels_json(batch.series[key])),
                batch.series[key].metric.kind == "counter",
            )
            for key in new
        ]
        db.executemany("INSERT OR IGNORE INTO influx_keys VALUES (?, ?, ?)", rows)
        self._keyless.update(series for series, key, _ in rows if key is None)

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
        keyless = self._keyless
        if db.execute("SELECT 1 FROM outbox_aside LIMIT 1").fetchone():
            # a later change takes a point set aside out of there (and queues it, if it can)
            db.executemany(
                "DELETE FROM outbox_aside WHERE series = ? AND start = ?",
                (key for key in touched if key[0] not in keyless),
            )
        db.executemany(
            "INSERT OR IGNORE INTO outbox_aside VALUES (?, ?, ?, NULL)",
            ((start, series, now) for series, start in touched if series in keyless),
        )
        self._append(db, [key for key in touched if key[0] not in keyless], now, resolution)

    def _append(
        self, db: sqlite3.Connection, keys: list[tuple[int, int]], now: float, resolution: int
    ) -> None:
        """Append the lines of these base buckets (series, start) as they are now, in parts."""
        if keys:
            db.execute(
                _QUEUE,
                {
                    "since": now,
                    "part": self._part_lines,
                    "keys": json.dumps(keys, separators=(",", ":")),
                    "resolution": resolution,
                },
            )

    def record_gap(self, source: str, start: float, end: float) -> None:
        """A live source may have missed messages between these times."""
        with self._transaction() as db:
            db.execute(
                'INSERT INTO gaps (source, start, "end") VALUES (?, ?, ?)', (source, start, end)
            )

    def mark_gap_filled(self, source: str, start: float, end: float) -> None:
        with self._transaction() as db:
            db.execute(
                'UPDATE gaps SET filled = 1 WHERE source = ? AND start = ? AND "end" = ?',
                (source, start, end),
            )

    def gaps(self, include_filled: bool = False) -> list[tuple[str, float, float]]:
        """(source, start, end) of the recorded gaps, oldest first."""
        where = "" if include_filled else " WHERE filled = 0"
        return [
            (str(src), float(a), float(b))
            for src, a, b in self.db.execute(
                f'SELECT source, start, "end" FROM gaps{where} ORDER BY start, rowid'
            )
        ]

    @staticmethod
    def _advance_checkpoint(db: sqlite3.Connection, covered_until: datetime) -> None:
        db.execute(
            "INSERT INTO meta VALUES ('covered_until', ?) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value "
            "WHERE CAST(excluded.value AS REAL) > CAST(meta.value AS REAL)",
            (repr(covered_until.timestamp()),),
        )

    @staticmethod
    def _advance_plugins(
        db: sqlite3.Connection, ids: Mapping[str, Iterable[str]], covered: Mapping[str, float]
    ) -> None:
        for ident, msg_ids in ids.items():
            db.executemany(
                "INSERT OR IGNORE INTO plugin_seen VALUES (?, ?)", ((ident, i) for i in msg_ids)
            )
        for ident, until in covered.items():
            db.execute(
                "UPDATE plugins SET covered_until = ? WHERE ident = ? "
                "AND (covered_until IS NULL OR covered_until < ?)",
                (until, ident, until),
            )
        # a plugin's own history all counted: its ids are no longer needed
        db.execute(
            "DELETE FROM plugin_seen WHERE ident IN (SELECT ident FROM plugins "
            "WHERE covered_until >= history_end)"
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
                    cur = db.execute(
                        "DELETE FROM buckets WHERE resolution = ? AND start < ?",
                        (res, self._prune_before(db, res, int(reference - keep))),
                    )
                    deleted += cur.rowcount
            db.execute("DELETE FROM seen WHERE stored_at < ?", (time.time() - dedup_window,))
            # points set aside whose bucket retention has now removed
            db.execute(
                "DELETE FROM outbox_aside WHERE NOT EXISTS (SELECT 1 FROM buckets b "
                "WHERE b.series = outbox_aside.series AND b.start = outbox_aside.start)"
            )
        return deleted

    def _prune_before(self, db: sqlite3.Connection, resolution: int, line: int) -> int:
        """Where pruning stops: at ``line``, or before, at the first bucket of a line InfluxDB
        has not acknowledged yet. Kept, such a bucket takes a late message like any other,
        and the sender writes its new full count; pruned, the late message could only be
        left out (see :meth:`_recreated`)."""
        if self._line_key is None or resolution != self._outbox_resolution:
            return line
        pending_from = db.execute("SELECT min(first_start) FROM outbox").fetchone()[0]
        return line if pending_from is None else min(line, int(pending_from))

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
