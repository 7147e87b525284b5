"""Chaos: a live stream through a real RabbitMQ into `statscache-exporter run` (its
fedora-messaging source, InfluxDB on), while the exporter is SIGKILLed and restarted at
seeded random points, InfluxDB is stopped and started again, and RabbitMQ is SIGKILLed and
started again (in the long run, also stopped cleanly once). At the end
the store, ``/metrics`` and InfluxDB hold exactly the ground truth counted by hand from the
published messages (tests/chaos.py), and the store and InfluxDB are identical, bucket for
bucket and point for point, to an uninterrupted replay of the same messages.

The default run (in `make test`, about a minute): 1,500 messages at 40 a second, 10 kills,
one restart of each server. ``STATSCACHE_CHAOS_LONG=1``: 20,000 messages at 100 a second,
40 kills, two restarts of each server. ``STATSCACHE_CHAOS_SEED`` picks another schedule (the
faults' times are seeded; where they fall in the exporter's work depends on timing too).
Messages: the scaled corpus (bench/corpus.py), fedora-messaging ones only.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chaos import (
    Event,
    Publisher,
    Truth,
    from_samples,
    influx_counts,
    influx_per_second,
    outbox_rows,
    schedule,
    store_counts,
    store_rows,
    truth_of,
)
from conftest import REPO
from rabbitmq import Broker, declare_queue, rabbitmq_broker
from servers import (
    Exporter,
    InfluxDB,
    exporter_process,
    influxdb_server,
    total,
    wait_until,
    write_jsonl,
)

sys.path.insert(0, str(REPO / "bench"))
import corpus

pytestmark = pytest.mark.integration

QUEUE = "chaos"
TAGS = {"instance": "chaos"}


@dataclass(frozen=True)
class Plan:
    messages: int
    rate: float  # published a second
    kills: int
    influx_restarts: int
    rabbit_restarts: int


SHORT = Plan(messages=1500, rate=40, kills=10, influx_restarts=1, rabbit_restarts=1)
LONG = Plan(messages=20_000, rate=100, kills=40, influx_restarts=2, rabbit_restarts=2)
PLAN = LONG if os.environ.get("STATSCACHE_CHAOS_LONG") == "1" else SHORT
SEED = int(os.environ.get("STATSCACHE_CHAOS_SEED", "20240601"))


def influx_settings(server: InfluxDB, db: str, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "url": server.url,
        "database": db,
        "create_database": True,
        "tags": TAGS,
        "batch_size": 500,  # more batches: more kills between a write and its acknowledgement
        "retry_initial": "200ms",
        "retry_max": "1s",
        **extra,
    }


def exporter_settings(amqp_url: str, influx: InfluxDB) -> dict[str, Any]:
    return {
        "store": {"flush_interval": "250ms"},
        "sources": [
            {
                "type": "fedora-messaging",
                "name": "bus",
                "amqp_url": amqp_url,
                "queue": QUEUE,
                "reconnect": {"initial": "100ms", "max": "1s"},
            }
        ],
        "influxdb": influx_settings(influx, "x", shutdown_timeout="5s"),
    }


def run_faults(
    events: list[Event], exporter: Exporter, influx: InfluxDB, broker: Broker, t0: float
) -> list[str]:
    """Each fault at its time (or as soon as the one before is done); what was done, when."""
    done: list[str] = []
    for event in events:
        wait = t0 + event.at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        began = time.monotonic() - t0
        if event.action == "kill":
            exporter.kill()
            exporter.start()  # answers /healthz
        elif event.action == "influx_stop":
            influx.stop()
        elif event.action == "influx_start":
            influx.start()
        elif event.action == "rabbit_kill":
            broker.kill()
        elif event.action == "rabbit_stop":
            broker.stop()
        elif event.action == "rabbit_start":
            broker.start()
        else:
            raise AssertionError(f"unknown fault {event.action!r}")
        done.append(f"{event.action} at {began:.1f} s (planned {event.at:.1f})")
    return done


def settled(exporter: Exporter, broker: Broker, url: str, n: int) -> tuple[Any, ...]:
    """(queue ready, queue unacknowledged, messages counted, outbox rows, pending points)."""
    s = exporter.samples()
    ready, unacked = broker.queue_depth(url, QUEUE)
    return (
        ready,
        unacked,
        s.get(("statscache_messages_total", ()), 0.0),
        outbox_rows(exporter.store),
        s.get(("statscache_exporter_influxdb_pending_points", ()), -1.0),
    )


def replay_reference(tmp_path: Path, messages: list[dict[str, Any]], influx: InfluxDB) -> Path:
    """`statscache-exporter replay` of the messages, uninterrupted, into a store of its own and
    InfluxDB database ``ref``: the store's path."""
    home = tmp_path / "reference"
    home.mkdir()
    infile = write_jsonl(home / "messages.jsonl", messages)
    config = home / "config.yaml"
    store = home / "store.sqlite"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "store": {"path": str(store), "flush_interval": "250ms"},
                "influxdb": influx_settings(influx, "ref", shutdown_timeout="60s"),
                "backfill": {"enabled": False},
            }
        )
    )
    command = [sys.executable, "-m", "statscache_exporter", "replay", "--config", str(config)]
    done = subprocess.run(
        [*command, "--json", str(infile)], cwd=home, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    summary = json.loads(done.stdout)
    assert summary["processed"] == len(messages), summary
    assert summary["influxdb"]["pending"] == 0, summary
    return store


def check_counts(where: str, got: dict[str, Any], truth: Truth, faults: list[str]) -> None:
    for metric, expected in truth.counts.items():
        assert got[metric] == expected, (
            f"{where}: {metric} differs from the ground truth: "
            f"missing or short {dict((expected - got[metric]).most_common(5))}, "
            f"extra {dict((got[metric] - expected).most_common(5))}; faults: {faults}"
        )


def test_sigkills_and_server_restarts_lose_and_double_count_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    now = int(time.time())
    messages = corpus.generate(
        PLAN.messages,
        seed=SEED,
        start=now - 900,  # the messages' own times: the last quarter hour
        rate=PLAN.messages / 600,
        users=300,
        packages=600,
        kinds=["fedora-messaging"],
    )
    truth = truth_of(messages)
    assert truth.total == PLAN.messages
    window = PLAN.messages / PLAN.rate
    events = schedule(rng, window, PLAN.kills, PLAN.influx_restarts, PLAN.rabbit_restarts)

    with rabbitmq_broker(tmp_path / "rabbitmq") as broker, influxdb_server(tmp_path) as influx:
        url = broker.new_vhost("chaos")
        declare_queue(url, QUEUE)  # durable, bound to amq.topic #: keeps what comes meanwhile
        settings = exporter_settings(url, influx)
        with exporter_process(tmp_path, [], settings=settings) as exporter:
            wait_until(
                exporter.samples,
                lambda s: total(s, "statscache_exporter_source_connected") == 1,
                "the source to connect",
            )
            publisher = Publisher(url, messages, PLAN.rate)
            t0 = time.monotonic()
            publisher.start()
            try:
                faults = run_faults(events, exporter, influx, broker, t0)
                publisher.join(timeout=window + 120)
            finally:
                publisher.stop.set()
            assert publisher.error is None, f"the publisher failed: {publisher.error!r}"
            assert publisher.confirmed == PLAN.messages
            assert exporter.runs == PLAN.kills + 1
            state = wait_until(
                lambda: settled(exporter, broker, url, PLAN.messages),
                lambda s: s == (0, 0, PLAN.messages, 0, 0),
                f"every message counted and acknowledged, the outbox sent (faults: {faults})",
                timeout=max(180, PLAN.messages / 40),  # a backlog clears at ~150/s or more
                interval=1.0,
            )
            assert state == (0, 0, PLAN.messages, 0, 0)
            samples = exporter.samples()
        # exporter_process stopped it with SIGTERM: it exited 0

        # /metrics: exactly the ground truth
        check_counts("/metrics", from_samples(samples), truth, faults)
        # the store: its totals are the truth; its per-second buckets of `messages` too
        totals, buckets = store_rows(exporter.store)
        check_counts("the store", store_counts(totals), truth, faults)
        per_second = {
            start: v for (m, _, res, start), v in buckets.items() if m == "messages" and res == 1
        }
        assert per_second == dict(truth.per_second), f"per-second buckets differ; faults: {faults}"
        # InfluxDB: each measurement's sums per tag, and the points of statscache_messages
        check_counts("InfluxDB", influx_counts(influx, "x"), truth, faults)
        lo, hi = min(truth.per_second), max(truth.per_second) + 1
        assert influx_per_second(influx, "x", lo, hi) == truth.per_second, faults

        # and identical to an uninterrupted replay of the same messages, bucket for bucket (every
        # resolution) and point for point
        reference = replay_reference(tmp_path, messages, influx)
        ref_totals, ref_buckets = store_rows(reference)
        assert totals == ref_totals
        assert buckets == ref_buckets
        assert influx.dump("x") == influx.dump("ref")
    print(f"chaos seed {SEED}: {len(faults)} faults, {publisher.retries} publishes retried")
    for line in faults:
        print("  " + line)
