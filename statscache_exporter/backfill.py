"""The gap filler: fetch from datagrepper (or, with ``backfill.datanommer_url``, from the
datanommer database behind it: :class:`DatanommerBackfill`) exactly the messages the live
sources missed.

What is missing (:func:`plan`): from the store's checkpoint ``covered_until`` (minus
``backfill.overlap``) up to when the live sources started (plus the overlap), and every outage
a live source recorded in the store's ``gaps``; nothing before ``backfill.epoch``; with an empty
store, only ``initial_backfill`` back (none by default). Ranges are merged.

How (:class:`Backfill`): each range is cut into windows of ``backfill.window``, read with
``concurrency`` requests at once to :class:`statscache_exporter.datagrepper.Datagrepper` (exact:
each message once, despite datagrepper's paging). A window's first page says how many messages
it holds; the rest of it is cut at whole seconds into spans of about a page each, read side by
side, each exactly (:class:`_Reader`), the earliest window's first, and windows up to
:data:`LOOKAHEAD` x ``concurrency`` ahead of the one being delivered meanwhile, so a window held
up by a long request does not leave the others idle. A request that gets no answer, a 429
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

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    bounds,
    joined,
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
        #: the current window's abort (set before each span it reads)
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
        reader = _Reader(self, _Linked(self.stop))
        ahead = LOOKAHEAD * self.config.concurrency
        opened: list[_Window] = []
        try:
            for i, window in enumerate(todo):  # windows read ahead, delivered in order
                while len(opened) < min(len(todo), i + ahead):
                    opened.append(reader.open(len(opened), todo[len(opened)]))
                self._deliver(window, reader.result(opened[i]), *hand)
        except BackfillError as exc:
            exc.remaining = merge(todo[todo.index(exc.window) :])
            raise
        finally:
            reader.close()
        self.progress(stats, done=True)
        log.info("backfill: done, %d messages", stats.messages - stats.messages_before)
        return stats.messages - stats.messages_before

    def _deliver(self, window: Range, items: list[Item], deliver: Deliver, cover: Cover) -> None:
        for item in items:
            deliver(item)
        cover(window.end)
        with self.stats.lock:
            self.stats.messages += len(items)
            self.stats.windows_done += 1
            self.stats.remaining_seconds -= window.end - window.start
        self.progress(self.stats)


#: windows read ahead of the one being delivered, per ``concurrency``: a window held up by a
#: long request (a crowded second read whole) leaves the other threads later windows to read
LOOKAHEAD = 2


@dataclass
class _Window:
    """One window being read: the items of each span read so far (by the span's start, in
    microseconds), the spans queued or being read, and, once done, its items or error."""

    index: int
    range: Range
    abort: threading.Event
    backoff: Backoff
    attempt: int = 1
    parts: dict[int, list[Item]] = field(default_factory=dict)
    outstanding: int = 0
    items: list[Item] | None = None
    error: BaseException | None = None

    def done(self) -> bool:
        return self.items is not None or self.error is not None


#: one span to read: (window index, span start, sequence) orders the queue; then the window,
#: its attempt and the span ``[lo, hi)`` in microseconds
_Task = tuple[int, int, int, _Window, int, int, int]


class _Reader:
    """The threads of one :meth:`Backfill.run`: ``concurrency`` of them, each making one
    request at a time, so no more than that many are in flight.

    A window is read span by span, each span exactly (the cursor of datagrepper.py): page 1
    of the span says how many messages it holds (``total``); the messages before the whole
    second of its last item are taken (all of a page that is not full; a crowded second is
    read whole), and the rest of the span is cut at whole seconds into spans of about a page
    each, queued to be read side by side. The spans of a window are disjoint and cover it, so
    it is read exactly as datagrepper.py reads it, in fewer rounds of requests. The queue
    serves the earliest window first (the next to deliver), the others fill idle threads.
    A span whose request fails (after the client's own tries) fails its window's attempt:
    the window is read again from its start, with backoff, up to ``retries`` times."""

    def __init__(self, backfill: Backfill, abort: _Linked) -> None:
        self.backfill = backfill
        self.abort = abort
        self.cond = threading.Condition()
        self.queue: list[_Task] = []
        self.seq = 0
        self.closed = False
        self.threads = [
            threading.Thread(target=self._work, name=f"backfill_{n}", daemon=True)
            for n in range(backfill.config.concurrency)
        ]
        for thread in self.threads:
            thread.start()

    def open(self, index: int, window: Range) -> _Window:
        """Queue a window's first span: the whole window."""
        w = _Window(index, window, _Linked(self.abort), self.backfill._backoff())
        lo, hi = bounds(window.start, window.end)
        if lo >= hi:  # nothing after the epoch's first microsecond (see datagrepper.py)
            w.items = []
            return w
        with self.cond:
            self._queue(w, [(lo, hi)])
        return w

    def result(self, w: _Window) -> list[Item]:
        """A window's items once it is read; raises its error."""
        with self.cond:
            while not w.done():
                if self.abort.is_set():
                    raise Cancelled(f"stopped while reading {w.range}")
                self.cond.wait(0.5)
        if w.error is not None:
            raise w.error
        assert w.items is not None
        return w.items

    def close(self) -> None:
        """Stop the threads (those in a request finish it) and wait for them."""
        self.abort.set()
        with self.cond:
            self.closed = True
            self.queue.clear()
            self.cond.notify_all()
        for thread in self.threads:
            thread.join()

    def _queue(self, w: _Window, spans: list[tuple[int, int]]) -> None:
        """Queue spans of ``w``'s current attempt (the lock held)."""
        for lo, hi in spans:
            self.seq += 1
            heapq.heappush(self.queue, (w.index, lo, self.seq, w, w.attempt, lo, hi))
        w.outstanding += len(spans)
        self.cond.notify(len(spans))

    def _work(self) -> None:
        client = self.backfill._client()
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                _, _, _, w, attempt, lo, hi = heapq.heappop(self.queue)
            self._read(client, w, attempt, lo, hi)

    def _read(self, client: Datagrepper, w: _Window, attempt: int, lo: int, hi: int) -> None:
        """Read one span and queue the rest it leaves; a failure fails the window's attempt."""
        if attempt != w.attempt or w.done():
            return
        if isinstance(client, _RetryingDatagrepper):
            client.abort = w.abort
        try:
            taken, rest = _read_span(client, lo, hi, w.abort)
        except Cancelled as exc:
            if self.abort.is_set():
                self._finish(w, attempt, error=exc)
            return  # else the attempt was given up: another read the window again
        except DatagrepperError as exc:
            self._failed(w, attempt, exc)
            return
        except BaseException as exc:
            self._finish(w, attempt, error=exc)
            return
        with self.cond:
            if attempt != w.attempt or w.done():
                return
            w.parts[lo] = taken
            self._queue(w, rest)
            w.outstanding -= 1
            if not w.outstanding:
                self._finish(w, attempt, items=joined(w.parts[lo] for lo in sorted(w.parts)))

    def _finish(
        self,
        w: _Window,
        attempt: int,
        items: list[Item] | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self.cond:
            if attempt == w.attempt and not w.done():
                w.items, w.error = items, error
                w.parts = {}
                w.abort.set()  # the attempt's other spans stop at their next request
                self.cond.notify_all()

    def _failed(self, w: _Window, attempt: int, exc: DatagrepperError) -> None:
        """A span failed: the window's attempt is given up; another after a backoff, from the
        window's start, or the window's error after ``retries`` attempts."""
        backfill, retries = self.backfill, self.backfill.config.retries
        with self.cond:
            if attempt != w.attempt or w.done():
                return
            backfill.stats.count("requests_failed")
            if attempt == retries:
                error = BackfillError(
                    f"backfill stopped: the window {w.range} failed {attempt} times, last: "
                    f"{exc}; the checkpoint stays before it",
                    w.range,
                )
                error.__cause__ = exc
                self._finish(w, attempt, error=error)
                return
            w.abort.set()
            w.attempt, w.parts, w.outstanding = attempt + 1, {}, 0
            w.abort = _Linked(self.abort)
        wait = w.backoff.next()
        log.warning(
            "backfill: window %s failed (%s); retry %d of %d in %.1f s",
            w.range,
            exc,
            attempt,
            retries - 1,
            wait,
        )
        if backfill.stop.wait(wait) or self.abort.is_set():
            self._finish(w, w.attempt, error=Cancelled(f"stopped while retrying {w.range}"))
            return
        with self.cond:
            if not w.done():
                self._queue(w, [bounds(w.range.start, w.range.end)])


def _read_span(
    client: Datagrepper, lo: int, hi: int, stop: threading.Event
) -> tuple[list[Item], list[tuple[int, int]]]:
    """Read the span ``[lo, hi)`` (microseconds) with one request (two for a crowded second):
    the items of its start up to the next cursor (datagrepper.py's ``advance``) and the spans
    of the rest to read, about a page each by the page's ``total``. A span within one second
    is read whole, as datagrepper.py reads a crowded second (one request without a page
    limit, else by passes), which is one request whether it is crowded or not. A 502/504 on a
    span longer than a second: nothing taken, its halves to read instead."""
    if stop.is_set():
        raise Cancelled("stopped")
    if lo // US == (hi - 1) // US:
        return client.crowded(lo, hi, [], stop), []
    try:
        page = client.page(lo, hi, 1, client.rows_per_page)
    except DatagrepperError as exc:
        half = client.halved(exc, lo, hi)
        return [], [(lo, half), (half, hi)]
    cursor, _, taken = client.advance(lo, hi, page.items, stop)
    if cursor >= hi:
        return taken, []
    rows, tied = client.rows_per_page, len(page.items) - len(taken)
    return taken, _pieces(lo, cursor, hi, len(taken), tied, page.total - len(taken), rows)


def _pieces(
    lo: int, cursor: int, hi: int, taken: int, tied: int, rest: int, rows: int
) -> list[tuple[int, int]]:
    """The rest ``[cursor, hi)`` of a span whose page 1 gave ``taken`` messages up to
    ``cursor``, ``tied`` more in the cursor's second, and counted ``rest`` from the cursor on,
    as spans to read, cut at whole seconds: as many equal ones as pages the rest fills. When
    the rest holds over twice what the page's own density foretells, most of it is somewhere
    in a few seconds, and the rest is cut by the density instead; when the page ended with
    many ties (a quarter of a page), the cursor's second most likely holds it: that second
    is then a span of its own. A span may still hold more than a page: it is cut again after its own
    page 1. The counts are estimates (of when page 1 was read); the spans are exact."""
    foretold = taken * (hi - cursor) // max(cursor - lo, 1)
    if rest <= 2 * foretold + rows:
        return _cut(cursor, hi, -(-rest // rows))
    if 4 * tied < rows:
        return _cut(cursor, hi, -(-foretold // rows))
    second = min(hi, cursor // US * US + US)
    return [(cursor, second), *_cut(second, hi, -(-foretold // rows))]


def _cut(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` in ``n`` spans of about equal length (one at least, none of less than a
    second but a last one), cut at whole seconds."""
    if lo >= hi:
        return []
    n = min(max(1, n), max(1, (hi - lo) // US))
    cuts = {(lo + (hi - lo) * j // n) // US * US for j in range(1, n)}
    bounds = [lo, *sorted(c for c in cuts if lo < c < hi), hi]
    return list(itertools.pairwise(bounds))


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
