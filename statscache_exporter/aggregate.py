"""Aggregation: plugin emissions → per-bucket values at every resolution, and totals.

A counter emission adds to the bucket that holds the message's own time, at each resolution
(the base interval, 1 s by default, and the roll-ups: 1 m, 1 h, 1 d), and to the series'
cumulative total. A gauge emission sets the bucket and the current value, but only if its
message is the newest seen for them, ordered by (timestamp, message id): history replayed late
never overwrites a newer state. Integer addition and that max are both commutative, so the same
messages in any order give the same buckets and totals.

Between flushes the aggregator holds only the *changes* since the last flush (counters as
deltas, gauges as candidates); the store applies them in one transaction. Totals are kept in
full, in memory, because ``/metrics`` serves them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from statscache_exporter.plugin import Metric

#: (metric name, label values in declared order)
SeriesKey = tuple[str, tuple[str, ...]]
#: (metric name, label values, resolution in seconds, bucket start in epoch seconds)
BucketKey = tuple[str, tuple[str, ...], int, int]


@dataclass(frozen=True, slots=True, order=True)
class GaugeValue:
    """A gauge value and the (timestamp, message id) of the message that set it; compares
    by that pair first, so ``max`` picks the newest message's value deterministically."""

    ts: float
    msg_id: str
    value: float = field(compare=False)


@dataclass(slots=True)
class Series:
    """What the store and the sinks need to know of a series besides its values."""

    plugin: str
    metric: Metric
    labels: tuple[str, ...]
    created: float = 0.0  # when the exporter first saw the series (wall clock, for _created)

    def label_dict(self) -> dict[str, str]:
        return dict(zip(self.metric.labels, self.labels, strict=True))


@dataclass(slots=True)
class Batch:
    """Everything one flush writes: bucket deltas/candidates and the touched totals in full."""

    counter_deltas: dict[BucketKey, int] = field(default_factory=dict)
    gauge_candidates: dict[BucketKey, GaugeValue] = field(default_factory=dict)
    totals: dict[SeriesKey, int | GaugeValue] = field(default_factory=dict)
    series: dict[SeriesKey, Series] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.counter_deltas or self.gauge_candidates or self.totals)


def bucket_start(epoch: float, resolution: int) -> int:
    """The start of the bucket of ``resolution`` seconds that holds ``epoch``, aligned to the
    UTC epoch (so a 1 d bucket starts at midnight UTC)."""
    return int(epoch // resolution) * resolution


class Aggregator:
    """Per-bucket aggregation at every resolution, plus cumulative totals."""

    def __init__(self, resolutions: Iterable[int], clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.resolutions = tuple(sorted(set(resolutions)))
        if not self.resolutions or self.resolutions[0] < 1:
            raise ValueError(f"resolutions must be whole seconds ≥ 1, got {self.resolutions}")
        self.totals: dict[SeriesKey, int | GaugeValue] = {}
        self.series: dict[SeriesKey, Series] = {}
        self.series_per_metric: Counter[str] = Counter()
        self._pending = Batch()

    def restore(
        self, series: Mapping[SeriesKey, Series], totals: Mapping[SeriesKey, int | GaugeValue]
    ) -> None:
        """Start from what the store holds, so counters go on from their stored totals."""
        self.series.update(series)
        self.totals.update(totals)
        self.series_per_metric = Counter(name for name, _ in self.series)

    def add(
        self,
        plugin: str,
        metric: Metric,
        labels: tuple[str, ...],
        amount: float,
        ts: float,
        msg_id: str,
    ) -> None:
        """Apply one emission of message ``msg_id`` with time ``ts``."""
        key: SeriesKey = (metric.name, labels)
        if key not in self.series:
            self.series[key] = Series(plugin, metric, labels, self.clock())
            self.series_per_metric[metric.name] += 1
        pending = self._pending
        pending.series[key] = self.series[key]
        if metric.kind == "counter":
            count = int(amount)
            deltas = pending.counter_deltas
            for res in self.resolutions:
                bkey = (metric.name, labels, res, int(ts // res) * res)
                deltas[bkey] = deltas.get(bkey, 0) + count
            total = self.totals.get(key, 0)
            assert isinstance(total, int)
            self.totals[key] = pending.totals[key] = total + count
        else:
            candidate = GaugeValue(ts, msg_id, float(amount))
            gauges = pending.gauge_candidates
            for res in self.resolutions:
                bkey = (metric.name, labels, res, int(ts // res) * res)
                current = gauges.get(bkey)
                if current is None or candidate > current:
                    gauges[bkey] = candidate
            now = self.totals.get(key)
            if now is None or (isinstance(now, GaugeValue) and candidate > now):
                self.totals[key] = pending.totals[key] = candidate

    def drain(self) -> Batch:
        """The changes since the last drain; the aggregator starts a new batch."""
        batch, self._pending = self._pending, Batch()
        return batch

    def requeue(self, batch: Batch) -> None:
        """Put back a batch whose flush failed, so the next flush writes it with the rest."""
        pending = self._pending
        pending.series.update(batch.series)
        for bkey, delta in batch.counter_deltas.items():
            pending.counter_deltas[bkey] = pending.counter_deltas.get(bkey, 0) + delta
        for bkey, candidate in batch.gauge_candidates.items():
            current = pending.gauge_candidates.get(bkey)
            if current is None or candidate > current:
                pending.gauge_candidates[bkey] = candidate
        for key in batch.totals:
            pending.totals[key] = self.totals[key]
