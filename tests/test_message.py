"""Tests of statscache_exporter.message (and the schema guarding in statscache_exporter.schemas).

The corpora under tests/data/ are real messages (see tests/data/make_corpus.py). Expected values
come from the files themselves (fedmsg.meta's and the schema classes' recorded answers), from the
standard library, or are written out by hand; never from the code under test.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import struct
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pika
import pytest
from fedora_messaging import message as fm_message
from hypothesis import given, settings
from hypothesis import strategies as st

from statscache_exporter import message as message_module
from statscache_exporter import schemas
from statscache_exporter.message import (
    REJECT_REASONS,
    Message,
    Rejected,
    category_of,
    loads,
    normalize,
    read,
)

DATA = Path(__file__).parent / "data"
ENVIRONMENTS = ("prod", "stg", "dev", "stage", "test", "local")
USER_FLAG = "fedora_messaging_user_"
RPM_FLAG = "fedora_messaging_rpm_"
SHA256_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
# make_corpus.py gives fedora_messaging.jsonl line i the sent-at BASE_TIME + 7 * i seconds.
FM_BASE_TIME = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


# --- data ------------------------------------------------------------------------------


def read_jsonl(name: str) -> list[dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


FEDMSG = read_jsonl("fedmsg_envelopes.jsonl")
FEDORA_MESSAGING = read_jsonl("fedora_messaging.jsonl")
RAW_PAGE: dict[str, Any] = json.loads(
    (DATA / "datagrepper_raw_page_2017.json").read_text(encoding="utf-8")
)


def expected_category(topic: str, environments: Iterable[str] = ENVIRONMENTS) -> str:
    """The documented rule, written independently: the 4th dotted part when the 3rd is an
    environment, else the 1st."""
    parts = topic.split(".")
    if len(parts) >= 4 and parts[2] in set(environments):
        return parts[3]
    return parts[0]


def sorted_unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


def fresh(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy, so that no test can observe another's mutations."""
    return copy.deepcopy(obj)


def fedmsg_envelope(**changes: Any) -> dict[str, Any]:
    """A minimal valid fedmsg envelope (hand-written); a change of ``...`` removes the key."""
    env: dict[str, Any] = {
        "topic": "org.fedoraproject.prod.bodhi.update.comment",
        "msg": {"comment": {"text": "works for me"}},
        "timestamp": 1504643075.0,
        "msg_id": "2017-handwritten-0001",
    }
    return _apply(env, changes)


def v2_item(**changes: Any) -> dict[str, Any]:
    """A minimal valid datagrepper /v2 item (hand-written); a change of ``...`` removes the key."""
    item: dict[str, Any] = {
        "id": "3e0f3fb0-2c5e-4b1c-9d0a-0a6c3c9f5f01",
        "topic": "org.fedoraproject.prod.bodhi.update.comment",
        "headers": {"sent-at": "2024-03-01T12:00:00+00:00"},
        "body": {"comment": {"text": "works for me"}},
    }
    return _apply(item, changes)


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def with_sent_at(value: Any) -> dict[str, Any]:
    if value is ...:
        return v2_item(headers={})
    return v2_item(headers={"sent-at": value})


# --- 1. fedmsg envelopes ---------------------------------------------------------------


def test_fedmsg_corpus_groups() -> None:
    with_ts = [e for e in FEDMSG if e["envelope"].get("timestamp") is not None]
    without_ts = [e for e in FEDMSG if e["envelope"].get("timestamp") is None]
    assert len(FEDMSG) == 726
    assert len(with_ts) == 702
    assert len(without_ts) == 24
    assert len(with_ts) + len(without_ts) == len(FEDMSG)
    with_id = [e for e in with_ts if e["envelope"].get("msg_id") is not None]
    assert len(with_id) == 518
    assert len(with_ts) - len(with_id) == 184


def test_fedmsg_envelopes_with_timestamp_normalize() -> None:
    problems: list[str] = []
    normalized = 0
    for entry in FEDMSG:
        env = entry["envelope"]
        ts = env.get("timestamp")
        if ts is None:
            continue
        source = entry["source"]
        m = normalize(fresh(env))
        normalized += 1
        assert isinstance(m, Message)
        if m.topic != env["topic"]:
            problems.append(f"{source}: topic {m.topic!r}")
        if m.timestamp.tzinfo is None or m.timestamp.utcoffset() != timedelta(0):
            problems.append(f"{source}: timestamp {m.timestamp!r} not aware UTC")
        if m.timestamp != datetime.fromtimestamp(ts, UTC):
            problems.append(f"{source}: timestamp {m.timestamp!r} != {ts!r}")
        if not math.isclose(m.epoch, float(ts), abs_tol=1e-6):
            problems.append(f"{source}: epoch {m.epoch!r} != {ts!r}")
        if m.category != expected_category(env["topic"]):
            problems.append(f"{source}: category {m.category!r} for {env['topic']!r}")
        if m.body != env["msg"]:
            problems.append(f"{source}: body differs")
        if env.get("msg_id") is not None:
            if m.id != env["msg_id"]:
                problems.append(f"{source}: id {m.id!r} != {env['msg_id']!r}")
        else:
            if not SHA256_ID.match(m.id):
                problems.append(f"{source}: id {m.id!r} is not a sha256 id")
            again = normalize(fresh(env))
            if again.id != m.id:
                problems.append(f"{source}: id not stable ({m.id!r} then {again.id!r})")
    assert problems == []
    assert normalized == 702


def test_fedmsg_envelopes_without_timestamp_reject() -> None:
    reasons = []
    for entry in FEDMSG:
        env = entry["envelope"]
        if env.get("timestamp") is not None:
            continue
        with pytest.raises(Rejected) as info:
            normalize(fresh(env))
        reasons.append(info.value.reason)
    assert reasons == ["bad_timestamp"] * 24


