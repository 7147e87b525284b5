"""The AMQP source's schema checks (statscache_exporter/sources/schema_check.py) give
jsonschema's verdicts: fastjsonschema's compiled function accepts only what jsonschema
accepts, on every schema of the fedora-messaging corpus (each message's headers and body
mutated at many places, and at random places by hypothesis), and on the values the two
libraries are known to read differently; a schema whose keywords they do not agree on is not
compiled, and says why. A refusal is the error ``jsonschema.validate`` raises.

No broker: the deliveries' own path through the source is tested against
``fedora_messaging.message.get_message`` in tests/test_source_amqp.py.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections import Counter
from collections.abc import Iterator
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import jsonschema
import pika
import pytest
from conftest import DATA
from fedora_messaging.message import Message, get_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema.exceptions import best_match

from statscache_exporter.sources import schema_check
from statscache_exporter.sources.schema_check import SchemaCheck, make_check

D4 = "http://json-schema.org/draft-04/schema#"
D7 = "http://json-schema.org/draft-07/schema#"
D2019 = "https://json-schema.org/draft/2019-09/schema"


_REFERENCES: dict[int, tuple[Any, Any]] = {}


def reference(schema: Any, instance: Any) -> Any:
    """jsonschema's own verdict, as ``jsonschema.validate`` reaches it: the error it raises
    (:func:`described`), or None (with validators of this test's own, not the ones under
    test)."""
    found = _REFERENCES.get(id(schema))
    if found is None or found[0] is not schema:
        found = _REFERENCES[id(schema)] = (
            schema,
            jsonschema.validators.validator_for(schema)(schema),
        )
    error = best_match(found[1].iter_errors(instance))
    return None if error is None else described(error)


def described(error: jsonschema.ValidationError) -> Any:
    """An error as what it says and where (its text without pretty-printing, which would cost
    most of these tests' time)."""
    return (error.message, list(error.absolute_path), list(error.absolute_schema_path))


def verdict(check: SchemaCheck, instance: Any) -> Any:
    try:
        check.validate(instance)
    except jsonschema.exceptions.ValidationError as exc:
        return described(exc)
    return None


def fast_accepts(check: SchemaCheck, instance: Any) -> bool:
    assert check.fast is not None
    try:
        check.fast(instance)
    except Exception:
        return False
    return True


@cache
def corpus_pairs() -> list[tuple[str, Any, Any]]:
    """(name, schema, instance) for the headers and body of every fedora-messaging message of
    the corpus, against its class's schemas and the base ones."""
    pairs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # anitya's old classes say so
        for line in (DATA / "fedora_messaging.jsonl").open(encoding="utf-8"):
            m = json.loads(line)["message"]
            cls = get_class(m["headers"]["fedora_messaging_schema"])
            props = pika.BasicProperties(headers=dict(m["headers"]))
            msg = cls(body=m["body"], topic=m["topic"], properties=props)
            name = f"{cls.__name__} {m['id']}"
            pairs += [
                (f"{name} headers", cls.headers_schema, msg._headers),
                (f"{name} base headers", Message.headers_schema, msg._headers),
                (f"{name} body", cls.body_schema, msg.body),
                (f"{name} base body", Message.body_schema, msg.body),
            ]
    return pairs


def installed_schemas() -> dict[int, tuple[str, Any]]:
    """Every schema of every installed fedora-messaging message class, and the base ones."""
    found: dict[int, tuple[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        classes = [Message, *(ep.load() for ep in entry_points(group="fedora.messages"))]
    for cls in classes:
        for kind in ("headers_schema", "body_schema"):
            schema = getattr(cls, kind)
            found.setdefault(id(schema), (f"{cls.__module__}.{cls.__name__}.{kind}", schema))
    return found


# --- which schemas are compiled -------------------------------------------------------------


def test_every_corpus_schema_is_compiled_and_the_others_say_why_not() -> None:
    corpus_ids = {id(schema) for _, schema, _ in corpus_pairs()}
    schemas = installed_schemas()
    assert len(schemas) > 50 and corpus_ids <= set(schemas)
    left = {}
    for name, schema in schemas.values():
        check = schema_check.check_for(schema)
        assert (check.fast is None) == (check.why_not is not None), name
        if check.fast is None:
            left[name] = check.why_not
    assert not {name for i, (name, _) in schemas.items() if i in corpus_ids} & set(left), left
    # at most a few installed schemas stay with jsonschema alone (today: one, a draft-04
    # "contains", which neither library applies in draft-04, taken for one that differs)
    assert len(left) <= 3, left


def test_koji_anchor_references_are_compiled_as_pointers_and_the_schema_is_not_changed() -> None:
    from koji_fedoramessaging_messages.build import BuildStateChangeV1

    schema = BuildStateChangeV1.body_schema
    before = copy.deepcopy(schema)
    check = make_check(schema)
    assert check.fast is not None and schema == before  # compiled from a copy
    body = next(
        i
        for n, s, i in corpus_pairs()
        if s is schema and n.endswith(" body") and (i.get("task") or {}).get("children")
    )
    assert fast_accepts(check, body)
    # a child task under the anchor's recursion must be a task: the rewritten $ref is followed
    bad = copy.deepcopy(body)
    bad["task"]["children"] = [{"id": "not an integer"}]
    assert not fast_accepts(check, bad)
    assert verdict(check, bad) == reference(schema, bad) is not None


# --- verdicts on the corpus, mutated --------------------------------------------------------

#: what a value is replaced by: every JSON type, the bool/number and float/integer edges
REPLACEMENTS: list[Any] = [None, True, False, 0, 1, 1.0, 2.5, -3, "", "x", [], [1, "a"], {}]


def paths(value: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value (dict keys and list indexes), depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*here, key)
            yield from paths(item, (*here, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*here, i)
            yield from paths(item, (*here, i))


def mutants(instance: Any, per_instance: int = 12) -> Iterator[Any]:
    """``instance`` with one change each: a value replaced (by each of REPLACEMENTS), a key
    removed, a key added; at the top and at up to ``per_instance`` places spread over it (the
    containers on the way copied, the rest shared)."""
    places = list(paths(instance))
    step = max(1, len(places) // per_instance)
    for value in REPLACEMENTS:
        yield value
    if isinstance(instance, dict):
        yield {**instance, "zz_extra": 1}
    for place in places[::step][:per_instance]:
        for value in REPLACEMENTS:
            yield changed(
                instance, place, lambda parent, last, v=value: parent.__setitem__(last, v)
            )
        yield changed(instance, place, lambda parent, last: parent.__delitem__(last))
        yield changed(
            instance,
            place,
            lambda parent, last: parent.__setitem__(
                last,
                {**parent[last], "zz_extra": 1} if isinstance(parent[last], dict) else parent[last],
            ),
        )


def changed(instance: Any, place: tuple[Any, ...], change: Any) -> Any:
    """A copy of ``instance`` whose containers along ``place`` are new, ``change(parent,
    last)`` applied to the last of them."""
    top = copy.copy(instance)
    parent = top
    for step in place[:-1]:
        parent[step] = copy.copy(parent[step])
        parent = parent[step]
    change(parent, place[-1])
    return top


def test_compiled_checks_give_jsonschemas_verdicts_on_every_corpus_message_mutated() -> None:
    outcomes: Counter[str] = Counter()
    seen_schema_instance: set[tuple[int, str]] = set()
    for name, schema, instance in corpus_pairs():
        key = (id(schema), json.dumps(instance, sort_keys=True))
        if key in seen_schema_instance:
            continue
        seen_schema_instance.add(key)
        check = schema_check.check_for(schema)
        assert check.fast is not None, (name, check.why_not)
        for m in [instance, *mutants(instance)]:
            expected = reference(schema, m)
            assert verdict(check, m) == expected, (name, m)
            fast = fast_accepts(check, m)
            assert not (fast and expected is not None), (name, "compiled accepts", m, expected)
            outcomes[
                "refused"
                if expected
                else "accepted by the compiled check"
                if fast
                else "accepted by jsonschema after the compiled check refused"
            ] += 1
    # the test sees both verdicts, and the compiled check decides most acceptances
    assert outcomes["refused"] > 1000, outcomes
    assert outcomes["accepted by the compiled check"] > 1000, outcomes
    assert outcomes["accepted by jsonschema after the compiled check refused"] == 0, outcomes


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=json_values)
def test_any_json_value_anywhere_in_a_corpus_message_gets_jsonschemas_verdict(
    data: st.DataObject, value: Any
) -> None:
    _, schema, instance = data.draw(st.sampled_from(corpus_pairs()), label="message")
    places = list(paths(instance))
    m = value
    if places:
        place = data.draw(st.sampled_from(places), label="place")
        m = changed(instance, place, lambda parent, last: parent.__setitem__(last, value))
    check = schema_check.check_for(schema)
    expected = reference(schema, m)
    assert verdict(check, m) == expected
    assert not (check.fast is not None and fast_accepts(check, m) and expected is not None)


# --- where the two libraries read values differently ------------------------------------------


@pytest.mark.parametrize(
    ("schema", "instance", "valid"),
    [
        ({"$schema": D4, "type": "integer"}, 1.0, False),  # draft-04: 1.0 is a number only
        ({"$schema": D7, "type": "integer"}, 1.0, True),  # draft-06 on: an integer
        ({"$schema": D4, "type": "integer"}, True, False),  # a bool is no number
        ({"$schema": D4, "type": "number"}, False, False),
        ({"$schema": D4, "enum": [1, "a"]}, True, False),  # True is not 1 to an enum
        ({"$schema": D4, "enum": [1, "a"]}, 1.0, True),
        ({"$schema": D4, "enum": [True]}, 1, False),
        ({"$schema": D7, "enum": [{"a": [0]}]}, {"a": [False]}, False),
        ({"$schema": D4, "enum": [None]}, None, True),
        # oneOf: matching both is a refusal
        ({"$schema": D4, "oneOf": [{"type": "number"}, {"type": "integer"}]}, 1, False),
        ({"$schema": D4, "oneOf": [{"type": "number"}, {"type": "integer"}]}, 1.5, True),
        ({"$schema": D4, "not": {"type": "array"}}, [], False),
        ({"$schema": D4, "type": "object", "required": ["a"]}, {"b": 1}, False),
        ({"$schema": D4, "properties": {"a-b": {"type": "string"}, "ab": {}}}, {"a-b": 1}, False),
        ({"$schema": D4, "additionalProperties": False, "properties": {"a": {}}}, {"b": 1}, False),
        ({"$schema": D4, "items": [{"type": "string"}], "additionalItems": False}, ["a", 1], False),
        ({"$schema": D4, "format": "uri"}, "not a uri", True),  # formats asserted by neither
        ({"$schema": D4, "minLength": 2}, "é", False),  # characters, not bytes
        ({"$schema": D4, "type": "object"}, {}, True),
    ],
    ids=repr,
)
def test_values_the_libraries_could_read_differently_get_jsonschemas_verdict(
    schema: Any, instance: Any, valid: bool
) -> None:
    check = make_check(schema)
    assert check.fast is not None, check.why_not
    assert (reference(schema, instance) is None) is valid  # the expectation is jsonschema's
    assert fast_accepts(check, instance) is valid
    assert (verdict(check, instance) is None) is valid


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"$schema": D4, "type": "string", "pattern": "^a$"}, "keyword 'pattern'"),
        ({"$schema": D4, "patternProperties": {"^a$": {"type": "integer"}}}, "patternProperties"),
        ({"$schema": D4, "type": "number", "multipleOf": 0.1}, "multipleOf"),
        ({"$schema": D4, "uniqueItems": True}, "uniqueItems"),
        ({"$schema": D4, "minimum": 1}, "minimum"),
        ({"$schema": D2019, "dependencies": {"a": ["b"]}}, "dependencies"),  # 2019: no keyword
        ({"$schema": D2019, "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"$schema": D2019, "$defs": {"s": {}}, "$ref": "#/$defs/s", "type": "string"}, "beside"),
        ({"$schema": D4, "properties": {"a": {"id": "http://x/y#", "type": "string"}}}, "below"),
        ({"$schema": D4, "$ref": "http://json-schema.org/draft-04/schema#"}, "not local"),
        ({"$schema": D4, "enum": [{"$ref": "#/definitions/a"}]}, "in data"),
        ({"type": "string"}, "Draft202012Validator"),  # no $schema: jsonschema's newest draft
        ({"$schema": D2019, "$defs": {"a": {"$anchor": "x"}, "b": {"$anchor": "x"}}}, "twice"),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v),
)
def test_a_schema_using_what_the_libraries_disagree_on_stays_with_jsonschema(
    schema: Any, why: str
) -> None:
    check = make_check(schema)
    assert check.fast is None
    assert check.why_not is not None and why in check.why_not, check.why_not


def test_a_pattern_ending_in_dollar_is_why_patterns_are_not_compiled() -> None:
    """fastjsonschema reads ``$`` as the very end; Python's re, which jsonschema uses, lets a
    trailing newline match: the verdict stays jsonschema's."""
    schema = {"$schema": D4, "type": "string", "pattern": "^a$"}
    assert reference(schema, "a\n") is None
    assert verdict(make_check(schema), "a\n") is None


def test_a_refusal_is_the_error_jsonschema_validate_raises() -> None:
    schema = {
        "$schema": D4,
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    check = make_check(schema)
    for instance in ({}, {"a": 1}, {"a": "x", "b": "y"}, []):
        with pytest.raises(jsonschema.ValidationError) as theirs:
            jsonschema.validate(instance, schema)
        with pytest.raises(jsonschema.ValidationError) as ours:
            check.validate(instance)
        assert str(ours.value) == str(theirs.value)  # the text, pretty-printed values and all
