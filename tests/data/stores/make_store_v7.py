"""Writes a store with the schema-7 exporter, for tests/test_store_migration.py: the first 300
corpus messages replayed in two flushes with the InfluxDB sink on (its outbox left queued) and
a checkpoint, plus that exporter's Store.dump() of it as JSON.

Run it with the schema-7 code first on the path (a worktree of commit f189a8a, and its own
plugins as statscache_plugins), then gzip both files:

    git worktree add /tmp/old7 f189a8a
    mkdir /tmp/old7pp && ln -s /tmp/old7/plugins /tmp/old7pp/statscache_plugins
    cd /tmp/old7 && PYTHONPATH=/tmp/old7:/tmp/old7pp /work/main/.venv/bin/python \
        /work/main/tests/data/stores/make_store_v7.py store-v7.sqlite store-v7.json f189a8a
"""
import json, sys
sys.path.insert(0, "tests")
from pathlib import Path
from conftest import bundled, corpus_messages
from statscache_exporter import config as configuration
from statscache_exporter.pipeline import open_pipeline
from datetime import datetime, UTC
out = Path(sys.argv[1])
for s in ("", "-wal", "-shm"):
    Path(str(out) + s).unlink(missing_ok=True)
KEEP = {"1s": "forever", "1m": "forever", "1h": "forever", "1d": "forever"}
cfg = configuration.from_dict({"store": {"path": str(out), "retention": KEEP},
                               "influxdb": {"enabled": True, "url": "http://127.0.0.1:1"}})
p = open_pipeline(cfg, bundled())
msgs = corpus_messages()[:300]
for m in msgs[: len(msgs) // 2]:
    p.handle(m)
p.flush()
for m in msgs[len(msgs) // 2 :]:
    p.handle(m)
p.cover(datetime(2024, 3, 2, tzinfo=UTC))
p.flush()
p.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)"); p.store.db.execute("VACUUM")
dump = p.store.dump()
outbox = p.store.db.execute("SELECT count(*), sum(lines) FROM outbox").fetchone()
p.store.close()
Path(sys.argv[2]).write_text(json.dumps({"made_by": sys.argv[3], "outbox_parts": outbox[0], "outbox_lines": outbox[1], "covered_until": 1709337600.0, "dump": dump}, sort_keys=True))
print(outbox, len(dump["buckets"]), len(dump["seen"]))
