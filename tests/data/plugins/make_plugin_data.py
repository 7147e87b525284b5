"""Build tests/data/plugins/<plugin>.jsonl: the real corpus messages each bundled plugin's tests
feed, copied from tests/data/ (itself built from ../shared/corpus by tests/data/make_corpus.py).

Each output line is {"ref", "source", "note"?, "message"}:
- ref: a short name the tests use (fm:N = line N of fedmsg_envelopes.jsonl, which is line N of
  ../shared/corpus/fedmsg_meta_examples.jsonl; fms:N = line N of fedora_messaging.jsonl, built
  from line N of ../shared/corpus/fedora_messaging_examples.jsonl with a topic prefix, an id
  and a sent-at; dg:N = raw_messages[N] of ../shared/corpus/datagrepper_raw_page_2017.json;
  hw:name = written by hand, where the corpus has no message for that event);
- source: the corpus file, line and its own source key (repository:path::test);
- note: what was changed, if anything (a timestamp the test envelope lacks, or a tie moved);
- message: the message in its bus shape.

Run: .venv/bin/python tests/data/plugins/make_plugin_data.py
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DATA = HERE.parent

# (ref, note, changes to the envelope/message) per plugin; no two picks of a plugin share a
# message id (some fedmsg test envelopes reuse one: fm:448/fm:453, fm:272/fm:273, fm:123/fm:124,
# and the pipeline would count the second as a duplicate). A change is a dict merged into the
# message's top level (fedmsg: "timestamp"; fedora-messaging: "headers").
SELECTION: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "pagure": [
        ("fm:389", "", {}), ("fm:390", "", {}), ("fm:391", "", {}), ("fm:396", "", {}),
        ("fm:399", "", {}), ("fm:401", "", {}), ("fm:414", "", {}), ("fm:419", "", {}),
        ("fm:597", "", {}), ("fm:599", "", {}), ("fm:620", "", {}), ("fm:626", "", {}),
        ("fm:630", "", {}), ("fm:632", "", {}), ("fm:685", "", {}), ("fm:688", "", {}),
        ("fm:690", "", {}), ("fms:56", "", {}), ("fms:59", "", {}), ("fms:68", "", {}),
        ("fms:89", "", {}), ("fms:95", "", {}), ("fms:96", "", {}), ("fms:100", "", {}),
        ("fms:107", "", {}),
    ],
    "koji": [
        ("fm:122", "", {}), ("fm:123", "", {}), ("fm:125", "", {}), ("fm:126", "", {}),
        ("fm:127", "", {}), ("fm:128", "", {}), ("fm:129", "", {}), ("fm:130", "", {}),
        ("fm:131", "", {}), ("fm:135", "", {}), ("fms:29", "", {}), ("fms:31", "", {}),
        ("fms:34", "", {}), ("fms:36", "", {}), ("fms:40", "", {}), ("fms:41", "", {}),
        ("fms:42", "", {}), ("dg:4", "", {}), ("dg:5", "", {}), ("dg:16", "", {}),
        ("dg:19", "", {}), ("dg:20", "", {}), ("dg:21", "", {}), ("dg:22", "", {}),
    ],
    "copr": [
        ("fm:314", "", {}), ("fm:315", "", {}), ("fm:318", "", {}), ("fm:322", "", {}),
        ("fm:448", "", {}), ("fm:451", "", {}), ("fm:454", "", {}),
        ("fms:43", "", {}), ("fms:44", "", {}), ("fms:49", "", {}), ("fms:50", "", {}),
        ("dg:0", "", {}), ("dg:1", "", {}), ("dg:15", "", {}),
    ],
    "bodhi": [
        ("fm:77", "", {}), ("fm:78", "", {}), ("fm:79", "", {}), ("fm:80", "", {}),
        ("fm:81", "", {}), ("fm:104", "", {}), ("fm:105", "", {}), ("fm:112", "", {}),
        ("fm:113", "", {}), ("fm:119", "", {}), ("fm:301", "", {}), ("fm:303", "", {}),
        ("fm:310", "", {}), ("fm:311", "", {}), ("fms:1", "", {}), ("fms:3", "", {}),
        ("fms:10", "", {}), ("fms:11", "", {}), ("fms:12", "", {}), ("fms:14", "", {}),
        ("fms:15", "", {}), ("fms:17", "", {}), ("fms:18", "", {}), ("fms:20", "", {}),
        ("fms:23", "", {}), ("fms:24", "", {}), ("fms:25", "", {}), ("fms:27", "", {}),
    ],
    "accounts": [
        ("fm:74", "", {}), ("fm:75", "", {}), ("fm:76", "", {}),
        ("fm:464", "", {}), ("fm:465", "", {}),
        ("fm:469", "timestamp added (the test envelope has none)", {"timestamp": 1344432100}),
        ("fm:471", "timestamp added (the test envelope has none)", {"timestamp": 1344432101}),
        ("fm:472", "timestamp added (the test envelope has none)", {"timestamp": 1344432102}),
        ("fm:473", "timestamp added (the test envelope has none)", {"timestamp": 1344432103}),
        ("fm:474", "timestamp added (the test envelope has none)", {"timestamp": 1344432104}),
        ("fm:475", "timestamp added (the test envelope has none)", {"timestamp": 1344432105}),
        ("fm:476", "timestamp added (the test envelope has none)", {"timestamp": 1344432106}),
        ("fm:477", "timestamp added (the test envelope has none)", {"timestamp": 1344432107}),
        ("fm:478", "timestamp added (the test envelope has none)", {"timestamp": 1344432108}),
        ("fms:108", "", {}), ("fms:109", "", {}), ("fms:110", "", {}), ("fms:111", "", {}),
    ],
    "releng": [
        # composes
        ("fm:211", "", {}), ("fm:212", "", {}), ("fm:213", "", {}), ("fm:225", "", {}),
        ("fm:229", "", {}), ("fm:247", "", {}), ("fm:254", "", {}), ("fm:255", "", {}),
        ("fm:256", "", {}), ("fm:257", "", {}), ("fm:263", "", {}), ("fm:269", "", {}),
        (
            "fm:270",
            "timestamp moved 1 h later: the three pungi test envelopes share one second",
            {"timestamp": 1449604328.0},
        ),
        (
            "fm:271",
            "timestamp moved 30 min later: the three pungi test envelopes share one second",
            {"timestamp": 1449602528.0},
        ),
        ("fm:272", "", {}), ("fm:276", "", {}),
        # bodhi pushes and syncs
        ("fm:89", "", {}), ("fm:90", "", {}), ("fm:91", "", {}), ("fm:92", "", {}),
        ("fm:93", "", {}), ("fm:94", "", {}), ("fm:95", "", {}), ("fm:96", "", {}),
        ("fm:97", "", {}), ("fm:98", "", {}), ("fm:119", "", {}), ("fm:120", "", {}),
        ("fm:121", "", {}), ("fm:509", "", {}), ("fm:510", "", {}), ("fms:5", "", {}),
        ("fms:6", "", {}), ("fms:7", "", {}),
        # cloud image uploads (every fedimg test envelope has the same timestamp)
        ("fm:479", "", {}),
        (
            "fm:480",
            "timestamp moved 60 s later: it shares its second with the upload's start (fm:479)",
            {"timestamp": 1371498363.125771},
        ),
        ("fm:481", "", {}), ("fm:482", "", {}), ("fm:483", "", {}),
        (
            "fm:484",
            "timestamp moved 60 s later: it shares its second with the upload's start (fm:483)",
            {"timestamp": 1371498363.125771},
        ),
        ("fm:485", "", {}), ("fm:486", "", {}),
        (
            "fm:487",
            "timestamp moved 60 s later: it shares its second with the upload's start (fm:486)",
            {"timestamp": 1371498363.125771},
        ),
        # koji image artifacts
        ("fms:30", "", {}), ("fms:34", "", {}),
    ],
}

#: messages written by hand, for events the corpus has no message of
HAND_WRITTEN: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "koji": [
        (
            "hw:side-tag",
            "hand-written: the corpus has no tag into a side tag; body as koji's buildsys.tag",
            {
                "id": "hw-koji-side-tag",
                "topic": "org.fedoraproject.prod.buildsys.tag",
                "headers": {
                    "fedora_messaging_schema": "koji_fedoramessaging.tag.TagV1",
                    "sent-at": "2024-03-01T13:00:00+00:00",
                },
                "body": {
                    "build_id": 2400001, "name": "python-foo", "tag_id": 81234,
                    "instance": "primary", "tag": "f40-build-side-81234", "user": "alice",
                    "version": "1.0", "owner": "alice", "release": "1.fc40",
                },
            },
        ),
    ],
    "accounts": [
        (
            "hw:member-removed",
            "hand-written: the corpus has no noggin fas.group.member.removed; body as "
            "noggin_messages.MemberRemovedV1 requires (msg: agent, user, group)",
            {
                "id": "hw-noggin-member-removed",
                "topic": "org.fedoraproject.prod.fas.group.member.removed",
                "headers": {
                    "fedora_messaging_schema": "noggin.MemberRemovedV1",
                    "sent-at": "2024-03-01T13:00:00+00:00",
                },
                "body": {"msg": {"agent": "dudemcpants", "user": "testuser", "group": "developers"}},
            },
        ),
        (
            "hw:badge-award",
            "hand-written: the corpus's only badge award is from staging; body as fm:74's",
            {
                "id": "hw-badge-award",
                "topic": "org.fedoraproject.prod.fedbadges.badge.award",
                "headers": {"sent-at": "2024-03-01T13:00:01+00:00"},
                "body": {
                    "badge": {"name": "Junior Tagger (Tagger I)", "image_url": "x.png"},
                    "user": {"badges_user_id": 7, "username": "testuser"},
                },
            },
        ),
    ],
    "releng": [
        (
            "hw:livemedia-task",
            "hand-written: the corpus has no image task message; a livemedia task closing, "
            "its request as koji's livemedia tasks carry it (name, version, arches, target, ks)",
            {
                "id": "hw-livemedia-task",
                "topic": "org.fedoraproject.prod.buildsys.task.state.change",
                "headers": {"sent-at": "2024-03-01T13:00:00+00:00"},
                "body": {
                    "id": 111136700, "method": "livemedia", "owner": "releng",
                    "attribute": "state", "old": "OPEN", "new": "CLOSED", "instance": "primary",
                    "info": {
                        "id": 111136700, "method": "livemedia", "arch": "noarch",
                        "request": [
                            "Fedora-i3-Live", "Rawhide", ["aarch64", "x86_64"], "f40",
                            "fedora-live-i3.ks", {},
                        ],
                    },
                },
            },
        ),
    ],
}


def corpus() -> dict[str, tuple[str, dict[str, Any]]]:
    """ref → (source text, message) for every corpus message."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for n, line in enumerate((DATA / "fedmsg_envelopes.jsonl").open(), 1):
        d = json.loads(line)
        found[f"fm:{n}"] = (
            f"../shared/corpus/fedmsg_meta_examples.jsonl line {n} ({d['source']})",
            d["envelope"],
        )
    for n, line in enumerate((DATA / "fedora_messaging.jsonl").open(), 1):
        d = json.loads(line)
        found[f"fms:{n}"] = (
            f"../shared/corpus/fedora_messaging_examples.jsonl line {n} ({d['source']}), as "
            f"tests/data/fedora_messaging.jsonl line {n}",
            d["message"],
        )
    page = json.loads((DATA / "datagrepper_raw_page_2017.json").read_text())
    for n, item in enumerate(page["raw_messages"]):
        found[f"dg:{n}"] = (
            f"../shared/corpus/datagrepper_raw_page_2017.json raw_messages[{n}]", item
        )
    return found


def main() -> None:
    messages = corpus()
    for plugin, picks in SELECTION.items():
        lines = []
        for ref, note, changes in picks:
            source, message = messages[ref]
            message = copy.deepcopy(message)
            message.update(changes)
            entry: dict[str, Any] = {"ref": ref, "source": source}
            if note:
                entry["note"] = note
            entry["message"] = message
            lines.append(json.dumps(entry, sort_keys=False))
        for ref, note, message in HAND_WRITTEN.get(plugin, []):
            lines.append(json.dumps({"ref": ref, "source": note, "message": message}))
        (HERE / f"{plugin}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
