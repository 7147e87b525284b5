"""Property-based tests (hypothesis) of the normalizers and of the aggregation.

Normalizers (message.py, schemas.py): whatever they are given, they return a Message or raise
``Rejected`` with a documented reason, never anything else and never ``malformed`` (which marks
a normalizer bug); a message that is broken in one or more fields is rejected for one of the
reasons those fields call for, computed here from the generated input; a good message keeps its
fields (id, topic, time, body, usernames, packages, agent), also through a JSON round trip.

Aggregation (aggregate.py, and the pipeline into a real SQLite store): the same messages in any
order, flushed at any points, give the same store; replaying them again (also after a restart)
counts nothing twice; the buckets of every resolution (1 s, 1 m, 1 h, 1 d) sum to the totals;
and the counts equal what is counted here from the generated messages.

Examples are few and derandomized (a fixed seed per test), so the file is quick and every CI run
tries the same cases.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import bundled, make_config
from fedora_messaging import message as fm_message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from statscache_exporter import schemas
from statscache_exporter.aggregate import Aggregator, GaugeValue
from statscache_exporter.message import (
    REJECT_REASONS,
    Message,
    Rejected,
    loads,
    normalize,
    read,
)
from statscache_exporter.pipeline import Pipeline, open_pipeline
from statscache_exporter.plugin import Counter as CounterMetric
from statscache_exporter.plugin import Gauge, Output, Plugin
from statscache_exporter.store import Store

#: Quick, reproducible: a fixed seed per test, no example database, no timing health checks.
QUICK = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: For the properties that open a real store per example.
STORED = settings(QUICK, max_examples=25)

ENVIRONMENTS = ("prod", "stg", "dev", "stage", "test", "local")
USER_FLAG = "fedora_messaging_user_"
RPM_FLAG = "fedora_messaging_rpm_"
SURROGATES = ("\ud800", "\udbff", "\udc80", "\udfff")


# --- strategies ----------------------------------------------------------------------------


def with_surrogate() -> st.SearchStrategy[str]:
    """Text holding a lone surrogate, as JSON can ("\\ud800") and no UTF-8 can."""
    return st.builds(
        lambda a, s, b: a + s + b,
        st.text(max_size=4),
        st.sampled_from(SURROGATES),
        st.text(max_size=4),
    )


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

topic_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=8)
good_topics = st.one_of(
    st.builds(
        lambda prefix, env, rest: ".".join([*prefix, env, *rest]),
        st.lists(topic_word, min_size=2, max_size=2),
        st.sampled_from(ENVIRONMENTS),
        st.lists(topic_word, min_size=1, max_size=4),
    ),
    st.lists(topic_word, min_size=1, max_size=5).map(".".join),
    # anything printable with something besides blanks: spaces, quotes, newlines included
    st.text(min_size=1, max_size=30).filter(lambda t: t.strip()),
)

#: (value, the reason it must be rejected for; None: acceptable)
Tagged = tuple[Any, str | None]


def tagged(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Tagged]
) -> st.SearchStrategy[Tagged]:
    return good.map(lambda v: (v, None)) | bad


topics: st.SearchStrategy[Tagged] = tagged(
    good_topics,
    st.one_of(
        st.sampled_from([None, "", "   ", "\n\t", 0, 1.5, True, [], {}]).map(
            lambda v: (v, "no_topic")
        ),
        with_surrogate().filter(lambda t: t.strip()).map(lambda t: (t, "bad_unicode")),
    ),
)
body_values: st.SearchStrategy[Tagged] = tagged(
    bodies,
    st.one_of(
        st.sampled_from([None, [], "text", 3, 1.5, True]),
        st.lists(json_scalars, max_size=3),
    ).map(lambda v: (v, "bad_body")),
)
#: fedmsg's epoch timestamps: numbers (or numeric strings) from 1970 to 2100
epoch_seconds = st.one_of(
    st.integers(0, 4_102_444_800),
    st.floats(0, 4_102_444_800, allow_nan=False),
)
fedmsg_timestamps: st.SearchStrategy[Tagged] = tagged(
    epoch_seconds,
    st.one_of(
        st.sampled_from([None, True, False, [], {}, "yesterday", "", "nan", "inf", "-inf"]),
        st.integers(max_value=-1),
        st.floats(max_value=-1e-3),
        st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e20, 10**30]),
        st.integers(max_value=-1).map(str),
    ).map(lambda v: (v, "bad_timestamp")),
)
ids: st.SearchStrategy[Tagged] = tagged(
    st.none() | st.text(min_size=1, max_size=40).filter(lambda t: not has_surrogate(t)),
    st.one_of(
        st.sampled_from(["", 0, 7, 1.5, True, [], {}]).map(lambda v: (v, "bad_id")),
        with_surrogate().map(lambda t: (t, "bad_unicode")),
    ),
)
#: names as datagrepper and header flags carry them: some good, some empty, some broken
names = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.+", min_size=1, max_size=10),
    st.just(""),
    with_surrogate(),
)
name_lists = st.lists(names | st.integers() | st.none(), max_size=5)
fixed_offsets = st.integers(-23 * 60 + 1, 23 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
# st.datetimes takes naive bounds and adds the time zones itself
sent_at_times = st.datetimes(
    min_value=datetime(1970, 1, 2),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.one_of(st.none(), fixed_offsets),
)


def expected_category(topic: str) -> str | None:
    """The documented rule, written independently: the 4th dotted part when the 3rd is an
    environment, else the 1st (None when that part is empty)."""
    parts = topic.split(".")
    part = parts[3] if len(parts) >= 4 and parts[2] in ENVIRONMENTS else parts[0]
    return part or None


def clean_names(values: Any) -> tuple[str, ...]:
    """Sorted, unique, non-empty strings that UTF-8 can carry."""
    return tuple(sorted({v for v in values if isinstance(v, str) and v and not has_surrogate(v)}))


def as_utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def outcome(obj: Any) -> Message | Rejected:
    """normalize's answer; anything but a Message or Rejected fails the test right here."""
    try:
        return normalize(obj, ENVIRONMENTS)
    except Rejected as exc:
        return exc


