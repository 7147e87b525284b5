#!/usr/bin/env python3
"""The real corpus, scaled up: a seeded, reproducible stream of bus messages for benchmarks
and the tests that need many messages.

Templates are the corpus messages of ``tests/data`` (built from ``../shared/corpus`` by
``tests/data/make_corpus.py``), in their bus shapes: 726 fedmsg-era envelopes, the 25 items
of a datagrepper page from 2017 (envelopes too), and 191 fedora-messaging messages. Copies
keep each template's topic and body (so the topic mix and what the plugins see are the
corpus's) and vary what differs from one real message to the next:

- **ids**: fresh ones (fedora-messaging: a UUID; fedmsg: ``<year>-<UUID>``), all distinct;
- **timestamps**: from ``start``, ``rate`` messages a second on average, in order but with a
  share arriving late (up to a minute), as the bus delivers them; fedora-messaging's
  ``sent-at`` in whole seconds as fedora-messaging writes it, fedmsg's epoch with milliseconds;
- **users and packages**: each name the corpus says a template concerns is replaced, per copy,
  by a name drawn from a population of synthetic FAS usernames (``users``) and package names
  (``packages``), Zipf-distributed (``skew``; 0 cycles through the population so that every
  name is used once per pass, for a known cardinality). The names are carried as the bus does:
  fedora-messaging header flags ``fedora_messaging_user_<name>``/``fedora_messaging_rpm_<name>``
  (fedora-messaging sets them at publish time from the schema), and datagrepper ``/raw``
  ``users``/``packages``/``agent_name`` for envelopes whose names the corpus knows (fedmsg.meta's
  expected answers, or for fedora-messaging the schema class's own ``usernames``, ``packages``
  and ``agent_name``). Envelopes whose names the corpus does not know stay plain fedmsg
  envelopes. A fedora-messaging agent stays the template's (the schema reads it from the body).

Topic mix: the templates are taken in seeded shuffled passes, each pass holding every template
once, so ``n`` messages hold each template ``n // T`` or ``n // T + 1`` times (``T``: the number
of templates of the chosen kinds) and a multiple of ``T`` holds exactly the corpus's topic mix.

The same arguments give the same messages, in the same order; a shorter run is a prefix of a
longer one.

    .venv/bin/python bench/corpus.py --messages 100000 --out var/scaled.jsonl.gz
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import gzip
import itertools
import json
import random
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from common import package, username

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

Kind = Literal["fedmsg", "raw", "fedora-messaging"]
#: Every kind of copy: plain fedmsg envelopes, datagrepper /raw items, fedora-messaging JSON
KINDS: tuple[Kind, ...] = ("fedmsg", "raw", "fedora-messaging")
#: 2024-03-01T12:00:00Z
DEFAULT_START = 1_709_294_400.0
DEFAULT_SEED = 20240601
USER_FLAG = "fedora_messaging_user_"
PACKAGE_FLAG = "fedora_messaging_rpm_"


@dataclass(frozen=True)
class Template:
    """One corpus message and what the corpus says it concerns."""

    kind: Kind
    message: dict[str, Any]
    usernames: tuple[str, ...]
    packages: tuple[str, ...]
    agent: str | None
    source: str
    #: fedora-messaging's severity of the message's schema class (None: not fedora-messaging)
    severity: int | None = None

    @property
    def topic(self) -> str:
        return str(self.message["topic"])


@cache
def templates() -> tuple[Template, ...]:
    """Every corpus message as a template, in file order: envelopes, the datagrepper page's
    items, then fedora-messaging messages."""
    out: list[Template] = []
    for line in (DATA / "fedmsg_envelopes.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        out.append(_envelope_template(row["envelope"], row.get("expected", {}), row["source"]))
    page = json.loads((DATA / "datagrepper_raw_page_2017.json").read_text(encoding="utf-8"))
    for i, item in enumerate(page["raw_messages"]):
        source = f"datagrepper_raw_page_2017.json#raw_messages[{i}]"
        out.append(_envelope_template(item, {}, source))
    for line in (DATA / "fedora_messaging.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        out.append(_fedora_messaging_template(row["message"], row["source"]))
    return tuple(out)


def _envelope_template(envelope: dict[str, Any], expected: dict[str, Any], source: str) -> Template:
    """A fedmsg envelope: a /raw item when fedmsg.meta's expected names are known, else plain."""
    known = "usernames" in expected or "packages" in expected
    return Template(
        kind="raw" if known else "fedmsg",
        message=envelope,
        usernames=tuple(expected.get("usernames") or ()),
        packages=tuple(expected.get("packages") or ()),
        agent=expected.get("agent") if isinstance(expected.get("agent"), str) else None,
        source=source,
    )


