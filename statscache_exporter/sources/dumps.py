"""Fedora's daily incremental datanommer dumps, read without a database.

Fedora publishes ``YYYY-MM-DD-datanommer-incremental-csv.tar``: a folder
``YYYY-MM-DD-datanommer-incremental/`` holding ``YYYY-MM-DD-messages.csv``, ``-users.csv``,
``-packages.csv``, ``-users_messages.csv``, ``-packages_messages.csv`` (PostgreSQL ``COPY ... TO
... CSV HEADER`` of datanommer's tables: the columns are named in each file's first line) and
``-alembic_version.txt``. A tar may also be compressed (``.tar.gz``, ``.tar.xz``: whatever
``tarfile`` opens).

How a dump is read (:class:`Dump`): first its name tables and join tables (users and packages
by id, and which ids each message has), then ``messages.csv`` row by row, each row a message
made by the same :class:`~statscache_exporter.sources.datanommer.Converter` as a database row,
so a dump and the database it was made from count alike. Names found in one dump stay known
for the dumps read after it in the same run (whether a day's users file holds only the names
new that day is not documented); a join row naming an id no table gave is counted in
:class:`Unresolved` and named in the summary, and the message is counted without that name:
never fatal. Memory holds one day's join tables and the names.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from statscache_exporter.message import Message
from statscache_exporter.sources.datanommer import Converter

#: a dump's day, in its file or folder name
_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})-datanommer")
#: the columns of messages.csv the exporter reads (a dump has more: crypto, certificate, ...)
MESSAGE_COLUMNS = ("id", "msg_id", "topic", "timestamp", "agent_name", "msg", "headers")
_TABLES = {
    "users": ("users", "id", "name"),
    "packages": ("packages", "id", "name"),
    "users_messages": ("users_messages", "user_id", "msg_id"),
    "packages_messages": ("packages_messages", "package_id", "msg_id"),
}

# message bodies can be far larger than csv's default field limit of 128 KiB
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class DumpError(Exception):
    """A dump cannot be read (not a tar, a table missing, a column missing); names the file."""


@dataclass
class Unresolved:
    """Join rows naming a user or package id that no table of the run gave: id → rows."""

    users: Counter[int] = field(default_factory=Counter)
    packages: Counter[int] = field(default_factory=Counter)

    def total(self) -> int:
        return sum(self.users.values()) + sum(self.packages.values())

    def as_dict(self, most: int = 20) -> dict[str, dict[str, int]]:
        """The most frequent ``most`` of each kind, for the summary."""
        return {
            "users": {str(k): n for k, n in self.users.most_common(most)},
            "packages": {str(k): n for k, n in self.packages.most_common(most)},
        }


@dataclass(frozen=True, slots=True)
class DumpPosition:
    """A row of a dump's messages.csv: its number (from 1) and its time."""

    row: int
    epoch: float

    def text(self) -> str:
        return str(self.row)


def day_of(path: Path) -> date:
    """The day a dump holds, from its file name or else its folder's."""
    found = _DAY.search(path.name)
    if found is None:
        try:
            with tarfile.open(path, "r:*") as tar:
                first = next(iter(tar), None)
        except (tarfile.TarError, OSError) as exc:
            raise DumpError(f"{path}: not a readable tar: {exc}") from None
        found = _DAY.search(first.name) if first is not None else None
    if found is None:
        raise DumpError(
            f"{path}: names no day: expected YYYY-MM-DD-datanommer-incremental-csv.tar, or a "
            "folder YYYY-MM-DD-datanommer-incremental/ inside"
        )
    return date.fromisoformat(found.group(1))


def in_date_order(paths: list[Path]) -> list[Path]:
    """The dumps sorted by their day (then name)."""
    return sorted(paths, key=lambda p: (day_of(p), p.name))


