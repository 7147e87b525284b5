"""The source framework: acknowledgements after the flush that stored a message, connection
state (gauge, /readyz, gaps for the gap filler), reconnect backoff, and the sources' config."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, scaled_messages

from statscache_exporter import config as configuration
from statscache_exporter.daemon import Daemon, SourceStatus
from statscache_exporter.sources import SourceContext
from statscache_exporter.sources.backoff import Backoff
from statscache_exporter.store import StoreError


def daemon_for(tmp_path: Path) -> Daemon:
    cfg = make_config(tmp_path / "store.sqlite", http={"enabled": False})
    return Daemon(cfg)


def feed(
    daemon: Daemon, ctx: SourceContext, messages: list[dict[str, Any]], acked: list[str]
) -> None:
    """Emit from a source thread, then let the pipeline thread handle what was queued (as
    ``Daemon.loop`` does, without its timer)."""

    def source() -> None:
        for m in messages:
            ctx.emit(m, lambda i=m["msg_id"]: acked.append(i))

    t = threading.Thread(target=source)
    t.start()
    t.join()
    while not daemon.queue.empty():
        name, raw, ack = daemon.queue.get_nowait()
        daemon.pipeline.handle(raw, name)
        if ack is not None:
            daemon.acks.append(ack)


def test_messages_are_acknowledged_only_after_the_flush_that_stored_them(tmp_path: Path) -> None:
    daemon = daemon_for(tmp_path)
    ctx = daemon.context("bus")
    messages = scaled_messages(30, seed=3)
    acked: list[str] = []
    feed(daemon, ctx, messages, acked)
    assert acked == []  # handled, not yet committed
    assert daemon.pipeline.store.is_seen(messages[0]["msg_id"]) is False
    daemon.flush()
    assert acked == [m["msg_id"] for m in messages]
    assert all(daemon.pipeline.store.is_seen(m["msg_id"]) for m in messages)
    daemon.pipeline.close()


def test_a_failed_flush_keeps_the_acknowledgements_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = daemon_for(tmp_path)
    messages = scaled_messages(5, seed=4)
    acked: list[str] = []
    feed(daemon, daemon.context("bus"), messages, acked)
    real_commit = daemon.pipeline.store.commit

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("disk full")

    monkeypatch.setattr(daemon.pipeline.store, "commit", failing)
    with pytest.raises(StoreError):
        daemon.flush()
    assert acked == []
    monkeypatch.setattr(daemon.pipeline.store, "commit", real_commit)
    daemon.flush()
    assert sorted(acked) == sorted(m["msg_id"] for m in messages)
    daemon.pipeline.close()


def test_duplicates_and_rejections_are_acknowledged_too(tmp_path: Path) -> None:
    """A redelivered message or a broken one must not come back forever."""
    daemon = daemon_for(tmp_path)
    ctx = daemon.context("bus")
    acked: list[str] = []
    messages = scaled_messages(3, seed=5)
    feed(daemon, ctx, messages, acked)
    daemon.flush()
    feed(daemon, ctx, messages, acked)  # redelivered
    ctx.emit(b"not json", lambda: acked.append("garbage"))
    name, raw, ack = daemon.queue.get_nowait()
    daemon.pipeline.handle(raw, name)
    assert ack is not None
    daemon.acks.append(ack)
    daemon.flush()
    assert sorted(acked) == sorted([m["msg_id"] for m in messages] * 2 + ["garbage"])
    assert daemon.pipeline.stats.duplicates["bus"] == 3
    assert sum(daemon.pipeline.stats.rejected.values()) == 1
    daemon.pipeline.close()


def test_a_disconnection_is_shown_and_recorded_as_a_gap(tmp_path: Path) -> None:
    daemon = daemon_for(tmp_path)
    clock = iter([1000.0, 1042.5])
    connected = daemon.pipeline.stats.source_connected
    status = SourceStatus("bus", connected, lambda *gap: daemon.gaps.put(gap), lambda: next(clock))
    assert connected["bus"] is False  # not yet connected
    status.connected()
    assert connected["bus"] is True
    status.disconnected("connection reset")
    status.disconnected("still down")  # the first failure dates the gap
    assert connected["bus"] is False
    status.connected()
    assert connected["bus"] is True
    daemon.flush()
    assert daemon.pipeline.store.gaps() == [("bus", 1000.0, 1042.5)]
    daemon.pipeline.close()


def test_readyz_names_the_live_sources_that_are_down(tmp_path: Path) -> None:
    from statscache_exporter.daemon import exposition_for, web_context
    from statscache_exporter.web import App

    cfg = make_config(
        tmp_path / "store.sqlite",
        http={"enabled": False},
        sources=[
            {"type": "fedora-messaging", "name": "amqp", "amqp_url": "amqp://127.0.0.1:9/%2F"},
            {"type": "replay", "name": "files", "paths": []},
        ],
    )
    daemon = Daemon(cfg)
    app = App(web_context(daemon.pipeline, exposition_for(daemon.pipeline)))
    daemon.flush()
    status, _, body = app._readyz()
    assert status == 503 and b"not connected: amqp" in body and b"files" not in body
    daemon.pipeline.stats.source_connected["amqp"] = True
    status, _, body = app._readyz()
    assert (status, body) == (200, b"ready\n")
    daemon.pipeline.close()


def test_readyz_says_when_the_gap_filler_is_stuck(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from statscache_exporter.backfill import BackfillStats
    from statscache_exporter.daemon import exposition_for, web_context
    from statscache_exporter.web import App

    daemon = daemon_for(tmp_path)
    stats = BackfillStats(failed="backfill stopped: the window X failed 8 times, last: HTTP 500")
    app = App(web_context(daemon.pipeline, exposition_for(daemon.pipeline), backfill=lambda: stats))
    daemon.flush()
    status, _, body = app._readyz()
    assert status == 503
    assert body == (
        b"not ready: the gap filler is stuck, trying again: backfill stopped: the window X "
        b"failed 8 times, last: HTTP 500\n"
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(app.ctx.self_metrics)
    assert "statscache_exporter_backfill_stuck 1.0" in generate_latest(registry).decode()
    stats.failed = None
    status, _, body = app._readyz()
    assert (status, body) == (200, b"ready\n")
    daemon.pipeline.close()


def test_backoff_doubles_to_its_ceiling_with_jitter_and_resets() -> None:
    draws: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        draws.append((a, b))
        return b

    backoff = Backoff(1.0, 8.0, uniform)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert draws[0] == (0.5, 1.0) and draws[3] == (4.0, 8.0)  # drawn from the upper half
    backoff.reset()
    assert backoff.next() == 1.0
    with pytest.raises(ValueError):
        Backoff(0, 1)
    stop = threading.Event()
    stop.set()
    assert Backoff(5.0, 10.0).wait(stop) is True  # returns at once when stopping


def config_error(data: Any) -> str:
    with pytest.raises(configuration.ConfigError) as err:
        configuration.from_dict(data)
    return str(err.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"type": "fedora-messaging"},
            "sources[0].amqp_url: required (e.g. amqp://localhost/%2F), unless "
            "sources[0].profile is fedora-public",
        ),
        (
            {"type": "fedora-messaging", "amqp_url": "amqp://x", "prefetch": 0},
            "sources[0].prefetch: must be at least 1",
        ),
        (
            {"type": "fedora-messaging", "amqp_url": "amqps://x", "tls": {"certfile": "c.pem"}},
            "sources[0].tls: give both certfile and keyfile, or neither",
        ),
        (
            {"type": "fedora-messaging", "profile": "public"},
            "sources[0].profile: 'public' is not a valid choice; valid: none, fedora-public",
        ),
        ({"type": "fedmsg", "endpoints": []}, "sources[0].endpoints: give at least one endpoint"),
        (
            {"type": "fedmsg", "reconnect": {"initial": "10s", "max": "1s"}},
            "sources[0].reconnect: need 0 < initial <= max",
        ),
        (
            {"type": "fedmsg", "topic": "org"},
            "sources[0].topic: unknown key; valid keys: type, name, endpoints, topics, "
            "validate_signatures, high_water_mark, tcp_keepalive, tcp_keepalive_idle, "
            "tcp_keepalive_interval, tcp_keepalive_count, reconnect",
        ),
    ],
)
def test_source_config_errors_name_the_key(source: dict[str, Any], message: str) -> None:
    assert config_error({"sources": [source]}) == message


def test_source_configs_with_their_defaults() -> None:
    cfg = configuration.from_dict(
        {"sources": [{"type": "fedora-messaging", "profile": "fedora-public"}, {"type": "fedmsg"}]}
    )
    amqp, zmq = cfg.sources
    assert isinstance(amqp, configuration.FedoraMessagingSourceConfig)
    assert amqp.name == "fedora-messaging0" and amqp.queue == "" and amqp.prefetch == 2000
    assert amqp.bindings == (configuration.BindingConfig("amq.topic", ("#",)),)
    assert isinstance(zmq, configuration.FedmsgSourceConfig)
    assert zmq.name == "fedmsg1" and zmq.endpoints == ("tcp://hub.fedoraproject.org:9940",)


def test_a_flush_the_pipeline_makes_on_its_own_acknowledges_at_once(tmp_path: Path) -> None:
    """Under steady traffic the pipeline flushes every store.max_batch messages without the
    daemon's timer: what those flushes stored is acknowledged then, not when the bus pauses
    (else the broker stops sending once prefetch messages wait for their acknowledgement)."""
    cfg = make_config(tmp_path / "store.sqlite", http={"enabled": False}, store={"max_batch": 10})
    daemon = Daemon(cfg)
    acked: list[str] = []
    for m in scaled_messages(25, seed=6):
        daemon.handle("bus", m, lambda i=m["msg_id"]: acked.append(i))
    assert len(acked) == 20  # two full batches, committed and acknowledged
    assert all(daemon.pipeline.store.is_seen(i) for i in acked)
    daemon.flush()
    assert len(acked) == 25
    daemon.pipeline.close()


def test_a_pollers_outage_is_not_a_gap(tmp_path: Path) -> None:
    """The datagrepper poller reads on from where its last poll ended: nothing to fill."""
    cfg = make_config(
        tmp_path / "store.sqlite",
        http={"enabled": False},
        sources=[
            {"type": "datagrepper", "name": "dg", "url": "http://127.0.0.1:9"},
            {"type": "fedmsg", "name": "zmq", "endpoints": ["tcp://127.0.0.1:9"]},
        ],
    )
    daemon = Daemon(cfg)
    for name in ("dg", "zmq"):
        status = daemon.context(name).status
        status.connected()
        status.disconnected("gone")
        status.connected()
    daemon.flush()
    assert [gap[0] for gap in daemon.pipeline.store.gaps()] == ["zmq"]
    daemon.pipeline.close()


def test_the_gap_fillers_progress_is_in_the_self_metrics(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from statscache_exporter.backfill import BackfillStats
    from statscache_exporter.selfmetrics import SelfMetrics

    daemon = daemon_for(tmp_path)
    stats = BackfillStats(
        windows_done=2,
        messages=57,
        requests=9,
        requests_failed=3,
        requests_retried=4,
        splits=1,
        remaining_seconds=1800.5,
    )
    daemon.pipeline.stats.plugin_history["volume_by_topic"] = 5
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SelfMetrics(daemon.pipeline, "statscache_", dict, backfill=lambda: stats))
    lines = generate_latest(registry).decode().splitlines()
    assert "statscache_exporter_backfill_messages_total 57.0" in lines
    assert "statscache_exporter_backfill_windows_total 2.0" in lines
    assert "statscache_exporter_backfill_requests_failed_total 3.0" in lines
    assert "statscache_exporter_backfill_requests_retried_total 4.0" in lines
    assert "statscache_exporter_backfill_remaining_seconds 1800.5" in lines
    assert "statscache_exporter_backfill_requests_total 9.0" in lines
    assert "statscache_exporter_backfill_splits_total 1.0" in lines
    assert (
        'statscache_exporter_plugin_history_messages_total{plugin="volume_by_topic"} 5.0' in lines
    )
    registry.unregister(next(iter(registry._collector_to_names)))
    registry.register(SelfMetrics(daemon.pipeline, "statscache_", dict))
    assert "backfill" not in generate_latest(registry).decode()  # no gap filler, no series
    daemon.pipeline.close()


def test_the_pipeline_thread_waits_for_a_message_only_until_the_next_flush_is_due(
    tmp_path: Path,
) -> None:
    """What came last before the bus went quiet is flushed when the interval is up, not a
    whole interval after the last message (the tail the latency benchmark found)."""
    cfg = make_config(
        tmp_path / "store.sqlite", http={"enabled": False}, store={"flush_interval": "10s"}
    )
    daemon = Daemon(cfg)
    now = [1_000.0]
    daemon.pipeline.clock = lambda: now[0]
    daemon.pipeline.flush()  # the last flush: at 1,000 s
    waits: list[float | None] = []

    class Quiet:
        """The daemon's queue on a bus gone quiet: records each wait, 4 s passes in each."""

        def get(self, timeout: float | None = None) -> Any:
            waits.append(timeout)
            now[0] += 4.0
            if len(waits) == 4:
                daemon.stop.set()
            raise queue.Empty

    daemon.queue = Quiet()  # type: ignore[assignment]
    flushes = daemon.pipeline.stats.flushes
    daemon.loop()
    # 10 s to go, then 6, then 2 (flushed at 1,012 s: due since 1,010), then 10 again
    assert waits == [10.0, 6.0, 2.0, 10.0]
    assert daemon.pipeline.stats.last_flush_attempt == 1_012.0
    assert daemon.pipeline.stats.flushes == flushes  # nothing to commit: no empty flushes
    daemon.pipeline.close()
