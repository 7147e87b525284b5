"""The bodhi plugin on real bodhi messages of bodhi 1 to 5, fedmsg and fedora-messaging
(tests/data/plugins/bodhi.jsonl names the corpus line of each): the exact emissions of each,
written from reading the message, then the totals of a replay in file order and shuffled."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_cases import SEEDS, messages, replay, sample_plugins, series
from plugin_cases import emitted as emitted_by
from statscache_plugins.bodhi import Bodhi, Options

from statscache_exporter.config import build

MSGS = messages("bodhi")


def emitted(ref: str, options: Options | None = None) -> list[Any]:
    return emitted_by(Bodhi(options), MSGS[ref])


def update(event: str, release: str) -> list[Any]:
    return [("bodhi_updates", {"event": event, "release": release}, 1)]


def comment(release: str, user: str, karma: str) -> list[Any]:
    return [
        *update("comment", release),
        ("bodhi_comments_by_user", {"user": user}, 1),
        ("bodhi_comment_karma", {"release": release, "karma": karma}, 1),
    ]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # the release is update.release.name, else the body's release.name (eject)
        ("fm:78", update("request_testing", "F18")),  # a submission to testing
        ("fm:310", update("request_testing", "F19")),
        ("fm:311", update("request_testing", "F20")),
        ("fms:17", update("request_testing", "F18")),
        ("fm:77", update("pushed_testing", "EL-6")),  # update.complete.testing
        ("fm:80", update("pushed_testing", "")),  # an update that names no release
        ("fm:81", update("pushed_testing", "F29")),
        ("fm:79", update("ejected", "EL6")),
        ("fms:11", update("ejected", "F30")),
        ("fms:12", update("pushed_stable", "F29")),
        ("fms:18", update("request_unpush", "F28")),
        ("fms:20", update("request_stable", "F29")),
        ("fms:23", update("requirements_met_stable", "F29")),
        ("fms:25", update("edit", "F19")),
        ("fms:27", update("karma_threshold", "F19")),  # karma.threshold.reach (bodhi 3+)
        ("fms:15", update("ready_for_testing", "F29")),
        ("fms:10", update("errata_published", "F19")),
        # comments: bodhi 4 (user.name), bodhi 1 (author, no release), bodhi 5
        ("fm:105", comment("F30", "kalev", "0")),
        ("fm:301", comment("", "hreindl", "1")),
        ("fm:303", comment("", "volter", "0")),
        ("fms:24", comment("F29", "ralph", "-1")),
        # not counted: staging and dev, an update event without an update (ready_for_testing
        # v1 names only its artifact), overrides, composes, syncs
        ("fm:104", []),
        ("fm:112", []),
        ("fm:113", []),
        ("fms:14", []),
        ("fms:1", []),
        ("fms:3", []),
        ("fm:119", []),
    ],
)
def test_emissions(ref: str, expected: list[Any]) -> None:
    assert emitted(ref) == expected


def test_fedmsg_karma_threshold_counts_as_the_same_event() -> None:
    """bodhi 2's update.karma.threshold (only a dev message in the corpus) and bodhi 3's
    update.karma.threshold.reach are one event."""
    opts = build(
        Options,
        {"prefixes": ["org.fedoraproject.prod.bodhi.", "org.fedoraproject.dev.bodhi."]},
        "plugins.bodhi.options",
    )
    assert emitted("fm:113", opts) == update("karma_threshold", "F19")
    assert emitted("fms:27", opts) == update("karma_threshold", "F19")
    assert emitted("fm:112", opts) == update("edit", "F19")


def test_a_body_without_an_update_is_not_counted() -> None:
    """What test_influx_sink and test_influx_recipes send: a comment topic with an empty body."""
    raw = {"topic": "org.fedoraproject.prod.bodhi.update.comment", "msg": {}, "timestamp": 1}
    assert emitted_by(Bodhi(), raw) == []


EXPECTED = {
    "bodhi_updates": {
        series(event="request_testing", release="F18"): 2,  # fm:78, fms:17
        series(event="request_testing", release="F19"): 1,
        series(event="request_testing", release="F20"): 1,
        series(event="pushed_testing", release="EL-6"): 1,
        series(event="pushed_testing", release=""): 1,
        series(event="pushed_testing", release="F29"): 1,
        series(event="ejected", release="EL6"): 1,
        series(event="ejected", release="F30"): 1,
        series(event="pushed_stable", release="F29"): 1,
        series(event="request_unpush", release="F28"): 1,
        series(event="request_stable", release="F29"): 1,
        series(event="requirements_met_stable", release="F29"): 1,
        series(event="edit", release="F19"): 1,
        series(event="karma_threshold", release="F19"): 1,
        series(event="ready_for_testing", release="F29"): 1,
        series(event="errata_published", release="F19"): 1,
        series(event="comment", release="F30"): 1,
        series(event="comment", release=""): 2,  # fm:301, fm:303
        series(event="comment", release="F29"): 1,
    },
    "bodhi_comments_by_user": {
        series(user="kalev"): 1,
        series(user="hreindl"): 1,
        series(user="volter"): 1,
        series(user="ralph"): 1,
    },
    "bodhi_comment_karma": {
        series(release="F30", karma="0"): 1,
        series(release="", karma="1"): 1,
        series(release="", karma="0"): 1,
        series(release="F29", karma="-1"): 1,
    },
}


def test_replay_totals_in_any_order(open_store: Any) -> None:
    raws = list(MSGS.values())
    first, totals = replay(open_store, Bodhi, raws, name="ordered.sqlite")
    assert totals == EXPECTED
    for seed in SEEDS:
        dump, _ = replay(open_store, Bodhi, raws, seed=seed, name=f"s{seed}.sqlite")
        assert dump == first


def test_sample_config_is_valid() -> None:
    (plugin,) = sample_plugins("bodhi", {"bodhi": Bodhi})
    assert emitted_by(plugin, MSGS["fm:104"]) == [
        ("bodhi_updates", {"event": "comment", "release": ""}, 1),
        ("bodhi_comments_by_user", {"user": "ralph"}, 1),
        ("bodhi_comment_karma", {"release": "", "karma": "-1"}, 1),
    ]