class Dump:
    """One daily dump; ``names``: the user and package names known so far (id → name), shared
    by the dumps of one run and added to by each."""

    def __init__(
        self,
        path: Path,
        names: dict[str, dict[int, str]],
        unresolved: Unresolved,
    ) -> None:
        self.path = path
        self.day = day_of(path)
        self.names = names
        self.unresolved = unresolved

    @property
    def start(self) -> float:
        return datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC).timestamp()

    @property
    def end(self) -> float:
        return self.start + timedelta(days=1).total_seconds()

    def _members(self, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
        """Table name → its CSV member (``...-users_messages.csv`` → ``users_messages``)."""
        found: dict[str, tarfile.TarInfo] = {}
        for member in tar:
            if not member.isfile() or not member.name.endswith(".csv"):
                continue
            stem = member.name.rsplit("/", 1)[-1].removesuffix(".csv")
            table = re.sub(r"^\d{4}-\d{2}-\d{2}-", "", stem)
            if table in (*_TABLES, "messages"):
                found[table] = member
        return found

    def _open(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path, "r:*")
        except (tarfile.TarError, OSError) as exc:
            raise DumpError(f"{self.path}: not a readable tar: {exc}") from None

    def _csv(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[dict[str, str]]:
        raw = tar.extractfile(member)
        if raw is None:
            raise DumpError(f"{self.path}: {member.name} cannot be read")
        text: IO[str] = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        return csv.DictReader(text)

    def _table(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, key: str, value: str
    ) -> Iterator[tuple[str, str]]:
        rows = self._csv(tar, member)
        columns = getattr(rows, "fieldnames", None) or []
        for column in (key, value):
            if column not in columns:
                raise DumpError(
                    f"{self.path}: {member.name} has no column {column!r} (it has "
                    f"{', '.join(columns) or 'none'})"
                )
        for row in rows:
            yield row[key], row[value]

    def _joins(
        self, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], joins: bool = True
    ) -> dict[str, dict[int, list[int]]]:
        """The names tables (into ``self.names``) and each message's user and package ids."""
        found: dict[str, dict[int, list[int]]] = {"users": {}, "packages": {}}
        for kind in ("users", "packages"):
            if kind in members:
                _, key, value = _TABLES[kind]
                table = self.names.setdefault(kind, {})
                for ident, name in self._table(tar, members[kind], key, value):
                    table[int(ident)] = name
            join = f"{kind}_messages"
            if joins and join in members:
                _, key, value = _TABLES[join]
                ids: dict[int, list[int]] = defaultdict(list)
                for ref, msg in self._table(tar, members[join], key, value):
                    ids[int(msg)].append(int(ref))
                found[kind] = ids
        return found

    def load_names(self) -> None:
        """Only the names tables, into ``names`` (a dump read by an earlier run)."""
        with self._open() as tar:
            self._joins(tar, self._members(tar), joins=False)

    def rows(
        self, converter: Converter, after: int = 0, since: float | None = None,
        until: float | None = None,
    ) -> Iterator[tuple[DumpPosition, Message | dict[str, Any]]]:  # fmt: skip
        """Each message row after row ``after`` (and within ``[since, until)`` if given), as
        (its position, its message or ``/raw`` item)."""
        with self._open() as tar:
            members = self._members(tar)
            if "messages" not in members:
                raise DumpError(f"{self.path}: holds no ...-messages.csv")
            joins = self._joins(tar, members)
        users, packages = self.names.get("users", {}), self.names.get("packages", {})
        with self._open() as tar:
            member = tar.getmember(members["messages"].name)
            reader = self._csv(tar, member)
            columns = getattr(reader, "fieldnames", None) or []
            lacking = [c for c in MESSAGE_COLUMNS if c not in columns]
            if lacking:
                raise DumpError(f"{self.path}: {member.name} has no column(s) {', '.join(lacking)}")
            latest = converter.latest()
            for number, row in enumerate(reader, 1):
                if number <= after:
                    continue
                when = datetime.fromisoformat(row["timestamp"])
                epoch = when.replace(tzinfo=UTC).timestamp()
                if (since is not None and epoch < since) or (until is not None and epoch >= until):
                    continue
                ident = int(row["id"])
                message = converter.message(
                    when,
                    row["msg_id"] or None,
                    row["topic"],
                    row["agent_name"] or None,
                    row["msg"],
                    row["headers"] or None,
                    self._resolve(joins["users"].get(ident, ()), users, self.unresolved.users),
                    self._resolve(
                        joins["packages"].get(ident, ()), packages, self.unresolved.packages
                    ),
                    latest,
                )
                yield DumpPosition(number, epoch), message

    @staticmethod
    def _resolve(ids: Any, names: dict[int, str], missing: Counter[int]) -> list[str]:
        out = []
        for ident in ids:
            name = names.get(ident)
            if name is None:
                missing[ident] += 1
            else:
                out.append(name)
        return out
