"""The bundled Prometheus rules (prometheus/): alerting and recording rules.

a. Without servers: the committed files are what prometheus/generate.py builds from its
   Settings; ``--selector`` and ``--out`` write another job's copy; every alert has a ``for:``,
   a severity, a summary and a description; prometheus/README.md's table lists every setting
   with its default.
b. promtool: ``promtool check rules`` on both files, and ``promtool test rules`` on the unit
   tests of tests/data/promtool/, in which every alert fires on series that should fire it
   and is silent one step before its ``for:`` is over and on healthy series, and every
   recorded series has its value checked. The unit tests fail when a threshold moves.
c. Against the real thing: `statscache-exporter run` replays the test corpus (plus two compose
   messages made here with times relative to now) with a live fedmsg source, an InfluxDB sink
   that cannot reach its server and the gap filler, into a real Prometheus that loads the rules
   generated for its job. Every metric a rule names is one the exporter's /metrics declares
   (its ``# TYPE`` lines: the self-metrics and every bundled plugin's, read from the code that
   runs, not from a list kept here); every selector of every rule finds series; every recorded
   series exists; the alerts that this exporter's state should raise, and only those, are
   pending; and the dashboards' panels that read the recorded series give the same numbers as
   without them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
import zmq
from conftest import DATA, REPO, corpus_messages
from grafana_queries import load_generator
from servers import (
    Exporter,
    Prometheus,
    ReplayPipe,
    Samples,
    exporter_process,
    free_port,
    prometheus_server,
    require_binary,
    wait_until,
)

PROMTOOL_TESTS = DATA / "promtool"
RULES_DIR = REPO / "prometheus"


def load_rules_generator() -> ModuleType:
    """prometheus/generate.py as a module (a script, like grafana/generate.py)."""
    spec = importlib.util.spec_from_file_location("prometheus_generate", RULES_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = load_rules_generator()
dashboards = load_generator()


def groups(path: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return found


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [rule for group in groups(path) for rule in group["rules"]]


ALERTS = rules_of(RULES_DIR / gen.ALERTS)
RECORDS = rules_of(RULES_DIR / gen.RULES)


# --- a. the files -------------------------------------------------------------------------------


def test_the_committed_rules_are_what_generate_py_builds() -> None:
    assert gen.stale() == [], "run: python prometheus/generate.py (make prometheus-rules)"


def test_another_jobs_copy_is_written_elsewhere_with_its_selector(tmp_path: Path) -> None:
    assert gen.main(["--selector", 'job="fedora-bus"', "--out", str(tmp_path)]) == 0
    for name in (gen.ALERTS, gen.RULES):
        text = (tmp_path / name).read_text()
        assert 'job="fedora-bus"' in text and 'statscache-exporter"' not in text, name
    assert gen.main(["--check", "--selector", 'job="fedora-bus"', "--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1  # the default job's differ


def test_every_alert_has_a_for_a_severity_and_says_what_to_look_at() -> None:
    names = [a["alert"] for a in ALERTS]
    assert len(set(names)) == len(names)
    assert set(names) >= {
        "StatscacheExporterDown",
        "StatscacheSourceDisconnected",
        "StatscacheBusSilent",
        "StatscacheBackfillStuck",
        "StatscacheInfluxDBBacklog",
        "StatscacheFlushFailing",
        "StatscachePluginErrors",
        "StatscacheSeriesOverflow",
        "FedoraComposeFailed",
        "FedoraRawhideComposeStale",
    }
    for a in ALERTS:
        assert re.fullmatch(r"\d+[smh]", a["for"]) and gen.seconds(a["for"]) > 0, a["alert"]
        assert a["labels"]["severity"] in ("critical", "warning"), a["alert"]
        assert set(a["annotations"]) == {"summary", "description"}, a["alert"]
        description = a["annotations"]["description"]
        assert re.search(r"\b(look at|check)\b", description, re.IGNORECASE), a["alert"]
        # every selector of ours carries the job selector
        for selector in selectors(a["expr"]):
            assert 'job="statscache-exporter"' in selector, (a["alert"], selector)


def readme_settings() -> dict[str, str]:
    """prometheus/README.md's settings table: name -> default, as written there."""
    rows = re.findall(
        r"^\| `(\w+)` \| `([^`]*)` \|", (RULES_DIR / "README.md").read_text(), re.MULTILINE
    )
    return {name: default.replace("\\|", "|") for name, default in rows}  # a table's \|


