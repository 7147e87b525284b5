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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

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

#: Metric names with the exporter's default prefix (prometheus.prefix: statscache_).
PREFIX = "statscache_"
SELF = PREFIX + "exporter_"


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
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
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
) -> Json:
    """A table of one label and one value column, sorted by the value (instant PromQL with
    ``format: table``, or InfluxQL with ``resultFormat: table``)."""
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
            "sortBy": [{"desc": True, "displayName": "messages"}],
        },
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "time": True},
                    "indexByName": {label: 0, value_column: 1},
                    "renameByName": {value_column: "messages"},
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


def query_variable(kind: str, name: str, label: str, query: str, multi: bool = True) -> Json:
    """Values from the datasource (``label_values(...)`` for Prometheus, ``SHOW TAG VALUES``
    for InfluxDB), refreshed with the time range; multi-value with All (All stands for every
    value, regex-joined: no custom all value, so that it also works in InfluxQL)."""
    return {
        "allValue": None,
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


def bus_overview_prometheus() -> Json:
    messages = PREFIX + "messages_total"
    by_category = PREFIX + "messages_by_category_total"
    rejected = SELF + "messages_rejected_total"
    duplicate = SELF + "messages_duplicate_total"
    category_selector = sel(by_category, 'category=~"$category"')
    panels = [
        stat(
            "Messages per second now",
            "Messages the exporters counted per second, now (rate over $__rate_interval). "
            "Counted when processed: a replay or a backfill shows as a burst.",
            "mps",
            [prom(f"sum({rate(sel(messages))})", instant=True)],
            decimals=2,
        ),
        stat(
            "Messages counted in the range",
            "Messages the exporters counted over the dashboard's time range (by when they "
            "were processed; the InfluxDB dashboard counts by the messages' own time).",
            "short",
            [prom(f"sum({in_range(sel(messages))})", instant=True)],
        ),
        stat(
            "Rejected in the range",
            "Messages rejected as malformed over the time range (all reasons, all sources). "
            "The exporter logs each with its reason.",
            "short",
            [prom(f"sum(increase({sel(rejected)}[$__range]))", instant=True)],
            steps=((None, "green"), (1, "orange")),
        ),
        stat(
            "Duplicates in the range",
            "Messages skipped as already counted (same id) over the time range: redeliveries, "
            "overlapping replays and backfills.",
            "short",
            [prom(f"sum(increase({sel(duplicate)}[$__range]))", instant=True)],
        ),
        timeseries(
            "Messages per second",
            "Messages counted per second by each exporter instance (rate over "
            "$__rate_interval), by when they were processed.",
            "mps",
            [prom(f"sum by (instance) ({rate(sel(messages))})", "{{instance}}")],
            w=24,
        ),
        timeseries(
            "Messages per second by category",
            "Messages per second by category (the topic's fourth part after "
            "<prefix>.<env>., e.g. bodhi, buildsys, copr), stacked. Filter with the "
            "Category variable.",
            "mps",
            [prom(f"sum by (category) ({rate(category_selector)})", "{{category}}")],
            w=24,
            h=10,
            stacked=True,
        ),
    ]
    for label, metric, what in BREAKDOWNS:
        counter = sel(PREFIX + metric + "_total")
        panels.append(
            table(
                f"Top $top {what.lower()}",
                f"{what} with the most messages counted over the time range "
                f"({BREAKDOWN_NOTES[label]}). A label value first seen within the range "
                "counts in full.",
                "short",
                [
                    prom(
                        f"topk($top, sum by ({label}) {in_range(counter)})",
                        instant=True,
                        table=True,
                    )
                ],
                value_column="Value",
                label=label,
            )
        )
    panels += [
        timeseries(
            "Rejected messages per second by reason",
            "Messages rejected as malformed, by reason (not_json, bad_timestamp, no_topic, "
            "...) and source. Never fatal: each is counted and logged.",
            "mps",
            [
                prom(
                    f"sum by (reason, source) ({rate(sel(rejected))})",
                    "{{reason}} ({{source}})",
                )
            ],
        ),
        timeseries(
            "Duplicate messages per second by source",
            "Messages skipped because their id was counted already, by source: a redelivery "
            "after a crash, an overlapping replay, a backfill meeting live messages.",
            "mps",
            [prom(f"sum by (source) ({rate(sel(duplicate))})", "{{source}}")],
        ),
    ]
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
                f"label_values({messages}, instance)",
            ),
            query_variable(
                "prometheus",
                "category",
                "Category",
                f'label_values({by_category}{{instance=~"$instance"}}, category)',
            ),
            TOP,
        ],
        panels,
        time_from="now-6h",
        refresh="1m",
        tags=["fedora", "prometheus"],
    )


