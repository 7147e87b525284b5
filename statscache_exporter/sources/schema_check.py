"""fedora-messaging's schema validation, built once per schema and compiled where it is safe.

``fedora_messaging.message.get_message`` checks a message's headers and body against its
schema class's schemas and the base ones with ``jsonschema.validate``, which checks the schema
itself and builds a validator on every call (~6 ms a message). Counting needs only its verdict
(and, for a refusal, its error), so a :class:`SchemaCheck` is made once per schema:

- jsonschema's validator for it, the schema checked once: the reference. Every refusal comes
  from it, as the error ``jsonschema.validate`` raises (``best_match`` of its errors).
- in front of it, when the schema keeps to the keywords on which fastjsonschema and jsonschema
  agree (:data:`AGREED`; see :func:`unsafe`), fastjsonschema's compiled function: a copy of the
  schema compiled to Python, filling in no defaults and asserting no formats (jsonschema's
  validator, made without a format checker, asserts none either). What it accepts is accepted,
  about twenty times faster than jsonschema decides; what it refuses or trips on is decided by
  jsonschema. So a compiled check that is stricter than jsonschema costs time, never the
  verdict, and the one way to get a verdict wrong, accepting what jsonschema refuses, is what
  the vetting excludes and tests/test_schema_check.py tries on every corpus schema.

A schema is left to jsonschema alone (``SchemaCheck.fast`` is ``None``, ``why_not`` says why)
when it uses a keyword outside :data:`AGREED` (pattern: fastjsonschema reads ``$`` as the end
of the string only; multipleOf, uniqueItems, the numeric bounds, unevaluated*, ...), an
identifier below its root, a ``$ref`` that is not local, a ``$ref`` beside validating keywords
where they apply too (2019-09), a draft fastjsonschema would not pick alike, or when it does
not compile. 2019-09 ``$anchor`` references (koji's schemas) are compiled as the JSON pointers
of their anchors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import jsonschema
from jsonschema.exceptions import best_match

#: Keywords whose fastjsonschema code was read against jsonschema's and agrees with it on every
#: value JSON decodes to and pika decodes headers to (bools are neither integers nor numbers
#: in either; enum and const tell True from 1; no formats). A subschema stricter in one than in
#: the other would turn laxer under ``not`` or ``oneOf``, so agreement, not strictness, counts.
AGREED = frozenset(
    {
        "$ref",
        "additionalItems",
        "additionalProperties",
        "allOf",
        "anyOf",
        "const",
        "contains",
        "enum",
        "format",
        "items",
        "maxItems",
        "maxLength",
        "maxProperties",
        "minItems",
        "minLength",
        "minProperties",
        "not",
        "oneOf",
        "properties",
        "required",
        "type",
    }
)
#: The keywords fastjsonschema 2.22 gives a meaning to, by draft: one it applies where jsonschema
#: does not (``dependencies`` in 2019-09) is as unsafe as the reverse.
_FAST_04 = frozenset(
    {
        *("$ref", "additionalItems", "additionalProperties", "allOf", "anyOf", "dependencies"),
        *("enum", "exclusiveMaximum", "exclusiveMinimum", "format", "items", "maxItems"),
        *("maxLength", "maxProperties", "maximum", "minItems", "minLength", "minProperties"),
        *("minimum", "multipleOf", "not", "oneOf", "pattern", "patternProperties"),
        *("properties", "required", "type", "uniqueItems"),
    }
)
_FAST_06 = _FAST_04 | {"const", "contains", "propertyNames"}
_FAST_07 = _FAST_06 | {"if", "then", "else", "contentEncoding", "contentMediaType"}
#: jsonschema's validator class → what ``$schema`` must contain for fastjsonschema to pick the
#: same draft's rules (it picks by that text; its 2019-09 rules are draft-07's), and the
#: keywords it knows there
DRAFTS: dict[type[Any], tuple[str, frozenset[str]]] = {
    jsonschema.Draft4Validator: ("draft-04", _FAST_04),
    jsonschema.Draft6Validator: ("draft-06", _FAST_06),
    jsonschema.Draft7Validator: ("draft-07", _FAST_07),
    jsonschema.Draft201909Validator: ("draft/2019-09", _FAST_07),
}
#: drafts in which ``$ref`` overrides its siblings (as fastjsonschema always does)
_REF_ALONE = (jsonschema.Draft4Validator, jsonschema.Draft6Validator, jsonschema.Draft7Validator)
#: keywords whose value is a subschema, a list of them, or a map of names to them
_ONE = frozenset({"additionalItems", "additionalProperties", "contains", "not", "items"})
_LIST = frozenset({"allOf", "anyOf", "oneOf", "items"})
_MAP = frozenset({"properties", "definitions", "$defs"})


@dataclass(frozen=True, eq=False)
class SchemaCheck:
    """One schema's check (see the module's docstring). ``schema`` is kept so that the cache's
    key, its id, stays its own."""

    schema: Any
    validator: Any
    fast: Callable[[Any], Any] | None
    why_not: str | None

    def validate(self, instance: Any) -> None:
        """Raise the ``jsonschema.ValidationError`` that ``jsonschema.validate`` raises for
        ``instance``, if any."""
        if self.fast is not None:
            try:
                self.fast(instance)
            except Exception:  # refused, or tripped on a value: jsonschema decides
                pass
            else:
                return
        error = best_match(self.validator.iter_errors(instance))
        if error is not None:
            raise error


#: id of a schema → its check
_CHECKS: dict[int, SchemaCheck] = {}


def check_for(schema: Any) -> SchemaCheck:
    """The schema's check, made on first use (its schema checked against its metaschema once,
    as ``jsonschema.validate`` does on every call)."""
    found = _CHECKS.get(id(schema))
    if found is None or found.schema is not schema:
        found = _CHECKS[id(schema)] = make_check(schema)
    return found


def make_check(schema: Any) -> SchemaCheck:
    """A new check of ``schema``, compiled if :func:`unsafe` finds nothing against it."""
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    why_not = unsafe(schema, cls)
    fast = None
    if why_not is None:
        try:
            compiled = copy.deepcopy(schema)  # fastjsonschema rewrites the $refs it reads
            if cls is jsonschema.Draft201909Validator:
                compiled = _anchors_as_pointers(compiled)
            fast = fastjsonschema.compile(
                compiled,
                handlers=_NoRemote(),
                use_default=False,
                use_formats=False,
                detailed_exceptions=False,
            )
        except Exception as exc:
            why_not = f"fastjsonschema cannot compile it: {type(exc).__name__}: {exc}"
    return SchemaCheck(schema, cls(schema), fast, why_not)


class _NoRemote(dict[str, Callable[[str], Any]]):
    """fastjsonschema's handlers for remote references: every scheme, each refused (a local
    schema must not make the exporter fetch anything)."""

    def __contains__(self, scheme: object) -> bool:
        return True

    def __getitem__(self, scheme: str) -> Callable[[str], Any]:
        def refuse(uri: str) -> Any:
            raise ValueError(f"not fetching the remote reference {uri}")

        return refuse


def unsafe(schema: Any, cls: type[Any]) -> str | None:
    """Why fastjsonschema's verdicts on ``schema`` might differ from jsonschema's (class
    ``cls``), or ``None``: see the module's docstring."""
    if cls not in DRAFTS:
        return f"{cls.__name__}: a draft fastjsonschema does not implement alike"
    draft, fast_keywords = DRAFTS[cls]
    if not isinstance(schema, dict) or draft not in str(schema.get("$schema", "")):
        return f"its $schema does not make fastjsonschema pick {draft}"
    validating = frozenset(cls.VALIDATORS)
    differing = (validating | fast_keywords) - (AGREED & validating & fast_keywords)
    own_id = "id" if cls is jsonschema.Draft4Validator else "$id"
    for where, node in _subschemas(schema, "#"):
        if isinstance(node, bool):
            continue
        if not isinstance(node, dict):
            return f"{where} is not a schema"
        for key in node:
            if key in ("id", "$id") and not (where == "#" and key == own_id):
                return f"{where}: an identifier {key!r} below the root or of another draft"
            if key in differing:
                return f"{where}: keyword {key!r}"
        ref = node.get("$ref")
        if ref is not None:
            if not isinstance(ref, str) or not ref.startswith("#"):
                return f"{where}: $ref {ref!r} is not local"
            if cls not in _REF_ALONE:
                beside = sorted(set(node) & validating - {"$ref"})
                if beside:
                    return f"{where}: $ref beside {', '.join(beside)}"
    for where, value in _data(schema, "#"):
        if isinstance(value, dict) and any(
            isinstance(value.get(k), str) for k in ("$ref", "$id", "id")
        ):
            return f"{where}: a $ref or an identifier in data (fastjsonschema would follow it)"
    return None


