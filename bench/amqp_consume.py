#!/usr/bin/env python3
"""Benchmark: messages per second consumed from a local RabbitMQ into the store, against a bare
fedora-messaging consumer that only acknowledges.

Against a private RabbitMQ node it starts itself (the tests' harness, tests/rabbitmq.py:
loopback, free ports, a temporary directory, stopped at the end), in rounds:

1. N real fedora-messaging messages (the corpus's, each an instance of its own schema class,
   with a fresh id) are published with pika to a durable queue bound to ``amq.topic`` ``#``,
   and the first M of them (``--bare-messages``, default N) to a second durable queue bound
   to a topic exchange of its own (``bench-bare``, ``#``: the same topics), all before either
   consumer starts (untimed);
2. ours: the exporter's ``Daemon`` (no HTTP) with one ``fedora-messaging`` source on the first
   queue, over a fresh store: timed from ``start()`` until every message is stored and
   acknowledged (final flush included), then checked: the store counted exactly N, per
   category as published, and the queue is empty;
3. bare: ``fedora_messaging.api.consume`` in a child process (its reactor cannot restart) on the
   second queue with a callback that only counts (fedora-messaging acknowledges when it
   returns) and halts at M: timed inside the child from ``consume()`` to the halt. The bare
   consumer is slow (fedora-messaging's ``get_message`` validates with jsonschema, ~4 ms a
   message here): ``make bench`` drains 20,000 with ours and 2,000 with it, so that the
   rounds take about a minute each.

Both use the same prefetch. Prints messages/s for both per round, the ratio of the medians
ours/bare, and ours against issue 14's target of 2,000 messages/s draining a durable queue of
at least 20,000 messages published beforehand (``make bench`` runs 20,000 a round; all
information only: the exit status is 1 only if a check fails, 2 if RabbitMQ cannot start).
Markdown on stdout, progress on stderr, ``--json PATH`` also writes the figures.

    .venv/bin/python bench/amqp_consume.py [--messages 50000] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import common
import pika
from common import loadavg, log
from fedora_messaging.message import Message, load_message

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the RabbitMQ harness the integration tests use

from rabbitmq import Broker, declare_queue, rabbitmq_broker  # noqa: E402

from statscache_exporter import config as configuration  # noqa: E402
from statscache_exporter.daemon import Daemon  # noqa: E402
from statscache_exporter.message import category_of  # noqa: E402

NAME = "amqp_consume"
TARGET_RATIO = 0.9  # information only: issue 5 asks for the ratio, without a target
TARGET_RATE = 2000.0  # issue 14: messages/s draining >= 20,000 published beforehand (info)
TARGET_MESSAGES = 20_000
OURS_QUEUE = "bench-ours"
BARE_QUEUE = "bench-bare"
BARE_EXCHANGE = "bench-bare"  # a topic exchange: the bare queue gets only what is sent there


def corpus() -> list[dict[str, Any]]:
    """The corpus's fedora-messaging messages (tests/data/fedora_messaging.jsonl)."""
    path = REPO / "tests" / "data" / "fedora_messaging.jsonl"
    return [json.loads(line)["message"] for line in path.open(encoding="utf-8")]


def make_messages(n: int) -> list[Message]:
    """``n`` messages cycling through the corpus, each an instance of its own schema class (as
    its publisher sends it: the ``fedora_messaging_schema`` header names that class, so both
    consumers validate the body against its real schema) with a fresh id and ``sent-at`` now.

    (A plain ``Message(...)`` would name ``base.message``, whose schema accepts any object:
    validating that costs a third of validating the real ones, and no publisher on the bus
    sends it. Runs before 2026-11-23 01:40 UTC did that.)

    Each corpus message is loaded once (``load_message``: ~0.9 ms, 18 s for 20,000 if done
    for each copy) and copied with its own properties: the same headers (hence ``sent-at`` of
    the loading, seconds before the publishing) and a fresh ``message_id``."""
    templates = []
    for m in corpus():
        headers = {k: v for k, v in m["headers"].items() if k != "sent-at"}
        templates.append(load_message({"topic": m["topic"], "body": m["body"], "headers": headers}))
    out = []
    for i in range(n):
        template = templates[i % len(templates)]
        msg = copy.copy(template)
        p = template._properties
        msg._properties = pika.BasicProperties(
            content_type=p.content_type,
            content_encoding=p.content_encoding,
            delivery_mode=p.delivery_mode,
            headers=dict(p.headers),
            message_id=str(uuid.uuid4()),
            priority=p.priority,
        )
        out.append(msg)
    return out


