"""The bundled Grafana dashboards, built from plain dicts so that they stay consistent: one
datasource variable per dashboard (no ``__inputs``), a unit and a description on every panel,
stable uids, panels laid out on Grafana's 24-column grid by :func:`layout`.

Run ``python grafana/generate.py`` after changing this file: it rewrites the JSON files under
``grafana/provisioning/dashboards/statscache-exporter/``, which are committed (Grafana reads
them as they are). ``--check`` only compares and exits 1 naming the stale files;
``tests/test_grafana.py`` does the same check.

A dashboard for a new plugin is a function returning :func:`dashboard` (...) and an entry in
:data:`DASHBOARDS`; the panel helpers (:func:`timeseries`, :func:`stat`, :func:`table`,
:func:`bargauge`) and the query helpers (:func:`prom`, :func:`influx`) take care of the rest.
Every query is run against a real Prometheus and InfluxDB by the tests, so a panel whose query
cannot return data for the test corpus must be listed there with its reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

Json = dict[str, Any]

#: Where the dashboards live in this repository, below the provisioning tree that an admin
#: copies to Grafana's provisioning folder (see grafana/README.md).
HERE = Path(__file__).resolve().parent
PROVISIONING = HERE / "provisioning"
DASHBOARD_DIR = PROVISIONING / "dashboards" / "statscache-exporter"

#: The JSON model these dashboards are written in (Grafana 10.4-11; later versions migrate it).
SCHEMA_VERSION = 39
#: Every dashboard carries this tag; the dashboards link to each other through it.
TAG = "statscache-exporter"
#: The datasources that grafana/provisioning/datasources/statscache-exporter.yaml creates: the
#: datasource variables select them by default (another of the same type can be picked).
PROMETHEUS_UID = "statscache-prometheus"
PROMETHEUS_NAME = "statscache Prometheus"
INFLUXDB_UID = "statscache-influxdb"
INFLUXDB_NAME = "statscache InfluxDB"

#: The exporter's default ``prometheus.prefix`` (statscache_exporter.config.PrometheusConfig),
#: which starts every Prometheus metric name and InfluxDB measurement name; the committed
#: dashboards are built with it, another is ``--prefix`` (every builder takes the prefix).
DEFAULT_PREFIX = "statscache_"


# --- queries ------------------------------------------------------------------------------------


def ds(kind: str) -> Json:
    """A reference to the dashboard's datasource variable (``kind``: prometheus, influxdb)."""
    return {"type": kind, "uid": "${datasource}"}


def prom(expr: str, legend: str = "", instant: bool = False, table: bool = False) -> Json:
    """A PromQL target: a range query for graphs, an instant one for stats and tables."""
    return {
        "datasource": ds("prometheus"),
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "refId": "",  # numbered by the panel helpers
    }


def influx(query: str, alias: str = "", table: bool = False) -> Json:
    """A raw InfluxQL target (``$timeFilter``, ``$__interval``, ``$__interval_ms`` are filled in
    by Grafana; dashboard variables are regex-escaped, so use them as ``=~ /^$var$/``)."""
    target: Json = {
        "datasource": ds("influxdb"),
        "query": query,
        "rawQuery": True,
        "refId": "",
        "resultFormat": "table" if table else "time_series",
    }
    if alias:
        target["alias"] = alias
    return target


def sel(metric: str, *matchers: str) -> str:
    """``metric{matchers}``; the overview and health dashboards filter every selector by the
    ``instance`` variable."""
    inside = ", ".join(('instance=~"$instance"', *matchers))
    return f"{metric}{{{inside}}}"


def in_range(selector: str) -> str:
    """Per series, what a plugin counter added over the dashboard's range. The exporter's
    totals never reset (a restart goes on from the store), so the difference of two samples is
    exact, and a series first seen within the range counts from zero, which ``increase()``
    would miss (it needs two samples, and does not count the first)."""
    return f"({selector} - {selector} offset $__range or {selector})"


def rate(selector: str) -> str:
    return f"rate({selector}[$__rate_interval])"


#: The window of the recording rules in prometheus/rules.yaml (prometheus/generate.py), whose
#: per-target series ``<level>:<prefix><metric>:rate5m`` the busiest panels read.
RECORDED_WINDOW = "5m"


def recorded_rate(
    prefix: str, level: str, metric: str, labels: Sequence[str], *matchers: str
) -> str:
    """Per target (job, instance) and ``labels``, the per-second rate of the plugin counter
    ``metric``: the recording rule's series (prometheus/rules.yaml) where Prometheus has it,
    else the same rate computed from the counter. So the panel works with or without the
    rules loaded, and per target: one scraped by another job, or a time before the rules
    were loaded, falls back to the counter (``or`` takes the left side's series first)."""
    keep = ", ".join(("job", "instance", *labels))
    record = f"{level}:{prefix}{metric}:rate{RECORDED_WINDOW}"
    counter = prefix + metric + "_total"
    return (
        f"(sum by ({keep}) ({sel(record, *matchers)})"
        f" or sum by ({keep}) ({rate(sel(counter, *matchers))}))"
    )


# --- panels -------------------------------------------------------------------------------------


def _panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    w: int,
    h: int,
    defaults: Json | None = None,
    options: Json | None = None,
    overrides: Sequence[Json] = (),
    **extra: Any,
) -> Json:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    numbered = [{**t, "refId": refs[i]} for i, t in enumerate(targets)]
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": dict(numbered[0]["datasource"]),
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},  # placed by layout()
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": list(overrides),
        },
        "options": options or {},
        "targets": numbered,
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    w: int = 12,
    h: int = 8,
    stacked: bool = False,
    bars: bool = False,
) -> Json:
    custom = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if stacked or bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
    }
    return _panel(
        "timeseries",
        title,
        description,
        unit,
        targets,
        w,
        h,
        defaults={"color": {"mode": "palette-classic"}, "custom": custom, "min": 0},
        options={
            "legend": {
                "calcs": ["mean", "max"],
                "displayMode": "table",
                "placement": "right" if w >= 18 else "bottom",
                "showLegend": True,
                "sortBy": "Mean",
                "sortDesc": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def stat(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    w: int = 6,
    h: int = 4,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    mappings: Sequence[Json] = (),
    decimals: int | None = None,
) -> Json:
    defaults: Json = {"color": {"mode": "thresholds"}, "thresholds": thresholds(*steps)}
    if mappings:
        defaults["mappings"] = list(mappings)
    if decimals is not None:
        defaults["decimals"] = decimals
    return _panel(
        "stat",
        title,
        description,
        unit,
        targets,
        w,
        h,
        defaults=defaults,
        options={
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
    )


def table(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    value_column: str,
    label: str,
    w: int = 12,
    h: int = 10,
    value_name: str = "messages",
) -> Json:
    """A table of one label and one value column (shown as ``value_name``), sorted by the
    value (instant PromQL with ``format: table``, or InfluxQL with ``resultFormat: table``)."""
    return _panel(
        "table",
        title,
        description,
        unit,
        targets,
        w,
        h,
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        options={
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
            "showHeader": True,
            "sortBy": [{"desc": True, "displayName": value_name}],
        },
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "time": True},
                    "indexByName": {label: 0, value_column: 1},
                    "renameByName": {value_column: value_name},
                },
            }
        ],
    )


def bargauge(
    title: str, description: str, unit: str, targets: Sequence[Json], w: int = 12, h: int = 8
) -> Json:
    return _panel(
        "bargauge",
        title,
        description,
        unit,
        targets,
        w,
        h,
        defaults={"color": {"mode": "thresholds"}, "thresholds": thresholds((None, "blue"))},
        options={
            "displayMode": "basic",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
        },
    )


def value_mapping(states: Sequence[tuple[str, str]]) -> Json:
    """A Grafana value mapping of state codes 0, 1, ... to (name, colour), in that order: how
    the releng plugins' ``..._status`` gauges (a number per state) read as text again."""
    return {
        "options": {
            str(code): {"color": color, "index": code, "text": name}
            for code, (name, color) in enumerate(states)
        },
        "type": "value",
    }


