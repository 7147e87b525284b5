#!/usr/bin/env python3
"""Benchmark: /metrics render and cached-serve time, against prometheus-client's own rendering.

For each size (10k and 100k series by default), in one process:

1. ``build``: a fresh :class:`Exposition` loaded with every series (``update`` of all totals,
   as ``daemon.exposition_for`` does at start-up);
2. ``rebuild``: a flush touched 1% of the series: ``update`` of those + ``render`` (text,
   OpenMetrics, each also gzip-compressed);
3. ``cached``: ``render`` when nothing changed;
4. ``http cached`` / ``http after flush``: ``GET /metrics`` through the WSGI ``App`` of
   :mod:`statscache_exporter.web`, in-process (no socket), built as the daemon builds it
   (``open_pipeline`` → ``exposition_for`` → ``web_context``), so self-metrics are included;
5. the reference: prometheus-client rendering the same series from ``Exposition.collect()``
   on a fresh ``CollectorRegistry`` (``generate_latest``, OpenMetrics ``generate_latest``,
   gzip as its own HTTP handler does it; for the HTTP rows its ``make_wsgi_app`` over the same
   collectors, self-metrics included). prometheus-client has no cache: its time is the same
   for a rebuild and for a cached scrape, so each reference is measured once per format and
   compared with both.

Ratios are prometheus-client's median / ours (above 1: we are faster). The targets (cached
scrape of 100k series < 10 ms, rebuild < 300 ms) are printed as information only; the exit
status is non-zero only if our output differs from prometheus-client's.

Prints a markdown table on stdout (progress on stderr); ``--json PATH`` also writes the figures.
Seeded: the same arguments give the same series, values and flushes.

    .venv/bin/python bench/metrics_render.py [--series 10000 100000] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import gzip
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import common
from common import CATEGORIES, loadavg, log, names, package, username
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client import generate_latest as prom_text
from prometheus_client.openmetrics.exposition import generate_latest as prom_openmetrics

from statscache_exporter import config as configuration
from statscache_exporter.aggregate import GaugeValue, Series, SeriesKey
from statscache_exporter.daemon import exposition_for, web_context
from statscache_exporter.exposition import OPENMETRICS, TEXT, Exposition
from statscache_exporter.pipeline import Pipeline, open_pipeline, series_ttls
from statscache_exporter.plugin import Gauge, Metric, Plugin, discover
from statscache_exporter.web import App

NAME = "metrics_render"
TOUCHED = 0.01  # share of the series a flush touches
CACHED_FACTOR = 20  # cached steps take this many times --repeat samples (each is short)
TARGET_CACHED_MS = 10.0
TARGET_REBUILD_MS = 300.0
TARGET_SIZE = 100_000

#: (label, exposition format, gzip, Accept header a client sends for it)
FORMATS: list[tuple[str, str, bool, str]] = [
    ("text", TEXT, False, "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    # what Prometheus itself asks for (it also always sends Accept-Encoding: gzip)
    (
        "openmetrics",
        OPENMETRICS,
        False,
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ),
]
FORMATS += [(label + "+gzip", fmt, True, accept) for label, fmt, _, accept in FORMATS]


# --- the series ----------------------------------------------------------------------------------


class BenchState(Plugin):
    """A few gauges, as state-tracking plugins declare them (the bundled ones are counters)."""

    ident = "bench_state"
    name = "Bench state"
    summary = "Gauges for the benchmark"
    metrics = (
        Gauge("koji_tasks_open", "Open Koji tasks per builder and method", ("host", "method")),
        Gauge("copr_builds_pending", "Pending Copr builds per chroot", ("chroot",)),
        Gauge("bodhi_updates", "Bodhi updates per release and status", ("release", "status")),
    )

    def process(self, message: Any, out: Any) -> None:  # never called: series are loaded
        pass


TOPIC_PREFIXES = (
    ("org.fedoraproject.prod.",) * 14
    + ("org.fedoraproject.stg.",) * 3
    + ("io.pagure.prod.", "org.centos.prod.", "org.release-monitoring.prod.")
)
OBJECTS = names(
    "update build buildsys tag untag package repo pull-request issue commit project compose "
    "task test image user group badge comment chroot rpm module container flatpak side-tag "
    "request review ticket job scan artifact branch release override buildroot mirror "
    "nvr signature message"
)
ACTIONS = names(
    "created comment complete edit deleted request.testing request.stable status.change "
    "state.change added removed ready start end finished failed new update retag "
    "karma.threshold.reach push eject queued running succeeded canceled flag.added "
    "flag.removed tag.added tag.removed assigned reopened closed merged rebased "
    "decision.update rawhide.complete"
)
KOJI_METHODS = names(
    "build buildArch buildSRPMFromSCM createrepo newRepo tagBuild tagNotification "
    "createImage livemedia runroot image waitrepo"
)
DISTROS = names(
    "fedora epel centos-stream rhel opensuse-leap opensuse-tumbleweed mageia openeuler "
    "almalinux amazonlinux oraclelinux rocky"
)
ARCHES = names("x86_64 aarch64 ppc64le s390x i386 armhfp")
DATACENTRES = names("iad2 rdu3 rdu-cc")
STATUSES = names("pending testing stable obsolete unpushed side_tag_active side_tag_expired")
CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"


def topic(rng: random.Random) -> str:
    """org.fedoraproject.prod.bodhi.update.request.testing and the like, 30-70 characters."""
    return (
        f"{rng.choice(TOPIC_PREFIXES)}{rng.choice(CATEGORIES)}."
        f"{rng.choice(OBJECTS)}.{rng.choice(ACTIONS)}"
    )


def koji_task(rng: random.Random) -> tuple[str, str]:
    host = (
        f"buildvm-{rng.choice(['x86', 'a64', 'ppc64le', 's390x'])}-{rng.randint(1, 99):02d}."
        f"{rng.choice(DATACENTRES)}.fedoraproject.org"
    )
    return host, rng.choice(KOJI_METHODS)


def chroot(rng: random.Random) -> tuple[str]:
    release = rng.choice(["rawhide", str(rng.randint(6, 45))])
    return (f"{rng.choice(DISTROS)}-{release}-{rng.choice(ARCHES)}",)


def bodhi(rng: random.Random) -> tuple[str, str]:
    kind = rng.random()
    if kind < 0.6:
        release = f"F{rng.randint(20, 45)}{rng.choice(['', 'C', 'F', 'M', 'N'])}"
    elif kind < 0.9:
        release = f"EPEL-{rng.randint(6, 10)}{rng.choice(['', 'N', '.1', '.2', '.3'])}"
    else:
        release = f"ELN{rng.randint(1, 99)}"
    return release, rng.choice(STATUSES)


def unique(
    rng: random.Random, n: int, make: Callable[[random.Random], tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """``n`` distinct label tuples; when ``make`` runs dry, numbered variants of its values."""
    seen: dict[tuple[str, ...], None] = {}
    misses = 0
    while len(seen) < n:
        labels = make(rng)
        if labels in seen:
            misses += 1
            if misses > 20:
                labels = (*labels[:-1], f"{labels[-1]}-{len(seen)}")
            else:
                continue
        seen[labels] = None
        misses = 0
    return list(seen)


def counter_value(rng: random.Random) -> int:
    """Heavy-tailed message counts: median ~12, a few in the millions."""
    return int(rng.lognormvariate(2.5, 2.2)) + 1


def gauge_value(rng: random.Random) -> float:
    value = float(rng.randint(0, 60))
    return value + rng.choice([0.25, 0.5, 0.75]) if rng.random() < 0.1 else value


def make_series(
    n: int, seed: int, metrics: dict[str, tuple[str, Metric]]
) -> tuple[dict[SeriesKey, int | GaugeValue], dict[SeriesKey, Series]]:
    """``n`` series spread over the metrics as a busy bus spreads them: mostly packages,
    users and topics, some agents and gauges, every category, and the unlabelled total."""
    rng = random.Random(seed)
    gauges = max(3, n * 5 // 100)
    counts = {
        "messages": 1,
        "messages_by_category": min(len(CATEGORIES), max(1, n // 100)),
        "koji_tasks_open": gauges * 6 // 10,
        "copr_builds_pending": gauges // 10,
        "bodhi_updates": gauges - gauges * 6 // 10 - gauges // 10,
        "messages_by_topic": n * 15 // 100,
        "messages_by_agent": n * 10 // 100,
        "messages_by_user": n * 30 // 100,
    }
    counts["messages_by_package"] = n - sum(counts.values())
    if counts["messages_by_package"] < 1:
        raise SystemExit(f"--series {n}: too few series to spread over the metrics (use ≥ 100)")
    makers: dict[str, Callable[[random.Random], tuple[str, ...]]] = {
        "messages": lambda r: (),
        "messages_by_category": lambda r: (r.choice(CATEGORIES),),
        "koji_tasks_open": koji_task,
        "copr_builds_pending": chroot,
        "bodhi_updates": bodhi,
        "messages_by_topic": lambda r: (topic(r),),
        "messages_by_agent": lambda r: (username(r),),
        "messages_by_user": lambda r: (username(r),),
        "messages_by_package": lambda r: (package(r),),
    }
    totals: dict[SeriesKey, int | GaugeValue] = {}
    series: dict[SeriesKey, Series] = {}
    start = 1_700_000_000.0
    for name, count in counts.items():
        ident, decl = metrics[name]
        for labels in unique(rng, count, makers[name]):
            key = (name, labels)
            created = start + rng.uniform(0, 86_400 * 30)
            series[key] = Series(ident, decl, labels, created)
            if decl.kind == "counter":
                totals[key] = 123_456_789 if name == "messages" else counter_value(rng)
            else:
                totals[key] = GaugeValue(created, f"msg-{len(totals)}", gauge_value(rng))
    return totals, series


@dataclass
class Flushes:
    """Successive flushes, each touching a seeded random 1% of the series with new values."""

    totals: dict[SeriesKey, int | GaugeValue]
    rng: random.Random
    keys: list[SeriesKey] = field(init=False)
    clock: float = 1_800_000_000.0

    def __post_init__(self) -> None:
        self.keys = list(self.totals)

    def next(self) -> dict[SeriesKey, int | GaugeValue]:
        touched: dict[SeriesKey, int | GaugeValue] = {}
        for key in self.rng.sample(self.keys, max(1, int(len(self.keys) * TOUCHED))):
            old = self.totals[key]
            self.clock += 0.001
            if isinstance(old, GaugeValue):
                new: int | GaugeValue = GaugeValue(self.clock, "flush", gauge_value(self.rng))
            else:
                new = old + self.rng.randint(1, 5)
            self.totals[key] = touched[key] = new
        return touched


Pending = list[dict[SeriesKey, int | GaugeValue]]


def flush_into(flushes: Flushes, pending: Pending) -> None:
    """Prepare the next flush's batch, outside the timed part (the pipeline built it)."""
    pending.append(flushes.next())


