"""Grafana's query preparation, done here the way Grafana does it, so that the bundled
dashboards' queries can be run against a real Prometheus and a real InfluxDB without a Grafana
server (none is packaged for this machine).

What is reproduced (Grafana 10.4-12, read from its sources: public/app/features/templating,
packages/grafana-prometheus/src/escaping.ts, pkg/promlib/models/query.go,
pkg/tsdb/influxdb/influxql/models/query.go, grafana-plugin-sdk-go's gtime):

- Dashboard variables, replaced in the browser: ``$name``, ``${name}``, ``[[name]]``. A
  Prometheus query formats a variable with ``interpolateQueryExpr``: a single-value variable is
  escaped for a PromQL string, a multi-value or All one is regex-escaped (twice the backslashes:
  the regex sits in a PromQL string) and several values become ``(a|b)``. An InfluxQL query
  formats every variable as ``regex`` (backend mode, the default since Grafana 10): regex-escaped,
  ``/`` included, several values ``(a|b)``. All, with no custom all value, stands for every value;
  a custom all value (``allValue``, e.g. ``.*``) is substituted as it is, unformatted, in both.
- The built-ins, replaced by Grafana's backend: ``$__interval`` (the step: the range over the
  panel's max data points, rounded to a "nice" interval, at least the datasource's
  ``timeInterval``), ``$__interval_ms``, ``$__range``, ``$__range_s``, ``$__range_ms``,
  ``$__rate_interval`` (max(interval + scrape interval, 4 x scrape interval), written as a Go
  duration such as ``1m0s``); for InfluxQL ``$timeFilter`` (``time >= <from>ms and time <=
  <to>ms``), ``$interval``, ``$__interval``, ``$__interval_ms``.
- Range queries start and end on a multiple of the step (Grafana aligns them); instant queries
  run at the range's end.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from servers import http_get, http_post

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "grafana"

Value = str | list[str]


def load_generator() -> ModuleType:
    """grafana/generate.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- intervals ----------------------------------------------------------------------------------

_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}

#: (upper bound, rounded value) in ms: Grafana's roundInterval (gtime.RoundInterval)
_ROUND = [
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000),
    (45000, 30000), (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000),
    (1050000, 900000), (1500000, 1200000), (2700000, 1800000), (5400000, 3600000),
    (9000000, 7200000), (16200000, 10800000), (32400000, 21600000), (86400000, 43200000),
    (172800000, 86400000), (604800000, 86400000), (1814400000, 604800000),
]  # fmt: skip


def round_interval(ms: float) -> int:
    for bound, rounded in _ROUND:
        if ms <= bound:
            return rounded
    return 2_592_000_000 if ms < 3_628_800_000 else 31_536_000_000


def parse_interval(text: str) -> int:
    """``15s``, ``1m``, ``500ms`` (Grafana's interval strings) in ms."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text)
    assert m, f"not an interval: {text!r}"
    return int(m[1]) * _MS[m[2]]


def format_interval(ms: int) -> str:
    """gtime.FormatInterval: the largest whole unit (``15s``, ``1m``, ``1d``)."""
    for unit, size in (("y", 31_536_000_000), ("d", 86_400_000), ("h", 3_600_000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    if ms >= 60_000:
        return f"{ms // 60_000}m"
    if ms >= 1000:
        return f"{ms // 1000}s"
    return f"{max(ms, 1)}ms"


def go_duration(ms: int) -> str:
    """Go's time.Duration.String() for a whole number of ms: ``1m0s``, ``15s``, ``1h0m0s``."""
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:g}s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


@dataclass(frozen=True)
class TimeRange:
    """A dashboard time range, in ms since the epoch."""

    start_ms: int
    end_ms: int

    @property
    def span_ms(self) -> int:
        return self.end_ms - self.start_ms


def query_interval(tr: TimeRange, max_data_points: int, min_interval_ms: int) -> int:
    """The interval the browser computes for a panel (rangeUtil.calculateInterval)."""
    return max(round_interval(tr.span_ms / max_data_points), min_interval_ms)


# --- dashboard variables ------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)


