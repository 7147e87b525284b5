"""The datagrepper harness (tests/datagrepper.py) against a real datagrepper: what goes in with
datanommer.models.add() comes back from /raw as datagrepper computes it, and /raw's window and
paging parameters behave as the reference says (both ends inclusive, offset paging).

Sample messages: tests/data/datagrepper_sample.jsonl, each line naming its source in
shared/corpus (fedmsg envelopes from fedmsg_meta_examples.jsonl with the users and packages
fedmsg.meta is expected to give, fedora-messaging messages from fedora_messaging_examples.jsonl
in tests/data/fedora_messaging.jsonl's form, /raw items of datagrepper_raw_page_2017.json).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from datagrepper import AddError, Datagrepper, Item, missing

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parent / "data" / "datagrepper_sample.jsonl"
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def datagrepper(datagrepper_session: Datagrepper) -> Datagrepper:
    datagrepper_session.reset()
    return datagrepper_session


def sample() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def message(n: int, when: datetime, **headers: Any) -> Item:
    """A fedora-messaging message of the base schema, sent at ``when``."""
    return {
        "id": f"msg-{n}",
        "topic": "org.fedoraproject.prod.harness.test",
        "headers": {
            "fedora_messaging_schema": "base.message",
            "sent-at": when.isoformat(),
            "fedora_messaging_severity": 20,
            **headers,
        },
        "body": {"n": n},
    }


def ids(answer: dict[str, Any]) -> list[str]:
    return [item["msg_id"] for item in answer["raw_messages"]]


def test_items_come_back_as_datagrepper_computes_them(datagrepper: Datagrepper) -> None:
    lines = sample()
    schemas = {
        line["message"]["headers"]["fedora_messaging_schema"]
        for line in lines
        if line["kind"] == "fedora-messaging"
    }
    if absent := schemas - datagrepper.schemas():
        missing(f"schema packages missing from the datagrepper virtualenv for {sorted(absent)}")

    assert datagrepper.add(line["message"] for line in lines) == len(lines)
    got = {item["msg_id"]: item for item in datagrepper.raw_all()}
    assert len(got) == len(lines)

    for line in lines:
        sent, expected = line["message"], line["expected"]
        if line["kind"] == "fedora-messaging":
            item = got[sent["id"]]
            assert item["msg"] == sent["body"]
            assert item["headers"] == sent["headers"]  # stored as received
            when = datetime.fromisoformat(sent["headers"]["sent-at"]).timestamp()
            assert (item["i"], item["crypto"], item["certificate"]) == (0, None, None)
        else:
            item = got[sent["msg_id"]]
            assert item["msg"] == sent["msg"]
            assert item["headers"] == sent.get("headers")
            assert item["i"] == sent.get("i", 0)
            assert item["agent_name"] == item["username"] == sent.get("username")
            when = float(sent["timestamp"])
        assert item["topic"] == sent["topic"], line["source"]
        assert item["timestamp"] == when
        # users and packages: what the schema class computes (fedora-messaging) or what the
        # fedmsg-era datanommer had from fedmsg.meta (given), sorted
        for key in ("users", "packages"):
            if key in expected:
                assert item[key] == sorted(expected[key]), (line["source"], key)
        if "agent_name" in expected:
            assert item["agent_name"] == item["username"] == expected["agent_name"]
        if line["kind"] == "datagrepper-2017":  # a /raw item round-trips whole
            assert {k: item[k] for k in sent} == sent
            assert (item["users"], item["packages"]) == ([], [])


def test_v2_and_id_shapes(datagrepper: Datagrepper) -> None:
    fedora = next(line["message"] for line in sample() if line["kind"] == "fedora-messaging")
    assert datagrepper.add([fedora]) == 1
    [v2] = datagrepper.raw("/v2/search")["raw_messages"]
    assert v2 == {
        "id": fedora["id"],
        "topic": fedora["topic"],
        "body": fedora["body"],
        "headers": fedora["headers"],
        "priority": 0,
        "queue": None,
    }
    one = datagrepper.get("/id", id=fedora["id"])
    assert one.status == 200 and json.loads(one.body)["msg_id"] == fedora["id"]
    gone = datagrepper.get("/id", id="no-such-id")
    assert (gone.status, json.loads(gone.body)) == (404, {"error": "not_found"})


def test_window_is_inclusive_at_both_ends(datagrepper: Datagrepper) -> None:
    datagrepper.add(message(n, T0 + timedelta(seconds=n)) for n in range(5))
    t0 = T0.timestamp()
    answer = datagrepper.raw(start=t0 + 1, end=t0 + 3, order="asc")
    assert ids(answer) == ["msg-1", "msg-2", "msg-3"]
    assert answer["total"] == 3
    assert ids(datagrepper.raw(start=t0 + 2, end=t0 + 2)) == ["msg-2"]
    # date strings are UTC
    dates = datagrepper.raw(start="2024-03-01T12:00:03", end="2024-03-01 12:00:04", order="asc")
    assert ids(dates) == ["msg-3", "msg-4"]
    # no start nor end: no window here (production's default is the last day)
    assert datagrepper.raw()["total"] == 5


def test_offset_paging(datagrepper: Datagrepper) -> None:
    datagrepper.add(message(n, T0 + timedelta(seconds=n)) for n in range(7))
    t0 = T0.timestamp()
    window = {"start": t0, "end": t0 + 60, "rows_per_page": 3}
    pages = [datagrepper.raw(order="asc", page=p, **window) for p in (1, 2, 3, 4)]
    assert [ids(a) for a in pages] == [
        ["msg-0", "msg-1", "msg-2"],
        ["msg-3", "msg-4", "msg-5"],
        ["msg-6"],
        [],
    ]
    assert [(a["total"], a["pages"], a["count"]) for a in pages] == [
        (7, 3, 3),
        (7, 3, 3),
        (7, 3, 1),
        (7, 3, 0),
    ]
    assert ids(datagrepper.raw(page=1, **window)) == ["msg-6", "msg-5", "msg-4"]  # desc
    too_many = datagrepper.get("/raw", rows_per_page=101)
    assert too_many.status == 400
    assert too_many.headers["content-type"].startswith("text/html")


def test_one_second_holds_many_and_fractions_are_hidden(datagrepper: Datagrepper) -> None:
    """Timestamps are whole seconds in /raw but exact in the database: a message at 12:00:01.7
    shows 12:00:01.0 and is outside ``start=end=12:00:01``."""
    t0 = T0.timestamp()
    datagrepper.add(message(n, T0) for n in range(6))
    datagrepper.add([message(10, T0 + timedelta(seconds=1, microseconds=700_000))])
    envelope = {"topic": "org.fedoraproject.prod.harness.env", "msg": {}, "msg_id": "env"}
    datagrepper.add([{**envelope, "timestamp": t0 + 2.25}])

    same = datagrepper.raw(start=t0, end=t0)
    assert sorted(ids(same)) == [f"msg-{n}" for n in range(6)]  # order among them: unspecified
    assert {item["timestamp"] for item in same["raw_messages"]} == {t0}

    assert datagrepper.raw(start=t0 + 1, end=t0 + 1)["total"] == 0
    [late] = datagrepper.raw(start=t0 + 1, end=t0 + 2)["raw_messages"]
    assert (late["msg_id"], late["timestamp"]) == ("msg-10", t0 + 1)
    [item] = datagrepper.raw(start=t0 + 2, end=t0 + 3)["raw_messages"]
    assert (item["msg_id"], item["timestamp"]) == ("env", t0 + 2)


def test_header_flags_are_not_users_or_packages(datagrepper: Datagrepper) -> None:
    """datanommer takes users and packages from the schema class, never from the
    ``fedora_messaging_user_*``/``_rpm_*`` header flags."""
    flagged = message(1, T0, fedora_messaging_user_alice=True, fedora_messaging_rpm_bash=True)
    datagrepper.add([flagged])
    [item] = datagrepper.raw()["raw_messages"]
    assert (item["users"], item["packages"], item["agent_name"]) == ([], [], None)
    assert item["headers"]["fedora_messaging_user_alice"] is True


def test_duplicates_invalid_messages_and_reset(datagrepper: Datagrepper) -> None:
    if "bodhi.update.comment.v1" not in datagrepper.schemas():
        missing("bodhi-messages missing from the datagrepper virtualenv")
    assert datagrepper.add([message(1, T0)]) == 1
    assert datagrepper.add([message(1, T0), message(2, T0)]) == 1  # same id and time: skipped
    with pytest.raises(AddError, match="ValidationError"):
        datagrepper.add(
            [{"topic": "org.fedoraproject.prod.bodhi.update.comment", "body": {},
              "headers": {"fedora_messaging_schema": "bodhi.update.comment.v1"}}]
        )  # fmt: skip
    assert datagrepper.raw()["total"] == 2
    datagrepper.reset()
    assert datagrepper.raw()["total"] == 0
    assert datagrepper.add([message(1, T0)]) == 1
