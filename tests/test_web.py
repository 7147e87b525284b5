"""The HTTP server: /metrics (formats, gzip, self-metrics), /healthz, /readyz, the landing
page, basic auth and TLS, in-process through WSGI and over real sockets."""

from __future__ import annotations

import base64
import datetime
import gzip
import io
import json
import re
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import requests

from statscache_exporter import config as configuration
from statscache_exporter.backfill import BackfillStats
from statscache_exporter.daemon import exposition_for, web_context
from statscache_exporter.web import App, WebServer

NOW = 1_700_000_000.0


def wsgi(
    app: App, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    environ["wsgi.errors"] = io.StringIO()
    got: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = int(status.split()[0]), dict(hdrs)

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


def fedmsg(i: int, topic: str = "org.fedoraproject.prod.bodhi.update.comment") -> dict[str, Any]:
    return {"topic": topic, "msg": {}, "timestamp": NOW - 100 + i, "msg_id": f"id-{i}"}


@pytest.fixture
def app_for(open_store: Any) -> Any:
    def factory(**sections: Any) -> tuple[App, Any]:
        p = open_store(clock=lambda: NOW, **sections)
        exposition = exposition_for(p)
        for i in range(5):
            p.handle(fedmsg(i), "bus")
        p.handle("not json", "bus")
        p.flush()
        ctx = web_context(p, exposition)
        ctx.self_metrics.clock = lambda: NOW
        return App(ctx, clock=lambda: NOW), p

    return factory


def test_metrics_in_the_text_format_with_self_metrics(app_for: Any) -> None:
    app, _ = app_for()
    status, headers, body = wsgi(app, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert "statscache_messages_total 5.0\n" in text
    assert 'statscache_messages_by_category_total{category="bodhi"} 5.0\n' in text
    assert 'statscache_exporter_messages_received_total{source="bus"} 6.0\n' in text
    assert 'statscache_exporter_messages_processed_total{source="bus"} 5.0\n' in text
    assert (
        'statscache_exporter_messages_rejected_total{reason="not_json",source="bus"} 1.0\n' in text
    )
    assert "statscache_exporter_newest_message_age_seconds 96.0\n" in text
    assert (
        'statscache_exporter_series{metric="messages_by_topic",plugin="volume_by_topic"} 1.0\n'
        in text
    )
    assert "statscache_exporter_flushes_total 1.0\n" in text
    assert "# EOF" not in text


def test_metrics_in_openmetrics_end_with_one_eof(app_for: Any) -> None:
    app, _ = app_for()
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = wsgi(app, "/metrics", {"Accept": accept})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    assert "# TYPE statscache_messages counter\nstatscache_messages_total 5.0\n" in text


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_gzip_is_several_members_that_decompress_to_the_plain_body(
    app_for: Any, accept: str
) -> None:
    app, _ = app_for()
    _, _, plain = wsgi(app, "/metrics", {"Accept": accept})
    status, headers, body = wsgi(
        app, "/metrics", {"Accept": accept, "Accept-Encoding": "br, gzip;q=0.9"}
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == plain
    # a client reading only the first member would miss the self-metrics: check it is >1
    assert body.count(b"\x1f\x8b\x08") >= 2


def test_healthz_and_readyz(app_for: Any, tmp_path: Path) -> None:
    app, p = app_for()
    assert wsgi(app, "/healthz") == (
        200,
        {"Content-Type": "text/plain; charset=utf-8", "Content-Length": "3"},
        b"ok\n",
    )
    status, _, body = wsgi(app, "/readyz")
    assert (status, body) == (200, b"ready\n")
    app.clock = lambda: NOW + 60  # the pipeline has not gone to flush for a minute
    status, _, body = wsgi(app, "/readyz")
    assert status == 503 and b"the pipeline has not flushed recently" in body
    app.clock = lambda: NOW
    p.store.path.unlink()  # and now the store is gone
    app.ctx.reader.path = tmp_path / "gone" / "store.sqlite"
    status, _, body = wsgi(app, "/readyz")
    assert status == 503 and b"the store cannot be read" in body


def test_overview_shows_rates_sources_categories_backfill_and_plugins(app_for: Any) -> None:
    app, p = app_for()
    p.stats.source_connected["bus"] = True
    p.stats.history.clear()
    p.stats.history.extend([(NOW - 90, 0), (NOW - 60, 10), (NOW, 130)])
    app.ctx.live_sources = ("bus",)
    app.ctx.backfill = lambda: BackfillStats(
        windows_total=10, windows_done=4, messages=123, range_seconds=1000, remaining_seconds=600
    )
    status, headers, body = wsgi(app, "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script" not in page and "http://" not in page.replace("http://localhost", "")
    assert '<span class="big">2.0</span><span class="what">messages/s' in page
    assert '<span class="big">1</span><span class="what">rejected since start: not_json 1' in page
    assert '<span class="badge ok">connected</span>' in page
    assert "<td>bus</td>" in page and '<td class="n">6</td>' in page  # received
    # the chart: one bar per stored minute (the five messages share one) holding 5
    assert page.count('class="point bar"') >= 1 and 'data-v="5"' in page
    assert '<a href="/plugins/volume_by_category?category=bodhi">bodhi</a>' in page
    assert 'aria-valuenow="40"' in page and "4 of 10 windows" in page
    for ident in ("volume", "volume_by_category", "volume_by_user"):
        assert f'<a class="card plugin-card" href="/plugins/{ident}">' in page
    assert '<link rel="stylesheet" href="/static/style.css">' in page
    assert wsgi(app, "/?hours=5")[0] == 400


def test_overview_shows_each_sources_last_outage(app_for: Any) -> None:
    app, p = app_for()
    p.store.record_gap("bus", NOW - 7200, NOW - 7000)
    p.store.record_gap("bus", NOW - 600, NOW - 480)  # the last one
    p.store.mark_gap_filled("bus", NOW - 600, NOW - 480)
    p.store.record_gap("other", NOW - 50, NOW - 45)
    assert app.ctx.reader.last_outages() == {
        "bus": (NOW - 600, NOW - 480, True),
        "other": (NOW - 50, NOW - 45, False),
    }
    page = wsgi(app, "/")[2].decode()
    assert "2023-11-14 22:03:20 UTC, for 2.0 min (fetched since)" in page
    assert "2023-11-14 22:12:30 UTC, for 5.0 s<" in page


def test_plugin_page_charts_tables_links_and_examples(app_for: Any) -> None:
    app, _ = app_for()
    status, _, body = wsgi(app, "/plugins/volume_by_category")
    page = body.decode()
    assert status == 200
    assert '<svg id="chart-messages_by_category"' in page
    assert "statscache_messages_by_category_total" in page
    assert "sum by (category) (rate(statscache_messages_by_category_total[5m]))" in page
    assert "statscache_messages_by_user_total" not in page  # the README's other plugin
    assert "/api/volume_by_category?resolution=1m&amp;start=" in page
    assert "format=csv" in page
    # the links give what the chart shows: the same five messages
    link = page.split('href="/api/volume_by_category?')[1].split('"')[0].replace("&amp;", "&")
    status, _, rows = wsgi(app, "/api/volume_by_category?" + link)
    assert status == 200 and sum(r["value"] for r in json.loads(rows)["rows"]) == 5
    assert re.search(r'<td>bodhi</td>\s*<td class="n">5</td>', page)


def test_plugin_page_parameters_are_checked(app_for: Any) -> None:
    app, _ = app_for()
    status, _, body = wsgi(app, "/plugins/nope")
    assert status == 404 and b"no plugin &#39;nope&#39;; available: " in body
    status, _, body = wsgi(app, "/plugins/volume?colour=red")
    assert status == 400 and b"unknown parameter &#39;colour&#39;" in body
    status, _, body = wsgi(app, "/plugins/volume?range=soon")
    assert status == 400 and b"range must be a duration" in body
    status, _, body = wsgi(app, "/plugins/volume?range=365d&resolution=1m")
    assert status == 400 and b"too many for a chart" in body and b"1d or coarser" in body
    status, _, body = wsgi(app, "/plugins/volume_by_category?category=%3Cscript%3E")
    assert status == 200 and b"<script>" not in body and b"&lt;script&gt;" in body
    # blank form fields count as absent
    assert wsgi(app, "/plugins/volume_by_category?resolution=&category=&metric=")[0] == 200


def test_static_files_ship_in_the_package(app_for: Any) -> None:
    app, _ = app_for()
    status, headers, body = wsgi(app, "/static/style.css")
    assert status == 200 and headers["Content-Type"] == "text/css; charset=utf-8"
    assert b"--accent" in body
    status, headers, _ = wsgi(app, "/static/favicon.svg")
    assert status == 200 and headers["Content-Type"] == "image/svg+xml"
    for bad in ("/static/../web.py", "/static/nope.css", "/static/.hidden.css", "/static/x.py"):
        assert wsgi(app, bad)[0] == 404, bad


def test_unknown_paths_methods_and_head(app_for: Any) -> None:
    app, _ = app_for()
    assert wsgi(app, "/nope")[0] == 404
    assert wsgi(app, "/metrics", method="POST")[0] == 405
    status, headers, body = wsgi(app, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_basic_auth_guards_everything_but_healthz(
    app_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SC_TEST_PASSWORD", "s3cr:et")
    app, _ = app_for(http={"basic_auth": {"username": "prom", "password": "${SC_TEST_PASSWORD}"}})
    good = "Basic " + base64.b64encode(b"prom:s3cr:et").decode()
    bad = "Basic " + base64.b64encode(b"prom:wrong").decode()
    for path in ("/metrics", "/", "/readyz", "/api/", "/plugins/volume", "/static/style.css"):
        status, headers, _ = wsgi(app, path)
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="statscache-exporter"'
        assert wsgi(app, path, {"Authorization": bad})[0] == 401
        assert wsgi(app, path, {"Authorization": good})[0] == 200
    assert wsgi(app, "/healthz")[0] == 200


# --- real sockets ------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls_server_on_a_real_socket(app_for: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    http = {"port": 0, "tls": {"cert_file": str(cert), "key_file": str(key)}}
    app, _ = app_for(http=http)
    server = WebServer(app, configuration.from_dict({"http": http}).http)
    server.start()
    try:
        url = f"https://localhost:{server.port}"
        response = requests.get(f"{url}/metrics", verify=str(cert), timeout=10)
        assert response.status_code == 200
        assert "statscache_messages_total 5.0\n" in response.text
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://localhost:{server.port}/healthz", timeout=5)
        # the server still answers after a client that did not speak TLS
        assert requests.get(f"{url}/healthz", verify=str(cert), timeout=10).text == "ok\n"
    finally:
        server.stop()


def test_plain_server_with_gzip_through_requests(app_for: Any) -> None:
    app, _ = app_for(http={"port": 0})
    server = WebServer(app, configuration.from_dict({"http": {"port": 0}}).http)
    server.start()
    try:
        response = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
        assert response.headers["Content-Encoding"] == "gzip"  # requests asks for it
        assert "statscache_messages_total 5.0\n" in response.text
        assert "statscache_exporter_flushes_total 1.0\n" in response.text  # the second member
    finally:
        server.stop()


def test_tls_config_must_name_readable_files(tmp_path: Path) -> None:
    missing = {"cert_file": str(tmp_path / "no.pem"), "key_file": str(tmp_path / "no.key")}
    with pytest.raises(configuration.ConfigError, match=r"http\.tls\.cert_file: .* not a readable"):
        configuration.from_dict({"http": {"tls": missing}})
    with pytest.raises(
        configuration.ConfigError, match=r"http\.tls: give both cert_file and key_file"
    ):
        configuration.from_dict({"http": {"tls": {"cert_file": str(tmp_path)}}})


def test_lone_surrogates_never_reach_the_store_or_break_metrics(app_for: Any) -> None:
    """JSON may carry "\\ud800"; no UTF-8 can. Such a topic or id is rejected, such a
    username dropped, and /metrics and the API keep answering."""
    app, p = app_for()
    raw = (
        '{"topic": "org.fedoraproject.prod.bo\\ud800dhi.x", "msg": {}, "timestamp": '
        + str(int(NOW))
        + ', "msg_id": "s1"}'
    )
    assert p.handle(raw, "bus") == "rejected"
    assert p.handle({**fedmsg(50), "msg_id": "bad\udc80id"}, "bus") == "rejected"
    item = {
        **fedmsg(51),
        "users": ["fine", "bad\udc80"],
        "packages": ["p\ud800"],
        "agent_name": "\ud800",
    }
    assert p.handle(item, "bus") == "processed"
    p.flush()
    assert p.stats.rejected[("bus", "bad_unicode")] == 2
    status, _, body = wsgi(app, "/metrics")
    assert status == 200
    assert 'statscache_messages_by_user_total{user="fine"} 1.0\n' in body.decode()
    assert "messages_by_package_total{" not in body.decode()
    assert wsgi(app, "/api/volume_by_user")[0] == 200


def test_openmetrics_refused_with_q0_gets_the_text_format(app_for: Any) -> None:
    app, _ = app_for()
    accept = "application/openmetrics-text; version=1.0.0; q=0, text/plain"
    status, headers, _ = wsgi(app, "/metrics", {"Accept": accept})
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
