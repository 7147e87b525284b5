"""The web pages, rendered on the server from the store (through :class:`Reader`) and the
pipeline's own counts: ``/`` (the bus at a glance) and ``/plugins/<ident>`` (one plugin's
metrics as charts over a chosen range and resolution).

They need no JavaScript and fetch nothing from elsewhere: charts are inline SVG
(:mod:`charts`), the stylesheet and icon are served from the package (``/static/``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from statscache_exporter import __version__, restapi
from statscache_exporter.config import parse_duration
from statscache_exporter.plugin import Metric, Plugin
from statscache_exporter.reader import BucketQuery
from statscache_exporter.selfmetrics import store_size
from statscache_exporter.webui import charts
from statscache_exporter.webui.readme import examples

if TYPE_CHECKING:
    from statscache_exporter.web import Context

#: windows of the overview, hours
WINDOWS = (1, 3, 6, 12, 24, 48, 168)
DEFAULT_WINDOW = 6
#: ranges offered on a plugin page (its default: 6h)
RANGES = ("1h", "6h", "24h", "7d", "30d", "365d")
DEFAULT_RANGE = "6h"
#: most buckets a chart draws: past it a plugin page asks for a coarser resolution
MAX_BUCKETS = 1500
#: about how many bars the overview's charts hold
MAIN_BARS = 360
CARD_BARS = 36
#: series a counter's chart stacks (the rest of each bucket as "other")
STACKED = 5
#: group sizes offered when a window holds too many buckets of the finest resolution
_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
PAGE_PARAMETERS = {"range"}


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("statscache_exporter.webui", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = charts.number
    env.filters["utc"] = lambda t, step=60: charts.when(t, step) if t is not None else "never"
    env.filters["ago"] = ago
    env.filters["duration"] = duration
    env.filters["size"] = size
    env.filters["percent"] = lambda f: f"{100 * f:.1f}%" if f is not None else ""
    return env


def duration(seconds: float | None) -> str:
    """3 s, 4 min, 2.5 h, 3 days."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    for unit, size_ in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size_ * (2 if unit == "days" else 1):
            value = seconds / size_
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def ago(moment: float | None, now: float) -> str:
    if moment is None:
        return "never"
    return f"{duration(now - moment)} ago"


