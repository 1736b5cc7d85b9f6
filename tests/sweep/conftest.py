"""A tiny sweep on disk: two scenario files, a policy file with module-level state, a spec."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

SCENARIO: dict[str, Any] = {
    "name": "calm", "duration_s": 8, "warmup_s": 2, "seed": 1, "timeline_interval_s": 4,
    "cameras": [{"name": "cam", "count": 3, "fps": 10, "arrival": "poisson", "frame_bytes": 20_000,
                 "deadline_ms": 200}],
    "wan": {"bandwidth_mbps": 20, "rtt_ms": 30},
    "edge": {"replicas": 1, "workers": 1, "queue_capacity": 8, "service_ms": {"dist": "exponential", "mean": 40}},
    "cloud": {"replicas": 1, "workers": 2, "service_ms": {"dist": "lognormal", "mean": 15, "cv": 0.3}},
}

# Module-level state: if two cells shared one module, the second would decide differently.
POLICY_FILE = '''"""Offloads every third frame it has seen."""
SEEN = [0]


def decide(obs):
    SEEN[0] += 1
    return SEEN[0] % 3 == 0
'''

SPEC: dict[str, Any] = {
    "name": "tiny",
    "scenarios": ["scenarios/calm.yaml", "scenarios/busy.yaml"],
    "seeds": [1, 2],
    "grids": [
        {"name": "policies", "policies": ["edge-only", "min-latency", "random:0.3", "bandit:0.2", "my_policy.py:decide"]},
        {"name": "queue-threshold:k", "policies": ["queue-threshold:1", "queue-threshold:3"],
         "overrides": {"edge.workers": [1, 2]}},
    ],
    "report": {"references": ["min-latency"]},
}


def write_sweep(folder: Path, spec: dict[str, Any] | None = None) -> Path:
    """The tiny sweep under `folder`; returns the spec's path."""
    (folder / "scenarios").mkdir(parents=True, exist_ok=True)
    (folder / "scenarios" / "calm.yaml").write_text(yaml.safe_dump(SCENARIO))
    busy = copy.deepcopy(SCENARIO)
    busy["name"] = "busy"
    busy["cameras"][0]["count"] = 6
    (folder / "scenarios" / "busy.yaml").write_text(yaml.safe_dump(busy))
    (folder / "my_policy.py").write_text(POLICY_FILE)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(SPEC if spec is None else spec, sort_keys=False))
    return path


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    return write_sweep(tmp_path / "sweep")


@pytest.fixture
def spec_with(tmp_path: Path) -> Callable[..., Path]:
    """spec_with(**top_level_changes) -> path of the tiny sweep with those keys replaced
    (a value of None removes the key)."""
    def build(**changes: Any) -> Path:
        spec = copy.deepcopy(SPEC)
        for key, value in changes.items():
            if value is None:
                spec.pop(key, None)
            else:
                spec[key] = value
        return write_sweep(tmp_path / "sweep", spec)
    return build


@pytest.fixture
def tiny_spec() -> dict[str, Any]:
    """The spec mapping of the tiny sweep (a copy to change)."""
    return copy.deepcopy(SPEC)


@pytest.fixture(scope="session")
def make_sweep() -> Callable[[Path, dict[str, Any] | None], Path]:
    return write_sweep
