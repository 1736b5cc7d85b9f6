"""Random quantities of a scenario (service times, frame sizes, cold starts) and their samplers.

A distribution is written in YAML either as a bare number (a constant) or as a mapping:

    {dist: constant, value: 10}
    {dist: exponential, mean: 10}
    {dist: lognormal, mean: 10, cv: 0.5}         # mean and coefficient of variation
    {dist: uniform, low: 5, high: 15}
    {dist: normal, mean: 10, std: 2}             # truncated at `min` (default 0)
    {dist: empirical, samples: [9.1, 10.4, ...]} # resampled uniformly
    {dist: profile, file: profile.json, key: edge.service_ms}   # samples from a profile file

Samplers are closures over bound methods of one `random.Random` per stream, the cheapest
way to draw in pure Python (numpy per-call overhead is larger than the draw itself).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

Sampler = Callable[[], float]
KINDS = ("constant", "exponential", "lognormal", "uniform", "normal", "empirical", "profile")


class ScenarioError(ValueError):
    """A scenario (or a file it references) is invalid; the message starts with the field path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def stream_seed(seed: int, name: str) -> int:
    """The seed of the stream `name` under the scenario seed `seed` (64 bits)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest(), "big")


def stream(seed: int, name: str) -> random.Random:
    """An independent, reproducible random stream per purpose: adding a camera or a pool
    does not shift the draws of the others."""
    return random.Random(stream_seed(seed, name))


@dataclass(frozen=True, slots=True)
class Dist:
    kind: str
    mean: float = 0.0
    cv: float = 0.0
    low: float = 0.0
    high: float = 0.0
    std: float = 0.0
    minimum: float = 0.0
    samples: tuple[float, ...] = ()

    @property
    def expected(self) -> float:
        """The distribution's mean (used to seed estimates before any sample is observed)."""
        if self.kind == "uniform":
            return (self.low + self.high) / 2
        if self.kind == "empirical":
            return sum(self.samples) / len(self.samples)
        return self.mean

    def sampler(self, rng: random.Random) -> Sampler:
        if self.kind == "constant":
            value = self.mean
            return lambda: value
        if self.kind == "exponential":
            rate = 1.0 / self.mean
            expovariate = rng.expovariate
            return lambda: expovariate(rate)
        if self.kind == "lognormal":
            sigma = math.sqrt(math.log(1.0 + self.cv ** 2))
            mu = math.log(self.mean) - sigma ** 2 / 2
            lognormvariate = rng.lognormvariate
            return lambda: lognormvariate(mu, sigma)
        if self.kind == "uniform":
            low, high, uniform = self.low, self.high, rng.uniform
            return lambda: uniform(low, high)
        if self.kind == "normal":
            mean, std, floor, gauss = self.mean, self.std, self.minimum, rng.gauss
            return lambda: max(floor, gauss(mean, std))
        samples, choice = self.samples, rng.choice
        return lambda: choice(samples)


def constant(value: float) -> Dist:
    return Dist("constant", mean=float(value))


def parse_dist(raw: Any, path: str, base_dir: Path, positive: bool = True) -> Dist:
    """Validate one distribution spec; `path` names the field in error messages."""
    if isinstance(raw, bool):
        raise ScenarioError(path, "must be a number or a distribution mapping")
    if isinstance(raw, (int, float)):
        _check_value(float(raw), path, positive)
        return constant(raw)
    if not isinstance(raw, Mapping):
        raise ScenarioError(path, "must be a number or a mapping with a 'dist' key")
    kind = raw.get("dist")
    if kind not in KINDS:
        raise ScenarioError(f"{path}.dist", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed = {"constant": {"value"}, "exponential": {"mean"}, "lognormal": {"mean", "cv"},
               "uniform": {"low", "high"}, "normal": {"mean", "std", "min"}, "empirical": {"samples"},
               "profile": {"file", "key"}}[kind]
    unknown = sorted(set(raw) - allowed - {"dist"})
    if unknown:
        raise ScenarioError(f"{path}.{unknown[0]}", f"unknown key for dist {kind} (allowed: {', '.join(sorted(allowed))})")

    def number(key: str, low: float | None = 0.0, strict: bool = True) -> float:
        if key not in raw:
            raise ScenarioError(f"{path}.{key}", f"is required for dist {kind}")
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScenarioError(f"{path}.{key}", f"must be a finite number, got {value!r}")
        if low is not None and (value <= low if strict else value < low):
            raise ScenarioError(f"{path}.{key}", f"must be {'>' if strict else '>='} {low:g}")
        return float(value)

    if kind == "constant":
        return Dist("constant", mean=number("value", 0.0, strict=positive))
    if kind == "exponential":
        return Dist("exponential", mean=number("mean"))
    if kind == "lognormal":
        return Dist("lognormal", mean=number("mean"), cv=number("cv", 0.0, strict=False))
    if kind == "uniform":
        low, high = number("low", 0.0, strict=False), number("high", 0.0, strict=False)
        if high < low:
            raise ScenarioError(f"{path}.high", f"must be >= low ({low:g})")
        return Dist("uniform", low=low, high=high)
    if kind == "normal":
        return Dist("normal", mean=number("mean"), std=number("std", 0.0, strict=False),
                    minimum=number("min", 0.0, strict=False) if "min" in raw else 0.0)
    if kind == "empirical":
        return Dist("empirical", samples=_samples(raw.get("samples"), f"{path}.samples", positive))
    if "file" not in raw or "key" not in raw:
        raise ScenarioError(path, "dist profile needs 'file' and 'key' (e.g. key: edge.service_ms)")
    profile = load_profile(base_dir / str(raw["file"]), f"{path}.file")
    value: Any = profile
    for part in str(raw["key"]).split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ScenarioError(f"{path}.key", f"{raw['key']!r} not found in {raw['file']}")
        value = value[part]
    return Dist("empirical", samples=_samples(value, f"{path}.key", positive))


def _samples(raw: Any, path: str, positive: bool) -> tuple[float, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ScenarioError(path, "must be a non-empty list of numbers")
    values = []
    for index, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ScenarioError(f"{path}[{index}]", f"must be a finite number, got {item!r}")
        _check_value(float(item), f"{path}[{index}]", positive)
        values.append(float(item))
    return tuple(values)


def _check_value(value: float, path: str, positive: bool) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ScenarioError(path, f"must be {'> 0' if positive else '>= 0'}, got {value:g}")


# ------------------------------------------------------------------ profile files
PROFILE_SCHEMA = """\
A profile (JSON or YAML, written by `edgeoffload profile`) holds measured samples:
  {"edge":  {"service_ms": [float, ...]},          # per-frame inference time on one edge worker
   "cloud": {"service_ms": [float, ...]},
   "wan":   {"rtt_ms": [float, ...], "bandwidth_bps": float},
   "frame_bytes": [int, ...]}                       # optional: encoded frame sizes
Every section is optional; a scenario picks samples with {dist: profile, file: F, key: edge.service_ms}
and the WAN with `wan: {profile: F}` (median RTT, bandwidth_bps)."""


def load_profile(path: Path, where: str) -> Mapping[str, Any]:
    """Read a profile file (JSON or YAML, chosen by suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(where, f"cannot read profile {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError(where, f"profile {path} is not valid {path.suffix[1:] or 'YAML'}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ScenarioError(where, f"profile {path} must be a mapping (see the profile schema)")
    return data


__all__ = ["Dist", "PROFILE_SCHEMA", "Sampler", "ScenarioError", "constant", "load_profile", "parse_dist", "stream", "stream_seed"]