def _column(ref: str, **properties: Any) -> Json:
    """A field override for the value column of query ``ref`` of a merged table (Grafana
    names it ``Value #<ref>``)."""
    return {
        "matcher": {"id": "byName", "options": f"Value #{ref}"},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def state_table(
    title: str,
    description: str,
    labels: Sequence[str],
    state: str,
    changed: str,
    succeeded: str | None,
    mapping: Json,
    w: int = 24,
    h: int = 10,
) -> Json:
    """The latest state of each thing a releng plugin follows: one row per ``labels``, with
    its state in colour (``state``: the ``..._status`` gauge, mapped back to names by
    ``mapping``), how long it has been in it (``changed``: ``time() - ..._last_change``) and,
    if given, how long since its last success (``succeeded``). Three instant queries in table
    format, merged on the labels (each query keeps only ``labels``, so the rows line up)."""

    def by(expr: str) -> str:
        return f"max by ({', '.join(labels)}) ({expr})"

    targets = [prom(by(state), instant=True, table=True)]
    targets.append(prom(f"time() - {by(changed)}", instant=True, table=True))
    overrides = [
        _column(
            "A",
            displayName="state",
            unit="none",
            mappings=[mapping],
            **{"custom.cellOptions": {"type": "color-background", "mode": "basic"}},
        ),
        _column("B", displayName="in this state for"),
    ]
    if succeeded is not None:
        targets.append(prom(f"time() - {by(succeeded)}", instant=True, table=True))
        overrides.append(_column("C", displayName="last success"))
    order = {name: i for i, name in enumerate([*labels, "Value #A", "Value #B", "Value #C"])}
    return _panel(
        "table",
        title,
        description,
        "s",
        targets,
        w,
        h,
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        options={
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
            "showHeader": True,
            "sortBy": [{"desc": False, "displayName": labels[0]}],
        },
        overrides=overrides,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "indexByName": order},
            },
        ],
    )


def matrix_table(
    title: str,
    description: str,
    unit: str,
    target: Json,
    row_label: str,
    column_label: str,
    w: int = 12,
    h: int = 10,
) -> Json:
    """One instant query in table format, pivoted: a row per ``row_label`` value, a column
    per ``column_label`` value (Grafana's "Grouping to matrix" transformation)."""
    return _panel(
        "table",
        title,
        description,
        unit,
        [target],
        w,
        h,
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}, "noValue": "0"},
        options={
            "cellHeight": "sm",
            "footer": {"show": True, "reducer": ["sum"], "fields": ""},
            "showHeader": True,
        },
        transformations=[
            {
                "id": "groupingToMatrix",
                "options": {
                    "columnField": column_label,
                    "rowField": row_label,
                    "valueField": "Value",
                    "emptyValue": "null",
                },
            }
        ],
    )


def row(title: str) -> Json:
    """A section header (Grafana's ``row`` panel: no query, the full width)."""
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0},
        "panels": [],
    }


def layout(panels: Iterable[Json]) -> list[Json]:
    """Places panels left to right on the 24-column grid, starting a new line when one does
    not fit (and always for a row), and numbers them (Grafana wants unique panel ids)."""
    placed: list[Json] = []
    x = y = line_height = 0
    for number, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if panel["type"] == "row" or x + pos["w"] > 24:
            x, y, line_height = 0, y + line_height, 0
        placed.append({"id": number, **panel, "gridPos": {**pos, "x": x, "y": y}})
        x += pos["w"]
        line_height = max(line_height, pos["h"])
        if panel["type"] == "row":
            x, y, line_height = 0, y + pos["h"], 0
    return placed


# --- twin dashboards ----------------------------------------------------------------------------

#: The two datasources of a twin pair of dashboards (Prometheus and InfluxDB).
Side = Literal["prometheus", "influxdb"]


class Query(NamedTuple):
    """One datasource's half of a :class:`Twin` panel: its targets (:func:`prom` or
    :func:`influx`) and what else differs per datasource, because the two count differently
    (processing time against the messages' own time): the description, and where given the
    title, the unit and the panel helper's other arguments (``options``: ``bars``,
    ``stacked``, ``value_column``, ``decimals``, ``w``, ...)."""

    targets: Sequence[Json]
    description: str
    title: str | None = None
    unit: str | None = None
    options: Mapping[str, Any] = {}


class Twin(NamedTuple):
    """One panel of a twin pair of dashboards, declared once for both: the panel helper
    (``kind``), the title and unit both sides use unless their :class:`Query` says otherwise,
    the helper's arguments both share (``layout``), and each side's query. A panel on one
    side only says so with ``None`` for the other (both are required). ``influxdb_before``
    names the twin (by its title) before which the InfluxDB dashboard places this panel when
    its grid puts it elsewhere than the Prometheus one does."""

    kind: Callable[..., Json]
    title: str
    unit: str
    prometheus: Query | None
    influxdb: Query | None
    layout: Mapping[str, Any] = {}
    influxdb_before: str | None = None

    def query(self, side: Side) -> Query | None:
        """This panel's query for ``side``, or None if the panel is on the other side only."""
        return self.prometheus if side == "prometheus" else self.influxdb

    def panel(self, side: Side) -> Json | None:
        """The panel of the ``side`` dashboard, or None if it has none."""
        query = self.query(side)
        if query is None:
            return None
        title = query.title or self.title
        if self.kind is row:
            return row(title)
        unit = query.unit or self.unit
        return self.kind(
            title, query.description, unit, query.targets, **self.layout, **query.options
        )


def twin_row(title: str) -> Twin:
    """A section header on both twins."""
    return Twin(row, title, "", prometheus=Query([], ""), influxdb=Query([], ""))


def twin_order(specs: Sequence[Twin], side: Side) -> list[Twin]:
    """The specs in the order of the ``side`` dashboard: as declared, but for InfluxDB with
    each ``influxdb_before`` twin moved before the one it names."""
    ordered = list(specs)
    if side == "influxdb":
        for spec in [s for s in specs if s.influxdb_before is not None]:
            ordered.remove(spec)
            at = next(i for i, s in enumerate(ordered) if s.title == spec.influxdb_before)
            ordered.insert(at, spec)
    return ordered


def twin_panels(specs: Sequence[Twin], side: Side) -> list[Json]:
    """The panels of the ``side`` dashboard of a twin pair, in its order (see
    :func:`twin_order`), leaving out the panels of the other side only."""
    panels = (spec.panel(side) for spec in twin_order(specs, side))
    return [panel for panel in panels if panel is not None]


# --- variables and dashboards -------------------------------------------------------------------


def datasource_variable(kind: str) -> Json:
    """The datasource the dashboard queries: any datasource of ``kind``, by default the one the
    provisioning creates (where that uid does not exist, as after a manual import, Grafana
    selects another datasource of the type and the user picks the right one)."""
    uid, name = (
        (PROMETHEUS_UID, PROMETHEUS_NAME) if kind == "prometheus" else (INFLUXDB_UID, INFLUXDB_NAME)
    )
    return {
        "current": {"selected": False, "text": name, "value": uid},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": kind,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_variable(
    kind: str,
    name: str,
    label: str,
    query: str,
    multi: bool = True,
    all_value: str | None = None,
) -> Json:
    """Values from the datasource (``label_values(...)`` for Prometheus, ``SHOW TAG VALUES``
    for InfluxDB), refreshed with the time range; multi-value with All. All stands for every
    value, regex-joined; or, with ``all_value``, for that regex, which Grafana substitutes
    unformatted: ``.*`` for labels with thousands of values (users, projects), where the
    joined list would make every query as long as the list (``=~ ".*"`` and ``=~ /^.*$/``
    work in PromQL and InfluxQL alike, and also match ``__other__``)."""
    return {
        "allValue": all_value,
        "current": {},
        "datasource": ds(kind),
        "definition": query,
        "hide": 0,
        "includeAll": multi,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def custom_variable(name: str, label: str, values: Sequence[str]) -> Json:
    return {
        "current": {"selected": True, "text": values[0], "value": values[0]},
        "hide": 0,
        "includeAll": False,
        "label": label,
        "multi": False,
        "name": name,
        "options": [{"selected": i == 0, "text": v, "value": v} for i, v in enumerate(values)],
        "query": ",".join(values),
        "skipUrlSync": False,
        "type": "custom",
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[Json],
    panels: Iterable[Json],
    time_from: str,
    refresh: str,
    tags: Sequence[str] = (),
) -> Json:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": [TAG],
                "targetBlank": False,
                "title": "statscache-exporter",
                "type": "dashboards",
            }
        ],
        "liveNow": False,
        "panels": layout(panels),
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG, *tags],
        "templating": {"list": list(variables)},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# --- Fedora bus overview ------------------------------------------------------------------------

