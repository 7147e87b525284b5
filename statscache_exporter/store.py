"""The embedded store: SQLite in WAL mode, one transaction per flush.

A flush writes, atomically: the touched buckets and totals (``counts.py``), the ids of the
messages it covers, the checkpoint, plugin histories and resume points (``ledger.py``), and
whatever each flush hook adds (the InfluxDB sink's outbox lines, ``outbox.py``). A message is
therefore either entirely in the store (its id, its counts) or not at all, and a restart that
sees the same message again skips it by id: nothing is lost or counted twice across a crash.

The store is the pipeline thread's alone (not thread-safe); the HTTP threads read through
``reader.py``, on connections of their own, and the InfluxDB sender through ``outbox.py``.

Tables: those of ``counts.py`` (series, buckets, totals), of ``ledger.py`` (meta, seen, gaps,
plugins, plugin_seen), and of the hooks. Schema 8 keyed buckets and ids the way a flush writes
them (by resolution and time, by message time): :meth:`Store._migrate` rebuilds a store of an
earlier schema in place.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

from statscache_exporter.aggregate import Batch, GaugeValue, Series, SeriesKey, split_key
from statscache_exporter.counts import SCHEMA as COUNTS_SCHEMA
from statscache_exporter.counts import Counts, labels_json
from statscache_exporter.ledger import SCHEMA as LEDGER_SCHEMA
from statscache_exporter.ledger import Ledger, LedgerChanges, PluginHistory, SeenIds, Window
from statscache_exporter.plugin import Metric

__all__ = ["FlushHook", "FlushResult", "PluginHistory", "Store", "StoreError"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 8

#: SQLite's page cache for the pipeline's connection, in KiB. A flush touches the right-hand
#: end of buckets and seen (a few hundred pages), the totals of its series and the series
#: table. 8 MiB: 32 MiB added ~22 MB to the exporter's peak at 100k series (bench/memory.py)
#: for no difference bench/pipeline.py could tell at 1M messages (ratio 0.199-0.212 against
#: 0.202-0.208); what the cache misses, the OS's page cache serves.
CACHE_KIB = 8 * 1024


class StoreError(Exception):
    """The store cannot be opened or written; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush committed."""

    messages: int
    buckets: int
    totals: int
    new_series: int


class FlushHook(Protocol):
    """A sink's part in the store's flush (the InfluxDB outbox): called inside the flush's
    transaction, so what it writes is committed with the counts, or rolled back with them."""

    def create(self, db: sqlite3.Connection) -> None:
        """Its tables (and their migrations), when it is attached."""

    def before_write(
        self,
        db: sqlite3.Connection,
        resolution: int,
        pruned_before: int | None,
        touched: Sequence[tuple[int, int]],
    ) -> None:
        """The buckets are not yet written; ``touched``: the (series id, start) of each base
        bucket the flush changes; ``pruned_before``: the base resolution's retention line."""

    def after_write(
        self,
        db: sqlite3.Connection,
        series_ids: Mapping[SeriesKey, int],
        new_series: Mapping[SeriesKey, tuple[str, str, bool]],
        now: float,
    ) -> None:
        """The buckets are written; ``new_series``: key → (metric, labels JSON, counter)."""

    def keep_from(self, db: sqlite3.Connection, resolution: int) -> int | None:
        """The bucket start from which retention must keep ``resolution``'s buckets."""

    def after_prune(self, db: sqlite3.Connection) -> None:
        """Retention deleted buckets."""

    def rolled_back(self, db: sqlite3.Connection) -> None:
        """The flush failed: nothing of it was written."""


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
            self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self.db.execute("PRAGMA temp_store=MEMORY")
            # Debian's SQLite zeroes every freed page and cell: retention deletes whole
            # ranges, the outbox's temporary table is emptied each flush; counts and ids are
            # no secret
            self.db.execute("PRAGMA secure_delete=FAST")
            self.db.execute("PRAGMA temp.secure_delete=OFF")
            self._migrate()
            # the references are checked while the schema changes, not on every row a flush
            # writes (a quarter of a bucket upsert's cost): the flush writes a series before
            # its buckets and totals, and the tests' dumps list any row that refers to none
            self.db.execute("PRAGMA foreign_keys=OFF")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self.counts = Counts(self.db)
        self.ledger = Ledger(self.db)
        self.hooks: list[FlushHook] = []
        #: resolution → the bucket start before which retention has pruned
        self._pruned_before = {
            int(key.split(":")[1]): int(value)
            for key, value in self.db.execute(
                "SELECT key, value FROM meta WHERE key LIKE 'pruned_before:%'"
            )
        }

    def close(self) -> None:
        self.db.close()

    def attach(self, hook: FlushHook) -> None:
        """Add a flush hook, creating its tables (one transaction)."""
        try:
            with self._transaction() as db:
                hook.create(db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prepare store {self.path} for a sink: {exc}") from exc
        self.hooks.append(hook)

    # --- schema --------------------------------------------------------------------------

    def _migrate(self) -> None:
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        row = None
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {row[0]}, newer than this exporter's "
                f"{SCHEMA_VERSION}: upgrade the exporter or point store.path elsewhere"
            )
        with self._transaction() as db:
            if "buckets" in tables and _key_of(db, "buckets")[0] == "series":  # 7 → 8
                log.info("store %s: rebuilding buckets keyed by time (schema 8)", self.path)
                _rebuild(db, "buckets", "resolution, start, series, value, ts, msg_id")
            if "seen" in tables and "ts" not in _columns(db, "seen"):  # 7 → 8
                # the ids' message times were not kept: their stored time stands in for it,
                # so they stay at least as long as the wall-clock window kept them
                _rebuild(
                    db,
                    "seen",
                    "CAST(stored_at AS INTEGER), msg_id, row_number() OVER (ORDER BY stored_at, "
                    "msg_id) - 1, stored_at",
                )
            db.execute("DROP INDEX IF EXISTS buckets_by_time")
            db.execute("DROP INDEX IF EXISTS seen_by_time")
            for statement in (COUNTS_SCHEMA + LEDGER_SCHEMA).split(";"):
                if statement.strip():
                    db.execute(statement)
            if "created" not in _columns(db, "series"):  # schema 1 → 2
                db.execute("ALTER TABLE series ADD COLUMN created REAL NOT NULL DEFAULT 0")
            db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

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

    # --- writing -----------------------------------------------------------------------

    def commit(self, batch: Batch, changes: LedgerChanges | None = None) -> FlushResult:
        """Write one flush in one transaction; on any error nothing of it is written."""
        changes = changes if changes is not None else LedgerChanges()
        now = time.time()
        new: list[SeriesKey] = []
        try:
            with self._transaction() as db:
                new = self.counts.insert_series(db, batch)
                levels = batch.levels()
                base = batch.resolutions[0]
                if self.hooks:
                    counts, gauges = levels[base]
                    touched = [split_key(key) for key in chain(counts, gauges)]
                    for hook in self.hooks:
                        hook.before_write(db, base, self._pruned_before.get(base), touched)
                self.counts.write(db, batch, levels)
                self.ledger.write(db, changes, now)
                if self.hooks:
                    described = {key: _described(batch.series[key]) for key in new}
                    for hook in self.hooks:
                        hook.after_write(db, self.counts.series_ids, described, now)
        except sqlite3.Error as exc:
            self.counts.forget(new)  # rolled back with the transaction
            for hook in self.hooks:
                hook.rolled_back(self.db)
            raise StoreError(
                f"flush to {self.path} failed, nothing of it was written: {exc}"
            ) from exc
        return FlushResult(
            messages=len(changes.ids),
            buckets=batch.counts + batch.gauges,
            totals=len(batch.totals),
            new_series=len(new),
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

    def prune(self, retention: Mapping[int, float | None], reference: float, window: Window) -> int:
        """Delete buckets older than their resolution's retention (seconds before
        ``reference``; None keeps them forever), as far as every hook lets it, and the ids
        outside the dedup ``window``."""
        deleted = 0
        with self._transaction() as db:
            for res, keep in retention.items():
                if keep is None:
                    continue
                line = max(int(reference - keep), self._pruned_before.get(res, 0))
                db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value",
                    (f"pruned_before:{res}", str(line)),
                )
                self._pruned_before[res] = line
                before = int(reference - keep)
                for hook in self.hooks:
                    floor = hook.keep_from(db, res)
                    if floor is not None:
                        before = min(before, floor)
                deleted += self.counts.prune(db, res, before)
            self.ledger.prune_seen(db, window)
            for hook in self.hooks:
                hook.after_prune(db)
        return deleted

    # --- reading (the pipeline's) ----------------------------------------------------------

    def load(
        self, metrics: Mapping[str, tuple[str, Metric]]
    ) -> tuple[dict[SeriesKey, Series], dict[SeriesKey, int | GaugeValue], int]:
        return self.counts.load(metrics)

    def load_seen(self, into: SeenIds, window: Window) -> None:
        self.ledger.load_seen(into, window)

    def horizon(self) -> tuple[float | None, int]:
        return self.ledger.horizon()

    def covered_until(self) -> datetime | None:
        return self.ledger.covered_until()

    def resume_point(self, name: str) -> str | None:
        """Where the reader ``name`` (e.g. one import) had got to at the last committed flush:
        the text it gave :meth:`~statscache_exporter.pipeline.Pipeline.resume`, committed with
        the counts of the messages before it."""
        return self.ledger.resume_point(name)

    def gaps(self, include_filled: bool = False) -> list[tuple[str, float, float]]:
        return self.ledger.gaps(include_filled)

    def unregistered(self, idents: Iterable[str]) -> list[str]:
        return self.ledger.unregistered(idents)

    def plugin_histories(self) -> list[PluginHistory]:
        return self.ledger.plugin_histories()

    def has_series(self, ident: str) -> bool:
        return self.counts.has_series(ident)

    def is_seen(self, msg_id: str) -> bool:
        return self.ledger.is_seen(msg_id)

    def seen_at(self, msg_id: str, ts: float) -> float | None:
        return self.ledger.seen_at(msg_id, ts)

    def seen_by_plugin(self, ident: str, msg_id: str) -> bool:
        return self.ledger.seen_by_plugin(ident, msg_id)

    # --- inspection --------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The store's logical contents, free of surrogate ids: for tests and debugging."""
        seen = sorted(r[0] for r in self.db.execute("SELECT msg_id FROM seen"))
        dangling = self.db.execute("PRAGMA foreign_key_check").fetchall()
        return {**self.counts.dump(), "seen": seen, "dangling": dangling}

    def series_per_plugin(self) -> dict[str, int]:
        return self.counts.series_per_plugin()

    def totals_by_metric(self, metric: str) -> dict[str, float]:
        """Labels JSON → total, for one metric."""
        return self.counts.totals_by_metric(metric)


def _described(series: Series) -> tuple[str, str, bool]:
    return series.metric.name, labels_json(series), series.metric.kind == "counter"


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]


def _key_of(db: sqlite3.Connection, table: str) -> list[str]:
    """The primary key's columns, in order."""
    info = sorted((r[5], r[1]) for r in db.execute(f"PRAGMA table_info({table})") if r[5])
    return [name for _, name in info]


def _rebuild(db: sqlite3.Connection, table: str, select: str) -> None:
    """Recreate ``table`` with today's definition, its rows copied over as ``select``."""
    db.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    definition = next(
        s for s in (COUNTS_SCHEMA + LEDGER_SCHEMA).split(";") if f"EXISTS {table} (" in s
    )
    db.execute(definition)
    db.execute(f"INSERT INTO {table} SELECT {select} FROM {table}_old")
    db.execute(f"DROP TABLE {table}_old")
