"""Running inside ``fedmsg-hub``, as statscache did: a moksha consumer that feeds the exporter.

``fedmsg-hub`` (moksha.hub) loads every class in the ``moksha.consumer`` entry-point group and
runs those whose ``config_key`` is true in fedmsg's configuration (``/etc/fedmsg.d/*.py``,
``./fedmsg.d/*.py``, ...). This one is :class:`StatscacheConsumer`; fedmsg's configuration
says::

    config = {
        "statscache_exporter.consumer.enabled": True,
        # the exporter's YAML config (default: $STATSCACHE_CONFIG, else ./config.yaml)
        "statscache_exporter.config": "/etc/statscache-exporter/config.yaml",
        # topics to subscribe to, moksha style ("*": all; default)
        "statscache_exporter.topic": "*",
    }

The consumer runs the whole exporter (:class:`~statscache_exporter.daemon.Daemon`: the
pipeline thread, the HTTP server, the InfluxDB sender, and any sources the YAML config names)
and hands each message's envelope (``message['body']``) to the pipeline through the same
``emit`` a source uses, as the source ``fedmsg-hub``. The hub owns the ZeroMQ sockets, their
options and signature validation (``validate_signatures`` in fedmsg's configuration: moksha
logs and drops what fails it); the hub does not tell its consumers about connections, so the
source counts as connected from start to stop. It is a live source like a configured one: with
``backfill.enabled``, the gap filler fetches from datagrepper what was missed before the start.

Stopping: moksha stops its consumers on SIGINT and SIGHUP. The consumer then lets moksha's
worker threads hand over every message already queued for it, stops the pipeline thread, and
flushes once more, so nothing the hub delivered is lost. Two things in moksha's signal
handling are mended while the consumer runs: SIGTERM (what systemd sends) is left alone by
moksha, which would end the process with no final flush, so when nothing else handles it, it
does what SIGINT does; and moksha's handler stops the Twisted reactor from the signal handler,
which does not wake the reactor, so a hub whose publishers are quiet would not stop: the
handlers are run inside the reactor (``callFromThread``) instead.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

import fedmsg.consumers

from statscache_exporter import config as configuration
from statscache_exporter.daemon import CLOSE_TIMEOUT, Daemon
from statscache_exporter.sources import SourceContext

log = logging.getLogger(__name__)

#: the source name the hub's messages are counted under
SOURCE_NAME = "fedmsg-hub"
ENABLED_KEY = "statscache_exporter.consumer.enabled"
CONFIG_KEY = "statscache_exporter.config"
TOPIC_KEY = "statscache_exporter.topic"


class StatscacheConsumer(fedmsg.consumers.FedmsgConsumer):  # type: ignore[misc]
    """The exporter as a fedmsg-hub consumer (see the module doc)."""

    config_key = ENABLED_KEY
    topic: Any = "*"

    def __init__(self, hub: Any) -> None:
        self.exporter: ExporterThread | None = None
        self._workers = threading.Condition()
        self._working = 0  # moksha worker threads running for this consumer
        self._stopped = False
        if not hub.config.get(self.config_key, False):
            super().__init__(hub)  # says "disabled by config" and leaves it uninitialized
            return
        self.topic = hub.config.get(TOPIC_KEY, self.topic)
        path = configuration.config_path(hub.config.get(CONFIG_KEY))
        try:
            config = configuration.load(path)
        except configuration.ConfigError as exc:
            log.error("statscache-exporter: configuration error in %s: %s", path, exc)
            raise
        # The exporter runs before the hub subscribes for us (in super().__init__), so no
        # message can arrive for a consumer that could not start.
        self.exporter = ExporterThread(config)
        self._source = self.exporter.start()
        try:
            super().__init__(hub)
        except BaseException:
            self.exporter.stop()
            raise
        self._source.status.connected("through fedmsg-hub")
        # moksha has no type hints; imported by name so that no mypy setting is needed
        reactor = importlib.import_module("moksha.hub.reactor").reactor
        reactor.callWhenRunning(_stop_on_signals, reactor)
        log.info(
            "statscache-exporter runs in fedmsg-hub with config %s, topic %r", path, self.topic
        )

    def consume(self, message: dict[str, Any]) -> None:
        """Hand the envelope to the pipeline (blocks while its queue is full)."""
        self._source.emit(message["body"])

    def _work_loop(self) -> None:
        """moksha's worker loop, counted, so that :meth:`stop` knows when every message
        queued for this consumer has been handed over."""
        with self._workers:
            self._working += 1
        try:
            super()._work_loop()
        finally:
            with self._workers:
                self._working -= 1
                self._workers.notify_all()

    def stop(self) -> None:
        """The hub is stopping: hand over what moksha still holds, flush, close."""
        if self._stopped:
            return
        self._stopped = True
        # moksha's stop queues one StopIteration per worker, after the messages still
        # queued, and closes the hub (its sockets: nothing more comes in)
        super().stop()
        if self.exporter is None:
            return
        deadline = time.monotonic() + CLOSE_TIMEOUT
        with self._workers:
            while self._working:  # each exits at its StopIteration, after what came before
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "fedmsg-hub's workers did not finish within %.0f s; %d message(s) "
                        "still queued are not counted",
                        CLOSE_TIMEOUT,
                        self.incoming.qsize(),
                    )
                    break
                self._workers.wait(min(left, 0.1))
        self.exporter.stop()


class ExporterThread:
    """The exporter's :class:`~statscache_exporter.daemon.Daemon` in a thread of its own:
    what ``statscache-exporter run`` does in its main thread, without the signal handlers
    (the hub owns those). The daemon is created, run and shut down in that one thread
    because the store's SQLite connection belongs to the thread that opened it."""

    def __init__(self, config: configuration.Config) -> None:
        self.config = config
        self.daemon: Daemon | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._source: SourceContext | None = None
        self.thread = threading.Thread(target=self._run, name="statscache-exporter", daemon=True)

    def start(self) -> SourceContext:
        """Start the daemon (store, HTTP server, InfluxDB sender, configured sources, the
        pipeline loop); what the hub's messages are emitted through. Raises what the daemon
        raised at start (an unusable store, a taken port, a plugin error)."""
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._source is not None
        return self._source

    def _run(self) -> None:
        try:
            daemon = Daemon(self.config, external=(SOURCE_NAME,))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            self._source = daemon.context(SOURCE_NAME)
            daemon.start()
        except BaseException as exc:
            self._error = exc
            with contextlib.suppress(Exception):
                daemon.pipeline.close()
            self._ready.set()
            return
        self.daemon = daemon
        self._ready.set()
        try:
            daemon.loop()
        finally:
            daemon.shutdown()  # what was handed over, flushed; then closed

    def stop(self) -> None:
        """Stop the loop; return once the final flush is done and everything is closed."""
        if self.daemon is not None:
            self.daemon.request_stop()
        self.thread.join()


def _stop_on_signals(reactor: Any) -> None:
    """Make SIGTERM do what moksha's SIGINT handler does (stop the hub, then the reactor),
    unless something else handles SIGTERM already; and run moksha's handlers (for SIGINT,
    SIGHUP and now SIGTERM) inside the reactor, through ``callFromThread``. Called from a
    signal handler, ``reactor.stop()`` does not wake the reactor's poll, so a hub whose
    publishers are quiet would stop only at the next network event. Runs in the reactor's
    (main) thread once it runs, after moksha installed its handlers."""

    def in_reactor(handler: Any, as_signal: int) -> Any:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s, stopping fedmsg-hub", signal.Signals(signum).name)
            reactor.callFromThread(handler, as_signal, None)

        return on_signal

    on_sigint = signal.getsignal(signal.SIGINT)
    if not callable(on_sigint) or on_sigint is signal.default_int_handler:
        return  # not moksha's: leave signals to whoever set them
    for signum in (signal.SIGINT, signal.SIGHUP):
        handler = signal.getsignal(signum)
        if callable(handler):
            signal.signal(signum, in_reactor(handler, signum))
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, in_reactor(on_sigint, signal.SIGINT))