TOP = custom_variable("top", "Top", ["10", "20", "50"])

#: (label, metric, what the label is) for the top-N tables of both overview dashboards.
BREAKDOWNS = [
    ("topic", "messages_by_topic", "Topics"),
    ("user", "messages_by_user", "Users"),
    ("package", "messages_by_package", "Packages"),
    ("agent", "messages_by_agent", "Agents"),
]
BREAKDOWN_NOTES = {
    "topic": "every message once, under its full topic",
    "user": "a message once per username it names (Fedmsg-era envelopes name none)",
    "package": "a message once per package it names (Fedmsg-era envelopes name none)",
    "agent": "a message once under its agent, when the message or its schema names one",
}


def bus_overview_panels(prefix: str) -> list[Twin]:
    """Both overview dashboards' panels, declared once: by processing time in Prometheus, by
    the messages' own time in InfluxDB's per-second points (for long ranges). The exporter's
    self-metrics (rate now, rejected, duplicates) are Prometheus only; the busiest second,
    the average rate and the category count InfluxDB only."""
    messages = prefix + "messages_total"
    rejected = prefix + "exporter_messages_rejected_total"
    duplicate = prefix + "exporter_messages_duplicate_total"
    measurement = f'"{prefix}messages"'
    by_category = f'"{prefix}messages_by_category"'
    category = 'category=~"$category"'
    # 1000.0: InfluxDB 1.6 types integer arithmetic in a subquery as integer (0 for < 1/s)
    per_second = 'sum("count") * 1000.0 / $__interval_ms'
    panels = [
        Twin(
            stat,
            "Messages per second now",
            "mps",
            prometheus=Query(
                [
                    prom(
                        f"sum({recorded_rate(prefix, 'instance', 'messages', ())})",
                        instant=True,
                    )
                ],
                "Messages the exporters counted per second, now (rate over $__rate_interval). "
                "Counted when processed: a replay or a backfill shows as a burst.",
                options={"decimals": 2},
            ),
            influxdb=None,
        ),
        Twin(
            stat,
            "Messages counted in the range",
            "short",
            prometheus=Query(
                [prom(f"sum({in_range(sel(messages))})", instant=True)],
                "Messages the exporters counted over the dashboard's time range (by when they "
                "were processed; the InfluxDB dashboard counts by the messages' own time).",
            ),
            influxdb=Query(
                [influx(f'SELECT sum("count") FROM {measurement} WHERE $timeFilter')],
                "Messages whose own time falls in the dashboard's time range.",
                title="Messages in the range",
            ),
        ),
        Twin(
            stat,
            "Rejected in the range",
            "short",
            prometheus=Query(
                [prom(f"sum(increase({sel(rejected)}[$__range]))", instant=True)],
                "Messages rejected as malformed over the time range (all reasons, all "
                "sources). The exporter logs each with its reason.",
                options={"steps": ((None, "green"), (1, "orange"))},
            ),
            influxdb=None,
        ),
        Twin(
            stat,
            "Duplicates in the range",
            "short",
            prometheus=Query(
                [prom(f"sum(increase({sel(duplicate)}[$__range]))", instant=True)],
                "Messages skipped as already counted (same id) over the time range: "
                "redeliveries, overlapping replays and backfills.",
            ),
            influxdb=None,
        ),
        Twin(
            stat,
            "Busiest second",
            "short",
            prometheus=None,
            influxdb=Query(
                [influx(f'SELECT max("count") FROM {measurement} WHERE $timeFilter')],
                "The most messages stamped with the same second within the time range.",
            ),
        ),
        Twin(
            stat,
            "Average per second",
            "mps",
            prometheus=None,
            influxdb=Query(
                [
                    influx(
                        f'SELECT mean("rate") FROM (SELECT {per_second} AS "rate" '
                        f"FROM {measurement} WHERE $timeFilter "
                        "GROUP BY time($__interval) fill(0))"
                    )
                ],
                "Messages per second over the time range, averaged per $__interval interval "
                "and then over the range (intervals without messages count as 0).",
                options={"decimals": 3},
            ),
        ),
        Twin(
            stat,
            "Categories",
            "short",
            prometheus=None,
            influxdb=Query(
                [
                    influx(
                        'SELECT count("total") FROM (SELECT sum("count") AS "total" '
                        f'FROM {by_category} WHERE $timeFilter GROUP BY "category")'
                    )
                ],
                "Categories with at least one message in the time range.",
            ),
        ),
        Twin(
            timeseries,
            "Messages per second",
            "mps",
            prometheus=Query(
                [
                    prom(
                        f"sum by (instance) ({recorded_rate(prefix, 'instance', 'messages', ())})",
                        "{{instance}}",
                    )
                ],
                "Messages counted per second by each exporter instance (rate over "
                "$__rate_interval), by when they were processed.",
            ),
            influxdb=Query(
                [
                    influx(
                        f"SELECT {per_second} FROM {measurement} WHERE $timeFilter "
                        "GROUP BY time($__interval) fill(0)",
                        alias="messages",
                    )
                ],
                "Messages per second by their own time, averaged over each $__interval interval.",
            ),
            layout={"w": 24},
        ),
        Twin(
            timeseries,
            "Messages per second by category",
            "mps",
            prometheus=Query(
                [
                    prom(
                        "sum by (category) ("
                        + recorded_rate(
                            prefix,
                            "instance_category",
                            "messages_by_category",
                            ["category"],
                            category,
                        )
                        + ")",
                        "{{category}}",
                    )
                ],
                "Messages per second by category (the topic's fourth part after "
                "<prefix>.<env>., e.g. bodhi, buildsys, copr), stacked. Filter with the "
                "Category variable.",
            ),
            influxdb=Query(
                [
                    influx(
                        f"SELECT {per_second} FROM {by_category} "
                        'WHERE "category" =~ /^$category$/ AND $timeFilter '
                        'GROUP BY time($__interval), "category" fill(0)',
                        alias="$tag_category",
                    )
                ],
                "Messages per second by category and their own time, averaged over each "
                "$__interval interval, stacked. Filter with the Category variable.",
            ),
            layout={"w": 24, "h": 10, "stacked": True},
        ),
    ]
    panels += [breakdown_table(prefix, label, metric, what) for label, metric, what in BREAKDOWNS]
    panels += [
        Twin(
            timeseries,
            "Rejected messages per second by reason",
            "mps",
            prometheus=Query(
                [
                    prom(
                        f"sum by (reason, source) ({rate(sel(rejected))})",
                        "{{reason}} ({{source}})",
                    )
                ],
                "Messages rejected as malformed, by reason (not_json, bad_timestamp, "
                "no_topic, ...) and source. Never fatal: each is counted and logged.",
            ),
            influxdb=None,
        ),
        Twin(
            timeseries,
            "Duplicate messages per second by source",
            "mps",
            prometheus=Query(
                [prom(f"sum by (source) ({rate(sel(duplicate))})", "{{source}}")],
                "Messages skipped because their id was counted already, by source: a "
                "redelivery after a crash, an overlapping replay, a backfill meeting live "
                "messages.",
            ),
            influxdb=None,
        ),
    ]
    return panels


def breakdown_table(prefix: str, label: str, metric: str, what: str) -> Twin:
    """The top-N table of one label of the overviews (topics, users, packages, agents)."""
    counter = sel(prefix + metric + "_total")
    return Twin(
        table,
        f"Top $top {what.lower()}",
        "short",
        prometheus=Query(
            [prom(f"topk($top, sum by ({label}) {in_range(counter)})", instant=True, table=True)],
            f"{what} with the most messages counted over the time range "
            f"({BREAKDOWN_NOTES[label]}). A label value first seen within the range "
            "counts in full.",
            options={"value_column": "Value"},
        ),
        influxdb=Query(
            [
                influx(
                    f'SELECT top("total", "{label}", $top) AS "messages" FROM '
                    f'(SELECT sum("count") AS "total" FROM "{prefix}{metric}" '
                    f'WHERE $timeFilter GROUP BY "{label}")',
                    table=True,
                )
            ],
            f"{what} with the most messages in the time range ({BREAKDOWN_NOTES[label]}).",
            options={"value_column": "messages"},
        ),
        layout={"label": label},
    )


