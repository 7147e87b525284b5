"""Aggregation: plugin emissions → per-bucket values at every resolution, and totals.

A counter emission adds to the bucket that holds the message's own time, at each resolution
(the base interval, 1 s by default, and the roll-ups: 1 m, 1 h, 1 d), and to the series'
cumulative total. A gauge emission sets the bucket and the current value, but only if its
message is the newest seen for them, ordered by (timestamp, message id): history replayed late
never overwrites a newer state. Integer addition and that max are both commutative, so the same
messages in any order give the same buckets and totals.

Between flushes the aggregator holds only the *changes* since the last flush: a counter's
delta per (series, bucket), a gauge's newest candidate per (series, bucket) (a bucket named
by one int, :data:`BucketId`), at the base interval and at the first roll-up (1 m by
default). That is all the hot path does per
emission: two dictionary updates, the second in place of a per-series sum (a series' change
in all is the sum of its roll-up deltas, or their newest candidate). The coarser resolutions
are derived once per flush from the next finer one (:meth:`Batch.levels`: each a sum of
deltas, or the newest of candidates, which is the same as adding each emission at every
resolution: sums and that max are associative), and the store writes each resolution's rows
straight into its table. Totals are kept in full, in memory, because ``/metrics`` serves them.

The cardinality cap is applied here too: a metric that has as many series as its limit sends
emissions of new label values to one overflow series (every label set to the overflow value),
counted per (plugin, metric).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from statscache_exporter.plugin import Metric

#: (metric name, label values in declared order)
SeriesKey = tuple[str, tuple[str, ...]]
#: (metric name, label values, resolution in seconds, bucket start in epoch seconds)
BucketKey = tuple[str, tuple[str, ...], int, int]

#: a bucket's key in the aggregator and in a batch's levels: its start times SLOTS plus its
#: series' slot, which is the series' id in the store (and its place in the aggregator's
#: :attr:`Aggregator.slots`). An int is no object the cycle collector traverses: with
#: (series, start) tuples, the young and middle generations' collections went through every
#: key held since the last flush, ~4 µs of a message's ~50 (bench/pipeline.py), and tuples of
#: two ints still cost ~2. The store splits keys in SQL (``key / SLOTS``, ``key % SLOTS``):
#: doing it in Python, with a look-up of each series' id, cost ~0.7 µs a row.
BucketId = int
#: more than the series ids a store gives out, and odd, about 2^28 over the golden ratio: a
#: key's low bits, which pick its place in a dict, mix its start and slot (with a power of two
#: every series of one second would start probing at the same place); and small enough that
#: keys of starts up to 2106 fit in 60 bits, two of CPython's int digits
SLOTS = 0x9E3779B


def bucket_key(slot: int, start: int) -> BucketId:
    """The key of the bucket of the series in ``slot`` starting at ``start``."""
    return start * SLOTS + slot


def split_key(key: BucketId) -> tuple[int, int]:
    """(slot, start) of a bucket key."""
    start, slot = divmod(key, SLOTS)
    return slot, start


@dataclass(frozen=True, slots=True, order=True)
class GaugeValue:
    """A gauge value and the (timestamp, message id) of the message that set it; compares
    by that pair first, so ``max`` picks the newest message's value deterministically."""

    ts: float
    msg_id: str
    value: float = field(compare=False)


@dataclass(slots=True, eq=False)
class Series:
    """What the store and the sinks need to know of a series besides its values. One object
    per series: its slot names it in its buckets' keys (:data:`BucketId`) and is its id in the
    store: the store's own for a series loaded from it, the next free one for a new series
    (given by the aggregator, which starts after the store's highest; the store inserts the
    series under it)."""

    plugin: str
    metric: Metric
    labels: tuple[str, ...]
    created: float = 0.0  # when the exporter first saw the series (wall clock, for _created)
    key: SeriesKey = field(init=False)
    #: its id in the store and its place in its aggregator's slots, once it has one (unset
    #: before: a bucket key of a series without one is an AttributeError, not a wrong key)
    slot: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.key = (self.metric.name, self.labels)

    def label_dict(self) -> dict[str, str]:
        return dict(zip(self.metric.labels, self.labels, strict=True))


#: a flush's changes at one resolution: bucket key (:data:`BucketId`) → counter delta, and →
#: the newest gauge candidate
Level = tuple[dict[BucketId, int], dict[BucketId, GaugeValue]]


