"""The one message type, and normalizers from every shape the Fedora bus has used.

Four shapes reach the exporter:

- a fedmsg envelope (``topic``, ``msg``, ``timestamp``, ``msg_id``, ``username``, ...);
- a fedora-messaging message, either the live object or its JSON form
  (``id``, ``topic``, ``headers``, ``body``, ``queue``, ``priority``);
- a datagrepper ``/raw`` item (a fedmsg envelope plus ``users``, ``packages``, ``agent_name``);
- a datagrepper ``/v2`` item, which is the JSON form of a fedora-messaging message.

Whatever the shape, the result is a :class:`Message`, or a :class:`Rejected` error whose
``reason`` is one of :data:`REJECT_REASONS`. Normalizers never raise anything else, so a broken
message is counted and logged by the pipeline instead of stopping the daemon.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from statscache_exporter import schemas
from statscache_exporter.text import is_text

#: Every reason a message can be rejected for; self-metrics and summaries count by these.
REJECT_REASONS = (
    "not_json",  # the bytes are not JSON (or not UTF-8)
    "not_object",  # the JSON is not an object
    "unknown_shape",  # an object, but none of the four message shapes
    "no_topic",  # topic missing, empty or not a string
    "bad_timestamp",  # timestamp missing, not a number/ISO 8601 string, or before the epoch
    "bad_body",  # the body is not a JSON object (or, in a message without an id, too deeply
    # nested or with keys too mixed to hash into one)
    "bad_id",  # the id is present but not a non-empty string
    "future_timestamp",  # further in the future than the configured clock skew (pipeline)
    "bad_unicode",  # the topic or id holds a lone surrogate: no UTF-8 can carry it
    "malformed",  # anything else a normalizer choked on (logged with a traceback: a bug)
)

#: Deployment environments that may stand third in a topic (``<prefix>.<env>.<category>``).
DEFAULT_ENVIRONMENTS = frozenset({"prod", "stg", "dev", "stage", "test", "local"})

_USER_FLAG = "fedora_messaging_user_"
_PACKAGE_FLAG = "fedora_messaging_rpm_"


class Rejected(ValueError):
    """A message that cannot be normalized; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Message:
    """A bus message in one shape, whatever it arrived as. Immutable.

    ``timestamp`` is timezone-aware UTC; ``epoch`` is the same instant in seconds, which the
    aggregation uses for bucketing (computed from ``timestamp`` when not given). :func:`read`
    gives an epoch timestamp as its seconds, whose datetime is made when first asked for
    (nothing in the pipeline asks; the bundled plugins read ``epoch``).
    ``usernames`` and ``packages`` are sorted and unique.

    A plain class with slots rather than a frozen dataclass: built once per message, it costs
    a fifth of one (whose ``__init__`` goes through ``object.__setattr__`` for every field).

    ``body`` may be given as the body's JSON text (a ``msgspec.Raw`` of an object, checked by
    :func:`read`): it is decoded when it is first read, and most messages reach only plugins
    that never read it (the volume plugins), which spares them the larger part of decoding.
    """

    __slots__ = (
        "_body",
        "_when",
        "agent",
        "category",
        "epoch",
        "headers",
        "id",
        "packages",
        "topic",
        "usernames",
    )
    id: str
    topic: str
    _when: datetime | float
    _body: Mapping[str, Any] | msgspec.Raw
    headers: Mapping[str, Any]
    category: str | None
    usernames: tuple[str, ...]
    packages: tuple[str, ...]
    agent: str | None
    epoch: float

    def __init__(
        self,
        id: str,
        topic: str,
        timestamp: datetime | float,
        body: Mapping[str, Any] | msgspec.Raw,
        headers: Mapping[str, Any],
        category: str | None,
        usernames: tuple[str, ...],
        packages: tuple[str, ...],
        agent: str | None,
        epoch: float | None = None,
    ) -> None:
        _SET_ID(self, id)
        _SET_TOPIC(self, topic)
        if epoch is None:  # (a float ``timestamp`` comes with its epoch, from read)
            assert isinstance(timestamp, datetime)
            epoch = timestamp.timestamp()
        _SET_WHEN(self, timestamp)
        _SET_BODY(self, body)
        _SET_HEADERS(self, headers)
        _SET_CATEGORY(self, category)
        _SET_USERNAMES(self, usernames)
        _SET_PACKAGES(self, packages)
        _SET_AGENT(self, agent)
        _SET_EPOCH(self, epoch)

    @property
    def timestamp(self) -> datetime:
        when = self._when
        if when.__class__ is float:  # an epoch timestamp's seconds (see above)
            when = datetime.fromtimestamp(when, UTC)
            _SET_WHEN(self, when)
        return when  # type: ignore[return-value]

    @property
    def body(self) -> Mapping[str, Any]:
        body = self._body
        if body.__class__ is msgspec.Raw:
            body = _decode_object(body)
            _SET_BODY(self, body)
        return body  # type: ignore[return-value]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Message is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Message is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # bodies are dicts

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Message({shown})"


