"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) algorithm, reproduced exactly.

The simulator and the local autoscaler (`edgeoffload up`) must scale the way a cluster
would, so this follows kube-controller-manager's pkg/controller/podautoscaler
(replica_calculator.go and horizontal.go) step by step, including its integer
milli-unit arithmetic:

1. per metric: ratio = current / target over the *ready* pods; no change within the
   tolerance; missing-metric pods count as 0 on scale-up and as the target (100 % of the
   request for utilisation) on scale-down, not-ready pods count as 0 on scale-up; if that
   reverses the direction, no change; proposal = ceil(ratio * pods).
2. several metrics: the largest proposal wins (an invalid metric blocks scale-down).
3. current outside [min, max] is first brought back inside.
4. behaviour: stabilisation windows (scale-up takes the minimum, scale-down the maximum
   of the recommendations inside its window), then the rate policies (Pods / Percent
   per periodSeconds, selectPolicy Max / Min / Disabled), computed from the scale events
   inside each policy period.

Simplification, documented: a pod's readiness is a boolean the caller supplies (the
controller derives it from the Ready condition, the start time and the CPU
initialisation period of 5 min); everything else is as upstream.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml

DEFAULT_TOLERANCE = 0.1
DEFAULT_SYNC_PERIOD_S = 15.0
MAX_INT32 = 2**31 - 1
MIN_INT32 = -(2**31)

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]
TargetType = Literal["Utilization", "AverageValue"]


class HPAError(ValueError):
    """An HPA manifest is malformed or uses a feature this module does not model."""