@dataclass(slots=True)
class Batch:
    """Everything one flush writes: bucket deltas/candidates at the base interval (the first of
    ``resolutions``) and at the first roll-up (the second, if any), from which
    :meth:`levels` derives the others; and the touched totals in full.

    The aggregator's changes are keyed by bucket key (``keyed_*`` at the base interval,
    ``rolled_*`` at the first roll-up), whose series are in ``slots`` (by slot):
    building a (metric, labels, resolution, start) key for each would cost the flush more
    than its SQL. ``counter_deltas`` / ``gauge_candidates`` hold base-interval changes keyed
    by name (a batch made by hand); :meth:`levels` rolls them up too."""

    counter_deltas: dict[BucketKey, int] = field(default_factory=dict)
    gauge_candidates: dict[BucketKey, GaugeValue] = field(default_factory=dict)
    totals: dict[SeriesKey, int | GaugeValue] = field(default_factory=dict)
    series: dict[SeriesKey, Series] = field(default_factory=dict)
    #: the base interval, then the roll-ups, in seconds
    resolutions: tuple[int, ...] = (1,)
    keyed_counts: dict[BucketId, int] = field(default_factory=dict)
    keyed_gauges: dict[BucketId, GaugeValue] = field(default_factory=dict)
    #: ``keyed_counts``/``keyed_gauges`` rolled up to ``resolutions[1]`` (empty without one)
    rolled_counts: dict[BucketId, int] = field(default_factory=dict)
    rolled_gauges: dict[BucketId, GaugeValue] = field(default_factory=dict)
    #: the series of the bucket keys, by slot (the aggregator's own list, which only grows;
    #: None where the store has a series the aggregator did not load)
    slots: list[Series | None] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.keyed_counts
            or self.keyed_gauges
            or self.counter_deltas
            or self.gauge_candidates
            or self.totals
        )

    @property
    def counts(self) -> int:
        """Base-interval counter buckets changed."""
        return len(self.keyed_counts) + len(self.counter_deltas)

    @property
    def gauges(self) -> int:
        """Base-interval gauge buckets changed."""
        return len(self.keyed_gauges) + len(self.gauge_candidates)

    def levels(self) -> dict[int, Level]:
        """The changes at every resolution, finest first: the aggregator's base and first
        roll-up as they are, each coarser one rolled up from the coarsest finer one that tiles
        it (:func:`roll_sources`), and the changes keyed by name rolled up alongside (their
        series must have their slots: the store gives them at the start of its commit)."""
        base = self.resolutions[0]
        sources = roll_sources(self.resolutions)
        keyed: dict[int, Level] = {base: (self.keyed_counts, self.keyed_gauges)}
        if len(self.resolutions) > 1:
            keyed[self.resolutions[1]] = (self.rolled_counts, self.rolled_gauges)
        for res, parent in sources.items():
            if res not in keyed:
                keyed[res] = _rolled(keyed[parent], res)
        if not (self.counter_deltas or self.gauge_candidates):
            return keyed
        named: dict[int, Level] = {base: self._named()}
        for res, parent in sources.items():
            named[res] = _rolled(named[parent], res)
        return {res: _joined(keyed[res], named[res]) for res in self.resolutions}

    def _named(self) -> Level:
        """The changes keyed by name, keyed by bucket key (``series`` has each series, with
        its slot; one not in ``slots`` is put in a copy of them, the batch's own from then
        on)."""
        slots = list(self.slots)

        def key_of(name: str, labels: tuple[str, ...], start: int) -> BucketId:
            s = self.series[(name, labels)]
            if s.slot >= len(slots):
                slots.extend([None] * (s.slot + 1 - len(slots)))
            slots[s.slot] = s
            return bucket_key(s.slot, start)

        counts: dict[BucketId, int] = {}
        for (name, labels, _, start), n in self.counter_deltas.items():
            key = key_of(name, labels, start)
            counts[key] = counts.get(key, 0) + n
        gauges: dict[BucketId, GaugeValue] = {}
        for (name, labels, _, start), g in self.gauge_candidates.items():
            key = key_of(name, labels, start)
            current = gauges.get(key)
            if current is None or g > current:
                gauges[key] = g
        self.slots = slots
        return counts, gauges

    def at_every_resolution(
        self,
    ) -> tuple[dict[BucketKey, int], dict[BucketKey, GaugeValue]]:
        """The changes at every resolution (what the store writes), keyed by name."""
        return _by_name(self.levels(), self.slots)


def roll_sources(resolutions: Sequence[int]) -> dict[int, int]:
    """Each coarser resolution → the finer one it is rolled up from: the coarsest earlier one
    whose buckets tile it (a multiple of it), so a minute's rows make the hour's, the hour's
    the day's; the base interval otherwise."""
    sources: dict[int, int] = {}
    for i, res in enumerate(resolutions[1:], start=1):
        sources[res] = next((r for r in reversed(resolutions[:i]) if res % r == 0), resolutions[0])
    return sources


