"""The web app of ``statscache-exporter run``: one WSGI app (:mod:`server` serves it).

Routes: ``/`` (the overview page) and ``/plugins/<ident>`` (:mod:`webui`), ``/static/``
(its stylesheet and icon), ``/metrics`` (Prometheus), ``/api/`` and ``/api/<ident>``
(statscache REST API, :mod:`restapi`), ``/healthz`` (the process answers) and ``/readyz``
(store open, pipeline flushing). Basic auth, when configured, guards everything but
``/healthz``. TLS, when configured, is the server's (:mod:`server`).
"""

from __future__ import annotations

import base64
import gzip
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as text_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, gzip_accepted
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from statscache_exporter import restapi
from statscache_exporter.backfill import BackfillStats
from statscache_exporter.config import HttpConfig
from statscache_exporter.exposition import OPENMETRICS, TEXT, Exposition
from statscache_exporter.pipeline import Pipeline
from statscache_exporter.plugin import Plugin
from statscache_exporter.reader import Reader
from statscache_exporter.selfmetrics import SelfMetrics
from statscache_exporter.server import WebServer
from statscache_exporter.webui import PageError, Pages

__all__ = ["App", "Context", "WebServer"]

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
            414: "URI Too Long",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


@dataclass
class Context:
    """What the app serves from; built by the daemon."""

    pipeline: Pipeline
    exposition: Exposition
    self_metrics: SelfMetrics
    reader: Reader
    plugins: Mapping[str, type[Plugin]]
    http: HttpConfig
    api: restapi.ApiSettings
    ready_within: float  # /readyz fails if the pipeline has not gone to flush for this long
    #: sources of a bus (not replay): /readyz fails while one is disconnected
    live_sources: tuple[str, ...] = ()
    #: the gap filler's progress (None: no gap filler): /readyz fails while it is stuck
    backfill: Callable[[], BackfillStats | None] = lambda: None