def test_generated_id_depends_on_content_not_key_order() -> None:
    a = fedmsg_envelope(msg_id=..., msg={"a": 1, "b": [1, 2]})
    b = fedmsg_envelope(msg_id=..., msg={"b": [1, 2], "a": 1})
    c = fedmsg_envelope(msg_id=..., msg={"a": 2, "b": [1, 2]})
    d = fedmsg_envelope(msg_id=..., msg={"a": 1, "b": [1, 2]}, timestamp=1504643076.0)
    e = fedmsg_envelope(msg_id=..., msg={"a": 1, "b": [1, 2]}, topic="org.fedoraproject.prod.x.y")
    ids = [normalize(x).id for x in (a, b, c, d, e)]
    assert all(SHA256_ID.match(i) for i in ids)
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3], ids[4]}) == 4
    # msg_id: null is "no id", not a bad id.
    assert normalize(fedmsg_envelope(msg_id=None, msg={"a": 1, "b": [1, 2]})).id == ids[0]


# --- 2. fedora-messaging messages ------------------------------------------------------


def _check_expected(m: Message, expected: dict[str, Any], where: str, problems: list[str]) -> None:
    if "usernames" in expected and m.usernames != sorted_unique(expected["usernames"]):
        problems.append(f"{where}: usernames {m.usernames!r} != {expected['usernames']!r}")
    if "packages" in expected and m.packages != sorted_unique(expected["packages"]):
        problems.append(f"{where}: packages {m.packages!r} != {expected['packages']!r}")
    if "agent_name" in expected and m.agent != expected["agent_name"]:
        problems.append(f"{where}: agent {m.agent!r} != {expected['agent_name']!r}")


def test_fedora_messaging_corpus_shape() -> None:
    assert len(FEDORA_MESSAGING) == 191
    assert sum(1 for e in FEDORA_MESSAGING if "usernames" in e["expected"]) == 37
    assert sum(1 for e in FEDORA_MESSAGING if "packages" in e["expected"]) == 32
    assert sum(1 for e in FEDORA_MESSAGING if "agent_name" in e["expected"]) == 37
    for i, entry in enumerate(FEDORA_MESSAGING):
        assert (
            entry["message"]["headers"]["sent-at"]
            == (FM_BASE_TIME + timedelta(seconds=7 * i)).isoformat()
        )


def test_fedora_messaging_dicts_normalize() -> None:
    problems: list[str] = []
    for i, entry in enumerate(FEDORA_MESSAGING):
        msg = entry["message"]
        m = normalize(fresh(msg))
        where = f"dict {entry['source']}"
        if m.id != msg["id"] or m.topic != msg["topic"] or m.body != msg["body"]:
            problems.append(f"{where}: id/topic/body differ")
        if m.timestamp != FM_BASE_TIME + timedelta(seconds=7 * i):
            problems.append(f"{where}: timestamp {m.timestamp!r}")
        if m.timestamp.utcoffset() != timedelta(0):
            problems.append(f"{where}: timestamp not UTC")
        if m.category != expected_category(msg["topic"]):
            problems.append(f"{where}: category {m.category!r}")
        if m.headers.get("fedora_messaging_schema") != msg["headers"]["fedora_messaging_schema"]:
            problems.append(f"{where}: headers differ")
        _check_expected(m, entry["expected"], where, problems)
    assert problems == []


def test_fedora_messaging_dicts_without_schemas_carry_nothing() -> None:
    """The corpus JSON forms carry no header flags, so without schemas nothing is known."""
    for entry in FEDORA_MESSAGING:
        m = normalize(fresh(entry["message"]), use_schemas=False)
        assert (m.usernames, m.packages, m.agent) == ((), (), None), entry["source"]


# anitya's deprecated V1 classes warn when instantiated; that is fedora-messaging's business.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fedora_messaging_live_objects_normalize() -> None:
    problems: list[str] = []
    for i, entry in enumerate(FEDORA_MESSAGING):
        msg = entry["message"]
        obj = fm_message.load_message(fresh(msg))
        assert type(obj) is not fm_message.Message, f"no schema class for {entry['source']}"
        m = normalize(obj)
        where = f"object {entry['source']}"
        # The object's own body: some schema classes (copr's) unwrap old datanommer envelopes.
        if m.id != msg["id"] or m.topic != msg["topic"] or m.body != obj.body:
            problems.append(f"{where}: id/topic/body differ")
        if m.timestamp != FM_BASE_TIME + timedelta(seconds=7 * i):
            problems.append(f"{where}: timestamp {m.timestamp!r}")
        if m.category != expected_category(msg["topic"]):
            problems.append(f"{where}: category {m.category!r}")
        _check_expected(m, entry["expected"], where, problems)
    assert problems == []


