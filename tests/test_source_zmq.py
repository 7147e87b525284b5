"""The fedmsg (ZeroMQ) source against real publishers on loopback: what it emits, topic
subscriptions, garbage on the wire, connection state through a publisher's restart, several
endpoints, signature validation with fedmsg's gpg backend, its socket options, and
``statscache-exporter run`` with a fedmsg source, counted exactly in the store and /metrics.

The test publisher is an XPUB socket: on the wire it is what fedmsg's PUB socket is (same
multipart ``[topic, JSON]`` messages, same prefix filtering), but it also hears the
subscriptions, so a test sends once the subscriber's subscription has reached it, instead of
sleeping for ZeroMQ's slow joiner."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import DATA, make_config
from servers import exporter_process, free_port, missing, total

from statscache_exporter import message as messages
from statscache_exporter.config import ConfigError, FedmsgSourceConfig
from statscache_exporter.sources import SourceContext
from statscache_exporter.sources.zmq import POLL_MS, FedmsgSource

DEADLINE = 15.0


def envelopes() -> list[dict[str, Any]]:
    """The corpus's fedmsg envelopes, in file order."""
    return [json.loads(line)["envelope"] for line in (DATA / "fedmsg_envelopes.jsonl").open()]


def expected_counts(sent: list[Any]) -> tuple[Counter[str], int, int, Counter[str]]:
    """What the pipeline must make of ``sent``, worked out from the normalizer alone: messages
    per category (the first of each id), how many are processed, how many are duplicates, and
    the rejections by reason."""
    seen: set[str] = set()
    by_category: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    duplicates = 0
    for raw in sent:
        try:
            m = messages.normalize(raw)
        except messages.Rejected as exc:
            rejected[exc.reason] += 1
            continue
        if m.id in seen:
            duplicates += 1
            continue
        seen.add(m.id)
        if m.category:
            by_category[m.category] += 1
    return by_category, len(seen), duplicates, rejected


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


