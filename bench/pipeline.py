#!/usr/bin/env python3
"""Benchmark: messages per second through the whole pipeline (every bundled plugin, into the
store), against merely decoding the same messages with ``json.loads``, at 10k, 100k and 1M
messages.

One run, in one process, over a fresh store with the default configuration (flush every
second or 20,000 messages, the cardinality cap at 10,000 series a metric, ``synchronous:
full``), of the largest size, with figures at each size: the scaled corpus (``bench/corpus.py``,
seeded) is generated and serialized as JSON Lines in chunks (untimed), and each chunk is timed
twice, the order alternating from chunk to chunk:

- **json.loads**: ``json.loads(line)`` of every line;
- **pipeline**: ``Pipeline.handle(line)`` of every line (decode, normalize, dedup, every
  bundled plugin, aggregation at 1 s, 1 m, 1 h and 1 d, and the flushes that fall due, each one
  SQLite transaction): what ``statscache-exporter replay`` does with each line of a file,
  without the file reading.

At each size N (10k, 100k, 1M) the pipeline flushes (timed, like a run's final flush) and the
store's ``messages`` total is checked to be N: the first N messages of the run are exactly a
run of N (the generator's output is a prefix), so the figures at N are those of a run of N,
measured in the same run as the others.

**messages/s** = messages / the sum of the chunks' times (``time.perf_counter``); the **ratio**
is pipeline messages/s over json.loads messages/s (target ≥ 0.25 at the largest size, printed as
information).
How it grows: each size's time per message over the smallest size's (1.00 or below: linear
or better). Checked at every size: every message processed once, none rejected, and the
store's ``messages`` total equal to the size.

**Memory and disk**, at every size: the process's peak resident set so far (``VmHWM`` of
``/proc/self/status``, the kernel's high-water mark of the resident set, the same figure as
``resource.getrusage`` ``ru_maxrss``, which is the fallback where ``/proc`` is missing) and its
resident set then (``VmRSS``), and the store's size on disk (the database file with its
``-wal`` and ``-shm``). The figures include this benchmark's own chunk of lines (about 1.3 kB
a line as JSON, ~25 MB for a chunk of 20,000): ``--history`` uses chunks of 2,000 so that
the peak is the pipeline's. The resident set before the first message (imports, plugins,
the empty store) is printed as the baseline.

``--history`` (``make bench-history``): the run of history an import makes, 10M messages
(``--sizes`` 10k 100k 1M 10M unless given), chunks of 2,000, named ``pipeline-history`` in its
JSON, with the targets of issue 14 printed (information only): peak RSS ≤ 300 MB at the
largest size, a message there costing ≤ 1.1x one at the smallest. About 15 minutes on a
2-core machine.

``--profile N`` then runs N more messages under cProfile (untimed) with the store as the run
left it, and N over a fresh store, and prints where the time goes in both: per module, and the
functions with the most time of their own (the difference is where the growth goes).

Markdown on stdout, progress on stderr, ``--json PATH`` also writes the figures.

    .venv/bin/python bench/pipeline.py [--sizes 10000 100000 1000000] [--profile 50000]
    .venv/bin/python bench/pipeline.py --history [--sizes 10000 1000000] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import itertools
import json
import os
import pstats
import resource
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import common
from common import loadavg, log
from corpus import DEFAULT_SEED, Generator

from statscache_exporter import config as configuration
from statscache_exporter import runtime
from statscache_exporter.pipeline import Pipeline, open_pipeline
from statscache_exporter.plugin import Plugin, discover

NAME = "pipeline"
HISTORY_NAME = "pipeline-history"
TARGET_RATIO = 0.25  # issue 14: a quarter of json.loads's speed, at 100k and 1M (information only)
CHUNK = 20_000
HISTORY_CHUNK = 2_000  # ~2.5 MB of lines held at a time: the peak RSS is the pipeline's
HISTORY_SIZES = [10_000, 100_000, 1_000_000, 10_000_000]
TARGET_RSS_MB = 300.0  # issue 14: peak RSS of a 10M-message history run (information only)
TARGET_GROWTH = 1.1  # issue 14: a message at the largest size <= 1.1x one at the smallest


@dataclass(frozen=True)
class Memory:
    """The process's resident set (kB): its peak so far and now, and where they were read."""

    peak_kb: int
    rss_kb: int
    source: str

    @classmethod
    def now(cls) -> Memory:
        """VmHWM and VmRSS of /proc/self/status; ru_maxrss (kB on Linux) without /proc."""
        try:
            status = common.proc_status(os.getpid())
            return cls(status["VmHWM"], status["VmRSS"], "/proc/self/status VmHWM")
        except (OSError, KeyError):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return cls(peak, 0, "getrusage ru_maxrss")


