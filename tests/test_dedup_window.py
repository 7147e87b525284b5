"""The dedup window at its edges: message time, the count of messages, the checkpoint, and the
memory and table it takes (ledger.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from statscache_exporter.ledger import SLOT, SeenIds, Window

T0 = int(datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp())
HOUR = 3600
DAY = 86400
TOPIC = "org.fedoraproject.prod.bodhi.update.comment"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fedmsg(mid: str, ts: float) -> dict[str, Any]:
    return {"topic": TOPIC, "msg": {}, "timestamp": ts, "msg_id": mid}


def test_the_last_messages_counted_are_kept_whatever_their_time(open_store: Any) -> None:
    """A file of history replayed twice counts once even when it spans years: the ids of the
    last ``store.dedup_messages`` counted are kept however old their messages are."""
    p = open_store(clock=Clock(T0 + 400 * DAY), store={"dedup_window": "1h", "dedup_messages": 5})
    old = fedmsg("old", T0)
    assert p.handle(old) == "processed"
    for n in range(4):  # a year later: the time window alone would have forgotten "old"
        assert p.handle(fedmsg(f"new{n}", T0 + 365 * DAY + n)) == "processed"
        p.flush()
    assert p.handle(old) == "duplicate"  # still among the last 5 counted
    p.handle(fedmsg("new4", T0 + 365 * DAY + 4))
    p.flush()
    assert p.handle(old) == "processed"  # 5 more counted since: forgotten


def test_ids_from_the_checkpoint_on_are_kept_however_far_the_horizon_moves(
    open_store: Any,
) -> None:
    """After an outage longer than the window, the gap filler starts from the checkpoint minus
    its overlap: the ids of what was counted there are still known, however far newer live
    messages moved the horizon."""
    clock = Clock(T0 + 10 * DAY)
    p = open_store(clock=clock, store={"dedup_window": "1h", "dedup_messages": 1})
    before = [fedmsg(f"before{n}", T0 - 10 * 60 + n * 60) for n in range(10)]  # T0-10m..T0-1m
    for m in before:
        p.handle(m)
    p.cover(datetime.fromtimestamp(T0, UTC))
    p.flush()
    for n in range(3):  # live messages 10 days later, before the gap filler is done
        p.handle(fedmsg(f"live{n}", T0 + 10 * DAY + n))
        p.flush()
    clock.now += 61
    p.flush()
    p._maybe_prune()
    # backfill.overlap is 5 min: the gap filler starts at T0 - 5 min
    outcomes = [p.handle(m) for m in before]
    assert outcomes[5:] == ["duplicate"] * 5  # from the checkpoint minus the overlap
    assert outcomes[:5] == ["processed"] * 5  # older: forgotten (the gap filler never asks)


def test_importing_history_keeps_memory_and_the_table_to_one_window(open_store: Any) -> None:
    """10 days of messages, 1 a minute, through a window of 1 h and 100 messages: the table and
    the ids in memory never hold more than the window, and what it holds is the newest."""
    clock = Clock(T0 + 11 * DAY)
    p = open_store(clock=clock, store={"dedup_window": "1h", "dedup_messages": 100})
    for n in range(10 * 24 * 60):
        p.handle(fedmsg(f"m{n}", T0 + n * 60))
        if n % 500 == 0:
            p.flush()
            clock.now += 61  # the pipeline prunes at most once a minute
            p._maybe_prune()
            rows = p.store.db.execute("SELECT count(*) FROM seen").fetchone()[0]
            assert rows <= 100 + 61 + 500  # the window, plus what came since the last prune
            assert len(p._seen) <= 100 + 61
    p.flush()
    clock.now += 61
    p._maybe_prune()
    kept = [r[0] for r in p.store.db.execute("SELECT msg_id FROM seen ORDER BY seq")]
    newest = 10 * 24 * 60 - 1
    assert kept == [f"m{n}" for n in range(newest - 99, newest + 1)]
    assert p._seen.capacity <= 1 << 12  # the table never had to grow


def test_seen_ids_expire_by_time_or_count_whichever_keeps_longer() -> None:
    seen = SeenIds()
    assert seen.add("a", T0, 0)
    assert seen.add("b", T0 + HOUR, 1)
    assert not seen.add("a", T0 + 5, 7)  # by id, whatever the time
    seen.set_window(Window(T0 + 30 * 60, 1))
    assert "a" not in seen  # older than the floor and before the count floor
    assert "b" in seen
    seen.set_window(Window(T0 + 2 * HOUR, 1))
    assert "b" in seen  # too old, but still among those the count keeps
    seen.set_window(Window(T0 + 2 * HOUR, 2))
    assert "b" not in seen
    assert seen.add("a", T0, 9)  # forgotten: a new sighting
    assert "a" in seen


def test_seen_ids_grow_and_drop_expired_ones_exactly() -> None:
    """Many ids through a small window: every live id found, no forgotten one, none invented."""
    rng = random.Random(5)
    seen = SeenIds()
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(60_000)]
    for n, i in enumerate(ids):
        assert seen.add(i, T0 + n, n)
        if n % 1000 == 999:
            seen.set_window(Window(T0 + n - 20_000, n - 20_000))
    floor_slot = int((T0 + len(ids) - 1 - 20_000) // SLOT)
    for n, i in enumerate(ids):
        live = int((T0 + n) // SLOT) >= floor_slot or n >= len(ids) - 1 - 20_000
        assert (i in seen) == live, n
    assert all(f"x{n}" not in seen for n in range(10_000))
    assert len(seen) <= seen.capacity * 7 // 10
    assert seen.capacity <= 1 << 17  # ~21k live ids: rebuilt, not grown without bound


def test_seen_ids_compacted_in_place_keep_exactly_the_live_ones() -> None:
    """A window of ~1,000 ids through the smallest table, 50,000 ids added: every rebuild is
    a compaction in place (the live ones fill at most half), with probe runs that wrap around
    the end of the table; after each step the table answers as a plain model of the window."""
    rng = random.Random(11)
    seen = SeenIds()
    model: dict[str, tuple[int, int]] = {}  # id -> (slot, seq)
    window = Window(float("-inf"), 0)
    compactions = wraps = 0
    for n in range(50_000):
        mid = f"{rng.getrandbits(64):016x}"
        ts = T0 + n * 6 + rng.randrange(-600, 600)  # a share arriving out of time order
        before = seen._used
        assert seen.add(mid, ts, n)
        model[mid] = (int(ts // SLOT), n)
        compactions += seen._used < before
        if n % 100 == 99:
            window = Window(T0 + n * 6 - 3_000, n - 900)
            seen.set_window(window)
        if n % 2_500 == 2_499:
            wraps += seen._keys[0] != 0 and seen._keys[-1] != 0  # a run over the end
            floor = int(window.floor // SLOT)
            for m, (slot, seq) in model.items():
                assert (m in seen) == (slot >= floor or seq >= window.seq_floor), (n, m)
    assert seen.capacity == SeenIds.MIN_CAPACITY
    assert compactions >= 10
    assert wraps >= 1  # (hash randomisation: a run over the end shows at ~half the checks)
    live = [m for m in model if m in seen]
    assert all(not seen.add(m, T0, 0) for m in live)  # found again: not a new sighting
    assert len(seen) == len(live)


def test_seen_ids_grow_into_a_table_twice_the_live_ones_without_a_list() -> None:
    """Growing past half full moves the live ids to a table of at least twice their number,
    every one still found."""
    seen = SeenIds()
    ids = [f"id-{n}" for n in range(100_000)]
    for n, mid in enumerate(ids):
        seen.add(mid, T0 + n, n)
    assert seen.capacity == 1 << 18  # 100,000 live: the next power of two ≥ 200,000
    assert all(mid in seen for mid in ids)
    assert len(seen) == len(ids)
