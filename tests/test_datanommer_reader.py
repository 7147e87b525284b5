"""The datanommer reader's parts that need no database: the prefetching of batches
(``prefetched``: order, errors, closing) and the names and topics rules of the fast path.
The reader against a real PostgreSQL is tests/test_import_datanommer.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from statscache_exporter.sources.datanommer import _good_topic, _names, prefetched


def test_prefetched_gives_every_batch_in_order() -> None:
    batches = [[(i,)] for i in range(50)]
    assert list(prefetched(iter(batches))) == batches  # type: ignore[arg-type]


def test_prefetched_reads_at_most_one_batch_ahead() -> None:
    read: list[int] = []

    def source() -> Iterator[list[tuple[int]]]:
        for i in range(10):
            read.append(i)
            yield [(i,)]

    got = prefetched(source())  # type: ignore[arg-type]
    assert next(got) == [(0,)]
    deadline = time.monotonic() + 10
    while len(read) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time for the thread to run further ahead, if it would
    # batch 0 handed over, batch 1 waiting in the queue, batch 2 read and waiting to be put
    assert read == [0, 1, 2]
    got.close()


def test_what_reading_raises_is_raised_after_the_batches_before_it() -> None:
    def source() -> Iterator[list[tuple[int]]]:
        yield [(1,)]
        raise ConnectionError("the server went away")

    got = prefetched(source())  # type: ignore[arg-type]
    assert next(got) == [(1,)]
    with pytest.raises(ConnectionError, match="the server went away"):
        next(got)


def test_closing_ends_the_thread_and_closes_the_batches() -> None:
    closed = threading.Event()

    def source() -> Iterator[list[tuple[int]]]:
        try:
            i = 0
            while True:
                i += 1
                yield [(i,)]
        finally:
            closed.set()

    before = {t.ident for t in threading.enumerate()}
    got = prefetched(source())  # type: ignore[arg-type]
    assert next(got) == [(1,)]
    got.close()
    assert closed.is_set()  # closed before close() returned
    left = [t for t in threading.enumerate() if t.ident not in before]
    assert [t.name for t in left if t.name == "datanommer-prefetch"] == []


def test_names_are_sorted_unique_and_only_good_text() -> None:
    assert _names([]) == ()
    assert _names(["b", "a", "b"]) == ("a", "b")
    assert _names(["solo"]) == ("solo",)
    assert _names(["zoë", "", "a", "bad\udcff"]) == ("a", "zoë")


def test_a_topic_is_good_when_a_non_blank_valid_text() -> None:
    assert _good_topic("org.fedoraproject.prod.buildsys.build.state.change")
    assert _good_topic("org.fedoraproject.prod.buildsys.build.state.change")  # remembered
    assert not _good_topic("   ")
    assert not _good_topic("")
    assert not _good_topic(None)
    assert not _good_topic(b"bytes.topic")
    assert not _good_topic("bad\udcff.topic")