def bus_overview_prometheus(prefix: str) -> Json:
    """The overview's Prometheus twin: rates by processing time, the last hours."""
    return dashboard(
        "statscache-bus-overview",
        "Fedora bus overview",
        "What goes over the Fedora message bus, as statscache-exporter counts it: messages "
        "per second, by category, the top topics, users, packages and agents, and what was "
        "rejected or skipped as a duplicate. Prometheus; rates are by processing time.",
        [
            datasource_variable("prometheus"),
            query_variable(
                "prometheus",
                "instance",
                "Instance",
                f"label_values({prefix}messages_total, instance)",
            ),
            query_variable(
                "prometheus",
                "category",
                "Category",
                f'label_values({prefix}messages_by_category_total{{instance=~"$instance"}}, '
                "category)",
            ),
            TOP,
        ],
        twin_panels(bus_overview_panels(prefix), "prometheus"),
        time_from="now-6h",
        refresh="1m",
        tags=["fedora", "prometheus"],
    )


def bus_overview_influxdb(prefix: str) -> Json:
    """The overview's InfluxDB twin: by the messages' own time, for long ranges."""
    return dashboard(
        "statscache-bus-overview-influxdb",
        "Fedora bus overview (InfluxDB)",
        "What goes over the Fedora message bus, from statscache-exporter's per-second points "
        "in InfluxDB (InfluxQL), by the messages' own time: for long ranges and history "
        "replayed or backfilled. Rejected and duplicate counts are in the Prometheus one.",
        [
            datasource_variable("influxdb"),
            query_variable(
                "influxdb",
                "category",
                "Category",
                f'SHOW TAG VALUES FROM "{prefix}messages_by_category" WITH KEY = "category"',
            ),
            TOP,
        ],
        twin_panels(bus_overview_panels(prefix), "influxdb"),
        time_from="now-7d",
        refresh="5m",
        tags=["fedora", "influxdb"],
    )


# --- Exporter health ----------------------------------------------------------------------------

UP_DOWN = {
    "options": {
        "0": {"color": "red", "index": 0, "text": "down"},
        "1": {"color": "green", "index": 1, "text": "up"},
    },
    "type": "value",
}


def exporter_health(prefix: str) -> Json:
    """The exporter's own metrics (``<prefix>exporter_...``): sources, flushes, the store,
    plugins, the InfluxDB sink and the gap filler."""
    own = prefix + "exporter_"

    def m(name: str, *matchers: str) -> str:
        return sel(own + name, *matchers)

    by_instance = "{{instance}}"
    panels = [
        row("Sources"),
        stat(
            "Sources connected",
            "Per source: up while connected (a live bus) or reading (a replay; down once "
            "its files are read). A live source that is down is reconnecting; /readyz says "
            "so and the outage is recorded for the gap filler.",
            "none",
            [prom(m("source_connected"), "{{source}} ({{instance}})", instant=True)],
            w=8,
            mappings=[UP_DOWN],
            steps=((None, "red"), (1, "green")),
        ),
        stat(
            "Newest message age",
            "How old the newest message processed is, by its own time: a live bus keeps it "
            "within seconds; growing means nothing arrives (or only history is replayed).",
            "s",
            [prom(m("newest_message_age_seconds"), by_instance, instant=True)],
            w=8,
            steps=((None, "green"), (120, "orange"), (900, "red")),
        ),
        stat(
            "Time since the last flush",
            "Seconds since the last flush committed to the store (flushes happen every "
            "flush_interval while messages arrive).",
            "s",
            [prom(f"time() - {m('last_flush_timestamp_seconds')}", by_instance, instant=True)],
            w=8,
        ),
        timeseries(
            "Messages received per second by source",
            "Messages handed over by each source, before deduplication and validation.",
            "mps",
            [
                prom(
                    f"sum by (instance, source) ({rate(m('messages_received_total'))})",
                    "{{source}} ({{instance}})",
                )
            ],
        ),
        timeseries(
            "Messages processed, duplicate, rejected per second",
            "What became of the messages received: counted by the plugins, skipped as "
            "duplicates, rejected as malformed.",
            "mps",
            [
                prom(f"sum({rate(m('messages_processed_total'))})", "processed"),
                prom(f"sum({rate(m('messages_duplicate_total'))})", "duplicate"),
                prom(f"sum({rate(m('messages_rejected_total'))})", "rejected"),
            ],
        ),
        row("Store"),
        timeseries(
            "Flush duration",
            "How long the last flush took to commit (one SQLite transaction: message ids, "
            "buckets, totals, checkpoint, outbox).",
            "s",
            [prom(m("flush_duration_seconds"), by_instance)],
            w=8,
        ),
        timeseries(
            "Flushes per second",
            "Flushes committed per second.",
            "ops",
            [prom(f"sum by (instance) ({rate(m('flushes_total'))})", by_instance)],
            w=8,
        ),
        timeseries(
            "Store size",
            "The SQLite store and its WAL on disk.",
            "bytes",
            [prom(m("store_size_bytes"), by_instance)],
            w=8,
        ),
        row("Plugins and series"),
        timeseries(
            "Plugin errors per second",
            "Messages a plugin raised on, by plugin: that message's emissions of that plugin "
            "are lost (the others still see it); the log has the traceback.",
            "cps",
            [prom(f"sum by (plugin) ({rate(m('plugin_errors_total'))})", "{{plugin}}")],
        ),
        timeseries(
            "Emissions over the series cap per second",
            "Emissions counted under the overflow label value (__other__) because their "
            "metric hit its series cap (prometheus.max_series or the plugin's max_series).",
            "cps",
            [
                prom(
                    f"sum by (plugin, metric) ({rate(m('series_overflow_total'))})",
                    "{{metric}} ({{plugin}})",
                )
            ],
        ),
        bargauge(
            "Series per metric",
            "Series each plugin metric has in the exposition: the cardinality to watch "
            "against the cap.",
            "short",
            [
                prom(
                    f"sum by (plugin, metric) ({m('series')})",
                    "{{metric}} ({{plugin}})",
                    instant=True,
                )
            ],
            w=24,
        ),
        row("InfluxDB sink"),
        stat(
            "InfluxDB writes",
            "Up if the last write to InfluxDB went through.",
            "none",
            [prom(m("influxdb_up"), by_instance, instant=True)],
            w=6,
            mappings=[UP_DOWN],
            steps=((None, "red"), (1, "green")),
        ),
        stat(
            "Points set aside",
            "Buckets refused by InfluxDB or with tags line protocol cannot carry: kept in "
            "the store, never sent (the log names the series).",
            "short",
            [prom(f"sum({m('influxdb_failed_points')})", instant=True)],
            w=6,
            steps=((None, "green"), (1, "orange")),
        ),
        stat(
            "Changes not queued",
            "Bucket changes not queued for InfluxDB over the time range: the outbox was full "
            "(influxdb.max_pending), or a late message for a second retention had pruned.",
            "short",
            [
                prom(
                    f"sum(increase({m('influxdb_outbox_overflow_total')}[$__range])) + "
                    f"sum(increase({m('influxdb_late_unsent_total')}[$__range]))",
                    instant=True,
                )
            ],
            w=6,
            steps=((None, "green"), (1, "orange")),
        ),
        stat(
            "Oldest queued point",
            "Age of the oldest bucket waiting for InfluxDB (0 when nothing waits).",
            "s",
            [
                prom(
                    f"max({m('influxdb_oldest_pending_age_seconds')} "
                    f"or {m('influxdb_pending_points')} * 0)",
                    instant=True,
                )
            ],
            w=6,
            steps=((None, "green"), (60, "orange"), (600, "red")),
        ),
        timeseries(
            "Points waiting for InfluxDB",
            "Points queued in the outbox: it grows while InfluxDB is away and drains once "
            "it answers; message processing goes on meanwhile.",
            "short",
            [prom(m("influxdb_pending_points"), by_instance)],
        ),
        timeseries(
            "Points written, failed batches, refused points per second",
            "Points InfluxDB acknowledged, batches it did not take (retried with backoff), "
            "points it refused for their data (set aside).",
            "cps",
            [
                prom(f"sum({rate(m('influxdb_points_written_total'))})", "written"),
                prom(f"sum({rate(m('influxdb_batches_failed_total'))})", "failed batches"),
                prom(f"sum({rate(m('influxdb_points_refused_total'))})", "refused"),
            ],
        ),
        row("Backfill (gap filler)"),
        timeseries(
            "Backfill remaining",
            "Time range the gap filler has yet to fetch from datagrepper.",
            "s",
            [prom(m("backfill_remaining_seconds"), by_instance)],
        ),
        timeseries(
            "Backfill progress per second",
            "Messages fetched from datagrepper, windows handed over, failed window reads "
            "(retried) and single requests asked again, per second.",
            "cps",
            [
                prom(f"sum({rate(m('backfill_messages_total'))})", "messages"),
                prom(f"sum({rate(m('backfill_windows_total'))})", "windows"),
                prom(f"sum({rate(m('backfill_requests_failed_total'))})", "failed reads"),
                prom(f"sum({rate(m('backfill_requests_retried_total'))})", "retried requests"),
            ],
        ),
    ]
    return dashboard(
        "statscache-exporter-health",
        "statscache-exporter health",
        "The exporter's own metrics: sources, message age, flushes and the store, plugin "
        "errors, series counts and the cap, the InfluxDB sink and the gap filler.",
        [
            datasource_variable("prometheus"),
            query_variable(
                "prometheus",
                "instance",
                "Instance",
                f"label_values({own}flushes_total, instance)",
            ),
        ],
        panels,
        time_from="now-3h",
        refresh="30s",
        tags=["prometheus"],
    )


