"""pagure_contributions on real pagure.io, src.fedoraproject.org and dist-git messages
(tests/data/plugins/pagure.jsonl names the corpus line of each): the exact emissions of each,
written from reading the message, then the totals of a replay in file order and shuffled."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_cases import SEEDS, messages, replay, sample_plugins, series
from plugin_cases import emitted as emitted_by
from statscache_plugins.pagure import Options, PagureContributions

from statscache_exporter.config import ConfigError, build

MSGS = messages("pagure")
IO = "pagure.io"
SRC = "src.fedoraproject.org"


def emitted(ref: str, options: Options | None = None) -> list[Any]:
    return emitted_by(PagureContributions(options), MSGS[ref])


def contribution(forge: str, kind: str, project: str | None, user: str | None) -> list[Any]:
    out: list[Any] = [("pagure_contributions", {"forge": forge, "kind": kind}, 1)]
    if project:
        out.append(("pagure_contributions_by_project", {"forge": forge, "project": project}, 1))
    if user:
        out.append(("pagure_contributions_by_user", {"forge": forge, "user": user}, 1))
    return out


@pytest.mark.parametrize(
    ("ref", "forge", "kind", "project", "user"),
    [
        # fedmsg era, pagure.io: the project from project.name, pullrequest.project.name
        ("fm:389", IO, "comment", "pungi", "ausil"),  # issue.comment.added
        ("fm:391", IO, "pull_request", "pungi-fedora", "sgallagh"),  # pull-request.new
        ("fm:396", IO, "pull_request", "pungi", "lsedlar"),  # pull-request.flag.added
        ("fm:399", IO, "pull_request", "pungi", "lsedlar"),  # pull-request.closed
        ("fm:401", IO, "issue", "pagure", "bonnegent"),  # issue.new
        # a project in a namespace is namespace/name
        ("fm:599", IO, "comment", "Fedora-Council/tickets", "langdon"),
        # an old-style push: one message per commit, commit.repo, no agent in the body
        ("fm:414", IO, "push", "fedora-hubs", None),
        # a new-style push: repo.name, agent
        ("fm:419", IO, "push", "pagure", "pingou"),
        # dist-git's own push hook: commit.repo in namespace rpms unless it says otherwise
        ("fm:685", SRC, "push", "rpms/datanommer", None),  # names no username
        ("fm:688", SRC, "push", "rpms/valgrind", "mjw"),
        ("fm:690", SRC, "push", "tests/ember", "spot"),
        # fedora-messaging era (pagure-messages bodies), agent from the body
        ("fms:59", IO, "push", "fedora-infra/fedocal-messages", "dummy-user"),
        ("fms:68", IO, "comment", "fedora-infra/fedocal-messages", "dummy-user"),
        ("fms:89", IO, "pull_request", "pagure", "dummy-user"),  # assigned.added
        ("fms:95", IO, "comment", "pagure", "jjames"),  # pull-request.comment.added
    ],
)
def test_contributions(
    ref: str, forge: str, kind: str, project: str | None, user: str | None
) -> None:
    assert emitted(ref) == contribution(forge, kind, project, user)


@pytest.mark.parametrize(
    "ref",
    [
        "fm:390",  # project.forked: not a contribution
        "fm:597",  # io.pagure.dev: not a forge by default
        "fm:620",  # pull-request.comment.edited
        "fm:626",  # io.pagure.dev request.assigned.added
        "fm:630",  # issue.comment.edited
        "fm:632",  # src.fedoraproject.org project.new
        "fms:56",  # git.branch.creation
        "fms:96",  # pull-request.comment.edited
        "fms:100",  # pull-request.initial_comment.edited
        "fms:107",  # pagure.Test.notification
    ],
)
def test_not_contributions(ref: str) -> None:
    assert emitted(ref) == []


def test_options_add_a_forge_and_stop_counting_dist_git() -> None:
    opts = build(
        Options,
        {"forges": {"io.pagure.dev.pagure.": "pagure.dev"}, "distgit_push_topics": {}},
        "plugins.pagure_contributions.options",
    )
    # the old name of pull-request topics, request.*
    assert emitted("fm:626", opts) == contribution("pagure.dev", "pull_request", "pagure", "pingou")
    assert emitted("fm:597", opts) == contribution("pagure.dev", "issue", "foo", "pingou")
    assert emitted("fm:389", opts) == []  # pagure.io is no longer listed
    assert emitted("fm:688", opts) == []


def test_a_bad_option_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"plugins.pagure_contributions.options.forges: expected"):
        build(
            Options, {"forges": ["io.pagure.prod.pagure."]}, "plugins.pagure_contributions.options"
        )


EXPECTED = {
    "pagure_contributions": {
        # fm:389, fm:599, fms:68, fms:95
        series(forge=IO, kind="comment"): 4,
        # fm:391, fm:396, fm:399, fms:89
        series(forge=IO, kind="pull_request"): 4,
        series(forge=IO, kind="issue"): 1,  # fm:401
        series(forge=IO, kind="push"): 3,  # fm:414, fm:419, fms:59
        series(forge=SRC, kind="push"): 3,  # fm:685, fm:688, fm:690
    },
    "pagure_contributions_by_project": {
        series(forge=IO, project="pungi"): 3,  # fm:389, fm:396, fm:399
        series(forge=IO, project="pungi-fedora"): 1,
        series(forge=IO, project="pagure"): 4,  # fm:401, fm:419, fms:89, fms:95
        series(forge=IO, project="fedora-hubs"): 1,
        series(forge=IO, project="Fedora-Council/tickets"): 1,
        series(forge=IO, project="fedora-infra/fedocal-messages"): 2,  # fms:59, fms:68
        series(forge=SRC, project="rpms/datanommer"): 1,
        series(forge=SRC, project="rpms/valgrind"): 1,
        series(forge=SRC, project="tests/ember"): 1,
    },
    "pagure_contributions_by_user": {
        series(forge=IO, user="ausil"): 1,
        series(forge=IO, user="sgallagh"): 1,
        series(forge=IO, user="lsedlar"): 2,
        series(forge=IO, user="bonnegent"): 1,
        series(forge=IO, user="pingou"): 1,
        series(forge=IO, user="langdon"): 1,
        series(forge=IO, user="dummy-user"): 3,  # fms:59, fms:68, fms:89
        series(forge=IO, user="jjames"): 1,
        series(forge=SRC, user="mjw"): 1,
        series(forge=SRC, user="spot"): 1,
    },
}


def test_replay_totals_in_any_order(open_store: Any) -> None:
    raws = list(MSGS.values())
    first, totals = replay(open_store, PagureContributions, raws, name="ordered.sqlite")
    assert totals == EXPECTED
    for seed in SEEDS:
        dump, _ = replay(open_store, PagureContributions, raws, seed=seed, name=f"s{seed}.sqlite")
        assert dump == first


def test_sample_config_is_valid() -> None:
    (plugin,) = sample_plugins("pagure", {"pagure_contributions": PagureContributions})
    assert plugin.options.forges["io.pagure.stg.pagure."] == "stg.pagure.io"
    staged = {**MSGS["fm:389"], "topic": "io.pagure.stg.pagure.issue.comment.added"}
    assert emitted_by(plugin, staged) == contribution("stg.pagure.io", "comment", "pungi", "ausil")
