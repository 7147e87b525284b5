"""statscache_exporter.config: loading, validation errors, durations, env, showing.

Also keeps ``config.yaml`` (the documented example of every key) in step with the schema.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
import yaml
from test_plugins_bundled import BUNDLED as BUNDLED_METRICS

from statscache_exporter import config
from statscache_exporter.config import (
    SOURCE_TYPES,
    Config,
    ConfigError,
    FedoraMessagingSourceConfig,
    LoggingConfig,
    PluginConfig,
    ReplaySourceConfig,
    StoreConfig,
    config_path,
    format_duration,
    from_dict,
    load,
    parse_duration,
    to_plain,
)
from statscache_exporter.message import Message
from statscache_exporter.pipeline import enabled_plugins
from statscache_exporter.plugin import Counter, Output, Plugin, PluginError, discover

REPO = Path(__file__).resolve().parent.parent
CONFIG_YAML = REPO / "config.yaml"
BUNDLED = set(BUNDLED_METRICS)


# --- helpers -------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str, *, store: bool = True) -> Path:
    """A config file in tmp_path; ``store.path`` is pointed into tmp_path unless given."""
    data = yaml.safe_load(text) if text.strip() else None
    if store and isinstance(data, dict):
        section = data.setdefault("store", {})
        if isinstance(section, dict):
            section.setdefault("path", str(tmp_path / "store.sqlite"))
        text = yaml.safe_dump(data, sort_keys=False)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(data: Any) -> str:
    """The message of the ConfigError that ``from_dict(data)`` raises."""
    with pytest.raises(ConfigError) as exc_info:
        from_dict(data)
    return str(exc_info.value)


def yaml_text() -> str:
    return CONFIG_YAML.read_text(encoding="utf-8")


def comment_above(text: str, key_line: str) -> str:
    """The block of ``#`` comment lines directly above the (first) line matching ``key_line``."""
    lines = text.splitlines()
    pattern = re.compile(key_line)
    for i, line in enumerate(lines):
        if pattern.match(line):
            block: list[str] = []
            j = i - 1
            while j >= 0 and lines[j].lstrip().startswith("#"):
                block.insert(0, lines[j].lstrip()[1:].strip())
                j -= 1
            return "\n".join(block)
    raise AssertionError(f"no line matching {key_line!r} in config.yaml")


def nested_comment(text: str, section: str, key: str) -> str:
    """The comment above ``key`` inside the top-level ``section`` of config.yaml."""
    lines = text.splitlines()
    start = lines.index(f"{section}:")
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^[a-z_]+:", lines[i])),
        len(lines),
    )
    return comment_above("\n".join(lines[start:end]), rf"^\s+{re.escape(key)}:")


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def schema_mismatches(cls: Any, node: Any, path: str, text: str) -> list[str]:
    """Where the YAML ``node`` and the dataclass ``cls`` disagree on key names."""
    if not isinstance(node, dict):
        return [f"{path or '(top level)'}: expected a mapping in config.yaml"]
    problems: list[str] = []
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in node:
        if key not in names:
            problems.append(f"{path}.{key}".lstrip(".") + ": in config.yaml, not in the schema")
    for name in names:
        where = f"{path}.{name}".lstrip(".")
        if name not in node:
            problems.append(f"{where}: in the schema, missing from config.yaml")
            continue
        tp, value = hints[name], node[name]
        origin, args = get_origin(tp), get_args(tp)
        if is_dataclass_type(tp):
            problems += schema_mismatches(tp, value, where, text)
        elif origin is tuple and args and is_dataclass_type(args[0]):
            if not isinstance(value, list) or not value:
                problems.append(f"{where}: expected a non-empty list in config.yaml")
                continue
            for i, item in enumerate(value):
                kind = SOURCE_TYPES.get(item.get("type")) if isinstance(item, dict) else None
                problems += schema_mismatches(kind or args[0], item, f"{where}[{i}]", text)
        elif origin is dict and is_dataclass_type(args[1]):
            entry_fields = [f.name for f in dataclasses.fields(args[1])]
            documented = comment_above(text, rf"^{re.escape(name)}:")
            for ident, entry in (value or {}).items():
                for key in entry or {}:
                    if key not in entry_fields:
                        problems.append(f"{where}.{ident}.{key}: not a {args[1].__name__} field")
            for fname in entry_fields:
                if not re.search(rf"\b{re.escape(fname)}:", documented):
                    problems.append(f"{where}.<name>.{fname}: not documented above {name}:")
    return problems