def mb(kb: int) -> float:
    """kB (as the kernel counts: KiB) in MB of 2^20 bytes."""
    return kb / 1024


def bundled() -> dict[str, type[Plugin]]:
    """The bundled plugins (statscache_plugins), not third-party ones a developer installed."""
    return {i: c for i, c in discover().items() if c.__module__.startswith("statscache_plugins")}


class Lines:
    """JSON lines of generated messages, serialized faster than ``json.dumps`` of each: the
    body (``body``/``msg``), the bulk of a message and shared with its template, is serialized
    once per template and spliced in. The line decodes to the same object (same keys, body
    last)."""

    def __init__(self) -> None:
        self._bodies: dict[int, str] = {}  # id of a template's body -> its JSON

    def __call__(self, m: dict[str, Any]) -> str:
        key = "body" if "body" in m else "msg"
        body = m[key]
        text = self._bodies.get(id(body))
        if text is None:  # templates live as long as the process: their ids stay theirs
            text = self._bodies[id(body)] = json.dumps(body)
        rest = json.dumps({k: v for k, v in m.items() if k != key})
        return f'{rest[:-1]}, "{key}": {text}}}'


def open_fresh(root: Path, name: str) -> Pipeline:
    """A pipeline over a fresh store with the default configuration."""
    cfg = configuration.from_dict({"store": {"path": str(root / f"{name}.sqlite")}})
    runtime.tune()  # as the command line does
    return open_pipeline(cfg, bundled())


@dataclass
class SizeResult:
    messages: int
    loads_seconds: float = 0.0
    pipeline_seconds: float = 0.0
    final_flush_seconds: float = 0.0
    generate_seconds: float = 0.0
    flushes: int = 0
    series: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    store_total: int = 0
    store_bytes: int = 0
    #: the resident set at this size (peak so far and current, kB)
    memory: Memory | None = None
    #: (messages handled, pipeline seconds so far) after each chunk: how the cost moves as the
    #: store grows
    progress: list[tuple[int, float]] = field(default_factory=list)

    def tenths(self) -> list[float]:
        """µs a message over each tenth of the run (by chunks: as near as they fall)."""
        out: list[float] = []
        done, spent = 0, 0.0
        for k in range(1, 11):
            edge = self.messages * k // 10
            upto = next(((n, t) for n, t in self.progress if n >= edge), self.progress[-1])
            if upto[0] > done:
                out.append((upto[1] - spent) / (upto[0] - done) * 1e6)
                done, spent = upto
        return out

    @property
    def loads_rate(self) -> float:
        return self.messages / self.loads_seconds

    @property
    def pipeline_rate(self) -> float:
        return self.messages / self.pipeline_seconds

    @property
    def ratio(self) -> float:
        return self.pipeline_rate / self.loads_rate

    @property
    def us_per_message(self) -> float:
        return self.pipeline_seconds / self.messages * 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "pipeline_seconds": round(self.pipeline_seconds, 4),
            "loads_seconds": round(self.loads_seconds, 4),
            "final_flush_seconds": round(self.final_flush_seconds, 4),
            "pipeline_messages_per_second": round(self.pipeline_rate, 1),
            "loads_messages_per_second": round(self.loads_rate, 1),
            "ratio": round(self.ratio, 4),
            "us_per_message": round(self.us_per_message, 2),
            "generate_seconds": round(self.generate_seconds, 2),
            "flushes": self.flushes,
            "series": self.series,
            "outcomes": self.outcomes,
            "store_total": self.store_total,
            "store_bytes": self.store_bytes,
            "store_mb": round(self.store_bytes / 2**20, 1),
            "peak_rss_mb": round(mb(self.memory.peak_kb), 1) if self.memory else None,
            "rss_mb": round(mb(self.memory.rss_kb), 1) if self.memory else None,
            "us_per_message_by_tenth": [round(x, 1) for x in self.tenths()],
        }


