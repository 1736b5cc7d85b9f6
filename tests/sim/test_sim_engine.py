"""The simulation run: policy wiring, determinism, drops, autoscaling, accounting."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edgeoffload.policy import Observation, load_policy
from edgeoffload.records import FrameRecord, read_records
from edgeoffload.sim import run_scenario

from conftest import SCENARIOS


class Recorder:
    """A policy that offloads every third frame and keeps what it was shown."""

    name = "recorder"

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.records: list[FrameRecord] = []

    def estimate_to_cloud(self, obs: Observation) -> bool:
        self.observations.append(obs)
        return len(self.observations) % 3 == 0

    def feedback(self, record: FrameRecord) -> None:
        self.records.append(record)


def test_same_seed_same_summary_other_seed_differs(scenario) -> None:
    first = run_scenario(scenario(), load_policy("min-latency")).summary.to_dict()
    again = run_scenario(scenario(), load_policy("min-latency")).summary.to_dict()
    other = run_scenario(scenario(seed=4), load_policy("min-latency")).summary.to_dict()
    assert first == again
    assert first != other


@pytest.mark.parametrize("spec, cloud_share", [("cloud-only", 1.0), ("edge-only", 0.0), ("alternate", 0.5)])
def test_policy_decides_where_frames_go(scenario, spec: str, cloud_share: float) -> None:
    summary = run_scenario(scenario(), load_policy(spec)).summary
    assert summary.frames == 800
    assert summary.cloud_share == cloud_share
    assert summary.cloud_frames == round(800 * cloud_share)
    assert summary.egress_bytes == summary.cloud_frames * 20_000


def test_policy_sees_observations_and_gets_one_record_per_frame(scenario) -> None:
    policy = Recorder()
    result = run_scenario(scenario(), policy)
    assert len(policy.observations) == len(policy.records) == result.frames_simulated == 800
    decided = {(o.camera, o.frame_id) for o in policy.observations}
    assert {(r.camera, r.frame_id) for r in policy.records} == decided
    assert all(r.policy == "recorder" for r in policy.records)
    times = [o.now for o in policy.observations]
    assert times == sorted(times)
    first = policy.observations[0]
    assert (first.edge.in_flight, first.cloud.in_flight) == (0, 0)
    assert (first.edge.replicas, first.cloud.replicas) == (1, 2)
    assert first.edge.healthy and first.cloud.healthy and first.frame_bytes == 20_000
    # every third frame went to the cloud, so the cloud is sometimes busy when a frame arrives,
    # and once it has answered the preprocessor knows its latency components
    assert max(o.cloud.in_flight for o in policy.observations) >= 1
    late = policy.observations[-1]
    # the floor of recent network times: 30 ms propagation + 3.2 ms to serialise 20 kB at 50 Mbit/s
    assert late.cloud.rtt_s == pytest.approx(0.0332, abs=1e-4)
    assert late.edge.service_s == pytest.approx(0.040, rel=0.6)      # EWMA around the 40 ms mean


def test_policy_starts_from_the_observers_initial_estimates(scenario) -> None:
    default = Recorder()
    run_scenario(scenario(), default)
    first = default.observations[0]
    assert (first.edge.service_s, first.cloud.service_s, first.cloud.rtt_s) == (0.08, 0.08, 0.0)
    assert first.cloud.uplink_bps == float("inf")
    warm = Recorder()
    run_scenario(scenario(observer={"edge_service_ms": 35, "cloud_service_ms": 60, "cloud_rtt_ms": 42,
                                    "cloud_uplink_mbps": 20}), warm)
    first = warm.observations[0]
    assert (first.edge.service_s, first.cloud.service_s, first.cloud.rtt_s) == pytest.approx((0.035, 0.06, 0.042))
    assert first.cloud.uplink_bps == pytest.approx(20e6)


def test_records_match_the_summary(scenario, tmp_path: Path) -> None:
    out = tmp_path / "records.csv"
    result = run_scenario(scenario(warmup_s=5), load_policy("alternate"), out=out)
    records = list(read_records(out))
    assert len(records) == result.frames_simulated
    counted = [r for r in records if r.captured_at >= 5]
    summary = result.summary
    assert len(counted) == summary.frames
    assert Counter(r.site for r in counted) == {"edge": summary.edge_frames, "cloud": summary.cloud_frames}
    assert sum(r.bytes_sent for r in counted) == summary.egress_bytes
    edge_ok = [r for r in counted if r.site == "edge" and r.status == "ok"]
    assert sum(r.t_queue_ms for r in edge_ok) / len(edge_ok) == pytest.approx(summary.sites["edge"].mean_queue_ms, abs=1e-3)
    for record in records:
        assert record.t_total_ms == pytest.approx(record.t_queue_ms + record.t_network_ms + record.t_inference_ms)
        assert record.bytes_sent == (20_000 if record.site == "cloud" else 0)


def test_full_queue_drops_frames(scenario) -> None:
    policy = Recorder()
    built = scenario(edge={"workers": 1, "queue_capacity": 2, "service_ms": 200})
    summary = run_scenario(built, load_policy("edge-only")).summary
    assert summary.dropped > 0 and summary.ok > 0
    assert summary.dropped + summary.ok == summary.frames
    assert summary.drop_rate == pytest.approx(summary.dropped / summary.frames)
    run_scenario(built, policy)
    drops = [r for r in policy.records if r.status == "dropped"]
    assert drops and all(r.reason == "queue_full" and r.site == "edge" for r in drops)
    # three 503s in a row mark the edge unhealthy until the next ready probe, as in the testbed
    assert any(not o.edge.healthy for o in policy.observations)


def test_hpa_scales_the_cloud_pool_under_load(scenario) -> None:
    hpa = {"minReplicas": 1, "maxReplicas": 6, "metrics": [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}
    built = scenario(duration_s=240, cameras=[{"name": "cam", "count": 8, "fps": 10}],
                     cloud={"replicas": 1, "workers": 1, "service_ms": 25, "cold_start_s": 5, "hpa": hpa},
                     wan={"bandwidth_mbps": 1000})
    summary = run_scenario(built, load_policy("cloud-only")).summary
    # 80 fps x 25 ms = 2 busy workers: at 50 % utilisation the HPA wants 4
    timeline = summary.timeline
    assert timeline[0].cloud_replicas == 1
    assert summary.sites["cloud"].peak_replicas >= 4
    assert timeline[-1].cloud_ready >= 4
    assert summary.sites["cloud"].pod_seconds > 240 * 3
    first_up = next(p for p in timeline if p.cloud_replicas > 1)
    assert first_up.t >= 15  # first sync at 15 s


def test_hpa_scales_back_down_after_the_load_stops_as_the_window_allows(scenario) -> None:
    def first_time_at_one(window_s: int) -> tuple[float, list]:
        hpa = {"minReplicas": 1, "maxReplicas": 6, "behavior": {"scaleDown": {"stabilizationWindowSeconds": window_s}},
               "metrics": [{"type": "Pods", "pods": {"metric": {"name": "in_flight"},
                                                     "target": {"type": "AverageValue", "averageValue": "500m"}}}]}
        built = scenario(duration_s=300, cameras=[{"name": "cam", "count": 8, "fps": 10, "stop_s": 100}],
                         cloud={"replicas": 1, "workers": 1, "service_ms": 25, "cold_start_s": 5, "hpa": hpa},
                         wan={"bandwidth_mbps": 1000})
        result = run_scenario(built, load_policy("cloud-only"))
        assert result.summary.frames == 8 * 10 * 100
        syncs = [(sync.t, sync.desired) for sync in result.hpa_syncs]
        assert [t for t, _ in syncs[:3]] == [0.0, 15.0, 30.0]   # 1.37: the first reconcile at once
        assert max(r for t, r in syncs if t <= 100) >= 4
        after = [r for t, r in syncs if t > 100]
        assert after == sorted(after, reverse=True) and after[-1] == 1
        return next(t for t, r in syncs if t > 100 and r == 1), syncs
    immediate, syncs = first_time_at_one(0)
    held, _ = first_time_at_one(60)
    # The in-flight metric is the average of the last minute's scrapes (prometheus-adapter's
    # avg_over_time[1m]): at 105 s one of four samples is idle and the HPA cuts 6 -> 2, at 120 s
    # (two idle of four) -> 1.
    assert [(t, r) for t, r in syncs if 90 <= t <= 120] == [(90.0, 6), (105.0, 2), (120.0, 1)]
    assert immediate == 120
    assert held >= immediate + 30    # the 60 s window keeps the recent higher recommendations


@pytest.mark.parametrize("release, first_sync, cut_at", [("1.37", 0.0, 60.0), ("1.36", 15.0, 75.0)])
def test_hpa_keeps_a_pool_that_starts_above_its_need_for_the_scale_down_window(scenario, release: str,
                                                                                first_sync: float,
                                                                                cut_at: float) -> None:
    """The HPA's first reconcile records the starting 4 replicas (horizontal.go
    recordInitialRecommendation), so the idle pool is cut only once that record is 60 s old. 1.37
    reconciles a new HPA at once, 1.32-1.36 one sync period later (enqueueHPA), so the cut comes
    at the sync at 60 s or at 75 s, never at the first one."""
    hpa = {"minReplicas": 1, "maxReplicas": 6, "kubernetes_version": release,
           "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
           "metrics": [{"type": "Pods", "pods": {"metric": {"name": "in_flight"},
                                                 "target": {"type": "AverageValue", "averageValue": "500m"}}}]}
    built = scenario(duration_s=100, timeline_interval_s=5, cloud={"replicas": 4, "hpa": hpa})
    syncs = run_scenario(built, load_policy("edge-only")).hpa_syncs
    assert syncs[0].t == first_sync and syncs[0].desired == 4
    assert all(sync.desired == 4 for sync in syncs if sync.t < cut_at)
    assert next(sync for sync in syncs if sync.desired == 1).t == cut_at


def test_a_simulation_can_take_a_testbeds_sync_phase(scenario) -> None:
    hpa = {"minReplicas": 1, "maxReplicas": 2, "first_sync_s": 4.5, "sync_period_s": 5,
           "metrics": [{"type": "Pods", "pods": {"metric": {"name": "in_flight"},
                                                 "target": {"type": "AverageValue", "averageValue": "1"}}}]}
    syncs = run_scenario(scenario(duration_s=20, cloud={"hpa": hpa}), load_policy("edge-only")).hpa_syncs
    assert [sync.t for sync in syncs] == [4.5, 9.5, 14.5, 19.5]


def test_hpa_from_a_manifest_file(tmp_path: Path, raw_small) -> None:
    import yaml

    from edgeoffload.sim import load_scenario
    manifest = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "cloud-hpa"},
                "spec": {"scaleTargetRef": {"name": "cloud-inference"}, "minReplicas": 3, "maxReplicas": 5}}
    (tmp_path / "autoscale.yml").write_text(yaml.safe_dump_all([manifest]))
    raw_small["cloud"]["hpa"] = {"manifest": "autoscale.yml", "name": "cloud-inference", "sync_period_s": 5}
    built = load_scenario(raw_small, base_dir=tmp_path)
    assert built.cloud.hpa is not None and built.cloud.hpa.sync_period_s == 5
    summary = run_scenario(built, load_policy("edge-only")).summary
    assert summary.timeline[-1].cloud_replicas == 3   # raised to minReplicas at the first sync


def test_cost_and_energy_accounting(scenario) -> None:
    # one edge pod, one worker, 10 fps x 50 ms constant = busy half the time
    built = scenario(duration_s=100, cameras=[{"name": "solo", "fps": 10, "frame_bytes": 1_000_000}],
                     wan={"bandwidth_mbps": 1000, "egress_price_per_gb": 0.1},
                     edge={"workers": 1, "service_ms": 50, "power_w": {"idle": 10, "busy": 20}},
                     cloud={"replicas": 1, "price_per_pod_hour": 3.6})
    summary = run_scenario(built, load_policy("edge-only")).summary
    edge = summary.sites["edge"]
    assert edge.pod_seconds == pytest.approx(100)
    assert edge.busy_seconds == pytest.approx(50, abs=0.06)
    assert edge.energy_j == pytest.approx(10 * 100 + 10 * 50, abs=1)
    assert summary.pod_cost == pytest.approx(0.1)          # the idle cloud pod: 100 s at 3.6 per hour
    cloud = run_scenario(built, load_policy("cloud-only")).summary
    assert cloud.egress_bytes == 1000 * 1_000_000
    assert cloud.egress_cost == pytest.approx(0.1)


def test_deadlines_are_judged_per_frame(scenario) -> None:
    built = scenario(cameras=[{"name": "cam", "count": 4, "fps": 10, "deadline_ms": 45}])
    policy = Recorder()
    summary = run_scenario(built, policy).summary
    assert summary.deadline_frames == 800
    missed = sum(1 for r in policy.records if r.deadline_met is False)
    assert missed == round(summary.deadline_miss_rate * 800)
    assert all(r.deadline_met == (r.status == "ok" and r.t_total_ms <= 45) for r in policy.records)
    assert all(o.deadline_s == pytest.approx(0.045) for o in policy.observations)


def test_progress_is_reported_up_to_the_end(scenario) -> None:
    seen: list[tuple[float, float]] = []
    run_scenario(scenario(), load_policy("edge-only"), progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0.0, 20.0) and seen[-1] == (20.0, 20.0)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_example_scenario_runs() -> None:
    from edgeoffload.sim import load_scenario
    built = load_scenario(SCENARIOS / "baseline.yaml")
    assert built.cloud.hpa is not None and built.cloud.hpa.name == "cloud-inference"   # from autoscale.yml
    summary = run_scenario(SCENARIOS / "baseline.yaml", "min-latency").summary        # paths and specs work too
    assert summary.frames == 10 * 10 * (300 - 30)
    assert summary.ok > 0.95 * summary.frames
    assert 0 < summary.cloud_share < 1


@pytest.mark.parametrize("spec", ["random:0.5", "bandit:1"])   # bandit:1 flips a coin for every frame
def test_the_scenario_seed_reaches_the_policy(scenario, tmp_path: Path, spec: str) -> None:
    """One periodic camera: the frames' order does not depend on the seed, so the edge/cloud
    sequence is the policy's own coin flips, which follow the scenario seed (Scenario.policy_seed)."""
    def sites(seed: int) -> list[str]:
        out = tmp_path / f"{seed}.csv"
        run_scenario(scenario(seed=seed, cameras=[{"name": "cam", "fps": 10}]), spec, out=out)
        return [r.site for r in sorted(read_records(out), key=lambda r: r.frame_id)]
    first = sites(1)
    assert len(first) == 200 and set(first) == {"edge", "cloud"}
    assert sites(1) == first          # the same seed repeats every flip
    assert sites(2) != first          # another seed flips other coins
