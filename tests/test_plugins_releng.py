"""The releng plugins on real compose (releng scripts and pungi), bodhi compose and sync,
fedimg and koji messages (tests/data/plugins/releng.jsonl names the corpus line of each, and
the few timestamps moved where test envelopes share one second; one hand-written livemedia
task, which the corpus lacks): the exact emissions of each, written from reading the message,
then the end state of a replay in file order and shuffled, gauges included: each "latest
state" is the newest message's whatever the order they arrive in."""

from __future__ import annotations

from typing import Any

import pytest
from plugin_cases import SEEDS, messages, replay, sample_plugins, series
from plugin_cases import emitted as emitted_by
from statscache_plugins.releng import (
    ArtifactOptions,
    ImageOptions,
    RelengComposes,
    RelengImages,
    RelengKojiArtifacts,
    RelengUpdates,
    compose_name,
    image_line,
)

from statscache_exporter.config import build
from statscache_exporter.plugin import Plugin

MSGS = messages("releng")
STAGING_IMAGES = {"prefixes": ["org.fedoraproject.stg.fedimg."]}
#: fedmsg_meta's default test timestamp, shared by many envelopes
T_TEST = 1344447839.891876
#: the sent-at make_corpus.py gives fedora_messaging.jsonl line n: 2024-03-01T12:00:00Z + 7(n-1)
T_FMS = 1709294400.0


def fms_time(line: int) -> float:
    return T_FMS + 7 * (line - 1)


def emitted(cls: type[Plugin], ref: str, options: Any = None) -> list[Any]:
    return emitted_by(cls(options), MSGS[ref])


# --- composes -----------------------------------------------------------------------------------


def compose(release: str, stage: str, status: str, when: float, arch: str = "primary") -> list[Any]:
    labels = {"release": release, "arch": arch, "stage": stage}
    code = {"started": 0, "finished": 1, "failed": 2}[status]
    out = [
        ("releng_compose_events", {**labels, "status": status}, 1),
        ("releng_compose_status", labels, code),
        ("releng_compose_last_change_timestamp_seconds", labels, when),
    ]
    if status == "finished":
        out.append(("releng_compose_last_success_timestamp_seconds", labels, when))
    return out


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # releng scripts: compose.<release>[.<stage>].<verb>, arch "" = primary
        ("fm:211", compose("rawhide", "rsync", "started", 1512395453.0)),
        ("fm:212", compose("rawhide", "rsync", "finished", 1512313750.0)),
        ("fm:213", compose("rawhide", "compose", "finished", 1512398352.0)),
        ("fm:247", compose("rawhide", "compose", "started", T_TEST)),
        ("fm:225", compose("rawhide", "compose", "finished", T_TEST, arch="arm")),
        ("fm:229", compose("rawhide", "rsync", "started", T_TEST, arch="arm")),
        ("fm:254", compose("28", "compose", "started", T_TEST)),
        ("fm:255", compose("28", "rsync", "started", 1512395453.0)),
        ("fm:256", compose("28", "rsync", "finished", 1512313750.0)),
        ("fm:257", compose("28", "compose", "finished", 1512398352.0)),
        ("fm:263", compose("23", "mash-atomic", "finished", 1454303707.0)),  # ".stop"
        # pungi: the compose id without date, type and respin; phases as stages
        ("fm:269", compose("Fedora-24", "compose", "started", 1449600728.0)),
        ("fm:270", compose("Fedora-24", "compose", "finished", 1449604328.0)),
        ("fm:271", compose("Fedora-24", "compose", "failed", 1449602528.0)),  # TERMINATED
        ("fm:272", compose("Fedora-24", "createrepo", "started", 1449605930.0)),
        ("fm:276", []),  # pungi.compose.fail.to.start names no compose
        ("fm:97", []),  # bodhi's compose is not a release compose
    ],
)
def test_compose_emissions(ref: str, expected: list[Any]) -> None:
    assert emitted(RelengComposes, ref) == expected