class Publisher:
    """A fedmsg publisher on 127.0.0.1 (an XPUB socket, see the module doc)."""

    def __init__(self, port: int | None = None) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)  # the test sends in bursts: never drop
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscriptions
        if port is None:
            port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        else:
            self.socket.bind(f"tcp://127.0.0.1:{port}")
        self.port = port
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def wait_subscribed(self, *topics: str, timeout: float = DEADLINE) -> None:
        """Wait until a subscription to each of ``topics`` has arrived."""
        wanted = {t.encode("utf-8") for t in topics or ("",)}
        deadline = time.monotonic() + timeout
        while wanted:
            left = deadline - time.monotonic()
            if left <= 0 or not self.socket.poll(int(left * 1000)):
                pytest.fail(f"no subscription to {sorted(wanted)} reached {self.endpoint}")
            frame = self.socket.recv()
            if frame[:1] == b"\x01":
                wanted.discard(frame[1:])

    def send(self, envelope: dict[str, Any]) -> None:
        self.send_frames(envelope["topic"].encode("utf-8"), json.dumps(envelope).encode())

    def send_frames(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher()
    yield pub
    pub.close()


class Recorder:
    """A source context that keeps what the source emits and reports."""

    def __init__(self) -> None:
        self.emitted: list[Any] = []
        self.events: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.context = SourceContext(self.emit, self.stop, threading.Event(), self)

    def emit(self, raw: Any, ack: Any = None, /) -> None:
        assert ack is None  # fedmsg has no acknowledgements
        self.emitted.append(raw)

    def connected(self, detail: str = "") -> None:
        self.events.append(("connected", detail))

    def disconnected(self, reason: str) -> None:
        self.events.append(("disconnected", reason))

    @property
    def state(self) -> str | None:
        return self.events[-1][0] if self.events else None


class Running:
    """A source running in a thread with a :class:`Recorder`."""

    def __init__(self, source: FedmsgSource) -> None:
        self.source = source
        self.rec = Recorder()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.source.run(self.rec.context)
        except BaseException as exc:
            self.error = exc

    def wait_emitted(self, n: int) -> list[Any]:
        wait_for(lambda: len(self.rec.emitted) >= n, f"{n} messages (have {self.rec.emitted})")
        time.sleep(0.05)  # nothing more may follow
        assert len(self.rec.emitted) == n, self.rec.emitted[n:]
        return self.rec.emitted

    def wait_state(self, state: str, after: int = 0) -> None:
        wait_for(
            lambda: any(e[0] == state for e in self.rec.events[after:]),
            f"{state} after event {after} (events: {self.rec.events})",
        )

    def stop(self) -> float:
        """Stop it; the seconds it took to return."""
        started = time.monotonic()
        self.rec.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the source did not stop"
        if self.error is not None:
            raise self.error
        return time.monotonic() - started


def source_config(*endpoints: str, **keys: Any) -> FedmsgSourceConfig:
    data = {"type": "fedmsg", "name": "bus", "endpoints": list(endpoints), **keys}
    config = make_config(Path("unused.sqlite"), sources=[data]).sources[0]
    assert isinstance(config, FedmsgSourceConfig)
    return config


@pytest.fixture
def running() -> Iterator[Callable[[FedmsgSource], Running]]:
    started: list[Running] = []

    def start(source: FedmsgSource) -> Running:
        r = Running(source)
        started.append(r)
        return r

    yield start
    for r in started:
        r.rec.stop.set()
        r.thread.join(timeout=5)


# --- what it emits ------------------------------------------------------------------------------


def test_emits_exactly_the_published_envelopes(publisher: Publisher, running: Any) -> None:
    run = running(FedmsgSource(source_config(publisher.endpoint)))
    publisher.wait_subscribed("")
    run.wait_state("connected")
    sent = envelopes()
    for envelope in sent:
        publisher.send(envelope)
    assert run.wait_emitted(len(sent)) == sent
    assert run.rec.events == [("connected", f"to {publisher.endpoint}")]
    assert run.stop() < 1.0


def test_subscribes_by_topic_prefix(publisher: Publisher, running: Any) -> None:
    topics = ["org.fedoraproject.prod.bodhi.", "io.pagure."]
    run = running(FedmsgSource(source_config(publisher.endpoint, topics=topics)))
    publisher.wait_subscribed(*topics)
    sent = envelopes()
    for envelope in sent:
        publisher.send(envelope)
    wanted = [e for e in sent if e["topic"].startswith(tuple(topics))]
    assert 50 < len(wanted) < len(sent) - 50
    publisher.send(sent[0] | {"topic": "io.pagure.last"})  # marks the end
    assert run.wait_emitted(len(wanted) + 1)[:-1] == wanted


def test_garbage_on_the_wire_is_emitted_to_be_rejected_and_the_stream_goes_on(
    publisher: Publisher, running: Any, open_store: Any
) -> None:
    run = running(FedmsgSource(source_config(publisher.endpoint)))
    publisher.wait_subscribed("")
    first, last = envelopes()[:2]
    publisher.send(first)
    publisher.send_frames(b"org.fedoraproject.prod.x", b"not json {")
    publisher.send_frames(b"one frame only")
    publisher.send_frames(json.dumps(first).encode())  # a whole envelope, but no topic frame
    publisher.send_frames(b"org.fedoraproject.prod.x", json.dumps(first).encode(), b"extra")
    publisher.send_frames(b"org.fedoraproject.prod.x", b'{"topic": "\xff\xfe"}')
    publisher.send_frames(b"org.fedoraproject.prod.x", b"[1, 2]")
    publisher.send_frames(b"org.fedoraproject.prod.x", b"")
    publisher.send(last)
    emitted = run.wait_emitted(9)
    assert emitted[0] == first and emitted[8] == last
    assert emitted[1] == b"not json {"
    assert emitted[5] == b'{"topic": "\xff\xfe"}'
    assert emitted[6] == [1, 2]
    for text, n in ((emitted[2], 1), (emitted[3], 1), (emitted[4], 3)):
        assert isinstance(text, str)
        assert text.startswith(f"fedmsg frames: {n} ZeroMQ frame(s) from {publisher.endpoint}")
    assert run.source.unreadable == {"frames": 3}
    # the pipeline rejects and counts every one of them, and takes the envelopes
    pipeline = open_store()
    outcomes = [pipeline.handle(raw, "bus") for raw in emitted]
    assert outcomes == ["processed"] + ["rejected"] * 7 + ["processed"]
    assert dict(pipeline.stats.rejected) == {("bus", "not_json"): 6, ("bus", "not_object"): 1}


# --- connection state ---------------------------------------------------------------------------


def test_a_publisher_restart_is_a_disconnection_and_messages_flow_again(running: Any) -> None:
    first = Publisher()
    config = source_config(first.endpoint, reconnect={"initial": "50ms", "max": "200ms"})
    run = running(FedmsgSource(config))
    try:
        first.wait_subscribed("")
        run.wait_state("connected")
        sent = envelopes()[:20]
        for envelope in sent[:10]:
            first.send(envelope)
        run.wait_emitted(10)
    finally:
        first.close()
    run.wait_state("disconnected", after=1)
    assert run.rec.events[1] == (
        "disconnected",
        f"{first.endpoint}: disconnected; 0/1 endpoints up",
    )
    again = Publisher(first.port)  # the same address
    try:
        again.wait_subscribed("")
        run.wait_state("connected", after=2)
        for envelope in sent[10:]:
            again.send(envelope)
        assert run.wait_emitted(20) == sent
        states = [state for state, _ in run.rec.events]
    finally:
        again.close()
    # while it is away, every failed reconnection says so again (the daemon's status only
    # acts on a change)
    assert states[:2] == ["connected", "disconnected"] and states[-1] == "connected"
    assert set(states[1:-1]) == {"disconnected"}
    assert run.stop() < 1.0


def test_with_several_endpoints_connected_means_every_one(running: Any) -> None:
    a, b = Publisher(), Publisher()
    run = running(FedmsgSource(source_config(a.endpoint, b.endpoint)))
    try:
        a.wait_subscribed("")
        b.wait_subscribed("")
        run.wait_state("connected")
        assert run.rec.events == [("connected", f"to {a.endpoint}, {b.endpoint}")]
        sent = envelopes()[:4]
        a.send(sent[0])
        b.send(sent[1])
        run.wait_emitted(2)
        b.close()
        run.wait_state("disconnected")
        assert run.rec.events[1] == (
            "disconnected",
            f"{b.endpoint}: disconnected; 1/2 endpoints up",
        )
        a.send(sent[2])  # the other endpoint still delivers
        assert run.wait_emitted(3)[2] == sent[2]
    finally:
        a.close()
        if not b.socket.closed:
            b.close()


def test_an_endpoint_nobody_listens_on_is_reported_and_stop_is_prompt(running: Any) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    run = running(FedmsgSource(source_config(endpoint, reconnect={"initial": "100ms"})))
    run.wait_state("disconnected")
    assert run.rec.events[0][1].startswith(f"{endpoint}: cannot connect (retrying in ")
    assert run.stop() < POLL_MS / 1000 + 0.5


def test_an_endpoint_that_is_not_one_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^sources\[0\]\.endpoints\[0\]: 'tcp://no-port-here'"):
        source_config("tcp://no-port-here")
    # one that slipped past the config (built in code): the source stops with the same error
    config = dataclasses.replace(source_config("tcp://127.0.0.1:1"), endpoints=("tcp://x",))
    run = Running(FedmsgSource(config))
    run.thread.join(timeout=5)
    assert isinstance(run.error, ConfigError)
    assert "endpoint 'tcp://x'" in str(run.error)


def test_socket_options_come_from_the_config() -> None:
    config = source_config(
        "tcp://127.0.0.1:1",
        high_water_mark=1234,
        tcp_keepalive_idle="90s",
        tcp_keepalive_interval="15s",
        tcp_keepalive_count=5,
        reconnect={"initial": "250ms", "max": "30s"},
    )
    source = FedmsgSource(config)
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        ep = source._subscribe(zctx, "tcp://127.0.0.1:1")
        options = {
            "RCVHWM": 1234,
            "TCP_KEEPALIVE": 1,
            "TCP_KEEPALIVE_IDLE": 90,
            "TCP_KEEPALIVE_INTVL": 15,
            "TCP_KEEPALIVE_CNT": 5,
            "RECONNECT_IVL": 250,
            "RECONNECT_IVL_MAX": 30_000,
        }
        assert {k: ep.socket.getsockopt(getattr(zmq, k)) for k in options} == options
        ep.close()
        off = source_config("tcp://127.0.0.1:1", tcp_keepalive=False, high_water_mark=0)
        ep = FedmsgSource(off)._subscribe(zctx, "tcp://127.0.0.1:1")
        assert ep.socket.getsockopt(zmq.TCP_KEEPALIVE) == 0
        assert ep.socket.getsockopt(zmq.RCVHWM) == 0  # no limit
        ep.close()
    finally:
        zctx.destroy(linger=0)


# --- signatures ---------------------------------------------------------------------------------


@pytest.fixture
def gpg_home() -> Iterator[tuple[str, str]]:
    """A GnuPG home with one signing key: (its path, the key's fingerprint). Short path: the
    agent's socket lives in it."""
    if shutil.which("gpg") is None:
        missing("gpg not found: install the Debian package gnupg (make test-deps does)")
    home = tempfile.mkdtemp(prefix="gpg", dir="/tmp")
    try:
        subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback",
             "--passphrase", "", "--quick-gen-key", "fedmsg test <test@example.org>",
             "ed25519", "sign", "never"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        listing = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--with-colons", "--list-secret-keys"],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        fingerprint = next(
            line.split(":")[9] for line in listing.stdout.splitlines() if line.startswith("fpr:")
        )
        yield home, fingerprint
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def gpg_signed(envelope: dict[str, Any], home: str, key: str) -> dict[str, Any]:
    """``envelope`` signed as fedmsg signs with its gpg backend."""
    import fedmsg.crypto.gpg

    signed: dict[str, Any] = fedmsg.crypto.gpg.sign(
        dict(envelope), gpg_home=home, gpg_signing_key=key
    )
    signed["signature"] = signed["signature"].decode("ascii")  # bytes on Python 3
    return signed


