"""The statscache-compatible REST API, ``/api/`` and ``/api/<ident>``: called in-process as a
WSGI app (and once through a real socket) over a store fed with hand-made messages whose
expected rows are computed here from the input alone."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from wsgiref.util import setup_testing_defaults

import pytest
import requests
from conftest import bundled, make_config
from test_plugins_bundled import BUNDLED

from statscache_exporter.daemon import exposition_for, web_context
from statscache_exporter.message import Message
from statscache_exporter.pipeline import Pipeline, open_pipeline
from statscache_exporter.plugin import Counter as CounterMetric
from statscache_exporter.plugin import Gauge, Output, Plugin
from statscache_exporter.web import App, WebServer

T0 = 1_709_294_400  # 2024-03-01T12:00:00Z, a whole hour (not a whole day: midnight is -12 h)
NOW = T0 + 2 * 86400  # the app's clock: 2024-03-03T12:00:00Z
KEEP_ALL = {"1s": "forever", "1m": "forever", "1h": "forever", "1d": "forever"}
HOST = "exporter.test"
OTHER_BUNDLED_IDENTS = sorted(i for i in BUNDLED if not i.startswith("volume"))
VOLUME_IDENTS = sorted(i for i in BUNDLED if i.startswith("volume"))

#: (message time, category) of every message fed to the category store
CATEGORY_EVENTS: list[tuple[float, str]] = [
    (T0, "bodhi"),
    (T0, "bodhi"),
    (T0 + 0.5, "copr"),
    (T0 + 1, "koji"),
    (T0 + 1.25, "bodhi"),
    (T0 + 5, "copr"),
    (T0 + 5.5, "copr"),
    (T0 + 5.9, "copr"),
    (T0 + 59, "bodhi"),
    (T0 + 60, "bodhi"),
    (T0 + 61, "copr"),
    (T0 + 3599, "koji"),
    (T0 + 3600, "bodhi"),
    (T0 + 3600.75, "koji"),
    (T0 + 43200, "copr"),  # the next UTC day
    (T0 + 86407, "bodhi"),
    (NOW, "koji"),  # exactly the app's now: still included by default
    (NOW + 1, "bodhi"),  # after the app's now
    (NOW + 3600, "copr"),
]


# --- helpers -----------------------------------------------------------------------------------


def fedmsg(topic: str, ts: float, mid: str, **body: Any) -> dict[str, Any]:
    return {"topic": topic, "msg": body, "timestamp": ts, "msg_id": mid}


def feed(pipeline: Pipeline, messages: Iterable[dict[str, Any]]) -> None:
    for m in messages:
        assert pipeline.handle(m) == "processed", m
    pipeline.flush()


def make_app(pipeline: Pipeline, now: float = NOW) -> App:
    return App(web_context(pipeline, exposition_for(pipeline)), clock=lambda: now)


def category_messages() -> list[dict[str, Any]]:
    return [
        fedmsg(f"org.fedoraproject.prod.{cat}.thing.happened", ts, f"cat-{i}")
        for i, (ts, cat) in enumerate(CATEGORY_EVENTS)
    ]


def category_app(open_store: Any, **sections: Any) -> App:
    p = open_store(store={"retention": KEEP_ALL}, **sections)
    feed(p, category_messages())
    return make_app(p)


def call(
    app: App, method: str, path_and_query: str, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request in-process: (status, headers by lower-case name, body)."""
    path, _, query = path_and_query.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_HOST": HOST,
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        seen["status"] = status
        seen["headers"] = response_headers

    body = b"".join(app(environ, start_response))
    names = [k.lower() for k, _ in seen["headers"]]
    assert len(names) == len(set(names)), names
    out_headers = {k.lower(): v for k, v in seen["headers"]}
    assert int(out_headers["content-length"]) == len(body) or method == "HEAD"
    return int(seen["status"].split()[0]), out_headers, body