@dataclass
class Variable:
    """A dashboard variable with its resolved options and the selection to substitute."""

    name: str
    multi: bool
    include_all: bool
    options: list[str] = field(default_factory=list)
    selected: Value = ""
    #: the variable's custom all value (``allValue``), if it has one
    all_value: str | None = None

    def value(self) -> Value:
        """What is substituted: All (no custom all value) is every option."""
        if self.selected == "$__all":
            return list(self.options)
        return self.selected


Formatter = Callable[[Value, Variable], str]


def replace(text: str, variables: Mapping[str, Variable], formatter: Formatter) -> str:
    """templateSrv.replace: dashboard variables in ``text``; anything else (built-ins such as
    ``$__interval``) is left for the backend."""

    def sub(m: re.Match[str]) -> str:
        name = m[1] or m[2] or m[4]
        if name not in variables:
            return m[0]
        assert not (m[3] or m[6]), f"explicit variable formats are not reproduced: {m[0]}"
        var = variables[name]
        if var.selected == "$__all" and var.all_value:
            return var.all_value  # Grafana skips formatting a custom all value
        return formatter(var.value(), var)

    return _VARIABLE.sub(sub, text)


def _prometheus_regex_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]+?.()|]", lambda m: "\\\\" + m[0], value)


def prometheus_format(value: Value, var: Variable) -> str:
    """interpolateQueryExpr of Grafana's Prometheus datasource (classic escaping)."""
    if not var.multi and not var.include_all:
        assert isinstance(value, str)
        return value.replace("\\", "\\\\").replace("'", "\\\\'")
    if isinstance(value, str):
        return _prometheus_regex_escape(value)
    escaped = [_prometheus_regex_escape(v) for v in value]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _regex_escape(value: str) -> str:
    """escapeRegex of @grafana/data."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m[0], value)


def regex_format(value: Value, var: Variable) -> str:
    """Grafana's ``regex`` variable format (what InfluxQL queries get)."""
    if isinstance(value, str):
        return _regex_escape(value)
    escaped = [_regex_escape(v) for v in value]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


# --- the built-ins, as Grafana's backend replaces them ------------------------------------------


@dataclass(frozen=True)
class PromQuery:
    expr: str
    instant: bool
    start: float  # seconds; aligned to the step for a range query
    end: float
    step: float


def prometheus_query(
    expr: str, tr: TimeRange, instant: bool, max_data_points: int, scrape_interval: str
) -> PromQuery:
    """pkg/promlib/models/query.go: the step and the built-in variables (no per-query min
    step or interval factor: the bundled dashboards set none)."""
    scrape_ms = parse_interval(scrape_interval)
    interval_ms = query_interval(tr, max_data_points, scrape_ms)  # the request's intervalMs
    calculated = tr.span_ms / max_data_points
    step = interval_ms if calculated < interval_ms else round_interval(calculated)
    step = max(step, round_interval(tr.span_ms / 11000))  # Grafana's safe resolution
    rate_ms = max(interval_ms + scrape_ms, 4 * scrape_ms)
    range_s = round(tr.span_ms / 1000)
    for name, text in (
        ("$__interval_ms", str(step)),
        ("$__interval", format_interval(step)),
        ("$__range_ms", str(tr.span_ms)),
        ("$__range_s", str(range_s)),
        ("$__range", f"{range_s}s"),
        ("$__rate_interval_ms", str(rate_ms)),
        ("$__rate_interval", go_duration(rate_ms)),
    ):
        expr = expr.replace(name, text).replace("${" + name[1:] + "}", text)
    step_s = step / 1000
    if instant:
        return PromQuery(expr, True, tr.end_ms / 1000, tr.end_ms / 1000, step_s)
    return PromQuery(
        expr,
        False,
        math.floor(tr.start_ms / step) * step_s,
        math.floor(tr.end_ms / step) * step_s,
        step_s,
    )


def influxql_query(query: str, tr: TimeRange, max_data_points: int, min_interval: str) -> str:
    """pkg/tsdb/influxdb/influxql/models/query.go Build(), for a raw query."""
    interval = query_interval(tr, max_data_points, parse_interval(min_interval))
    query = query.replace("$timeFilter", f"time >= {tr.start_ms}ms and time <= {tr.end_ms}ms")
    query = query.replace("$interval", format_interval(interval))
    query = query.replace("$__interval_ms", str(interval))
    return query.replace("$__interval", format_interval(interval))


