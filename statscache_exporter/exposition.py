"""The plugins' series as a Prometheus exposition, rendered incrementally and cached.

prometheus-client renders a custom collector's families from scratch on every scrape: about
0.7 s for 100k series (1.6 s in OpenMetrics), on every scrape. Here each series keeps its
rendered sample line; a flush re-renders only the lines of the series it touched, and a scrape
joins the cached lines, once per change. The output is byte for byte what prometheus-client
writes for the same families (a test holds it to that), and :meth:`Exposition.collect` offers
the same series through the ``Collector.collect()`` protocol, for a registry.

Counters are exposed as cumulative ``<prefix><metric>_total``; gauges as set. No sample carries
a timestamp. ``_created`` series (the time the exporter first saw a series) are off by default.
A series may be hidden from the exposition when it has not changed for its metric's idle TTL;
it stays in the store and comes back when it changes again.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString as _go_float

from statscache_exporter.aggregate import GaugeValue, Series, SeriesKey
from statscache_exporter.plugin import Metric as Declaration

TEXT = "text"
OPENMETRICS = "openmetrics"
#: How often hidden-by-TTL series are re-checked, at most (seconds).
TTL_GRANULARITY = 10.0


def go_float(value: float) -> str:
    """A number as Prometheus (Go) prints it, as prometheus-client does: 5.0, 1.5e+06, NaN."""
    return str(_go_float(value))  # type: ignore[no-untyped-call]


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_string(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``{a="1",b="2"}`` with names sorted, as prometheus-client writes it; '' for none."""
    if not names:
        return ""
    pairs = sorted(zip(names, values, strict=True))
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in pairs) + "}"


@dataclass
class Family:
    """One metric's series: each one's rendered sample line, and, only where they are used,
    when it was first seen (``_created`` series) and when it last changed (idle TTL). The
    label string and the value are read back from the line: at 100k series, a dict of each
    would cost about 10 MB for what the lines already hold. Lines are kept encoded, so a
    render joins them into the body with no text of the whole exposition on the way."""

    name: str  # prefixed, without _total
    declaration: Declaration
    ttl: float | None
    keep_created: bool = False
    lines: dict[tuple[str, ...], bytes] = field(default_factory=dict)
    created: dict[tuple[str, ...], float] = field(default_factory=dict)
    changed: dict[tuple[str, ...], float] = field(default_factory=dict)
    sample_name: str = field(init=False)

    def __post_init__(self) -> None:
        counter = self.declaration.kind == "counter"
        self.sample_name = self.name + "_total" if counter else self.name

    def set(self, labels: tuple[str, ...], value: float, created: float, now: float) -> None:
        line = self.lines.get(labels)
        if line is None:
            label_str = label_string(self.declaration.labels, labels)
            if self.keep_created:
                self.created[labels] = created
        else:
            label_str = line[len(self.sample_name) : line.rindex(b" ")].decode()
        self.lines[labels] = f"{self.sample_name}{label_str} {go_float(value)}\n".encode()
        if self.ttl is not None:
            self.changed[labels] = now

    def label_str(self, labels: tuple[str, ...]) -> str:
        """``{a="1",b="2"}`` of a series (its sample line is ``<name><labels> <value>``; the
        value has no space)."""
        line = self.lines[labels]
        return line[len(self.sample_name) : line.rindex(b" ")].decode()

    def created_line(self, labels: tuple[str, ...]) -> bytes:
        created = go_float(self.created[labels])
        return f"{self.name}_created{self.label_str(labels)} {created}\n".encode()

    def value(self, labels: tuple[str, ...]) -> float:
        line = self.lines[labels]
        return float(line[line.rindex(b" ") + 1 : -1])  # Go's forms (+Inf, NaN) parse too

    def visible(self, now: float) -> Iterator[tuple[str, ...]]:
        if self.ttl is None:
            yield from self.lines
        else:
            cutoff = now - self.ttl
            yield from (k for k, t in self.changed.items() if t >= cutoff)


