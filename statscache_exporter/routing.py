"""Topic routing: which plugins read a message, decided once per distinct topic.

Most plugins read a few topics (koji its ``buildsys.`` ones, bodhi its ``bodhi.`` ones); the
volume plugins read everything. Each plugin's patterns (:meth:`Plugin.reads`, ``fnmatch``
style) are compiled into one regular expression, and the plugins that read a topic are kept
per topic: the bus has a few thousand distinct topics, so after the first message of each the
answer is one dictionary lookup. A plugin that declares no patterns reads every topic.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: distinct topics remembered before the table starts again (a bound against a stream of
#: made-up topics; the real bus has a few thousand)
MAX_TOPICS = 100_000


def compile_patterns(patterns: Sequence[str] | None) -> Callable[[str], bool] | None:
    """A test of whole topics against ``patterns`` (None: no test, every topic matches)."""
    if patterns is None:
        return None
    if not patterns:
        return lambda topic: False
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL)
    return lambda topic: regex.match(topic) is not None


class Router(Generic[T]):
    """The targets (plugins, in their given order) that read each topic."""

    def __init__(self, targets: Sequence[tuple[T, Sequence[str] | None]]) -> None:
        self._targets = [(target, compile_patterns(patterns)) for target, patterns in targets]
        self._by_topic: dict[str, tuple[T, ...]] = {}

    def __call__(self, topic: str) -> tuple[T, ...]:
        found = self._by_topic.get(topic)
        if found is None:
            if len(self._by_topic) >= MAX_TOPICS:
                self._by_topic.clear()
            found = self._by_topic[topic] = tuple(
                target for target, reads in self._targets if reads is None or reads(topic)
            )
        return found

    def topics_seen(self) -> int:
        return len(self._by_topic)
