"""A plugin added to a store that already has history (pipeline.py, store.py): which range
of history it gets for itself alone, which messages of it are counted for it, and that none is
counted twice for it or at all for the other plugins, across a restart.

The gap filler fetching that range from a real datagrepper, with a kill in the middle, is
tests/test_backfill.py::test_a_plugin_added_later_backfills_its_own_range_for_itself_alone.
Here messages are handed to the pipeline directly, in the shapes datagrepper gives
(conftest.scaled_messages: corpus messages with fresh ids).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import bundled, make_config, scaled_messages

from statscache_exporter.backfill import Range, history_jobs, plugin_history
from statscache_exporter.pipeline import Pipeline
from statscache_exporter.store import PluginHistory

HOUR = 3600.0
PLUGINS = {i: c for i, c in bundled().items() if i in ("volume", "volume_by_topic")}
OLD = {"volume": PLUGINS["volume"]}


def messages_at(times: list[float], seed: int) -> list[dict[str, Any]]:
    out = scaled_messages(len(times), seed=seed)
    for m, t in zip(out, times, strict=True):
        m["timestamp"] = t
    return out


def totals(pipeline: Pipeline, metric: str) -> dict[str, float]:
    return pipeline.store.totals_by_metric(metric)


def topics(pipeline: Pipeline) -> dict[str, float]:
    return {json.loads(k)["topic"]: v for k, v in totals(pipeline, "messages_by_topic").items()}


def by_topic(items: list[dict[str, Any]]) -> dict[str, float]:
    return {t: float(n) for t, n in Counter(m["topic"] for m in items).items()}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def world(open_store: Any) -> Any:
    """A store run 1 filled with ``volume`` only: ``counted`` (from 2 h ago), checkpoint
    ``checkpoint`` (10 minutes ago)."""
    now = time.time()

    class World:
        checkpoint = now - 600
        earlier = messages_at([now - 5 * HOUR + k for k in range(40)], seed=1)
        counted = messages_at([now - 2 * HOUR + k for k in range(30)], seed=2)

        def open(self, **backfill: Any) -> Pipeline:
            settings = {"overlap": "5m", **backfill}
            return open_store(plugins=PLUGINS, backfill=settings)

    w = World()
    first = open_store(plugins=OLD)
    for m in w.counted:
        assert first.handle(m, "bus") == "processed"
    first.cover(datetime.fromtimestamp(w.checkpoint, UTC))
    first.close()
    return w


def test_a_new_plugin_gets_its_history_from_the_epoch_to_now(world: Any) -> None:
    before = time.time()
    epoch = world.earlier[0]["timestamp"] - 1
    p = world.open(epoch=iso(epoch))
    after = time.time()
    history = p.histories["volume_by_topic"]
    assert list(p.histories) == ["volume_by_topic"]  # volume ran before: nothing of its own
    assert history.start == pytest.approx(epoch, abs=1e-6)
    assert before + 300 <= history.end <= after + 300  # now plus the overlap
    assert history.cutoff == pytest.approx(world.checkpoint - 300, abs=1e-6)
    assert before <= history.registered_at <= after
    assert history_jobs(p.histories.values()) == [
        (("volume_by_topic",), Range(history.start, history.end))
    ]


def test_its_history_is_counted_for_it_alone_and_once(world: Any) -> None:
    p = world.open(epoch=iso(world.earlier[0]["timestamp"] - 1))
    volume_before = totals(p, "messages")
    # older than anything run 1 counted, and what run 1 counted before it was added: for it
    for m in world.earlier + world.counted:
        assert p.handle_for(m, ["volume_by_topic"]) == "processed"
    # asked again (the gap filler's overlap, or a retried window): not again
    assert p.handle_for(world.counted[0], ["volume_by_topic"]) == "duplicate"
    p.flush()
    assert topics(p) == by_topic(world.earlier + world.counted)
    assert totals(p, "messages") == volume_before  # volume did not move
    assert p.stats.plugin_history["volume_by_topic"] == 70


def test_what_the_shared_stream_counts_for_every_plugin_is_not_counted_again(
    world: Any,
) -> None:
    p = world.open(epoch=iso(world.earlier[0]["timestamp"] - 1))
    now = time.time()
    live, later = messages_at([now - 60, now - 30], seed=3)
    assert p.handle(live, "bus") == "processed"  # counted for both plugins, pending
    assert p.handle_for(live, ["volume_by_topic"]) == "duplicate"
    p.flush()
    assert p.handle_for(live, ["volume_by_topic"]) == "duplicate"  # seen since it was added
    # not counted by anyone yet, but after the cutoff: the shared backfill counts it for all
    assert p.handle_for(later, ["volume_by_topic"]) == "duplicate"
    assert p.handle(later, "backfill") == "processed"
    p.flush()
    assert totals(p, "messages") == {"{}": 30 + 2}
    assert topics(p) == by_topic([live, later])


def test_counted_for_it_survives_a_restart_without_its_checkpoint(
    world: Any, open_store: Any
) -> None:
    epoch = iso(world.earlier[0]["timestamp"] - 1)
    p = world.open(epoch=epoch)
    for m in world.earlier[:20]:
        p.handle_for(m, ["volume_by_topic"])
    p.flush()  # committed, but no PluginsCovered yet: the window is fetched again
    p.store.close()
    again = world.open(epoch=epoch)
    assert set(again.histories) == {"volume_by_topic"}  # still to do, same range
    assert again.histories["volume_by_topic"].registered_at == (
        p.histories["volume_by_topic"].registered_at
    )
    outcomes = Counter(again.handle_for(m, ["volume_by_topic"]) for m in world.earlier)
    assert outcomes == {"duplicate": 20, "processed": 20}
    again.flush()
    assert topics(again) == by_topic(world.earlier)


def test_when_its_history_is_covered_it_is_done(world: Any, open_store: Any) -> None:
    epoch = iso(world.earlier[0]["timestamp"] - 1)
    p = world.open(epoch=epoch)
    history = p.histories["volume_by_topic"]
    p.handle_for(world.earlier[0], ["volume_by_topic"])
    p.cover_plugins(["volume_by_topic"], history.start + HOUR)
    p.flush()
    left = p.store.plugin_histories()
    assert left == [PluginHistory(**{**vars(history), "covered_until": history.start + HOUR})]
    assert history_jobs(left) == [(("volume_by_topic",), Range(history.start + HOUR, history.end))]
    p.cover_plugins(["volume_by_topic"], history.end)
    p.flush()
    assert p.histories == {} and p.store.plugin_histories() == []
    assert p.store.db.execute("SELECT count(*) FROM plugin_seen").fetchone() == (0,)
    p.store.close()
    assert world.open(epoch=epoch).histories == {}  # not fetched again on the next start


def test_backlog_delta_bounds_the_history_and_the_epoch_clips_it(tmp_path: Any) -> None:
    now = time.time()
    topic = PLUGINS["volume_by_topic"]  # no backlog_delta of its own

    def history(**sections: Any) -> tuple[float, float, float] | None:
        cfg = make_config(tmp_path / "s.sqlite", **sections)
        return plugin_history(cfg, topic, now, now - 600)

    overlap = {"overlap": "5m"}
    assert history(backfill=overlap) is None
    assert history(backfill={**overlap, "initial_backfill": "2h"}) == (
        now - 2 * HOUR,
        now + 300,
        now - 900,
    )
    epoch = {**overlap, "epoch": iso(now - 3 * HOUR), "initial_backfill": "2h"}
    assert history(backfill=epoch) == pytest.approx((now - 3 * HOUR, now + 300, now - 900))
    one_hour = {"volume_by_topic": {"backlog_delta": "1h"}}
    assert history(backfill=epoch, plugins=one_hour) == (now - HOUR, now + 300, now - 900)
    nine_hours = {"volume_by_topic": {"backlog_delta": "9h"}}
    got = history(backfill=epoch, plugins=nine_hours)
    assert got is not None and got[0] == pytest.approx(now - 3 * HOUR)  # not before the epoch
    # the plugin's own backlog_delta when the config gives none

    class Weekly(topic):  # type: ignore[misc, valid-type]
        ident = "weekly"
        backlog_delta = timedelta(days=7)

    cfg = make_config(tmp_path / "s.sqlite", backfill=overlap)
    assert plugin_history(cfg, Weekly, now, now - 600) == (now - 7 * 86400, now + 300, now - 900)


def test_without_backlog_epoch_or_initial_backfill_it_gets_no_history(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="statscache_exporter.pipeline"):
        p = world.open()
    assert p.histories == {}
    assert "no history to fetch for it" in caplog.text
    p.store.close()
    # registered all the same: enabling an epoch later does not give it a history then
    assert world.open(epoch=iso(time.time() - HOUR)).histories == {}


def test_plugins_of_a_first_start_get_no_history_of_their_own(open_store: Any) -> None:
    p = open_store(plugins=PLUGINS, backfill={"epoch": iso(time.time() - HOUR)})
    assert p.histories == {}  # no checkpoint: the shared backfill serves them all
    assert p.store.unregistered(PLUGINS) == []


def test_a_plugin_with_series_from_before_the_registry_is_not_new(open_store: Any) -> None:
    """A store of schema 5 has no registry: a plugin with series in it ran before."""
    first = open_store(plugins=PLUGINS)
    first.handle(messages_at([time.time() - 60], seed=4)[0], "bus")
    first.cover(datetime.fromtimestamp(time.time() - 30, UTC))
    first.flush()
    first.store.db.execute("DELETE FROM plugins")
    first.store.close()
    again = open_store(plugins=PLUGINS, backfill={"epoch": iso(time.time() - HOUR)})
    assert again.histories == {}
