"""The fedora-messaging source: Fedora's AMQP (RabbitMQ) bus, consumed with pika.

fedora-messaging's own consumer API acknowledges a message when the callback returns, but a
message may only be acknowledged once the flush that stored it has committed (else a crash
between the two would lose it). So this source speaks AMQP itself, with pika (which
fedora-messaging is built on), and does what fedora-messaging's consumer does otherwise:

- one ``pika.BlockingConnection`` in the source's thread; ``basic_qos(prefetch_count)``; a
  server-named exclusive auto-delete queue, or a durable named queue that keeps messages while
  the exporter is down; each binding's routing keys bound on its exchange; manual acks;
- each delivery becomes a fedora-messaging ``Message`` through
  what ``fedora_messaging.message.get_message`` makes of it (the schema class named by its
  headers, validated; each schema's check made once, and compiled, see ``_get_message``);
- a delivery that cannot become one (not JSON, bad headers, failed validation) is not dropped:
  it is handed over in a shape the pipeline rejects and counts (see :func:`_invalid`), and is
  acknowledged after the flush like any other, so a poison message is not redelivered forever.

Acknowledgements come from the pipeline thread. They are queued under a lock and sent by the
connection's thread (woken with ``add_callback_threadsafe``), in one ``basic_ack(multiple=True)``
for the delivered prefix that is due and one each for any others. Each connection is a
:class:`_Session`: an acknowledgement for a session whose connection has died is dropped (the
broker redelivers that message, and the pipeline skips it by id).

On any AMQP, socket or TLS error the source reports ``disconnected``, waits (exponential backoff
with jitter) and reconnects; once consuming again it reports ``connected``. After ``stop`` it
cancels its consumer but keeps the connection until ``closing`` (the final flush's
acknowledgements were made), sends them, and closes.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pika
import pika.credentials
import pika.exceptions
from fedora_messaging.exceptions import ValidationError
from fedora_messaging.message import INFO, get_class
from fedora_messaging.message import Message as FedoraMessage
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from statscache_exporter.config import FedoraMessagingSourceConfig
from statscache_exporter.sources import Ack, SourceContext
from statscache_exporter.sources.backoff import Backoff
from statscache_exporter.sources.schema_check import check_for

log = logging.getLogger(__name__)

#: Fedora's public, read-only broker (fedora-messaging's ``configs/fedora.toml``)
FEDORA_PUBLIC_URL = "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"
#: The files the fedora-public profile needs, by ``tls`` key. They are not in the
#: fedora-messaging wheel: they are in its source (``configs/`` of
#: https://github.com/fedora-infra/fedora-messaging), which Fedora's fedora-messaging RPM
#: installs in /etc/fedora-messaging.
FEDORA_PUBLIC_FILES = {
    "ca_cert": "cacert.pem",
    "certfile": "fedora-cert.pem",
    "keyfile": "fedora-key.pem",
}
#: Where the fedora-public profile looks for them, in this order.
FEDORA_PUBLIC_DIRS = (
    Path("/etc/fedora-messaging"),
    Path(__file__).resolve().parent.parent / "data" / "fedora-messaging",
)
#: fedora.toml: the public broker wants queue names in the UUID format
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

#: how long one ``process_data_events`` may block: bounds the reaction to ``stop``
POLL_SECONDS = 0.25
#: after ``stop``, how long to wait for ``closing`` (the final acknowledgements) at most
CLOSE_WAIT_SECONDS = 15.0
#: a TCP connect or TLS handshake that takes longer fails (and is retried)
SOCKET_TIMEOUT_SECONDS = 10.0
#: the key under which an invalid delivery is handed to the pipeline (see :func:`_invalid`)
INVALID_KEY = "invalid_fedora_messaging_message"


# --- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What a connection is made with, after the profile: the URL, the TLS files and the
    queue. ``problem``: why no connection can be tried (e.g. the profile's files are missing);
    reported like a connection failure and looked at again on each attempt."""

    url: str
    queue: str
    ca_cert: str = ""
    certfile: str = ""
    keyfile: str = ""
    problem: str | None = None