_FIELDS = (
    "id",
    "topic",
    "timestamp",
    "body",
    "headers",
    "category",
    "usernames",
    "packages",
    "agent",
    "epoch",
)
# the slots' own setters: what __init__ writes through (its __setattr__ refuses)
_SET_ID = Message.__dict__["id"].__set__
_SET_TOPIC = Message.__dict__["topic"].__set__
_SET_WHEN = Message.__dict__["_when"].__set__
_SET_BODY = Message.__dict__["_body"].__set__
_SET_HEADERS = Message.__dict__["headers"].__set__
_SET_CATEGORY = Message.__dict__["category"].__set__
_SET_USERNAMES = Message.__dict__["usernames"].__set__
_SET_PACKAGES = Message.__dict__["packages"].__set__
_SET_AGENT = Message.__dict__["agent"].__set__
_SET_EPOCH = Message.__dict__["epoch"].__set__

#: (topic, environments) → category, for the few thousand topics of the bus
_CATEGORIES: dict[tuple[str, frozenset[str]], str | None] = {}


def category_of(topic: str, environments: Iterable[str] = DEFAULT_ENVIRONMENTS) -> str | None:
    """The category of a topic: ``topic.split('.')[3]`` when the topic carries a
    ``<prefix>.<env>.`` prefix, else its first component (fedora-messaging schema topics such
    as ``bodhi.update.comment`` have none). Remembered per topic."""
    envs = environments if isinstance(environments, frozenset) else frozenset(environments)
    key = (topic, envs)
    found = _CATEGORIES.get(key, _UNKNOWN)
    if found is not _UNKNOWN:
        return found  # type: ignore[return-value]
    parts = topic.split(".")
    found = (parts[3] if len(parts) >= 4 and parts[2] in envs else parts[0]) or None
    if len(_CATEGORIES) >= 100_000:  # made-up topics must not grow it without bound
        _CATEGORIES.clear()
    _CATEGORIES[key] = found
    return found


_UNKNOWN = object()


#: msgspec's JSON decoder: a message decoded in less than half json.loads's time
_decode = msgspec.json.Decoder().decode


