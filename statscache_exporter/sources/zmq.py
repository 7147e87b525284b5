"""The fedmsg bus: ZeroMQ SUB sockets connected to fedmsg publishers, as fedmsg subscribes.

Why not ``fedmsg.core.FedMsgContext.tail_messages``: it polls without a timeout (it cannot be
stopped until a message arrives), subscribes to a single topic, unpacks every message as
exactly two frames (anything else raises out of the generator and ends it) and says nothing
about connections. So the sockets are built here with pyzmq the way fedmsg builds them: one
SUB socket per endpoint, ``connect``ed, subscribed by topic prefix, with fedmsg's socket
options (receive high-water mark, TCP keepalive, reconnect interval and its maximum, which
fedmsg calls ``high_water_mark``, ``zmq_tcp_keepalive*`` and ``zmq_reconnect_ivl*``). The wire
format is fedmsg's: a multipart message ``[topic, envelope as UTF-8 JSON]``. fedmsg's library
is used where it adds something: signature validation (``fedmsg.crypto.validate``, with
fedmsg's own crypto configuration).

What is emitted, per ZeroMQ message:

- two frames whose second is a JSON object: that object, the fedmsg envelope, unchanged (the
  pipeline normalizes envelopes; the envelope's own ``topic`` is the message's topic);
- two frames whose second is not UTF-8 JSON: those bytes, which the pipeline rejects and
  counts as ``not_json``; JSON that is not an object is emitted parsed (``not_object``);
- any other number of frames, or (with ``validate_signatures``) an envelope whose signature
  does not validate or whose topic differs from the topic frame: a line of text saying so,
  which is not JSON, so the pipeline rejects and counts it (as ``not_json``; the pipeline has no
  reason of its own for these yet). The source logs what it was (the first ten of each kind,
  then every thousandth). Nothing is dropped silently and nothing stops the source.

Connection state comes from a ZeroMQ socket monitor on each socket: an endpoint is up once the
ZMTP handshake with it succeeded (a TCP connection to something that is not a ZeroMQ
publisher does not count), and down when it disconnects, a connection attempt fails or a
handshake fails. The source is *connected* while every endpoint is up: with one endpoint down,
that publisher's messages are being missed, which is what a disconnection means to the daemon
(it records the time until the reconnection as a gap). ZeroMQ reconnects by itself, waiting
``reconnect.initial``, doubling up to ``reconnect.max``; the source never recreates a socket.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import operator
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from statscache_exporter.config import ConfigError, FedmsgSourceConfig
from statscache_exporter.sources import SourceContext, Status

log = logging.getLogger(__name__)

#: how long one poll waits: ``ctx.stop`` is looked at least this often (milliseconds)
POLL_MS = 100
#: messages read from one socket before the others (and the stop flag) get a turn
BATCH = 500
#: the monitor events that say an endpoint is up or down
_UP = zmq.EVENT_HANDSHAKE_SUCCEEDED
_DOWN: dict[int, str] = {
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_CONNECT_RETRIED: "cannot connect (retrying)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "ZeroMQ handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "ZeroMQ handshake failed (protocol)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "ZeroMQ handshake failed (authentication)",
}
_MONITORED = functools.reduce(operator.or_, _DOWN, _UP)

#: numbers the monitors' inproc addresses (next() on a count is atomic)
_monitor_ids = itertools.count(1)


class FedmsgSource:
    """Subscribes to fedmsg publishers and emits what they publish (see the module doc).

    ``fedmsg_config``: fedmsg's configuration for signature validation (``crypto_backend``,
    ``crypto_validate_backends``, ``ca_cert_location``, ``crl_location``, ``routing_policy``,
    ``gpg_home``, ...). By default it is read the way fedmsg reads it, from
    ``$FEDMSG_CONFIG`` or ``/etc/fedmsg.d/*.py`` (where fedmsg deployments keep ``ssl.py``),
    over fedmsg's defaults; it is only read when ``validate_signatures`` is on.
    """

    def __init__(
        self, config: FedmsgSourceConfig, fedmsg_config: Mapping[str, Any] | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        #: fedmsg's settings for ``fedmsg.crypto.validate``; None: no validation
        self.crypto: dict[str, Any] | None = (
            crypto_settings(config, fedmsg_config) if config.validate_signatures else None
        )
        #: messages emitted as rejectable text, by kind ("frames", "signature")
        self.unreadable: Counter[str] = Counter()

    def run(self, ctx: SourceContext) -> None:
        """Receive until ``ctx.stop`` is set (looked at every :data:`POLL_MS` ms)."""
        zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        endpoints: list[_Endpoint] = []
        try:
            for address in dict.fromkeys(self.config.endpoints):  # each once
                endpoints.append(self._subscribe(zctx, address))
            self._receive(ctx, endpoints)
        finally:
            for ep in endpoints:
                ep.close()
            zctx.destroy(linger=0)

    # --- sockets ---------------------------------------------------------------------------

    def _subscribe(self, zctx: zmq.Context[zmq.Socket[bytes]], address: str) -> _Endpoint:
        """A SUB socket connected to ``address`` with fedmsg's options, and its monitor."""
        c = self.config
        sock = zctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        # fedmsg.utils.set_high_water_mark, set_tcp_keepalive and set_tcp_reconnect set
        # these from high_water_mark, zmq_tcp_keepalive[_idle|_intvl|_cnt] and
        # zmq_reconnect_ivl[_max]; here 0 is an explicit "no limit" rather than "not set".
        sock.setsockopt(zmq.RCVHWM, c.high_water_mark)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1 if c.tcp_keepalive else 0)
        if c.tcp_keepalive:
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, _whole_seconds(c.tcp_keepalive_idle))
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, _whole_seconds(c.tcp_keepalive_interval))
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, c.tcp_keepalive_count)
        sock.setsockopt(zmq.RECONNECT_IVL, _milliseconds(c.reconnect.initial))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _milliseconds(c.reconnect.max))
        for topic in c.topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
        monitor_address = f"inproc://statscache-fedmsg-monitor-{next(_monitor_ids)}"
        monitor = sock.get_monitor_socket(_MONITORED, monitor_address)
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            raise ConfigError(f"source {self.name}: endpoint {address!r}: {exc}") from None
        log.info("source %s: subscribing to %s (topics %s)", self.name, address, c.topics)
        return _Endpoint(address, sock, monitor)

    def _receive(self, ctx: SourceContext, endpoints: list[_Endpoint]) -> None:
        poller = zmq.Poller()
        for ep in endpoints:
            poller.register(ep.monitor, zmq.POLLIN)
            poller.register(ep.socket, zmq.POLLIN)
        state = Connections([ep.address for ep in endpoints], ctx.status)
        while not ctx.stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            for ep in endpoints:
                if ep.monitor in ready:  # before the data: connected comes before messages
                    while ep.monitor.poll(0):
                        event = recv_monitor_message(ep.monitor)
                        state.event(ep.address, int(event["event"]), int(event["value"]))
                if ep.socket in ready:
                    for _ in range(BATCH):
                        try:
                            frames = ep.socket.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        ctx.emit(self.decode(frames, ep.address))
                        if ctx.stop.is_set():
                            return

    # --- messages --------------------------------------------------------------------------

    def decode(self, frames: list[bytes], endpoint: str = "") -> Any:
        """What to emit for one ZeroMQ message (see the module doc)."""
        if len(frames) != 2:
            preview = b" | ".join(f[:60] for f in frames[:3])
            return self._unreadable(
                "frames",
                f"{len(frames)} ZeroMQ frame(s) from {endpoint}, expected 2 (topic, JSON): "
                f"{preview!r}",
            )
        topic_frame, payload = frames
        try:
            envelope = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return payload  # the pipeline rejects it as not_json, with the parser's reason
        if self.crypto is None or not isinstance(envelope, dict):
            return envelope
        problem = self._signature_problem(topic_frame, envelope)
        if problem is not None:
            return self._unreadable(
                "signature",
                f"{problem}: message {envelope.get('msg_id')!r} on "
                f"{envelope.get('topic')!r} from {endpoint}",
            )
        return envelope

    def _signature_problem(self, topic_frame: bytes, envelope: dict[str, Any]) -> str | None:
        """Why the envelope fails validation, or None when it passes. Like fedmsg's
        consumers, the topic frame (what subscriptions matched) must be the signed topic."""
        import fedmsg.crypto

        assert self.crypto is not None
        if topic_frame.decode("utf-8", "replace") != envelope.get("topic"):
            return "topic frame differs from the envelope's topic"
        try:
            valid = fedmsg.crypto.validate(envelope, **self.crypto)
        except Exception as exc:  # a malformed signature or certificate is invalid, not fatal
            return f"signature check failed ({exc!r:.200})"
        return None if valid else "invalid signature"

    def _unreadable(self, kind: str, what: str) -> str:
        self.unreadable[kind] += 1
        n = self.unreadable[kind]
        if n <= 10 or n % 1000 == 0:
            log.warning(
                "source %s: %s (%s, %d so far), passed on to be rejected", self.name, what, kind, n
            )
        # never JSON: the pipeline rejects it and counts it for this source
        return f"fedmsg {kind}: {what}"


@dataclass
class _Endpoint:
    address: str
    socket: zmq.Socket[bytes]
    monitor: zmq.Socket[bytes]

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disable_monitor()
        self.monitor.close(0)
        self.socket.close(0)


class Connections:
    """Which endpoints are up, from their monitors' events; tells ``status`` when "every
    endpoint is up" starts to hold (connected) and whenever an endpoint goes or stays down
    (disconnected; the status itself only acts on a change)."""

    def __init__(self, endpoints: list[str], status: Status) -> None:
        self.up = dict.fromkeys(endpoints, False)
        self.status = status
        self._all_up = False

    def event(self, endpoint: str, event: int, value: int = 0) -> None:
        if event == _UP:
            self.up[endpoint] = True
            if all(self.up.values()) and not self._all_up:
                self._all_up = True
                self.status.connected(f"to {', '.join(self.up)}")
        elif event in _DOWN:
            self.up[endpoint] = False
            self._all_up = False
            what = _DOWN[event]
            if event == zmq.EVENT_CONNECT_RETRIED:
                what = f"cannot connect (retrying in {value} ms)"
            n_up = sum(self.up.values())
            self.status.disconnected(f"{endpoint}: {what}; {n_up}/{len(self.up)} endpoints up")


def crypto_settings(
    config: FedmsgSourceConfig, fedmsg_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """fedmsg's configuration for ``fedmsg.crypto.validate``, checked: every validation
    backend it names must work here, or the source cannot start (a validating source that
    rejects every message would look like a quiet bus). Also selects those backends in
    fedmsg.crypto (a process-wide choice in fedmsg)."""
    import fedmsg.config
    import fedmsg.crypto

    where = f"source {config.name}: validate_signatures"
    loaded = fedmsg.config.FedmsgConfig()
    try:
        loaded.load_config(dict(fedmsg_config) if fedmsg_config is not None else None)
    except ValueError as exc:
        raise ConfigError(f"{where}: fedmsg's configuration: {exc}") from None
    settings = dict(loaded)
    settings["validate_signatures"] = True
    backends = settings.get("crypto_validate_backends") or [settings.get("crypto_backend")]
    for backend in backends:
        if backend == "x509":
            x509 = fedmsg.crypto.x509
            if x509.validate is x509._disabled_validate:
                raise ConfigError(
                    f"{where}: fedmsg cannot check X.509 signatures here: it needs "
                    "cryptography with a pyOpenSSL that has load_crl (before 24.3), or M2Crypto"
                )
        elif backend == "gpg":
            if shutil.which("gpg") is None:
                raise ConfigError(f"{where}: fedmsg's gpg backend needs the gpg program")
        else:
            raise ConfigError(f"{where}: unknown fedmsg crypto backend {backend!r}")
    fedmsg.crypto.init(**settings)
    return settings


def _whole_seconds(d: timedelta) -> int:
    return max(1, round(d.total_seconds()))


def _milliseconds(d: timedelta) -> int:
    return max(1, round(d.total_seconds() * 1000))
