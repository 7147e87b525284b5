"""Build tests/data/ from ../shared/corpus (real production and upstream-test messages).

Sources (see ../shared/corpus/README.md for commits and licences):
- fedmsg_meta_examples.jsonl: fedmsg envelopes from fedora-infra/fedmsg_meta_fedora_infrastructure
  tests @ c107ffa2 (LGPLv2+), with the usernames/packages fedmsg.meta is expected to return.
- fedora_messaging_examples.jsonl: fedora-messaging bodies from the schema packages' tests
  (bodhi, koji, copr, pagure, noggin, discourse, anitya; licences in that README).
- datagrepper_raw_page_2017.json: one real datagrepper /raw page from fedora-infra/fedmsg @ 6583d58b.

Outputs:
- fedmsg_envelopes.jsonl: each envelope as it was ({"source", "envelope", "expected"} lines kept
  so tests can check expectations).
- fedora_messaging.jsonl: each body as a fedora-messaging message in its JSON form (the /v2 item
  shape), with the schema header its schema package registers, a deterministic id and sent-at
  (the corpus has neither), and the original "expected" kept alongside.
- datagrepper_raw_page_2017.json: copied byte for byte.

Run: .venv/bin/python tests/data/make_corpus.py
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path

HERE = Path(__file__).parent
CORPUS = HERE.parents[2] / "shared" / "corpus"
BASE_TIME = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
PREFIXED = ("org.", "io.")


def schema_names() -> dict[str, str]:
    """Class name → schema entry-point name (the fedora_messaging_schema header value)."""
    names: dict[str, str] = {}
    for ep in sorted(entry_points(group="fedora.messages"), key=lambda e: e.name):
        names.setdefault(ep.value.split(":")[-1], ep.name)
    return names


def main() -> None:
    shutil.copyfile(CORPUS / "datagrepper_raw_page_2017.json", HERE / "datagrepper_raw_page_2017.json")
    shutil.copyfile(CORPUS / "fedmsg_meta_examples.jsonl", HERE / "fedmsg_envelopes.jsonl")
    names = schema_names()
    out = []
    for i, line in enumerate((CORPUS / "fedora_messaging_examples.jsonl").read_text().splitlines()):
        d = json.loads(line)
        topic = d["topic"]
        if not topic.startswith(PREFIXED):
            prefix = "io.pagure.prod." if topic.startswith("pagure.") else "org.fedoraproject.prod."
            topic = prefix + topic
        sent_at = (BASE_TIME + timedelta(seconds=7 * i)).isoformat()
        headers = {"fedora_messaging_schema": names.get(d["schema"], "base.message"), "sent-at": sent_at}
        message = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, d["source"] + str(i))),
            "topic": topic,
            "headers": headers,
            "body": d["body"],
            "queue": None,
            "priority": 0,
        }
        out.append(json.dumps({"source": d["source"], "message": message, "expected": d.get("expected", {})}))
    (HERE / "fedora_messaging.jsonl").write_text("\n".join(out) + "\n")



def write_replay_file() -> None:
    """examples/corpus.jsonl.gz: every corpus message in its bus shape, one per line (the
    datagrepper page as one line), for `statscache-exporter replay` and the `make run` demo."""
    import gzip

    lines = [json.dumps(json.loads(l)["envelope"]) for l in (HERE / "fedmsg_envelopes.jsonl").read_text().splitlines()]
    lines += [json.dumps(json.loads(l)["message"]) for l in (HERE / "fedora_messaging.jsonl").read_text().splitlines()]
    lines.append(json.dumps(json.loads((HERE / "datagrepper_raw_page_2017.json").read_text())))
    target = HERE.parents[1] / "examples" / "corpus.jsonl.gz"
    with gzip.GzipFile(target, "wb", mtime=0) as fh:
        fh.write(("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
    write_replay_file()
