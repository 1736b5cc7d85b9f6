"""The HPA algorithm against the worked examples of the Kubernetes documentation."""
from __future__ import annotations

import pytest

from edgeoffload.hpa import (Behavior, HPAController, HPAError, HPASpec, MetricTarget, PodSample, ScalingPolicy,
                             ScalingRules, find_hpa, parse_quantity, replicas_for_metric)

PER_POD = MetricTarget("Pods", "inflight", "AverageValue", 0.1)  # target 100m per pod
CPU_50 = MetricTarget("Resource", "cpu", "Utilization", 50)
NO_LIMITS = Behavior(ScalingRules(0, (ScalingPolicy("Percent", 1000, 15),)),
                     ScalingRules(0, (ScalingPolicy("Percent", 100, 15),)))


def plain_pods(*values: float | None, pending: int = 0) -> list[PodSample]:
    pods = [PodSample(f"p{i}", values={} if v is None else {"inflight": v}) for i, v in enumerate(values)]
    return pods + [PodSample(f"pending{i}", ready=False, phase="Pending") for i in range(pending)]


def cpu_pods(*usage_cores: float | None, unready: int = 0) -> list[PodSample]:
    pods = [PodSample(f"p{i}", values={} if u is None else {"cpu": u}, requests={"cpu": 1.0})
            for i, u in enumerate(usage_cores)]
    return pods + [PodSample(f"u{i}", ready=False, values={"cpu": 0.9}, requests={"cpu": 1.0})
                   for i in range(unready)]


def spec(metrics=(PER_POD,), behavior=NO_LIMITS, min_replicas=1, max_replicas=100) -> HPASpec:
    return HPASpec(min_replicas=min_replicas, max_replicas=max_replicas, metrics=tuple(metrics), behavior=behavior)


# ------------------------------------------------------------- the basic ratio
def test_200m_over_100m_target_doubles() -> None:
    assert replicas_for_metric(spec(), PER_POD, 3, plain_pods(0.2, 0.2, 0.2)) == 6


def test_50m_over_100m_target_halves() -> None:
    assert replicas_for_metric(spec(), PER_POD, 4, plain_pods(0.05, 0.05, 0.05, 0.05)) == 2


def test_ratio_within_tolerance_keeps_replicas() -> None:
    assert replicas_for_metric(spec(), PER_POD, 4, plain_pods(0.105, 0.105, 0.105, 0.105)) == 4
    assert replicas_for_metric(spec(), PER_POD, 4, plain_pods(0.091, 0.091, 0.091, 0.091)) == 4
    assert replicas_for_metric(spec(), PER_POD, 4, plain_pods(0.15, 0.15, 0.15, 0.15)) == 6


def test_utilization_is_percent_of_request() -> None:
    # 4 pods using 0.9 of a 1-core request = 90 % against a 50 % target -> ratio 1.8 -> 7.2 -> 8
    assert replicas_for_metric(spec([CPU_50]), CPU_50, 4, cpu_pods(0.9, 0.9, 0.9, 0.9)) == 8


def test_several_metrics_take_the_largest_proposal() -> None:
    pods = [PodSample(f"p{i}", values={"cpu": 0.25, "inflight": 0.3}, requests={"cpu": 1.0}) for i in range(2)]
    controller = HPAController(spec([CPU_50, PER_POD]))
    assert controller.step(0.0, 2, pods) == 6  # cpu wants 1, in-flight wants 6


# ------------------------------------------------------------- missing metrics / not-ready pods
def test_missing_pods_count_as_zero_when_scaling_up_and_can_cancel_it() -> None:
    # one pod at 150m, two without samples: as 0 the average is 50m -> direction reverses -> no change
    assert replicas_for_metric(spec(), PER_POD, 3, plain_pods(0.15, None, None)) == 3
    # the same pod at 400m: average 133m -> 1.33 * 3 -> 4
    assert replicas_for_metric(spec(), PER_POD, 3, plain_pods(0.4, None, None)) == 4


def test_missing_pods_count_as_the_target_when_scaling_down() -> None:
    # two pods at 20m, two missing as 100m: average 60m -> ceil(0.6 * 4) = 3 (not ceil(0.2 * 2) = 1)
    assert replicas_for_metric(spec(), PER_POD, 4, plain_pods(0.02, 0.02, None, None)) == 3