def test_fedora_messaging_header_flags_without_schemas() -> None:
    checked_users = checked_packages = 0
    problems: list[str] = []
    for entry in FEDORA_MESSAGING:
        expected = entry["expected"]
        users = expected.get("usernames") or []
        pkgs = expected.get("packages") or []
        if not users and not pkgs:
            continue
        msg = entry["message"]
        cls = fm_message.get_class(msg["headers"]["fedora_messaging_schema"])
        assert cls is not fm_message.Message
        # Built normally: fedora-messaging computes the headers, including the filter flags.
        obj = cls(body=fresh(msg["body"]), topic=msg["topic"])
        headers = dict(obj._headers)
        flagged_users = {k[len(USER_FLAG) :] for k in headers if k.startswith(USER_FLAG)}
        flagged_pkgs = {k[len(RPM_FLAG) :] for k in headers if k.startswith(RPM_FLAG)}
        if "usernames" in expected:
            assert flagged_users == set(users), entry["source"]
        if "packages" in expected:
            assert flagged_pkgs == set(pkgs), entry["source"]
        json_form = json.loads(
            json.dumps({"id": obj.id, "topic": obj.topic, "headers": headers, "body": obj.body})
        )
        m = normalize(json_form, use_schemas=False)
        where = f"flags {entry['source']}"
        if users:
            checked_users += 1
            if m.usernames != sorted_unique(users):
                problems.append(f"{where}: usernames {m.usernames!r} != {users!r}")
        if pkgs:
            checked_packages += 1
            if m.packages != sorted_unique(pkgs):
                problems.append(f"{where}: packages {m.packages!r} != {pkgs!r}")
        if m.agent is not None:
            problems.append(f"{where}: agent {m.agent!r} though headers carry none")
    assert problems == []
    assert checked_users == sum(1 for e in FEDORA_MESSAGING if e["expected"].get("usernames"))
    assert checked_packages == sum(1 for e in FEDORA_MESSAGING if e["expected"].get("packages"))
    assert checked_users > 0
    assert checked_packages > 0


def test_header_flags_win_over_schema() -> None:
    """Hand-written: flags on a message whose schema would say otherwise."""
    entry = next(e for e in FEDORA_MESSAGING if e["expected"].get("usernames"))
    msg = fresh(entry["message"])
    msg["headers"][USER_FLAG + "zoe"] = True
    msg["headers"][USER_FLAG + "adam"] = True
    msg["headers"][USER_FLAG + "ignored"] = False
    m = normalize(msg)
    assert m.usernames == ("adam", "zoe")


# --- 3. the fedmsg.meta gap ------------------------------------------------------------


def _carries_something(env: dict[str, Any]) -> bool:
    raw_headers = env.get("headers")
    headers: dict[str, Any] = raw_headers if isinstance(raw_headers, dict) else {}
    return (
        any(k in env for k in ("users", "packages", "agent_name"))
        or "fedora_messaging_schema" in headers
        or any(k.startswith((USER_FLAG, RPM_FLAG)) for k in headers)
    )


def test_report_fedmsg_meta_gap() -> None:
    normalizable = [e for e in FEDMSG if e["envelope"].get("timestamp") is not None]
    carrying_nothing = [e for e in normalizable if not _carries_something(e["envelope"])]
    assert len(carrying_nothing) == len(normalizable) == 702
    with_expectations = [e for e in normalizable if "expected" in e]
    want_users = [e for e in normalizable if e.get("expected", {}).get("usernames")]
    want_packages = [e for e in normalizable if e.get("expected", {}).get("packages")]
    want_either = [
        e
        for e in normalizable
        if e.get("expected", {}).get("usernames") or e.get("expected", {}).get("packages")
    ]
    print()
    print(f"fedmsg envelopes: {len(FEDMSG)}, normalizable (with timestamp): {len(normalizable)}")
    print(f"  with fedmsg.meta expectations recorded: {len(with_expectations)}")
    print(f"  fedmsg.meta finds usernames: {len(want_users)}")
    print(f"  fedmsg.meta finds packages: {len(want_packages)}")
    print(f"  fedmsg.meta finds usernames or packages: {len(want_either)}")
    print("  exporter finds (without fedmsg.meta): 0 usernames, 0 packages")
    assert len(want_users) > 0
    assert len(want_packages) > 0
    for entry in carrying_nothing:
        m = normalize(fresh(entry["envelope"]))
        assert m.usernames == (), entry["source"]
        assert m.packages == (), entry["source"]
        assert m.agent is None, entry["source"]


# --- 4. the datagrepper /raw page ------------------------------------------------------


def test_datagrepper_raw_page_items_normalize() -> None:
    items = RAW_PAGE["raw_messages"]
    assert len(items) == 25 == RAW_PAGE["count"]
    for item in items:
        assert not {"users", "packages", "agent_name"} & set(item)
        m = normalize(fresh(item))
        assert m.id == item["msg_id"]
        assert m.topic == item["topic"]
        assert m.timestamp == datetime.fromtimestamp(item["timestamp"], UTC)
        assert m.category == expected_category(item["topic"])
        assert (m.usernames, m.packages) == ((), ())
    first = normalize(fresh(items[0]))
    assert first.id == "2017-138990ab-f93d-49e6-8c38-fad10d43a556"
    assert first.timestamp == datetime(2017, 9, 5, 20, 24, 35, tzinfo=UTC)
    assert first.category == "copr"


def test_datagrepper_raw_carried_lists_used_verbatim() -> None:
    # Hand-written variant of a real page item: users/packages/agent_name added.
    item = fresh(RAW_PAGE["raw_messages"][0])
    item["users"] = ["msmith", "alice", "msmith"]
    item["packages"] = ["python-zope", "ansible", "python-zope"]
    item["agent_name"] = "copr-bot"
    m = normalize(item)
    assert m.usernames == ("alice", "msmith")
    assert m.packages == ("ansible", "python-zope")
    assert m.agent == "copr-bot"
    assert m.id == item["msg_id"]


def _raw_from_fedora_messaging() -> tuple[dict[str, Any], dict[str, Any]]:
    """Hand-written: a datagrepper /raw-shaped item around a corpus body whose schema class
    knows usernames, packages and agent."""
    entry = next(
        e
        for e in FEDORA_MESSAGING
        if e["expected"].get("usernames")
        and e["expected"].get("packages")
        and e["expected"].get("agent_name")
    )
    msg = entry["message"]
    item = {
        "topic": msg["topic"],
        "msg": fresh(msg["body"]),
        "timestamp": 1709294400.0,
        "msg_id": "2024-handwritten-raw",
        "headers": {"fedora_messaging_schema": msg["headers"]["fedora_messaging_schema"]},
    }
    return item, entry["expected"]


