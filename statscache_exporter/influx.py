"""The InfluxDB sink: every base-resolution bucket written as a point, nothing lost when
InfluxDB is away.

Schema: one measurement per plugin metric (``<prefix><metric>``, like the Prometheus names),
the labels and the configured global tags as tags, the bucket start as the time (precision:
seconds). A counter bucket carries its full count as the integer field ``count``, a gauge its
value as the float field ``value``. InfluxDB overwrites a point with the same series and time,
so a bucket that changes is simply written again with its new full value, and a batch sent
twice is harmless.

Delivery: the flush that changes a bucket also queues it in the store's outbox, in the same
transaction. This sender, a thread with its own SQLite connection, reads the oldest queued
buckets with their current values, writes them, and unqueues each only if it has not changed
since it was read. Connection errors, 5xx and 429 are retried with exponential backoff and
jitter (``Retry-After`` honoured); a 400 is bisected down to the lines InfluxDB refuses, which
are logged and set aside, so they never block the rest. Message processing never waits for it.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, cast

import requests
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision
from requests.structures import CaseInsensitiveDict

from statscache_exporter.config import InfluxConfig
from statscache_exporter.store import Outbox, Pending, Queued, SeriesInfo

log = logging.getLogger(__name__)


# --- lines -------------------------------------------------------------------------------------


def representable(tag_value: str) -> bool:
    """Whether InfluxDB 1.x line protocol carries this tag value faithfully. It has no escape
    for newline, carriage return or tab (Point writes them as two characters, which InfluxDB
    stores as such), and a trailing backslash escapes the separator that follows it: such a
    point would land in another series, so it is refused instead."""
    return not (any(c in tag_value for c in "\n\r\t") or tag_value.endswith("\\"))


class LineBuilder:
    """Line protocol for queued buckets. influxdb-client's ``Point`` escapes the measurement and
    tags; it builds each series' key once (about 12 µs), then each point is its key, field and
    time."""

    def __init__(self, prefix: str, tags: Mapping[str, str]) -> None:
        self.prefix = prefix
        self.tags = dict(tags)
        self._keys: dict[int, str | None] = {}  # series id → key, None if unwritable
        self._counter: dict[int, bool] = {}

    def known(self, series: int) -> bool:
        return series in self._keys

    def learn(self, series: int, info: SeriesInfo) -> None:
        self._keys[series] = self._series_key(info)
        self._counter[series] = info.kind == "counter"

    def line(self, p: Pending) -> str | None:
        """The point's line, or None if its series cannot be written faithfully."""
        key = self._keys[p.series]
        if key is None:
            return None
        if self._counter[p.series]:
            return f"{key} count={int(p.value)}i {p.start}"
        return f"{key} value={float(p.value)!r} {p.start}"

    def _series_key(self, info: SeriesInfo) -> str | None:
        tags = {**self.tags, **json.loads(info.labels)}
        if any(not representable(value) for value in tags.values()):
            return None
        point = Point(self.prefix + info.metric)
        for name, value in tags.items():
            point.tag(name, value)
        # "<measurement>[,tags] <field> <time>": the key is all before the last two spaces
        # (escaped spaces inside it are preceded by a backslash, the last two are not).
        line = str(point.field("count", 0).time(0, WritePrecision.S).to_line_protocol())
        return line.rsplit(" ", 2)[0]


# --- writers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteResult:
    """How a write went: ok, refused for its data (``bad_data``), or to retry."""

    ok: bool
    status: int | None = None
    bad_data: bool = False
    retry_after: float | None = None
    error: str = ""


class Writer(Protocol):
    def write(self, lines: Sequence[str]) -> WriteResult: ...

    def close(self) -> None: ...


def _classify(status: int, body: str, headers: Mapping[str, str]) -> WriteResult:
    if 200 <= status < 300:
        return WriteResult(True, status)
    retry_after = _retry_after(headers.get("Retry-After"))
    # 400: a line InfluxDB cannot take (parse error, field type conflict); 413: too big.
    bad = status in (400, 413, 422)
    return WriteResult(False, status, bad, retry_after, body[:500])


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: the backoff alone decides
    return max(0.0, when.timestamp() - time.time())


