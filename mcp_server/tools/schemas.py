"""What tools/list shows: compact input and output schemas (INFRA_TOOL_SCHEMAS=full lists them whole).

Arguments are validated by each tool's signature and results are built from their models, whatever the listing
says; the listing is for the agent's context and for clients that check structured results against it. So it
keeps what those use — parameter names, types, enums, bounds, defaults and descriptions; a result's own field
names and types — and drops what costs tokens without guiding either: titles, descriptions of result fields
(the result itself shows them), `required` below a result's top level, long regular expressions (the server
checks them and its error says what is valid), `default: null`, and the structure inside a result's fields
(given as its JSON type). Every result still validates against its compact schema: it only ever accepts more.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import mcp_types as mt
from fastmcp.tools import Tool
from fastmcp.utilities.json_schema import dereference_refs

# A result's own fields are listed with their types (for a collected result: the envelope's and those of its
# `data`); the values inside them show only their JSON type (a list of objects: "array" of "object").
OUTPUT_DEPTH = 1
# Parameter patterns longer than this are not listed (the server still enforces them).
MAX_LISTED_PATTERN = 80

Schema = dict[str, Any]
_NULL = {"type": "null"}


def _merge_nullable(node: Schema) -> Schema:
    """`anyOf: [X, {type: null}]` as X with `type: [t, "null"]`, when X has one plain type."""
    options = node.get("anyOf")
    if not (isinstance(options, list) and len(options) == 2 and _NULL in options):
        return node
    other = options[0] if options[1] == _NULL else options[1]
    if not isinstance(other.get("type"), str):
        return node
    # the parameter's own description wins over its type's generic one
    merged = {**other, **{k: v for k, v in node.items() if k != "anyOf"}, "type": [other["type"], "null"]}
    if "enum" in other:
        merged["enum"] = [*other["enum"], None]
    return merged


def _merge_open_enum(node: Schema) -> Schema:
    """`anyOf: [{enum, type: t}, {type: t}]` (an enum that admits any other value too) as `type: t`."""
    options = node.get("anyOf")
    if not (isinstance(options, list) and {"type": options[0].get("type")} in options):
        return node
    if any(option.get("type") != options[0]["type"] for option in options):
        return node
    return {**{k: v for k, v in node.items() if k != "anyOf"}, "type": options[0]["type"]}


def compact_input(node: Any) -> Any:
    if isinstance(node, list):
        return [compact_input(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "default" and value is None:
            continue
        if key == "pattern" and isinstance(value, str) and len(value) > MAX_LISTED_PATTERN:
            continue
        if key == "properties":
            out[key] = {name: compact_input(sub) for name, sub in value.items()}
        else:
            out[key] = compact_input(value)
    return _merge_nullable(out)


def compact_output(node: Any, depth: int = 0, *, root: bool = True) -> Any:
    if isinstance(node, list):
        return [compact_output(item, depth, root=False) for item in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key in ("title", "description", "format") and isinstance(value, str):
            continue
        if key == "default":
            continue
        if key == "required" and not root:
            continue
        if key == "properties":
            if depth >= OUTPUT_DEPTH:
                out.pop("additionalProperties", None)
                continue
            out[key] = {name: compact_output(sub, depth + 1, root=False) for name, sub in value.items()}
        elif key == "additionalProperties" and depth >= OUTPUT_DEPTH and "properties" in node:
            continue
        else:
            out[key] = compact_output(value, depth, root=False)
    return _merge_nullable(_merge_open_enum(out))


def compact(tool: Tool) -> None:
    """Replace a registered tool's listed schemas by their compact forms (references resolved first)."""
    tool.parameters = compact_input(dereference_refs(tool.parameters))
    if tool.output_schema is not None:
        output = dereference_refs(tool.output_schema)
        # a collected result's payload is its `data`: the envelope around it is one level more
        envelope = {"collected_at", "data"} <= set(output.get("properties", {}))
        tool.output_schema = compact_output(output, depth=-1 if envelope else 0)


def _nullable(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_nullable(option) for option in node.get("anyOf", ()))


def optional_nulls(node: Any) -> Any:
    """The schema with every field that may be null no longer required: results leave null fields out."""
    if isinstance(node, list):
        return [optional_nulls(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: optional_nulls(value) for key, value in node.items()}
    properties = out.get("properties")
    if isinstance(properties, dict) and isinstance(out.get("required"), list):
        kept = [name for name in out["required"] if not _nullable(properties.get(name))]
        if kept:
            out["required"] = kept
        else:
            del out["required"]
    return out


@functools.cache
def _untagged(cls: type[Tool]) -> type[Tool]:
    def get_meta(self: Tool) -> dict[str, Any] | None:
        return None

    return type(cls.__name__, (cls,), {"get_meta": get_meta, "__module__": cls.__module__})


def lean(tool: Tool) -> None:
    """Register-time trims of what tools/list shows whatever INFRA_TOOL_SCHEMAS says: an output schema that
    lets null fields be absent (results drop them), and no `_meta` on a tool without tags (FastMCP lists
    `{"fastmcp": {"tags": []}}` for each one)."""
    if tool.output_schema is not None:
        tool.output_schema = optional_nulls(tool.output_schema)
    if not tool.tags and tool.version is None and not tool.meta:
        tool.__class__ = _untagged(type(tool))


# What a listed tool costs an agent: its tools/list entry as sent (compact JSON), at about 4 characters a token.
CHARS_PER_TOKEN = 4


def listed_chars(tools: Iterable[mt.Tool]) -> int:
    """Characters of these tools' tools/list entries as the server sends them."""
    return sum(len(tool.model_dump_json(by_alias=True, exclude_none=True)) for tool in tools)