def test_datagrepper_raw_empty_users_means_empty_even_with_schema() -> None:
    item, expected = _raw_from_fedora_messaging()
    # Control: with only agent_name: null present, the schema fills usernames and packages.
    control = normalize({**fresh(item), "agent_name": None})
    assert control.usernames == sorted_unique(expected["usernames"])
    assert control.packages == sorted_unique(expected["packages"])
    assert control.agent == expected["agent_name"]
    assert control.timestamp == datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)

    m = normalize({**fresh(item), "users": []})
    assert m.usernames == ()
    assert m.packages == sorted_unique(expected["packages"])  # absent: the schema still answers

    m = normalize({**fresh(item), "users": [], "packages": []})
    assert (m.usernames, m.packages) == ((), ())

    m = normalize({**fresh(item), "users": ["zed"], "packages": ["kernel"], "agent_name": "zed"})
    assert (m.usernames, m.packages, m.agent) == (("zed",), ("kernel",), "zed")


# --- 5. malformed messages -------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xfe{\x00", id="invalid-utf8"),
        pytest.param(b'{"topic": "a.b.c", "msg": {"x": 1}', id="truncated-bytes"),
        pytest.param('{"topic": "a.b.c", "ms', id="truncated-str"),
        pytest.param("", id="empty-str"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param("not json at all", id="text"),
    ],
)
def test_loads_rejects_not_json(data: bytes | str) -> None:
    with pytest.raises(Rejected) as info:
        loads(data)
    assert info.value.reason == "not_json"
    assert "not_json" in str(info.value)


def test_loads_accepts_json() -> None:
    assert loads(b'{"a": [1, "\xc3\xa9"]}') == {"a": [1, "é"]}
    assert loads('{"a": null}') == {"a": None}


def _json_loads(data: bytes | str) -> Any:
    """What the pipeline decoded before msgspec: UTF-8 strictly, then json.loads."""
    return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)


def _outcome(decode: Any, data: bytes | str) -> tuple[str, str]:
    try:
        return ("ok", repr(decode(data)))
    except (Rejected, ValueError, RecursionError):
        return ("refused", "")


@pytest.mark.parametrize(
    "data",
    [
        "NaN",
        "[Infinity, -Infinity]",
        "1e400",
        "-1e400",
        "1e-400",
        "123456789012345678901234567890",
        "-9223372036854775809",
        "18446744073709551616",
        '{"a": 1, "a": 2}',
        '"\\ud800"',
        '"\\ude00\\ud83d"',
        '"\\ud83d\\ude00"',
        b'"\xed\xa0\x80"',
        b"\xef\xbb\xbf{}",
        "\ufeff{}",
        '"a\tb"',
        '"\\u0000"',
        "[1,]",
        "01",
        " [1] \n",
        "[" * 2000 + "]" * 2000,
        b'{"k": "\xc3\xa9"}',
    ],
)
def test_loads_reads_exactly_what_json_loads_reads(data: bytes | str) -> None:
    """msgspec decodes first; where it refuses, json decides: the same values, the same
    refusals (integers past 64 bits kept exact, which orjson would turn into floats)."""
    assert _outcome(loads, data) == _outcome(_json_loads, data)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_loads_equals_json_loads_on_any_json(value: Any, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=False)
    data: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert _outcome(loads, data) == _outcome(_json_loads, data)


