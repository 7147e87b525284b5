"""The statscache-exporter command: --config, check-config, plugins, replay errors, exit codes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_plugins_bundled import BUNDLED

from statscache_exporter import config as configuration
from statscache_exporter.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIG_YAML = REPO / "config.yaml"
AVAILABLE = ", ".join(sorted(BUNDLED))
SUBCOMMANDS = ["run", "replay", "plugins", "check-config"]


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No inherited $STATSCACHE_CONFIG, cwd in tmp_path, and the root logger restored after
    main() replaced its handlers."""
    monkeypatch.delenv(configuration.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    """A config file in tmp_path whose store lives in tmp_path."""
    data = {**data, "store": {"path": str(tmp_path / "store.sqlite"), **data.get("store", {})}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m statscache_exporter ARGS`` with cwd in a throwaway place."""
    base = {k: v for k, v in os.environ.items() if k != configuration.ENV_VAR}
    return subprocess.run(
        [sys.executable, "-m", "statscache_exporter", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=os.getcwd(),
        timeout=60,
        check=False,
    )


# --- --help and usage ----------------------------------------------------------------------


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_mentions_config(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main([command, "--help"])
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config PATH" in out
    assert "$STATSCACHE_CONFIG" in out


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--help"])
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out
    assert "2 usage or configuration error" in " ".join(out.split())


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["replay"], ["plugins", "--bogus"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    assert "usage: statscache-exporter" in capsys.readouterr().err


# --- check-config --------------------------------------------------------------------------


def test_check_config_on_config_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(CONFIG_YAML)]) == 0
    captured = capsys.readouterr()
    first, _, rest = captured.out.partition("\n")
    assert first == f"# config OK; plugins enabled: {AVAILABLE}"
    shown = yaml.safe_load(captured.out)
    expected = configuration.load(CONFIG_YAML)
    assert shown == configuration.to_plain(expected)
    assert configuration.from_dict(yaml.safe_load(rest)) == expected
    assert set(shown["plugins"]) == set(BUNDLED)
    assert shown["store"]["retention"]["1d"] == "forever"


def test_check_config_lists_only_enabled_plugins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path, {"plugins": {"volume_by_user": {"enabled": False}, "volume": {"enabled": False}}}
    )
    assert main(["check-config", "--config", str(path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "# config OK; plugins enabled: accounts, badges, bodhi, copr, koji, pagure_contributions, "
        "releng_composes, releng_image_uploads, releng_koji_artifacts, releng_updates, "
        "volume_by_agent, volume_by_category, volume_by_package, volume_by_topic"
    )


def test_check_config_shows_env_expanded_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SC_TEST_DIR", str(tmp_path))
    path = tmp_path / "env.yaml"
    path.write_text("store:\n  path: ${SC_TEST_DIR}/db.sqlite\n", encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["store"]["path"] == f"{tmp_path}/db.sqlite"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"store": {"flush_interval": "5 parsecs"}},
            "store.flush_interval: '5 parsecs' is not a duration",
        ),
        ({"logging": {"level": "LOUD"}}, "logging.level: 'LOUD' is not a valid choice"),
        ({"stroe": {}}, "stroe: unknown key; valid keys: store, aggregation, messages"),
        (
            {"sources": [{"type": "kafka"}]},
            "sources[0].type: 'kafka' is not a source type; valid: replay",
        ),
    ],
    ids=["duration", "literal", "unknown-key", "source-type"],
)
def test_check_config_bad_config_exits_2(
    tmp_path: Path, data: dict[str, Any], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, data)
    assert main(["check-config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"statscache-exporter: configuration error in {path}: ")
    assert expected in captured.err


def test_check_config_out_of_range_duration_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a duration too large for timedelta is a config mistake like any other: exit 2, path named
    path = write_config(tmp_path, {"store": {"dedup_window": "99999999999w"}})
    assert main(["check-config", "--config", str(path)]) == 2
    assert "store.dedup_window: " in capsys.readouterr().err


def test_unknown_plugin_exits_2_listing_available(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"plugins": {"volume_by_colour": {"enabled": True}}})
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"plugins.volume_by_colour: no such plugin; available: {AVAILABLE}" in err


def test_bundled_plugin_with_options_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"plugins": {"volume": {"options": {"x": 1}}}})
    assert main(["check-config", "--config", str(path)]) == 2
    assert "plugins.volume.options.x: unknown key" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["check-config", "--config", str(missing)]) == 2
    assert f"{missing}: cannot read config file" in capsys.readouterr().err


# --- where the config comes from -----------------------------------------------------------


def test_default_is_config_yaml_in_cwd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, {"plugins": {"volume": {"enabled": False}}})
    assert main(["check-config"]) == 0
    assert "releng_updates, volume_by_agent, volume_by_category," in capsys.readouterr().out


def test_no_config_anywhere_names_config_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 2
    assert "config.yaml: cannot read config file" in capsys.readouterr().err


def test_env_beats_cwd_and_option_beats_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, {"logging": {"level": "LOUD"}})  # ./config.yaml, broken
    from_env = write_config(tmp_path, {"store": {"max_batch": "x"}}, name="env.yaml")
    good = write_config(tmp_path, {}, name="good.yaml")
    monkeypatch.setenv(configuration.ENV_VAR, str(from_env))
    assert main(["check-config"]) == 2
    assert "store.max_batch: expected a whole number" in capsys.readouterr().err
    assert main(["check-config", "--config", str(good)]) == 0
    assert capsys.readouterr().out.startswith("# config OK")


# --- plugins -------------------------------------------------------------------------------


def test_plugins_json_lists_the_bundled_plugins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"plugins": {"volume_by_topic": {"enabled": False}}})
    assert main(["plugins", "--json", "--config", str(path)]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_ident = {p["ident"]: p for p in listing}
    assert {i: [m["name"] for m in p["metrics"]] for i, p in by_ident.items()} == BUNDLED
    assert [p["ident"] for p in listing] == sorted(BUNDLED)
    assert by_ident["volume_by_topic"]["enabled"] is False
    assert all(p["enabled"] for i, p in by_ident.items() if i != "volume_by_topic")
    assert by_ident["volume"]["metrics"] == [
        {"name": "messages", "kind": "counter", "help": "Messages processed", "labels": []}
    ]
    assert by_ident["volume_by_user"]["metrics"][0]["labels"] == ["user"]
    for p in listing:
        assert set(p) == {"ident", "name", "summary", "description", "enabled", "metrics"}
        assert p["name"] and p["summary"]


def test_plugins_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {"plugins": {"volume_by_topic": {"enabled": False}}})
    assert main(["plugins", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "volume: Volume\n" in out
    assert "volume_by_topic: Volume by topic  (disabled)" in out
    assert "- messages_by_user{user} (counter): " in out


# --- replay --------------------------------------------------------------------------------


def test_replay_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {})
    missing = tmp_path / "no-such.jsonl"
    assert main(["replay", "--config", str(path), str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("statscache-exporter: ")
    assert f"{missing}: cannot open" in err


def test_replay_unknown_plugin_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {"plugins": {"nope": {}}})
    assert main(["replay", "--config", str(path), str(tmp_path / "x.jsonl")]) == 2
    assert f"plugins.nope: no such plugin; available: {AVAILABLE}" in capsys.readouterr().err


# --- as a subprocess: exit codes -----------------------------------------------------------


def test_subprocess_help() -> None:
    result = run_cli("check-config", "--help")
    assert result.returncode == 0
    assert "--config PATH" in result.stdout


def test_subprocess_check_config_ok() -> None:
    result = run_cli("check-config", "--config", str(CONFIG_YAML))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# config OK; plugins enabled: {AVAILABLE}\n")
    assert yaml.safe_load(result.stdout)["sources"][1]["name"] == "demo"


def test_subprocess_bad_config_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"store": {"pth": "x"}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "store.pth: unknown key; valid keys: path, flush_interval" in result.stderr
    assert "Traceback" not in result.stderr


def test_subprocess_config_from_env(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"logging": {"level": "LOUD"}}, name="env.yaml")
    result = run_cli("check-config", env={configuration.ENV_VAR: str(path)})
    assert result.returncode == 2
    assert "logging.level: 'LOUD' is not a valid choice; valid: DEBUG, INFO, WARNING, ERROR" in (
        result.stderr
    )


def test_subprocess_unknown_plugin_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"plugins": {"volume_by_colour": {}}})
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert f"available: {AVAILABLE}" in result.stderr


def test_subprocess_replay_missing_file_exits_1(tmp_path: Path) -> None:
    path = write_config(tmp_path, {})
    missing = tmp_path / "missing.jsonl.gz"
    result = run_cli("replay", "--config", str(path), str(missing))
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_subprocess_usage_error_exits_2() -> None:
    result = run_cli("replay")
    assert result.returncode == 2
    assert "usage: statscache-exporter replay" in result.stderr
