"""The exporter against a real Prometheus (and promtool): what Prometheus scrapes and stores is
exactly what was fed in, across restarts, with any label value, under the series cap, in both
exposition formats and gzip.

Needs ``prometheus`` and ``promtool`` (Debian package prometheus; ``make system-deps`` installs
it): without them these tests skip on a developer machine and fail in CI (``CI=true``).
"""

from __future__ import annotations

import gzip
import random
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, scaled_messages
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from servers import (
    Samples,
    exporter_process,
    free_port,
    parse_text,
    prometheus_server,
    require_binary,
    single_value,
    total,
    values_by,
    write_jsonl,
)

from statscache_exporter.sources.replay import read

pytestmark = pytest.mark.integration

CORPUS = REPO / "examples" / "corpus.jsonl.gz"
#: The default messages.environments of config.yaml.
ENVIRONMENTS = {"dev", "local", "prod", "stage", "stg", "test"}
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def category(topic: str) -> str:
    """The category by the README's rule, written independently of the exporter."""
    parts = topic.split(".")
    return parts[3] if len(parts) > 3 and parts[2] in ENVIRONMENTS else parts[0]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """{value of ``label``: sample value} for every series of sample ``name``."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def raw_item(i: int, topic: str, **extra: Any) -> dict[str, Any]:
    """A fedmsg envelope (a datagrepper /raw item when ``extra`` has users/packages)."""
    return {
        "topic": topic,
        "msg": {"i": i},
        "timestamp": 1_700_000_000 + i,
        "msg_id": f"{topic}-{i}",
        "i": i,
        "username": "apache",
        **extra,
    }


# --- a. promtool ---------------------------------------------------------------------------------


def test_promtool_finds_nothing_to_lint_in_the_exposition(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    items = sum(1 for _ in read(CORPUS))
    with exporter_process(tmp_path, [CORPUS]) as exporter:
        samples = exporter.wait_replayed(items)
        assert total(samples, "statscache_exporter_messages_processed_total") > 0
        exposition = exporter.get("/metrics").body
    # the corpus names users, packages and agents: the exposition has labelled series of each
    for family in ("category", "topic", "user", "package", "agent"):
        assert f"statscache_messages_by_{family}_total{{{family}=".encode() in exposition
    check = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    findings = (check.stdout + check.stderr).decode(errors="replace")
    assert check.returncode == 0, findings
    assert findings.strip() == ""


# --- b. exact counts through Prometheus ----------------------------------------------------------


def test_prometheus_sees_exact_totals_after_a_replay(tmp_path: Path) -> None:
    n = 20_000
    messages = scaled_messages(n, seed=11)
    infile = write_jsonl(tmp_path / "in.jsonl", messages)
    by_category = Counter(category(m["topic"]) for m in messages)
    port = free_port()
    # Prometheus first, so that it scrapes the exporter while the replay runs
    with (
        prometheus_server(tmp_path, [f"127.0.0.1:{port}"]) as prom,
        exporter_process(tmp_path, [infile], port=port) as exporter,
    ):
        samples = exporter.wait_replayed(n)
        done = time.time()
        assert samples[("statscache_messages_total", ())] == n
        assert labelled(samples, "statscache_messages_by_category_total", "category") == (
            by_category
        )
        prom.wait_for_scrape_after(done)

        assert single_value(prom.instant("statscache_messages_total")) == n
        result = prom.instant("sum by (category) (statscache_messages_by_category_total)")
        assert values_by(result, "category") == by_category
        result = prom.instant("statscache_exporter_messages_processed_total")
        assert values_by(result, "source") == {"file": n}
        result = prom.instant("statscache_exporter_messages_received_total")
        assert values_by(result, "source") == {"file": n}
        assert prom.instant("statscache_exporter_messages_rejected_total") == []
        assert prom.instant("sum(statscache_exporter_plugin_errors_total) > 0") == []
        result = prom.instant("statscache_exporter_source_connected")
        assert values_by(result, "source") == {"file": 0}
        # Prometheus' own labels, not overridden (honor_labels: false)
        series = prom.instant("statscache_messages_total")[0]["metric"]
        assert series["job"] == "statscache"
        assert series["instance"] == f"127.0.0.1:{port}"


# --- c. restart continuity -----------------------------------------------------------------------


def test_counters_continue_across_a_restart_without_a_reset(tmp_path: Path) -> None:
    n, m = 4000, 2500
    first_messages = scaled_messages(n, seed=21)
    second_messages = scaled_messages(m, seed=22)
    first = write_jsonl(tmp_path / "first.jsonl", first_messages)
    second = write_jsonl(tmp_path / "second.jsonl", second_messages)
    by_category = Counter(category(x["topic"]) for x in first_messages + second_messages)
    port = free_port()
    with (
        prometheus_server(tmp_path, [f"127.0.0.1:{port}"]) as prom,
        exporter_process(tmp_path, [first], port=port) as exporter,
    ):
        exporter.wait_replayed(n)
        prom.wait_for_scrape_after(time.time())
        assert single_value(prom.instant("statscache_messages_total")) == n

        exporter.stop_cleanly()
        # Prometheus notices: the target is down, its series go stale
        prom.query('up{job="statscache"} == 0')
        # the same store; the first file again (all duplicates) and then m new messages
        exporter.reconfigure([first, second])
        exporter.start()
        samples = exporter.wait_replayed(n + m, stored_before=n)
        assert samples[("statscache_messages_total", ())] == n + m
        prom.wait_for_scrape_after(time.time())

        assert single_value(prom.instant("statscache_messages_total")) == n + m
        assert single_value(prom.instant("resets(statscache_messages_total[10m])")) == 0
        result = prom.instant("sum by (category) (statscache_messages_by_category_total)")
        assert values_by(result, "category") == by_category
        result = prom.instant("sum(resets(statscache_messages_by_category_total[10m]))")
        assert single_value(result) == 0
        # the self-metrics count since the process started (documented: a reset for Prometheus)
        result = prom.instant("statscache_exporter_messages_processed_total")
        assert values_by(result, "source") == {"file": m}
        result = prom.instant("statscache_exporter_messages_duplicate_total")
        assert values_by(result, "source") == {"file": n}


def test_sigterm_during_a_replay_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Stopped while Prometheus watches a replay (most likely part-way through it: the test
    holds whenever the stop lands), then run again over the same files: every message is
    counted once, Prometheus never saw more than the store held, and sees no reset."""
    n = 30_000
    infile = write_jsonl(tmp_path / "in.jsonl", scaled_messages(n, seed=23))
    port = free_port()
    with (
        prometheus_server(tmp_path, [f"127.0.0.1:{port}"]) as prom,
        exporter_process(tmp_path, [infile], port=port) as exporter,
    ):
        prom.query("statscache_messages_total > 0")
        exporter.stop_cleanly()
        prom.query('up{job="statscache"} == 0')
        seen_before = single_value(prom.instant("max_over_time(statscache_messages_total[10m])"))

        exporter.start()  # the same file again: what the first run stored is all duplicates
        samples = exporter.wait_replayed(n, stored_before=None)
        stored_before = total(samples, "statscache_exporter_messages_duplicate_total")
        assert 0 < seen_before <= stored_before <= n
        assert samples[("statscache_messages_total", ())] == n
        prom.wait_for_scrape_after(time.time())

        assert single_value(prom.instant("statscache_messages_total")) == n
        assert single_value(prom.instant("resets(statscache_messages_total[10m])")) == 0


