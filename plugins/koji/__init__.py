"""Koji: builds by state, per owner and per koji instance; tasks by method and state; tags and
untags per tag; and the counters from which the number of builds open is a query.

Koji publishes the same topics and bodies through both buses
(``<prefix>.buildsys.build.state.change`` and friends), so one rule reads both eras. Which koji
a message comes from is its topic prefix (``Options.instances``); the fedmsg-era secondary-arch
hubs (arm, ppc, s390) shared the primary prefix and named themselves in the body's
``instance``.

Builds currently open are not kept as a running count: a pure plugin sees messages in any order
(a replay shuffled, a backfill alongside live ones), and a count kept in the plugin would depend
on that order and be lost on restart. Instead ``koji_builds_started`` and
``koji_builds_finished`` are counters, exact whatever the order, and the open count is
``clamp_min(started - finished, 0)`` at query time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Output, Plugin, under

from ..common import mapping, match_prefix, text, whole

#: koji.BUILD_STATES
BUILD_STATES = {0: "building", 1: "complete", 2: "deleted", 3: "failed", 4: "canceled"}
BUILDING = 0
#: koji.TASK_STATES, for the (rare) bodies that carry the number instead of the name
TASK_STATES = {0: "free", 1: "open", 2: "closed", 3: "canceled", 4: "assigned", 5: "failed"}


def _default_instances() -> dict[str, str]:
    return {"org.fedoraproject.prod.buildsys.": "primary"}


@dataclass(frozen=True)
class Options:
    #: topic prefix (up to and including ``buildsys.``) → koji instance name (the ``koji``
    #: label); messages under no listed prefix are not counted. Staging would be
    #: ``org.fedoraproject.stg.buildsys.: staging``.
    instances: dict[str, str] = field(default_factory=_default_instances)
    #: a body's ``instance`` other than ``primary`` (the fedmsg-era secondary-arch hubs arm,
    #: ppc, s390, which published under the primary prefix) names the instance instead
    secondary_from_body: bool = True
    #: a tag containing one of these is counted up to it plus ``*``
    #: (``f40-build-side-81234`` → ``f40-build-side-*``): side tags are made by the thousand
    fold_tags: tuple[str, ...] = ("-build-side-",)


def build_state(value: Any) -> str | None:
    """A build state's name from its number (koji sends numbers), or None."""
    number = whole(value)
    if number is None:
        return None
    return BUILD_STATES.get(number, str(number))


def task_state(value: Any) -> str | None:
    """A task state's name, lower case (koji sends names such as ``OPEN``), or None."""
    name = text(value)
    if name is not None:
        return name.lower()
    number = whole(value)
    return None if number is None else TASK_STATES.get(number, str(number))


def fold_tag(tag: str, markers: tuple[str, ...]) -> str:
    """``tag`` with everything after the first marker it contains replaced by ``*``."""
    for marker in markers:
        at = tag.find(marker)
        if at >= 0:
            return tag[: at + len(marker)] + "*"
    return tag


class Koji(Plugin):
    ident = "koji"
    name = "Koji"
    summary = "Koji builds by state and owner, tasks by method and state, tags and untags"
    description = (
        "From <prefix>.buildsys.build.state.change, task.state.change, tag and untag, per koji "
        "instance. Builds open = clamp_min(koji_builds_started - koji_builds_finished, 0)."
    )
    metrics = (
        Counter("koji_builds", "Koji build state changes, by new state", ("koji", "state")),
        Counter(
            "koji_builds_by_owner",
            "Koji build state changes, by new state and build owner",
            ("koji", "state", "owner"),
        ),
        Counter("koji_builds_started", "Koji builds that entered the building state", ("koji",)),
        Counter(
            "koji_builds_finished",
            "Koji builds that left the building state (to complete, failed, canceled...)",
            ("koji",),
        ),
        Counter(
            "koji_tasks",
            "Koji task state changes, by method and new state",
            ("koji", "method", "state"),
        ),
        Counter(
            "koji_tag_changes", "Builds tagged or untagged, per tag", ("koji", "tag", "action")
        ),
    )
    Options = Options

    def reads(self) -> tuple[str, ...]:
        opts: Options = self.options
        return under(opts.instances, "build.state.change", "task.state.change", "tag", "untag")

    def process(self, message: Message, out: Output) -> None:
        opts: Options = self.options
        found = match_prefix(message.topic, opts.instances)
        if found is None:
            return
        koji, event = found
        body = message.body
        body_instance = text(body.get("instance"))
        if opts.secondary_from_body and body_instance and body_instance != "primary":
            koji = body_instance
        if event == "build.state.change":
            self._build(koji, body, out)
        elif event == "task.state.change":
            self._task(koji, body, out)
        elif event in ("tag", "untag"):
            tag = text(body.get("tag"))
            if tag:
                out.inc(
                    "koji_tag_changes", koji=koji, tag=fold_tag(tag, opts.fold_tags), action=event
                )

    def _build(self, koji: str, body: Mapping[str, Any], out: Output) -> None:
        state = build_state(body.get("new"))
        if state is None:
            return
        owner = text(body.get("owner")) or ""
        out.inc("koji_builds", koji=koji, state=state)
        out.inc("koji_builds_by_owner", koji=koji, state=state, owner=owner)
        # Both counters move (by 0 or 1) on every build message, so that both series exist for
        # every koji and ``started - finished`` always finds its pair in PromQL.
        new, old = whole(body.get("new")), whole(body.get("old"))
        started = new == BUILDING
        out.inc("koji_builds_started", int(started), koji=koji)
        out.inc("koji_builds_finished", int(not started and old == BUILDING), koji=koji)

    def _task(self, koji: str, body: Mapping[str, Any], out: Output) -> None:
        state = task_state(body.get("new"))
        method = text(body.get("method")) or text(mapping(body.get("info")).get("method"))
        if state is None or method is None:
            return
        out.inc("koji_tasks", koji=koji, method=method, state=state)
