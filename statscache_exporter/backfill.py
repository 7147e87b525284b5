"""The gap filler: fetch from datagrepper exactly the messages the live sources missed.

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
and the checkpoint stays before it. The backfill runs beside the live sources: counting is
order-free (counters add, gauges keep the newest message's value) and the pipeline skips a
message it already counted by id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from statscache_exporter.config import BackfillConfig
from statscache_exporter.datagrepper import (
    TIMEOUT_STATUSES,
    US,
    Cancelled,
    Datagrepper,
    DatagrepperError,
    Item,
)
from statscache_exporter.sources.backoff import Backoff

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
    """A window could not be read after every retry; the message names it and why."""


@dataclass
class BackfillStats:
    """Progress, for logs and self-metrics."""

    windows_total: int = 0
    windows_done: int = 0
    messages: int = 0
    requests_failed: int = 0
    #: single requests asked again (no answer, 429, 5xx) without starting their window over
    requests_retried: int = 0
    remaining_seconds: float = 0.0


#: hands one item to the pipeline; then a checkpoint once a window is complete
Deliver = Callable[[Item], None]
Cover = Callable[[float], None]

#: tries of one request that gets no answer, a 429 or a 5xx, before its window fails
REQUEST_ATTEMPTS = 3


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
        **kwargs: Any,
    ) -> None:
        super().__init__(url, **kwargs)
        self._backoff = backoff
        self._stop = stop
        self._retried = retried
        #: the current run's abort (set by Backfill._fetch)
        self.abort: threading.Event = stop

    def raw(self, params: Mapping[str, Any]) -> dict[str, Any]:
        backoff = self._backoff()
        for attempt in range(1, REQUEST_ATTEMPTS + 1):
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


class Backfill:
    """Fetches ranges from datagrepper and delivers them in order (see the module doc)."""

    def __init__(
        self,
        config: BackfillConfig,
        deliver: Deliver,
        cover: Cover,
        stop: threading.Event | None = None,
        client: Callable[[], Datagrepper] | None = None,
    ) -> None:
        self.config = config
        self.deliver = deliver
        self.cover = cover
        self.stop = stop or threading.Event()
        self._client = client or self._new_client
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
        self.stats.requests_retried += 1
        log.info("backfill: %s; asking again in %.1f s", exc, wait)

    def run(self, ranges: list[Range]) -> int:
        """Fetch and deliver every range; the number of messages delivered. Raises
        :class:`BackfillError` when a window keeps failing (what came before it is
        delivered and covered), :class:`Cancelled` when stopped."""
        todo = list(windows(ranges, self.config.window.total_seconds()))
        self.stats.windows_total = len(todo)
        self.stats.remaining_seconds = sum(w.end - w.start for w in todo)
        if not todo:
            return 0
        log.info("backfill: %d windows, %s", len(todo), ", ".join(map(str, ranges)))
        abort = _Linked(self.stop)
        with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="backfill") as pool:
            pending: list[tuple[Range, Future[list[Item]]]] = []
            try:
                for window in todo:  # keep `concurrency` windows in flight, deliver in order
                    pending.append((window, pool.submit(self._fetch, window, abort)))
                    if len(pending) >= self.config.concurrency:
                        self._deliver(*pending.pop(0))
                while pending:
                    self._deliver(*pending.pop(0))
            except BaseException:
                abort.set()  # the other windows stop at their next request
                for _, future in pending:
                    future.cancel()
                raise
        log.info("backfill: done, %d messages", self.stats.messages)
        return self.stats.messages

    def _deliver(self, window: Range, future: Future[list[Item]]) -> None:
        items = future.result()
        for item in items:
            self.deliver(item)
        self.cover(window.end)
        self.stats.messages += len(items)
        self.stats.windows_done += 1
        self.stats.remaining_seconds -= window.end - window.start

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
                self.stats.requests_failed += 1
                if attempt == self.config.retries:
                    raise BackfillError(
                        f"backfill stopped: the window {window} failed {attempt} times, last: "
                        f"{exc}; the checkpoint stays before it and the next start retries"
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


class GapFiller:
    """The backfill thread of ``run``: first what was missed before the start (advancing the
    checkpoint window by window), then each outage a live source reports, as it is recorded."""

    def __init__(
        self,
        config: BackfillConfig,
        emit: Callable[[object], None],
        stop: threading.Event,
        first: list[Range],
        gaps: Iterable[tuple[str, float, float]] = (),
    ) -> None:
        self.config = config
        self.emit = emit
        self.stop = stop
        self.first = first
        self.jobs: list[tuple[str, float, float]] = list(gaps)
        self.lock = threading.Condition()
        self.caught_up = threading.Event()
        self.failed: str | None = None
        self.backfill = Backfill(config, emit, lambda t: emit(Covered(t)), stop)
        self._busy = False

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
            self.backfill.run(self.first)
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
                    self.backfill.run([Range(start - overlap, end + overlap)])
                    self.emit(GapFilled(source, start, end))
                finally:
                    with self.lock:
                        self._busy = False
        except Cancelled:
            pass
        except BackfillError as exc:
            self.failed = str(exc)
            log.error("%s", exc)
        except Exception:
            self.failed = "unexpected error"
            log.exception("backfill failed")
