"""A small validator for the subset of JSON Schema (draft 2020-12) used by ``profiles/schema.json``.

Supported keywords: ``type`` (a name or a list of names), ``enum``, ``const``, ``required``,
``properties``, ``additionalProperties`` (boolean), ``items`` (one schema), ``minItems``,
``uniqueItems``, ``minimum``, ``maximum``, ``exclusiveMinimum``, ``minLength``, ``pattern``.
Anything else in a schema is rejected so a schema never silently checks less than it says.
``jsonschema`` is not a dependency of the runtime (docs/design.md section 5: profiles as data).
"""

from __future__ import annotations

import re
from typing import Any

_SUPPORTED = {
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "uniqueItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "pattern",
    "examples",
    "default",
}


def _type_ok(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    raise ValueError(f"unsupported JSON Schema type {name!r}")


def _where(path: str) -> str:
    return path or "(top level)"


def schema_errors(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Return ``"<field path>: <problem>"`` for every violation of ``schema`` by ``instance``."""
    unknown = set(schema) - _SUPPORTED
    if unknown:
        raise ValueError(f"schema uses unsupported keywords {sorted(unknown)} at {_where(path)}")
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(instance, n) for n in names):
            return [f"{_where(path)}: expected {' or '.join(names)}, got {instance!r}"]
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{_where(path)}: must be {schema['const']!r}, got {instance!r}")
    if "enum" in schema and instance not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        errors.append(f"{_where(path)}: {instance!r} is not one of {allowed}")
    is_num = isinstance(instance, (int, float)) and not isinstance(instance, bool)
    if is_num and "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{_where(path)}: {instance} is below the minimum {schema['minimum']}")
    if is_num and "exclusiveMinimum" in schema and instance <= schema["exclusiveMinimum"]:
        errors.append(f"{_where(path)}: {instance} must be greater than {schema['exclusiveMinimum']}")
    if is_num and "maximum" in schema and instance > schema["maximum"]:
        errors.append(f"{_where(path)}: {instance} is above the maximum {schema['maximum']}")
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            errors.append(f"{_where(path)}: must have at least {schema['minLength']} characters")
        if "pattern" in schema and re.search(schema["pattern"], instance) is None:
            errors.append(f"{_where(path)}: {instance!r} does not match {schema['pattern']!r}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            errors.append(f"{_where(path)}: needs at least {schema['minItems']} item(s), got {len(instance)}")
        if schema.get("uniqueItems") and len({repr(v) for v in instance}) != len(instance):
            errors.append(f"{_where(path)}: items must be unique")
        if "items" in schema:
            for i, item in enumerate(instance):
                errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{_where(path)}: missing required field {key!r}")
        props = schema.get("properties", {})
        for key, value in instance.items():
            sub = f"{path}.{key}" if path else key
            if key in props:
                errors += schema_errors(value, props[key], sub)
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{sub}: unknown field (allowed: {', '.join(sorted(props))})")
    return errors
