"""Loading a config: YAML files or dicts, ``--set a.b=c`` overrides addressed by dotted keys
(``plans.train.count`` names the plan ``train``), and validation errors turned into one line
naming the field and what is allowed (`ConfigError`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from datamodels.config.root import Config
from datamodels.errors import ConfigError


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if keys[0] not in tree and len(keys) > 1:
        # Overriding inside a section the file left out starts from that section's defaults.
        default = Config().model_dump(mode="json").get(keys[0])
        if isinstance(default, dict | list):
            tree[keys[0]] = default
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = _plan_node(node, key, ".".join(keys[: i + 1]))
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[:i])}' is not a section")
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        node = nxt
    last = keys[-1]
    if isinstance(node, list):
        raise ConfigError(
            f"--set {dotted}: name a field inside the list item, e.g. plans.train.count=500"
        )
    node[last] = value


def _plan_node(items: list, key: str, where: str) -> dict:
    """``plans.train.count`` addresses the plan named ``train`` (or index ``0``)."""
    for item in items:
        if isinstance(item, dict) and item.get("name") == key:
            return item
    if key.isdigit() and int(key) < len(items):
        return items[int(key)]
    names = ", ".join(str(i.get("name")) for i in items if isinstance(i, dict))
    raise ConfigError(f"--set {where}: no list item named {key!r} (have: {names})")


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    return key, yaml.safe_load(raw) if raw.strip() else None


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    kind, msg = first["type"], first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        section = _section_for(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        return f"unknown config key '{loc}'" + (f"; allowed here: {allowed}" if allowed else "")
    if kind == "literal_error" or msg.startswith("Input should be "):
        return f"invalid value for '{loc}': {msg}"
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return f"invalid value for '{loc}': {msg}{shown}" if loc else f"invalid config: {msg}"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = getattr(ann, "__args__", (ann,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def config_from_dict(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a dict of sections (a ``config_hash`` key is ignored) after ``--set``
    overrides; a mistake is one `ConfigError` line."""
    tree = json.loads(json.dumps(tree))  # deep copy, YAML scalars only
    tree.pop("config_hash", None)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(
    path: str | Path | dict[str, Any] | Config, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML config (or take a dict of sections, or a ``Config``), apply ``--set``
    overrides (``"train.epochs=5"``), validate."""
    if isinstance(path, Config):
        return config_from_dict(path.model_dump(mode="json"), overrides)
    if isinstance(path, dict):
        return config_from_dict(path, overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for examples)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return config_from_dict(tree, overrides)


def config_from_yaml_text(text: str) -> Config:
    """A config from YAML text (a run's ``config.yaml``)."""
    return config_from_dict(yaml.safe_load(text) or {})
