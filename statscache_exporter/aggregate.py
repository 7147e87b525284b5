"""Aggregation: plugin emissions → per-bucket values at every resolution, and totals.

A counter emission adds to the bucket that holds the message's own time, at each resolution
(the base interval, 1 s by default, and the roll-ups: 1 m, 1 h, 1 d), and to the series'
cumulative total. A gauge emission sets the bucket and the current value, but only if its
message is the newest seen for them, ordered by (timestamp, message id): history replayed late
never overwrites a newer state. Integer addition and that max are both commutative, so the same
messages in any order give the same buckets and totals.

Between flushes the aggregator holds only the *changes* since the last flush, and only at the
base interval: a counter's delta per (series, base bucket), a gauge's newest candidate per
(series, base bucket). That is all the hot path does per emission. :meth:`Aggregator.drain`
then derives, once per flush, the coarser resolutions (each a sum of base deltas, or the newest
of base candidates, which is the same as adding each emission at every resolution: both are
commutative and associative) and the totals. Totals are kept in full, in memory, because
``/metrics`` serves them.

The cardinality cap is applied here too: a metric that has as many series as its limit sends
emissions of new label values to one overflow series (every label set to the overflow value),
counted per (plugin, metric).
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


#: a plugin's emissions for one message: (metric, label values in declared order, amount)
Emission = tuple[Metric, tuple[str, ...], float]


class Aggregator:
    """Per-bucket aggregation at every resolution, plus cumulative totals."""

    def __init__(
        self,
        resolutions: Iterable[int],
        clock: Callable[[], float] = time.time,
        limits: Mapping[str, int] | None = None,
        overflow_value: str = "__overflow__",
    ) -> None:
        self.clock = clock
        self.resolutions = tuple(sorted(set(resolutions)))
        if not self.resolutions or self.resolutions[0] < 1:
            raise ValueError(f"resolutions must be whole seconds ≥ 1, got {self.resolutions}")
        self.base = self.resolutions[0]
        self.totals: dict[SeriesKey, int | GaugeValue] = {}
        self.series: dict[SeriesKey, Series] = {}
        self.series_per_metric: Counter[str] = Counter()
        #: emissions sent to the overflow series by the cap, per (plugin, metric)
        self.overflowed: Counter[tuple[str, str]] = Counter()
        self._limits = limits if limits is not None else {}
        self._overflow = overflow_value
        #: (series, base bucket start) → counter delta / newest gauge candidate since the
        #: last drain
        self._counts: dict[tuple[SeriesKey, int], int] = {}
        self._gauges: dict[tuple[SeriesKey, int], GaugeValue] = {}
        #: series touched since the last drain
        self._touched: dict[SeriesKey, Series] = {}
        #: a batch put back by a failed flush, merged into the next drain
        self._requeued: Batch | None = None

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
        self.add_all(plugin, [(metric, labels, amount)], ts, msg_id)

    def add_all(self, plugin: str, emissions: Iterable[Emission], ts: float, msg_id: str) -> None:
        """Apply one plugin's emissions for message ``msg_id`` with time ``ts``: each lands
        in the base bucket of ``ts``, as a delta or a candidate."""
        start = int(ts // self.base) * self.base
        series, touched = self.series, self._touched
        counts, gauges = self._counts, self._gauges
        candidate: GaugeValue | None = None
        for metric, labels, amount in emissions:
            key: SeriesKey = (metric.name, labels)
            s = series.get(key)
            if s is None:
                key, s = self._new_series(plugin, metric, labels)
            touched[key] = s
            bkey = (key, start)
            if metric.kind == "counter":
                counts[bkey] = counts.get(bkey, 0) + int(amount)
            else:
                if candidate is None or candidate.value != amount:
                    candidate = GaugeValue(ts, msg_id, float(amount))
                current = gauges.get(bkey)
                if current is None or candidate > current:
                    gauges[bkey] = candidate

    def _new_series(
        self, plugin: str, metric: Metric, labels: tuple[str, ...]
    ) -> tuple[SeriesKey, Series]:
        """A series seen for the first time, or the metric's overflow series once the metric
        has as many series as its limit."""
        name = metric.name
        if labels and self.series_per_metric[name] >= self._limits.get(name, 1 << 62):
            self.overflowed[(plugin, name)] += 1
            labels = (self._overflow,) * len(labels)
            key: SeriesKey = (name, labels)
            found = self.series.get(key)
            if found is not None:
                return key, found
        key = (name, labels)
        s = self.series[key] = Series(plugin, metric, labels, self.clock())
        self.series_per_metric[name] += 1
        return key, s

    def drain(self) -> Batch:
        """The changes since the last drain, at every resolution, with the touched totals;
        the aggregator starts afresh."""
        batch = Batch(series=self._touched)
        counts, gauges = self._counts, self._gauges
        self._counts, self._gauges, self._touched = {}, {}, {}
        deltas, candidates = batch.counter_deltas, batch.gauge_candidates
        coarser = self.resolutions[1:]
        base = self.base
        per_series: dict[SeriesKey, int] = {}
        for ((name, labels), start), n in counts.items():
            deltas[(name, labels, base, start)] = n
            for res in coarser:
                rkey = (name, labels, res, start // res * res)
                deltas[rkey] = deltas.get(rkey, 0) + n
            skey = (name, labels)
            per_series[skey] = per_series.get(skey, 0) + n
        newest: dict[SeriesKey, GaugeValue] = {}
        for ((name, labels), start), g in gauges.items():
            candidates[(name, labels, base, start)] = g
            for res in coarser:
                rkey = (name, labels, res, start // res * res)
                current = candidates.get(rkey)
                if current is None or g > current:
                    candidates[rkey] = g
            skey = (name, labels)
            current = newest.get(skey)
            if current is None or g > current:
                newest[skey] = g
        totals = self.totals
        for skey, n in per_series.items():
            total = totals.get(skey, 0)
            assert isinstance(total, int)
            totals[skey] = batch.totals[skey] = total + n
        for skey, g in newest.items():
            now = totals.get(skey)
            if now is None or (isinstance(now, GaugeValue) and g > now):
                totals[skey] = batch.totals[skey] = g
        requeued, self._requeued = self._requeued, None
        if requeued is not None:
            _merge(batch, requeued, totals)
        return batch

    def requeue(self, batch: Batch) -> None:
        """Put back a batch whose flush failed, so the next flush writes it with the rest.
        (Its totals are already in :attr:`totals`; the next drain writes them again.)"""
        if self._requeued is None:
            self._requeued = batch
        else:
            _merge(self._requeued, batch, self.totals)


def _merge(into: Batch, batch: Batch, totals: Mapping[SeriesKey, int | GaugeValue]) -> None:
    """Add ``batch``'s changes to ``into``'s (deltas summed, the newest candidates kept)."""
    into.series.update(batch.series)
    for bkey, delta in batch.counter_deltas.items():
        into.counter_deltas[bkey] = into.counter_deltas.get(bkey, 0) + delta
    for bkey, candidate in batch.gauge_candidates.items():
        current = into.gauge_candidates.get(bkey)
        if current is None or candidate > current:
            into.gauge_candidates[bkey] = candidate
    for key in batch.totals:
        into.totals[key] = totals[key]
