"""The exporter inside a real ``fedmsg-hub``: the consumer found through its ``moksha.consumer``
entry point, configured by a ``fedmsg.d/`` directory in the hub's working directory, fed by a
fedmsg publisher on loopback; the store holds exact counts after the hub is stopped with
SIGTERM (which moksha alone would not turn into a clean stop) or SIGINT."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import make_config, scaled_messages
from servers import (
    _stop,
    _tail,
    free_port,
    http_get,
    missing,
    parse_text,
    require_binary,
    total,
    wait_until,
)
from test_source_zmq import Publisher, envelopes, expected_counts, store_by_category

from statscache_exporter.message import normalize

ENTRY_POINT = "statscache_exporter.sources.hub:StatscacheConsumer"


def fedmsg_hub() -> str:
    """The ``fedmsg-hub`` beside this Python (fedmsg installs it), else one on the PATH."""
    if importlib.util.find_spec("moksha.hub") is None:
        missing("moksha.hub is not installed: fedmsg-hub needs pip install 'fedmsg[consumers]'")
    beside = Path(sys.executable).parent / "fedmsg-hub"
    return str(beside) if os.access(beside, os.X_OK) else require_binary("fedmsg-hub")


@pytest.fixture(scope="module")
def consumer_entry_point(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a process that must find the consumer's entry point. The exporter's
    own distribution declares it; when the installed one predates that, a one-line
    distribution that declares only the entry point is installed with pip into a folder of its
    own and put on PYTHONPATH (never both: the hub would run the consumer twice)."""
    if any(e.value == ENTRY_POINT for e in entry_points(group="moksha.consumer")):
        return {}
    tmp_path = tmp_path_factory.mktemp("entry_point")
    source = tmp_path / "dist"
    source.mkdir()
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68", "wheel"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "statscache-exporter-hub-consumer"\nversion = "0"\n\n'
        '[project.entry-points."moksha.consumer"]\n'
        f'statscache_exporter = "{ENTRY_POINT}"\n\n'
        "[tool.setuptools]\npackages = []\n"
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return {"PYTHONPATH": str(target)}