# --- d. label values round trip ------------------------------------------------------------------

USERS = [
    'o"brien',
    "back\\slash",
    "new\nline",
    "ünïcødé☃",
    "a,b c",
    "trailing\\",
    "literal\\n",  # a backslash and an n, not a newline
    '\\"',
    "tab\there",
    "{braces}=x",
    "汉字 😀",
]


def test_label_values_round_trip_through_prometheus(tmp_path: Path) -> None:
    items = []
    for u, user in enumerate(USERS):  # user u is named by u + 1 messages of its own
        items += [{"users": [user]} for _ in range(u + 1)]
    items += [{"users": [USERS[0], USERS[2], USERS[0]]} for _ in range(3)]  # two, one twice
    items += [{"users": []}]  # names no user
    messages = [
        raw_item(i, "org.fedoraproject.prod.fas.user.update", packages=[], agent_name="x", **extra)
        for i, extra in enumerate(items)
    ]
    expected = Counter(user for message in messages for user in set(message["users"]))
    page = tmp_path / "page.json"  # one datagrepper /raw page
    write_jsonl(page, [{"raw_messages": messages, "total": len(messages), "pages": 1}])
    port = free_port()
    with (
        prometheus_server(tmp_path, [f"127.0.0.1:{port}"]) as prom,
        exporter_process(tmp_path, [page], port=port) as exporter,
    ):
        samples = exporter.wait_replayed(len(messages))
        done = time.time()
        assert labelled(samples, "statscache_messages_by_user_total", "user") == expected
        om = exporter.get("/metrics", {"Accept": OPENMETRICS}).body.decode("utf-8")
        families = {f.name: f for f in parse_openmetrics(om)}
        om_users = {
            s.labels["user"]: s.value for s in families["statscache_messages_by_user"].samples
        }
        assert om_users == expected
        prom.wait_for_scrape_after(done)

        result = prom.instant("statscache_messages_by_user_total")
        assert values_by(result, "user") == expected
        for user, count in expected.items():  # and a query can select each one back
            selector = user.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            result = prom.instant(f'statscache_messages_by_user_total{{user="{selector}"}}')
            assert single_value(result) == count, user