def size(n: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


@dataclass
class Span:
    """A chart's time span and the stored resolution read for it."""

    frame: charts.Frame
    resolution: int
    #: the span ends at the newest data, older than the window's end would have been
    anchored: bool = False

    @property
    def step_name(self) -> str:
        """'1-minute', '10-minute', '1-hour'."""
        words = charts_step(self.frame.step).split(" ")
        return "-".join(["1", *words] if len(words) == 1 else [words[0], words[1].rstrip("s")])


@dataclass
class MetricView:
    metric: Metric
    prometheus_name: str
    chart: Markup
    points: int
    series: int
    total: float | None
    top: list[dict[str, Any]]
    labels: tuple[str, ...]
    json_url: str
    csv_url: str
    legend: list[tuple[str, str]] = field(default_factory=list)

    @property
    def timestamps(self) -> bool:
        """A gauge whose values are times (``*_timestamp_seconds``)."""
        return self.metric.name.endswith("_timestamp_seconds")


class Pages:
    """Renders the pages for the app (``web.App`` routes to it)."""

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self.env = _environment()

    # --- shared -------------------------------------------------------------------------

    def _render(self, template: str, **values: Any) -> str:
        now = self.clock()
        return self.env.get_template(template).render(
            version=__version__,
            now=now,
            plugins=self.ctx.plugins,
            **values,
        )

    def error(self, status: int, message: str) -> str:
        return self._render("error.html", status=status, message=message, title=f"{status}")

    def static(self, name: str) -> tuple[str, bytes] | None:
        """(content type, bytes) of a file shipped in the package's static/ folder."""
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES:
            return None
        item = resources.files("statscache_exporter.webui").joinpath("static", name)
        if not item.is_file():
            return None
        return _STATIC_TYPES[suffix], item.read_bytes()

    def _finest(self, at_least: int = 1) -> int:
        kept = self.ctx.api.resolutions
        return next((r for r in kept if r >= at_least), kept[-1])

    def _span(
        self, hours: int, plugin: str, metric: str, bars: int, stop: int | None = None
    ) -> Span:
        """The last ``hours`` in bars of a nice step, read from the coarsest kept resolution
        that divides it. They end now, or at the metric's newest data when that is older than
        the window (a replay of old messages, a bus gone quiet); or at ``stop`` if given."""
        window = hours * 3600
        base = self._finest(60)
        step = next((s for s in _STEPS if s % base == 0 and window / s <= bars), None)
        step = step or base * math.ceil(window / base / bars)
        resolution = max(r for r in self.ctx.api.resolutions if step % r == 0 and r <= step)
        anchored = False
        if stop is None:
            stop = (math.floor(self.clock()) // step + 1) * step
            newest = self.ctx.reader.newest_start(plugin, metric, resolution)
            if newest is not None and newest < stop - window:
                stop, anchored = (newest // step + 1) * step, True
        else:
            stop = -(-stop // step) * step
        return Span(charts.Frame(stop - window, stop, step), resolution, anchored)

    # --- / ------------------------------------------------------------------------------

    def overview(self, params: Mapping[str, Sequence[str]]) -> str:
        hours = _window(params)
        now = self.clock()
        stats = self.ctx.pipeline.stats
        plugins = self.ctx.plugins
        volume = "volume" in plugins
        main_metric = ("volume", "messages") if volume else _main_of(plugins)
        main = self._main_chart(hours, main_metric)
        return self._render(
            "overview.html",
            title="Overview",
            hours=hours,
            windows=[(h, f"{h}h" if h < 48 or h % 24 else f"{h // 24}d") for h in WINDOWS],
            main=main,
            rate=stats.rate(),
            processed=sum(stats.processed.values()),
            duplicates=sum(stats.duplicates.values()),
            rejected=sum(stats.rejected.values()),
            rejected_by_reason=stats.rejected_by_reason(),
            newest=stats.newest_message,
            series=sum(self.ctx.exposition.series_count().values()),
            categories=self._top_categories(main["span"]) if main else [],
            sources=self._sources(),
            backfill=self._backfill(),
            sinks=self._sinks(now),
            cards=[
                self._card(cls, hours, main["span"] if main else None) for cls in plugins.values()
            ],
        )

    def _main_chart(self, hours: int, which: tuple[str, str] | None) -> dict[str, Any] | None:
        if which is None:
            return None
        plugin, metric = which
        span = self._span(hours, plugin, metric, MAIN_BARS)
        f = span.frame
        q = BucketQuery(plugin, span.resolution, f.start, f.stop - 1, metrics=(metric,))
        points = self.ctx.reader.sums(q, f.step)
        per = "minute" if f.step == 60 else charts_step(f.step)
        label = f"Messages per {per}" if plugin == "volume" else f"{metric} per {per}"
        return {
            "span": span,
            "label": label,
            "per": per,
            "points": len(points),
            "total": sum(v for _, v in points),
            "peak": max(points, key=lambda p: p[1], default=None),
            "svg": charts.bar_chart(
                points, f, chart_id="chart-main", label=f"{label}, {when_range(f)}",
                unit="messages" if plugin == "volume" else metric,
            ),
            "api": _api_url(plugin, {"metric": [metric]}, span),
        }  # fmt: skip

    def _top_categories(self, span: Span, limit: int = 10) -> list[dict[str, Any]]:
        if "volume_by_category" not in self.ctx.plugins:
            return []
        f = span.frame
        q = BucketQuery("volume_by_category", span.resolution, f.start, f.stop - 1)
        top = self.ctx.reader.top_series(q, limit)
        total = sum(v for _, v in self.ctx.reader.sums(q, f.step)) or 1.0
        most = max((v for _, _, v in top), default=1.0) or 1.0
        return [
            {"name": labels.get("category", ""), "value": v, "share": v / total, "bar": v / most}
            for _, labels, v in top
        ]

    def _sources(self) -> list[dict[str, Any]]:
        stats = self.ctx.pipeline.stats
        outages = self.ctx.reader.last_outages()
        names = sorted({*stats.source_connected, *self.ctx.live_sources, *outages})
        connected = dict(stats.source_connected)
        return [
            {
                "name": name,
                "live": name in self.ctx.live_sources,
                "up": bool(connected.get(name)),
                "received": stats.received.get(name, 0),
                "processed": stats.processed.get(name, 0),
                "outage": outages.get(name),
            }
            for name in names
        ]

    def _backfill(self) -> dict[str, Any] | None:
        b = self.ctx.backfill()
        if b is None:
            return None
        done = max(0.0, b.range_seconds - max(0.0, b.remaining_seconds))
        fraction = done / b.range_seconds if b.range_seconds > 0 else 1.0
        return {
            "fraction": min(1.0, fraction),
            "windows_done": b.windows_done,
            "windows_total": b.windows_total,
            "messages": b.messages,
            "remaining": b.remaining_seconds,
            "rate": b.rate(),
            "eta": b.eta(),
            "failed": b.failed,
            "requests": b.requests,
            "retried": b.requests_retried,
        }

    def _sinks(self, now: float) -> dict[str, Any]:
        pipeline = self.ctx.pipeline
        stats = pipeline.stats
        influx = self.ctx.self_metrics.influx
        out: dict[str, Any] = {
            "store_path": str(pipeline.store.path),
            "store_size": store_size(pipeline.store.path),
            "flushes": stats.flushes,
            "last_flush": stats.last_flush_at,
            "flush_seconds": stats.last_flush_seconds,
            "influx": None,
        }
        if influx is not None:
            pending, failed, oldest = self.ctx.reader.outbox_state()
            s = influx.stats
            out["influx"] = {
                "up": bool(s.connected),
                "pending": pending,
                "failed": failed,
                "oldest": oldest,
                "written": s.points_written,
                "batches_failed": s.batches_failed,
                "refused": s.points_refused,
                "url": pipeline.config.influxdb.url,
            }
        return out

    def _card(self, cls: type[Plugin], hours: int, main: Span | None) -> dict[str, Any]:
        """A plugin's card: its main metric over the main chart's window (so that every card
        shows the same hours)."""
        metric = _main_metric(cls)
        stop = main.frame.stop if main else None
        span = self._span(hours, cls.ident, metric.name, CARD_BARS, stop)
        f = span.frame
        q = BucketQuery(cls.ident, span.resolution, f.start, f.stop - 1, metrics=(metric.name,))
        points = self.ctx.reader.sums(q, f.step) if metric.kind == "counter" else []
        series = self.ctx.exposition.series_count()
        return {
            "plugin": cls,
            "metric": metric,
            "total": sum(v for _, v in points) if metric.kind == "counter" else None,
            "series": sum(series.get(m.name, 0) for m in cls.metrics),
            "per_metric": {m.name: series.get(m.name, 0) for m in cls.metrics},
            "anchored": span.anchored,
            "svg": charts.sparkline(
                points, f, chart_id=f"spark-{cls.ident}",
                label=f"{metric.name} per {charts_step(f.step)}, {when_range(f)}",
            ),
        }  # fmt: skip

    # --- /plugins/<ident> ----------------------------------------------------------------

    def plugin(self, ident: str, params: Mapping[str, Sequence[str]]) -> str:
        cls = self.ctx.plugins.get(ident)
        if cls is None:
            raise PageError(
                404, f"no plugin {ident[:60]!r}; available: {', '.join(self.ctx.plugins)}"
            )
        given = {k: list(v) for k, v in params.items() if any(x != "" for x in v)}
        query, span, chosen = self._plugin_query(cls, given)
        prefix = self.ctx.pipeline.config.prometheus.prefix
        metrics = [m for m in cls.metrics if not query.metrics or m.name in query.metrics]
        views = [self._metric_view(cls, m, query, span, prefix) for m in metrics]
        label_names = sorted({n for m in cls.metrics for n in m.labels})
        return self._render(
            "plugin.html",
            title=cls.name,
            plugin=cls,
            views=views,
            span=span,
            ranges=RANGES,
            chosen=chosen,
            resolutions=[restapi.format_duration_s(r) for r in self.ctx.api.resolutions],
            label_names=label_names,
            filters={n: (given.get(n) or [""])[0] for n in label_names},
            examples=examples(cls, prefix),
            readme_prefix=prefix,
        )

    def _plugin_query(
        self, cls: type[Plugin], params: dict[str, list[str]]
    ) -> tuple[BucketQuery, Span, dict[str, str]]:
        """The API's parameters (checked by the API's own rules) plus ``range``; defaults
        fit a chart: the last 6 hours, at the finest resolution that draws at most
        MAX_BUCKETS/3 buckets, ending now or at the plugin's newest data."""
        api_params = {k: v for k, v in params.items() if k not in PAGE_PARAMETERS}
        for name in ("order", "limit", "page", "rows_per_page", "format", "callback"):
            api_params.pop(name, None)
        raw_range = (params.get("range") or [DEFAULT_RANGE])[0]
        try:
            window = int(parse_duration(raw_range, "range").total_seconds())
        except Exception:
            window = -1
        if window <= 0:
            raise PageError(
                400, f"range must be a duration such as 6h or 7d, not {raw_range[:20]!r}"
            )
        now = self.clock()
        try:
            q = restapi.build_query(cls, api_params, self.ctx.api, now)
        except restapi.ApiError as exc:
            raise PageError(exc.status, exc.message) from None
        resolution = q.resolution
        stop, start = q.stop, q.start
        if "start" not in api_params:
            start = stop - window
        if "resolution" not in api_params:
            resolution = next(
                (r for r in self.ctx.api.resolutions if (stop - start) / r <= MAX_BUCKETS / 3),
                self.ctx.api.resolutions[-1],
            )
        anchored = False
        if "stop" not in api_params and "start" not in api_params:
            newest = max(
                (
                    self.ctx.reader.newest_start(cls.ident, m.name, resolution) or -1
                    for m in cls.metrics
                ),
                default=-1,
            )
            if 0 <= newest < start:
                stop = (newest // resolution + 1) * resolution - 1
                start, anchored = stop + 1 - window, True
        buckets = (stop - start) / resolution
        if buckets > MAX_BUCKETS:
            coarser = [r for r in self.ctx.api.resolutions if (stop - start) / r <= MAX_BUCKETS]
            hint = (
                f"choose a resolution of {restapi.format_duration_s(coarser[0])} or coarser"
                if coarser
                else "choose a shorter range"
            )
            raise PageError(
                400,
                f"{int(buckets):,} buckets of {restapi.format_duration_s(resolution)} are too "
                f"many for a chart (at most {MAX_BUCKETS}): {hint}",
            )
        start = (start // resolution) * resolution
        q = BucketQuery(cls.ident, resolution, start, stop, q.metrics, q.labels, descending=False)
        frame = charts.Frame(start, stop + 1, resolution)
        chosen = {
            "range": raw_range,
            "resolution": restapi.format_duration_s(resolution)
            if "resolution" in api_params
            else "",
            "metric": (api_params.get("metric") or [""])[0],
        }
        return q, Span(frame, resolution, anchored), chosen

    def _metric_view(
        self, cls: type[Plugin], m: Metric, base: BucketQuery, span: Span, prefix: str
    ) -> MetricView:
        reader = self.ctx.reader
        q = BucketQuery(
            base.plugin, base.resolution, base.start, base.stop, (m.name,), base.labels, False
        )
        f = span.frame
        chart_id = f"chart-{m.name}"
        label = f"{m.name}, {when_range(f)}, per {charts_step(f.step)}"
        legend: list[tuple[str, str]] = []
        if m.kind == "counter":
            points = reader.sums(q)
            found = reader.top_series(q, 10)
            stacked = [labels for _, labels, _ in found[:STACKED]] if m.labels else []
            names = [_series_name(labels, m.labels) for labels in stacked]
            stacks = list(zip(names, reader.series_points(q, stacked), strict=True))
            chart = charts.bar_chart(
                points, f, chart_id=chart_id, label=label, unit=m.name, stacks=stacks
            )
            if stacks:
                legend = [(charts.PALETTE[i], n) for i, n in enumerate(names)]
                if len(found) > len(stacks) or reader.series_count(q) > len(stacks):
                    legend.append((charts.OTHER, "other"))
            count = len(points)
            total: float | None = sum(v for _, v in points)
            most = max((v for _, _, v in found), default=1.0) or 1.0
            top = [
                {
                    "labels": labels,
                    "value": v,
                    "share": v / total if total else 0.0,
                    "bar": v / most,
                }
                for _, labels, v in found
            ]
        elif m.name.endswith("_timestamp_seconds"):  # a time: its latest values say it all
            latest = reader.latest_series(q, 10)
            chart = Markup(
                '<p class="muted">A timestamp gauge: its latest values, as times, below.</p>'
            )
            count, total = 0, None
            top = [{"labels": labels, "value": v, "at": t} for _, labels, t, v in latest]
        else:
            latest = reader.latest_series(q, 10)
            shown = [labels for _, labels, _, _ in latest[: len(charts.PALETTE)]]
            lines = reader.series_points(q, shown)
            names = [_series_name(labels, m.labels) for labels in shown]
            chart = charts.line_chart(
                list(zip(names, lines, strict=True)), f, chart_id=chart_id, label=label
            )
            count = sum(len(pts) for pts in lines)
            total = None
            legend = [(charts.PALETTE[i % len(charts.PALETTE)], n) for i, n in enumerate(names)]
            top = [{"labels": labels, "value": v, "at": t} for _, labels, t, v in latest]
        suffix = "_total" if m.kind == "counter" else ""
        links = {
            "metric": [m.name],
            **{k: list(v) for k, v in (base.labels or {}).items()},
        }
        return MetricView(
            metric=m,
            prometheus_name=f"{prefix}{m.name}{suffix}",
            chart=chart,
            points=count,
            series=reader.series_count(q),
            total=total,
            top=top,
            labels=m.labels,
            json_url=_api_url(cls.ident, links, span, self.ctx.api.max_rows_per_page),
            csv_url=_api_url(
                cls.ident, {**links, "format": ["csv"]}, span, self.ctx.api.max_rows_per_page
            ),
            legend=legend,
        )


# --- helpers ------------------------------------------------------------------------------------


def _window(params: Mapping[str, Sequence[str]]) -> int:
    raw = (params.get("hours") or [str(DEFAULT_WINDOW)])[0]
    if not raw.isdigit() or int(raw) not in WINDOWS:
        raise PageError(
            400, f"hours must be one of {', '.join(map(str, WINDOWS))}, not {raw[:20]!r}"
        )
    return int(raw)


def _main_metric(cls: type[Plugin]) -> Metric:
    """A plugin's main metric: its first counter, else its first metric."""
    return next((m for m in cls.metrics if m.kind == "counter"), cls.metrics[0])


def _main_of(plugins: Mapping[str, type[Plugin]]) -> tuple[str, str] | None:
    for cls in plugins.values():
        m = _main_metric(cls)
        if m.kind == "counter":
            return cls.ident, m.name
    return None


def _series_name(labels: Mapping[str, str], names: Sequence[str]) -> str:
    """A series as a legend names it: its label values (with their names when several)."""
    if len(names) == 1:
        return labels.get(names[0], "")
    return ", ".join(f"{n}={labels.get(n, '')}" for n in names) or "(no labels)"


def charts_step(step: int) -> str:
    """'minute', '10 minutes', 'hour', '6 hours', 'day'."""
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if step % seconds == 0:
            n = step // seconds
            return unit if n == 1 else f"{n} {unit}s"
    return f"{step} seconds"


def when_range(f: charts.Frame) -> str:
    start = datetime.fromtimestamp(f.start, UTC)
    stop = datetime.fromtimestamp(f.stop, UTC)
    if start.date() == stop.date() or f.stop - f.start <= 86400:
        return f"{start:%Y-%m-%d %H:%M} to {stop:%H:%M} UTC"
    return f"{start:%Y-%m-%d %H:%M} to {stop:%Y-%m-%d %H:%M} UTC"


def _api_url(
    ident: str, params: Mapping[str, Sequence[str]], span: Span, rows_per_page: int | None = None
) -> str:
    """The /api/ URL of the rows a chart shows (bucket starts in the frame, oldest first)."""
    f = span.frame
    query: list[tuple[str, str]] = [
        ("resolution", restapi.format_duration_s(span.resolution)),
        ("start", str(f.start)),
        ("stop", str(f.stop - 1)),
        ("order", "asc"),
    ]
    if rows_per_page:
        query.append(("rows_per_page", str(rows_per_page)))
    query += [(k, v) for k, values in params.items() for v in values]
    return f"/api/{ident}?{urlencode(query)}"
