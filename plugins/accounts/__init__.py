"""Fedora accounts and badges: new FAS accounts, group membership changes per group, badges
awarded per badge.

FAS (2012-2021, fedmsg) and noggin, its successor (fedora-messaging), publish under the same
``fas.`` topics with one exception, counted as one action: a member removed from a group is
``fas.group.member.remove`` from FAS and ``fas.group.member.removed`` from noggin. Noggin's
bodies carry their fields one level down, under ``msg``.
"""

from __future__ import annotations

from dataclasses import dataclass

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Output, Plugin, under

from ..common import mapping, name_of, payload, strip_prefix, text

#: topic after ``<prefix>.fas.`` → group membership action
MEMBERSHIP_ACTIONS = {
    "group.member.apply": "applied",
    # FAS: a sponsor approved an applicant; noggin: a sponsor added a member
    "group.member.sponsor": "added",
    "group.member.remove": "removed",
    "group.member.removed": "removed",
    "role.update": "role_changed",
}


@dataclass(frozen=True)
class AccountsOptions:
    #: topic prefixes (up to and including ``fas.``) whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.fas.",)


@dataclass(frozen=True)
class BadgesOptions:
    #: topic prefixes (up to and including ``fedbadges.``) whose messages count
    prefixes: tuple[str, ...] = ("org.fedoraproject.prod.fedbadges.",)


class Accounts(Plugin):
    ident = "accounts"
    name = "Accounts"
    summary = "New Fedora accounts, and group membership changes per group"
    description = (
        "From <prefix>.fas.user.create and fas.group.member.* / fas.role.update, of FAS and of "
        "noggin alike."
    )
    metrics = (
        Counter("accounts_registered", "Fedora accounts created (registered)"),
        Counter(
            "accounts_group_membership_changes",
            "Group membership changes per group: applied, added, removed, role_changed",
            ("group", "action"),
        ),
    )
    Options = AccountsOptions

    def reads(self) -> tuple[str, ...]:
        return under(self.options.prefixes, "user.create", *MEMBERSHIP_ACTIONS)

    def process(self, message: Message, out: Output) -> None:
        event = strip_prefix(message.topic, self.options.prefixes)
        if event is None:
            return
        body = payload(message)
        if event == "user.create":
            if name_of(body.get("user")):
                out.inc("accounts_registered")
            return
        action = MEMBERSHIP_ACTIONS.get(event)
        group = name_of(body.get("group"))
        if action and group:
            out.inc("accounts_group_membership_changes", group=group, action=action)


class Badges(Plugin):
    ident = "badges"
    name = "Badges"
    summary = "Fedora badges awarded, per badge"
    description = "From <prefix>.fedbadges.badge.award; the badge by its name."
    metrics = (Counter("badges_awarded", "Fedora badges awarded, per badge", ("badge",)),)
    Options = BadgesOptions

    def reads(self) -> tuple[str, ...]:
        return under(self.options.prefixes, "badge.award")

    def process(self, message: Message, out: Output) -> None:
        if strip_prefix(message.topic, self.options.prefixes) != "badge.award":
            return
        badge = text(mapping(payload(message).get("badge")).get("name"))
        if badge:
            out.inc("badges_awarded", badge=badge)
