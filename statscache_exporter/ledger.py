"""The ledger: what the store knows about the stream rather than its counts.

- ``seen``: the ids of the messages counted, with their message time and the order in which
  they were counted, for the dedup window;
- ``meta``: the checkpoint ``covered_until`` and each reader's resume point;
- ``gaps``: times a live source was disconnected (epoch seconds), for the gap filler;
- ``plugins``: every plugin the store has run, since when, and for one added to a store that
  already had history, the range of history the gap filler fetches for it alone (and how far
  that got); ``plugin_seen``: the ids counted for such a plugin alone, until its range is done.

**Dedup in memory.** Whether a message was seen is decided without a query: the ids of the
window are held in memory (:class:`SeenIds`), loaded from ``seen`` at start; each flush writes
its new ids to ``seen`` in the flush's transaction, so the table stays the durable truth.

**The window.** An id is kept while either holds (:class:`Window`):

- its message's time is within ``store.dedup_window`` of the *horizon*, the newest message
  time counted. A duplicate of a message carries that message's own time, so this is the
  window that redeliveries, restarts and a live stream overlapping an import need, and it
  follows the data, not the wall clock. While the store has a checkpoint, ids from the
  checkpoint minus the gap filler's overlap onward are kept too, whatever the horizon: that is
  where the gap filler starts again after an outage, however long;
- it is among the last ``store.dedup_messages`` ids counted, whatever their time: replaying a
  file of history twice counts it once, even when its messages span years.

Past both it is forgotten, so importing years of history in one go keeps memory and the table
to one window's worth.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

#: seconds of message time per slot of the in-memory table (ids expire a slot at a time)
SLOT = 60

_FIRST, _SECOND = itemgetter(0), itemgetter(1)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    ts INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (ts, msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    source TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    filled INTEGER NOT NULL DEFAULT 0
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


@dataclass(frozen=True)
class Window:
    """Which ids are kept: those of messages at ``floor`` (message time) or later, and those
    counted at ``seq_floor`` (the order in which messages were counted) or later."""

    floor: float
    seq_floor: int

    @staticmethod
    def of(
        horizon: float | None, span: float, checkpoint: float | None, seq: int, count: int
    ) -> Window:
        """The window for a stream whose newest message is at ``horizon``, with the gap
        filler starting again from ``checkpoint`` (the checkpoint minus its overlap), and
        ``seq`` messages counted so far: the last ``count`` of them kept whatever their time."""
        if horizon is None:
            floor = float("-inf") if checkpoint is None else checkpoint
        else:
            floor = horizon - span if checkpoint is None else min(horizon - span, checkpoint)
        return Window(floor, max(0, seq - count))


class SeenIds:
    """The ids of the dedup window, in memory: a table of 64-bit fingerprints (Python's own
    string hash), with each id's message-time slot and count order, open addressing over
    flat arrays: 16 bytes a place, at most 0.7 full, at most half live after a rebuild and
    the places a power of two: 23-64 bytes an id (1,000,000 ids: 2,097,152 places, 32 MiB;
    a set of the strings alone takes ~130 bytes an id).

    An id outside the window counts as absent; such entries are dropped when the table is
    rebuilt (when it is 0.7 full, live and expired entries together), into the smallest
    table they fill at most half of: in place when that is this one. Two ids with the same
    fingerprint would be taken for one: with 2^64 fingerprints and a window of millions of
    ids, about one message in 10^12 (and hash randomisation makes it no one's choice which).
    """

    MIN_CAPACITY = 1 << 12

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        self._allocate(capacity)
        self._floor = -(1 << 31)  # slot: everything is kept
        self._seq_floor = 0

    def _allocate(self, capacity: int) -> None:
        capacity = max(self.MIN_CAPACITY, 1 << (capacity - 1).bit_length())
        self._keys = array("q", bytes(8 * capacity))
        self._slots = array("i", bytes(4 * capacity))
        self._seqs = array("I", bytes(4 * capacity))
        self._mask = capacity - 1
        self._used = 0  # entries, live or expired
        self._limit = capacity * 7 // 10

    def __len__(self) -> int:
        """Live entries (a scan: for rebuilds, tests and self-metrics, not the hot path)."""
        return sum(1 for i, k in enumerate(self._keys) if k and self._live(i))

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def set_window(self, window: Window) -> None:
        """Forget the ids outside ``window`` (message time a slot at a time)."""
        if window.floor != float("-inf"):
            self._floor = max(self._floor, int(window.floor // SLOT))
        self._seq_floor = max(self._seq_floor, window.seq_floor)

    def _live(self, i: int) -> bool:
        return self._slots[i] >= self._floor or self._seqs[i] >= self._seq_floor

    def add(self, msg_id: str, ts: float, seq: int) -> bool:
        """Record ``msg_id`` (of a message at ``ts``, the ``seq``-th counted); False if it
        was already there."""
        h = hash(msg_id) or 1  # 0 marks an empty place
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            k = keys[i]
            if k == 0:
                break
            if k == h:
                if self._live(i):
                    return False
                break  # an expired copy: this is a new sighting, in its place
            i = (i + 1) & mask
        if k == 0:
            keys[i] = h
            self._used += 1
        self._slots[i] = int(ts // SLOT)
        self._seqs[i] = seq
        if self._used > self._limit:
            self._rebuild()
        return True

    def __contains__(self, msg_id: str) -> bool:
        h = hash(msg_id) or 1
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            k = keys[i]
            if k == 0:
                return False
            if k == h:
                return self._live(i)
            i = (i + 1) & mask

    def _rebuild(self) -> None:
        """Drop the expired entries, into the smallest table the live ones fill at most half
        of: this one (in place) or one larger or smaller. No list of the entries is built: the
        rebuild's peak is the table itself, or the old table and the new one."""
        live = len(self)
        if max(self.MIN_CAPACITY, 1 << (live * 2).bit_length()) == self.capacity:
            self._compact()
            return
        keys, slots, seqs = self._keys, self._slots, self._seqs
        self._allocate(live * 2 + 1)
        new_keys, new_slots, new_seqs, mask = self._keys, self._slots, self._seqs, self._mask
        for i, k in enumerate(keys):
            if k and (slots[i] >= self._floor or seqs[i] >= self._seq_floor):
                j = k & mask
                while new_keys[j]:
                    j = (j + 1) & mask
                new_keys[j] = k
                new_slots[j] = slots[i]
                new_seqs[j] = seqs[i]
        self._used = live

    def _compact(self) -> None:
        """Drop the expired entries in place. Each live entry, taken in table order from a
        place that was empty, is put back at the first free place from its home: a probe path
        never crosses a place that was empty, so an entry only moves back along its own path,
        over places already compacted, and every path stays unbroken."""
        keys, slots, seqs, mask = self._keys, self._slots, self._seqs, self._mask
        start = keys.index(0)  # there is one: the table is at most 0.7 full
        used = 0
        for n in range(1, mask + 1):
            i = (start + n) & mask
            k = keys[i]
            if not k:
                continue
            keys[i] = 0
            if not self._live(i):
                continue
            used += 1
            j = k & mask
            while keys[j]:
                j = (j + 1) & mask
            keys[j] = k
            if j != i:
                slots[j] = slots[i]
                seqs[j] = seqs[i]
        self._used = used


@dataclass
class LedgerChanges:
    """What a flush writes to the ledger besides the counts."""

    #: ids of the messages counted → (message time, count order)
    ids: dict[str, tuple[float, int]] = field(default_factory=dict)
    covered_until: datetime | None = None
    #: plugin → ids counted for it alone; plugin → how far its own history is fetched
    plugin_ids: dict[str, set[str]] = field(default_factory=dict)
    plugin_covered: dict[str, float] = field(default_factory=dict)
    #: reader name → its resume point
    resume: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.ids
            or self.covered_until is not None
            or self.plugin_ids
            or self.plugin_covered
            or self.resume
        )


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


