"""Helpers of the chaos test (test_chaos.py): the ground truth counted from the published
messages, a publisher that keeps publishing through a broker restart, a seeded schedule of
faults, and readers of what the store and InfluxDB hold.

The ground truth never goes through the exporter's code: categories by the README's rule
written here, users and packages from the header flags each message carries, agents from the
message's fedora-messaging schema class (fedora-messaging's own code), seconds from
``sent-at``.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pika
from servers import InfluxDB

#: config.yaml's messages.environments
ENVIRONMENTS = {"dev", "local", "prod", "stage", "stg", "test"}
USER_FLAG = "fedora_messaging_user_"
PACKAGE_FLAG = "fedora_messaging_rpm_"
PREFIX = "statscache_"

#: (metric, label name) of each bundled volume plugin's counter: the label the truth counts by
METRICS = {
    "messages": None,
    "messages_by_category": "category",
    "messages_by_topic": "topic",
    "messages_by_user": "user",
    "messages_by_package": "package",
    "messages_by_agent": "agent",
}


def category(topic: str) -> str:
    """The README's rule: ``topic.split('.')[3]`` after a ``<prefix>.<env>.``, else the first
    part."""
    parts = topic.split(".")
    return parts[3] if len(parts) > 3 and parts[2] in ENVIRONMENTS else parts[0]


def agent(message: dict[str, Any]) -> str | None:
    """The agent fedora-messaging's schema class names for the message (None: none, or its
    property raised)."""
    from fedora_messaging.message import load_message

    try:
        name = load_message(message).agent_name
    except Exception:
        return None
    return name if isinstance(name, str) and name else None


@dataclass
class Truth:
    """What the published messages hold, counted by hand: per metric, label value → count, and
    messages per second (``sent-at``)."""

    counts: dict[str, Counter[str]]
    per_second: Counter[int]

    @property
    def total(self) -> int:
        return self.counts["messages"][""]


def truth_of(messages: list[dict[str, Any]]) -> Truth:
    """The ground truth of fedora-messaging messages (JSON forms), each id counted once."""
    counts: dict[str, Counter[str]] = {m: Counter() for m in METRICS}
    per_second: Counter[int] = Counter()
    seen: set[str] = set()
    for m in messages:
        if m["id"] in seen:
            continue
        seen.add(m["id"])
        headers = m["headers"]
        counts["messages"][""] += 1
        counts["messages_by_category"][category(m["topic"])] += 1
        counts["messages_by_topic"][m["topic"]] += 1
        for key in headers:
            if key.startswith(USER_FLAG):
                counts["messages_by_user"][key[len(USER_FLAG) :]] += 1
            elif key.startswith(PACKAGE_FLAG):
                counts["messages_by_package"][key[len(PACKAGE_FLAG) :]] += 1
        who = agent(m)
        if who:
            counts["messages_by_agent"][who] += 1
        per_second[int(datetime.fromisoformat(headers["sent-at"]).timestamp())] += 1
    return Truth(counts, per_second)


def from_samples(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[str, Counter[str]]:
    """The bundled counters of a parsed /metrics, as the truth counts them."""
    out: dict[str, Counter[str]] = {m: Counter() for m in METRICS}
    for (name, labels), value in samples.items():
        metric = name.removeprefix(PREFIX).removesuffix("_total")
        if not name.endswith("_total") or metric not in METRICS:
            continue
        label = METRICS[metric]
        out[metric][dict(labels).get(label, "") if label else ""] = int(value)
    return out


# --- publishing through a broker restart ---------------------------------------------------


class Publisher(threading.Thread):
    """Publishes fedora-messaging messages (JSON forms) with pika to ``amq.topic``, ``rate`` a
    second, each confirmed by the broker; a publish that fails (the broker is stopping or
    away) is retried on a new connection until it is confirmed, so a message may reach the
    queue twice (the exporter must count it once) but none is lost."""

    def __init__(self, url: str, messages: list[dict[str, Any]], rate: float) -> None:
        super().__init__(name="chaos-publisher", daemon=True)
        self.url = url
        self.messages = messages
        self.rate = rate
        self.stop = threading.Event()
        self.confirmed = 0
        self.retries = 0
        self.error: BaseException | None = None
        self._connection: Any = None
        self._channel: Any = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for k, m in enumerate(self.messages):
                wait = start + k / self.rate - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                self._publish(m)
                self.confirmed += 1
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self._close()

    def _publish(self, m: dict[str, Any]) -> None:
        properties = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            headers=m["headers"],
            message_id=m["id"],
        )
        body = json.dumps(m["body"]).encode("utf-8")
        while not self.stop.is_set():
            try:
                if self._channel is None:
                    self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
                    self._channel = self._connection.channel()
                    self._channel.confirm_delivery()
                self._channel.basic_publish("amq.topic", m["topic"], body, properties)
                return
            except Exception:  # the broker went away: a new connection, the same message
                self.retries += 1
                self._close()
                time.sleep(0.2)
        raise RuntimeError("stopped before every message was confirmed")

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = self._channel = None


# --- the faults ----------------------------------------------------------------------------------


@dataclass(order=True)
class Event:
    at: float  # seconds from the start of publishing
    action: str = field(compare=False)  # kill, {influx,rabbit}_{stop,start}, rabbit_kill


def schedule(
    rng: random.Random, window: float, kills: int, influx: int, rabbit: int
) -> list[Event]:
    """Seeded fault times over ``window`` seconds: ``kills`` SIGKILLs of the exporter (each
    followed by a restart), ``influx`` stops of InfluxDB and ``rabbit`` of RabbitMQ (SIGKILL,
    then a clean stop, in turn), each started again 2-5 s later (the exporter may be killed
    and restarted meanwhile)."""
    events = [Event(rng.uniform(0.5, window), "kill") for _ in range(kills)]
    for name, times in (("influx", influx), ("rabbit", rabbit)):
        for i in range(times):
            at = rng.uniform(0.15 * window, 0.75 * window)
            # RabbitMQ: SIGKILLed first (what it confirmed is on disk), then stopped cleanly
            stop = "rabbit_kill" if name == "rabbit" and i % 2 == 0 else f"{name}_stop"
            events += [Event(at, stop), Event(at + rng.uniform(2, 5), f"{name}_start")]
    return sorted(events)


# --- what was stored -------------------------------------------------------------------------


def store_rows(
    path: Path,
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, int, int], int]]:
    """The store's counter totals, (metric, labels JSON) → value, and its buckets, (metric,
    labels JSON, resolution, start) → value, read with SQLite."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        totals = {
            (metric, labels): int(value)
            for metric, labels, value in db.execute(
                "SELECT s.metric, s.labels, t.value FROM totals t JOIN series s ON s.id = t.series"
            )
        }
        buckets = {
            (metric, labels, resolution, start): int(value)
            for metric, labels, resolution, start, value in db.execute(
                "SELECT s.metric, s.labels, b.resolution, b.start, b.value FROM buckets b "
                "JOIN series s ON s.id = b.series"
            )
        }
    finally:
        db.close()
    return totals, buckets