def test_names() -> None:
    assert compose_name("Fedora-Rawhide-20171204.n.0") == "Fedora-Rawhide"
    assert compose_name("Fedora-Atomic-28-20180515.1") == "Fedora-Atomic-28"
    assert image_line("Fedora-Cloud-Base-24-20160710.0.x86_64") == "Fedora-Cloud-Base-24.x86_64"
    assert image_line("fedora-cloud-base-rawhide-20140604.x86_64") == (
        "fedora-cloud-base-rawhide.x86_64"
    )


RAWHIDE_RSYNC = series(release="rawhide", arch="primary", stage="rsync")
RAWHIDE = series(release="rawhide", arch="primary", stage="compose")
RAWHIDE_ARM = series(release="rawhide", arch="arm", stage="compose")
RAWHIDE_ARM_RSYNC = series(release="rawhide", arch="arm", stage="rsync")
F28 = series(release="28", arch="primary", stage="compose")
F28_RSYNC = series(release="28", arch="primary", stage="rsync")
F23_MASH = series(release="23", arch="primary", stage="mash-atomic")
F24 = series(release="Fedora-24", arch="primary", stage="compose")
F24_CREATEREPO = series(release="Fedora-24", arch="primary", stage="createrepo")

COMPOSES = {
    # the newest message wins: fm:211's start (1512395453) over fm:212's older completion
    "releng_compose_status": {
        RAWHIDE_RSYNC: 0,
        RAWHIDE: 1,  # fm:213 (2017) over fm:247's start (2012)
        RAWHIDE_ARM: 1,
        RAWHIDE_ARM_RSYNC: 0,
        F28: 1,
        F28_RSYNC: 0,
        F23_MASH: 1,
        F24: 1,  # FINISHED (+1 h) over TERMINATED (+30 min) over STARTED
        F24_CREATEREPO: 0,
    },
    "releng_compose_last_change_timestamp_seconds": {
        RAWHIDE_RSYNC: 1512395453.0,
        RAWHIDE: 1512398352.0,
        RAWHIDE_ARM: T_TEST,
        RAWHIDE_ARM_RSYNC: T_TEST,
        F28: 1512398352.0,
        F28_RSYNC: 1512395453.0,
        F23_MASH: 1454303707.0,
        F24: 1449604328.0,
        F24_CREATEREPO: 1449605930.0,
    },
    "releng_compose_last_success_timestamp_seconds": {
        RAWHIDE_RSYNC: 1512313750.0,
        RAWHIDE: 1512398352.0,
        RAWHIDE_ARM: T_TEST,
        F28: 1512398352.0,
        F28_RSYNC: 1512313750.0,
        F23_MASH: 1454303707.0,
        F24: 1449604328.0,
    },
    "releng_compose_events": {
        series(**dict(RAWHIDE_RSYNC), status="started"): 1,
        series(**dict(RAWHIDE_RSYNC), status="finished"): 1,
        series(**dict(RAWHIDE), status="started"): 1,
        series(**dict(RAWHIDE), status="finished"): 1,
        series(**dict(RAWHIDE_ARM), status="finished"): 1,
        series(**dict(RAWHIDE_ARM_RSYNC), status="started"): 1,
        series(**dict(F28), status="started"): 1,
        series(**dict(F28), status="finished"): 1,
        series(**dict(F28_RSYNC), status="started"): 1,
        series(**dict(F28_RSYNC), status="finished"): 1,
        series(**dict(F23_MASH), status="finished"): 1,
        series(**dict(F24), status="started"): 1,
        series(**dict(F24), status="finished"): 1,
        series(**dict(F24), status="failed"): 1,
        series(**dict(F24_CREATEREPO), status="started"): 1,
    },
}


# --- bodhi composes and syncs -------------------------------------------------------------------


