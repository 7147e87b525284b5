"""The fedora-messaging (AMQP) source, against a real RabbitMQ (tests/rabbitmq.py): what
``fedora_messaging.api.publish`` sends is emitted once as a fedora-messaging ``Message`` and
acknowledged only when the test (standing for the pipeline thread) acknowledges it;
unacknowledged messages come back after a reconnect; a broker restart is a disconnect, a
reconnect and no loss; deliveries fedora-messaging refuses are handed over to be rejected and
acknowledged; and through the real daemon, a SIGKILL between receiving and flushing loses and
double-counts nothing.

The first tests need no broker: settings, the profile, errors, and the acknowledgement queue.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pika
import pytest
from conftest import DATA
from fedora_messaging.message import Message, load_message
from rabbitmq import Broker, declare_queue, publish, publish_raw, shared_broker
from servers import (
    Exporter,
    exporter_process,
    free_port,
    require_binary,
    total,
    wait_until,
    write_exporter_config,
)

from statscache_exporter import config as configuration
from statscache_exporter.message import category_of, normalize
from statscache_exporter.sources import Ack, SourceContext, amqp
from statscache_exporter.sources.amqp import AmqpSource, Settings

integration = pytest.mark.integration


# --- helpers -------------------------------------------------------------------------------


def source_config(url: str = "", **keys: Any) -> configuration.FedoraMessagingSourceConfig:
    """A validated source config named ``bus``, reconnecting fast."""
    data: dict[str, Any] = {
        "type": "fedora-messaging",
        "name": "bus",
        "reconnect": {"initial": "100ms", "max": "500ms"},
        **({"amqp_url": url} if url else {}),
        **keys,
    }
    [source] = configuration.from_dict({"sources": [data]}).sources
    assert isinstance(source, configuration.FedoraMessagingSourceConfig)
    return source


def corpus(n: int, start: int = 0) -> list[Message]:
    """``n`` real fedora-messaging messages of the corpus (their schema classes, ids and
    sent-at kept), from the ``start``-th."""
    lines = (DATA / "fedora_messaging.jsonl").read_text().splitlines()[start : start + n]
    assert len(lines) == n, f"the corpus has fewer than {start + n} fedora-messaging messages"
    return [load_message(json.loads(line)["message"]) for line in lines]


@dataclass
class Received:
    raw: Any
    ack: Ack | None


class Recorder:
    """A :class:`SourceContext` whose emit records (raw, ack) and whose status records events;
    the test calls the acks itself, from its own thread, as the pipeline thread would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.events: list[tuple[str, str]] = []
        self.ctx = SourceContext(self.emit, threading.Event(), threading.Event(), self)

    def emit(self, raw: Any, ack: Ack | None = None, /) -> None:
        with self.lock:
            self.received.append(Received(raw, ack))

    def connected(self, detail: str = "") -> None:
        with self.lock:
            self.events.append(("connected", detail))

    def disconnected(self, reason: str) -> None:
        with self.lock:
            self.events.append(("disconnected", reason))

    def items(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def ids(self) -> list[str]:
        return [r.raw.id for r in self.items()]

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for k, _ in self.events if k == kind)

    def wait_received(self, n: int, timeout: float = 30.0) -> list[Received]:
        return wait_until(self.items, lambda got: len(got) >= n, f"{n} deliveries", timeout)

    def wait_event(self, kind: str, times: int = 1, timeout: float = 60.0) -> None:
        wait_until(
            lambda: self.count(kind), lambda n: n >= times, f"{kind} x{times}", timeout, 0.05
        )

    def ack(self, items: list[Received]) -> None:
        for r in items:
            assert r.ack is not None, "every delivery comes with its acknowledgement"
            r.ack()


