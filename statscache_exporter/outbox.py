"""The InfluxDB outbox, as the sender sees it: the queued points, read and unqueued in batches.

The store queues a point in the flush that changes its bucket (``store.py``), with its line of
line protocol already built: the series' escaped key (``influx_keys``, built once per series
with influxdb-client's ``Point``) joined with the bucket's value and start, inside SQLite. So a
batch is one range of the outbox (rows are clustered by time), read as one text that is the
request body, and unqueued after InfluxDB acknowledged it by one range delete. The sender does
no per-point work in Python on its normal path, which is what lets it keep up with a plain loop
of POSTs (bench/influx_write.py).

Every row carries the flush sequence number that last changed it; a batch remembers the last
flush it includes, and unqueues only rows no later flush has changed since: a bucket that
changed while its old value was in flight stays queued and goes out again, new value included.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

#: before every real key
_BEFORE_ALL = (-(2**62), -1)


class Pending(NamedTuple):
    """One queued point: its key in the outbox and its line."""

    start: int
    series: int
    line: str


@dataclass(frozen=True, slots=True)
class Queued:
    """A batch: the queued points with keys in (``after``, ``last``], as one request body."""

    after: tuple[int, int]
    last: tuple[int, int]
    count: int
    body: str
    #: the last flush whose changes the batch includes
    seq: int


class Outbox:
    """The sender's side of the outbox, on its own connection (its own thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        # an acknowledgement lost to a power cut only means the points are sent again
        self.db.execute("PRAGMA synchronous=NORMAL")
        # no checkpoint (and its fsyncs, which compete with InfluxDB's own) every few
        # acknowledgements: the sender checkpoints between drains, see checkpoint()
        self.db.execute("PRAGMA wal_autocheckpoint=0")

    def close(self) -> None:
        self.db.close()

    def next_batch(self, limit: int, after: tuple[int, int] | None = None) -> Queued | None:
        """The oldest ``limit`` queued points after a key (to read ahead of a batch not yet
        acknowledged), or None if there are none."""
        after = after if after is not None else _BEFORE_ALL
        self.db.execute("BEGIN")  # one snapshot: the rows and the flush they include
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'outbox_seq'").fetchone()
            last = self._last_key(after, limit)
            if last is None:
                return None
            # "+failed": walk the primary key (time order), not the index of failed rows
            body, count = self.db.execute(
                "SELECT group_concat(line, char(10)), count(*) FROM outbox WHERE +failed = 0 "
                "AND (start, series) > (?, ?) AND (start, series) <= (?, ?)",
                (*after, *last),
            ).fetchone()
        finally:
            self.db.execute("COMMIT")
        return Queued(after, last, int(count), str(body), int(row[0]) if row else 0)

    def _last_key(self, after: tuple[int, int], limit: int) -> tuple[int, int] | None:
        """The key of the ``limit``-th queued point after ``after``, or of the last one."""
        found = (
            self.db.execute(
                "SELECT start, series FROM outbox WHERE +failed = 0 AND (start, series) > (?, ?) "
                "ORDER BY start, series LIMIT 1 OFFSET ?",
                (*after, limit - 1),
            ).fetchone()
            or self.db.execute(
                "SELECT start, series FROM outbox WHERE +failed = 0 AND (start, series) > (?, ?) "
                "ORDER BY start DESC, series DESC LIMIT 1",
                after,
            ).fetchone()
        )
        return (int(found[0]), int(found[1])) if found else None

    def points(self, batch: Queued) -> list[Pending]:
        """The batch's points one by one (to find the lines InfluxDB refuses), as they are
        queued now."""
        return list(
            map(
                Pending._make,
                self.db.execute(
                    "SELECT start, series, line FROM outbox WHERE +failed = 0 "
                    "AND (start, series) > (?, ?) AND (start, series) <= (?, ?) "
                    "ORDER BY start, series",
                    (*batch.after, *batch.last),
                ),
            )
        )

    def acknowledge_batch(self, batch: Queued) -> None:
        """InfluxDB has the whole batch: unqueue its key range in one statement, but not rows a
        later flush changed (or added) since it was read, nor rows set aside as failed."""
        self._write(
            "DELETE FROM outbox WHERE (start, series) > (?, ?) AND (start, series) <= (?, ?) "
            "AND +failed = 0 AND seq <= ?",
            [(*batch.after, *batch.last, batch.seq)],
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

    def checkpoint(self) -> None:
        """Copy what the acknowledgements wrote to the WAL into the database, as far as no
        reader holds it back (the pipeline's own commits checkpoint too)."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def state(self) -> tuple[int, int, float | None]:
        return outbox_state(self.db)


def outbox_state(db: sqlite3.Connection) -> tuple[int, int, float | None]:
    """(pending rows, failed rows, when the oldest pending row was queued). The pending count
    scans the outbox (about 20 ms per 100,000 rows): an index over all rows would double the
    cost of every acknowledgement, which happens far more often than this count."""
    pending, oldest = db.execute(
        "SELECT count(*), min(since) FROM outbox WHERE +failed = 0"
    ).fetchone()
    failed = db.execute("SELECT count(*) FROM outbox WHERE failed = 1").fetchone()[0]
    return int(pending), int(failed), oldest