MALFORMED: list[Any] = [
    # not_object
    pytest.param([], "not_object", id="not_object-list"),
    pytest.param([fedmsg_envelope()], "not_object", id="not_object-list-of-envelope"),
    pytest.param(42, "not_object", id="not_object-number"),
    pytest.param(4.2, "not_object", id="not_object-float"),
    pytest.param("org.fedoraproject.prod.x", "not_object", id="not_object-string"),
    pytest.param(None, "not_object", id="not_object-null"),
    pytest.param(True, "not_object", id="not_object-bool"),
    # no_topic
    pytest.param(fedmsg_envelope(topic=...), "no_topic", id="no_topic-fedmsg-missing"),
    pytest.param(fedmsg_envelope(topic=""), "no_topic", id="no_topic-fedmsg-empty"),
    pytest.param(fedmsg_envelope(topic="  \t\n"), "no_topic", id="no_topic-fedmsg-whitespace"),
    pytest.param(fedmsg_envelope(topic=123), "no_topic", id="no_topic-fedmsg-int"),
    pytest.param(fedmsg_envelope(topic=None), "no_topic", id="no_topic-fedmsg-null"),
    pytest.param(fedmsg_envelope(topic=["a", "b"]), "no_topic", id="no_topic-fedmsg-list"),
    pytest.param(v2_item(topic=...), "no_topic", id="no_topic-v2-missing"),
    pytest.param(v2_item(topic=""), "no_topic", id="no_topic-v2-empty"),
    pytest.param(v2_item(topic=" "), "no_topic", id="no_topic-v2-whitespace"),
    pytest.param(v2_item(topic=1.5), "no_topic", id="no_topic-v2-float"),
    pytest.param({"timestamp": 1504643075}, "no_topic", id="no_topic-no-shape"),
    pytest.param({}, "no_topic", id="no_topic-empty-object"),
    # bad_timestamp (fedmsg epoch)
    pytest.param(fedmsg_envelope(timestamp=...), "bad_timestamp", id="ts-missing"),
    pytest.param(fedmsg_envelope(timestamp=None), "bad_timestamp", id="ts-null"),
    pytest.param(fedmsg_envelope(timestamp="abc"), "bad_timestamp", id="ts-abc"),
    pytest.param(fedmsg_envelope(timestamp=""), "bad_timestamp", id="ts-empty-string"),
    pytest.param(fedmsg_envelope(timestamp=-1), "bad_timestamp", id="ts-minus-1"),
    pytest.param(fedmsg_envelope(timestamp=-0.5), "bad_timestamp", id="ts-minus-half"),
    pytest.param(fedmsg_envelope(timestamp="-1"), "bad_timestamp", id="ts-minus-1-string"),
    pytest.param(fedmsg_envelope(timestamp=math.nan), "bad_timestamp", id="ts-nan"),
    pytest.param(fedmsg_envelope(timestamp="NaN"), "bad_timestamp", id="ts-nan-string"),
    pytest.param(fedmsg_envelope(timestamp=math.inf), "bad_timestamp", id="ts-inf"),
    pytest.param(fedmsg_envelope(timestamp=-math.inf), "bad_timestamp", id="ts-minus-inf"),
    pytest.param(fedmsg_envelope(timestamp="inf"), "bad_timestamp", id="ts-inf-string"),
    pytest.param(fedmsg_envelope(timestamp=1e20), "bad_timestamp", id="ts-1e20"),
    pytest.param(fedmsg_envelope(timestamp="1e20"), "bad_timestamp", id="ts-1e20-string"),
    pytest.param(fedmsg_envelope(timestamp=True), "bad_timestamp", id="ts-true"),
    pytest.param(fedmsg_envelope(timestamp=False), "bad_timestamp", id="ts-false"),
    pytest.param(fedmsg_envelope(timestamp=[1504643075]), "bad_timestamp", id="ts-list"),
    pytest.param(fedmsg_envelope(timestamp={"t": 1}), "bad_timestamp", id="ts-object"),
    pytest.param(
        fedmsg_envelope(timestamp="1969-12-31T23:59:59+00:00"),
        "bad_timestamp",
        id="ts-iso-string-before-1970",
    ),
    # bad_timestamp (ISO 8601 sent-at)
    pytest.param(with_sent_at(...), "bad_timestamp", id="sent-at-missing"),
    pytest.param(v2_item(headers=...), "bad_timestamp", id="sent-at-no-headers"),
    pytest.param(v2_item(headers="sent-at"), "bad_timestamp", id="sent-at-headers-string"),
    pytest.param(with_sent_at(None), "bad_timestamp", id="sent-at-null"),
    pytest.param(with_sent_at(1504643075), "bad_timestamp", id="sent-at-number"),
    pytest.param(with_sent_at(""), "bad_timestamp", id="sent-at-empty"),
    pytest.param(with_sent_at("yesterday"), "bad_timestamp", id="sent-at-word"),
    pytest.param(with_sent_at("2024-13-01T00:00:00+00:00"), "bad_timestamp", id="sent-at-month13"),
    pytest.param(with_sent_at("2024-03-01T25:00:00Z"), "bad_timestamp", id="sent-at-hour25"),
    pytest.param(
        with_sent_at("1969-12-31T23:59:59+00:00"), "bad_timestamp", id="sent-at-before-1970"
    ),
    pytest.param(
        with_sent_at("1970-01-01T01:59:59+02:00"), "bad_timestamp", id="sent-at-before-1970-offset"
    ),
    pytest.param(with_sent_at("1900-01-01T00:00:00"), "bad_timestamp", id="sent-at-1900-naive"),
    # bad_body
    pytest.param(fedmsg_envelope(msg=[1, 2]), "bad_body", id="bad_body-fedmsg-list"),
    pytest.param(fedmsg_envelope(msg="text"), "bad_body", id="bad_body-fedmsg-string"),
    pytest.param(fedmsg_envelope(msg=None), "bad_body", id="bad_body-fedmsg-null"),
    pytest.param(v2_item(body=[{"a": 1}]), "bad_body", id="bad_body-v2-list"),
    pytest.param(v2_item(body="text"), "bad_body", id="bad_body-v2-string"),
    pytest.param(v2_item(body=3), "bad_body", id="bad_body-v2-number"),
    # bad_id
    pytest.param(v2_item(id=123), "bad_id", id="bad_id-v2-int"),
    pytest.param(v2_item(id=""), "bad_id", id="bad_id-v2-empty"),
    pytest.param(v2_item(id=["x"]), "bad_id", id="bad_id-v2-list"),
    pytest.param(fedmsg_envelope(msg_id=123), "bad_id", id="bad_id-fedmsg-int"),
    pytest.param(fedmsg_envelope(msg_id=""), "bad_id", id="bad_id-fedmsg-empty"),
    # unknown_shape
    pytest.param({"topic": "org.fedoraproject.prod.x.y"}, "unknown_shape", id="unknown-topic"),
    pytest.param(
        {"topic": "org.fedoraproject.prod.x.y", "timestamp": 1504643075, "msg_id": "x"},
        "unknown_shape",
        id="unknown-topic-timestamp-id",
    ),
]


