"""``run``: the long-running exporter. Sources run in threads and hand raw messages to one
pipeline thread through a bounded queue; the pipeline thread handles them and flushes on the
flush interval, also when the bus is quiet; each committed flush updates the Prometheus
exposition, which the HTTP server (its own threads) serves with the REST API. SIGTERM or
SIGINT: stop the sources, handle what they already handed over, flush once more, exit 0.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable
from typing import Any

from statscache_exporter import restapi
from statscache_exporter.config import Config, ReplaySourceConfig
from statscache_exporter.exposition import Exposition
from statscache_exporter.influx import InfluxSink
from statscache_exporter.pipeline import Pipeline, influx_sink_for, open_pipeline, series_ttls
from statscache_exporter.selfmetrics import SelfMetrics
from statscache_exporter.sources import Source
from statscache_exporter.sources.replay import ReplaySource
from statscache_exporter.store import Reader
from statscache_exporter.web import App, Context, WebServer

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000


def make_sources(config: Config) -> list[Source]:
    sources: list[Source] = []
    for sc in config.sources:
        if isinstance(sc, ReplaySourceConfig):
            sources.append(ReplaySource(sc.paths, sc.name))
    return sources


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
    pipeline: Pipeline, exposition: Exposition, influx: InfluxSink | None = None
) -> Context:
    config = pipeline.config
    plugins = {type(p).ident: type(p) for p in pipeline.plugins}
    return Context(
        pipeline=pipeline,
        exposition=exposition,
        self_metrics=SelfMetrics(
            pipeline, config.prometheus.prefix, exposition.series_count, influx=influx
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
    )


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue(QUEUE_SIZE)
        self.pipeline: Pipeline = open_pipeline(config)
        self.exposition = exposition_for(self.pipeline)
        self.influx = influx_sink_for(self.pipeline)
        self.sources = make_sources(config)
        self.threads: list[threading.Thread] = []
        self.web = (
            WebServer(App(web_context(self.pipeline, self.exposition, self.influx)), config.http)
            if config.http.enabled
            else None
        )

    def _emitter(self, name: str) -> Callable[[Any], None]:
        def emit(raw: Any) -> None:
            while not self.stop.is_set():
                try:
                    self.queue.put((name, raw), timeout=0.5)
                    return
                except queue.Full:
                    continue

        return emit

    def _run_source(self, source: Source) -> None:
        connected = self.pipeline.stats.source_connected
        connected[source.name] = True
        try:
            source.run(self._emitter(source.name), self.stop)
            log.info("source %s has no more messages", source.name)
        except Exception:
            log.exception("source %s failed", source.name)
        finally:
            connected[source.name] = False

    def start(self) -> None:
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
        """Handle messages and flush on time until stopped."""
        interval = self.config.store.flush_interval.total_seconds()
        while not self.stop.is_set():
            try:
                name, raw = self.queue.get(timeout=interval)
            except queue.Empty:
                pass
            else:
                self.pipeline.handle(raw, name)
            if self.pipeline.flush_due():
                self.pipeline.flush()

    def shutdown(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        while True:
            try:
                name, raw = self.queue.get_nowait()
            except queue.Empty:
                break
            self.pipeline.handle(raw, name)
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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    try:
        daemon.loop()
    finally:
        daemon.shutdown()
    return 0
