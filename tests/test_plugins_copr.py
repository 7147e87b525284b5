"""The copr plugin on real copr messages: fedmsg envelopes of 2013-2016, fedora-messaging
bodies (one wrapping a whole bridged fedmsg envelope under "msg") and a 2017 datagrepper page
(tests/data/plugins/copr.jsonl names the corpus line of each): the exact emissions of each,
written from reading the message, then the totals of a replay in file order and shuffled."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_cases import SEEDS, messages, replay, sample_plugins, series
from plugin_cases import emitted as emitted_by
from statscache_plugins.copr import Copr, Options

from statscache_exporter.config import ConfigError, build

MSGS = messages("copr")


def emitted(ref: str, options: Options | None = None) -> list[Any]:
    return emitted_by(Copr(options), MSGS[ref])


def started(chroot: str, owner: str) -> list[Any]:
    return [
        ("copr_builds_started", {"chroot": chroot}, 1),
        ("copr_builds_started_by_owner", {"owner": owner}, 1),
    ]


def ended(chroot: str, status: str, owner: str) -> list[Any]:
    return [
        ("copr_builds_ended", {"chroot": chroot, "status": status}, 1),
        ("copr_builds_ended_by_owner", {"owner": owner, "status": status}, 1),
    ]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # build.start before 2017 named no chroot (chroot.start did)
        ("fm:314", started("", "logocomune")),
        ("fm:448", started("", "fatka")),  # 2013: no owner, the user is the owner
        # 2017 on: build.start is per chroot; the copr owner may be a @group
        ("fms:43", started("fedora-rawhide-x86_64", "@python")),  # bridged, under "msg"
        ("fms:44", started("fedora-rawhide-x86_64", "@python")),  # the same body, unwrapped
        ("dg:0", started("fedora-25-x86_64", "dvdmuckle")),
        # build.end: status 0 failed, 1 succeeded, 2 canceled
        ("fm:318", ended("fedora-rawhide-i386", "succeeded", "logocomune")),
        ("fm:322", ended("epel-6-i386", "failed", "andykimpe")),
        ("fm:451", ended("fedora-21-x86_64", "failed", "brianjmurrell")),
        ("fm:454", ended("fedora-23-i386", "failed", "@python")),
        ("fms:49", ended("fedora-29-x86_64", "canceled", "kbaig")),
        ("dg:15", ended("fedora-rawhide-i386", "succeeded", "przemof")),
        # chroot.start repeats build.start (copr says never to use it)
        ("fm:315", []),
        ("fms:50", []),
        ("dg:1", []),
    ],
)
def test_emissions(ref: str, expected: list[Any]) -> None:
    assert emitted(ref) == expected


def test_counting_chroot_start_instead() -> None:
    opts = build(Options, {"start_topic": "chroot.start"}, "plugins.copr.options")
    assert emitted("fm:315", opts) == started("fedora-22-x86_64", "logocomune")
    assert emitted("fms:50", opts) == started("fedora-29-aarch64", "praiskup")
    assert emitted("dg:1", opts) == started("fedora-25-x86_64", "dvdmuckle")
    assert emitted("dg:0", opts) == []
    assert emitted("dg:15", opts) == ended("fedora-rawhide-i386", "succeeded", "przemof")


def test_a_bad_start_topic_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"start_topic: 'build\.begin' is not a valid choice"):
        build(Options, {"start_topic": "build.begin"}, "plugins.copr.options")


EXPECTED = {
    "copr_builds_started": {
        series(chroot=""): 2,  # fm:314, fm:448
        series(chroot="fedora-rawhide-x86_64"): 2,  # fms:43, fms:44
        series(chroot="fedora-25-x86_64"): 1,
    },
    "copr_builds_started_by_owner": {
        series(owner="logocomune"): 1,
        series(owner="fatka"): 1,
        series(owner="@python"): 2,
        series(owner="dvdmuckle"): 1,
    },
    "copr_builds_ended": {
        series(chroot="fedora-rawhide-i386", status="succeeded"): 2,  # fm:318, dg:15
        series(chroot="epel-6-i386", status="failed"): 1,
        series(chroot="fedora-21-x86_64", status="failed"): 1,
        series(chroot="fedora-23-i386", status="failed"): 1,
        series(chroot="fedora-29-x86_64", status="canceled"): 1,
    },
    "copr_builds_ended_by_owner": {
        series(owner="logocomune", status="succeeded"): 1,
        series(owner="andykimpe", status="failed"): 1,
        series(owner="brianjmurrell", status="failed"): 1,
        series(owner="@python", status="failed"): 1,
        series(owner="kbaig", status="canceled"): 1,
        series(owner="przemof", status="succeeded"): 1,
    },
}


def test_replay_totals_in_any_order(open_store: Any) -> None:
    raws = list(MSGS.values())
    first, totals = replay(open_store, Copr, raws, name="ordered.sqlite")
    assert totals == EXPECTED
    for seed in SEEDS:
        dump, _ = replay(open_store, Copr, raws, seed=seed, name=f"s{seed}.sqlite")
        assert dump == first


def test_sample_config_is_valid() -> None:
    (plugin,) = sample_plugins("copr", {"copr": Copr})
    assert emitted_by(plugin, MSGS["fm:318"]) == ended(
        "fedora-rawhide-i386", "succeeded", "logocomune"
    )
