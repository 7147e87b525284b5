"""The HTTP server of ``statscache-exporter run``: hypercorn's HTTP/1.1 on an asyncio event
loop in one thread, the WSGI app on a bounded pool of threads.

Why this shape: the event loop reads every request head (and body) and does every TLS
handshake without blocking, so a client that connects and sends nothing, sends half a request,
or never finishes its TLS handshake holds no thread and stalls nobody; it is closed when its
timeout runs out. Only a complete request reaches a worker thread, and the worker hands back
the whole answer before it is written, so a client that reads slowly holds no thread either.

hypercorn, not cheroot: cheroot runs the TLS handshake in its accept loop, blocking for its
socket timeout (``ConnectionManager._from_server_socket`` calls ``ssl_adapter.wrap``), which is
the stall this server replaces, and a half-sent request holds one of its worker threads until
that timeout, so a few hundred of them starve any bounded pool. hypercorn (maintained, MIT,
h11 for HTTP/1.1) parses on the event loop and bounds the request head, the handshake and
idle connections with timeouts of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from statscache_exporter.config import HttpConfig

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: status, headers, and the body as the app's own chunks (not joined: a copy of each body)
_Answer = tuple[int, list[tuple[str, str]], list[bytes]]
#: how long stop() waits for answers in flight before it closes their connections
GRACE_SECONDS = 2.0
#: most headers a request may have (as Python's http.server allowed)
MAX_HEADERS = 100
#: the most body bytes handed to hypercorn at once. Each send is written and drained before
#: the next, so a large answer (/metrics: ~6 MB at 100k series) never sits whole a second time
#: in the transport's buffer, which copies what the socket does not take at once.
SEND_BYTES = 256 * 1024


def listen(address: str, port: int) -> socket.socket:
    """A listening TCP socket: IPv6 when the address has a colon (``::`` takes IPv4 too)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    dual = address == "::" and socket.has_dualstack_ipv6()
    sock = socket.create_server(
        (address.strip("[]"), port), family=family, backlog=128, dualstack_ipv6=dual
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server's TLS context, loaded now so that a bad certificate fails the start."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Config(HypercornConfig):
    """hypercorn's config, serving on sockets bound beforehand with a context loaded
    beforehand (so that errors surface in the caller's thread, not the server's)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._sock = sock
        self._context = context

    def create_sockets(self) -> Sockets:
        secure, insecure = ([self._sock], []) if self._context else ([], [self._sock])
        return Sockets(secure_sockets=secure, insecure_sockets=insecure, quic_sockets=[])

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context


def hypercorn_config(
    http: HttpConfig, sock: socket.socket, context: ssl.SSLContext | None
) -> HypercornConfig:
    """The timeouts and limits of ``http`` as hypercorn's settings."""
    config = _Config(sock, context)
    if context is not None:  # hypercorn's ssl_enabled reads these; the context is ours
        config.certfile, config.keyfile = http.tls.cert_file, http.tls.key_file
    config.keep_alive_timeout = http.idle_timeout.total_seconds()
    config.read_timeout = max(1, round(http.read_timeout.total_seconds()))
    config.ssl_handshake_timeout = http.tls_handshake_timeout.total_seconds()
    # a head still arriving may grow to twice the limit (memory stays bounded) before h11
    # refuses it; a whole head is measured by the bridge, which says 414 or 431 exactly
    config.h11_max_incomplete_size = 2 * http.max_header_bytes + 4096
    config.h2_max_header_list_size = http.max_header_bytes
    config.graceful_timeout = GRACE_SECONDS
    config.include_server_header = False
    config.accesslog = None
    quiet = logging.getLogger(f"{__name__}.hypercorn")
    quiet.setLevel(logging.WARNING)  # not its "Running on ... (CTRL + C to quit)"
    config.errorlog = quiet
    return config


class AsgiBridge:
    """Runs a WSGI app for hypercorn: the request (head up to ``max_head`` bytes, body up to
    ``max_body``) is read on the event loop, the app runs on ``pool``, and its whole answer is
    written back from the event loop: no thread waits on a client."""

    def __init__(
        self, app: WsgiApp, pool: ThreadPoolExecutor, max_head: int, max_body: int
    ) -> None:
        self.app = app
        self.pool = pool
        self.max_head = max_head
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close"})
            return
        if scope["type"] != "http":
            return  # lifespan: nothing to start or stop
        refused = self._over_limits(scope)
        body = None if refused else await self._body(scope, receive)
        if body is None:
            status, headers, answer = _refusal(
                *(refused or (413, f"the request body is larger than {self.max_body} bytes"))
            )
        else:
            loop = asyncio.get_running_loop()
            status, headers, answer = await loop.run_in_executor(
                self.pool, self._call, environ(scope, body)
            )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        for piece in pieces(answer, SEND_BYTES):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _over_limits(self, scope: Any) -> tuple[int, str] | None:
        """505 for an HTTP version other than 1.0, 1.1 and 2; 414 or 431 for a request head
        over ``max_head`` bytes, 431 for more than MAX_HEADERS headers. (hypercorn bounds a
        head still arriving; a whole one is measured here.)"""
        if scope["http_version"] not in ("1.0", "1.1", "2"):
            return 505, f"HTTP/{scope['http_version'][:10]} is not spoken here (1.0, 1.1, 2)"
        if len(scope["headers"]) > MAX_HEADERS:
            return 431, f"the request has more than {MAX_HEADERS} headers"
        target = len(scope["raw_path"]) + len(scope["query_string"]) + 1
        line = len(scope["method"]) + target + len(" HTTP/1.1\r\n") + 1
        if line > self.max_head:
            return 414, f"the request line is longer than {self.max_head} bytes"
        head = line + sum(len(n) + len(v) + 4 for n, v in scope["headers"]) + 2
        if head > self.max_head:
            return 431, f"the request line and headers are larger than {self.max_head} bytes"
        return None

    async def _body(self, scope: Any, receive: Any) -> bytes | None:
        """The request body, or None when it is (or says it is) over the limit."""
        for name, value in scope["headers"]:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # http.disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _call(self, env: dict[str, Any]) -> _Answer:
        """On a worker thread: the app's status, headers and whole body."""
        got: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            got["status"], got["headers"] = int(status.split(" ", 1)[0]), headers
            return lambda data: None  # the legacy write(): our app never calls it

        try:
            result = self.app(env, start_response)
            try:
                body = [bytes(chunk) for chunk in result]  # the same objects when bytes already
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            log.exception("error serving %s", env.get("PATH_INFO"))
            body = [b"internal error\n"]
            got = {"status": 500, "headers": [("Content-Type", "text/plain")]}
            got["headers"].append(("Content-Length", str(len(body[0]))))
        return got["status"], list(got["headers"]), body


def pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes | memoryview]:
    """The chunks in pieces of at most ``size`` bytes (views of them, not copies); none for an
    empty body."""
    for chunk in chunks:
        if len(chunk) <= size:
            if chunk:
                yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), size):
            yield view[start : start + size]


