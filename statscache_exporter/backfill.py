"""The gap filler: fetch from datagrepper (or, with ``backfill.datanommer_url``, from the
datanommer database behind it: :class:`DatanommerBackfill`) exactly the messages the live
sources missed.

What is missing (:func:`plan`): from the store's checkpoint ``covered_until`` (minus
``backfill.overlap``) up to when the live sources started (plus the overlap), and every outage
a live source recorded in the store's ``gaps``; nothing before ``backfill.epoch``; with an empty
store, only ``initial_backfill`` back (none by default). Ranges are merged.

How (:class:`Backfill`): each range is cut into windows of ``backfill.window``; up to
``concurrency`` windows are read at once with :class:`statscache_exporter.datagrepper.Datagrepper`
(exact: each message once, despite datagrepper's paging). A request that gets no answer, a 429
or a 5xx is asked again on its own (up to :data:`REQUEST_ATTEMPTS` times, with backoff), so the
window keeps what it has read; a window that fails all the same is read again from its start,
with backoff, up to ``retries`` times. Windows are handed to the pipeline **in order**, each
followed by a checkpoint at its end, so ``covered_until`` only advances over windows that are
complete and committed; a window that keeps failing stops the backfill with an error naming it,
and the checkpoint stays before it (the gap filler of ``run`` goes on from it after a pause).
The backfill runs beside the live sources: counting is order-free (counters add, gauges keep
the newest message's value) and the pipeline skips a message it already counted by id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

import requests

from statscache_exporter.config import BackfillConfig, Config, DatanommerConfig
from statscache_exporter.datagrepper import (
    TIMEOUT_STATUSES,
    US,
    Cancelled,
    Datagrepper,
    DatagrepperError,
    Item,
)
from statscache_exporter.plugin import Plugin
from statscache_exporter.sources.backoff import Backoff
from statscache_exporter.store import PluginHistory

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Range:
    """``[start, end)`` in epoch seconds."""

    start: float
    end: float

    def __str__(self) -> str:
        return f"{_iso(self.start)} to {_iso(self.end)}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def plan(
    config: BackfillConfig,
    covered_until: float | None,
    started: float,
    gaps: Iterable[tuple[float, float]] = (),
) -> list[Range]:
    """The ranges to fetch, merged and in order (see the module doc)."""
    overlap = config.overlap.total_seconds()
    wanted: list[Range] = []
    if covered_until is not None:
        wanted.append(Range(covered_until - overlap, started + overlap))
    elif config.initial_backfill is not None:
        wanted.append(Range(started - config.initial_backfill.total_seconds(), started + overlap))
    wanted += [Range(a - overlap, b + overlap) for a, b in gaps]
    epoch = config.epoch_time()
    if epoch is not None:
        wanted = [Range(max(r.start, epoch), r.end) for r in wanted]
    return merge(r for r in wanted if r.end > r.start)


def plugin_history(
    config: Config, plugin: type[Plugin], registered_at: float, covered_until: float
) -> tuple[float, float, float] | None:
    """(start, end, cutoff) of the history a plugin added to a store with a checkpoint gets
    for itself alone (see :class:`~statscache_exporter.store.PluginHistory`): from its
    ``backlog_delta`` (``plugins.<ident>.backlog_delta``, else the plugin's own) before now,
    else from ``backfill.epoch``, else ``initial_backfill`` back; None when none is set. It
    ends at now plus the overlap (messages the store counted before the plugin existed can be
    that recent); ``cutoff``: the checkpoint less the overlap, from where the shared backfill
    fetches for every plugin."""
    b = config.backfill
    settings = config.plugins.get(plugin.ident)
    backlog = settings.backlog_delta if settings and settings.backlog_delta else None
    backlog = backlog or plugin.backlog_delta
    epoch = b.epoch_time()
    if backlog is not None:
        start = registered_at - backlog.total_seconds()
    elif epoch is not None:
        start = epoch
    elif b.initial_backfill is not None:
        start = registered_at - b.initial_backfill.total_seconds()
    else:
        return None
    if epoch is not None:
        start = max(start, epoch)
    overlap = b.overlap.total_seconds()
    end = registered_at + overlap
    return (start, end, covered_until - overlap) if start < end else None


def merge(ranges: Iterable[Range]) -> list[Range]:
    merged: list[Range] = []
    for r in sorted(ranges):
        if merged and r.start <= merged[-1].end:
            merged[-1] = Range(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return merged


def windows(ranges: Iterable[Range], size: float) -> Iterator[Range]:
    """Each range cut into windows of at most ``size`` seconds, aligned to the range's start."""
    for r in ranges:
        t = r.start
        while t < r.end:
            yield Range(t, min(t + size, r.end))
            t += size


class _Linked(threading.Event):
    """Set when set itself or when its parent is: a run's own abort, which the daemon's stop
    also triggers (datagrepper.py only asks ``is_set()`` between requests)."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()


class BackfillError(Exception):
    """A window could not be read after every retry; the message names it and why.
    ``remaining``: the ranges from that window on, not delivered."""

    def __init__(self, message: str, window: Range) -> None:
        super().__init__(message)
        self.window = window
        self.remaining: list[Range] = [window]


@dataclass
class BackfillStats:
    """Progress, for the progress display, logs and self-metrics."""

    windows_total: int = 0
    windows_done: int = 0
    messages: int = 0
    #: requests made to datagrepper (each attempt)
    requests: int = 0
    requests_failed: int = 0
    #: single requests asked again (no answer, 429, 5xx) without starting their window over
    requests_retried: int = 0
    #: spans asked for again in halves after a 502/504
    splits: int = 0
    remaining_seconds: float = 0.0
    #: why the gap filler is stuck on a window it goes on trying, None while it is not
    failed: str | None = None
    #: the time range of the current run, when it started (monotonic), and the messages
    #: delivered before it (the counts above add up over runs)
    range_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    messages_before: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, what: str) -> None:
        """Add one to a counter; the window threads call it."""
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)

    def rate(self) -> float:
        """Messages per second since the current run started."""
        elapsed = time.monotonic() - self.started
        return (self.messages - self.messages_before) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds until the current run is done, at its pace so far; None before a window."""
        done = self.range_seconds - self.remaining_seconds
        elapsed = time.monotonic() - self.started
        if done <= 0 or elapsed <= 0:
            return None
        return max(0.0, self.remaining_seconds) * elapsed / done

    def fraction(self) -> float:
        """The share of the windows done (1 when there are none)."""
        return self.windows_done / self.windows_total if self.windows_total else 1.0

    def summary(self) -> str:
        eta = self.eta()
        return (
            f"{self.windows_done}/{self.windows_total} windows, {self.messages:,} messages, "
            f"{_span(self.remaining_seconds)} of history left, {self.rate():,.0f} msg/s, "
            f"ETA {'?' if eta is None else _span(eta)}"
        )


def span_text(seconds: float) -> str:
    """A length of time in two units at most: 3d04h, 2h05m, 4m30s."""
    return _span(seconds)


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Showable(Protocol):
    """What the progress displays show: a backfill's or an import's stats."""

    def summary(self) -> str: ...

    def fraction(self) -> float: ...


class LogProgress:
    """Progress as plain log lines, at most one every ``every`` seconds (and at the end);
    ``label`` starts each line."""

    def __init__(self, every: float = 10.0, label: str = "backfill") -> None:
        self.every = every
        self.label = label
        self._last = time.monotonic()

    def __call__(self, stats: Showable, done: bool = False) -> None:
        now = time.monotonic()
        if done or now - self._last >= self.every:
            self._last = now
            log.info("%s: %s", self.label, stats.summary())


class BarProgress:
    """Progress as a bar redrawn in place on a terminal (``stream``, e.g. stderr)."""

    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, stats: Showable, done: bool = False) -> None:
        part = stats.fraction()
        filled = round(part * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r\x1b[K[{bar}] {stats.summary()}" + ("\n" if done else ""))
        self.stream.flush()


#: told of the progress after each window, and once more when a run ends (``done``)
Progress = Callable[..., None]


#: hands one item to the pipeline; then a checkpoint once a window is complete
Deliver = Callable[[Item], None]
Cover = Callable[[float], None]

#: tries of one request that gets no answer, a 429 or a 5xx, before its window fails
REQUEST_ATTEMPTS = 3
#: after a window failed every retry, the gap filler goes on from it after this many times
#: ``backfill.retry_max``
FAILED_PAUSE = 5


def _ask_again(exc: DatagrepperError) -> bool:
    """Whether a failed request is worth asking again as it is: no answer, 429 or a 5xx, but
    not a 502/504 for a first page of more than a second, for which the client asks for half
    the span instead (see datagrepper.py)."""
    status, params = exc.status, exc.params
    if status in TIMEOUT_STATUSES and params.get("page") == 1 and params.get("rows_per_page"):
        try:
            span = round((float(params["end"]) - float(params["start"])) * US)
        except (KeyError, TypeError, ValueError):
            span = 0
        if span >= US:  # ``end`` is inclusive: the window is longer than a second
            return False
    return status is None or status == 429 or status >= 500


class _RetryingDatagrepper(Datagrepper):
    """A client that asks again for a request that failed on the way (see :func:`_ask_again`),
    after a backoff: a window takes many requests, and starting it over for each failed one
    would never finish against a datagrepper that fails one request in a few."""

    def __init__(
        self,
        url: str,
        backoff: Callable[[], Backoff],
        stop: threading.Event,
        retried: Callable[[DatagrepperError, float], None],
        stats: BackfillStats,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, **kwargs)
        self._backoff = backoff
        self._stop = stop
        self._retried = retried
        self._stats = stats
        #: the current run's abort (set by Backfill._fetch)
        self.abort: threading.Event = stop

    def raw(self, params: Mapping[str, Any]) -> dict[str, Any]:
        backoff = self._backoff()
        for attempt in range(1, REQUEST_ATTEMPTS + 1):
            self._stats.count("requests")
            try:
                return super().raw(params)
            except DatagrepperError as exc:
                if attempt == REQUEST_ATTEMPTS or not _ask_again(exc):
                    raise
                wait = backoff.next()
                self._retried(exc, wait)
                if self._stop.wait(wait) or self.abort.is_set():
                    raise Cancelled("stopped while asking again") from exc
        raise AssertionError("unreachable")

    def split(self, lo: int, hi: int) -> None:
        self._stats.count("splits")


class Backfill:
    """Fetches ranges from datagrepper and delivers them in order (see the module doc)."""

    def __init__(
        self,
        config: BackfillConfig,
        deliver: Deliver,
        cover: Cover,
        stop: threading.Event | None = None,
        client: Callable[[], Datagrepper] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.deliver = deliver
        self.cover = cover
        self.stop = stop or threading.Event()
        self._client = client or self._new_client
        self.progress: Progress = progress or LogProgress()
        self.stats = BackfillStats()
        self._local = threading.local()

    def _new_client(self) -> Datagrepper:
        session = requests.Session()
        session.headers["User-Agent"] = self.config.user_agent
        session.verify = self.config.verify_tls
        return _RetryingDatagrepper(
            self.config.url,
            backoff=self._backoff,
            stop=self.stop,
            retried=self._request_retried,
            stats=self.stats,
            timeout=self.config.timeout.total_seconds(),
            rows_per_page=self.config.rows_per_page,
            session=session,
            max_span=self.config.window.total_seconds(),
        )

    def _backoff(self) -> Backoff:
        return Backoff(
            self.config.retry_initial.total_seconds(), self.config.retry_max.total_seconds()
        )

    def _request_retried(self, exc: DatagrepperError, wait: float) -> None:
        self.stats.count("requests_retried")
        log.info("backfill: %s; asking again in %.1f s", exc, wait)

    def run(
        self, ranges: list[Range], deliver: Deliver | None = None, cover: Cover | None = None
    ) -> int:
        """Fetch and deliver every range (to ``deliver`` and ``cover`` if given, else the
        backfill's own); the number of messages delivered. Raises :class:`BackfillError` when
        a window keeps failing (what came before it is delivered and covered),
        :class:`Cancelled` when stopped."""
        todo = list(windows(ranges, self.config.window.total_seconds()))
        stats = self.stats
        with stats.lock:
            stats.windows_total += len(todo)
            stats.range_seconds = stats.remaining_seconds = sum(w.end - w.start for w in todo)
            stats.started, stats.messages_before = time.monotonic(), stats.messages
        if not todo:
            return 0
        log.info("backfill: %d windows, %s", len(todo), ", ".join(map(str, ranges)))
        hand = (deliver or self.deliver, cover or self.cover)
        abort = _Linked(self.stop)
        with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="backfill") as pool:
            pending: list[tuple[Range, Future[list[Item]]]] = []
            try:
                for window in todo:  # keep `concurrency` windows in flight, deliver in order
                    pending.append((window, pool.submit(self._fetch, window, abort)))
                    if len(pending) >= self.config.concurrency:
                        self._deliver(*pending.pop(0), *hand)
                while pending:
                    self._deliver(*pending.pop(0), *hand)
            except BackfillError as exc:
                exc.remaining = merge(todo[todo.index(exc.window) :])
                self._abort(abort, pending)
                raise
            except BaseException:
                self._abort(abort, pending)
                raise
        self.progress(stats, done=True)
        log.info("backfill: done, %d messages", stats.messages - stats.messages_before)
        return stats.messages - stats.messages_before

    @staticmethod
    def _abort(abort: threading.Event, pending: list[tuple[Range, Future[list[Item]]]]) -> None:
        abort.set()  # the other windows stop at their next request
        for _, future in pending:
            future.cancel()

    def _deliver(
        self, window: Range, future: Future[list[Item]], deliver: Deliver, cover: Cover
    ) -> None:
        items = future.result()
        for item in items:
            deliver(item)
        cover(window.end)
        with self.stats.lock:
            self.stats.messages += len(items)
            self.stats.windows_done += 1
            self.stats.remaining_seconds -= window.end - window.start
        self.progress(self.stats)

    def _fetch(self, window: Range, abort: threading.Event) -> list[Item]:
        """One window, retried with backoff; each worker thread keeps its own client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._client()
        if isinstance(client, _RetryingDatagrepper):
            client.abort = abort
        backoff = self._backoff()
        for attempt in range(1, self.config.retries + 1):
            try:
                return client.window(window.start, window.end, abort)
            except DatagrepperError as exc:
                self.stats.count("requests_failed")
                if attempt == self.config.retries:
                    raise BackfillError(
                        f"backfill stopped: the window {window} failed {attempt} times, last: "
                        f"{exc}; the checkpoint stays before it",
                        window,
                    ) from exc
                wait = backoff.next()
                log.warning(
                    "backfill: window %s failed (%s); retry %d of %d in %.1f s",
                    window,
                    exc,
                    attempt,
                    self.config.retries - 1,
                    wait,
                )
                if self.stop.wait(wait) or abort.is_set():
                    raise Cancelled(f"stopped while retrying {window}") from exc
        raise AssertionError("unreachable")


class DatanommerBackfill:
    """The same as :class:`Backfill`, from a datanommer database (``backfill.datanommer_url``):
    each window is read whole with keyset paging (sources/datanommer.py: exact, each row
    once, in ``(timestamp, id)`` order), its rows delivered as ``/raw`` items with their whole
    time, then its checkpoint; a failing query is tried again by ``datanommer.retries``, after
    which :class:`BackfillError` names the window and the checkpoint stays before it. Windows
    are read one after the other (a query is a fraction of a window's time in the pipeline)."""

    def __init__(
        self,
        config: BackfillConfig,
        database: DatanommerConfig,
        deliver: Deliver,
        cover: Cover,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.deliver = deliver
        self.cover = cover
        self.stop = stop or threading.Event()
        self.progress: Progress = progress or LogProgress()
        self.stats = BackfillStats()
        self._connect = connect

    def run(
        self, ranges: list[Range], deliver: Deliver | None = None, cover: Cover | None = None
    ) -> int:
        """As :meth:`Backfill.run`."""
        from statscache_exporter.sources.datanommer import (
            DatanommerError,
            DatanommerReader,
            items,
            naive_utc,
        )

        todo = list(windows(ranges, self.config.window.total_seconds()))
        stats = self.stats
        with stats.lock:
            stats.windows_total += len(todo)
            stats.range_seconds = stats.remaining_seconds = sum(w.end - w.start for w in todo)
            stats.started, stats.messages_before = time.monotonic(), stats.messages
        if not todo:
            return 0
        reader = DatanommerReader(
            self.config.datanommer_url, self.database, self.stop, self._connect
        )
        log.info(
            "backfill from datanommer %s: %d windows, %s",
            reader.name,
            len(todo),
            ", ".join(map(str, ranges)),
        )
        hand, mark = deliver or self.deliver, cover or self.cover
        try:
            for i, window in enumerate(todo):
                delivered = 0
                try:
                    for item in items(
                        reader.batches(naive_utc(window.start), naive_utc(window.end))
                    ):
                        hand(item)
                        delivered += 1
                except DatanommerError as exc:
                    if self.stop.is_set():
                        raise Cancelled(f"stopped while reading {window}") from exc
                    error = BackfillError(
                        f"backfill stopped: the window {window} could not be read: {exc}; the "
                        "checkpoint stays before it",
                        window,
                    )
                    error.remaining = merge(todo[i:])
                    raise error from exc
                if self.stop.is_set():
                    raise Cancelled(f"stopped while reading {window}")
                mark(window.end)
                with stats.lock:
                    stats.messages += delivered
                    stats.windows_done += 1
                    stats.remaining_seconds -= window.end - window.start
                    stats.requests = reader.stats.queries
                    stats.requests_retried = reader.stats.retried
                self.progress(stats)
        finally:
            reader.close()
        self.progress(stats, done=True)
        log.info("backfill: done, %d messages", stats.messages - stats.messages_before)
        return stats.messages - stats.messages_before


# --- running beside the live sources -----------------------------------------------------------


@dataclass(frozen=True)
class Covered:
    """Put in the pipeline's queue after a window: every message before ``until`` is in."""

    until: float


@dataclass(frozen=True)
class GapFilled:
    """Put in the pipeline's queue after a recorded outage was fetched."""

    source: str
    start: float
    end: float


@dataclass(frozen=True)
class ForPlugins:
    """Put in the pipeline's queue: a message of some new plugins' own history, for them
    alone (see :class:`~statscache_exporter.store.PluginHistory`)."""

    plugins: tuple[str, ...]
    item: Item


@dataclass(frozen=True)
class PluginsCovered:
    """Put in the pipeline's queue after a window of some new plugins' own history."""

    plugins: tuple[str, ...]
    until: float


def history_jobs(histories: Iterable[PluginHistory]) -> list[tuple[tuple[str, ...], Range]]:
    """What is left of the new plugins' own histories, one fetch for the plugins that share
    a range (plugins added together)."""
    jobs: dict[Range, list[str]] = {}
    for h in histories:
        left = Range(max(h.start, h.covered_until or h.start), h.end)
        if left.end > left.start:
            jobs.setdefault(left, []).append(h.ident)
    return [(tuple(idents), r) for r, idents in sorted(jobs.items())]


class GapFiller:
    """The backfill thread of ``run``: first what was missed before the start (advancing the
    checkpoint window by window), then the own history of plugins new to the store (for them
    alone), then each outage a live source reports, as it is recorded."""

    def __init__(
        self,
        config: BackfillConfig,
        emit: Callable[[object], None],
        stop: threading.Event,
        first: list[Range],
        gaps: Iterable[tuple[str, float, float]] = (),
        histories: Iterable[PluginHistory] = (),
        database: DatanommerConfig | None = None,
    ) -> None:
        self.config = config
        self.emit = emit
        self.stop = stop
        self.first = first
        self.histories = history_jobs(histories)
        self.jobs: list[tuple[str, float, float]] = list(gaps)
        self.lock = threading.Condition()
        self.caught_up = threading.Event()
        self.backfill: Backfill | DatanommerBackfill
        if config.datanommer_url:  # the database instead of datagrepper
            self.backfill = DatanommerBackfill(
                config, database or DatanommerConfig(), emit, lambda t: emit(Covered(t)), stop
            )
        else:
            self.backfill = Backfill(config, emit, lambda t: emit(Covered(t)), stop)
        self._busy = False

    def _handing_to(self, idents: tuple[str, ...]) -> tuple[Deliver, Cover]:
        """Deliver and cover for the own history of these plugins."""

        def deliver(item: Item) -> None:
            self.emit(ForPlugins(idents, item))

        def cover(until: float) -> None:
            self.emit(PluginsCovered(idents, until))

        return deliver, cover

    def add_gap(self, source: str, start: float, end: float) -> None:
        with self.lock:
            self.jobs.append((source, start, end))
            self.lock.notify()

    def idle(self) -> bool:
        """Caught up, with no outage waiting or being fetched."""
        with self.lock:
            return self.caught_up.is_set() and not self.jobs and not self._busy

    def run(self) -> None:
        try:
            self._until_done(self.first)
            for idents, history in self.histories:
                log.info("backfill: the history of %s, for them alone", ", ".join(idents))
                self._until_done([history], *self._handing_to(idents))
            self.caught_up.set()
            while not self.stop.is_set():
                with self.lock:
                    if not self.jobs:
                        self.lock.wait(1.0)
                        continue
                    source, start, end = self.jobs.pop(0)
                    self._busy = True
                try:
                    overlap = self.config.overlap.total_seconds()
                    self._until_done([Range(start - overlap, end + overlap)])
                    self.emit(GapFilled(source, start, end))
                finally:
                    with self.lock:
                        self._busy = False
        except Cancelled:
            pass
        except Exception:
            self.backfill.stats.failed = "unexpected error, see the log"
            log.exception("backfill failed")

    def _until_done(
        self, ranges: list[Range], deliver: Deliver | None = None, cover: Cover | None = None
    ) -> None:
        """Run a backfill of ``ranges``; when a window keeps failing, pause and go on from that
        window (what came before it is delivered and covered), until done or stopped."""
        pause = FAILED_PAUSE * self.config.retry_max.total_seconds()
        while True:
            try:
                self.backfill.run(ranges, deliver, cover)
            except BackfillError as exc:
                self.backfill.stats.failed = str(exc)
                log.error("%s; trying it again in %.0f s", exc, pause)
                if self.stop.wait(pause):
                    raise Cancelled("stopped while pausing after a failed window") from exc
                ranges = exc.remaining
            else:
                self.backfill.stats.failed = None
                return
