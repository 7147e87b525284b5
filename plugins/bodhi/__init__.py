"""Bodhi: update events per release (submitted, edited, requested for testing or stable, pushed,
karma threshold, comments), comments per user and karma per release.

Bodhi's topics kept their names across buses with one exception, which is counted under one
event: ``update.karma.threshold`` (bodhi 2, fedmsg) and ``update.karma.threshold.reach``
(bodhi 3+). A new update is announced as ``update.request.testing`` (bodhi has no separate
"created" topic), so ``request_testing`` counts submissions to testing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Output, Plugin, under

from ..common import mapping, name_of, strip_prefix, text, whole

#: topic after ``<prefix>.bodhi.`` → event label
EVENTS = {
    "update.request.testing": "request_testing",
    "update.request.stable": "request_stable",
    "update.request.unpush": "request_unpush",
    "update.request.obsolete": "request_obsolete",
    "update.request.revoke": "request_revoke",
    "update.request.batched": "request_batched",
    "update.edit": "edit",
    "update.complete.testing": "pushed_testing",
    "update.complete.stable": "pushed_stable",
    "update.eject": "ejected",
    "update.comment": "comment",
    "update.karma.threshold": "karma_threshold",
    "update.karma.threshold.reach": "karma_threshold",
    "update.requirements_met.stable": "requirements_met_stable",
    "update.status.testing.koji-build-group.build.complete": "ready_for_testing",
    "errata.publish": "errata_published",
}


@dataclass(frozen=True)
class Options:
    #: topic prefixes (up to and including ``bodhi.``) whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.bodhi.",)


def event_of(rest: str) -> str | None:
    """The event label of a bodhi topic (after the prefix); an ``update.*`` topic not in
    :data:`EVENTS` counts under its own name (dots and dashes as underscores)."""
    if rest in EVENTS:
        return EVENTS[rest]
    if rest.startswith("update."):
        return rest[len("update.") :].replace(".", "_").replace("-", "_")
    return None


def release_of(update: Mapping[str, Any], body: Mapping[str, Any]) -> str:
    """The update's release name (``F40``, ``EPEL-9``...), or "" when the message has none
    (bodhi 1 comments did not say)."""
    return name_of(update.get("release")) or name_of(body.get("release")) or ""


class Bodhi(Plugin):
    ident = "bodhi"
    name = "Bodhi"
    summary = "Bodhi update events per release, comments per user, karma per release"
    description = (
        "From <prefix>.bodhi.update.* and bodhi.errata.publish. Comments per user counts every "
        "commenter, bodhi's own automatic comments included (user 'bodhi')."
    )
    metrics = (
        Counter("bodhi_updates", "Bodhi update events, per release", ("event", "release")),
        Counter("bodhi_comments_by_user", "Bodhi update comments per commenter", ("user",)),
        Counter(
            "bodhi_comment_karma",
            "Bodhi update comments per release and the karma they gave (-1, 0, 1)",
            ("release", "karma"),
        ),
    )
    Options = Options

    def reads(self) -> tuple[str, ...]:
        return under(self.options.prefixes, "update.*", "errata.publish")

    def process(self, message: Message, out: Output) -> None:
        rest = strip_prefix(message.topic, self.options.prefixes)
        event = event_of(rest) if rest is not None else None
        if event is None:
            return
        body = message.body
        if event == "comment":
            self._comment(body, out)
            return
        update = body.get("update")
        if not isinstance(update, Mapping):
            return
        out.inc("bodhi_updates", event=event, release=release_of(update, body))

    def _comment(self, body: Mapping[str, Any], out: Output) -> None:
        comment = body.get("comment")
        if not isinstance(comment, Mapping):
            return
        release = release_of(mapping(comment.get("update")), body)
        out.inc("bodhi_updates", event="comment", release=release)
        # bodhi 2+: ``user.name``; bodhi 1: ``author``
        user = name_of(comment.get("user")) or text(comment.get("author"))
        if user:
            out.inc("bodhi_comments_by_user", user=user)
        karma = whole(comment.get("karma"))
        if karma is not None:
            out.inc("bodhi_comment_karma", release=release, karma=str(karma))