def _fedora_messaging_template(message: dict[str, Any], source: str) -> Template:
    """A fedora-messaging message; its names as its schema class gives them (fedora-messaging's
    own code, each property guarded: one that raises counts as none)."""
    from fedora_messaging.message import load_message

    loaded = load_message(message)

    def ask(prop: str) -> Any:
        try:
            return getattr(loaded, prop)
        except Exception:
            return None

    agent = ask("agent_name")
    severity = ask("severity")
    return Template(
        kind="fedora-messaging",
        message=message,
        usernames=tuple(sorted(set(ask("usernames") or ()))),
        packages=tuple(sorted(set(ask("packages") or ()))),
        agent=agent if isinstance(agent, str) and agent else None,
        source=source,
        severity=severity if isinstance(severity, int) else 20,  # fedora-messaging's INFO
    )


class Population:
    """``size`` distinct synthetic names; :meth:`draw` picks one, Zipf-distributed with
    exponent ``skew``, or (skew 0) the next of a seeded permutation, round and round."""

    def __init__(
        self, size: int, skew: float, seed: str, make: Callable[[random.Random], str]
    ) -> None:
        if size < 1:
            raise ValueError(f"a population needs at least one name, got {size}")
        rng = random.Random(seed)
        names: dict[str, None] = {}
        while len(names) < size:
            name = make(rng)
            names.setdefault(name if name not in names else f"{name}{len(names)}")
        self.names = list(names)
        rng.shuffle(self.names)  # popularity is not alphabetical or by length
        self.skew = skew
        self._next = 0
        self._cumulative = list(itertools.accumulate(1 / (k + 1) ** skew for k in range(size)))

    def draw(self, rng: random.Random) -> str:
        if self.skew == 0:
            name = self.names[self._next % len(self.names)]
            self._next += 1
            return name
        x = rng.random() * self._cumulative[-1]
        return self.names[min(bisect.bisect_right(self._cumulative, x), len(self.names) - 1)]