def store_counts(totals: dict[tuple[str, str], int]) -> dict[str, Counter[str]]:
    """The store's totals as the truth counts them."""
    out: dict[str, Counter[str]] = {m: Counter() for m in METRICS}
    for (metric, labels), value in totals.items():
        if metric in METRICS:
            label = METRICS[metric]
            out[metric][json.loads(labels)[label] if label else ""] = value
    return out


def outbox_rows(path: Path) -> int:
    """Lines still to send to InfluxDB."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT coalesce(sum(lines), 0) FROM outbox").fetchone()[0])
    finally:
        db.close()


def influx_counts(server: InfluxDB, db: str) -> dict[str, Counter[str]]:
    """sum("count") of each bundled counter's measurement, per value of its label."""
    out: dict[str, Counter[str]] = {m: Counter() for m in METRICS}
    for metric, label in METRICS.items():
        group = f' GROUP BY "{label}"' if label else ""
        series = server.series(f'SELECT sum("count") FROM "{PREFIX}{metric}"{group}', db)
        for s in series:
            key = (s.get("tags") or {}).get(label, "") if label else ""
            [[_, value]] = s["values"]
            out[metric][key] = int(value)
    return out


def influx_per_second(server: InfluxDB, db: str, lo: int, hi: int) -> Counter[int]:
    """sum("count") of statscache_messages per second in [lo, hi), empty seconds left out."""
    q = (
        f'SELECT sum("count") FROM "{PREFIX}messages" WHERE time >= {lo}s AND time < {hi}s '
        "GROUP BY time(1s) fill(none)"
    )
    return Counter({t: int(n) for s in server.series(q, db) for t, n in s["values"]})