class Ledger:
    """The ledger's tables, on the store's connection (the store owns transactions)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    # --- writing, inside the flush's transaction -------------------------------------------

    def write(self, db: sqlite3.Connection, changes: LedgerChanges, now: float) -> None:
        from statscache_exporter.counts import insert_flat

        ids = changes.ids
        values: list[Any] = [now] * (4 * len(ids))  # (ts, msg_id, seq, stored_at) a row
        values[0::4] = map(int, map(_FIRST, ids.values()))  # no Python frame an id
        values[1::4] = ids
        values[2::4] = map(_SECOND, ids.values())
        insert_flat(db, "INSERT OR IGNORE INTO seen (ts, msg_id, seq, stored_at)", 4, values)
        if changes.covered_until is not None:
            self._advance_checkpoint(db, changes.covered_until)
        if changes.plugin_ids or changes.plugin_covered:
            self._advance_plugins(db, changes.plugin_ids, changes.plugin_covered)
        if changes.resume:
            db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value",
                ((f"resume:{name}", value) for name, value in changes.resume.items()),
            )

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
        from statscache_exporter.counts import insert_rows

        for ident, msg_ids in ids.items():
            insert_rows(db, "INSERT OR IGNORE INTO plugin_seen", [(ident, i) for i in msg_ids])
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

    def prune_seen(self, db: sqlite3.Connection, window: Window) -> None:
        """Forget the ids outside ``window``."""
        if window.floor != float("-inf"):
            db.execute(
                "DELETE FROM seen WHERE ts < ? AND seq < ?",
                (int(window.floor // SLOT) * SLOT, window.seq_floor),
            )

    # --- reading -------------------------------------------------------------------------

    def load_seen(self, into: SeenIds, window: Window) -> None:
        """The ids of the window, from the table, into memory."""
        into.set_window(window)
        low = -(1 << 62) if window.floor == float("-inf") else int(window.floor // SLOT) * SLOT
        for ts, msg_id, seq in self.db.execute(
            "SELECT ts, msg_id, seq FROM seen WHERE ts >= ? OR seq >= ? ORDER BY seq",
            (low, window.seq_floor),
        ):
            into.add(msg_id, ts, seq)

    def horizon(self) -> tuple[float | None, int]:
        """The newest message time among the ids kept (the window's reference at start), and
        how many messages were counted (the next count order)."""
        ts, seq = self.db.execute("SELECT max(ts), max(seq) FROM seen").fetchone()
        return (None if ts is None else float(ts)), (0 if seq is None else int(seq) + 1)

    def is_seen(self, msg_id: str) -> bool:
        """Whether the table holds this id (a scan: for tests and inspection)."""
        return (
            self.db.execute("SELECT 1 FROM seen WHERE msg_id = ? LIMIT 1", (msg_id,)).fetchone()
            is not None
        )

    def seen_at(self, msg_id: str, ts: float) -> float | None:
        """When the message with this id and time was counted for every plugin (wall clock,
        epoch seconds), if it was and the window still holds it."""
        row = self.db.execute(
            "SELECT stored_at FROM seen WHERE ts = ? AND msg_id = ?", (int(ts), msg_id)
        ).fetchone()
        return float(row[0]) if row else None

    def seen_by_plugin(self, ident: str, msg_id: str) -> bool:
        """Whether this message was counted for this plugin alone (see :class:`PluginHistory`)."""
        return (
            self.db.execute(
                "SELECT 1 FROM plugin_seen WHERE ident = ? AND msg_id = ?", (ident, msg_id)
            ).fetchone()
            is not None
        )

    def covered_until(self) -> datetime | None:
        """The time up to which every message is known to be processed, if any."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'covered_until'").fetchone()
        return datetime.fromtimestamp(float(row[0]), UTC) if row else None

    def resume_point(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (f"resume:{name}",))
        found = row.fetchone()
        return str(found[0]) if found else None

    def unregistered(self, idents: Iterable[str]) -> list[str]:
        """Those of these plugins the store has never run."""
        known = {r[0] for r in self.db.execute("SELECT ident FROM plugins")}
        return [i for i in idents if i not in known]

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

    def gaps(self, include_filled: bool = False) -> list[tuple[str, float, float]]:
        """(source, start, end) of the recorded gaps, oldest first."""
        where = "" if include_filled else " WHERE filled = 0"
        return [
            (str(src), float(a), float(b))
            for src, a, b in self.db.execute(
                f'SELECT source, start, "end" FROM gaps{where} ORDER BY start, rowid'
            )
        ]