# --- timing ----------------------------------------------------------------------------------


@dataclass
class Timing:
    samples: list[float]

    @property
    def best_ms(self) -> float:
        return min(self.samples) * 1e3

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3


def measure(
    fn: Callable[[], object],
    repeat: int,
    setup: Callable[[], None] | None = None,
    collect: bool = True,
    warmup: bool = True,
) -> Timing:
    """``repeat`` samples of ``fn()`` (each after an untimed ``setup()``), by time.perf_counter,
    after one untimed warm-up round if ``warmup``. The collector runs before each sample when
    ``collect``, and stays enabled during it."""
    if warmup:
        if setup is not None:
            setup()
        fn()
    samples = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        if collect:
            gc.collect()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(samples)


def wsgi_get(app: Callable[..., Iterable[bytes]], accept: str, gzipped: bool) -> bytes:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "QUERY_STRING": "",
        "HTTP_ACCEPT": accept,
        "HTTP_ACCEPT_ENCODING": "gzip" if gzipped else "identity",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "9819",
        "wsgi.url_scheme": "http",
    }
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *exc: status.append(s)))
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"GET /metrics: {status}")
    return body


# --- one size ------------------------------------------------------------------------------------


@dataclass
class Row:
    series: int
    step: str
    format: str
    ours: Timing
    reference: Timing | None = None
    reference_name: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None:
            return None
        return self.reference.median_ms / self.ours.median_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "step": self.step,
            "format": self.format,
            "samples": len(self.ours.samples),
            "best_ms": round(self.ours.best_ms, 4),
            "median_ms": round(self.ours.median_ms, 4),
            "reference": self.reference_name or None,
            "reference_samples": len(self.reference.samples) if self.reference else None,
            "reference_best_ms": round(self.reference.best_ms, 4) if self.reference else None,
            "reference_median_ms": round(self.reference.median_ms, 4) if self.reference else None,
            "ratio": round(self.ratio, 2) if self.ratio is not None else None,
        }


