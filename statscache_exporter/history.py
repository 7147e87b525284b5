"""Importing history: a datanommer database or Fedora's CSV dumps into the store, resumable.

``statscache-exporter import`` runs one of these into the same pipeline as ``replay`` (dedup by
id, every plugin, aggregation, flushes):

- :func:`import_database`: the rows of a range of a datanommer database
  (sources/datanommer.py), in ``(timestamp, id)`` order;
- :func:`import_dumps`: Fedora's daily CSV dumps (sources/dumps.py), in date order.

Resuming: before handing a message over, :func:`import_rows` tells the pipeline the reader's
position (``pipeline.resume(name, position)``). The pipeline commits the last position it was
told with the next flush, in the same transaction as the counts of every message before it,
so after a kill at any moment the store's resume point is exactly the last message whose counts
are stored, and the same command again starts right after it: nothing skipped, nothing read
twice. ``name`` holds the source and the range (:func:`database_name`, :func:`dump_name`), so
two different imports never share a resume point. An import does not move the checkpoint
``covered_until``: a range of history says nothing about what came before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from statscache_exporter.message import Message
from statscache_exporter.sources.datanommer import (
    Converter,
    DatanommerError,
    DatanommerReader,
    Position,
    describe,
    naive_utc,
    prefetched,
    records,
)
from statscache_exporter.sources.dumps import Dump, Unresolved, in_date_order

if TYPE_CHECKING:
    from statscache_exporter.pipeline import Pipeline

log = logging.getLogger(__name__)

#: the pipeline's name for messages an import hands over (stats, summaries)
SOURCE = "import"
#: messages between two progress reports
EVERY = 5000

Progress = Callable[..., None]


class Place(Protocol):
    """Where a reader is: the text of its resume point, and the time of its row."""

    def text(self) -> str: ...

    @property
    def epoch(self) -> float: ...


class ImportError_(Exception):
    """An import stopped on a source that failed; the message names the range left and the
    resume point committed before it."""


@dataclass
class ImportStats:
    """An import's progress: messages handed over, and the time range done and left."""

    start: float | None = None  # epoch seconds: the range's first and last times
    end: float | None = None
    position: float | None = None  # the time of the last message handed over
    messages: int = 0
    resumed_from: str | None = None
    started: float = field(default_factory=time.monotonic)

    def fraction(self) -> float:
        if self.start is None or self.end is None or self.position is None:
            return 0.0
        span = self.end - self.start
        return 1.0 if span <= 0 else min(1.0, max(0.0, (self.position - self.start) / span))

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.messages / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        done = self.fraction()
        if done <= 0:
            return None
        return (time.monotonic() - self.started) * (1 - done) / done

    def summary(self) -> str:
        from statscache_exporter.backfill import span_text

        eta = self.eta()
        if self.start is None or self.end is None or self.position is None:
            done = left = "?"
        else:
            done = span_text(max(0.0, self.position - self.start))
            left = span_text(max(0.0, self.end - self.position))
        return (
            f"{self.messages:,} messages, {done} of history done, {left} left, "
            f"{self.rate():,.0f} msg/s, ETA {'?' if eta is None else span_text(eta)}"
        )


def import_rows(
    pipeline: Pipeline,
    rows: Iterable[tuple[Place, Message | dict[str, Any]]],
    name: str,
    stop: threading.Event,
    stats: ImportStats,
    progress: Progress | None = None,
    every: int = EVERY,
) -> bool:
    """Hand each (position, message) to the pipeline, its position told first (see the module
    doc); True if every row was handed over, False if stopped."""
    resume, process, handle = pipeline.resume, pipeline.process, pipeline.handle
    count = 0
    position: Place | None = None
    try:
        for position, item in rows:
            if stop.is_set():
                return False
            resume(name, position.text())
            if isinstance(item, Message):
                process(item, SOURCE)
            else:
                handle(item, SOURCE)
            count += 1
            if count == every:
                stats.messages += count
                count = 0
                stats.position = position.epoch
                if progress is not None:
                    progress(stats)
    finally:
        stats.messages += count
        if position is not None:
            stats.position = position.epoch
    return not stop.is_set()


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def database_name(url: str, since: float | None, until: float | None) -> str:
    """The resume point's name of an import of ``[since, until)`` from the database at
    ``url`` (host, port and database: no credentials)."""
    a = _iso(since) if since is not None else "start"
    b = _iso(until) if until is not None else "end"
    return f"import datanommer {describe(url)} {a} {b}"


def dump_name(path: Path, since: float | None, until: float | None) -> str:
    a = _iso(since) if since is not None else "start"
    b = _iso(until) if until is not None else "end"
    return f"import dump {path.name} {a} {b}"