def test_the_readme_lists_every_setting_with_its_default() -> None:
    defaults = {f.name: str(f.default) for f in dataclasses.fields(gen.Settings)}
    assert readme_settings() == defaults


def test_the_rules_and_the_dashboards_share_the_prefix_and_the_recorded_names() -> None:
    assert gen.Settings().prefix == dashboards.DEFAULT_PREFIX
    assert gen.RATE_WINDOW == dashboards.RECORDED_WINDOW
    used = set()
    for path in sorted(dashboards.DASHBOARD_DIR.glob("*.json")):
        used |= set(re.findall(r"\w+:\w+:rate\w+", path.read_text()))
    assert used, "the dashboards read no recorded series"
    assert used <= {r["record"] for r in RECORDS}


# --- b. promtool --------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=120
    )


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES_DIR / gen.ALERTS), str(RULES_DIR / gen.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout
    assert f"SUCCESS: {len(RECORDS)} rules found" in result.stdout


@pytest.mark.parametrize("name", ["alerts_test.yaml", "rules_test.yaml"])
def test_promtool_unit_tests_pass(name: str) -> None:
    result = promtool("test", "rules", str(PROMTOOL_TESTS / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def unit_tests(name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = yaml.safe_load((PROMTOOL_TESTS / name).read_text())["tests"]
    return found


def duration(text: str) -> int:
    return sum(gen.seconds(part) for part in re.findall(r"\d+[smhdw]", text))


def test_every_alert_is_tested_firing_and_one_step_before_it_fires() -> None:
    """Each alert: a test where it fires at some time, and the same test asks for no alert one
    evaluation (1m) before: the boundary of its ``for:`` (the series are true since then)."""
    covered = set()
    for t in unit_tests("alerts_test.yaml"):
        cases = [
            (c["alertname"], duration(c["eval_time"]), c["exp_alerts"])
            for c in t.get("alert_rule_test", [])
        ]
        for name, when, expected in cases:
            if expected and (name, when - 60, []) in cases:
                covered.add(name)
    assert covered == {a["alert"] for a in ALERTS}


def test_every_recorded_series_has_its_value_tested() -> None:
    asked = {
        re.match(r"[\w:]+", c["expr"])[0]  # type: ignore[index]
        for t in unit_tests("rules_test.yaml")
        for c in t.get("promql_expr_test", [])
        if c["exp_samples"]
    }
    assert asked == {r["record"] for r in RECORDS}


def test_the_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    """The unit tests hold the thresholds: StatscacheSourceDisconnected's tests pass on the
    rules as generated, and fail on them with its ``for:`` moved by a minute."""
    test = tmp_path / "tests" / "data" / "promtool" / "alerts_test.yaml"
    test.parent.mkdir(parents=True)
    suite = yaml.safe_load((PROMTOOL_TESTS / "alerts_test.yaml").read_text())
    suite["tests"] = [  # its tests only: the others take seconds and would not move
        case
        for case in suite["tests"]
        if any(c["alertname"] == "StatscacheSourceDisconnected" for c in case["alert_rule_test"])
    ]
    test.write_text(yaml.safe_dump(suite))  # rule_files: ../../../prometheus/alerts.yaml
    gen.write(gen.Settings(), tmp_path / "prometheus", say=lambda _: None)
    result = promtool("test", "rules", str(test))
    assert result.returncode == 0, result.stdout + result.stderr
    moved = dataclasses.replace(gen.Settings(), source_disconnected_for="11m")
    gen.write(moved, tmp_path / "prometheus", say=lambda _: None)
    result = promtool("test", "rules", str(test))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "alertname: StatscacheSourceDisconnected, time: 12m" in result.stdout + result.stderr


# --- reading PromQL -----------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside strings, label matchers,
    range windows and grouping clauses that are not functions, aggregations or keywords."""
    text = re.sub(r"\{[^{}]*\}", " ", _STRING.sub('""', expr))
    text = _GROUPING.sub(" ", re.sub(r"\[[^\[\]]*\]", " ", text))
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if text[m.end() :].lstrip().startswith("(") or m[0].lower() in _KEYWORDS:
            continue
        names.add(m[0])
    return names


def selectors(expr: str) -> list[str]:
    """Every ``metric{matchers}`` of an expression."""
    return re.findall(r'[A-Za-z_:][\w:]*\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}', expr)


def test_the_promql_reading_finds_the_names_and_selectors() -> None:
    expr = (
        'sum by (job, instance) (rate(a_total{x="}", y=~"b|c"}[5m])) / on (job) group_left () '
        'b_seconds > 0.01 and time() - level:c:rate5m{job="j"} unless max without (i) (d)'
    )
    assert metric_names(expr) == {"a_total", "b_seconds", "level:c:rate5m", "d"}
    assert selectors(expr) == ['a_total{x="}", y=~"b|c"}', 'level:c:rate5m{job="j"}']


# --- c. against a real exporter and Prometheus --------------------------------------------------

JOB = "statscache"  # the job tests/servers.py's Prometheus scrapes
SETTINGS = dataclasses.replace(
    gen.Settings(), selector=f'job="{JOB}"', not_live_sources="backfill|file"
)
NOW = time.time()
#: Made here, at times relative to now (the corpus's are 2012-2024): a Rawhide compose that
#: finished 40 hours ago, by the releng scripts' topic, and one pungi doomed an hour ago.
COMPOSES = [
    {
        "topic": "org.fedoraproject.prod.compose.rawhide.complete",
        "msg": {"log": "done", "branch": "rawhide"},
        "timestamp": NOW - 40 * 3600,
        "msg_id": f"{time.gmtime(NOW).tm_year}-{uuid.uuid4()}",
    },
    {
        "topic": "org.fedoraproject.prod.pungi.compose.status.change",
        "msg": {
            "compose_id": "Fedora-Rawhide-20261201.n.0",
            "location": "https://kojipkgs.fedoraproject.org/compose/rawhide/x/compose",
            "status": "DOOMED",
        },
        "timestamp": NOW - 3600,
        "msg_id": f"{time.gmtime(NOW).tm_year}-{uuid.uuid4()}",
    },
]
#: What this exporter's state should raise, each pending (its ``for:`` is not over), and why.
EXPECTED_ALERTS = {
    "StatscacheBusSilent": "the fedmsg source is connected and sends nothing: the newest "
    "message is the pungi one, an hour old",
    "StatscacheInfluxDBDown": "the sink's InfluxDB is a closed port and points wait",
    "StatscacheSeriesOverflow": "volume_by_topic is capped at 150 series (the corpus has 382 "
    "topics), and the second half of the replay overflows it between two scrapes",
    "FedoraComposeFailed": "pungi doomed Fedora-Rawhide an hour ago",
    "FedoraRawhideComposeStale": "the last finished Rawhide compose is 40 hours old",
}


@dataclass
class Live:
    prometheus: Prometheus
    exporter: Exporter
    samples: Samples
    #: every metric family /metrics declares (its # TYPE lines)
    declared: set[str]
    #: the rules as generated for this Prometheus's job (SETTINGS)
    rules: Path


def load_rules(prom: Prometheus, paths: list[Path]) -> None:
    """Add ``rule_files`` to the running Prometheus's config and make it reload (SIGHUP), then
    wait until it has evaluated every rule at least once."""
    config_file = prom.log.parent / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    config["rule_files"] = [str(p) for p in paths]
    config_file.write_text(json.dumps(config, indent=2))
    prom.process.send_signal(signal.SIGHUP)
    count = sum(len(rules_of(p)) for p in paths)

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return rules if len(rules) == count and all(r["health"] == "ok" for r in rules) else []

    wait_until(evaluated, bool, "Prometheus to load and evaluate the rules")


def settled(s: Samples, items: int) -> bool:
    """The replay handed over ``items`` messages, each handled, and the processed ones flushed."""

    def of(name: str) -> float:
        return sum(v for (n, labels), v in s.items() if n == name and ("source", "file") in labels)

    processed = of("statscache_exporter_messages_processed_total")
    handled = processed + of("statscache_exporter_messages_duplicate_total")
    handled += of("statscache_exporter_messages_rejected_total")
    received = of("statscache_exporter_messages_received_total")
    return received == handled == items and s.get(("statscache_messages_total", ()), 0) == processed


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("rules")
    rules = tmp / "rules"
    gen.write(SETTINGS, rules, say=lambda _: None)
    messages = corpus_messages() + COMPOSES
    halves = [messages[0::2], messages[1::2]]
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    bus_port = publisher.bind_to_random_port("tcp://127.0.0.1")
    port = free_port()
    pipe = ReplayPipe(tmp / "corpus.jsonl")
    settings = {
        "sources": [
            {"type": "replay", "name": "file", "paths": [str(pipe.path)]},
            {"type": "fedmsg", "name": "bus", "endpoints": [f"tcp://127.0.0.1:{bus_port}"]},
        ],
        # nobody listens there: points wait (and the stop gives up on them after a second)
        "influxdb": {
            "enabled": True,
            "url": f"http://127.0.0.1:{free_port()}",
            "shutdown_timeout": "1s",
        },
        "backfill": {
            "enabled": True,
            "url": f"http://127.0.0.1:{free_port()}",
            "initial_backfill": "none",
        },
    }
    try:
        with (
            prometheus_server(tmp, [f"127.0.0.1:{port}"]) as prom,
            exporter_process(
                tmp,
                [pipe.path],
                port=port,
                plugins={"volume_by_topic": {"max_series": 150}},
                settings=settings,
            ) as exporter,
        ):
            load_rules(prom, [rules / gen.ALERTS, rules / gen.RULES])
            sent = 0
            for half in halves:
                pipe.write_messages(half)
                sent += len(half)
                if sent == len(messages):
                    pipe.close()
                wait_until(
                    exporter.samples, partial(settled, items=sent), f"{sent} stored", timeout=60
                )
                prom.wait_for_scrape_after(time.time(), job=JOB)
            text = exporter.get("/metrics").body.decode()
            declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
            yield Live(prom, exporter, exporter.samples(), declared, rules)
    finally:
        pipe.close()
        publisher.close()
        context.term()


@pytest.mark.integration
def test_every_metric_a_rule_names_is_one_the_exporter_declares(live: Live) -> None:
    # the bundled plugins' and the self-metrics' families are all there, with data or not
    assert "statscache_koji_builds_total" in live.declared
    assert "statscache_exporter_backfill_stuck" in live.declared
    assert "statscache_exporter_influxdb_oldest_pending_age_seconds" in live.declared
    recorded = {r["record"] for r in RECORDS}
    for rule in ALERTS + RECORDS:
        unknown = metric_names(rule["expr"]) - live.declared - recorded - {"up"}
        assert not unknown, f"{rule.get('alert') or rule['record']}: {unknown}"


@pytest.mark.integration
def test_every_selector_of_every_rule_finds_the_real_series(live: Live) -> None:
    for name in (gen.ALERTS, gen.RULES):
        for rule in rules_of(live.rules / name):
            for selector in selectors(rule["expr"]):
                found = live.prometheus.query(f"count({selector})", timeout=30)
                assert found, (rule.get("alert") or rule["record"], selector)


@pytest.mark.integration
def test_every_recorded_series_exists_and_is_the_rate_of_its_counter(live: Live) -> None:
    prom = live.prometheus
    for rule in RECORDS:
        prom.query(rule["record"], timeout=30)
    # at the rules' own evaluation time, each per-target series is rate(counter[5m]) exactly
    [sample] = prom.instant("timestamp(instance:statscache_messages:rate5m)")
    at = sample["value"][1]
    for rule in rules_of(live.rules / gen.RULES):
        recorded = prom.api("query", query=rule["record"], time=at)["result"]
        computed = prom.api("query", query=rule["expr"], time=at)["result"]
        assert recorded and by_labels(recorded) == by_labels(computed), rule["record"]
        assert any(v > 0 for v in by_labels(recorded).values()), rule["record"]


def by_labels(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(
            s["value"][1]
        )
        for s in result
    }


@pytest.mark.integration
def test_the_alerts_this_exporter_should_raise_are_pending_and_no_other(live: Live) -> None:
    def active() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for a in live.prometheus.api("alerts")["alerts"]:
            out.setdefault(a["labels"]["alertname"], []).append(a)
        return out

    alerts = wait_until(
        active, lambda a: set(a) == set(EXPECTED_ALERTS), "the expected alerts", timeout=60
    )
    assert all(a["state"] == "pending" for found in alerts.values() for a in found)
    [failed] = alerts["FedoraComposeFailed"]
    assert {k: failed["labels"][k] for k in ("release", "arch", "stage", "job")} == {
        "release": "Fedora-Rawhide",
        "arch": "primary",
        "stage": "compose",
        "job": JOB,
    }
    [stale] = alerts["FedoraRawhideComposeStale"]
    assert 40 * 3600 <= float(stale["value"]) < 41 * 3600
    [overflow] = alerts["StatscacheSeriesOverflow"]
    assert overflow["labels"]["metric"] == "messages_by_topic"
    [silent] = alerts["StatscacheBusSilent"]
    assert silent["annotations"]["summary"] == (
        f"{live.exporter.target} is connected but counts no new messages"
    )


def grafana_like(expr: str) -> str:
    """A dashboard expression with every variable at All and $__rate_interval at the rules'
    window, so that both branches of a recorded_rate() compute the same."""
    expr = expr.replace("$__rate_interval", gen.RATE_WINDOW)
    return re.sub(r'=~"\$\w+"', '=~".*"', expr)


@pytest.mark.integration
def test_the_dashboards_read_the_recorded_series_and_get_the_same_as_without(
    live: Live,
) -> None:
    prom = live.prometheus
    [sample] = prom.instant("timestamp(instance:statscache_messages:rate5m)")
    at = sample["value"][1]
    checked = []
    for path in sorted(dashboards.DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                names = set(re.findall(r"\w+:\w+:rate\w+", expr))
                if not names:
                    continue
                with_rules = grafana_like(expr)
                without = with_rules
                for name in names:
                    without = without.replace(name, "statscache_no_such_recording")
                    # the recorded branch alone has data: the panel reads the rules
                    assert prom.api("query", query=grafana_like(f"{name}"), time=at)["result"]
                got = by_labels(prom.api("query", query=with_rules, time=at)["result"])
                expected = by_labels(prom.api("query", query=without, time=at)["result"])
                assert got.keys() == expected.keys() and got, (panel["title"], got, expected)
                for key, value in got.items():
                    assert value == pytest.approx(expected[key], rel=1e-9), (panel["title"], key)
                checked.append(panel["title"])
    assert sorted(checked) == sorted(
        [
            "Messages per second now",
            "Messages per second",
            "Messages per second by category",
            "Koji build state changes per second by state",
        ]
    )
