"""The koji plugin on real koji messages of both buses and a 2017 datagrepper page
(tests/data/plugins/koji.jsonl names the corpus line of each; one hand-written side-tag message,
since the corpus tags into none): the exact emissions of each, written from reading the
message; the totals of a replay in file order, shuffled, and split across a restart as a
backfill would deliver them; and the README's open-builds PromQL against a real Prometheus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from plugin_cases import SEEDS, messages, replay, sample_plugins, series
from plugin_cases import emitted as emitted_by
from servers import exporter_process, prometheus_server, values_by, write_jsonl
from statscache_plugins.koji import Koji, Options

from statscache_exporter.config import build
from statscache_exporter.message import normalize

MSGS = messages("koji")
MBS = "mbs/mbs.fedoraproject.org"


def emitted(ref: str, options: Options | None = None) -> list[Any]:
    return emitted_by(Koji(options), MSGS[ref])


def build_change(
    state: str, owner: str, started: int, finished: int, koji: str = "primary"
) -> list[Any]:
    return [
        ("koji_builds", {"koji": koji, "state": state}, 1),
        ("koji_builds_by_owner", {"koji": koji, "state": state, "owner": owner}, 1),
        ("koji_builds_started", {"koji": koji}, started),
        ("koji_builds_finished", {"koji": koji}, finished),
    ]


def tag(tag: str, action: str = "tag") -> list[Any]:
    return [("koji_tag_changes", {"koji": "primary", "tag": tag, "action": action}, 1)]


def task(state: str, koji: str = "primary") -> list[Any]:
    return [("koji_tasks", {"koji": koji, "method": "build", "state": state}, 1)]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # build.state.change: old → new
        ("fm:127", build_change("building", "ralph", 1, 0)),  # 3 → 0: a failed build resubmitted
        ("fm:128", build_change("building", "", 1, 0)),  # owner null
        ("fm:129", build_change("canceled", "dvratil", 0, 0)),  # 4 → 4: not from building
        ("fm:130", build_change("failed", "sharkcz", 0, 1, koji="s390")),  # instance s390
        ("fm:131", build_change("complete", "kevin", 0, 1)),  # 0 → 1
        ("fms:29", build_change("complete", "spot", 0, 1)),
        ("fms:31", build_change("building", "spot", 1, 0)),  # null → 0
        ("fms:34", build_change("deleted", "releng", 0, 0)),  # 1 → 2
        ("dg:4", build_change("building", MBS, 1, 0)),
        ("dg:5", build_change("complete", MBS, 0, 1)),
        # task.state.change, by method and new state
        ("fm:123", task("failed")),
        ("fms:42", task("closed")),
        ("dg:16", task("closed")),
        # tag and untag
        ("fm:125", tag("f18-updates-testing-pending")),
        ("fm:126", tag("f16-updates-pending", "untag")),
        ("fms:40", tag("f31-updates-pending")),
        ("fms:41", tag("epel8-signing-pending", "untag")),
        ("dg:19", tag("f28-pending", "untag")),
        ("dg:20", tag("f28")),
        ("dg:21", tag("f27-gnome")),
        ("hw:side-tag", tag("f40-build-side-*")),  # side tags folded
        # not counted: staging (not a listed instance), package lists, rpm signatures
        ("fm:122", []),
        ("fm:135", []),
        ("fms:36", []),
        ("dg:22", []),
    ],
)
def test_emissions(ref: str, expected: list[Any]) -> None:
    assert emitted(ref) == expected


def test_options_instances_secondary_and_fold() -> None:
    opts = build(
        Options,
        {
            "instances": {
                "org.fedoraproject.prod.buildsys.": "primary",
                "org.fedoraproject.stg.buildsys.": "staging",
            },
            "secondary_from_body": False,
            "fold_tags": [],
        },
        "plugins.koji.options",
    )
    assert emitted("fm:122", opts) == task("open", koji="staging")
    assert emitted("fm:130", opts) == build_change("failed", "sharkcz", 0, 1, koji="primary")
    assert emitted("hw:side-tag", opts) == tag("f40-build-side-81234")


EXPECTED = {
    "koji_builds": {
        series(koji="primary", state="building"): 4,  # fm:127, fm:128, fms:31, dg:4
        series(koji="primary", state="canceled"): 1,
        series(koji="s390", state="failed"): 1,
        series(koji="primary", state="complete"): 3,  # fm:131, fms:29, dg:5
        series(koji="primary", state="deleted"): 1,
    },
    "koji_builds_by_owner": {
        series(koji="primary", state="building", owner="ralph"): 1,
        series(koji="primary", state="building", owner=""): 1,
        series(koji="primary", state="building", owner="spot"): 1,
        series(koji="primary", state="building", owner=MBS): 1,
        series(koji="primary", state="canceled", owner="dvratil"): 1,
        series(koji="s390", state="failed", owner="sharkcz"): 1,
        series(koji="primary", state="complete", owner="kevin"): 1,
        series(koji="primary", state="complete", owner="spot"): 1,
        series(koji="primary", state="complete", owner=MBS): 1,
        series(koji="primary", state="deleted", owner="releng"): 1,
    },
    "koji_builds_started": {series(koji="primary"): 4, series(koji="s390"): 0},
    "koji_builds_finished": {series(koji="primary"): 3, series(koji="s390"): 1},
    "koji_tasks": {
        series(koji="primary", method="build", state="failed"): 1,
        series(koji="primary", method="build", state="closed"): 2,
    },
    "koji_tag_changes": {
        series(koji="primary", tag="f18-updates-testing-pending", action="tag"): 1,
        series(koji="primary", tag="f16-updates-pending", action="untag"): 1,
        series(koji="primary", tag="f31-updates-pending", action="tag"): 1,
        series(koji="primary", tag="epel8-signing-pending", action="untag"): 1,
        series(koji="primary", tag="f28-pending", action="untag"): 1,
        series(koji="primary", tag="f28", action="tag"): 1,
        series(koji="primary", tag="f27-gnome", action="tag"): 1,
        series(koji="primary", tag="f40-build-side-*", action="tag"): 1,
    },
}
#: builds open per koji, counted by hand: primary started 4 (fm:127, fm:128, fms:31, dg:4) and
#: finished 3 (fm:131, fms:29, dg:5); s390 finished one it was not seen starting (fm:130)
OPEN = {"primary": 1.0, "s390": 0.0}


def open_builds(totals: dict[str, Any]) -> dict[str, float]:
    """The README's query, clamp_min(started - finished, 0), over stored totals."""
    started = {dict(k)["koji"]: v for k, v in totals["koji_builds_started"].items()}
    finished = {dict(k)["koji"]: v for k, v in totals["koji_builds_finished"].items()}
    return {k: max(started[k] - finished[k], 0.0) for k in started}


