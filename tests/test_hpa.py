"""The HPA controller against the worked examples of the Kubernetes documentation, and against the
upstream source (kube-controller-manager v1.37.2; v1.32.0-v1.36.0 for the release differences)."""
from __future__ import annotations

import pytest

from edgeoffload.hpa import (Behavior, HPAController, HPAError, HPASpec, MetricTarget, MetricUnavailable, PodSample,
                             ScalingPolicy, ScalingRules, approximate_float64, find_hpa, parse_quantity,
                             replicas_for_metric, tolerances)

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


# =============================================================================================
# Worked by hand from the upstream source (Kubernetes v1.37.2 unless a test names another
# release; v1.32.0-v1.36.0 for the release differences). Paths are relative to
# kubernetes/pkg/controller/podautoscaler unless they say otherwise. Every expected replica
# sequence is derived step by step in the comments, from the code, not by running hpa.py.
# =============================================================================================
IN_FLIGHT_2 = MetricTarget("Pods", "inflight", "AverageValue", 2.0)   # autoscale.yml's target: 2000m


def drive(hpa: HPASpec, start: int, per_pod: float, times: list[float], metric: str = "inflight") -> list[int]:
    """Sync at each time; every pod reports `per_pod`; the target then has the decided count."""
    controller, replicas, seen = HPAController(hpa), start, []
    for t in times:
        pods = [PodSample(f"p{i}", values={metric: per_pod}, requests={"cpu": 1.0}) for i in range(replicas)]
        replicas = controller.step(t, replicas, pods)
        seen.append(replicas)
    return seen


def rules(window: int | None, *policies: ScalingPolicy, select: str = "Max", tolerance: float | None = None):
    return ScalingRules(window, tuple(policies), select, tolerance)  # type: ignore[arg-type]


# ------------------------------------------------------------- rule 1: the first reconcile
def test_first_reconcile_holds_the_starting_count_in_the_scale_down_window() -> None:
    """horizontal.go reconcileAutoscaler -> recordInitialRecommendation (called right after the
    scale subresource is read, before any other check; it stores {currentReplicas, now} only while
    a.recommendations[key] is nil, i.e. on the HPA's first reconcile), then
    normalizeDesiredReplicasWithBehaviors -> stabilizeRecommendationWithBehaviors."""
    hpa = HPASpec(max_replicas=10, metrics=(PER_POD,),
                  behavior=Behavior(scale_down=rules(60, ScalingPolicy("Percent", 100, 15))))
    # 6 pods at 20m against 100m: ratio 0.2 (calcPlainMetricReplicas: 20 / 100, outside
    # [0.9, 1.1]) -> ceil(0.2 * 6) = 2 at every sync.
    # t=0:  recommendations = [(6, 0)] (initial). upCutoff = now - 0, downCutoff = now - 60.
    #       (6, 0): After(upCutoff)? no (it is not younger than 0 s). After(downCutoff)? yes ->
    #       downRecommendation = max(2, 6) = 6; upRecommendation = 2.
    #       recommendation = current 6; 6 < 2? no; 6 > 6? no -> 6. (2, 0) is appended.
    # t=15, 30, 45: the (6, 0) record is 15/30/45 s old, still inside 60 s -> 6 each time.
    # t=60: (6, 0) and (2, 0) are 60 s old: outside (a record counts while younger than the window);
    #       the records of t=15/30/45 are all 2 -> downRecommendation 2 -> recommendation 2.
    #       convertDesiredReplicasWithBehaviorRate: no scale events -> periodStartReplicas 6,
    #       Percent 100: int32(6 * (1 - 100/100)) = 0; scaleDownLimit = min(0, 6) = 0;
    #       minReplicas 1 < 0? no -> "TooFewReplicas" branch: 2 < 1? no -> 2.
    assert drive(hpa, 6, 0.02, [0, 15, 30, 45, 60]) == [6, 6, 6, 6, 2]


