"""Scenario builders shared by the simulator tests."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest

from edgeoffload.sim import Scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "experiments" / "scenarios"

SMALL: dict[str, Any] = {
    "name": "small", "duration_s": 20, "seed": 3,
    "cameras": [{"name": "cam", "count": 4, "fps": 10, "jitter_ms": 2, "frame_bytes": 20_000}],
    "wan": {"bandwidth_mbps": 50, "rtt_ms": 30},
    "edge": {"replicas": 1, "workers": 2, "service_ms": {"dist": "exponential", "mean": 40}},
    "cloud": {"replicas": 2, "workers": 1, "service_ms": {"dist": "lognormal", "mean": 10, "cv": 0.3}},
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in recursively (a None value deletes the key; a distribution
    mapping, one with a `dist` key, replaces the old one whole)."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and "dist" not in value and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@pytest.fixture
def scenario() -> Callable[..., Scenario]:
    """scenario(**changes) -> the small scenario with changes merged in."""
    def build(base: dict[str, Any] | None = None, **changes: Any) -> Scenario:
        return load_scenario(merged(base or SMALL, changes))
    return build


@pytest.fixture
def raw_small() -> dict[str, Any]:
    return copy.deepcopy(SMALL)