# ---------------------------------------------------------------- quantities
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")
_SUFFIX = {"": 1.0, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "P": 1e15, "E": 1e18, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
           "Pi": 2.0**50, "Ei": 2.0**60}


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity ("100m", "1.5", "2Ki", 3) as a float in base units."""
    if isinstance(value, bool):
        raise HPAError(f"not a quantity: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise HPAError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def milli(value: float) -> int:
    """Quantity.MilliValue(): base units to integer milli-units, rounded up like upstream."""
    return math.ceil(round(value * 1000.0, 6))


# ---------------------------------------------------------------- spec
@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    type: PolicyType
    value: int
    period_s: int

    def __post_init__(self) -> None:
        if self.type not in ("Pods", "Percent"):
            raise HPAError(f"scaling policy type must be Pods or Percent, got {self.type!r}")
        if self.value <= 0:
            raise HPAError(f"scaling policy value must be > 0, got {self.value}")
        if not 0 < self.period_s <= 1800:
            raise HPAError(f"scaling policy periodSeconds must be in (0, 1800], got {self.period_s}")


@dataclass(frozen=True, slots=True)
class ScalingRules:
    """One direction of `behavior` (HPAScalingRules)."""

    stabilization_window_s: int
    policies: tuple[ScalingPolicy, ...]
    select_policy: SelectPolicy = "Max"
    tolerance: float | None = None  # per-direction tolerance (k8s >= 1.33); None = global

    def __post_init__(self) -> None:
        if self.select_policy not in ("Max", "Min", "Disabled"):
            raise HPAError(f"selectPolicy must be Max, Min or Disabled, got {self.select_policy!r}")
        if not 0 <= self.stabilization_window_s <= 3600:
            raise HPAError(f"stabilizationWindowSeconds must be in [0, 3600], got {self.stabilization_window_s}")

    @property
    def longest_period_s(self) -> int:
        return max((p.period_s for p in self.policies), default=0)


def default_scale_up() -> ScalingRules:
    """Upstream default: no window; double or add 4 pods per 15 s, whichever is more."""
    return ScalingRules(0, (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)), "Max")


def default_scale_down() -> ScalingRules:
    """Upstream default: 300 s window; may remove all surplus pods per 15 s."""
    return ScalingRules(300, (ScalingPolicy("Percent", 100, 15),), "Max")


@dataclass(frozen=True, slots=True)
class Behavior:
    scale_up: ScalingRules = field(default_factory=default_scale_up)
    scale_down: ScalingRules = field(default_factory=default_scale_down)


@dataclass(frozen=True, slots=True)
class MetricTarget:
    """One entry of spec.metrics. kind Resource: `name` is the resource (cpu, memory);
    kind Pods: `name` is the custom metric. `value` is in base units (cores, bytes, count)
    for AverageValue, or percent of the request for Utilization."""

    kind: Literal["Resource", "Pods"]
    name: str
    target_type: TargetType
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("Resource", "Pods"):
            raise HPAError(f"metric type {self.kind!r} is not modelled (use Resource or Pods)")
        if self.target_type not in ("Utilization", "AverageValue"):
            raise HPAError(f"metric target type must be Utilization or AverageValue, got {self.target_type!r}")
        if self.kind == "Pods" and self.target_type != "AverageValue":
            raise HPAError("Pods metrics only support AverageValue targets")
        if self.value <= 0:
            raise HPAError(f"metric {self.name!r} target must be > 0, got {self.value}")


@dataclass(frozen=True, slots=True)
class HPASpec:
    min_replicas: int = 1
    max_replicas: int = 10
    metrics: tuple[MetricTarget, ...] = (MetricTarget("Resource", "cpu", "Utilization", 80),)
    behavior: Behavior = field(default_factory=Behavior)
    tolerance: float = DEFAULT_TOLERANCE
    sync_period_s: float = DEFAULT_SYNC_PERIOD_S
    name: str = ""
    target: str = ""  # scaleTargetRef.name

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise HPAError(f"minReplicas must be >= 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise HPAError(f"maxReplicas ({self.max_replicas}) must be >= minReplicas ({self.min_replicas})")
        if not self.metrics:
            raise HPAError("an HPA needs at least one metric")
        if self.sync_period_s <= 0:
            raise HPAError(f"sync period must be > 0, got {self.sync_period_s}")

    @staticmethod
    def from_manifest(manifest: Mapping[str, Any], sync_period_s: float = DEFAULT_SYNC_PERIOD_S,
                      tolerance: float = DEFAULT_TOLERANCE) -> "HPASpec":
        """Read an `autoscaling/v2` HorizontalPodAutoscaler object (as parsed from YAML),
        applying the API server's defaults for everything omitted."""
        if not isinstance(manifest, Mapping):
            raise HPAError("HPA manifest must be a mapping")
        kind = manifest.get("kind", "HorizontalPodAutoscaler")
        if kind != "HorizontalPodAutoscaler":
            raise HPAError(f"expected kind HorizontalPodAutoscaler, got {kind!r}")
        api = manifest.get("apiVersion", "autoscaling/v2")
        if api != "autoscaling/v2":
            raise HPAError(f"expected apiVersion autoscaling/v2, got {api!r}")
        spec = manifest.get("spec")
        if not isinstance(spec, Mapping):
            raise HPAError("HPA manifest has no spec")
        if "maxReplicas" not in spec:
            raise HPAError("spec.maxReplicas is required")
        raw_metrics = spec.get("metrics")
        metrics = (tuple(_metric_from_manifest(m, i) for i, m in enumerate(raw_metrics)) if raw_metrics
                   else (MetricTarget("Resource", "cpu", "Utilization", 80),))  # API default
        return HPASpec(min_replicas=int(spec.get("minReplicas", 1)), max_replicas=int(spec["maxReplicas"]),
                       metrics=metrics, behavior=_behavior_from_manifest(spec.get("behavior")),
                       tolerance=tolerance, sync_period_s=sync_period_s,
                       name=str((manifest.get("metadata") or {}).get("name", "")),
                       target=str((spec.get("scaleTargetRef") or {}).get("name", "")))


def load_hpa_manifests(path: str | Path) -> list[HPASpec]:
    """Every HorizontalPodAutoscaler in a (multi-document) YAML file; other kinds are skipped."""
    documents = yaml.safe_load_all(Path(path).read_text(encoding="utf-8"))
    return [HPASpec.from_manifest(doc) for doc in documents
            if isinstance(doc, Mapping) and doc.get("kind") == "HorizontalPodAutoscaler"]


def find_hpa(path: str | Path, name: str | None = None) -> HPASpec:
    """The HPA named `name` (metadata.name or scaleTargetRef.name) in a manifest file;
    without a name the file must hold exactly one."""
    specs = load_hpa_manifests(path)
    if name is None:
        if len(specs) != 1:
            raise HPAError(f"{path}: holds {len(specs)} HPAs; name one of: "
                           + ", ".join(s.name for s in specs))
        return specs[0]
    for spec in specs:
        if name in (spec.name, spec.target):
            return spec
    raise HPAError(f"{path}: no HPA named {name!r}; found: " + ", ".join(s.name for s in specs))