def resolve(
    config: FedoraMessagingSourceConfig, dirs: tuple[Path, ...] = FEDORA_PUBLIC_DIRS
) -> Settings:
    """The connection settings of a source config: the profile's, overridden by every key the
    config gives explicitly (``amqp_url``, ``tls.*``, ``queue``)."""
    tls = config.tls
    if config.profile != "fedora-public":
        return Settings(config.amqp_url, config.queue, tls.ca_cert, tls.certfile, tls.keyfile)
    files = {key: getattr(tls, key) for key in FEDORA_PUBLIC_FILES}
    missing = [key for key, value in files.items() if not value]
    problem = None
    if missing:
        found = next(
            (d for d in dirs if all((d / FEDORA_PUBLIC_FILES[k]).is_file() for k in missing)),
            None,
        )
        if found is None:
            names = ", ".join(FEDORA_PUBLIC_FILES[k] for k in missing)
            problem = (
                f"profile fedora-public needs {names} (Fedora's public client certificate and "
                f"CA), found in none of {', '.join(str(d) for d in dirs)}; they are in "
                "fedora-messaging's source (configs/ in "
                "https://github.com/fedora-infra/fedora-messaging) and Fedora's "
                "fedora-messaging package installs them in /etc/fedora-messaging; copy them "
                "there or set tls.ca_cert, tls.certfile and tls.keyfile"
            )
        else:
            files.update({k: str(found / FEDORA_PUBLIC_FILES[k]) for k in missing})
    return Settings(
        config.amqp_url or FEDORA_PUBLIC_URL,
        config.queue,
        files["ca_cert"],
        files["certfile"],
        files["keyfile"],
        problem,
    )


def safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            host = parts.netloc.rpartition("@")[2]
            netloc = f"{parts.username}:***@{host}"
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"
    return url


def connection_parameters(settings: Settings, name: str) -> pika.URLParameters:
    """pika's parameters for the settings; for amqps://, TLS as fedora-messaging sets it up
    (at least TLS 1.2, the host name checked, the CA file if given, and with a client
    certificate, the EXTERNAL mechanism instead of the URL's user and password)."""
    params = pika.URLParameters(settings.url)
    params.connection_attempts = 1
    params.socket_timeout = SOCKET_TIMEOUT_SECONDS
    params.client_properties = {
        "app": "statscache-exporter",
        "app_url": "https://github.com/fedora-infra/statscache",
        "information": f"source {name}",
    }
    if settings.url.startswith("amqps"):
        context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)
        if settings.ca_cert:
            context.load_verify_locations(cafile=settings.ca_cert)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        if settings.certfile and settings.keyfile:
            context.load_cert_chain(settings.certfile, settings.keyfile)
            params.credentials = pika.credentials.ExternalCredentials()
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    elif settings.ca_cert or settings.certfile:
        log.warning("source %s: tls is set but %s is not amqps://: not used", name, settings.url)
    return params


def root_cause(exc: BaseException) -> BaseException:
    """The error under pika's wrappers (``AMQPConnectionError`` around a connector error
    around, say, a ``ConnectionRefusedError``)."""
    for _ in range(8):
        inner: Any = None
        if isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args:
            inner = exc.args[0]
        elif isinstance(getattr(exc, "exception", None), BaseException):
            inner = exc.exception  # type: ignore[attr-defined]
        elif getattr(exc, "exceptions", None):
            inner = exc.exceptions[-1]  # type: ignore[attr-defined]
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def describe(exc: BaseException, settings: Settings) -> str:
    """Why a connection failed or was lost, in words for the log and the status (the URL
    without its password)."""
    where = safe_url(settings.url)
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return f"{where} refused the credentials: {exc.args[-1] if exc.args else exc}"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return f"{where} denied access (to the vhost?): {exc.args[-1] if exc.args else exc}"
    if isinstance(exc, pika.exceptions.ChannelClosed):
        return f"{where} closed the channel: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.ConnectionClosed):
        return f"{where} closed the connection: {exc.reply_code} {exc.reply_text}"
    cause = root_cause(exc)
    if isinstance(cause, socket.gaierror):
        host = urllib.parse.urlsplit(settings.url).hostname
        return f"cannot resolve {host} (DNS: {cause.strerror or cause}) for {where}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS with {where} failed: {cause}"
    if isinstance(cause, ConnectionRefusedError):
        return f"{where} refused the connection (nothing listens there?)"
    if isinstance(cause, TimeoutError | socket.timeout):
        return f"{where} did not answer in time"
    text = str(cause) or repr(cause)
    return f"{type(cause).__name__} with {where}: {text}"


