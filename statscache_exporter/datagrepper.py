"""datagrepper's ``/raw``, read exactly: every message it holds in a time window, each once.

Why paging naively is not enough (datagrepper 1.1.0 over datanommer 1.5.0): ``/raw`` pages with
``OFFSET``/``LIMIT`` over ``ORDER BY timestamp`` with no tie-breaker, recounts ``total`` on
every request, and shows timestamps cut to the whole second while the database keeps
microseconds. Fedora-messaging's ``sent-at`` has no fractions, so a busy second holds many rows
with one identical timestamp, and PostgreSQL orders such ties differently for different
``LIMIT``/``OFFSET`` values (its top-N sort): paging through 1,008 messages of one second gives
999 distinct ones and repeats the rest. Asking again does not help (a page asked twice is the
same), and neither does paging again with other page sizes, even one row a page: 9 of those
rows are returned by no page at all (datagrepper 1.1.0 over PostgreSQL 15).

How this client reads a window ``[start, end)`` (half-open, in microseconds, which is the
database's resolution):

- The bounds go out as ``start=<start>`` and ``end=<end - 1 µs>`` (datagrepper's are inclusive at
  both ends), written with six decimals, so a message at exactly ``end`` belongs to the next
  window and one at ``end - 0.3`` to this one, whatever the fraction.
- A **cursor** walks the window asking only for page 1 of ``[cursor, upper)``. A page that is not
  full is everything there: the cursor moves to ``upper``. A full page is cut at the whole second
  of its newest item, ``cut``: every message before ``cut`` sorts strictly before that item, so it
  is in this page whatever the order among ties; the items before ``cut`` are taken and the cursor
  moves to ``cut``. Each request is one SQL statement, so nothing falls between a cut and the
  next request.
- When a full page does not get past the cursor's second, that second (from the cursor) holds
  more than a page of ties. It is asked for in **one request without a page limit** (datagrepper
  reads ``rows_per_page=0`` as "no limit": one statement, every row, bounded by one second).
  Should datagrepper refuse that (any HTTP error) or answer with fewer rows than its ``total`` or
  than the page already seen, the second is read by **passes**, every page of it, each pass with
  another ``rows_per_page`` (100, 99, 98, ...) until the distinct rows seen reach the newest
  ``total``; after ``max_passes`` without that it raises :class:`DatagrepperError` rather than
  return a partial window.
- ``upper`` adapts: a request covers at most ``max_span`` seconds (a huge window, e.g. filtered
  by a rare category, is what times out in production), twice what the last full page covered,
  and doubles after a page that was not full. A **502 or 504** (production's gunicorn gives up
  after 60 s) is retried once with half the span, and the window goes on in spans no longer than
  that, allowed twice as long again after :data:`CALM_REQUESTS` more answers without one (a
  gateway busy for a while does not leave the rest of a long window read a second at a time);
  a second failure, and any other error, raise :class:`DatagrepperError`.
  Retrying later is the caller's business (the polling source's backoff).

"Exact" means: what datagrepper held when each part of the window was read. A message stored
while the window is being read may or may not be included (the polling source's overlap reads
it again later). The items come back as ``/raw`` gives them, deduplicated by ``msg_id`` (the
first row wins), in timestamp order; within a second, in datagrepper's order. Note that an item's
``timestamp`` is its second: a window starting at 12:00:00.5 may return an item showing 12:00:00.

Another datagrepper quirk: ``start=0`` (or ``end=0``) switches the time filter off altogether
(it is tested for truth), so a window never starts before 1 µs after the epoch.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import requests

log = logging.getLogger(__name__)

#: One ``/raw`` item.
Item = dict[str, Any]
#: Microseconds per second: windows are handled in whole microseconds, the database's resolution.
US = 1_000_000
#: datagrepper refuses more rows per page (HTTP 400)
MAX_ROWS_PER_PAGE = 100
#: ``rows_per_page`` that datagrepper reads as "every row, one page"
UNLIMITED = 0
#: requests answered without a 502/504 after which spans may be twice as long again
CALM_REQUESTS = 8
#: statuses that mean "this request took too long", retried once on a smaller window
TIMEOUT_STATUSES = frozenset({502, 504})


class DatagrepperError(Exception):
    """A request to datagrepper failed: no answer (``status`` None), an HTTP error status, an
    answer that is not what ``/raw`` gives, or a crowded second that would not read completely.
    The message names the URL with its parameters, the status and datagrepper's reason."""

    def __init__(
        self, url: str, params: Mapping[str, Any], status: int | None, detail: str
    ) -> None:
        self.url = url
        self.params = dict(params)
        self.status = status
        self.detail = detail
        what = "no answer" if status is None else f"HTTP {status}"
        query = urllib.parse.urlencode(self.params, doseq=True)
        super().__init__(f"GET {url}?{query}: {what}: {detail}")