@pytest.mark.parametrize(("obj", "reason"), MALFORMED)
def test_malformed_messages_reject(obj: Any, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        normalize(copy.deepcopy(obj))
    exc = info.value
    assert exc.reason == reason
    assert exc.reason in REJECT_REASONS
    assert reason in str(exc)
    assert str(exc).startswith(f"{reason}: ")
    assert isinstance(exc.detail, str) and exc.detail
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[1, 2]", id="list"),
        pytest.param("3", id="number"),
        pytest.param('"org.fedoraproject.prod.x"', id="string"),
        pytest.param("null", id="null"),
    ],
)
def test_loaded_non_objects_reject(text: str) -> None:
    with pytest.raises(Rejected) as info:
        normalize(loads(text))
    assert info.value.reason == "not_object"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        # Timestamps beyond what datetime can represent once converted to UTC, and epoch
        # integers beyond what float can hold; all are valid JSON. The module promises
        # "Normalizers never raise anything else" than Rejected.
        pytest.param(
            with_sent_at("9999-12-31T23:59:59-01:00"), "bad_timestamp", id="sent-at-after-9999"
        ),
        pytest.param(
            with_sent_at("0001-01-01T00:00:00+01:00"), "bad_timestamp", id="sent-at-before-0001"
        ),
        pytest.param(
            fedmsg_envelope(timestamp="9999-12-31T23:59:59-01:00"),
            "bad_timestamp",
            id="fedmsg-iso-after-9999",
        ),
        pytest.param(fedmsg_envelope(timestamp=10**400), "bad_timestamp", id="fedmsg-epoch-10e400"),
        pytest.param(
            loads('{"topic": "a.prod.b.c", "msg": {}, "timestamp": 1' + "0" * 400 + "}"),
            "bad_timestamp",
            id="fedmsg-epoch-huge-json-int",
        ),
    ],
)
def test_out_of_range_timestamps_reject(obj: Any, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        normalize(copy.deepcopy(obj))
    assert info.value.reason == reason


def test_epoch_and_iso_boundaries_accepted() -> None:
    epoch0 = datetime(1970, 1, 1, tzinfo=UTC)
    assert normalize(fedmsg_envelope(timestamp=0)).timestamp == epoch0
    assert normalize(with_sent_at("1970-01-01T00:00:00+00:00")).timestamp == epoch0
    assert normalize(with_sent_at("1970-01-01T02:00:00+02:00")).timestamp == epoch0


# --- 6. timestamps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            with_sent_at("2024-03-01T14:00:00+02:00"),
            datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC),
            id="iso-plus-0200",
        ),
        pytest.param(
            with_sent_at("2024-03-01T07:30:00-04:30"),
            datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC),
            id="iso-minus-0430",
        ),
        pytest.param(
            with_sent_at("2024-03-01T12:00:00"),
            datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC),
            id="iso-naive",
        ),
        pytest.param(
            with_sent_at("2024-03-01T12:00:00Z"),
            datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC),
            id="iso-z",
        ),
        pytest.param(
            with_sent_at("2024-03-01T00:30:00.250000+01:00"),
            datetime(2024, 2, 29, 23, 30, 0, 250000, tzinfo=UTC),
            id="iso-fraction-day-change",
        ),
        pytest.param(
            fedmsg_envelope(timestamp="1504643075.0"),
            datetime(2017, 9, 5, 20, 24, 35, tzinfo=UTC),
            id="epoch-string",
        ),
        pytest.param(
            fedmsg_envelope(timestamp="1504643075"),
            datetime(2017, 9, 5, 20, 24, 35, tzinfo=UTC),
            id="epoch-int-string",
        ),
        pytest.param(
            fedmsg_envelope(timestamp=1504643075),
            datetime(2017, 9, 5, 20, 24, 35, tzinfo=UTC),
            id="epoch-int",
        ),
        pytest.param(
            fedmsg_envelope(timestamp=1504643075.5),
            datetime(2017, 9, 5, 20, 24, 35, 500000, tzinfo=UTC),
            id="epoch-fraction",
        ),
        pytest.param(
            fedmsg_envelope(timestamp="2017-09-05T22:24:35+02:00"),
            datetime(2017, 9, 5, 20, 24, 35, tzinfo=UTC),
            id="fedmsg-iso-string",
        ),
    ],
)
def test_timestamps(obj: dict[str, Any], expected: datetime) -> None:
    m = normalize(obj)
    assert m.timestamp == expected
    assert m.timestamp.tzinfo is not None
    assert m.timestamp.utcoffset() == timedelta(0)
    assert m.timestamp.replace(tzinfo=None) == expected.replace(tzinfo=None)
    assert m.epoch == expected.timestamp()


def epoch_values(n: int, seed: int) -> list[float]:
    """Epoch timestamps as messages carry them and beyond: to the second, the millisecond and
    more digits, whole seconds with a fraction near half a microsecond, any double from 1 to
    2^40 by its bits, and the edges of the epoch, of rounding and of year 9999."""
    rng = random.Random(seed)
    values = [0.0, -0.0, 1e-7, 4.9999e-7, 5e-7, 5.000001e-7, 1.5e-6, 2.5e-6, 0.9999995, 0.99999949]
    values += [
        253_402_300_799.0,
        253_402_300_799.999999,
        253_402_300_799.9999995,
        253_402_300_800.0,
    ]
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            values.append(rng.uniform(0, 2e9))
        elif r < 0.5:
            values.append(rng.uniform(0, 2.6e11))
        elif r < 0.7:
            values.append(round(rng.uniform(1e9, 2e9), rng.randrange(0, 8)))
        elif r < 0.8:
            near = [0.5e-6, 1.5e-6, 2.5e-6, 0.9999995, 0.0000005, 0.4999995]
            values.append(float(rng.randrange(0, 2**38)) + rng.choice(near))
        else:
            bits = rng.randrange(0x3FF0000000000000, 0x4270000000000000)
            values.append(struct.unpack("d", struct.pack("Q", bits))[0])
    return values


