"""The datagrepper polling source against a real datagrepper 1.1.0 (tests/datagrepper.py): what
is stored while it runs, also late (inside the overlap) and crowded into one second, is emitted
exactly once; what is older than its first window is not its business; datagrepper's web
server stopped and started again is a disconnection, then a reconnection with nothing lost;
``categories``; a prompt stop; and ``statscache-exporter run`` with a datagrepper source,
counted exactly in the store.

Message times are taken from the wall clock (the source polls up to now), and every wait is
bounded; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datagrepper as harness
import pytest
import requests
from conftest import make_config, scaled_messages
from servers import exporter_process, free_port, total, wait_until

from statscache_exporter import message as messages
from statscache_exporter.config import DatagrepperSourceConfig
from statscache_exporter.datagrepper import Item
from statscache_exporter.sources import SourceContext, poll
from statscache_exporter.sources.poll import DatagrepperSource

pytestmark = pytest.mark.integration

DEADLINE = 20.0


@pytest.fixture
def dg(datagrepper_session: harness.Datagrepper) -> Iterator[harness.Datagrepper]:
    datagrepper_session.reset()
    yield datagrepper_session
    if datagrepper_session.process is None:  # a test stopped it and failed before restarting
        start_web(datagrepper_session)


# --- datagrepper's web server alone: stop and start (PostgreSQL and the data stay) ----------


def stop_web(dg: harness.Datagrepper) -> None:
    assert dg.process is not None
    harness._terminate(dg.process)
    dg.process = None


def start_web(dg: harness.Datagrepper) -> None:
    """``flask run`` again on the same port, as tests/datagrepper.py starts it."""
    assert dg.process is None
    env = {**harness._child_env(), "DATAGREPPER_CONFIG": str(dg.config)}
    flask = str(dg.venv / "bin" / "flask")
    with dg.log.open("ab") as log:
        dg.process = subprocess.Popen(
            [flask, "--app", "datagrepper.app", "run", "-h", "127.0.0.1", "-p", str(dg.port),
             "--no-reload"],
            cwd=dg.root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_until(
        lambda: dg.get("/raw", rows_per_page=1).status,
        lambda status: status == 200,
        f"datagrepper at {dg.url} to answer again",
        timeout=60,
    )


# --- running a source -----------------------------------------------------------------------


def corpus_at(times: Sequence[float], seed: int, topic: str | None = None) -> list[Item]:
    """Corpus messages with fresh ids (``scaled-<seed>-<n>``), one at each of ``times``."""
    out = scaled_messages(len(times), seed)
    for m, when in zip(out, times, strict=True):
        m["timestamp"] = when
        if topic is not None:
            m["topic"] = topic
    return out


def ids(items: Sequence[Item]) -> set[str]:
    return {m["msg_id"] for m in items}


class Recording(requests.Session):
    """A session that counts its GETs (each poll makes at least one) and keeps the windows
    they asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.windows: list[tuple[float, float]] = []

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.gets += 1
        params = kwargs.get("params") or {}
        self.windows.append((float(params["start"]), float(params["end"])))
        return super().get(url, **kwargs)


class Running:
    """A source running in a thread, recording what it emits and its status."""

    def __init__(self, source: DatagrepperSource) -> None:
        self.source = source
        self.emitted: list[Any] = []
        self.events: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.context = SourceContext(self._emit, self.stop, threading.Event(), self)
        self.started = time.time()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _emit(self, raw: Any, ack: Any = None, /) -> None:
        assert ack is None
        self.emitted.append(raw)

    def connected(self, detail: str = "") -> None:
        self.events.append(("connected", detail))

    def disconnected(self, reason: str) -> None:
        self.events.append(("disconnected", reason))

    def _run(self) -> None:
        try:
            self.source.run(self.context)
        except BaseException as exc:
            self.error = exc

    def counts(self) -> Counter[str]:
        return Counter(m["msg_id"] for m in self.emitted)

    def wait_emitted(self, wanted: set[str]) -> None:
        wait_for(lambda: wanted <= set(self.counts()), f"{len(wanted)} messages emitted")

    def wait_event(self, state: str, after: int = 0) -> int:
        """Wait for a ``state`` event from index ``after`` on; its index."""
        wait_for(
            lambda: any(e[0] == state for e in self.events[after:]),
            f"{state} after event {after} (events: {self.events})",
        )
        return next(i for i, e in enumerate(self.events) if i >= after and e[0] == state)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=DEADLINE)
        assert not self.thread.is_alive(), "the source did not stop"
        if self.error is not None:
            raise self.error


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def source_config(url: str, **keys: Any) -> DatagrepperSourceConfig:
    data = {
        "type": "datagrepper",
        "name": "dg",
        "url": url,
        "interval": "200ms",
        "overlap": "1m",
        "rows_per_page": 10,
        "reconnect": {"initial": "100ms", "max": "500ms"},
        **keys,
    }
    config = make_config(Path("unused.sqlite"), sources=[data]).sources[0]
    assert isinstance(config, DatagrepperSourceConfig)
    return config


