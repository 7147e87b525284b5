#!/usr/bin/env python3
"""Benchmark: peak resident memory of the exporter process holding 10k and 100k live series.

For each size S, `statscache-exporter run` as a process (the real daemon: pipeline thread,
flush timer, HTTP server) over a fresh store, its one source a replay of a JSON Lines file of
the scaled corpus (``bench/corpus.py``) made so that the messages carry about S distinct label
values in all (users and packages drawn in turn from populations of S names each, so every
message brings new ones until the count is reached; categories, topics and agents as the
corpus has them). ``prometheus.max_series`` is raised above S so that no series goes to the
overflow series. Once the replay is over and flushed (the exporter's own counts say so), the
exposition is scraped as Prometheus would (text, then OpenMetrics with gzip, three times
each), then ``/proc/PID/status`` is read:

- **peak RSS** = ``VmHWM``, the most resident memory the process ever had: the replay, the
  flushes, the first render of every series and the scrapes included;
- **RSS at end** = ``VmRSS`` after the scrapes;
- **live series** = the sum of the exporter's ``statscache_exporter_series`` (series in
  ``/metrics``), as it reports them.

A baseline run with an empty replay file gives the process's own footprint (interpreter,
imports, threads). Target: peak RSS ≤ 200 MB at 100k series (printed as information).
Markdown on stdout, progress on stderr, ``--json PATH`` also writes the figures.

    .venv/bin/python bench/memory.py [--series 10000 100000] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from common import free_port, http_get, loadavg, log, proc_status, sample_values
from corpus import DEFAULT_SEED, PACKAGE_FLAG, USER_FLAG, Generator, write_jsonl

from statscache_exporter.message import category_of

NAME = "memory"
TARGET_MB = 200.0
TARGET_SERIES = 100_000
PREFIX = "statscache_"
#: what a scrape asks for: (Accept, Accept-Encoding)
SCRAPES = [
    ("text/plain;version=0.0.4", ""),
    ("application/openmetrics-text;version=1.0.0", "gzip"),
]


def label_values(m: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The (metric, label value) pairs a message brings to the bundled volume plugins, as far
    as the message says (agents of fedora-messaging messages come from their schema class and
    are not counted here: this only decides how many messages to write)."""
    yield "messages", ""
    topic = str(m["topic"])
    yield "topic", topic
    yield "category", category_of(topic) or ""
    for user in m.get("users") or ():
        yield "user", user
    for pkg in m.get("packages") or ():
        yield "package", pkg
    if m.get("agent_name"):
        yield "agent", m["agent_name"]
    for key in m.get("headers") or {}:
        if key.startswith(USER_FLAG):
            yield "user", key[len(USER_FLAG) :]
        elif key.startswith(PACKAGE_FLAG):
            yield "package", key[len(PACKAGE_FLAG) :]


def make_input(path: Path, series: int, seed: int) -> int:
    """Write messages until they carry ``series`` distinct label values; how many."""
    gen = Generator(seed, users=series, packages=series, skew=0)
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, Any]] = []
    for m in gen.messages():
        seen.update(label_values(m))
        out.append(m)
        if len(seen) >= series:
            break
    return write_jsonl(path, out)