# --- running them -------------------------------------------------------------------------------


def _post(url: str, params: Mapping[str, str | Sequence[str]]) -> Any:
    body = urllib.parse.urlencode(params, doseq=True).encode()
    r = http_post(url, body, {"Content-Type": "application/x-www-form-urlencoded"})
    try:
        answer = json.loads(r.body)
    except ValueError:
        answer = {"error": r.body.decode(errors="replace")}
    return r.status, answer


Labels = dict[str, str]


def run_prometheus(base_url: str, q: PromQuery) -> tuple[str | None, list[float | None]]:
    """POST the query as Grafana does (httpMethod POST). (error or None, every sample value:
    None for NaN)."""
    error, samples = run_prometheus_samples(base_url, q)
    return error, [v for _, v in samples]


def run_prometheus_samples(
    base_url: str, q: PromQuery
) -> tuple[str | None, list[tuple[Labels, float | None]]]:
    """:func:`run_prometheus`, each value with the labels of its series (none for a
    scalar)."""
    if q.instant:
        status, answer = _post(f"{base_url}/api/v1/query", {"query": q.expr, "time": str(q.end)})
    else:
        params = {"query": q.expr, "start": str(q.start), "end": str(q.end), "step": str(q.step)}
        status, answer = _post(f"{base_url}/api/v1/query_range", params)
    if status != 200 or answer.get("status") != "success":
        return f"HTTP {status}: {answer.get('error', answer)}", []
    data = answer["data"]
    if data["resultType"] == "scalar":
        raw = [({}, data["result"][1])]
    elif data["resultType"] == "vector":
        raw = [(s["metric"], s["value"][1]) for s in data["result"]]
    else:
        raw = [(s["metric"], v[1]) for s in data["result"] for v in s["values"]]
    return None, [(labels, None if math.isnan(float(v)) else float(v)) for labels, v in raw]


def prometheus_label_values(base_url: str, query: str, tr: TimeRange) -> list[str]:
    """A ``label_values([selector,] label)`` variable query, through the label values API
    (what Grafana asks of Prometheus 2.24 and later)."""
    m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query.strip())
    assert m, f"not a label_values() query: {query!r}"
    params: dict[str, str] = {"start": str(tr.start_ms / 1000), "end": str(tr.end_ms / 1000)}
    if m[1]:
        params["match[]"] = m[1]
    # GET: Prometheus takes no POST there (Grafana falls back to GET on its 405)
    r = http_get(f"{base_url}/api/v1/label/{m[2]}/values?{urllib.parse.urlencode(params)}")
    status, answer = r.status, json.loads(r.body)
    assert status == 200 and answer.get("status") == "success", (query, status, answer)
    return sorted(answer["data"])


def run_influxql(base_url: str, db: str, query: str) -> tuple[str | None, list[Any]]:
    """(error or None, the series of the first statement)."""
    status, answer = _post(f"{base_url}/query", {"q": query, "db": db, "epoch": "ms"})
    errors = [answer.get("error")] + [r.get("error") for r in answer.get("results", [])]
    if status != 200 or any(errors):
        return f"HTTP {status}: {next((e for e in errors if e), answer)}", []
    results = answer.get("results", [])
    return None, results[0].get("series", []) if results else []


def influx_numbers(series: list[Any]) -> list[float | None]:
    """Every value of every column but time (strings such as tag columns left out)."""
    out: list[float | None] = []
    for s in series:
        columns = s["columns"]
        for row in s.get("values", []):
            for name, v in zip(columns, row, strict=True):
                if name == "time" or isinstance(v, str | bool):
                    continue
                out.append(None if v is None else float(v))
    return out


def influx_tag_values(series: list[Any]) -> list[str]:
    """A ``SHOW TAG VALUES`` answer as Grafana reads it: the ``value`` column."""
    return sorted({row[1] for s in series for row in s.get("values", [])})
