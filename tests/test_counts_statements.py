"""counts.insert_rows: rows in multi-row statements of a bounded set of sizes (so sqlite3's
statement cache holds a few statements a table, not one per flush), every row written once."""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statscache_exporter import counts
from statscache_exporter.aggregate import Series
from statscache_exporter.counts import insert_rows, statement_sizes
from statscache_exporter.plugin import Counter


def test_sizes_are_full_statements_then_powers_of_two_of_the_rest() -> None:
    assert list(statement_sizes(0, 100)) == []
    assert list(statement_sizes(250, 100)) == [100, 100, 32, 16, 2]
    assert list(statement_sizes(64, 100)) == [64]
    assert list(statement_sizes(100, 100)) == [100]


def test_every_row_count_up_to_a_few_statements_adds_up_from_few_sizes() -> None:
    sizes: set[int] = set()
    for n in range(1, 5_000):
        got = list(statement_sizes(n, 1_000))
        assert sum(got) == n
        sizes.update(got)
    assert sizes == {1_000} | {1 << b for b in range(10)}  # 11 statements, whatever n


def test_insert_rows_writes_each_row_once_and_returns_what_each_statement_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    rows = [(i, f"v{i}") for i in range(12_345)]
    prepared: set[str] = set()
    real = counts._values_sql

    def spy(head: str, columns: int, n: int) -> str:
        sql = real(head, columns, n)
        prepared.add(sql)
        return sql

    monkeypatch.setattr(counts, "_values_sql", spy)
    returned = insert_rows(db, "INSERT INTO t (a, b)", rows, " RETURNING a")
    assert sorted(r[0] for r in returned) == list(range(12_345))
    assert db.execute("SELECT a, b FROM t ORDER BY a").fetchall() == rows
    per = counts.PARAMETERS_PER_STATEMENT // 2
    assert len(prepared) == len(set(statement_sizes(12_345, per)))


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.text(max_size=40),  # any Unicode: quotes, backslashes, controls, astral planes
        max_size=4,
    )
)
def test_labels_json_is_what_json_dumps_writes(labels: dict[str, str]) -> None:
    """The store's labels text (its series' identity, UNIQUE (metric, labels), and what the
    REST reader matches) is put together by hand: byte for byte json.dumps' canonical form."""
    names = tuple(labels)
    series = Series("p", Counter("c", "c", names), tuple(labels[n] for n in names))
    expected = json.dumps(labels, sort_keys=True, separators=(",", ":"))
    assert counts.labels_json(series) == expected