def stored_total(path: Path) -> int:
    """The store's ``messages`` total, read with SQLite directly."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.metric = 'messages'"
        ).fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 0


def run(
    sizes: list[int], seed: int, root: Path, chunk: int, profile: int, top: int
) -> tuple[list[SizeResult], dict[str, Any] | None, Memory]:
    """One run of the largest size over a fresh store, with a result at each size: the first
    N messages of the run are exactly a run of N (the generator's output is a prefix), and at
    each checkpoint the pipeline flushes (timed, as a run's final flush) and the store's total
    is checked. ``profile``: then profile that many more messages (untimed), with the store as
    the run left it, and as many on a fresh store: how the cost of a message grew. Also
    returns the resident set before the first message (the baseline)."""
    checkpoints = sorted(set(sizes))
    n = checkpoints[-1]
    pipeline = open_fresh(root, "store")
    store = root / "store.sqlite"
    handle = pipeline.handle
    loads = json.loads
    perf = time.perf_counter
    outcomes: Counter[str] = Counter()
    results: list[SizeResult] = []
    current = SizeResult(n)  # the running totals
    messages = Generator(seed).messages()
    line_of = Lines()
    done = 0
    every = max(100_000, n // 50)  # progress lines: at most ~50
    baseline = Memory.now()
    try:
        for i in itertools.count():
            if done == n:
                break
            began = perf()
            take = min(chunk, next(c for c in checkpoints if c > done) - done)
            lines = [line_of(m) for m in itertools.islice(messages, take)]
            current.generate_seconds += perf() - began
            for step in ("loads", "pipeline") if i % 2 == 0 else ("pipeline", "loads"):
                t0 = perf()
                if step == "loads":
                    for line in lines:
                        loads(line)
                    current.loads_seconds += perf() - t0
                else:
                    for line in lines:
                        outcomes[handle(line)] += 1
                    current.pipeline_seconds += perf() - t0
            done += len(lines)
            current.progress.append((done, current.pipeline_seconds))
            if done % every < len(lines) or done == n:
                log(
                    f"  {done:,} / {n:,}: pipeline {done / current.pipeline_seconds:,.0f}/s, "
                    f"peak RSS {mb(Memory.now().peak_kb):,.0f} MB"
                )
            if done in checkpoints:
                results.append(checkpoint(current, pipeline, outcomes, done, store))
        if profile:
            log(f"profiling {profile:,} messages more, then as many over a fresh store")
            late = [line_of(m) for m in itertools.islice(messages, profile)]
            after = profiled(pipeline, late, top)
    finally:
        pipeline.store.close()
    if not profile:
        return results, None, baseline
    fresh = open_fresh(root, "store-profile")
    try:
        first = [line_of(m) for m in Generator(seed).messages(profile)]
        prof = {"fresh": profiled(fresh, first, top), "after": after, "after_messages": n}
        return results, prof, baseline
    finally:
        fresh.store.close()


def checkpoint(
    current: SizeResult, pipeline: Pipeline, outcomes: Counter[str], done: int, store: Path
) -> SizeResult:
    """Flush (timed), check the store holds ``done`` messages, and snapshot the figures."""
    t0 = time.perf_counter()
    pipeline.flush()
    flush = time.perf_counter() - t0
    current.pipeline_seconds += flush
    current.progress[-1] = (done, current.pipeline_seconds)
    total = stored_total(store)
    if outcomes != Counter(processed=done) or total != done:
        raise RuntimeError(
            f"{done:,} messages: outcomes {dict(outcomes)}, the store's total {total}"
        )
    return SizeResult(
        messages=done,
        loads_seconds=current.loads_seconds,
        pipeline_seconds=current.pipeline_seconds,
        final_flush_seconds=flush,
        generate_seconds=current.generate_seconds,
        flushes=pipeline.stats.flushes,
        series=dict(sorted(pipeline.aggregator.series_per_metric.items())),
        outcomes=dict(outcomes),
        store_total=total,
        store_bytes=sum(p.stat().st_size for p in store.parent.glob(f"{store.name}*")),
        memory=Memory.now(),
        progress=list(current.progress),
    )


def profiled(pipeline: Pipeline, lines: list[str], top: int) -> dict[str, Any]:
    """``lines`` through ``pipeline`` (then a flush) under cProfile: time per module and the
    functions with the most time of their own."""
    profiler = cProfile.Profile()
    profiler.enable()
    for line in lines:
        pipeline.handle(line)
    pipeline.flush()
    profiler.disable()
    # {(file, line, function): (primitive calls, calls, own time, cumulative time, callers)}
    stats: dict[Any, Any] = vars(pstats.Stats(profiler))["stats"]
    total = sum(v[2] for v in stats.values())
    by_module: Counter[str] = Counter()
    functions = []
    for (path, line, func), (_, calls, own, cumulative, _) in stats.items():
        module = module_of(path)
        by_module[module] += own
        functions.append(
            {
                "function": f"{module}:{line}({func})" if line else f"{module}({func})",
                "calls": calls,
                "own_seconds": round(own, 4),
                "cumulative_seconds": round(cumulative, 4),
            }
        )
    functions.sort(key=lambda f: -f["own_seconds"])
    return {
        "messages": len(lines),
        "seconds": round(total, 3),
        "by_module": [
            {"module": m, "own_seconds": round(s, 4), "share": round(s / total, 4)}
            for m, s in by_module.most_common()
        ],
        "functions": functions[:top],
    }


def module_of(path: str) -> str:
    """A short name for where a function lives: ``statscache_exporter/store.py``,
    ``json/decoder.py``, or ``<built-in>``."""
    if path == "~":
        return "<built-in>"
    parts = Path(path).parts
    for anchor in ("statscache_exporter", "statscache_plugins", "plugins"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i:])
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return "/".join(parts[i + 1 : i + 3])
    return "/".join(parts[-2:])


def markdown(report: dict[str, Any], results: list[SizeResult]) -> str:
    m = report["machine"]
    first = results[0]
    title = "a history import" if report["history"] else "vs json.loads"
    lines = [
        f"### {report['benchmark']}: messages through every bundled plugin into the store, "
        + title,
        "",
        f"{report['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['python']} · SQLite "
        f"{m['sqlite']} · {len(report['plugins'])} plugins · seed {report['seed']} · chunks "
        f"of {report['chunk']:,} · load average {m['loadavg']} at start, "
        f"{report['loadavg_end']} at end",
        "",
        "| messages | pipeline s | pipeline messages/s | json.loads messages/s | ratio "
        "| µs a message | vs first size | flushes | series | peak RSS MB | store MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        peak = f"{mb(r.memory.peak_kb):,.0f}" if r.memory else "-"
        lines.append(
            f"| {r.messages:,} | {r.pipeline_seconds:.2f} | {r.pipeline_rate:,.0f} "
            f"| {r.loads_rate:,.0f} | {r.ratio:.3f} | {r.us_per_message:.1f} "
            f"| {r.us_per_message / first.us_per_message:.2f} | {r.flushes:,} "
            f"| {sum(r.series.values()):,} | {peak} | {r.store_bytes / 2**20:,.1f} |"
        )
    last = results[-1]
    verdict = "PASS" if last.ratio >= TARGET_RATIO else "FAIL"
    growth = last.us_per_message / first.us_per_message
    shape = "linear or better" if growth <= 1.1 else "worse than linear"
    lines += [
        "",
        f"Target: ratio ≥ {TARGET_RATIO} at {last.messages:,} messages: **{last.ratio:.3f}** "
        f"({verdict}). Growth: the time per message at {last.messages:,} is {growth:.2f}x "
        f"that at {first.messages:,} ({shape}; within 10% counts as linear). At "
        f"{last.messages:,}, µs a message over each tenth of the run: "
        + ", ".join(f"{x:.0f}" for x in last.tenths())
        + ".",
        "",
        "At every size: each message processed once, none rejected, the store's `messages` "
        "total equal to the size. ratio = pipeline messages/s / json.loads messages/s of the same "
        "lines in the same run.",
        "",
        memory_line(report, last, growth),
    ]
    prof = report.get("profile")
    if prof:
        lines += profile_markdown(prof)
    return "\n".join(lines) + "\n"


def memory_line(report: dict[str, Any], last: SizeResult, growth: float) -> str:
    """What the peak RSS and the store's size were, and for ``--history`` the targets."""
    mem = report["memory"]
    text = (
        f"Peak RSS ({mem['source']}, this benchmark's chunk of {report['chunk']:,} lines "
        f"included): {mem['baseline_rss_mb']:,.0f} MB before the first message, "
        f"**{mem['peak_rss_mb']:,.0f} MB** at {last.messages:,}; the store on disk "
        f"**{last.store_bytes / 2**20:,.1f} MB** ({last.store_bytes / last.messages:,.0f} bytes "
        "a message)."
    )
    if not report["history"]:
        return text
    rss_ok = mem["peak_rss_mb"] <= TARGET_RSS_MB
    return (
        text + f" Targets (issue 14, information only): peak RSS ≤ {TARGET_RSS_MB:g} MB "
        f"({'PASS' if rss_ok else 'FAIL'}); a message at {last.messages:,} ≤ "
        f"{TARGET_GROWTH:g}x one at {report['results'][0]['messages']:,}: {growth:.2f}x "
        f"({'PASS' if growth <= TARGET_GROWTH else 'FAIL'})."
    )


def profile_markdown(prof: dict[str, Any]) -> list[str]:
    """Where the time goes, on a fresh store and after the run: per module, then the functions
    with the most own time after the run."""
    fresh, after = prof["fresh"], prof["after"]
    n, at = after["messages"], prof["after_messages"]
    lines = [
        "",
        f"Where the time goes: cProfile over {n:,} messages on a fresh store "
        f"({fresh['seconds']:.2f} s under the profiler) and over {n:,} more after the "
        f"{at:,} of the run ({after['seconds']:.2f} s); seconds in each module's own code:",
        "",
        "| module | fresh store s | share | after the run s | share |",
        "|---|---:|---:|---:|---:|",
    ]
    before = {r["module"]: r for r in fresh["by_module"]}
    for row in after["by_module"][:12]:
        old = before.get(row["module"], {"own_seconds": 0.0, "share": 0.0})
        lines.append(
            f"| `{row['module']}` | {old['own_seconds']:.3f} | {old['share']:.1%} "
            f"| {row['own_seconds']:.3f} | {row['share']:.1%} |"
        )
    earlier = {f["function"]: f for f in fresh["functions"]}
    lines += [
        "",
        "| function (most own time after the run) | calls | fresh store own s "
        "| after the run own s | cumulative s |",
        "|---|---:|---:|---:|---:|",
    ]
    for f in after["functions"][:15]:
        old = earlier.get(f["function"])
        lines.append(
            f"| `{f['function']}` | {f['calls']:,} "
            f"| {old['own_seconds'] if old else float('nan'):.3f} | {f['own_seconds']:.3f} "
            f"| {f['cumulative_seconds']:.3f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="messages per run (default 10000 100000 1000000; --history: and 10000000)",
    )
    parser.add_argument(
        "--chunk", type=int, help=f"lines per chunk ({CHUNK}; --history: {HISTORY_CHUNK})"
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="the 10M-message run of make bench-history, with its RSS and growth targets",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="then profile N messages (0: no)"
    )
    parser.add_argument("--top", type=int, default=25, help="functions kept in the profile")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = HISTORY_SIZES if args.history else [10_000, 100_000, 1_000_000]
    if args.chunk is None:
        args.chunk = HISTORY_CHUNK if args.history else CHUNK
    if min(args.sizes) < 1 or args.chunk < 1 or args.profile < 0:
        parser.error("--sizes and --chunk must be at least 1, --profile at least 0")
    sizes = sorted(args.sizes)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = common.machine(
        sqlite=sqlite3.sqlite_version, statscache_exporter=version("statscache-exporter")
    )
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        log(f"{sizes[-1]:,} messages, figures at {', '.join(f'{n:,}' for n in sizes)}")
        results, prof, baseline = run(sizes, args.seed, root, args.chunk, args.profile, args.top)
    last, first = results[-1], results[0]
    growth = last.us_per_message / first.us_per_message
    peak = mb(last.memory.peak_kb) if last.memory else 0.0
    report: dict[str, Any] = {
        "benchmark": HISTORY_NAME if args.history else NAME,
        "history": args.history,
        "date": started,
        "machine": info,
        "seed": args.seed,
        "chunk": args.chunk,
        "plugins": sorted(bundled()),
        "unit": "messages/s",
        "results": [r.as_dict() for r in results],
        "ratio": last.ratio,
        "target_ratio": TARGET_RATIO,
        "pass": last.ratio >= TARGET_RATIO,
        "growth": growth,
        "memory": {
            "source": baseline.source,
            "baseline_rss_mb": round(mb(baseline.rss_kb or baseline.peak_kb), 1),
            "peak_rss_mb": round(peak, 1),
            "target_peak_rss_mb": TARGET_RSS_MB if args.history else None,
        },
        "target_growth": TARGET_GROWTH,
        "history_pass": peak <= TARGET_RSS_MB and growth <= TARGET_GROWTH if args.history else None,
        "profile": prof,
        "loadavg_end": loadavg(),
    }
    text = markdown(report, results)
    common.publish(report, text, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