def test_validate_signatures_passes_signed_envelopes_and_rejects_the_rest(
    publisher: Publisher, running: Any, gpg_home: tuple[str, str]
) -> None:
    home, key = gpg_home
    fedmsg_config = {"crypto_validate_backends": ["gpg"], "gpg_home": home}
    source = FedmsgSource(
        source_config(publisher.endpoint, validate_signatures=True), fedmsg_config
    )
    run = running(source)
    publisher.wait_subscribed("")
    good, other = envelopes()[:2]
    signed = gpg_signed(good, home, key)
    tampered = gpg_signed(other, home, key)
    tampered["msg"] = {"changed": "after signing"}
    publisher.send(signed)
    publisher.send(tampered)
    publisher.send(other)  # not signed at all
    publisher.send_frames(b"org.fedoraproject.prod.other", json.dumps(signed).encode())
    publisher.send(signed | {"signature": "bm90IGEgc2lnbmF0dXJl"})
    emitted = run.wait_emitted(5)
    assert emitted[0] == signed
    for text in emitted[1:]:
        assert isinstance(text, str) and text.startswith("fedmsg signature: ")
    assert "invalid signature" in emitted[1] and "invalid signature" in emitted[2]
    assert "topic frame differs" in emitted[3]
    assert source.unreadable == {"signature": 4}
    for text in emitted[1:]:
        with pytest.raises(messages.Rejected) as rejected:
            messages.loads(text)
        assert rejected.value.reason == "not_json"