def assert_rejected_for(result: Message | Rejected, reasons: set[str]) -> None:
    """Rejected for one of ``reasons`` if there are any, else not rejected at all."""
    if reasons:
        assert isinstance(result, Rejected), f"accepted, expected one of {reasons}: {result}"
        assert result.reason in reasons, (result.reason, reasons, result.detail)
    else:
        assert isinstance(result, Message), f"rejected: {result}"


def assert_clean(message: Message) -> None:
    """What every Message promises, whatever it came from."""
    assert message.timestamp.tzinfo is not None and message.timestamp.utcoffset() == timedelta(0)
    assert message.epoch >= 0
    for values in (message.usernames, message.packages):
        assert values == clean_names(values), values
    assert message.agent is None or (message.agent and not has_surrogate(message.agent))
    assert not has_surrogate(message.topic) and not has_surrogate(message.id)


# --- read: normalize(loads(text)), with the body decoded when it is first read ---------------


def answer(run: Callable[[], Message]) -> str:
    """A message or a rejection, as text to compare (repr: NaN in a body equals itself)."""
    try:
        return repr(run())
    except Rejected as exc:
        return f"Rejected({exc.reason!r}, {exc.detail!r})"


def envelope_texts() -> st.SearchStrategy[str]:
    """JSON texts of the four shapes, their fields good or broken, and of any other value."""
    field = st.one_of(json_values, bodies, st.sampled_from([None, "", 0, 1.5, True, [], {}]))
    headers = st.builds(
        lambda when, users, schema: (
            {"sent-at": when.isoformat()}
            | {USER_FLAG + u: True for u in users if isinstance(u, str)}
            | ({schemas.SCHEMA_HEADER: schema} if schema else {})
        ),
        sent_at_times,
        name_lists,
        st.sampled_from([None, "base.message", "bodhi.update.comment.v1", "no.such.schema"]),
    )
    shaped = st.fixed_dictionaries(
        {},
        optional={
            "topic": topics.map(lambda t: t[0]),
            "msg": body_values.map(lambda b: b[0]),
            "body": body_values.map(lambda b: b[0]),
            "timestamp": fedmsg_timestamps.map(lambda t: t[0]),
            "msg_id": ids.map(lambda i: i[0]),
            "id": ids.map(lambda i: i[0]),
            "headers": field | headers,
            "users": name_lists | field,
            "packages": name_lists | field,
            "agent_name": names | field,
            "i": st.integers(),
        },
    )
    good_id = st.text(min_size=1, max_size=12)
    fedmsg = st.fixed_dictionaries(
        {"topic": good_topics, "msg": bodies, "timestamp": epoch_seconds, "msg_id": good_id},
        optional={"headers": headers, "users": name_lists, "packages": name_lists},
    )
    raw = st.fixed_dictionaries(
        {"topic": good_topics, "msg": bodies, "timestamp": epoch_seconds, "msg_id": good_id},
        optional={"users": name_lists, "packages": name_lists, "agent_name": names | field},
    )
    v2 = st.fixed_dictionaries(
        {"id": good_id, "topic": good_topics, "body": bodies, "headers": headers},
        optional={"queue": field, "priority": field},
    )
    keys = st.sampled_from(("topic", "msg", "body", "timestamp", "msg_id", "id", "headers"))
    anything = shaped | json_values | st.dictionaries(keys, field)
    return (fedmsg | raw | v2 | anything).map(lambda obj: json.dumps(obj, ensure_ascii=False))


@settings(QUICK, max_examples=400)
@given(envelope_texts(), st.booleans())
@example('{"topic": "a.prod.b.c", "msg": {"n": "\udce9"}, "timestamp": 1, "msg_id": "i"}', True)
@example('{"id": "i", "topic": "t", "body": {"n": "\ud800"}, "headers": {}}', True)
def test_read_answers_what_loads_then_normalize_answer(text: str, as_bytes: bool) -> None:
    data: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert answer(lambda: read(data, ENVIRONMENTS)) == answer(
        lambda: normalize(loads(data), ENVIRONMENTS)
    )


