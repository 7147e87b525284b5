"""Reading a datanommer database directly: the whole history, fast.

datanommer.models 1.x keeps every message of the bus in PostgreSQL: ``messages`` (``id``
serial, ``timestamp`` naive UTC, ``msg_id``, ``topic``, ``agent_name``, ``msg`` as JSON text,
``headers`` as JSONB, and the fedmsg-era columns), ``users``/``packages`` (``id``, ``name``) and
the join tables ``users_messages``/``packages_messages`` (``user_id``/``package_id``, ``msg_id``
= ``messages.id``, ``msg_timestamp``). datagrepper serves the same rows, a page at a time.

How it is read (:class:`DatanommerReader`): in ``(timestamp, id)`` order, ``batch_size`` rows a
query, each query starting after the last row read (keyset paging: never ``OFFSET``, so a
batch costs the same at the end of 250 million rows as at the start, and rows stored meanwhile
before the position are never read twice or skipped after it); each row's users and packages
in the same query (``ARRAY(...)`` subqueries over the join tables' ``msg_id`` index: one round
trip a batch, and no list of ids sent back to the server). The session turns PostgreSQL's JIT
off: the planner's cost for a batch is past ``jit_above_cost`` whatever the table's size, and
compiling took ~30 ms a batch for nothing. Memory holds one batch (two when :func:`prefetched`
reads the next one meanwhile). A query that fails (the server gone, a timeout) is tried again
on a new connection after a backoff, from the same position; after ``datanommer.retries``
attempts :class:`DatanommerError` names the range left.

Each row becomes a :class:`~statscache_exporter.message.Message` (:func:`row_message`) at the
row's own time (microseconds), with the users, packages and agent of the database, so by-user
and by-package counts are datanommer's (and datagrepper's). A fedmsg-era row (no headers) and a
fedora-messaging-era row (headers with ``sent-at`` and the schema) are read alike: the
database's columns are the truth for both. The result is the message the pipeline makes of
the same row as datagrepper's ``/raw`` serves it (``from_datagrepper_raw``: an agent the
database lacks is asked of the schema class, as for a ``/raw`` item), except that the time
keeps its microseconds. A row the fast path cannot take as it is (no ``msg_id``, a body that is
not a JSON object, a time in the future) goes to the pipeline as a ``/raw`` item
(:func:`row_item`), which normalizes, identifies or rejects it by the pipeline's own rules.

history.py feeds a reader's rows to the pipeline with its resume point, the next batch read
by a thread of :func:`prefetched` while the pipeline counts the current one (the thread waits
on the server with the GIL released: the query's time on the server is then off the import's).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from statscache_exporter import schemas
from statscache_exporter.config import DatanommerConfig, MessagesConfig
from statscache_exporter.message import Message, Rejected, category_of, loads
from statscache_exporter.sources.backoff import Backoff
from statscache_exporter.text import is_text

if TYPE_CHECKING:
    import psycopg


log = logging.getLogger(__name__)

#: the earliest and latest times a range may name (PostgreSQL takes both as timestamps)
_FIRST = datetime(1970, 1, 1)  # noqa: DTZ001 (datanommer's column is naive UTC)
_LAST = datetime(9999, 12, 31)  # noqa: DTZ001


class DatanommerError(Exception):
    """The database could not be read after every retry; the message names the range left.
    ``position``: where reading stopped (the last row handed over, None: none yet)."""

    def __init__(self, message: str, position: Position | None) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A row's place in ``(timestamp, id)`` order; ``timestamp`` naive UTC as datanommer's."""

    timestamp: datetime
    id: int

    def text(self) -> str:
        return f"{self.timestamp.isoformat(timespec='microseconds')} {self.id}"

    @classmethod
    def parse(cls, text: str) -> Position:
        when, _, ident = text.partition(" ")
        return cls(datetime.fromisoformat(when), int(ident))

    @property
    def epoch(self) -> float:
        return self.timestamp.replace(tzinfo=UTC).timestamp()