def _refusal(status: int, text: str) -> _Answer:
    """A request refused before the app: plain text naming the limit; the connection then
    closes."""
    limit = {413: " (http.max_body_bytes)", 414: " (http.max_header_bytes)"}.get(status, "")
    if status == 431 and "headers are larger" in text:
        limit = " (http.max_header_bytes)"
    answer = f"{text}{limit}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")]
    return status, [*headers, ("Content-Length", str(len(answer)))], [answer]


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's error handler, minus one false alarm: at stop, connections still open are
    cancelled, and Python 3.11's stream callback then reports the cancellation as an error
    (3.12 checks for it)."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def environ(scope: Any, body: bytes) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP scope (PEP 3333: text as latin-1)."""
    server = scope.get("server") or ("localhost", 0)
    client = scope.get("client") or ("", 0)
    env: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


class WebServer:
    """Serves a WSGI app from its own thread until stopped. The socket is bound and the TLS
    certificate loaded in the constructor: a port in use or a bad key fails there."""

    def __init__(self, app: WsgiApp, http: HttpConfig) -> None:
        self.sock = listen(http.address, http.port)
        #: the port listened on (the one picked, for port 0)
        self.port = int(self.sock.getsockname()[1])
        try:
            context = (
                tls_context(http.tls.cert_file, http.tls.key_file) if http.tls.cert_file else None
            )
        except BaseException:
            self.sock.close()
            raise
        self.scheme = "https" if context else "http"
        self.address = http.address
        self.config = hypercorn_config(http, self.sock, context)
        self.pool = ThreadPoolExecutor(max_workers=http.workers, thread_name_prefix="http-worker")
        self.app = AsgiBridge(app, self.pool, http.max_header_bytes, http.max_body_bytes)
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(timeout=10)
        log.info("serving on %s://%s:%d/", self.scheme, self.address, self.port)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:
            log.exception("the HTTP server stopped")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_cancellations)
        self._stopping = asyncio.Event()
        self._ready.set()
        await serve(self.app, self.config, shutdown_trigger=self._stopping.wait, mode="asgi")

    def stop(self) -> None:
        """Stop listening, give answers in flight a moment, close every connection."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self.thread.is_alive():
            self.thread.join(timeout=GRACE_SECONDS + 3)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.sock.close()