def test_an_epoch_timestamp_is_the_instant_datetime_gives_and_its_datetime_is_made_on_demand() -> (
    None
):
    """read() keeps an epoch timestamp's seconds and computes their instant (the bucketing's
    ``epoch``) without a datetime: it must be exactly what ``datetime.fromtimestamp(seconds,
    UTC).timestamp()`` gives (microseconds, rounded half to even), the same values rejected,
    and the message's ``timestamp`` that datetime."""
    mismatches = []
    for value in epoch_values(2_000_000, seed=5):
        try:
            expected: datetime | None = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            expected = None
        try:
            when, epoch = message_module._epoch_timestamp(value, "timestamp")
        except Rejected as exc:
            assert exc.reason == "bad_timestamp"
            got: tuple[Any, ...] | None = None
        else:
            got = (when, epoch)
        if expected is None or got is None:
            if (expected is None) != (got is None):
                mismatches.append((value, expected, got))
        elif got[1] != expected.timestamp():
            mismatches.append((value, expected.timestamp(), got[1]))
    assert mismatches == []
    line = json.dumps(
        {
            "topic": "org.fedoraproject.prod.x.y",
            "msg_id": "m1",
            "msg": {},
            "timestamp": 1504643075.4999995,
        }
    )
    m = read(line)
    assert m.timestamp == datetime.fromtimestamp(1504643075.4999995, UTC)
    assert m.timestamp is m.timestamp  # made once
    assert m.epoch == m.timestamp.timestamp() == 1504643075.5
    assert m == normalize(json.loads(line))


# --- 7. schema guarding ----------------------------------------------------------------


SENT_AT = "2024-03-01T12:00:00+00:00"


def schema_item(schema: str = "x.v1") -> dict[str, Any]:
    return v2_item(headers={"sent-at": SENT_AT, "fedora_messaging_schema": schema})


class _Wrapped:
    def __init__(self, body: Any = None, topic: Any = None, properties: Any = None) -> None:
        self.body = body
        self.topic = topic
        self.properties = properties


class RaisingSchema(_Wrapped):
    @property
    def usernames(self) -> Any:
        raise KeyError("user")

    @property
    def packages(self) -> Any:
        raise RuntimeError("packages")

    @property
    def agent_name(self) -> Any:
        raise TypeError("agent")


class NonsenseSchema(_Wrapped):
    @property
    def usernames(self) -> Any:
        return "alice"  # a string, not a list: iterating it would give letters

    @property
    def packages(self) -> Any:
        return {"kernel": 1}

    @property
    def agent_name(self) -> Any:
        return 42


class NoneSchema(_Wrapped):
    usernames = None
    packages = None
    agent_name = ""


class MixedSchema(_Wrapped):
    @property
    def usernames(self) -> Any:
        return ["bob", 3, None, "", "alice", "bob"]

    @property
    def packages(self) -> Any:
        return ("python", "kernel", "kernel")

    @property
    def agent_name(self) -> Any:
        return "bob"


class ConstructorRaises:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("cannot wrap")

    usernames = ["never"]
    packages = ["never"]
    agent_name = "never"


def patch_registry(monkeypatch: pytest.MonkeyPatch, classes: dict[str, type]) -> None:
    monkeypatch.setattr(schemas, "registry", lambda: classes)