# --- every normalizer: only documented rejections ------------------------------------------


@QUICK
@given(
    st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_loads_returns_json_or_rejects_as_not_json(data: bytes) -> None:
    try:
        expected: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        expected = Rejected
    try:
        got: Any = loads(data)
    except Rejected as exc:
        assert exc.reason == "not_json"
        got = Rejected
    if expected is Rejected or got is Rejected:
        assert got is expected
    else:  # compared as JSON text: NaN is not equal to itself
        assert json.dumps(got) == json.dumps(expected)


#: the keys the four shapes are recognised by
SHAPE_KEYS = ("topic", "msg", "body", "timestamp", "msg_id", "id", "headers", "users", "packages")


@QUICK
@given(json_values | st.dictionaries(st.sampled_from(SHAPE_KEYS), json_values))
def test_any_json_value_is_a_message_or_a_documented_rejection(obj: Any) -> None:
    result = outcome(obj)
    if isinstance(result, Rejected):
        assert result.reason in REJECT_REASONS
        assert result.reason != "malformed", result  # malformed: a normalizer choked (a bug)
    else:
        assert_clean(result)


@QUICK
@given(topics, body_values, fedmsg_timestamps, ids, st.booleans())
def test_fedmsg_envelope_rejected_exactly_for_its_broken_fields(
    topic: Tagged, body: Tagged, ts: Tagged, msg_id: Tagged, numeric_string: bool
) -> None:
    stamp = ts[0]
    if numeric_string and ts[1] is None:
        stamp = repr(float(stamp))  # fedmsg's JSON sometimes carries the time as a string
    env = {"topic": topic[0], "msg": body[0], "timestamp": stamp, "i": 1, "username": "apache"}
    if msg_id[0] is not None:
        env["msg_id"] = msg_id[0]
    result = outcome(env)
    assert_rejected_for(result, {r for _, r in (topic, body, ts, msg_id) if r})
    if isinstance(result, Message):
        assert_clean(result)
        assert result.topic == topic[0]
        assert result.body == body[0]
        assert result.timestamp == datetime.fromtimestamp(float(ts[0]), UTC)
        assert result.category == expected_category(topic[0])
        if msg_id[0] is None:
            assert result.id.startswith("sha256:") and len(result.id) == 7 + 64
        else:
            assert result.id == msg_id[0]
        assert (result.usernames, result.packages, result.agent) == ((), (), None)
        # the same envelope through JSON (how every source hands it over) is the same message
        assert outcome(json.loads(json.dumps(env))) == result


@QUICK
@given(topics, body_values, fedmsg_timestamps, ids, name_lists, name_lists, names | st.integers())
def test_datagrepper_raw_item_keeps_its_users_packages_and_agent(
    topic: Tagged,
    body: Tagged,
    ts: Tagged,
    msg_id: Tagged,
    users: list[Any],
    packages: list[Any],
    agent: Any,
) -> None:
    item = {
        "topic": topic[0],
        "msg": body[0],
        "timestamp": ts[0],
        "msg_id": msg_id[0],
        "users": users,
        "packages": packages,
        "agent_name": agent,
    }
    result = outcome(item)
    assert_rejected_for(result, {r for _, r in (topic, body, ts, msg_id) if r})
    if isinstance(result, Message):
        assert_clean(result)
        assert (result.topic, result.body) == (topic[0], body[0])
        assert result.timestamp == datetime.fromtimestamp(float(ts[0]), UTC)
        assert result.usernames == clean_names(users)
        assert result.packages == clean_names(packages)
        good_agent = isinstance(agent, str) and agent and not has_surrogate(agent)
        assert result.agent == (agent if good_agent else None)
        assert outcome(json.loads(json.dumps(item))) == result


@QUICK
@given(
    topics,
    body_values,
    sent_at_times,
    ids,
    st.dictionaries(names, st.booleans(), max_size=3),
    st.dictionaries(names, st.booleans(), max_size=3),
)
def test_v2_item_takes_time_from_sent_at_and_names_from_header_flags(
    topic: Tagged,
    body: Tagged,
    sent_at: datetime,
    msg_id: Tagged,
    user_flags: dict[str, bool],
    rpm_flags: dict[str, bool],
) -> None:
    headers: dict[str, Any] = {"sent-at": sent_at.isoformat(), "priority": 0}
    headers.update({USER_FLAG + n: v for n, v in user_flags.items()})
    headers.update({RPM_FLAG + n: v for n, v in rpm_flags.items()})
    item = {"id": msg_id[0], "topic": topic[0], "body": body[0], "headers": headers}
    result = outcome(item)
    assert_rejected_for(result, {r for _, r in (topic, body, msg_id) if r})
    if isinstance(result, Message):
        assert_clean(result)
        assert (result.topic, result.body, result.headers) == (topic[0], body[0], headers)
        assert result.timestamp == as_utc(sent_at)
        assert result.usernames == clean_names(n for n, on in user_flags.items() if on)
        assert result.packages == clean_names(n for n, on in rpm_flags.items() if on)
        assert outcome(json.loads(json.dumps(item))) == result


BEFORE_1970 = datetime(1969, 12, 31, 23)  # noqa: DTZ001 (naive: st.datetimes adds the zone)
bad_sent_at: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(
        [None, 0, 1.5, "", "yesterday", "2024-13-01T00:00:00Z", "1969-12-31T23:59:59Z"]
    ),
    st.datetimes(max_value=BEFORE_1970, timezones=st.just(UTC)).map(datetime.isoformat),
)


