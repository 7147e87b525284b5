"""Sources: where raw messages come from.

A source runs in its own thread and hands each raw message (bytes, str, a parsed JSON value or
a fedora-messaging object) to ``ctx.emit``; it stops when ``ctx.stop`` is set. Sources never
normalize, count or store: the pipeline does that.

A source that must acknowledge what it received (AMQP) passes an ``ack`` callback with each
message: the pipeline thread calls it once the flush that stored the message's effects has
committed (or once the message was rejected or found to be a duplicate and that flush passed),
so a crash means redelivery, never loss; the callback must be thread-safe. After ``stop`` is
set, such a source keeps its connection until ``ctx.closing`` is set (the final flush is done
and its acknowledgements were called), then closes it and returns.

A source reports its connection through ``ctx.status``: the daemon shows it in the
``source_connected`` gauge and ``/readyz``, and records the time between a disconnect and the
reconnect as a gap in the store, for the gap filler to fetch from datagrepper.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: Acknowledge one message to its source; called from the pipeline thread.
Ack = Callable[[], None]


class Emit(Protocol):
    def __call__(self, raw: Any, ack: Ack | None = None, /) -> None:
        """Hand one raw message to the pipeline (blocks while its queue is full)."""


class Status(Protocol):
    def connected(self, detail: str = "") -> None:
        """The source is connected and receiving (again)."""

    def disconnected(self, reason: str) -> None:
        """The source lost its peer; messages may be missed until :meth:`connected`."""


@dataclass(frozen=True)
class SourceContext:
    """What a running source is given."""

    emit: Emit
    #: stop receiving
    stop: threading.Event
    #: the final flush is done and its acknowledgements were made: close and return
    closing: threading.Event
    status: Status


class Source(Protocol):
    name: str

    def run(self, ctx: SourceContext) -> None:
        """Emit messages until exhausted or ``ctx.stop`` is set."""


class NullStatus:
    """A status nobody watches (replay from the command line, tests)."""

    def connected(self, detail: str = "") -> None:
        pass

    def disconnected(self, reason: str) -> None:
        pass
