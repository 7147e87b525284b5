"""statscache's REST API, extended: ``/api/`` and ``/api/<ident>``, in JSON (or JSONP) and
CSV; in this exporter's shapes by default, in statscache's own with
``http.api.statscache_shapes`` (:func:`statscache_rows`).

Like statscache's: ``start``/``stop`` (``stop`` defaults to now, so pages stay stable),
``order`` (``desc`` by default), ``limit`` (rows before paging), ``page``, ``rows_per_page``,
``callback`` (JSONP), the type chosen by ``Accept`` (or ``?format=json|csv``), ``Link``
(``rel="previous"``/``"next"``, plus ``first``/``last``), ``X-Link-Count`` (pages) and
``X-Link-Number`` (this page), CORS ``*``. Beyond statscache: ISO 8601 times, a
``resolution``, ``metric`` and label filters (``?category=bodhi``, repeatable), and errors as
JSON naming the parameter.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from statscache_exporter.config import ConfigError, format_duration, parse_duration
from statscache_exporter.plugin import Plugin
from statscache_exporter.reader import BucketQuery, Reader

JSON_TYPES = ("application/json", "text/json")
JSONP_TYPES = ("application/javascript", "text/javascript")
CSV_TYPES = ("text/csv", "application/csv")
#: Longest query string answered: every parameter is repeated in the four ``Link`` headers of
#: the answer, and clients refuse header lines past 64 KiB (Python's http.client, proxies less).
MAX_QUERY_LENGTH = 8192
_CALLBACK = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.]{0,99}$")
_KNOWN = {
    "start", "stop", "order", "limit", "page", "rows_per_page", "resolution", "metric",
    "format", "callback",
}  # fmt: skip


class ApiError(Exception):
    """An HTTP error answered as JSON: ``{"error": ..., "status": ..., "parameter": ...}``."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "status": self.status}
        if self.parameter:
            out["parameter"] = self.parameter
        return out


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiSettings:
    resolutions: tuple[int, ...]
    default_rows_per_page: int = 100
    max_rows_per_page: int = 1000


# --- content negotiation -----------------------------------------------------------------------


