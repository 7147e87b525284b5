"""Usernames, packages and agent from fedora-messaging schema classes, when installed.

Schema packages (bodhi-messages, koji-fedoramessaging-messages, copr-messaging, ...) register
their classes in the entry-point group ``fedora.messages``; a message names its class in the
``fedora_messaging_schema`` header. Schema properties are third-party code run on untrusted
bodies: every call is guarded, and a property that raises or returns nonsense counts as unknown.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import pika  # fedora-messaging's own dependency: how a schema class gets its headers

from statscache_exporter.text import is_text

log = logging.getLogger(__name__)

SCHEMA_HEADER = "fedora_messaging_schema"


@dataclass(frozen=True, slots=True)
class Facts:
    """What a schema class says of a message; None where it could not say."""

    usernames: tuple[str, ...] | None = None
    packages: tuple[str, ...] | None = None
    agent: str | None = None


NO_FACTS = Facts()


@cache
def registry() -> Mapping[str, type]:
    """Schema name → class, from the ``fedora.messages`` entry points (loaded once)."""
    classes: dict[str, type] = {}
    for ep in entry_points(group="fedora.messages"):
        try:
            classes[ep.name] = ep.load()
        except Exception as exc:  # a broken schema package must not break the exporter
            log.warning("cannot load fedora-messaging schema %s: %s", ep.name, exc)
    return classes


def facts_for(
    topic: str,
    body: Mapping[str, Any],
    headers: Mapping[str, Any],
    wanted: tuple[bool, bool, bool] = (True, True, True),
) -> Facts:
    """Facts from the schema class the headers name; NO_FACTS if none is installed.
    ``wanted``: which of usernames, packages and agent to ask it for (the others stay None):
    schema properties walk the body, and the message often carries the rest itself."""
    name = headers.get(SCHEMA_HEADER)
    cls = registry().get(name) if isinstance(name, str) else None
    if cls is None:
        return NO_FACTS
    try:
        message = _wrap(cls, topic, body, headers)
    except Exception as exc:
        log.debug("schema %s cannot wrap a message on %s: %s", name, topic, exc)
        return NO_FACTS
    return facts_of(message, wanted)


#: schema classes seen to warn when instantiated (deprecated ones), and those seen not to
_WARNS: dict[type, bool] = {}


def _wrap(cls: type, topic: str, body: Mapping[str, Any], headers: Mapping[str, Any]) -> Any:
    """An instance of the schema class for this message. Schema packages warn when an old
    message class is instantiated; the exporter reads old messages on purpose (history,
    replays): that says nothing to its operator. Silencing warnings costs more than the rest
    of the call, so it is done only for the classes whose first instance warned."""
    properties = pika.BasicProperties(headers=dict(headers))
    warns = _WARNS.get(cls)
    if warns is False:
        return cls(body=body, topic=topic, properties=properties)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        message = cls(body=body, topic=topic, properties=properties)
    if warns is None:
        _WARNS[cls] = any(issubclass(w.category, DeprecationWarning) for w in caught)
    for w in caught:  # anything but a deprecation goes on as it would have
        if not issubclass(w.category, DeprecationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return message


def facts_of(message: Any, wanted: tuple[bool, bool, bool] = (True, True, True)) -> Facts:
    """Ask a fedora-messaging message object for its usernames, packages and agent (those
    ``wanted``)."""
    users, packages, agent = wanted
    return Facts(
        usernames=_names(_guarded(message, "usernames")) if users else None,
        packages=_names(_guarded(message, "packages")) if packages else None,
        agent=_agent(_guarded(message, "agent_name")) if agent else None,
    )


def _guarded(message: Any, prop: str) -> Any:
    try:
        return getattr(message, prop)
    except Exception as exc:
        log.debug("schema property %s.%s raised %r", type(message).__name__, prop, exc)
        return None


_COLLECTIONS = (list, tuple, set, frozenset)  # made once: a union in isinstance is made each call


def _names(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, _COLLECTIONS):
        return None
    return tuple(sorted({v for v in value if isinstance(v, str) and v and is_text(v)}))


def _agent(value: Any) -> str | None:
    return value if isinstance(value, str) and value and is_text(value) else None