@contextlib.contextmanager
def running(source: AmqpSource, rec: Recorder) -> Iterator[threading.Thread]:
    """``source.run`` in its own thread; at the end (if the test did not) stop and closing are
    set, and the thread must end."""
    thread = threading.Thread(target=source.run, args=(rec.ctx,), name="amqp-test", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        rec.ctx.stop.set()
        rec.ctx.closing.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the source did not return after stop and closing"


def shut_down(thread: threading.Thread, rec: Recorder, final: list[Received]) -> None:
    """What the daemon does: stop; the final flush acknowledges ``final``; closing."""
    rec.ctx.stop.set()
    rec.ack(final)
    rec.ctx.closing.set()
    thread.join(timeout=30)
    assert not thread.is_alive()


# --- no broker: settings, profile, errors --------------------------------------------------


def test_the_fedora_public_profile_takes_the_certificates_from_the_first_directory_with_them(
    tmp_path: Path,
) -> None:
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    full.mkdir()
    for name in ("cacert.pem", "fedora-cert.pem", "fedora-key.pem"):
        (full / name).write_text("pem")
    settings = amqp.resolve(source_config(profile="fedora-public"), (empty, full))
    assert settings == Settings(
        url="amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub",
        queue="",  # server-named, as fedora-messaging's fedora.toml does
        ca_cert=str(full / "cacert.pem"),
        certfile=str(full / "fedora-cert.pem"),
        keyfile=str(full / "fedora-key.pem"),
    )
    # explicit keys override the profile
    mine = amqp.resolve(
        source_config(
            "amqps://other/%2F",
            profile="fedora-public",
            queue="00000000-0000-0000-0000-000000000000",
            tls={"certfile": "/c.pem", "keyfile": "/k.pem"},
        ),
        (empty, full),
    )
    assert (mine.url, mine.queue, mine.certfile, mine.keyfile, mine.ca_cert) == (
        "amqps://other/%2F",
        "00000000-0000-0000-0000-000000000000",
        "/c.pem",
        "/k.pem",
        str(full / "cacert.pem"),
    )
    # without the profile nothing is added
    plain = amqp.resolve(source_config("amqp://h/%2F"), (full,))
    assert plain == Settings("amqp://h/%2F", "")


@pytest.mark.parametrize(
    ("queue", "warned"),
    [
        ("00000000-0000-0000-0000-000000000000", False),
        ("00000000-0000-0000-0000-000000000000\n", True),
        ("my-queue", True),
    ],
    ids=repr,
)
def test_a_public_broker_queue_not_named_by_a_uuid_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, queue: str, warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="statscache_exporter.sources.amqp"):
        AmqpSource(source_config(profile="fedora-public", queue=queue), dirs=(tmp_path,))
    assert ("UUID format" in caplog.text) is warned


def test_missing_profile_files_are_reported_as_the_reason_and_retried(tmp_path: Path) -> None:
    source = AmqpSource(source_config(profile="fedora-public"), dirs=(tmp_path,))
    rec = Recorder()
    with running(source, rec):
        rec.wait_event("disconnected", times=2)
    reason = rec.events[0][1]
    assert "fedora-cert.pem" in reason and str(tmp_path) in reason
    assert "github.com/fedora-infra/fedora-messaging" in reason
    assert rec.count("connected") == 0


def test_an_unresolvable_host_is_named_without_the_password_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = AmqpSource(source_config("amqp://guest:s3cret@no-such-host.invalid:5672/%2Fv"))
    rec = Recorder()
    with caplog.at_level(logging.WARNING, "statscache_exporter.sources.amqp"), running(source, rec):
        rec.wait_event("disconnected", times=3)
    reason = rec.events[0][1]
    assert reason.startswith("cannot resolve no-such-host.invalid (DNS")
    assert "amqp://guest:***@no-such-host.invalid:5672/%2Fv" in reason
    assert "s3cret" not in caplog.text and "s3cret" not in "".join(r for _, r in rec.events)
    assert "retrying in" in caplog.text and "no-such-host.invalid" in caplog.text


def test_safe_url_hides_only_the_password() -> None:
    assert amqp.safe_url("amqps://u:p@h:1/%2Fv?x=1") == "amqps://u:***@h:1/%2Fv?x=1"
    assert amqp.safe_url(amqp.FEDORA_PUBLIC_URL) == amqp.FEDORA_PUBLIC_URL  # empty password
    assert amqp.safe_url("amqp://h/") == "amqp://h/"


def test_amqps_uses_the_client_certificate_with_external_auth(tmp_path: Path) -> None:
    openssl = require_binary("openssl")  # missing: a failure in CI, a skip elsewhere
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    settings = Settings("amqps://fedora:@broker.example/%2Fv", "", str(cert), str(cert), str(key))
    params = amqp.connection_parameters(settings, "bus")
    assert isinstance(params.credentials, pika.credentials.ExternalCredentials)
    assert params.ssl_options is not None
    assert params.ssl_options.server_hostname == "broker.example"
    assert params.ssl_options.context.check_hostname is True
    assert params.client_properties is not None
    assert params.client_properties["app"] == "statscache-exporter"
    # without a client certificate: the URL's user and password
    anonymous = amqp.connection_parameters(Settings("amqps://u:p@h/%2F", ""), "bus")
    assert isinstance(anonymous.credentials, pika.credentials.PlainCredentials)


