"""The HTTP server (statscache_exporter/server.py) on real sockets: clients that connect and
say nothing, send half a request, never finish a TLS handshake or read slowly stall nobody;
the worker pool is bounded; request heads and bodies are limited; idle connections close;
IPv4 and IPv6.

Where a test shows that something is *not* stalled, the server's own timeouts are set far
longer than the client's, so an answer can only come from a server that was not waiting on
the idle clients (a stalled one would answer only after closing them)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from servers import missing
from test_web import self_signed

from statscache_exporter import config as configuration
from statscache_exporter.daemon import exposition_for, web_context
from statscache_exporter.server import WebServer, WsgiApp
from statscache_exporter.web import App

NOW = 1_700_000_000.0
LONG = {"idle_timeout": "10m", "read_timeout": "10m", "tls_handshake_timeout": "10m"}
BIG = 16 * 1024 * 1024  # more than loopback's socket buffers hold


def fedmsg(i: int) -> dict[str, Any]:
    topic = "org.fedoraproject.prod.bodhi.update.comment"
    return {"topic": topic, "msg": {}, "timestamp": NOW - 100 + i, "msg_id": f"id-{i}"}


@pytest.fixture
def app(open_store: Any) -> App:
    p = open_store(clock=lambda: NOW)
    exposition = exposition_for(p)
    for i in range(5):
        p.handle(fedmsg(i), "bus")
    p.flush()
    return App(web_context(p, exposition), clock=lambda: NOW)


@contextlib.contextmanager
def serving(app: WsgiApp, **http: Any) -> Iterator[WebServer]:
    http = {"port": 0, **http}
    server = WebServer(app, configuration.from_dict({"http": http}).http)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def still_open(sock: socket.socket) -> bool:
    """True while the peer has not closed: nothing to read yet, and no EOF."""
    sock.setblocking(False)
    try:
        flags = 0 if isinstance(sock, ssl.SSLSocket) else socket.MSG_PEEK  # TLS: no peeking
        return sock.recv(1, flags) != b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the peer closes the connection within ``seconds`` (reading what it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return True


def test_idle_tls_clients_and_half_sent_requests_do_not_stall_metrics(
    app: App, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    tls = {"cert_file": str(cert), "key_file": str(key)}
    with serving(app, tls=tls, workers=2, **LONG) as server:
        idle, half = [], []
        try:
            for _ in range(20):  # TCP connected, no ClientHello ever
                idle.append(socket.create_connection(("127.0.0.1", server.port)))
            client = ssl.create_default_context(cafile=str(cert))
            for i in range(200):  # TLS done, then a request line and half the headers
                raw = socket.create_connection(("localhost", server.port), timeout=30)
                s = client.wrap_socket(raw, server_hostname="localhost")
                s.sendall(f"GET /metrics?n={i} HTTP/1.1\r\nHost: localhost\r\nAcc".encode())
                half.append(s)
            url = f"https://localhost:{server.port}"
            response = requests.get(f"{url}/metrics", verify=str(cert), timeout=30)
            assert response.status_code == 200
            assert "statscache_messages_total 5.0\n" in response.text
            assert requests.get(f"{url}/healthz", verify=str(cert), timeout=30).text == "ok\n"
            # they were all still there, waiting, while /metrics answered
            assert all(still_open(s) for s in idle + half)
        finally:
            for s in idle + half:
                s.close()


def test_plain_half_sent_requests_do_not_stall_metrics(app: App) -> None:
    with serving(app, workers=1, **LONG) as server:
        half = []
        try:
            for _ in range(200):
                s = socket.create_connection(("127.0.0.1", server.port))
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                half.append(s)
            r = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30)
            assert r.status_code == 200 and "statscache_messages_total 5.0\n" in r.text
            assert all(still_open(s) for s in half)
            # and a half-sent request finished later is answered
            half[0].sendall(b"Connection: close\r\n\r\n")
            got = b""
            while chunk := half[0].recv(65536):
                got += chunk
            assert got.startswith(b"HTTP/1.1 200 ") and b"statscache_messages_total 5.0\n" in got
        finally:
            for s in half:
                s.close()


class WithBig:
    """The app, plus /big (16 MiB) and /slow (waits for ``release``), counting how many
    answers are being computed at once."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/big":
            body = bytes(range(256)) * (BIG // 256)
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        if path == "/slow":
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            self.release.wait(30)
            with self.lock:
                self.running -= 1
            start_response("200 OK", [("Content-Length", "5")])
            return [b"slow\n"]
        return list(self.app(environ, start_response))


def test_a_client_reading_slowly_blocks_no_one(app: App) -> None:
    """With one worker thread: a client that asked for 16 MiB and reads none of it holds no
    thread, so others are answered meanwhile; it then gets all of its answer, intact."""
    wrapped = WithBig(app)
    with serving(wrapped, workers=1, **LONG) as server:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", server.port))
        try:
            slow.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = bytearray(slow.recv(1024))  # its answer has begun
            for _ in range(3):
                r = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30)
                assert r.status_code == 200 and "statscache_messages_total 5.0\n" in r.text
            slow.settimeout(30)
            while chunk := slow.recv(1 << 20):
                got += chunk
            head, _, body = bytes(got).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert body == bytes(range(256)) * (BIG // 256)
        finally:
            slow.close()


def test_worker_pool_is_bounded(app: App) -> None:
    wrapped = WithBig(app)
    with serving(wrapped, workers=2) as server:
        url = f"http://127.0.0.1:{server.port}/slow"
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(requests.get(url, timeout=30).status_code)
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while wrapped.running < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # a third would have started by now if the pool let it
        assert (wrapped.running, wrapped.most) == (2, 2)
        wrapped.release.set()
        for t in threads:
            t.join(30)
        assert results == [200] * 4 and wrapped.most == 2


def test_request_head_and_body_limits(app: App) -> None:
    with serving(app, max_header_bytes=2048, max_body_bytes=100) as server:
        base = f"http://127.0.0.1:{server.port}"
        r = requests.get(f"{base}/metrics", headers={"X-Big": "x" * 4096}, timeout=10)
        assert r.status_code == 431
        r = requests.get(f"{base}/metrics", headers={"X-Big": "x" * 1800}, timeout=10)
        assert r.status_code == 200  # within the limit
        r = requests.get(f"{base}/api/volume?start=" + "1" * 4096, timeout=10)
        assert r.status_code == 414 and "http.max_header_bytes" in r.text
        many = {f"X-{i}": "1" for i in range(101)}  # with requests' own: over 100 headers
        assert requests.get(f"{base}/metrics", headers=many, timeout=10).status_code == 431
        r = requests.post(f"{base}/metrics", data=b"x" * 101, timeout=10)
        assert r.status_code == 413 and "http.max_body_bytes" in r.text
        # a chunked body over the limit, which no Content-Length announced
        r = requests.post(f"{base}/metrics", data=iter([b"x" * 60, b"y" * 60]), timeout=10)
        assert r.status_code == 413
        r = requests.post(f"{base}/metrics", data=b"x" * 100, timeout=10)
        assert r.status_code == 405  # within the limit: the app answers
        assert requests.get(f"{base}/healthz", timeout=10).text == "ok\n"


def test_idle_and_unfinished_connections_are_closed(app: App, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    timeouts = {"idle_timeout": "1s", "tls_handshake_timeout": "1s", "read_timeout": "60s"}
    with serving(app, **timeouts) as plain:
        idle = socket.create_connection(("127.0.0.1", plain.port))
        half = socket.create_connection(("127.0.0.1", plain.port))
        half.sendall(b"GET /metrics HTTP/1.1\r\n")
        kept = socket.create_connection(("127.0.0.1", plain.port))
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert closed_within(idle, 20) and closed_within(half, 20)
            assert closed_within(kept, 20)  # answered, then idle for a second: closed too
        finally:
            for s in (idle, half, kept):
                s.close()
    tls = {"cert_file": str(cert), "key_file": str(key)}
    with serving(app, tls=tls, **timeouts) as secure:
        silent = socket.create_connection(("127.0.0.1", secure.port))
        try:
            assert closed_within(silent, 20)  # never sent a ClientHello
        finally:
            silent.close()


def test_ipv6_and_dual_stack(app: App) -> None:
    if not socket.has_ipv6:
        missing("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        missing("no IPv6 loopback on this machine")
    with serving(app, address="::1") as server:
        assert requests.get(f"http://[::1]:{server.port}/healthz", timeout=10).text == "ok\n"
    with serving(app, address="::") as server:
        assert requests.get(f"http://[::1]:{server.port}/healthz", timeout=10).text == "ok\n"
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).text == "ok\n"


def test_a_port_in_use_and_a_bad_key_fail_at_construction(app: App, tmp_path: Path) -> None:
    with serving(app) as server:
        taken = configuration.from_dict({"http": {"port": server.port}}).http
        with pytest.raises(OSError):
            WebServer(app, taken)
    cert, _ = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other = self_signed(tmp_path / "other")  # a key that is not the certificate's
    bad = configuration.from_dict(
        {"http": {"port": 0, "tls": {"cert_file": str(cert), "key_file": str(other)}}}
    ).http
    with pytest.raises(ssl.SSLError):
        WebServer(app, bad)


def test_http_settings_are_validated() -> None:
    with pytest.raises(configuration.ConfigError, match=r"http\.workers: 0 is not between"):
        configuration.from_dict({"http": {"workers": 0}})
    with pytest.raises(configuration.ConfigError, match=r"http\.idle_timeout: must be more"):
        configuration.from_dict({"http": {"idle_timeout": "0s"}})
    with pytest.raises(configuration.ConfigError, match=r"http\.max_header_bytes: 10 is not"):
        configuration.from_dict({"http": {"max_header_bytes": 10}})