@dataclass
class SizeResult:
    series: int
    rows: list[Row]
    identical: dict[str, bool]
    sizes: dict[str, int]


def bench_plugins() -> dict[str, type[Plugin]]:
    """The bundled volume plugins (counters) and the benchmark's gauges: only the volume ones,
    whose metrics the series are spread over (other bundled plugins declare metrics of the
    same names as these gauges, e.g. bodhi's ``bodhi_updates``)."""
    plugins = {i: c for i, c in discover().items() if c.__module__ == "statscache_plugins.volume"}
    plugins[BenchState.ident] = BenchState
    return plugins


def compare(ours: bytes, theirs: bytes, what: str, identical: dict[str, bool]) -> None:
    same = ours == theirs
    identical[what] = same
    if same:
        log(f"    {what}: identical to prometheus-client's ({len(ours):,} bytes)")
    else:
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
        at = at if at is not None else min(len(ours), len(theirs))
        log(
            f"    {what}: DIFFERS from prometheus-client's at byte {at} "
            f"(ours {len(ours):,} bytes, theirs {len(theirs):,}): "
            f"{ours[max(0, at - 60) : at + 60]!r} vs {theirs[max(0, at - 60) : at + 60]!r}"
        )


def check_identical(
    exposition: Exposition, app: App, reference_app: Any, registry: CollectorRegistry, when: str
) -> dict[str, bool]:
    identical: dict[str, bool] = {}
    log(f"  byte-for-byte check ({when}):")
    compare(exposition.render(TEXT), prom_text(registry), f"text {when}", identical)
    theirs_openmetrics: bytes = prom_openmetrics(registry)  # type: ignore[no-untyped-call]
    compare(
        exposition.render(OPENMETRICS) + b"# EOF\n",
        theirs_openmetrics,
        f"openmetrics {when}",
        identical,
    )
    for label, _, gzipped, accept in FORMATS:
        ours, theirs = wsgi_get(app, accept, gzipped), wsgi_get(reference_app, accept, gzipped)
        if gzipped:  # different compression levels, and ours is two gzip members: compare content
            ours, theirs = gzip.decompress(ours), gzip.decompress(theirs)
        compare(ours, theirs, f"GET /metrics {label} {when}", identical)
    return identical


