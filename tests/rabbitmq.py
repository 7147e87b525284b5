"""A real RabbitMQ for integration tests: a private node on 127.0.0.1, free ports, every file
under a directory the caller gives, so tests talk to the broker Fedora runs instead of a mock.

One :class:`Broker` is meant to be shared by a whole pytest session (it takes ~10 s to start);
each test isolates itself in a fresh vhost (:meth:`Broker.new_vhost`). A session fixture is a
few lines in the test module or conftest::

    @pytest.fixture(scope="session")
    def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
        yield from shared_broker(tmp_path_factory)

The node runs as a child process of the test (not ``-detached``), with its own epmd on its own
port, its own Erlang cookie (``HOME`` is a temporary directory) and its own config: nothing of
the system-wide ``rabbitmq-server`` service (``/etc/rabbitmq``, ``/var/lib/rabbitmq``, port 5672,
the epmd on 4369) is used or touched. :meth:`Broker.stop` and :meth:`Broker.start` restart it on
the same data and ports, so durable queues and their persistent messages survive (outage tests).

Debian's ``/usr/sbin/rabbitmq-server`` and ``rabbitmqctl`` are wrappers that switch to the
``rabbitmq`` user (when root) or refuse to run (any other user), and ``cd /var/lib/rabbitmq``:
the real scripts in ``/usr/lib/rabbitmq/bin`` are run instead.

A missing ``rabbitmq-server`` skips the test on a developer machine and fails it in CI
(``CI=true``), like every server of :mod:`servers`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
import pytest
from servers import free_port, require_binary
from servers import missing as _missing

if TYPE_CHECKING:
    from fedora_messaging.message import Message

#: Where Debian (and Fedora) keep the real RabbitMQ scripts, behind the /usr/sbin wrappers.
_RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
#: Searched after PATH for rabbitmq-server (Debian installs it in /usr/sbin, often not on a
#: developer's PATH) and for epmd.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/lib/erlang/bin")

#: How long the broker may take to answer ``await_startup`` (it usually needs 9-12 s).
START_TIMEOUT = 60.0

#: The broker's config (rabbitmq.conf, "sysctl" format). The disk alarm would block every
#: publisher when the test machine's disk is nearly full: its limit is set low.
_RABBITMQ_CONF = """\
listeners.tcp.1 = 127.0.0.1:{port}
loopback_users.guest = true
disk_free_limit.absolute = 1MB
log.console = false
log.file = {log}
log.file.level = info
"""


def _find(name: str) -> str | None:
    """An executable ``name`` in /usr/lib/rabbitmq/bin, on PATH, or in the extra directories."""
    real = _RABBITMQ_BIN / name
    if os.access(real, os.X_OK):
        return str(real)
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_DIRS])
    return shutil.which(name, path=search)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _kill_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` to the process group of ``process`` (started with ``start_new_session``), as long
    as its leader is not reaped yet (after that the group id could belong to someone else)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def _vhost_of(url: str) -> str:
    """The vhost an AMQP URL names (``/`` when the path is empty)."""
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


@dataclass
class Broker:
    """A private RabbitMQ node; make one with :meth:`create` (or :func:`rabbitmq_broker`).

    Files: ``root/home`` (HOME: the Erlang cookie), ``root/mnesia`` (queues, messages),
    ``root/log`` (the broker's log and ``server.out``, its console), ``root/rabbitmq.conf``,
    ``root/enabled_plugins`` (none), ``root/rabbitmq-env.conf`` (empty, so that the system's
    ``/etc/rabbitmq/rabbitmq-env.conf`` is not read)."""

    root: Path
    node: str
    amqp_port: int
    dist_port: int
    epmd_port: int
    server_bin: str
    ctl_bin: str
    epmd_bin: str
    process: subprocess.Popen[bytes] | None = None
    epmd_process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    #: Seconds each :meth:`start` took until ``await_startup`` answered.
    startup_seconds: list[float] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path) -> Broker:
        """A stopped broker with its files under ``root`` (created) and free ports chosen now.
        Skips (or, in CI, fails) the test when RabbitMQ is not installed."""
        server_bin = _find("rabbitmq-server") or require_binary("rabbitmq-server")
        ctl_bin = str(Path(server_bin).with_name("rabbitmqctl"))
        if not os.access(ctl_bin, os.X_OK):
            _missing(f"rabbitmqctl not found next to {server_bin} (package rabbitmq-server)")
        epmd_bin = _find("epmd")
        if epmd_bin is None:
            _missing("epmd not found on PATH or in /usr/lib/erlang/bin (package erlang-base)")
        root.mkdir(parents=True, exist_ok=True)
        broker = cls(
            root=root,
            node=f"rabbit-{secrets.token_hex(4)}@localhost",
            amqp_port=free_port(),
            dist_port=free_port(),
            epmd_port=free_port(),
            server_bin=server_bin,
            ctl_bin=ctl_bin,
            epmd_bin=epmd_bin,
        )
        for sub in ("home", "mnesia", "log"):
            (root / sub).mkdir(exist_ok=True)
        (root / "rabbitmq.conf").write_text(
            _RABBITMQ_CONF.format(port=broker.amqp_port, log=broker.log)
        )
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        return broker

    # --- addresses and files ---------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        """The default vhost ``/``; tests should rather use their own (:meth:`new_vhost`)."""
        return self.vhost_url("/")

    def vhost_url(self, vhost: str) -> str:
        """The AMQP URL of ``vhost`` as guest (allowed from loopback only, which this is)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{urllib.parse.quote(vhost, safe='')}"

    @property
    def log(self) -> Path:
        """The broker's own log."""
        return self.root / "log" / "rabbit.log"

    @property
    def console(self) -> Path:
        """What rabbitmq-server prints (start-up banner, crashes before logging starts)."""
        return self.root / "log" / "server.out"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        """The environment of the node and of rabbitmqctl: the caller's, without any RABBITMQ_*
        or ERL_* setting, and with every path, port and address of this broker."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_")) and k != "CONF_ENV_FILE"
        }
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update(
            HOME=str(self.root / "home"),  # the Erlang cookie: private to this broker
            LC_ALL="C.UTF-8",  # else the CLI warns about a latin1 VM
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback,
            RABBITMQ_CTL_ERL_ARGS=loopback,
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),  # none
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.root / "plugins-expand"),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_LOGS=str(self.log),
            RABBITMQ_PID_FILE=str(self.root / "rabbitmq.pid"),
            ERL_CRASH_DUMP=str(self.root / "log" / "erl_crash.dump"),
        )
        return env

    # --- rabbitmqctl -------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 30.0, check: bool = True) -> str:
        """``rabbitmqctl -n NODE -q ARGS`` (each call boots an Erlang VM: ~0.7 s); its stdout.
        ``check``: a non-zero exit fails with its output."""
        result = subprocess.run(
            [self.ctl_bin, "-n", self.node, "-q", *args],
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"rabbitmqctl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def new_vhost(self, name: str | None = None) -> str:
        """A new, empty vhost (``name``, else a random one) where guest may do anything: the AMQP
        URL of it. One per test keeps tests on a shared broker apart (~1.5 s)."""
        vhost = name or f"test-{secrets.token_hex(6)}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.vhost_url(vhost)

    def queue_depth(self, vhost_url: str, queue: str) -> tuple[int, int]:
        """(messages ready, messages delivered and not acknowledged) of ``queue`` in the vhost of
        ``vhost_url``. A queue that does not exist raises :class:`LookupError` (so that
        ``servers.wait_until`` keeps polling while a consumer has not declared it yet)."""
        vhost = _vhost_of(vhost_url)
        out = self.ctl(
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        )
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and fields[0] == queue:
                return int(fields[1]), int(fields[2])
        raise LookupError(f"no queue {queue!r} in vhost {vhost!r}: {out!r}")

    # --- life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start epmd and the node (same data, ports and name as before) and wait until it
        accepts AMQP connections; fail, with its console and log, after ``timeout`` seconds."""
        assert self.process is None, "already running"
        self.runs += 1
        began = time.monotonic()
        try:
            self._start_epmd()
            with self.console.open("ab") as out:
                out.write(f"--- run {self.runs} ---\n".encode())
                out.flush()
                # In the foreground (no -detached), the script forwards SIGTERM to the VM as a
                # clean shutdown. Its own session: a ^C to pytest does not reach it before
                # the fixture's teardown stops it, and the whole group can be killed.
                self.process = subprocess.Popen(
                    [self.server_bin],
                    env=self.env(),
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._await_startup(began + timeout)
        except BaseException:
            self._terminate()
            raise
        self.startup_seconds.append(time.monotonic() - began)

    def _start_epmd(self) -> None:
        """This node's own epmd, as a child in the foreground (the VM would otherwise start a
        daemon epmd that outlives it), listening on 127.0.0.1 only."""
        self.epmd_process = subprocess.Popen(
            [self.epmd_bin, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.epmd_process.poll() is not None:
                pytest.fail(f"epmd exited {self.epmd_process.returncode} on port {self.epmd_port}")
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"epmd does not listen on 127.0.0.1:{self.epmd_port}")
            time.sleep(0.02)

    def _await_startup(self, deadline: float) -> None:
        process = self.process
        assert process is not None
        last = ""
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"rabbitmq-server exited {process.returncode} at start:\n"
                    f"{_tail(self.console)}\n--- log ---\n{_tail(self.log)}"
                )
            try:
                result = subprocess.run(
                    [self.ctl_bin, "-n", self.node, "-q", "await_startup", "--timeout", "2"],
                    env=self.env(),
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=15,
                )
            except subprocess.TimeoutExpired:
                last = "rabbitmqctl await_startup did not answer in 15 s"
            else:
                if result.returncode == 0:
                    return
                last = (result.stdout + result.stderr).strip()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"RabbitMQ node {self.node} not started in time; last: {last}\n"
                    f"{_tail(self.console)}\n--- log ---\n{_tail(self.log)}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``: queues and persistent messages are
        saved), then make sure: SIGTERM, SIGKILL to its process group if it lingers. Then its
        epmd. Idempotent."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
                self.ctl("stop", timeout=timeout, check=False)
        self._terminate(grace=timeout)

    def kill(self) -> None:
        """SIGKILL to the node (a crash: no clean shutdown), then stop its epmd. What the
        broker had confirmed to publishers is on disk and survives :meth:`start`."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGKILL)
        self._terminate()

    def _terminate(self, grace: float = 30.0) -> None:
        """Give the node ``grace`` seconds to exit (it may be shutting down), then SIGTERM and
        SIGKILL its process group; then the same, without the wait, for its epmd."""
        if self.process is not None:
            _reap(self.process, grace)
            self.process = None
        if self.epmd_process is not None:
            _reap(self.epmd_process, 0)
            self.epmd_process = None


def _reap(process: subprocess.Popen[bytes], grace: float) -> None:
    """Wait ``grace`` seconds for ``process`` to exit; then SIGTERM its process group, and
    SIGKILL it after 10 s more."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            _kill_group(process, sig)
            grace = 10
    process.wait(timeout=10)


@contextlib.contextmanager
def rabbitmq_broker(root: Path) -> Iterator[Broker]:
    """A private RabbitMQ node with its files under ``root``, started when yielded, stopped
    at the end (even when the test failed)."""
    broker = Broker.create(root)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """For a session (or module) fixture: ``yield from shared_broker(tmp_path_factory)``."""
    with rabbitmq_broker(tmp_path_factory.mktemp("rabbitmq")) as broker:
        yield broker


# --- clients -------------------------------------------------------------------------------


@dataclass
class RawMessage:
    """One message as plain pika got it."""

    routing_key: str
    properties: Any  # pika.BasicProperties
    body: bytes


def _connect(url: str) -> Any:
    """A pika BlockingConnection to ``url`` (no retries: the broker is expected up)."""
    return pika.BlockingConnection(pika.URLParameters(url))


def declare_queue(
    url: str,
    queue: str,
    routing_keys: Iterable[str] = ("#",),
    durable: bool = True,
    exchange: str = "amq.topic",
) -> None:
    """Declare ``queue`` (durable by default, as a consumer of the real bus would) and bind it
    to ``exchange`` with each routing key, so that what is published next is kept for it."""
    with contextlib.closing(_connect(url)) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=durable)
        for key in routing_keys:
            channel.queue_bind(queue, exchange, routing_key=key)


