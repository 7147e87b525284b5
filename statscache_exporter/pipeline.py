"""The pipeline: how a message flows from a source to the store.

::

    sources/ (replay, amqp + schema_check, zmq, hub, poll), backfill.py, cli.py replay
         │ raw: bytes, str, a JSON value, a fedora-messaging Message
         ▼        (history.py: an import's rows, most as Messages straight to process())
    message.py    decode (msgspec, else json.loads), normalize the four shapes; a line's
         │ Message  body left as JSON until read   ── Rejected ──▶ counted by reason
         ▼
    pipeline.py   dedup by id in the window (ledger.SeenIds, in memory)
         │                                         ── duplicate ──▶ counted per source
         ▼
    routing.py    the plugins whose topic patterns match (once per distinct topic)
         │
         ▼
    plugin.py     each plugin, isolated: out.inc / out.set
         │ emissions
         ▼
    aggregate.py  the base interval and the first roll-up, by message time: deltas, newest
                  gauges; totals
         │ Batch: every store.flush_interval, store.max_batch messages, or the daemon's
         ▼ ack_window (half a fedora-messaging prefetch)
    store.py      ONE SQLite transaction (WAL):
                  counts.py  series, each resolution's rows upserted (1 h/1 d rolled up from
                             1 m by Batch.levels), totals
                  ledger.py  message ids, checkpoint covered_until, plugin histories,
                             resume points
                  hooks      outbox.py: the InfluxDB sink's lines (OutboxWriter)
         │ committed batch
         ▼
    listeners     exposition.py re-renders the touched series (/metrics); influx.py's
                  sender thread is woken to send the outbox; then the daemon
                  acknowledges the AMQP deliveries the flush covered

The pipeline is single-threaded: the daemon (or ``replay``) calls :meth:`Pipeline.handle` and
:meth:`Pipeline.flush` from one thread; sources run in their own threads and hand messages over
through a queue. Plugins are pure and never see the store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from statscache_exporter import message as messages
from statscache_exporter.aggregate import Aggregator, Batch, Emission, Series, SeriesKey
from statscache_exporter.config import Config, ConfigError, build, format_duration
from statscache_exporter.ledger import LedgerChanges, SeenIds, Window
from statscache_exporter.message import Message, Rejected
from statscache_exporter.outbox import writer_of
from statscache_exporter.plugin import (
    Metric,
    Output,
    Plugin,
    PluginError,
    check_topics,
    check_unique_metrics,
)
from statscache_exporter.routing import Router
from statscache_exporter.store import FlushResult, PluginHistory, Store, StoreError

if TYPE_CHECKING:
    from statscache_exporter.influx import InfluxSink

log = logging.getLogger(__name__)
#: what :func:`messages.read` takes, a tuple made once (a union in isinstance: at each call)
_TEXT = (bytes, str)

Outcome = Literal["processed", "duplicate", "rejected"]


@dataclass
class Stats:
    """The pipeline's own counts, per source where that makes sense (self-metrics)."""

    received: Counter[str] = field(default_factory=Counter)
    processed: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source, reason)
    plugin_errors: Counter[str] = field(default_factory=Counter)
    #: messages of a new plugin's own history counted for it alone, per plugin
    plugin_history: Counter[str] = field(default_factory=Counter)
    #: emissions sent to the overflow series by the cap, per (plugin, metric)
    series_overflow: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: per source: connected (or, for a replay, still reading) or not
    source_connected: dict[str, bool] = field(default_factory=dict)
    flushes: int = 0
    last_flush_seconds: float = 0.0
    last_flush_at: float | None = None
    #: the last time the pipeline thread went to flush, whether or not anything had changed
    last_flush_attempt: float | None = None
    newest_message: float | None = None
    #: (time, messages processed so far) after each flush of the last minutes, for rates
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=600))

    def rate(self, window: float = 60.0) -> float:
        """Messages processed per second over about the last ``window`` seconds."""
        points = list(self.history)
        if len(points) < 2:
            return 0.0
        end_t, end_n = points[-1]
        start_t, start_n = next(((t, n) for t, n in points if t >= end_t - window), points[0])
        return (end_n - start_n) / (end_t - start_t) if end_t > start_t else 0.0

    def rejected_by_reason(self) -> dict[str, int]:
        by_reason: Counter[str] = Counter()
        for (_, reason), n in self.rejected.items():
            by_reason[reason] += n
        return dict(sorted(by_reason.items()))


