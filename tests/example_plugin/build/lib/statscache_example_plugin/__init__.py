"""An example third-party plugin: bodhi update comments per commenter, and the newest karma
each update was given. It shows a counter, a gauge and the plugin's own options."""

from __future__ import annotations

from dataclasses import dataclass

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Gauge, Output, Plugin


@dataclass(frozen=True)
class Options:
    #: topics ending with this are bodhi comments
    topic_suffix: str = ".bodhi.update.comment"
    #: also count comments written by bodhi itself
    count_bodhi: bool = False


class BodhiComments(Plugin):
    ident = "bodhi_comments"
    name = "Bodhi comments"
    summary = "Bodhi update comments per user, and each update's latest karma"
    metrics = (
        Counter("example_bodhi_comments", "Bodhi update comments", ("user",)),
        Gauge("example_bodhi_karma", "Karma of the newest comment on an update", ("update",)),
    )
    Options = Options

    def process(self, message: Message, out: Output) -> None:
        if not message.topic.endswith(self.options.topic_suffix):
            return
        comment = message.body.get("comment")
        if not isinstance(comment, dict):
            return
        # bodhi 2+ sends user.name and update.alias; fedmsg-era bodhi sent author, update_title
        user = (comment.get("user") or {}).get("name") or comment.get("author")
        if not isinstance(user, str) or (user == "bodhi" and not self.options.count_bodhi):
            return
        out.inc("example_bodhi_comments", user=user)
        update = (
            (comment.get("update") or {}).get("alias")
            or comment.get("update_alias")
            or comment.get("update_title")
        )
        if isinstance(update, str) and isinstance(comment.get("karma"), int):
            out.set("example_bodhi_karma", comment["karma"], update=update)
