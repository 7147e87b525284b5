"""The plugin API: declarations checked at load, emissions checked at emit, discovery through
entry points, and a third-party plugin installed with pip that works without exporter changes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, bundled
from test_plugins_bundled import BUNDLED

from statscache_exporter.message import Message
from statscache_exporter.plugin import (
    Counter,
    EmitError,
    Gauge,
    Output,
    Plugin,
    PluginError,
    check_unique_metrics,
    discover,
    validate_class,
)


def plugin_class(**attrs: Any) -> type[Plugin]:
    base: dict[str, Any] = {
        "ident": "good",
        "name": "Good",
        "summary": "a plugin",
        "metrics": (Counter("good_things", "things", ("kind",)),),
        "process": lambda self, message, out: None,
    }
    base.update(attrs)
    return type("P", (Plugin,), base)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"ident": "Bad-Ident"}, "ident 'Bad-Ident' must match"),
        ({"ident": "p\n"}, "ident 'p\\n' must match"),
        ({"summary": None}, "summary must be a string"),
        ({"metrics": ()}, "metrics must be a non-empty tuple"),
        ({"metrics": ("x",)}, "is not a Counter() or Gauge()"),
        ({"metrics": (Counter("Bad Name", "x"),)}, "metric name 'Bad Name'"),
        ({"metrics": (Counter("name\n", "x"),)}, "metric name 'name\\n'"),
        ({"metrics": (Counter("things_total", "x"),)}, "not end in _total"),
        ({"metrics": (Counter("a", "x"), Gauge("a", "y"))}, "metric 'a' is declared twice"),
        ({"metrics": (Counter("a", "x", ("k", "k")),)}, "repeats a label name"),
        ({"metrics": (Counter("a", "x", ("instance",)),)}, "label 'instance' of 'a'"),
        ({"metrics": (Counter("a", "x", ("Bad",)),)}, "label 'Bad' of 'a'"),
        ({"metrics": (Counter("a", "x", ("k\n",)),)}, "label 'k\\n' of 'a'"),
        ({"Options": dict}, "Options must be a dataclass"),
        ({"backlog_delta": 3600}, "backlog_delta must be a timedelta"),
    ],
)
def test_bad_declarations_are_errors_naming_the_plugin(attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError) as exc:
        validate_class(plugin_class(**attrs), "entry point x = y:Z")
    assert message in str(exc.value)
    assert "entry point x = y:Z" in str(exc.value)


def test_a_plugin_must_implement_process() -> None:
    cls = type(
        "P", (Plugin,), {"ident": "p", "name": "P", "summary": "s", "metrics": (Counter("a", "b"),)}
    )
    with pytest.raises(PluginError, match=r"plugin 'p' .* does not implement process"):
        validate_class(cls, "here")


def test_not_a_plugin_class() -> None:
    with pytest.raises(PluginError, match="is not a subclass"):
        validate_class(object, "entry point e = m:object")


def test_two_plugins_declaring_one_metric_name_is_an_error() -> None:
    a = plugin_class(ident="a")
    b = plugin_class(ident="b")
    with pytest.raises(
        PluginError, match="metric 'good_things' is declared by both plugin 'a' and plugin 'b'"
    ):
        check_unique_metrics([a, b])


@pytest.mark.parametrize(
    ("emit", "message"),
    [
        (
            lambda o: o.inc("nope"),
            "emitted undeclared metric 'nope'; it declares ['count', 'level']",
        ),
        (lambda o: o.inc("count"), "takes labels ['kind'], got []"),
        (
            lambda o: o.inc("count", kind="a", extra="b"),
            "takes labels ['kind'], got ['extra', 'kind']",
        ),
        (
            lambda o: o.inc("count", kind=None),
            "label 'kind' of 'count' must be a string, got NoneType",
        ),
        (lambda o: o.inc("count", 1.5, kind="a"), "takes a whole number ≥ 0, got 1.5"),
        (lambda o: o.inc("count", -1, kind="a"), "takes a whole number ≥ 0, got -1"),
        (lambda o: o.inc("count", True, kind="a"), "takes a whole number ≥ 0, got True"),
        (lambda o: o.inc("level"), "'level' is a gauge, inc() is for counters"),
        (lambda o: o.set("count", 1, kind="a"), "'count' is a counter, set() is for gauges"),
        (lambda o: o.set("level", "high"), "gauge 'level' takes a number, got 'high'"),
        (lambda o: o.set("level", float("nan")), "gauge 'level' takes a number, got nan"),
    ],
)
def test_emissions_are_checked_against_the_declarations(emit: Any, message: str) -> None:
    metrics = {"count": Counter("count", "c", ("kind",)), "level": Gauge("level", "l")}
    out = Output("myplugin", metrics)
    with pytest.raises(EmitError) as exc:
        emit(out)
    assert str(exc.value).startswith("plugin 'myplugin'")
    assert message in str(exc.value)
    assert out.drain() == []


def test_valid_emissions_come_out_in_declared_label_order() -> None:
    metrics = {"c": Counter("c", "c", ("b", "a")), "g": Gauge("g", "g")}
    out = Output("p", metrics)
    out.inc("c", a="1", b="2")
    out.inc("c", 3, b="x", a="y")
    out.set("g", 7)
    assert out.drain() == [
        (metrics["c"], ("2", "1"), 1),
        (metrics["c"], ("x", "y"), 3),
        (metrics["g"], (), 7.0),
    ]
    assert out.drain() == []


def test_discovery_finds_the_bundled_plugins_through_entry_points() -> None:
    found = bundled()
    assert sorted(found) == sorted(BUNDLED)
    for ident, cls in found.items():
        assert cls.ident == ident
        assert cls.__module__.startswith("statscache_plugins.")


def test_an_entry_point_may_name_an_iterable_of_classes() -> None:
    ep = EntryPoint(
        name="several", value="statscache_plugins.volume:__dict__", group="statscache.plugin"
    )
    # a module-level tuple is what statscache allowed; build one through a real module attribute
    import statscache_plugins.volume as volume

    volume.ALL = (volume.Volume, volume.VolumeByTopic)  # type: ignore[attr-defined]
    try:
        ep = EntryPoint(
            name="several", value="statscache_plugins.volume:ALL", group="statscache.plugin"
        )
        assert sorted(discover([ep])) == ["volume", "volume_by_topic"]
    finally:
        del volume.ALL  # type: ignore[attr-defined]


def test_a_broken_entry_point_is_an_error_naming_it() -> None:
    ep = EntryPoint(name="broken", value="no_such_module_xyz:Plugin", group="statscache.plugin")
    with pytest.raises(
        PluginError, match="entry point broken = no_such_module_xyz:Plugin: cannot be loaded"
    ):
        discover([ep])


def test_two_plugins_with_one_ident_is_an_error() -> None:
    eps = [
        EntryPoint(name="a", value="statscache_plugins.volume:Volume", group="statscache.plugin"),
        EntryPoint(name="b", value="tests_dupe_ident:Volume", group="statscache.plugin"),
    ]
    sys.modules["tests_dupe_ident"] = type(sys)("tests_dupe_ident")
    sys.modules["tests_dupe_ident"].Volume = plugin_class(ident="volume")  # type: ignore[attr-defined]
    try:
        with pytest.raises(PluginError, match="plugin ident 'volume' is provided by both"):
            discover(eps)
    finally:
        del sys.modules["tests_dupe_ident"]


def test_volume_by_user_counts_each_user_once_per_message() -> None:
    from statscache_plugins.volume import VolumeByUser

    from statscache_exporter.message import normalize

    m: Message = normalize(
        {
            "topic": "a.prod.b.c",
            "msg": {},
            "timestamp": 1,
            "msg_id": "x",
            "users": ["bob", "al", "bob"],
        }
    )
    plugin = VolumeByUser()
    out = Output(plugin.ident, {x.name: x for x in plugin.metrics})
    plugin.process(m, out)
    assert [labels for _, labels, _ in out.drain()] == [("al",), ("bob",)]


# --- a third-party plugin, installed with pip ------------------------------------------------


def test_a_pip_installed_third_party_plugin_is_found_and_works(tmp_path: Path) -> None:
    """tests/example_plugin is a separate distribution. pip installs it into its own folder
    (beside, not into, the exporter's environment); the exporter finds it through its entry
    point with no change to the exporter's code."""
    target = tmp_path / "site"
    source = tmp_path / "example_plugin"  # pip builds in the source folder: not in the repo's
    shutil.copytree(REPO / "tests" / "example_plugin", source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    store = tmp_path / "store.sqlite"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"store:\n  path: {store}\nplugins:\n  bodhi_comments:\n"
        "    options: {count_bodhi: false}\nlogging: {level: ERROR}\n"
    )
    listing = subprocess.run(
        [sys.executable, "-m", "statscache_exporter", "plugins", "--json", "--config", str(cfg)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    idents = {p["ident"] for p in json.loads(listing.stdout)}
    assert "bodhi_comments" in idents and "volume" in idents
    subprocess.run(
        [
            sys.executable,
            "-m",
            "statscache_exporter",
            "replay",
            "--config",
            str(cfg),
            str(REPO / "examples" / "corpus.jsonl.gz"),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    db = sqlite3.connect(store)
    rows = dict(
        db.execute(
            "SELECT s.labels, t.value FROM totals t JOIN series s ON s.id = t.series "
            "WHERE s.metric = 'example_bodhi_comments'"
        )
    )
    # The corpus's bodhi comments, by author, read from tests/data by hand: ralph twice (a
    # fedmsg-era author, and user.name in the bodhi-messages test body), kalev (bodhi 3.x),
    # hreindl twice and volter (bodhi 0.x).
    assert rows == {
        '{"user":"ralph"}': 2,
        '{"user":"kalev"}': 1,
        '{"user":"hreindl"}': 2,
        '{"user":"volter"}': 1,
    }
    # a bad option of the third-party plugin is a config error naming its path
    cfg.write_text(
        f"store:\n  path: {store}\nplugins:\n  bodhi_comments:\n    options: {{count_bodhi: 3}}\n"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "statscache_exporter", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "plugins.bodhi_comments.options.count_bodhi: expected true or false" in bad.stderr


def test_a_label_value_that_is_not_valid_unicode_is_an_emit_error() -> None:
    out = Output("p", {"c": Counter("c", "c", ("user",))})
    with pytest.raises(EmitError, match="label 'user' of 'c' is not valid Unicode"):
        out.inc("c", user="x\ud800")
    out.inc("c", user="ünïcødé☃")
    assert out.drain() == [(Counter("c", "c", ("user",)), ("ünïcødé☃",), 1)]