@QUICK
@given(bad_sent_at, st.booleans())
def test_v2_item_with_a_bad_or_missing_sent_at_is_a_bad_timestamp(
    value: Any, present: bool
) -> None:
    headers = {"sent-at": value} if present else {}
    item = {"id": "x", "topic": "bodhi.update.comment", "body": {}, "headers": headers}
    assert_rejected_for(outcome(item), {"bad_timestamp"})


@QUICK
@given(good_topics, bodies, st.dictionaries(names, st.booleans(), max_size=3))
def test_live_fedora_messaging_object_round_trips(
    topic: str, body: dict[str, Any], user_flags: dict[str, bool]
) -> None:
    live = fm_message.Message(
        body=body, topic=topic, headers={USER_FLAG + n: v for n, v in user_flags.items()}
    )
    result = outcome(live)
    assert isinstance(result, Message), result
    assert_clean(result)
    assert (result.id, result.topic, result.body) == (live.id, topic, body)
    assert result.timestamp == as_utc(datetime.fromisoformat(str(live._headers["sent-at"])))
    assert result.usernames == clean_names(n for n, on in user_flags.items() if on)
    # its JSON form (what datagrepper /v2 serves) is the same message
    as_json = json.loads(fm_message.dumps(live))
    assert outcome(as_json) == result


@QUICK
@given(
    st.sampled_from(sorted(schemas.registry())) | st.text(max_size=10),
    good_topics,
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)
def test_schema_classes_on_any_body_never_raise_and_answer_clean_names(
    schema: str, topic: str, body: dict[str, Any]
) -> None:
    facts = schemas.facts_for(topic, body, {schemas.SCHEMA_HEADER: schema})
    for values in (facts.usernames, facts.packages):
        assert values is None or values == clean_names(values)
    assert facts.agent is None or (facts.agent and not has_surrogate(facts.agent))


@QUICK
@given(json_values, json_values, json_values)
def test_schema_properties_that_answer_nonsense_count_as_unknown(
    usernames: Any, packages: Any, agent: Any
) -> None:
    @dataclass
    class Nonsense:
        usernames: Any
        packages: Any
        agent_name: Any

    facts = schemas.facts_of(Nonsense(usernames, packages, agent))
    for given_value, got in ((usernames, facts.usernames), (packages, facts.packages)):
        if isinstance(given_value, list):
            assert got == clean_names(given_value)
        else:
            assert got is None
    assert facts.agent == (agent if isinstance(agent, str) and agent else None)


@QUICK
@given(good_topics, fedmsg_timestamps.filter(lambda t: t[1] is None), bodies)
def test_a_message_without_an_id_gets_the_same_id_whatever_its_key_order(
    topic: str, ts: Tagged, body: dict[str, Any]
) -> None:
    env = {"topic": topic, "msg": body, "timestamp": ts[0]}
    reordered = {
        "timestamp": ts[0],
        "msg": dict(reversed(list(body.items()))),
        "topic": topic,
    }
    a, b = outcome(env), outcome(reordered)
    assert isinstance(a, Message) and isinstance(b, Message)
    assert a.id == b.id
    other = outcome({**env, "msg": {**body, "\x00extra": 1}})
    assert isinstance(other, Message) and other.id != a.id


def nested(depth: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(depth):
        body = {"a": body}
    return body


@pytest.mark.parametrize("depth", [2_000, 50_000])
def test_a_body_too_deep_to_identify_is_a_bad_body_not_a_crash(depth: int) -> None:
    """A message without an id is identified by a hash of its JSON, which Python cannot
    write past ~1,000 levels: such a body (built in Python; a JSON parser refuses it before)
    is a ``bad_body``, not an exception the pipeline would count as ``malformed``. With an id
    there is nothing to hash, and it is a message like any other."""
    env = {"topic": "org.fedoraproject.prod.bodhi.x", "msg": nested(depth), "timestamp": 1}
    assert_rejected_for(outcome(env), {"bad_body"})
    assert isinstance(outcome({**env, "msg_id": "deep"}), Message)


def test_a_body_whose_keys_cannot_be_sorted_is_a_bad_body_without_an_id() -> None:
    """A live object's body is Python, not JSON: its keys may mix types, which no canonical
    JSON (sorted keys) can hold."""
    env = {"topic": "org.fedoraproject.prod.bodhi.x", "msg": {"a": {1: 2, "b": 3}}, "timestamp": 1}
    assert_rejected_for(outcome(env), {"bad_body"})
    assert isinstance(outcome({**env, "msg_id": "mixed"}), Message)


# --- aggregation: the aggregator alone -----------------------------------------------------

COUNT = CounterMetric("prop_count", "counted", ("k",))
LEVEL = Gauge("prop_level", "set", ("k",))
RESOLUTIONS = (1, 60, 3600, 86400)
T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp())

