"""`statscache-exporter run` as a process: it takes its sources' messages, flushes on the
flush interval while it runs, and on SIGTERM flushes once more and exits 0."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, scaled_messages


def seen(store: Path) -> int:
    if not store.exists():
        return 0
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
    try:
        return int(db.execute("SELECT count(*) FROM seen").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_run_flushes_while_running_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    n = 3000
    infile = tmp_path / "in.jsonl"
    infile.write_text("".join(json.dumps(m) + "\n" for m in scaled_messages(n, seed=3)))
    store = tmp_path / "store.sqlite"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"store: {{path: {store}, flush_interval: 200ms}}\n"
        f"sources:\n  - {{type: replay, name: file, paths: [{infile}]}}\n"
        "logging: {level: INFO}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "statscache_exporter", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # the replay source is done long before; the flush timer must commit without a stop
        while seen(store) < n and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert seen(store) == n
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM, stopping" in err
    assert "stopped after a final flush" in err
    db = sqlite3.connect(store)
    total = db.execute(
        "SELECT t.value FROM totals t JOIN series s ON s.id = t.series WHERE s.metric = 'messages'"
    ).fetchone()
    assert total == (n,)
