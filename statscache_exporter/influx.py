"""The InfluxDB sink: every base-resolution bucket written as a point, nothing lost when
InfluxDB is away.

Schema: one measurement per plugin metric (``<prefix><metric>``, like the Prometheus names),
the labels and the configured global tags as tags, the bucket start as the time (precision:
seconds). A counter bucket carries its full count as the integer field ``count``, a gauge its
value as the float field ``value``. InfluxDB overwrites a point with the same series and time,
so a bucket that changes is simply written again with its new full value, and a batch sent
twice is harmless.

Delivery: the flush that changes a bucket also queues its line in the store's outbox, in the
same transaction (the series' keys come from :class:`LineKeys`). This sender, a thread with its
own SQLite connection, reads the oldest queued lines as one request body, writes them, and
deletes them once acknowledged (``outbox.py``). Connection errors, 5xx and 429 are retried
with exponential backoff and jitter (``Retry-After`` honoured); a 400 is bisected down to the
lines InfluxDB refuses, which are logged and set aside, so they never block the rest. Message
processing never waits for it.
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

from statscache_exporter.config import Config, InfluxConfig
from statscache_exporter.outbox import Outbox, OutboxStats, OutboxWriter, Queued

log = logging.getLogger(__name__)

#: acknowledged batches between checkpoints of the store's WAL while a backlog drains
CHECKPOINT_EVERY = 100


# --- lines -------------------------------------------------------------------------------------


def representable(tag_value: str) -> bool:
    """Whether InfluxDB 1.x line protocol carries this tag value faithfully. It has no escape
    for newline, carriage return or tab (Point writes them as two characters, which InfluxDB
    stores as such), and a trailing backslash escapes the separator that follows it: such a
    point would land in another series, so it is refused instead."""
    return not (any(c in tag_value for c in "\n\r\t") or tag_value.endswith("\\"))


class LineKeys:
    """The escaped measurement and tags of each series: what the store puts before a point's
    field and time in its line (see store.py, ``influx_keys``). Built with influxdb-client's
    ``Point``, once per series (about 12 µs)."""

    def __init__(self, prefix: str, tags: Mapping[str, str]) -> None:
        self.prefix = prefix
        self.tags = dict(tags)

    @property
    def fingerprint(self) -> str:
        """What the keys depend on: stored keys built under another one are rebuilt."""
        return json.dumps([self.prefix, sorted(self.tags.items())])

    def series_key(self, metric: str, labels: str) -> str | None:
        """``<measurement>[,<tag>=<value>...]`` for a metric and its labels (JSON), or None if
        line protocol cannot carry its tags faithfully."""
        tags = {**self.tags, **json.loads(labels)}
        if any(not representable(value) for value in tags.values()):
            log.error(
                "series %s%s has a tag value InfluxDB line protocol cannot carry (newline, "
                "carriage return, tab or a trailing backslash): its points are set aside",
                metric,
                labels,
            )
            return None
        point = Point(self.prefix + metric)
        for name, value in tags.items():
            point.tag(name, value)
        # "<measurement>[,tags] <field> <time>": the key is all before the last two spaces
        # (escaped spaces inside it are preceded by a backslash, the last two are not).
        line = str(point.field("count", 0).time(0, WritePrecision.S).to_line_protocol())
        return line.rsplit(" ", 2)[0]


# --- writers -----------------------------------------------------------------------------------


def outbox_writer(config: Config) -> OutboxWriter:
    """The store's flush hook that queues the base buckets' lines for this sink."""
    keys = LineKeys(config.prometheus.prefix, config.influxdb.tags)
    return OutboxWriter(
        config.resolutions()[0], keys.fingerprint, keys.series_key, config.influxdb.batch_size
    )


@dataclass(frozen=True)
class WriteResult:
    """How a write went: ok, refused for its data (``bad_data``), or to retry."""

    ok: bool
    status: int | None = None
    bad_data: bool = False
    retry_after: float | None = None
    error: str = ""


class Writer(Protocol):
    def write(self, body: str) -> WriteResult:
        """POST lines (one request body, lines joined by newlines)."""
        ...

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

    def write(self, body: str) -> WriteResult:
        if not self._database_checked:
            self._create_database()
        try:
            response = self.session.post(
                self.url,
                params=self.params,
                data=body.encode("utf-8"),
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

    def write(self, body: str) -> WriteResult:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.api.write(
                bucket=self.config.bucket,
                org=self.config.org,
                record=body,
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
        writer: Writer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store_path = store_path
        self.writer = writer if writer is not None else make_writer(config)
        self.clock = clock
        self.stats = SinkStats()
        #: what the store's side of the outbox counted (set by pipeline.influx_sink_for)
        self.queued = OutboxStats()
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
            outbox = Outbox(self.store_path)
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
            if sent != 0:
                outbox.checkpoint()  # what the acknowledgements wrote, now that InfluxDB rests
            self._refresh_state(outbox)
            if deadline is not None and (sent == 0 or time.monotonic() >= deadline):
                pending = outbox.state()[0]
                if pending:
                    log.warning(
                        "stopping with %d points not yet in InfluxDB; they stay queued in the "
                        "store and go out at the next start",
                        pending,
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
        """Send until the outbox is empty (or the deadline passes), keeping a write in flight
        while the next batch is read and the last one acknowledged, as a plain loop of POSTs
        keeps InfluxDB busy. Returns what was sent, or -1 if InfluxDB is away (a batch read
        ahead is then dropped and read again later: nothing was acknowledged for it)."""
        in_flight: tuple[Queued, Future[WriteResult]] | None = None
        after: int | None = None
        total = acknowledged = 0
        while True:
            late = deadline is not None and time.monotonic() >= deadline
            ahead = None if late else outbox.next_batch(self.config.batch_size, after)
            if ahead is not None:
                after = ahead.last
            if in_flight is not None:
                batch, future = in_flight
                result = future.result()
                in_flight = None
                if result.ok and ahead is not None:  # send it before acknowledging this one
                    in_flight, ahead = (ahead, self._writes.submit(self._write, ahead)), None
                sent = self.settle(outbox, batch, result)
                if sent < 0:
                    return -1
                total += sent
                acknowledged += 1
                if acknowledged % CHECKPOINT_EVERY == 0:
                    outbox.checkpoint()
            if ahead is not None:
                in_flight = (ahead, self._writes.submit(self._write, ahead))
            self._refresh_state(outbox)  # while a write is in flight
            if in_flight is None:
                return total

    # --- one batch -----------------------------------------------------------------------

    def send_batch(self, outbox: Outbox) -> int:
        """Send the oldest queued points: their number, 0 if none, -1 if InfluxDB is away."""
        self._refresh_state(outbox)
        batch = outbox.next_batch(self.config.batch_size)
        if batch is None:
            return 0
        return self.settle(outbox, batch, self._write(batch))

    def settle(self, outbox: Outbox, batch: Queued, result: WriteResult) -> int:
        """Act on InfluxDB's answer to a batch: what :meth:`send_batch` returns."""
        if result.ok:
            outbox.acknowledge_batch(batch)
            self._sent(batch.count)
            return batch.count
        if result.bad_data:
            split = self._bisect(batch.lines())
            if split is not None:
                good, refused = split
                outbox.acknowledge_batch(batch, refused)
                for line in refused:
                    log.error("InfluxDB refused a point, set aside (it is in the store): %s", line)
                self.stats.points_refused += len(refused)
                self._sent(len(good))
                return batch.count
            result = WriteResult(False, error="InfluxDB went away while a refused batch was split")
        self._failed(result, batch.count)
        return -1

    def _sent(self, count: int) -> None:
        self.stats.pending = max(0, self.stats.pending - count)
        self._recovered()

    def _write(self, batch: Queued) -> WriteResult:
        return self._counted(self.writer.write(batch.body), batch.count)

    def _counted(self, result: WriteResult, points: int) -> WriteResult:
        if result.ok:
            self.stats.points_written += points
            self.stats.batches_written += 1
        return result

    def _bisect(self, lines: Sequence[str]) -> tuple[list[str], list[str]] | None:
        """Split lines InfluxDB refused until each refused line stands alone: (written,
        refused), or None if InfluxDB went away meanwhile (the batch stays queued, to be split
        again). A good line written twice on the way is harmless: it overwrites itself."""
        if len(lines) == 1:
            return [], [lines[0]]
        half = len(lines) // 2
        first = self._bisect_half(lines[:half])
        second = self._bisect_half(lines[half:]) if first is not None else None
        if first is None or second is None:
            return None
        return first[0] + second[0], first[1] + second[1]

    def _bisect_half(self, half: Sequence[str]) -> tuple[list[str], list[str]] | None:
        result = self._counted(self.writer.write("\n".join(half)), len(half))
        if result.ok:
            return list(half), []
        if result.bad_data:
            return self._bisect(half)
        return None

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
        every 5 s, else every 30 s (a count scans the outbox); between counts, acknowledgements
        are subtracted. The self-metrics count it themselves at each scrape."""
        now = self.clock()
        age = now - self.stats.state_checked
        if age < (5.0 if self._flushed else 30.0):
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