#: (label, whole seconds after T0, milliseconds, amount)
emissions = st.lists(
    st.tuples(
        st.sampled_from("abc"),
        st.integers(0, 3 * 86400),
        st.integers(0, 999),
        st.integers(0, 5),
    ),
    max_size=40,
)


def bucket_of(seconds: int, resolution: int) -> int:
    """The largest multiple of ``resolution`` not after ``seconds`` (≥ 0)."""
    return seconds - seconds % resolution


@QUICK
@given(emissions, st.randoms(use_true_random=False), st.sets(st.integers(0, 40)))
def test_aggregator_in_any_order_and_any_drains_gives_the_same_buckets_and_totals(
    emitted: list[tuple[str, int, int, int]], rng: Any, cuts: set[int]
) -> None:
    # ids depend on the position: fix them before shuffling, as a message's id is its own
    keyed = [(e, i) for i, e in enumerate(emitted)]
    in_order = run_keyed(keyed, set())
    rng.shuffle(keyed)
    assert run_keyed(keyed, cuts) == in_order
    # and the counts are what the input says, at every resolution
    for res in RESOLUTIONS:
        expected: Counter[tuple[Any, ...]] = Counter()
        for label, sec, _, amount in emitted:
            expected[("prop_count", (label,), res, bucket_of(T0 + sec, res))] += amount
        got = {k: v for k, v in in_order["counts"].items() if k[2] == res}
        assert got == +expected
    for label in "abc":
        mine = [e for e in emitted if e[0] == label]
        if mine:
            assert in_order["totals"][("prop_count", (label,))] == sum(e[3] for e in mine)


def test_bucket_keys_hold_any_time_a_message_can_carry_and_many_series() -> None:
    """The aggregator's bucket keys (start and series slot in one int, see aggregate.py) at
    the edges: a time before 1970 (a negative start, rolled up to the bucket before 0, not
    after it), one past 2106 (beyond the 60 bits of the keys of today), year 9999, and 3,000
    series in one second (each its own bucket, none taken for another)."""
    agg = Aggregator(RESOLUTIONS, clock=lambda: 0.0)
    agg.add("p", COUNT, ("past",), 1, -0.5, "m1")  # 1969-12-31T23:59:59.5
    agg.add("p", LEVEL, ("past",), 4, -90_000.25, "m2")  # 1969-12-30T22:59:59.75
    agg.add("p", COUNT, ("future",), 2, 7_258_118_400.0, "m3")  # 2200-01-01
    agg.add("p", COUNT, ("last",), 3, 253_402_300_799.0, "m4")  # 9999-12-31T23:59:59
    for i in range(3_000):
        agg.add("p", COUNT, (f"u{i}",), 1, 60.0, f"n{i}")
    deltas, candidates = agg.drain().at_every_resolution()
    assert {k: v for k, v in deltas.items() if not k[1][0].startswith("u")} == {
        ("prop_count", ("past",), 1, -1): 1,
        ("prop_count", ("past",), 60, -60): 1,
        ("prop_count", ("past",), 3600, -3600): 1,
        ("prop_count", ("past",), 86400, -86400): 1,
        ("prop_count", ("future",), 1, 7_258_118_400): 2,
        ("prop_count", ("future",), 60, 7_258_118_400): 2,
        ("prop_count", ("future",), 3600, 7_258_118_400): 2,
        ("prop_count", ("future",), 86400, 7_258_118_400): 2,
        ("prop_count", ("last",), 1, 253_402_300_799): 3,
        ("prop_count", ("last",), 60, 253_402_300_740): 3,
        ("prop_count", ("last",), 3600, 253_402_297_200): 3,
        ("prop_count", ("last",), 86400, 253_402_214_400): 3,
    }
    assert {k: v.value for k, v in candidates.items()} == {
        ("prop_level", ("past",), 1, -90_001): 4.0,
        ("prop_level", ("past",), 60, -90_060): 4.0,
        ("prop_level", ("past",), 3600, -93_600): 4.0,
        ("prop_level", ("past",), 86400, -172_800): 4.0,
    }
    users = {k: v for k, v in deltas.items() if k[1][0].startswith("u")}
    assert users == {
        ("prop_count", (f"u{i}",), res, 60 - 60 % res): 1
        for i in range(3_000)
        for res in RESOLUTIONS
    }


