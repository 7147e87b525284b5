"""The cached exposition: byte for byte what prometheus-client writes, rebuilt only on change,
TTL hiding, and the cardinality cap in the pipeline."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from statscache_exporter.aggregate import GaugeValue, Series, SeriesKey
from statscache_exporter.daemon import exposition_for
from statscache_exporter.exposition import OPENMETRICS, TEXT, Exposition
from statscache_exporter.plugin import Counter, Gauge

BY_USER = Counter("messages_by_user", 'Per user: a \\ backslash, a "quote",\na newline', ("user",))
LEVEL = Gauge("level", "A gauge with two labels", ("b", "a"))
EMPTY = Counter("nothing_yet", "Declared, never emitted")
METRICS = {m.name: ("p", m) for m in (BY_USER, LEVEL, EMPTY)}
ODD_USERS = ["al", 'o"brien', "back\\slash", "new\nline", "ünïcødé☃", "a,b c", "", "x" * 200]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fill(e: Exposition, start: int = 0) -> tuple[dict[SeriesKey, Any], dict[SeriesKey, Series]]:
    totals: dict[SeriesKey, Any] = {}
    series: dict[SeriesKey, Series] = {}
    for i, user in enumerate(ODD_USERS):
        key = ("messages_by_user", (user,))
        totals[key] = start + i * 1_234_567 + 1
        series[key] = Series("p", BY_USER, (user,), 1_600_000_000.25 + i)
    for value in (0.5, -3.0, float("inf"), 1e-9):
        key = ("level", (str(value), "z"))
        totals[key] = GaugeValue(1.0, "m", value)
        series[key] = Series("p", LEVEL, (str(value), "z"), 1.0)
    e.update(totals, series)
    return totals, series


def registry_of(e: Exposition) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(e)
    return registry


@pytest.mark.parametrize("created", [False, True])
def test_text_and_openmetrics_are_byte_identical_to_prometheus_client(created: bool) -> None:
    e = Exposition("statscache_", METRICS, created_series=created)
    fill(e)
    registry = registry_of(e)
    assert e.render(TEXT) == generate_latest(registry)
    assert e.render(OPENMETRICS) + b"# EOF\n" == openmetrics_latest(registry)


def test_exact_samples_no_timestamps_and_escaping() -> None:
    e = Exposition("statscache_", METRICS)
    fill(e)
    text = e.render(TEXT).decode()
    help_line = "# HELP statscache_messages_by_user_total Per user: a \\\\ backslash, a "
    assert help_line + '"quote",\\na newline\n' in text
    assert "# TYPE statscache_messages_by_user_total counter\n" in text
    assert 'statscache_messages_by_user_total{user="o\\"brien"} 1.234568e+06\n' in text
    assert 'statscache_messages_by_user_total{user="back\\\\slash"} 2.469135e+06\n' in text
    assert 'statscache_messages_by_user_total{user="new\\nline"} 3.703702e+06\n' in text
    assert 'statscache_messages_by_user_total{user="ünïcødé☃"} 4.938269e+06\n' in text
    assert 'statscache_messages_by_user_total{user="al"} 1.0\n' in text
    # labels sorted by name whatever the declared order; gauges as set
    assert 'statscache_level{a="z",b="0.5"} 0.5\n' in text
    assert 'statscache_level{a="z",b="inf"} +Inf\n' in text
    assert "# TYPE statscache_nothing_yet_total counter\n" in text
    assert "_created" not in text
    for line in text.splitlines():
        if not line.startswith("#"):
            assert len(line.rsplit(" ", 2)) == 2 or line.count("} ") == 1  # value, no timestamp


def test_rendering_is_cached_until_an_update_changes_something() -> None:
    e = Exposition("statscache_", METRICS)
    _, series = fill(e)
    first = e.render(TEXT)
    assert e.render(TEXT) is first  # the same object: not rebuilt
    e.update({}, series)  # a flush that changed nothing
    assert e.render(TEXT) is first
    key = ("messages_by_user", ("al",))
    e.update({key: 41}, series)
    second = e.render(TEXT)
    assert second is not first
    assert b'statscache_messages_by_user_total{user="al"} 41.0\n' in second
    assert second.replace(b'{user="al"} 41.0', b'{user="al"} 1.0') == first


def test_gzip_rendering_is_the_compressed_text() -> None:
    import gzip

    e = Exposition("statscache_", METRICS)
    fill(e)
    assert gzip.decompress(e.render(TEXT, compressed=True)) == e.render(TEXT)
    assert gzip.decompress(e.render(OPENMETRICS, compressed=True)) == e.render(OPENMETRICS)


def test_idle_series_are_hidden_after_their_ttl_and_come_back_when_they_change() -> None:
    clock = Clock()
    e = Exposition("statscache_", METRICS, ttls={"messages_by_user": 300.0}, clock=clock)
    _, series = fill(e)
    assert b'user="al"' in e.render(TEXT)
    clock.now += 200
    e.update({("messages_by_user", ("al",)): 2}, series)
    clock.now += 200  # 'al' changed 200 s ago, the others 400 s ago
    text = e.render(TEXT).decode()
    assert 'user="al"} 2.0' in text
    assert 'user="o\\"brien"' not in text
    assert 'statscache_level{a="z",b="0.5"}' in text  # no TTL for that metric
    assert {
        s.labels["user"] for f in e.collect() for s in f.samples if f.name.endswith("by_user")
    } == {"al"}
    e.update({("messages_by_user", ('o"brien',)): 5}, series)
    assert 'user="o\\"brien"} 5.0' in e.render(TEXT).decode()


# --- the cap, through the pipeline -----------------------------------------------------------


def raw(i: int, topic: str) -> dict[str, Any]:
    return {"topic": topic, "msg": {}, "timestamp": 1_700_000_000 + i, "msg_id": f"m{i}"}


def test_the_cap_sends_new_label_values_to_the_overflow_series(open_store: Any) -> None:
    topics = [f"org.fedoraproject.prod.c{i % 7}.event" for i in range(70)]  # 7 topics, 10 each
    p = open_store(plugins=None, plugins_config={"volume_by_topic": {"max_series": 3}})
    exposition = exposition_for(p)
    for i, topic in enumerate(topics):
        p.handle(raw(i, topic))
    p.flush()
    first_three = list(dict.fromkeys(topics))[:3]
    rows = p.store.totals_by_metric("messages_by_topic")
    want = {json.dumps({"topic": t}, separators=(",", ":")): 10 for t in first_three}
    want['{"topic":"__other__"}'] = 40
    assert rows == want
    assert p.stats.series_overflow == {("volume_by_topic", "messages_by_topic"): 40}
    text = exposition.render(TEXT).decode()
    assert 'statscache_messages_by_topic_total{topic="__other__"} 40.0\n' in text
    # restarting keeps the cap: the series already stored count toward it
    p.close()
    q = open_store(plugins=None, plugins_config={"volume_by_topic": {"max_series": 3}})
    q.handle(raw(100, "org.fedoraproject.prod.new.topic"))
    q.handle(raw(101, first_three[0]))
    q.flush()
    rows = q.store.totals_by_metric("messages_by_topic")
    assert rows['{"topic":"__other__"}'] == 41
    assert rows[json.dumps({"topic": first_three[0]}, separators=(",", ":"))] == 11