def write_fedmsg_d(home: Path, endpoint: str, exporter_config: Path) -> None:
    """fedmsg's configuration, as fedmsg-hub reads it from ./fedmsg.d/*.py."""
    config = {
        "zmq_enabled": True,
        "endpoints": {"test-publisher": [endpoint]},
        "validate_signatures": False,
        "sign_messages": False,
        "statscache_exporter.consumer.enabled": True,
        "statscache_exporter.config": str(exporter_config),
        "moksha.workers_per_consumer": 2,
        "logging": {
            "version": 1,
            "formatters": {"bare": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {
                "console": {
                    "class": "logging.StreamHandler",
                    "formatter": "bare",
                    "stream": "ext://sys.stderr",
                }
            },
            "loggers": {
                name: {"level": "INFO", "propagate": False, "handlers": ["console"]}
                for name in ("fedmsg", "moksha", "statscache_exporter")
            },
        },
    }
    (home / "fedmsg.d").mkdir(parents=True)
    (home / "fedmsg.d" / "statscache.py").write_text(f"config = {config!r}\n")


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher()
    yield pub
    pub.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_fedmsg_hub_runs_the_exporter_and_counts_exactly(
    tmp_path: Path,
    publisher: Publisher,
    consumer_entry_point: dict[str, str],
    signum: signal.Signals,
) -> None:
    """Messages go in; the hub is stopped with ``signum`` once the pipeline has them all but
    probably before its 3 s flush timer stored them: the final flush must, and the process
    must stop although the publisher has gone quiet."""
    binary = fedmsg_hub()
    home = tmp_path / "hub"
    store = home / "store.sqlite"
    port = free_port()
    exporter_config = home / "config.yaml"
    write_fedmsg_d(home, publisher.endpoint, exporter_config)
    exporter_config.write_text(
        json.dumps(  # JSON is YAML
            {
                "store": {"path": str(store), "flush_interval": "3s"},
                "http": {"enabled": True, "address": "127.0.0.1", "port": port},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "FEDMSG_CONFIG")}
    env.update(consumer_entry_point, HOME=str(home))  # no ~/.fedmsg.d of the developer's
    sent = envelopes()
    # what is not JSON reaches consumers wrapped as {"topic", "msg": text} by fedmsg
    garbage = (b"org.fedoraproject.prod.x.y", b"not json")
    by_category, processed, duplicates, rejected = expected_counts(sent)
    rejected["bad_body"] += 1
    log = home / "hub.log"
    with log.open("wb") as out:
        hub = subprocess.Popen(
            [binary], cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        publisher.wait_subscribed("", timeout=60)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(f"{url}/healthz", timeout=2).status, lambda s: s == 200, url)
        for envelope in sent:
            publisher.send(envelope)
        publisher.send_frames(*garbage)
        n = len(sent) + 1

        def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            if hub.poll() is not None:
                pytest.fail(f"fedmsg-hub exited {hub.returncode}:\n{_tail(log)}")
            return parse_text(http_get(f"{url}/metrics").body.decode())

        s = wait_until(
            samples,
            lambda s: total(s, "statscache_exporter_messages_received_total") == n,
            f"the exporter in fedmsg-hub to receive {n} messages",
            timeout=60,
        )
        source = (("source", "fedmsg-hub"),)
        assert s[("statscache_exporter_messages_received_total", source)] == n
        assert s[("statscache_exporter_messages_processed_total", source)] == processed
        assert s[("statscache_exporter_messages_duplicate_total", source)] == duplicates
        assert {
            dict(labels)["reason"]: int(v)
            for (name, labels), v in s.items()
            if name == "statscache_exporter_messages_rejected_total" and v
        } == rejected
        assert s[("statscache_exporter_source_connected", source)] == 1
        code = _stop(hub, signum, timeout=30)
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait(timeout=10)
    output = _tail(log, 20000)
    assert code == 0, output
    assert f"received {signum.name}, stopping fedmsg-hub" in output
    assert "stopped after a final flush" in output
    assert store_by_category(store) == by_category
    db = sqlite3.connect(store)
    try:
        assert db.execute("SELECT count(*) FROM seen").fetchone() == (processed,)
    finally:
        db.close()


def test_a_disabled_consumer_runs_nothing(tmp_path: Path) -> None:
    if importlib.util.find_spec("moksha.hub") is None:
        missing("moksha.hub is not installed: pip install 'fedmsg[consumers]'")
    from statscache_exporter.sources.hub import StatscacheConsumer

    hub = SimpleNamespace(config={"statscache_exporter.config": str(tmp_path / "missing.yaml")})
    consumer = StatscacheConsumer(hub)
    assert consumer.exporter is None and not getattr(consumer, "_initialized", False)
    consumer.stop()


def test_a_bad_exporter_config_fails_the_consumer(tmp_path: Path) -> None:
    if importlib.util.find_spec("moksha.hub") is None:
        missing("moksha.hub is not installed: pip install 'fedmsg[consumers]'")
    from statscache_exporter.config import ConfigError
    from statscache_exporter.sources.hub import StatscacheConsumer

    bad = tmp_path / "config.yaml"
    bad.write_text("store: {flush_interval: -1s}\n")
    hub = SimpleNamespace(
        config={
            "statscache_exporter.consumer.enabled": True,
            "statscache_exporter.config": str(bad),
        }
    )
    with pytest.raises(ConfigError, match=r"store\.flush_interval"):
        StatscacheConsumer(hub)


def test_in_fedmsg_hub_the_gap_filler_fetches_what_was_missed_before_the_start(
    tmp_path: Path, datagrepper_session: Any
) -> None:
    """The hub's messages come from a source the config does not name; it is live all the
    same: with backfill on, what datagrepper holds from before the start is counted."""
    if importlib.util.find_spec("moksha.hub") is None:
        missing("moksha.hub is not installed: pip install 'fedmsg[consumers]'")
    from statscache_exporter.sources.hub import ExporterThread

    dg = datagrepper_session
    dg.reset()
    now = time.time()
    sent = scaled_messages(60, seed=23)
    for k, m in enumerate(sent):
        m["timestamp"] = round(now - 3000 + 40 * k, 3)
    assert dg.add(sent) == 60
    store = tmp_path / "store.sqlite"
    config = make_config(
        store,
        http={"enabled": False},
        backfill={"url": dg.url, "initial_backfill": "1h", "window": "10m", "overlap": "1m"},
    )
    exporter = ExporterThread(config)
    exporter.start()
    try:
        daemon = exporter.daemon
        assert daemon is not None and daemon.filler is not None
        filler = daemon.filler
        wait_until(filler.idle, bool, "the gap filler to catch up", timeout=60)
        assert filler.backfill.stats.messages == 60
    finally:
        exporter.stop()
    db = sqlite3.connect(store)
    try:
        assert db.execute("SELECT count(*) FROM seen").fetchone() == (60,)
    finally:
        db.close()
    assert store_by_category(store) == Counter(normalize(m).category for m in sent)