# --- no broker: the acknowledgement queue --------------------------------------------------


def test_the_daemon_flushes_when_half_the_smallest_prefetch_window_waits() -> None:
    from statscache_exporter.daemon import ack_window

    def config(*sources: dict[str, Any]) -> configuration.Config:
        return configuration.from_dict({"sources": list(sources)})

    bus = {"type": "fedora-messaging", "amqp_url": "amqp://h/%2F"}
    assert ack_window(config({**bus, "name": "a"})) == 1000  # prefetch 2000 by default
    assert ack_window(config({**bus, "name": "a", "prefetch": 1})) == 1
    assert ack_window(config({**bus, "name": "a"}, {**bus, "name": "b", "prefetch": 300})) == 150
    # no source acknowledges: the flush interval and max_batch alone decide
    assert ack_window(config({"type": "replay", "name": "r", "paths": ["x.jsonl"]})) == 0


class FakeConnection:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.closed = False

    def add_callback_threadsafe(self, callback: Any) -> None:
        if self.closed:
            raise pika.exceptions.ConnectionWrongStateError("closed")
        self.callbacks.append(callback)

    def run_callbacks(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for c in callbacks:
            c()


class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))


def fake_session(delivered: int) -> tuple[amqp._Session, FakeConnection, FakeChannel]:
    connection, channel = FakeConnection(), FakeChannel()
    session = amqp._Session(cast(Any, connection), cast(Any, channel), "q")
    session.delivered.extend(range(1, delivered + 1))
    return session, connection, channel


def test_acks_in_order_go_as_one_multiple_ack_and_wake_the_connection_once() -> None:
    session, connection, channel = fake_session(5)
    for tag in (1, 2, 3):
        session.ack(tag)
    assert len(connection.callbacks) == 1  # one wake-up for the three
    connection.run_callbacks()
    assert channel.acks == [(3, True)]


def test_an_ack_past_an_outstanding_tag_goes_alone_and_is_never_covered_twice() -> None:
    session, connection, channel = fake_session(6)
    session.ack(5)  # 1-4 still outstanding: a multiple ack would acknowledge them too
    connection.run_callbacks()
    assert channel.acks == [(5, False)]
    for tag in (1, 2, 4):
        session.ack(tag)
    connection.run_callbacks()
    assert channel.acks == [(5, False), (2, True), (4, False)]
    session.ack(3)
    connection.run_callbacks()  # 3 completes the prefix up to 5; 6 is still outstanding
    assert channel.acks == [(5, False), (2, True), (4, False), (3, True)]
    assert list(session.delivered) == [6]


def test_acks_for_a_dead_connection_are_dropped_silently() -> None:
    session, connection, channel = fake_session(3)
    session.kill()
    session.ack(1)
    assert connection.callbacks == [] and channel.acks == []
    other, closed, _ = fake_session(3)
    closed.closed = True
    other.ack(1)  # the connection closed under it: no error, and the session is dead now
    assert other.dead
    other.ack(2)
    assert closed.callbacks == []


def test_an_ack_queued_before_the_connection_died_is_not_sent() -> None:
    session, connection, channel = fake_session(2)
    session.ack(1)
    session.kill()
    connection.run_callbacks()
    assert channel.acks == []


# --- a real broker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from shared_broker(tmp_path_factory)


def depth(broker: Broker, url: str, queue: str, expected: tuple[int, int]) -> None:
    """Wait until ``queue`` holds ``expected`` (ready, unacknowledged) messages."""
    wait_until(
        lambda: broker.queue_depth(url, queue),
        lambda d: d == expected,
        f"queue {queue} at (ready, unacked) = {expected}",
        timeout=30,
        interval=0.1,
    )


@integration
def test_connection_errors_are_named(broker: Broker) -> None:
    good = broker.new_vhost()
    port = broker.amqp_port
    cases = {
        good.replace("guest:guest@", "guest:wrong@"): "refused the credentials",
        f"amqp://guest:guest@127.0.0.1:{port}/no-such-vhost": "denied access (to the vhost?)",
        f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F": "refused the connection",
    }
    for url, words in cases.items():
        source, rec = AmqpSource(source_config(url)), Recorder()
        with running(source, rec):
            rec.wait_event("disconnected")
        reason = rec.events[0][1]
        assert words in reason and amqp.safe_url(url) in reason, reason
        assert ":guest@" not in reason and ":wrong@" not in reason