def run_size(n: int, repeat: int, seed: int) -> SizeResult:
    log(f"{n:,} series: generating (seed {seed})")
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        cfg = configuration.from_dict({"store": {"path": str(Path(tmp) / "store.sqlite")}})
        pipeline: Pipeline = open_pipeline(cfg, bench_plugins())
        try:
            return _run_size(n, repeat, seed, pipeline)
        finally:
            pipeline.store.close()


def _run_size(n: int, repeat: int, seed: int, pipeline: Pipeline) -> SizeResult:
    cfg, metrics = pipeline.config, pipeline.metrics()
    totals, series = make_series(n, seed, metrics)
    flushes = Flushes(totals, random.Random(seed + 1))
    rows: list[Row] = []

    # 1. full build, as at start-up (the store's totals into a fresh exposition)
    ttls = series_ttls(cfg, metrics)
    log(f"  build x{repeat}")

    def build() -> None:
        e = Exposition(cfg.prometheus.prefix, metrics, cfg.prometheus.created_series, ttls)
        e.update(totals, series)

    rows.append(Row(n, "build (all series)", "-", measure(build, repeat)))

    # the daemon's own wiring: the pipeline restored with the series, its exposition, the app
    pipeline.aggregator.restore(series, totals)
    exposition = exposition_for(pipeline)
    ctx = web_context(pipeline, exposition)
    app = App(ctx)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exposition)
    http_registry = CollectorRegistry(auto_describe=False)
    http_registry.register(exposition)
    http_registry.register(ctx.self_metrics)
    reference_app = make_wsgi_app(http_registry)

    identical = check_identical(exposition, app, reference_app, registry, "after build")

    # 5. prometheus-client: no cache, so one figure per format serves rebuild and cached rows
    references: dict[str, Timing] = {}
    http_references: dict[str, Timing] = {}
    for label, fmt, gzipped, accept in FORMATS:
        generate = prom_openmetrics if fmt == OPENMETRICS else prom_text

        def reference(generate: Callable[[Any], bytes] = generate, gzipped: bool = gzipped) -> None:
            body = generate(registry)
            if gzipped:  # as prometheus-client's own HTTP handlers do (default level 9)
                gzip.compress(body)

        log(f"  prometheus-client {label} x{repeat}")
        # (no warm-up round: each takes a second or so at 100k, and the check above ran them)
        references[label] = measure(reference, repeat, warmup=False)
        log(f"  prometheus-client make_wsgi_app {label} x{repeat}")
        http_get = partial(wsgi_get, reference_app, accept, gzipped)
        http_references[label] = measure(http_get, repeat, warmup=False)

    # 2. rebuild after a flush that touched 1% of the series; first the update alone
    touched: Pending = []

    def update_only(pending: Pending = touched) -> None:
        exposition.update(pending.pop(), series)

    log(f"  update only x{repeat}")
    timing = measure(update_only, repeat, setup=partial(flush_into, flushes, touched))
    rows.append(Row(n, "update only (1% touched)", "-", timing))
    for label, fmt, gzipped, _ in FORMATS:
        pending: list[dict[SeriesKey, int | GaugeValue]] = []

        def rebuild(fmt: str = fmt, gzipped: bool = gzipped, pending: Pending = pending) -> None:
            exposition.update(pending.pop(), series)
            exposition.render(fmt, gzipped)

        log(f"  rebuild {label} x{repeat}")
        timing = measure(rebuild, repeat, setup=partial(flush_into, flushes, pending))
        rows.append(
            Row(n, "rebuild (1% touched)", label, timing, references[label], "generate_latest")
        )

    # 3. cached: nothing changed since the last render
    for label, fmt, gzipped, _ in FORMATS:
        exposition.render(fmt, gzipped)  # fill the cache
        samples = repeat * CACHED_FACTOR
        log(f"  cached {label} x{samples}")
        timing = measure(partial(exposition.render, fmt, gzipped), samples, collect=False)
        rows.append(Row(n, "cached", label, timing, references[label], "generate_latest"))

    # 4. the whole /metrics request through the WSGI app, in-process; first the part of it that
    # is rendered on every scrape: the self-metrics, by prometheus-client
    self_registry = CollectorRegistry(auto_describe=False)
    self_registry.register(ctx.self_metrics)
    for label, generate in (("text", prom_text), ("openmetrics", prom_openmetrics)):
        samples = repeat * CACHED_FACTOR
        log(f"  self-metrics only {label} x{samples}")
        timing = measure(partial(generate, self_registry), samples, collect=False)
        rows.append(Row(n, "self-metrics only", label, timing))
    for label, _, gzipped, accept in FORMATS:
        wsgi_get(app, accept, gzipped)  # fill the cache
        samples = repeat * CACHED_FACTOR
        log(f"  GET /metrics cached {label} x{samples}")
        timing = measure(partial(wsgi_get, app, accept, gzipped), samples, collect=False)
        rows.append(
            Row(n, "GET /metrics cached", label, timing, http_references[label], "make_wsgi_app")
        )
    for label, _, gzipped, accept in FORMATS:
        pending = []

        def after_flush(
            accept: str = accept, gzipped: bool = gzipped, pending: Pending = pending
        ) -> None:
            exposition.update(pending.pop(), series)
            wsgi_get(app, accept, gzipped)

        log(f"  GET /metrics after a flush {label} x{repeat}")
        timing = measure(after_flush, repeat, setup=partial(flush_into, flushes, pending))
        step = "GET /metrics after flush"
        rows.append(Row(n, step, label, timing, http_references[label], "make_wsgi_app"))

    identical.update(check_identical(exposition, app, reference_app, registry, "after flushes"))
    sizes = {label: len(exposition.render(fmt, gzipped)) for label, fmt, gzipped, _ in FORMATS}
    return SizeResult(n, rows, identical, sizes)