@pytest.fixture
def running() -> Iterator[Callable[[DatagrepperSource], Running]]:
    started: list[Running] = []

    def start(source: DatagrepperSource) -> Running:
        r = Running(source)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop.set()
        r.thread.join(timeout=DEADLINE)


def polls_go_on(session: Recording, more: int = 5) -> None:
    """Wait until the source has made ``more`` requests (so at least that many polls, each
    reading the overlap again) beyond those made so far."""
    done = session.gets + more
    wait_for(lambda: session.gets >= done, f"{more} more requests")


# --- the source -------------------------------------------------------------------------------


def test_each_message_is_emitted_once_also_when_stored_late_or_crowded(
    dg: harness.Datagrepper, running: Any
) -> None:
    now = time.time()
    first = corpus_at([now - 20 + k * 0.5 for k in range(30)], seed=20)
    dg.add(first + corpus_at([now - 100], seed=21))  # older than the first window
    session = Recording()
    run = running(DatagrepperSource(source_config(dg.url), session=session))
    run.wait_emitted(ids(first))
    assert run.events[0] == ("connected", f"polling {dg.url}/raw")

    t = time.time()
    crowded = corpus_at([math.floor(t)] * 25, seed=22)  # more than a page in one second
    spread = corpus_at([t + k * 0.1 for k in range(12)], seed=23)
    late = corpus_at([t - 25, t - 15, t - 5], seed=24)  # seconds polls have read already
    too_late = corpus_at([run.started - 61], seed=25)  # before the first window: never
    dg.add(crowded + spread + late + too_late)
    run.wait_emitted(ids(crowded + spread + late))
    polls_go_on(session)

    emitted = run.counts()
    assert set(emitted) == ids(first + crowded + spread + late)
    assert set(emitted.values()) == {1}
    assert all(isinstance(m, dict) and "users" in m for m in run.emitted)  # /raw items
    assert {e[0] for e in run.events} == {"connected"}  # after each poll
    run.close()
    # only ids a later window can return are remembered: those of seconds since its start
    assert run.source.read_until is not None
    start = run.source.read_until - 60
    assert set(run.source.emitted) <= {f"id:{i}" for i in emitted}
    assert all(second + 1 > start for second in run.source.emitted.values())


def test_datagrepper_down_then_back_is_a_disconnection_and_nothing_is_lost(
    dg: harness.Datagrepper, running: Any
) -> None:
    now = time.time()
    before = corpus_at([now - 10 + k for k in range(8)], seed=30)
    dg.add(before)
    session = Recording()
    run = running(DatagrepperSource(source_config(dg.url), session=session))
    run.wait_emitted(ids(before))

    stop_web(dg)
    lost = run.wait_event("disconnected")
    assert dg.url in run.events[lost][1]
    t = time.time()
    meanwhile = corpus_at([t - 3 + k * 0.1 for k in range(40)], seed=31)  # full pages
    dg.add(meanwhile)
    start_web(dg)
    back = run.wait_event("connected", lost)
    assert all(e[0] == "disconnected" for e in run.events[lost:back])

    after = corpus_at([time.time() - 2], seed=32)
    dg.add(after)
    run.wait_emitted(ids(meanwhile + after))
    polls_go_on(session)
    emitted = run.counts()
    assert set(emitted) == ids(before + meanwhile + after)
    assert set(emitted.values()) == {1}
    run.close()


