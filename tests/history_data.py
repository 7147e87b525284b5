"""The history the import tests read: one datanommer database of both eras, made once a run.

A database of its own (``import_history``) in the session's PostgreSQL cluster (conftest's
``datagrepper_session``; other modules empty datagrepper's database, not this one), filled
through datanommer.models in the datagrepper virtualenv (tests/datagrepper.py
``fill_datanommer``): fedora-messaging messages through ``datanommer.models.add()`` (users,
packages and agent from their schema classes), fedmsg envelopes and ``/raw`` items through
datanommer's ``Message.create`` with the fedmsg-era columns and the users and packages
fedmsg.meta gave (here drawn from small populations, so that by-user and by-package counts have
something to count). Times: three hours across a UTC midnight (so that the daily dumps made
from it are two), a second holding 600 messages, 400 seconds with ties, fedmsg times with
fractions; all in the past (22 h and more), inserted out of order.

The truth is read back with plain SQL (:func:`sql`), never through the code under test.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datagrepper as harness
import psycopg

DATA = Path(__file__).parent / "data"
HOUR = 3600.0
#: how many messages, and how many in the crowded second
SIZE = 11_000
CROWDED = 600
_CACHE: dict[str, History] = {}


@dataclass
class History:
    url: str
    start: float  # before the first message
    end: float  # after the last
    crowded: int  # the crowded second
    midnight: float  # the UTC midnight inside the range
    sent: list[dict[str, Any]]
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {message_id(m): m for m in self.sent}


def message_id(m: dict[str, Any]) -> str:
    return str(m["id"] if "body" in m else m["msg_id"])


def message_time(m: dict[str, Any]) -> float:
    if "body" in m:
        return datetime.fromisoformat(m["headers"]["sent-at"]).timestamp()
    return float(m["timestamp"])


def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on the database, by psycopg, in UTC."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def _templates() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Corpus fedmsg-era messages (envelopes, datagrepper items) and fedora-messaging ones."""
    fedmsg = [json.loads(line)["envelope"] for line in (DATA / "fedmsg_envelopes.jsonl").open()]
    page = json.loads((DATA / "datagrepper_raw_page_2017.json").read_text())["raw_messages"]
    fedmsg += page
    modern = [json.loads(line)["message"] for line in (DATA / "fedora_messaging.jsonl").open()]
    return fedmsg, modern


def make_messages(rng: random.Random, start: int) -> tuple[list[dict[str, Any]], int]:
    """The messages (see the module doc), and the crowded second."""
    fedmsg, modern = _templates()
    span = int(3 * HOUR)
    crowded = start + 1800
    times: list[float] = [float(crowded)] * CROWDED
    tied = rng.sample([s for s in range(start, start + span) if s != crowded], 400)
    for s in tied:
        times += [float(s)] * rng.randint(2, 6)
    while len(times) < SIZE:
        times.append(round(start + rng.uniform(0, span), 6))
    users = [f"user{k}" for k in range(60)]
    packages = [f"package{k}" for k in range(90)]
    out = []
    for i, t in enumerate(times):
        if i % 4 == 0:  # a quarter of fedora-messaging messages, at whole seconds
            m = dict(rng.choice(modern))
            sent = datetime.fromtimestamp(math.floor(t), UTC).isoformat()
            m["id"] = f"fm-{i}-{rng.getrandbits(64):016x}"
            headers = {k: v for k, v in (m.get("headers") or {}).items()}
            headers["sent-at"] = sent
            m["headers"] = headers
        else:
            m = dict(rng.choice(fedmsg))
            m["msg_id"] = f"{datetime.fromtimestamp(t, UTC).year}-{i}-{rng.getrandbits(64):016x}"
            m["timestamp"] = t
            m["users"] = rng.sample(users, rng.choice((0, 0, 1, 1, 2, 3)))
            m["packages"] = rng.sample(packages, rng.choice((0, 1, 1, 2)))
            m.pop("headers", None)
        out.append(m)
    return out, crowded


def history(dg: harness.Datagrepper) -> History:
    """The database, made on the first call of a run."""
    if "history" in _CACHE:
        return _CACHE["history"]
    rng = random.Random(1515)
    today = math.floor(time.time() / 86400) * 86400
    midnight = today - 86400  # yesterday 00:00 UTC
    start = int(midnight - 1.5 * HOUR)
    sent, crowded = make_messages(rng, start)
    url = harness.datanommer_database(dg, "import_history")
    order = list(sent)
    rng.shuffle(order)
    stored = harness.fill_datanommer(dg, url, order)
    assert stored == len(sent), f"datanommer stored {stored} of {len(sent)}"
    data = History(url, start - 1, start + 3 * HOUR + 1, crowded, midnight, sent)
    _CACHE["history"] = data
    return data


# --- the truth, from SQL -------------------------------------------------------------------------


def counted_by(url: str, what: str) -> Counter[str]:
    """Messages per topic, user, package or agent as the database's tables say (a NULL or
    empty name, which a schema class can give datanommer, names nobody: not counted)."""
    queries = {
        "topic": "SELECT topic, count(*) FROM messages GROUP BY topic",
        "user": "SELECT u.name, count(*) FROM users_messages j JOIN users u ON u.id = j.user_id "
        "WHERE u.name <> '' GROUP BY u.name",
        "package": "SELECT p.name, count(*) FROM packages_messages j "
        "JOIN packages p ON p.id = j.package_id WHERE p.name <> '' GROUP BY p.name",
        "agent": "SELECT agent_name, count(*) FROM messages WHERE agent_name IS NOT NULL "
        "GROUP BY agent_name",
    }
    return Counter({name: int(n) for name, n in sql(url, queries[what])})


def rows_in_order(url: str) -> list[tuple[Any, ...]]:
    """Every row as datagrepper's /raw would show it (but with its whole time), in
    (timestamp, id) order, read with one plain query."""
    return sql(
        url,
        "SELECT m.id, m.msg_id, m.topic, m.timestamp, m.agent_name, m.msg, m.headers, "
        "ARRAY(SELECT u.name FROM users_messages j JOIN users u ON u.id = j.user_id "
        "      WHERE j.msg_id = m.id ORDER BY u.name), "
        "ARRAY(SELECT p.name FROM packages_messages j JOIN packages p ON p.id = j.package_id "
        "      WHERE j.msg_id = m.id ORDER BY p.name) "
        "FROM messages m ORDER BY m.timestamp, m.id",
    )


def raw_item(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of :func:`rows_in_order` as a datagrepper ``/raw`` item, time as ISO 8601."""
    _, msg_id, topic, when, agent, msg, headers, users, packages = row
    return {
        "msg_id": msg_id,
        "topic": topic,
        "timestamp": when.replace(tzinfo=UTC).isoformat(),
        "msg": json.loads(msg),
        "headers": headers,
        "agent_name": agent,
        "username": agent,
        "users": list(users),
        "packages": list(packages),
    }
