"""Release engineering "latest state": composes, bodhi's update pushes and mirror syncs, cloud
image uploads and koji image artifacts.

statscache_plugins' ``releng`` plugin kept one row per thing (a compose stage, a repo, an image)
holding its latest state. Here each thing is a set of gauges, which the framework keeps at the
value of the newest message (by message time, then id), whatever order messages arrive in:

- ``..._status``: the latest state as a number (:data:`STATUS_CODES`, or
  :data:`BODHI_COMPOSE_STEPS` for bodhi's composes); a dashboard maps the numbers to names;
- ``..._last_change_timestamp_seconds``: the time of the message that set that state;
- ``..._last_success_timestamp_seconds``: the time of the newest success;

plus counters of the events themselves (``..._events``), for rates and totals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Gauge, Output, Plugin, under

from ..common import mapping, strip_prefix, text, whole

#: the latest state of a compose, image upload or koji artifact, as a gauge value
STATUS_CODES = {
    "started": 0,
    "finished": 1,
    "failed": 2,
    "finished_incomplete": 3,
    "canceled": 4,
    "deleted": 5,
}
#: the latest step of one bodhi compose of one repo, as a gauge value, in the order bodhi goes
BODHI_COMPOSE_STEPS = {
    "composing": 0,
    "repo_done": 1,
    "sync_wait": 2,
    "synced": 3,
    "complete": 4,
    "failed": 5,
}

#: the date, type and respin that end a pungi compose id (``Fedora-Rawhide-20171204.n.0``)
_COMPOSE_DATE = re.compile(r"-\d{8}(\.[a-z]+)?\.\d+$")
#: the date stamp inside an image name (``Fedora-Cloud-Base-24-20160710.0.x86_64``)
_IMAGE_DATE = re.compile(r"-\d{8}(\.[a-z]+)?(\.\d+)?(?=\.|$)")


def _timestamps(
    out: Output,
    prefix: str,
    status: str,
    when: float,
    codes: Mapping[str, int],
    ok: str,
    **labels: str,
) -> None:
    """Set ``<prefix>_status``, ``_last_change_timestamp_seconds`` and, for the success
    state ``ok``, ``_last_success_timestamp_seconds``, all labelled ``labels``."""
    out.set(f"{prefix}_status", codes[status], **labels)
    out.set(f"{prefix}_last_change_timestamp_seconds", when, **labels)
    if status == ok:
        out.set(f"{prefix}_last_success_timestamp_seconds", when, **labels)


def _state_metrics(prefix: str, what: str, labels: tuple[str, ...], codes: str) -> tuple[Any, ...]:
    return (
        Gauge(f"{prefix}_status", f"Latest state of {what} ({codes})", labels),
        Gauge(
            f"{prefix}_last_change_timestamp_seconds",
            f"Time of the message that set the latest state of {what}",
            labels,
        ),
        Gauge(
            f"{prefix}_last_success_timestamp_seconds",
            f"Time of the newest success of {what}",
            labels,
        ),
    )


_CODES_HELP = ", ".join(f"{code} {name}" for name, code in STATUS_CODES.items())
_STEPS_HELP = ", ".join(f"{code} {name}" for name, code in BODHI_COMPOSE_STEPS.items())


# --- composes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComposeOptions:
    #: topic prefixes before ``compose.`` / ``pungi.`` whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.",)


#: pungi's compose statuses → our states
PUNGI_STATUSES = {
    "STARTED": "started",
    "FINISHED": "finished",
    "FINISHED_INCOMPLETE": "finished_incomplete",
    "DOOMED": "failed",
    "TERMINATED": "failed",
}
#: last word of a releng-script compose topic → state
SCRIPT_VERBS = {"start": "started", "complete": "finished", "done": "finished", "stop": "finished"}


def compose_name(compose_id: Any) -> str | None:
    """A pungi compose id without its date, type and respin: the compose's line
    (``Fedora-Rawhide-20171204.n.0`` → ``Fedora-Rawhide``)."""
    cid = text(compose_id)
    return _COMPOSE_DATE.sub("", cid) if cid else None


def compose_state(rest: str, body: Mapping[str, Any]) -> tuple[str, str, str, str] | None:
    """``(release, arch, stage, state)`` of a compose message (the topic after the prefix), or
    None if it is not one.

    - releng scripts (2012-): ``compose.<release>[.<stage>].<start|complete|done|stop>``, the
      whole compose being stage ``compose``, secondary arches in the body's ``arch``;
    - pungi 4 (2015-): ``pungi.compose.status.change`` (stage ``compose``) and
      ``pungi.compose.phase.start|stop`` (stage = the phase), named by the compose id.
    """
    parts = rest.split(".")
    if parts[0] == "compose" and len(parts) >= 3 and parts[-1] in SCRIPT_VERBS:
        stage = ".".join(parts[2:-1]) or "compose"
        arch = text(body.get("arch")) or "primary"
        return parts[1], arch, stage, SCRIPT_VERBS[parts[-1]]
    if rest.startswith("pungi.compose."):
        name = compose_name(body.get("compose_id"))
        if name is None:
            return None
        if rest == "pungi.compose.status.change":
            state = PUNGI_STATUSES.get(str(body.get("status")))
            return (name, "primary", "compose", state) if state else None
        phase = text(body.get("phase_name"))
        if phase and rest in ("pungi.compose.phase.start", "pungi.compose.phase.stop"):
            return name, "primary", phase, "started" if rest.endswith("start") else "finished"
    return None


class RelengComposes(Plugin):
    ident = "releng_composes"
    name = "Releng: composes"
    summary = "Latest state of each compose and compose stage, and compose events"
    description = (
        "From <prefix>.compose.<release>[.<stage>].<start|complete|done|stop> (releng scripts) "
        "and <prefix>.pungi.compose.status.change / phase.start / phase.stop (pungi)."
    )
    _labels = ("release", "arch", "stage")
    metrics = (
        Counter(
            "releng_compose_events",
            "Compose state messages, by new state",
            (*_labels, "status"),
        ),
        *_state_metrics("releng_compose", "a compose stage", _labels, _CODES_HELP),
    )
    Options = ComposeOptions

    def reads(self) -> tuple[str, ...]:
        return under(self.options.prefixes, "compose.*", "pungi.compose.*")

    def process(self, message: Message, out: Output) -> None:
        rest = strip_prefix(message.topic, self.options.prefixes)
        found = compose_state(rest, message.body) if rest else None
        if found is None:
            return
        release, arch, stage, state = found
        labels = {"release": release, "arch": arch, "stage": stage}
        out.inc("releng_compose_events", status=state, **labels)
        _timestamps(out, "releng_compose", state, message.epoch, STATUS_CODES, "finished", **labels)


# --- bodhi pushes and syncs --------------------------------------------------------------------


@dataclass(frozen=True)
class UpdatesOptions:
    #: topic prefixes (up to and including ``bodhi.``) whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.bodhi.",)


#: bodhi compose step topics, bodhi 2-3 (``mashtask.``) and 4+ (``compose.``) alike → step
BODHI_STEPS = {
    "mashtask.mashing": "composing",
    "compose.composing": "composing",
    "repo.done": "repo_done",
    "mashtask.sync.wait": "sync_wait",
    "compose.sync.wait": "sync_wait",
    "mashtask.sync.done": "synced",
    "compose.sync.done": "synced",
    "mashtask.complete": "complete",
    "compose.complete": "complete",
}


class RelengUpdates(Plugin):
    ident = "releng_updates"
    name = "Releng: update pushes and syncs"
    summary = "Bodhi's composes (pushes) per repo and mirror syncs per release and repo"
    description = (
        "Bodhi composes from <prefix>.bodhi.mashtask.* (bodhi 2-3) and bodhi.compose.* / "
        "bodhi.repo.done (bodhi 4+), per repo; syncs to the master mirror from "
        "bodhi.updates.<fedora|epel>.sync, per release and repo."
    )
    metrics = (
        Counter("releng_bodhi_compose_events", "Bodhi compose steps per repo", ("repo", "step")),
        *_state_metrics("releng_bodhi_compose", "a repo's bodhi compose", ("repo",), _STEPS_HELP),
        Counter(
            "releng_updates_syncs",
            "Updates repos synced to the master mirror",
            ("distro", "release", "repo"),
        ),
        Gauge(
            "releng_updates_last_sync_timestamp_seconds",
            "Time of the newest sync of an updates repo to the master mirror",
            ("distro", "release", "repo"),
        ),
    )
    Options = UpdatesOptions

    def reads(self) -> tuple[str, ...]:
        return under(self.options.prefixes, "updates.*.sync", *BODHI_STEPS)

    def process(self, message: Message, out: Output) -> None:
        rest = strip_prefix(message.topic, self.options.prefixes)
        if rest is None:
            return
        body = message.body
        parts = rest.split(".")
        if len(parts) == 3 and parts[0] == "updates" and parts[2] == "sync":
            release, repo = text(body.get("release")), text(body.get("repo"))
            if release and repo:
                labels = {"distro": parts[1], "release": release, "repo": repo}
                out.inc("releng_updates_syncs", **labels)
                out.set("releng_updates_last_sync_timestamp_seconds", message.epoch, **labels)
            return
        step = BODHI_STEPS.get(rest)
        repo = text(body.get("repo"))
        if step is None or repo is None:
            return
        if step == "complete" and body.get("success") is not True:
            step = "failed"
        out.inc("releng_bodhi_compose_events", repo=repo, step=step)
        _timestamps(
            out,
            "releng_bodhi_compose",
            step,
            message.epoch,
            BODHI_COMPOSE_STEPS,
            "complete",
            repo=repo,
        )


# --- cloud image uploads -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageOptions:
    #: topic prefixes (up to and including ``fedimg.``) whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.fedimg.",)


#: fedimg statuses → our states; publish and copy messages carry none and mean done
FEDIMG_STATUSES = {"started": "started", "completed": "finished", "failed": "failed"}


def image_line(image_name: str) -> str:
    """An image name without its date stamp, so that each night's image updates one series
    (``Fedora-Cloud-Base-24-20160710.0.x86_64`` → ``Fedora-Cloud-Base-24.x86_64``)."""
    return _IMAGE_DATE.sub("", image_name)


#: the fedimg topics (after the prefix) that count
IMAGE_EVENTS = ("image.upload", "image.test", "image.publish", "image.copy")


class RelengImages(Plugin):
    ident = "releng_image_uploads"
    name = "Releng: cloud image uploads"
    summary = "Cloud image uploads (fedimg): events, and the latest upload state per image"
    description = (
        "From <prefix>.fedimg.image.upload / test / publish / copy. Images are named without "
        "their date stamp, so each image line (release, variant, arch) keeps one state."
    )
    metrics = (
        Counter(
            "releng_image_events",
            "Cloud image events (upload, test, publish, copy) by destination and state",
            ("event", "destination", "status"),
        ),
        *_state_metrics(
            "releng_image_upload", "an image's upload", ("image", "destination"), _CODES_HELP
        ),
    )
    Options = ImageOptions

    def reads(self) -> tuple[str, ...]:
        return under(self.options.prefixes, *IMAGE_EVENTS)

    def process(self, message: Message, out: Output) -> None:
        event = strip_prefix(message.topic, self.options.prefixes)
        if event not in IMAGE_EVENTS:
            return
        body = message.body
        name, destination = text(body.get("image_name")), text(body.get("destination"))
        raw_status = body.get("status", "completed")
        state = FEDIMG_STATUSES.get(raw_status) if isinstance(raw_status, str) else None
        if name is None or destination is None or state is None:
            return
        kind = event.split(".")[1]
        out.inc("releng_image_events", event=kind, destination=destination, status=state)
        if kind == "upload":
            labels = {"image": image_line(name), "destination": destination}
            _timestamps(
                out, "releng_image_upload", state, message.epoch, STATUS_CODES, "finished", **labels
            )


# --- koji image artifacts ----------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactOptions:
    #: topic prefixes (up to and including ``buildsys.``) whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.buildsys.",)
    #: koji task methods that make image artifacts
    methods: tuple[str, ...] = (
        "appliance",
        "livecd",
        "livemedia",
        "image",
        "kiwiBuild",
        "osbuildImage",
    )
    #: only artifacts of these owners (statscache followed ``masher``); empty: every owner
    owners: tuple[str, ...] = ()


#: koji build states → our states
KOJI_BUILD_STATES = {0: "started", 1: "finished", 2: "deleted", 3: "failed", 4: "canceled"}
#: koji task states → our states
KOJI_TASK_STATES = {
    "FREE": "started",
    "OPEN": "started",
    "ASSIGNED": "started",
    "CLOSED": "finished",
    "FAILED": "failed",
    "CANCELED": "canceled",
}


def _request_name(request: Any) -> tuple[str, str] | None:
    """``(name, version)`` from an image task's request, which starts with them for every
    image method (``["Fedora-i3-Live", "Rawhide", ...]``)."""
    if isinstance(request, Sequence) and not isinstance(request, str) and len(request) >= 2:
        name, version = text(request[0]), text(request[1])
        if name and version:
            return name, version
    return None


def artifact_state(rest: str, body: Mapping[str, Any]) -> tuple[str, str, str, str, str] | None:
    """``(method, name, version, owner, state)`` of a koji message about an image artifact:
    a build whose task is an image task, or the image task itself."""
    if rest == "build.state.change":
        task = mapping(body.get("task"))
        method, name, version = (
            text(task.get("method")),
            text(body.get("name")),
            text(body.get("version")),
        )
        number = whole(body.get("new"))
        state = KOJI_BUILD_STATES.get(number) if number is not None else None
        owner = text(body.get("owner")) or ""
        if method and name and version and state:
            return method, name, version, owner, state
        return None
    if rest == "task.state.change":
        info = mapping(body.get("info"))
        method = text(body.get("method")) or text(info.get("method"))
        named = _request_name(info.get("request"))
        state = KOJI_TASK_STATES.get(str(body.get("new")))
        owner = text(body.get("owner")) or ""
        if method and named and state:
            return method, named[0], named[1], owner, state
    return None


class RelengKojiArtifacts(Plugin):
    ident = "releng_koji_artifacts"
    name = "Releng: koji image artifacts"
    summary = "Koji image builds (live media, appliances, images): latest state per artifact"
    description = (
        "From <prefix>.buildsys.build.state.change (builds whose task is an image method) and "
        "buildsys.task.state.change (image tasks), per method, name and version."
    )
    _labels = ("method", "name", "version")
    metrics = (
        Counter(
            "releng_koji_artifact_events", "Koji image artifact state changes", ("method", "status")
        ),
        *_state_metrics("releng_koji_artifact", "a koji image artifact", _labels, _CODES_HELP),
    )
    Options = ArtifactOptions

    def reads(self) -> tuple[str, ...]:
        return under(self.options.prefixes, "build.state.change", "task.state.change")

    def process(self, message: Message, out: Output) -> None:
        opts: ArtifactOptions = self.options
        rest = strip_prefix(message.topic, opts.prefixes)
        found = artifact_state(rest, message.body) if rest else None
        if found is None:
            return
        method, name, version, owner, state = found
        if method not in opts.methods or (opts.owners and owner not in opts.owners):
            return
        out.inc("releng_koji_artifact_events", method=method, status=state)
        labels = {"method": method, "name": name, "version": version}
        _timestamps(
            out, "releng_koji_artifact", state, message.epoch, STATUS_CODES, "finished", **labels
        )
