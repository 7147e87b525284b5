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


def _labels_json(labels: Mapping[str, str]) -> str:
    """A series' labels as the store writes them (store.labels_json): sorted keys, no spaces."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


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

    # --- the web pages --------------------------------------------------------------------

    def sums(self, q: BucketQuery, step: int | None = None) -> list[tuple[int, float]]:
        """(start, sum of the matching series' values) per bucket that holds any, oldest
        first; with ``step`` (a multiple of the resolution), per ``step``-long span instead."""
        where, params = self._where(q)
        span = step or q.resolution
        with self._connect() as db:
            found = db.execute(
                f"SELECT (b.start / ?) * ? AS t, sum(b.value) FROM buckets b "
                f"JOIN series s ON s.id = b.series WHERE {where} GROUP BY t ORDER BY t",
                [span, span, *params],
            ).fetchall()
        return [(int(t), float(v)) for t, v in found]

    def top_series(self, q: BucketQuery, limit: int) -> list[tuple[str, dict[str, str], float]]:
        """(metric, labels, sum over the range) of the ``limit`` series with the largest sums
        (ties: by labels), for the counters' "top label values"."""
        where, params = self._where(q)
        with self._connect() as db:
            found = db.execute(
                f"SELECT s.metric, s.labels, sum(b.value) AS total FROM buckets b "
                f"JOIN series s ON s.id = b.series WHERE {where} "
                f"GROUP BY s.id ORDER BY total DESC, s.labels LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [(metric, json.loads(labels), float(total)) for metric, labels, total in found]

    def series_count(self, q: BucketQuery) -> int:
        """How many series have a bucket in the range."""
        where, params = self._where(q)
        with self._connect() as db:
            row = db.execute(
                f"SELECT count(DISTINCT b.series) FROM buckets b "
                f"JOIN series s ON s.id = b.series WHERE {where}",
                params,
            ).fetchone()
        return int(row[0])

    def latest_series(
        self, q: BucketQuery, limit: int
    ) -> list[tuple[str, dict[str, str], int, float]]:
        """(metric, labels, bucket start, value) of each matching series' newest bucket in the
        range, the most recently changed ``limit`` series first (for gauges: latest states)."""
        where, params = self._where(q)
        with self._connect() as db:
            found = db.execute(
                f"SELECT s.metric, s.labels, max(b.start) AS t, b.value FROM buckets b "
                f"JOIN series s ON s.id = b.series WHERE {where} "
                f"GROUP BY s.id ORDER BY t DESC, s.labels LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [(m, json.loads(lab), int(t), float(v)) for m, lab, t, v in found]

    def series_points(
        self, q: BucketQuery, labels: list[dict[str, str]]
    ) -> list[list[tuple[int, float]]]:
        """Each given series' (start, value) buckets in the range, oldest first (a list per
        label set, in the order given): the lines of a gauge's chart."""
        where, params = self._where(q)
        out: list[list[tuple[int, float]]] = []
        with self._connect() as db:
            for wanted in labels:
                found = db.execute(
                    f"SELECT b.start, b.value FROM buckets b JOIN series s ON s.id = b.series "
                    f"WHERE {where} AND s.labels = ? ORDER BY b.start",
                    [*params, _labels_json(wanted)],
                ).fetchall()
                out.append([(int(t), float(v)) for t, v in found])
        return out

    def newest_start(self, plugin: str, metric: str, resolution: int) -> int | None:
        """The newest bucket start of a metric at a resolution (None: it has none): one
        primary-key lookup per series, however many buckets they hold."""
        with self._connect() as db:
            row = db.execute(
                "SELECT max((SELECT max(b.start) FROM buckets b "
                "WHERE b.series = s.id AND b.resolution = ?)) "
                "FROM series s WHERE s.plugin = ? AND s.metric = ?",
                (resolution, plugin, metric),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def last_outages(self) -> dict[str, tuple[float, float, bool]]:
        """Each source's most recent recorded outage: (disconnected at, reconnected at,
        fetched since by the gap filler). An outage is recorded when the source reconnects."""
        with self._connect() as db:
            found = db.execute(
                'SELECT source, start, "end", filled FROM gaps g WHERE start = '
                "(SELECT max(start) FROM gaps WHERE source = g.source)"
            ).fetchall()
        return {source: (start, end, bool(filled)) for source, start, end, filled in found}