# --- report --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return common.machine(prometheus_client=version("prometheus_client"))


def targets(results: list[SizeResult]) -> list[dict[str, Any]]:
    """The issue's targets at 100k series (or the largest size run), worst format counted."""
    out: list[dict[str, Any]] = []
    if not results:
        return out
    largest = max(results, key=lambda r: r.series)
    chosen = next((r for r in results if r.series == TARGET_SIZE), largest)
    checks = [
        ("cached scrape: GET /metrics cached", "GET /metrics cached", TARGET_CACHED_MS),
        ("cached render: Exposition.render", "cached", TARGET_CACHED_MS),
        ("rebuild: 1% touched, update + render", "rebuild (", TARGET_REBUILD_MS),
        ("rebuild served: GET /metrics after flush", "GET /metrics after", TARGET_REBUILD_MS),
        ("full build at start-up (not a target)", "build (", TARGET_REBUILD_MS),
    ]
    for what, prefix, limit in checks:
        rows = [r for r in chosen.rows if r.step.startswith(prefix)]
        worst = max(rows, key=lambda r: r.ours.median_ms)
        out.append(
            {
                "check": what,
                "series": chosen.series,
                "format": worst.format,
                "median_ms": round(worst.ours.median_ms, 6),
                "target_ms": limit,
                "pass": worst.ours.median_ms < limit,
            }
        )
    return out