@pytest.mark.parametrize(
    "cls", [RaisingSchema, NonsenseSchema, NoneSchema, ConstructorRaises], ids=lambda c: c.__name__
)
def test_broken_schema_gives_nothing(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    patch_registry(monkeypatch, {"x.v1": cls})
    m = normalize(schema_item())
    assert (m.usernames, m.packages, m.agent) == ((), (), None)
    assert m.id == v2_item()["id"]
    # The same through the fedmsg envelope and datagrepper /raw shapes.
    env = fedmsg_envelope(headers={"fedora_messaging_schema": "x.v1"})
    m = normalize(env)
    assert (m.usernames, m.packages, m.agent) == ((), (), None)
    m = normalize({**env, "agent_name": None})
    assert (m.usernames, m.packages, m.agent) == ((), (), None)


def test_schema_answers_are_cleaned(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_registry(monkeypatch, {"x.v1": MixedSchema})
    m = normalize(schema_item())
    assert m.usernames == ("alice", "bob")
    assert m.packages == ("kernel", "python")
    assert m.agent == "bob"
    # A schema the headers do not name is not asked.
    m = normalize(schema_item("y.v1"))
    assert (m.usernames, m.packages, m.agent) == ((), (), None)


def test_schema_gets_body_topic_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[_Wrapped] = []

    class Recording(MixedSchema):
        def __init__(self, body: Any = None, topic: Any = None, properties: Any = None) -> None:
            super().__init__(body, topic, properties)
            seen.append(self)

    patch_registry(monkeypatch, {"x.v1": Recording})
    item = schema_item()
    normalize(fresh(item))
    assert len(seen) == 1
    assert seen[0].body == item["body"]
    assert seen[0].topic == item["topic"]
    assert isinstance(seen[0].properties, pika.BasicProperties)
    assert seen[0].properties.headers["fedora_messaging_schema"] == "x.v1"


def test_without_schemas_registry_is_not_consulted(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> dict[str, type]:
        raise AssertionError("registry() called with use_schemas=False")

    monkeypatch.setattr(schemas, "registry", forbidden)
    m = normalize(schema_item(), use_schemas=False)
    assert (m.usernames, m.packages, m.agent) == ((), (), None)


class _LiveRaising(fm_message.Message):
    topic = "org.fedoraproject.prod.test.live"

    @property
    def usernames(self) -> list[str]:
        raise KeyError("usernames")

    @property
    def packages(self) -> list[str]:
        raise AttributeError("packages")

    @property
    def agent_name(self) -> str | None:
        raise ZeroDivisionError


class _LiveNonsense(fm_message.Message):
    topic = "org.fedoraproject.prod.test.live"

    @property
    def usernames(self) -> Any:
        return None

    @property
    def packages(self) -> Any:
        return 7

    @property
    def agent_name(self) -> Any:
        return ["alice"]


@pytest.mark.parametrize("cls", [_LiveRaising, _LiveNonsense], ids=lambda c: c.__name__)
def test_live_object_with_broken_properties(cls: type[fm_message.Message]) -> None:
    props = pika.BasicProperties(
        headers={"sent-at": "2024-03-01T14:00:00+02:00"}, message_id="live-1"
    )
    obj = cls(body={"x": 1}, properties=props)
    m = normalize(obj)
    assert (m.usernames, m.packages, m.agent) == ((), (), None)
    assert m.id == "live-1"
    assert m.topic == "org.fedoraproject.prod.test.live"
    assert m.category == "test"
    assert m.timestamp == datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_live_object_with_flags_and_no_schemas() -> None:
    props = pika.BasicProperties(
        headers={
            "sent-at": SENT_AT,
            USER_FLAG + "carol": True,
            USER_FLAG + "alice": True,
            RPM_FLAG + "kernel": True,
            RPM_FLAG + "dropped": False,
        },
        message_id="live-2",
    )
    obj = _LiveRaising(body={}, properties=props)
    m = normalize(obj, use_schemas=False)
    assert (m.usernames, m.packages, m.agent) == (("alice", "carol"), ("kernel",), None)


# --- 8. categories ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "category"),
    [
        ("org.fedoraproject.prod.bodhi.update.comment", "bodhi"),
        ("io.pagure.prod.pagure.issue.new", "pagure"),
        ("org.centos.prod.ci.pipeline.complete", "ci"),
        ("bodhi.update.comment", "bodhi"),
        ("fedoracollege.x", "fedoracollege"),
        ("org.fedoraproject.stg.wiki.article.edit", "wiki"),
        ("org.centos.stage.ci.pipeline.complete", "ci"),
        ("org.release-monitoring.dev.anitya.project.map.new", "anitya"),
        ("org.fedoraproject.local.x.y", "x"),
        ("org.fedoraproject.test.koji.build", "koji"),
        ("org.fedoraproject.prod", "org"),
        ("org.fedoraproject.production.bodhi.update", "org"),
        ("copr", "copr"),
    ],
)
def test_category_of(topic: str, category: str) -> None:
    assert category_of(topic) == category
    assert category == expected_category(topic)


def test_category_of_custom_environments() -> None:
    assert category_of("org.fedoraproject.prod.bodhi.update", ["stg"]) == "org"
    assert category_of("org.fedoraproject.qa.bodhi.update", ["qa"]) == "bodhi"
    assert category_of("org.fedoraproject.qa.bodhi.update", {"qa"}) == "bodhi"
    env = fedmsg_envelope(topic="org.fedoraproject.qa.bodhi.update")
    assert normalize(fresh(env)).category == "org"
    assert normalize(fresh(env), environments=frozenset({"qa"})).category == "bodhi"


# --- misc ------------------------------------------------------------------------------


def test_message_is_frozen() -> None:
    m = normalize(fedmsg_envelope())
    with pytest.raises(AttributeError):
        m.topic = "other"  # type: ignore[misc]


def test_normalize_does_not_mutate_input() -> None:
    for obj in (fedmsg_envelope(msg_id=...), v2_item(), RAW_PAGE["raw_messages"][1]):
        before = copy.deepcopy(obj)
        normalize(obj)
        assert obj == before


# --- read: the line's message, with the body decoded when it is first read ------------------


def corpus_lines() -> list[str]:
    """Every real message of tests/data as one JSON line, as a replay file holds it."""
    lines = [
        json.dumps(record["envelope"] if "envelope" in record else record["message"])
        for name in ("fedmsg_envelopes.jsonl", "fedora_messaging.jsonl", "datagrepper_sample.jsonl")
        for record in map(json.loads, (DATA / name).read_text().splitlines())
    ]
    page = json.loads((DATA / "datagrepper_raw_page_2017.json").read_text())
    return lines + [json.dumps(item) for item in page["raw_messages"]]


def answer(data: bytes | str, reader: Any) -> Message | tuple[str, str]:
    try:
        message: Message = reader(data)
    except Rejected as exc:
        return (exc.reason, exc.detail)
    return message


def test_read_gives_what_loads_then_normalize_give_on_the_whole_corpus() -> None:
    lines = corpus_lines()
    assert len(lines) > 900
    messages = lazy = 0
    for line in lines:
        for data in (line, line.encode("utf-8")):
            got = answer(data, lambda d: read(d, ENVIRONMENTS))
            lazy += isinstance(got, Message) and isinstance(got._body, msgspec.Raw)
            assert got == answer(data, lambda d: normalize(loads(d), ENVIRONMENTS)), line[:200]
            messages += isinstance(got, Message)
    assert messages > 1000 and lazy > 500  # most are messages, many read without their body


def test_read_leaves_an_envelopes_body_undecoded_until_it_is_read() -> None:
    line = json.dumps(
        {"topic": "org.fedoraproject.prod.x.y", "msg": {"a": [1]}, "timestamp": 5, "msg_id": "i"}
    )
    message = read(line, ENVIRONMENTS)
    assert isinstance(message._body, msgspec.Raw)  # not decoded by reading the line
    assert message.body == {"a": [1]}
    assert isinstance(message._body, dict)  # decoded once, then kept
    assert message.body is message.body


def test_read_of_a_body_msgspec_refuses_decodes_it_as_json_does() -> None:
    line = '{"topic": "a.b", "msg": {"big": 1e400}, "timestamp": 5, "msg_id": "x"}'
    message = read(line, ENVIRONMENTS)
    assert message.body == {"big": math.inf} == normalize(loads(line), ENVIRONMENTS).body
