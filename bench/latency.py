#!/usr/bin/env python3
"""Benchmark: end-to-end latency, from a message published on RabbitMQ to it being counted in
``/metrics``, at 10, 100 and 1,000 messages a second.

Against a private RabbitMQ node (the tests' harness, tests/rabbitmq.py: loopback, free ports,
a temporary directory) and `statscache-exporter run` as a process (the tests' harness,
tests/servers.py) with one ``fedora-messaging`` source on a durable queue bound to
``amq.topic`` ``#``, every bundled plugin, and the default flush interval (1 s; ``--flush``).

For each rate R, a publisher process publishes R x ``--seconds`` fedora-messaging messages of
the scaled corpus (``bench/corpus.py``, each with its headers, a fresh id and ``sent-at`` set
as it is sent; 100 users and 200 packages in all, so that ``/metrics`` stays small and cheap to
poll) with pika, each at its scheduled time ``start + k / R``, and records
``time.monotonic()`` just before each ``basic_publish``. Meanwhile this process polls
``/metrics`` every ``--poll`` seconds (10 ms by default: tighter polling would take CPU from the
exporter on a small machine) and reads ``statscache_messages_total``, which moves only when a
flush has committed: the k-th message of the run is visible at the first answer (its arrival
time) showing at least ``before + k``. One queue, one consumer and one pipeline thread keep the
messages in order, so the count reaching ``before + k`` means the k-th is stored (if they were
reordered this would overstate, never understate, a latency).

**latency** = visible - published, per message: p50, p99 and max, against the target p99 ≤
flush interval + 250 ms (information only). Also shown: the rate the publisher achieved and
the rate the exporter counted at (messages / time from the first publish to the last visible).
A warm-up of 200 messages (schema classes imported, first flushes) is published and awaited
before the measured runs. Markdown on stdout, progress on stderr, ``--json PATH`` also writes
the figures. Exit status 0; 1 if some message never became visible; 2 if RabbitMQ cannot start.

    .venv/bin/python bench/latency.py [--rates 10 100 1000] [--seconds 20 10 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from common import http_get, loadavg, log, sample_values
from corpus import DEFAULT_SEED, Generator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the integration tests' RabbitMQ and exporter harnesses

from rabbitmq import declare_queue, rabbitmq_broker  # noqa: E402
from servers import Exporter, exporter_process  # noqa: E402

NAME = "latency"
QUEUE = "bench-latency"
MARGIN_S = 0.25  # the target: p99 <= flush interval + 250 ms
WARMUP = 200
TOTAL = "statscache_messages_total"

#: The publisher, run as a child process: messages from a file, each at its time.
PUBLISHER = """
import datetime as dt, json, sys, time
import pika
url, path, rate, start = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
messages = json.loads(open(path).read())
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
times = []
for k, m in enumerate(messages):
    due = start + k / rate
    wait = due - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    headers = dict(m["headers"])
    headers["sent-at"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    props = pika.BasicProperties(content_type="application/json", content_encoding="utf-8",
                                 delivery_mode=2, headers=headers, message_id=m["id"])
    body = json.dumps(m["body"]).encode()
    times.append(time.monotonic())
    channel.basic_publish("amq.topic", m["topic"], body, props)
connection.close()
print(json.dumps(times))
"""


@dataclass
class RateResult:
    rate: float
    seconds: float
    published: list[float]
    visible: list[float | None]
    polls: int

    @property
    def latencies(self) -> list[float]:
        return sorted(v - p for p, v in zip(self.published, self.visible, strict=True) if v)

    @property
    def missing(self) -> int:
        return sum(1 for v in self.visible if v is None)

    def percentile(self, q: float) -> float:
        """Nearest rank: the smallest latency at or above a share ``q`` of them."""
        values = self.latencies
        return values[max(0, math.ceil(q * len(values)) - 1)]

    @property
    def published_rate(self) -> float:
        span = self.published[-1] - self.published[0]
        return (len(self.published) - 1) / span if span > 0 else float("nan")

    @property
    def counted_rate(self) -> float:
        last = max(v for v in self.visible if v is not None)
        return len(self.published) / (last - self.published[0])

    def as_dict(self, target_s: float) -> dict[str, Any]:
        p99 = self.percentile(0.99)
        return {
            "rate": self.rate,
            "seconds": self.seconds,
            "messages": len(self.published),
            "missing": self.missing,
            "p50_ms": round(self.percentile(0.5) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(self.latencies[-1] * 1000, 1),
            "published_rate": round(self.published_rate, 1),
            "counted_rate": round(self.counted_rate, 1),
            "polls": self.polls,
            "target_ms": round(target_s * 1000, 1),
            "pass": p99 <= target_s and not self.missing,
        }


def total(url: str) -> float:
    return sample_values(http_get(url + "/metrics", timeout=10).decode(), TOTAL).get("", 0.0)


def run_rate(
    exporter: Exporter,
    amqp_url: str,
    root: Path,
    gen: Any,
    rate: float,
    seconds: float,
    poll: float,
) -> RateResult:
    """Publish ``rate`` x ``seconds`` messages on schedule and watch them become visible."""
    n = max(1, round(rate * seconds))
    path = root / f"messages-{rate:g}.json"
    path.write_text(json.dumps([next(gen) for _ in range(n)]))
    before = total(exporter.url)
    start = time.monotonic() + 1.0  # the publisher connects meanwhile
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, amqp_url, str(path), str(rate), str(start)],
        stdout=subprocess.PIPE,
    )
    visible: list[float | None] = [None] * n
    seen, polls = 0, 0
    deadline = start + seconds + 120  # a backlog may take a while to clear
    while seen < n and time.monotonic() < deadline:
        count = int(total(exporter.url) - before)
        now = time.monotonic()
        polls += 1
        for k in range(seen, min(count, n)):
            visible[k] = now
        seen = max(seen, min(count, n))
        time.sleep(poll)
    out, _ = publisher.communicate(timeout=60)
    if publisher.returncode != 0:
        raise RuntimeError(f"the publisher exited {publisher.returncode}")
    published = [float(t) for t in json.loads(out)]
    return RateResult(rate, seconds, published, visible, polls)


def wait_connected(exporter: Exporter) -> None:
    deadline = time.monotonic() + 60
    name = "statscache_exporter_source_connected"
    while time.monotonic() < deadline:
        text = http_get(exporter.url + "/metrics").decode()
        if sum(sample_values(text, name).values()) == 1:
            return
        time.sleep(0.2)
    raise RuntimeError("the exporter's fedora-messaging source did not connect")


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"### {NAME}: published on RabbitMQ → visible in /metrics",
        "",
        f"{report['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['python']} · flush interval "
        f"{report['flush_interval_s']:g} s · /metrics polled every {report['poll_s'] * 1000:g} "
        f"ms · load average {m['loadavg']} at start, {report['loadavg_end']} at end",
        "",
        "| rate (messages/s) | messages | published at /s | counted at /s | p50 ms | p99 ms "
        "| max ms | target p99 ms | result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        verdict = "PASS" if r["pass"] else "FAIL"
        if r["missing"]:
            verdict += f" ({r['missing']} never visible)"
        lines.append(
            f"| {r['rate']:g} | {r['messages']:,} | {r['published_rate']:,.1f} "
            f"| {r['counted_rate']:,.1f} | {r['p50_ms']:,.0f} | {r['p99_ms']:,.0f} "
            f"| {r['max_ms']:,.0f} | {r['target_ms']:,.0f} | {verdict} |"
        )
    lines += [
        "",
        "Latency = the first /metrics answer whose `statscache_messages_total` counts the "
        "message - the moment it was handed to pika (both `time.monotonic()`). The exporter "
        "acknowledges and shows a message only after the flush that stored it, so the latency "
        "is at least the wait for the next flush (up to one flush interval).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 100, 1000])
    parser.add_argument(
        "--seconds", type=float, nargs="+", default=[20, 10, 5], help="per rate (20 10 5)"
    )
    parser.add_argument("--flush", type=float, default=1.0, help="flush interval, s (1)")
    parser.add_argument("--poll", type=float, default=0.01, help="poll /metrics every (0.01 s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if len(args.seconds) == 1:
        args.seconds *= len(args.rates)
    if len(args.seconds) != len(args.rates):
        parser.error("--seconds: one duration, or one per rate")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = common.machine()
    # few users and packages: /metrics stays small (~40 kB), so that polling it costs the
    # exporter little; cardinality is memory.py's subject, not this one's
    gen = Generator(args.seed, users=100, packages=200, kinds=["fedora-messaging"]).messages()
    results: list[RateResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        root = Path(tmp)
        try:
            broker_cm = rabbitmq_broker(root / "rabbitmq")
            broker = broker_cm.__enter__()
        except BaseException as exc:  # the harness skips or fails when RabbitMQ is missing
            log(f"cannot start RabbitMQ: {exc}")
            return 2
        try:
            url = broker.new_vhost("bench")
            declare_queue(url, QUEUE)
            settings = {
                "store": {"flush_interval": f"{int(args.flush * 1000)}ms"},
                "sources": [
                    {"type": "fedora-messaging", "name": "bus", "amqp_url": url, "queue": QUEUE}
                ],
                "logging": {"level": "WARNING"},
            }
            with exporter_process(root, [], settings=settings) as exporter:
                wait_connected(exporter)
                log(f"warm-up: {WARMUP} messages")
                run_rate(exporter, url, root, gen, WARMUP, 1, args.poll)
                for rate, seconds in zip(args.rates, args.seconds, strict=True):
                    log(f"{rate:g} messages/s for {seconds:g} s")
                    r = run_rate(exporter, url, root, gen, rate, seconds, args.poll)
                    p50, p99 = r.percentile(0.5), r.percentile(0.99)
                    log(f"  p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
                    results.append(r)
        finally:
            broker_cm.__exit__(None, None, None)
    target = args.flush + MARGIN_S
    report: dict[str, Any] = {
        "benchmark": NAME,
        "date": started,
        "machine": info,
        "flush_interval_s": args.flush,
        "poll_s": args.poll,
        "seed": args.seed,
        "unit": "ms",
        "target_p99_ms": target * 1000,
        "results": [r.as_dict(target) for r in results],
        "loadavg_end": loadavg(),
    }
    text = markdown(report)
    common.publish(report, text, args.json)
    return 1 if any(r.missing for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