# --- Release engineering ------------------------------------------------------------------------

#: The releng plugins' state codes (plugins/releng/README.md), as the ``..._status`` gauges
#: hold them, with a colour each: composes, image uploads and koji image artifacts ...
COMPOSE_STATES = value_mapping(
    [
        ("started", "blue"),
        ("finished", "green"),
        ("failed", "red"),
        ("finished_incomplete", "orange"),
        ("canceled", "purple"),
        ("deleted", "#8e8e8e"),
    ]
)
#: ... and the steps of a bodhi compose (a push) of one repo, in the order bodhi goes.
BODHI_COMPOSE_STEPS = value_mapping(
    [
        ("composing", "blue"),
        ("repo_done", "light-blue"),
        ("sync_wait", "yellow"),
        ("synced", "light-green"),
        ("complete", "green"),
        ("failed", "red"),
    ]
)
#: how old the last success may be before it shows orange, then red (composes are nightly)
DAILY = ((None, "green"), (26 * 3600, "orange"), (3 * 86400, "red"))


def no_empty(expr: str, label: str, text: str) -> str:
    """``expr`` with an empty (absent) ``label`` shown as ``text``, for legends and tables."""
    return f'label_replace({expr}, "{label}", "{text}", "{label}", "")'


def release_engineering(prefix: str) -> Json:
    """Composes, bodhi pushes, koji and copr builds (the releng, koji, copr and bodhi
    plugins): the latest state of each compose and push as coloured tables, what happened in
    the time range, builds in flight."""

    def m(name: str, *matchers: str) -> str:
        return sel(prefix + name, *matchers)

    compose = ('release=~"$release"',)
    koji = ('koji=~"$koji"',)
    started = m("koji_builds_started_total", *koji)
    finished = m("koji_builds_finished_total", *koji)
    open_builds = f"sum by (koji) (clamp_min({started} - {finished}, 0))"
    last_compose = m("releng_compose_last_success_timestamp_seconds", *compose, 'stage="compose"')
    pushed = m("bodhi_updates_total", 'event=~"pushed_.*"')
    panels = [
        row("Composes"),
        state_table(
            "Latest compose states",
            "Each compose and compose stage (release, arch, stage) in the state of its newest "
            "message, however old: started, finished, failed, finished_incomplete (pungi); "
            "how long it has been in that state; how long since it last finished. Stage "
            "'compose' is the whole compose. Filter with the Release variable.",
            ["release", "arch", "stage"],
            m("releng_compose_status", *compose),
            m("releng_compose_last_change_timestamp_seconds", *compose),
            m("releng_compose_last_success_timestamp_seconds", *compose),
            COMPOSE_STATES,
            h=12,
        ),
        stat(
            "Last successful compose",
            "Time since each release's last finished compose (stage 'compose', by the "
            "message's own time): orange past 26 hours, red past 3 days.",
            "s",
            [
                prom(
                    f"time() - max by (release, arch) ({last_compose})",
                    "{{release}} ({{arch}})",
                    instant=True,
                )
            ],
            w=24,
            h=6,
            steps=DAILY,
        ),
        bargauge(
            "Compose messages in the range by state",
            "Compose and stage messages counted over the time range, by the state they "
            "announce (all releases and stages selected).",
            "short",
            [
                prom(
                    f"sum by (status) {in_range(m('releng_compose_events_total', *compose))}",
                    "{{status}}",
                    instant=True,
                )
            ],
        ),
        state_table(
            "Latest koji image artifact states",
            "Koji's image builds and tasks (live media, appliances, cloud images) by method, "
            "name and version, in the state of their newest message, for how long, and the "
            "time since they last finished.",
            ["method", "name", "version"],
            m("releng_koji_artifact_status"),
            m("releng_koji_artifact_last_change_timestamp_seconds"),
            m("releng_koji_artifact_last_success_timestamp_seconds"),
            COMPOSE_STATES,
            w=12,
            h=8,
        ),
        row("Bodhi pushes"),
        state_table(
            "Latest push state per repo",
            "Each updates repo bodhi composes (pushes), at the step of its newest message: "
            "composing, repo_done, sync_wait, synced, complete, failed; for how long; the "
            "time since its last complete push.",
            ["repo"],
            m("releng_bodhi_compose_status"),
            m("releng_bodhi_compose_last_change_timestamp_seconds"),
            m("releng_bodhi_compose_last_success_timestamp_seconds"),
            BODHI_COMPOSE_STEPS,
            w=12,
        ),
        table(
            "Time since the last sync to the master mirror",
            "Updates repos synced to the master mirror (bodhi.updates.<distro>.sync), by "
            "distro, release and repo, and the time since their last sync (most recent first).",
            "s",
            [
                prom(
                    "time() - max by (distro, release, repo) "
                    f"({m('releng_updates_last_sync_timestamp_seconds')})",
                    instant=True,
                    table=True,
                )
            ],
            value_column="Value",
            label="repo",
            value_name="since the last sync",
        ),
        bargauge(
            "Push steps in the range",
            "Bodhi compose steps counted over the time range, all repos: each push goes "
            "composing, repo_done, sync_wait, synced, complete (or failed).",
            "short",
            [
                prom(
                    f"sum by (step) {in_range(m('releng_bodhi_compose_events_total'))}",
                    "{{step}}",
                    instant=True,
                )
            ],
        ),
        bargauge(
            "Updates pushed in the range",
            "Updates bodhi pushed to testing and to stable over the time range, by release "
            "(the bodhi plugin's pushed_testing and pushed_stable events).",
            "short",
            [
                prom(
                    f"sum by (release, event) {in_range(pushed)}",
                    "{{release}} {{event}}",
                    instant=True,
                )
            ],
        ),
        row("Koji"),
        timeseries(
            "Koji build state changes per second by state",
            "Builds changing state per second, by the state they change to (building, "
            "complete, failed, canceled, deleted), stacked; by processing time.",
            "cps",
            [
                prom(
                    "sum by (state) ("
                    + recorded_rate(
                        prefix, "instance_koji_state", "koji_builds", ["koji", "state"], *koji
                    )
                    + ")",
                    "{{state}}",
                )
            ],
            stacked=True,
        ),
        bargauge(
            "Koji builds by state in the range",
            "Build state changes over the time range, by the state they change to.",
            "short",
            [
                prom(
                    f"sum by (state) {in_range(m('koji_builds_total', *koji))}",
                    "{{state}}",
                    instant=True,
                )
            ],
        ),
        stat(
            "Builds open now",
            "Builds in the building state now, per koji: builds that entered it minus builds "
            "that left it, never below 0 (builds already running when the store's history "
            "begins finish without having been seen to start; feed more history to shrink "
            "that gap).",
            "short",
            [prom(open_builds, "{{koji}}", instant=True)],
            w=8,
            h=8,
        ),
        timeseries(
            "Builds open",
            "Builds in the building state over time, per koji (entered minus left, never below 0).",
            "short",
            [prom(open_builds, "{{koji}}")],
            w=16,
        ),
        row("Copr"),
        timeseries(
            "Copr chroot builds ended per second by chroot",
            "Copr chroot builds ending per second (any status), for the $top busiest "
            "chroots; by processing time.",
            "cps",
            [
                prom(
                    f"topk($top, sum by (chroot) ({rate(m('copr_builds_ended_total'))}))",
                    "{{chroot}}",
                )
            ],
        ),
        bargauge(
            "Top $top chroots by builds started in the range",
            "Copr chroot builds started over the time range, for the $top chroots with the "
            "most (copr's build.start named no chroot from 2013 to 2016: those count under "
            "'(no chroot)').",
            "short",
            [
                prom(
                    no_empty(
                        f"topk($top, sum by (chroot) {in_range(m('copr_builds_started_total'))})",
                        "chroot",
                        "(no chroot)",
                    ),
                    "{{chroot}}",
                    instant=True,
                )
            ],
        ),
        matrix_table(
            "Copr chroot builds ended in the range by status",
            "Copr chroot builds that ended over the time range: a row per chroot, a column "
            "per status (succeeded, failed, canceled, skipped...).",
            "short",
            prom(
                f"sum by (chroot, status) {in_range(m('copr_builds_ended_total'))}",
                instant=True,
                table=True,
            ),
            row_label="chroot",
            column_label="status",
            w=24,
        ),
    ]
    return dashboard(
        "statscache-release-engineering",
        "Release engineering",
        "Composes, bodhi pushes, koji and copr builds as statscache-exporter counts them: "
        "the latest state of every compose stage, push and koji image artifact (kept at the "
        "newest message, in any arrival order), what happened in the time range, builds in "
        "flight. Prometheus; rates and counts in the range are by processing time.",
        [
            datasource_variable("prometheus"),
            query_variable(
                "prometheus",
                "instance",
                "Instance",
                f"label_values({prefix}releng_compose_events_total, instance)",
            ),
            query_variable(
                "prometheus",
                "release",
                "Release",
                f'label_values({prefix}releng_compose_status{{instance=~"$instance"}}, release)',
            ),
            query_variable(
                "prometheus",
                "koji",
                "Koji",
                f'label_values({prefix}koji_builds_total{{instance=~"$instance"}}, koji)',
            ),
            TOP,
        ],
        panels,
        time_from="now-6h",
        refresh="1m",
        tags=["fedora", "releng", "prometheus"],
    )


