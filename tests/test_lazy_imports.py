"""``statscache-exporter run`` without InfluxDB does not import influxdb-client: its ~550
modules were ~12 MB of the idle process's 60 (bench/memory.py's baseline). pipeline.py imports
influx.py where a sink is configured; daemon.py and selfmetrics.py name InfluxSink only in
annotations."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_and_its_web_app_do_not_import_influxdb_client() -> None:
    code = (
        "import sys\n"
        "import statscache_exporter.cli, statscache_exporter.daemon, statscache_exporter.web\n"
        "import statscache_exporter.selfmetrics\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'influxdb_client'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