def _rolled(level: Level, res: int) -> Level:
    """A level's changes rolled up into buckets of ``res`` seconds (a multiple of its own)."""
    counts: dict[BucketId, int] = {}
    get = counts.get
    for key, n in level[0].items():
        key -= key // SLOTS % res * SLOTS
        counts[key] = get(key, 0) + n
    gauges: dict[BucketId, GaugeValue] = {}
    for key, g in level[1].items():
        key -= key // SLOTS % res * SLOTS
        current = gauges.get(key)
        if current is None or g > current:
            gauges[key] = g
    return counts, gauges


def _joined(mine: Level, theirs: Level) -> Level:
    counts, gauges = dict(mine[0]), dict(mine[1])
    _sum_into(counts, theirs[0])
    _newest_into(gauges, theirs[1])
    return counts, gauges


def _by_name(
    levels: Mapping[int, Level], slots: Sequence[Series | None]
) -> tuple[dict[BucketKey, int], dict[BucketKey, GaugeValue]]:
    deltas: dict[BucketKey, int] = {}
    candidates: dict[BucketKey, GaugeValue] = {}
    for res, (counts, gauges) in levels.items():
        for key, n in counts.items():
            start, s = _split(key, slots)
            deltas[(s.metric.name, s.labels, res, start)] = n
        for key, g in gauges.items():
            start, s = _split(key, slots)
            candidates[(s.metric.name, s.labels, res, start)] = g
    return deltas, candidates


def _split(key: BucketId, slots: Sequence[Series | None]) -> tuple[int, Series]:
    slot, start = split_key(key)
    s = slots[slot]
    assert s is not None, f"no series in slot {slot}"
    return start, s