def enabled_plugins(config: Config, available: Mapping[str, type[Plugin]]) -> list[Plugin]:
    """Instantiate the plugins the config enables (all installed ones unless disabled), with
    their options validated against each plugin's ``Options`` dataclass."""
    for ident in config.plugins:
        if ident not in available:
            raise ConfigError(
                f"plugins.{ident}: no such plugin; available: {', '.join(available) or 'none'}"
            )
    chosen: list[Plugin] = []
    for ident, cls in available.items():
        settings = config.plugins.get(ident)
        if settings is not None and not settings.enabled:
            continue
        options = build(
            cls.Options, settings.options if settings else {}, f"plugins.{ident}.options"
        )
        chosen.append(cls(options))
    check_unique_metrics(type(p) for p in chosen)
    return chosen


#: topics whose emissions a ``topic_only`` plugin's runner keeps (the bus has a few thousand;
#: made-up ones must not grow it without bound)
TOPICS_REMEMBERED = 100_000
#: a ``topic_only`` plugin's first run on a topic: its runner's emissions by topic, and where
#: in the message's buffer its emissions start and end
_FirstRun = tuple[dict[str, list[Emission]], int, int]


class _Runner:
    """One plugin, wrapped: an Output checked against its declarations, writing into the
    pipeline's buffer of a message's emissions; for a ``topic_only`` plugin, its emissions
    by topic, repeated for the topic's later messages."""

    __slots__ = ("by_topic", "ident", "out", "plugin", "process")

    def __init__(
        self, plugin: Plugin, known: Mapping[SeriesKey, Series], buffer: list[Emission]
    ) -> None:
        self.plugin = plugin
        self.ident = type(plugin).ident
        self.out = Output(self.ident, {m.name: m for m in type(plugin).metrics}, known, buffer)
        self.process = plugin.process
        self.by_topic: dict[str, list[Emission]] | None = {} if plugin.topic_only else None


def _router(runners: Sequence[_Runner]) -> Router[_Runner]:
    """Which runners read each topic, from each plugin's own patterns."""
    targets = []
    for runner in runners:
        where = f"plugin {runner.ident!r}"
        try:
            patterns = runner.plugin.reads()
        except Exception as exc:
            raise PluginError(f"{where}: reads() raised {exc!r}") from exc
        targets.append((runner, check_topics(patterns, where)))
    return Router(targets)


