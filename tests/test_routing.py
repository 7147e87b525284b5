"""Topic routing: a plugin gets exactly the messages its topic patterns match; a plugin that
declares none gets every message; the bundled plugins' patterns lose nothing they count."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import bundled, corpus_messages
from plugin_cases import DATA, emitted

from statscache_exporter.message import Message, normalize
from statscache_exporter.pipeline import enabled_plugins
from statscache_exporter.plugin import Counter, Output, Plugin, PluginError, under
from statscache_exporter.routing import MAX_TOPICS, Router, compile_patterns

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from corpus import Generator


def fedmsg(topic: str, n: int) -> dict[str, Any]:
    return {"topic": topic, "msg": {}, "timestamp": 1_700_000_000 + n, "msg_id": f"m{n}"}


class Recorder(Plugin):
    """Records the topics it was given (a test plugin: a class attribute is its own state)."""

    ident = "recorder"
    name = summary = "records topics"
    metrics = (Counter("recorded", "messages given to the recorder"),)
    seen: list[str]

    def process(self, message: Message, out: Output) -> None:
        self.seen.append(message.topic)
        out.inc("recorded")


class Koji(Recorder):
    ident = "rec_koji"
    metrics = (Counter("rec_koji", "given to rec_koji"),)
    topics = ("*.buildsys.*",)

    def process(self, message: Message, out: Output) -> None:
        self.seen.append(message.topic)
        out.inc("rec_koji")


class Exact(Recorder):
    ident = "rec_exact"
    metrics = (Counter("rec_exact", "given to rec_exact"),)
    topics = ("org.fedoraproject.prod.bodhi.update.comment", "io.pagure.prod.pagure.?ssue.*")

    def process(self, message: Message, out: Output) -> None:
        self.seen.append(message.topic)
        out.inc("rec_exact")


class Nothing(Recorder):
    ident = "rec_nothing"
    metrics = (Counter("rec_nothing", "given to rec_nothing"),)
    topics = ()

    def process(self, message: Message, out: Output) -> None:
        self.seen.append(message.topic)
        out.inc("rec_nothing")


TOPICS = [
    "org.fedoraproject.prod.buildsys.build.state.change",
    "org.fedoraproject.stg.buildsys.tag",
    "org.fedoraproject.prod.bodhi.update.comment",
    "org.fedoraproject.prod.bodhi.update.comment.extra",
    "io.pagure.prod.pagure.issue.new",
    "io.pagure.prod.pagure.Issue.new",
    "io.pagure.prod.pagure.issues",
    "buildsys.build.state.change",  # no dot before buildsys: not *.buildsys.*
    "org.fedoraproject.prod.copr.build.end",
]


def test_a_plugin_gets_exactly_the_messages_its_patterns_match(open_store: Any) -> None:
    plugins = {c.ident: c for c in (Recorder, Koji, Exact, Nothing)}
    p = open_store(plugins=plugins)
    for cls in plugins.values():
        cls.seen = []
    for n, topic in enumerate(TOPICS * 3):  # each topic thrice: later ones from the cache
        assert p.handle(fedmsg(topic, n)) == "processed"
    p.flush()
    assert Recorder.seen == TOPICS * 3  # declares nothing: every message
    assert Koji.seen == [t for t in TOPICS * 3 if ".buildsys." in t]
    assert Exact.seen == [
        t
        for t in TOPICS * 3
        if t in ("org.fedoraproject.prod.bodhi.update.comment", "io.pagure.prod.pagure.issue.new")
        or t == "io.pagure.prod.pagure.Issue.new"
    ]
    assert Nothing.seen == []
    totals = {m: p.store.totals_by_metric(m).get("{}") for m in ("recorded", "rec_koji")}
    assert totals == {"recorded": 27, "rec_koji": 6}


def test_patterns_match_whole_topics_case_sensitively() -> None:
    match = compile_patterns(("org.*.build", "a?c", "x[0-9]"))
    assert match is not None
    assert match("org.fedoraproject.prod.build")
    assert not match("org.fedoraproject.prod.build.x")  # whole topic, not a prefix
    assert not match("ORG.x.build")
    assert match("abc") and not match("abbc")
    assert match("x7") and not match("xa")
    assert compile_patterns(None) is None
    nothing = compile_patterns(())
    assert nothing is not None and not nothing("anything")


def test_under_escapes_prefixes_and_keeps_event_patterns() -> None:
    patterns = under(["org.x[1].bodhi."], "update.*", "errata.publish")
    match = compile_patterns(patterns)
    assert match is not None
    assert match("org.x[1].bodhi.update.comment")
    assert match("org.x[1].bodhi.errata.publish")
    assert not match("org.x1.bodhi.update.comment")  # [1] is literal in a prefix
    everything = compile_patterns(under(["a.b."]))
    assert everything is not None and everything("a.b.c") and not everything("a.c")


def test_the_router_decides_once_per_topic_and_stays_bounded() -> None:
    calls: list[str] = []

    def counting(topic: str) -> bool:
        calls.append(topic)
        return topic.startswith("k")

    router: Router[str] = Router([("all", None), ("k", ("k*",))])
    router._targets[1] = ("k", counting)
    assert router("koji") == ("all", "k")
    assert router("koji") == ("all", "k")
    assert router("bodhi") == ("all",)
    assert calls == ["koji", "bodhi"]
    for n in range(MAX_TOPICS + 5):
        router(f"t{n}")
    assert router.topics_seen() <= MAX_TOPICS


def test_ill_typed_topics_are_an_error_naming_the_plugin(open_store: Any) -> None:
    class Bad(Koji):
        ident = "rec_bad"
        metrics = (Counter("rec_bad", "x"),)
        topics = ("ok.*", "")

    with pytest.raises(PluginError, match=r"rec_bad.*topics"):
        open_store(plugins={"rec_bad": Bad})

    class BadReads(Koji):
        ident = "rec_bad_reads"
        metrics = (Counter("rec_bad_reads", "x"),)

        def reads(self) -> tuple[str, ...]:
            return "koji.*"  # type: ignore[return-value]  # a string, not a tuple

    with pytest.raises(PluginError, match=r"rec_bad_reads.*topics"):
        open_store(plugins={"rec_bad_reads": BadReads})


def every_message() -> list[dict[str, Any]]:
    """The corpus, the plugins' own test messages, and a slice of the scaled corpus."""
    out = corpus_messages()
    for path in sorted(DATA.glob("*.jsonl")):
        out += [json.loads(line)["message"] for line in path.read_text().splitlines()]
    out += list(Generator(7).messages(3000))
    return out


