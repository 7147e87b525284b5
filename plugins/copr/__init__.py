"""Copr: builds started and ended per chroot and status, and per owner.

Copr's messages are per chroot: ``copr.build.start`` says a build started in one chroot,
``copr.build.end`` that it ended there, with a status. Since 2017 every start is also sent again
as ``copr.chroot.start``, which copr's own schema package says never to use; before that (2013
to 2016) ``build.start`` carried no chroot and only ``chroot.start`` named it.
``Options.start_topic`` picks which one counts as the start. Fedmsg-era envelopes bridged whole
into fedora-messaging (the payload under ``msg``) are read like the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Output, Plugin, under

from ..common import payload, strip_prefix, text, whole

#: copr_common.enums.StatusEnum
STATUSES = {
    0: "failed",
    1: "succeeded",
    2: "canceled",
    3: "running",
    4: "pending",
    5: "skipped",
    6: "starting",
    7: "importing",
    8: "forked",
    9: "waiting",
    1000: "unknown",
}


@dataclass(frozen=True)
class Options:
    #: topic prefixes (up to and including ``copr.``) whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.copr.",)
    #: which topic counts a chroot build as started (see the module docstring)
    start_topic: Literal["build.start", "chroot.start"] = "build.start"


def status_name(value: Any) -> str | None:
    """A copr status name from its number, or None when the body has none."""
    number = whole(value)
    if number is None:
        return None
    return STATUSES.get(number, str(number))


class Copr(Plugin):
    ident = "copr"
    name = "Copr"
    summary = "Copr chroot builds started and ended, by chroot and status, and per owner"
    description = (
        "From <prefix>.copr.build.start (or chroot.start) and copr.build.end. The owner is the "
        "copr project's owner (a user or @group); per-owner series grow with the bus."
    )
    metrics = (
        Counter("copr_builds_started", "Copr chroot builds started", ("chroot",)),
        Counter("copr_builds_ended", "Copr chroot builds ended, by status", ("chroot", "status")),
        Counter("copr_builds_started_by_owner", "Copr chroot builds started per owner", ("owner",)),
        Counter(
            "copr_builds_ended_by_owner",
            "Copr chroot builds ended per owner, by status",
            ("owner", "status"),
        ),
    )
    Options = Options

    def reads(self) -> tuple[str, ...]:
        opts: Options = self.options
        return under(opts.prefixes, opts.start_topic, "build.end")

    def process(self, message: Message, out: Output) -> None:
        opts: Options = self.options
        event = strip_prefix(message.topic, opts.prefixes)
        if event is None or event not in (opts.start_topic, "build.end"):
            return
        body = payload(message)
        chroot = text(body.get("chroot")) or ""
        owner = text(body.get("owner")) or text(body.get("user"))
        if event == "build.end":
            status = status_name(body.get("status"))
            if status is None:
                return
            out.inc("copr_builds_ended", chroot=chroot, status=status)
            if owner:
                out.inc("copr_builds_ended_by_owner", owner=owner, status=status)
            return
        if not body:
            return
        out.inc("copr_builds_started", chroot=chroot)
        if owner:
            out.inc("copr_builds_started_by_owner", owner=owner)