# --- e. series cap and overflow ------------------------------------------------------------------


def test_series_cap_sends_new_topics_to_the_overflow_series(tmp_path: Path) -> None:
    topics = [f"org.fedoraproject.prod.app{t}.thing.happened" for t in range(12)]
    rng = random.Random(5)
    order = [topic for t, topic in enumerate(topics) for _ in range(t + 2)]
    rng.shuffle(order)
    messages = [raw_item(i, topic) for i, topic in enumerate(order)]
    infile = write_jsonl(tmp_path / "topics.jsonl", messages)
    counts = Counter(order)
    first_five = list(dict.fromkeys(order))[:5]  # the first 5 distinct topics, in input order
    expected = {topic: float(counts[topic]) for topic in first_five}
    overflow = len(order) - sum(counts[topic] for topic in first_five)
    expected["__other__"] = overflow
    cap = {"volume_by_topic": {"max_series": 5}}
    port = free_port()
    with (
        prometheus_server(tmp_path, [f"127.0.0.1:{port}"]) as prom,
        exporter_process(tmp_path, [infile], plugins=cap, port=port) as exporter,
    ):
        samples = exporter.wait_replayed(len(messages))
        done = time.time()
        by_topic = labelled(samples, "statscache_messages_by_topic_total", "topic")
        assert by_topic == expected
        assert sum(by_topic.values()) == len(messages)
        key = (("metric", "messages_by_topic"), ("plugin", "volume_by_topic"))
        assert samples[("statscache_exporter_series_overflow_total", key)] == overflow
        assert samples[("statscache_exporter_series", key)] == 6  # 5 + the overflow series
        # the other metrics are not capped
        by_category = labelled(samples, "statscache_messages_by_category_total", "category")
        assert by_category == {category(t): counts[t] for t in topics}
        prom.wait_for_scrape_after(done)

        result = prom.instant("statscache_messages_by_topic_total")
        assert values_by(result, "topic") == expected
        result = prom.instant("sum(statscache_messages_by_topic_total)")
        assert single_value(result) == len(messages)
        result = prom.instant(
            "statscache_exporter_series_overflow_total"
            '{plugin="volume_by_topic",metric="messages_by_topic"}'
        )
        assert single_value(result) == overflow


# --- f. gzip, OpenMetrics, and Prometheus' own scrape --------------------------------------------

#: Self-metrics that move with the wall clock between two requests of an idle exporter.
_VOLATILE = re.compile(
    rb"^(statscache_exporter_newest_message_age_seconds(?:\{[^}]*\})?) \S+$", re.M
)


def _steady(body: bytes) -> bytes:
    return _VOLATILE.sub(rb"\1 <volatile>", body)


def test_gzip_and_openmetrics_and_prometheus_scrape_them(tmp_path: Path) -> None:
    items = sum(1 for _ in read(CORPUS))
    port = free_port()
    with (
        prometheus_server(tmp_path, [f"127.0.0.1:{port}"]) as prom,
        exporter_process(tmp_path, [CORPUS], port=port) as exporter,
    ):
        samples = exporter.wait_replayed(items)
        done = time.time()
        processed = total(samples, "statscache_exporter_messages_processed_total")

        for accept in ("", OPENMETRICS):
            headers = {"Accept": accept} if accept else {}
            plain = exporter.get("/metrics", headers)
            packed = exporter.get("/metrics", {**headers, "Accept-Encoding": "gzip"})
            assert plain.status == packed.status == 200
            assert "content-encoding" not in plain.headers
            assert packed.headers["content-encoding"] == "gzip"
            assert packed.body[:2] == b"\x1f\x8b"
            assert packed.headers["content-type"] == plain.headers["content-type"]
            assert _steady(gzip.decompress(packed.body)) == _steady(plain.body)

        text = exporter.get("/metrics")
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b"# EOF" not in text.body
        om = exporter.get("/metrics", {"Accept": OPENMETRICS})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.body.endswith(b"\n# EOF\n")
        assert om.body.count(b"# EOF") == 1
        families = {f.name: f for f in parse_openmetrics(om.body.decode("utf-8"))}
        assert families["statscache_messages"].samples[0].value == processed
        assert families["statscache_exporter_messages_processed"].type == "counter"

        prom.wait_for_scrape_after(done)
        assert single_value(prom.instant('up{job="statscache"}')) == 1
        scraped = single_value(prom.instant('scrape_samples_scraped{job="statscache"}'))
        assert scraped > 0
        # every sample of the exposition arrived: also those after the first gzip member
        assert scraped == len(parse_text(exporter.get("/metrics").body.decode("utf-8")))
        assert single_value(prom.instant("statscache_messages_total")) == processed
        result = prom.instant("statscache_exporter_messages_processed_total")
        assert values_by(result, "source") == {"file": processed}
