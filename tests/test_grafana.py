"""The bundled Grafana dashboards and provisioning (grafana/).

a. Structure, without servers: the committed JSON is what grafana/generate.py builds; every
   dashboard has a stable unique uid, a datasource variable and no ``__inputs``; every panel a
   unit, a description, a query and a place on the 24-column grid that overlaps no other; the
   provisioning YAML parses and names only what exists.
b. Every panel query against real servers: the test corpus (tests/data) is replayed through
   `statscache-exporter run` into a real Prometheus (scraping it every second) and, through the
   exporter's InfluxDB sink, into a real InfluxDB 1.x. Then each dashboard variable is resolved
   from the server and each panel query is prepared the way Grafana prepares it
   (tests/grafana_queries.py) and run: each must be accepted and return data, and each target
   must show a non-zero value, unless it is listed below with the reason it cannot for this
   corpus (always, or only over one time range or for one selection). A few figures are
   checked exactly against the corpus's messages counted here: messages, koji builds by
   state, new accounts, badges.

Prometheus stamps what it scrapes with the scrape time (the exporter exposes no timestamps), so
the Prometheus dashboards are queried over their default range ending now; the corpus is
replayed in two halves with a scrape in between, so that rates have something to show.
InfluxDB's points carry the messages' own times (2012 to 2024): the InfluxDB dashboards are
queried over the corpus's whole span and over one busy hour of it.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
from conftest import corpus_messages
from grafana_queries import (
    GRAFANA,
    TimeRange,
    Variable,
    format_interval,
    go_duration,
    influx_numbers,
    influx_tag_values,
    influxql_query,
    load_generator,
    parse_interval,
    prometheus_format,
    prometheus_label_values,
    prometheus_query,
    regex_format,
    replace,
    round_interval,
    run_influxql,
    run_prometheus_samples,
)
from servers import (
    Exporter,
    InfluxDB,
    Prometheus,
    ReplayPipe,
    Samples,
    exporter_process,
    free_port,
    influxdb_server,
    prometheus_server,
    total,
    wait_until,
)

from statscache_exporter.config import PrometheusConfig

generate = load_generator()
PROVISIONING = GRAFANA / "provisioning"
DASHBOARD_FILES = sorted(generate.DASHBOARD_DIR.glob("*.json"))
#: Grafana's provisioning folder in the Debian/RPM packages and the Docker image: the README
#: has grafana/provisioning/ copied (or mounted) there.
GRAFANA_PROVISIONING = Path("/etc/grafana/provisioning")
#: units the dashboards use, each one of Grafana's unit ids
UNITS = {"mps", "cps", "ops", "short", "s", "bytes", "none"}
INFLUX_DB = "statscache"

WRITES = "Points written, failed batches, refused points per second"
#: (dashboard uid, panel title, refId) -> why the target may show only zeros for this corpus
ZERO_OK = {
    ("statscache-exporter-health", "Plugin errors per second", "A"): (
        "no bundled plugin fails on the corpus: the series exist, at 0"
    ),
    ("statscache-exporter-health", "Points set aside", "A"): (
        "InfluxDB takes every point of the corpus: nothing is set aside"
    ),
    ("statscache-exporter-health", "Changes not queued", "A"): (
        "the outbox never fills, and 1 s retention is off for the replay: nothing unqueued"
    ),
    ("statscache-exporter-health", "Oldest queued point", "A"): (
        "queried after the outbox drained: nothing waits, so the age shows 0"
    ),
    ("statscache-exporter-health", "Points waiting for InfluxDB", "A"): (
        "the sink drains each flush's points within a second: scrapes may never see any waiting"
    ),
    **{
        ("statscache-exporter-health", WRITES, ref): "InfluxDB takes every batch and point"
        for ref in "BC"
    },
    **{
        ("statscache-release-engineering", title, "A"): (
            "the corpus leaves no koji build open: 7 primary builds enter the building state "
            "and 7 leave it, and s390's one message is a build failing that was never seen to "
            "start (-1, clamped to 0)"
        )
        for title in ("Builds open now", "Builds open")
    },
    ("statscache-contributors", "New accounts and badges per second", "B"): (
        "the corpus has one badge award (staging's, 2013): its counter is first scraped at 1 "
        "and never moves, so rate() has no increase to show"
    ),
    ("statscache-exporter-health", "Backfill remaining", "A"): (
        "a fresh store and initial_backfill none: the gap filler has nothing to fetch"
    ),
    **{
        ("statscache-exporter-health", "Backfill progress per second", ref): (
            "a fresh store and initial_backfill none: the gap filler fetches nothing"
        )
        for ref in "ABCD"
    },
}  # fmt: skip
#: (dashboard uid, panel title, refId) -> why the target returns no series for this corpus
EXPECTED_EMPTY: dict[tuple[str, str, str], str] = {
    ("statscache-release-engineering", "Latest koji image artifact states", "C"): (
        "the corpus's one koji image artifact (livemedia Fedora-i3-Live Rawhide) is seen only "
        "deleted, never finished: it has no last-success time"
    ),
}
#: the same, for the InfluxDB dashboards over the corpus's busiest hour only
EMPTY_IN_THE_HOUR: dict[tuple[str, str, str], str] = {
    **{
        ("statscache-contributors-influxdb", title, ref): (
            "the corpus's one badge award is from 2013, none in 2024-03-01 12:00-13:00"
        )
        for title, ref in (("New accounts and badges", "B"), ("Top $top badges awarded", "A"))
    }
}
#: the same, for the selection of the first two values of each multi-value variable
EMPTY_FOR_TWO: dict[tuple[str, str, str], str] = {
    **{
        (uid, title, "A"): (
            "the first two users, aavrug and ausil, are pagure contributors who comment on no "
            "bodhi update in the corpus (its commenters: hreindl, kalev, ralph, volter)"
        )
        for uid, title in (
            ("statscache-contributors", "Bodhi comments per second by user"),
            ("statscache-contributors-influxdb", "Bodhi comments by user"),
        )
    }
}
#: the same, for the first two values over the corpus's busiest hour
EMPTY_FOR_TWO_IN_THE_HOUR: dict[tuple[str, str, str], str] = {
    ("statscache-contributors-influxdb", title, "A"): (
        "the first two projects (Fedora-Council/tickets, docs-test) and users (aavrug, ausil) "
        "are in fedmsg-era pagure messages (2015-2016), none in 2024-03-01 12:00-13:00"
    )
    for title in ("Contributions by project", "Contributions by user")
}


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def query_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def datasource_kind(board: dict[str, Any]) -> str:
    (var,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    kind: str = var["query"]
    return kind


# --- a. structure --------------------------------------------------------------------------------


def test_the_committed_dashboards_are_what_generate_py_builds() -> None:
    assert [p.name for p in generate.stale()] == [], "run: python grafana/generate.py"
    assert {p.name for p in DASHBOARD_FILES} == set(generate.DASHBOARDS)


#: A metric name in PromQL: an identifier right before its ``{matchers}`` (every selector the
#: generator writes has some), recording rules' ``level:name:window`` included.
PROMQL_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{")
#: An InfluxDB measurement in InfluxQL: ``FROM "name"`` or ``FROM /^regex$/``.
INFLUXQL_FROM = re.compile(r'FROM (?:"([^"]+)"|/\^([^/]+)\$/)')


def metric_names(board: dict[str, Any]) -> list[str]:
    """Every metric (or measurement) name the dashboard's panel targets and variables query,
    recording rules' series by their metric part."""
    texts = [t.get("expr") or t.get("query", "") for p in query_panels(board) for t in p["targets"]]
    texts += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    names: list[str] = []
    for text in texts:
        names += [n.split(":")[1] if ":" in n else n for n in PROMQL_SELECTOR.findall(text)]
        names += [quoted or regex for quoted, regex in INFLUXQL_FROM.findall(text)]
        names += re.findall(r'__name__=~"([^"]+)"', text)
    return names