def bodhi_step(repo: str, step: str, when: float) -> list[Any]:
    codes = {"composing": 0, "repo_done": 1, "sync_wait": 2, "synced": 3, "complete": 4}
    out = [
        ("releng_bodhi_compose_events", {"repo": repo, "step": step}, 1),
        ("releng_bodhi_compose_status", {"repo": repo}, codes.get(step, 5)),
        ("releng_bodhi_compose_last_change_timestamp_seconds", {"repo": repo}, when),
    ]
    if step == "complete":
        out.append(("releng_bodhi_compose_last_success_timestamp_seconds", {"repo": repo}, when))
    return out


def sync(distro: str, release: str, repo: str, when: float) -> list[Any]:
    labels = {"distro": distro, "release": release, "repo": repo}
    return [
        ("releng_updates_syncs", labels, 1),
        ("releng_updates_last_sync_timestamp_seconds", labels, when),
    ]


F29T = "f29-updates-testing"
EPEL6T = "dist-6E-epel-testing"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # bodhi 2-3: mashtask.*
        ("fm:89", bodhi_step("f29-modular-updates-testing", "composing", 1559011832.0)),
        ("fm:90", bodhi_step(F29T, "sync_wait", 1559015188.0)),
        ("fm:91", bodhi_step(F29T, "synced", 1559015388.0)),
        ("fm:92", bodhi_step(F29T, "complete", 1559015442.0)),
        # bodhi 4+: compose.*, repo.done
        ("fm:93", []),  # compose.start names no repo
        ("fm:94", bodhi_step(EPEL6T, "composing", 1559871419.0)),
        ("fm:95", bodhi_step(EPEL6T, "sync_wait", 1559871586.0)),
        ("fm:96", bodhi_step(EPEL6T, "synced", 1559871787.0)),
        ("fm:97", bodhi_step(F29T, "complete", 1559791936.0)),
        ("fm:98", bodhi_step(F29T, "repo_done", 1559883894.0)),
        ("fms:5", bodhi_step("test_repo", "failed", fms_time(5))),  # success: false
        ("fms:6", bodhi_step("test_repo", "complete", fms_time(6))),
        ("fms:7", bodhi_step("test_repo", "repo_done", fms_time(7))),
        # updates.<distro>.sync, per release and repo
        ("fm:119", sync("fedora", "29", "updates-testing", 1561603095.0)),
        ("fm:120", sync("fedora", "30m", "updates", 1561595377.0)),
        ("fm:121", sync("epel", "7", "epel-testing", 1561597841.0)),
        ("fm:509", sync("fedora", "20", "updates", T_TEST)),
        ("fm:510", sync("epel", "6", "epel-testing", T_TEST)),
    ],
)
def test_update_emissions(ref: str, expected: list[Any]) -> None:
    assert emitted(RelengUpdates, ref) == expected


UPDATES = {
    "releng_bodhi_compose_status": {
        series(repo="f29-modular-updates-testing"): 0,
        series(repo=F29T): 1,  # fm:98's repo.done (2019-06-07) is its newest
        series(repo=EPEL6T): 3,
        series(repo="test_repo"): 1,
    },
    "releng_bodhi_compose_last_change_timestamp_seconds": {
        series(repo="f29-modular-updates-testing"): 1559011832.0,
        series(repo=F29T): 1559883894.0,
        series(repo=EPEL6T): 1559871787.0,
        series(repo="test_repo"): fms_time(7),
    },
    "releng_bodhi_compose_last_success_timestamp_seconds": {
        series(repo=F29T): 1559791936.0,  # fm:97 (bodhi 4) over fm:92 (bodhi 3)
        series(repo="test_repo"): fms_time(6),
    },
    "releng_bodhi_compose_events": {
        series(repo="f29-modular-updates-testing", step="composing"): 1,
        series(repo=F29T, step="sync_wait"): 1,
        series(repo=F29T, step="synced"): 1,
        series(repo=F29T, step="complete"): 2,
        series(repo=F29T, step="repo_done"): 1,
        series(repo=EPEL6T, step="composing"): 1,
        series(repo=EPEL6T, step="sync_wait"): 1,
        series(repo=EPEL6T, step="synced"): 1,
        series(repo="test_repo", step="failed"): 1,
        series(repo="test_repo", step="complete"): 1,
        series(repo="test_repo", step="repo_done"): 1,
    },
    "releng_updates_syncs": {
        series(distro="fedora", release="29", repo="updates-testing"): 1,
        series(distro="fedora", release="30m", repo="updates"): 1,
        series(distro="epel", release="7", repo="epel-testing"): 1,
        series(distro="fedora", release="20", repo="updates"): 1,
        series(distro="epel", release="6", repo="epel-testing"): 1,
    },
    "releng_updates_last_sync_timestamp_seconds": {
        series(distro="fedora", release="29", repo="updates-testing"): 1561603095.0,
        series(distro="fedora", release="30m", repo="updates"): 1561595377.0,
        series(distro="epel", release="7", repo="epel-testing"): 1561597841.0,
        series(distro="fedora", release="20", repo="updates"): T_TEST,
        series(distro="epel", release="6", repo="epel-testing"): T_TEST,
    },
}