def naive_utc(epoch: float) -> datetime:
    """Epoch seconds as datanommer stores a time: naive UTC."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def describe(url: str) -> str:
    """``host:port/database`` of a libpq URL: names the source without its credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "local"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"


# --- a row becomes a message -----------------------------------------------------------------


class Converter:
    """Rows to messages, by the config's ``messages`` rules (environments, schemas, skew)."""

    def __init__(self, messages: MessagesConfig, clock: Callable[[], float] = time.time) -> None:
        self.environments = frozenset(messages.environments)
        self.use_schemas = messages.schemas
        self.max_skew = messages.max_clock_skew.total_seconds()
        self.clock = clock

    def latest(self) -> float:
        """The newest time the pipeline takes now (later is ``future_timestamp``)."""
        return self.clock() + self.max_skew

    def message(
        self,
        when: datetime,
        msg_id: Any,
        topic: Any,
        agent: Any,
        msg: Any,
        headers: Any,
        users: Sequence[str],
        packages: Sequence[str],
        latest: float,
    ) -> Message | dict[str, Any]:
        """One row (``when`` naive UTC, ``msg`` and ``headers`` as JSON text or parsed) as a
        :class:`Message`, or as a ``/raw`` item for the pipeline to judge when it is not a
        plain good one (see the module doc)."""
        aware = when.replace(tzinfo=UTC)
        epoch = aware.timestamp()
        body = _json(msg)
        head = _json(headers) if headers is not None else None
        head = head if isinstance(head, dict) else {}
        if (
            not isinstance(body, dict)
            or not isinstance(msg_id, str)
            or not msg_id
            or not is_text(msg_id)
            or not _good_topic(topic)
            or epoch > latest
        ):
            raw = msg if body is None else body
            return row_item(aware, msg_id, topic, agent, raw, head, users, packages)
        agent = agent if isinstance(agent, str) and agent and is_text(agent) else None
        if agent is None and self.use_schemas and schemas.SCHEMA_HEADER in head:
            agent = schemas.facts_for(topic, body, head, _AGENT_ONLY).agent
        return Message(
            msg_id,
            topic,
            aware,
            body,
            head,
            category_of(topic, self.environments),
            _names(users) if users else (),
            _names(packages) if packages else (),
            agent,
            epoch,
        )


#: what a row without an agent asks of its schema class: the agent alone (the database's
#: users and packages are the truth)
_AGENT_ONLY = (False, False, True)
#: topics seen to be good (a non-blank string, valid UTF-8): the bus has a few thousand
_GOOD_TOPICS: set[str] = set()


def _good_topic(topic: Any) -> bool:
    """Whether ``topic`` is one a message may have (a string, not blank, valid UTF-8);
    remembered for the good ones, which are nearly all."""
    if topic in _GOOD_TOPICS:
        return True
    if not isinstance(topic, str) or not topic.strip() or not is_text(topic):
        return False
    if len(_GOOD_TOPICS) >= 100_000:  # made-up topics must not grow it without bound
        _GOOD_TOPICS.clear()
    _GOOD_TOPICS.add(topic)
    return True


def row_item(
    when: datetime,
    msg_id: Any,
    topic: Any,
    agent: Any,
    body: Any,
    headers: Mapping[str, Any],
    users: Sequence[str],
    packages: Sequence[str],
) -> dict[str, Any]:
    """A row as datagrepper's ``/raw`` serves it, but with its time to the microsecond (an
    ISO 8601 string, which the pipeline reads exactly)."""
    return {
        "msg_id": msg_id,
        "topic": topic,
        "timestamp": when.astimezone(UTC).isoformat(),
        "msg": body,
        "headers": dict(headers),
        "agent_name": agent,
        "username": agent,
        "users": sorted(users),
        "packages": sorted(packages),
    }


def _json(value: Any) -> Any:
    """A JSON column's value: parsed if text (by ``message.loads``: msgspec, with json's
    values and refusals), None if it is not JSON."""
    if not isinstance(value, str | bytes):
        return value
    try:
        return loads(value)
    except Rejected:
        return None


