"""Generate the configuration reference from the typed config at build time.

``docs/configuration/reference.md`` holds the marker ``<!-- config-reference -->``; this hook
replaces it with one section per config section (its docstring) and one table row per
field: dotted name, type, default, allowed range and description. It walks the pydantic
model behind ``datamodels.config.Config`` and imports nothing else from the package, so it
follows the config wherever its classes live.

A field's description is its ``Field(description=...)`` when it has one, else the comment
on the same line of the class body (or a comment block above it that starts by naming it),
else the bullet of the section's docstring that names it (``* ``name``: ...``), else the line
for its dotted name in ``docs/configuration/descriptions.yaml`` (for fields the code does
not describe yet; the docs test refuses a key there that is not a field).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = "<!-- config-reference -->"
ROOT = Path(__file__).resolve().parents[2]  # the repository: this checkout's package first
DESCRIPTIONS = ROOT / "docs" / "configuration" / "descriptions.yaml"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from datamodels.config import Config  # deferred: only the reference page needs it

    return markdown.replace(MARKER, render(Config, _fallbacks()))


def _fallbacks() -> dict[str, str]:
    if not DESCRIPTIONS.is_file():
        return {}
    return yaml.safe_load(DESCRIPTIONS.read_text()) or {}


def render(root: type[BaseModel], fallbacks: dict[str, str] | None = None) -> str:
    """Markdown for ``root``: its own fields first, then one section per nested model."""
    fallbacks = fallbacks or {}
    out = [_table(root, "", list(root.model_fields), fallbacks)]
    for path, model in _sections(root, ""):
        title = path
        doc = inspect.cleandoc(model.__doc__ or "")
        out.append(f"## `{title}` {{#{_anchor(title)}}}\n")
        if doc and not doc.startswith(model.__name__ + "("):
            out.append(doc + "\n")
        out.append(_table(model, path, list(model.model_fields), fallbacks))
    return "\n".join(out)


def _sections(model: type[BaseModel], prefix: str):
    """(dotted path, model) of every nested model, depth first, in field order."""
    for name, field in model.model_fields.items():
        nested = _nested(field.annotation)
        if nested is None:
            continue
        many = _is_sequence(field.annotation)
        path = f"{prefix}{name}" + ("[]" if many else "")
        yield path, nested
        yield from _sections(nested, path + ".")


def _table(model: type[BaseModel], prefix: str, names: list[str], fallbacks: dict[str, str]) -> str:
    comments, bullets = _line_comments(model), _docstring_bullets(model)
    rows = ["| field | type | default | allowed | hashed | description |",
            "|---|---|---|---|---|---|"]
    for name in names:
        field = model.model_fields[name]
        nested = _nested(field.annotation)
        dotted = f"{prefix}.{name}" if prefix else name
        if nested is not None:
            target = dotted + ("[]" if _is_sequence(field.annotation) else "")
            kind = f"section ([`{target}`](#{_anchor(target)}))"
            default = "null" if _optional(field.annotation) and field.default is None else "—"
            rows.append(f"| `{dotted}` | {kind} | {default} | | {_hashed(dotted)} | |")
            continue
        description = (
            field.description
            or comments.get(name)
            or bullets.get(name)
            or fallbacks.get(dotted)
            or fallbacks.get(re.sub(r"^transfer\.source\.", "dataset.", dotted), "")
        )
        rows.append(
            f"| `{dotted}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} "
            f"| {_cell(_constraints(field))} | {_hashed(dotted)} | {_cell(description)} |"
        )
    return "\n".join(rows) + "\n"


def _hashed(dotted: str) -> str:
    """Whether the field is part of the config hash (its section is one of the hashed ones:
    changing it makes a new run)."""
    from datamodels.config import HASHED_SECTIONS  # deferred: only the reference page needs it

    return "yes" if dotted.split(".")[0].removesuffix("[]") in HASHED_SECTIONS else "no"


def _nested(annotation: Any) -> type[BaseModel] | None:
    for arg in _flatten(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    out = []
    for arg in args:
        out.extend(_flatten(arg) if typing.get_args(arg) else [arg])
    return out


def _is_sequence(annotation: Any) -> bool:
    origins = {typing.get_origin(a) for a in (annotation, *typing.get_args(annotation))}
    return bool(origins & {tuple, list})


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "—"
    if isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
        dumps = (v.model_dump(mode="json", exclude_defaults=True) for v in value)
        return "; ".join(json.dumps(d) for d in dumps)
    return json.dumps(value)


_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _constraints(field) -> str:
    parts = []
    for item in field.metadata:
        for attr, symbol in _BOUNDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                parts.append(f"{symbol} {shown}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _line_comments(model: type[BaseModel]) -> dict[str, str]:
    """field name -> the comment on its own line of the class body, or the comment block
    above it that starts by naming it (``# ``recipe``: ...``)."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    named, current = {}, None  # comment blocks that start by naming a field: # ``name``: ...
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match and match.group(1) in model.model_fields:
            found[match.group(1)] = match.group(2).strip()
        comment = re.match(r"\s+#\s?(.*)$", line)
        if not comment:
            current = None
            continue
        head = re.match(r"``(\w+)``:\s*(.*)$", comment.group(1))
        if head and head.group(1) in model.model_fields:
            current = head.group(1)
            named[current] = head.group(2)
        elif current is not None:
            named[current] += " " + comment.group(1).strip()
    return {**named, **found}


def _anchor(path: str) -> str:
    return "config-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _cell(text: str) -> str:
    """One table cell: a bare value as code; pipes escaped outside code spans (the table
    extension leaves pipes inside backticks alone, and would show a backslash there)."""
    text = text.replace("\n", " ")
    if text and _is_code(text) and "`" not in text:
        return f"`{text}`"
    parts = re.split(r"(``.*?``|`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def _is_code(text: str) -> bool:
    return text.startswith(("{", "[", '"')) or re.fullmatch(r"[-\w.]+", text) is not None


def _docstring_bullets(model: type[BaseModel]) -> dict[str, str]:
    """field name -> the text of the docstring bullet that starts by naming it."""
    doc = inspect.cleandoc(model.__doc__ or "")
    # a bullet may name a choice of a field (a plan kind), not a field
    choices = {
        str(value)
        for field in model.model_fields.values()
        if typing.get_origin(field.annotation) is typing.Literal
        for value in typing.get_args(field.annotation)
    }
    found: dict[str, str] = {}
    for item in re.split(r"\n(?=\* )", doc):
        match = re.match(r"\* ((?:``\w+``(?:\s*/\s*)?)+):\s*(.+)", item, re.DOTALL)
        if not match:
            continue
        text = " ".join(re.split(r"\n\s*\n", match.group(2))[0].split())
        for name in re.findall(r"``(\w+)``", match.group(1)):
            if name in model.model_fields and name not in choices:
                found.setdefault(name, text)
    return found