def bucket_start(epoch: float, resolution: int) -> int:
    """The start of the bucket of ``resolution`` seconds that holds ``epoch``, aligned to the
    UTC epoch (so a 1 d bucket starts at midnight UTC)."""
    return int(epoch // resolution) * resolution


#: one emission: (metric, label values in declared order, amount, its series if known)
Emission = tuple[Metric, tuple[str, ...], float, "Series | None"]


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
        #: metric name → the plugin that declares it (names are unique across plugins)
        self.plugin_of: dict[str, str] = {}
        #: every series, by slot (see :data:`BucketId`); None for an id of the store's that
        #: no series loaded here has
        self.slots: list[Series | None] = []
        #: the first roll-up, kept by the hot path beside the base interval; without one, a
        #: bucket of all time (so its deltas are each series' sum since the last drain)
        self.roll = self.resolutions[1] if len(self.resolutions) > 1 else 1 << 62
        #: since the last drain: bucket key → counter delta or newest gauge candidate, at
        #: the base interval and at ``roll``
        self._counts: dict[BucketId, int] = {}
        self._gauges: dict[BucketId, GaugeValue] = {}
        self._rolled_counts: dict[BucketId, int] = {}
        self._rolled_gauges: dict[BucketId, GaugeValue] = {}
        self._requeued: list[Batch] = []

    def restore(
        self,
        series: Mapping[SeriesKey, Series],
        totals: Mapping[SeriesKey, int | GaugeValue],
        free: int = 0,
    ) -> None:
        """Start from what the store holds, so counters go on from their stored totals: its
        series (each in the slot of its id) and their totals; ``free``: the lowest id above
        every one the store has, where the slots of new series start. A series without a slot
        (made by hand, not loaded) is given the next one, as a new series would be."""
        slots = self.slots
        stored = [s for s in series.values() if hasattr(s, "slot")]
        free = max([free, len(slots), *(s.slot + 1 for s in stored)])
        if free > SLOTS:
            raise OverflowError(f"series id {free - 1} is beyond {SLOTS - 1}")
        slots.extend([None] * (free - len(slots)))
        for s in stored:
            assert slots[s.slot] is None, f"two series in slot {s.slot}"
            slots[s.slot] = s
        for key, s in series.items():
            self.series[key] = s if hasattr(s, "slot") else self._slotted(s)
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
        """Apply one emission of plugin ``plugin`` for message ``msg_id`` with time ``ts``."""
        self.plugin_of.setdefault(metric.name, plugin)
        if metric.kind == "counter":
            amount = int(amount)
        self.add_all([(metric, labels, amount, None)], ts, msg_id)

    def add_all(self, emissions: Iterable[Emission], ts: float, msg_id: str) -> None:
        """Apply one message's emissions (of every plugin, whose metrics ``plugin_of`` names;
        a counter's amount an int, as :class:`~statscache_exporter.plugin.Output` checks):
        each lands in the bucket of ``ts`` at the base interval and at the first roll-up, as
        a delta or a candidate."""
        base = self.base
        start = int(ts // base) * base
        bstart, rstart = start * SLOTS, (start - start % self.roll) * SLOTS
        series = self.series
        counts, gauges = self._counts, self._gauges
        rolled, rolled_gauges = self._rolled_counts, self._rolled_gauges
        candidate: GaugeValue | None = None
        for metric, labels, amount, s in emissions:
            if s is None:
                s = series.get((metric.name, labels))
                if s is None:
                    s = self._new_series(metric, labels)
            bkey, rkey = bstart + s.slot, rstart + s.slot
            if metric.kind == "counter":  # an int (Emission's type cannot say so by kind)
                counts[bkey] = counts.get(bkey, 0) + amount  # type: ignore[assignment]
                rolled[rkey] = rolled.get(rkey, 0) + amount  # type: ignore[assignment]
            else:
                if candidate is None or candidate.value != amount:
                    candidate = GaugeValue(ts, msg_id, float(amount))
                current = gauges.get(bkey)
                if current is None or candidate > current:
                    gauges[bkey] = candidate
                current = rolled_gauges.get(rkey)
                if current is None or candidate > current:
                    rolled_gauges[rkey] = candidate

    def _new_series(self, metric: Metric, labels: tuple[str, ...]) -> Series:
        """A series seen for the first time, or the metric's overflow series once the metric
        has as many series as its limit."""
        name = metric.name
        plugin = self.plugin_of[name]
        if labels and self.series_per_metric[name] >= self._limits.get(name, 1 << 62):
            self.overflowed[(plugin, name)] += 1
            labels = (self._overflow,) * len(labels)
            found = self.series.get((name, labels))
            if found is not None:
                return found
        s = self._slotted(Series(plugin, metric, labels, self.clock()))
        self.series[s.key] = s  # its own key tuple, not an equal one more (56 bytes a series)
        self.series_per_metric[name] += 1
        return s

    def _slotted(self, s: Series) -> Series:
        """The series, given the next slot."""
        s.slot = len(self.slots)
        if s.slot >= SLOTS:
            raise OverflowError(f"series id {s.slot} is beyond {SLOTS - 1}")
        self.slots.append(s)
        return s

    def drain(self) -> Batch:
        """The changes since the last drain (and a failed flush's, put back), with the new
        totals of the series they touch; the aggregator starts afresh."""
        with_roll = len(self.resolutions) > 1
        batch = Batch(
            resolutions=self.resolutions,
            keyed_counts=self._counts,
            keyed_gauges=self._gauges,
            rolled_counts=self._rolled_counts if with_roll else {},
            rolled_gauges=self._rolled_gauges if with_roll else {},
            slots=self.slots,
        )
        touched, totals, changed = batch.series, self.totals, batch.totals
        slots = self.slots
        for bkey, n in self._rolled_counts.items():
            s = slots[bkey % SLOTS]
            assert s is not None
            key = s.key
            total = totals.get(key, 0)
            assert isinstance(total, int)
            totals[key] = changed[key] = total + n
            touched[key] = s
        for bkey, g in self._rolled_gauges.items():
            s = slots[bkey % SLOTS]
            assert s is not None
            key = s.key
            now = totals.get(key)
            if now is None or (isinstance(now, GaugeValue) and g > now):
                totals[key] = changed[key] = g
            touched[key] = s
        self._counts, self._gauges = {}, {}
        self._rolled_counts, self._rolled_gauges = {}, {}
        for old in self._requeued:
            _merge(batch, old, totals)
        self._requeued = []
        return batch

    def requeue(self, batch: Batch) -> None:
        """Put back a batch whose flush failed, so the next flush writes it with the rest.
        (Its totals are in :attr:`totals` already.)"""
        self._requeued.append(batch)


def _merge(into: Batch, batch: Batch, totals: Mapping[SeriesKey, int | GaugeValue]) -> None:
    """Add ``batch``'s changes to ``into``'s (deltas summed, the newest candidates kept)."""
    into.series.update(batch.series)
    _sum_into(into.counter_deltas, batch.counter_deltas)
    _sum_into(into.keyed_counts, batch.keyed_counts)
    _newest_into(into.gauge_candidates, batch.gauge_candidates)
    _newest_into(into.keyed_gauges, batch.keyed_gauges)
    _sum_into(into.rolled_counts, batch.rolled_counts)
    _newest_into(into.rolled_gauges, batch.rolled_gauges)
    for key in batch.totals:
        into.totals[key] = totals[key]


K = TypeVar("K")


def _sum_into(mine: dict[K, int], theirs: Mapping[K, int]) -> None:
    for key, delta in theirs.items():
        mine[key] = mine.get(key, 0) + delta


def _newest_into(mine: dict[K, GaugeValue], theirs: Mapping[K, GaugeValue]) -> None:
    for key, candidate in theirs.items():
        current = mine.get(key)
        if current is None or candidate > current:
            mine[key] = candidate