def test_new_series_are_stored_under_their_slots_after_every_id_the_store_has(
    tmp_path: Path,
) -> None:
    """A series' slot (the low part of its bucket keys) is its id in the store: the store
    inserts a new series under it and splits the keys in SQL. New series are given ids above
    every one the store has, also those of series it did not load (a metric no plugin declares
    any more), whose rows stay as they were."""
    gone = CounterMetric("prop_gone", "no longer declared", ("k",))
    path = tmp_path / "s.sqlite"
    store = Store(path)
    agg = Aggregator(RESOLUTIONS, clock=lambda: 0.0)
    agg.restore(*store.load({"prop_count": ("p", COUNT), "prop_gone": ("p", gone)}))
    agg.add("p", COUNT, ("a",), 1, 10.5, "m1")
    agg.add("p", LEVEL, ("a",), 3, 10.5, "m1")
    agg.add("p", gone, ("x",), 7, 10.5, "m1")  # the highest id: not loaded next time
    store.commit(agg.drain())
    store.close()

    store = Store(path)
    agg = Aggregator(RESOLUTIONS, clock=lambda: 0.0)
    agg.restore(*store.load({"prop_count": ("p", COUNT), "prop_level": ("p", LEVEL)}))
    agg.add("p", COUNT, ("b",), 1, 20.5, "m2")
    agg.add("p", COUNT, ("a",), 1, 20.5, "m2")
    agg.add("p", LEVEL, ("b",), 5, 20.5, "m2")
    store.commit(agg.drain())
    store.close()

    db = sqlite3.connect(path)
    assert db.execute("SELECT id, metric, labels FROM series ORDER BY id").fetchall() == [
        (1, "prop_count", '{"k":"a"}'),
        (2, "prop_level", '{"k":"a"}'),
        (3, "prop_gone", '{"k":"x"}'),
        (4, "prop_count", '{"k":"b"}'),
        (5, "prop_level", '{"k":"b"}'),
    ]
    assert db.execute("SELECT series, value FROM totals ORDER BY series").fetchall() == [
        (1, 2),
        (2, 3.0),
        (3, 7),
        (4, 1),
        (5, 5.0),
    ]
    buckets = "SELECT start, series, value, msg_id FROM buckets WHERE resolution = ? ORDER BY 1, 2"
    assert db.execute(buckets, (1,)).fetchall() == [
        (10, 1, 1, None),
        (10, 2, 3.0, "m1"),
        (10, 3, 7, None),
        (20, 1, 1, None),
        (20, 4, 1, None),
        (20, 5, 5.0, "m2"),
    ]
    assert db.execute(buckets, (86400,)).fetchall() == [
        (0, 1, 2, None),
        (0, 2, 3.0, "m1"),
        (0, 3, 7, None),
        (0, 4, 1, None),
        (0, 5, 5.0, "m2"),
    ]
    db.close()


def run_keyed(keyed: list[tuple[tuple[str, int, int, int], int]], cuts: set[int]) -> dict[str, Any]:
    agg = Aggregator(RESOLUTIONS, clock=lambda: 0.0)
    counts: Counter[tuple[Any, ...]] = Counter()
    gauges: dict[tuple[Any, ...], GaugeValue] = {}

    def drain() -> None:
        deltas, candidates = agg.drain().at_every_resolution()
        counts.update(deltas)
        for key, value in candidates.items():
            gauges[key] = max(gauges[key], value) if key in gauges else value

    for position, ((label, sec, ms, amount), n) in enumerate(keyed):
        ts, msg_id = T0 + sec + ms / 1000, f"m{n:03d}"
        agg.add("p", COUNT, (label,), amount, ts, msg_id)
        agg.add("p", LEVEL, (label,), amount, ts, msg_id)
        if position in cuts:
            drain()
    drain()
    gauge_values = {k: (v.ts, v.msg_id, v.value) for k, v in gauges.items()}
    totals = {
        k: (v.ts, v.msg_id, v.value) if isinstance(v, GaugeValue) else v
        for k, v in agg.totals.items()
    }
    return {"counts": +counts, "gauges": gauge_values, "totals": totals}


# --- aggregation: the pipeline into a real store -------------------------------------------


class LastLevel(Plugin):
    """A gauge per category: the ``level`` of the newest message (a test plugin)."""

    ident = "prop_last_level"
    name = "Last level"
    summary = "level of the newest message per category"
    metrics = (Gauge("prop_last_level", "level of the newest message", ("category",)),)

    def process(self, message: Message, out: Output) -> None:
        out.set("prop_last_level", message.body["level"], category=message.category or "")


PLUGINS = {**bundled(), "prop_last_level": LastLevel}
KEEP_ALL = {"1s": "forever", "1m": "forever", "1h": "forever", "1d": "forever"}
CATEGORIES = ("bodhi", "buildsys", "copr", "pagure")
USERS = ("alice", "bob", "carol")


