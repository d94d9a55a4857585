"""Typed setting of nested dataclass configs from YAML files and dotted ``key=value`` overrides.

The mechanics behind ``rlvr_world.config`` (which owns the dataclasses, presets and semantics): values
are checked against the fields' annotations (``int``, ``float``, ``bool``, ``str``, ``Literal``, unions,
``list[...]``, ``dict[...]``, nested dataclass sections) and every error is a ValueError naming the
dotted key; unknown keys list the keys allowed at that level, with a close match when there is one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["apply_overrides", "apply_yaml", "set_fields", "unknown_key_message"]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key_message(key: str, name: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    level = key.rpartition(".")[0] or "the top level"
    return f"unknown key {key!r}{hint}; allowed keys in {level}: {', '.join(allowed)}"


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp) -> str:
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if dataclasses.is_dataclass(tp):
        return f"a mapping (section {tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp, value):
    """``value`` checked against the annotation ``tp`` (ints widened to float); ValueError naming ``key``."""
    def bad(extra: str = "") -> ValueError:
        return ValueError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}){extra}")

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, arg, value)
            except ValueError:
                pass
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad(" (write a list as [a, b])")
        (item,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad()
        ktp, vtp = typing.get_args(tp)
        return {_coerce(f"{key} key", ktp, k): _coerce(f"{key}.{k}", vtp, v) for k, v in value.items()}
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in this module, not in the input


def set_fields(obj, values: Mapping, prefix: str = "") -> None:
    """Set the fields of the dataclass ``obj`` from ``values``; sections merge, other fields are replaced."""
    if not isinstance(values, Mapping):
        where = prefix or "the config"
        # a ValueError like every config error (the CLI reports ValueErrors as config errors)
        raise ValueError(f"{where} must be a mapping of keys to values, got {values!r}")  # noqa: TRY004
    hints = _hints(type(obj))
    names = _fields(obj)
    for name, value in values.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str) or name not in names:
            raise ValueError(unknown_key_message(key, str(name), names))
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if value is None:  # an empty section in YAML (`data:` with nothing under it)
                continue
            set_fields(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(key, hints[name], value))


def _accepts_str(tp) -> bool:
    if tp is str:
        return True
    return _is_union(tp) and str in typing.get_args(tp)


def _split_override(text: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {text!r} must be written key=value (e.g. data.image_size=64)")
    return key, raw


def _parse_value(raw: str, tp):
    if _accepts_str(tp) and raw.strip() not in ("null", "~", "None"):
        return raw  # a str field takes the text as written
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {raw!r} as a YAML value: {e}") from None


def apply_overrides(config, overrides: Iterable[str]):
    """Apply dotted ``key=value`` overrides to the dataclass tree ``config`` in place; returns it."""
    for text in overrides:
        key, raw = _split_override(text)
        parts = key.split(".")
        obj, prefix = config, ""
        for i, name in enumerate(parts):
            dotted = prefix + name
            names = _fields(obj)
            if name not in names:
                raise ValueError(unknown_key_message(dotted, name, names))
            current, tp = getattr(obj, name), _hints(type(obj))[name]
            rest = parts[i + 1:]
            if dataclasses.is_dataclass(current):
                if rest:
                    obj, prefix = current, dotted + "."
                    continue
                set_fields(current, _parse_value(raw, tp), dotted + ".")
                break
            if rest:  # one key of a dict field: model.overrides.dim=256
                dict_tp = next((a for a in ((tp,) + typing.get_args(tp)) if typing.get_origin(a) is dict), None)
                if dict_tp is None or len(rest) != 1:
                    raise ValueError(f"{dotted} is {_type_name(tp)}, it has no key {'.'.join(rest)!r}")
                sub = rest[0]
                vtp = typing.get_args(dict_tp)[1]
                value = _coerce(key, vtp, _parse_value(raw, vtp))
                setattr(obj, name, {**(current or {}), sub: value})
                break
            setattr(obj, name, _coerce(dotted, tp, _parse_value(raw, tp)))
            break
    return config


def apply_yaml(config, path: str | Path):
    """Set values of ``config`` from a YAML file in place; the file may hold ``recipe: <name>``."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if values is None:
        return config
    if not isinstance(values, Mapping):
        raise ValueError(f"{path} must hold a mapping of keys to values, got {type(values).__name__}")  # noqa: TRY004
    values = dict(values)
    recipe = values.pop("recipe", config.recipe)
    kind = values.pop("kind", getattr(config, "kind", "video"))
    if kind != getattr(config, "kind", "video"):
        raise ValueError(f"{path} is a {kind!r} config of recipe {recipe!r}, not a {getattr(config, 'kind', 'video')!r} one")
    if recipe != config.recipe:
        raise ValueError(f"{path} is a config of recipe {recipe!r}, not {config.recipe!r}")
    try:
        set_fields(config, values, "")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return config