@integration
def test_published_messages_are_emitted_once_and_acknowledged_when_the_pipeline_says(
    broker: Broker,
) -> None:
    url = broker.new_vhost()
    sent = corpus(50)
    source = AmqpSource(source_config(url))  # a server-named exclusive queue
    rec = Recorder()
    with running(source, rec) as thread:
        rec.wait_event("connected")
        assert source.session is not None
        queue = source.session.queue
        assert queue.startswith("amq.gen-")
        publish(url, sent)
        got = rec.wait_received(len(sent))
        depth(broker, url, queue, (0, len(sent)))  # delivered, held until acknowledged
        assert [r.raw.id for r in got] == [m.id for m in sent]
        assert [r.raw.topic for r in got] == [m.topic for m in sent]
        assert [type(r.raw) for r in got] == [type(m) for m in sent]  # the schema classes
        assert all(r.raw.queue == queue for r in got)
        for r, m in zip(got, sent, strict=True):
            normalized = normalize(r.raw)
            assert (normalized.id, normalized.topic) == (m.id, m.topic)
            assert normalized.timestamp.isoformat() == m._headers["sent-at"]
        rec.ack(got)  # from this thread, as the pipeline thread does after its flush
        depth(broker, url, queue, (0, 0))
        assert len(rec.items()) == len(sent)  # nothing emitted twice
        assert source.session.acks_sent <= len(sent)
        shut_down(thread, rec, [])
    assert rec.count("disconnected") == 0 and source.connections == 1


@integration
def test_unacknowledged_messages_come_back_after_a_reconnect(broker: Broker) -> None:
    url = broker.new_vhost()
    sent = corpus(20, start=50)
    config = source_config(url, queue="statscache-redelivery")
    first, rec1 = AmqpSource(config), Recorder()
    with running(first, rec1) as thread:
        rec1.wait_event("connected")
        publish(url, sent)
        got1 = rec1.wait_received(len(sent))
        depth(broker, url, "statscache-redelivery", (0, len(sent)))
        shut_down(thread, rec1, [])  # stopped before any flush: nothing acknowledged
    depth(broker, url, "statscache-redelivery", (len(sent), 0))  # back to ready

    second, rec2 = AmqpSource(config), Recorder()
    with running(second, rec2) as thread:
        got2 = rec2.wait_received(len(sent))
        assert [r.raw.id for r in got2] == [m.id for m in sent] == [r.raw.id for r in got1]
        rec1.ack(got1)  # late acknowledgements for the first connection: dropped
        depth(broker, url, "statscache-redelivery", (0, len(sent)))
        shut_down(thread, rec2, got2)  # the final flush acknowledges them
    depth(broker, url, "statscache-redelivery", (0, 0))
    assert len(rec2.items()) == len(sent)


@integration
def test_a_broker_restart_is_a_disconnect_and_a_reconnect_and_loses_nothing(
    broker: Broker,
) -> None:
    url = broker.new_vhost()
    queue = "statscache-restart"
    before, after = corpus(30, start=70), corpus(30, start=100)
    source, rec = AmqpSource(source_config(url, queue=queue)), Recorder()
    with running(source, rec) as thread:
        rec.wait_event("connected")
        publish(url, before)
        got = rec.wait_received(len(before))
        rec.ack(got[:10])  # a flush stored the first ten
        depth(broker, url, queue, (0, 20))
        old_session = source.session

        broker.stop()
        rec.wait_event("disconnected")
        broker.start()
        rec.wait_event("connected", times=2)
        assert source.session is not old_session and source.connections == 2

        rec.ack(got[10:])  # acknowledgements for the dead channel: dropped, not misapplied
        publish(url, after)
        expected_again = [m.id for m in before[10:]] + [m.id for m in after]
        again = rec.wait_received(len(before) + len(expected_again))[len(before) :]
        assert sorted(r.raw.id for r in again) == sorted(expected_again)
        depth(broker, url, queue, (0, len(expected_again)))  # none acknowledged by mistake
        shut_down(thread, rec, again)
    depth(broker, url, queue, (0, 0))
    ids = rec.ids()
    assert set(ids) == {m.id for m in before + after}  # every message, at least once
    assert len(ids) == len(before) + len(expected_again)  # the unacknowledged ones twice
    kinds = [k for k, _ in rec.events]
    assert kinds[0] == "connected" and kinds[-1] == "connected" and "disconnected" in kinds
    assert kinds.count("connected") == 2