# --- cloud image uploads ------------------------------------------------------------------------

T_IMG = 1371498303.125771  # every fedimg test envelope's; the completions were moved +60 s
CLOUD24 = "Fedora-Cloud-Base-24.x86_64"
RAWHIDE_IMG = "fedora-cloud-base-rawhide.x86_64"


def image(event: str, destination: str, status: str) -> list[Any]:
    return [
        ("releng_image_events", {"event": event, "destination": destination, "status": status}, 1)
    ]


def upload(image_line: str, destination: str, status: str, when: float) -> list[Any]:
    labels = {"image": image_line, "destination": destination}
    out = [
        *image("upload", destination, status),
        ("releng_image_upload_status", labels, {"started": 0, "finished": 1}[status]),
        ("releng_image_upload_last_change_timestamp_seconds", labels, when),
    ]
    if status == "finished":
        out.append(("releng_image_upload_last_success_timestamp_seconds", labels, when))
    return out


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("fm:479", upload(CLOUD24, "eu-west-1", "started", T_IMG)),
        ("fm:480", upload(CLOUD24, "eu-west-1", "finished", T_IMG + 60)),  # "completed"
        ("fm:483", upload(CLOUD24, "EC2-eu-west-1", "started", T_IMG)),
        ("fm:484", upload(CLOUD24, "EC2-eu-west-1", "finished", T_IMG + 60)),
        ("fm:486", upload(RAWHIDE_IMG, "EC2-eu-west-1", "started", T_IMG)),
        ("fm:487", upload(RAWHIDE_IMG, "EC2-eu-west-1", "finished", T_IMG + 60)),
        ("fm:485", image("test", "EC2-eu-west-1", "started")),
        ("fm:481", image("publish", "eu-west-2", "finished")),  # no status: done
        ("fm:482", image("copy", "us-west-2", "finished")),
    ],
)
def test_image_emissions(ref: str, expected: list[Any]) -> None:
    opts = build(ImageOptions, STAGING_IMAGES, "plugins.releng_image_uploads.options")
    assert emitted(RelengImages, ref, opts) == expected
    assert emitted(RelengImages, ref) == []  # the corpus's fedimg messages are from staging


def image_state(*lines: tuple[str, str]) -> dict[str, Any]:
    keys = [series(image=i, destination=d) for i, d in lines]
    return {
        "releng_image_upload_status": dict.fromkeys(keys, 1),
        "releng_image_upload_last_change_timestamp_seconds": dict.fromkeys(keys, T_IMG + 60),
        "releng_image_upload_last_success_timestamp_seconds": dict.fromkeys(keys, T_IMG + 60),
    }


