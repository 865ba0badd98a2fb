"""JSON schemas of varied shape for structured-output tests and benchmarks: nested objects,
arrays with bounds, enums, patterns, optional fields, numbers with bounds, unions."""

from __future__ import annotations

import copy

_BASE: list[dict] = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["score"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
     "required": ["code"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                               "maxItems": 3}}, "required": ["tags"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}}, "required": ["point"]},
    {"type": "object", "properties": {"title": {"type": "string", "minLength": 2, "maxLength": 8},
                                      "subtitle": {"type": "string"}}, "required": ["title"]},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 5}]}},
     "required": ["value"]},
    {"type": "object", "properties": {"kind": {"const": "event"}, "id": {"type": "integer", "minimum": 1}},
     "required": ["kind", "id"]},
    {"type": "object", "properties": {"maybe": {"type": ["string", "null"], "maxLength": 6}}, "required": ["maybe"]},
    {"type": "object", "properties": {"people": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                         "role": {"enum": ["admin", "user"]}}, "required": ["name", "role"]}}},
     "required": ["people"]},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
        "c": {"type": "boolean"}}, "required": ["c"]}}, "required": ["b"]}}, "required": ["a"]},
    {"type": "object", "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                                      "count": {"type": "integer", "minimum": 0, "maximum": 100}},
     "required": ["date", "count"]},
    {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2}}}, "required": ["matrix"]},
    {"type": "object", "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}},
     "required": ["email"]},
    {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                                      "confidence": {"type": "number"}}, "required": ["answer"]},
    {"type": "object", "properties": {"items": {"type": "array", "items": {"enum": [1, 2, 3]}, "maxItems": 5}},
     "required": ["items"]},
    {"type": "string", "enum": ["alpha", "beta", "gamma"]},
    {"type": "integer", "minimum": 10, "maximum": 99},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer"}, "emails": {"type": "array", "items": {"type": "string", "maxLength": 10},
                                              "maxItems": 2}}, "required": ["id"]},
        "active": {"type": "boolean"}}, "required": ["user", "active"]},
    {"type": "object", "properties": {"step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50}},
     "required": ["step"]},
    {"type": "object", "properties": {"nums": {"type": "array", "items": {"type": "number", "minimum": 0},
                                               "minItems": 3, "maxItems": 3}}, "required": ["nums"]},
    {"type": "object", "properties": {"result": {"oneOf": [
        {"type": "object", "properties": {"ok": {"const": True}, "data": {"type": "string", "maxLength": 4}},
         "required": ["ok", "data"]},
        {"type": "object", "properties": {"ok": {"const": False}, "error": {"type": "string", "maxLength": 4}},
         "required": ["ok", "error"]}]}}, "required": ["result"]},
]


def _variants(schema: dict) -> list[dict]:
    """The schema itself, and (for objects) a version that forbids extra keys and one wrapped in an
    object with an optional field next to it."""
    out = [schema]
    if schema.get("type") == "object":
        strict = copy.deepcopy(schema)
        strict["additionalProperties"] = False
        out.append(strict)
    out.append({"type": "object", "properties": {"data": copy.deepcopy(schema), "note": {"type": "string",
                                                                                      "maxLength": 4}},
                "required": ["data"], "additionalProperties": False})
    return out


SCHEMAS: list[dict] = [v for s in _BASE for v in _variants(s)]
assert len(SCHEMAS) >= 50
