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
sorted before its upsert; see ``bench/pipeline.py``'s profile.)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from itertools import chain
from typing import Any

from statscache_exporter.aggregate import (
    SLOTS,
    Batch,
    GaugeValue,
    Level,
    Series,
    SeriesKey,
    split_key,
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

_UPSERT_COUNTS = (
    "INSERT INTO buckets (resolution, start, series, value)",
    " ON CONFLICT (resolution, start, series) DO UPDATE SET value = value + excluded.value",
)
# a gauge bucket takes the candidate (by ts, then msg_id) where it is newer than its own
_UPSERT_GAUGES = (
    "INSERT INTO buckets (resolution, start, series, value, ts, msg_id)",
    " ON CONFLICT (resolution, start, series) DO UPDATE"
    " SET value = excluded.value, ts = excluded.ts, msg_id = excluded.msg_id"
    " WHERE (excluded.ts, excluded.msg_id) > (buckets.ts, buckets.msg_id)",
)


_INSERT_SERIES = "INSERT INTO series (plugin, metric, kind, labels, created)"
_SERIES_CONFLICT = (
    " ON CONFLICT (metric, labels) DO UPDATE SET plugin = excluded.plugin"
    " RETURNING id, metric, labels"
)


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
    db: sqlite3.Connection, head: str, columns: int, values: list[Any], tail: str = ""
) -> list[Any]:
    """:func:`insert_rows` of rows given one after the other in one list of ``columns``
    values a row (what the statements bind, without a tuple a row on the way)."""
    returned: list[Any] = []
    i = 0
    for size in statement_sizes(len(values) // columns, PARAMETERS_PER_STATEMENT // columns):
        sql = _values_sql(head, columns, size) + tail
        returned += db.execute(sql, values[i : i + size * columns]).fetchall()
        i += size * columns
    return returned


def labels_json(series: Series) -> str:
    """Canonical text of a series' labels: JSON with sorted keys, no spaces."""
    return json.dumps(series.label_dict(), sort_keys=True, separators=(",", ":"))


class Counts:
    """Series ids, and the counts' writes and reads, on the store's connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.series_ids: dict[SeriesKey, int] = {}

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
            s = series[key] = Series(plugin, metric, key[1], created)
            self.series_ids[key] = s.sid = sid
            if value is None:
                continue
            if metric.kind == "counter":
                totals[key] = int(value)
            else:
                totals[key] = GaugeValue(float(ts), str(msg_id), float(value))
        return series, totals

    # --- writing, inside the flush's transaction -------------------------------------------

    def insert_series(self, db: sqlite3.Connection, batch: Batch) -> list[SeriesKey]:
        """Give the batch's new series their ids (and its series objects made by hand the ids
        of theirs); the keys of those that were new."""
        new = [key for key in batch.series if key not in self.series_ids]
        by_text: dict[tuple[str, str], SeriesKey] = {}  # (metric, labels JSON) -> key
        rows = []
        for key in new:
            s = batch.series[key]
            labels = labels_json(s)
            by_text[(s.metric.name, labels)] = key
            rows.append((s.plugin, s.metric.name, s.metric.kind, labels, s.created))
        # RETURNING gives its rows in no set order: each names its own series
        for sid, metric, labels in insert_rows(db, _INSERT_SERIES, rows, _SERIES_CONFLICT):
            key = by_text[(metric, labels)]
            self.series_ids[key] = batch.series[key].sid = int(sid)
        self._name_ids(batch)
        return new

    def forget(self, batch: Batch, keys: Sequence[SeriesKey]) -> None:
        """The ids of these series were rolled back with their transaction."""
        for key in keys:
            self.series_ids.pop(key, None)
            batch.series[key].sid = None

    def write(self, db: sqlite3.Connection, batch: Batch, levels: Mapping[int, Level]) -> None:
        """Every resolution's changes (``batch.levels()``) into ``buckets``, and the touched
        totals."""
        slots = batch.slots
        for res, (counts, gauges) in levels.items():
            if counts:
                keys = list(counts)
                values: list[Any] = [res] * (4 * len(keys))
                values[1::4] = [key // SLOTS for key in keys]
                values[2::4] = [slots[key % SLOTS].sid for key in keys]
                values[3::4] = counts.values()
                insert_flat(db, _UPSERT_COUNTS[0], 4, values, _UPSERT_COUNTS[1])
            if gauges:
                rows = []
                for key, g in gauges.items():
                    slot, start = split_key(key)
                    rows.append((res, start, slots[slot].sid, g.value, g.ts, g.msg_id))
                insert_rows(db, _UPSERT_GAUGES[0], rows, _UPSERT_GAUGES[1])
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
            if s.sid is None:
                s.sid = self.series_ids[(name, labels)]

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