def publish(url: str, messages: list[Message], exchange: str = "amq.topic") -> None:
    """Publish with pika directly, in one channel, without publisher confirms (pika's blocking
    channel waits for each confirm: ~700 messages/s here, 30 s for 20,000); whether every
    message arrived is checked on the queues (:func:`wait_depth`)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for msg in messages:
            channel.basic_publish(
                exchange, msg.topic, json.dumps(msg.body).encode(), msg._properties
            )
    finally:
        connection.close()


def wait_depth(broker: Broker, url: str, queue: str, n: int, timeout: float = 120.0) -> None:
    """Wait until ``queue`` holds ``n`` messages ready (RabbitMQ may still be routing what was
    published); fail if it holds another number by then."""
    deadline = time.monotonic() + timeout
    while True:
        ready, unacked = broker.queue_depth(url, queue)
        if (ready, unacked) == (n, 0):
            return
        if ready > n or time.monotonic() > deadline:
            raise RuntimeError(f"{queue} holds {ready} messages ({unacked} unacked), not {n}")
        time.sleep(0.2)


def declare_exchange(url: str, name: str) -> None:
    """A durable topic exchange ``name``, for the bare consumer's queue alone."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().exchange_declare(name, exchange_type="topic", durable=True)
    finally:
        connection.close()


@dataclass
class Run:
    name: str
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def run_ours(url: str, root: Path, n: int, prefetch: int, expected: Counter[str]) -> Run:
    """The exporter's daemon, in process, until all ``n`` are stored and acknowledged."""
    store = root / f"store-{uuid.uuid4().hex[:8]}.sqlite"
    cfg = configuration.from_dict(
        {
            "store": {"path": str(store)},
            "http": {"enabled": False},
            "backfill": {"enabled": False},
            "sources": [
                {
                    "type": "fedora-messaging",
                    "name": "bench",
                    "amqp_url": url,
                    "queue": OURS_QUEUE,
                    "prefetch": prefetch,
                }
            ],
        }
    )
    daemon = Daemon(cfg)
    stats = daemon.pipeline.stats
    stalled: list[bool] = []

    def watch() -> None:
        """Stop the daemon once every message was handled (the store is the pipeline
        thread's, so the pipeline loop runs in this thread's caller, as in ``run``)."""
        deadline = time.monotonic() + 600
        while sum(stats.processed.values()) + sum(stats.rejected.values()) < n:
            if time.monotonic() > deadline:
                stalled.append(True)
                break
            time.sleep(0.005)
        daemon.stop.set()

    watcher = threading.Thread(target=watch, name="watch")
    t0 = time.perf_counter()
    daemon.start()
    watcher.start()
    daemon.loop()
    daemon.shutdown()  # the final flush and its acknowledgements
    elapsed = time.perf_counter() - t0
    watcher.join()
    if stalled:
        raise RuntimeError(f"ours stalled at {dict(stats.processed)}")
    check_store(store, n, expected, dict(stats.rejected))
    return Run("ours", n, elapsed)


def check_store(store: Path, n: int, expected: Counter[str], rejected: dict[Any, int]) -> None:
    import sqlite3

    db = sqlite3.connect(store)
    try:
        rows = dict(
            db.execute(
                "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
                "WHERE s.metric = 'messages_by_category'"
            )
        )
        total = db.execute(
            "SELECT t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.metric = 'messages'"
        ).fetchone()
    finally:
        db.close()
    got = Counter({json.loads(k)["category"]: int(v) for k, v in rows.items()})
    if rejected or total is None or int(total[0]) != n or got != expected:
        raise RuntimeError(
            f"the store does not hold what was published: total {total}, rejected {rejected}, "
            f"per category {dict(got)} vs {dict(expected)}"
        )