def test_crypto_settings_come_from_fedmsgs_own_config_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("gpg") is None:
        missing("gpg not found: install the Debian package gnupg (make test-deps does)")
    ssl = tmp_path / "ssl.py"
    ssl.write_text(
        f"config = dict(crypto_validate_backends=['gpg'], gpg_home={str(tmp_path)!r}, "
        "routing_nitpicky=True)\n"
    )
    monkeypatch.setenv("FEDMSG_CONFIG", str(ssl))
    source = FedmsgSource(source_config("tcp://127.0.0.1:1", validate_signatures=True))
    assert source.crypto is not None
    assert source.crypto["gpg_home"] == str(tmp_path)
    assert source.crypto["routing_nitpicky"] is True
    assert source.crypto["validate_signatures"] is True
    assert FedmsgSource(source_config("tcp://127.0.0.1:1")).crypto is None


def test_validating_with_a_backend_fedmsg_cannot_run_here_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedmsg.crypto.x509

    monkeypatch.setattr(fedmsg.crypto.x509, "validate", fedmsg.crypto.x509._disabled_validate)
    config = source_config("tcp://127.0.0.1:1", validate_signatures=True)
    with pytest.raises(ConfigError, match=r"cannot check X\.509 signatures here"):
        FedmsgSource(config, {"crypto_validate_backends": ["x509"]})
    with pytest.raises(ConfigError, match="unknown fedmsg crypto backend 'rot13'"):
        FedmsgSource(config, {"crypto_validate_backends": ["rot13"]})


