"""What the bundled plugins' tests share: their corpus messages (tests/data/plugins/, sources
named in each line), one plugin's emissions for one message, and a replay through a real
Pipeline into a store in file order or shuffled."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from statscache_exporter.message import normalize
from statscache_exporter.plugin import Output, Plugin

REPO = Path(__file__).parent.parent
DATA = REPO / "tests" / "data" / "plugins"
KEEP_ALL = {"1s": "forever", "1m": "forever", "1h": "forever", "1d": "forever"}
SEEDS = (1, 2, 3, 4)

#: one emission: (metric, labels as a dict, amount or value)
Emission = tuple[str, dict[str, str], float]


def messages(name: str) -> dict[str, dict[str, Any]]:
    """ref (fm:N, fms:N, dg:N, hw:...) → message in its bus shape, in file order."""
    out: dict[str, dict[str, Any]] = {}
    for line in (DATA / f"{name}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        out[entry["ref"]] = entry["message"]
    return out


def emitted(plugin: Plugin, raw: dict[str, Any]) -> list[Emission]:
    """What ``plugin`` emits for one message, in emission order."""
    out = Output(type(plugin).ident, {m.name: m for m in type(plugin).metrics})
    plugin.process(normalize(raw), out)
    return [(m.name, dict(zip(m.labels, labels, strict=True)), v) for m, labels, v in out.drain()]


def replay(
    open_store: Any,
    cls: type[Plugin],
    raws: list[dict[str, Any]],
    options: dict[str, Any] | None = None,
    seed: int | None = None,
    name: str = "store.sqlite",
) -> tuple[dict[str, Any], dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    """Feed ``raws`` (shuffled with ``seed`` if given, flushing every 5 messages then) through a
    Pipeline running only ``cls``; the store's dump and its totals as
    metric → {sorted label items → value}."""
    order = list(raws)
    settings: dict[str, Any] = {"store": {"retention": KEEP_ALL}}
    if seed is not None:
        random.Random(seed).shuffle(order)
        settings["store"]["max_batch"] = 5
    plugins_config = {cls.ident: {"options": options}} if options else None
    p = open_store(name, plugins={cls.ident: cls}, plugins_config=plugins_config, **settings)
    outcomes = Counter(p.handle(m) for m in order)
    p.flush()
    assert outcomes == {"processed": len(raws)}, outcomes
    assert not p.stats.plugin_errors, p.stats.plugin_errors
    dump = p.store.dump()
    totals: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for metric, labels, value, _ts, _msg_id in dump["totals"]:
        totals.setdefault(metric, {})[tuple(sorted(json.loads(labels).items()))] = value
    return dump, totals


def series(**labels: str) -> tuple[tuple[str, str], ...]:
    """A series key as :func:`replay` returns them."""
    return tuple(sorted(labels.items()))


def sample_plugins(package: str, available: dict[str, type[Plugin]]) -> list[Plugin]:
    """The plugins that plugins/<package>/sample.yaml enables, built by the exporter's own config
    loader (so every key and option in the sample is checked)."""
    import yaml

    from statscache_exporter import config as configuration
    from statscache_exporter.pipeline import enabled_plugins

    sample = yaml.safe_load((REPO / "plugins" / package / "sample.yaml").read_text())
    assert set(sample) == {"plugins"}, sample
    cfg = configuration.from_dict({"plugins": sample["plugins"]})
    return enabled_plugins(cfg, available)
