"""The exporter's own metrics, as a prometheus-client custom collector.

They are few and change all the time (message age, for one), so they are collected on every
scrape, unlike the plugins' series. Counts are since the process started: Prometheus sees a
restart as a counter reset, which ``rate()`` handles.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from statscache_exporter.backfill import BackfillStats
from statscache_exporter.pipeline import Pipeline
from statscache_exporter.reader import Reader

if TYPE_CHECKING:  # not imported at run time: influxdb-client's ~550 modules are ~10 MB
    from statscache_exporter.influx import InfluxSink


def store_size(path: Path) -> int:
    """Bytes on disk of the SQLite file and its WAL."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):  # no WAL right after a checkpoint
            total += os.stat(p).st_size
    return total


class SelfMetrics:
    """Collects the pipeline's counts, the store's size, sources' state, series counts."""

    def __init__(
        self,
        pipeline: Pipeline,
        prefix: str,
        series_count: Callable[[], dict[str, int]],
        clock: Callable[[], float] = time.time,
        influx: InfluxSink | None = None,
        backfill: Callable[[], BackfillStats | None] = lambda: None,
    ) -> None:
        self.pipeline = pipeline
        self.influx = influx
        self.backfill = backfill
        self.name = prefix + "exporter_"
        self.series_count = series_count
        self.clock = clock

    def _family(
        self,
        kind: str,
        name: str,
        help: str,
        labels: Sequence[str],
        samples: Iterable[tuple[Sequence[str], float]],
    ) -> Metric:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        family = cls(self.name + name, help, labels=list(labels))
        for values, value in samples:
            family.add_metric(list(values), value)
        return family

    def collect(self) -> Iterator[Metric]:
        stats = self.pipeline.stats
        # dict() of a dict is one atomic copy under the GIL: the pipeline thread may be adding
        # keys meanwhile.
        per_source = [
            ("messages_received", "Messages received", dict(stats.received)),
            ("messages_processed", "Messages counted by the plugins", dict(stats.processed)),
            ("messages_duplicate", "Messages skipped as already counted", dict(stats.duplicates)),
        ]
        for name, help, counts in per_source:
            samples = (((source,), n) for source, n in sorted(counts.items()))
            yield self._family("counter", name, help + ", per source", ["source"], samples)
        yield self._family(
            "counter",
            "messages_rejected",
            "Messages rejected as malformed, per source and reason",
            ["source", "reason"],
            sorted(dict(stats.rejected).items()),
        )
        yield self._family(
            "counter",
            "plugin_errors",
            "Messages a plugin failed on",
            ["plugin"],
            (((i,), stats.plugin_errors.get(i, 0)) for i in self.pipeline.plugin_idents),
        )
        yield self._family(
            "counter",
            "plugin_history_messages",
            "Messages of a plugin's own history (it was added to a store with history) "
            "counted for it alone",
            ["plugin"],
            sorted(((i,), n) for i, n in dict(stats.plugin_history).items()),
        )
        owner = {name: ident for name, (ident, _) in self.pipeline.metrics().items()}
        yield self._family(
            "gauge",
            "series",
            "Series per metric",
            ["plugin", "metric"],
            (((owner.get(m, ""), m), n) for m, n in sorted(self.series_count().items())),
        )
        yield self._family(
            "counter",
            "series_overflow",
            "Emissions counted under the overflow label value because the metric hit its cap",
            ["plugin", "metric"],
            sorted(dict(stats.series_overflow).items()),
        )
        yield from self._flushes()
        yield self._family(
            "gauge",
            "source_connected",
            "1 while a source is connected (a replay: reading)",
            ["source"],
            (
                ((src,), 1.0 if up else 0.0)
                for src, up in sorted(dict(stats.source_connected).items())
            ),
        )

    def _flushes(self) -> Iterator[Metric]:
        stats = self.pipeline.stats
        yield self._family(
            "counter", "flushes", "Flushes committed to the store", [], [((), stats.flushes)]
        )
        yield self._family(
            "gauge",
            "flush_duration_seconds",
            "Duration of the last committed flush",
            [],
            [((), stats.last_flush_seconds)],
        )
        if stats.last_flush_at is not None:
            yield self._family(
                "gauge",
                "last_flush_timestamp_seconds",
                "When the last flush committed",
                [],
                [((), stats.last_flush_at)],
            )
        if stats.newest_message is not None:
            age = max(0.0, self.clock() - stats.newest_message)
            yield self._family(
                "gauge",
                "newest_message_age_seconds",
                "Age of the newest message processed, by its own time",
                [],
                [((), age)],
            )
        yield self._family(
            "gauge",
            "store_size_bytes",
            "Size of the SQLite store and its WAL",
            [],
            [((), store_size(self.pipeline.store.path))],
        )
        if self.influx is not None:
            yield from self._influx(self.influx)
        backfill = self.backfill()
        if backfill is not None:
            yield from self._backfill(backfill)

    def _backfill(self, b: BackfillStats) -> Iterator[Metric]:
        for name, help, value in (
            (
                "backfill_messages",
                "Messages fetched from datagrepper by the gap filler",
                b.messages,
            ),
            ("backfill_windows", "Windows the gap filler fetched and handed over", b.windows_done),
            ("backfill_requests", "Requests the gap filler made to datagrepper", b.requests),
            (
                "backfill_splits",
                "Spans asked for again in halves after a 502/504 from datagrepper",
                b.splits,
            ),
            (
                "backfill_requests_failed",
                "Window reads that failed and were retried (or stopped the backfill)",
                b.requests_failed,
            ),
            (
                "backfill_requests_retried",
                "Single requests asked again (no answer, 429, 5xx) within a window read",
                b.requests_retried,
            ),
        ):
            yield self._family("counter", name, help, [], [((), value)])
        yield self._family(
            "gauge",
            "backfill_stuck",
            "1 while the gap filler is stuck on a window that failed every retry (it goes on "
            "trying)",
            [],
            [((), 1.0 if b.failed else 0.0)],
        )
        yield self._family(
            "gauge",
            "backfill_remaining_seconds",
            "Time range the gap filler has yet to fetch",
            [],
            [((), max(0.0, b.remaining_seconds))],
        )

    def _influx(self, sink: InfluxSink) -> Iterator[Metric]:
        s = sink.stats
        counters = [
            ("influxdb_points_written", "Points InfluxDB acknowledged", s.points_written),
            (
                "influxdb_batches_failed",
                "Batches InfluxDB did not take (retried)",
                s.batches_failed,
            ),
            ("influxdb_points_refused", "Points InfluxDB refused for their data", s.points_refused),
            (
                "influxdb_outbox_overflow",
                "Bucket changes not queued for InfluxDB because the outbox was full",
                sink.queued.overflow,
            ),
            (
                "influxdb_late_unsent",
                "Late changes to seconds retention had pruned, not sent to InfluxDB",
                sink.queued.late_unsent,
            ),
        ]
        for name, help, value in counters:
            yield self._family("counter", name, help, [], [((), value)])
        # counted now, on a connection of this thread: right even while a write hangs
        pending, failed, oldest = Reader(self.pipeline.store.path).outbox_state()
        gauges: list[tuple[str, str, float]] = [
            (
                "influxdb_pending_points",
                "Points queued for InfluxDB (a bucket changed again meanwhile is queued again)",
                pending,
            ),
            (
                "influxdb_failed_points",
                "Points set aside: refused by InfluxDB, or tags line protocol cannot carry",
                failed,
            ),
            ("influxdb_up", "1 if the last write to InfluxDB went through", float(s.connected)),
        ]
        if oldest is not None:
            age = max(0.0, self.clock() - oldest)
            gauges.append(
                ("influxdb_oldest_pending_age_seconds", "Age of the oldest queued point", age)
            )
        for name, help, level in gauges:
            yield self._family("gauge", name, help, [], [((), level)])