def bus_overview_influxdb() -> Json:
    """The same questions over InfluxDB's per-second points, by the messages' own time, for
    long ranges (the exporter's self-metrics, rejected and duplicates, are Prometheus only)."""
    # 1000.0: InfluxDB 1.6 types integer arithmetic in a subquery as integer (0 for < 1/s)
    per_second = 'sum("count") * 1000.0 / $__interval_ms'
    panels = [
        stat(
            "Messages in the range",
            "Messages whose own time falls in the dashboard's time range.",
            "short",
            [influx('SELECT sum("count") FROM "statscache_messages" WHERE $timeFilter')],
        ),
        stat(
            "Busiest second",
            "The most messages stamped with the same second within the time range.",
            "short",
            [influx('SELECT max("count") FROM "statscache_messages" WHERE $timeFilter')],
        ),
        stat(
            "Average per second",
            "Messages per second over the time range, averaged per $__interval interval "
            "and then over the range (intervals without messages count as 0).",
            "mps",
            [
                influx(
                    f'SELECT mean("rate") FROM (SELECT {per_second} AS "rate" '
                    'FROM "statscache_messages" WHERE $timeFilter '
                    "GROUP BY time($__interval) fill(0))"
                )
            ],
            decimals=3,
        ),
        stat(
            "Categories",
            "Categories with at least one message in the time range.",
            "short",
            [
                influx(
                    'SELECT count("total") FROM (SELECT sum("count") AS "total" '
                    'FROM "statscache_messages_by_category" WHERE $timeFilter GROUP BY "category")'
                )
            ],
        ),
        timeseries(
            "Messages per second",
            "Messages per second by their own time, averaged over each $__interval interval.",
            "mps",
            [
                influx(
                    f'SELECT {per_second} FROM "statscache_messages" WHERE $timeFilter '
                    "GROUP BY time($__interval) fill(0)",
                    alias="messages",
                )
            ],
            w=24,
        ),
        timeseries(
            "Messages per second by category",
            "Messages per second by category and their own time, averaged over each "
            "$__interval interval, stacked. Filter with the Category variable.",
            "mps",
            [
                influx(
                    f'SELECT {per_second} FROM "statscache_messages_by_category" '
                    'WHERE "category" =~ /^$category$/ AND $timeFilter '
                    'GROUP BY time($__interval), "category" fill(0)',
                    alias="$tag_category",
                )
            ],
            w=24,
            h=10,
            stacked=True,
        ),
    ]
    for label, metric, what in BREAKDOWNS:
        panels.append(
            table(
                f"Top $top {what.lower()}",
                f"{what} with the most messages in the time range ({BREAKDOWN_NOTES[label]}).",
                "short",
                [
                    influx(
                        f'SELECT top("total", "{label}", $top) AS "messages" FROM '
                        f'(SELECT sum("count") AS "total" FROM "{PREFIX}{metric}" '
                        f'WHERE $timeFilter GROUP BY "{label}")',
                        table=True,
                    )
                ],
                value_column="messages",
                label=label,
            )
        )
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
                'SHOW TAG VALUES FROM "statscache_messages_by_category" WITH KEY = "category"',
            ),
            TOP,
        ],
        panels,
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


def exporter_health() -> Json:
    def m(name: str, *matchers: str) -> str:
        return sel(SELF + name, *matchers)

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
            "Buckets queued in the outbox: it grows while InfluxDB is away and drains once "
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
                f"label_values({SELF}flushes_total, instance)",
            ),
        ],
        panels,
        time_from="now-3h",
        refresh="30s",
        tags=["prometheus"],
    )


#: file name -> builder. A new dashboard (say, release engineering once its plugins land) is
#: one more entry here.
DASHBOARDS: dict[str, Callable[[], Json]] = {
    "fedora-bus-overview.json": bus_overview_prometheus,
    "fedora-bus-overview-influxdb.json": bus_overview_influxdb,
    "exporter-health.json": exporter_health,
}


def render(board: Json) -> str:
    """The file's text: stable key order as built, two-space indent, a final newline."""
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[Path, str]:
    return {DASHBOARD_DIR / name: render(build()) for name, build in DASHBOARDS.items()}


def stale() -> list[Path]:
    """Files that differ from what this module builds (or are missing), and JSON files in the
    folder that no builder makes."""
    wanted = rendered()
    out = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    out += [p for p in sorted(DASHBOARD_DIR.glob("*.json")) if p not in wanted]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for p in out_of_date:
            print(f"stale: {p.relative_to(HERE.parent)} (run python grafana/generate.py)")
        return 1 if out_of_date else 0
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    wanted = rendered()
    for p in sorted(DASHBOARD_DIR.glob("*.json")):
        if p not in wanted:
            p.unlink()
    for p, text in wanted.items():
        p.write_text(text)
        print(f"wrote {p.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