def _names(values: Sequence[str]) -> tuple[str, ...]:
    """As the normalizers keep names: sorted, unique, non-empty, valid UTF-8."""
    if not values:
        return ()
    if all(v.__class__ is str and v and v.isascii() for v in values):  # the usual case
        return tuple(sorted(set(values))) if len(values) > 1 else tuple(values)
    return tuple(sorted({v for v in values if isinstance(v, str) and v and is_text(v)}))


# --- the reader ------------------------------------------------------------------------------

_BATCH = """
SELECT m.id, m.timestamp, m.msg_id, m.topic, m.agent_name, m.msg, m.headers::text,
  ARRAY(SELECT n.name FROM users_messages j JOIN users n ON n.id = j.user_id
        WHERE j.msg_id = m.id AND j.msg_timestamp = m.timestamp),
  ARRAY(SELECT n.name FROM packages_messages j JOIN packages n ON n.id = j.package_id
        WHERE j.msg_id = m.id AND j.msg_timestamp = m.timestamp)
FROM messages m
WHERE m.timestamp >= %(t)s AND (m.timestamp, m.id) > (%(t)s, %(id)s) AND m.timestamp < %(until)s
ORDER BY m.timestamp, m.id
LIMIT %(n)s
"""

#: a batch's row: (id, timestamp, msg_id, topic, agent_name, msg, headers, users, packages)
Row = tuple[int, datetime, Any, Any, Any, Any, Any, list[str], list[str]]


@dataclass
class ReadStats:
    """What a reader did, for summaries and progress."""

    rows: int = 0
    batches: int = 0
    queries: int = 0
    #: queries that failed and were tried again
    retried: int = 0
    connects: int = 0