def test_first_reconcile_delays_the_first_scale_up_by_the_scale_up_window() -> None:
    """horizontal.go recordInitialRecommendation + stabilizeRecommendationWithBehaviors: the
    initial record is inside a non-zero scale-up window, whose minimum bounds the recommendation."""
    hpa = HPASpec(max_replicas=10, metrics=(PER_POD,),
                  behavior=Behavior(scale_up=rules(30, ScalingPolicy("Percent", 1000, 15))))
    # 2 pods at 300m: ratio 3 -> ceil(3 * 2) = 6 at every sync.
    # t=0:  records [(2, 0)]; up window 30 s: (2, 0) inside -> upRecommendation = min(6, 2) = 2.
    #       scaleDown is the default (defaults.go GenerateHPAScaleDownRules leaves
    #       stabilizationWindowSeconds nil; maybeInitScaleDownStabilizationWindow sets the flag's
    #       300 s): downRecommendation = max(6, 2) = 6. recommendation = max(current 2, 2) = 2,
    #       min(2, 6) = 2 -> no change. (6, 0) appended.
    # t=15: (2, 0) still inside 30 s -> min(6, 2, 6) = 2 -> 2.
    # t=30: (2, 0), (6, 0) are 30 s old: outside; (6, 15) inside -> upRecommendation 6 ->
    #       recommendation 6. Rate: periodStartReplicas 2, Percent 1000: ceil(2 * 11) = 22 ->
    #       limit 22; maxReplicas 10 > 22? no -> "TooManyReplicas": 6 > 10? no -> 6.
    assert drive(hpa, 2, 0.3, [0, 15, 30]) == [2, 2, 6]


def test_without_the_first_record_a_zero_scale_up_window_scales_at_once() -> None:
    """The initial record does not count in a 0 s window (rec.timestamp.After(now - 0) is false,
    horizontal.go stabilizeRecommendationWithBehaviors): with autoscale.yml's scaleUp window 0 the
    rule never fires on scale-up."""
    hpa = HPASpec(max_replicas=10, metrics=(PER_POD,), behavior=Behavior(scale_up=default_scale_up_rules()))
    # t=0: records [(2, 0)], outside the 0 s up window -> upRecommendation = 6; down window 300 s:
    #      max(6, 2) = 6 -> recommendation 6. Rate (calculateScaleUpLimitWithScalingRules, Max):
    #      Pods 4 -> 2 + 4 = 6, Percent 100 -> ceil(2 * 2) = 4 -> 6; 6 > 6? no -> 6.
    assert drive(hpa, 2, 0.3, [0]) == [6]


def default_scale_up_rules() -> ScalingRules:
    return rules(0, ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15))


def test_first_reconcile_on_the_legacy_path_holds_the_starting_count_too() -> None:
    """horizontal.go recordInitialRecommendation, then (Behavior == nil) normalizeDesiredReplicas ->
    stabilizeRecommendation: the maximum of the recommendations not older than
    --horizontal-pod-autoscaler-downscale-stabilization (here 60 s)."""
    hpa = HPASpec(max_replicas=10, metrics=(PER_POD,), downscale_stabilization_s=60)
    # 6 pods at 20m -> 2 each sync. t=0: records [(6, 0)] -> max(2, 6) = 6;
    # convertDesiredReplicasWithRules: scaleUpLimit = max(2 * 6, 4) = 12, maxReplicas 10 > 12? no ->
    # maximum 10; 6 < minReplicas 1? no; 6 > 10? no -> 6. Same at 15, 30, 45. t=60: (6, 0) is 60 s
    # old, outside -> the records since are 2 -> 2; 2 >= 1 -> 2.
    assert drive(hpa, 6, 0.02, [0, 15, 30, 45, 60]) == [6, 6, 6, 6, 2]