class App:
    """The WSGI application."""

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self._self_registry = CollectorRegistry(auto_describe=False)
        self._self_registry.register(ctx.self_metrics)
        self.pages = Pages(ctx, lambda: self.clock())
        auth = ctx.http.basic_auth
        self._credentials = (
            base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
            if auth.username
            else None
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path == "/metrics" and method in ("GET", "HEAD") and self._may_see(environ):
                status, headers, parts = self._metrics(environ)
            else:
                status, headers, body = self._route(environ, path, method)
                parts = [body]
        except Exception:
            log.exception("error serving %s", path)
            status, headers, parts = 500, [("Content-Type", "text/plain")], [b"internal error\n"]
        headers.append(("Content-Length", str(sum(len(p) for p in parts))))
        start_response(f"{status} {_REASONS.get(status, '')}", headers)
        return [b""] if method == "HEAD" else parts

    def _route(
        self, environ: dict[str, Any], path: str, method: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if path == "/healthz":
            return 200, [("Content-Type", "text/plain; charset=utf-8")], b"ok\n"
        if not self._may_see(environ):
            headers = [("WWW-Authenticate", 'Basic realm="statscache-exporter"'),
                       ("Content-Type", "text/plain; charset=utf-8")]  # fmt: skip
            return 401, headers, b"authentication required\n"
        if method == "OPTIONS" and path.startswith("/api/"):
            methods = "GET, HEAD, OPTIONS"
            allow = [
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Methods", methods),
                ("Access-Control-Allow-Headers", "Accept"),
                ("Allow", methods),
            ]
            return 204, allow, b""
        if method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")], b"GET only\n"
        if path == "/readyz":
            return self._readyz()
        if path == "/" or path.startswith("/plugins/"):
            return self._page(environ, path)
        if path.startswith("/static/"):
            found = self.pages.static(path[len("/static/") :])
            if found is None:
                return 404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n"
            kind, data = found
            return 200, [("Content-Type", kind), ("Cache-Control", "max-age=3600")], data
        if path == "/api" or path.startswith("/api/"):
            return self._api(environ, path)
        return 404, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n"

    def _may_see(self, environ: dict[str, Any]) -> bool:
        """No basic auth configured, or the request's credentials are right."""
        return self._credentials is None or self._authorized(environ)

    def _authorized(self, environ: dict[str, Any]) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        assert self._credentials is not None
        return scheme.lower() == "basic" and hmac.compare_digest(
            given.strip().encode(), self._credentials.encode()
        )

    # --- /metrics ------------------------------------------------------------------------

    def _metrics(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        """The cached families, then this scrape's self-metrics, as two parts of the body: not
        joined, which would copy the whole exposition (~6 MB at 100k series) every scrape."""
        accept = environ.get("HTTP_ACCEPT", "")
        openmetrics = any(
            part.split(";")[0].strip() == "application/openmetrics-text"
            and "q=0" not in part.replace(" ", "").split(";")  # q=0 means "not this"
            for part in accept.split(",")
        )
        compressed = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", ""))
        fmt = OPENMETRICS if openmetrics else TEXT
        cached = self.ctx.exposition.render(fmt, compressed)
        if openmetrics:
            # ends in "# EOF\n", which must stay last: the cached families come first
            own: bytes = openmetrics_latest(self._self_registry)  # type: ignore[no-untyped-call]
        else:
            own = text_latest(self._self_registry)
        if compressed:
            # gzip members may follow one another: the cached member, then this scrape's own
            own = gzip.compress(own, compresslevel=1, mtime=0)
        headers = [("Content-Type", OPENMETRICS_TYPE if openmetrics else CONTENT_TYPE_PLAIN_0_0_4)]
        if compressed:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Vary", "Accept, Accept-Encoding"))
        return 200, headers, [cached, own]

    # --- /readyz -------------------------------------------------------------------------

    def _readyz(self) -> tuple[int, list[tuple[str, str]], bytes]:
        stats = self.ctx.pipeline.stats
        last = stats.last_flush_attempt
        problems = []
        if last is None or self.clock() - last > self.ctx.ready_within:
            problems.append("the pipeline has not flushed recently")
        connected = dict(stats.source_connected)
        down = [name for name in self.ctx.live_sources if not connected.get(name)]
        if down:
            problems.append(f"not connected: {', '.join(down)}")
        backfill = self.ctx.backfill()
        if backfill is not None and backfill.failed:
            problems.append(f"the gap filler is stuck, trying again: {backfill.failed}")
        try:
            self.ctx.reader.ping()
        except Exception as exc:
            problems.append(f"the store cannot be read: {exc}")
        text = "ready\n" if not problems else "not ready: " + "; ".join(problems) + "\n"
        return (
            (503 if problems else 200),
            [("Content-Type", "text/plain; charset=utf-8")],
            text.encode(),
        )

    # --- the pages --------------------------------------------------------------------

    def _page(self, environ: dict[str, Any], path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        params = parse_qs(environ.get("QUERY_STRING", "")[:8192], keep_blank_values=True)
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        try:
            if path == "/":
                text = self.pages.overview(params)
            else:
                text = self.pages.plugin(path[len("/plugins/") :].strip("/"), params)
            status = 200
        except PageError as exc:
            status, text = exc.status, self.pages.error(exc.status, exc.message)
        return status, headers, text.encode()

    # --- /api ----------------------------------------------------------------------------

    def _api(self, environ: dict[str, Any], path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        query = environ.get("QUERY_STRING", "")
        params = parse_qs(query[: restapi.MAX_QUERY_LENGTH + 1], keep_blank_values=True)
        accept = environ.get("HTTP_ACCEPT", "")
        ident = path[len("/api/") :].strip("/") if path.startswith("/api/") else ""
        try:
            restapi.check_query_length(query)
            shapes = self.ctx.http.api.statscache_shapes
            if not ident:
                response = restapi.index(self.ctx.plugins, params, accept, shapes)
            else:
                plugin = self.ctx.plugins.get(ident)
                if plugin is None:
                    raise restapi.ApiError(
                        404, f"no plugin {ident[:60]!r}; available: {', '.join(self.ctx.plugins)}"
                    )
                url = _request_url(environ)
                response = restapi.plugin_rows(
                    plugin, self.ctx.reader, params, accept, self.ctx.api, url, self.clock(), shapes
                )
        except restapi.ApiError as exc:
            response = restapi.error_response(exc, params)
        headers = [("Content-Type", response.content_type), *response.headers.items()]
        return response.status, headers, response.body


def _request_url(environ: dict[str, Any]) -> str:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
    return f"{scheme}://{host}{environ.get('PATH_INFO', '')}"
