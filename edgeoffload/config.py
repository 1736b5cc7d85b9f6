"""Unit configuration: a dataclass filled from an optional YAML file, then environment variables.

Every unit reads its settings the same way, so Kubernetes ConfigMaps (env) and local YAML
files configure the same fields. Field `model_path` of a config with prefix `INFER_` is
read from `INFER_MODEL_PATH`; the YAML file named by `<PREFIX>CONFIG` uses the field names.

A variable with the prefix that names no setting is a typo until shown otherwise: when it is
close to a known name (`PRE_DEADLNE_MS`) the unit refuses to start and names the setting
meant, since a silently ignored deadline or password is worse than a failed start; other
names (e.g. the `<SERVICE>_PORT` variables Kubernetes injects) only get a warning line.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def load_config(cls: type[T], prefix: str, env: Mapping[str, str] | None = None,
                yaml_path: str | Path | None = None) -> T:
    """Build `cls` from defaults, then the YAML file (if any), then `<prefix><FIELD>` env vars."""
    env = os.environ if env is None else env
    yaml_path = yaml_path or env.get(f"{prefix}CONFIG")
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if yaml_path:
        loaded = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of settings")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{yaml_path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name, raw in loaded.items():
            values[name] = _convert(raw, hints[name], f"{yaml_path}:{name}")
    check_env_names(cls, prefix, env)
    for name in known:
        key = f"{prefix}{name.upper()}"
        if key in env:
            values[name] = _convert(env[key], hints[name], key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def env_names(cls: type, prefix: str) -> list[str]:
    """The environment variables a config class reads (used to check manifests against code)."""
    return [f"{prefix}{f.name.upper()}" for f in dataclasses.fields(cls)] + [f"{prefix}CONFIG"]


def check_env_names(cls: type, prefix: str, env: Mapping[str, str]) -> None:
    """ConfigError for a `<prefix>` variable that looks like a misspelt setting; a warning for
    any other unknown one."""
    known = env_names(cls, prefix)
    for key in sorted(k for k in env if k.startswith(prefix) and k not in known):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"{key} is not a setting; did you mean {close[0]}?")
        log.warning("ignoring %s: not a setting of this unit (%s...)", key, prefix)


def _convert(raw: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        return _convert(raw, options[0], where)
    if origin in (tuple, list):
        item_type = typing.get_args(hint)[0] if typing.get_args(hint) else str
        if isinstance(raw, (list, tuple)):
            items = list(raw)
        else:  # "a,b,c"; numbers may also be written "416x416"
            text = str(raw).replace("x", ",") if item_type in (int, float) else str(raw)
            items = [part for part in text.split(",") if part.strip()]
        return origin(_convert(item, item_type, where) for item in items)
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float, str):
            return hint(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {raw!r}") from None
    return raw
