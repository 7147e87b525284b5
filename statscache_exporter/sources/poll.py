"""The datagrepper source: polls ``/raw`` for users without access to a bus.

Every ``interval`` it reads, with :class:`~statscache_exporter.datagrepper.Datagrepper` (exact
windows despite datagrepper's offset paging), the window from ``overlap`` before the end of the
previous one to :data:`SETTLE` seconds ago, and emits each item it has not emitted yet, as the
``/raw`` dict (the pipeline normalizes that shape). Looking ``overlap`` back again catches the
messages datanommer stored late, after a poll had already read their second; the ids emitted in
the overlap are kept in memory so those polls do not emit them twice (the pipeline would skip
them by id anyway, but counted as duplicates). A message stored more than ``overlap`` after its
own time is missed; the gap filler, reading the store's checkpoint, is what covers older times.

The first window starts ``overlap`` before the source starts. A failed poll (no answer, an
HTTP error, an answer that is not ``/raw``'s) reports ``disconnected`` and is retried after an
exponential backoff with jitter (``reconnect``); the next successful poll reports ``connected``
and reads everything since the last successful one, so an outage loses nothing datagrepper
holds. A poll reads at most :data:`CATCH_UP` (an hour) past the previous one; further behind
(after an outage), it polls again at once. ``ctx.stop`` is looked at between requests and
while waiting; a request in flight takes at most ``timeout``. Nothing is acknowledged:
datagrepper keeps its messages.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import requests

from statscache_exporter.config import DatagrepperSourceConfig, format_duration
from statscache_exporter.datagrepper import (
    Cancelled,
    Datagrepper,
    DatagrepperError,
    Item,
    item_key,
)
from statscache_exporter.sources import SourceContext
from statscache_exporter.sources.backoff import Backoff

log = logging.getLogger(__name__)

#: seconds a window's end stays behind now: the current second is still being stored, and is
#: read once by the next poll rather than twice (the overlap would catch it either way)
SETTLE = 1.0
#: how far one poll reads past the previous one (seconds): after an outage the source catches
#: up in windows this long (plus the overlap), one right after the other, so it never holds
#: more than that in memory
CATCH_UP = 3600.0


class DatagrepperSource:
    """Polls one datagrepper (see the module doc). ``session``: the ``requests.Session`` to
    use (default: one of its own); ``clock``: the wall clock windows are taken from."""

    def __init__(
        self,
        config: DatagrepperSourceConfig,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = config.name
        self._session = session
        self._clock = clock
        #: emitted items that a later window may return again: key → the second they show
        self.emitted: dict[str, int] = {}
        #: the end of the last window read (epoch seconds); the next starts ``overlap`` before
        self.read_until: float | None = None

    def run(self, ctx: SourceContext) -> None:
        """Poll until ``ctx.stop`` is set."""
        c = self.config
        client = Datagrepper(
            c.url,
            timeout=c.timeout.total_seconds(),
            rows_per_page=c.rows_per_page,
            session=self._session,
            categories=c.categories,
        )
        backoff = Backoff(c.reconnect.initial.total_seconds(), c.reconnect.max.total_seconds())
        self.read_until = self._clock() - SETTLE  # the first window: the overlap before now
        every = format_duration(c.interval)
        log.info("source %s: polling %s/raw every %s", self.name, client.url, every)
        try:
            while not ctx.stop.is_set():
                began = time.monotonic()
                try:
                    behind = self.poll(client, ctx)
                except Cancelled:
                    return
                except DatagrepperError as exc:
                    ctx.status.disconnected(str(exc))
                    if backoff.wait(ctx.stop):
                        return
                    continue
                backoff.reset()
                if not behind:
                    waited = time.monotonic() - began
                    ctx.stop.wait(max(0.0, c.interval.total_seconds() - waited))
        finally:
            client.close()

    def poll(self, client: Datagrepper, ctx: SourceContext) -> bool:
        """Read the next window (at most :data:`CATCH_UP` long), emit what is new in it, move
        on; True when it is behind (the next poll is due at once)."""
        assert self.read_until is not None, "run() sets the first window"
        overlap = self.config.overlap.total_seconds()
        settled = self._clock() - SETTLE
        start, end = self.read_until - overlap, min(settled, self.read_until + CATCH_UP)
        items = client.window(start, end, ctx.stop)
        ctx.status.connected(f"polling {client.url}/raw")
        emitted = self._emit_new(items, ctx)
        log.debug(
            "source %s: %d messages from %.3f to %.3f, %d new",
            self.name,
            len(items),
            start,
            end,
            emitted,
        )
        self.read_until = end
        self._forget_before(end - overlap)
        return end < settled

    def _emit_new(self, items: list[Item], ctx: SourceContext) -> int:
        emitted = 0
        for item in items:
            key = item_key(item)
            if key in self.emitted:
                continue
            if ctx.stop.is_set():
                break
            self.emitted[key] = math.floor(item["timestamp"])
            ctx.emit(item)
            emitted += 1
        return emitted

    def _forget_before(self, start: float) -> None:
        """Drop the ids no window from ``start`` on can return: their second ended by then."""
        gone = [key for key, second in self.emitted.items() if second + 1 <= start]
        for key in gone:
            del self.emitted[key]
