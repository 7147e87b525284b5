"""The exporter attacked the way production will: bad input at every edge, bad config, hostile
HTTP, and scrapes while it flushes.

- Bad messages go to a real `statscache-exporter run` through its replay source (a named pipe
  the test writes, tests/servers.py), one kind after another: each is rejected with its
  documented reason or handled as documented, counted in the self-metrics on /metrics, logged,
  and the exporter goes on and still counts a good message sent after it.
- Bad config: every kind of mistake, through `statscache-exporter check-config`, exits 2 with
  an error naming the key's path (and the valid choices, the available plugins).
- HTTP: path traversal, malformed and oversized query strings, huge rows_per_page, bad Accept
  headers, garbage request lines: 4xx answers naming what is wrong, never a 5xx, never a file.
- Concurrent scrapes of /metrics and /api while a replay is flushed: every exposition parses,
  is consistent with itself (the total equals the sum by category), and no counter goes down.
- The dedup window and a lost disk: what the README's guarantees say happens, happens.

Expected counts come from the messages the tests write, counted here.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import bundled, corpus_messages, make_config
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from servers import (
    Exporter,
    ReplayPipe,
    Samples,
    exporter_process,
    parse_text,
    total,
    wait_until,
)

from statscache_exporter import cli
from statscache_exporter.pipeline import open_pipeline
from statscache_exporter.sources.replay import read

T0 = int(datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp())
SELF = "statscache_exporter_"
SOURCE = "file"  # the replay source's name in write_exporter_config


def fedmsg(topic: str, mid: str, ts: float = T0, **body: Any) -> dict[str, Any]:
    return {"topic": topic, "msg": body, "timestamp": ts, "msg_id": mid}


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# --- bad messages to a running exporter ---------------------------------------------------------


@dataclass
class Live:
    """One exporter for the bad-input cases, fed through a pipe one case at a time."""

    exporter: Exporter
    pipe: ReplayPipe
    ids: Iterator[int] = field(default_factory=itertools.count)

    def good(self) -> dict[str, Any]:
        """A message that must be counted: a fresh id, a topic of its own."""
        n = next(self.ids)
        return fedmsg("org.fedoraproject.prod.robustness.good", f"good-{n}", T0 + n)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("robust")
    pipe = ReplayPipe(tmp / "feed.jsonl")
    with exporter_process(tmp, [pipe.path]) as exporter:
        state = Live(exporter, pipe)
        try:
            # the first line must be a message: a broken first line that opens with '{' makes
            # the replay read the file as one JSON document, which a pipe ends only when closed
            pipe.write(line(state.good()))
            wait_until(
                exporter.samples,
                lambda s: s.get(("statscache_messages_total", ()), 0.0) == 1,
                "the first message to be counted",
            )
            yield state
        finally:
            pipe.close()


def counts(s: Samples) -> Counter[str]:
    """The self-metrics the cases move, by outcome (rejections by reason), for this source."""
    out: Counter[str] = Counter()
    for (name, labels), value in s.items():
        d = dict(labels)
        if d.get("source") != SOURCE:
            continue
        if name == SELF + "messages_received_total":
            out["received"] += int(value)
        elif name == SELF + "messages_processed_total":
            out["processed"] += int(value)
        elif name == SELF + "messages_duplicate_total":
            out["duplicate"] += int(value)
        elif name == SELF + "messages_rejected_total":
            out[f"rejected:{d['reason']}"] += int(value)
    return out


def topic_count(s: Samples, topic: str) -> float:
    return s.get(("statscache_messages_by_topic_total", (("topic", topic),)), 0.0)


@dataclass(frozen=True)
class Case:
    """Bytes written to the replay, and what they must do: {outcome: how many}, outcomes being
    ``processed``, ``duplicate`` and ``rejected:<reason>``."""

    data: bytes
    expected: dict[str, int]
    check: Callable[[Samples, Samples], None] | None = None  # (before, after)


GOOD_TOPIC = "org.fedoraproject.prod.bodhi.update.comment"
WEIRD_TOPIC = 'org.fedoraproject.prod.bodhi.a b "quoted" \\back\\slash\nnew line\ttab'
NUL_TOPIC = "org.fedoraproject.prod.bodhi.nul\x00byte"
HUGE = 11 * 1024 * 1024  # over 10 MB


def nested_text(depth: int, mid: str | None) -> bytes:
    msg_id = f', "msg_id": "{mid}"' if mid else ""
    body = '{"a": ' * depth + "{}" + "}" * depth
    return (
        f'{{"topic": "org.fedoraproject.prod.deep.x", "msg": {body}, "timestamp": {T0}{msg_id}}}\n'
    ).encode()


def check_weird_topic(before: Samples, after: Samples) -> None:
    # the exposition escaped it and prometheus-client's parser reads back the exact topic
    assert topic_count(after, WEIRD_TOPIC) == topic_count(before, WEIRD_TOPIC) + 1


def check_nul_topic(before: Samples, after: Samples) -> None:
    assert topic_count(after, NUL_TOPIC) == topic_count(before, NUL_TOPIC) + 1


def check_first_id_wins(before: Samples, after: Samples) -> None:
    first, second = "org.fedoraproject.prod.dup.first", "org.fedoraproject.prod.dup.second"
    assert topic_count(after, first) == topic_count(before, first) + 1
    assert topic_count(after, second) == 0


def check_epoch_zero(before: Samples, after: Samples) -> None:
    topic = "org.fedoraproject.prod.epoch.zero"
    assert topic_count(after, topic) == topic_count(before, topic) + 1


CASES: dict[str, Case] = {
    "malformed-json": Case(
        b'{"topic": "org.fedoraproject.prod.x.y", "msg": \n', {"rejected:not_json": 1}
    ),
    "not-utf8-at-all": Case(b"\xff\xfe\xfd garbage \x80\n", {"rejected:not_json": 1}),
    "json-not-an-object": Case(b"42\nnull\n", {"rejected:not_object": 2}),
    "invalid-utf8-in-topic": Case(
        b'{"topic": "org.fedoraproject.prod.bo\xffdhi.x", "msg": {}, "timestamp": 1709294400, '
        b'"msg_id": "utf8-topic"}\n',
        {"rejected:not_json": 1},  # bytes that are not UTF-8: not JSON, as from the bus
    ),
    "lone-surrogate-escape-in-id": Case(
        line(fedmsg(GOOD_TOPIC, "bad-\\ud800-id")).replace(b"\\\\ud800", b"\\ud800"),
        {"rejected:bad_unicode": 1},
    ),
    "huge-message-over-10mb": Case(
        line(fedmsg(GOOD_TOPIC, "huge-1", blob="x" * HUGE)), {"processed": 1}
    ),
    "huge-broken-line-over-10mb": Case(
        b'{"topic": "' + b"y" * HUGE + b"\n", {"rejected:not_json": 1}
    ),
    "nested-100000-deep": Case(nested_text(100_000, "deep-1"), {"rejected:not_json": 1}),
    "nested-500-deep-with-id": Case(nested_text(500, "deep-2"), {"processed": 1}),
    "nested-500-deep-without-id": Case(nested_text(500, None), {"processed": 1}),
    "topic-with-spaces-quotes-newlines": Case(
        line(fedmsg(WEIRD_TOPIC, "weird-1")), {"processed": 1}, check_weird_topic
    ),
    "topic-with-nul": Case(line(fedmsg(NUL_TOPIC, "nul-1")), {"processed": 1}, check_nul_topic),
    "blank-topic": Case(line(fedmsg(" \n\t ", "blank-1")), {"rejected:no_topic": 1}),
    "future-timestamp": Case(
        line(fedmsg(GOOD_TOPIC, "future-1", time.time() + 2 * 3600))
        + line(
            {
                "id": "future-2",
                "topic": "bodhi.update.comment",
                "body": {},
                "headers": {"sent-at": "9999-12-31T23:59:59+00:00"},
            }
        ),
        {"rejected:future_timestamp": 2},
    ),
    "timestamp-beyond-any-calendar": Case(
        line(fedmsg(GOOD_TOPIC, "far-1", 1e300)), {"rejected:bad_timestamp": 1}
    ),
    "timestamp-before-the-epoch": Case(
        line(fedmsg(GOOD_TOPIC, "past-1", -1))
        + line(
            {
                "id": "past-2",
                "topic": "bodhi.update.comment",
                "body": {},
                "headers": {"sent-at": "1969-12-31T23:59:59Z"},
            }
        ),
        {"rejected:bad_timestamp": 2},
    ),
    "timestamp-at-the-epoch": Case(
        line(fedmsg("org.fedoraproject.prod.epoch.zero", "epoch-0", 0)),
        {"processed": 1},
        check_epoch_zero,
    ),
    "duplicate-id-other-body": Case(
        line(fedmsg("org.fedoraproject.prod.dup.first", "dup-1", T0, n=1))
        + line(fedmsg("org.fedoraproject.prod.dup.second", "dup-1", T0 + 60, n=2)),
        {"processed": 1, "duplicate": 1},
        check_first_id_wins,
    ),
    "bad-id-body-shape": Case(
        line(fedmsg(GOOD_TOPIC, 42))  # type: ignore[arg-type]
        + line({"topic": GOOD_TOPIC, "msg": "text", "timestamp": T0, "msg_id": "body-1"})
        + line({"topic": GOOD_TOPIC, "timestamp": T0}),
        {"rejected:bad_id": 1, "rejected:bad_body": 1, "rejected:unknown_shape": 1},
    ),
    "datagrepper-page-with-a-bad-item": Case(
        line(
            {
                "raw_messages": [
                    {**fedmsg(GOOD_TOPIC, "page-1"), "users": ["alice"]},
                    {"msg": {}, "timestamp": T0, "msg_id": "page-2", "users": []},
                    {**fedmsg(GOOD_TOPIC, "page-3"), "packages": ["kernel"]},
                ]
            }
        ),
        {"processed": 2, "rejected:no_topic": 1},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_counted_logged_and_the_exporter_goes_on(live: Live, name: str) -> None:
    case = CASES[name]
    exporter = live.exporter
    before = exporter.samples()
    stored = before.get(("statscache_messages_total", ()), 0.0)
    expected_processed = case.expected.get("processed", 0) + 1  # and the good message after
    items = sum(case.expected.values()) + 1
    live.pipe.write(case.data + line(live.good()))

    def done(s: Samples) -> bool:
        moved = counts(s) - counts(before)
        return (
            moved["received"] == items
            and s.get(("statscache_messages_total", ()), 0.0) == stored + expected_processed
        )

    after = wait_until(exporter.samples, done, f"case {name} to be handled and flushed")
    moved = counts(after) - counts(before)
    assert moved == Counter({"received": items, **case.expected, "processed": expected_processed})
    assert exporter.process is not None and exporter.process.poll() is None
    log = exporter.log.read_text(errors="replace")
    for outcome in case.expected:
        if outcome.startswith("rejected:"):
            assert f"({outcome.split(':')[1]}, " in log, f"no log line for {outcome}"
    assert "Traceback" not in log
    if case.check is not None:
        case.check(before, after)


def test_invalid_utf8_in_a_body_is_rejected_by_the_replay_as_by_the_bus(tmp_path: Path) -> None:
    """A line whose bytes are not UTF-8 is "not JSON" on the AMQP and ZeroMQ sources, as the
    README's "Broken input" says, and on the replay too (which reads files with
    surrogateescape, and once counted such a message when the bad byte sat in a body string)."""
    f = tmp_path / "bad.jsonl"
    f.write_bytes(
        b'{"topic": "org.fedoraproject.prod.bodhi.x", "msg": {"comment": "caf\xe9"}, '
        b'"timestamp": 1709294400, "msg_id": "latin1-body"}\n'
    )
    pipeline = open_pipeline(make_config(tmp_path / "s.sqlite"), bundled())
    try:
        outcomes = [pipeline.handle(item, SOURCE) for item in read(f)]
    finally:
        pipeline.store.close()
    # what the bus sources hand over for the same bytes: rejected as not_json
    assert pipeline.handle(f.read_bytes().rstrip(b"\n"), "bus") == "rejected"
    assert outcomes == ["rejected"]
    assert pipeline.stats.rejected[(SOURCE, "not_json")] == 1


# --- bad config ---------------------------------------------------------------------------------

#: (the config, the key path the error must start with, fragments the error must hold)
CONFIG_MISTAKES: dict[str, tuple[dict[str, Any], str, tuple[str, ...]]] = {
    "unknown-key": (
        {"http": {"api": {"max_rows": 5}}},
        "http.api.max_rows",
        ("unknown key", "valid keys: default_rows_per_page, max_rows_per_page"),
    ),
    "unknown-key-in-a-list-item": (
        {"sources": [{"type": "replay", "paths": ["a"]}, {"type": "replay", "pathz": ["b"]}]},
        "sources[1].pathz",
        ("unknown key", "valid keys: type, paths, name"),
    ),
    "unknown-top-level-key": ({"datagreper": {}}, "datagreper", ("unknown key", "backfill")),
    "wrong-type-string-for-number": (
        {"store": {"max_batch": "lots"}},
        "store.max_batch",
        ("expected a whole number", "'lots'"),
    ),
    "wrong-type-boolean-for-number": (
        {"http": {"port": True}},
        "http.port",
        ("expected a whole number", "boolean"),
    ),
    "wrong-type-string-for-list": (
        {"messages": {"environments": "prod"}},
        "messages.environments",
        ("expected a list",),
    ),
    "wrong-type-list-for-mapping": (
        {"influxdb": {"tags": ["instance"]}},
        "influxdb.tags",
        ("expected a mapping",),
    ),
    "bad-enum": (
        {"logging": {"level": "LOUD"}},
        "logging.level",
        ("'LOUD' is not a valid choice", "valid: DEBUG, INFO, WARNING, ERROR"),
    ),
    "bad-enum-nested": (
        {"store": {"synchronous": "sometimes"}},
        "store.synchronous",
        ("valid: normal, full",),
    ),
    "bad-source-type": (
        {"sources": [{"type": "kafka"}]},
        "sources[0].type",
        ("'kafka' is not a source type", "valid: replay, fedora-messaging, fedmsg, datagrepper"),
    ),
    "bad-duration": (
        {"store": {"flush_interval": "soon"}},
        "store.flush_interval",
        ("'soon' is not a duration", "500ms, 1s, 5m"),
    ),
    "bad-duration-in-a-source": (
        {"sources": [{"type": "datagrepper", "interval": "10 minutes"}]},
        "sources[0].interval",
        ("is not a duration",),
    ),
    "negative-duration": (
        {"backfill": {"window": "-5m"}},
        "backfill.window",
        ("is not a duration",),
    ),
    "bad-url-datagrepper-source": (
        {"sources": [{"type": "datagrepper", "url": "apps.fedoraproject.org/datagrepper"}]},
        "sources[0].url",
        ("must start with http:// or https://",),
    ),
    "bad-url-backfill": (
        {"backfill": {"url": "ftp://apps.fedoraproject.org/datagrepper"}},
        "backfill.url",
        ("must start with http:// or https://",),
    ),
    "bad-url-amqp": (
        {"sources": [{"type": "fedora-messaging", "amqp_url": "http://localhost:5672/"}]},
        "sources[0].amqp_url",
        ("must start with amqp:// or amqps://",),
    ),
    "bad-zeromq-endpoint": (
        {"sources": [{"type": "fedmsg", "endpoints": ["tcp://hub:9940", "tcp://no-port-here"]}]},
        "sources[0].endpoints[1]",
        ("'tcp://no-port-here' is not a ZeroMQ endpoint", "tcp://host:port"),
    ),
    "zeromq-endpoint-with-a-newline": (
        {"sources": [{"type": "fedmsg", "endpoints": ["tcp://hub:9940\n"]}]},
        "sources[0].endpoints[0]",
        ("is not a ZeroMQ endpoint",),
    ),
    "influxdb-tag-key-with-a-newline": (
        {"influxdb": {"enabled": True, "tags": {"instance\n": "a"}}},
        "influxdb.tags['instance\\n']",
        ("a tag key must match",),
    ),
    "bad-url-influxdb-no-host": (
        {"influxdb": {"enabled": True, "url": "http://"}},
        "influxdb.url",
        ("names no host",),
    ),
    "bad-url-influxdb-port": (
        {"influxdb": {"enabled": True, "url": "http://localhost:port"}},
        "influxdb.url",
        ("is not a URL",),
    ),
    "missing-required": (
        {"sources": [{"type": "replay"}]},
        "sources[0].paths",
        ("required key is missing",),
    ),
    "missing-required-amqp-url": (
        {"sources": [{"type": "fedora-messaging"}]},
        "sources[0].amqp_url",
        ("required",),
    ),
    "missing-required-v2-token": (
        {"influxdb": {"enabled": True, "mode": "v2", "org": "o", "bucket": "b"}},
        "influxdb.token",
        ("required in mode v2",),
    ),
    "missing-environment-variable": (
        {"http": {"basic_auth": {"username": "u", "password": "${ROBUSTNESS_UNSET_VARIABLE}"}}},
        "http.basic_auth.password",
        ("environment variable ROBUSTNESS_UNSET_VARIABLE is not set",),
    ),
    "unknown-plugin-option": (
        {"plugins": {"volume": {"options": {"verbose": True}}}},
        "plugins.volume.options.verbose",
        ("unknown key",),
    ),
}


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", list(CONFIG_MISTAKES))
def test_each_config_mistake_exits_2_naming_the_key(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROBUSTNESS_UNSET_VARIABLE", raising=False)
    data, key, fragments = CONFIG_MISTAKES[name]
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"store": {"path": str(tmp_path / "s.sqlite")}, **data}))
    code, out, err = check_config(path, capsys)
    assert code == 2, (out, err)
    assert out == ""
    prefix = f"statscache-exporter: configuration error in {path}: {key}: "
    assert err.startswith(prefix), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "s.sqlite").exists()  # nothing was started


def test_an_unknown_plugin_lists_every_available_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"plugins": {"volumes": {"enabled": True}}}))
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert err.startswith(f"statscache-exporter: configuration error in {path}: plugins.volumes: ")
    assert "no such plugin; available: " in err
    listed = err.split("available: ", 1)[1].strip().split(", ")
    assert set(bundled()) <= set(listed)


def test_a_yaml_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("store:\n  path: x\n   flush_interval: [1s\n")
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert f"{path}: not valid YAML" in err and "line 3" in err


def test_run_with_a_bad_config_exits_2_before_serving(tmp_path: Path) -> None:
    """The real command, as a process: the error on stderr, exit 2, no store created."""
    path = tmp_path / "config.yaml"
    store = tmp_path / "s.sqlite"
    path.write_text(
        json.dumps({"store": {"path": str(store)}, "plugins": {"volumes": {}}, "http": {"port": 0}})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "statscache_exporter", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "plugins.volumes: no such plugin; available: " in proc.stderr
    listed = proc.stderr.split("available: ", 1)[1].strip().split(", ")
    assert set(bundled()) <= set(listed)
    assert not store.exists()


# --- hostile HTTP -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_get(exporter: Exporter, target: str, headers: dict[str, str] | None = None) -> Answer:
    """A request with the target sent as it is: no client-side normalization of ``..``."""
    conn = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=20)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


TRAVERSALS = [
    "/api/../../../../etc/passwd",
    "/api/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/api/..%2f..%2f..%2fetc%2fpasswd",
    "/api/%252e%252e/%252e%252e/etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/api/....//....//etc/passwd",
    "/api/volume/../../exporter/store.sqlite",
    "/api/..\\..\\etc\\passwd",
    "/api/volume%00.json",
    "/api/%ff%fe%00",
    "//etc/passwd",
    "/metrics/../api/volume",
    "/api/" + "a" * 5000,
    "http://evil.example/api/../../etc/passwd",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_finds_no_file(live: Live, target: str) -> None:
    r = raw_get(live.exporter, target)
    assert r.status in (400, 404), (r.status, r.body[:200])
    assert b"root:" not in r.body and b"SQLite format" not in r.body
    if target.startswith("/api/") and r.status == 404:
        assert "no plugin" in r.json()["error"]


#: (query string on /api/volume_by_category, the status, the parameter the error names)
BAD_QUERIES: list[tuple[str, int, str | None]] = [
    ("start=%zz", 400, "start"),
    ("start=nan", 400, "start"),
    ("stop=1e400", 400, "stop"),
    ("start=9999-99-99", 400, "start"),
    ("start=2&stop=1", 400, "start"),
    ("start=1&start=2", 400, "start"),
    ("page=0", 400, "page"),
    ("page=-1", 400, "page"),
    ("page=1.5", 400, "page"),
    ("page=" + "9" * 5000, 400, "page"),
    ("rows_per_page=0", 400, "rows_per_page"),
    ("rows_per_page=1000000", 400, "rows_per_page"),
    ("rows_per_page=" + "9" * 40, 400, "rows_per_page"),
    ("limit=abc", 400, "limit"),
    ("order=sideways", 400, "order"),
    ("resolution=7s", 400, "resolution"),
    ("resolution=%00", 400, "resolution"),
    ("format=xml", 400, "format"),
    ("callback=alert(document.cookie)", 400, "callback"),
    ("metric=nope", 400, "metric"),
    ("%ff=1", 400, "\ufffd"),
    ("user=alice", 400, "user"),  # a label of another plugin
    ("=&&==", 400, None),
    ("&".join(f"p{i}=1" for i in range(900)), 400, "p0"),
]


@pytest.mark.parametrize(("query", "status", "parameter"), BAD_QUERIES)
def test_a_malformed_query_is_a_400_naming_the_parameter(
    live: Live, query: str, status: int, parameter: str | None
) -> None:
    r = raw_get(live.exporter, "/api/volume_by_category?" + query)
    assert r.status == status, (r.status, r.body[:300])
    answer = r.json()
    assert answer["status"] == status and answer["error"]
    assert answer.get("parameter") == parameter
    assert r.headers["access-control-allow-origin"] == "*"


def test_an_oversized_query_string_is_refused_and_the_server_goes_on(live: Live) -> None:
    status, _ = raw_request(
        live.exporter, f"GET /api/?category={'x' * 70_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert status == 414  # the request line is over 64 KiB (http.max_header_bytes)
    # one filter with 500 values (7 KiB): answered, and its Link headers can be read
    many = "&".join(f"category=c{i}" for i in range(500))
    r = raw_get(live.exporter, "/api/volume_by_category?" + many)
    assert r.status == 200 and r.json()["rows"] == []
    assert 'rel="last"' in r.headers["link"]
    # 1500 values (21 KiB): the four Link headers, each repeating them, would make a header
    # line of 85 KiB, which http.client (here), like most clients and proxies, refuses to read
    more = "&".join(f"category=c{i}" for i in range(1500))
    r = raw_get(live.exporter, "/api/volume_by_category?" + more)
    assert r.status == 414, r.body[:300]
    assert "more than 8192" in r.json()["error"]
    assert raw_get(live.exporter, "/healthz").status == 200


def test_huge_rows_per_page_and_page_numbers(live: Live) -> None:
    top = raw_get(live.exporter, "/api/volume?rows_per_page=1000&resolution=1d")
    assert top.status == 200 and top.json()["rows_per_page"] == 1000
    over = raw_get(live.exporter, "/api/volume?rows_per_page=1001")
    assert over.status == 400 and "between 1 and 1000" in over.json()["error"]
    far = raw_get(live.exporter, "/api/volume?page=1000000000&rows_per_page=1000")
    assert far.status == 200 and far.json()["rows"] == []
    assert far.headers["x-link-number"] == "1000000000"


@pytest.mark.parametrize(
    ("accept", "status", "content_type"),
    [
        ("image/png", 406, "application/json"),
        ("text/csv;q=0", 406, "application/json"),
        ("*/*;q=oops", 406, "application/json"),
        ("text/csv;q=0.5, application/json;q=0.1", 200, "text/csv"),
        (",,,;;;,", 406, "application/json"),
        ("text/html, " * 2000 + "text/csv;q=0.2", 200, "text/csv"),
        ("", 200, "application/json"),
    ],
)
def test_bad_accept_headers(live: Live, accept: str, status: int, content_type: str) -> None:
    r = raw_get(live.exporter, "/api/volume", {"Accept": accept})
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["content-type"].startswith(content_type)
    if status == 406:
        assert "available: application/json" in r.json()["error"]
    metrics = raw_get(live.exporter, "/metrics", {"Accept": accept})
    assert metrics.status == 200  # /metrics always has the text format to fall back on
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")


def raw_request(exporter: Exporter, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; the status and the whole answer. http.server answers a request
    line it cannot read without a status line (as HTTP/0.9 would): the status is then read
    from its error page."""
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=20) as sock:
        sock.sendall(request)
        with contextlib.suppress(OSError):  # it may have answered and closed already
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    if answer.startswith(b"HTTP/"):
        return int(answer.split(b" ", 2)[1]), answer
    found = re.search(rb"Error code: (\d+)", answer)
    assert found, answer[:300]
    return int(found.group(1)), answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x00\xff\xfe garbage\r\n\r\n", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 requires a Host header
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
            + b"\r\n",
            431,
        ),
        (b"GET /api/volume HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", 200),
        (b"GET /api/volume_by_category?c=" + b"x" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ],
)
def test_garbage_requests_get_a_4xx_and_the_server_goes_on(
    live: Live, request_bytes: bytes, status: int
) -> None:
    got, answer = raw_request(live.exporter, request_bytes)
    assert got == status, answer[:300]
    assert raw_get(live.exporter, "/healthz").status == 200