def _metric_from_manifest(raw: Any, index: int) -> MetricTarget:
    where = f"spec.metrics[{index}]"
    if not isinstance(raw, Mapping):
        raise HPAError(f"{where}: must be a mapping")
    kind = raw.get("type")
    if kind not in ("Resource", "Pods"):
        raise HPAError(f"{where}.type: {kind!r} is not modelled (use Resource or Pods)")
    body = raw.get("resource" if kind == "Resource" else "pods") or {}
    name = body.get("name") if kind == "Resource" else (body.get("metric") or {}).get("name")
    target = body.get("target") or {}
    if not name:
        raise HPAError(f"{where}: metric name is missing")
    target_type = target.get("type")
    try:
        if target_type == "Utilization":
            return MetricTarget(kind, str(name), "Utilization", float(target["averageUtilization"]))
        if target_type == "AverageValue":
            return MetricTarget(kind, str(name), "AverageValue", parse_quantity(target["averageValue"]))
    except KeyError as exc:
        raise HPAError(f"{where}.target: {exc.args[0]} is required for type {target_type}") from None
    except HPAError as exc:
        raise HPAError(f"{where}: {exc}") from None
    raise HPAError(f"{where}.target.type: must be Utilization or AverageValue, got {target_type!r}")


def _rules_from_manifest(raw: Any, default: ScalingRules, where: str) -> ScalingRules:
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        raise HPAError(f"{where}: must be a mapping")
    policies = default.policies
    if raw.get("policies") is not None:
        try:
            policies = tuple(ScalingPolicy(p["type"], int(p["value"]), int(p["periodSeconds"]))
                             for p in raw["policies"])
        except (KeyError, TypeError) as exc:
            raise HPAError(f"{where}.policies: each policy needs type, value, periodSeconds ({exc})") from None
    tolerance = raw.get("tolerance")
    return ScalingRules(
        stabilization_window_s=int(raw.get("stabilizationWindowSeconds", default.stabilization_window_s)),
        policies=policies, select_policy=raw.get("selectPolicy", "Max"),
        tolerance=None if tolerance is None else parse_quantity(tolerance))


def _behavior_from_manifest(raw: Any) -> Behavior:
    if raw is None:
        return Behavior()
    if not isinstance(raw, Mapping):
        raise HPAError("spec.behavior: must be a mapping")
    return Behavior(scale_up=_rules_from_manifest(raw.get("scaleUp"), default_scale_up(), "spec.behavior.scaleUp"),
                    scale_down=_rules_from_manifest(raw.get("scaleDown"), default_scale_down(),
                                                    "spec.behavior.scaleDown"))


# ---------------------------------------------------------------- replica calculation
@dataclass(frozen=True, slots=True)
class PodSample:
    """One pod as the controller sees it at a sync: phase, readiness, metric values.

    `values` maps metric name (resource or custom) to the pod's current value in base
    units (cores for cpu); a missing name means metrics-server / the adapter has no
    sample for it. `requests` maps resource name to the pod's request (base units).
    """

    name: str
    ready: bool = True
    phase: Literal["Pending", "Running", "Failed"] = "Running"
    deleting: bool = False
    values: Mapping[str, float] = field(default_factory=dict)
    requests: Mapping[str, float] = field(default_factory=dict)


class MetricUnavailable(Exception):
    """No usable sample for a metric (upstream: the metric is invalid this sync)."""


@dataclass(frozen=True, slots=True)
class _PodGroups:
    ready: dict[str, int]      # pod -> metric (milli-units)
    unready: set[str]
    missing: set[str]


def _group_pods(pods: Iterable[PodSample], metric: MetricTarget) -> _PodGroups:
    """groupPods(): failed / deleting pods are ignored, pending pods are unready, pods without
    a sample are missing; for cpu, a not-ready pod's sample is not trusted (unready)."""
    ready: dict[str, int] = {}
    unready: set[str] = set()
    missing: set[str] = set()
    for pod in pods:
        if pod.deleting or pod.phase == "Failed":
            continue
        if pod.phase == "Pending":
            unready.add(pod.name)
            continue
        value = pod.values.get(metric.name)
        if value is None:
            missing.add(pod.name)
            continue
        if metric.kind == "Resource" and metric.name == "cpu" and not pod.ready:
            unready.add(pod.name)
            continue
        ready[pod.name] = milli(value)
    return _PodGroups(ready, unready, missing)


