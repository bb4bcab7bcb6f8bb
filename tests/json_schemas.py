"""A seeded generator of JSON schemas for structured-output tests, with each schema's longest instance.

Schemas nest objects and arrays, and use enums, bounded integers and numbers, length-bounded strings,
booleans and required subsets. Everything is bounded, so the grammar forces an end even for a random
model; `max_chars` (the longest instance in our compact layout, ", " and ": ") lets a caller keep
schemas whose every output fits a short context.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

# Fraction digits xgrammar allows in a bounded number (measured: "1.500000"), with margin.
_NUMBER_FRACTION_CHARS = 8
_NAME_CHARS = string.ascii_lowercase + "_"


def random_schema(rng: random.Random, max_depth: int = 2, max_props: int = 3) -> dict[str, Any]:
    """A random object schema (the root of structured outputs is an object, as OpenAI's)."""
    return _object(rng, 0, max_depth, max_props)


def schemas_within(seed: int, count: int, max_chars: int, **kw: Any) -> list[dict[str, Any]]:
    """`count` distinct random schemas whose longest instance is at most `max_chars` characters."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    while len(out) < count:
        schema = random_schema(rng, **kw)
        if longest_instance_chars(schema) <= max_chars:
            out.setdefault(json.dumps(schema), schema)
    return list(out.values())


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(1, 4)))


def _object(rng: random.Random, depth: int, max_depth: int, max_props: int) -> dict[str, Any]:
    names = list(dict.fromkeys(_name(rng) for _ in range(rng.randint(1, max_props))))
    props = {n: _value(rng, depth + 1, max_depth, max_props) for n in names}
    schema: dict[str, Any] = {"type": "object", "properties": props}
    required = [n for n in names if rng.random() < 0.6]
    if required:
        schema["required"] = required
    return schema


def _value(rng: random.Random, depth: int, max_depth: int, max_props: int) -> dict[str, Any]:
    kinds = ["integer", "number", "enum", "string", "boolean"]
    if depth < max_depth:
        kinds += ["object", "array"]
    kind = rng.choice(kinds)
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
    if kind == "number":
        low = round(rng.uniform(-10, 10), 2)
        return {"type": "number", "minimum": low, "maximum": round(low + rng.uniform(0.5, 100), 2)}
    if kind == "enum":
        pool = ["red", "green", "blue", "x", 1, 2, 42, None, True, "a b"]
        return {"enum": rng.sample(pool, rng.randint(1, 4))}
    if kind == "string":
        low = rng.randint(0, 3)
        return {"type": "string", "minLength": low, "maxLength": low + rng.randint(0, 6)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "object":
        return _object(rng, depth, max_depth, max_props)
    low = rng.randint(0, 1)
    return {"type": "array", "items": _value(rng, depth + 1, max_depth, max_props), "minItems": low,
            "maxItems": low + rng.randint(0, 2)}


def longest_instance_chars(schema: dict[str, Any]) -> int:
    """Characters of the longest instance of `schema` in the compact layout ({"a": 1, "b": [2, 3]})."""
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    kind = schema["type"]
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "number":
        whole = max(len(str(int(abs(b)))) for b in (schema["minimum"], schema["maximum"]))
        return 1 + whole + 1 + _NUMBER_FRACTION_CHARS
    if kind == "string":
        return schema["maxLength"] + 2
    if kind == "boolean":
        return 5
    if kind == "array":
        n = schema["maxItems"]
        return 2 + n * longest_instance_chars(schema["items"]) + 2 * max(n - 1, 0)
    props = schema["properties"]
    members = [len(json.dumps(k)) + 2 + longest_instance_chars(v) for k, v in props.items()]
    return 2 + sum(members) + 2 * max(len(members) - 1, 0)
