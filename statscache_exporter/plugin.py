"""The plugin API: what a plugin declares, what it may emit, and how plugins are found.

A plugin is pure: :meth:`Plugin.process` gets a :class:`~statscache_exporter.message.Message`
and an :class:`Output`, and calls ``out.inc(...)`` / ``out.set(...)``. It opens no sockets,
touches no database, starts no threads and keeps no global state; the framework does the
bucketing, storing, batching and error counting around it.

Example::

    from statscache_exporter.plugin import Counter, Plugin

    class Volume(Plugin):
        ident = "volume"
        name = "Volume"
        summary = "Messages on the bus"
        metrics = (Counter("messages", "Messages seen on the bus"),)

        def process(self, message, out):
            out.inc("messages")

A plugin that reads only some topics says which (``topics``, or :meth:`Plugin.reads` when its
options decide): the pipeline then hands it only the messages whose topic matches, decided
once per distinct topic (``routing.py``). One that says nothing gets every message.

Plugins are found through the entry-point group ``statscache.plugin``; an entry point names a
:class:`Plugin` subclass (or an iterable of them). The bundled plugins use the same group.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Literal, NoReturn

from statscache_exporter.message import Message
from statscache_exporter.text import is_text

ENTRY_POINT_GROUP = "statscache.plugin"

_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
#: Label names the framework may add itself (sinks add e.g. ``instance``); plugins can't use them.
RESERVED_LABELS = frozenset({"instance", "job", "le", "quantile", "plugin"})

Kind = Literal["counter", "gauge"]


class PluginError(Exception):
    """A plugin is declared or configured wrongly; the message names the plugin."""


class EmitError(PluginError):
    """A plugin emitted something it did not declare (unknown metric, wrong labels, bad value)."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric a plugin declares: its name (without prefix or ``_total``), kind, help
    text and label names. The exporter adds the prefix and Prometheus suffixes."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


def Counter(name: str, help: str, labels: Iterable[str] = ()) -> Metric:
    """Declare a counter: it only goes up; each bucket holds the count of that bucket."""
    return Metric(name, "counter", help, tuple(labels))


def Gauge(name: str, help: str, labels: Iterable[str] = ()) -> Metric:
    """Declare a gauge: each bucket holds the value set by the newest message in it."""
    return Metric(name, "gauge", help, tuple(labels))


@dataclass(frozen=True)
class NoOptions:
    """A plugin that takes no options."""


class Plugin:
    """Base class of every plugin. Subclasses set the class attributes and :meth:`process`.

    ``Options`` is a dataclass of the plugin's own options; the config's
    ``plugins.<ident>.options`` is validated against it and passed to ``__init__``.
    ``backlog_delta`` is how far back history is useful to the plugin (the gap filler and a
    first start use it); None means all of it.

    ``topics`` are patterns over the topic of the messages the plugin reads (``fnmatch``
    style, case-sensitive: ``*`` is any run of characters, dots included, ``?`` one character,
    ``[...]`` one of a set): ``("*.buildsys.build.state.change",)``. None, the default, reads
    every message. A plugin whose options decide its topics overrides :meth:`reads` instead.
    A message whose topic matches none of them is never given to the plugin, so a pattern
    must cover every topic :meth:`process` counts anything for.

    ``topic_only``: True when what :meth:`process` emits for a message follows from its topic
    alone (and its category, which the topic gives): the pipeline then runs the plugin on the
    first message of each topic and repeats those emissions for the topic's later messages
    (the volume plugins by topic and category: a call and its checks less a message). False,
    the default, runs it on every message.
    """

    ident: ClassVar[str]
    name: ClassVar[str]
    summary: ClassVar[str]
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]]
    Options: ClassVar[type] = NoOptions
    backlog_delta: ClassVar[timedelta | None] = None
    topics: ClassVar[tuple[str, ...] | None] = None
    topic_only: ClassVar[bool] = False

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def reads(self) -> tuple[str, ...] | None:
        """The topic patterns of the messages this plugin reads, None for all of them; by
        default the class's ``topics``. Asked once, when the pipeline is built."""
        return type(self).topics

    def process(self, message: Message, out: Output) -> None:
        raise NotImplementedError


#: a gauge's value types, a tuple made once (a union in isinstance is made at each call)
_NUMBERS = (int, float)