def _within(ratio: float, spec: HPASpec) -> bool:
    """Tolerance test; per-direction tolerances (behavior.*.tolerance) override the global one."""
    if ratio > 1.0:
        tolerance = spec.behavior.scale_up.tolerance
    else:
        tolerance = spec.behavior.scale_down.tolerance
    return abs(1.0 - ratio) <= (spec.tolerance if tolerance is None else tolerance)


def replicas_for_metric(spec: HPASpec, metric: MetricTarget, current_replicas: int,
                        pods: list[PodSample]) -> int:
    """GetResourceReplicas / GetMetricReplicas for one metric; raises MetricUnavailable."""
    groups = _group_pods(pods, metric)
    values = dict(groups.ready)
    if not values:
        raise MetricUnavailable(f"no ready pod reports {metric.name!r}")
    ready_count = len(values)
    utilization = metric.target_type == "Utilization"
    requests = {p.name: milli(p.requests[metric.name]) for p in pods if metric.name in p.requests}
    if utilization:
        target = int(metric.value)

        def ratio_of(sample: dict[str, int]) -> float:
            used = [(v, requests[n]) for n, v in sample.items() if n in requests]
            total_request = sum(r for _, r in used)
            if total_request == 0:
                raise MetricUnavailable(f"pods have no {metric.name!r} request")
            current = (sum(v for v, _ in used) * 100) // total_request  # int32 percent, truncated
            return current / target
        fallback = {n: requests.get(n, 0) * max(100, target) // 100 for n in groups.missing}
    else:
        target = milli(metric.value)

        def ratio_of(sample: dict[str, int]) -> float:
            return (sum(sample.values()) // len(sample)) / target
        fallback = {n: target for n in groups.missing}

    ratio = ratio_of(values)
    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if _within(ratio, spec):
            return current_replicas
        return math.ceil(ratio * ready_count)

    if groups.missing:
        if ratio < 1.0:      # scale-down: missing pods assumed at the target (100 % of request)
            values.update(fallback)
        elif ratio > 1.0:    # scale-up: missing pods assumed idle
            values.update({n: 0 for n in groups.missing})
    if scale_up_with_unready:  # not-ready pods assumed idle
        values.update({n: 0 for n in groups.unready})

    new_ratio = ratio_of(values)
    if _within(new_ratio, spec) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current_replicas  # within tolerance, or the assumptions reversed the direction
    new_replicas = math.ceil(new_ratio * len(values))
    if (new_ratio < 1.0 and new_replicas > current_replicas) or (new_ratio > 1.0 and new_replicas < current_replicas):
        return current_replicas
    return new_replicas


# ---------------------------------------------------------------- controller
@dataclass(slots=True)
class _Recommendation:
    replicas: int
    at: float


@dataclass(slots=True)
class _ScaleEvent:
    change: int
    at: float
    outdated: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """What one sync decided, with the reason (mirrors the HPA status conditions)."""

    desired: int
    metric_proposal: int | None
    reason: str


class HPAController:
    """Stateful HPA for one scale target: call `step` once per sync period."""

    def __init__(self, spec: HPASpec) -> None:
        self.spec = spec
        self._recommendations: list[_Recommendation] = []
        self._up_events: list[_ScaleEvent] = []
        self._down_events: list[_ScaleEvent] = []
        self.last: Decision | None = None

    def step(self, now: float, current_replicas: int, pod_metrics: list[PodSample]) -> int:
        """One reconcile: the replica count the target should have (== current for no change)."""
        self.last = decision = self.decide(now, current_replicas, pod_metrics)
        if decision.desired != current_replicas:
            self._store_scale_event(now, current_replicas, decision.desired)
        return decision.desired

    def decide(self, now: float, current: int, pods: list[PodSample]) -> Decision:
        spec = self.spec
        if current == 0 and spec.min_replicas != 0:
            return Decision(0, None, "target scaled to zero: autoscaling disabled")
        if current > spec.max_replicas:
            return Decision(spec.max_replicas, None, "current above maxReplicas")
        if current < spec.min_replicas:
            return Decision(spec.min_replicas, None, "current below minReplicas")
        proposal = self._metric_proposal(current, pods)
        if proposal is None:
            return Decision(current, None, "metrics unavailable: no change")
        stabilized = self._stabilize(now, current, proposal)
        desired, reason = self._apply_rate_limits(now, current, stabilized)
        return Decision(desired, proposal, reason)

    def _metric_proposal(self, current: int, pods: list[PodSample]) -> int | None:
        """computeReplicasForMetrics: max over metrics; invalid metrics block scale-down."""
        best, invalid = 0, 0
        for metric in self.spec.metrics:
            try:
                best = max(best, replicas_for_metric(self.spec, metric, current, pods))
            except MetricUnavailable:
                invalid += 1
        if invalid >= len(self.spec.metrics) or (invalid and best < current):
            return None
        return best

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        """stabilizeRecommendationWithBehaviors: the min over the scale-up window bounds
        from below, the max over the scale-down window bounds from above."""
        behavior = self.spec.behavior
        up_cutoff = now - behavior.scale_up.stabilization_window_s
        down_cutoff = now - behavior.scale_down.stabilization_window_s
        up, down = desired, desired
        old_index = None
        for index, rec in enumerate(self._recommendations):
            if rec.at > up_cutoff:
                up = min(up, rec.replicas)
            if rec.at > down_cutoff:
                down = max(down, rec.replicas)
            if rec.at < up_cutoff and rec.at < down_cutoff:
                old_index = index
        recommendation = max(current, up)
        recommendation = min(recommendation, down)
        if old_index is not None:  # reuse an expired slot, as upstream does
            self._recommendations[old_index] = _Recommendation(desired, now)
        else:
            self._recommendations.append(_Recommendation(desired, now))
        return recommendation

    def _apply_rate_limits(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """convertDesiredReplicasWithBehaviorRate."""
        spec = self.spec
        if desired > current:
            limit = max(self._scale_up_limit(now, current), current)
            if spec.max_replicas > limit:
                return (limit, "ScaleUpLimit") if desired > limit else (desired, "ScaleUp")
            return (spec.max_replicas, "TooManyReplicas") if desired > spec.max_replicas else (desired, "ScaleUp")
        if desired < current:
            limit = min(self._scale_down_limit(now, current), current)
            if spec.min_replicas < limit:
                return (limit, "ScaleDownLimit") if desired < limit else (desired, "ScaleDown")
            return (spec.min_replicas, "TooFewReplicas") if desired < spec.min_replicas else (desired, "ScaleDown")
        return desired, "DesiredWithinRange"

    def _period_start(self, now: float, current: int, period_s: int) -> int:
        cutoff = now - period_s
        added = sum(e.change for e in self._up_events if e.at > cutoff)
        deleted = sum(e.change for e in self._down_events if e.at > cutoff)
        return current - added + deleted

    def _scale_up_limit(self, now: float, current: int) -> int:
        rules = self.spec.behavior.scale_up
        if rules.select_policy == "Disabled":
            return current
        pick, result = (min, MAX_INT32) if rules.select_policy == "Min" else (max, MIN_INT32)
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_s)
            proposed = (start + policy.value if policy.type == "Pods"
                        else math.ceil(start * (1 + policy.value / 100)))
            result = pick(result, proposed)
        return result

    def _scale_down_limit(self, now: float, current: int) -> int:
        rules = self.spec.behavior.scale_down
        if rules.select_policy == "Disabled":
            return current
        pick, result = (max, MIN_INT32) if rules.select_policy == "Min" else (min, MAX_INT32)
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_s)
            proposed = (start - policy.value if policy.type == "Pods"
                        else int(start * (1 - policy.value / 100)))  # int32() truncation
            result = pick(result, proposed)
        return result

    def _store_scale_event(self, now: float, previous: int, new: int) -> None:
        """storeScaleEvent: events older than the longest policy period are recycled."""
        up = new > previous
        events = self._up_events if up else self._down_events
        rules = self.spec.behavior.scale_up if up else self.spec.behavior.scale_down
        cutoff = now - rules.longest_period_s
        for event in events:
            if event.at < cutoff:
                event.outdated = True
        change = abs(new - previous)
        for index, event in enumerate(events):
            if event.outdated:
                events[index] = _ScaleEvent(change, now)
                return
        events.append(_ScaleEvent(change, now))


__all__ = ["Behavior", "Decision", "HPAController", "HPAError", "HPASpec", "MetricTarget",
           "MetricUnavailable", "PodSample", "ScalingPolicy", "ScalingRules", "find_hpa",
           "load_hpa_manifests", "parse_quantity", "replicas_for_metric"]