@dataclass(frozen=True)
class Spec:
    """One generated message: its fields, kept for counting expectations by hand."""

    n: int  # its number: its id is m<n>
    shape: str  # fedmsg, raw or v2
    category: str
    second: int  # whole seconds after T0
    ms: int  # milliseconds (fedmsg and raw; v2's sent-at has whole seconds)
    level: int
    users: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"m{self.n:04d}"

    @property
    def topic(self) -> str:
        return f"org.fedoraproject.prod.{self.category}.thing.happened"

    @property
    def order_key(self) -> tuple[int, int, str]:
        """What makes a gauge value the newest: the message time, then its id."""
        return (self.second, self.ms, self.id)

    def wire(self) -> dict[str, Any]:
        """The message in its bus shape."""
        body = {"level": self.level, "note": f"message {self.n}"}
        ts = T0 + self.second + self.ms / 1000
        if self.shape == "fedmsg":
            return {"topic": self.topic, "msg": body, "timestamp": ts, "msg_id": self.id}
        if self.shape == "raw":
            return {
                "topic": self.topic,
                "msg": body,
                "timestamp": ts,
                "msg_id": self.id,
                "users": list(self.users),
                "packages": [],
            }
        sent_at = datetime.fromtimestamp(T0 + self.second, UTC).isoformat()
        headers: dict[str, Any] = {"sent-at": sent_at}
        headers.update({USER_FLAG + u: True for u in self.users})
        return {"id": self.id, "topic": self.topic, "body": body, "headers": headers}


@st.composite
def message_specs(draw: st.DrawFn, max_size: int = 30) -> list[Spec]:
    count = draw(st.integers(0, max_size))
    out = []
    for n in range(count):
        shape = draw(st.sampled_from(("fedmsg", "raw", "v2")))
        out.append(
            Spec(
                n=n,
                shape=shape,
                category=draw(st.sampled_from(CATEGORIES)),
                second=draw(st.integers(0, 3 * 86400)),
                ms=0 if shape == "v2" else draw(st.integers(0, 999)),
                level=draw(st.integers(-5, 5)),
                users=tuple(draw(st.lists(st.sampled_from(USERS), max_size=2, unique=True)))
                if shape != "fedmsg"
                else (),
            )
        )
    return out


@contextmanager
def stores() -> Iterator[Callable[..., Pipeline]]:
    """Pipelines over stores in a temporary directory (hypothesis runs many examples per test,
    so pytest's per-test tmp_path would be shared between them)."""
    opened: list[Pipeline] = []
    with tempfile.TemporaryDirectory() as tmp:

        def open_one(name: str, max_batch: int = 20_000) -> Pipeline:
            cfg = make_config(
                Path(tmp) / name, store={"retention": KEEP_ALL, "max_batch": max_batch}
            )
            pipeline = open_pipeline(cfg, PLUGINS)
            opened.append(pipeline)
            return pipeline

        try:
            yield open_one
        finally:
            for p in opened:
                p.store.close()


def feed(pipeline: Pipeline, specs: list[Spec]) -> Counter[str]:
    outcomes: Counter[str] = Counter(pipeline.handle(s.wire(), "prop") for s in specs)
    pipeline.flush()
    return outcomes


def labels_of(row_labels: str) -> dict[str, str]:
    parsed: dict[str, str] = json.loads(row_labels)
    return parsed


def check_against_input(dump: dict[str, Any], specs: list[Spec]) -> None:
    """The store holds exactly what the generated messages call for, counted here."""
    totals = {(m, lab): value for m, lab, value, _, _ in dump["totals"]}
    assert totals.get(("messages", "{}"), 0) == len(specs)
    by_category = Counter(s.category for s in specs)
    assert {
        labels_of(lab)["category"]: v
        for (m, lab), v in totals.items()
        if m == "messages_by_category"
    } == dict(by_category)
    by_user = Counter(u for s in specs for u in s.users)
    assert {
        labels_of(lab)["user"]: v for (m, lab), v in totals.items() if m == "messages_by_user"
    } == dict(by_user)
    newest: dict[str, Spec] = {}
    for s in specs:
        if s.category not in newest or s.order_key > newest[s.category].order_key:
            newest[s.category] = s
    assert {
        labels_of(lab)["category"]: v for (m, lab), v in totals.items() if m == "prop_last_level"
    } == {c: float(s.level) for c, s in newest.items()}
    assert dump["seen"] == sorted(s.id for s in specs)
    assert dump["dangling"] == []  # no bucket or total of a series the store does not have
    check_buckets_against_input(dump, specs)


def check_buckets_against_input(dump: dict[str, Any], specs: list[Spec]) -> None:
    """Every bucket at every resolution is what the generated messages call for, each added
    at every resolution here: the messages counter (its buckets count the messages in them)
    and the level gauge (the level of the newest message in each bucket, per category)."""
    counted: Counter[tuple[int, int]] = Counter()
    newest: dict[tuple[str, int, int], Spec] = {}
    for s in specs:
        for res in RESOLUTIONS:
            start = (T0 + s.second) // res * res
            counted[(res, start)] += 1
            key = (s.category, res, start)
            if key not in newest or s.order_key > newest[key].order_key:
                newest[key] = s
    messages = {(res, start): v for m, _, res, start, v, _, _ in dump["buckets"] if m == "messages"}
    assert messages == dict(counted)
    levels = {
        (labels_of(lab)["category"], res, start): (v, mid)
        for m, lab, res, start, v, _, mid in dump["buckets"]
        if m == "prop_last_level"
    }
    assert levels == {key: (float(s.level), s.id) for key, s in newest.items()}