class DatanommerReader:
    """The rows of ``[since, until)`` after ``after``, in ``(timestamp, id)`` order (see the
    module doc). ``since``/``until``: naive UTC, None for the table's ends."""

    def __init__(
        self,
        url: str,
        config: DatanommerConfig,
        stop: threading.Event | None = None,
        connect: Callable[[], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.url = url
        self.config = config
        self.stop = stop or threading.Event()
        self.stats = ReadStats()
        self._connect = connect or self._new_connection
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def name(self) -> str:
        return describe(self.url)

    def _new_connection(self) -> psycopg.Connection[Any]:
        import psycopg

        options: dict[str, Any] = {
            "connect_timeout": max(1, round(self.config.connect_timeout.total_seconds())),
            "options": f"-c statement_timeout={round(self.config.statement_timeout / _MS)}",
            "application_name": "statscache-exporter",
        }
        if self.config.password and urlsplit(self.url).password is None:
            options["password"] = self.config.password
        conn = psycopg.connect(self.url, autocommit=True, **options)
        conn.execute("SET TIME ZONE 'UTC'")
        with contextlib.suppress(psycopg.errors.UndefinedObject):  # PostgreSQL < 11: no JIT
            conn.execute("SET jit = off")  # see the module doc
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self.stats.connects += 1
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def bounds(self) -> tuple[datetime, datetime] | None:
        """The oldest and newest time in the table (for progress), None when it is empty."""
        row = self._query(
            lambda c: c.execute("SELECT min(timestamp), max(timestamp) FROM messages").fetchone(),
            "the table's first and last times",
            None,
        )
        if row is None or row[0] is None:
            return None
        return row[0], row[1]

    def batches(
        self,
        since: datetime | None,
        until: datetime | None,
        after: Position | None = None,
    ) -> Iterator[list[Row]]:
        """Each batch of rows (with their users and packages), until the range is read."""
        position = after or Position(since or _FIRST, -1)
        if since is not None and position.timestamp < since:
            position = Position(since, -1)
        end = until or _LAST
        while not self.stop.is_set():
            rows = self._read_batch(position, end, until)
            if not rows:
                return
            self.stats.rows += len(rows)
            self.stats.batches += 1
            yield rows
            position = Position(rows[-1][1], rows[-1][0])
            if len(rows) < self.config.batch_size:
                return

    def _read_batch(self, position: Position, end: datetime, until: datetime | None) -> list[Row]:
        params = {
            "t": position.timestamp,
            "id": position.id,
            "until": end,
            "n": self.config.batch_size,
        }

        def read(conn: psycopg.Connection[Any]) -> list[Row]:
            return conn.execute(_BATCH, params).fetchall()

        left = f"{_iso(position.timestamp)} to {_iso(until) if until else 'the end'}"
        rows: list[Row] = self._query(read, f"the rows from {left}", position)
        return rows

    def _query(
        self, run: Callable[[psycopg.Connection[Any]], Any], what: str, position: Position | None
    ) -> Any:
        """``run`` on a connection, tried again on a new one after a backoff when the
        database fails; :class:`DatanommerError` after ``retries`` attempts."""
        import psycopg

        backoff = Backoff(
            self.config.retry_initial.total_seconds(), self.config.retry_max.total_seconds()
        )
        for attempt in range(1, self.config.retries + 1):
            self.stats.queries += 1
            try:
                return run(self._connection())
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self.close()
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if attempt == self.config.retries:
                    raise DatanommerError(
                        f"datanommer {self.name}: could not read {what} after {attempt} "
                        f"attempts, last: {reason}",
                        position,
                    ) from exc
                wait = backoff.next()
                self.stats.retried += 1
                log.warning(
                    "datanommer %s: reading %s failed (%s); attempt %d of %d in %.1f s",
                    self.name, what, reason, attempt + 1, self.config.retries, wait,
                )  # fmt: skip
                if self.stop.wait(wait):
                    raise DatanommerError(
                        f"datanommer {self.name}: stopped while waiting to read {what}", position
                    ) from exc
        raise AssertionError("unreachable")


_MS = timedelta(milliseconds=1)


def _iso(when: datetime) -> str:
    return when.replace(tzinfo=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def prefetched(batches: Iterator[list[Row]]) -> Generator[list[Row], None, None]:
    """``batches``, each next one read by a thread while the caller works on the one it was
    given (at most one batch ahead); what reading raises is raised here, in order. Closing
    the result ends the thread before it returns (after the query under way, if any), so the
    reader's connection is no longer in use when it is closed."""
    ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    done = threading.Event()  # the consumer is gone: the thread puts nothing more

    def put(item: tuple[str, Any]) -> bool:
        while not done.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, who raises it
            put(("error", exc))
        finally:
            closer = getattr(batches, "close", None)
            if closer is not None:
                closer()

    thread = threading.Thread(target=read, name="datanommer-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = ahead.get(timeout=0.1)
            except queue.Empty:
                if not thread.is_alive() and ahead.empty():
                    raise RuntimeError("the prefetch thread ended without a word") from None
                continue
            if kind == "batch":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        done.set()
        thread.join()


def records(
    batches: Iterable[list[Row]], converter: Converter
) -> Generator[tuple[Position, Message | dict[str, Any]], None, None]:
    """Each row as (its position, its message or ``/raw`` item)."""
    message = converter.message
    for rows in batches:
        latest = converter.latest()
        for ident, when, msg_id, topic, agent, msg, headers, users, packages in rows:
            yield (
                Position(when, ident),
                message(when, msg_id, topic, agent, msg, headers, users, packages, latest),
            )


def items(batches: Iterable[list[Row]]) -> Iterator[dict[str, Any]]:
    """Each row as a ``/raw`` item (:func:`row_item`), for a pipeline fed through a queue of
    raw messages (the gap filler's)."""
    for rows in batches:
        for _ident, when, msg_id, topic, agent, msg, headers, users, packages in rows:
            body = _json(msg)
            head = _json(headers) if headers is not None else None
            yield row_item(
                when.replace(tzinfo=UTC),
                msg_id,
                topic,
                agent,
                msg if body is None else body,
                head if isinstance(head, dict) else {},
                users,
                packages,
            )