# --- end to end: statscache-exporter run ---------------------------------------------------------


def store_by_category(store: Path) -> Counter[str]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(
            "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.metric = 'messages_by_category'"
        ).fetchall()
    finally:
        db.close()
    return Counter({json.loads(labels)["category"]: int(value) for labels, value in rows})


def test_the_exporter_counts_what_a_fedmsg_publisher_sends_exactly(tmp_path: Path) -> None:
    pub = Publisher()
    garbage = [(b"org.fedoraproject.prod.x", b"not json"), (b"one frame",)]
    sent = envelopes()
    by_category, processed, duplicates, rejected = expected_counts(sent)
    rejected["not_json"] += len(garbage)
    settings = {
        "sources": [{"type": "fedmsg", "name": "bus", "endpoints": [pub.endpoint]}],
        "plugins": {"volume_by_category": {"enabled": True}},
    }
    try:
        with exporter_process(tmp_path, [], settings=settings) as exporter:
            pub.wait_subscribed("")
            for envelope in sent:
                pub.send(envelope)
            for frames in garbage:
                pub.send_frames(*frames)
            n = len(sent) + len(garbage)

            def counted() -> bool:
                s = exporter.samples()
                handled = sum(
                    total(s, f"statscache_exporter_messages_{k}_total")
                    for k in ("processed", "duplicate", "rejected")
                )
                return (
                    total(s, "statscache_exporter_messages_received_total") == n == handled
                    and s.get(("statscache_messages_total", ()), 0) == processed
                )

            wait_for(counted, f"the exporter to count {n} messages", timeout=60)
            samples = exporter.samples()
            bus = (("source", "bus"),)
            assert samples[("statscache_exporter_source_connected", bus)] == 1
            assert samples[("statscache_exporter_messages_duplicate_total", bus)] == duplicates
            assert {
                dict(labels)["reason"]: int(v)
                for (name, labels), v in samples.items()
                if name == "statscache_exporter_messages_rejected_total" and v
            } == rejected
            on_metrics = Counter(
                {
                    dict(labels)["category"]: int(v)
                    for (name, labels), v in samples.items()
                    if name == "statscache_messages_by_category_total"
                }
            )
            assert on_metrics == by_category

            # the publisher goes away and comes back: the time between is a gap in the store
            def connected() -> float:
                return exporter.samples()[("statscache_exporter_source_connected", bus)]

            lost = time.time()
            pub.close()
            wait_for(lambda: connected() == 0, "the exporter to see the publisher go")
            pub = Publisher(pub.port)
            pub.wait_subscribed("")
            wait_for(lambda: connected() == 1, "the exporter to reconnect")
            back = time.time()
        assert exporter.returncode == 0
        assert store_by_category(exporter.store) == by_category
        db = sqlite3.connect(exporter.store)
        try:
            gaps = db.execute('SELECT source, start, "end" FROM gaps').fetchall()
        finally:
            db.close()
        assert len(gaps) == 1
        source, start, end = gaps[0]
        assert source == "bus" and lost <= start < end <= back
    finally:
        pub.close()