@integration
def test_deliveries_fedora_messaging_refuses_are_rejected_acknowledged_and_the_stream_goes_on(
    broker: Broker, open_store: Any
) -> None:
    url = broker.new_vhost()
    envelope = {  # a fedmsg envelope as body: its bytes alone would be counted as a message
        "topic": "org.fedoraproject.prod.bodhi.update.comment",
        "msg": {"comment": {}},
        "timestamp": 1700000000,
        "msg_id": "2023-envelope",
    }
    headers = {"fedora_messaging_schema": "base.message", "sent-at": "2024-03-01T12:00:00+00:00"}
    [valid] = corpus(1, start=130)
    source, rec = AmqpSource(source_config(url)), Recorder()
    with running(source, rec) as thread:
        rec.wait_event("connected")
        assert source.session is not None
        queue = source.session.queue
        publish_raw(url, "org.fedoraproject.prod.test.garbage", b"\xff{ not json")
        publish_raw(
            url,
            "org.fedoraproject.prod.test.severity",
            json.dumps(envelope).encode(),
            pika.BasicProperties(
                headers={**headers, "fedora_messaging_severity": "loud"}, message_id="bad-1"
            ),
        )
        publish_raw(
            url,
            "org.fedoraproject.prod.test.schema",
            b"{}",
            pika.BasicProperties(headers={"fedora_messaging_schema": ["not", "a", "name"]}),
        )
        publish_raw(url, "org.fedoraproject.prod.test.noheaders", b'{"a": 1}')
        publish(url, [valid])
        got = rec.wait_received(5)
        pipeline = open_store()
        outcomes = [pipeline.handle(r.raw, "bus") for r in got]
        assert outcomes == ["rejected"] * 4 + ["processed"]
        assert dict(pipeline.stats.rejected) == {
            ("bus", "not_json"): 1,  # the body bytes
            ("bus", "unknown_shape"): 2,  # refused by fedora-messaging's validation
            ("bus", "bad_timestamp"): 1,  # a valid message without sent-at
        }
        assert got[1].raw["id"] == "bad-1"
        assert "ValidationError" in got[1].raw[amqp.INVALID_KEY]
        assert got[4].raw.id == valid.id
        depth(broker, url, queue, (0, 5))
        rec.ack(got)  # poison messages are acknowledged like the rest
        depth(broker, url, queue, (0, 0))
        shut_down(thread, rec, [])


# --- through the daemon --------------------------------------------------------------------