def test_no_request_above_made_the_exporter_fail(live: Live) -> None:
    """Every hostile request so far was answered without an error in the exporter's log."""
    log = live.exporter.log.read_text(errors="replace")
    assert "error serving" not in log and "Traceback" not in log
    assert live.exporter.process is not None and live.exporter.process.poll() is None


# --- scrapes while flushing ---------------------------------------------------------------------

CATEGORY_POOL = ("bodhi", "buildsys", "copr", "pagure", "fas", "git")


def stream(n: int) -> list[dict[str, Any]]:
    """``n`` messages with fresh ids, categories in turn, a second apart."""
    return [
        fedmsg(f"org.fedoraproject.prod.{CATEGORY_POOL[i % 6]}.thing", f"stream-{i}", T0 + i)
        for i in range(n)
    ]


def exposition_samples(body: bytes, headers: dict[str, str]) -> Samples:
    """An exposition as the scraper got it (gzip, text or OpenMetrics), parsed strictly."""
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)  # several gzip members, one after the other
    text = body.decode("utf-8")
    if headers["content-type"].startswith("application/openmetrics-text"):
        out: Samples = {}
        for family in openmetrics_families(text):  # type: ignore[no-untyped-call]
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out
    return parse_text(text)


SCRAPES: list[tuple[str, dict[str, str]]] = [
    ("/metrics", {}),
    ("/metrics", {"Accept-Encoding": "gzip"}),
    ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
]