class Cancelled(Exception):
    """:meth:`Datagrepper.window` was stopped by its ``stop`` event before it was complete."""


@dataclass(frozen=True)
class Page:
    """One checked ``/raw`` answer: its items and the ``total`` datagrepper counted."""

    items: list[Item]
    total: int


class Datagrepper:
    """A client of one datagrepper (``url`` without ``/raw``, e.g.
    ``https://apps.fedoraproject.org/datagrepper``); see the module doc.

    ``timeout``: seconds per request (connect and read); ``rows_per_page``: 1-100, the page
    size asked for; ``session``: a ``requests.Session`` to use (default: one of its own, closed
    by :meth:`close`); ``categories``: only messages of these datanommer categories (the
    repeatable ``category`` filter: ``topic.split('.')[3]``); ``max_span``: the longest time one
    request covers, in seconds; ``unlimited_seconds``: read a second holding more than a page
    in one request without a page limit (else, or once datagrepper answered that with a 400,
    by passes right away); ``max_passes``: passes over such a second before giving up.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        rows_per_page: int = MAX_ROWS_PER_PAGE,
        session: requests.Session | None = None,
        categories: Iterable[str] = (),
        max_span: float = 3600.0,
        unlimited_seconds: bool = True,
        max_passes: int = 8,
    ) -> None:
        if not 1 <= rows_per_page <= MAX_ROWS_PER_PAGE:
            raise ValueError(f"rows_per_page must be 1-{MAX_ROWS_PER_PAGE}, got {rows_per_page}")
        if max_span < 1 or max_passes < 1 or timeout <= 0:
            raise ValueError("need max_span >= 1 s, max_passes >= 1 and timeout > 0")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.rows_per_page = rows_per_page
        self.categories = tuple(categories)
        self.max_span = max_span
        self._unlimited = unlimited_seconds
        self.max_passes = max_passes
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()

    # --- the window ------------------------------------------------------------------------

    def window(self, start: float, end: float, stop: threading.Event | None = None) -> list[Item]:
        """Every message datagrepper holds from ``start`` (inclusive) to ``end`` (exclusive),
        epoch seconds, each once, in timestamp order (none when ``end <= start``). Raises
        :class:`DatagrepperError`, or :class:`Cancelled` when ``stop`` is set between two
        requests."""
        lo, hi = bounds(start, end)
        found: dict[str, Item] = {}
        longest = _micro(self.max_span)
        cursor, ceiling, calm = lo, longest, 0
        span = ceiling
        while cursor < hi:
            _check(stop)
            asked = min(hi, cursor + span)
            items, upper = self._first_page(cursor, asked)
            if upper < asked:  # it took a 502/504 and half the span: no longer ones for a while
                ceiling, calm = upper - cursor, 0
            else:
                calm += 1
                if calm >= CALM_REQUESTS and ceiling < longest:  # try longer ones again
                    ceiling, calm = min(longest, 2 * ceiling), 0
            cursor, span, taken = self.advance(cursor, upper, items, stop)
            span = min(span, ceiling)
            _collect(found, taken)
        return in_order(found)

    def advance(
        self, cursor: int, upper: int, items: list[Item], stop: threading.Event | None
    ) -> tuple[int, int, list[Item]]:
        """After page 1 of ``[cursor, upper)``: the next cursor, the next span, and the items
        of ``[cursor, next cursor)`` (see the module doc). With :meth:`page` and
        :meth:`crowded`, what the backfill's span reader (``backfill._read_span``) builds on."""
        if len(items) < self.rows_per_page:  # everything up to upper
            return upper, 2 * (upper - cursor), items
        cut = _second_of(items[-1]) * US
        if cut > cursor:  # every message before cut is in this page
            taken = [i for i in items if _second_of(i) * US < cut]
            return cut, max(2 * (cut - cursor), US), taken
        second_end = min(upper, cut + US)  # more than a page from the cursor to second_end
        return second_end, upper - cursor, self.crowded(cursor, second_end, items, stop)

    def _first_page(self, lo: int, hi: int) -> tuple[list[Item], int]:
        """Page 1 of ``[lo, hi)`` and the ``hi`` it covers: on a 502/504, asked once more
        for the first half of the window (and that ``hi``)."""
        try:
            return self.page(lo, hi, 1, self.rows_per_page).items, hi
        except DatagrepperError as exc:
            half = self.halved(exc, lo, hi)
            return self.page(lo, half, 1, self.rows_per_page).items, half

    def halved(self, exc: DatagrepperError, lo: int, hi: int) -> int:
        """Where to cut ``[lo, hi)`` in two after its page 1 failed with ``exc``: a 502/504
        (a query that took too long) on a span longer than a second is asked for in halves
        (counted by :meth:`split`, logged); any other failure is raised again."""
        if exc.status not in TIMEOUT_STATUSES or hi - lo <= US:
            raise exc
        half = lo + (hi - lo) // 2
        self.split(lo, hi)
        log.info(
            "datagrepper %s gave HTTP %s for %.0f s, asking for halves of %.0f s",
            self.url,
            exc.status,
            (hi - lo) / US,
            (half - lo) / US,
        )
        return half

    def split(self, lo: int, hi: int) -> None:
        """Told when the span ``[lo, hi)`` (microseconds) is asked for again in halves; a hook
        for counting."""

    def crowded(
        self, lo: int, hi: int, first: list[Item], stop: threading.Event | None
    ) -> list[Item]:
        """Every row of ``[lo, hi)``, within one second and holding more than a page (``first``:
        the full page 1 already seen): in one request without a limit, else by passes."""
        if self._unlimited:
            _check(stop)
            try:
                whole = self.page(lo, hi, 1, UNLIMITED)
            except DatagrepperError as exc:
                if exc.status is None:
                    raise
                if exc.status == 400:  # refused: not asked again
                    self._unlimited = False
                log.warning("datagrepper %s: %s; paging that second by passes", self.url, exc)
            else:
                rows = {_row_key(i) for i in whole.items}
                if len(rows) >= whole.total and rows.issuperset(map(_row_key, first)):
                    return whole.items
                log.warning(
                    "datagrepper %s: the second from %s without a page limit gave %d of %d "
                    "messages; paging it by passes",
                    self.url,
                    _seconds(lo),
                    len(rows),
                    whole.total,
                )
        return self._passes(lo, hi, stop)

    def _passes(self, lo: int, hi: int, stop: threading.Event | None) -> list[Item]:
        """Every row of ``[lo, hi)`` by passes of offset paging with varying page sizes, until
        the distinct rows reach the newest ``total``."""
        rows: dict[str, Item] = {}
        total = 0
        for n, size in enumerate(_pass_sizes(self.rows_per_page, self.max_passes), 1):
            page, pages = 1, 1
            while page <= pages:
                _check(stop)
                answer = self.page(lo, hi, page, size)
                rows.update((_row_key(i), i) for i in answer.items)
                total, pages = answer.total, math.ceil(answer.total / size)
                if len(rows) >= total:
                    if n > 1:
                        log.info(
                            "datagrepper %s: %d messages of one second read in %d passes",
                            self.url,
                            total,
                            n,
                        )
                    return list(rows.values())
                page += 1
        params = self._params(lo, hi, 1, self.rows_per_page)
        raise DatagrepperError(
            f"{self.url}/raw",
            params,
            200,
            f"the second from {_seconds(lo)} holds {total} messages but {self.max_passes} "
            f"passes of offset paging found only {len(rows)} of them",
        )

    # --- one request -----------------------------------------------------------------------

    def page(self, lo: int, hi: int, page: int, rows_per_page: int) -> Page:
        """Page ``page`` (from 1, ascending) of ``[lo, hi)`` in microseconds, checked;
        ``rows_per_page`` :data:`UNLIMITED`: every row."""
        return self._checked(self._params(lo, hi, page, rows_per_page))

    def _params(self, lo: int, hi: int, page: int, rows_per_page: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "start": _seconds(lo),
            "end": _seconds(hi - 1),  # inclusive
            "order": "asc",
            "page": page,
            "rows_per_page": rows_per_page,
        }
        if self.categories:
            params["category"] = list(self.categories)
        return params

    def _checked(self, params: Mapping[str, Any]) -> Page:
        answer = self.raw(params)
        items, total = answer.get("raw_messages"), answer.get("total")
        if (
            not isinstance(items, list)
            or not isinstance(total, int)
            or not all(isinstance(i, dict) and _is_number(i.get("timestamp")) for i in items)
        ):
            problem = "not a /raw answer (raw_messages with timestamps, total)"
            raise DatagrepperError(
                f"{self.url}/raw", params, 200, f"{problem}: {json.dumps(answer)[:300]}"
            )
        seconds = [i["timestamp"] for i in items]
        if seconds != sorted(seconds):  # the cursor relies on order=asc
            raise DatagrepperError(
                f"{self.url}/raw", params, 200, f"items not in ascending time: {seconds[:20]}"
            )
        return Page(items, total)

    def raw(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """One ``GET <url>/raw`` with exactly ``params`` (a list value repeats the parameter),
        ``Accept: application/json``: the JSON object answered with 200, else
        :class:`DatagrepperError`."""
        url = f"{self.url}/raw"
        try:
            r = self.session.get(
                url,
                params=params,
                headers={"Accept": "application/json"},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise DatagrepperError(url, params, None, _no_answer(exc)) from exc
        if r.status_code != 200:
            raise DatagrepperError(url, params, r.status_code, _error_detail(r))
        try:
            answer = r.json()
        except ValueError:
            kind = r.headers.get("content-type", "no content type")
            raise DatagrepperError(
                url, params, 200, f"not JSON ({kind}): {_text(r.text)}"
            ) from None
        if not isinstance(answer, dict):
            raise DatagrepperError(url, params, 200, f"not a JSON object: {r.text[:300]}")
        return answer

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the session if it is the client's own."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ---------------------------------------------------------------------------------


def _micro(seconds: float) -> int:
    return round(seconds * US)


def _seconds(us: int) -> str:
    """Microseconds as datagrepper reads them exactly: epoch seconds with six decimals."""
    sign = "-" if us < 0 else ""
    whole, frac = divmod(abs(us), US)
    return f"{sign}{whole}.{frac:06d}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _second_of(item: Item) -> int:
    """The whole second an item's (shown) timestamp falls in."""
    second: int = math.floor(item["timestamp"])
    return second


def item_key(item: Item) -> str:
    """What deduplicates items: the ``msg_id``, or the whole item when it has none."""
    msg_id = item.get("msg_id")
    return f"id:{msg_id}" if isinstance(msg_id, str) else "item:" + _row_key(item)


def _row_key(item: Item) -> str:
    """One database row (datanommer keeps a msg_id once per timestamp): the item whole."""
    return json.dumps(item, sort_keys=True, separators=(",", ":"))


def _collect(found: dict[str, Item], items: Iterable[Item]) -> None:
    for item in items:
        found.setdefault(item_key(item), item)


def joined(parts: Iterable[Iterable[Item]]) -> list[Item]:
    """The items of a window's parts (read apart, e.g. the backfill's spans), each once (by
    :func:`item_key`, the first row wins), in timestamp order: what :meth:`Datagrepper.window`
    gives of the same rows."""
    found: dict[str, Item] = {}
    for items in parts:
        _collect(found, items)
    return in_order(found)


def in_order(found: Mapping[str, Item]) -> list[Item]:
    """Collected items in timestamp order (by whole second: the order within one is
    datagrepper's own)."""
    return sorted(found.values(), key=_second_of)


def bounds(start: float, end: float) -> tuple[int, int]:
    """``[start, end)`` in microseconds as the window reads it: from the epoch's first
    microsecond at the earliest (see the module doc)."""
    return max(_micro(start), 1), _micro(end)


def _pass_sizes(rows_per_page: int, passes: int) -> Sequence[int]:
    """Page sizes for the passes over a crowded second: the configured one first, then the
    nearest others (each orders ties differently in PostgreSQL)."""
    sizes = sorted(range(1, MAX_ROWS_PER_PAGE + 1), key=lambda s: (abs(s - rows_per_page), -s))
    return sizes[:passes]


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled("stopped")


def _no_answer(exc: requests.RequestException) -> str:
    """Why there was no answer, short: the innermost cause urllib3 gives (e.g. ``ConnectionError:
    Failed to establish a new connection: [Errno 111] Connection refused``), without the
    connection pool's preamble that repeats the URL."""
    inner: BaseException = exc
    for _ in range(5):
        cause = getattr(inner, "reason", None)
        if not isinstance(cause, BaseException) and inner.args:
            cause = inner.args[0]
        if not isinstance(cause, BaseException):
            break
        inner = cause
    text = re.sub(r"^\w*Connection(Pool)?\(host=[^)]*\):? ?", "", str(inner))
    return f"{type(exc).__name__}: {text}"


def _error_detail(r: requests.Response) -> str:
    """datagrepper's reason for an error: ``error``/``detail`` of a JSON body (500), the text
    of an HTML page (400: Werkzeug's ``<p>`` says which parameter), else the body's start."""
    try:
        body = r.json()
    except ValueError:
        return _text(r.text) or r.reason or "(empty body)"
    if isinstance(body, dict) and "error" in body:
        parts = [str(body["error"])] + ([str(body["detail"])] if body.get("detail") else [])
        return ": ".join(parts)[:300]
    return json.dumps(body)[:300]


def _text(body: str) -> str:
    """An HTML page as one line of text (its paragraphs when it has any), at most 300 chars."""
    paragraphs = re.findall(r"<p>(.*?)</p>", body, re.S | re.I)
    title = re.search(r"<title>(.*?)</title>", body, re.S | re.I)
    text = " ".join(paragraphs) if paragraphs else body
    if paragraphs and title:
        text = f"{title.group(1)}: {text}"
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return " ".join(text.split())[:300]