def metric(samples: Any, name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


def by_category(samples: Any) -> dict[str, float]:
    return {
        dict(key)["category"]: value
        for (name, key), value in samples.items()
        if name == "statscache_messages_by_category_total"
    }


def exporter_settings(
    url: str, queue: str, flush_interval: str, max_batch: int, prefetch: int = 2000
) -> Any:
    return {
        "store": {"flush_interval": flush_interval, "max_batch": max_batch},
        "sources": [
            {
                "type": "fedora-messaging",
                "name": "bus",
                "amqp_url": url,
                "queue": queue,
                "prefetch": prefetch,
                "reconnect": {"initial": "100ms", "max": "1s"},
            }
        ],
    }


def wait_stored(exporter: Exporter, messages: list[Message]) -> Any:
    """Wait until the store (what /metrics shows after committed flushes) holds exactly
    ``messages``: in all and per category."""
    expected = collections.Counter(category_of(m.topic) for m in messages)

    def done(s: Any) -> bool:
        return metric(s, "statscache_messages_total") == len(messages) and by_category(s) == {
            k: float(v) for k, v in expected.items()
        }

    return wait_until(exporter.samples, done, f"{len(messages)} messages stored", timeout=60)


@integration
def test_the_daemon_killed_between_receiving_and_flushing_counts_every_message_once(
    broker: Broker, tmp_path: Path
) -> None:
    url = broker.new_vhost()
    queue = "statscache-daemon"
    first, second = corpus(100), corpus(40, start=100)
    # run 1: a flush every 100 messages, else only after 60 s
    settings = exporter_settings(url, queue, "60s", len(first))
    with exporter_process(tmp_path, [], settings=settings) as exporter:
        wait_until(
            exporter.samples,
            lambda s: metric(s, "statscache_exporter_source_connected", source="bus") == 1,
            "the source to connect",
        )
        publish(url, first)
        wait_stored(exporter, first)
        publish(url, second)
        s = wait_until(
            exporter.samples,
            lambda s: (
                metric(s, "statscache_exporter_messages_received_total", source="bus")
                == len(first) + len(second)
            ),
            "the second batch to be received",
        )
        assert metric(s, "statscache_messages_total") == len(first)  # not flushed yet
        exporter.kill()  # no final flush, no acknowledgement

        # run 2, flushing often: the broker redelivers what was not acknowledged
        exporter.settings = exporter_settings(url, queue, "250ms", 20_000)
        write_exporter_config(
            exporter.config, exporter.store, exporter.port, [], None, exporter.settings
        )
        exporter.start()
        s = wait_stored(exporter, first + second)
        received = metric(s, "statscache_exporter_messages_received_total", source="bus")
        processed = metric(s, "statscache_exporter_messages_processed_total", source="bus")
        duplicates = metric(s, "statscache_exporter_messages_duplicate_total", source="bus")
        assert processed == len(second)
        assert received == processed + duplicates
        assert total(s, "statscache_exporter_messages_rejected_total") == 0
        depth(broker, url, queue, (0, 0))  # all acknowledged after run 2's flushes
    # exporter_process ended it with SIGTERM and it exited 0: the final acks went out cleanly
    assert exporter.returncode == 0


@integration
def test_a_queue_longer_than_the_prefetch_window_drains_without_waiting_for_the_interval(
    broker: Broker, tmp_path: Path
) -> None:
    """The broker sends at most ``prefetch`` unacknowledged messages and they are acknowledged
    only after the flush that stores them: the daemon flushes once half the window waits, not
    after the flush interval (an hour here), so a backlog of many windows drains."""
    url = broker.new_vhost()
    queue = "statscache-window"
    messages = corpus(120, start=20)
    declare_queue(url, queue)
    publish(url, messages)  # the backlog, before the exporter starts
    depth(broker, url, queue, (len(messages), 0))
    settings = exporter_settings(url, queue, "1h", 20_000, prefetch=10)
    with exporter_process(tmp_path, [], settings=settings) as exporter:
        s = wait_stored(exporter, messages)  # 12 windows of 10, well within the interval
        assert metric(s, "statscache_exporter_flushes_total") >= len(messages) // 5
        depth(broker, url, queue, (0, 0))  # every one acknowledged after its flush


def test_deliveries_become_what_fedora_messagings_get_message_makes_of_them() -> None:
    """The source makes each schema's check once, compiled (tests/test_schema_check.py),
    instead of calling get_message (whose jsonschema.validate checks the schema on every
    call): the same class, topic, headers and body for every fedora-messaging message of the
    corpus, and the same refusals with the same errors."""
    from fedora_messaging.exceptions import ValidationError
    from fedora_messaging.message import get_message

    def delivery(m: dict[str, Any], body: Any) -> tuple[str, pika.BasicProperties, bytes]:
        props = pika.BasicProperties(
            headers=dict(m["headers"]), content_encoding="utf-8", message_id=m["id"]
        )
        return m["topic"], props, json.dumps(body).encode()

    corpus = [json.loads(line)["message"] for line in (DATA / "fedora_messaging.jsonl").open()]
    schemas = collections.Counter()
    refused = 0
    for m in corpus:
        for body in (m["body"], {"not": "what any schema wants"}, [1, 2]):
            theirs: Any
            try:
                theirs = get_message(*delivery(m, body))
            except Exception as exc:  # ValidationError, or a schema class tripping on a body
                theirs = exc
            try:
                ours: Any = amqp._get_message(*delivery(m, body))
            except Exception as exc:
                ours = exc
            if isinstance(theirs, Exception):
                assert type(ours) is type(theirs), (m["id"], body, ours, theirs)
                assert str(ours) == str(theirs), m["id"]  # jsonschema's error, word for word
                refused += isinstance(ours, ValidationError)
                continue
            assert type(ours) is type(theirs), m["id"]
            assert (ours.topic, ours.body, ours._headers) == (
                theirs.topic,
                theirs.body,
                theirs._headers,
            )
            schemas[type(ours).__name__] += 1
    assert len(schemas) > 10 and refused > len(corpus)  # real schema classes, real refusals