@dataclass
class Scraper:
    """Scrapes one way in a loop; remembers what went wrong, never raises in its thread."""

    exporter: Exporter
    target: str
    headers: dict[str, str]
    stop: threading.Event
    problems: list[str] = field(default_factory=list)
    totals_seen: set[float] = field(default_factory=set)
    scrapes: int = 0

    def run(self) -> None:
        previous: Samples = {}
        while not self.stop.is_set() and len(self.problems) < 5:
            try:
                r = raw_get(self.exporter, self.target, self.headers)
            except OSError as exc:
                self.problems.append(f"{self.target} {self.headers}: {exc!r}")
                continue
            self.scrapes += 1
            if r.status != 200:
                self.problems.append(f"{self.target} {self.headers}: HTTP {r.status}")
                continue
            try:
                if self.target == "/metrics":
                    previous = self.check_exposition(r, previous)
                else:
                    previous = self.check_api(r, previous)
            except Exception as exc:
                self.problems.append(f"{self.target} {self.headers}: {exc!r}")

    def check_exposition(self, r: Answer, previous: Samples) -> Samples:
        samples = exposition_samples(r.body, r.headers)
        everything = samples.get(("statscache_messages_total", ()), 0.0)
        by_category = total(samples, "statscache_messages_by_category_total")
        if everything != by_category:  # one flush half applied: a torn exposition
            self.problems.append(f"messages_total {everything} != by category {by_category}")
        self.totals_seen.add(everything)
        for key, value in samples.items():
            if key[0].endswith("_total") and value < previous.get(key, 0.0):
                self.problems.append(f"{key} went down: {previous[key]} -> {value}")
        return samples

    def check_api(self, r: Answer, previous: Samples) -> Samples:
        answer = r.json()
        assert answer["pages"] == 1, answer["pages"]
        now: Samples = {("rows", ()): float(sum(row["value"] for row in answer["rows"]))}
        if now[("rows", ())] < previous.get(("rows", ()), 0.0):
            self.problems.append(f"API total went down: {previous} -> {now}")
        return now


