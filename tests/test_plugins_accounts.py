"""The accounts and badges plugins on real FAS (fedmsg, 2012-), noggin (fedora-messaging) and
fedbadges messages (tests/data/plugins/accounts.jsonl names the corpus line of each; the FAS
group test envelopes carry no timestamp, so one was added; hand-written: a noggin
member.removed and a production badge award, which the corpus has none of): the exact
emissions of each, written from reading the message, then the totals of a replay in file order
and shuffled."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_cases import SEEDS, messages, replay, sample_plugins, series
from plugin_cases import emitted as emitted_by
from statscache_plugins.accounts import Accounts, AccountsOptions, Badges, BadgesOptions

from statscache_exporter.config import build

MSGS = messages("accounts")
#: production and staging: most FAS messages in the corpus are from staging
WITH_STAGING = {"prefixes": ["org.fedoraproject.prod.fas.", "org.fedoraproject.stg.fas."]}
BADGES_WITH_STAGING = {
    "prefixes": ["org.fedoraproject.prod.fedbadges.", "org.fedoraproject.stg.fedbadges."]
}
REGISTERED = [("accounts_registered", {}, 1)]


def membership(group: str, action: str) -> list[Any]:
    return [("accounts_group_membership_changes", {"group": group, "action": action}, 1)]


def emitted(ref: str, staging: bool = False) -> list[Any]:
    opts = build(AccountsOptions, WITH_STAGING, "plugins.accounts.options") if staging else None
    return emitted_by(Accounts(opts), MSGS[ref])


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # noggin, production: bodies under "msg"
        ("fms:109", REGISTERED),
        ("fms:110", REGISTERED),
        ("fms:108", membership("developers", "added")),  # fas.group.member.sponsor
        ("hw:member-removed", membership("developers", "removed")),  # member.removed
        ("fms:111", []),  # user.update
        # staging is not counted by default
        ("fm:464", []),
        ("fm:474", []),
    ],
)
def test_emissions(ref: str, expected: list[Any]) -> None:
    assert emitted(ref) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # FAS (fedmsg, staging): user and group as strings, or as objects in older bodies
        ("fm:464", REGISTERED),  # {"user": {"username": "ralph"}}
        ("fm:465", REGISTERED),  # {"user": "ralph"}
        ("fm:469", []),  # group.create
        ("fm:471", membership("ambassadors", "role_changed")),
        ("fm:472", membership("ambassadors", "role_changed")),  # {"group": {"name": ...}}
        ("fm:473", membership("ambassadors", "removed")),  # FAS's member.remove
        ("fm:474", membership("ambassadors", "added")),  # member.sponsor
        ("fm:475", membership("ambassadors", "applied")),
        ("fm:476", membership("ambassadors", "removed")),
        ("fm:477", membership("ambassadors", "added")),
        ("fm:478", membership("ambassadors", "applied")),
        ("fm:74", []),  # a badge, not an account
    ],
)
def test_emissions_with_staging(ref: str, expected: list[Any]) -> None:
    assert emitted(ref, staging=True) == expected


def badges(ref: str, staging: bool = False) -> list[Any]:
    opts = build(BadgesOptions, BADGES_WITH_STAGING, "o") if staging else None
    return emitted_by(Badges(opts), MSGS[ref])


def test_badges() -> None:
    assert badges("hw:badge-award") == [
        ("badges_awarded", {"badge": "Junior Tagger (Tagger I)"}, 1)
    ]
    assert badges("fm:74") == []  # staging
    assert badges("fm:74", staging=True) == [
        ("badges_awarded", {"badge": "Something on your mind"}, 1)
    ]
    assert badges("fm:75") == []  # person.rank.advance
    assert badges("fm:76") == []  # person.login.first
    assert badges("fms:109") == []


ACCOUNTS = {
    "accounts_registered": {(): 4},  # fm:464, fm:465, fms:109, fms:110
    "accounts_group_membership_changes": {
        series(group="ambassadors", action="role_changed"): 2,  # fm:471, fm:472
        series(group="ambassadors", action="removed"): 2,  # fm:473, fm:476
        series(group="ambassadors", action="added"): 2,  # fm:474, fm:477
        series(group="ambassadors", action="applied"): 2,  # fm:475, fm:478
        series(group="developers", action="added"): 1,  # fms:108
        series(group="developers", action="removed"): 1,  # hw:member-removed
    },
}
BADGES = {
    "badges_awarded": {
        series(badge="Something on your mind"): 1,
        series(badge="Junior Tagger (Tagger I)"): 1,
    }
}


@pytest.mark.parametrize(
    ("cls", "options", "expected"),
    [(Accounts, WITH_STAGING, ACCOUNTS), (Badges, BADGES_WITH_STAGING, BADGES)],
)
def test_replay_totals_in_any_order(
    open_store: Any, cls: Any, options: dict[str, Any], expected: dict[str, Any]
) -> None:
    raws = list(MSGS.values())
    first, totals = replay(open_store, cls, raws, options, name="ordered.sqlite")
    assert totals == expected
    for seed in SEEDS:
        dump, _ = replay(open_store, cls, raws, options, seed=seed, name=f"s{seed}.sqlite")
        assert dump == first


def test_sample_config_is_valid() -> None:
    accounts, badge = sample_plugins("accounts", {"accounts": Accounts, "badges": Badges})
    assert emitted_by(accounts, MSGS["fm:465"]) == REGISTERED
    assert emitted_by(badge, MSGS["hw:badge-award"]) == [
        ("badges_awarded", {"badge": "Junior Tagger (Tagger I)"}, 1)
    ]
