"""Two exporters on one bus, against a real RabbitMQ (tests/rabbitmq.py), as the README's
"Running more than one" describes.

- Replicas: each exporter has its own durable queue bound to ``amq.topic``, so each gets the
  whole stream. One of them is stopped halfway (SIGTERM) while the second half is published,
  and started again: its queue kept the messages. Both end with the same plugin series on
  /metrics and the same store (``Store.dump()``: buckets, totals, the ids counted): counts
  are bucketed by the message's own time and each id is counted once, so when and in what
  chunks a replica got the stream does not matter.
- What not to do: two exporters consuming ONE shared queue split the stream (the broker hands
  each message to one consumer): each holds a part, the parts do not overlap, and only their
  sum is the bus.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
from fedora_messaging.message import Message, load_message
from rabbitmq import Broker, publish, shared_broker
from servers import Exporter, Samples, exporter_process, wait_until

from statscache_exporter.message import category_of
from statscache_exporter.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from shared_broker(tmp_path_factory)


def corpus() -> list[Message]:
    """Every fedora-messaging message of the corpus (schema classes, ids, sent-at kept)."""
    lines = (DATA / "fedora_messaging.jsonl").read_text().splitlines()
    return [load_message(json.loads(line)["message"]) for line in lines]


def amqp_settings(url: str, queue: str) -> dict[str, Any]:
    return {
        "sources": [
            {
                "type": "fedora-messaging",
                "name": "bus",
                "amqp_url": url,
                "queue": queue,
                "reconnect": {"initial": "100ms", "max": "1s"},
            }
        ]
    }


def plugin_series(samples: Samples) -> Samples:
    """The plugins' series (the exporter's own, ``statscache_exporter_*``, are per process)."""
    return {k: v for k, v in samples.items() if not k[0].startswith("statscache_exporter_")}


def counted(samples: Samples) -> float:
    return samples.get(("statscache_messages_total", ()), 0.0)


def by_category(samples: Samples) -> collections.Counter[str]:
    return collections.Counter(
        {
            dict(labels)["category"]: int(v)
            for (name, labels), v in samples.items()
            if name == "statscache_messages_by_category_total"
        }
    )


def connected(exporter: Exporter) -> None:
    wait_until(
        exporter.samples,
        lambda s: s.get(("statscache_exporter_source_connected", (("source", "bus"),))) == 1,
        f"{exporter.url} to connect to the broker",
    )


def stored(exporter: Exporter, n: int) -> Samples:
    """Wait until ``n`` messages are stored (statscache_messages_total moves only after a
    committed flush) and nothing received is still waiting for one."""

    def done(s: Samples) -> bool:
        def of(name: str) -> float:
            return sum(v for (m, _), v in s.items() if m == name)

        received = of("statscache_exporter_messages_received_total")
        handled = of("statscache_exporter_messages_processed_total") + of(
            "statscache_exporter_messages_duplicate_total"
        )
        return counted(s) == n and received == handled

    return wait_until(exporter.samples, done, f"{n} messages stored by {exporter.url}", timeout=60)


def dump(exporter: Exporter) -> dict[str, Any]:
    store = Store(exporter.store)
    try:
        return store.dump()
    finally:
        store.close()


def test_two_replicas_on_their_own_queues_end_identical_one_restarted_halfway(
    broker: Broker, tmp_path: Path
) -> None:
    url = broker.new_vhost()
    messages = corpus()
    first, second = messages[:100], messages[100:]
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(
                exporter_process(
                    tmp_path / name, [], settings=amqp_settings(url, f"replica-{name}")
                )
            )
            for name in ("a", "b")
        )
        connected(a)
        connected(b)  # both queues declared and bound: each keeps what is published next
        publish(url, first)
        stored(a, len(first))
        stored(b, len(first))

        b.stop_cleanly()  # SIGTERM: the restart
        publish(url, second)  # a counts it now; b's queue keeps it
        stored(a, len(messages))
        assert broker.queue_depth(url, "replica-b") == (len(second), 0)
        b.start()
        got_b = plugin_series(stored(b, len(messages)))
        got_a = plugin_series(a.samples())
    assert got_a == got_b
    assert counted(got_a) == len(messages) == len({m.id for m in messages})
    assert by_category(got_a) == collections.Counter(category_of(m.topic) for m in messages)
    store_a, store_b = dump(a), dump(b)
    assert store_a == store_b
    assert store_a["seen"] == sorted(m.id for m in messages)
    assert len(store_a["buckets"]) > len(messages)  # every resolution, every plugin


def test_two_exporters_on_one_shared_queue_split_the_stream(broker: Broker, tmp_path: Path) -> None:
    url = broker.new_vhost()
    messages = corpus()
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(
                exporter_process(tmp_path / name, [], settings=amqp_settings(url, "shared"))
            )
            for name in ("a", "b")
        )
        connected(a)
        connected(b)
        publish(url, messages)

        wait_until(
            lambda: counted(a.samples()) + counted(b.samples()),
            lambda n: n == len(messages),
            "the two parts to add up to the stream",
            timeout=60,
        )
        part_a, part_b = a.samples(), b.samples()
    # each holds a part, neither the whole
    assert 0 < counted(part_a) < len(messages) and 0 < counted(part_b) < len(messages)
    # the parts do not overlap, and only their sum is the bus
    seen_a, seen_b = set(dump(a)["seen"]), set(dump(b)["seen"])
    assert not seen_a & seen_b and seen_a | seen_b == {m.id for m in messages}
    assert by_category(part_a) + by_category(part_b) == collections.Counter(
        category_of(m.topic) for m in messages
    )