def test_concurrent_scrapes_while_a_replay_is_flushed(tmp_path: Path) -> None:
    """Scrapers hit /metrics (text, gzip, OpenMetrics) and /api while the exporter counts a
    stream written to its replay in pieces, flushing every 250 ms: every answer is a 200 that
    parses, the total always equals the sum by category, and no counter ever goes down."""
    n, pieces = 6000, 30
    messages = stream(n)
    pipe = ReplayPipe(tmp_path / "feed.jsonl")
    with exporter_process(tmp_path, [pipe.path]) as exporter:
        stop = threading.Event()
        api = "/api/volume?resolution=1d&rows_per_page=1000"
        scrapers = [Scraper(exporter, target, headers, stop) for target, headers in SCRAPES]
        scrapers.append(Scraper(exporter, api, {}, stop))
        threads = [threading.Thread(target=s.run, name=s.target) for s in scrapers]
        for t in threads:
            t.start()
        try:
            size = n // pieces
            for i in range(pieces):
                pipe.write_messages(messages[i * size : (i + 1) * size])
                time.sleep(0.05)
            pipe.close()
            final = exporter.wait_replayed(n)
        finally:
            pipe.close()
            stop.set()
            for t in threads:
                t.join(timeout=30)
    problems = [p for s in scrapers for p in s.problems]
    assert problems == []
    assert all(s.scrapes >= 5 for s in scrapers), [s.scrapes for s in scrapers]
    # the scrapes overlapped the flushes: they saw the total at several values on its way
    assert len(set().union(*(s.totals_seen for s in scrapers))) >= 3
    expected = Counter(CATEGORY_POOL[i % 6] for i in range(n))
    got = {
        dict(labels)["category"]: value
        for (name, labels), value in final.items()
        if name == "statscache_messages_by_category_total"
    }
    assert got == dict(expected)


