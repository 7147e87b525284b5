"""contrib/systemd/statscache-exporter.service and the config.yaml beside it.

No systemd runs as PID 1 on the test machine, so the unit is checked the ways that work
without one: ``systemd-analyze verify`` (every key and value known and well formed, the
command executable), ``systemd-analyze security --offline`` (its exposure score), the
settings the README promises, and its command line run as systemd would run it (its
environment, working directory and state directory), stopped by its ``KillSignal``: the
store lands in the state directory and the exit is clean (0). A configuration error exits 2,
which the unit does not restart.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, corpus_messages
from servers import free_port, http_get, missing, wait_until, write_jsonl

UNIT = REPO / "contrib" / "systemd" / "statscache-exporter.service"
CONFIG = REPO / "contrib" / "systemd" / "config.yaml"
#: where the unit expects the exporter (the README's install steps put it there)
INSTALLED = "/opt/statscache-exporter/bin/statscache-exporter"
#: the exporter of this checkout, standing for INSTALLED
HERE = str(Path(sys.executable).with_name("statscache-exporter"))


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if os.access("/usr/bin/systemd-analyze", os.X_OK) else None
    )
    if path is None:
        missing(
            "systemd-analyze not found: install it with `make test-deps` (the Debian package "
            "systemd provides it)"
        )
    return path


def settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, by key (a key may be given several times)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its ExecStart pointing at this checkout's exporter (verify insists that
    the command exists), under the same file name."""
    unit = tmp_path / UNIT.name
    unit.write_text((text or UNIT.read_text()).replace(INSTALLED, HERE))
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    assert INSTALLED in UNIT.read_text()
    result = verify(local_copy(tmp_path))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_verify_would_see_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported (as warnings,
    exit 0, hence the test on the output)."""
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt")
    text = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    result = verify(local_copy(tmp_path, text))
    said = result.stdout + result.stderr
    assert "strickt" in said and "NoNewPrivilege" in said, said


def test_the_unit_runs_hardened_with_its_state_directory_and_restarts() -> None:
    s = settings(UNIT.read_text())
    expected = {
        "Type": ["exec"],
        "DynamicUser": ["yes"],
        "StateDirectory": ["statscache-exporter"],
        "ConfigurationDirectory": ["statscache-exporter"],
        "ProtectSystem": ["strict"],
        "NoNewPrivileges": ["yes"],
        "PrivateTmp": ["yes"],
        "ProtectHome": ["yes"],
        "CapabilityBoundingSet": [""],
        "KillSignal": ["SIGTERM"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["2"],
    }
    assert {k: s.get(k) for k in expected} == expected
    assert "ReadWritePaths" not in s  # the state directory is the only place it writes


def test_the_units_exposure_is_ok(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the sandbox from 0 (locked down) to 10; 2.0 or less
    is "OK" (``--threshold`` is that times ten)."""
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",
            str(local_copy(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Overall exposure level for statscache-exporter.service" in result.stdout


def command(config: Path) -> list[str]:
    """The unit's ExecStart, with this checkout's exporter and ``config`` in place of
    /etc/statscache-exporter/config.yaml."""
    [line] = settings(UNIT.read_text())["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == INSTALLED and argv[1:3] == ["run", "--config"], argv
    assert argv[3] == "/etc/statscache-exporter/config.yaml"
    return [HERE, *argv[1:3], str(config)]


def test_the_shipped_config_is_valid_and_puts_the_store_in_the_state_directory(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    result = subprocess.run(
        [HERE, "check-config", "--config", str(CONFIG)],
        env={**os.environ, "STATE_DIRECTORY": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["store"]["path"] == f"{state}/statscache.sqlite"


@pytest.mark.integration
def test_the_units_command_stores_in_the_state_directory_and_stops_cleanly_on_its_signal(
    tmp_path: Path,
) -> None:
    """What systemd does, minus the sandbox: STATE_DIRECTORY set, the working directory in
    it, the command run; then KillSignal, and the exit must be 0 within TimeoutStopSec."""
    s = settings(UNIT.read_text())
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    config = yaml.safe_load(CONFIG.read_text())
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_messages()[:100])
    config["sources"] = [{"type": "replay", "name": "file", "paths": [str(corpus)]}]
    config["http"]["port"] = port
    config["backfill"] = {"enabled": False}  # never Fedora's datagrepper from a test
    test_config = tmp_path / "config.yaml"
    test_config.write_text(json.dumps(config))
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(test_config),
            cwd=state,  # WorkingDirectory=%S/statscache-exporter
            env={**os.environ, "STATE_DIRECTORY": str(state)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{port}/metrics").body.decode(),
            lambda text: (
                "\nstatscache_messages_total " in text
                and 'statscache_exporter_source_connected{source="file"} 0.0' in text
            ),
            "the replay to be stored",
            timeout=60,
        )
        process.send_signal(getattr(signal, s["KillSignal"][0]))
        code = process.wait(timeout=int(s["TimeoutStopSec"][0].removesuffix("s")))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()[-3000:]
    assert (state / "statscache.sqlite").stat().st_size > 0
    assert "stopped after a final flush" in log.read_text()


def test_a_configuration_error_exits_2_which_the_unit_does_not_restart(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("store: {flush_interval: often}\n")
    result = subprocess.run(command(bad), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "store.flush_interval" in result.stderr, result.stderr
    assert settings(UNIT.read_text())["RestartPreventExitStatus"] == [str(result.returncode)]