@dataclass
class ImportResult:
    """What an import did, for the summary."""

    complete: bool
    stats: ImportStats
    resume_point: str | None
    details: dict[str, Any] = field(default_factory=dict)


def import_database(
    pipeline: Pipeline,
    url: str,
    since: float | None,
    until: float | None,
    stop: threading.Event,
    progress: Progress | None = None,
    connect: Callable[[], Any] | None = None,
) -> ImportResult:
    """``[since, until)`` of the database at ``url`` (None: the table's ends) into the
    pipeline, from the resume point of an earlier run of the same import, if any. Raises
    :class:`ImportError_` when the database keeps failing (what came before is committed)."""
    config = pipeline.config
    name = database_name(url, since, until)
    point = pipeline.store.resume_point(name)
    after = Position.parse(point) if point else None
    stats = ImportStats(resumed_from=point)
    reader = DatanommerReader(url, config.datanommer, stop, connect)
    lo = naive_utc(since) if since is not None else None
    hi = naive_utc(until) if until is not None else None
    if point:
        log.info("import from datanommer %s: resuming after %s", reader.name, point)
    try:
        try:
            bounds = reader.bounds()
            if bounds is not None:
                stats.start = (
                    since if since is not None else bounds[0].replace(tzinfo=UTC).timestamp()
                )
                stats.end = (
                    until if until is not None else bounds[1].replace(tzinfo=UTC).timestamp()
                )
            stats.position = after.epoch if after is not None else stats.start
            batches = prefetched(reader.batches(lo, hi, after))
            rows = records(batches, Converter(config.messages, pipeline.clock))
            try:
                complete = import_rows(pipeline, rows, name, stop, stats, progress)
            finally:  # the prefetch thread ends before the reader's connection is closed
                rows.close()
                batches.close()
        except DatanommerError as exc:
            pipeline.flush()  # what was handed over, and its resume point, are kept
            where = pipeline.store.resume_point(name)
            raise ImportError_(
                f"import stopped: {exc}; the resume point stays "
                f"{'at ' + where if where else 'at the start of the range'} (committed): run "
                "the same command again to go on from there"
            ) from exc
    finally:
        reader.close()
    pipeline.flush()
    if progress is not None:
        progress(stats, done=True)
    read = reader.stats
    return ImportResult(
        complete and not stop.is_set(),
        stats,
        pipeline.store.resume_point(name),
        {
            "source": f"datanommer {reader.name}",
            "range": [_iso(since) if since is not None else None,
                      _iso(until) if until is not None else None],
            "batches": read.batches,
            "queries": read.queries,
            "queries_retried": read.retried,
            "connections": read.connects,
        },
    )  # fmt: skip


def import_dumps(
    pipeline: Pipeline,
    paths: Iterable[Path],
    since: float | None,
    until: float | None,
    stop: threading.Event,
    progress: Progress | None = None,
) -> ImportResult:
    """Fedora's daily CSV dumps into the pipeline, in date order, each from its own resume
    point; a reference no table resolves is counted (see sources/dumps.py)."""
    converter = Converter(pipeline.config.messages, pipeline.clock)
    names: dict[str, dict[int, str]] = {}
    unresolved = Unresolved()
    dumps = [Dump(p, names, unresolved) for p in in_date_order(list(paths))]
    stats = ImportStats()
    if dumps:
        stats.start = since if since is not None else dumps[0].start
        stats.end = until if until is not None else dumps[-1].end
        stats.position = stats.start
    done: list[str] = []
    resumed: dict[str, str] = {}
    complete = True
    for dump in dumps:
        name = dump_name(dump.path, since, until)
        point = pipeline.store.resume_point(name)
        if point is not None:
            resumed[dump.path.name] = point
        if point == "done":  # read already: its names still count for the dumps after it
            dump.load_names()
            rows: Iterable[tuple[Place, Message | dict[str, Any]]] = ()
        else:
            rows = dump.rows(converter, int(point) if point else 0, since, until)
        if not import_rows(pipeline, rows, name, stop, stats, progress):
            complete = False
            break
        pipeline.resume(name, "done")
        done.append(dump.path.name)
    pipeline.flush()
    if unresolved.total():
        log.warning(
            "import: %d references to users or packages no table of the dumps resolves "
            "(counted without them): %s",
            unresolved.total(),
            unresolved.as_dict(5),
        )
    if progress is not None:
        progress(stats, done=True)
    stats.resumed_from = ", ".join(f"{k} after row {v}" for k, v in resumed.items()) or None
    return ImportResult(
        complete and not stop.is_set(),
        stats,
        None,
        {
            "source": "dumps",
            "dumps": [d.path.name for d in dumps],
            "dumps_done": done,
            "unresolved_total": unresolved.total(),
            "unresolved": unresolved.as_dict(),
        },
    )