# --- the dedup window and a lost disk (the README's guarantees) ---------------------------------

KEEP_ALL = {"1s": "forever", "1m": "forever", "1h": "forever", "1d": "forever"}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def seen_again(
    open_store: Any, hours_later: float, restart: bool = False, name: str = "store.sqlite"
) -> tuple[str, float]:
    """A message counted, then newer ones up to ``hours_later`` hours after it (the horizon),
    the store pruned (the pipeline prunes at most once a minute, on a flush), optionally a
    restart, then the same message again: its outcome and the messages total. Only the last
    message counted is kept by count (``store.dedup_messages: 1``), so the time window alone
    decides."""
    later = T0 + hours_later * 3600
    clock = Clock(later + 600)
    settings = {"store": {"dedup_messages": 1}}  # store.dedup_window: the default, 48 h
    p = open_store(name, clock=clock, **settings)
    message = fedmsg("org.fedoraproject.prod.bodhi.update.comment", "seen-once", T0)
    assert p.handle(message) == "processed"
    p.flush()
    assert p.handle(fedmsg("org.fedoraproject.prod.bodhi.x", "later", later)) == "processed"
    p.flush()
    clock.now += 61
    assert p.handle(fedmsg("org.fedoraproject.prod.bodhi.x", "last", later + 1)) == "processed"
    p.flush()  # prunes the ids the window no longer keeps
    if restart:
        p.close()
        p = open_store(name, clock=clock, **settings)
    outcome = p.handle(message)
    p.flush()
    return outcome, p.store.totals_by_metric("messages")["{}"]


