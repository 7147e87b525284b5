"""Every InfluxQL recipe in the README, run against a real InfluxDB 1.6.7 after a replay, and
compared with results computed from the input. The recipes are read from README.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from servers import influxdb_server

RECIPE = re.compile(r"^-- recipe: (?P<name>.+?)\n(?P<query>.+?)(?=\n\n|\n```)", re.M | re.S)


def recipes() -> dict[str, str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### InfluxQL recipes") :]
    found = {m["name"]: " ".join(m["query"].split()) for m in RECIPE.finditer(section)}
    assert len(found) >= 8, found
    return found


def build_input(now: float) -> list[dict[str, Any]]:
    """datagrepper /raw items over the last three days, none within 10 minutes of the
    now()-1h and now()-1d boundaries (the query's now() is a few seconds later than ours).
    User i and package i get distinct counts, so a top 10 has no ties."""
    items: list[dict[str, Any]] = []
    topics = [
        "org.fedoraproject.prod.buildsys.build.state.change",
        "org.fedoraproject.prod.bodhi.update.comment",
        "org.fedoraproject.prod.copr.build.end",
        "io.pagure.prod.pagure.pull-request.new",
    ]

    def add(ts: float, topic: str, users: list[str], packages: list[str]) -> None:
        items.append(
            {
                "topic": topic,
                "msg": {},
                "timestamp": float(int(ts)),
                "msg_id": f"r-{len(items)}",
                "users": users,
                "packages": packages,
                "agent_name": None,
            }
        )

    for u in range(14):  # user u in 3 * (u + 1) messages, spread over the last three days
        for k in range(3 * (u + 1)):
            ts = now - 2 * 3600 - (u * 7919 + k * 3571) % (3 * 86400 - 3 * 3600)
            if abs(ts - (now - 86400)) < 900:
                ts -= 1800
            add(ts, topics[k % len(topics)], [f"user{u}"], [f"pkg{u % 12}"])
    for k in range(40):  # the last hour, away from its start: several per second at times
        add(now - 50 * 60 + (k // 3) * 37, topics[k % 2], ["hourly"], [])
    for o in range(4):  # koji builds of owner o: some failed, some complete, over three days
        for k in range(2 * o + 3):
            ts = now - 3 * 3600 - (o * 5003 + k * 9973) % (3 * 86400 - 6 * 3600)
            add(ts, topics[0], [f"owner{o}"], [f"pkg{o}"])
            new = 3 if k % 3 != 2 else 1  # FAILED, else COMPLETE
            items[-1]["msg"] = {"owner": f"owner{o}", "new": new, "old": 0, "name": f"pkg{o}"}
    return items


def test_every_readme_recipe_gives_what_the_input_says(tmp_path: Path) -> None:
    with influxdb_server(tmp_path / "influx") as influx:
        now = time.time()
        items = build_input(now)
        infile = tmp_path / "in.jsonl"
        infile.write_text("".join(json.dumps(i) + "\n" for i in items))
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"store: {{path: {tmp_path / 'store.sqlite'}}}\n"
            f"influxdb: {{enabled: true, url: '{influx.url}', database: recipes, "
            "create_database: true, tags: {instance: r1}}\nlogging: {level: WARNING}\n"
        )
        command = ["replay", "--json", "--config", str(cfg), str(infile)]
        done = subprocess.run(
            [sys.executable, "-m", "statscache_exporter", *command],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        summary = json.loads(done.stdout)
        assert summary["processed"] == len(items) and summary["influxdb"]["pending"] == 0
        results = {name: influx.query(q, db="recipes") for name, q in recipes().items()}
    expected = expectations(items, now)
    assert set(results) == set(expected), "a recipe without an expectation, or the reverse"
    for name, result in results.items():
        assert normalise(name, result) == expected[name], name


def category(topic: str) -> str:
    parts = topic.split(".")
    return parts[3] if parts[2] in ("prod", "stg", "dev", "stage") else parts[0]


def expectations(items: list[dict[str, Any]], now: float) -> dict[str, Any]:
    ts = [int(i["timestamp"]) for i in items]
    week = [(t, i) for t, i in zip(ts, items, strict=True) if t > now - 7 * 86400]
    hour = [(t, i) for t, i in zip(ts, items, strict=True) if t > now - 3600]
    day = [t for t in ts if t > now - 86400]
    users = Counter(u for _, i in week for u in i["users"])
    packages = Counter(p for _, i in week for p in i["packages"])
    builds = Counter(
        t // 3600 * 3600 for t, i in week if i["topic"].endswith(".buildsys.build.state.change")
    )
    # koji's build states by number (koji.BUILD_STATES): 1 COMPLETE, 3 FAILED
    state_names = {1: "complete", 3: "failed"}
    koji_builds = [(t, i["msg"]) for t, i in week if "new" in i["msg"]]
    failed_by_owner = Counter(
        (m["owner"], t // 3600 * 3600) for t, m in koji_builds if m["new"] == 3
    )
    return {
        "volume per second by category, last hour": dict(
            Counter((category(i["topic"]), t) for t, i in hour)
        ),
        "messages per hour by category, last week": dict(
            Counter((category(i["topic"]), t // 3600 * 3600) for t, i in week)
        ),
        "messages per day, last 30 days": dict(Counter(t // 86400 * 86400 for t in ts)),
        "top 10 users last week": dict(users.most_common(10)),
        "top 10 packages last week": dict(packages.most_common(10)),
        "koji build state changes per hour, last week": dict(builds),
        "failed koji builds per hour by owner, last week": dict(failed_by_owner),
        "koji builds by new state, last week": dict(
            Counter(state_names[m["new"]] for _, m in koji_builds)
        ),
        "busiest second of the last day": max(Counter(day).values()),
        "messages per exporter instance, last day": {"r1": len(day)},
    }


def normalise(name: str, result: Any) -> Any:
    """InfluxDB's answer in the shape of the expectation for that recipe."""
    series = result["results"][0].get("series", [])
    if name.startswith("top 10"):
        (s,) = series
        key, top = s["columns"].index(name.split()[2].rstrip("s")), s["columns"].index("top")
        return {row[key]: row[top] for row in s["values"]}
    if name == "busiest second of the last day":
        return series[0]["values"][0][1]
    if name == "messages per exporter instance, last day":
        return {s["tags"]["instance"]: s["values"][0][1] for s in series}
    if name == "koji builds by new state, last week":
        return {s["tags"]["state"]: s["values"][0][1] for s in series}
    for tag in ("owner", "category"):
        if f"by {tag}" in name:
            return {
                (s["tags"][tag], row[0]): row[1]
                for s in series
                for row in s["values"]
                if row[1] is not None
            }
    (s,) = series
    return {row[0]: row[1] for row in s["values"] if row[1] is not None}


@pytest.mark.parametrize("name", sorted(recipes()))
def test_recipes_are_valid_influxql_the_readme_keeps_marked(name: str) -> None:
    """A cheap check that runs without a server: each recipe is one SELECT."""
    query = recipes()[name]
    assert query.startswith("SELECT ") and ";" not in query