# --- config.yaml and the schema ------------------------------------------------------------


def test_config_yaml_loads() -> None:
    cfg = load(CONFIG_YAML)
    assert isinstance(cfg, Config)
    assert cfg.sources == (
        FedoraMessagingSourceConfig(
            type="fedora-messaging", name="fedora", profile="fedora-public"
        ),
        ReplaySourceConfig(type="replay", paths=("examples/corpus.jsonl.gz",), name="demo"),
    )
    assert set(cfg.plugins) == BUNDLED
    assert all(p == PluginConfig(enabled=True) for p in cfg.plugins.values())


def test_config_yaml_has_every_schema_key_and_nothing_else() -> None:
    text = yaml_text()
    problems = schema_mismatches(Config, yaml.safe_load(text), "", text)
    assert problems == []


def test_config_yaml_plugins_comment_documents_plugin_config() -> None:
    block = comment_above(yaml_text(), r"^plugins:")
    for name in ("enabled", "backlog_delta", "options"):
        assert f"{name}:" in block
    entries = yaml.safe_load(yaml_text())["plugins"]
    assert all(set(entry) == {"enabled"} for entry in entries.values())


def test_config_yaml_sources_comment_documents_every_source_type() -> None:
    block = comment_above(yaml_text(), r"^sources:")
    for kind, cls in SOURCE_TYPES.items():
        assert f"type: {kind}" in block
        for f in dataclasses.fields(cls):
            if f.name != "type":
                assert f"`{f.name}`" in block, f"{kind}.{f.name} undocumented"


@pytest.mark.parametrize("section", ["store", "aggregation", "messages", "logging"])
def test_config_yaml_shows_the_defaults(section: str) -> None:
    assert to_plain(load(CONFIG_YAML))[section] == to_plain(Config())[section]


def test_config_yaml_plugin_entries_are_the_defaults() -> None:
    assert all(p == PluginConfig() for p in load(CONFIG_YAML).plugins.values())


def literal_fields(cls: Any, path: str = "") -> list[tuple[str, str, tuple[str, ...]]]:
    """(section, key, choices) of every Literal field below ``cls`` (one level of nesting)."""
    found: list[tuple[str, str, tuple[str, ...]]] = []
    for name, tp in get_type_hints(cls).items():
        if is_dataclass_type(tp) and not path:
            found += literal_fields(tp, name)
        elif get_origin(tp) is Literal and path:
            found.append((path, name, get_args(tp)))
    return found


@pytest.mark.parametrize(
    ("section", "key", "choices"), literal_fields(Config), ids=lambda v: str(v)
)
def test_config_yaml_comment_lists_every_choice(
    section: str, key: str, choices: tuple[str, ...]
) -> None:
    comment = nested_comment(yaml_text(), section, key)
    for choice in choices:
        assert re.search(rf"\b{re.escape(choice)}\b", comment), f"{section}.{key}: {choice}"


def test_literal_fields_found() -> None:
    keys = {(s, k) for s, k, _ in literal_fields(Config)}
    assert keys == {
        ("store", "synchronous"),
        ("influxdb", "mode"),
        ("logging", "level"),
        ("logging", "format"),
    }


# --- loading -------------------------------------------------------------------------------


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load(path) == Config()
    path.write_text("# only a comment\n", encoding="utf-8")
    assert load(path) == Config()


def test_defaults() -> None:
    cfg = Config()
    assert cfg.store.flush_interval == timedelta(seconds=1)
    assert cfg.store.dedup_window == timedelta(hours=48)
    assert cfg.resolutions() == (1, 60, 3600, 86400)
    assert cfg.retention_seconds() == {1: 172800.0, 60: 2592000.0, 3600: 34560000.0, 86400: None}


