"""The counts: series, their buckets at every resolution, and their totals.

- ``series``: one row per (metric, labels), with the plugin and kind; labels as sorted JSON.
- ``buckets``: (resolution, start, series) → the bucket's full value; for gauges also the
  (ts, msg_id) of the message that set it, so a late older message never overwrites it. Keyed
  the way it is written: a flush's buckets are the seconds (minutes, hours, days) it covered,
  so its rows go to the right-hand end of each resolution's range, a few pages, and retention
  deletes a range from the left.
- ``totals``: series → cumulative count (counters) or current value (gauges).

A flush writes each resolution's changes (:meth:`Batch.levels`: the aggregator's base interval
and first roll-up, the coarser ones rolled up from those in Python) straight into ``buckets``,
one upsert per resolution and kind: a counter's delta is added to its bucket, a gauge's
candidate replaces the bucket's value where it is newer. Rows go in as multi-row ``VALUES``
statements of up to :data:`PARAMETERS_PER_STATEMENT` parameters: binding parameters row by
row (``executemany``) cost several times what SQLite's own work did; a flush is a few dozen
statements, new series included, not thousands. (Staging the base changes in a temporary
table and rolling them up there in SQL cost more: each base row was written, read back and
sorted before its upsert; see ``bench/pipeline.py``'s profile.) A bucket's row goes in as its
key and its value(s), the statement splitting the key into its start and series id
(:data:`~statscache_exporter.aggregate.BucketId`: a series' slot is its id).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from itertools import chain
from json.encoder import encode_basestring_ascii as _string
from operator import attrgetter
from typing import Any

from statscache_exporter.aggregate import (
    SLOTS,
    Batch,
    GaugeValue,
    Level,
    Series,
    SeriesKey,
)
from statscache_exporter.plugin import Metric

#: parameters per multi-row INSERT (SQLite allows 32,766). sqlite3 keeps each prepared
#: statement, ~90 bytes a parameter: at 30,000 a statement the cache held ~25 MB more at 10k
#: series (bench/memory.py), and the rows went in no faster than in statements of 4,000
PARAMETERS_PER_STATEMENT = 4_000

SCHEMA = """
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
    resolution INTEGER NOT NULL,
    start INTEGER NOT NULL,
    series INTEGER NOT NULL REFERENCES series(id),
    value NOT NULL,
    ts REAL,
    msg_id TEXT,
    PRIMARY KEY (resolution, start, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    series INTEGER PRIMARY KEY REFERENCES series(id),
    value NOT NULL,
    ts REAL,
    msg_id TEXT
);
"""

# Upserts of one resolution's buckets: the resolution is the first parameter (?1), then the
# rows, each a bucket key and its value(s), split into start and series by the statement. The
# SELECT needs its WHERE: without it, ON CONFLICT would parse as a join's.
_UPSERT_COUNTS = (
    f"INSERT INTO buckets (resolution, start, series, value) SELECT ?1, column1 / {SLOTS},"
    f" column1 % {SLOTS}, column2 FROM (",
    ") WHERE true"
    " ON CONFLICT (resolution, start, series) DO UPDATE SET value = value + excluded.value",
)
# a gauge bucket takes the candidate (by ts, then msg_id) where it is newer than its own
_UPSERT_GAUGES = (
    f"INSERT INTO buckets (resolution, start, series, value, ts, msg_id) SELECT ?1,"
    f" column1 / {SLOTS}, column1 % {SLOTS}, column2, column3, column4 FROM (",
    ") WHERE true"
    " ON CONFLICT (resolution, start, series) DO UPDATE"
    " SET value = excluded.value, ts = excluded.ts, msg_id = excluded.msg_id"
    " WHERE (excluded.ts, excluded.msg_id) > (buckets.ts, buckets.msg_id)",
)


_INSERT_SERIES = "INSERT INTO series (id, plugin, metric, kind, labels, created)"
_VALUE, _TS, _MSG_ID = attrgetter("value"), attrgetter("ts"), attrgetter("msg_id")


@cache
def _values_sql(head: str, columns: int, rows: int) -> str:
    row = "(" + ",".join("?" * columns) + ")"
    return f"{head} VALUES {','.join([row] * rows)}"


def statement_sizes(rows: int, per: int) -> Iterator[int]:
    """How many rows each statement of an insert of ``rows`` takes: ``per`` while they last,
    then the rest as powers of two (largest first). So an insert only ever prepares one of
    ~log2(per) statements of a table: a prepared statement of thousands of rows takes
    megabytes in sqlite3's statement cache (2.2 MB for 5,000 rows of 5 columns), and one per
    distinct remainder, a new one nearly every flush, grew the resident set by ~100 MB a
    million messages until the cache's 128 were full."""
    for _ in range(rows // per):
        yield per
    rest = rows % per
    while rest:
        size = 1 << (rest.bit_length() - 1)
        yield size
        rest -= size


def insert_rows(
    db: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]], tail: str = ""
) -> list[Any]:
    """``head`` (``INSERT INTO t (a, b)``) with ``rows``, as multi-row VALUES statements
    (:func:`statement_sizes`), each followed by ``tail`` (e.g. ``RETURNING ...``); the rows
    the statements return."""
    if not rows:
        return []
    return insert_flat(db, head, len(rows[0]), list(chain.from_iterable(rows)), tail)


