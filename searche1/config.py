"""Typed configuration: dataclasses built from YAML/dicts with errors that name the bad field and the fix.

Every component owns one dataclass. :func:`from_dict` walks the dataclass fields, checks types (including nested
dataclasses, ``Literal`` choices, ``list[...]`` and optionals), rejects unknown keys with a did-you-mean hint, and then
calls the dataclass's own ``validate()`` (if any) for cross-field rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from searche1.errors import ConfigError

T = TypeVar("T")

#: fields of earlier versions (dotted path) -> what replaced them, so an old config fails with the fix
RENAMED = {
    "grpo.shard_optimizer": "an earlier version's field, replaced by grpo.sharding (fix: sharding: optimizer for "
                            "true; drop the line for false)",
    "ofsd.shard_optimizer": "an earlier version's field, replaced by ofsd.sharding (fix: sharding: optimizer for "
                            "true; drop the line for false)",
    "retrieval.topk": "an earlier version's field, moved to rollout.topk (fix: set rollout.topk, the passages per "
                      "search)",
}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML reads an unquoted on/off (yes/no) as true/false
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if origin is list and get_args(tp) and get_args(tp)[0] in (str, Path):
                value = [value]  # a single string where a list of strings is expected: be forgiving
            else:
                raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        out = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads '5e-5' as a string
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path, got {value!r}")
        return Path(value)
    return value


class UnknownFieldError(ConfigError):
    """A key that is no field of its section; ``dotted`` is its path, ``key`` its last part."""

    def __init__(self, message: str, dotted: str, key: str) -> None:
        super().__init__(message)
        self.dotted, self.key = dotted, key


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; raise :class:`ConfigError` naming ``path.field`` on any problem."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid fields: {', '.join(fields)}"
        dotted = f"{path + '.' if path else ''}{k}"
        if dotted in RENAMED:
            raise ConfigError(f"{dotted}: {RENAMED[dotted]}")
        raise UnknownFieldError(f"{dotted}: unknown field of {cls.__name__} ({hint})", dotted, str(k))
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        if (isinstance(value, dict) and dataclasses.is_dataclass(hints[name])
                and f.default_factory is not dataclasses.MISSING):  # type: ignore[misc]
            # a partial section fills in from this field's own default (e.g. the demo's GRPO settings), not
            # from the section class's defaults
            value = _merge(to_dict(f.default_factory()), value)  # type: ignore[misc]
        kwargs[name] = _convert(value, hints[name], f"{path + '.' if path else ''}{name}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{path + '.' if path else ''}{e}") from None
    return obj


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[T], path: str | Path | None, overrides: dict | None = None) -> T:
    """Load a YAML file into ``cls`` (``None``: the class defaults); ``overrides`` (dotted keys → values) are
    applied on top."""
    if path is None:
        return _apply(cls, {}, overrides, "defaults")
    return _apply(cls, _read_yaml(Path(path)), overrides, str(path))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML mapping; ``extends: other.yaml`` (relative to this file) loads that file first and merges this one
    over it, section by section."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (fix: pass an existing YAML file, e.g. "
                          "configs/demo-cpu.yaml)")
    try:
        with open(path, encoding="utf-8") as f:  # a stream, so a syntax error's position names the file
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = (path.parent / str(parent)).resolve()
    if base in seen or base == path.resolve():
        raise ConfigError(f"{path}: extends: {parent} makes a cycle")
    return _merge(_read_yaml(base, (*seen, path.resolve())), data)


def _apply(cls: type[T], data: dict, overrides: dict | None, where: str) -> T:
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:  # absent, or an empty section (`grpo:` alone reads as null)
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"{where}: --set {key}: {p} is {node[p]!r}, not a section")
            node = node[p]
        node[leaf] = value
    try:
        return from_dict(cls, data)
    except UnknownFieldError as e:  # a field put in the wrong section (`lr:` at the top, `grpo.topk`): say where
        homes = [name for name, *_ in describe(cls) if name.rsplit(".", 1)[-1] == e.key and name != e.dotted]
        if homes:
            raise ConfigError(f"{where}: {e.dotted}: not a field there; '{e.key}' is {' or '.join(homes)} (fix: "
                              "set it there)") from None
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass → plain dict (paths as strings), for saving next to a run."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """(field path, type, default, help) rows of a config dataclass, for the generated configuration reference.

    The help text comes from ``field(metadata={"help": ...})``; defaults are those of ``defaults`` (an instance,
    so a section's default comes from its parent's factory) or of the field.
    """
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        own = getattr(defaults, f.name) if defaults is not None else None
        if dataclasses.is_dataclass(tp):
            if own is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                own = f.default_factory()  # type: ignore[misc]
            rows.extend(describe(tp, name + ".", own))
            continue
        if defaults is not None:
            default = repr(own)
        elif f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, _type_name(tp), default, f.metadata.get("help", "")))
    return rows


__all__ = ["ConfigError", "from_dict", "load_config", "to_dict", "describe", "typing"]