# --- Contributors -------------------------------------------------------------------------------

#: Pagure's users and bodhi's commenters are both Fedora accounts: one User variable for both.
CONTRIBUTOR_METRICS = "pagure_contributions_by_user|bodhi_comments_by_user"
#: The InfluxDB contributors dashboard counts per interval of the time axis, not per second.
PER_INTERVAL = (
    "in each interval of the time axis (zoom out for coarser bars), by the messages' own time"
)
#: The InfluxDB side of the contributors' graphs: counts per interval as stacked bars.
BARS: Json = {"stacked": True, "bars": True}
FORGE_PROM = 'forge=~"$forge"'
FORGE_INFLUX = '"forge" =~ /^$forge$/'


class ContributorQueries(NamedTuple):
    """The contributors dashboards' query builders for one metric ``prefix``: PromQL
    selectors of plugin counters, and InfluxQL sums over their per-second points."""

    prefix: str

    def m(self, name: str, *matchers: str) -> str:
        """The PromQL selector of the plugin counter ``name`` (``<prefix><name>_total``)."""
        return sel(self.prefix + name + "_total", *matchers)

    def sum_of(self, measurement: str, where: str = "", by: str = "") -> str:
        """``sum("count")`` of ``measurement`` in the time range (and ``where``), per interval
        of the time axis (and per ``by`` tag)."""
        condition = f"{where} AND $timeFilter" if where else "$timeFilter"
        group = f'GROUP BY time($__interval), "{by}"' if by else "GROUP BY time($__interval)"
        return (
            f'SELECT sum("count") FROM "{self.prefix}{measurement}" '
            f"WHERE {condition} {group} fill(none)"
        )

    def total(self, measurement: str, where: str = "") -> str:
        """``sum("count")`` of ``measurement`` over the whole time range (and ``where``)."""
        condition = f"{where} AND $timeFilter" if where else "$timeFilter"
        return f'SELECT sum("count") FROM "{self.prefix}{measurement}" WHERE {condition}'

    def by_tag(self, measurement: str, tag: str) -> str:
        """``sum("count")`` of ``measurement`` over the time range, per ``tag``."""
        return (
            f'SELECT sum("count") FROM "{self.prefix}{measurement}" '
            f'WHERE $timeFilter GROUP BY "{tag}"'
        )

    def distinct(self, measurement: str, tag: str, where: str) -> str:
        """How many values of ``tag`` have a point in the time range."""
        return (
            f'SELECT count("total") FROM (SELECT sum("count") AS "total" FROM '
            f'"{self.prefix}{measurement}" WHERE {where} AND $timeFilter GROUP BY "{tag}")'
        )

    def top(self, measurement: str, tag: str, where: str = "") -> str:
        """The ``$top`` values of ``tag`` with the most counted over the time range."""
        condition = f"{where} AND $timeFilter" if where else "$timeFilter"
        return (
            f'SELECT top("total", "{tag}", $top) AS "total" FROM (SELECT sum("count") AS '
            f'"total" FROM "{self.prefix}{measurement}" WHERE {condition} GROUP BY "{tag}")'
        )


def top_table(
    title: str, label: str, value_name: str, promql: str, influxql: str, descriptions: Sequence[str]
) -> Twin:
    """A top-N table of both contributors dashboards (``descriptions``: Prometheus, InfluxDB)."""
    return Twin(
        table,
        title,
        "short",
        prometheus=Query(
            [prom(promql, instant=True, table=True)],
            descriptions[0],
            options={"value_column": "Value"},
        ),
        influxdb=Query(
            [influx(influxql, table=True)], descriptions[1], options={"value_column": "total"}
        ),
        layout={"label": label, "value_name": value_name},
    )