IMAGES = {
    **image_state(
        (CLOUD24, "eu-west-1"), (CLOUD24, "EC2-eu-west-1"), (RAWHIDE_IMG, "EC2-eu-west-1")
    ),
    "releng_image_events": {
        series(event="upload", destination="eu-west-1", status="started"): 1,
        series(event="upload", destination="eu-west-1", status="finished"): 1,
        series(event="upload", destination="EC2-eu-west-1", status="started"): 2,
        series(event="upload", destination="EC2-eu-west-1", status="finished"): 2,
        series(event="test", destination="EC2-eu-west-1", status="started"): 1,
        series(event="publish", destination="eu-west-2", status="finished"): 1,
        series(event="copy", destination="us-west-2", status="finished"): 1,
    },
}


# --- koji image artifacts -----------------------------------------------------------------------

LIVE = {"method": "livemedia", "name": "Fedora-i3-Live", "version": "Rawhide"}
T_TASK = 1709298000.0  # hw:livemedia-task, 2024-03-01T13:00:00Z


def test_artifact_emissions() -> None:
    # a livemedia build going from complete to deleted (the schema package's test body)
    assert emitted(RelengKojiArtifacts, "fms:34") == [
        ("releng_koji_artifact_events", {"method": "livemedia", "status": "deleted"}, 1),
        ("releng_koji_artifact_status", LIVE, 5),
        ("releng_koji_artifact_last_change_timestamp_seconds", LIVE, fms_time(34)),
    ]
    # the livemedia task closing (hand-written: the corpus has no image task message)
    assert emitted(RelengKojiArtifacts, "hw:livemedia-task") == [
        ("releng_koji_artifact_events", {"method": "livemedia", "status": "finished"}, 1),
        ("releng_koji_artifact_status", LIVE, 1),
        ("releng_koji_artifact_last_change_timestamp_seconds", LIVE, T_TASK),
        ("releng_koji_artifact_last_success_timestamp_seconds", LIVE, T_TASK),
    ]
    assert emitted(RelengKojiArtifacts, "fms:30") == []  # an rpm build's task: method build
    masher = build(ArtifactOptions, {"owners": ["masher"]}, "plugins.releng_koji_artifacts.options")
    assert emitted(RelengKojiArtifacts, "fms:34", masher) == []  # owner releng


ARTIFACTS = {
    "releng_koji_artifact_events": {
        series(method="livemedia", status="deleted"): 1,
        series(method="livemedia", status="finished"): 1,
    },
    "releng_koji_artifact_status": {series(**LIVE): 1},  # the task (13:00) after the build
    "releng_koji_artifact_last_change_timestamp_seconds": {series(**LIVE): T_TASK},
    "releng_koji_artifact_last_success_timestamp_seconds": {series(**LIVE): T_TASK},
}


# --- every plugin over every releng message, in any order ---------------------------------------


@pytest.mark.parametrize(
    ("cls", "options", "expected"),
    [
        (RelengComposes, None, COMPOSES),
        (RelengUpdates, None, UPDATES),
        (RelengImages, STAGING_IMAGES, IMAGES),
        (RelengKojiArtifacts, None, ARTIFACTS),
    ],
    ids=["composes", "updates", "images", "artifacts"],
)
def test_latest_state_in_any_order(
    open_store: Any, cls: type[Plugin], options: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    raws = list(MSGS.values())
    first, totals = replay(open_store, cls, raws, options, name="ordered.sqlite")
    assert totals == expected
    for seed in SEEDS:
        dump, _ = replay(open_store, cls, raws, options, seed=seed, name=f"s{seed}.sqlite")
        assert dump == first


def test_sample_config_is_valid() -> None:
    classes = {
        "releng_composes": RelengComposes,
        "releng_updates": RelengUpdates,
        "releng_image_uploads": RelengImages,
        "releng_koji_artifacts": RelengKojiArtifacts,
    }
    plugins = {type(p).ident: p for p in sample_plugins("releng", classes)}
    assert set(plugins) == set(classes)
    assert emitted_by(plugins["releng_image_uploads"], MSGS["fm:479"]) == upload(
        CLOUD24, "eu-west-1", "started", T_IMG
    )