# --- deliveries --------------------------------------------------------------------------


def to_message(queue: str, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> Any:
    """A delivery as the pipeline takes it: a fedora-messaging ``Message`` (what
    fedora-messaging's consumer hands its callbacks), or, when it cannot be one, a value the
    pipeline rejects (:func:`_invalid`). Never raises."""
    routing_key = method.routing_key or ""
    try:
        message = _get_message(routing_key, properties, body)
    except Exception as exc:  # fedora-messaging's ValidationError, or a header it trips on
        return _invalid(routing_key, properties, body, exc)
    message.queue = queue
    return message


def _get_message(routing_key: str, properties: BasicProperties, body: bytes) -> Any:
    """What ``fedora_messaging.message.get_message`` makes of a delivery (the schema class its
    headers name, else the base one; severity INFO and UTF-8 by default; headers and body
    checked against the class's schemas and the base ones), raising its ``ValidationError``
    alike (around the error ``jsonschema.validate`` raises), but with each schema's check made
    once and compiled where that is safe (:mod:`.schema_check`): ``jsonschema.validate``
    checks the schema itself on every call, which made a delivery cost ~6 ms (~0.3 ms with
    jsonschema's validators built once, ~0.05 ms compiled)."""
    headers = properties.headers if properties.headers is not None else {}
    properties.headers = headers
    schema = headers.get("fedora_messaging_schema")
    cls = get_class(schema) if isinstance(schema, str) else FedoraMessage
    severity = headers.get("fedora_messaging_severity", INFO)
    encoding = properties.content_encoding or "utf-8"
    try:
        decoded = json.loads(body.decode(encoding))
    except (LookupError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationError(exc) from exc
    message = cls(body=decoded, topic=routing_key, properties=properties, severity=severity)
    try:
        for schema_doc, instance in (
            (cls.headers_schema, message._headers),
            (FedoraMessage.headers_schema, message._headers),
            (cls.body_schema, message.body),
            (FedoraMessage.body_schema, message.body),
        ):
            check_for(schema_doc).validate(instance)
    except jsonschema.exceptions.ValidationError as exc:
        raise ValidationError(exc) from exc
    return message


def _invalid(routing_key: str, properties: BasicProperties, body: bytes, exc: Exception) -> Any:
    """What to hand over for a delivery fedora-messaging refuses (its consumer would drop it,
    so datanommer never stores it either): the pipeline must count it as rejected.

    A body that is not JSON goes as its bytes (rejected as ``not_json``). Any other failure
    (bad headers, a body its schema refuses) goes as an object with a topic and none of the
    message shapes' keys (rejected as ``unknown_shape``; its keys name :data:`INVALID_KEY`).
    Its body is not sent as it is: it might be a JSON message shape of its own."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    try:
        json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return bytes(body)
    return {
        "topic": routing_key or "(none)",
        "id": properties.message_id if isinstance(properties.message_id, str) else None,
        INVALID_KEY: f"{type(cause).__name__}: {str(cause)[:300]}",
    }


# --- one connection ----------------------------------------------------------------------


class _Lost(Exception):
    """The consumer went away without a connection error (the broker cancelled it)."""


@dataclass(eq=False)
class _Session:
    """One connection and its channel. Acknowledgements for it arrive from the pipeline thread
    (:meth:`ack`), are queued under ``lock`` and sent by the connection's thread
    (:meth:`send_acks`); once ``dead``, they are dropped."""

    connection: pika.BlockingConnection
    channel: BlockingChannel
    queue: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: delivery tags asked to be acknowledged, not yet taken by the connection's thread
    requested: list[int] = field(default_factory=list)
    wake_scheduled: bool = False
    dead: bool = False
    # the connection thread's own state:
    #: tags handed to the callback, in order, not yet acknowledged by a multiple ack
    delivered: deque[int] = field(default_factory=deque)
    #: tags due, not yet sent
    due: set[int] = field(default_factory=set)
    #: tags sent one by one while an earlier tag was still outstanding
    sent: set[int] = field(default_factory=set)
    acks_sent: int = 0

    def ack(self, tag: int) -> None:
        """Acknowledge ``tag`` (any thread): queue it, and wake the connection's thread once."""
        with self.lock:
            if self.dead:
                return
            self.requested.append(tag)
            if self.wake_scheduled:
                return
            self.wake_scheduled = True
        try:
            self.connection.add_callback_threadsafe(self.send_acks)
        except Exception:  # the connection is closed or closing: the broker will redeliver
            with self.lock:
                self.dead = True
            log.debug("dropped an acknowledgement for a closed connection", exc_info=True)

    def send_acks(self) -> None:
        """Send what is due (the connection's thread): ``multiple=True`` up to the last tag
        of the delivered prefix that is all due, one by one for the others."""
        with self.lock:
            tags, self.requested = self.requested, []
            self.wake_scheduled = False
            if self.dead:
                return
        if not tags or not self.channel.is_open:
            return
        self.due.update(tags)
        delivered, due, sent = self.delivered, self.due, self.sent
        last = None
        while delivered and (delivered[0] in due or delivered[0] in sent):
            tag = delivered.popleft()
            if tag in due:
                due.discard(tag)
                last = tag
            else:
                sent.discard(tag)
        if last is not None:
            self.channel.basic_ack(last, multiple=True)
            self.acks_sent += 1
        for tag in sorted(due):
            self.channel.basic_ack(tag)
            self.acks_sent += 1
            sent.add(tag)
        due.clear()

    def kill(self) -> None:
        """The connection is gone or going: drop every later acknowledgement."""
        with self.lock:
            self.dead = True
            self.requested.clear()


# --- the source --------------------------------------------------------------------------


class AmqpSource:
    """Consumes a fedora-messaging (AMQP) broker; see the module's docstring."""

    def __init__(
        self,
        config: FedoraMessagingSourceConfig,
        connect: Callable[[pika.URLParameters], pika.BlockingConnection] = (
            pika.BlockingConnection
        ),
        dirs: tuple[Path, ...] = FEDORA_PUBLIC_DIRS,
    ) -> None:
        self.config = config
        self.name = config.name
        self._connect = connect
        self._dirs = dirs
        # pika logs each failed attempt at ERROR, several times, with a traceback; this source
        # logs every failure once with its reason. Unless the logging config set pika's level.
        pika_log = logging.getLogger("pika")
        if pika_log.level == logging.NOTSET:
            pika_log.setLevel(logging.CRITICAL)
        if config.profile == "fedora-public" and config.queue and not _UUID.fullmatch(config.queue):
            log.warning(
                "source %s: Fedora's public broker wants queue names in the UUID format "
                "(fedora-messaging's fedora.toml); %r may be refused",
                self.name,
                config.queue,
            )
        self._invalid_count = 0
        #: the current session (tests look at it)
        self.session: _Session | None = None
        #: how many times a connection was consuming
        self.connections = 0

    def run(self, ctx: SourceContext) -> None:
        """Consume until ``ctx.stop``, reconnecting with backoff on every failure."""
        backoff = Backoff(
            self.config.reconnect.initial.total_seconds(),
            self.config.reconnect.max.total_seconds(),
        )
        failures = 0
        while not ctx.stop.is_set():
            settings = resolve(self.config, self._dirs)
            consumed_before = self.connections
            try:
                if settings.problem is not None:
                    raise _Unusable(settings.problem)
                self._consume(ctx, settings, backoff)
                return
            except Exception as exc:
                reason = str(exc) if isinstance(exc, _Unusable) else describe(exc, settings)
                ctx.status.disconnected(reason)
                if ctx.stop.is_set():
                    log.warning("source %s: connection lost while stopping: %s", self.name, reason)
                    return
                failures = 1 if self.connections > consumed_before else failures + 1
                wait = backoff.next()
                expected = isinstance(exc, pika.exceptions.AMQPError | OSError | _Unusable | _Lost)
                log.log(
                    logging.WARNING if expected else logging.ERROR,
                    "source %s: %s; retrying in %.1f s (failure %d in a row)",
                    self.name,
                    reason,
                    wait,
                    failures,
                    exc_info=not expected,
                )
            if ctx.stop.wait(wait):
                return

    def _consume(self, ctx: SourceContext, settings: Settings, backoff: Backoff) -> None:
        """One connection: set up, consume until stop, then wait for the final
        acknowledgements; raises on any failure (after marking the session dead)."""
        params = connection_parameters(settings, self.name)
        connection = self._connect(params)
        session: _Session | None = None
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.config.prefetch)
            if settings.queue:
                channel.queue_declare(settings.queue, durable=True, passive=False)
                queue = settings.queue
            else:
                declared = channel.queue_declare("", exclusive=True, auto_delete=True)
                queue = str(declared.method.queue)
            for binding in self.config.bindings:
                for key in binding.routing_keys:
                    channel.queue_bind(queue, binding.exchange, routing_key=key)
            session = _Session(connection, channel, queue)
            self.session = session
            cancelled: list[bool] = []
            channel.add_on_cancel_callback(lambda _frame: cancelled.append(True))
            consumer_tag = channel.basic_consume(
                queue,
                functools.partial(self._on_delivery, ctx, session),
                auto_ack=False,
            )
            self.connections += 1
            ctx.status.connected(f"to {safe_url(settings.url)}, queue {queue}")
            backoff.reset()
            while not ctx.stop.is_set():
                connection.process_data_events(time_limit=POLL_SECONDS)
                if cancelled:
                    raise _Lost(f"{safe_url(settings.url)} cancelled the consumer of {queue}")
            channel.basic_cancel(consumer_tag)
            deadline = time.monotonic() + CLOSE_WAIT_SECONDS
            while not ctx.closing.is_set() and time.monotonic() < deadline:
                connection.process_data_events(time_limit=POLL_SECONDS)
            if not ctx.closing.is_set():
                log.warning(
                    "source %s: the final acknowledgements did not come within %.0f s; "
                    "closing anyway (the broker redelivers what is unacknowledged)",
                    self.name,
                    CLOSE_WAIT_SECONDS,
                )
            connection.process_data_events(time_limit=0)  # acknowledgements queued last
            session.send_acks()
            session.kill()
            connection.close()
            log.info("source %s: closed the connection to %s", self.name, safe_url(settings.url))
        except BaseException:
            if session is not None:
                session.kill()
            try:
                if connection.is_open:
                    connection.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)
            raise

    def _on_delivery(
        self,
        ctx: SourceContext,
        session: _Session,
        _channel: BlockingChannel,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        """A delivery (the connection's thread): hand it over with its acknowledgement. After
        ``stop`` nothing more is handed over; what is left unacknowledged is redelivered."""
        tag = int(method.delivery_tag)
        session.delivered.append(tag)
        if ctx.stop.is_set():
            return
        raw = to_message(session.queue, method, properties, body)
        if isinstance(raw, bytes | dict):
            self._invalid_count += 1
            n = self._invalid_count
            if n <= 10 or n % 1000 == 0:
                log.warning(
                    "source %s: delivery %s on %r is not a valid fedora-messaging message "
                    "(%s; %d so far): handed over to be rejected",
                    self.name,
                    properties.message_id,
                    method.routing_key,
                    "the body is not JSON" if isinstance(raw, bytes) else raw[INVALID_KEY],
                    n,
                )
        ctx.emit(raw, _ack_of(session, tag))


def _ack_of(session: _Session, tag: int) -> Ack:
    """The acknowledgement of one delivery, callable from any thread."""
    return lambda: session.ack(tag)


class _Unusable(Exception):
    """The settings cannot make a connection (a missing file); retried like a failure."""