def _subschemas(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``node`` and every subschema under it, with their JSON pointers."""
    yield where, node
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = f"{where}/{_escape(key)}"
        if key in _ONE and isinstance(value, dict | bool):
            yield from _subschemas(value, here)
        elif key in _LIST and isinstance(value, list):
            for i, item in enumerate(value):
                yield from _subschemas(item, f"{here}/{i}")
        elif key in _MAP and isinstance(value, dict):
            for name, item in value.items():
                yield from _subschemas(item, f"{here}/{_escape(name)}")


def _data(schema: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every dict in the schema that is not a subschema (enum and const values, defaults,
    unknown keywords' values), with where it is."""
    schema_nodes = {id(node) for _, node in _subschemas(schema, where)}
    stack: list[tuple[str, Any]] = [(where, schema)]
    while stack:
        here, value = stack.pop()
        if isinstance(value, dict):
            if id(value) not in schema_nodes:
                yield here, value
            stack.extend((f"{here}/{_escape(k)}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{here}/{i}", v) for i, v in enumerate(value))


def _anchors_as_pointers(schema: Any) -> Any:
    """A 2019-09 ``schema`` (a copy, changed in place) with each ``$ref`` to an ``$anchor``
    (``#name``) made the JSON pointer of the subschema that anchor names (fastjsonschema
    resolves pointers only); it has no identifier below its root (:func:`unsafe`), so every
    anchor is the root's."""
    anchors: dict[str, str] = {}
    for where, node in _subschemas(schema, "#"):
        if isinstance(node, dict) and isinstance(node.get("$anchor"), str):
            if node["$anchor"] in anchors:
                raise ValueError(f"the anchor {node['$anchor']!r} is defined twice")
            anchors[node["$anchor"]] = where
    for _, node in _subschemas(schema, "#"):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(ref, str) and ref.startswith("#") and not ref.startswith("#/") and ref[1:]:
            if ref[1:] not in anchors:
                raise ValueError(f"$ref {ref!r} names no anchor")
            node["$ref"] = anchors[ref[1:]]
    return schema


def _escape(key: str) -> str:
    """A name as a JSON pointer's segment (RFC 6901)."""
    return str(key).replace("~", "~0").replace("/", "~1")
