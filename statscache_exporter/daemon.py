"""``run``: the long-running exporter. Sources run in threads and hand raw messages to one
pipeline thread through a bounded queue; the pipeline thread handles them and flushes on the
flush interval, also when the bus is quiet; after each committed flush it acknowledges the
messages that flush covered to their sources (AMQP), and the Prometheus exposition is updated,
which the HTTP server (its own threads) serves with the REST API. SIGTERM or SIGINT: stop the
sources, handle what they already handed over, flush once more, acknowledge, let the sources
close, exit 0.

With a live source and ``backfill.enabled``, a gap filler thread (backfill.py) feeds the same
queue with what datagrepper holds for the time the sources missed, window by window, each
followed by a ``Covered`` marker that moves the checkpoint once its window is committed; then,
for plugins new to the store, their own history (``ForPlugins``, ``PluginsCovered``), counted
for them alone.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from statscache_exporter import restapi
from statscache_exporter.backfill import (
    BackfillStats,
    Covered,
    ForPlugins,
    GapFilled,
    GapFiller,
    PluginsCovered,
    plan,
)
from statscache_exporter.config import (
    Config,
    DatagrepperSourceConfig,
    FedmsgSourceConfig,
    FedoraMessagingSourceConfig,
    ReplaySourceConfig,
)
from statscache_exporter.exposition import Exposition
from statscache_exporter.pipeline import Pipeline, influx_sink_for, open_pipeline, series_ttls
from statscache_exporter.reader import Reader
from statscache_exporter.selfmetrics import SelfMetrics
from statscache_exporter.sources import Ack, Source, SourceContext
from statscache_exporter.sources.replay import ReplaySource
from statscache_exporter.web import App, Context, WebServer

if TYPE_CHECKING:  # imported only with influxdb.enabled (pipeline.influx_sink_for)
    from statscache_exporter.influx import InfluxSink

log = logging.getLogger(__name__)

#: messages handed over by the sources and not yet taken by the pipeline thread, at most; a
#: source waits while it is full. A decoded message holds about 5 KB of Python objects: 1,000
#: are ~5 MB and a few tenths of a second of the pipeline's work (10,000 were ~50 MB of peak
#: memory during a replay, bench/memory.py).
QUEUE_SIZE = 1_000
#: put in the queue to wake the pipeline thread (see Daemon.request_stop)
_WAKE = object()
#: how long the sources get to close after the final flush
CLOSE_TIMEOUT = 10.0


def make_sources(config: Config) -> list[Source]:
    sources: list[Source] = []
    for sc in config.sources:
        if isinstance(sc, ReplaySourceConfig):
            sources.append(ReplaySource(sc.paths, sc.name))
        elif isinstance(sc, FedoraMessagingSourceConfig):
            from statscache_exporter.sources.amqp import AmqpSource

            sources.append(AmqpSource(sc))
        elif isinstance(sc, FedmsgSourceConfig):
            from statscache_exporter.sources.zmq import FedmsgSource

            sources.append(FedmsgSource(sc))
        elif isinstance(sc, DatagrepperSourceConfig):
            from statscache_exporter.sources.poll import DatagrepperSource

            sources.append(DatagrepperSource(sc))
    return sources


def ack_window(config: Config) -> int:
    """How many acknowledgements may wait for the next flush before it is made at once: half
    the smallest ``prefetch`` of the fedora-messaging sources (0: none acknowledges). The
    broker sends no more than ``prefetch`` unacknowledged messages, so waiting for the flush
    interval with a full window would cap a drain at prefetch / interval (2,000 messages/s by
    default); at half, the broker sends the other half while the flush commits."""
    windows = [s.prefetch for s in config.sources if isinstance(s, FedoraMessagingSourceConfig)]
    return max(1, min(windows) // 2) if windows else 0


class SourceStatus:
    """One source's connection state: the ``source_connected`` gauge and ``/readyz`` read it;
    the time from a disconnect to the reconnect is handed to ``on_gap`` (the daemon records
    it in the store for the gap filler)."""

    def __init__(
        self,
        name: str,
        connected: dict[str, bool],
        on_gap: Any,
        clock: Any = time.time,
    ) -> None:
        self.name = name
        self._connected = connected
        self._on_gap = on_gap
        self._clock = clock
        self._lost_at: float | None = None
        connected[name] = False

    def connected(self, detail: str = "") -> None:
        if self._connected.get(self.name):
            return
        self._connected[self.name] = True
        if self._lost_at is not None:
            now = self._clock()
            log.info(
                "source %s reconnected after %.1f s %s", self.name, now - self._lost_at, detail
            )
            self._on_gap(self.name, self._lost_at, now)
            self._lost_at = None
        else:
            log.info("source %s connected %s", self.name, detail)

    def disconnected(self, reason: str) -> None:
        if self._lost_at is None:
            self._lost_at = self._clock()
        if self._connected.get(self.name, True):
            log.warning("source %s disconnected: %s", self.name, reason)
        self._connected[self.name] = False


def exposition_for(pipeline: Pipeline) -> Exposition:
    """The Prometheus exposition of the pipeline's series, kept current by each flush."""
    config, metrics = pipeline.config, pipeline.metrics()
    exposition = Exposition(
        config.prometheus.prefix,
        metrics,
        created_series=config.prometheus.created_series,
        ttls=series_ttls(config, metrics),
    )
    exposition.update(pipeline.aggregator.totals, pipeline.aggregator.series)
    pipeline.listeners.append(lambda batch: exposition.update(batch.totals, batch.series))
    return exposition