# ------------------------------------------------------------- rule 2: no behavior = the legacy path
def test_the_api_leaves_a_missing_behavior_unset_and_fills_a_partial_one() -> None:
    """pkg/apis/autoscaling/v2/defaults.go SetDefaults_HorizontalPodAutoscalerBehavior: only a
    non-nil behavior is filled (GenerateHPAScaleUpRules / GenerateHPAScaleDownRules copy every
    non-nil field over the defaults); the scale-down window stays nil for the controller's flag."""
    without = {**MANIFEST, "spec": {k: v for k, v in MANIFEST["spec"].items() if k != "behavior"}}
    assert HPASpec.from_manifest(without).behavior is None
    empty = HPASpec.from_manifest({**MANIFEST, "spec": {**MANIFEST["spec"], "behavior": {}}})
    assert empty.behavior == Behavior(
        rules(0, ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)),   # defaultHPAScaleUpRules
        rules(None, ScalingPolicy("Percent", 100, 15)))                              # defaultHPAScaleDownRules
    partial = HPASpec.from_manifest({**MANIFEST, "spec": {**MANIFEST["spec"], "behavior": {
        "scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}})
    assert partial.behavior is not None and partial.behavior.scale_down == rules(None, ScalingPolicy("Pods", 1, 60))
    with pytest.raises(HPAError, match=r"spec\.behavior\.scaleUp.*at least one Policy"):   # validation.go
        HPASpec.from_manifest({**MANIFEST, "spec": {**MANIFEST["spec"], "behavior": {"scaleUp": {"policies": []}}}})


def test_legacy_scale_up_is_at_most_double_or_4_per_sync_with_no_event_memory() -> None:
    """horizontal.go normalizeDesiredReplicas -> convertDesiredReplicasWithRules ->
    calculateScaleUpLimit = int32(max(2 * current, 4)); storeScaleEvent returns at once without
    behavior, so each sync's limit depends on the current count only."""
    legacy = HPASpec(max_replicas=100, metrics=(PER_POD,))
    # every pod at 1000m against 100m: ratio 10, proposal 10 x current.
    # t=0:  1 -> proposal 10; stabilizeRecommendation: max(10, initial 1) = 10; limit max(2, 4) = 4;
    #       maxReplicas 100 > 4 -> maximum 4 ("ScaleUpLimit") -> 4.
    # t=15: 4 -> 40; max over 300 s (1, 10, 40) = 40; limit max(8, 4) = 8 -> 8.
    # t=30: 8 -> 80 -> limit 16 -> 16.
    assert drive(legacy, 1, 1.0, [0, 15, 30]) == [4, 8, 16]
    # The default behavior rules are not the same: `behavior: {}` gets scaleUp = (Pods 4, Percent 100
    # per 15 s, Max), calculateScaleUpLimitWithScalingRules from the scale events of the period:
    # t=0:  1 -> 10; limit max(1 + 4, ceil(1 * 2)) = 5 -> 5 (scale-up event +4 at 0).
    # t=15: 5 -> 50; the event at 0 is 15 s old, outside the 15 s period -> start 5 ->
    #       max(9, 10) = 10 -> 10.  t=30: 10 -> max(14, 20) = 20.
    with_defaults = HPASpec(max_replicas=100, metrics=(PER_POD,), behavior=Behavior())
    assert drive(with_defaults, 1, 1.0, [0, 15, 30]) == [5, 10, 20]


def test_legacy_scale_up_takes_the_highest_recent_recommendation() -> None:
    """horizontal.go stabilizeRecommendation keeps the maximum over the window in both directions:
    a higher recommendation of the last 5 min also lifts a later, smaller scale-up."""
    legacy = HPASpec(max_replicas=100, metrics=(PER_POD,))
    controller = HPAController(legacy)
    # t=0: 2 pods at 1000m -> 20; max(20, 2) = 20; limit max(4, 4) = 4 -> 4.
    assert controller.step(0, 2, plain_pods(1.0, 1.0)) == 4
    # t=15: 4 pods at 150m: ratio 1.5 -> ceil(1.5 * 4) = 6; max(6, 2, 20) = 20; limit 8 -> 8.
    assert controller.step(15, 4, plain_pods(*[0.15] * 4)) == 8


def test_downscale_stabilization_flag_sets_the_legacy_window_and_an_unset_behavior_window() -> None:
    """cmd/kube-controller-manager/app/options/hpacontroller.go
    --horizontal-pod-autoscaler-downscale-stabilization (default 5 min, config/v1alpha1/defaults.go
    RecommendedDefaultHPAControllerConfiguration). Legacy: stabilizeRecommendation uses it as a
    Duration; with behavior: maybeInitScaleDownStabilizationWindow truncates it to int32 seconds."""
    # 8 pods at 25m -> ceil(0.25 * 8) = 2 each sync; the initial record (8, 0) holds 8.
    times = [0, 15, 30, 45, 60]
    # flag 45.9 s, legacy: (8, 0) is 45 s old at t=45 (< 45.9: inside) -> 8; at t=60 outside -> 2.
    assert drive(HPASpec(metrics=(PER_POD,), downscale_stabilization_s=45.9), 8, 0.025, times) == [8, 8, 8, 8, 2]
    # same flag, behavior without a scale-down window: int32(45.9) = 45 s -> at t=45 (8, 0) is
    # outside -> 2. Rate: Percent 100 per 15 s -> limit 0 -> 2.
    partial = Behavior(scale_up=default_scale_up_rules())
    assert drive(HPASpec(metrics=(PER_POD,), behavior=partial, downscale_stabilization_s=45.9), 8, 0.025,
                 times) == [8, 8, 8, 2, 2]
    # the default flag, 300 s: 8 until the sync at 300 s.
    held = drive(HPASpec(metrics=(PER_POD,)), 8, 0.025, [15.0 * k for k in range(21)])
    assert held[:20] == [8] * 20 and held[20] == 2


# ------------------------------------------------------------- rule 3: the tolerance at 1 +/- tolerance
def test_tolerance_bound_is_inclusive_from_133_and_float_abs_in_132() -> None:
    """replica_calculator.go Tolerances.isWithin (1.33+): (1.0-down) <= ratio <= (1.0+up);
    v1.32.0 calcPlainMetricReplicas: math.Abs(1.0-usageRatio) <= c.tolerance."""
    # 4 pods at 2200m against 2000m: GetMetricUsageRatio = 2200 / 2000 = 1.1 (float64 1.1000000000000000888,
    # the same float as 1.0 + 0.1). 1.37: 1.1 <= 1.1 -> within -> 4.
    assert replicas_for_metric(HPASpec(metrics=(IN_FLIGHT_2,)), IN_FLIGHT_2, 4, plain_pods(*[2.2] * 4)) == 4
    # 1.32: |1.0 - 1.1| = 0.10000000000000009 > 0.1 -> ceil(1.1 * 4) = ceil(4.4) = 5.
    old = HPASpec(metrics=(IN_FLIGHT_2,), kubernetes_version="1.32")
    assert replicas_for_metric(old, IN_FLIGHT_2, 4, plain_pods(*[2.2] * 4)) == 5
    # 1800m: ratio 0.9; 1.37: 1.0 - 0.1 = 0.9 <= 0.9 -> within; 1.32: |1 - 0.9| = 0.09999999999999998
    # <= 0.1 -> within. Both keep 4.
    for hpa in (HPASpec(metrics=(IN_FLIGHT_2,)), old):
        assert replicas_for_metric(hpa, IN_FLIGHT_2, 4, plain_pods(*[1.8] * 4)) == 4


def test_per_direction_tolerances_from_135_with_an_inclusive_bound() -> None:
    """horizontal.go tolerancesForHpa (behavior.ScaleUp/ScaleDown.Tolerance.AsApproximateFloat64()
    when features.HPAConfigurableTolerance is on: pkg/features/kube_features.go has it alpha off in
    1.33, beta on in 1.35, GA in 1.37) and replica_calculator.go Tolerances.isWithin."""
    behavior = Behavior(scale_up=rules(0, ScalingPolicy("Pods", 4, 15), tolerance=0.2),
                        scale_down=rules(None, ScalingPolicy("Percent", 100, 15), tolerance=0.05))
    new, gated = (HPASpec(metrics=(IN_FLIGHT_2,), behavior=behavior, kubernetes_version=v) for v in ("1.37", "1.34"))
    # 20 pods at 1900m: ratio 0.95; 1.37: down 0.05 -> 1.0 - 0.05 = 0.95 <= 0.95 -> within -> 20
    # (|1 - 0.95| = 0.050000000000000044 would have scaled to ceil(0.95 * 20) = 19).
    assert replicas_for_metric(new, IN_FLIGHT_2, 20, plain_pods(*[1.9] * 20)) == 20
    # 20 pods at 1840m: ratio 0.92; 1.37: 0.95 <= 0.92? no -> ceil(0.92 * 20) = ceil(18.400000000000002) = 19;
    # 1.34: the gate is off, both tolerances 0.1: 0.9 <= 0.92 <= 1.1 -> 20.
    assert replicas_for_metric(new, IN_FLIGHT_2, 20, plain_pods(*[1.84] * 20)) == 19
    assert replicas_for_metric(gated, IN_FLIGHT_2, 20, plain_pods(*[1.84] * 20)) == 20
    # 4 pods at 2300m: ratio 1.15; 1.37: up 0.2 -> 1.15 <= 1.2 -> 4; 1.34: 1.15 > 1.1 -> ceil(4.6) = 5.
    assert replicas_for_metric(new, IN_FLIGHT_2, 4, plain_pods(*[2.3] * 4)) == 4
    assert replicas_for_metric(gated, IN_FLIGHT_2, 4, plain_pods(*[2.3] * 4)) == 5


def test_tolerance_quantities_become_floats_the_way_the_controller_reads_them() -> None:
    """staging/src/k8s.io/apimachinery/pkg/api/resource: the API server stores a quantity in
    canonical form (amount.go int64Amount.AsCanonicalBytes: mantissa x 10^(3k)); the controller
    parses it back (quantity.go ParseQuantity: int64Amount{value, scale}) and
    AsApproximateFloat64 = float64(value) * math.Pow10(scale)."""
    # "0.059" -> canonical "59m" -> 59 * Pow10(-3) = 59 * (1/1000) = 0.059000000000000004 (not 0.059)
    assert approximate_float64("0.059") == approximate_float64("59m") == 59 * (1 / 1000) != 0.059
    assert approximate_float64(0.05) == 50 * (1 / 1000) == 0.05
    assert approximate_float64("1500m") == 1.5 and approximate_float64("1") == 1.0
    assert approximate_float64("1e-10") == 1 * (1 / 10**9)   # ParseQuantity rounds up to 1n
    # That float decides at the bound: scaleDown tolerance "0.059", 20 pods at 1882m: ratio
    # 1882/2000 = 0.941; 1.0 - 0.059000000000000004 = 0.941 <= 0.941 -> within -> 20
    # (1.0 - 0.059 = 0.9410000000000001 > 0.941 would have scaled to ceil(0.941 * 20) = 19).
    manifest = {**MANIFEST, "spec": {**MANIFEST["spec"], "metrics": [
        {"type": "Pods", "pods": {"metric": {"name": "inflight"}, "target": {"type": "AverageValue", "averageValue": "2"}}}],
        "behavior": {"scaleDown": {"tolerance": "0.059"}}}}
    hpa = HPASpec.from_manifest(manifest)
    assert replicas_for_metric(hpa, hpa.metrics[0], 20, plain_pods(*[1.882] * 20)) == 20


def test_per_direction_tolerance_needs_133() -> None:
    """v1.32.0 k8s.io/api autoscaling/v2 HPAScalingRules has no tolerance field: strict field
    validation rejects it; 1.33-1.34 accept it and drop it (strategy.go dropDisabledFields, gate off)."""
    manifest = {**MANIFEST, "spec": {**MANIFEST["spec"], "behavior": {"scaleUp": {"tolerance": "50m"}}}}
    with pytest.raises(HPAError, match=r"spec\.behavior\.scaleUp\.tolerance: not in Kubernetes 1\.32"):
        HPASpec.from_manifest(manifest, kubernetes_version="1.32")
    accepted = HPASpec.from_manifest(manifest, kubernetes_version="v1.34.0")
    assert accepted.kubernetes_version == "1.34" and tolerances(accepted) == (0.1, 0.1)
    assert tolerances(HPASpec.from_manifest(manifest)) == (0.1, 0.05)
    with pytest.raises(HPAError, match="not modelled"):
        HPASpec(kubernetes_version="1.31")


# ------------------------------------------------------------- the rest, against upstream
def test_cpu_samples_during_the_initialization_period() -> None:
    """replica_calculator.go groupPods for cpu: inside --horizontal-pod-autoscaler-cpu-initialization-
    period (5 min) after status.startTime a sample counts only if the pod is ready and
    metric.Timestamp >= lastTransitionTime + metric.Window; after it, a sample is ignored only if
    the pod is unready and became so within --horizontal-pod-autoscaler-initial-readiness-delay
    (30 s) of its start (it has never been ready). GetResourceReplicas then treats ignored pods as
    0 % on a scale-up."""
    hpa = HPASpec(metrics=(CPU_50,))

    def second_pod(**timing) -> list[PodSample]:   # both at 900m of a 1-core request, now = 1000
        return [PodSample("a", values={"cpu": 0.9}, requests={"cpu": 1.0}),
                PodSample("b", values={"cpu": 0.9}, requests={"cpu": 1.0}, **timing)]
    # both trusted: (900 + 900) * 100 / 2000 = 90 % -> ratio 1.8 -> ceil(1.8 * 2) = ceil(3.6) = 4.
    # b started 100 s ago (inside 300 s), ready 20 s ago, its window began 15 s ago (after) -> trusted.
    assert replicas_for_metric(hpa, CPU_50, 2, second_pod(started_at=900, ready_changed_at=980, window_start=985),
                               now=1000) == 4
    # b's window began 25 s ago, before it became ready -> unready: ratio over a alone 1.8 > 1,
    # b counted as 0: 900 * 100 / 2000 = 45 % -> 0.9 < 1: the direction reverses -> keep 2.
    assert replicas_for_metric(hpa, CPU_50, 2, second_pod(started_at=900, ready_changed_at=980, window_start=975),
                               now=1000) == 2
    # started 400 s ago (after the period), not ready since 350 s after its start: it had been
    # ready (350 > 30), so its sample counts -> 4.
    assert replicas_for_metric(hpa, CPU_50, 2, second_pod(ready=False, started_at=600, ready_changed_at=950),
                               now=1000) == 4
    # not ready since 10 s after its start: never ready -> ignored -> 2.
    assert replicas_for_metric(hpa, CPU_50, 2, second_pod(ready=False, started_at=600, ready_changed_at=610),
                               now=1000) == 2
    # a shorter initialization period (flag) makes the 100-s-old pod of the second case count.
    short = HPASpec(metrics=(CPU_50,), cpu_initialization_period_s=60)
    assert replicas_for_metric(short, CPU_50, 2, second_pod(started_at=900, ready_changed_at=980, window_start=975),
                               now=1000) == 4


def test_a_pod_without_the_cpu_request_invalidates_utilization() -> None:
    """replica_calculator.go calculateRequests -> calculatePodRequestsFromContainers: "missing
    request for cpu" for any pod of the target (ignored ones included) is an error: the metric is
    invalid this sync, and computeReplicasForMetrics with all metrics invalid changes nothing."""
    pods = cpu_pods(0.9, 0.9) + [PodSample("failed", phase="Failed")]
    with pytest.raises(MetricUnavailable, match="missing request"):
        replicas_for_metric(spec([CPU_50]), CPU_50, 2, pods)
    assert HPAController(spec([CPU_50])).step(0, 2, pods) == 2


def test_scale_up_period_start_counts_the_periods_scale_downs() -> None:
    """horizontal.go calculateScaleUpLimitWithScalingRules: periodStartReplicas = current -
    replicasAddedInCurrentPeriod + replicasDeletedInCurrentPeriod (getReplicasChangePerPeriod over
    both event lists; scale-downs were not counted before 1.27)."""
    hpa = HPASpec(max_replicas=100, metrics=(PER_POD,),
                  behavior=Behavior(rules(0, ScalingPolicy("Pods", 4, 60)), rules(0, ScalingPolicy("Percent", 100, 15))))
    controller = HPAController(hpa)
    # t=0: 2 pods at 1000m -> 20; up window 0, down window 0 -> 20; limit: start 2 -> 2 + 4 = 6 -> 6.
    assert controller.step(0, 2, plain_pods(*[1.0] * 2)) == 6
    # t=15: 6 pods at 50m: ratio 0.5 -> 3; scale-down limit: Percent 100 per 15 s, the up event
    # at 0 is 15 s old (outside) -> start 6 -> int32(0) = 0 -> min(0, 6) = 0; minReplicas 1 < 0? no ->
    # 3 >= 1 -> 3 (a scale-down event of 3 at 15).
    assert controller.step(15, 6, plain_pods(*[0.05] * 6)) == 3
    # t=30: 3 pods at 1000m -> 30; Pods 4 per 60 s: added 4 (t=0), deleted 3 (t=15) ->
    # start = 3 - 4 + 3 = 2 -> 2 + 4 = 6 -> 6 (ignoring the scale-down it would be 3 - 4 + 4 = 3).
    assert controller.step(30, 3, plain_pods(*[1.0] * 3)) == 6


def test_outdated_scale_events_are_recycled() -> None:
    """horizontal.go storeScaleEvent -> markScaleEventsOutdated: events older than the direction's
    longest policy period are marked outdated and the last of them is overwritten, so the list
    stays as short as the longest period allows."""
    hpa = HPASpec(max_replicas=100, metrics=(PER_POD,),
                  behavior=Behavior(rules(0, ScalingPolicy("Pods", 1, 15), ScalingPolicy("Pods", 1, 60))))
    controller, replicas = HPAController(hpa), 1
    # every pod at 1000m wants 10 x; Pods 1 per 15 s allows +1 per sync (the previous event is 15 s
    # old), Pods 1 per 60 s less, Max -> +1 per sync. Events at 0, 15, 30, 45; at t=60 the one at 0
    # is 60 s old: outdated, overwritten -> never more than 4 events.
    for k in range(40):
        replicas = controller.step(15.0 * k, replicas, plain_pods(*[1.0] * replicas))
    assert replicas == 41 and len(controller._up_events) == 4


def test_releases_and_controller_settings_are_validated() -> None:
    assert HPASpec(kubernetes_version="v1.37.2").kubernetes_version == "1.37"
    assert HPASpec(kubernetes_version=1.35).kubernetes_version == "1.35"     # a YAML number
    with pytest.raises(HPAError, match="quoted"):
        HPASpec(kubernetes_version=1.30)                                      # 1.3
    with pytest.raises(HPAError, match="downscale_stabilization_s"):
        HPASpec(downscale_stabilization_s=-1)