def pagure_panels(q: ContributorQueries) -> list[Twin]:
    """The Pagure section of both contributors dashboards."""
    by_project = q.m("pagure_contributions_by_project", FORGE_PROM)
    by_user = q.m("pagure_contributions_by_user", FORGE_PROM)
    project_selector = q.m("pagure_contributions_by_project", FORGE_PROM, 'project=~"$project"')
    user_selector = q.m("pagure_contributions_by_user", FORGE_PROM, 'user=~"$user"')
    return [
        twin_row("Pagure"),
        Twin(
            stat,
            "Contributions in the range",
            "short",
            prometheus=Query(
                [prom(f"sum {in_range(q.m('pagure_contributions', FORGE_PROM))}", instant=True)],
                "Issues, pull requests, comments and pushes on the selected forges over the "
                "time range (by when they were processed; the InfluxDB dashboard counts by "
                "their own time).",
            ),
            influxdb=Query(
                [influx(q.total("pagure_contributions", FORGE_INFLUX))],
                "Issues, pull requests, comments and pushes on the selected forges whose own "
                "time falls in the time range.",
            ),
        ),
        Twin(
            stat,
            "Contributors in the range",
            "short",
            prometheus=Query(
                [prom(f"count(sum by (user) {in_range(by_user)} > 0)", instant=True)],
                "Users with at least one contribution on the selected forges over the time "
                "range (counted below the cardinality cap; past it, users count under "
                "__other__).",
            ),
            influxdb=Query(
                [influx(q.distinct("pagure_contributions_by_user", "user", FORGE_INFLUX))],
                "Users with at least one contribution on the selected forges in the time range.",
            ),
        ),
        Twin(
            stat,
            "Projects contributed to in the range",
            "short",
            prometheus=Query(
                [
                    prom(
                        f"count(sum by (forge, project) {in_range(by_project)} > 0)",
                        instant=True,
                    )
                ],
                "Projects with at least one contribution over the time range (forks count "
                "under the project they fork).",
            ),
            influxdb=Query(
                [influx(q.distinct("pagure_contributions_by_project", "project", FORGE_INFLUX))],
                "Projects with at least one contribution on the selected forges in the time "
                "range (a project of the same name on both forges counts once).",
            ),
        ),
        Twin(
            stat,
            "New accounts in the range",
            "short",
            prometheus=Query(
                [prom(f"sum {in_range(q.m('accounts_registered'))}", instant=True)],
                "Fedora accounts created over the time range (FAS, then noggin: fas.user.create).",
            ),
            influxdb=Query(
                [influx(q.total("accounts_registered"))],
                "Fedora accounts created in the time range.",
            ),
        ),
        Twin(
            timeseries,
            "Contributions per second by kind",
            "cps",
            prometheus=Query(
                [
                    prom(
                        f"sum by (kind) ({rate(q.m('pagure_contributions', FORGE_PROM))})",
                        "{{kind}}",
                    )
                ],
                "Contributions per second on the selected forges, by kind (push, comment, "
                "issue, pull_request), stacked; by processing time.",
            ),
            influxdb=Query(
                [
                    influx(
                        q.sum_of("pagure_contributions", FORGE_INFLUX, "kind"),
                        alias="$tag_kind",
                    )
                ],
                f"Contributions on the selected forges {PER_INTERVAL}, by kind, stacked.",
                title="Contributions by kind",
                unit="short",
                options={"bars": True},
            ),
            layout={"w": 24, "stacked": True},
        ),
        top_table(
            "Top $top projects",
            "project",
            "contributions",
            f"topk($top, sum by (project, forge) {in_range(by_project)})",
            q.top("pagure_contributions_by_project", "project", FORGE_INFLUX),
            [
                "Projects with the most contributions over the time range, on the selected "
                "forges (all projects: the Project variable filters the graph beside).",
                "Projects with the most contributions in the time range, on the selected "
                "forges (all projects: the Project variable filters the graph beside).",
            ],
        ),
        Twin(
            timeseries,
            "Contributions per second by project",
            "cps",
            prometheus=Query(
                [
                    prom(
                        f"topk($top, sum by (project) ({rate(project_selector)}))",
                        "{{project}}",
                    )
                ],
                "Contributions per second to the projects selected with the Project variable "
                "(all: the $top busiest at each moment); by processing time.",
            ),
            influxdb=Query(
                [
                    influx(
                        q.sum_of(
                            "pagure_contributions_by_project",
                            f'{FORGE_INFLUX} AND "project" =~ /^$project$/',
                            "project",
                        ),
                        alias="$tag_project",
                    )
                ],
                f"Contributions to the projects selected with the Project variable {PER_INTERVAL}.",
                title="Contributions by project",
                unit="short",
                options=BARS,
            ),
        ),
        top_table(
            "Top $top contributors",
            "user",
            "contributions",
            f"topk($top, sum by (user) {in_range(by_user)})",
            q.top("pagure_contributions_by_user", "user", FORGE_INFLUX),
            [
                "Users with the most contributions over the time range on the selected "
                "forges: the user who acted (commented, pushed, opened or merged).",
                "Users with the most contributions in the time range on the selected forges.",
            ],
        ),
        Twin(
            timeseries,
            "Contributions per second by user",
            "cps",
            prometheus=Query(
                [prom(f"topk($top, sum by (user) ({rate(user_selector)}))", "{{user}}")],
                "Contributions per second of the users selected with the User variable (all: "
                "the $top busiest at each moment); by processing time.",
            ),
            influxdb=Query(
                [
                    influx(
                        q.sum_of(
                            "pagure_contributions_by_user",
                            f'{FORGE_INFLUX} AND "user" =~ /^$user$/',
                            "user",
                        ),
                        alias="$tag_user",
                    )
                ],
                f"Contributions of the users selected with the User variable {PER_INTERVAL}.",
                title="Contributions by user",
                unit="short",
                options=BARS,
            ),
        ),
    ]


def bodhi_panels(q: ContributorQueries) -> list[Twin]:
    """The Bodhi section of both contributors dashboards (the events in the range are
    Prometheus only; the karma sits beside the events graph on the InfluxDB side)."""
    commenter_selector = q.m("bodhi_comments_by_user", 'user=~"$user"')
    return [
        twin_row("Bodhi"),
        Twin(
            timeseries,
            "Bodhi update events per second by event",
            "cps",
            prometheus=Query(
                [prom(f"sum by (event) ({rate(q.m('bodhi_updates'))})", "{{event}}")],
                "Update events per second (request_testing, comment, pushed_stable, edit, "
                "...), stacked; by processing time.",
            ),
            influxdb=Query(
                [influx(q.sum_of("bodhi_updates", by="event"), alias="$tag_event")],
                f"Update events (request_testing, comment, pushed_stable, ...) {PER_INTERVAL}, "
                "stacked.",
                title="Bodhi update events by event",
                unit="short",
                options={"bars": True},
            ),
            layout={"stacked": True},
        ),
        Twin(
            bargauge,
            "Bodhi update events in the range",
            "short",
            prometheus=Query(
                [
                    prom(
                        f"sum by (event) {in_range(q.m('bodhi_updates'))}",
                        "{{event}}",
                        instant=True,
                    )
                ],
                "Update events over the time range, by event.",
            ),
            influxdb=None,
        ),
        top_table(
            "Top $top bodhi commenters",
            "user",
            "comments",
            f"topk($top, sum by (user) {in_range(q.m('bodhi_comments_by_user'))})",
            q.top("bodhi_comments_by_user", "user"),
            [
                "Users who commented most on bodhi updates over the time range (bodhi's own "
                "automatic comments count under 'bodhi').",
                "Users who commented most on bodhi updates in the time range (bodhi's own "
                "automatic comments count under 'bodhi').",
            ],
        ),
        Twin(
            timeseries,
            "Bodhi comments per second by user",
            "cps",
            prometheus=Query(
                [prom(f"topk($top, sum by (user) ({rate(commenter_selector)}))", "{{user}}")],
                "Comments per second of the users selected with the User variable (all: the "
                "$top most active at each moment); by processing time.",
            ),
            influxdb=Query(
                [
                    influx(
                        q.sum_of("bodhi_comments_by_user", '"user" =~ /^$user$/', "user"),
                        alias="$tag_user",
                    )
                ],
                f"Comments of the users selected with the User variable {PER_INTERVAL}.",
                title="Bodhi comments by user",
                unit="short",
                options=BARS,
            ),
        ),
        Twin(
            bargauge,
            "Bodhi comment karma in the range",
            "short",
            prometheus=Query(
                [
                    prom(
                        f"sum by (karma) {in_range(q.m('bodhi_comment_karma'))}",
                        "karma {{karma}}",
                        instant=True,
                    )
                ],
                "Comments over the time range by the karma they gave (-1, 0, 1), all releases.",
                options={"w": 24, "h": 6},
            ),
            influxdb=Query(
                [influx(q.by_tag("bodhi_comment_karma", "karma"), alias="karma $tag_karma")],
                "Comments in the time range by the karma they gave (-1, 0, 1), all releases.",
            ),
            influxdb_before="Top $top bodhi commenters",
        ),
    ]


