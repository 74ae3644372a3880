"""A small, strict JSON Schema evaluator for manifest.schema.json.

The runtime parser validates against the very schema file that is published (the build
copies the top-level manifest.schema.json into the package; a source checkout reads the
file itself), so the two cannot drift. It knows only the keywords that
schema uses and refuses a schema that uses any other, rather than silently ignoring a
constraint. It is stricter than the JSON Schema spec in two places, both on purpose:
`1.0` is not an integer and a `$` in a pattern does not match before a trailing newline.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from pilot.errors import ManifestError

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")  # made from the top-level file: build.py, setup.py
SOURCE_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "manifest.schema.json"  # a source checkout: the file itself
ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}
KEYWORDS = {
    "type", "const", "pattern", "maxLength", "minimum", "maximum", "required", "additionalProperties",
    "properties", "items", "minItems", "maxItems", "$ref",
} | ANNOTATIONS
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,), "boolean": (bool,),
}


@cache
def load_schema() -> dict:
    path = SCHEMA_PATH if SCHEMA_PATH.exists() else SOURCE_SCHEMA_PATH
    schema = json.loads(path.read_text(encoding="utf-8"))
    _check_keywords(schema)
    return schema


def _check_keywords(node: dict) -> None:
    unknown = set(node) - KEYWORDS
    if unknown:
        raise RuntimeError(f"manifest.schema.json uses keywords this evaluator lacks: {sorted(unknown)}")
    for key in ("properties", "$defs"):
        for sub_schema in node.get(key, {}).values():
            _check_keywords(sub_schema)
    if "items" in node:
        _check_keywords(node["items"])


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


def _type_ok(value: Any, expected: str) -> bool:
    if isinstance(value, bool) and expected != "boolean":
        return False
    return isinstance(value, TYPES[expected])


def validate(instance: Any, definition: str | None = None, *, what: str = "manifest") -> None:
    """Raise ManifestError naming the first place where `instance` breaks the schema (or one of its $defs)."""
    schema = load_schema()
    node = schema["$defs"][definition] if definition else schema
    _validate(instance, node, schema, what)


def _validate(value: Any, node: dict, root: dict, path: str) -> None:
    if "$ref" in node:
        _validate(value, _resolve(node["$ref"], root), root, path)
    if "type" in node and not _type_ok(value, node["type"]):
        raise ManifestError(f"{path}: expected {node['type']}, got {_json_type(value)}")
    if "const" in node and not (type(value) is type(node["const"]) and value == node["const"]):
        raise ManifestError(f"{path}: must be {json.dumps(node['const'])}")
    if isinstance(value, str):
        if "maxLength" in node and len(value) > node["maxLength"]:
            raise ManifestError(f"{path}: longer than {node['maxLength']} characters")
        if "pattern" in node and not _regex(node["pattern"]).search(value):
            raise ManifestError(f"{path}: {quote_untrusted(value)} is not in the expected form")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            raise ManifestError(f"{path}: must be at least {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            raise ManifestError(f"{path}: must be at most {node['maximum']}")
    if isinstance(value, list):
        if "minItems" in node and len(value) < node["minItems"]:
            raise ManifestError(f"{path}: needs at least {node['minItems']} item(s)")
        if "maxItems" in node and len(value) > node["maxItems"]:
            raise ManifestError(f"{path}: more than {node['maxItems']} items")
        if "items" in node:
            for index, item in enumerate(value):
                _validate(item, node["items"], root, f"{path}[{index}]")
    if isinstance(value, dict):
        for name in node.get("required", ()):
            if name not in value:
                raise ManifestError(f"{path}: missing {name!r}")
        properties = node.get("properties", {})
        for name, item in value.items():
            if name in properties:
                _validate(item, properties[name], root, f"{path}.{name}")
            elif node.get("additionalProperties", True) is False:
                raise ManifestError(f"{path}: unexpected field {quote_untrusted(name)}")


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/$defs/"):
        raise RuntimeError(f"unsupported $ref {ref}")
    return root["$defs"][ref.removeprefix("#/$defs/")]


def _json_type(value: Any) -> str:
    for name, types in (("null", (type(None),)), ("boolean", (bool,)), *TYPES.items(), ("number", (float,))):
        if isinstance(value, types):
            return name
    return type(value).__name__


def quote_untrusted(text: str, limit: int = 40) -> str:
    """Quote untrusted text for an error line: escaped (no control or bidi characters) and short."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return ascii(shown)