class V1Writer:
    """POST line protocol to ``/write`` (InfluxDB 1.x, and the v1 endpoints of 2.x/3.x)."""

    def __init__(self, config: InfluxConfig) -> None:
        self.config = config
        self.session = requests.Session()
        self.url = config.url.rstrip("/") + "/write"
        self.params = {"db": config.database, "precision": "s"}
        if config.retention_policy:
            self.params["rp"] = config.retention_policy
        if config.username:
            self.params.update(u=config.username, p=config.password)
        self._database_checked = not config.create_database

    def write(self, lines: Sequence[str]) -> WriteResult:
        if not self._database_checked:
            self._create_database()
        try:
            response = self.session.post(
                self.url,
                params=self.params,
                data="\n".join(lines).encode("utf-8"),
                timeout=self.config.timeout.total_seconds(),
            )
        except requests.RequestException as exc:
            return WriteResult(False, error=f"{type(exc).__name__}: {exc}")
        return _classify(response.status_code, response.text, response.headers)

    def _create_database(self) -> None:
        """``CREATE DATABASE`` is idempotent in InfluxDB 1.x; failure is retried next write."""
        query = f'CREATE DATABASE "{self.config.database}"'
        params = {"q": query}
        if self.config.username:
            params.update(u=self.config.username, p=self.config.password)
        try:
            response = self.session.post(
                self.config.url.rstrip("/") + "/query",
                params=params,
                timeout=self.config.timeout.total_seconds(),
            )
            self._database_checked = response.ok
            if not response.ok:
                log.warning("InfluxDB refused %s: %s", query, response.text[:300])
        except requests.RequestException as exc:
            log.warning("cannot create the InfluxDB database yet: %s", exc)

    def close(self) -> None:
        self.session.close()