def choose_type(params: Mapping[str, Sequence[str]], accept: str) -> str:
    """'json', 'jsonp' or 'csv' from ``?format=``/``?callback=`` or the Accept header."""
    fmt = _one(params, "format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise ApiError(400, f"format must be json or csv, not {fmt!r}", "format")
        return "jsonp" if fmt == "json" and "callback" in params else fmt
    best = _best_match(accept)
    if best is None:
        raise ApiError(
            406,
            f"cannot answer with any of {accept!r}; available: "
            + ", ".join(JSON_TYPES + JSONP_TYPES + CSV_TYPES),
        )
    if best in CSV_TYPES:
        return "csv"
    return "jsonp" if "callback" in params else "json"


def _best_match(accept: str) -> str | None:
    """The supported type the Accept header likes best (ties: JSON first); */* is JSON."""
    if not accept.strip():
        return JSON_TYPES[0]
    supported = JSON_TYPES + JSONP_TYPES + CSV_TYPES
    best: tuple[float, int, str] | None = None
    for part in accept.split(","):
        kind, _, rest = part.strip().partition(";")
        kind = kind.strip().lower()
        q = 1.0
        for param in rest.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        for rank, candidate in enumerate(supported):
            major = candidate.split("/")[0]
            if kind in (candidate, "*/*", f"{major}/*") and (best is None or (q, -rank) > best[:2]):
                best = (q, -rank, candidate)
    return best[2] if best else None


# --- parameters --------------------------------------------------------------------------------


def check_query_length(query: str) -> None:
    """A 414 for a query string whose Link headers no client could read."""
    if len(query) > MAX_QUERY_LENGTH:
        raise ApiError(
            414,
            f"the query string is {len(query)} characters long, more than {MAX_QUERY_LENGTH} "
            "(it is repeated in the Link headers of the answer); ask for fewer values",
        )


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{name} is given {len(values)} times; give it once", name)
    return values[0]


def _int(params: Mapping[str, Sequence[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _one(params, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, not {raw[:40]!r}", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, not {value}", name)
    return value


def parse_time(raw: str, name: str) -> int:
    """Epoch seconds or ISO 8601 (UTC when it has no offset), to whole epoch seconds."""
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise ApiError(
                400, f"{name} must be epoch seconds or ISO 8601, not {raw[:40]!r}", name
            ) from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
        seconds = when.timestamp()
    if not math.isfinite(seconds) or abs(seconds) > 1e12:
        raise ApiError(400, f"{name} {raw[:40]!r} is out of range", name)
    return math.floor(seconds)


def _resolution(params: Mapping[str, Sequence[str]], settings: ApiSettings) -> int:
    raw = _one(params, "resolution")
    valid = ", ".join(format_duration_s(r) for r in settings.resolutions)
    if raw is None:
        return settings.resolutions[0]
    try:
        exact = parse_duration(raw, "resolution").total_seconds()
    except ConfigError:
        exact = -1.0
    seconds = int(exact) if exact.is_integer() else -1  # 60.5 s is no resolution, not 1m
    if seconds not in settings.resolutions:
        raise ApiError(400, f"resolution {raw[:20]!r} is not kept; valid: {valid}", "resolution")
    return seconds


def format_duration_s(seconds: int) -> str:
    return format_duration(timedelta(seconds=seconds))


def build_query(
    plugin: type[Plugin], params: Mapping[str, Sequence[str]], settings: ApiSettings, now: float
) -> BucketQuery:
    """Check every parameter of ``/api/<ident>``; an unknown one is a 400 naming it."""
    label_names = sorted({label for m in plugin.metrics for label in m.labels})
    for name in params:
        if name not in _KNOWN and name not in label_names:
            raise ApiError(
                400,
                f"unknown parameter {name!r}; valid: {', '.join(sorted(_KNOWN))}"
                + (f", and the label filters {', '.join(label_names)}" if label_names else ""),
                name,
            )
    stop_raw, start_raw = _one(params, "stop"), _one(params, "start")
    stop = parse_time(stop_raw, "stop") if stop_raw is not None else math.floor(now)
    start = parse_time(start_raw, "start") if start_raw is not None else 0
    if start > stop:
        raise ApiError(400, f"start ({start}) is after stop ({stop})", "start")
    order = _one(params, "order") or "desc"
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order must be asc or desc, not {order[:20]!r}", "order")
    metric_names = [m.name for m in plugin.metrics]
    metrics = tuple(params.get("metric", ()))
    for m in metrics:
        if m not in metric_names:
            raise ApiError(
                400, f"metric {m[:60]!r} is not one of {plugin.ident}'s: {metric_names}", "metric"
            )
    labels = {name: tuple(values) for name, values in params.items() if name in label_names}
    return BucketQuery(
        plugin=plugin.ident,
        resolution=_resolution(params, settings),
        start=start,
        stop=stop,
        metrics=metrics,
        labels=labels,
        descending=order == "desc",
    )


# --- responses ---------------------------------------------------------------------------------


def index(
    plugins: Mapping[str, type[Plugin]],
    params: Mapping[str, Sequence[str]],
    accept: str,
    statscache_shapes: bool = False,
) -> Response:
    """``GET /api/``: the enabled plugins with their metrics (statscache's shape: an array of
    their idents; CSV: one a line)."""
    kind = choose_type(params, accept)
    if statscache_shapes:
        if kind == "csv":
            return Response(200, "\n".join(plugins).encode(), "text/csv; charset=utf-8", _cors())
        return _json_response(list(plugins), params, kind, _cors())
    listing = [
        {
            "ident": cls.ident,
            "name": cls.name,
            "summary": cls.summary,
            "description": cls.description,
            "metrics": [
                {"name": m.name, "kind": m.kind, "help": m.help, "labels": list(m.labels)}
                for m in cls.metrics
            ],
        }
        for cls in plugins.values()
    ]
    if kind == "csv":
        rows = [
            [cls.ident, cls.name, cls.summary, m.name, m.kind, " ".join(m.labels)]
            for cls in plugins.values()
            for m in cls.metrics
        ]
        header = ["ident", "name", "summary", "metric", "kind", "labels"]
        return Response(200, _csv(header, rows), "text/csv; charset=utf-8", _cors())
    return _json_response({"plugins": listing}, params, kind, _cors())


def plugin_rows(
    plugin: type[Plugin],
    reader: Reader,
    params: Mapping[str, Sequence[str]],
    accept: str,
    settings: ApiSettings,
    url: str,
    now: float,
    statscache_shapes: bool = False,
) -> Response:
    """``GET /api/<ident>``: one page of bucket rows (statscache's shape: an array of flat
    rows, :func:`statscache_rows`)."""
    kind = choose_type(params, accept)
    _check_callback(params)
    query = build_query(plugin, params, settings, now)
    page = _int(params, "page", 1, 1, 10**9)
    per_page = _int(
        params, "rows_per_page", settings.default_rows_per_page, 1, settings.max_rows_per_page
    )
    limit = _int(params, "limit", 10**12, 1, 10**12)
    total = min(reader.count(query), limit)
    pages = max(1, math.ceil(total / per_page))
    offset = (page - 1) * per_page
    rows = reader.rows(query, offset, max(0, min(per_page, total - offset)))
    # The links carry the stop this page used, default or not: following them later must
    # walk the same rows, not the ones that arrived since.
    link_params = {**params, "stop": [str(query.stop)]}
    headers = {**_cors(), **_paging_headers(url, link_params, page, pages)}
    if statscache_shapes:
        flat = statscache_rows(plugin, rows)
        if kind == "csv":
            return Response(200, statscache_csv(flat), "text/csv; charset=utf-8", headers)
        return _json_response(flat, params, kind, headers)
    if kind == "csv":
        label_names = sorted({label for m in plugin.metrics for label in m.labels})
        header = ["start", "time", "metric", *label_names, "value"]
        lines = [
            [start, _iso(start), metric, *(labels.get(n, "") for n in label_names), _num(value)]
            for start, metric, labels, value in rows
        ]
        return Response(200, _csv(header, lines), "text/csv; charset=utf-8", headers)
    body = {
        "plugin": plugin.ident,
        "resolution": format_duration_s(query.resolution),
        "start": query.start,
        "stop": query.stop,
        "order": "desc" if query.descending else "asc",
        "page": page,
        "pages": pages,
        "rows_per_page": per_page,
        "total": total,
        "rows": [
            {"start": s, "time": _iso(s), "metric": m, "labels": lab, "value": _num(v)}
            for s, m, lab, v in rows
        ],
    }
    return _json_response(body, params, kind, headers)


def statscache_rows(
    plugin: type[Plugin], rows: Sequence[tuple[int, str, dict[str, str], float]]
) -> list[dict[str, Any]]:
    """Rows as statscache's models serialized them (statscache/plugins/models.py,
    ``to_json``): every column but ``id``, ``timestamp`` as epoch seconds (a float). The
    value's column is ``volume`` for a counter, as statscache's count plugins named it
    (statscache_plugins/volume/*.py, pagure/*.py), ``scalar`` for a gauge (statscache's
    ScalarModel); each label is a column of its own, as statscache's category, topic, user,
    package and project were; ``metric`` is one too for a plugin with several metrics
    (statscache had one model per plugin)."""
    several = len(plugin.metrics) > 1
    kinds = {m.name: m.kind for m in plugin.metrics}
    out = []
    for start, metric, labels, value in rows:
        row: dict[str, Any] = {"timestamp": float(start), **labels}
        if several:
            row["metric"] = metric
        row["volume" if kinds.get(metric) == "counter" else "scalar"] = _num(value)
        out.append(row)
    return out


def statscache_csv(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """statscache's ``to_csv``: a header ``timestamp,<the other columns, sorted>``, then a
    line per row, joined by newlines, without a final one. statscache did not quote; a field
    holding a comma, quote or line break is quoted here (RFC 4180), where statscache's line
    could not have been read back. Every other field is written as statscache wrote it."""
    columns = sorted({c for row in rows for c in row} - {"timestamp"})
    header = ",".join(["timestamp", *columns])
    lines = [header]
    for row in rows:
        fields = [str(row["timestamp"]), *(_plain(row.get(c, "")) for c in columns)]
        lines.append(",".join(fields))
    return "\n".join(lines).encode("utf-8")


def _plain(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def error_response(exc: ApiError, params: Mapping[str, Sequence[str]]) -> Response:
    kind = "jsonp" if _safe_callback(params) else "json"
    response = _json_response(exc.body(), params, kind, _cors())
    response.status = exc.status
    return response


def _json_response(
    body: Any, params: Mapping[str, Sequence[str]], kind: str, headers: dict[str, str]
) -> Response:
    text = json.dumps(body, ensure_ascii=False)
    if kind == "jsonp":
        callback = _check_callback(params)
        return Response(
            200, f"{callback}({text});".encode(), "application/javascript; charset=utf-8", headers
        )
    return Response(200, text.encode(), "application/json; charset=utf-8", headers)


def _check_callback(params: Mapping[str, Sequence[str]]) -> str | None:
    callback = _one(params, "callback")
    if callback is not None and not _CALLBACK.fullmatch(callback):
        raise ApiError(
            400, "callback must be a JavaScript name (letters, digits, _ $ .)", "callback"
        )
    return callback


def _safe_callback(params: Mapping[str, Sequence[str]]) -> bool:
    values = params.get("callback") or []
    return len(values) == 1 and bool(_CALLBACK.fullmatch(values[0]))


def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _cors() -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": "Link, X-Link-Number, X-Link-Count",
    }


def _paging_headers(
    url: str, params: Mapping[str, Sequence[str]], page: int, pages: int
) -> dict[str, str]:
    def link(number: int, rel: str) -> str:
        query = [(k, v) for k, values in params.items() if k != "page" for v in values]
        query.append(("page", str(number)))
        return f'<{url}?{urlencode(query)}>; rel="{rel}"'

    links = [link(1, "first")]
    if page > 1:
        links.append(link(min(page - 1, pages), "previous"))
    if page < pages:
        links.append(link(page + 1, "next"))
    links.append(link(pages, "last"))
    return {"Link": ", ".join(links), "X-Link-Count": str(pages), "X-Link-Number": str(page)}


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _num(value: float) -> float | int:
    """Whole numbers as integers (counts), others as they are (gauges)."""
    return int(value) if float(value).is_integer() else float(value)