def get_all(url: str, queue: str) -> list[RawMessage]:
    """Every message ready in ``queue`` now, taken off it (acknowledged), in queue order."""
    out: list[RawMessage] = []
    with contextlib.closing(_connect(url)) as connection:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append(RawMessage(method.routing_key, properties, body))


def publish_raw(
    url: str,
    routing_key: str,
    body: bytes,
    properties: Any = None,
    exchange: str = "amq.topic",
) -> None:
    """Publish ``body`` as it is with plain pika (for bodies fedora-messaging would refuse to
    send: not JSON, wrong schema, no headers), waiting for the broker's confirmation.
    ``properties``: a ``pika.BasicProperties``; by default only persistent delivery."""
    if properties is None:
        properties = pika.BasicProperties(delivery_mode=2)
    with contextlib.closing(_connect(url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=False)


@contextlib.contextmanager
def fedora_messaging_to(url: str, timeout: float = 30.0) -> Iterator[None]:
    """For the block, ``fedora_messaging.api.publish`` sends to ``amq.topic`` at ``url``.

    fedora-messaging (3.x) publishes from the Twisted reactor that crochet runs in a thread,
    through one ``FedoraMessagingServiceV2`` it creates at its first publish from
    ``config.conf["amqp_url"]`` and then keeps in ``api._twisted_service`` for the process's
    life: setting the URL in the config is not enough once anything was published. So the
    config is set to fedora-messaging's defaults (no system or ``FEDORA_MESSAGING_CONF`` file
    can add a topic prefix or TLS) plus ``url``, a service for ``url`` is put in its place, and
    at the end that service is stopped and both the config and the previous service are
    restored."""
    import crochet
    from fedora_messaging import api
    from fedora_messaging import config as fm_config
    from fedora_messaging.twisted.service import FedoraMessagingServiceV2

    crochet.setup()  # what api.publish does first; idempotent
    conf = fm_config.conf
    saved_conf = copy.deepcopy(conf.copy())  # copy() loads the config file if not yet done
    saved_service = api._twisted_service
    conf.update(copy.deepcopy(fm_config.DEFAULTS))
    conf["amqp_url"] = url
    conf["publish_exchange"] = "amq.topic"

    def start() -> FedoraMessagingServiceV2:
        service = FedoraMessagingServiceV2(url)
        service.startService()  # type: ignore[no-untyped-call]
        return service

    service: FedoraMessagingServiceV2 | None = None
    try:
        service = crochet.run_in_reactor(start)().wait(timeout)
        api._twisted_service = service
        yield
    finally:
        api._twisted_service = saved_service
        if service is not None:
            with contextlib.suppress(crochet.TimeoutError):
                crochet.run_in_reactor(service.stopService)().wait(timeout)
        conf.update(saved_conf)


def publish(url: str, messages: Iterable[Message], timeout: int = 30) -> None:
    """Publish each message through the real ``fedora_messaging.api.publish`` to ``amq.topic``
    at ``url`` (one connection for them all), each confirmed by the broker before the next.
    A broker that does not confirm within ``timeout`` seconds raises
    ``fedora_messaging.exceptions.PublishTimeout``."""
    from fedora_messaging import api

    with fedora_messaging_to(url, timeout):
        for message in messages:
            api.publish(message, timeout=timeout)