def test_a_full_config_converts_every_type(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
store:
  flush_interval: 500ms
  max_batch: 10
  dedup_window: 2
  synchronous: normal
  retention: {1s: 1h, 1m: forever}
aggregation:
  interval: 1s
  resolutions: [1m, 5m]
messages:
  environments: [prod]
  schemas: false
  max_clock_skew: 90s
sources:
  - {type: replay, paths: [a.jsonl, b.jsonl.gz]}
plugins:
  volume: {enabled: false, backlog_delta: 7d}
  volume_by_user: {backlog_delta: forever}
logging: {level: DEBUG, format: json}
""",
    )
    cfg = load(path)
    assert cfg.store == StoreConfig(
        path=str(tmp_path / "store.sqlite"),
        flush_interval=timedelta(milliseconds=500),
        max_batch=10,
        dedup_window=timedelta(seconds=2),
        synchronous="normal",
        retention={"1s": timedelta(hours=1), "1m": None},
    )
    assert cfg.aggregation.resolutions == (timedelta(minutes=1), timedelta(minutes=5))
    assert cfg.messages.environments == ("prod",)
    assert cfg.messages.schemas is False
    assert cfg.messages.max_clock_skew == timedelta(seconds=90)
    # an unnamed source gets its type and position as its name
    assert cfg.sources == (ReplaySourceConfig("replay", ("a.jsonl", "b.jsonl.gz"), "replay0"),)
    assert cfg.plugins == {
        "volume": PluginConfig(enabled=False, backlog_delta=timedelta(days=7)),
        "volume_by_user": PluginConfig(enabled=True, backlog_delta=None),
    }
    assert cfg.logging == LoggingConfig(level="DEBUG", format="json")
    assert cfg.resolutions() == (1, 60, 300)
    # 5m is not in retention: kept forever
    assert cfg.retention_seconds() == {1: 3600.0, 60: None, 300: None}


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc_info:
        load(missing)
    assert str(exc_info.value) == f"{missing}: cannot read config file: No such file or directory"


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("store:\n  path: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    assert str(exc_info.value).startswith(f"{path}: not valid YAML: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- store\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^\(top level\): expected a mapping, got a list$"):
        load(path)


# --- errors name the path ------------------------------------------------------------------


def test_unknown_top_level_key_lists_valid_keys() -> None:
    message = config_error({"stroe": {}})
    assert message == (
        "stroe: unknown key; valid keys: store, aggregation, messages, sources, plugins, http, "
        "prometheus, influxdb, backfill, datanommer, logging"
    )


def test_unknown_nested_key() -> None:
    message = config_error({"store": {"pth": "x"}})
    assert message.startswith("store.pth: unknown key; valid keys: ")
    for key in ("path", "flush_interval", "max_batch", "dedup_window", "synchronous", "retention"):
        assert key in message.split("valid keys: ")[1].split(", ")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"store": {"max_batch": "x"}},
            "store.max_batch: expected a whole number, got a string ('x')",
        ),
        (
            {"store": {"max_batch": True}},
            "store.max_batch: expected a whole number, got a boolean (True)",
        ),
        (
            {"store": {"max_batch": 1.5}},
            "store.max_batch: expected a whole number, got a number (1.5)",
        ),
        (
            {"messages": {"schemas": "yes"}},
            "messages.schemas: expected true or false, got a string ('yes')",
        ),
        ({"store": {"path": 5}}, "store.path: expected a string, got a number (5)"),
        (
            {"prometheus": {"prefix": "statscache_\n"}},
            "prometheus.prefix: 'statscache_\\n' must match ^([a-zA-Z_][a-zA-Z0-9_]*)?$",
        ),
        ({"store": {"path": None}}, "store.path: expected a string, got nothing (null)"),
        ({"store": "x"}, "store: expected a mapping, got a string ('x')"),
        ({"plugins": []}, "plugins: expected a mapping, got a list"),
        ({"sources": {"type": "replay"}}, "sources: expected a list, got a mapping"),
        (
            {"aggregation": {"resolutions": "1m"}},
            "aggregation.resolutions: expected a list, got a string ('1m')",
        ),
        (
            {"messages": {"environments": ["prod", 3]}},
            "messages.environments[1]: expected a string, got a number (3)",
        ),
        (
            {"sources": [{"type": "replay", "paths": "a.jsonl"}]},
            "sources[0].paths: expected a list, got a string ('a.jsonl')",
        ),
        (
            {"sources": ["replay"]},
            "sources[0]: expected a mapping with a 'type', got a string ('replay')",
        ),
        (
            {"plugins": {"volume": {"options": []}}},
            "plugins.volume.options: expected a mapping, got a list",
        ),
        (
            {"plugins": {"volume": {"enabled": "no"}}},
            "plugins.volume.enabled: expected true or false, got a string ('no')",
        ),
        ({"store": {"max_batch": 0}}, "store.max_batch: must be at least 1"),
        ({"store": {"flush_interval": 0}}, "store.flush_interval: must be more than 0"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_wrong_type_names_the_path(data: dict[str, Any], expected: str) -> None:
    assert config_error(data) == expected


def test_bad_duration() -> None:
    assert config_error({"store": {"flush_interval": "5 parsecs"}}) == (
        "store.flush_interval: '5 parsecs' is not a duration; "
        "write e.g. 500ms, 1s, 5m, 48h, 7d, 2w or seconds"
    )


@pytest.mark.parametrize("value", [-5, -0.5])
def test_negative_duration(value: float) -> None:
    message = config_error({"store": {"dedup_window": value}})
    assert message == "store.dedup_window: a duration cannot be negative"


def test_negative_duration_string_names_the_path() -> None:
    assert config_error({"messages": {"max_clock_skew": "-5s"}}).startswith(
        "messages.max_clock_skew: '-5s' is not a duration"
    )


def test_boolean_is_not_a_duration() -> None:
    assert config_error({"store": {"flush_interval": True}}) == (
        "store.flush_interval: expected a duration such as 1s, 5m, 48h, got True"
    )


def test_bad_duration_in_a_list_and_a_mapping() -> None:
    assert config_error({"aggregation": {"resolutions": ["1m", "1 hour"]}}).startswith(
        "aggregation.resolutions[1]: '1 hour' is not a duration"
    )
    assert config_error({"store": {"retention": {"1m": "a month"}}}).startswith(
        "store.retention.1m: 'a month' is not a duration"
    )


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**15, "99999999999w"], ids=repr)
def test_out_of_range_duration_is_a_config_error(value: Any) -> None:
    # A duration beyond what timedelta holds must still be a ConfigError naming the path,
    # not an OverflowError / bare ValueError escaping from timedelta().
    with pytest.raises(ConfigError) as exc_info:
        from_dict({"store": {"dedup_window": value}})
    assert str(exc_info.value).startswith("store.dedup_window: ")


def test_literal_choice_lists_valid_values() -> None:
    assert config_error({"logging": {"level": "LOUD"}}) == (
        "logging.level: 'LOUD' is not a valid choice; valid: DEBUG, INFO, WARNING, ERROR"
    )
    assert config_error({"logging": {"format": "xml"}}) == (
        "logging.format: 'xml' is not a valid choice; valid: text, json"
    )
    assert config_error({"store": {"synchronous": "off"}}) == (
        "store.synchronous: 'off' is not a valid choice; valid: normal, full"
    )


def test_unknown_source_type_lists_valid_types() -> None:
    message = config_error({"sources": [{"type": "kafka", "paths": ["x"]}]})
    assert (
        message
        == f"sources[0].type: 'kafka' is not a source type; valid: {', '.join(SOURCE_TYPES)}"
    )
    assert "replay" in message


def test_source_without_type() -> None:
    assert config_error({"sources": [{"paths": ["x"]}]}) == (
        "sources[0].type: None is not a source type; valid: replay, fedora-messaging, fedmsg, "
        "datagrepper"
    )


def test_source_missing_paths() -> None:
    message = config_error({"sources": [{"type": "replay", "paths": ["a"]}, {"type": "replay"}]})
    assert message.startswith("sources[1].paths: required")
    assert config_error({"sources": [{"type": "replay"}]}).startswith("sources[0].paths: required")


def test_unknown_source_key() -> None:
    message = config_error({"sources": [{"type": "replay", "paths": ["a"], "path": "b"}]})
    assert message == "sources[0].path: unknown key; valid keys: type, paths, name"


def test_retention_key_must_be_a_resolution() -> None:
    message = config_error({"store": {"retention": {"5m": "1d"}}})
    assert message.startswith("store.retention.5m: not a configured resolution; valid: ")
    for valid in ("1s", "1m", "1h", "1d"):
        assert f"'{valid}'" in message


def test_retention_key_spelled_differently_is_the_same_resolution() -> None:
    cfg = from_dict({"store": {"retention": {"60s": "1d", "24h": "forever"}}})
    assert cfg.retention_seconds() == {1: None, 60: 86400.0, 3600: None, 86400: None}


def test_retention_key_in_seconds() -> None:
    # Durations may be written as a number of seconds; a retention keyed by 60 (YAML `60: 30d`)
    # is the 1m resolution.
    cfg = from_dict({"store": {"retention": {60: "30d"}}})
    assert cfg.retention_seconds()[60] == 30 * 86400


def test_retention_key_not_a_duration() -> None:
    assert config_error({"store": {"retention": {"daily": "1d"}}}).startswith(
        "store.retention.daily: 'daily' is not a duration"
    )


def test_resolution_must_be_a_multiple_of_the_interval() -> None:
    assert config_error({"aggregation": {"interval": "7s"}}) == (
        "aggregation.resolutions[0]: 1m is not a multiple of aggregation.interval (7s)"
    )
    assert config_error({"aggregation": {"interval": "10s", "resolutions": ["1m", "25s"]}}) == (
        "aggregation.resolutions[1]: 25s is not a multiple of aggregation.interval (10s)"
    )


def test_interval_must_be_whole_seconds() -> None:
    expected = "aggregation.interval: must be a whole number of seconds ≥ 1"
    assert config_error({"aggregation": {"interval": "500ms"}}) == expected
    assert config_error({"aggregation": {"interval": "1500ms"}}) == expected


def test_interval_and_retention_must_agree() -> None:
    # the default retention names 1s, which a 10s interval does not produce
    message = config_error({"aggregation": {"interval": "10s"}})
    assert message.startswith("store.retention.1s: not a configured resolution; valid: ")
    cfg = from_dict(
        {"aggregation": {"interval": "10s"}, "store": {"retention": {"10s": "1d", "1m": "7d"}}}
    )
    assert cfg.resolutions() == (10, 60, 3600, 86400)


def test_duplicate_source_names() -> None:
    sources = [
        {"type": "replay", "name": "a", "paths": ["x"]},
        {"type": "replay", "name": "a", "paths": ["y"]},
    ]
    assert config_error({"sources": sources}) == (
        "sources: two sources are named 'a' (an unnamed source is called by its type and "
        "position, e.g. replay0); names must be unique"
    )


def test_unnamed_sources_are_not_duplicates() -> None:
    sources = [{"type": "replay", "paths": ["x"]}, {"type": "replay", "paths": ["y"]}]
    assert len(from_dict({"sources": sources}).sources) == 2


def test_explicit_name_clashing_with_a_default_name() -> None:
    # config.yaml: a source's name defaults to type and position (replay0, replay1, ...), and
    # names must be unique; naming the first source "replay1" clashes with the second's default.
    sources = [
        {"type": "replay", "name": "replay1", "paths": ["x"]},
        {"type": "replay", "paths": ["y"]},
    ]
    assert "'replay1'" in config_error({"sources": sources})


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("1s", timedelta(seconds=1)),
        ("5m", timedelta(minutes=5)),
        ("48h", timedelta(hours=48)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1.5s", timedelta(milliseconds=1500)),
        (" 5 m ", timedelta(minutes=5)),
        ("0s", timedelta(0)),
        (30, timedelta(seconds=30)),
        (0, timedelta(0)),
        (1.5, timedelta(milliseconds=1500)),
        (86400, timedelta(days=1)),
    ],
    ids=repr,
)
def test_parse_duration(text: str | float, expected: timedelta) -> None:
    assert parse_duration(text, "x") == expected


@pytest.mark.parametrize("text", ["30", "1.5"])
def test_parse_duration_numeric_string_is_seconds(text: str) -> None:
    assert parse_duration(text, "x") == timedelta(seconds=float(text))


@pytest.mark.parametrize("text", ["5 parsecs", "m", "1y", "", "1s5m", "5 s s", None, [1]], ids=repr)
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ConfigError, match=r"^a\.b: .* is not a duration; write e\.g\. 500ms"):
        parse_duration(text, "a.b")


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(hours=48), "2d"),
        (timedelta(seconds=90), "90s"),
        (timedelta(milliseconds=1500), "1500ms"),
        (timedelta(seconds=1), "1s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(days=7), "1w"),
        (timedelta(weeks=2), "2w"),
        (timedelta(days=400), "400d"),
        (timedelta(minutes=90), "90m"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(0), "0ms"),
    ],
    ids=str,
)
def test_format_duration(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text
    assert parse_duration(text, "x") == duration


@pytest.mark.parametrize("text", ["500ms", "1s", "5m", "48h", "7d", "2w", "90s", "1.5s", "36h"])
def test_duration_round_trip(text: str) -> None:
    d = parse_duration(text, "x")
    assert parse_duration(format_duration(d), "x") == d


# --- environment ---------------------------------------------------------------------------


def test_env_expansion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SC_TEST_DIR", str(tmp_path))
    monkeypatch.delenv("SC_TEST_UNSET", raising=False)
    cfg = from_dict(
        {
            "store": {
                "path": "${SC_TEST_DIR}/db-${SC_TEST_UNSET:-default}.sqlite",
                "flush_interval": "${SC_TEST_UNSET:-5s}",
            },
            "logging": {"level": "${SC_TEST_UNSET:-DEBUG}"},
        }
    )
    assert cfg.store.path == f"{tmp_path}/db-default.sqlite"
    assert cfg.store.flush_interval == timedelta(seconds=5)
    assert cfg.logging.level == "DEBUG"


def test_env_set_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_TEST_PATH", "from-env.sqlite")
    assert from_dict({"store": {"path": "${SC_TEST_PATH:-x}"}}).store.path == "from-env.sqlite"


def test_env_empty_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SC_TEST_UNSET", raising=False)
    cfg = from_dict({"store": {"path": "x${SC_TEST_UNSET:-}y"}})
    assert cfg.store.path == "xy"


def test_env_missing_names_path_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SC_TEST_UNSET", raising=False)
    assert config_error({"store": {"path": "${SC_TEST_UNSET}/x"}}) == (
        "store.path: environment variable SC_TEST_UNSET is not set"
    )
    sources = [{"type": "replay", "paths": ["ok", "${SC_TEST_UNSET}"]}]
    assert config_error({"sources": sources}) == (
        "sources[0].paths[1]: environment variable SC_TEST_UNSET is not set"
    )


def test_env_expanded_value_is_then_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_TEST_LEVEL", "LOUD")
    assert config_error({"logging": {"level": "${SC_TEST_LEVEL}"}}) == (
        "logging.level: 'LOUD' is not a valid choice; valid: DEBUG, INFO, WARNING, ERROR"
    )


def test_env_in_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SC_TEST_DIR", str(tmp_path))
    path = tmp_path / "c.yaml"
    path.write_text("store:\n  path: ${SC_TEST_DIR}/s.sqlite\n", encoding="utf-8")
    assert load(path).store.path == f"{tmp_path}/s.sqlite"


# --- to_plain ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    user: str = "alice"
    password: str = "hunter2"
    api_token: str = "t0ken"
    client_secret: str = "s3cret"
    ssl_key_password: str = "k"
    token_file: str = "/etc/token"
    empty_password: str = ""


def test_to_plain_masks_secrets() -> None:
    plain = to_plain(Credentials())
    assert plain == {
        "user": "alice",
        "password": "********",
        "api_token": "********",
        "client_secret": "********",
        "ssl_key_password": "********",
        "token_file": "/etc/token",
        "empty_password": "",
    }


def test_to_plain_masks_secrets_in_mappings() -> None:
    data = {"amqp": {"URL": "amqps://x", "Password": "p", "tokens": ["a"], "Secret": ["s"]}}
    assert to_plain(data) == {
        "amqp": {
            "URL": "amqps://x",
            "Password": "********",
            "tokens": ["a"],
            "Secret": ["********"],
        }
    }


def test_to_plain_masks_plugin_option_secrets() -> None:
    cfg = from_dict({"plugins": {"volume": {"options": {"api_token": "abc", "n": 3}}}})
    assert to_plain(cfg)["plugins"]["volume"] == {
        "enabled": True,
        "backlog_delta": None,
        "max_series": None,
        "series_ttl": None,
        "options": {"api_token": "********", "n": 3},
    }


def test_to_plain_of_defaults() -> None:
    plain = to_plain(Config())
    assert plain["store"]["retention"] == {"1s": "2d", "1m": "30d", "1h": "400d", "1d": "forever"}
    assert plain["store"]["flush_interval"] == "1s"
    assert plain["store"]["dedup_window"] == "2d"
    assert plain["aggregation"] == {"interval": "1s", "resolutions": ["1m", "1h", "1d"]}
    assert plain["messages"]["max_clock_skew"] == "1h"
    assert plain["sources"] == []
    assert plain["plugins"] == {}


def test_to_plain_reloads_to_the_same_config() -> None:
    cfg = load(CONFIG_YAML)
    dumped = yaml.safe_dump(to_plain(cfg), sort_keys=False)
    assert from_dict(yaml.safe_load(dumped)) == cfg


# --- config_path ---------------------------------------------------------------------------


def test_config_path_cli_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV_VAR, "/etc/from-env.yaml")
    assert config_path("/tmp/cli.yaml") == Path("/tmp/cli.yaml")


def test_config_path_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATSCACHE_CONFIG", "/etc/from-env.yaml")
    assert config_path(None) == Path("/etc/from-env.yaml")


def test_config_path_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATSCACHE_CONFIG", raising=False)
    assert config_path(None) == Path("config.yaml")
    monkeypatch.setenv("STATSCACHE_CONFIG", "")
    assert config_path(None) == Path("config.yaml")


# --- plugin options (pipeline.enabled_plugins) ---------------------------------------------


@dataclass(frozen=True)
class MyOptions:
    threshold: int = 10
    window: timedelta = timedelta(minutes=1)
    mode: Literal["fast", "exact"] = "fast"
    api_token: str = ""
    tags: tuple[str, ...] = ()


class MyPlugin(Plugin):
    ident = "myplugin"
    name = "Mine"
    summary = "A test plugin"
    metrics = (Counter("my_things", "Things"),)
    Options = MyOptions

    def process(self, message: Message, out: Output) -> None:
        out.inc("my_things")


@dataclass(frozen=True)
class StrictOptions:
    url: str
    retries: int = 3


class StrictPlugin(Plugin):
    ident = "strict"
    name = "Strict"
    summary = "A plugin with a required option"
    metrics = (Counter("strict_things", "Things"),)
    Options = StrictOptions

    def process(self, message: Message, out: Output) -> None:
        out.inc("strict_things")


class ClashPlugin(Plugin):
    ident = "clash"
    name = "Clash"
    summary = "Declares the same metric as MyPlugin"
    metrics = (Counter("my_things", "Things again"),)

    def process(self, message: Message, out: Output) -> None:
        out.inc("my_things")


def plugin_error(plugins: dict[str, Any], available: dict[str, type[Plugin]]) -> str:
    with pytest.raises(ConfigError) as exc_info:
        enabled_plugins(from_dict({"plugins": plugins}), available)
    return str(exc_info.value)


def test_plugin_options_default_when_not_configured() -> None:
    [plugin] = enabled_plugins(Config(), {"myplugin": MyPlugin})
    assert isinstance(plugin, MyPlugin)
    assert plugin.options == MyOptions()


def test_plugin_options_are_converted() -> None:
    cfg = from_dict(
        {
            "plugins": {
                "myplugin": {
                    "options": {"threshold": 3, "window": "5m", "mode": "exact", "tags": ["a"]}
                }
            }
        }
    )
    [plugin] = enabled_plugins(cfg, {"myplugin": MyPlugin})
    assert plugin.options == MyOptions(
        threshold=3, window=timedelta(minutes=5), mode="exact", tags=("a",)
    )


def test_unknown_plugin_lists_available() -> None:
    message = plugin_error({"nosuch": {}}, {"myplugin": MyPlugin, "strict": StrictPlugin})
    assert message == "plugins.nosuch: no such plugin; available: myplugin, strict"


def test_unknown_plugin_with_none_installed() -> None:
    assert plugin_error({"nosuch": {"enabled": False}}, {}) == (
        "plugins.nosuch: no such plugin; available: none"
    )


def test_unknown_plugin_option_lists_valid_keys() -> None:
    message = plugin_error({"myplugin": {"options": {"colour": "red"}}}, {"myplugin": MyPlugin})
    assert message == (
        "plugins.myplugin.options.colour: unknown key; "
        "valid keys: threshold, window, mode, api_token, tags"
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"threshold": "x"},
            "plugins.myplugin.options.threshold: expected a whole number, got a string ('x')",
        ),
        (
            {"window": "soon"},
            "plugins.myplugin.options.window: 'soon' is not a duration; "
            "write e.g. 500ms, 1s, 5m, 48h, 7d, 2w or seconds",
        ),
        (
            {"mode": "slow"},
            "plugins.myplugin.options.mode: 'slow' is not a valid choice; valid: fast, exact",
        ),
        ({"tags": "a"}, "plugins.myplugin.options.tags: expected a list, got a string ('a')"),
        (
            {"tags": ["a", 1]},
            "plugins.myplugin.options.tags[1]: expected a string, got a number (1)",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_plugin_option_names_the_path(options: dict[str, Any], expected: str) -> None:
    assert plugin_error({"myplugin": {"options": options}}, {"myplugin": MyPlugin}) == expected


def test_required_plugin_option() -> None:
    available: dict[str, type[Plugin]] = {"myplugin": MyPlugin, "strict": StrictPlugin}
    assert plugin_error({}, available) == "plugins.strict.options.url: required key is missing"
    cfg = from_dict({"plugins": {"strict": {"options": {"url": "https://x"}}}})
    plugins = enabled_plugins(cfg, available)
    assert [type(p).ident for p in plugins] == ["myplugin", "strict"]
    assert plugins[1].options == StrictOptions(url="https://x")


def test_disabled_plugin_is_skipped_and_its_options_not_checked() -> None:
    cfg = from_dict({"plugins": {"strict": {"enabled": False}}})
    plugins = enabled_plugins(cfg, {"myplugin": MyPlugin, "strict": StrictPlugin})
    assert [type(p).ident for p in plugins] == ["myplugin"]


def test_plugin_option_env_value_is_expanded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The value of an environment variable is used as is: a secret that happens to contain
    # "${...}" must not be expanded a second time.
    monkeypatch.setenv("SC_TEST_TOKEN", "p${SC_TEST_UNSET}w")
    monkeypatch.delenv("SC_TEST_UNSET", raising=False)
    cfg = from_dict({"plugins": {"myplugin": {"options": {"api_token": "${SC_TEST_TOKEN}"}}}})
    assert cfg.plugins["myplugin"].options == {"api_token": "p${SC_TEST_UNSET}w"}
    [plugin] = enabled_plugins(cfg, {"myplugin": MyPlugin})
    assert plugin.options.api_token == "p${SC_TEST_UNSET}w"


def test_plugin_metric_clash_is_an_error() -> None:
    with pytest.raises(PluginError, match="'my_things' is declared by both plugin"):
        enabled_plugins(Config(), {"myplugin": MyPlugin, "clash": ClashPlugin})
    cfg = from_dict({"plugins": {"clash": {"enabled": False}}})
    assert len(enabled_plugins(cfg, {"myplugin": MyPlugin, "clash": ClashPlugin})) == 1


def test_bundled_plugins_reject_options() -> None:
    message = plugin_error({"volume": {"options": {"x": 1}}}, discover())
    assert message.startswith("plugins.volume.options.x: unknown key")
