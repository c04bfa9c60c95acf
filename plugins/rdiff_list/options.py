"""The options of a component, read from its config dataclass: each key's dotted name, type, default and
description (the field's trailing ``# comment``). ``rdiff list KIND --options`` prints them, and
tools/docgen.py writes docs/configuration.md from them."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any


@dataclasses.dataclass
class Key:
    """One configuration key, as the docs show it."""

    name: str  # dotted, relative to its section
    type: str
    default: Any
    comment: str
    nested: bool = False  # a nested dataclass: its keys follow as name.<key>


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of every field of dataclass ``cls`` (its bases' included), read from source.

    A field's comment is the comment at the end of the field's statement (for a field written over several
    lines, of any of its lines); comments on lines of their own are section headings and are not used."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue  # no source (e.g. defined interactively): no comments to read
        trailing: dict[int, str] = {}
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT and token.line[:token.start[1]].strip():
                trailing[token.start[0]] = token.string.lstrip("#").strip()
        body = ast.parse(source).body[0]
        for node in getattr(body, "body", []):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                found = [trailing[line] for line in range(node.lineno, node.end_lineno + 1) if line in trailing]
                if found:
                    comments[node.target.id] = " ".join(found)
    return comments


def config_keys(cls: type, prefix: str = "") -> list[Key]:
    """Every key of dataclass ``cls`` (nested dataclasses flattened into dotted keys), in field order."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        nested = dataclasses.is_dataclass(hints[f.name])
        type_name = f.type if isinstance(f.type, str) else _type_name(f.type)
        keys.append(Key(prefix + f.name, type_name, default, comments.get(f.name, ""), nested))
        if nested:
            keys += config_keys(hints[f.name], prefix + f.name + ".")
    return keys


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def format_value(value: Any) -> str:
    """A default as it would be written in YAML (flow style)."""
    if value is dataclasses.MISSING:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(the keys below)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if _reads_back_as(value) else "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _reads_back_as(text: str) -> bool:
    """Whether ``text`` written bare in YAML reads back as this same string (``001`` would be a number)."""
    import yaml

    try:
        return bool(text) and yaml.safe_load(text) == text and not text.startswith(("{", "[", "'", '"'))
    except yaml.YAMLError:
        return False