def insert_flat(
    db: sqlite3.Connection,
    head: str,
    columns: int,
    values: list[Any],
    tail: str = "",
    first: Sequence[Any] = (),
) -> list[Any]:
    """:func:`insert_rows` of rows given one after the other in one list of ``columns``
    values a row (what the statements bind, without a tuple a row on the way); ``first``:
    parameters each statement binds before its rows (``?1``, ... in ``head``)."""
    returned: list[Any] = []
    i = 0
    per = (PARAMETERS_PER_STATEMENT - len(first)) // columns
    for size in statement_sizes(len(values) // columns, per):
        sql = _values_sql(head, columns, size) + tail
        rows = values[i : i + size * columns]
        returned += db.execute(sql, [*first, *rows] if first else rows).fetchall()
        i += size * columns
    return returned


def upsert_level(
    db: sqlite3.Connection, upsert: tuple[str, str], res: int, columns: int, values: list[Any]
) -> None:
    """One resolution's buckets (``values``: rows of ``columns`` values one after the other,
    each a bucket key then its values) through ``upsert`` (``_UPSERT_*``), each statement
    binding ``res`` first."""
    insert_flat(db, upsert[0], columns, values, upsert[1], (res,))


def labels_json(series: Series) -> str:
    """Canonical text of a series' labels: JSON with sorted keys, no spaces, ASCII: what
    ``json.dumps(labels, sort_keys=True, separators=(",", ":"))`` writes, put together from
    each name and value's JSON string (a seventh of its time for one label, half for four,
    timeit; part of a new series' cost; tests/test_counts_statements.py compares the two)."""
    names, values = series.metric.labels, series.labels
    if len(names) == 1:
        return "{" + _string(names[0]) + ":" + _string(values[0]) + "}"
    pairs = sorted(zip(names, values, strict=True))
    return "{" + ",".join([_string(k) + ":" + _string(v) for k, v in pairs]) + "}"


class Counts:
    """Series ids, and the counts' writes and reads, on the store's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        #: the series the store has (that this process knows of) → their ids
        self.series_ids: dict[SeriesKey, int] = {}
        #: above every id the store has or a series was given: where ids of series made by
        #: hand, without a slot, start (an aggregator's start at :meth:`load`'s ``free``);
        #: from 1, as SQLite's own would
        self.free = 1

    def load(
        self, metrics: Mapping[str, tuple[str, Metric]]
    ) -> tuple[dict[SeriesKey, Series], dict[SeriesKey, int | GaugeValue], int]:
        """The series and totals of the given metrics (name → (plugin, declaration)), and the
        lowest id above every series' in the store (see :meth:`Aggregator.restore`).

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
            s = series[key] = Series(plugin, metric, key[1], created)
            self.series_ids[key] = s.slot = sid
            if value is None:
                continue
            if metric.kind == "counter":
                totals[key] = int(value)
            else:
                totals[key] = GaugeValue(float(ts), str(msg_id), float(value))
        (highest,) = self.db.execute("SELECT max(id) FROM series").fetchone()
        self.free = max(self.free, (highest or 0) + 1)
        return series, totals, self.free

    # --- writing, inside the flush's transaction -------------------------------------------

    def insert_series(self, db: sqlite3.Connection, batch: Batch) -> list[SeriesKey]:
        """Insert the batch's new series under their slots (a series made by hand without
        one is given the next free id), and give its series objects made by hand for stored
        series the ids of theirs; the keys of those that were new. A slot the store has
        given another series already is an error (``sqlite3.IntegrityError``)."""
        new = [key for key in batch.series if key not in self.series_ids]
        rows = []
        for key in new:
            s = batch.series[key]
            if not hasattr(s, "slot"):
                s.slot = self.free
            self.free = max(self.free, s.slot + 1)
            rows.append((s.slot, s.plugin, s.metric.name, s.metric.kind, labels_json(s), s.created))
        insert_rows(db, _INSERT_SERIES, rows)
        for key in new:
            self.series_ids[key] = batch.series[key].slot
        self._name_ids(batch)
        return new

    def forget(self, keys: Sequence[SeriesKey]) -> None:
        """These series were rolled back with their transaction (their objects keep their
        slots, under which the next flush inserts them again)."""
        for key in keys:
            self.series_ids.pop(key, None)

    def write(self, db: sqlite3.Connection, batch: Batch, levels: Mapping[int, Level]) -> None:
        """Every resolution's changes (``batch.levels()``) into ``buckets``, and the touched
        totals."""
        for res, (counts, gauges) in levels.items():
            if counts:
                values: list[Any] = [0] * (2 * len(counts))
                values[0::2] = counts.keys()
                values[1::2] = counts.values()
                upsert_level(db, _UPSERT_COUNTS, res, 2, values)
            if gauges:
                values = [0] * (4 * len(gauges))
                values[0::4] = gauges.keys()
                candidates = gauges.values()
                values[1::4] = map(_VALUE, candidates)
                values[2::4] = map(_TS, candidates)
                values[3::4] = map(_MSG_ID, candidates)
                upsert_level(db, _UPSERT_GAUGES, res, 4, values)
        sid = self.series_ids
        insert_rows(
            db,
            "INSERT INTO totals (series, value, ts, msg_id)",
            [
                (sid[key], t.value, t.ts, t.msg_id)
                if isinstance(t, GaugeValue)
                else (sid[key], t, None, None)
                for key, t in batch.totals.items()
            ],
            # an update in place: REPLACE deletes the row and inserts it again
            " ON CONFLICT (series) DO UPDATE"
            " SET value = excluded.value, ts = excluded.ts, msg_id = excluded.msg_id",
        )

    def _name_ids(self, batch: Batch) -> None:
        """The ids of the series a batch made by hand names (its own objects may not carry
        them: they were never loaded from the store)."""
        for name, labels, _, _ in chain(batch.counter_deltas, batch.gauge_candidates):
            s = batch.series[(name, labels)]
            if not hasattr(s, "slot"):
                s.slot = self.series_ids[(name, labels)]

    @staticmethod
    def prune(db: sqlite3.Connection, resolution: int, before: int) -> int:
        """Delete the buckets of ``resolution`` that start before ``before``."""
        cur = db.execute(
            "DELETE FROM buckets WHERE resolution = ? AND start < ?", (resolution, before)
        )
        return cur.rowcount

    # --- inspection ----------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
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
        return {"buckets": buckets, "totals": totals}

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

    def has_series(self, ident: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM series WHERE plugin = ? LIMIT 1", (ident,)).fetchone()
            is not None
        )
