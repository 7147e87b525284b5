"""The exporter's own metrics, as a prometheus-client custom collector.

They are few and change all the time (message age, for one), so they are collected on every
scrape, unlike the plugins' series. Counts are since the process started: Prometheus sees a
restart as a counter reset, which ``rate()`` handles.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from statscache_exporter.pipeline import Pipeline


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
    ) -> None:
        self.pipeline = pipeline
        self.name = prefix + "exporter_"
        self.series_count = series_count
        self.clock = clock

    def _counter(self, name: str, help: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(self.name + name, help, labels=labels)

    def _gauge(self, name: str, help: str, labels: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name + name, help, labels=labels or [])

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
            family = self._counter(name, help + ", per source", ["source"])
            for source, n in sorted(counts.items()):
                family.add_metric([source], n)
            yield family
        rejected = self._counter(
            "messages_rejected",
            "Messages rejected as malformed, per source and reason",
            ["source", "reason"],
        )
        for (source, reason), n in sorted(dict(stats.rejected).items()):
            rejected.add_metric([source, reason], n)
        yield rejected
        errors = self._counter("plugin_errors", "Messages a plugin failed on", ["plugin"])
        for ident in self.pipeline.plugin_idents:
            errors.add_metric([ident], stats.plugin_errors.get(ident, 0))
        yield errors
        yield from self._series()
        yield from self._flushes()
        connected = self._gauge(
            "source_connected", "1 while a source is connected (a replay: reading)", ["source"]
        )
        for source, up in sorted(dict(stats.source_connected).items()):
            connected.add_metric([source], 1.0 if up else 0.0)
        yield connected

    def _series(self) -> Iterator[Metric]:
        stats = self.pipeline.stats
        counts = self.series_count()
        owner = {name: ident for name, (ident, _) in self.pipeline.metrics().items()}
        series = self._gauge("series", "Series per metric", ["plugin", "metric"])
        for metric, n in sorted(counts.items()):
            series.add_metric([owner.get(metric, ""), metric], n)
        yield series
        overflow = self._counter(
            "series_overflow",
            "Emissions counted under the overflow label value because the metric hit its cap",
            ["plugin", "metric"],
        )
        for (plugin, metric), n in sorted(dict(stats.series_overflow).items()):
            overflow.add_metric([plugin, metric], n)
        yield overflow

    def _flushes(self) -> Iterator[Metric]:
        stats = self.pipeline.stats
        flushes = self._counter("flushes", "Flushes committed to the store", [])
        flushes.add_metric([], stats.flushes)
        yield flushes
        duration = self._gauge("flush_duration_seconds", "Duration of the last committed flush")
        duration.add_metric([], stats.last_flush_seconds)
        yield duration
        if stats.last_flush_at is not None:
            last = self._gauge("last_flush_timestamp_seconds", "When the last flush committed")
            last.add_metric([], stats.last_flush_at)
            yield last
        if stats.newest_message is not None:
            age = self._gauge(
                "newest_message_age_seconds", "Age of the newest message processed, by its own time"
            )
            age.add_metric([], max(0.0, self.clock() - stats.newest_message))
            yield age
        size = self._gauge("store_size_bytes", "Size of the SQLite store and its WAL")
        size.add_metric([], store_size(self.pipeline.store.path))
        yield size