def fmt_ms(ms: float) -> str:
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.3f}" if ms >= 0.1 else f"{ms:.2g}"


def markdown(report: dict[str, Any], results: list[SizeResult]) -> str:
    m = report["machine"]
    lines = [
        f"### {NAME}: /metrics render vs prometheus-client",
        "",
        f"{report['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['python']} · "
        f"prometheus-client {m['prometheus_client']} · repeat {report['repeat']} "
        f"(cached steps x{CACHED_FACTOR}) · seed {report['seed']} · load average "
        f"{m['loadavg']} at start, {report['loadavg_end']} at end",
        "",
        "| series | step | format | ours median ms | ours best ms "
        "| prometheus-client median ms | ratio (theirs/ours) |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for r in result.rows:
            ref = f"{fmt_ms(r.reference.median_ms)}" if r.reference else "-"
            ratio = "-"
            if r.ratio is not None:
                ratio = f"{r.ratio:,.0f}x" if r.ratio >= 10 else f"{r.ratio:.1f}x"
            lines.append(
                f"| {r.series:,} | {r.step} | {r.format} | {fmt_ms(r.ours.median_ms)} "
                f"| {fmt_ms(r.ours.best_ms)} | {ref} | {ratio} |"
            )
    lines += ["", "| target | series | slowest format | median ms | target ms | result |",
              "|---|---:|---|---:|---:|---|"]  # fmt: skip
    for t in report["targets"]:
        verdict = "PASS" if t["pass"] else "FAIL"
        if t["check"].endswith("not a target)"):
            verdict = f"({'under' if t['pass'] else 'over'} {t['target_ms']:g} ms)"
        lines.append(
            f"| {t['check']} | {t['series']:,} | {t['format']} | {fmt_ms(t['median_ms'])} "
            f"| {t['target_ms']:g} | {verdict} |"
        )
    lines.append("")
    for res in results:
        same = all(res.identical.values())
        sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in res.sizes.items())
        lines.append(
            f"- {res.series:,} series: output {'identical' if same else 'DIFFERENT'} "
            f"byte for byte to prometheus-client's ({len(res.identical)} checks: text, "
            f"OpenMetrics, GET /metrics x4, after build and after flushes); bodies: {sizes}"
        )
        for what, ok in res.identical.items():
            if not ok:
                lines.append(f"  - DIFFERS: {what}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--series", type=int, nargs="+", default=[10_000, 100_000], help="default 10000 100000"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="samples per step (cached steps: x20); default 5"
    )
    parser.add_argument("--seed", type=int, default=20240601, help="default 20240601")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    results = [run_size(n, args.repeat, args.seed) for n in args.series]
    report: dict[str, Any] = {
        "benchmark": NAME,
        "date": started,
        "machine": info,
        "series": args.series,
        "repeat": args.repeat,
        "cached_repeat": args.repeat * CACHED_FACTOR,
        "seed": args.seed,
        "touched_per_flush": TOUCHED,
        "unit": "ms",
        "ratio": "prometheus-client median / ours median",
        "results": [row.as_dict() for result in results for row in result.rows],
        "identical": {str(r.series): r.identical for r in results},
        "body_bytes": {str(r.series): r.sizes for r in results},
    }
    report["loadavg_end"] = loadavg()
    report["targets"] = targets(results)
    report["ok"] = all(all(r.identical.values()) for r in results)
    text = markdown(report, results)
    common.publish(report, text, args.json)
    if not report["ok"]:
        log("FAILED: our output differs from prometheus-client's (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
