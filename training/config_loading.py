"""Reading a training configuration: a YAML preset (with its `base:` chain), then `--key value` overrides from the
command line, type-checked into a :class:`training.config.TrainingConfig`.

A preset may start with `base: OTHER.yaml` (a path relative to the preset) to inherit that file's keys; keys in the
preset override the base, and command-line `--key value` overrides both. Values on the command line are parsed as
YAML (`--teacher_logit_scales "[70, 60]"`, `--push_to_hub` alone means true). When the command line sets one of the
three batch keys and the preset's keys would then fix all three, the preset's layout keys give way (its
`gradient_accumulation_steps` first, then its `per_device_batch_size`) and are derived again
(`training.batch_sizes.resolve_batch_sizes`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from training.config import ConfigError, TrainingConfig


CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
_FIELD_TYPES = typing.get_type_hints(TrainingConfig)
# The three batch keys: the global batch (the recipe), then the two keys of its layout on the hardware (a preset's
# layout keys give way to a command-line batch key, accumulation steps first: _rederive_preset_batch_layout).
BATCH_KEYS = ("global_batch_size", "per_device_batch_size", "gradient_accumulation_steps")


def _coerce(name: str, value: Any, where: str) -> Any:
    """Checks/converts a YAML value to the field's annotated type; the error names the key and its source."""
    hint = _FIELD_TYPES[name]
    if name == "mixed_precision" and value is False:  # YAML 1.1 reads a bare `no` as false
        value = "no"
    options = _options(hint)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: key {name!r} cannot be null.")
    errors = []
    for option in (o for o in options if o is not type(None)):
        origin = typing.get_origin(option)
        if origin is dict:
            if isinstance(value, dict) and all(isinstance(key, str) for key in value):
                return value
            errors.append(f"{value!r} is not a mapping of names to values")
            continue
        if origin is list:
            (item_type,) = typing.get_args(option)
            items = value if isinstance(value, list) else [value]
            try:
                return [_scalar(item, item_type) for item in items]
            except (TypeError, ValueError) as error:
                errors.append(str(error))
                continue
        try:
            return _scalar(value, option)
        except (TypeError, ValueError) as error:
            errors.append(str(error))
    raise ConfigError(f"{where}: key {name!r} expects {_type_name(hint)}, got {value!r} ({'; '.join(errors)}).")


def _scalar(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{value!r} is not true/false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{value!r} is not an integer")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise TypeError(f"{value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{value!r} is not a number")
        return float(value)
    if kind is str:
        if isinstance(value, (dict, list)):
            raise TypeError(f"{value!r} is not a string")
        return str(value)
    raise TypeError(f"unsupported type {kind}")


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _options(hint: Any) -> tuple:
    """The members of a `X | Y` annotation, or `(hint,)`."""
    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if is_union else (hint,)


def _is_list_field(name: str) -> bool:
    return any(typing.get_origin(option) is list for option in _options(_FIELD_TYPES[name]))


def _check_keys(values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Valid keys: the fields of TrainingConfig in "
                              "training/config.py.")


def read_yaml_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The keys of a preset, its `base:` chain resolved (base first, then this file's keys)."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (CONFIGS_DIR / path).is_file():
        path = CONFIGS_DIR / path
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path} (presets live in {CONFIGS_DIR}).")
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular `base:` chain {[str(p) for p in _seen]}.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(values).__name__}.")
    base = values.pop("base", None)
    merged = read_yaml_config(path.parent / base, (*_seen, path)) if base else {}
    _check_keys(values, str(path))
    merged.update({k: (path, v) for k, v in values.items()})
    return merged


def build_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """Preset keys, then `overrides` (already YAML-parsed), type-checked into a :class:`TrainingConfig`."""
    values: dict[str, Any] = {}
    sources: dict[str, tuple[Path | str, Any]] = read_yaml_config(yaml_path) if yaml_path else {}
    if overrides:
        _check_keys(overrides, "command line")
        sources.update({k: ("command line", v) for k, v in overrides.items()})
        _rederive_preset_batch_layout(sources)
    for key, (where, value) in sources.items():
        values[key] = _coerce(key, value, str(where))
    return TrainingConfig(**values)


def _rederive_preset_batch_layout(sources: dict[str, tuple[Path | str, Any]]) -> None:
    """The command line set a batch key and, with the preset's, all three are set: drop the preset's accumulation
    steps (else its per-device batch) so that it is derived from the user's value and the recipe's global batch.
    A preset's global batch never gives way: if the user sets both layout keys they must agree with it."""
    given = [key for key in BATCH_KEYS if key in sources and sources[key][1] is not None]
    if len(given) < 3 or all(sources[key][0] != "command line" for key in given):
        return
    for key in reversed(BATCH_KEYS[1:]):  # gradient_accumulation_steps, then per_device_batch_size
        if sources[key][0] != "command line":
            sources[key] = (sources[key][0], None)
            return


def parse_args(argv: list[str] | None = None) -> TrainingConfig:
    """`--config FILE` plus `--key value` overrides for every field of :class:`TrainingConfig`."""
    parser = argparse.ArgumentParser(
        description="Reinforced MobileCLIP training (run with `accelerate launch training/train.py`).",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML preset (a path, or a file name in training/configs/)")
    for item in dataclasses.fields(TrainingConfig):
        is_bool = _FIELD_TYPES[item.name] in (bool, bool | None)  # `--push_to_hub` / `--streaming` alone: true
        parser.add_argument(
            f"--{item.name}", nargs="?" if is_bool else None, const="true" if is_bool else None,
            metavar="VALUE", help=f"{_type_name(_FIELD_TYPES[item.name])} (default {item.default!r})"
            if item.default is not dataclasses.MISSING else _type_name(_FIELD_TYPES[item.name]),
        )
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    overrides = {}
    for key, text in args.items():
        if _FIELD_TYPES[key] in (str, str | None):
            # String keys stay literal (paths like "001", mixed_precision "no"); only "null" clears an optional one.
            overrides[key] = None if text == "null" and _FIELD_TYPES[key] is not str else text
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"command line: cannot parse --{key} {text!r}: {error}") from error
        if isinstance(value, str) and _is_list_field(key):  # `--teachers a,b` like dataset_scripts' CLI
            value = [yaml.safe_load(item.strip()) for item in value.split(",") if item.strip()]
        overrides[key] = value
    return build_config(config_path, overrides)


__all__ = ["BATCH_KEYS", "CONFIGS_DIR", "build_config", "parse_args", "read_yaml_config"]