def test_within_the_dedup_window_a_message_seen_again_counts_once(open_store: Any) -> None:
    """The window is in message time: 47 h of newer messages later, a message is still known."""
    assert seen_again(open_store, hours_later=47) == ("duplicate", 3)


def test_past_the_dedup_window_a_message_seen_again_counts_again(open_store: Any) -> None:
    """The window bounds memory and the store: once the newest message counted is more than
    ``store.dedup_window`` younger than a message (and it is not among the last
    ``store.dedup_messages`` counted), its id is forgotten, and the same message seen after
    that is counted a second time."""
    assert seen_again(open_store, hours_later=49) == ("processed", 4)


def test_the_dedup_window_is_the_same_across_a_restart(open_store: Any) -> None:
    """The ids of the window are loaded from the store at start, and what the window forgot
    before the restart stays forgotten."""
    assert seen_again(open_store, 47, restart=True, name="a.sqlite") == ("duplicate", 3)
    assert seen_again(open_store, 49, restart=True, name="b.sqlite") == ("processed", 4)


def test_a_lost_store_restarts_from_zero_and_a_replay_rebuilds_it_exactly(
    open_store: Any, tmp_path: Path
) -> None:
    """Everything the exporter knows is in its store file: lose it and the totals start again
    from zero (Prometheus sees a counter reset); replaying the same messages (files, or the
    backfill from datagrepper) rebuilds the same store."""
    messages = corpus_messages()
    first = open_store("store.sqlite", store={"retention": KEEP_ALL})
    for m in messages:
        first.handle(m)
    first.flush()
    before = first.store.dump()
    assert before["totals"]
    first.store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"store.sqlite{suffix}").unlink(missing_ok=True)
    second = open_store("store.sqlite", store={"retention": KEEP_ALL})
    assert second.aggregator.totals == {}
    assert second.store.dump() == {"buckets": [], "totals": [], "seen": [], "dangling": []}
    for m in messages:
        second.handle(m)
    second.flush()
    assert second.store.dump() == before