class Exposition:
    """Every plugin series' current value, and its cached renderings."""

    def __init__(
        self,
        prefix: str,
        metrics: Mapping[str, tuple[str, Declaration]],
        created_series: bool = False,
        ttls: Mapping[str, float | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = prefix
        self.created_series = created_series
        self.clock = clock
        self._lock = threading.RLock()
        self._generation = 0
        self._cache: dict[tuple[str, bool], tuple[tuple[int, int], bytes]] = {}
        self.families = {
            name: Family(prefix + name, decl, (ttls or {}).get(name), created_series)
            for name, (_, decl) in metrics.items()
        }
        self._any_ttl = any(f.ttl is not None for f in self.families.values())

    # --- updates (the pipeline thread) ---------------------------------------------------

    def update(
        self, totals: Mapping[SeriesKey, int | GaugeValue], series: Mapping[SeriesKey, Series]
    ) -> None:
        """New totals of some series, after a flush committed them."""
        if not totals:
            return
        now = self.clock()
        with self._lock:
            for key, total in totals.items():
                family = self.families.get(key[0])
                if family is None:
                    continue
                value = total.value if isinstance(total, GaugeValue) else float(total)
                family.set(key[1], value, series[key].created, now)
            self._generation += 1

    # --- rendering (HTTP threads) --------------------------------------------------------

    def render(self, fmt: str = TEXT, compressed: bool = False) -> bytes:
        """The families in the text format or in OpenMetrics (without the final ``# EOF``, so
        that self-metrics can follow), gzip-compressed if asked; cached until a change."""
        now = self.clock()
        epoch = int(now // TTL_GRANULARITY) if self._any_ttl else 0
        version = (self._generation, epoch)
        cached = self._cache.get((fmt, compressed))
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:
            version = (self._generation, epoch)
            plain = self._cache.get((fmt, False))
            if plain is not None and plain[0] == version:
                body = plain[1]
            else:  # not cached on the way to gzip: scrapers that gzip never ask for it
                render = self._render_openmetrics if fmt == OPENMETRICS else self._render_text
                body = render(now)
            if compressed:
                body = gzip.compress(body, compresslevel=1, mtime=0)
            # bodies of an older version are never served again: let them go now
            self._cache = {k: v for k, v in self._cache.items() if v[0] == version}
            self._cache[(fmt, compressed)] = (version, body)
            return body

    def _render_text(self, now: float) -> bytes:
        out: list[bytes] = []
        for f in self.families.values():
            help_text = f.declaration.help.replace("\\", r"\\").replace("\n", r"\n")
            kind = f.declaration.kind
            out.append(
                f"# HELP {f.sample_name} {help_text}\n# TYPE {f.sample_name} {kind}\n".encode()
            )
            keys = list(f.visible(now))
            lines = f.lines
            out.extend(lines[k] for k in keys)
            if self.created_series and kind == "counter" and keys:
                # prometheus-client writes the _created family only when it has samples
                out.append(f"# HELP {f.name}_created {help_text}\n".encode())
                out.append(f"# TYPE {f.name}_created gauge\n".encode())
                out.extend(f.created_line(k) for k in keys)
        return b"".join(out)

    def _render_openmetrics(self, now: float) -> bytes:
        out: list[bytes] = []
        for f in self.families.values():
            help_text = escape_label_value(f.declaration.help)
            head = f"# HELP {f.name} {help_text}\n# TYPE {f.name} {f.declaration.kind}\n"
            out.append(head.encode())
            lines = f.lines
            if self.created_series and f.declaration.kind == "counter":
                for k in f.visible(now):
                    out.append(lines[k])
                    out.append(f.created_line(k))
            else:
                out.extend(lines[k] for k in f.visible(now))
        return b"".join(out)

    # --- the Collector protocol ----------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The same series as prometheus-client metric families."""
        now = self.clock()
        with self._lock:
            snapshot = [
                (f, [(k, f.value(k), f.created.get(k, 0.0)) for k in f.visible(now)])
                for f in self.families.values()
            ]
        for f, samples in snapshot:
            decl = f.declaration
            if decl.kind == "counter":
                counter = CounterMetricFamily(f.name, decl.help, labels=decl.labels)
                for labels, value, created in samples:
                    counter.add_metric(
                        labels, value, created=created if self.created_series else None
                    )
                yield counter
            else:
                gauge = GaugeMetricFamily(f.name, decl.help, labels=decl.labels)
                for labels, value, _ in samples:
                    gauge.add_metric(labels, value)
                yield gauge

    def series_count(self) -> dict[str, int]:
        with self._lock:
            return {name: len(f.lines) for name, f in self.families.items()}
