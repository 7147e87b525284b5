"""statscache_exporter.datagrepper against a real datagrepper 1.1.0 (tests/datagrepper.py): a
window comes back exactly, each message once, even with more ties in one second than a page
(where datagrepper's offset paging misses and repeats messages); the window is half-open at
microsecond precision; the category filter; errors name the URL, the parameters and the status;
502/504 are retried once on a smaller window (through a proxy that times out big windows).

Messages are real corpus messages (tests/conftest.py's ``scaled_messages``: fedmsg envelopes
and datagrepper items with fresh ids) given the timestamps each test needs.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import datagrepper as harness
import pytest
import requests
from conftest import scaled_messages
from servers import free_port

from statscache_exporter.datagrepper import (
    CALM_REQUESTS,
    Cancelled,
    Datagrepper,
    DatagrepperError,
    Item,
)

pytestmark = pytest.mark.integration

#: 2024-03-01T12:00:00Z
T = 1_709_294_400.0


@pytest.fixture
def dg(datagrepper_session: harness.Datagrepper) -> harness.Datagrepper:
    datagrepper_session.reset()
    return datagrepper_session


class Recording(requests.Session):
    """A session that remembers the parameters of every GET."""

    def __init__(self) -> None:
        super().__init__()
        self.params: list[dict[str, Any]] = []

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.params.append(dict(kwargs.get("params") or {}))
        return super().get(url, **kwargs)


def corpus_at(times: Sequence[float], seed: int, topic: str | None = None) -> list[Item]:
    """Corpus messages with fresh ids (``scaled-<seed>-<n>``), one at each of ``times``."""
    out = scaled_messages(len(times), seed)
    for m, when in zip(out, times, strict=True):
        m["timestamp"] = when
        if topic is not None:
            m["topic"] = topic
    return out


def ids(items: list[Item]) -> list[str]:
    return [i["msg_id"] for i in items]


def assert_exactly(got: list[Item], sent: list[Item]) -> None:
    """``got`` holds each of ``sent`` once, as stored, in timestamp order."""
    repeated = [k for k, n in Counter(ids(got)).items() if n > 1]
    assert not repeated, f"{len(repeated)} repeated, e.g. {repeated[:5]}"
    missing = {m["msg_id"] for m in sent} - set(ids(got))
    extra = set(ids(got)) - {m["msg_id"] for m in sent}
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    by_id = {m["msg_id"]: m for m in sent}
    for item in got:
        m = by_id[item["msg_id"]]
        assert (item["topic"], item["msg"]) == (m["topic"], m["msg"])
        assert item["timestamp"] == int(m["timestamp"])  # /raw shows the second
    assert [i["timestamp"] for i in got] == sorted(i["timestamp"] for i in got)


# --- exactly the window ---------------------------------------------------------------------


def test_a_window_with_crowded_seconds_comes_back_exactly_once(dg: harness.Datagrepper) -> None:
    rng = random.Random(7)
    tied = corpus_at([T + 10] * 1000, seed=1)  # one identical timestamp: offset paging fails
    fractions = corpus_at([T + 20 + k / 150 for k in range(150)], seed=2)  # one second
    spread = corpus_at([T + rng.uniform(0, 60) for _ in range(300)], seed=3)
    outside = corpus_at([T - 0.5, T + 60, T + 61.5], seed=4)
    sent = tied + fractions + spread
    assert dg.add(sent + outside) == len(sent) + len(outside)

    for rows_per_page in (100, 37):
        session = Recording()
        with Datagrepper(dg.url, rows_per_page=rows_per_page, session=session) as client:
            assert_exactly(client.window(T, T + 60), sent)
        assert all(p["order"] == "asc" for p in session.params)
        # a page limit is lifted only for the seconds holding more than a page
        unlimited = {(p["start"], p["end"]) for p in session.params if p["rows_per_page"] == 0}
        assert unlimited == {(f"{t:.6f}", f"{t:.0f}.999999") for t in (T + 10, T + 20)}

    # paging by passes alone: the whole second, or an error; never a partial window
    try:
        passes = Datagrepper(dg.url, unlimited_seconds=False, max_passes=2)
        got = passes.window(T + 10, T + 11)
    except DatagrepperError as exc:  # what PostgreSQL 15 does: some rows are on no page
        assert "2 passes of offset paging found only" in str(exc)
    else:
        assert_exactly(got, [m for m in sent if T + 10 <= m["timestamp"] < T + 11])


def test_a_crowded_second_by_passes(dg: harness.Datagrepper) -> None:
    """Without the unlimited request (a datagrepper that refuses it), a second of ties is paged
    through by passes of varying page sizes until its total is reached."""
    tied = corpus_at([T + 5] * 250, seed=13)
    around = corpus_at([T + 4.5, T + 5.999999, T + 6], seed=14)
    dg.add(tied + around)
    session = Recording()
    client = Datagrepper(dg.url, rows_per_page=20, session=session, unlimited_seconds=False)
    assert_exactly(client.window(T, T + 60), tied + around)
    assert 0 not in {p["rows_per_page"] for p in session.params}


def test_a_window_that_fits_a_page_is_one_request(dg: harness.Datagrepper) -> None:
    sent = corpus_at([T + k for k in range(99)], seed=5)
    dg.add(sent)
    session = Recording()
    client = Datagrepper(dg.url, session=session)
    assert_exactly(client.window(T, T + 99), sent)
    assert len(session.params) == 1
    assert client.window(T + 200, T + 300) == []
    assert client.window(T + 5, T + 5) == [] and client.window(T + 5, T) == []


def test_windows_are_half_open_to_the_microsecond(dg: harness.Datagrepper) -> None:
    start, end = T + 100, T + 110
    at = {
        "before": start - 0.001,
        "start": start,
        "start+0.25": start + 0.25,
        "start+0.75": start + 0.75,
        "end-0.3": end - 0.3,
        "end-1us": end - 0.000001,
        "end": end,
        "end+0.5": end + 0.5,
    }
    sent = corpus_at(list(at.values()), seed=6)
    for m, name in zip(sent, at, strict=True):
        m["msg_id"] = name
    dg.add(sent)
    client = Datagrepper(dg.url)

    def window(a: float, b: float) -> set[str]:
        return set(ids(client.window(a, b)))

    assert window(start, end) == {"start", "start+0.25", "start+0.75", "end-0.3", "end-1us"}
    assert window(end, end + 1) == {"end", "end+0.5"}
    assert window(start - 1, start) == {"before"}
    assert window(start, start + 0.5) == {"start", "start+0.25"}
    assert window(start + 0.5, end - 0.3) == {"start+0.75"}
    assert window(end - 0.3, end) == {"end-0.3", "end-1us"}
    # consecutive windows cover each message once
    cuts = [start - 1, start + 0.25, start + 0.5, end - 0.3, end, end + 1]
    parts = [client.window(a, b) for a, b in itertools.pairwise(cuts)]
    assert sorted(i for p in parts for i in ids(p)) == sorted(at)


def test_categories_filter(dg: harness.Datagrepper) -> None:
    bodhi = corpus_at([T + k / 10 for k in range(150)], 8, "org.fedoraproject.prod.bodhi.x")
    koji = corpus_at([T + k for k in range(20)], 9, "org.fedoraproject.prod.buildsys.build")
    copr = corpus_at([T + k for k in range(5)], 10, "org.fedoraproject.prod.copr.build.end")
    dg.add(bodhi + koji + copr)

    def window(*categories: str) -> list[Item]:
        return Datagrepper(dg.url, categories=categories).window(T, T + 60)

    assert_exactly(window("bodhi"), bodhi)
    assert_exactly(window("buildsys", "copr"), koji + copr)
    assert_exactly(window(), bodhi + koji + copr)
    assert window("nosuchcategory") == []


# --- errors -------------------------------------------------------------------------------


def test_nothing_listening_is_an_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DatagrepperError) as caught:
        Datagrepper(url, timeout=5).window(T, T + 60)
    assert caught.value.status is None
    assert caught.value.params["start"] == f"{T:.6f}"
    assert str(caught.value).startswith(f"GET {url}/raw?start=")
    assert "no answer" in str(caught.value)


def test_http_errors_name_the_parameter_and_status(dg: harness.Datagrepper) -> None:
    client = Datagrepper(dg.url)
    with pytest.raises(DatagrepperError) as caught:
        client.raw({"rows_per_page": 101})  # an HTML 400 page
    assert caught.value.status == 400
    assert "rows_per_page=101: HTTP 400: 400 Bad Request: rows_per_page must be <= 100" in str(
        caught.value
    )
    with pytest.raises(DatagrepperError) as caught:
        client.raw({"start": "not a time", "end": T})  # a JSON 500
    assert caught.value.status == 500
    assert "start=not+a+time" in str(caught.value)
    assert "HTTP 500: internal_error: 500 Internal Server Error" in str(caught.value)
    with pytest.raises(ValueError, match="rows_per_page must be 1-100"):
        Datagrepper(dg.url, rows_per_page=101)
    with pytest.raises(ValueError, match="rows_per_page must be 1-100"):
        Datagrepper(dg.url, rows_per_page=0)  # datagrepper would send every row


def test_a_stop_event_cancels_between_requests(dg: harness.Datagrepper) -> None:
    stop = threading.Event()
    stop.set()
    session = Recording()
    with pytest.raises(Cancelled):
        Datagrepper(dg.url, session=session).window(T, T + 60, stop)
    assert session.params == []


class Proxy:
    """An HTTP proxy in front of datagrepper that plays production's gateway: a ``/raw``
    window longer than ``longest`` seconds gets a 504 (gunicorn's timeout); ``mode`` can make
    every answer a 502, an HTML 200, or a /raw answer whose total is one more than it holds, or
    refuse ``rows_per_page=0`` with a 400 ("strict")."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.longest = float("inf")
        self.mode = "forward"
        self.windows: list[tuple[float, float, int]] = []  # start, end, status
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, kind = proxy.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[int, bytes, str]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        start, end = float(query["start"][0]), float(query["end"][0])
        if self.mode == "502":
            status, body, kind = 502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html"
        elif end - start > self.longest:
            status, body, kind = 504, b"<html><p>Gateway Time-out</p></html>", "text/html"
        elif self.mode == "strict" and query["rows_per_page"] == ["0"]:
            status, body, kind = 400, b"<title>400 Bad Request</title><p>no</p>", "text/html"
        elif self.mode == "html":
            status, body, kind = 200, b"<html><p>Please log in</p></html>", "text/html"
        else:
            request = urllib.request.Request(
                self.upstream + path, headers={"Accept": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=30) as r:
                status, body, kind = r.status, r.read(), "application/json"
            if self.mode == "inflate_total":
                answer = json.loads(body)
                answer["total"] += 1
                body = json.dumps(answer).encode()
        self.windows.append((start, end, status))
        return status, body, kind

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(dg: harness.Datagrepper) -> Iterator[Proxy]:
    p = Proxy(dg.url)
    yield p
    p.close()


def test_a_gateway_timeout_is_retried_once_on_half_the_window(
    dg: harness.Datagrepper, proxy: Proxy
) -> None:
    sent = corpus_at([T + k * 2 for k in range(300)], seed=11)  # 600 s, 3 pages
    dg.add(sent)
    proxy.longest = 400.0
    assert_exactly(Datagrepper(proxy.url).window(T, T + 600), sent)
    # one 504, then the same start with half the span, and no longer spans after it
    (a, b, status), (a2, b2, status2), *rest = proxy.windows
    assert (b - a, status) == (pytest.approx(600, abs=1e-5), 504)
    assert (a2, b2 - a2, status2) == (a, pytest.approx(300, abs=1e-5), 200)
    assert rest and all(s == 200 and b - a <= 300 for a, b, s in rest)

    proxy.longest = 100.0  # still too long once halved: the error goes to the caller
    with pytest.raises(DatagrepperError) as caught:
        Datagrepper(proxy.url).window(T, T + 600)
    assert caught.value.status == 504 and "Gateway Time-out" in str(caught.value)


def test_after_a_calm_spell_longer_spans_are_tried_again(
    dg: harness.Datagrepper, proxy: Proxy
) -> None:
    """A gateway that times out requests over 2,000 s: after the 504 the window goes on in
    1,800 s spans, and every CALM_REQUESTS answers without one it tries 3,600 s again (which
    fails again here, and is halved again): never stuck at short spans for the rest."""
    hours = 12
    sent = corpus_at([T + k * 900 + 7 for k in range(hours * 4)], seed=14)  # sparse: 1 a page
    dg.add(sent)
    proxy.longest = 2000.0
    assert_exactly(Datagrepper(proxy.url).window(T, T + hours * 3600), sent)
    spans = [(round(b - a), status) for a, b, status in proxy.windows]
    assert spans[:2] == [(3600, 504), (1800, 200)]
    failed = [i for i, (_, status) in enumerate(spans) if status == 504]
    assert len(failed) >= 2  # tried again, more than once over 12 hours
    for before, after in itertools.pairwise(failed):
        calm = spans[before + 1 : after]  # the halved one, then CALM_REQUESTS more
        assert len(calm) == 1 + CALM_REQUESTS and all(s == (1800, 200) for s in calm)
    assert all(span <= 1800 for span, status in spans if status == 200)


def test_bad_gateways_and_answers_that_are_not_raw(dg: harness.Datagrepper, proxy: Proxy) -> None:
    dg.add(corpus_at([T + 10] * 12, seed=12))
    client = Datagrepper(proxy.url, rows_per_page=5)
    proxy.mode = "502"
    with pytest.raises(DatagrepperError, match=r"HTTP 502: 502 Bad Gateway"):
        client.window(T, T + 1)  # one second: not split
    assert len(proxy.windows) == 1
    proxy.mode = "html"
    with pytest.raises(DatagrepperError, match=r"HTTP 200: not JSON \(text/html\): Please log in"):
        client.window(T, T + 60)
    # a crowded second whose total is never reached: an error, not a partial window
    proxy.mode = "inflate_total"
    with pytest.raises(DatagrepperError, match=r"holds 13 messages but 8 passes .* only 12"):
        client.window(T, T + 60)
    unlimited = [w for w in proxy.windows if w[1] - w[0] < 1]
    assert unlimited, "the unlimited request came first"


def test_a_datagrepper_refusing_unlimited_pages_is_read_by_passes(
    dg: harness.Datagrepper, proxy: Proxy
) -> None:
    sent = corpus_at([T + 1] * 30 + [T + 2] * 30 + [T + 3.5], seed=15)
    dg.add(sent)
    proxy.mode = "strict"
    assert_exactly(Datagrepper(proxy.url, rows_per_page=10).window(T, T + 60), sent)
    refused = [w for w in proxy.windows if w[2] == 400]
    assert len(refused) == 1  # asked once, then paged by passes