def check_buckets_sum_to_totals(dump: dict[str, Any]) -> None:
    """Every counter series: its buckets at each resolution add up to its total. Every gauge
    series: at each resolution, the bucket of its newest message holds its current value."""
    totals = {(m, lab): (value, ts, mid) for m, lab, value, ts, mid in dump["totals"]}
    sums: Counter[tuple[str, str, int]] = Counter()
    newest: dict[tuple[str, str, int], tuple[float, str, float]] = {}
    for metric, lab, res, _start, value, ts, mid in dump["buckets"]:
        if ts is None:
            sums[(metric, lab, res)] += value
        elif (metric, lab, res) not in newest or (ts, mid) > newest[(metric, lab, res)][:2]:
            newest[(metric, lab, res)] = (ts, mid, value)
    for (metric, lab), (value, ts, mid) in totals.items():
        for res in RESOLUTIONS:
            if ts is None:
                assert sums[(metric, lab, res)] == value, (metric, lab, res)
            else:
                assert newest[(metric, lab, res)] == (ts, mid, value), (metric, lab, res)


@STORED
@given(message_specs(), st.randoms(use_true_random=False), st.integers(1, 12))
def test_pipeline_in_any_order_with_any_flushes_gives_the_same_store(
    specs: list[Spec], rng: Any, max_batch: int
) -> None:
    shuffled = list(specs)
    rng.shuffle(shuffled)
    with stores() as open_one:
        ordered = open_one("ordered.sqlite")
        assert feed(ordered, specs) == Counter({"processed": len(specs)} if specs else {})
        other = open_one("shuffled.sqlite", max_batch=max_batch)
        feed(other, shuffled)
        dump = ordered.store.dump()
        assert other.store.dump() == dump
        check_against_input(dump, specs)
        check_buckets_sum_to_totals(dump)


@STORED
@given(message_specs(), st.randoms(use_true_random=False), st.booleans())
def test_replaying_the_same_messages_again_counts_nothing_twice(
    specs: list[Spec], rng: Any, restart: bool
) -> None:
    with stores() as open_one:
        p = open_one("store.sqlite", max_batch=7)
        # within one run, every message handed over twice in a row (a redelivery)
        outcomes = Counter(p.handle(s.wire(), "prop") for s in specs for _ in range(2))
        p.flush()
        assert outcomes == Counter(
            {"processed": len(specs), "duplicate": len(specs)} if specs else {}
        )
        first = p.store.dump()
        if restart:
            p.close()
            p = open_one("store.sqlite")
        again = list(specs)
        rng.shuffle(again)
        assert feed(p, again) == Counter({"duplicate": len(specs)} if specs else {})
        assert p.store.dump() == first
        check_against_input(first, specs)
        check_buckets_sum_to_totals(first)


@STORED
@given(message_specs(max_size=12), st.lists(st.integers(0, 11), max_size=12), st.integers(1, 5))
def test_the_first_message_with_an_id_wins_over_later_ones_with_other_bodies(
    specs: list[Spec], reused: list[int], max_batch: int
) -> None:
    """Duplicate ids with different bodies (another topic, time, level, users): whichever
    comes first is counted, the others are duplicates."""
    if not specs:
        return
    impostors = [
        Spec(
            n=specs[i % len(specs)].n,  # the same id
            shape="fedmsg",
            category="impostor",
            second=specs[i % len(specs)].second + 1,
            ms=0,
            level=99,
            users=(),
        )
        for i in reused
    ]
    with stores() as open_one:
        p = open_one("store.sqlite", max_batch=max_batch)
        outcomes = feed(p, specs + impostors)
        assert outcomes["processed"] == len(specs)
        assert outcomes["duplicate"] == len(impostors)
        dump = p.store.dump()
        check_against_input(dump, specs)
        check_buckets_sum_to_totals(dump)
        q = open_one("reversed.sqlite", max_batch=max_batch)
        feed(q, impostors + specs)
        # now the impostors came first: each id counted once, as the impostor
        winners: dict[int, Spec] = {}
        for s in impostors + specs:
            winners.setdefault(s.n, s)
        check_against_input(q.store.dump(), sorted(winners.values(), key=lambda s: s.n))


@pytest.mark.parametrize("reason", REJECT_REASONS)
def test_every_reject_reason_is_a_plain_identifier(reason: str) -> None:
    """They become label values (messages_rejected_total{reason}) and summary keys."""
    assert reason.isidentifier() and reason.islower()