def test_replay_totals_in_any_order(open_store: Any) -> None:
    raws = list(MSGS.values())
    first, totals = replay(open_store, Koji, raws, name="ordered.sqlite")
    assert totals == EXPECTED
    assert open_builds(totals) == OPEN
    for seed in SEEDS:
        dump, _ = replay(open_store, Koji, raws, seed=seed, name=f"s{seed}.sqlite")
        assert dump == first


def test_open_builds_rebuilt_by_a_backfill_after_a_restart(open_store: Any) -> None:
    """The newer half arrives live, the exporter restarts, the older half arrives late (as the
    gap filler delivers it): the same totals, so the same open count."""
    raws = sorted(MSGS.values(), key=lambda raw: normalize(raw).epoch)
    newer, older = raws[len(raws) // 2 :], raws[: len(raws) // 2]
    live = open_store("split.sqlite", plugins={"koji": Koji})
    for raw in newer:
        live.handle(raw)
    live.close()
    later = open_store("split.sqlite", plugins={"koji": Koji})
    for raw in older:
        later.handle(raw, "backfill")
    later.flush()
    started = later.store.totals_by_metric("koji_builds_started")
    finished = later.store.totals_by_metric("koji_builds_finished")
    opened = {json.loads(k)["koji"]: max(v - finished[k], 0.0) for k, v in started.items()}
    assert opened == OPEN


OPEN_QUERY = (
    "clamp_min(statscache_koji_builds_started_total - statscache_koji_builds_finished_total, 0)"
)


@pytest.mark.integration
def test_open_builds_promql_on_a_real_prometheus(tmp_path: Path) -> None:
    """The open-builds query of plugins/koji/README.md, run by Prometheus on what it scraped
    from the exporter replaying the koji messages."""
    path = write_jsonl(tmp_path / "koji.jsonl", list(MSGS.values()))
    plugins = {"koji": {"enabled": True}, "volume": {"enabled": True}}
    with exporter_process(tmp_path, [path], plugins=plugins) as exporter:
        exporter.wait_replayed(len(MSGS))
        with prometheus_server(tmp_path, [exporter.target]) as prom:
            result = prom.query(OPEN_QUERY, lambda r: len(r) == 2)
            assert values_by(result, "koji") == OPEN
            failed = prom.query('statscache_koji_builds_by_owner_total{state="failed"}')
            assert values_by(failed, "owner") == {"sharkcz": 1.0}


def test_sample_config_is_valid() -> None:
    (plugin,) = sample_plugins("koji", {"koji": Koji})
    assert emitted_by(plugin, MSGS["fm:122"]) == task("open", koji="staging")