#: options under which a plugin counts some of the corpus (its messages are staging ones)
OPTIONS = {"releng_image_uploads": {"prefixes": ["org.fedoraproject.stg.fedimg."]}}


#: the bundled plugins that read every message: each counts something of every message
READ_ALL = {
    "volume",
    "volume_by_agent",
    "volume_by_category",
    "volume_by_package",
    "volume_by_topic",
    "volume_by_user",
}


def test_the_volume_plugins_read_every_message_and_the_others_declare_their_topics() -> None:
    for ident, cls in bundled().items():
        assert (cls().reads() is None) == (ident in READ_ALL), ident


@pytest.mark.parametrize("ident", sorted(set(bundled()) - READ_ALL))
def test_a_bundled_plugin_counts_nothing_outside_its_topics(ident: str) -> None:
    """Over every message the tests know, the plugin emits nothing for a message its patterns
    do not match: routing changes no count."""
    from statscache_exporter import config as configuration

    settings: dict[str, Any] = {i: {"enabled": i == ident} for i in bundled()}
    if ident in OPTIONS:
        settings[ident]["options"] = OPTIONS[ident]
    (plugin,) = enabled_plugins(configuration.from_dict({"plugins": settings}), bundled())
    reads = compile_patterns(plugin.reads())
    assert reads is not None
    counted = outside = 0
    for raw in every_message():
        try:
            topic = normalize(raw).topic
        except ValueError:
            continue
        out = emitted(plugin, raw)
        counted += bool(out)
        if not reads(topic):
            outside += 1
            assert out == [], f"{ident} counts {topic}, which its patterns do not match"
    assert counted > 0 and outside > 0  # the check saw both kinds of message


class PerTopic(Recorder):
    """Counts by topic and in all, and says its emissions follow from the topic alone."""

    ident = "rec_per_topic"
    metrics = (
        Counter("rec_per_topic", "given to rec_per_topic"),
        Counter("rec_per_topic_by_topic", "given to rec_per_topic, by topic", ("topic",)),
    )
    topic_only = True

    def process(self, message: Message, out: Output) -> None:
        self.seen.append(message.topic)
        if message.topic.endswith(".issues"):
            raise ValueError("a topic it fails on")
        out.inc("rec_per_topic")
        out.inc("rec_per_topic_by_topic", 2, topic=message.topic)


def test_a_topic_only_plugin_runs_once_a_topic_and_counts_every_message(open_store: Any) -> None:
    """A ``topic_only`` plugin runs on the first message of each topic; its emissions count
    for every later message of the topic (each one once, deduplicated as any). A topic it
    raises on is not remembered: it runs on each of that topic's messages, each failure
    counted."""
    p = open_store(plugins={c.ident: c for c in (Recorder, PerTopic)})
    Recorder.seen, PerTopic.seen = [], []
    for n, topic in enumerate(TOPICS * 3):
        assert p.handle(fedmsg(topic, n)) == "processed"
    assert p.handle(fedmsg(TOPICS[0], 0)) == "duplicate"
    p.flush()
    failing = "io.pagure.prod.pagure.issues"
    assert PerTopic.seen == [*TOPICS, failing, failing]
    assert Recorder.seen == TOPICS * 3
    assert p.stats.plugin_errors["rec_per_topic"] == 3
    counted = [t for t in TOPICS if t != failing]
    assert p.store.totals_by_metric("rec_per_topic") == {"{}": 3 * len(counted)}
    assert p.store.totals_by_metric("rec_per_topic_by_topic") == {
        json.dumps({"topic": t}, separators=(",", ":")): 6 for t in counted
    }


def test_the_volume_plugins_count_the_same_when_run_on_every_message(
    open_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundled plugins that say ``topic_only`` (volume, by category, by topic) give the
    same store, every bucket at every resolution and every total, as when they run on every
    message: over the whole corpus, twice (the second time all duplicates)."""
    only = {i for i, c in bundled().items() if c.topic_only}
    assert only == {"volume", "volume_by_category", "volume_by_topic"}
    dumps = []
    for name, remembered in (("remembered.sqlite", True), ("every.sqlite", False)):
        for ident in only:
            monkeypatch.setattr(bundled()[ident], "topic_only", remembered)
        p = open_store(name)
        for raw in corpus_messages() * 2:
            p.handle(json.loads(json.dumps(raw)))
        p.flush()
        dumps.append(p.store.counts.dump())
    assert dumps[0] == dumps[1]
    assert dumps[0]["totals"]  # the corpus counted something