def get(
    app: App, path_and_query: str, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return call(app, "GET", path_and_query, headers)


def get_json(app: App, path_and_query: str, status: int = 200) -> dict[str, Any]:
    got, headers, body = get(app, path_and_query)
    assert got == status, body
    assert headers["content-type"] == "application/json; charset=utf-8"
    result: dict[str, Any] = json.loads(body)
    return result


def assert_error(
    app: App,
    path_and_query: str,
    status: int,
    parameter: str | None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """The request fails with a JSON error of that status naming that parameter (or none);
    returns the error message."""
    got, out_headers, body = get(app, path_and_query, headers)
    assert got == status, body
    assert out_headers["content-type"] == "application/json; charset=utf-8"
    assert out_headers["access-control-allow-origin"] == "*"
    error = json.loads(body)
    expected_keys = {"error", "status", "parameter"} if parameter else {"error", "status"}
    assert set(error) == expected_keys, error
    assert error["status"] == status
    assert error.get("parameter") == parameter
    assert isinstance(error["error"], str) and error["error"]
    message: str = error["error"]
    return message


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def row(start: int, metric: str, labels: dict[str, str], value: float) -> dict[str, Any]:
    return {"start": start, "time": iso(start), "metric": metric, "labels": labels, "value": value}


def category_rows(
    resolution: int,
    start: int = 0,
    stop: int = NOW,
    descending: bool = True,
    categories: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The expected rows of volume_by_category, counted from CATEGORY_EVENTS."""
    wanted = set(categories) if categories is not None else None
    counts = Counter(
        (int(ts) // resolution * resolution, cat)
        for ts, cat in CATEGORY_EVENTS
        if wanted is None or cat in wanted
    )
    keys = sorted(
        (k for k in counts if start <= k[0] <= stop),
        key=lambda k: (-k[0] if descending else k[0], k[1]),
    )
    return [row(s, "messages_by_category", {"category": c}, counts[s, c]) for s, c in keys]


LINK = re.compile(r'<([^>]*)>;\s*rel="([a-z]+)"')


def links(headers: Mapping[str, str]) -> dict[str, str]:
    """rel → URL of the Link header."""
    found = LINK.findall(headers["link"])
    assert len(found) == headers["link"].count("rel="), headers["link"]
    return {rel: url for url, rel in found}


def relative(url: str) -> str:
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.netloc == HOST, url
    return f"{parts.path}?{parts.query}"


def page_of(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["page"][0])


# --- a plugin with several metrics, labels in unsorted order and a gauge ------------------------


class Multi(Plugin):
    ident = "multi"
    name = "Multi"
    summary = "two counters and a gauge"
    description = "Counts per zone and app, per app, and the newest level."
    metrics = (
        CounterMetric("multi_zeta", "messages per zone and app", ("zone", "app")),
        CounterMetric("multi_alpha", "messages per app", ("app",)),
        Gauge("multi_level", "the level of the newest message"),
    )

    def process(self, message: Message, out: Output) -> None:
        body = message.body
        out.inc("multi_zeta", zone=body["zone"], app=body["app"])
        out.inc("multi_alpha", app=body["app"])
        out.set("multi_level", body["level"])


MULTI_MESSAGES = [
    fedmsg("org.fedoraproject.prod.multi.x", T0 + 0.1, "m1", zone="b", app="x", level=1.5),
    fedmsg("org.fedoraproject.prod.multi.x", T0 + 0.2, "m2", zone="a", app="y", level=2.5),
    fedmsg("org.fedoraproject.prod.multi.x", T0 + 0.3, "m3", zone="a", app="x", level=4),
    fedmsg("org.fedoraproject.prod.multi.x", T0 + 1.5, "m4", zone="b", app="x", level=2.5),
]

#: by hand, at 1 s, newest first; ties by metric, then labels
MULTI_ROWS_1S = [
    row(T0 + 1, "multi_alpha", {"app": "x"}, 1),
    row(T0 + 1, "multi_level", {}, 2.5),
    row(T0 + 1, "multi_zeta", {"app": "x", "zone": "b"}, 1),
    row(T0, "multi_alpha", {"app": "x"}, 2),
    row(T0, "multi_alpha", {"app": "y"}, 1),
    row(T0, "multi_level", {}, 4),
    row(T0, "multi_zeta", {"app": "x", "zone": "a"}, 1),
    row(T0, "multi_zeta", {"app": "x", "zone": "b"}, 1),
    row(T0, "multi_zeta", {"app": "y", "zone": "a"}, 1),
]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def app(open_store: Any) -> App:
    """Every bundled plugin over the category messages; the clock at NOW."""
    return category_app(open_store)


@pytest.fixture
def multi_app(open_store: Any) -> App:
    p = open_store("multi.sqlite", plugins={"multi": Multi}, store={"retention": KEEP_ALL})
    feed(p, MULTI_MESSAGES)
    return make_app(p)


# --- GET /api/ ---------------------------------------------------------------------------------


def expected_listing(classes: Iterable[type[Plugin]]) -> dict[str, dict[str, Any]]:
    return {
        cls.ident: {
            "ident": cls.ident,
            "name": cls.name,
            "summary": cls.summary,
            "description": cls.description,
            "metrics": [
                {"name": m.name, "kind": m.kind, "help": m.help, "labels": list(m.labels)}
                for m in cls.metrics
            ],
        }
        for cls in classes
    }


def test_index_lists_each_enabled_plugin_with_its_metrics(open_store: Any) -> None:
    plugins = {**bundled(), "multi": Multi}
    p = open_store(plugins=plugins)
    app = make_app(p)
    for path in ("/api/", "/api"):
        status, headers, body = get(app, path)
        assert status == 200
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert headers["access-control-allow-origin"] == "*"
        listing = json.loads(body)
        assert set(listing) == {"plugins"}
        assert len(listing["plugins"]) == 17  # 16 bundled and "multi"
        by_ident = {entry["ident"]: entry for entry in listing["plugins"]}
        assert by_ident == expected_listing(plugins.values())
    assert by_ident["volume"] == {
        "ident": "volume",
        "name": "Volume",
        "summary": "Messages on the bus",
        "description": "Every message the exporter processed, once.",
        "metrics": [
            {"name": "messages", "kind": "counter", "help": "Messages processed", "labels": []}
        ],
    }
    assert by_ident["multi"]["metrics"] == [
        {"name": "multi_zeta", "kind": "counter", "help": "messages per zone and app",
         "labels": ["zone", "app"]},
        {"name": "multi_alpha", "kind": "counter", "help": "messages per app", "labels": ["app"]},
        {"name": "multi_level", "kind": "gauge", "help": "the level of the newest message",
         "labels": []},
    ]  # fmt: skip


def test_index_leaves_out_disabled_plugins_and_they_are_404(tmp_path: Path) -> None:
    config = make_config(tmp_path / "store.sqlite", plugins={"volume_by_agent": {"enabled": False}})
    p = open_pipeline(config, bundled())
    try:
        app = make_app(p)
        check_index_without_agent(app)
    finally:
        p.store.close()


def check_index_without_agent(app: App) -> None:
    listing = get_json(app, "/api/")
    assert sorted(e["ident"] for e in listing["plugins"]) == OTHER_BUNDLED_IDENTS + [
        i for i in VOLUME_IDENTS if i != "volume_by_agent"
    ]
    message = assert_error(app, "/api/volume_by_agent", 404, None)
    assert "volume_by_agent" in message
    assert message.endswith(
        "releng_updates, volume, volume_by_category, volume_by_package, volume_by_topic, "
        "volume_by_user"
    )


def test_index_as_csv(multi_app: App) -> None:
    for path, headers in (("/api/?format=csv", {}), ("/api/", {"Accept": "text/csv"})):
        status, out_headers, body = get(multi_app, path, headers)
        assert status == 200
        assert out_headers["content-type"] == "text/csv; charset=utf-8"
        assert out_headers["access-control-allow-origin"] == "*"
        assert body == (
            b"ident,name,summary,metric,kind,labels\r\n"
            b"multi,Multi,two counters and a gauge,multi_zeta,counter,zone app\r\n"
            b"multi,Multi,two counters and a gauge,multi_alpha,counter,app\r\n"
            b"multi,Multi,two counters and a gauge,multi_level,gauge,\r\n"
        )


def test_index_as_jsonp(multi_app: App) -> None:
    plain = get(multi_app, "/api/")[2]
    for path, headers in (
        ("/api/?callback=cb", {}),
        ("/api/?callback=cb", {"Accept": "application/javascript"}),
        ("/api/?format=json&callback=cb", {}),
    ):
        status, out_headers, body = get(multi_app, path, headers)
        assert status == 200
        assert out_headers["content-type"] == "application/javascript; charset=utf-8"
        assert body == b"cb(" + plain + b");"
    assert_error(multi_app, "/api/?callback=alert(1)", 400, "callback")
    assert_error(multi_app, "/api/?callback=cb%0A", 400, "callback")


# --- GET /api/<ident>: rows and resolutions -----------------------------------------------------


def test_rows_at_one_minute_with_the_whole_body(app: App) -> None:
    body = get_json(app, "/api/volume_by_category?resolution=1m")
    expected = category_rows(60)
    # by hand, the first minute: bodhi 0, 0, 1.25, 59; copr 0.5, 5, 5.5, 5.9; koji 1
    assert expected[-3:] == [
        row(T0, "messages_by_category", {"category": "bodhi"}, 4),
        row(T0, "messages_by_category", {"category": "copr"}, 4),
        row(T0, "messages_by_category", {"category": "koji"}, 1),
    ]
    assert body == {
        "plugin": "volume_by_category",
        "resolution": "1m",
        "start": 0,
        "stop": NOW,
        "order": "desc",
        "page": 1,
        "pages": 1,
        "rows_per_page": 100,
        "total": len(expected),
        "rows": expected,
    }
    first = body["rows"][-1]
    assert first["time"] == "2024-03-01T12:00:00Z" and isinstance(first["start"], int)


def test_rows_of_a_plugin_without_labels(app: App) -> None:
    body = get_json(app, "/api/volume?resolution=1h&stop=" + str(NOW + 3600))
    counts = Counter(int(ts) // 3600 * 3600 for ts, _ in CATEGORY_EVENTS)
    assert body["rows"] == [row(s, "messages", {}, counts[s]) for s in sorted(counts, reverse=True)]
    # by hand: 12:00 has twelve messages (eight in 0-59 s, 60 s, 61 s, 3599 s), 13:00 two
    assert counts[T0] == 12 and counts[T0 + 3600] == 2
    assert body["rows"][-2:] == [
        row(T0 + 3600, "messages", {}, 2),
        row(T0, "messages", {}, 12),
    ]


@pytest.mark.parametrize(
    ("spelling", "seconds", "name"),
    [
        ("1s", 1, "1s"),
        ("1", 1, "1s"),
        ("1000ms", 1, "1s"),
        ("1m", 60, "1m"),
        ("60", 60, "1m"),
        ("60s", 60, "1m"),
        ("1h", 3600, "1h"),
        ("3600", 3600, "1h"),
        ("60m", 3600, "1h"),
        ("1d", 86400, "1d"),
        ("24h", 86400, "1d"),
    ],
)
def test_every_kept_resolution(app: App, spelling: str, seconds: int, name: str) -> None:
    body = get_json(app, f"/api/volume_by_category?resolution={spelling}")
    assert body["resolution"] == name
    assert body["rows"] == category_rows(seconds)
    assert body["total"] == len(body["rows"])


def test_default_resolution_is_the_finest(app: App) -> None:
    body = get_json(app, "/api/volume_by_category")
    assert body["resolution"] == "1s"
    assert body["rows"] == category_rows(1)
    assert body["total"] == 14


def test_daily_rows_by_hand(app: App) -> None:
    d0, d1, d2 = T0 - 43200, T0 + 43200, T0 + 129600
    body = get_json(app, "/api/volume_by_category?resolution=1d")
    # a bucket is selected by its start: today's (d2) also holds the messages after NOW
    assert body["rows"] == [
        row(d2, "messages_by_category", {"category": "bodhi"}, 1),
        row(d2, "messages_by_category", {"category": "copr"}, 1),
        row(d2, "messages_by_category", {"category": "koji"}, 1),
        row(d1, "messages_by_category", {"category": "bodhi"}, 1),
        row(d1, "messages_by_category", {"category": "copr"}, 1),
        row(d0, "messages_by_category", {"category": "bodhi"}, 6),
        row(d0, "messages_by_category", {"category": "copr"}, 5),
        row(d0, "messages_by_category", {"category": "koji"}, 3),
    ]
    assert [r["time"] for r in body["rows"][::3]] == [
        "2024-03-03T00:00:00Z",
        "2024-03-02T00:00:00Z",
        "2024-03-01T00:00:00Z",
    ]


@pytest.mark.parametrize("spelling", ["2m", "0", "90", "fast", "-1s", "1y", ""])
def test_a_resolution_that_is_not_kept_is_a_400_listing_the_valid_ones(
    app: App, spelling: str
) -> None:
    message = assert_error(app, f"/api/volume?resolution={spelling}", 400, "resolution")
    assert "1s, 1m, 1h, 1d" in message


@pytest.mark.parametrize("spelling", ["60.5", "60500ms", "1.9"])
def test_a_fractional_resolution_is_not_truncated_to_a_kept_one(app: App, spelling: str) -> None:
    """60.5 s is not a kept resolution: it must not be answered with the 1 m buckets."""
    message = assert_error(app, f"/api/volume?resolution={spelling}", 400, "resolution")
    assert "1s, 1m, 1h, 1d" in message


def test_gauges_and_several_metrics_order_ties_by_metric_then_labels(multi_app: App) -> None:
    body = get_json(multi_app, "/api/multi")
    assert body["rows"] == MULTI_ROWS_1S
    # a whole-number gauge is an integer, another stays a float
    assert [type(r["value"]) for r in body["rows"] if r["metric"] == "multi_level"] == [
        float,
        int,
    ]
    asc = get_json(multi_app, "/api/multi?order=asc")["rows"]
    assert asc == MULTI_ROWS_1S[3:] + MULTI_ROWS_1S[:3]
    minute = get_json(multi_app, "/api/multi?resolution=1m")["rows"]
    assert minute == [
        row(T0, "multi_alpha", {"app": "x"}, 3),
        row(T0, "multi_alpha", {"app": "y"}, 1),
        row(T0, "multi_level", {}, 2.5),
        row(T0, "multi_zeta", {"app": "x", "zone": "a"}, 1),
        row(T0, "multi_zeta", {"app": "x", "zone": "b"}, 2),
        row(T0, "multi_zeta", {"app": "y", "zone": "a"}, 1),
    ]


# --- start and stop ----------------------------------------------------------------------------


WINDOW = category_rows(1, start=T0 + 1, stop=T0 + 59)


@pytest.mark.parametrize(
    ("start", "stop"),
    [
        (str(T0 + 1), str(T0 + 59)),
        (f"{T0 + 1}.0", f"{T0 + 59}.999"),
        ("2024-03-01T12:00:01Z", "2024-03-01T12:00:59Z"),
        ("2024-03-01T12:00:01+00:00", "2024-03-01T12:00:59.5Z"),
        ("2024-03-01T14:00:01+02:00", "2024-03-01T07:00:59-05:00"),
        ("2024-03-01T12:00:01", "2024-03-01 12:00:59"),
    ],
)
def test_start_and_stop_are_inclusive_in_epoch_or_iso(app: App, start: str, stop: str) -> None:
    query = urlencode({"start": start, "stop": stop})
    body = get_json(app, f"/api/volume_by_category?{query}")
    assert (body["start"], body["stop"]) == (T0 + 1, T0 + 59)
    assert body["rows"] == WINDOW
    # by hand: koji and bodhi at +1, three copr at +5, bodhi at +59
    assert [(r["start"] - T0, r["labels"]["category"], r["value"]) for r in WINDOW] == [
        (59, "bodhi", 1),
        (5, "copr", 3),
        (1, "bodhi", 1),
        (1, "koji", 1),
    ]


def test_start_equal_to_stop_is_one_instant(app: App) -> None:
    body = get_json(app, f"/api/volume_by_category?start={T0}&stop={T0}")
    assert body["rows"] == [
        row(T0, "messages_by_category", {"category": "bodhi"}, 2),
        row(T0, "messages_by_category", {"category": "copr"}, 1),
    ]


def test_stop_defaults_to_the_apps_now(open_store: Any) -> None:
    p = open_store(store={"retention": KEEP_ALL})
    feed(p, category_messages())
    app = make_app(p, now=NOW + 0.9)
    body = get_json(app, "/api/volume_by_category")
    assert body["stop"] == NOW
    assert body["rows"][0] == row(NOW, "messages_by_category", {"category": "koji"}, 1)
    assert body["rows"] == category_rows(1, stop=NOW)
    later = get_json(app, f"/api/volume_by_category?stop={NOW + 3600}")
    assert later["rows"][:2] == [
        row(NOW + 3600, "messages_by_category", {"category": "copr"}, 1),
        row(NOW + 1, "messages_by_category", {"category": "bodhi"}, 1),
    ]
    assert later["total"] == body["total"] + 2
    # another clock, another default
    earlier = get_json(make_app(p, now=T0 + 60), "/api/volume_by_category")
    assert earlier["stop"] == T0 + 60
    assert earlier["rows"] == category_rows(1, stop=T0 + 60)


def test_start_after_stop_is_a_400(app: App) -> None:
    assert_error(app, f"/api/volume?start={T0 + 2}&stop={T0 + 1}", 400, "start")
    assert_error(app, f"/api/volume?start={NOW + 1}", 400, "start")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("start", "yesterday"),
        ("start", ""),
        ("start", "nan"),
        ("start", "inf"),
        ("start", "1e400"),
        ("stop", "2024-13-01T00:00:00Z"),
        ("stop", "12:00"),
        ("stop", "-inf"),
    ],
)
def test_a_time_that_is_not_a_time_is_a_400_naming_it(app: App, name: str, value: str) -> None:
    assert_error(app, f"/api/volume?{urlencode({name: value})}", 400, name)


# --- order -------------------------------------------------------------------------------------


def test_order_desc_by_default_asc_on_request(app: App) -> None:
    desc = get_json(app, "/api/volume_by_category")
    assert desc["order"] == "desc"
    assert desc["rows"] == category_rows(1)
    assert get_json(app, "/api/volume_by_category?order=desc")["rows"] == desc["rows"]
    asc = get_json(app, "/api/volume_by_category?order=asc")
    assert asc["order"] == "asc"
    assert asc["rows"] == category_rows(1, descending=False)
    # ties at one start stay by labels in both orders
    assert [r["labels"]["category"] for r in asc["rows"][:4]] == ["bodhi", "copr", "bodhi", "koji"]
    assert [r["labels"]["category"] for r in desc["rows"][-4:]] == [
        "bodhi",
        "koji",
        "bodhi",
        "copr",
    ]


@pytest.mark.parametrize("order", ["up", "ascending", "random"])
def test_a_bad_order_is_a_400(app: App, order: str) -> None:
    assert_error(app, f"/api/volume?order={order}", 400, "order")


# --- paging ------------------------------------------------------------------------------------


def test_pages_and_their_link_headers(app: App) -> None:
    params = [
        ("resolution", "1s"),
        ("category", "bodhi"),
        ("category", "copr"),
        ("category", "koji"),
        ("rows_per_page", "4"),
        ("order", "desc"),
    ]
    everything = category_rows(1)
    assert len(everything) == 14  # 4 pages: 4, 4, 4, 2
    base = "/api/volume_by_category?" + urlencode(params)
    for page in (1, 2, 3, 4):
        status, headers, body = get(app, f"{base}&page={page}")
        assert status == 200
        data = json.loads(body)
        assert data["rows"] == everything[(page - 1) * 4 : page * 4]
        assert (data["page"], data["pages"], data["total"]) == (page, 4, 14)
        assert headers["x-link-count"] == "4"
        assert headers["x-link-number"] == str(page)
        rels = links(headers)
        expected_rels = {"first": 1, "previous": page - 1, "next": page + 1, "last": 4}
        if page == 1:
            del expected_rels["previous"]
        if page == 4:
            del expected_rels["next"]
        assert {rel: page_of(url) for rel, url in rels.items()} == expected_rels
        for url in rels.values():
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc, parts.path) == (
                "http",
                HOST,
                "/api/volume_by_category",
            )
            kept = parse_qs(parts.query, keep_blank_values=True)
            assert kept == {
                "resolution": ["1s"],
                "category": ["bodhi", "copr", "koji"],
                "rows_per_page": ["4"],
                "order": ["desc"],
                # the default stop (now) is pinned in the links, so that pages stay stable
                "stop": [str(int(NOW))],
                "page": [str(page_of(url))],
            }


def test_a_page_past_the_last_is_empty(app: App) -> None:
    status, headers, body = get(app, "/api/volume_by_category?rows_per_page=4&page=9")
    assert status == 200
    data = json.loads(body)
    assert data["rows"] == []
    assert (data["page"], data["pages"], data["total"]) == (9, 4, 14)
    assert (headers["x-link-number"], headers["x-link-count"]) == ("9", "4")
    rels = {rel: page_of(url) for rel, url in links(headers).items()}
    assert rels == {"first": 1, "previous": 4, "last": 4}


def test_following_next_links_yields_every_row_once(app: App) -> None:
    query = "/api/volume_by_category?category=koji&category=bodhi&order=asc&rows_per_page=3"
    one_page = get_json(app, query.replace("rows_per_page=3", "rows_per_page=100"))["rows"]
    assert one_page == category_rows(1, descending=False, categories=("bodhi", "koji"))
    walked: list[dict[str, Any]] = []
    numbers = []
    url: str | None = query
    while url is not None:
        status, headers, body = get(app, url)
        assert status == 200
        walked += json.loads(body)["rows"]
        numbers.append(int(headers["x-link-number"]))
        assert headers["x-link-count"] == str(-(-len(one_page) // 3))
        nxt = links(headers).get("next")
        url = relative(nxt) if nxt else None
    assert walked == one_page
    assert numbers == list(range(1, -(-len(one_page) // 3) + 1))


def test_next_links_stay_on_the_first_pages_stop_while_time_passes(open_store: Any) -> None:
    """``stop`` defaults to now "so pages stay stable": the links must carry that stop, or
    rows that became visible since page 1 shift the later pages (desc: rows seen twice)."""
    p = open_store(store={"retention": KEEP_ALL})
    feed(p, category_messages())
    clock = {"now": float(T0 + 100)}
    app = App(web_context(p, exposition_for(p)), clock=lambda: clock["now"])
    expected = category_rows(1, stop=T0 + 100)
    assert len(expected) == 8  # 3 pages of 3
    walked: list[dict[str, Any]] = []
    url: str | None = "/api/volume_by_category?rows_per_page=3"
    while url is not None:
        status, headers, body = get(app, url)
        assert status == 200
        walked += json.loads(body)["rows"]
        clock["now"] = float(T0 + 3600)  # an hour later: three more rows are visible
        nxt = links(headers).get("next")
        url = relative(nxt) if nxt else None
    assert walked == expected


def test_no_rows_is_one_empty_page(app: App) -> None:
    status, headers, body = get(app, "/api/volume_by_category?category=nothing")
    assert status == 200
    data = json.loads(body)
    assert (data["rows"], data["total"], data["page"], data["pages"]) == ([], 0, 1, 1)
    assert (headers["x-link-number"], headers["x-link-count"]) == ("1", "1")
    assert {rel: page_of(url) for rel, url in links(headers).items()} == {"first": 1, "last": 1}


def test_limit_caps_the_rows_before_paging(app: App) -> None:
    everything = category_rows(1)
    base = "/api/volume_by_category?limit=6&rows_per_page=4"
    first = get_json(app, base)
    assert (first["total"], first["pages"]) == (6, 2)
    assert first["rows"] == everything[:4]
    status, headers, body = get(app, base + "&page=2")
    assert status == 200
    assert json.loads(body)["rows"] == everything[4:6]
    assert headers["x-link-count"] == "2"
    assert "next" not in links(headers)
    assert parse_qs(urlsplit(links(headers)["first"]).query)["limit"] == ["6"]
    assert get_json(app, base + "&page=3")["rows"] == []
    bigger = get_json(app, "/api/volume_by_category?limit=1000")
    assert (bigger["total"], bigger["rows"]) == (14, everything)
    assert get_json(app, "/api/volume_by_category?limit=1")["rows"] == everything[:1]
    for bad in ("0", "-3", "many", "1.5"):
        assert_error(app, f"/api/volume_by_category?limit={bad}", 400, "limit")


def test_default_page_size_is_100_and_at_most_1000(open_store: Any) -> None:
    p = open_store(store={"retention": KEEP_ALL})
    feed(p, (fedmsg("org.fedoraproject.prod.bodhi.x", T0 + i, f"v{i}") for i in range(150)))
    app = make_app(p)
    status, headers, body = get(app, "/api/volume")
    assert status == 200
    data = json.loads(body)
    assert (data["rows_per_page"], data["total"], data["pages"]) == (100, 150, 2)
    assert data["rows"] == [row(T0 + i, "messages", {}, 1) for i in range(149, 49, -1)]
    assert (headers["x-link-count"], headers["x-link-number"]) == ("2", "1")
    page2 = get_json(app, "/api/volume?page=2")
    assert page2["rows"] == [row(T0 + i, "messages", {}, 1) for i in range(49, -1, -1)]
    assert get_json(app, "/api/volume?rows_per_page=1000")["pages"] == 1
    message = assert_error(app, "/api/volume?rows_per_page=1001", 400, "rows_per_page")
    assert "1000" in message


def test_page_size_from_config(open_store: Any) -> None:
    app = category_app(
        open_store, http={"api": {"default_rows_per_page": 5, "max_rows_per_page": 8}}
    )
    data = get_json(app, "/api/volume_by_category")
    assert (data["rows_per_page"], data["pages"], data["rows"]) == (5, 3, category_rows(1)[:5])
    assert get_json(app, "/api/volume_by_category?rows_per_page=8")["rows"] == category_rows(1)[:8]
    assert_error(app, "/api/volume_by_category?rows_per_page=9", 400, "rows_per_page")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rows_per_page", "0"),
        ("rows_per_page", "-1"),
        ("rows_per_page", "ten"),
        ("rows_per_page", ""),
        ("page", "0"),
        ("page", "-1"),
        ("page", "two"),
        ("page", ""),
    ],
)
def test_bad_page_numbers_are_a_400(app: App, name: str, value: str) -> None:
    assert_error(app, f"/api/volume?{name}={value}", 400, name)


# --- filters and parameters --------------------------------------------------------------------


def test_label_filters(app: App) -> None:
    bodhi = get_json(app, "/api/volume_by_category?category=bodhi")
    assert bodhi["rows"] == category_rows(1, categories=["bodhi"])
    assert bodhi["total"] == 6
    either = get_json(app, "/api/volume_by_category?category=bodhi&category=copr")
    assert either["rows"] == category_rows(1, categories=["bodhi", "copr"])
    assert {r["labels"]["category"] for r in either["rows"]} == {"bodhi", "copr"}
    assert get_json(app, "/api/volume_by_category?category=nothing")["rows"] == []
    message = assert_error(app, "/api/volume_by_category?user=alice", 400, "user")
    assert "category" in message
    assert_error(app, "/api/volume?category=bodhi", 400, "category")


def test_metric_and_label_filters_on_several_metrics(multi_app: App) -> None:
    def rows(query: str) -> list[dict[str, Any]]:
        return list(get_json(multi_app, f"/api/multi?{query}")["rows"])

    assert rows("metric=multi_alpha") == [r for r in MULTI_ROWS_1S if r["metric"] == "multi_alpha"]
    assert rows("metric=multi_alpha&metric=multi_level") == [
        r for r in MULTI_ROWS_1S if r["metric"] in ("multi_alpha", "multi_level")
    ]
    # a filter on a label: series without that label do not match
    assert rows("app=x") == [r for r in MULTI_ROWS_1S if r["labels"].get("app") == "x"]
    # two labels: both must match
    assert rows("app=x&zone=a") == [row(T0, "multi_zeta", {"app": "x", "zone": "a"}, 1)]
    assert rows("metric=multi_alpha&app=y") == [row(T0, "multi_alpha", {"app": "y"}, 1)]
    message = assert_error(multi_app, "/api/multi?metric=messages", 400, "metric")
    assert "multi_alpha" in message
    assert_error(multi_app, "/api/multi?metric=", 400, "metric")


@pytest.mark.parametrize("name", ["foo", "per_page", "Page", "callback_"])
def test_an_unknown_parameter_is_a_400_naming_it(app: App, name: str) -> None:
    message = assert_error(app, f"/api/volume_by_category?{name}=1", 400, name)
    for valid in ("start", "stop", "rows_per_page", "category"):
        assert valid in message


@pytest.mark.parametrize(
    "name", ["page", "rows_per_page", "order", "start", "stop", "limit", "resolution", "format"]
)
def test_a_single_parameter_given_twice_is_a_400(app: App, name: str) -> None:
    value = {"order": "asc", "resolution": "1s", "format": "json", "start": "1"}.get(name, "2")
    query = urlencode([(name, value), (name, value)])
    message = assert_error(app, f"/api/volume_by_category?{query}", 400, name)
    assert "2 times" in message


# --- formats and content negotiation -----------------------------------------------------------


JSON_TYPE = "application/json; charset=utf-8"
CSV_TYPE = "text/csv; charset=utf-8"
JSONP_TYPE = "application/javascript; charset=utf-8"


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, JSON_TYPE),
        ("", JSON_TYPE),
        ("*/*", JSON_TYPE),
        ("application/json", JSON_TYPE),
        ("text/json", JSON_TYPE),
        ("Application/JSON", JSON_TYPE),
        ("application/*", JSON_TYPE),
        ("text/*", JSON_TYPE),
        ("text/csv", CSV_TYPE),
        ("application/csv", CSV_TYPE),
        ("text/csv; charset=utf-8", CSV_TYPE),
        ("text/csv;q=0.9, application/json;q=0.5", CSV_TYPE),
        ("application/json;q=0.5, text/csv;q=0.9", CSV_TYPE),
        ("application/json;q=0.5, text/csv;q=0.5", JSON_TYPE),
        ("application/json;q=0, text/csv", CSV_TYPE),
        ("text/html, */*;q=0.1", JSON_TYPE),
        ("text/html, application/xhtml+xml, text/csv;q=0.8, */*;q=0.1", CSV_TYPE),
    ],
)
def test_accept_chooses_the_type(app: App, accept: str | None, content_type: str) -> None:
    headers = {} if accept is None else {"Accept": accept}
    status, out_headers, body = get(app, "/api/volume_by_category", headers)
    assert status == 200
    assert out_headers["content-type"] == content_type
    if content_type == JSON_TYPE:
        assert json.loads(body)["rows"] == category_rows(1)
    else:
        assert body.startswith(b"start,time,metric,category,value\r\n")


@pytest.mark.parametrize(
    "accept", ["text/html", "application/xml, text/html;q=0.5", "application/json;q=0", "image/*"]
)
def test_nothing_acceptable_is_a_406_in_json(app: App, accept: str) -> None:
    message = assert_error(app, "/api/volume", 406, None, {"Accept": accept})
    for kind in ("application/json", "text/csv"):
        assert kind in message
    assert_error(app, "/api/", 406, None, {"Accept": accept})


def test_format_parameter_wins_over_accept(app: App) -> None:
    status, headers, body = get(app, "/api/volume?format=csv", {"Accept": "application/json"})
    assert (status, headers["content-type"]) == (200, CSV_TYPE)
    status, headers, body = get(app, "/api/volume?format=json", {"Accept": "text/csv"})
    assert (status, headers["content-type"]) == (200, JSON_TYPE)
    status, headers, body = get(app, "/api/volume?format=csv", {"Accept": "text/html"})
    assert (status, headers["content-type"]) == (200, CSV_TYPE)
    assert body.startswith(b"start,time,metric,value\r\n")
    for bad in ("xml", "JSON", "jsonp", ""):
        assert_error(app, f"/api/volume?format={bad}", 400, "format")
        assert_error(app, f"/api/?format={bad}", 400, "format")


def test_csv_rows(app: App) -> None:
    status, headers, body = get(app, "/api/volume_by_category?format=csv&resolution=1m")
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    assert headers["x-link-count"] == "1"
    lines = body.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\n" not in line for line in lines)
    expected = [["start", "time", "metric", "category", "value"]] + [
        [str(r["start"]), r["time"], r["metric"], r["labels"]["category"], str(r["value"])]
        for r in category_rows(60)
    ]
    assert list(csv.reader(io.StringIO(body.decode(), newline=""))) == expected
    assert lines[-2] == f"{T0},2024-03-01T12:00:00Z,messages_by_category,koji,1".encode()


def test_csv_of_several_metrics_has_sorted_label_columns(multi_app: App) -> None:
    status, headers, body = get(multi_app, "/api/multi", {"Accept": "text/csv"})
    assert (status, headers["content-type"]) == (200, CSV_TYPE)
    first, second = iso(T0 + 1), iso(T0)
    assert body.decode() == (
        "start,time,metric,app,zone,value\r\n"
        f"{T0 + 1},{first},multi_alpha,x,,1\r\n"
        f"{T0 + 1},{first},multi_level,,,2.5\r\n"
        f"{T0 + 1},{first},multi_zeta,x,b,1\r\n"
        f"{T0},{second},multi_alpha,x,,2\r\n"
        f"{T0},{second},multi_alpha,y,,1\r\n"
        f"{T0},{second},multi_level,,,4\r\n"
        f"{T0},{second},multi_zeta,x,a,1\r\n"
        f"{T0},{second},multi_zeta,x,b,1\r\n"
        f"{T0},{second},multi_zeta,y,a,1\r\n"
    )


AWKWARD_USERS = [
    "alice,bob",
    'say "hi"',
    "two\nlines",
    "cr\r\nlf",
    '"quoted, all"',
    " leading space",
    "zoë",
    "plain",
]


def test_csv_and_json_quote_awkward_label_values(open_store: Any) -> None:
    p = open_store(store={"retention": KEEP_ALL})
    items = [
        {
            **fedmsg("org.fedoraproject.prod.fas.user.update", T0 + i, f"u{i}"),
            "users": [user],
            "packages": [],
            "agent_name": "someone",
        }
        for i, user in enumerate(AWKWARD_USERS)
    ]
    feed(p, items)
    app = make_app(p)
    status, headers, body = get(app, "/api/volume_by_user?order=asc&format=csv")
    assert (status, headers["content-type"]) == (200, CSV_TYPE)
    parsed = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert parsed == [["start", "time", "metric", "user", "value"]] + [
        [str(T0 + i), iso(T0 + i), "messages_by_user", user, "1"]
        for i, user in enumerate(AWKWARD_USERS)
    ]
    assert body.startswith(b"start,time,metric,user,value\r\n")
    assert body.endswith(b",messages_by_user,plain,1\r\n")
    assert f'{T0},{iso(T0)},messages_by_user,"alice,bob",1\r\n'.encode() in body
    assert b',"say ""hi""",1\r\n' in body
    assert b',"two\nlines",1\r\n' in body
    assert b',"cr\r\nlf",1\r\n' in body
    assert b',"""quoted, all""",1\r\n' in body
    assert ",zoë,1\r\n".encode() in body
    filtered = "/api/volume_by_user?" + urlencode(
        [("user", 'say "hi"'), ("user", "alice,bob"), ("user", "cr\r\nlf"), ("rows_per_page", "1")]
    )
    status, headers, body = get(app, filtered)
    assert status == 200
    assert [r["labels"]["user"] for r in json.loads(body)["rows"]] == ["cr\r\nlf"]
    assert headers["x-link-count"] == "3"
    for url in links(headers).values():
        assert parse_qs(urlsplit(url).query)["user"] == ['say "hi"', "alice,bob", "cr\r\nlf"]
    status, headers, body = get(app, relative(links(headers)["last"]))
    assert [r["labels"]["user"] for r in json.loads(body)["rows"]] == ["alice,bob"]
    data = get_json(app, "/api/volume_by_user?order=asc")
    assert data["rows"] == [
        row(T0 + i, "messages_by_user", {"user": user}, 1) for i, user in enumerate(AWKWARD_USERS)
    ]


def test_jsonp(app: App) -> None:
    plain = get(app, "/api/volume_by_category?resolution=1h")[2]
    for query, accept in (
        ("callback=cb", None),
        ("callback=cb", "application/javascript"),
        ("callback=cb", "text/javascript"),
        ("callback=cb&format=json", None),
    ):
        headers = {"Accept": accept} if accept else {}
        status, out_headers, body = get(
            app, f"/api/volume_by_category?resolution=1h&{query}", headers
        )
        assert status == 200
        assert out_headers["content-type"] == JSONP_TYPE
        assert out_headers["access-control-allow-origin"] == "*"
        assert body == b"cb(" + plain + b");"
    status, _, body = get(app, "/api/volume?callback=jQuery_1.fn$2")
    assert status == 200 and body.startswith(b"jQuery_1.fn$2({") and body.endswith(b"});")


@pytest.mark.parametrize("callback", ["alert(1)", "1abc", "a-b", "cb;x", "", "x" * 101])
def test_a_callback_that_is_not_a_name_is_a_400(app: App, callback: str) -> None:
    query = urlencode({"callback": callback})
    assert_error(app, f"/api/volume?{query}", 400, "callback")


def test_errors_are_jsonp_when_the_callback_is_valid(app: App) -> None:
    status, headers, body = get(app, "/api/volume?callback=cb&order=up")
    assert status == 400
    assert headers["content-type"] == JSONP_TYPE
    assert headers["access-control-allow-origin"] == "*"
    assert body.startswith(b"cb(") and body.endswith(b");")
    error = json.loads(body[3:-2])
    assert error["parameter"] == "order" and error["status"] == 400
    status, _, body = get(app, "/api/nope?callback=cb")
    assert status == 404 and body.startswith(b"cb(")
    assert json.loads(body[3:-2])["status"] == 404
    assert_error(app, "/api/volume?callback=cb&callback=cb", 400, "callback")


# --- errors, CORS, methods ---------------------------------------------------------------------


def test_an_unknown_plugin_is_a_404_listing_the_available_ones(app: App) -> None:
    message = assert_error(app, "/api/nope", 404, None)
    assert "nope" in message
    for ident in VOLUME_IDENTS:
        assert ident in message
    assert_error(app, "/api/volume/extra", 404, None)


def test_cors_on_answers_and_errors(app: App) -> None:
    for path in ("/api/", "/api/volume", "/api/volume?format=csv"):
        status, headers, _ = get(app, path)
        assert status == 200
        assert headers["access-control-allow-origin"] == "*"
        assert headers["access-control-expose-headers"] == "Link, X-Link-Number, X-Link-Count"
    assert_error(app, "/api/volume?page=0", 400, "page")
    assert_error(app, "/api/nope", 404, None)
    assert_error(app, "/api/volume", 406, None, {"Accept": "text/html"})


def test_options_head_and_post(app: App) -> None:
    status, headers, body = call(app, "OPTIONS", "/api/volume")
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == "*"
    assert {m.strip() for m in headers["allow"].split(",")} >= {"GET", "HEAD", "OPTIONS"}
    assert "GET" in headers["access-control-allow-methods"]
    status, headers, body = call(app, "POST", "/api/volume")
    assert status == 405
    assert "GET" in headers["allow"]
    get_status, get_headers, get_body = get(app, "/api/volume")
    assert get_status == 200
    status, headers, body = call(app, "HEAD", "/api/volume")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(get_body))
    assert headers["content-type"] == get_headers["content-type"]
    assert headers["x-link-count"] == get_headers["x-link-count"]


# --- basic auth --------------------------------------------------------------------------------


AUTH = {"basic_auth": {"username": "stats", "password": "s3cret:pw"}}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_guards_the_api_but_not_healthz(open_store: Any) -> None:
    app = category_app(open_store, http=AUTH)
    for path in ("/api/", "/api/volume"):
        status, headers, _ = get(app, path)
        assert status == 401
        assert headers["www-authenticate"].startswith("Basic ")
        assert get(app, path, basic("stats", "wrong"))[0] == 401
        assert get(app, path, basic("other", "s3cret:pw"))[0] == 401
        assert get(app, path, {"Authorization": "Bearer s3cret:pw"})[0] == 401
        status, _, body = get(app, path, basic("stats", "s3cret:pw"))
        assert status == 200 and json.loads(body)
    rows = json.loads(get(app, "/api/volume_by_category", basic("stats", "s3cret:pw"))[2])["rows"]
    assert rows == category_rows(1)
    status, _, body = get(app, "/healthz")
    assert (status, body) == (200, b"ok\n")


# --- a store whose path needs quoting in an SQLite URI ------------------------------------------


@pytest.mark.parametrize("name", ["with#hash.sqlite", "with%41percent.sqlite", "with?mark.sqlite"])
def test_a_store_path_with_uri_characters_is_served(open_store: Any, name: str) -> None:
    p = open_store(name, store={"retention": KEEP_ALL})
    feed(p, category_messages())
    app = make_app(p)
    status, _, body = get(app, "/api/volume_by_category?resolution=1m")
    assert status == 200, body
    assert json.loads(body)["rows"] == category_rows(60)


# --- through a real socket ---------------------------------------------------------------------


def test_paging_through_a_real_server(open_store: Any) -> None:
    p = open_store(store={"retention": KEEP_ALL}, http={"port": 0})
    feed(p, category_messages())
    server = WebServer(make_app(p), p.config.http)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        one = requests.get(f"{base}/api/volume_by_category?category=bodhi&category=copr", timeout=5)
        assert one.status_code == 200
        everything = one.json()["rows"]
        assert everything == category_rows(1, categories=("bodhi", "copr"))
        walked: list[dict[str, Any]] = []
        url: str | None = (
            f"{base}/api/volume_by_category?category=bodhi&category=copr&rows_per_page=3"
        )
        pages = 0
        while url:
            r = requests.get(url, timeout=5, headers={"Accept": "application/json"})
            assert r.status_code == 200
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            pages += 1
            assert r.headers["X-Link-Number"] == str(pages)
            walked += r.json()["rows"]
            url = r.links.get("next", {}).get("url")
            if url:
                assert url.startswith(f"{base}/api/volume_by_category?")
        assert walked == everything
        assert pages == -(-len(everything) // 3)
        r = requests.get(f"{base}/api/volume_by_category?resolution=1d", timeout=5,
                         headers={"Accept": "text/csv"})  # fmt: skip
        assert r.headers["Content-Type"] == CSV_TYPE
        assert list(csv.reader(io.StringIO(r.text, newline="")))[1:] == [
            [str(x["start"]), x["time"], x["metric"], x["labels"]["category"], str(x["value"])]
            for x in category_rows(86400)
        ]
        bad = requests.get(f"{base}/api/volume?resolution=2m", timeout=5)
        assert bad.status_code == 400
        assert bad.json()["parameter"] == "resolution"
        assert bad.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        server.stop()


def test_basic_auth_through_a_real_server(open_store: Any) -> None:
    p = open_store(store={"retention": KEEP_ALL}, http={"port": 0, **AUTH})
    feed(p, category_messages())
    server = WebServer(make_app(p), p.config.http)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        denied = requests.get(f"{base}/api/", timeout=5)
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith("Basic ")
        assert requests.get(f"{base}/api/", auth=("stats", "nope"), timeout=5).status_code == 401
        ok = requests.get(f"{base}/api/", auth=("stats", "s3cret:pw"), timeout=5)
        assert ok.status_code == 200
        assert (
            sorted(e["ident"] for e in ok.json()["plugins"]) == OTHER_BUNDLED_IDENTS + VOLUME_IDENTS
        )
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        server.stop()


# --- statscache's shapes (http.api.statscache_shapes) -----------------------------------------

SHAPES = {"http": {"api": {"statscache_shapes": True}}}


@pytest.fixture
def statscache_app(open_store: Any) -> App:
    return category_app(open_store, **SHAPES)


def statscache_category_rows(resolution: int, **kw: Any) -> list[dict[str, Any]]:
    """statscache's volume-by-category rows (statscache_plugins/volume/by_category.py's
    model: timestamp, category, volume) for the same counts as category_rows."""
    return [
        {"timestamp": float(r["start"]), "category": r["labels"]["category"], "volume": r["value"]}
        for r in category_rows(resolution, **kw)
    ]


def test_statscache_index_is_an_array_of_idents(statscache_app: App) -> None:
    status, headers, body = get(statscache_app, "/api/")
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    assert (
        json.loads(body)
        == list(statscache_app.ctx.plugins)
        == sorted(BUNDLED, key=list(statscache_app.ctx.plugins).index)
    )
    assert headers["access-control-allow-origin"] == "*"
    status, headers, body = get(statscache_app, "/api/?callback=cb")
    assert headers["content-type"] == "application/javascript; charset=utf-8"
    assert body.decode() == f"cb({json.dumps(list(statscache_app.ctx.plugins))});"
    status, headers, body = get(statscache_app, "/api/", {"Accept": "text/csv"})
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert body.decode() == "\n".join(statscache_app.ctx.plugins)  # one a line, no header


def test_statscache_rows_are_flat_with_epoch_float_timestamps(statscache_app: App) -> None:
    status, headers, body = get(statscache_app, "/api/volume_by_category?resolution=1m")
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    rows = json.loads(body)
    assert rows == statscache_category_rows(60)
    # as statscache's json.dumps of time.mktime(...) wrote it: a float
    assert all(isinstance(r["timestamp"], float) for r in rows)
    assert b'{"timestamp": 1709294400.0, "category": "bodhi", "volume": 4}' in body


def test_statscache_rows_of_a_plugin_without_labels(statscache_app: App) -> None:
    rows = json.loads(get(statscache_app, "/api/volume?resolution=1d&order=asc")[2])
    by_day = Counter(int(ts) // 86400 * 86400 for ts, _ in CATEGORY_EVENTS)
    expected = [{"timestamp": float(d), "volume": n} for d, n in sorted(by_day.items()) if d <= NOW]
    assert rows == expected


def test_statscache_rows_of_several_metrics_and_a_gauge(open_store: Any) -> None:
    p = open_store(
        "multi.sqlite", plugins={"multi": Multi}, store={"retention": KEEP_ALL}, **SHAPES
    )
    feed(p, MULTI_MESSAGES)
    rows = json.loads(get(make_app(p), "/api/multi?resolution=1s")[2])
    expected = []
    for r in MULTI_ROWS_1S:  # a metric column (several metrics), scalar for the gauge
        value = "scalar" if r["metric"] == "multi_level" else "volume"
        expected.append(
            {
                "timestamp": float(r["start"]),
                **r["labels"],
                "metric": r["metric"],
                value: r["value"],
            }
        )
    assert rows == expected


def test_statscache_csv_columns(statscache_app: App, open_store: Any) -> None:
    status, headers, body = get(
        statscache_app, "/api/volume_by_category?resolution=1h&order=asc", {"Accept": "text/csv"}
    )
    assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8"
    text = body.decode()
    expected = ["timestamp,category,volume"] + [
        f"{r['timestamp']},{r['category']},{r['volume']}"
        for r in statscache_category_rows(3600, descending=False)
    ]
    assert text == "\n".join(expected)  # statscache's: LF between lines, none at the end
    assert text.splitlines()[1] == "1709294400.0,bodhi,5"
    p = open_store("awkward.sqlite", plugins={"multi": Multi}, **SHAPES)
    feed(p, [fedmsg("org.fedoraproject.prod.multi.x", T0, "q1", zone='a,"b"', app="x", level=1)])
    text = get(make_app(p), "/api/multi?resolution=1s&metric=multi_zeta&format=csv")[2].decode()
    assert text == f'timestamp,app,metric,volume,zone\n{float(T0)},x,multi_zeta,1,"a,""b"""'


def test_statscache_shapes_keep_the_parameters_and_headers(
    statscache_app: App, open_store: Any
) -> None:
    mine = open_store("ours.sqlite", store={"retention": KEEP_ALL})  # the same, default shapes
    feed(mine, category_messages())
    ours = make_app(mine)
    query = (
        "/api/volume_by_category?resolution=1s&rows_per_page=3&page=2&category=copr&category=koji"
    )
    status, headers, body = get(statscache_app, query)
    status_ours, headers_ours, body_ours = get(ours, query)
    assert status == status_ours == 200
    for name in (
        "link",
        "x-link-count",
        "x-link-number",
        "access-control-allow-origin",
        "access-control-expose-headers",
    ):
        assert headers[name] == headers_ours[name], name
    assert [r["timestamp"] for r in json.loads(body)] == [
        float(r["start"]) for r in json.loads(body_ours)["rows"]
    ]
    # errors stay this exporter's JSON errors, naming the parameter
    assert_error(statscache_app, "/api/volume_by_category?colour=red", 400, "colour")
    assert_error(statscache_app, "/api/nope", 404, None)
