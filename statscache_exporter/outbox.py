"""The InfluxDB sink's outbox: its tables, how a flush queues lines, how the sender reads them.

Tables (created when the sink is on; the store knows nothing of them):

- ``outbox``: the lines of line protocol InfluxDB has not acknowledged yet. A flush appends
  the lines of the base-resolution buckets it changed as parts of at most
  ``influxdb.batch_size`` lines, each part one text that is a request body as it stands. A
  bucket that changes again is appended again with its new full count: parts go out in order,
  so InfluxDB ends with the latest.
- ``outbox_aside``: points set aside, by (bucket start, series): refused by InfluxDB for their
  data (with the line), or of a series line protocol cannot carry (no line). A later change of
  the bucket queues it again.
- ``influx_keys``: series → its escaped measurement and tags, from which the flush builds the
  lines; NULL for a series line protocol cannot carry.

The store's side (:class:`OutboxWriter`) is a hook of the store's flush: it runs inside the
flush's transaction, so a bucket's change and its line are committed together or not at all.
The sender's side (:class:`Outbox`) reads whole parts as the request body they already are and
deletes them once InfluxDB acknowledged them: one range of ids, a few pages. The sender does no
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from statscache_exporter.aggregate import SeriesKey
from statscache_exporter.counts import insert_rows

log = logging.getLogger(__name__)


SCHEMA = """
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
CREATE TABLE IF NOT EXISTS influx_keys (
    series INTEGER PRIMARY KEY REFERENCES series(id),
    key TEXT,
    counter INTEGER NOT NULL
);
CREATE TEMP TABLE IF NOT EXISTS outbox_touched (
    series INTEGER NOT NULL, start INTEGER NOT NULL, PRIMARY KEY (series, start)
) WITHOUT ROWID;
"""

# A bucket's point in line protocol: its series' key, its full value as a field (an integer
# count, or a float gauge in Python's shortest exact form) and its start (precision: seconds).
_LINE = (
    "k.key || CASE WHEN k.counter THEN ' count=' || CAST(b.value AS INTEGER) || 'i ' "
    "ELSE ' value=' || influx_float(b.value) || ' ' END || b.start"
)
# The base buckets the flush changed (outbox_touched), queued for InfluxDB as this flush leaves
# them: their lines, in time order, cut into parts of at most :part lines, each part one text.
_QUEUE = f"""
INSERT INTO outbox (since, first_start, lines, body)
SELECT :since, min(start), count(*), group_concat(line, char(10)) FROM (
    SELECT b.start AS start, {_LINE} AS line,
           (row_number() OVER (ORDER BY b.start, b.series) - 1) / :part AS part
    FROM outbox_touched t
    CROSS JOIN buckets b ON b.resolution = :resolution AND b.start = t.start
        AND b.series = t.series
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


@dataclass
class OutboxStats:
    #: base-resolution bucket changes not queued because the outbox was full
    overflow: int = 0
    #: late messages for a second whose base bucket retention had pruned: not sent to
    #: InfluxDB, which keeps the earlier full count
    late_unsent: int = 0


@dataclass
class OutboxWriter:
    """The store's flush hook that queues the changed base buckets' lines (see the module
    docstring). ``accepting`` (the sender's) says whether the outbox is still under
    ``influxdb.max_pending``; past it, changes are counted as overflow, not queued."""

    resolution: int
    fingerprint: str
    line_key: LineKey
    part_lines: int
    accepting: Callable[[], bool] = lambda: True
    stats: OutboxStats = field(default_factory=OutboxStats)
    _keyless: set[int] = field(default_factory=set)

    # --- the hook ------------------------------------------------------------------------

    def create(self, db: sqlite3.Connection) -> None:
        """The tables (an outbox of schemas 3 to 6 carried over), every series' key, and the
        queued lines rebuilt if what the keys depend on (``fingerprint``) changed."""
        db.create_function("influx_float", 1, _influx_float, deterministic=True)
        columns = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        if "start" in columns:  # schema 3 to 6: a row per point → parts
            _carry_over(db, "line" in columns)
        row = db.execute("SELECT value FROM meta WHERE key = 'influx_keys_for'").fetchone()
        old_keys: dict[str, int] | None = None
        if row is None or row[0] != self.fingerprint:
            old_keys = dict(db.execute("SELECT key, series FROM influx_keys WHERE key NOTNULL"))
            db.execute("DELETE FROM influx_keys")
            db.execute(
                "INSERT INTO meta VALUES ('influx_keys_for', ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                (self.fingerprint,),
            )
        missing = db.execute(
            "SELECT id, metric, labels, kind FROM series "
            "WHERE id NOT IN (SELECT series FROM influx_keys)"
        ).fetchall()
        db.executemany(
            "INSERT INTO influx_keys VALUES (?, ?, ?)",
            ((sid, self.line_key(m, lab), kind == "counter") for sid, m, lab, kind in missing),
        )
        self._keyless = _keyless(db)
        if old_keys:
            self._rekey(db, old_keys)
        self._requeue_keyed(db)

    def before_write(
        self,
        db: sqlite3.Connection,
        resolution: int,
        pruned_before: int | None,
        touched: Sequence[tuple[int, int]],
    ) -> None:
        """Note the base buckets this flush changes (``touched``: series id, start), less those
        it would create below the retention line: retention may have pruned them after
        InfluxDB had their full count, and the new, partial count would overwrite it."""
        db.execute("DELETE FROM outbox_touched")
        if resolution != self.resolution:
            return
        insert_rows(db, "INSERT OR IGNORE INTO outbox_touched (series, start)", touched)
        if pruned_before is None:
            return
        late = db.execute(
            "DELETE FROM outbox_touched WHERE start < :line AND NOT EXISTS (SELECT 1 FROM "
            "buckets b WHERE b.resolution = :res AND b.start = outbox_touched.start AND "
            "b.series = outbox_touched.series)",
            {"line": pruned_before, "res": resolution},
        ).rowcount
        if late:
            self.stats.late_unsent += late
            log.warning(
                "%d bucket changes are older than the 1 s retention line and were not sent to "
                "InfluxDB (it keeps the earlier full count); raise store.retention to import "
                "history older than that",
                late,
            )

    def after_write(
        self,
        db: sqlite3.Connection,
        series_ids: Mapping[SeriesKey, int],
        new_series: Mapping[SeriesKey, tuple[str, str, bool]],
        now: float,
    ) -> None:
        """Keys for the new series (``new_series``: key → (metric, labels JSON, is a
        counter)), then the touched buckets' lines as this flush leaves them."""
        rows = [
            (series_ids[key], self.line_key(metric, labels), counter)
            for key, (metric, labels, counter) in new_series.items()
        ]
        insert_rows(db, "INSERT OR IGNORE INTO influx_keys", rows)
        self._keyless.update(sid for sid, key, _ in rows if key is None)
        if not self.accepting():
            self.stats.overflow += db.execute("SELECT count(*) FROM outbox_touched").fetchone()[0]
            return
        if db.execute("SELECT 1 FROM outbox_aside LIMIT 1").fetchone():
            # a later change takes a point set aside out of there (and queues it, if it can)
            db.execute(
                "DELETE FROM outbox_aside WHERE EXISTS (SELECT 1 FROM outbox_touched t "
                "JOIN influx_keys k ON k.series = t.series WHERE k.key NOTNULL "
                "AND t.series = outbox_aside.series AND t.start = outbox_aside.start)"
            )
        if self._keyless:
            db.execute(
                "INSERT OR IGNORE INTO outbox_aside SELECT t.start, t.series, ?, NULL "
                "FROM outbox_touched t JOIN influx_keys k ON k.series = t.series "
                "WHERE k.key ISNULL",
                (now,),
            )
        db.execute(
            _QUEUE,
            {"since": now, "part": self.part_lines, "resolution": self.resolution},
        )

    def keep_from(self, db: sqlite3.Connection, resolution: int) -> int | None:
        """Where retention must stop: at the first bucket of a line InfluxDB has not
        acknowledged yet. Kept, such a bucket takes a late message like any other, and the
        sender writes its new full count; pruned, the late message could only be left out."""
        if resolution != self.resolution:
            return None
        pending_from = db.execute("SELECT min(first_start) FROM outbox").fetchone()[0]
        return None if pending_from is None else int(pending_from)

    def after_prune(self, db: sqlite3.Connection) -> None:
        """Points set aside whose bucket retention has now removed go too."""
        db.execute(
            "DELETE FROM outbox_aside WHERE NOT EXISTS (SELECT 1 FROM buckets b "
            "WHERE b.resolution = ? AND b.start = outbox_aside.start "
            "AND b.series = outbox_aside.series)",
            (self.resolution,),
        )

    def rolled_back(self, db: sqlite3.Connection) -> None:
        self._keyless = _keyless(db)

    # --- rebuilding ------------------------------------------------------------------------

    def _rekey(self, db: sqlite3.Connection, old_keys: Mapping[str, int]) -> None:
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
        db.execute("DELETE FROM outbox_touched")
        db.execute(
            "INSERT INTO outbox_touched SELECT a.series, a.start FROM outbox_aside a "
            "JOIN influx_keys k ON k.series = a.series WHERE a.line ISNULL AND k.key NOTNULL"
        )
        if db.execute("SELECT 1 FROM outbox_touched LIMIT 1").fetchone():
            db.execute(
                "DELETE FROM outbox_aside WHERE (series, start) IN "
                "(SELECT series, start FROM outbox_touched)"
            )
            db.execute(
                _QUEUE,
                {"since": time.time(), "part": self.part_lines, "resolution": self.resolution},
            )
        db.execute("DELETE FROM outbox_touched")


def _keyless(db: sqlite3.Connection) -> set[int]:
    return {row[0] for row in db.execute("SELECT series FROM influx_keys WHERE key ISNULL")}


def _carry_over(db: sqlite3.Connection, has_lines: bool) -> None:
    """A row per queued point (schemas 3 to 6) → parts of lines; rows refused, or without a
    line (schemas 3 and 4 stored none), are set aside: :meth:`OutboxWriter.create` queues
    those again once their series has a key."""
    db.execute("ALTER TABLE outbox RENAME TO outbox_old")
    for index in ("outbox_pending", "outbox_age", "outbox_failed"):
        db.execute(f"DROP INDEX IF EXISTS {index}")
    for statement in SCHEMA.split(";"):
        if "EXISTS outbox (" in statement:
            db.execute(statement)
    line = "line" if has_lines else "NULL"
    db.execute(
        "INSERT INTO outbox (since, first_start, lines, body) "
        "SELECT min(since), min(start), count(*), group_concat(line, char(10)) FROM ("
        f"SELECT since, start, {line} AS line, "
        f"(row_number() OVER (ORDER BY start, series) - 1) / {_CARRIED_PART} AS part "
        f"FROM outbox_old WHERE failed = 0 AND {line} IS NOT NULL"
        ") GROUP BY part ORDER BY part"
    )
    db.execute(
        f"INSERT OR IGNORE INTO outbox_aside SELECT start, series, since, {line} "
        f"FROM outbox_old WHERE failed = 1 OR {line} IS NULL"
    )
    db.execute("DROP TABLE outbox_old")
    db.execute("DELETE FROM meta WHERE key = 'outbox_seq'")


def writer_of(hooks: Sequence[object]) -> OutboxWriter | None:
    """The outbox writer among a store's flush hooks, if the InfluxDB sink is on."""
    return next((h for h in hooks if isinstance(h, OutboxWriter)), None)


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
    the parts (a row each, their bodies not read) and of the points set aside; all none on a
    store the sink never ran on."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone():
        return 0, 0, None
    pending, oldest = db.execute(
        "SELECT coalesce(sum(lines), 0), min(since) FROM outbox"
    ).fetchone()
    aside = db.execute("SELECT count(*) FROM outbox_aside").fetchone()[0]
    return int(pending), int(aside), oldest
