"""Streaming statistics: histogram quantiles and the summary's shape."""
from __future__ import annotations

import json
import random

import pytest

from edgeoffload.policy import Observation, SiteState, load_policy
from edgeoffload.records import FrameRecord
from edgeoffload.sim import run_scenario
from edgeoffload.sim.fastinit import direct_constructor
from edgeoffload.sim.stats import LatencyHistogram


def test_histogram_quantiles_within_half_a_percent() -> None:
    rng = random.Random(5)
    values = sorted(rng.lognormvariate(3.0, 1.0) for _ in range(100_000))
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        exact = values[int(q * len(values)) - 1]
        assert histogram.quantile(q) == pytest.approx(exact, rel=0.006)
    assert LatencyHistogram().quantile(0.5) is None


def test_histogram_merge_and_tiny_values() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for _ in range(10):
        a.add(0.0)
    for _ in range(30):
        b.add(100.0)
    merged = a.merge(b)
    assert merged.count == 40
    assert merged.quantile(0.2) == 0.0
    assert merged.quantile(0.9) == pytest.approx(100.0, rel=0.006)


def test_summary_is_json_and_a_table(scenario) -> None:
    summary = run_scenario(scenario(), load_policy("alternate")).summary
    raw = json.loads(json.dumps(summary.to_dict()))
    assert raw["frames"] == 800 and raw["sites"]["cloud"]["frames"] == 400
    assert raw["timeline"][0]["t"] == 0.0 and len(raw["timeline"]) == 2   # t = 0 and 15 s of 20 s
    table = summary.table()
    assert "alternate" in table and "cloud 50.00 %" in table and "p50 / p95 / p99" in table


@pytest.mark.parametrize("cls, args", [
    (SiteState, (3, 2, 0.05, 0.02, 1e7, False)),
    (Observation, (1.5, "cam", 7, 1234, 0.2, SiteState(), SiteState(1, 1, 0.1, 0.0, 5.0, True))),
    (FrameRecord, ("cam", 7, 1.5, "cloud", "ok", "", "p", "m", (), 10, 1.0, 2.0, 3.0, 6.0, True, "cloud-3")),
    (FrameRecord, ("cam", 7, 1.5, "cloud", "ok", "", "p", "m", (), 10, 1.0, 2.0, 3.0, 6.0, True)),
    (FrameRecord, ("cam", 7, 1.5, "none", "dropped")),   # defaults, a default_factory among them
])
def test_direct_constructor_builds_equal_objects(cls, args) -> None:
    built = direct_constructor(cls)(*args)
    expected = cls(*args)
    assert type(built) is cls
    assert built == expected and hash(built) == hash(expected) and repr(built) == repr(expected)


def test_direct_constructor_keeps_validating_classes() -> None:
    from edgeoffload.hpa import ScalingPolicy   # has __post_init__ validation
    assert direct_constructor(ScalingPolicy) is ScalingPolicy