class Generator:
    """The scaled corpus: iterate over :meth:`messages`. See the module docstring."""

    def __init__(
        self,
        seed: int = DEFAULT_SEED,
        *,
        start: float = DEFAULT_START,
        rate: float = 20.0,
        users: int = 5_000,
        packages: int = 25_000,
        skew: float = 1.0,
        late: float = 0.02,
        kinds: Iterable[Kind] = KINDS,
    ) -> None:
        chosen = set(kinds)
        unknown = chosen - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; valid: {', '.join(KINDS)}")
        if rate <= 0:
            raise ValueError(f"rate must be above 0, got {rate}")
        self.templates = [t for t in templates() if t.kind in chosen]
        if not self.templates:
            raise ValueError(f"no corpus message of the kinds {sorted(chosen)}")
        self.seed = seed
        self.start = start
        self.rate = rate
        self.late = late
        self.users = Population(users, skew, f"{seed}:users", username)
        self.packages = Population(packages, skew, f"{seed}:packages", package)

    def order(self) -> Iterator[Template]:
        """The templates in seeded shuffled passes, every template once per pass."""
        rng = random.Random(f"{self.seed}:order")
        while True:
            yield from rng.sample(self.templates, len(self.templates))

    def messages(self, n: int | None = None) -> Iterator[dict[str, Any]]:
        """The first ``n`` messages (all of them, endlessly, when ``n`` is None)."""
        rng = random.Random(self.seed)
        order = self.order()
        count = itertools.count() if n is None else range(n)
        for i in count:
            yield self._copy(next(order), i, rng)

    def _copy(self, t: Template, i: int, rng: random.Random) -> dict[str, Any]:
        when = self.start + (i + rng.random()) / self.rate
        if rng.random() < self.late:
            when = max(self.start, when - rng.uniform(1, 60))
        new_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        names: dict[str, str] = {}  # real name -> its stand-in, in this copy
        users = self._substitute(t.usernames, self.users, names, rng)
        packages = self._substitute(t.packages, self.packages, {}, rng)
        if t.kind == "fedora-messaging":
            return self._fedora_messaging(t, new_id, when, users, packages)
        year = dt.datetime.fromtimestamp(when, dt.UTC).year
        out = {**t.message, "msg_id": f"{year}-{new_id}", "timestamp": round(when, 3)}
        if t.kind == "raw":
            agent = self._substitute((t.agent,), self.users, names, rng)[0] if t.agent else None
            out.update(users=list(users), packages=list(packages), agent_name=agent)
        return out

    @staticmethod
    def _substitute(
        real: Sequence[str], population: Population, names: dict[str, str], rng: random.Random
    ) -> tuple[str, ...]:
        """Each real name replaced by a distinct drawn name (the same real name twice in one
        message, e.g. a user who is also the agent, gets the same stand-in)."""
        taken = set(names.values())
        for name in real:
            if name in names:
                continue
            for _ in range(100):  # a small population may have no name left to draw
                drawn = population.draw(rng)
                if drawn not in taken:
                    break
            names[name] = drawn
            taken.add(drawn)
        return tuple(sorted({names[name] for name in real}))

    @staticmethod
    def _fedora_messaging(
        t: Template, new_id: str, when: float, users: Sequence[str], packages: Sequence[str]
    ) -> dict[str, Any]:
        headers = {
            k: v
            for k, v in t.message.get("headers", {}).items()
            if not k.startswith((USER_FLAG, PACKAGE_FLAG))
        }
        sent = dt.datetime.fromtimestamp(int(when), dt.UTC)
        headers["sent-at"] = sent.isoformat()
        # as fedora-messaging's publish sets them (without a severity, its consumer logs an
        # error for every message)
        headers["fedora_messaging_severity"] = t.severity
        headers["priority"] = 0
        headers.update({USER_FLAG + u: True for u in users})
        headers.update({PACKAGE_FLAG + p: True for p in packages})
        return {**t.message, "id": new_id, "headers": headers}


def generate(n: int, seed: int = DEFAULT_SEED, **options: Any) -> list[dict[str, Any]]:
    """The first ``n`` messages of :class:`Generator` ``(seed, **options)``, as a list."""
    return list(Generator(seed, **options).messages(n))


def topic_mix(kinds: Iterable[Kind] = KINDS) -> dict[str, int]:
    """How many templates of the chosen kinds have each topic: one pass's topic counts."""
    chosen = set(kinds)
    mix: dict[str, int] = {}
    for t in templates():
        if t.kind in chosen:
            mix[t.topic] = mix.get(t.topic, 0) + 1
    return mix


def write_jsonl(path: Path, messages: Iterable[dict[str, Any]]) -> int:
    """JSON Lines (gzip when ``path`` ends in .gz); how many messages were written."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    n = 0
    with opener(path, "wt", encoding="utf-8") as out:
        for m in messages:
            out.write(json.dumps(m) + "\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, required=True, help="how many")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--start", type=float, default=DEFAULT_START, help="epoch seconds")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s (20)")
    parser.add_argument("--users", type=int, default=5_000, help="population (5000)")
    parser.add_argument("--packages", type=int, default=25_000, help="population (25000)")
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent; 0: cycle")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--out", type=Path, help="a .jsonl or .jsonl.gz file (default: stdout)")
    args = parser.parse_args(argv)
    if args.messages < 0:
        parser.error("--messages must be 0 or more")
    gen = Generator(
        args.seed,
        start=args.start,
        rate=args.rate,
        users=args.users,
        packages=args.packages,
        skew=args.skew,
        kinds=args.kinds,
    )
    if args.out is None:
        for m in gen.messages(args.messages):
            sys.stdout.write(json.dumps(m) + "\n")
    else:
        write_jsonl(args.out, gen.messages(args.messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
