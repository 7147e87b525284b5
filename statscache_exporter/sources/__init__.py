"""Sources: where raw messages come from.

A source runs in its own thread and hands each raw message (bytes, str, a parsed JSON value or
a fedora-messaging object) to ``emit``; it stops when ``stop`` is set. Sources never normalize,
count or store: the pipeline does that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

Emit = Callable[[Any], None]


class Source(Protocol):
    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit messages until exhausted or ``stop`` is set."""
