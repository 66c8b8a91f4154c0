"""Generate the configuration reference from the typed config at build time.

``docs/configuration/reference.md`` holds the marker ``<!-- config-reference -->``; this hook
replaces it with one section per config section (its docstring) and one table row per
field: dotted name, type, default, allowed range and description. It walks the pydantic
model behind ``datamodels.config.Config`` and imports nothing else from the package, so it
follows the config wherever its classes live.

A field's description is its ``Field(description=...)`` when it has one, else the comment
on the same line of the class body.
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

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = "<!-- config-reference -->"
ROOT = Path(__file__).resolve().parents[2]  # the repository: this checkout's package first


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from datamodels.config import Config  # deferred: only the reference page needs it

    return markdown.replace(MARKER, render(Config))


def render(root: type[BaseModel]) -> str:
    """Markdown for ``root``: its own fields first, then one section per nested model."""
    out = [_table(root, "", list(root.model_fields))]
    for path, model in _sections(root, ""):
        title = path
        doc = inspect.cleandoc(model.__doc__ or "")
        out.append(f"## `{title}` {{#{_anchor(title)}}}\n")
        if doc and not doc.startswith(model.__name__ + "("):
            out.append(doc + "\n")
        out.append(_table(model, path, list(model.model_fields)))
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


def _table(model: type[BaseModel], prefix: str, names: list[str]) -> str:
    comments = _line_comments(model)
    rows = ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name in names:
        field = model.model_fields[name]
        nested = _nested(field.annotation)
        dotted = f"{prefix}.{name}" if prefix else name
        if nested is not None:
            target = dotted + ("[]" if _is_sequence(field.annotation) else "")
            kind = f"section ([`{target}`](#{_anchor(target)}))"
            default = "null" if _optional(field.annotation) and field.default is None else "—"
            rows.append(f"| `{dotted}` | {kind} | {default} | | |")
            continue
        description = field.description or comments.get(name, "")
        rows.append(
            f"| `{dotted}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} "
            f"| {_cell(_constraints(field))} | {_cell(description)} |"
        )
    return "\n".join(rows) + "\n"


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
    """field name -> the comment on its own line of the class body."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match and match.group(1) in model.model_fields:
            found[match.group(1)] = match.group(2).strip()
    return found


def _anchor(path: str) -> str:
    return "config-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`{text}`" if text and _is_code(text) else text


def _is_code(text: str) -> bool:
    return text.startswith(("{", "[", '"')) or re.fullmatch(r"[-\w.]+", text) is not None
