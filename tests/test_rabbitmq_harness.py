"""The RabbitMQ harness of tests/rabbitmq.py against a real broker: it starts on loopback, a
fresh vhost works, what ``fedora_messaging.api.publish`` sends arrives intact at a plain pika
consumer, and a durable queue keeps its messages across a stop and a start of the broker.

Needs ``rabbitmq-server`` (``make test-deps`` installs it): without it these tests skip on a
developer machine and fail in CI (``CI=true``). One broker serves the whole module.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pika
import pytest
from fedora_messaging.message import Message
from rabbitmq import Broker, declare_queue, get_all, publish, publish_raw, shared_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from shared_broker(tmp_path_factory)


def test_the_broker_listens_on_loopback_only(broker: Broker) -> None:
    assert broker.running
    with socket.create_connection(("127.0.0.1", broker.amqp_port), timeout=5):
        pass
    # every listening socket of the node and of its epmd is bound to 127.0.0.1 (or ::1)
    listening = _listening_addresses({broker.amqp_port, broker.dist_port, broker.epmd_port})
    assert {port for _, port in listening} == {
        broker.amqp_port,
        broker.dist_port,
        broker.epmd_port,
    }
    assert all(address in ("127.0.0.1", "::1") for address, _ in listening), listening


def test_a_fresh_vhost_is_empty_and_usable(broker: Broker) -> None:
    url = broker.new_vhost()
    other = broker.new_vhost()
    declare_queue(url, "q", ["org.fedoraproject.#"])
    with pytest.raises(LookupError):
        broker.queue_depth(other, "q")  # vhosts are apart
    publish_raw(url, "org.fedoraproject.prod.x", b"\xff not json")
    publish_raw(url, "io.pagure.prod.x", b"not bound")
    assert broker.queue_depth(url, "q") == (1, 0)
    [got] = get_all(url, "q")
    assert (got.routing_key, got.body) == ("org.fedoraproject.prod.x", b"\xff not json")
    assert broker.queue_depth(url, "q") == (0, 0)


def test_fedora_messaging_publish_arrives_intact(broker: Broker) -> None:
    url = broker.new_vhost()
    declare_queue(url, "q")
    sent = [
        Message(
            topic=f"org.fedoraproject.prod.harness.{n}",
            body={"n": n, "text": "héllo"},
            headers={"fedora_messaging_user_alice": True},
        )
        for n in range(3)
    ]
    publish(url, sent)
    got = get_all(url, "q")
    assert [m.routing_key for m in got] == [m.topic for m in sent]
    assert [m.properties.message_id for m in got] == [m.id for m in sent]
    assert [json.loads(m.body) for m in got] == [m.body for m in sent]
    for m in got:
        assert m.properties.delivery_mode == 2
        assert m.properties.headers["fedora_messaging_user_alice"] is True
        assert m.properties.headers["fedora_messaging_schema"] == "base.message"
        assert "sent-at" in m.properties.headers


def test_a_durable_queue_keeps_its_messages_across_a_restart(broker: Broker) -> None:
    url = broker.new_vhost()
    declare_queue(url, "q")
    publish(url, [Message(topic="org.fedoraproject.prod.a", body={"n": 1})])
    publish_raw(url, "org.fedoraproject.prod.b", b"raw", pika.BasicProperties(delivery_mode=2))
    assert broker.queue_depth(url, "q") == (2, 0)

    broker.stop()
    assert not broker.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.amqp_port), timeout=2).close()
    broker.start()

    assert broker.queue_depth(url, "q") == (2, 0)
    got = get_all(url, "q")
    assert [m.routing_key for m in got] == ["org.fedoraproject.prod.a", "org.fedoraproject.prod.b"]
    # and publishing through fedora-messaging works again after the restart
    publish(url, [Message(topic="org.fedoraproject.prod.c", body={})])
    assert [m.routing_key for m in get_all(url, "q")] == ["org.fedoraproject.prod.c"]


def _listening_addresses(ports: set[int]) -> set[tuple[str, int]]:
    """(local address, port) of every listening TCP socket on one of ``ports`` (/proc/net)."""
    out: set[tuple[str, int]] = set()
    for path, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(path) as table:
            next(table)
            for line in table:
                local, state = line.split()[1], line.split()[3]
                hex_address, hex_port = local.split(":")
                port = int(hex_port, 16)
                if state != "0A" or port not in ports:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(hex_address)
                # /proc/net prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                out.add((socket.inet_ntop(family, raw), port))
    return out
