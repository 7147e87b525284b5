"""Reading a datanommer database directly: the whole history, fast.

datanommer.models 1.x keeps every message of the bus in PostgreSQL: ``messages`` (``id``
serial, ``timestamp`` naive UTC, ``msg_id``, ``topic``, ``agent_name``, ``msg`` as JSON text,
``headers`` as JSONB, and the fedmsg-era columns), ``users``/``packages`` (``id``, ``name``) and
the join tables ``users_messages``/``packages_messages`` (``user_id``/``package_id``, ``msg_id``
= ``messages.id``, ``msg_timestamp``). datagrepper serves the same rows, a page at a time.

How it is read (:class:`DatanommerReader`): in ``(timestamp, id)`` order, ``batch_size`` rows a
query, each query starting after the last row read (keyset paging: never ``OFFSET``, so a
batch costs the same at the end of 250 million rows as at the start, and rows stored meanwhile
before the position are never read twice or skipped after it); the users and packages of a
batch in one query per join table. Memory holds one batch. A query that fails (the server gone,
a timeout) is tried again on a new connection after a backoff, from the same position; after
``datanommer.retries`` attempts :class:`DatanommerError` names the range left.

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

history.py feeds a reader's rows to the pipeline with its resume point.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from statscache_exporter import schemas
from statscache_exporter.config import DatanommerConfig, MessagesConfig
from statscache_exporter.message import Message, category_of
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
        body = _json(msg)
        head = _json(headers) if headers is not None else None
        head = head if isinstance(head, dict) else {}
        if (
            not isinstance(body, dict)
            or not isinstance(msg_id, str)
            or not msg_id
            or not is_text(msg_id)
            or not isinstance(topic, str)
            or not topic.strip()
            or not is_text(topic)
            or aware.timestamp() > latest
        ):
            raw = msg if body is None else body
            return row_item(aware, msg_id, topic, agent, raw, head, users, packages)
        agent = agent if isinstance(agent, str) and agent and is_text(agent) else None
        if agent is None and self.use_schemas:
            agent = schemas.facts_for(topic, body, head).agent
        return Message(
            id=msg_id,
            topic=topic,
            timestamp=aware,
            body=body,
            headers=head,
            category=category_of(topic, self.environments),
            usernames=_names(users),
            packages=_names(packages),
            agent=agent,
        )


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
    """A JSON column's value: parsed if text, None if it is not JSON."""
    if not isinstance(value, str | bytes):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _names(values: Sequence[str]) -> tuple[str, ...]:
    """As the normalizers keep names: sorted, unique, non-empty, valid UTF-8."""
    if not values:
        return ()
    return tuple(sorted({v for v in values if isinstance(v, str) and v and is_text(v)}))


# --- the reader ------------------------------------------------------------------------------

_BATCH = """
SELECT id, timestamp, msg_id, topic, agent_name, msg, headers::text
FROM messages
WHERE timestamp >= %(t)s AND (timestamp, id) > (%(t)s, %(id)s) AND timestamp < %(until)s
ORDER BY timestamp, id
LIMIT %(n)s
"""

_NAMES = """
SELECT j.msg_id, j.msg_timestamp, n.name
FROM {join} j JOIN {names} n ON n.id = j.{key}
WHERE j.msg_id = ANY(%(ids)s) AND j.msg_timestamp BETWEEN %(lo)s AND %(hi)s
"""

#: a batch's rows: (position, id, timestamp, msg_id, topic, agent_name, msg, headers)
Row = tuple[int, datetime, Any, Any, Any, Any, Any]
Names = dict[tuple[int, datetime], list[str]]


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
    ) -> Iterator[tuple[list[Row], Names, Names]]:
        """Each batch of rows with its users and packages, until the range is read."""
        position = after or Position(since or _FIRST, -1)
        if since is not None and position.timestamp < since:
            position = Position(since, -1)
        end = until or _LAST
        while not self.stop.is_set():
            batch = self._read_batch(position, end, until)
            if not batch[0]:
                return
            rows = batch[0]
            self.stats.rows += len(rows)
            self.stats.batches += 1
            yield batch
            position = Position(rows[-1][1], rows[-1][0])
            if len(rows) < self.config.batch_size:
                return

    def _read_batch(
        self, position: Position, end: datetime, until: datetime | None
    ) -> tuple[list[Row], Names, Names]:
        def read(conn: psycopg.Connection[Any]) -> tuple[list[Row], Names, Names]:
            params = {"t": position.timestamp, "id": position.id, "until": end}
            rows: list[Row] = conn.execute(
                _BATCH, {**params, "n": self.config.batch_size}
            ).fetchall()
            if not rows:
                return rows, {}, {}
            ids = [r[0] for r in rows]
            span = {"ids": ids, "lo": rows[0][1], "hi": rows[-1][1]}
            users = self._names(conn, "users_messages", "users", "user_id", span)
            packages = self._names(conn, "packages_messages", "packages", "package_id", span)
            return rows, users, packages

        left = f"{_iso(position.timestamp)} to {_iso(until) if until else 'the end'}"
        batch: tuple[list[Row], Names, Names] = self._query(read, f"the rows from {left}", position)
        return batch

    @staticmethod
    def _names(
        conn: psycopg.Connection[Any], join: str, names: str, key: str, span: Mapping[str, Any]
    ) -> Names:
        found: Names = defaultdict(list)
        sql = _NAMES.format(join=join, names=names, key=key)
        for msg, when, name in conn.execute(sql, span):
            found[(msg, when)].append(name)
        return found

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


def records(
    batches: Iterable[tuple[list[Row], Names, Names]], converter: Converter
) -> Iterator[tuple[Position, Message | dict[str, Any]]]:
    """Each row as (its position, its message or ``/raw`` item)."""
    for rows, users, packages in batches:
        latest = converter.latest()
        for ident, when, msg_id, topic, agent, msg, headers in rows:
            key = (ident, when)
            yield (
                Position(when, ident),
                converter.message(
                    when,
                    msg_id,
                    topic,
                    agent,
                    msg,
                    headers,
                    users.get(key, ()),
                    packages.get(key, ()),
                    latest,
                ),
            )


def items(batches: Iterable[tuple[list[Row], Names, Names]]) -> Iterator[dict[str, Any]]:
    """Each row as a ``/raw`` item (:func:`row_item`), for a pipeline fed through a queue of
    raw messages (the gap filler's)."""
    for rows, users, packages in batches:
        for ident, when, msg_id, topic, agent, msg, headers in rows:
            key = (ident, when)
            body = _json(msg)
            head = _json(headers) if headers is not None else None
            yield row_item(
                when.replace(tzinfo=UTC),
                msg_id,
                topic,
                agent,
                msg if body is None else body,
                head if isinstance(head, dict) else {},
                users.get(key, ()),
                packages.get(key, ()),
            )