class Output:
    """What a plugin emits for one message, checked against its declarations.

    Emissions are buffered and only applied once ``process`` returns, so a plugin that raises
    half-way leaves nothing behind for that message. Label values are checked (strings, valid
    Unicode) the first time a series is seen: ``known`` maps the series already checked (the
    aggregator's) to their objects, which an emission then carries. The pipeline gives every
    plugin's Output one shared buffer and cuts a failed plugin's part off it.
    """

    __slots__ = ("_emitted", "_known", "_metrics", "_plugin")

    def __init__(
        self,
        plugin: str,
        metrics: Mapping[str, Metric],
        known: Mapping[tuple[str, tuple[str, ...]], Any] | None = None,
        buffer: list[tuple[Metric, tuple[str, ...], float, Any]] | None = None,
    ) -> None:
        self._plugin = plugin
        self._metrics = metrics
        self._known = known if known is not None else {}
        self._emitted = buffer if buffer is not None else []

    def inc(self, metric: str, amount: int = 1, /, **labels: str) -> None:
        """Add ``amount`` (a whole number ≥ 0) to a counter's series."""
        decl = self._metrics.get(metric)
        if decl is None or decl.kind != "counter":
            decl = self._declared(metric, "counter")
        if (
            amount.__class__ is not int
            and (isinstance(amount, bool) or not isinstance(amount, int))
        ) or amount < 0:
            raise EmitError(
                f"plugin {self._plugin!r}: counter {metric!r} takes a whole number ≥ 0, "
                f"got {amount!r}"
            )
        # _emit's work for the usual arities, inline: a call less for each of a message's
        # ~5 emissions (60-70 ns an emission, timeit; other arities go through _emit)
        names = decl.labels
        n = len(names)
        if n == len(labels) and n < 2:
            try:
                values = (labels[names[0]],) if n else ()
            except KeyError:
                self._wrong_labels(decl, labels)
            try:
                series = self._known.get((decl.name, values))
            except TypeError:  # an unhashable value: named by _check_values
                series = None
            if series is None:
                self._check_values(decl, values)
            self._emitted.append((decl, values, amount, series))
            return
        self._emit(decl, labels, amount)

    def set(self, metric: str, value: float, /, **labels: str) -> None:
        """Set a gauge's series to ``value`` as of this message's time."""
        decl = self._metrics.get(metric)
        if decl is None or decl.kind != "gauge":
            decl = self._declared(metric, "gauge")
        if (
            value.__class__ is not float
            and (isinstance(value, bool) or not isinstance(value, _NUMBERS))
        ) or value != value:
            raise EmitError(
                f"plugin {self._plugin!r}: gauge {metric!r} takes a number, got {value!r}"
            )
        self._emit(decl, labels, float(value))

    def drain(self) -> list[tuple[Metric, tuple[str, ...], float]]:
        """The emissions so far, emptied: (metric, label values in declared order, amount)."""
        emitted = [(m, labels, amount) for m, labels, amount, _ in self._emitted]
        self._emitted.clear()
        return emitted

    def _emit(self, decl: Metric, labels: Mapping[str, Any], amount: float) -> None:
        names = decl.labels
        n = len(names)
        if len(labels) != n:
            self._wrong_labels(decl, labels)
        try:  # the usual arities without a comprehension (a frame of its own in 3.11)
            if n == 0:
                values: tuple[Any, ...] = ()
            elif n == 1:
                values = (labels[names[0]],)
            elif n == 2:
                values = (labels[names[0]], labels[names[1]])
            else:
                values = tuple([labels[name] for name in names])
        except KeyError:
            self._wrong_labels(decl, labels)
        try:
            series = self._known.get((decl.name, values))
        except TypeError:  # an unhashable value: named below
            series = None
        if series is None:
            self._check_values(decl, values)
        self._emitted.append((decl, values, amount, series))

    def _declared(self, metric: str, kind: Kind) -> Metric:
        decl = self._metrics.get(metric)
        if decl is None:
            raise EmitError(
                f"plugin {self._plugin!r} emitted undeclared metric {metric!r}; "
                f"it declares {sorted(self._metrics)}"
            )
        if decl.kind != kind:
            verb = "inc" if kind == "counter" else "set"
            raise EmitError(
                f"plugin {self._plugin!r}: {metric!r} is a {decl.kind}, {verb}() is for {kind}s"
            )
        return decl

    def _check_values(self, decl: Metric, values: tuple[Any, ...]) -> None:
        for name, value in zip(decl.labels, values, strict=True):
            if not isinstance(value, str):
                raise EmitError(
                    f"plugin {self._plugin!r}: label {name!r} of {decl.name!r} must be a "
                    f"string, got {type(value).__name__} {value!r}"
                )
            if not value.isascii() and not is_text(value):
                raise EmitError(
                    f"plugin {self._plugin!r}: label {name!r} of {decl.name!r} is not valid "
                    f"Unicode: {value[:80]!r}"
                )

    def _wrong_labels(self, decl: Metric, labels: Mapping[str, Any]) -> NoReturn:
        raise EmitError(
            f"plugin {self._plugin!r}: metric {decl.name!r} takes labels "
            f"{list(decl.labels)}, got {sorted(labels)}"
        )


def under(prefixes: Iterable[str], *events: str) -> tuple[str, ...]:
    """Topic patterns for ``events`` (themselves patterns, e.g. ``"update.*"``) after each of
    ``prefixes`` (literal topic beginnings, e.g. ``"org.fedoraproject.prod.bodhi."``); with no
    events, everything under each prefix."""
    return tuple(glob.escape(p) + e for p in prefixes for e in (events or ("*",)))


