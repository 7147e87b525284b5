"""Pagure contributions: issues, pull requests, comments and git pushes, in all, per project and
per user, on pagure.io and src.fedoraproject.org.

This replaces statscache_plugins' three pagure plugins (contributions in all, per project, per
user; daily): the framework's 1 d buckets give the daily figures. The per-project rules are
theirs: ``pullrequest.project`` for pull-request topics, ``repo`` for pushes, ``project``
otherwise; edits of comments are not counted.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from statscache_exporter.message import Message
from statscache_exporter.plugin import Counter, Output, Plugin, under

from ..common import mapping, match_prefix, name_of, text


def _default_forges() -> dict[str, str]:
    return {
        "io.pagure.prod.pagure.": "pagure.io",
        "org.fedoraproject.prod.pagure.": "src.fedoraproject.org",
    }


def _default_distgit() -> dict[str, str]:
    return {"org.fedoraproject.prod.git.receive": "src.fedoraproject.org"}


@dataclass(frozen=True)
class Options:
    #: topic prefix (up to and including ``pagure.``) → forge name, the ``forge`` label
    forges: dict[str, str] = field(default_factory=_default_forges)
    #: whole topics of dist-git's own push hook (fedmsg era, one message per commit) → forge
    distgit_push_topics: dict[str, str] = field(default_factory=_default_distgit)
    #: events (the topic after the forge prefix) that are not contributions: comment edits
    not_counted: tuple[str, ...] = (
        "issue.comment.edited",
        "pull-request.comment.edited",
        "pull-request.initial_comment.edited",
        "request.comment.edited",
    )


def kind_of(event: str) -> str | None:
    """The contribution kind of a pagure event (the topic after the forge prefix), or None
    for events that are not contributions (project settings, flags on commits, tags...)."""
    if event == "git.receive":
        return "push"
    if event.endswith(".comment.added"):
        return "comment"
    if event.startswith("issue."):
        return "issue"
    # ``request.*`` is the pull-request topic of pagure before 2018
    if event.startswith(("pull-request.", "request.")):
        return "pull_request"
    return None


def project_of(event: str, body: Mapping[str, Any]) -> str | None:
    """``namespace/name`` (or ``name``) of the project a contribution went to."""
    if event.startswith(("pull-request.", "request.")):
        # ``request`` is what pagure called the pull request before 2018
        pull = mapping(body.get("pullrequest")) or mapping(body.get("request"))
        project = mapping(pull.get("project")) or mapping(body.get("project"))
    elif event == "git.receive":
        # fedora-messaging era and pagure ≥ 1.0: ``repo``; older pagure: ``commit.repo``
        project = mapping(body.get("repo")) or mapping(mapping(body.get("commit")).get("repo"))
    else:
        project = mapping(body.get("project"))
    name = text(project.get("name"))
    if name is None:
        return None
    namespace = text(project.get("namespace"))
    return f"{namespace}/{name}" if namespace else name


def distgit_project(body: Mapping[str, Any]) -> str | None:
    """``namespace/repo`` of a dist-git push (namespace ``rpms`` when the message predates
    namespaces)."""
    commit = mapping(body.get("commit"))
    repo = text(commit.get("repo"))
    if repo is None:
        return None
    return f"{text(commit.get('namespace')) or 'rpms'}/{repo}"


class PagureContributions(Plugin):
    ident = "pagure_contributions"
    name = "Pagure contributions"
    summary = "Issues, pull requests, comments and pushes on pagure.io and src.fedoraproject.org"
    description = (
        "One contribution per message on an issue, pull-request, comment or git push topic "
        "(comment edits excluded), in all by kind, per project and per acting user."
    )
    metrics = (
        Counter("pagure_contributions", "Contributions to a pagure forge", ("forge", "kind")),
        Counter(
            "pagure_contributions_by_project",
            "Contributions to a pagure forge per project (namespace/name)",
            ("forge", "project"),
        ),
        Counter(
            "pagure_contributions_by_user",
            "Contributions to a pagure forge per user who made them",
            ("forge", "user"),
        ),
    )
    Options = Options

    def reads(self) -> tuple[str, ...]:
        opts: Options = self.options
        return under(opts.forges) + tuple(glob.escape(t) for t in opts.distgit_push_topics)

    def process(self, message: Message, out: Output) -> None:
        opts: Options = self.options
        distgit = opts.distgit_push_topics.get(message.topic)
        kind: str | None
        if distgit is not None:
            body = message.body
            forge, kind = distgit, "push"
            project = distgit_project(body)
            user = name_of(mapping(body.get("commit")).get("username"))
        else:
            found = match_prefix(message.topic, opts.forges)
            if found is None:
                return
            forge, event = found
            kind = kind_of(event)
            if kind is None or event in opts.not_counted:
                return  # before the body is read: most of its topics are not counted
            body = message.body
            project = project_of(event, body)
            user = name_of(body.get("agent")) or message.agent
        out.inc("pagure_contributions", forge=forge, kind=kind)
        if project:
            out.inc("pagure_contributions_by_project", forge=forge, project=project)
        if user:
            out.inc("pagure_contributions_by_user", forge=forge, user=user)
