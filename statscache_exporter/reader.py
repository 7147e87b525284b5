"""Read-only queries of the store for the HTTP threads (the REST API, the landing page, the
self-metrics): each call opens its own read-only connection, so a reader never shares one with
the pipeline thread (WAL lets both run at once)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from statscache_exporter.outbox import outbox_state


@dataclass(frozen=True, slots=True)
class BucketQuery:
    """Which bucket rows the REST API asks for; labels: name → accepted values (OR)."""

    plugin: str
    resolution: int
    start: int
    stop: int
    metrics: tuple[str, ...] = ()
    labels: Mapping[str, tuple[str, ...]] | None = None
    descending: bool = True


class Reader:
    """Read-only queries, for the HTTP threads: each call opens its own connection, so a
    reader never shares one with the pipeline thread (WAL lets both run at once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # a URI, for mode=ro; '?', '#' and '%' in the path must be percent-encoded in it
        uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _where(q: BucketQuery) -> tuple[str, list[Any]]:
        clauses = ["s.plugin = ?", "b.resolution = ?", "b.start >= ?", "b.start <= ?"]
        params: list[Any] = [q.plugin, q.resolution, q.start, q.stop]
        if q.metrics:
            clauses.append(f"s.metric IN ({','.join('?' * len(q.metrics))})")
            params.extend(q.metrics)
        for name, values in (q.labels or {}).items():
            clauses.append(f"json_extract(s.labels, ?) IN ({','.join('?' * len(values))})")
            params.append(f'$."{name}"')
            params.extend(values)
        return " AND ".join(clauses), params

    def outbox_state(self) -> tuple[int, int, float | None]:
        """The InfluxDB outbox as it is now: (pending, failed, oldest pending's queue time)."""
        with self._connect() as db:
            return outbox_state(db)

    def ping(self) -> None:
        """Raise if the store cannot be opened and read."""
        with self._connect() as db:
            db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()

    def count(self, q: BucketQuery) -> int:
        where, params = self._where(q)
        with self._connect() as db:
            row = db.execute(
                f"SELECT count(*) FROM buckets b JOIN series s ON s.id = b.series WHERE {where}",
                params,
            ).fetchone()
        return int(row[0])

    def rows(
        self, q: BucketQuery, offset: int, limit: int
    ) -> list[tuple[int, str, dict[str, str], float]]:
        """(bucket start, metric, labels, value), by start then metric and labels, so that
        pages are stable."""
        where, params = self._where(q)
        direction = "DESC" if q.descending else "ASC"
        with self._connect() as db:
            found = db.execute(
                f"SELECT b.start, s.metric, s.labels, b.value FROM buckets b "
                f"JOIN series s ON s.id = b.series WHERE {where} "
                f"ORDER BY b.start {direction}, s.metric, s.labels LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [(start, name, json.loads(labels), value) for start, name, labels, value in found]