@dataclass
class Measured:
    series_target: int
    messages: int
    live_series: int
    peak_kb: int
    end_kb: int
    seconds: float
    body_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "series_target": self.series_target,
            "messages": self.messages,
            "live_series": self.live_series,
            "peak_rss_mb": round(self.peak_kb / 1024, 1),
            "end_rss_mb": round(self.end_kb / 1024, 1),
            "replay_seconds": round(self.seconds, 1),
            "metrics_bytes": self.body_bytes,
        }


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait(self, ready: Callable[[], bool], timeout: float) -> None:
        """Call ``ready`` until it returns true (errors count as not yet); the exporter must
        not exit meanwhile."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the exporter exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if ready():
                    return
            except Exception as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the exporter was not ready in {timeout:.0f} s: {last}")
            time.sleep(0.5)


@contextlib.contextmanager
def exporter(root: Path, replay: Path, max_series: int) -> Iterator[Running]:
    """`statscache-exporter run` replaying ``replay``, answering /healthz when yielded; SIGTERM
    at the end."""
    port = free_port()
    home = root / f"exporter-{port}"
    home.mkdir()
    config = home / "config.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "store": {"path": str(home / "store.sqlite")},
                "sources": [{"type": "replay", "name": "file", "paths": [str(replay)]}],
                "http": {"enabled": True, "address": "127.0.0.1", "port": port},
                "prometheus": {"max_series": max_series},
                "backfill": {"enabled": False},
                "logging": {"level": "WARNING"},
            }
        )
    )
    log_path = home / "exporter.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "statscache_exporter", "run", "--config", str(config)],
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Running(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        running.wait(lambda: http_get(running.url + "/healthz", timeout=2) is not None, 60)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def replay_done(url: str, n: int) -> bool:
    """Every message received, each processed, and all of them in the flushed totals."""
    text = http_get(url + "/metrics", timeout=60).decode()
    received = sum(sample_values(text, f"{PREFIX}exporter_messages_received_total").values())
    processed = sum(sample_values(text, f"{PREFIX}exporter_messages_processed_total").values())
    reading = sum(sample_values(text, f"{PREFIX}exporter_source_connected").values())
    stored = sum(sample_values(text, f"{PREFIX}messages_total").values())
    return received == processed == stored == n and reading == 0


def measure(root: Path, series: int, seed: int) -> Measured:
    replay = root / f"replay-{series}.jsonl"
    n = make_input(replay, series, seed) if series else write_jsonl(replay, [])
    log(f"{series:,} series: {n:,} messages written to {replay.name}; replaying")
    t0 = time.monotonic()
    with exporter(root, replay, max(10 * series, 10_000)) as running:
        url = running.url
        running.wait(lambda: replay_done(url, n), 1800)
        seconds = time.monotonic() - t0
        body = b""
        for _ in range(3):
            for accept, encoding in SCRAPES:
                headers = {"Accept": accept, **({"Accept-Encoding": encoding} if encoding else {})}
                body = http_get(url + "/metrics", headers, timeout=60)
        text = http_get(url + "/metrics", timeout=60).decode()
        live = int(sum(sample_values(text, f"{PREFIX}exporter_series").values()))
        status = proc_status(running.proc.pid)
    log(f"  peak {status['VmHWM'] / 1024:.1f} MB, {live:,} live series, {seconds:.0f} s")
    return Measured(series, n, live, status["VmHWM"], status["VmRSS"], seconds, len(body))


def markdown(report: dict[str, Any], results: list[Measured], baseline: Measured) -> str:
    m = report["machine"]
    lines = [
        f"### {NAME}: peak RSS of the exporter process by live series",
        "",
        f"{report['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['ram_mb']:,} MiB RAM · "
        f"{m['python']} · seed {report['seed']} · load average {m['loadavg']} at start, "
        f"{report['loadavg_end']} at end",
        "",
        "| live series | messages replayed | peak RSS MB (VmHWM) | RSS at end MB "
        "| above the baseline MB | replay s |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| 0 (baseline: empty replay) | 0 | {baseline.peak_kb / 1024:.1f} "
        f"| {baseline.end_kb / 1024:.1f} | - | - |",
    ]
    for r in results:
        lines.append(
            f"| {r.live_series:,} | {r.messages:,} | {r.peak_kb / 1024:.1f} "
            f"| {r.end_kb / 1024:.1f} | {(r.peak_kb - baseline.peak_kb) / 1024:.1f} "
            f"| {r.seconds:.0f} |"
        )
    t = report["target"]
    if len(results) > 1:
        a, b = results[0], results[-1]
        per = (b.peak_kb - a.peak_kb) / (b.live_series - a.live_series) * 1024
        lines += [
            "",
            f"From {a.live_series:,} to {b.live_series:,} series the peak grows by "
            f"{(b.peak_kb - a.peak_kb) / 1024:.1f} MB: {per:,.0f} bytes a series.",
        ]
    lines += [
        "",
        f"Target: peak RSS ≤ {TARGET_MB:g} MB at {t['series']:,} series: "
        f"**{t['peak_rss_mb']:.1f} MB** ({'PASS' if t['pass'] else 'FAIL'}).",
        "",
        "`statscache-exporter run` replaying the scaled corpus (users and packages drawn from "
        "populations as large as the target, so that each message brings new label values), "
        "`prometheus.max_series` raised so that nothing overflows; then scraped 3 times as text "
        "and 3 times as gzipped OpenMetrics. Peak RSS is the process's VmHWM (the replay, the "
        "flushes and the scrapes included); live series are the exporter's own "
        "`statscache_exporter_series`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--series", type=int, nargs="+", default=[10_000, TARGET_SERIES], help="10000 100000"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.series) < 1:
        parser.error("--series must be at least 1")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = common.machine()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        baseline = measure(root, 0, args.seed)
        results = [measure(root, s, args.seed) for s in sorted(args.series)]
    chosen = next((r for r in results if r.series_target == TARGET_SERIES), results[-1])
    report: dict[str, Any] = {
        "benchmark": NAME,
        "date": started,
        "machine": info,
        "seed": args.seed,
        "unit": "MB",
        "baseline": baseline.as_dict(),
        "results": [r.as_dict() for r in results],
        "target": {
            "series": chosen.live_series,
            "peak_rss_mb": round(chosen.peak_kb / 1024, 1),
            "target_mb": TARGET_MB,
            "pass": chosen.peak_kb / 1024 <= TARGET_MB,
        },
        "loadavg_end": loadavg(),
    }
    text = markdown(report, results, baseline)
    common.publish(report, text, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