def accounts_panels(q: ContributorQueries) -> list[Twin]:
    """The accounts and badges section of both contributors dashboards."""
    changes = "accounts_group_membership_changes"
    return [
        twin_row("Accounts and badges"),
        Twin(
            timeseries,
            "New accounts and badges per second",
            "cps",
            prometheus=Query(
                [
                    prom(f"sum({rate(q.m('accounts_registered'))})", "new accounts"),
                    prom(f"sum({rate(q.m('badges_awarded'))})", "badges awarded"),
                ],
                "Fedora accounts created and badges awarded per second; by processing time.",
            ),
            influxdb=Query(
                [
                    influx(q.sum_of("accounts_registered"), alias="new accounts"),
                    influx(q.sum_of("badges_awarded"), alias="badges awarded"),
                ],
                f"Fedora accounts created and badges awarded {PER_INTERVAL}.",
                title="New accounts and badges",
                unit="short",
                options={"bars": True},
            ),
        ),
        Twin(
            bargauge,
            "Group membership changes in the range",
            "short",
            prometheus=Query(
                [prom(f"sum by (action) {in_range(q.m(changes))}", "{{action}}", instant=True)],
                "Group membership changes over the time range, all groups: applied, added (a "
                "sponsor approved or added a member), removed, role_changed.",
            ),
            influxdb=Query(
                [influx(q.by_tag(changes, "action"), alias="$tag_action")],
                "Group membership changes in the time range, all groups: applied, added, "
                "removed, role_changed.",
            ),
        ),
        top_table(
            "Top $top badges awarded",
            "badge",
            "awarded",
            f"topk($top, sum by (badge) {in_range(q.m('badges_awarded'))})",
            q.top("badges_awarded", "badge"),
            [
                "Badges awarded most over the time range.",
                "Badges awarded most in the time range.",
            ],
        ),
        top_table(
            "Top $top groups by membership changes",
            "group",
            "changes",
            f"topk($top, sum by (group) {in_range(q.m(changes))})",
            q.top(changes, "group"),
            [
                "Groups whose membership changed most over the time range (all actions).",
                "Groups whose membership changed most in the time range (all actions).",
            ],
        ),
    ]


def contributors_panels(prefix: str) -> list[Twin]:
    """Both contributors dashboards' panels, declared once: pagure contributions per project
    and per user, bodhi activity, new accounts and badges (the pagure_contributions, bodhi,
    accounts and badges plugins). Prometheus by processing time, in rates; InfluxDB by the
    messages' own time, in counts per interval of the time axis (bars): contributions are
    a few per hour, which per-second rates would show as 0.00."""
    q = ContributorQueries(prefix)
    return [*pagure_panels(q), *bodhi_panels(q), *accounts_panels(q)]


def contributors_prometheus(prefix: str) -> Json:
    """The contributors' Prometheus twin: by processing time, the last hours."""
    return dashboard(
        "statscache-contributors",
        "Contributors",
        "Who contributes to Fedora, as statscache-exporter counts it: pagure contributions "
        "(pagure.io and src.fedoraproject.org) per project and per user, bodhi activity, new "
        "accounts and badges. Prometheus, by processing time; the InfluxDB version counts by "
        "the messages' own time, for long ranges.",
        [
            datasource_variable("prometheus"),
            query_variable(
                "prometheus",
                "instance",
                "Instance",
                f"label_values({prefix}pagure_contributions_total, instance)",
            ),
            query_variable(
                "prometheus",
                "forge",
                "Forge",
                f'label_values({prefix}pagure_contributions_total{{instance=~"$instance"}}, forge)',
            ),
            query_variable(
                "prometheus",
                "project",
                "Project",
                f"label_values({prefix}pagure_contributions_by_project_total"
                '{instance=~"$instance", forge=~"$forge"}, project)',
                all_value=".*",
            ),
            query_variable(
                "prometheus",
                "user",
                "User",
                f'label_values({{__name__=~"{prefix}({CONTRIBUTOR_METRICS})_total", '
                'instance=~"$instance"}, user)',
                all_value=".*",
            ),
            TOP,
        ],
        twin_panels(contributors_panels(prefix), "prometheus"),
        time_from="now-6h",
        refresh="1m",
        tags=["fedora", "contributors", "prometheus"],
    )


def contributors_influxdb(prefix: str) -> Json:
    """The contributors' InfluxDB twin: by the messages' own time, for months and years."""
    return dashboard(
        "statscache-contributors-influxdb",
        "Contributors (InfluxDB)",
        "Who contributes to Fedora, from statscache-exporter's per-second points in InfluxDB "
        "(InfluxQL), by the messages' own time: pagure contributions per project and per "
        "user, bodhi activity, new accounts and badges, over months and years, history "
        "replayed or backfilled included.",
        [
            datasource_variable("influxdb"),
            query_variable(
                "influxdb",
                "forge",
                "Forge",
                f'SHOW TAG VALUES FROM "{prefix}pagure_contributions" WITH KEY = "forge"',
            ),
            query_variable(
                "influxdb",
                "project",
                "Project",
                f'SHOW TAG VALUES FROM "{prefix}pagure_contributions_by_project" '
                'WITH KEY = "project" WHERE "forge" =~ /^$forge$/',
                all_value=".*",
            ),
            query_variable(
                "influxdb",
                "user",
                "User",
                f'SHOW TAG VALUES FROM /^{prefix}({CONTRIBUTOR_METRICS})$/ WITH KEY = "user"',
                all_value=".*",
            ),
            TOP,
        ],
        twin_panels(contributors_panels(prefix), "influxdb"),
        time_from="now-30d",
        refresh="5m",
        tags=["fedora", "contributors", "influxdb"],
    )


#: file name -> builder of the dashboard for a metric prefix. A new dashboard (say, for a new
#: plugin) is one more entry here.
DASHBOARDS: dict[str, Callable[[str], Json]] = {
    "fedora-bus-overview.json": bus_overview_prometheus,
    "fedora-bus-overview-influxdb.json": bus_overview_influxdb,
    "exporter-health.json": exporter_health,
    "release-engineering.json": release_engineering,
    "contributors.json": contributors_prometheus,
    "contributors-influxdb.json": contributors_influxdb,
}

#: The twin pairs: (Prometheus file, InfluxDB file) -> the one list of panel specs both are
#: built from (tests/test_grafana.py checks that the twins share their panels through it).
TWINS: dict[tuple[str, str], Callable[[str], list[Twin]]] = {
    ("fedora-bus-overview.json", "fedora-bus-overview-influxdb.json"): bus_overview_panels,
    ("contributors.json", "contributors-influxdb.json"): contributors_panels,
}


def render(board: Json) -> str:
    """The file's text: stable key order as built, two-space indent, a final newline."""
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def rendered(prefix: str = DEFAULT_PREFIX, folder: Path = DASHBOARD_DIR) -> dict[Path, str]:
    """Each dashboard's path in ``folder`` and text, its metric names with ``prefix``."""
    return {folder / name: render(build(prefix)) for name, build in DASHBOARDS.items()}


def stale(prefix: str = DEFAULT_PREFIX, folder: Path = DASHBOARD_DIR) -> list[Path]:
    """Files that differ from what this module builds (or are missing), and JSON files in the
    folder that no builder makes."""
    wanted = rendered(prefix, folder)
    out = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    out += [p for p in sorted(folder.glob("*.json")) if p not in wanted]
    return out


def write(prefix: str = DEFAULT_PREFIX, folder: Path = DASHBOARD_DIR) -> list[Path]:
    """Writes every dashboard into ``folder`` (removing JSON files no builder makes there) and
    answers the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = rendered(prefix, folder)
    for p in sorted(folder.glob("*.json")):
        if p not in wanted:
            p.unlink()
    for p, text in wanted.items():
        p.write_text(text)
    return list(wanted)


def shown(path: Path) -> str:
    """``path`` relative to the repository where it is inside it, else as it is."""
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Writes the dashboards (or, with ``--check``, only compares them); exit 1 if stale."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="the exporter's prometheus.prefix, which starts every metric and measurement "
        f"name (default: {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DASHBOARD_DIR,
        help="the folder of the dashboards' JSON (default: the provisioning folder here)",
    )
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.prefix, args.output)
        for p in out_of_date:
            print(f"stale: {shown(p)} (run python grafana/generate.py)")
        return 1 if out_of_date else 0
    for p in write(args.prefix, args.output):
        print(f"wrote {shown(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
