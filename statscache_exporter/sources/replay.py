"""Replay: messages from files, for history, tests and demos.

A file is either JSON Lines (one value per line) or one JSON document. Each value is a message
in any of the four shapes, a datagrepper response page (``{"raw_messages": [...]}``), or a list
of those. gzip files are recognised by their magic bytes, whatever their name. A line that is
not JSON is handed on as text, and one whose bytes are not UTF-8 as those bytes, so the pipeline
rejects and counts it (``not_json``) as it does the same bytes from the bus.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from statscache_exporter.sources import SourceContext

_GZIP_MAGIC = b"\x1f\x8b"


class ReplayError(OSError):
    """A replay file cannot be opened or read; the message names it."""


def open_text(path: Path) -> IO[str]:
    try:
        with path.open("rb") as probe:
            magic = probe.read(2)
        if magic == _GZIP_MAGIC:
            return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
        return path.open("r", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def read(path: str | Path) -> Iterator[Any]:
    """Every message in one file, in file order: parsed values, or raw text for bad lines."""
    p = Path(path)
    try:
        with open_text(p) as fh:
            first = _first_line(fh)
            if first is None:
                return
            try:
                value = json.loads(first)
            except ValueError:
                value = None
            if value is None and first.lstrip().startswith(("{", "[")):
                text = first + fh.read()
                if _not_utf8(text):
                    yield from _lines(text.splitlines(keepends=True))
                    return
                try:
                    document = json.loads(text)
                except (ValueError, RecursionError):
                    # not one document: JSON Lines whose first line is broken
                    yield from _lines(text.splitlines(keepends=True))
                    return
                yield from _expand(document)
                return
            yield from _lines(_chain(first, fh))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ReplayError(f"{p}: cannot read: {exc}") from exc


def _first_line(fh: IO[str]) -> str | None:
    for line in fh:
        if line.strip():
            return line
    return None


def _lines(lines: Iterable[str]) -> Iterator[Any]:
    for line in lines:
        if not line.strip():
            continue
        if _not_utf8(line):  # read with surrogateescape: hand on the bytes as they were
            yield line.rstrip("\n").encode("utf-8", "surrogateescape")
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            yield line.rstrip("\n")  # rejected downstream as not_json
            continue
        yield from _expand(value)


def _not_utf8(text: str) -> bool:
    """Whether text read with ``errors="surrogateescape"`` held bytes that are not UTF-8."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _expand(value: Any) -> Iterator[Any]:
    """A datagrepper page or a list yields its messages; anything else is one message."""
    if isinstance(value, dict) and isinstance(value.get("raw_messages"), list):
        yield from value["raw_messages"]
    elif isinstance(value, list):
        for item in value:
            yield from _expand(item)
    else:
        yield value


class ReplaySource:
    """Replays files once, in order, as fast as the pipeline takes them."""

    def __init__(self, paths: Iterable[str | Path], name: str = "replay") -> None:
        self.paths = [Path(p) for p in paths]
        self.name = name

    def run(self, ctx: SourceContext) -> None:
        for path in self.paths:
            for item in read(path):
                if ctx.stop.is_set():
                    return
                ctx.emit(item)