def loads(data: bytes | str | msgspec.Raw) -> Any:
    """Parse JSON, turning every failure (including bad UTF-8) into a ``not_json`` rejection.

    msgspec reads it first; what msgspec refuses and json accepts (``NaN``, ``1e400``, lone
    surrogate escapes) is read by ``json.loads``, so the values are exactly json's
    (``tests/test_message.py``)."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
        pass  # json decides, and names the failure (a str holding a lone surrogate: json reads it)
    try:
        if not isinstance(data, str):
            data = bytes(data).decode("utf-8")
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejected("not_json", str(exc)[:200]) from None


class _Envelope(msgspec.Struct):
    """The keys of the four shapes that :func:`normalize` reads, with the body as its raw
    JSON (validated, not decoded); any other key is skipped. UNSET: the key is absent."""

    topic: Any = msgspec.UNSET
    msg: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    body: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    headers: Any = msgspec.UNSET
    timestamp: Any = msgspec.UNSET
    msg_id: Any = msgspec.UNSET
    id: Any = msgspec.UNSET
    users: Any = msgspec.UNSET
    packages: Any = msgspec.UNSET
    agent_name: Any = msgspec.UNSET


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_UNSET = msgspec.UNSET
#: the first byte of a raw JSON object (msgspec keeps a value from its first byte)
_OPEN_BRACE = ord("{")


def read(
    data: bytes | str,
    environments: Iterable[str] = DEFAULT_ENVIRONMENTS,
    use_schemas: bool = True,
) -> Message:
    """``normalize(loads(data))``, the same message or the same rejection, with the body left
    as JSON text until it is read (see :class:`Message`; a schema class asked for usernames
    reads it at once): any of the shapes with an id and an object for a body. Anything else
    (not an object, no body, no id, a value msgspec refuses) goes through :func:`loads`."""
    try:
        if data.__class__ is bytes and not data.isascii():
            data.decode("utf-8")  # msgspec skips the body without checking its UTF-8
        env = _decode_envelope(data)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError, UnicodeDecodeError):
        return normalize(loads(data), environments, use_schemas)
    msg = env.msg
    if msg is _UNSET or env.body is not _UNSET:
        return _read_v2(data, env, environments, use_schemas)
    if env.msg_id is _UNSET or env.msg_id is None or memoryview(msg)[0] != _OPEN_BRACE:
        return normalize(loads(data), environments, use_schemas)
    if env.users is not _UNSET or env.packages is not _UNSET or env.agent_name is not _UNSET:
        carried: _Carried | None = _Carried(
            usernames=None if env.users is _UNSET else _string_list(env.users),
            packages=None if env.packages is _UNSET else _string_list(env.packages),
            agent=None if env.agent_name is _UNSET else _agent_name(env.agent_name),
        )
    else:
        carried = None
    topic = _topic(None if env.topic is _UNSET else env.topic)
    headers = _headers(env.headers)
    timestamp = None if env.timestamp is _UNSET else env.timestamp
    when, epoch = _epoch_timestamp(timestamp, "timestamp")
    msg_id = _message_id(env.msg_id, "msg_id", topic, epoch, {})
    return _build(msg_id, topic, when, epoch, msg, headers, environments, use_schemas, carried)


def _read_v2(
    data: bytes | str, env: _Envelope, environments: Iterable[str], use_schemas: bool
) -> Message:
    """:func:`read` of a datagrepper /v2 item (a fedora-messaging message's JSON)."""
    body = env.body
    if body is _UNSET or env.id is _UNSET or env.id is None or memoryview(body)[0] != _OPEN_BRACE:
        return normalize(loads(data), environments, use_schemas)
    topic = _topic(None if env.topic is _UNSET else env.topic)
    headers = _headers(env.headers)
    when = _iso_timestamp(headers.get("sent-at"), "headers.sent-at")
    epoch = when.timestamp()
    msg_id = _message_id(env.id, "id", topic, epoch, {})
    return _build(msg_id, topic, when, epoch, body, headers, environments, use_schemas)


def _decode_object(raw: msgspec.Raw) -> dict[str, Any]:
    """A body :func:`read` left as JSON text, decoded as :func:`loads` would have."""
    value = loads(raw)
    assert isinstance(value, dict)
    return value


def normalize(
    obj: Any, environments: Iterable[str] = DEFAULT_ENVIRONMENTS, use_schemas: bool = True
) -> Message:
    """A :class:`Message` from any of the four shapes, recognised by their keys."""
    if not isinstance(obj, dict):
        if _is_fedora_messaging_object(obj):
            return from_fedora_messaging(obj, environments, use_schemas)
        raise Rejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
    if "msg" in obj and "body" not in obj:
        if "users" in obj or "packages" in obj or "agent_name" in obj:
            return from_datagrepper_raw(obj, environments, use_schemas)
        return from_fedmsg(obj, environments, use_schemas)
    if "body" in obj:
        return from_datagrepper_v2(obj, environments, use_schemas)
    if "topic" not in obj:
        raise Rejected("no_topic", "no 'topic' key (and no 'msg' or 'body' either)")
    raise Rejected("unknown_shape", f"keys {sorted(obj)[:12]} match no known message shape")


def from_fedmsg(
    env: Mapping[str, Any],
    environments: Iterable[str] = DEFAULT_ENVIRONMENTS,
    use_schemas: bool = True,
) -> Message:
    """A fedmsg envelope: ``timestamp`` in epoch seconds, ``msg`` as the body."""
    return _build(*_envelope(env), environments, use_schemas)


def from_datagrepper_raw(
    item: Mapping[str, Any],
    environments: Iterable[str] = DEFAULT_ENVIRONMENTS,
    use_schemas: bool = True,
) -> Message:
    """A datagrepper ``/raw`` item: an envelope whose ``users``, ``packages`` and
    ``agent_name`` datanommer already computed; those win over any other source."""
    carried = _Carried(
        usernames=_string_list(item.get("users")) if "users" in item else None,
        packages=_string_list(item.get("packages")) if "packages" in item else None,
        agent=_agent_name(item.get("agent_name")),
    )
    return _build(*_envelope(item), environments, use_schemas, carried)


def _envelope(
    env: Mapping[str, Any],
) -> tuple[str, str, datetime | float, float, Mapping[str, Any], Mapping[str, Any]]:
    """id, topic, time (and in seconds), body and headers of a fedmsg envelope (or a /raw
    item, which is one)."""
    topic = _topic(env.get("topic"))
    body = _body(env.get("msg"), "msg")
    headers = _headers(env.get("headers"))
    when, epoch = _epoch_timestamp(env.get("timestamp"), "timestamp")
    msg_id = _message_id(env.get("msg_id"), "msg_id", topic, epoch, body)
    return msg_id, topic, when, epoch, body, headers


def from_datagrepper_v2(
    item: Mapping[str, Any],
    environments: Iterable[str] = DEFAULT_ENVIRONMENTS,
    use_schemas: bool = True,
) -> Message:
    """A datagrepper ``/v2`` item, which is also the JSON form of a fedora-messaging message
    (``fedora_messaging.message.dumps``): time from the ``sent-at`` header."""
    topic = _topic(item.get("topic"))
    body = _body(item.get("body"), "body")
    headers = _headers(item.get("headers"))
    when = _iso_timestamp(headers.get("sent-at"), "headers.sent-at")
    epoch = when.timestamp()
    msg_id = _message_id(item.get("id"), "id", topic, epoch, body)
    return _build(msg_id, topic, when, epoch, body, headers, environments, use_schemas)


def from_fedora_messaging(
    message: Any,
    environments: Iterable[str] = DEFAULT_ENVIRONMENTS,
    use_schemas: bool = True,
) -> Message:
    """A live ``fedora_messaging.message.Message``; its own class is the schema, so its
    ``usernames``/``packages``/``agent_name`` are asked directly (guarded)."""
    headers = _headers(getattr(message, "_headers", None))
    item = {
        "id": getattr(message, "id", None),
        "topic": getattr(message, "topic", None),
        "body": getattr(message, "body", None),
        "headers": headers,
    }
    topic = _topic(item["topic"])
    body = _body(item["body"], "body")
    when = _iso_timestamp(headers.get("sent-at"), "headers.sent-at")
    msg_id = _message_id(item["id"], "id", topic, when.timestamp(), body)
    carried = _carried_from_headers(headers)
    if use_schemas:
        wanted = (carried.usernames is None, carried.packages is None, carried.agent is None)
        carried = carried.fill(schemas.facts_of(message, wanted))
    return _build(
        msg_id, topic, when, when.timestamp(), body, headers, environments, False, carried
    )


# --- helpers ---------------------------------------------------------------------------


class _Carried(NamedTuple):
    """What the message itself says about usernames, packages and agent (None: unknown)."""

    usernames: tuple[str, ...] | None = None
    packages: tuple[str, ...] | None = None
    agent: str | None = None

    def fill(self, facts: schemas.Facts) -> _Carried:
        return _Carried(
            self.usernames if self.usernames is not None else facts.usernames,
            self.packages if self.packages is not None else facts.packages,
            self.agent if self.agent is not None else facts.agent,
        )


def _build(
    msg_id: str,
    topic: str,
    when: datetime | float,
    epoch: float,
    body: Mapping[str, Any] | msgspec.Raw,
    headers: Mapping[str, Any],
    environments: Iterable[str],
    use_schemas: bool,
    carried: _Carried | None = None,
) -> Message:
    if carried is None:
        carried = _carried_from_headers(headers)
    if (
        use_schemas
        and schemas.SCHEMA_HEADER in headers
        and (carried.usernames is None or carried.packages is None or carried.agent is None)
    ):
        wanted = (carried.usernames is None, carried.packages is None, carried.agent is None)
        if isinstance(body, msgspec.Raw):  # the schema class reads it
            body = _decode_object(body)
        carried = carried.fill(schemas.facts_for(topic, body, headers, wanted))
    return Message(
        msg_id,
        topic,
        when,
        body,
        headers,
        category_of(topic, environments),
        carried.usernames or (),
        carried.packages or (),
        carried.agent,
        epoch,
    )


def _carried_from_headers(headers: Mapping[str, Any]) -> _Carried:
    """fedora-messaging's header flags: ``fedora_messaging_user_<name>: true`` and
    ``fedora_messaging_rpm_<pkg>: true``. A kind with no flag is unknown, not empty; the
    headers carry no agent. A flag naming nothing (``fedora_messaging_user_`` alone) or a name
    no UTF-8 can carry is dropped, as it is from datagrepper's lists."""
    users: list[str] = []
    pkgs: list[str] = []
    for k, v in headers.items():
        if v and isinstance(k, str) and k.startswith("fedora_messaging_"):
            if k.startswith(_USER_FLAG):
                users.append(k[len(_USER_FLAG) :])
            elif k.startswith(_PACKAGE_FLAG):
                pkgs.append(k[len(_PACKAGE_FLAG) :])
    return _Carried(
        _string_list(users) or None if users else None,
        _string_list(pkgs) or None if pkgs else None,
    )


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Rejected("no_topic", f"topic is {value!r}")
    if not is_text(value):
        raise Rejected("bad_unicode", f"topic {value[:80]!r} is not valid Unicode")
    return value


def _body(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Rejected("bad_body", f"{key} is a {type(value).__name__}, not an object")
    return value


def _headers(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# isinstance's types as tuples made once: ``int | float | str`` is a new union at each call,
# ~80 ns (timeit), on every message
_TIMESTAMP_TYPES = (int, float, str)
_LISTS = (list, tuple)


#: the last whole second a datetime holds, 9999-12-31T23:59:59Z
_LAST_SECOND = 253_402_300_799


def _epoch_timestamp(value: Any, key: str) -> tuple[datetime | float, float]:
    """The time of an epoch timestamp (or an ISO 8601 string in its place), and that instant
    in seconds. An epoch's time is its seconds, a float, which :attr:`Message.timestamp` makes
    a datetime of when first asked (``datetime.fromtimestamp``); its instant is what that
    datetime's ``timestamp()`` would give, computed as it is: the microseconds rounded half to
    even (tests/test_message.py compares the two on 2,000,000 values and the edges)."""
    if value.__class__ is not float and (
        isinstance(value, bool) or not isinstance(value, _TIMESTAMP_TYPES)
    ):
        raise Rejected("bad_timestamp", f"{key} is {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise Rejected("bad_timestamp", f"{key} is out of range") from None
    except ValueError:
        when = _iso_timestamp(value, key)
        return when, when.timestamp()
    if not 0.0 <= seconds < math.inf:  # NaN too
        raise Rejected("bad_timestamp", f"{key} is {value!r}")
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)  # an int, half to even
    if micros == 1_000_000:
        whole, micros = whole + 1.0, 0
    if whole > _LAST_SECOND:
        raise Rejected("bad_timestamp", f"{key} {value!r} is out of range")
    return seconds, (int(whole) * 1_000_000 + micros) / 1_000_000


def _iso_timestamp(value: Any, key: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC (fedora-messaging always sends one)."""
    if not isinstance(value, str):
        raise Rejected("bad_timestamp", f"{key} is {value!r}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise Rejected("bad_timestamp", f"{key} {value[:64]!r} is not ISO 8601") from None
    try:
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        raise Rejected("bad_timestamp", f"{key} {value[:64]!r} is out of range in UTC") from None
    if when.timestamp() < 0:
        raise Rejected("bad_timestamp", f"{key} {value!r} is before the epoch")
    return when


def _message_id(value: Any, key: str, topic: str, epoch: float, body: Mapping[str, Any]) -> str:
    """The message's id; a message without one (old fedmsg test envelopes) gets a stable
    ``sha256:`` id of its topic, time (``epoch``) and body, so that replaying it twice still
    dedups."""
    if value is None:
        try:
            canonical = json.dumps([topic, epoch, body], sort_keys=True, default=str)
        except RecursionError:
            # JSON parsers stop near 1,000 levels, a message built in Python may go deeper
            raise Rejected(
                "bad_body", f"has no {key} and its body is nested too deeply to identify it"
            ) from None
        except (TypeError, ValueError) as exc:  # keys of mixed types cannot be sorted
            raise Rejected(
                "bad_body", f"has no {key} and its body cannot be hashed: {exc}"
            ) from None
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    if not isinstance(value, str) or not value:
        raise Rejected("bad_id", f"{key} is {value!r}")
    if not is_text(value):
        raise Rejected("bad_unicode", f"{key} {value[:80]!r} is not valid Unicode")
    return value


def _string_list(value: Any) -> tuple[str, ...]:
    """The non-empty strings of a list, sorted and unique (names no UTF-8 can carry dropped)."""
    if not isinstance(value, _LISTS):
        return ()
    if len(value) < 2:  # most messages name none or one (no generator for them)
        if not value:
            return ()
        one = value[0]
        if one.__class__ is str and one and one.isascii():
            return (one,)
    elif all(v.__class__ is str and v and v.isascii() for v in value):  # the usual case
        return tuple(sorted(set(value)))
    return tuple(sorted({v for v in value if isinstance(v, str) and v and is_text(v)}))


def _agent_name(value: Any) -> str | None:
    return value if isinstance(value, str) and value and is_text(value) else None


def _is_fedora_messaging_object(obj: Any) -> bool:
    return hasattr(obj, "_headers") and hasattr(obj, "topic") and hasattr(obj, "body")