BARE = textwrap.dedent(
    """
    import json, sys, time
    from fedora_messaging import api, config
    from fedora_messaging.exceptions import HaltConsumer
    url, queue, n, prefetch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    config.conf.load_config()
    config.conf["amqp_url"] = url
    config.conf["qos"] = {"prefetch_size": 0, "prefetch_count": prefetch}
    seen = [0]
    def callback(message):
        seen[0] += 1
        if seen[0] >= n:
            raise HaltConsumer(exit_code=0, requeue=False)
    queues = {queue: {"durable": True, "auto_delete": False, "exclusive": False,
                      "arguments": {}}}
    t0 = time.perf_counter()
    try:
        api.consume(callback, bindings=[], queues=queues)
    except HaltConsumer:
        pass
    print(json.dumps({"seconds": time.perf_counter() - t0, "messages": seen[0]}))
    """
)


def run_bare(url: str, n: int, prefetch: int) -> Run:
    """fedora-messaging's own consumer, acknowledging each message as the callback returns."""
    done = subprocess.run(
        [sys.executable, "-c", BARE, url, BARE_QUEUE, str(n), str(prefetch)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode not in (0,) or not lines:
        raise RuntimeError(f"the bare consumer failed ({done.returncode}): {done.stderr[-2000:]}")
    figures = json.loads(lines[-1])
    if figures["messages"] != n:
        raise RuntimeError(f"the bare consumer saw {figures['messages']} messages, not {n}")
    return Run("bare", n, float(figures["seconds"]))


@dataclass
class Round:
    number: int
    bare_first: bool
    ours: Run
    bare: Run


def one_round(broker: Broker, url: str, root: Path, args: argparse.Namespace, number: int) -> Round:
    messages = make_messages(args.messages)
    expected = Counter(category_of(m.topic) or "" for m in messages)
    log(
        f"round {number}: publishing {args.messages:,} messages to {OURS_QUEUE}, "
        f"{args.bare_messages:,} to {BARE_QUEUE}"
    )
    t0 = time.perf_counter()
    publish(url, messages)
    publish(url, messages[: args.bare_messages], BARE_EXCHANGE)
    log(f"  published in {time.perf_counter() - t0:.1f} s")
    for queue, n in ((OURS_QUEUE, args.messages), (BARE_QUEUE, args.bare_messages)):
        wait_depth(broker, url, queue, n)
    log(f"  published and queued in {time.perf_counter() - t0:.1f} s")
    bare_first = number % 2 == 0
    bare = run_bare(url, args.bare_messages, args.prefetch) if bare_first else None
    log(f"  ours: the daemon on {OURS_QUEUE}")
    ours = run_ours(url, root, args.messages, args.prefetch, expected)
    log(f"    {ours.seconds:.2f} s, {ours.rate:,.0f} messages/s")
    if bare is None:
        bare = run_bare(url, args.bare_messages, args.prefetch)
    log(f"  bare: {bare.seconds:.2f} s, {bare.rate:,.0f} messages/s")
    for queue in (OURS_QUEUE, BARE_QUEUE):
        if broker.queue_depth(url, queue) != (0, 0):
            raise RuntimeError(f"{queue} is not empty after the round")
    return Round(number, bare_first, ours, bare)


def markdown(report: dict[str, Any], rounds: list[Round]) -> str:
    m = report["machine"]
    lines = [
        f"### {NAME}: RabbitMQ → store vs a bare fedora-messaging consumer",
        "",
        f"{report['date']} · {m['nproc']} CPU ({m['cpu']}) · {m['python']} · "
        f"fedora-messaging {m['fedora_messaging']} · pika {m['pika']} · "
        f"{report['messages']:,} messages a round (bare: {report['bare_messages']:,}) · "
        f"prefetch {report['prefetch']} · "
        f"{len(rounds)} rounds, the order alternating · load average {m['loadavg']} at start, "
        f"{report['loadavg_end']} at end",
        "",
        "| round | order | ours s | ours messages/s | bare s | bare messages/s | ratio |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.number} | {'bare first' if r.bare_first else 'ours first'} "
            f"| {r.ours.seconds:.2f} | {r.ours.rate:,.0f} | {r.bare.seconds:.2f} "
            f"| {r.bare.rate:,.0f} | {r.ours.rate / r.bare.rate:.3f} |"
        )
    med = report["median_messages_per_second"]
    lines += [
        "",
        f"Medians: ours {med['ours']:,.0f} messages/s, bare {med['bare']:,.0f} messages/s, "
        f"ratio ours/bare **{report['ratio']:.3f}**. Target (issue 14, information only): "
        f"ours ≥ {TARGET_RATE:,.0f} messages/s draining ≥ {TARGET_MESSAGES:,} messages "
        f"published beforehand: **{med['ours']:,.0f}** ({rate_verdict(report)}).",
        "",
        "Ours is the whole path: AMQP → fedora-messaging Message → normalize → dedup by id → "
        "every bundled plugin → per-second buckets at 4 resolutions → one SQLite "
        "transaction per flush → acknowledgements. Bare only acknowledges. Every round checks "
        "that the store counted exactly the published messages, per category, and that both "
        "queues are empty.",
    ]
    return "\n".join(lines) + "\n"


def rate_verdict(report: dict[str, Any]) -> str:
    """PASS/FAIL against the rate target, or why it does not apply to a smaller run."""
    if report["messages"] < TARGET_MESSAGES:
        return f"not judged: {report['messages']:,} messages a round"
    return "PASS" if report["median_messages_per_second"]["ours"] >= TARGET_RATE else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="per round (default 50000)")
    parser.add_argument(
        "--bare-messages",
        type=int,
        help="per round for the bare consumer (default: --messages; at most --messages)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="default 3")
    parser.add_argument("--prefetch", type=int, default=2000, help="both consumers' (2000)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.bare_messages is None:
        args.bare_messages = args.messages
    if min(args.messages, args.bare_messages, args.rounds, args.prefetch) < 1:
        parser.error("--messages, --bare-messages, --rounds and --prefetch must be at least 1")
    if args.bare_messages > args.messages:
        parser.error("--bare-messages must be at most --messages")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = common.machine(fedora_messaging=version("fedora-messaging"), pika=version("pika"))
    with tempfile.TemporaryDirectory(prefix="bench-amqp-") as tmp:
        root = Path(tmp)
        try:
            broker_cm = rabbitmq_broker(root / "rabbitmq")
            broker = broker_cm.__enter__()
        except BaseException as exc:  # the harness skips or fails when RabbitMQ is missing
            log(f"cannot start RabbitMQ: {exc}")
            return 2
        try:
            url = broker.new_vhost("bench")
            declare_exchange(url, BARE_EXCHANGE)
            declare_queue(url, OURS_QUEUE)
            declare_queue(url, BARE_QUEUE, exchange=BARE_EXCHANGE)
            rounds = [one_round(broker, url, root, args, i + 1) for i in range(args.rounds)]
        finally:
            broker_cm.__exit__(None, None, None)
    ours = statistics.median(r.ours.rate for r in rounds)
    bare = statistics.median(r.bare.rate for r in rounds)
    report: dict[str, Any] = {
        "benchmark": NAME,
        "date": started,
        "machine": info,
        "messages": args.messages,
        "bare_messages": args.bare_messages,
        "prefetch": args.prefetch,
        "unit": "messages/s",
        "results": [
            {
                "round": r.number,
                "ours_seconds": r.ours.seconds,
                "bare_seconds": r.bare.seconds,
                "ratio": r.ours.rate / r.bare.rate,
            }
            for r in rounds
        ],
        "median_messages_per_second": {"ours": ours, "bare": bare},
        "ratio": ours / bare,
        "target_ratio": TARGET_RATIO,
        "pass": ours / bare >= TARGET_RATIO,
        "target_messages_per_second": TARGET_RATE,
        "target_messages": TARGET_MESSAGES,
        "rate_pass": ours >= TARGET_RATE if args.messages >= TARGET_MESSAGES else None,
        "loadavg_end": loadavg(),
    }
    text = markdown(report, rounds)
    common.publish(report, text, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