class Pipeline:
    """normalize → dedup → plugins → aggregate, and flush to the store."""

    def __init__(
        self,
        config: Config,
        plugins: Sequence[Plugin],
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.stats = Stats()
        self._retention = config.retention_seconds()
        self.aggregator = Aggregator(
            config.resolutions(),
            clock,
            limits=series_limits(config, _declared(plugins)),
            overflow_value=config.prometheus.overflow_value,
        )
        self.stats.series_overflow = self.aggregator.overflowed
        self.aggregator.plugin_of.update(
            {m.name: type(p).ident for p in plugins for m in type(p).metrics}
        )
        #: one message's emissions, of every plugin (each plugin's Output appends to it)
        self._emitted: list[Emission] = []
        self._runners = [_Runner(p, self.aggregator.series, self._emitted) for p in plugins]
        self._route = _router(self._runners)
        self._environments = frozenset(config.messages.environments)
        self._use_schemas = config.messages.schemas
        self._max_skew = config.messages.max_clock_skew.total_seconds()
        self._flush_every = config.store.flush_interval.total_seconds()
        self._max_batch = config.store.max_batch
        self._last_flush = clock()
        self._last_prune = 0.0
        self.aggregator.restore(*store.load(self.metrics()))
        self._rejections_logged: Counter[str] = Counter()
        #: called with each committed batch, in the pipeline thread (sinks, the exposition)
        self.listeners: list[Callable[[Batch], None]] = []
        #: plugins added to a store that had history, whose own history is still to fetch
        self.histories: dict[str, PluginHistory] = self._register_plugins()
        #: what the next flush writes to the ledger (ids, checkpoint, histories, resume points)
        self._changes = LedgerChanges()
        #: ids in ``_changes.plugin_ids`` (kept here: summing them every message cost ~1 µs)
        self._plugin_pending = 0
        self._span = config.store.dedup_window.total_seconds()
        self._keep_count = config.store.dedup_messages
        self._overlap = config.backfill.overlap.total_seconds()
        self._seen = SeenIds()
        covered = store.covered_until()
        self._checkpoint = covered.timestamp() if covered is not None else None
        #: the newest message time counted, and how many messages were counted (in all time)
        self._horizon, self._seq = store.horizon()
        store.load_seen(self._seen, self._window())

    def _register_plugins(self) -> dict[str, PluginHistory]:
        """Record the plugins running for the first time on this store; one added to a store
        that already has a checkpoint (and has no series of its own) gets its own range of
        history (see :func:`~statscache_exporter.backfill.plugin_history`)."""
        from statscache_exporter.backfill import Range, plugin_history

        # wall-clock time, as the store stamps `seen` (which _owed compares with it)
        now, covered = time.time(), self.store.covered_until()
        unregistered = set(self.store.unregistered(self.plugin_idents))
        for runner in self._runners:
            if runner.ident not in unregistered:
                continue
            history = None
            if covered is not None and not self.store.has_series(runner.ident):
                history = plugin_history(self.config, type(runner.plugin), now, covered.timestamp())
                log.info(
                    "plugin %s is new to this store: %s",
                    runner.ident,
                    "no history to fetch for it (set its backlog_delta or backfill.epoch)"
                    if history is None
                    else f"its own history, {Range(history[0], history[1])}, is fetched for it "
                    "alone when the gap filler runs",
                )
            self.store.register_plugin(runner.ident, now, history)
        idents = set(self.plugin_idents)
        return {h.ident: h for h in self.store.plugin_histories() if h.ident in idents}

    @property
    def plugin_idents(self) -> list[str]:
        return [r.ident for r in self._runners]

    @property
    def plugins(self) -> list[Plugin]:
        return [r.plugin for r in self._runners]

    def metrics(self) -> dict[str, tuple[str, Metric]]:
        """Every declared metric name → (plugin ident, declaration)."""
        return _declared(self.plugins)

    # --- one message -------------------------------------------------------------------

    def handle(self, raw: Any, source: str = "replay") -> Outcome:
        """Take one message in any shape (bytes, str, dict, fedora-messaging object)."""
        self.stats.received[source] += 1
        message = self._normalize(raw, source)
        return "rejected" if message is None else self.process(message, source)

    def handle_for(self, raw: Any, idents: Iterable[str], source: str = "backfill") -> Outcome:
        """A message of some new plugins' own history (see :class:`PluginHistory`): counted
        for those of them that have not counted it yet, and for no other plugin."""
        self.stats.received[source] += 1
        message = self._normalize(raw, source)
        if message is None:
            return "rejected"
        runners = [
            r
            for r in self._route(message.topic)
            if r.ident in idents and self._owed(r.ident, message)
        ]
        if not runners:
            self.stats.duplicates[source] += 1
            return "duplicate"
        for runner in runners:
            self._changes.plugin_ids.setdefault(runner.ident, set()).add(message.id)
            self._plugin_pending += 1
            self.stats.plugin_history[runner.ident] += 1
        self._run(runners, message)
        self._flush_if_due()
        return "processed"

    def _owed(self, ident: str, message: Message) -> bool:
        """Whether a message of ``ident``'s own history is still to be counted for it alone:
        not yet counted for it, and either counted for the others before it was registered or
        older than where the shared backfill counts for every plugin."""
        history = self.histories.get(ident)
        if history is None or message.id in self._changes.ids:
            return False
        pending = self._changes.plugin_ids.get(ident)
        if (pending is not None and message.id in pending) or self.store.seen_by_plugin(
            ident, message.id
        ):
            return False
        seen_at = self.store.seen_at(message.id, message.epoch)
        if seen_at is not None:
            return seen_at < history.registered_at
        return message.epoch < history.cutoff

    def _normalize(self, raw: Any, source: str) -> Message | None:
        """The message, or None when it is rejected (counted and logged)."""
        try:
            if isinstance(raw, _TEXT):
                message = messages.read(raw, self._environments, self._use_schemas)
            else:
                message = messages.normalize(raw, self._environments, self._use_schemas)
            if message.epoch > self.clock() + self._max_skew:
                raise Rejected(
                    "future_timestamp",
                    f"{message.timestamp.isoformat()} is more than "
                    f"{format_duration(self.config.messages.max_clock_skew)} ahead",
                )
        except Rejected as exc:
            self._reject(source, exc)
            return None
        except Exception as exc:  # a normalizer bug must not stop the daemon
            log.exception("could not read a message from %s", source)
            self._reject(source, Rejected("malformed", repr(exc)[:200]))
            return None
        return message

    def process(self, message: Message, source: str = "replay") -> Outcome:
        """Count one normalized message, once: unless its id is in the dedup window (held in
        memory, see ``ledger.py``) or among this flush's."""
        msg_id, ts, seq = message.id, message.epoch, self._seq
        if not self._seen.add(msg_id, ts, seq):
            self.stats.duplicates[source] += 1
            return "duplicate"
        self._seq = seq + 1
        self._changes.ids[msg_id] = (ts, seq)
        self._run(self._route(message.topic), message)
        self.stats.processed[source] += 1
        self._flush_if_due()
        return "processed"

    def _run(self, runners: Iterable[_Runner], message: Message) -> None:
        """Each plugin on the message, isolated (a plugin that raises loses its emissions for
        the message, cut off the shared buffer); their emissions aggregated. A ``topic_only``
        plugin's emissions for the topic are repeated once it has run on it."""
        ts, topic = message.epoch, message.topic
        emitted = self._emitted
        first: list[_FirstRun] = []
        for runner in runners:
            by_topic = runner.by_topic
            if by_topic is not None:
                known = by_topic.get(topic)
                if known is not None:
                    emitted += known
                    continue
            mark = len(emitted)
            try:
                runner.process(message, runner.out)
            except Exception as exc:
                del emitted[mark:]
                self._plugin_failed(runner.ident, message, exc)
                continue
            if by_topic is not None:
                first.append((by_topic, mark, len(emitted)))
        if emitted:
            try:
                self.aggregator.add_all(emitted, ts, message.id)
                if first:
                    self._remember(topic, first)
            finally:
                emitted.clear()
        newest = self.stats.newest_message
        if newest is None or ts > newest:
            self.stats.newest_message = ts
            if self._horizon is None or ts > self._horizon:
                self._horizon = ts

    def _remember(self, topic: str, first: list[_FirstRun]) -> None:
        """The emissions of ``topic_only`` plugins on a topic's first message, each with its
        series (all of them made by now, but an overflowed one's, which stays to look up)."""
        series = self.aggregator.series
        for by_topic, start, end in first:
            if len(by_topic) >= TOPICS_REMEMBERED:
                by_topic.clear()
            by_topic[topic] = [
                (m, labels, amount, s if s is not None else series.get((m.name, labels)))
                for m, labels, amount, s in self._emitted[start:end]
            ]

    def _flush_if_due(self) -> None:
        if (
            len(self._changes.ids) + self._plugin_pending >= self._max_batch
            or self.clock() - self._last_flush >= self._flush_every
        ):
            self.flush()

    def _reject(self, source: str, exc: Rejected) -> None:
        self.stats.rejected[(source, exc.reason)] += 1
        n = self._rejections_logged[exc.reason] = self._rejections_logged[exc.reason] + 1
        if n <= 10 or n % 1000 == 0:
            log.warning(
                "rejected a message from %s (%s, %d so far): %s", source, exc.reason, n, exc.detail
            )

    def _plugin_failed(self, ident: str, message: Message, exc: Exception) -> None:
        self.stats.plugin_errors[ident] += 1
        n = self.stats.plugin_errors[ident]
        if n <= 10 or n % 1000 == 0:
            kind = "declaration mismatch" if isinstance(exc, PluginError) else "error"
            log.error(
                "plugin %s: %s on message %s (%s), %d so far: %r",
                ident,
                kind,
                message.id,
                message.topic,
                n,
                exc,
            )

    # --- flushing ----------------------------------------------------------------------

    def cover(self, until: datetime) -> None:
        """A source vouches that every message up to ``until`` has been handed over; the
        next flush records it as the checkpoint (never moving it back)."""
        covered = self._changes.covered_until
        if covered is None or until > covered:
            self._changes.covered_until = until

    def cover_plugins(self, idents: Iterable[str], until: float) -> None:
        """Every message of these plugins' own history before ``until`` has been handed over;
        the next flush records it."""
        for ident in idents:
            if until > self._changes.plugin_covered.get(ident, float("-inf")):
                self._changes.plugin_covered[ident] = until

    def resume(self, name: str, position: str) -> None:
        """A reader (e.g. an import) has handed over every message up to ``position`` (its own
        text); the next flush commits it with their counts, so :meth:`Store.resume_point`
        never names a place past what is stored, nor before it."""
        self._changes.resume[name] = position

    def flush_due(self) -> bool:
        return self.clock() - self._last_flush >= self._flush_every

    def until_flush(self) -> float:
        """Seconds until the next flush is due (0 when it is)."""
        return max(0.0, self._last_flush + self._flush_every - self.clock())

    def flush(self) -> FlushResult | None:
        """Commit everything since the last flush in one transaction. On a store error the
        batch is kept and retried by the next flush; the error propagates."""
        started = time.monotonic()
        self._last_flush = self.stats.last_flush_attempt = self.clock()
        batch = self.aggregator.drain()
        changes = self._changes
        if not batch and not changes:
            return None
        try:
            result = self.store.commit(batch, changes)
        except StoreError:
            self.aggregator.requeue(batch)
            raise
        self._changes = LedgerChanges()
        self._plugin_pending = 0
        self._history_covered(changes.plugin_covered)
        if changes.covered_until is not None:
            covered = changes.covered_until.timestamp()
            if self._checkpoint is None or covered > self._checkpoint:
                self._checkpoint = covered
        self._seen.set_window(self._window())
        self.stats.flushes += 1
        self.stats.last_flush_seconds = time.monotonic() - started
        self.stats.last_flush_at = self.clock()
        self.stats.history.append((self.stats.last_flush_at, sum(self.stats.processed.values())))
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("a listener failed on a committed flush; the store has it")
        self._maybe_prune()
        return result

    def _history_covered(self, covered: Mapping[str, float]) -> None:
        for ident, until in covered.items():
            history = self.histories.get(ident)
            if history is None:
                continue
            if until >= history.end:
                del self.histories[ident]
                log.info("plugin %s: its own history is all counted", ident)
            else:
                self.histories[ident] = dataclasses.replace(history, covered_until=until)

    def _window(self) -> Window:
        """Which ids the dedup window keeps (see ``ledger.py``): the dedup window back from
        the newest message counted, and no later than where the gap filler starts again (the
        checkpoint minus its overlap); and the last ``store.dedup_messages`` counted."""
        checkpoint = None if self._checkpoint is None else self._checkpoint - self._overlap
        return Window.of(self._horizon, self._span, checkpoint, self._seq, self._keep_count)

    def _maybe_prune(self) -> None:
        """Apply retention at most once a minute, relative to the newest message time (or
        now, if that is earlier), so a replay of old history is not pruned as it lands; and
        forget the ids the window no longer keeps."""
        now = self.clock()
        if now - self._last_prune < 60 or self.stats.newest_message is None:
            return
        self._last_prune = now
        reference = min(now, self.stats.newest_message)
        self.store.prune(self._retention, reference, self._window())

    def close(self) -> None:
        """Final flush, then close the store."""
        try:
            self.flush()
        finally:
            self.store.close()


def _declared(plugins: Iterable[Plugin]) -> dict[str, tuple[str, Metric]]:
    return {m.name: (type(p).ident, m) for p in plugins for m in type(p).metrics}


def series_limits(config: Config, metrics: Mapping[str, tuple[str, Metric]]) -> dict[str, int]:
    """Metric name → how many series it may have before new label values overflow; a
    metric without labels has one series and needs no cap."""
    limits: dict[str, int] = {}
    for name, (ident, _) in metrics.items():
        settings = config.plugins.get(ident)
        own = settings.max_series if settings is not None else None
        limits[name] = own if own is not None else config.prometheus.max_series
    return limits


def series_ttls(
    config: Config, metrics: Mapping[str, tuple[str, Metric]]
) -> dict[str, float | None]:
    """Metric name → idle seconds after which a series is hidden from /metrics (None: never)."""
    ttls: dict[str, float | None] = {}
    for name, (ident, _) in metrics.items():
        settings = config.plugins.get(ident)
        ttl = settings.series_ttl if settings is not None else None
        ttl = ttl if ttl is not None else config.prometheus.series_ttl
        ttls[name] = ttl.total_seconds() if ttl is not None else None
    return ttls


def open_pipeline(config: Config, available: Mapping[str, type[Plugin]] | None = None) -> Pipeline:
    """The store, the enabled plugins and the pipeline over them, from a validated config."""
    from statscache_exporter.plugin import discover

    plugins = enabled_plugins(config, discover() if available is None else available)
    store = Store(config.store.path, synchronous=config.store.synchronous.upper())
    try:
        pipeline = Pipeline(config, plugins, store)
    except BaseException:
        store.close()
        raise
    if config.influxdb.enabled:
        from statscache_exporter.influx import outbox_writer

        try:
            store.attach(outbox_writer(config))
        except BaseException:
            store.close()
            raise
    return pipeline


def influx_sink_for(pipeline: Pipeline) -> InfluxSink | None:
    """The InfluxDB sender over the pipeline's store, hooked to its flushes; None when off."""
    config = pipeline.config
    if not config.influxdb.enabled:
        return None
    from statscache_exporter.influx import InfluxSink

    sink = InfluxSink(config.influxdb, str(config.store.path))
    pipeline.listeners.append(sink.notify)
    writer = writer_of(pipeline.store.hooks)
    if writer is not None:
        writer.accepting = sink.accepting
        sink.queued = writer.stats
    return sink
