"""Process-wide settings for a process that counts messages (``run``, ``replay``, ``import``,
``backfill``), applied once by the command line before it opens the pipeline."""

from __future__ import annotations

import gc

#: allocations between young-generation collections (CPython's default is 700)
GC_YOUNG_THRESHOLD = 10_000
#: young collections between middle ones, and middle between full ones (default 10 and 10)
GC_OLDER_THRESHOLDS = (10, 10)


def tune() -> None:
    """The cycle collector set for counting messages: the young generation collected every
    10,000 allocations instead of every 700.

    Counting one message allocates a few dozen short-lived containers (the decoded body, the
    emissions, the aggregator's keys), almost none of them in a reference cycle: with
    CPython's defaults the cycle collector ran every ~20 messages and, with what survives,
    traversed the growing series and totals again, ~5 µs of the ~50 µs a message costs
    (``bench/pipeline.py``). Cycles are still collected, later.
    """
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