def test_the_default_prefix_is_the_exporters() -> None:
    assert PrometheusConfig().prefix == generate.DEFAULT_PREFIX


def test_every_metric_name_takes_the_prefix_option(tmp_path: Path) -> None:
    """``--prefix`` starts every metric name in every PromQL target and variable (and every
    InfluxDB measurement): none keeps the default prefix. The default build, read the same
    way, names the same metrics with the default prefix (so the names are really found)."""
    assert generate.main(["--prefix", "fedora_", "--output", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(generate.DASHBOARDS)
    for name in generate.DASHBOARDS:
        default = load(generate.DASHBOARD_DIR / name)
        other = load(tmp_path / name)
        names = metric_names(other)
        assert names, name
        assert [n for n in names if not n.startswith("fedora_")] == [], name
        assert "statscache_" not in json.dumps(other["panels"]), name
        assert "statscache_" not in json.dumps(other["templating"]), name
        assert [n.replace("fedora_", "statscache_", 1) for n in names] == metric_names(default)
        if datasource_kind(other) == "prometheus":
            for p in query_panels(other):
                for t in p["targets"]:
                    assert PROMQL_SELECTOR.search(t["expr"]), (name, p["title"])
    assert generate.main(["--check", "--prefix", "fedora_", "--output", str(tmp_path)]) == 0
    assert generate.main(["--check", "--output", str(tmp_path)]) == 1


def test_the_twins_share_their_panels_through_one_spec() -> None:
    """Each twin pair is built from one list of panel specs: each dashboard's panels are its
    side's of the specs, in the specs' order (a declared move apart); a shared spec gives both
    twins their panel, in the same order; and a title on both twins is one shared spec, never
    two one-sided ones (a panel declared twice)."""
    for (prom_file, influx_file), specs_of in generate.TWINS.items():
        specs = specs_of(generate.DEFAULT_PREFIX)
        boards = {"prometheus": load(generate.DASHBOARD_DIR / prom_file)}
        boards["influxdb"] = load(generate.DASHBOARD_DIR / influx_file)
        for side, board in boards.items():
            assert datasource_kind(board) == side
            built = [s.panel(side) for s in generate.twin_order(specs, side)]
            committed = [
                {**p, "gridPos": {**p["gridPos"], "x": 0, "y": 0}} for p in board["panels"]
            ]
            assert [{k: v for k, v in p.items() if k != "id"} for p in committed] == [
                p for p in built if p is not None
            ], side
        shared = [s for s in specs if s.prometheus is not None and s.influxdb is not None]
        assert len(shared) >= 6, prom_file
        in_order = [s.title for s in shared if s.influxdb_before is None]
        for side in boards:
            ordered = generate.twin_order(specs, side)
            assert [s.title for s in ordered if s in shared and s.title in in_order] == in_order
        one_sided = [s for s in specs if s not in shared]
        for s in one_sided:
            assert (s.prometheus is None) != (s.influxdb is None), s.title
        titles = {side: {p["title"] for p in b["panels"]} for side, b in boards.items()}
        on_both = titles["prometheus"] & titles["influxdb"]
        assert on_both, prom_file
        for title in on_both:
            owners = [
                s
                for s in specs
                if title in {(q.title or s.title) for q in (s.prometheus, s.influxdb) if q}
            ]
            assert len(owners) == 1 and owners[0] in shared, (prom_file, title)


def test_dashboard_uids_and_titles_are_unique_and_stable() -> None:
    boards = [load(p) for p in DASHBOARD_FILES]
    uids = [b["uid"] for b in boards]
    assert len(set(uids)) == len(uids) == 6
    assert len({b["title"] for b in boards}) == len(boards)
    # uids are links and provisioning keys: they are written by hand, not derived
    assert set(uids) == {
        "statscache-bus-overview",
        "statscache-bus-overview-influxdb",
        "statscache-exporter-health",
        "statscache-release-engineering",
        "statscache-contributors",
        "statscache-contributors-influxdb",
    }
    for uid in uids:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    assert "__inputs" not in board and "__requires" not in board
    assert "${DS_" not in path.read_text(), "an import-time input: use the datasource variable"
    assert board["id"] is None and board["schemaVersion"] == generate.SCHEMA_VERSION
    assert board["title"] and board["description"] and generate.TAG in board["tags"]
    assert board["time"]["from"].startswith("now-") and board["time"]["to"] == "now"
    assert re.fullmatch(r"\d+[smh]", board["refresh"])
    variables = board["templating"]["list"]
    (ds_var,) = [v for v in variables if v["type"] == "datasource"]
    kind = ds_var["query"]
    assert kind in ("prometheus", "influxdb") and ds_var["name"] == "datasource"
    ref = {"type": kind, "uid": "${datasource}"}
    for var in variables:
        if var["type"] == "query":
            assert var["datasource"] == ref, var["name"]
            assert var["query"] and var["refresh"] == 2, var["name"]
        if var.get("allValue") is not None:
            # a custom all value only for labels that grow with the bus, matching them all
            assert var["allValue"] == ".*" and var["name"] in ("user", "project"), var["name"]
    names = {v["name"] for v in variables}
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    titles = [p["title"] for p in panels]
    assert len(set(titles)) == len(titles), "panel titles name the panels in this test"
    for p in query_panels(board):
        where = f"{path.name}: {p['title']!r}"
        assert p["description"].strip(), f"{where}: no description"
        assert p["fieldConfig"]["defaults"].get("unit") in UNITS, f"{where}: unit"
        assert p["datasource"] == ref, where
        assert p["targets"], f"{where}: no target"
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), where
        for t in p["targets"]:
            assert t["datasource"] == ref, where
            text = t["expr"] if kind == "prometheus" else t["query"]
            assert text.strip(), where
            if kind == "influxdb":
                assert t["rawQuery"] is True and "$timeFilter" in text, where
            else:
                check_windows(where, text)
            used = {m for m in re.findall(r"\$(\w+)", text) if not m.startswith("__")}
            assert used <= names | {"timeFilter"}, f"{where}: unknown variables {used - names}"
    check_grid(path.name, panels)


def test_the_releng_state_tables_map_every_state_the_plugins_set() -> None:
    """The latest-state tables show each code of a releng ``..._status`` gauge as the name the
    plugin gives it (the codes read from the plugin itself), in a colour of its own, merged
    with the state's age (and time since the last success) on the same labels."""
    from statscache_plugins.releng import BODHI_COMPOSE_STEPS, STATUS_CODES

    board = load(generate.DASHBOARD_DIR / "release-engineering.json")
    expected = {
        "Latest compose states": ("releng_compose", STATUS_CODES),
        "Latest koji image artifact states": ("releng_koji_artifact", STATUS_CODES),
        "Latest push state per repo": ("releng_bodhi_compose", BODHI_COMPOSE_STEPS),
    }
    tables = {p["title"]: p for p in board["panels"] if "Value #A" in json.dumps(p)}
    assert set(tables) == set(expected)
    for title, (thing, codes) in expected.items():
        panel = tables[title]
        exprs = [t["expr"] for t in panel["targets"]]
        assert f"statscache_{thing}_status{{" in exprs[0], title
        assert "time() - max by" in exprs[1] and f"{thing}_last_change_" in exprs[1], title
        assert f"{thing}_last_success_" in exprs[2], title
        assert all(t["instant"] and t["format"] == "table" for t in panel["targets"]), title
        assert [t["id"] for t in panel["transformations"]] == ["merge", "organize"], title
        (state,) = [
            o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Value #A"
        ]
        props = {p["id"]: p["value"] for p in state["properties"]}
        (mapping,) = props["mappings"]
        names = {int(code): option["text"] for code, option in mapping["options"].items()}
        assert names == {code: name for name, code in codes.items()}, title
        colours = [option["color"] for option in mapping["options"].values()]
        assert len(set(colours)) == len(colours), title
        assert props["custom.cellOptions"]["type"] == "color-background", title


def check_windows(where: str, expr: str) -> None:
    """A rate's window is $__rate_interval (at least four scrapes whatever the zoom), a count
    over the range uses $__range: never $__interval (one scrape per window when zoomed in) nor
    a fixed window."""
    for function, window in re.findall(r"(\w+)\([^()]*\[([^\]]+)\]", expr):
        wanted = "$__rate_interval" if function in ("rate", "irate") else "$__range"
        assert window == wanted, f"{where}: {function}(...[{window}]) should use {wanted}"


def test_the_window_check_sees_a_bad_window() -> None:
    check_windows("test", "sum(rate(x[$__rate_interval])) + sum(increase(y[$__range]))")
    with pytest.raises(AssertionError, match="should use"):
        check_windows("test", "sum(rate(x[$__interval]))")
    with pytest.raises(AssertionError, match="should use"):
        check_windows("test", "increase(x[5m])")


def check_grid(name: str, panels: list[dict[str, Any]]) -> None:
    """On the 24-column grid, whole numbers, no two panels overlapping."""
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh"), (name, p["title"], g)
        assert g["w"] >= 1 and g["h"] >= 1 and g["x"] >= 0 and g["y"] >= 0, (name, g)
        assert g["x"] + g["w"] <= 24, f"{name}: {p['title']!r} goes past column 24: {g}"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                other = cells.setdefault((x, y), p["title"])
                assert other == p["title"], f"{name}: {p['title']!r} overlaps {other!r}"


def test_the_grid_check_sees_an_overlap() -> None:
    a = {"title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}}
    b = {"title": "b", "gridPos": {"x": 11, "y": 7, "w": 6, "h": 2}}
    with pytest.raises(AssertionError, match="overlaps"):
        check_grid("test", [a, b])
    with pytest.raises(AssertionError, match="column 24"):
        check_grid("test", [{"title": "c", "gridPos": {"x": 20, "y": 0, "w": 6, "h": 1}}])


def grafana_env(text: str, env: dict[str, str]) -> str:
    """Grafana's provisioning interpolation: ``$NAME`` and ``${NAME}`` from the environment
    (unset: empty), ``$$`` for a literal ``$``."""
    expand = re.compile(r"\$\{(\w+)\}|\$(\w+)")
    return "$".join(
        expand.sub(lambda m: env.get(m[1] or m[2], ""), part) for part in text.split("$$")
    )


def interpolated(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolated(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolated(v, env) for v in value]
    return grafana_env(value, env) if isinstance(value, str) else value


def provisioning(kind: str) -> dict[str, Any]:
    (path,) = sorted((PROVISIONING / kind).glob("*.yaml"))
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    assert data["apiVersion"] == 1, path
    return data


def test_datasource_provisioning_names_the_dashboards_datasources() -> None:
    env = {
        "STATSCACHE_PROMETHEUS_URL": "http://prometheus:9090",
        "STATSCACHE_INFLUXDB_URL": "http://influxdb:8086",
        "STATSCACHE_INFLUXDB_DATABASE": "statscache",
    }
    sources = interpolated(provisioning("datasources"), env)["datasources"]
    by_type = {s["type"]: s for s in sources}
    assert set(by_type) == {"prometheus", "influxdb"} and len(sources) == 2
    prom, influx = by_type["prometheus"], by_type["influxdb"]
    assert prom["url"] == "http://prometheus:9090" and influx["url"] == "http://influxdb:8086"
    assert influx["jsonData"]["dbName"] == "statscache", "the database comes from the environment"
    assert influx["jsonData"]["version"] == "InfluxQL"
    for s in sources:
        assert s["access"] == "proxy" and s["name"] and s["uid"]
        parse_interval(s["jsonData"]["timeInterval"])
    # each dashboard's datasource variable selects the provisioned datasource by default
    for path in DASHBOARD_FILES:
        board = load(path)
        (var,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert var["current"]["value"] == by_type[var["query"]]["uid"], path.name
        assert var["current"]["text"] == by_type[var["query"]]["name"], path.name


def test_dashboard_provisioning_points_at_the_dashboards_folder() -> None:
    (provider,) = provisioning("dashboards")["providers"]
    assert provider["type"] == "file" and provider["name"] and provider["folder"]
    installed = Path(provider["options"]["path"])
    # where the README's copy of grafana/provisioning/ puts the dashboards folder
    in_repo = PROVISIONING / installed.relative_to(GRAFANA_PROVISIONING)
    assert in_repo == generate.DASHBOARD_DIR and in_repo.is_dir()
    assert sorted(in_repo.glob("*.json")) == DASHBOARD_FILES and DASHBOARD_FILES
    # nothing else in the provisioning tree but what Grafana reads
    found = {p.relative_to(PROVISIONING) for p in PROVISIONING.rglob("*") if p.is_file()}
    expected = {p.relative_to(PROVISIONING) for p in DASHBOARD_FILES} | {
        Path("datasources/statscache-exporter.yaml"),
        Path("dashboards/statscache-exporter.yaml"),
    }
    assert found == expected


def test_grafana_env_interpolation_as_grafana_does_it() -> None:
    env = {"A": "x", "B_2": "y"}
    assert grafana_env("$A-${B_2}-$C-$$A", env) == "x-y--$A"


# --- the Grafana emulation itself, against values read from Grafana's sources -------------------


def test_grafana_intervals_and_durations() -> None:
    assert [round_interval(ms) for ms in (9, 1400, 14_000, 21_093, 2.97 * 86_400_000)] == [
        1, 1000, 15_000, 20_000, 86_400_000,
    ]  # fmt: skip
    assert [format_interval(ms) for ms in (500, 15_000, 60_000, 86_400_000)] == [
        "500ms", "15s", "1m", "1d",
    ]  # fmt: skip
    assert [go_duration(ms) for ms in (15_000, 60_000, 90_000, 3_600_000)] == [
        "15s", "1m0s", "1m30s", "1h0m0s",
    ]  # fmt: skip


def test_grafana_builtins_for_a_six_hour_prometheus_panel() -> None:
    six_hours = TimeRange(1_700_000_000_000 - 21_600_000, 1_700_000_000_000)
    expr = "rate(x[$__rate_interval]) $__interval $__interval_ms $__range $__range_ms"
    q = prometheus_query(expr, six_hours, False, 1536, "15s")
    # 21,600 s / 1536 points = 14 s, under the 15 s scrape interval: the step is 15 s, and
    # $__rate_interval max(15 s + 15 s, 4 x 15 s)
    assert q.expr == "rate(x[1m0s]) 15s 15000 21600s 21600000"
    assert (q.step, q.end % 15, q.end <= 1_700_000_000) == (15, 0, True)
    q = prometheus_query("$__interval [$__rate_interval]", six_hours, False, 512, "15s")
    assert (q.expr, q.step) == ("30s [1m0s]", 30)  # 21,600 s / 512 = 42 s: rounded to 30 s


def test_grafana_builtins_for_influxql() -> None:
    day = TimeRange(1_709_251_200_000, 1_709_337_600_000)
    q = influxql_query(
        "WHERE $timeFilter GROUP BY time($__interval) $__interval_ms", day, 768, "1s"
    )
    assert q == "WHERE time >= 1709251200000ms and time <= 1709337600000ms GROUP BY time(2m) 120000"


def test_grafana_variable_formats() -> None:
    single = Variable("one", multi=False, include_all=False, options=["a.b"], selected="a.b")
    multi = Variable("many", multi=True, include_all=True, options=["a.b", "c/d", "e"])
    multi.selected = "$__all"
    variables = {"one": single, "many": multi}
    text = 'x{a="$one", b=~"$many"} [[one]] ${many} $__interval $unknown'
    # Prometheus: a single value as it is; regex values with the backslashes doubled (the regex
    # sits in a PromQL string); All is every value, in a group
    assert replace(text, variables, prometheus_format) == (
        'x{a="a.b", b=~"(a\\\\.b|c/d|e)"} a.b (a\\\\.b|c/d|e) $__interval $unknown'
    )
    # InfluxQL: every variable regex-escaped, "/" too (the regex sits between slashes)
    multi.selected = ["c/d"]
    assert replace("/^$many$/ /^$one$/", variables, regex_format) == "/^c\\/d$/ /^a\\.b$/"
    # a custom all value goes in as it is, in both (Grafana skips formatting it); a selection
    # of values is formatted as without one
    multi.all_value, multi.selected = ".*", "$__all"
    assert replace('b=~"$many"', variables, prometheus_format) == 'b=~".*"'
    assert replace("/^$many$/", variables, regex_format) == "/^.*$/"
    multi.selected = ["a.b", "e"]
    assert replace("/^$many$/", variables, regex_format) == "/^(a\\.b|e)$/"


# --- b. against real servers ---------------------------------------------------------------------


#: the exporter's plugin settings for the replay (see :func:`replayed`)
PLUGINS = {
    "volume_by_topic": {"max_series": 150},
    "accounts": {
        "options": {"prefixes": ["org.fedoraproject.prod.fas.", "org.fedoraproject.stg.fas."]}
    },
    "badges": {
        "options": {
            "prefixes": ["org.fedoraproject.prod.fedbadges.", "org.fedoraproject.stg.fedbadges."]
        }
    },
}


@dataclass
class Replayed:
    prometheus: Prometheus
    influx: InfluxDB
    exporter: Exporter
    #: the corpus messages' own times, seconds
    first: float
    last: float
    #: wall-clock time of the first scrape after everything was stored
    scraped: float
    #: when the Prometheus dashboards are "loaded" (see wait_for_a_step_after), ms
    now_ms: int
    messages: list[dict[str, Any]]


def message_time(m: dict[str, Any]) -> float | None:
    """A corpus message's own time, read independently of the exporter."""
    ts = m.get("timestamp")
    if isinstance(ts, int | float):
        return float(ts)
    sent = (m.get("headers") or {}).get("sent-at")
    if isinstance(sent, str):
        parsed = datetime.fromisoformat(sent)
        return float(calendar.timegm(parsed.utctimetuple()))
    return None


def distinct_messages(messages: list[dict[str, Any]], tr: TimeRange | None = None) -> int:
    """How many different messages with a time (in ``tr``, if given) the corpus holds: the
    same id twice is one message, and a message without an id is told apart by its topic,
    time and body (the README's rule for such messages)."""
    return sum(distinct_by(messages, lambda m: "", tr).values())


def distinct_by(
    messages: list[dict[str, Any]],
    kind: Callable[[dict[str, Any]], str | None],
    tr: TimeRange | None = None,
) -> dict[str, int]:
    """:func:`distinct_messages` per ``kind`` of message (None: not counted)."""
    keys: defaultdict[str, set[Any]] = defaultdict(set)
    for m in messages:
        t = message_time(m)
        if t is None or (tr is not None and not tr.start_ms <= t * 1000 <= tr.end_ms):
            continue
        if (k := kind(m)) is None:
            continue
        body = m.get("msg", m.get("body"))
        keys[k].add(
            m.get("msg_id") or m.get("id") or (m["topic"], t, json.dumps(body, sort_keys=True))
        )
    return {k: len(v) for k, v in keys.items()}


def body(m: dict[str, Any]) -> dict[str, Any]:
    b = m.get("msg", m.get("body"))
    return b if isinstance(b, dict) else {}


#: koji's BUILD_STATES (koji/__init__.py), the body's ``new`` -> the state's name
KOJI_BUILD_STATES = {0: "building", 1: "complete", 2: "deleted", 3: "failed", 4: "canceled"}


def koji_build_state(m: dict[str, Any]) -> str | None:
    """The state a production koji build message announces (the koji plugin's default
    instances: the org.fedoraproject.prod.buildsys. prefix)."""
    if m.get("topic") != "org.fedoraproject.prod.buildsys.build.state.change":
        return None
    return KOJI_BUILD_STATES[body(m)["new"]]


def fas_or_badges(m: dict[str, Any]) -> str | None:
    """ "new account" or "badge" for the accounts and badges topics the replay counts
    (production and staging, see PLUGINS)."""
    topic = m.get("topic", "")
    for env in ("prod", "stg"):
        if topic == f"org.fedoraproject.{env}.fas.user.create":
            return "new account"
        if topic == f"org.fedoraproject.{env}.fedbadges.badge.award":
            return "badge"
    return None


def settled(samples: Samples, items: int, source: str = "file") -> bool:
    """The replay source handed over ``items`` messages, each is processed, a duplicate or
    rejected, and what was processed is flushed (statscache_messages_total only moves after
    a committed flush)."""

    def of(name: str) -> float:
        return sum(
            v for (n, labels), v in samples.items() if n == name and ("source", source) in labels
        )

    received = of("statscache_exporter_messages_received_total")
    processed = of("statscache_exporter_messages_processed_total")
    handled = processed + of("statscache_exporter_messages_duplicate_total")
    handled += of("statscache_exporter_messages_rejected_total")
    stored = samples.get(("statscache_messages_total", ()), 0)
    return received == handled == items and stored == processed


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    """One InfluxDB, one Prometheus scraping one exporter every second, for the module.

    The exporter reads the corpus from a named pipe, in two halves (even and odd lines, so
    both carry every kind of message) with a scrape in between. It also runs a fedmsg source
    connected to a ZeroMQ publisher of this test that sends nothing: a live source, so that
    the gap filler runs and exposes its metrics (a fresh store and ``initial_backfill: none``:
    it has nothing to fetch, and its datagrepper URL is a closed port). volume_by_topic is
    capped at 150 series (the corpus has 382 topics), so that the cap's overflow shows. The
    accounts and badges plugins also read staging's topics (their ``prefixes`` option): most of
    the corpus's FAS messages and its one badge award are staging's (fedmsg_meta's test
    envelopes), and with them the contributors dashboards' account and badge panels have data."""
    tmp = tmp_path_factory.mktemp("grafana")
    messages = corpus_messages()
    times = [t for t in map(message_time, messages) if t is not None]
    halves = [messages[0::2], messages[1::2]]
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    bus_port = publisher.bind_to_random_port("tcp://127.0.0.1")
    port = free_port()
    pipe = ReplayPipe(tmp / "corpus.jsonl")
    try:
        with (
            influxdb_server(tmp) as influx,
            prometheus_server(tmp, [f"127.0.0.1:{port}"]) as prom,
            exporter_process(
                tmp,
                [pipe.path],
                port=port,
                plugins=PLUGINS,
                settings={
                    "sources": [
                        {"type": "replay", "name": "file", "paths": [str(pipe.path)]},
                        {
                            "type": "fedmsg",
                            "name": "bus",
                            "endpoints": [f"tcp://127.0.0.1:{bus_port}"],
                        },
                    ],
                    # history from 2012 to 2024 goes to InfluxDB in full (the README's advice
                    # for imports), whatever order it comes in
                    "store": {"retention": {"1s": "forever"}},
                    "influxdb": {
                        "enabled": True,
                        "url": influx.url,
                        "database": INFLUX_DB,
                        "create_database": True,
                    },
                    "backfill": {
                        "enabled": True,
                        "url": f"http://127.0.0.1:{free_port()}",
                        "initial_backfill": "none",
                    },
                },
            ) as exporter,
        ):
            sent = 0
            for half in halves:
                pipe.write_messages(half)
                sent += len(half)
                if sent == len(messages):
                    pipe.close()
                wait_until(exporter.samples, partial(settled, items=sent), f"{sent} stored")
                prom.wait_for_scrape_after(time.time())
            samples = wait_until(
                exporter.samples,
                lambda s: (
                    total(s, "statscache_exporter_influxdb_pending_points") == 0
                    and total(s, "statscache_exporter_source_connected") == 1
                ),  # bus up, file read
                "the outbox drained and the replay over",
            )
            assert total(samples, "statscache_exporter_influxdb_points_written_total") > 0
            assert ("statscache_exporter_backfill_remaining_seconds", ()) in samples
            done = time.time()
            prom.wait_for_scrape_after(done)
            # a step after that scrape too, so that a series first seen in the second half has
            # two samples in a rate's window (the step may otherwise fall between them)
            now_ms = wait_for_a_step_after(time.time())
            yield Replayed(prom, influx, exporter, min(times), max(times), done, now_ms, messages)
    finally:
        pipe.close()
        publisher.close()
        context.term()


def resolve(board: dict[str, Any], fetch: Any, formatter: Any, pick: str) -> dict[str, Variable]:
    """Every variable of ``board``, in order (a query may use the ones before it), with its
    options from the server and the selection ``pick``: "all" (All, or the first option of a
    variable without All), "two" (the first two options of a multi-value one)."""
    variables: dict[str, Variable] = {}
    for v in board["templating"]["list"]:
        if v["type"] == "datasource":
            continue
        var = Variable(v["name"], v.get("multi", False), v.get("includeAll", False))
        var.all_value = v.get("allValue")
        if v["type"] == "custom":
            var.options = [o.strip() for o in v["query"].split(",")]
            var.selected = v["current"]["value"]
        else:
            assert v["type"] == "query", v
            var.options = fetch(replace(v["query"], variables, formatter))
            assert var.options, f"{board['uid']}: variable {var.name} has no values"
            if var.include_all and pick == "all":
                var.selected = "$__all"
            elif var.multi and pick == "two":
                var.selected = var.options[:2]
            else:
                var.selected = var.options[0]
        variables[var.name] = var
    return variables


@dataclass
class Outcome:
    key: tuple[str, str, str]
    query: str
    error: str | None
    values: list[float | None]
    when: str = ""  # the time range asked, for the failure message
    #: for a Prometheus query, the labels of each value's series
    labels: list[dict[str, str]] = field(default_factory=list)


def judge(
    outcomes: list[Outcome], strict: bool, empty: dict[tuple[str, str, str], str] | None = None
) -> list[str]:
    """What is wrong: an error, a target without data (unless expected empty: EXPECTED_EMPTY,
    and ``empty`` for this time range or selection), and with ``strict`` a target whose values
    are all zero (unless listed in ZERO_OK)."""
    empty = {**EXPECTED_EMPTY, **(empty or {})}
    problems = []
    for o in outcomes:
        where = f"{' / '.join(o.key)}: {o.query} {o.when}"
        numbers = [v for v in o.values if v is not None]
        if o.error:
            problems.append(f"{where}\n    refused: {o.error}")
        elif leftover := re.findall(r"\$\w+", o.query):
            problems.append(f"{where}\n    not substituted: {leftover}")
        elif o.key in empty:
            if numbers:
                problems.append(f"{where}\n    listed as expected-empty but returns data")
        elif not numbers:
            problems.append(f"{where}\n    no data")
        elif strict and o.key not in ZERO_OK and not any(numbers):
            problems.append(f"{where}\n    only zeros")
    return problems


def max_data_points(panel: dict[str, Any]) -> int:
    """Grafana asks for as many points as the panel is wide in pixels: here 64 per column
    (a 1536-pixel-wide dashboard)."""
    return int(panel["gridPos"]["w"]) * 64


def datasource_settings(kind: str) -> dict[str, Any]:
    sources = provisioning("datasources")["datasources"]
    (source,) = [s for s in sources if s["type"] == kind]
    settings: dict[str, Any] = source["jsonData"]
    return settings


def prometheus_outcomes(
    r: Replayed, board: dict[str, Any], pick: str, now_ms: int
) -> list[Outcome]:
    scrape = datasource_settings("prometheus")["timeInterval"]
    tr = TimeRange(now_ms - parse_interval(board["time"]["from"][4:]), now_ms)
    variables = resolve(
        board,
        lambda q: prometheus_label_values(r.prometheus.url, q, tr),
        prometheus_format,
        pick,
    )
    out = []
    for panel in query_panels(board):
        for t in panel["targets"]:
            expr = replace(t["expr"], variables, prometheus_format)
            q = prometheus_query(expr, tr, t["instant"], max_data_points(panel), scrape)
            error, samples = run_prometheus_samples(r.prometheus.url, q)
            when = f"at {q.end}" if q.instant else f"from {q.start} to {q.end} step {q.step}"
            key = (board["uid"], panel["title"], t["refId"])
            values = [v for _, v in samples]
            when = f"({when}, scraped {r.scraped})"
            out.append(Outcome(key, q.expr, error, values, when, [k for k, _ in samples]))
    return out


def range_steps(board: dict[str, Any]) -> set[float]:
    """The steps, in seconds, of the board's range queries over its default time range."""
    scrape = datasource_settings("prometheus")["timeInterval"]
    span = parse_interval(board["time"]["from"][4:])
    return {
        prometheus_query("", TimeRange(0, span), False, max_data_points(p), scrape).step
        for p in query_panels(board)
        if any(not t["instant"] for t in p["targets"])
    }


def wait_for_a_step_after(when: float) -> int:
    """Grafana ends a range query on a multiple of its step: wait until, for every step of
    every Prometheus dashboard, the last one is after ``when`` (the scrape that saw
    everything). The time the dashboards are then loaded at, in ms: every Prometheus query
    runs as of that moment, whichever test asks it, so a rate's window still holds the
    scrapes of both halves of the replay."""
    steps = set().union(*(range_steps(load(p)) for p in PROMETHEUS_BOARDS))
    while any((now := time.time()) // step * step <= when for step in steps):
        time.sleep(0.2)
    return int(now * 1000)


PROMETHEUS_BOARDS = [p for p in DASHBOARD_FILES if datasource_kind(load(p)) == "prometheus"]
INFLUX_BOARDS = [p for p in DASHBOARD_FILES if datasource_kind(load(p)) == "influxdb"]


def test_the_prometheus_range_queries_are_fine_enough_for_the_replay_test() -> None:
    """The fixture waits, after the replay, for a step of every range query to pass (see
    wait_for_a_step_after): over their default ranges, no step may be coarser than 30 s, or
    this module waits that much longer (grafana/README.md says how to stay within it)."""
    steps = {p.stem: max(range_steps(load(p))) for p in PROMETHEUS_BOARDS}
    assert steps and max(steps.values()) <= 30, steps


@pytest.mark.integration
@pytest.mark.parametrize("path", PROMETHEUS_BOARDS, ids=lambda p: p.stem)
def test_every_prometheus_panel_query_returns_data(replayed: Replayed, path: Path) -> None:
    board = load(path)
    now_ms = replayed.now_ms
    outcomes = prometheus_outcomes(replayed, board, "all", now_ms)
    problems = judge(outcomes, strict=True)
    # two values of each multi-value variable: the (a|b) form must be accepted and match
    two = prometheus_outcomes(replayed, board, "two", now_ms)
    problems += judge(two, strict=False, empty=EMPTY_FOR_TWO)
    assert not problems, "\n".join(problems)
    # one exact figure: every message of the corpus was counted within the range, once (the
    # "total - total offset $__range or total" form counts a series first seen in the range
    # without counting it twice)
    counted = {o.key[1]: o.values for o in outcomes if o.key[2] == "A"}
    if board["uid"] == "statscache-bus-overview":
        assert counted["Messages counted in the range"] == [distinct_messages(replayed.messages)]
    # and on the plugins' dashboards, figures counted from the corpus's own messages
    if board["uid"] == "statscache-release-engineering":
        koji = distinct_by(replayed.messages, koji_build_state)
        assert koji == {"building": 7, "complete": 7, "deleted": 1, "failed": 1, "canceled": 1}
        assert by_label(outcomes, "Koji builds by state in the range", "state") == koji
    if board["uid"] == "statscache-contributors":
        expected = distinct_by(replayed.messages, fas_or_badges)
        # two noggin accounts (2024) and two staging FAS ones (2012: ralph, the same second
        # but two bodies, so two messages); the one badge award is staging's
        assert expected == {"new account": 4, "badge": 1}
        assert counted["New accounts in the range"] == [expected["new account"]]
        assert counted["Top $top badges awarded"] == [expected["badge"]]
    assert len(outcomes) == sum(len(p["targets"]) for p in query_panels(board))


def by_label(outcomes: list[Outcome], title: str, label: str) -> dict[str, float | None]:
    """The values of panel ``title``'s first target, by ``label``."""
    (o,) = [o for o in outcomes if o.key[1:] == (title, "A")]
    return {labels[label]: value for labels, value in zip(o.labels, o.values, strict=True)}


def influx_outcomes(r: Replayed, board: dict[str, Any], tr: TimeRange, pick: str) -> list[Outcome]:
    min_interval = datasource_settings("influxdb")["timeInterval"]

    def tag_values(q: str) -> list[str]:
        error, series = run_influxql(r.influx.url, INFLUX_DB, q)
        assert error is None, (q, error)
        return influx_tag_values(series)

    variables = resolve(board, tag_values, regex_format, pick)
    out = []
    for panel in query_panels(board):
        for t in panel["targets"]:
            text = replace(t["query"], variables, regex_format)
            q = influxql_query(text, tr, max_data_points(panel), min_interval)
            error, series = run_influxql(r.influx.url, INFLUX_DB, q)
            key = (board["uid"], panel["title"], t["refId"])
            out.append(Outcome(key, q, error, influx_numbers(series)))
    return out


@pytest.mark.integration
@pytest.mark.parametrize("path", INFLUX_BOARDS, ids=lambda p: p.stem)
def test_every_influxdb_panel_query_returns_data(replayed: Replayed, path: Path) -> None:
    board = load(path)
    whole = TimeRange(int(replayed.first * 1000) - 86_400_000, int(replayed.last * 1000) + 1000)
    # the corpus's 2024 messages (fedora-messaging schema fixtures) are on 2024-03-01 12:xx UTC
    hour = TimeRange(1_709_294_400_000, 1_709_298_000_000)
    problems: list[str] = []
    for tr, empty, empty_for_two in (
        (whole, {}, EMPTY_FOR_TWO),
        (hour, EMPTY_IN_THE_HOUR, {**EMPTY_IN_THE_HOUR, **EMPTY_FOR_TWO_IN_THE_HOUR}),
    ):
        outcomes = influx_outcomes(replayed, board, tr, "all")
        problems += judge(outcomes, strict=True, empty=empty)
        counted = {o.key[1]: o.values for o in outcomes if o.key[2] == "A"}
        if board["uid"] == "statscache-bus-overview-influxdb":
            expected = distinct_messages(replayed.messages, tr)
            if counted["Messages in the range"] != [expected]:
                problems.append(
                    f"messages in {tr}: {counted['Messages in the range']} != {expected}"
                )
        if board["uid"] == "statscache-contributors-influxdb":
            accounts = distinct_by(replayed.messages, fas_or_badges, tr).get("new account")
            if counted["New accounts in the range"] != [accounts]:
                problems.append(f"new accounts in {tr}: {counted['New accounts in the range']}")
        two = influx_outcomes(replayed, board, tr, "two")
        problems += judge(two, strict=False, empty={**EMPTY_FOR_TWO, **empty_for_two})
    assert not problems, "\n".join(problems)


def test_the_lists_of_exceptions_name_existing_targets() -> None:
    targets = {
        (load(p)["uid"], panel["title"], t["refId"])
        for p in DASHBOARD_FILES
        for panel in query_panels(load(p))
        for t in panel["targets"]
    }
    assert set(ZERO_OK) <= targets, set(ZERO_OK) - targets
    for listed in (EXPECTED_EMPTY, EMPTY_IN_THE_HOUR, EMPTY_FOR_TWO, EMPTY_FOR_TWO_IN_THE_HOUR):
        assert set(listed) <= targets, set(listed) - targets
    assert os.path.isdir(GRAFANA)