def web_context(
    pipeline: Pipeline,
    exposition: Exposition,
    influx: InfluxSink | None = None,
    backfill: Callable[[], BackfillStats | None] = lambda: None,
) -> Context:
    config = pipeline.config
    plugins = {type(p).ident: type(p) for p in pipeline.plugins}
    return Context(
        pipeline=pipeline,
        exposition=exposition,
        self_metrics=SelfMetrics(
            pipeline,
            config.prometheus.prefix,
            exposition.series_count,
            influx=influx,
            backfill=backfill,
        ),
        reader=Reader(config.store.path),
        plugins=plugins,
        http=config.http,
        api=restapi.ApiSettings(
            resolutions=config.resolutions(),
            default_rows_per_page=config.http.api.default_rows_per_page,
            max_rows_per_page=config.http.api.max_rows_per_page,
        ),
        ready_within=max(5.0, 5 * config.store.flush_interval.total_seconds()),
        live_sources=tuple(s.name for s in config.sources if s.type != "replay"),
        backfill=backfill,
    )


class Daemon:
    """``external``: names of live sources fed from outside the config (the fedmsg-hub
    consumer): they count as live for the gap filler, as the configured ones do."""

    def __init__(self, config: Config, external: tuple[str, ...] = ()) -> None:
        self.config = config
        self.external = external
        self.stop = threading.Event()
        self.closing = threading.Event()
        self.queue: queue.Queue[tuple[str, Any, Ack | None]] = queue.Queue(QUEUE_SIZE)
        #: acknowledgements due once the next flush has committed (pipeline thread only)
        self.acks: list[Ack] = []
        #: a flush is made at once when this many acknowledgements wait for one (ack_window)
        self.ack_window = ack_window(config)
        #: (source, start, end) of disconnections, written to the store by the pipeline thread
        self.gaps: queue.SimpleQueue[tuple[str, float, float]] = queue.SimpleQueue()
        self.pipeline: Pipeline = open_pipeline(config)
        self.exposition = exposition_for(self.pipeline)
        self.influx = influx_sink_for(self.pipeline)
        self.sources = make_sources(config)
        self.threads: list[threading.Thread] = []
        #: the gap filler, when backfill is on and a live source is configured
        self.filler: GapFiller | None = None
        self._filled: list[GapFilled] = []
        self._advanced = 0.0
        self.web = (
            WebServer(
                App(web_context(self.pipeline, self.exposition, self.influx, self._backfill_stats)),
                config.http,
            )
            if config.http.enabled
            else None
        )

    def context(self, name: str) -> SourceContext:
        """What the source called ``name`` runs with."""

        def emit(raw: Any, ack: Ack | None = None, /) -> None:
            while not self.stop.is_set():
                try:
                    self.queue.put((name, raw, ack), timeout=0.5)
                    return
                except queue.Full:
                    continue

        # a poller's outage is no gap: its next poll reads from where the last one ended
        polling = name in {s.name for s in self.config.sources if s.type == "datagrepper"}
        status = SourceStatus(
            name,
            self.pipeline.stats.source_connected,
            (lambda *gap: None) if polling else (lambda *gap: self.gaps.put(gap)),
        )
        return SourceContext(emit, self.stop, self.closing, status)

    def _run_source(self, source: Source) -> None:
        ctx = self.context(source.name)
        if isinstance(source, ReplaySource):
            ctx.status.connected()
        try:
            source.run(ctx)
            log.info("source %s has no more messages", source.name)
        except Exception:
            log.exception("source %s failed", source.name)
        finally:
            self.pipeline.stats.source_connected[source.name] = False

    def _backfill_stats(self) -> BackfillStats | None:
        return self.filler.backfill.stats if self.filler is not None else None

    def _live(self) -> list[str]:
        configured = [
            s.name for s in self.config.sources if s.type not in ("replay", "datagrepper")
        ]
        return configured + list(self.external)

    def _start_backfill(self) -> None:
        """What was missed before this start, then every outage still unfilled (read here,
        on the pipeline's thread, which owns the store)."""
        store = self.pipeline.store
        covered = store.covered_until()
        first = plan(self.config.backfill, covered.timestamp() if covered else None, time.time())
        self.filler = GapFiller(
            self.config.backfill,
            self.context("backfill").emit,
            self.stop,
            first,
            store.gaps(),
            self.pipeline.histories.values(),
            database=self.config.datanommer,
        )
        t = threading.Thread(target=self.filler.run, name="backfill", daemon=True)
        t.start()

    def start(self) -> None:
        if self.config.backfill.enabled and self._live():
            self._start_backfill()
        elif self.pipeline.histories:
            log.warning(
                "plugins %s are new to this store; their own history is fetched by the gap "
                "filler, which runs with backfill.enabled and a live source",
                ", ".join(self.pipeline.histories),
            )
        if self.web is not None:
            self.web.start()
        if self.influx is not None:
            self.influx.start()
        for source in self.sources:
            t = threading.Thread(
                target=self._run_source, args=(source,), name=source.name, daemon=True
            )
            t.start()
            self.threads.append(t)
        log.info(
            "running with %d source(s) and plugins %s; store %s",
            len(self.sources),
            ", ".join(self.pipeline.plugin_idents),
            self.config.store.path,
        )

    def loop(self) -> None:
        """Handle messages and flush on time until stopped: a wait for the next message ends
        when the next flush is due, so what came last before the bus went quiet is flushed on
        time, not an interval later."""
        while not self.stop.is_set():
            try:
                name, raw, ack = self.queue.get(timeout=self.pipeline.until_flush())
            except queue.Empty:
                pass
            else:
                if raw is not _WAKE:
                    self.handle(name, raw, ack)
            if self.pipeline.flush_due():
                self.flush()

    def request_stop(self) -> None:
        """Stop soon (safe from a signal handler or another thread): the pipeline thread
        wakes at once instead of at the end of its wait for a message."""
        self.stop.set()
        with contextlib.suppress(queue.Full):  # full: it is busy, and will see stop
            self.queue.put_nowait(("", _WAKE, None))

    def handle(self, name: str, raw: Any, ack: Ack | None) -> None:
        """One message; if it made the pipeline flush (a full batch, or the interval passed
        while messages kept coming), acknowledge at once what that flush covered."""
        if isinstance(raw, Covered):
            self.pipeline.cover(datetime.fromtimestamp(raw.until, UTC))
            return
        if isinstance(raw, GapFilled):
            self._filled.append(raw)
            return
        if isinstance(raw, PluginsCovered):
            self.pipeline.cover_plugins(raw.plugins, raw.until)
            return
        flushes = self.pipeline.stats.flushes
        if isinstance(raw, ForPlugins):
            self.pipeline.handle_for(raw.item, raw.plugins, name)
        else:
            self.pipeline.handle(raw, name)
        if ack is not None:
            self.acks.append(ack)
        if self.pipeline.stats.flushes != flushes:
            self._flushed()
        elif self.ack_window and len(self.acks) >= self.ack_window:
            self.flush()  # half a source's window of unacknowledged deliveries waits

    def flush(self) -> None:
        """Commit, then acknowledge what the commit covered, and record gaps."""
        self.pipeline.flush()
        self._flushed()

    def _flushed(self) -> None:
        self._acknowledge()
        store = self.pipeline.store
        while True:
            try:
                source, start, end = self.gaps.get_nowait()
            except queue.Empty:
                break
            store.record_gap(source, start, end)
            if self.filler is not None:
                self.filler.add_gap(source, start, end)
        filled, self._filled = self._filled, []
        for gap in filled:  # its messages were committed by the flush just made
            store.mark_gap_filled(gap.source, gap.start, gap.end)
        self._advance_checkpoint()

    def _advance_checkpoint(self) -> None:
        """While every live source is connected and nothing missed is left to fetch, the
        checkpoint follows the clock (a minute at a time), so the next start fetches only
        from where this run stopped."""
        now = time.time()
        if self.filler is None or now - self._advanced < 60 or not self.filler.idle():
            return
        connected = self.pipeline.stats.source_connected
        if all(connected.get(name) for name in self._live()):
            self._advanced = now
            overlap = self.config.backfill.overlap.total_seconds()
            self.pipeline.cover(datetime.fromtimestamp(now - overlap, UTC))

    def _acknowledge(self) -> None:
        acks, self.acks = self.acks, []
        for ack in acks:
            try:
                ack()
            except Exception:  # the source's connection is gone: it will be redelivered
                log.warning("an acknowledgement could not be made", exc_info=True)

    def shutdown(self) -> None:
        self.stop.set()
        for t in self.threads:  # a source that acknowledges stays until closing is set
            t.join(timeout=0.5)
        while True:
            try:
                name, raw, ack = self.queue.get_nowait()
            except queue.Empty:
                break
            if raw is not _WAKE:
                self.handle(name, raw, ack)
        try:
            self.flush()
        finally:
            self.closing.set()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.pipeline.close()
        if self.influx is not None:
            self.influx.stop()  # bounded by influxdb.shutdown_timeout
        if self.web is not None:
            self.web.stop()
        log.info("stopped after a final flush")


def run(config: Config) -> int:
    daemon = Daemon(config)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        daemon.stop.set()
        # not here: the handler may interrupt this thread while it holds the queue's lock
        threading.Thread(target=daemon.request_stop, name="stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    try:
        daemon.loop()
    finally:
        daemon.shutdown()
    return 0
