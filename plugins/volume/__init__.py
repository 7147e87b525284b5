"""Message volume: in all, and by category, topic, user, package and agent.

These are statscache's own volume plugins, by the same idents. Each counts one message once
per label value it carries: a message naming two users counts once for each of them.
"""

from __future__ import annotations

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Output, Plugin


class Volume(Plugin):
    ident = "volume"
    name = "Volume"
    summary = "Messages on the bus"
    description = "Every message the exporter processed, once."
    metrics = (Counter("messages", "Messages processed"),)
    topic_only = True

    def process(self, message: Message, out: Output) -> None:
        out.inc("messages")


class VolumeByCategory(Plugin):
    ident = "volume_by_category"
    name = "Volume by category"
    summary = "Messages per category (bodhi, buildsys, copr, ...)"
    description = (
        "The category is topic.split('.')[3] for topics with a <prefix>.<env>. prefix "
        "(org.fedoraproject.prod.bodhi.update.comment → bodhi), else the topic's first part."
    )
    metrics = (Counter("messages_by_category", "Messages per category", ("category",)),)
    topic_only = True  # the category is the topic's

    def process(self, message: Message, out: Output) -> None:
        if message.category:
            out.inc("messages_by_category", category=message.category)


class VolumeByTopic(Plugin):
    ident = "volume_by_topic"
    name = "Volume by topic"
    summary = "Messages per full topic"
    metrics = (Counter("messages_by_topic", "Messages per topic", ("topic",)),)
    topic_only = True

    def process(self, message: Message, out: Output) -> None:
        out.inc("messages_by_topic", topic=message.topic)


class VolumeByUser(Plugin):
    ident = "volume_by_user"
    name = "Volume by user"
    summary = "Messages per FAS username the message concerns"
    description = (
        "Usernames come from the message itself (fedora-messaging header flags, datagrepper's "
        "users) or its fedora-messaging schema class. A message naming no user is not counted."
    )
    metrics = (Counter("messages_by_user", "Messages per username they concern", ("user",)),)

    def process(self, message: Message, out: Output) -> None:
        for user in message.usernames:
            out.inc("messages_by_user", user=user)


class VolumeByPackage(Plugin):
    ident = "volume_by_package"
    name = "Volume by package"
    summary = "Messages per package the message concerns"
    description = (
        "Packages come from the message itself (fedora-messaging header flags, datagrepper's "
        "packages) or its fedora-messaging schema class. A message naming none is not counted."
    )
    metrics = (Counter("messages_by_package", "Messages per package they concern", ("package",)),)

    def process(self, message: Message, out: Output) -> None:
        for package in message.packages:
            out.inc("messages_by_package", package=package)


class VolumeByAgent(Plugin):
    ident = "volume_by_agent"
    name = "Volume by agent"
    summary = "Messages per agent (the user or service that caused them)"
    description = (
        "The agent is datagrepper's agent_name or the schema class's agent_name. "
        "A message whose agent is unknown is not counted."
    )
    metrics = (Counter("messages_by_agent", "Messages per agent that caused them", ("agent",)),)

    def process(self, message: Message, out: Output) -> None:
        if message.agent:
            out.inc("messages_by_agent", agent=message.agent)