def test_only_the_configured_categories(dg: harness.Datagrepper, running: Any) -> None:
    now = time.time()
    bodhi = corpus_at([now - 5 + k * 0.2 for k in range(15)], 40, "org.fedoraproject.prod.bodhi.x")
    copr = corpus_at([now - 4], 41, "org.fedoraproject.prod.copr.build.end")
    koji = corpus_at([now - 3], 42, "org.fedoraproject.prod.buildsys.build.state.change")
    dg.add(bodhi + copr + koji)
    session = Recording()
    config = source_config(dg.url, categories=["bodhi", "copr"])
    run = running(DatagrepperSource(config, session=session))
    run.wait_emitted(ids(bodhi + copr))
    polls_go_on(session)
    assert run.counts() == Counter(ids(bodhi + copr))
    run.close()


def test_far_behind_it_catches_up_in_bounded_windows(
    dg: harness.Datagrepper, running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock 100 s late, then right: the source is 100 s behind, as after an outage, and
    reads the way up in windows of CATCH_UP past the previous one (plus the overlap)."""
    monkeypatch.setattr(poll, "CATCH_UP", 10.0)
    now = time.time()
    never = corpus_at([now - 130], seed=60)  # before the first window
    sent = corpus_at([now - 115 + k for k in range(110)], seed=61)
    dg.add(never + sent)
    late = [100.0]
    session = Recording()
    source = DatagrepperSource(
        source_config(dg.url, overlap="20s"), session=session, clock=lambda: time.time() - late[0]
    )
    run = running(source)
    run.wait_event("connected")
    late[0] = 0.0
    run.wait_emitted(ids(sent))
    polls_go_on(session)
    assert run.counts() == Counter(ids(sent))
    assert max(b - a for a, b in session.windows) < 30
    run.close()


def test_stop_is_prompt_while_waiting_and_while_backing_off(
    dg: harness.Datagrepper, running: Any
) -> None:
    run = running(DatagrepperSource(source_config(dg.url, interval="1h")))
    run.wait_event("connected")
    run.close()  # waiting an hour for the next poll: returns at once

    nobody = f"http://127.0.0.1:{free_port()}"
    down = source_config(nobody, reconnect={"initial": "1h", "max": "1h"})
    run = running(DatagrepperSource(down))
    run.wait_event("disconnected")
    assert run.events[0][1].startswith(f"GET {nobody}/raw?start=")
    run.close()  # backing off for up to an hour: returns at once


# --- end to end: statscache-exporter run ---------------------------------------------------------


def store_by_category(store: Path) -> Counter[str]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(
            "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.metric = 'messages_by_category'"
        ).fetchall()
    finally:
        db.close()
    return Counter({json.loads(labels)["category"]: int(value) for labels, value in rows})


def test_the_exporter_counts_what_datagrepper_holds_exactly(
    tmp_path: Path, dg: harness.Datagrepper
) -> None:
    now = time.time()
    before = corpus_at([now - 300 + k * 1.5 for k in range(150)], seed=50)
    before += corpus_at([math.floor(now) - 60] * 45, seed=51)  # crowded: > rows_per_page
    dg.add(before)
    source = {
        "type": "datagrepper",
        "name": "dg",
        "url": dg.url,
        "interval": "200ms",
        "overlap": "10m",
        "rows_per_page": 20,
        "reconnect": {"initial": "100ms", "max": "1s"},
    }
    settings = {"sources": [source], "plugins": {"volume_by_category": {"enabled": True}}}
    sent = list(before)
    with exporter_process(tmp_path, [], settings=settings) as exporter:

        def stored() -> float:
            return exporter.samples().get(("statscache_messages_total", ()), 0)

        wait_for(lambda: stored() == len(sent), f"{len(sent)} messages stored", timeout=60)
        during = corpus_at([time.time() - 5 + k * 0.2 for k in range(30)], seed=52)
        dg.add(during)
        sent += during
        wait_for(lambda: stored() == len(sent), f"{len(sent)} messages stored", timeout=60)
        samples = exporter.samples()
        dg_source = (("source", "dg"),)
        assert samples[("statscache_exporter_source_connected", dg_source)] == 1
        assert samples[("statscache_exporter_messages_processed_total", dg_source)] == len(sent)
        assert samples.get(("statscache_exporter_messages_duplicate_total", dg_source), 0) == 0
        assert total(samples, "statscache_exporter_messages_rejected_total") == 0
    assert exporter.returncode == 0
    expected = Counter(messages.normalize(m).category for m in sent)
    assert store_by_category(exporter.store) == expected