class V2Writer:
    """influxdb-client's synchronous write API (InfluxDB 1.8+, 2.x, 3.x): ``/api/v2/write``."""

    def __init__(self, config: InfluxConfig) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.config = config
        self.client = InfluxDBClient(
            url=config.url,
            token=config.token,
            org=config.org,
            timeout=int(config.timeout.total_seconds() * 1000),
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> WriteResult:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.api.write(
                bucket=self.config.bucket,
                org=self.config.org,
                record="\n".join(lines),
                write_precision=cast(WritePrecision, WritePrecision.S),
            )
        except ApiException as exc:
            headers = CaseInsensitiveDict(dict(exc.headers or {}))  # Retry-After, any case
            return _classify(int(exc.status or 0), str(exc.body or exc.reason), headers)
        except (HTTPError, OSError) as exc:
            return WriteResult(False, error=f"{type(exc).__name__}: {exc}")
        return WriteResult(True, 204)

    def close(self) -> None:
        self.api.close()
        self.client.close()


def make_writer(config: InfluxConfig) -> Writer:
    return V1Writer(config) if config.mode == "v1" else V2Writer(config)


# --- the sender --------------------------------------------------------------------------------


@dataclass
class SinkStats:
    """The sink's own counts (self-metrics)."""

    points_written: int = 0
    batches_written: int = 0
    batches_failed: int = 0
    points_refused: int = 0
    #: queued points, as last counted (for the max_pending gate; /metrics counts its own)
    pending: int = 0
    last_error: str = ""
    connected: bool = False
    state_checked: float = field(default=0.0)


class InfluxSink:
    """Sends the outbox to InfluxDB from its own thread until stopped."""

    def __init__(
        self,
        config: InfluxConfig,
        store_path: str,
        resolution: int,
        prefix: str,
        writer: Writer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store_path = store_path
        self.resolution = resolution
        self.lines = LineBuilder(prefix, config.tags)
        self.writer = writer if writer is not None else make_writer(config)
        self.clock = clock
        self.stats = SinkStats()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # the write in flight while the sender reads and builds the next batch
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influxdb-write")
        self._backoff = 0.0
        self._next_wait = 0.0
        self._flushed = True  # the outbox may have changed since the state was last read

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="influxdb", daemon=True)
        self._thread.start()

    def notify(self, *_: object) -> None:
        """A flush queued something (a pipeline listener)."""
        self._flushed = True
        self.wake.set()

    def stop(self) -> None:
        """Try to send what is queued within ``shutdown_timeout``, then stop."""
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(self.config.shutdown_timeout.total_seconds() + 5)
        self._writes.shutdown(wait=False)
        self.writer.close()

    def _run(self) -> None:
        """Send until stopped; an unexpected error (a locked store, a bug) is logged and the
        sender starts over after a pause, since everything it had not finished is still queued."""
        while True:
            outbox = Outbox(self.store_path, self.resolution)
            try:
                self._loop(outbox)
                return
            except Exception:
                log.exception("the InfluxDB sender failed; starting over in 5 s")
            finally:
                outbox.close()
            if self.stopping.wait(5.0):
                return

    def _loop(self, outbox: Outbox) -> None:
        deadline: float | None = None
        while True:
            if self.stopping.is_set() and deadline is None:
                deadline = time.monotonic() + self.config.shutdown_timeout.total_seconds()
            sent = self.drain(outbox, deadline)
            self._refresh_state(outbox)
            if deadline is not None and (sent == 0 or time.monotonic() >= deadline):
                if self.stats.pending:
                    log.warning(
                        "stopping with %d points not yet in InfluxDB; they stay queued in the "
                        "store and go out at the next start",
                        self.stats.pending,
                    )
                return
            if sent > 0:
                continue  # more may be queued: go on at once
            wait = self._next_wait if sent < 0 else 1.0
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            self.wake.wait(wait)
            self.wake.clear()

    def drain(self, outbox: Outbox, deadline: float | None = None) -> int:
        """Send until the outbox is empty (or the deadline passes), keeping one write in flight
        while the next batch is read and built and the last one acknowledged, as a plain loop of
        POSTs keeps InfluxDB busy. Returns what was sent, or -1 if InfluxDB is away (a batch
        read ahead is then dropped and read again later: nothing was acknowledged for it)."""
        in_flight: tuple[Queued, list[tuple[Pending, str]], Future[WriteResult]] | None = None
        after: tuple[int, int] | None = None
        total = 0
        while True:
            self._refresh_state(outbox)
            late = deadline is not None and time.monotonic() >= deadline
            queued = Queued([], 0) if late else outbox.next_batch(self.config.batch_size, after)
            lines = self.prepare(outbox, queued) if queued.rows else []
            if in_flight is not None:
                sent = self.settle(outbox, *in_flight[:2], in_flight[2].result())
                in_flight = None
                if sent < 0:
                    return -1
                total += sent
            if not queued.rows:
                return total
            after = queued.last
            if lines:
                in_flight = (queued, lines, self._writes.submit(self._write, lines))
            else:
                total += len(queued.rows)  # all set aside by prepare()

    # --- one batch -----------------------------------------------------------------------

    def send_batch(self, outbox: Outbox) -> int:
        """Send the oldest queued buckets: their number, 0 if none, -1 if InfluxDB is away."""
        self._refresh_state(outbox)
        queued = outbox.next_batch(self.config.batch_size)
        if not queued.rows:
            return 0
        lines = self.prepare(outbox, queued)
        if not lines:
            return len(queued.rows)
        return self.settle(outbox, queued, lines, self._write(lines))

    def prepare(self, outbox: Outbox, queued: Queued) -> list[tuple[Pending, str]]:
        """The batch's lines; points no line can carry are set aside at once."""
        unknown = {p.series for p in queued.rows if not self.lines.known(p.series)}
        if unknown:
            for series, info in outbox.series_info(unknown).items():
                self.lines.learn(series, info)
        line = self.lines.line
        batch = [(p, text) for p in queued.rows if (text := line(p)) is not None]
        if len(batch) < len(queued.rows):
            self._refuse([p for p in queued.rows if line(p) is None], outbox, queued.seq)
        return batch

    def settle(
        self,
        outbox: Outbox,
        queued: Queued,
        batch: list[tuple[Pending, str]],
        result: WriteResult,
    ) -> int:
        """Act on InfluxDB's answer to a batch: what :meth:`send_batch` returns."""
        if result.ok:
            outbox.acknowledge_batch(queued)
            self._sent(len(batch))
            return len(queued.rows)
        if result.bad_data:
            good, refused = self._bisect(batch)
            outbox.acknowledge(good, queued.seq)
            outbox.mark_failed(refused, queued.seq)
            self._sent(len(good))
            return len(queued.rows)
        self._failed(result, len(batch))
        return -1

    def _sent(self, count: int) -> None:
        self.stats.pending = max(0, self.stats.pending - count)
        self._recovered()

    def _refuse(self, unwritable: Sequence[Pending], outbox: Outbox, seq: int) -> None:
        self.stats.points_refused += len(unwritable)
        log.error(
            "%d points have a tag value InfluxDB line protocol cannot carry (newline, carriage "
            "return, tab or a trailing backslash), set aside; e.g. series %d at %d",
            len(unwritable),
            unwritable[0].series,
            unwritable[0].start,
        )
        outbox.mark_failed(unwritable, seq)

    def _write(self, batch: Sequence[tuple[Pending, str]]) -> WriteResult:
        result = self.writer.write([line for _, line in batch])
        if result.ok:
            self.stats.points_written += len(batch)
            self.stats.batches_written += 1
        return result

    def _bisect(self, batch: Sequence[tuple[Pending, str]]) -> tuple[list[Pending], list[Pending]]:
        """Split a batch InfluxDB refused until each refused line stands alone: (written,
        refused). A good point written twice on the way is harmless: it overwrites itself."""
        if len(batch) == 1:
            self.stats.points_refused += 1
            log.error(
                "InfluxDB refused a point, set aside (it is still in the store): %s", batch[0][1]
            )
            return [], [batch[0][0]]
        half = len(batch) // 2
        good_a, bad_a = self._bisect_half(batch[:half])
        good_b, bad_b = self._bisect_half(batch[half:])
        return good_a + good_b, bad_a + bad_b

    def _bisect_half(
        self, half: Sequence[tuple[Pending, str]]
    ) -> tuple[list[Pending], list[Pending]]:
        result = self._write(half)
        if result.ok:
            return [p for p, _ in half], []
        if result.bad_data:
            return self._bisect(half)
        return [], []  # InfluxDB went away meanwhile: leave them queued

    def _recovered(self) -> None:
        if not self.stats.connected and self.stats.batches_failed:
            log.info("InfluxDB takes writes again")
        self.stats.connected = True
        self._backoff = 0.0

    def _failed(self, result: WriteResult, batch_size: int) -> None:
        self.stats.batches_failed += 1
        self.stats.connected = False
        self.stats.last_error = result.error or f"HTTP {result.status}"
        initial = self.config.retry_initial.total_seconds()
        ceiling = self.config.retry_max.total_seconds()
        self._backoff = min(ceiling, max(initial, self._backoff * 2))
        wait = random.uniform(self._backoff / 2, self._backoff)  # jitter
        if result.retry_after is not None:
            wait = max(wait, min(result.retry_after, ceiling))
        self._next_wait = wait
        log.warning(
            "InfluxDB write failed (%s); its %d points stay queued, retrying in %.1f s",
            self.stats.last_error[:200],
            batch_size,
            wait,
        )

    def accepting(self) -> bool:
        """Whether flushes should still queue changes (the outbox is under its limit)."""
        return self.stats.pending <= self.config.max_pending

    def _refresh_state(self, outbox: Outbox) -> None:
        """Re-count the outbox (for the max_pending gate): after a flush queued more, at most
        once a second, else every 10 s; between counts, acknowledgements are subtracted. The
        self-metrics count it themselves at each scrape."""
        now = self.clock()
        age = now - self.stats.state_checked
        if age < (1.0 if self._flushed else 10.0) and not self.stopping.is_set():
            return
        self._flushed = False
        pending = self.stats.pending = outbox.state()[0]
        self.stats.state_checked = self.clock()  # after the count: it may take a while
        if pending > self.config.max_pending:
            log.warning(
                "the InfluxDB outbox holds %d points, more than influxdb.max_pending (%d): new "
                "changes are no longer queued until it drains",
                pending,
                self.config.max_pending,
            )
