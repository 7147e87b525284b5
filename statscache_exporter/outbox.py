"""The InfluxDB outbox, as the sender sees it: parts of queued lines, read and deleted whole.

The store queues the lines of the buckets a flush changed, in that flush's transaction, as
parts of at most ``influxdb.batch_size`` lines, each one text (``store.py``, ``outbox``). A
batch is one or more whole parts in queue order, read as the request body it already is, and
deleted once InfluxDB acknowledged it: one range of ids, a few pages. The sender does no
per-point work, in Python or in SQLite, on its normal path, which is what lets it keep up with
a plain loop of POSTs (bench/influx_write.py).

Parts are only ever appended (ids never reused) and sent in id order, so a bucket that
changed while its old line was in flight is in a later part and goes out after it: InfluxDB
ends with the latest count.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Queued:
    """A batch: the parts with ids in (``after``, ``last``], as one request body."""

    after: int
    last: int
    count: int
    body: str

    def lines(self) -> list[str]:
        return self.body.split("\n")


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
        # Debian's SQLite zeroes every freed page by default: a part's pages would all be
        # written again to be deleted. Lines sent are no secret.
        self.db.execute("PRAGMA secure_delete=FAST")

    def close(self) -> None:
        self.db.close()

    def next_batch(self, limit: int, after: int | None = None) -> Queued | None:
        """The oldest parts after ``after`` (to read ahead of a batch not yet acknowledged)
        that together hold at most ``limit`` lines (at least one part, should a part written
        under a larger batch_size hold more), or None if there are none."""
        after = after if after is not None else 0
        self.db.execute("BEGIN")  # one snapshot for both reads
        try:
            count, last = 0, None
            for part, lines in self.db.execute(
                "SELECT id, lines FROM outbox WHERE id > ? ORDER BY id", (after,)
            ):
                if last is not None and count + lines > limit:
                    break
                count, last = count + lines, part
            if last is None:
                return None
            bodies = self.db.execute(
                "SELECT body FROM outbox WHERE id > ? AND id <= ? ORDER BY id", (after, last)
            ).fetchall()
        finally:
            self.db.execute("COMMIT")
        return Queued(after, last, count, "\n".join(body for (body,) in bodies))

    def acknowledge_batch(self, batch: Queued, refused: Sequence[str] = ()) -> None:
        """InfluxDB has the batch, but for the ``refused`` lines, which are set aside."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "DELETE FROM outbox WHERE id > ? AND id <= ?", (batch.after, batch.last)
            )
            if refused:
                self._set_aside(refused)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _set_aside(self, lines: Sequence[str]) -> None:
        """Keep refused lines by (bucket start, series), which a later change of the bucket
        takes out of there. The key → series lookup scans influx_keys: refusals are rare."""
        wanted = {line.rsplit(" ", 2)[0] for line in lines}
        series = {
            key: sid
            for sid, key in self.db.execute("SELECT series, key FROM influx_keys")
            if key in wanted
        }
        for line in lines:
            key, _, start = line.rsplit(" ", 2)
            if key not in series:  # no series has this key (any more): only the log keeps it
                log.error("a refused line matches no series, not kept: %s", line)
                continue
            self.db.execute(
                "INSERT OR REPLACE INTO outbox_aside VALUES (?, ?, ?, ?)",
                (int(start), series[key], time.time(), line),
            )

    def checkpoint(self) -> None:
        """Copy what the acknowledgements wrote to the WAL into the database, as far as no
        reader holds it back (the pipeline's own commits checkpoint too)."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def state(self) -> tuple[int, int, float | None]:
        return outbox_state(self.db)


def outbox_state(db: sqlite3.Connection) -> tuple[int, int, float | None]:
    """(queued points, points set aside, when the oldest queued part was queued): a scan of
    the parts (a row each, their bodies not read) and of the points set aside."""
    pending, oldest = db.execute(
        "SELECT coalesce(sum(lines), 0), min(since) FROM outbox"
    ).fetchone()
    aside = db.execute("SELECT count(*) FROM outbox_aside").fetchone()[0]
    return int(pending), int(aside), oldest