# --- declarations ------------------------------------------------------------------------


def validate_class(cls: Any, origin: str) -> type[Plugin]:
    """Check a plugin class's declarations, raising :class:`PluginError` naming it."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginError(f"{origin}: {cls!r} is not a subclass of statscache_exporter.Plugin")
    ident = getattr(cls, "ident", None)
    where = f"plugin {ident!r} ({origin})"
    if not isinstance(ident, str) or not _IDENT.fullmatch(ident):
        raise PluginError(f"{origin}: ident {ident!r} must match {_IDENT.pattern}")
    for attr in ("name", "summary"):
        if not isinstance(getattr(cls, attr, None), str):
            raise PluginError(f"{where}: {attr} must be a string")
    if cls.process is Plugin.process:
        raise PluginError(f"{where}: does not implement process(message, out)")
    if not dataclasses.is_dataclass(cls.Options):
        raise PluginError(f"{where}: Options must be a dataclass")
    if cls.backlog_delta is not None and not isinstance(cls.backlog_delta, timedelta):
        raise PluginError(f"{where}: backlog_delta must be a timedelta or None")
    _validate_metrics(getattr(cls, "metrics", None), where)
    check_topics(cls.topics, where)
    return cls


def check_topics(topics: Any, where: str) -> tuple[str, ...] | None:
    """``topics`` as a plugin may declare them: None, or a tuple of non-empty strings."""
    if topics is None:
        return None
    if not isinstance(topics, tuple | list) or not all(isinstance(t, str) and t for t in topics):
        raise PluginError(
            f"{where}: topics must be None (every message) or a tuple of non-empty topic "
            f"patterns, got {topics!r}"
        )
    return tuple(topics)


def _validate_metrics(metrics: Any, where: str) -> None:
    if not isinstance(metrics, tuple | list) or not metrics:
        raise PluginError(f"{where}: metrics must be a non-empty tuple of Counter()/Gauge()")
    seen: set[str] = set()
    for m in metrics:
        if not isinstance(m, Metric):
            raise PluginError(f"{where}: {m!r} is not a Counter() or Gauge() declaration")
        if not _METRIC_NAME.fullmatch(m.name) or m.name.endswith(("_total", "_created")):
            raise PluginError(
                f"{where}: metric name {m.name!r} must match {_METRIC_NAME.pattern} and not "
                "end in _total or _created (the exporter adds those)"
            )
        if m.name in seen:
            raise PluginError(f"{where}: metric {m.name!r} is declared twice")
        seen.add(m.name)
        if m.kind not in ("counter", "gauge"):
            raise PluginError(f"{where}: metric {m.name!r} has kind {m.kind!r}")
        if len(set(m.labels)) != len(m.labels):
            raise PluginError(f"{where}: metric {m.name!r} repeats a label name")
        for label in m.labels:
            if not _LABEL_NAME.fullmatch(label) or label in RESERVED_LABELS:
                raise PluginError(
                    f"{where}: label {label!r} of {m.name!r} must match {_LABEL_NAME.pattern} "
                    f"and not be one of {sorted(RESERVED_LABELS)}"
                )


def check_unique_metrics(plugins: Iterable[type[Plugin]]) -> None:
    """Metric names are global (they become Prometheus families and InfluxDB measurements):
    two enabled plugins must not declare the same one."""
    owner: dict[str, str] = {}
    for cls in plugins:
        for m in cls.metrics:
            if m.name in owner:
                raise PluginError(
                    f"metric {m.name!r} is declared by both plugin {owner[m.name]!r} "
                    f"and plugin {cls.ident!r}"
                )
            owner[m.name] = cls.ident


# --- discovery ---------------------------------------------------------------------------


def discover(eps: Iterable[EntryPoint] | None = None) -> dict[str, type[Plugin]]:
    """Every installed plugin class by ident, from the ``statscache.plugin`` entry points.

    A plugin that fails to import or is declared wrongly is an error naming it: the operator
    disables it in config (``enabled: false``) rather than have it vanish silently.
    """
    found: dict[str, type[Plugin]] = {}
    origin_of: dict[str, str] = {}
    for ep in eps if eps is not None else entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name} = {ep.value}"
        try:
            loaded = ep.load()
        except Exception as exc:
            raise PluginError(f"{origin}: cannot be loaded: {exc!r}") from exc
        for cls in _classes(loaded):
            validate_class(cls, origin)
            if cls.ident in found and found[cls.ident] is not cls:
                raise PluginError(
                    f"plugin ident {cls.ident!r} is provided by both "
                    f"{origin_of[cls.ident]} and {origin}"
                )
            found[cls.ident] = cls
            origin_of[cls.ident] = origin
    return dict(sorted(found.items()))


def _classes(loaded: Any) -> Iterator[Any]:
    """An entry point may name one class or an iterable of classes (statscache allowed both)."""
    if isinstance(loaded, type):
        yield loaded
    elif isinstance(loaded, Iterable):
        yield from loaded
    else:
        yield loaded