def test_missing_pods_count_as_full_request_for_utilization_scale_down() -> None:
    # two pods at 10 %, two missing as 100 % of request: 2200/4000 = 55 % vs 50 % -> within tolerance
    assert replicas_for_metric(spec([CPU_50]), CPU_50, 4, cpu_pods(0.1, 0.1, None, None)) == 4


def test_not_ready_pods_count_as_zero_when_scaling_up() -> None:
    # one ready pod at 100 % of request (target 50 %), three starting: 1000/4000 = 25 % -> reverses -> no change
    assert replicas_for_metric(spec([CPU_50]), CPU_50, 4, cpu_pods(1.0, unready=3)) == 4
    # pending pods are unready for custom metrics too
    assert replicas_for_metric(spec(), PER_POD, 4, plain_pods(0.2, pending=3)) == 4


def test_not_ready_pods_are_ignored_when_scaling_down() -> None:
    assert replicas_for_metric(spec([CPU_50]), CPU_50, 4, cpu_pods(0.2, 0.2, unready=2)) == 1


def test_no_samples_at_all_means_no_change() -> None:
    controller = HPAController(spec())
    assert controller.step(0.0, 3, plain_pods(None, None, None)) == 3
    assert controller.last is not None and "unavailable" in controller.last.reason


# ------------------------------------------------------------- min / max
def test_min_and_max_clamp_the_result() -> None:
    controller = HPAController(spec(max_replicas=5))
    assert controller.step(0.0, 2, plain_pods(1.0, 1.0)) == 5
    assert HPAController(spec(min_replicas=3)).step(0.0, 4, plain_pods(0.01, 0.01, 0.01, 0.01)) == 3
    assert HPAController(spec(max_replicas=5)).step(0.0, 9, plain_pods(0.1)) == 5   # current above max
    assert HPAController(spec(min_replicas=2)).step(0.0, 1, plain_pods(0.1)) == 2   # current below min
    assert HPAController(spec()).step(0.0, 0, []) == 0                              # scaled to zero by hand


# ------------------------------------------------------------- behaviour
def test_default_scale_up_allows_4_pods_or_double_per_15s() -> None:
    controller = HPAController(spec(behavior=Behavior(), max_replicas=100))
    assert controller.step(0.0, 2, plain_pods(*[1.0] * 2)) == 6            # max(2+4, 2*2)
    assert HPAController(spec(behavior=Behavior())).step(0.0, 10, plain_pods(*[1.0] * 10)) == 20  # max(14, 20)


def test_scale_up_4_pods_per_60s() -> None:
    behavior = Behavior(scale_up=ScalingRules(0, (ScalingPolicy("Pods", 4, 60),)))
    controller = HPAController(spec(behavior=behavior))
    assert controller.step(0.0, 2, plain_pods(*[1.0] * 2)) == 6
    assert controller.step(15.0, 6, plain_pods(*[1.0] * 6)) == 6    # 4 already added in this minute
    assert controller.step(61.0, 6, plain_pods(*[1.0] * 6)) == 10


def test_scale_down_at_most_10_percent_per_minute() -> None:
    behavior = Behavior(scale_down=ScalingRules(0, (ScalingPolicy("Percent", 10, 60),)))
    controller = HPAController(spec(behavior=behavior))
    low = 0.0125  # wants 10 pods out of 80
    assert controller.step(0.0, 80, plain_pods(*[low] * 80)) == 72
    assert controller.step(15.0, 72, plain_pods(*[low] * 72)) == 72   # the minute's 10 % is used up
    assert controller.step(61.0, 72, plain_pods(*[low] * 72)) == 64   # 7.2 rounds to a change of 8


def test_two_scale_down_policies_pick_the_biggest_change() -> None:
    behavior = Behavior(scale_down=ScalingRules(0, (ScalingPolicy("Pods", 4, 60), ScalingPolicy("Percent", 10, 60))))
    assert HPAController(spec(behavior=behavior)).step(0.0, 80, plain_pods(*[0.01] * 80)) == 72  # 10 % > 4 pods
    assert HPAController(spec(behavior=behavior)).step(0.0, 30, plain_pods(*[0.01] * 30)) == 26  # 4 pods > 10 %
    minimal = Behavior(scale_down=ScalingRules(0, behavior.scale_down.policies, "Min"))
    assert HPAController(spec(behavior=minimal)).step(0.0, 80, plain_pods(*[0.01] * 80)) == 76


