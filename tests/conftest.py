"""Shared fixtures: configs on a temporary store, and the corpus messages in bus shapes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statscache_exporter import config as configuration
from statscache_exporter.pipeline import Pipeline, open_pipeline
from statscache_exporter.plugin import Plugin, discover

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def make_config(store_path: Path, **sections: Any) -> configuration.Config:
    data: dict[str, Any] = {"store": {"path": str(store_path)}}
    for key, value in sections.items():
        if key == "store":
            data["store"].update(value)
        else:
            data[key] = value
    return configuration.from_dict(data)


def bundled() -> dict[str, type[Plugin]]:
    """The installed plugins minus third-party ones a developer may have in the venv."""
    return {i: c for i, c in discover().items() if c.__module__.startswith("statscache_plugins")}


def corpus_messages() -> list[dict[str, Any]]:
    """Every corpus message in its bus shape, in file order (fedmsg envelopes, fedora-messaging
    JSON forms, the datagrepper page's items)."""
    out = [json.loads(line)["envelope"] for line in (DATA / "fedmsg_envelopes.jsonl").open()]
    out += [json.loads(line)["message"] for line in (DATA / "fedora_messaging.jsonl").open()]
    out += json.loads((DATA / "datagrepper_raw_page_2017.json").read_text())["raw_messages"]
    return out


@pytest.fixture(scope="session")
def datagrepper_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real datagrepper (tests/datagrepper.py) for the whole run; each test module empties
    it with ``reset()`` as it needs (starting one costs a PostgreSQL cluster, ~3 s)."""
    import datagrepper as harness

    with harness.datagrepper_server(tmp_path_factory.mktemp("datagrepper")) as server:
        yield server


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Any]:
    """A factory of pipelines over one store file, closed at the end."""
    opened: list[Pipeline] = []

    def factory(
        name: str = "store.sqlite",
        plugins: dict[str, type[Plugin]] | None = None,
        clock: Any = None,
        plugins_config: dict[str, Any] | None = None,
        **sections: Any,
    ) -> Pipeline:
        """``plugins``: the plugin classes (default: the bundled ones); ``plugins_config``: the
        config's ``plugins:`` section; other keywords: other config sections."""
        if plugins_config is not None:
            sections["plugins"] = plugins_config
        cfg = make_config(tmp_path / name, **sections)
        pipeline = open_pipeline(cfg, plugins if plugins is not None else bundled())
        if clock is not None:
            pipeline.clock = clock
        opened.append(pipeline)
        return pipeline

    yield factory
    for p in opened:
        with contextlib.suppress(Exception):
            p.store.close()


def scaled_messages(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` messages cycling through the corpus's fedmsg envelopes and datagrepper items
    (those with a timestamp), each with a fresh id and a timestamp spread over a day."""
    import random

    rng = random.Random(seed)
    base = [
        m for m in corpus_messages() if "msg" in m and isinstance(m.get("timestamp"), int | float)
    ]
    start = 1_700_000_000
    out = []
    for i in range(n):
        m = dict(base[i % len(base)])
        m["msg_id"] = f"scaled-{seed}-{i}"
        m["timestamp"] = start + rng.randrange(86400)
        out.append(m)
    return out
