"""Scenario validation: every error names the field that is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgeoffload.sim import ScenarioError, load_scenario
from edgeoffload.sim.scenario import SharedCpuSpec

from conftest import SCENARIOS, merged


@pytest.mark.parametrize("changes, message", [
    ({"cameras": [{"fps": 5}, {"name": "b", "fps": 5}, {"name": "c", "fps": 0}]}, r"^cameras\[2\]\.fps: must be > 0"),
    ({"cameras": [{"name": "a", "fps": 10, "jitter_ms": 60}]}, r"^cameras\[0\]\.jitter_ms: must be < half"),
    ({"cameras": [{"name": "a", "arrival": "bursty"}]}, r"^cameras\[0\]\.arrival: must be one of periodic, poisson"),
    ({"cameras": [{"name": "a", "count": 2}, {"name": "a-1"}]}, r"^cameras: camera name 'a-1' is used twice"),
    ({"cameras": []}, r"^cameras: must be a non-empty list"),
    ({"duration_s": -1}, r"^duration_s: must be > 0"),
    ({"warmup_s": 50}, r"^warmup_s: must be < duration_s"),
    ({"colour": "red"}, r"^colour: unknown key"),
    ({"edge": {"workers": 0}}, r"^edge\.workers: must be >= 1"),
    ({"edge": {"queue": "lifo"}}, r"^edge\.queue: must be one of per-pod, shared"),
    ({"edge": {"service_ms": {"dist": "gamma"}}}, r"^edge\.service_ms\.dist: must be one of"),
    ({"edge": {"service_ms": {"dist": "exponential"}}}, r"^edge\.service_ms\.mean: is required"),
    ({"cloud": {"service_ms": {"dist": "lognormal", "mean": 10, "cv": -1}}}, r"^cloud\.service_ms\.cv: must be >= 0"),
    ({"cloud": {"service_ms": {"dist": "empirical", "samples": [1, "x"]}}}, r"^cloud\.service_ms\.samples\[1\]"),
    ({"cloud": {"power_w": {"idle": 50, "busy": 10}}}, r"^cloud\.power_w\.busy: must be >= 50"),
    ({"cloud": {"hpa": {"maxReplicas": 3, "metrics": [{"type": "Resource", "resource": {
        "name": "memory", "target": {"type": "AverageValue", "averageValue": "1Gi"}}}]}}},
     r"^cloud\.hpa\.metrics\[0\]: resource 'memory' is not modelled"),
    ({"cloud": {"hpa": {"minReplicas": 2}}}, r"^cloud\.hpa: spec\.maxReplicas is required"),
    ({"cloud": {"hpa": {"maxReplicas": 3, "kubernetes_version": "1.20"}}}, r"^cloud\.hpa\.kubernetes_version: .*1\.20"),
    ({"cloud": {"hpa": {"maxReplicas": 3, "tolerance": -0.1}}}, r"^cloud\.hpa\.tolerance: must be >= 0"),
    ({"cloud": {"hpa": {"maxReplicas": 3, "kubernetes_version": "1.32", "behavior": {"scaleUp": {"tolerance": 0.2}}}}},
     r"^cloud\.hpa: spec\.behavior\.scaleUp\.tolerance: not in Kubernetes 1\.32"),
    ({"wan": {"bandwidth_mbps": 0}}, r"^wan\.bandwidth_mbps: must be > 0"),
    ({"wan": {"trace": "missing.csv"}}, r"^wan\.trace: cannot read"),
    ({"observer": {"ewma_alpha": 2}}, r"^observer\.ewma_alpha: must be <= 1"),
    ({"observer": {"cloud_rtt_ms": -1}}, r"^observer\.cloud_rtt_ms: must be >= 0"),
    ({"edge": {"content_factor": [1, 2]}}, r"^edge\.content_factor: must be a mapping"),
    ({"edge": {"content_factor": {"cat": 0}}}, r"^edge\.content_factor\.cat: must be a number > 0"),
    ({"edge": {"content_factor": {"file": "missing.json", "key": "content_factor"}}},
     r"^edge\.content_factor\.file: cannot read profile"),
    ({"observer": {"cloud_uplink_mbps": 0}}, r"^observer\.cloud_uplink_mbps: must be > 0"),
    ({"shared_cpu": 1.4}, r"^shared_cpu: must be a mapping"),
    ({"shared_cpu": {"pools": ["edge"]}}, r"^shared_cpu\.cores: is required"),
    ({"shared_cpu": {"cores": 0}}, r"^shared_cpu\.cores: must be > 0"),
    ({"shared_cpu": {"cores": 1, "nodes": 2}}, r"^shared_cpu\.nodes: unknown key"),
    ({"shared_cpu": {"cores": 1, "pools": []}}, r"^shared_cpu\.pools: must be a non-empty list"),
    ({"shared_cpu": {"cores": 1, "pools": "edge"}}, r"^shared_cpu\.pools: must be a non-empty list"),
    ({"shared_cpu": {"cores": 1, "pools": ["edge", "fog"]}}, r"^shared_cpu\.pools\[1\]: must be edge or cloud, got 'fog'"),
    ({"shared_cpu": {"cores": 1, "pools": ["cloud", "cloud"]}}, r"^shared_cpu\.pools\[1\]: 'cloud' is listed twice"),
])
def test_errors_name_the_field(raw_small, changes, message) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(merged(raw_small, changes))


def test_shared_cpu_is_optional_and_defaults_to_both_pools(raw_small) -> None:
    assert load_scenario(raw_small).shared_cpu is None
    both = load_scenario(merged(raw_small, {"shared_cpu": {"cores": 1.4}})).shared_cpu
    assert both == SharedCpuSpec(cores=1.4, pools=("edge", "cloud"))
    cloud = load_scenario(merged(raw_small, {"shared_cpu": {"cores": 2, "pools": ["cloud"]}})).shared_cpu
    assert cloud == SharedCpuSpec(cores=2.0, pools=("cloud",))


def test_content_factor_inline_or_from_a_profile(raw_small, tmp_path: Path) -> None:
    assert load_scenario(raw_small).edge.content_factor == {}
    inline = load_scenario(merged(raw_small, {"edge": {"content_factor": {"cat": 1.5, "7": 0.5}}}))
    assert inline.edge.content_factor == {"cat": 1.5, "7": 0.5}
    (tmp_path / "profile.json").write_text('{"content_factor": {"frame-1": 1.8, "frame-2": 0.6}}')
    raw = merged(raw_small, {"cloud": {"content_factor": {"file": "profile.json", "key": "content_factor"}}})
    assert load_scenario(raw, base_dir=tmp_path).cloud.content_factor == {"frame-1": 1.8, "frame-2": 0.6}
    with pytest.raises(ScenarioError, match=r"^cloud\.content_factor\.key: 'edge' is not a mapping"):
        load_scenario(merged(raw_small, {"cloud": {"content_factor": {"file": "profile.json", "key": "edge"}}}),
                      base_dir=tmp_path)


def test_missing_pool_and_bad_trace_rows(raw_small, tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"^cloud: is required"):
        load_scenario(merged(raw_small, {"cloud": None}))
    (tmp_path / "t.csv").write_text("time_s,camera,bytes\n2,a,100\n1,a,100\n")
    raw = merged(raw_small, {"cameras": [{"name": "a", "trace": "t.csv"}]})
    with pytest.raises(ScenarioError, match=r"^cameras\[0\]\.trace: t\.csv line 3: times must be sorted"):
        load_scenario(raw, base_dir=tmp_path)
    with pytest.raises(ScenarioError, match=r"^cameras\[0\]\.fps: cannot be combined with trace"):
        load_scenario(merged(raw_small, {"cameras": [{"name": "a", "trace": "t.csv", "fps": 3}]}), base_dir=tmp_path)


def test_profile_samples_feed_distributions(raw_small, tmp_path: Path) -> None:
    (tmp_path / "profile.json").write_text(
        '{"edge": {"service_ms": [30, 32, 34]}, "wan": {"rtt_ms": [50, 70, 60], "bandwidth_bps": 2e7}}')
    raw = merged(raw_small, {"edge": {"service_ms": {"dist": "profile", "file": "profile.json", "key": "edge.service_ms"}},
                             "wan": {"profile": "profile.json", "bandwidth_mbps": None, "rtt_ms": None}})
    built = load_scenario(raw, base_dir=tmp_path)
    assert built.edge.service_ms.samples == (30.0, 32.0, 34.0) and built.edge.service_ms.expected == 32.0
    assert (built.wan.rtt_ms, built.wan.bandwidth_bps) == (60.0, 2e7)
    bad = merged(raw, {"edge": {"service_ms": {"dist": "profile", "file": "profile.json", "key": "cloud.service_ms"}}})
    with pytest.raises(ScenarioError, match=r"^edge\.service_ms\.key: 'cloud\.service_ms' not found"):
        load_scenario(bad, base_dir=tmp_path)


def test_example_scenarios_load() -> None:
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert files
    for path in files:
        assert load_scenario(path).duration_s > 0


def test_hpa_controller_settings_next_to_a_manifest_or_inline(raw_small) -> None:
    """`kubernetes_version` and the controller's flags sit next to the HPA; omitted, upstream's defaults."""
    raw_small["cloud"]["hpa"] = {"manifest": "../../autoscale.yml", "name": "cloud-inference", "kubernetes_version": "1.34",
                                 "sync_period_s": 30, "tolerance": 0.05, "downscale_stabilization_s": 120,
                                 "cpu_initialization_period_s": 60, "initial_readiness_delay_s": 10}
    hpa = load_scenario(raw_small, base_dir=SCENARIOS).cloud.hpa
    assert hpa is not None and hpa.behavior is not None and hpa.name == "cloud-inference"
    assert (hpa.kubernetes_version, hpa.sync_period_s, hpa.tolerance, hpa.downscale_stabilization_s,
            hpa.cpu_initialization_period_s, hpa.initial_readiness_delay_s) == ("1.34", 30, 0.05, 120, 60, 10)
    raw_small["cloud"]["hpa"] = {"maxReplicas": 4}
    inline = load_scenario(raw_small).cloud.hpa
    assert inline is not None and inline.behavior is None       # no behavior: the controller's legacy path
    assert (inline.kubernetes_version, inline.sync_period_s, inline.tolerance, inline.downscale_stabilization_s) == \
        ("1.37", 15.0, 0.1, 300.0)