def test_select_policy_min_for_scale_up() -> None:
    behavior = Behavior(scale_up=ScalingRules(0, (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)), "Min"))
    assert HPAController(spec(behavior=behavior)).step(0.0, 10, plain_pods(*[1.0] * 10)) == 14


def test_select_policy_disabled_blocks_that_direction() -> None:
    behavior = Behavior(scale_down=ScalingRules(0, (ScalingPolicy("Percent", 100, 15),), "Disabled"))
    controller = HPAController(spec(behavior=behavior))
    assert controller.step(0.0, 8, plain_pods(*[0.01] * 8)) == 8
    assert controller.step(0.0, 8, plain_pods(*[1.0] * 8)) > 8      # scale-up still works


def test_scale_down_stabilization_keeps_the_highest_recommendation_for_300s() -> None:
    controller = HPAController(spec(behavior=Behavior()))
    replicas = controller.step(0.0, 8, plain_pods(*[0.1] * 8))      # recommendation 8
    assert replicas == 8
    history = []
    for t in range(15, 316, 15):
        replicas = controller.step(float(t), replicas, plain_pods(*[0.025] * replicas))  # wants 2
        history.append((t, replicas))
    assert all(r == 8 for t, r in history if t < 300)
    assert dict(history)[300] == 2


def test_scale_up_stabilization_takes_the_lowest_recommendation() -> None:
    behavior = Behavior(scale_up=ScalingRules(60, (ScalingPolicy("Percent", 1000, 15),)))
    controller = HPAController(spec(behavior=behavior))
    assert controller.step(0.0, 4, plain_pods(*[0.1] * 4)) == 4          # recommends 4
    assert controller.step(15.0, 4, plain_pods(*[0.3] * 4)) == 4         # wants 12, window min is 4
    assert controller.step(61.0, 4, plain_pods(*[0.3] * 4)) == 12        # the 4 left the window


# ------------------------------------------------------------- manifests
MANIFEST = {
    "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "edge-inference"},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "edge-inference-unit"},
        "minReplicas": 2, "maxReplicas": 12,
        "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
            {"type": "Pods", "pods": {"metric": {"name": "edgeoffload_inflight"},
                                      "target": {"type": "AverageValue", "averageValue": "1500m"}}},
        ],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60,
                                   "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]}},
    },
}


def test_from_manifest_reads_targets_and_applies_defaults() -> None:
    parsed = HPASpec.from_manifest(MANIFEST)
    assert (parsed.name, parsed.target, parsed.min_replicas, parsed.max_replicas) == \
        ("edge-inference", "edge-inference-unit", 2, 12)
    assert parsed.metrics == (MetricTarget("Resource", "cpu", "Utilization", 70),
                              MetricTarget("Pods", "edgeoffload_inflight", "AverageValue", 1.5))
    assert parsed.behavior.scale_down == ScalingRules(60, (ScalingPolicy("Percent", 10, 60),))
    assert parsed.behavior.scale_up == Behavior().scale_up  # omitted direction gets the default


def test_from_manifest_errors_name_the_field() -> None:
    with pytest.raises(HPAError, match="apiVersion"):
        HPASpec.from_manifest({**MANIFEST, "apiVersion": "autoscaling/v1"})
    with pytest.raises(HPAError, match="maxReplicas"):
        HPASpec.from_manifest({**MANIFEST, "spec": {"minReplicas": 1}})
    bad_metric = {**MANIFEST, "spec": {**MANIFEST["spec"], "metrics": [{"type": "External", "external": {}}]}}
    with pytest.raises(HPAError, match=r"spec\.metrics\[0\]\.type"):
        HPASpec.from_manifest(bad_metric)


def test_find_hpa_in_multi_document_file(tmp_path) -> None:
    import yaml
    other = {**MANIFEST, "metadata": {"name": "cloud-inference"},
             "spec": {**MANIFEST["spec"], "scaleTargetRef": {"name": "cloud-inference-unit"}}}
    path = tmp_path / "autoscale.yml"
    path.write_text(yaml.safe_dump_all([{"kind": "Service"}, MANIFEST, other]))
    assert find_hpa(path, "cloud-inference-unit").name == "cloud-inference"
    with pytest.raises(HPAError, match="holds 2 HPAs"):
        find_hpa(path)


def test_parse_quantity() -> None:
    assert parse_quantity("100m") == pytest.approx(0.1)
    assert parse_quantity("2Ki") == 2048
    assert parse_quantity(3) == 3
    with pytest.raises(HPAError):
        parse_quantity("ten")
