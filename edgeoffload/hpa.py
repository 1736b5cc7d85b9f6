"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) controller, reproduced exactly.

The simulator and the local autoscaler (`edgeoffload up`) must scale the way a cluster would,
so this follows kube-controller-manager's HPA controller step by step, including its integer
milli-unit and float64 arithmetic. The release reproduced is **Kubernetes 1.37** (read in
v1.37.2: pkg/controller/podautoscaler/horizontal.go, replica_calculator.go,
metrics/utilization.go, pkg/apis/autoscaling/v2/defaults.go, the controller's flags in
cmd/kube-controller-manager/app/options/hpacontroller.go and their defaults in
pkg/controller/podautoscaler/config/v1alpha1/defaults.go). `HPASpec.kubernetes_version` picks
1.32 to 1.36 instead (read in v1.32.0 ... v1.36.0); within the modelled metrics they differ in:
  - the tolerance test: 1.33+ `1 - down <= ratio <= 1 + up` (Tolerances.isWithin), 1.32
    `|1 - ratio| <= tolerance`, which differs in float64 at exactly 1 +/- tolerance
    (|1 - 1.1| = 0.10000000000000009 > 0.1: 1.32 scales where 1.33+ does not);
  - per-direction `behavior.scaleUp/scaleDown.tolerance` (feature gate HPAConfigurableTolerance:
    alpha and off by default in 1.33-1.34, so ignored there; on from 1.35); 1.32 has no such field.
Feature gates are at their release defaults.

One reconcile (`HPAController.step`, reconcileAutoscaler):
0. the first reconcile records the current replica count as a recommendation
   (recordInitialRecommendation), so the stabilization windows hold the starting count: a pool
   that starts above its need is not cut at once, a scale-up window delays the first scale-up.
1. current 0: autoscaling disabled; current outside [min, max]: brought back inside.
2. per metric (GetResourceReplicas, calcPlainMetricReplicas, groupPods): ratio = current / target
   over the ready pods; no change within the tolerance; pods without a sample count as 0 on
   scale-up and as the target (100 % of the request for utilisation) on scale-down; pods not
   ready count as 0 on scale-up (for cpu: samples not trusted during the CPU initialization
   period, below); if that reverses the direction, no change; proposal = ceil(ratio * pods).
3. several metrics: the largest proposal wins; an invalid metric blocks scale-down.
4. with `behavior` (the API server then fills every omitted field, scaleDown's window from the
   controller's --horizontal-pod-autoscaler-downscale-stabilization): stabilization windows
   (scale-up the minimum, scale-down the maximum of the recommendations inside each), then the
   rate policies, computed from the scale events inside each policy's period.
   Without `behavior` (the API leaves it unset, SetDefaults_HorizontalPodAutoscalerBehavior):
   the legacy path, normalizeDesiredReplicas: the highest recommendation of the last
   downscale-stabilization (5 min), then at most max(2 x current, 4) replicas; no scale events.

Time is the caller's clock in seconds. Upstream stamps records with the wall clock, and two
syncs are always a little more than one sync period apart (the key is queued again after a
reconcile), so a record made exactly one window or policy period before `now` is already outside
it in a cluster; here too: a record counts while it is younger than the window.

Not modelled: Object, External and ContainerResource metrics, scale to zero (HPAScaleToZero needs
Object or External metrics), pod-level resource requests. When the first reconcile happens is
the caller's (`HPASpec.first_reconcile_s`): 1.37 reconciles a new HPA at once and 1.32-1.36 one
sync period later (enqueueHPA); the simulator and the local autoscaler do the same from when they
start, unless `first_sync_s` sets it (e.g. to align a simulation with a testbed's sync phase).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml

RELEASES = ("1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
DEFAULT_RELEASE = "1.37"
DEFAULT_TOLERANCE = 0.1
DEFAULT_SYNC_PERIOD_S = 15.0
DEFAULT_DOWNSCALE_STABILIZATION_S = 300.0
DEFAULT_CPU_INITIALIZATION_PERIOD_S = 300.0
DEFAULT_INITIAL_READINESS_DELAY_S = 30.0
MAX_INT32 = 2**31 - 1
MIN_INT32 = -(2**31)

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]
TargetType = Literal["Utilization", "AverageValue"]


class HPAError(ValueError):
    """An HPA manifest is malformed or uses a feature this module does not model."""


def kubernetes_release(value: Any) -> str:
    """'1.37', 'v1.37.2' -> '1.37'; an error for a release this module does not model."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", str(value).strip())
    release = f"{match.group(1)}.{int(match.group(2))}" if match else ""
    if release not in RELEASES:
        raise HPAError(f"Kubernetes release {value!r} is not modelled: choose one of {', '.join(RELEASES)}"
                       " (quoted in YAML: '1.30' unquoted is the number 1.3)")
    return release


# ---------------------------------------------------------------- quantities
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")
_SUFFIX = {"": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
           "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
           "P": Fraction(10**15), "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
           "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60)}


def _exact_quantity(value: Any) -> Fraction:
    if isinstance(value, bool):
        raise HPAError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    match = _QUANTITY.match(repr(value) if isinstance(value, float) else str(value).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise HPAError(f"not a quantity: {value!r}")
    try:
        return Fraction(Decimal(match.group(1))) * _SUFFIX[match.group(2)]
    except (InvalidOperation, ValueError):
        raise HPAError(f"not a quantity: {value!r}") from None


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity ("100m", "1.5", "2Ki", 3) as a float in base units."""
    return float(_exact_quantity(value))


def milli(value: float) -> int:
    """Quantity.MilliValue(): base units to integer milli-units, rounded up like upstream."""
    return math.ceil(round(value * 1000.0, 6))


def _pow10(exponent: int) -> float:
    """Go's math.Pow10 for the exponents of a quantity (10^-n is 1 / 10^n, correctly rounded)."""
    return float(10**exponent) if exponent >= 0 else 1 / 10**-exponent


def approximate_float64(value: Any) -> float:
    """Quantity.AsApproximateFloat64() as the controller computes it for a tolerance.

    The API server keeps a quantity in canonical form (integer mantissa x 10^(3k), rounded up to
    nano: CanonicalizeBytes); the controller parses that back to a mantissa and scale and takes
    mantissa * Pow10(scale) in float64, which is not always the float nearest the decimal:
    "0.009" becomes 9 * (1/1000) = 0.009000000000000001.
    """
    exact = _exact_quantity(value)
    if exact < 0:
        raise HPAError(f"must be >= 0, got {value!r}")
    mantissa, exponent = math.ceil(exact * 10**9), -9
    if mantissa == 0:
        return 0.0
    while mantissa % 10 == 0:
        mantissa, exponent = mantissa // 10, exponent + 1
    shift = exponent % 3          # the canonical exponent is the multiple of 3 below
    mantissa, exponent = mantissa * 10**shift, exponent - shift
    return float(mantissa) * _pow10(exponent) if exponent else float(mantissa)


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
    """One direction of `behavior` (HPAScalingRules) after the API server's defaulting."""

    stabilization_window_s: int | None   # None (scale-down only): the controller's downscale stabilization
    policies: tuple[ScalingPolicy, ...]
    select_policy: SelectPolicy = "Max"
    tolerance: float | None = None       # per-direction tolerance (1.33+); None = the controller's

    def __post_init__(self) -> None:
        if self.select_policy not in ("Max", "Min", "Disabled"):
            raise HPAError(f"selectPolicy must be Max, Min or Disabled, got {self.select_policy!r}")
        window = self.stabilization_window_s
        if window is not None and not 0 <= window <= 3600:
            raise HPAError(f"stabilizationWindowSeconds must be in [0, 3600], got {window}")
        if not self.policies:
            raise HPAError("policies: must specify at least one Policy")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise HPAError(f"tolerance must be >= 0, got {self.tolerance}")

    @property
    def longest_period_s(self) -> int:
        return max(p.period_s for p in self.policies)


def default_scale_up() -> ScalingRules:
    """Upstream default: no window; double or add 4 pods per 15 s, whichever is more."""
    return ScalingRules(0, (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)), "Max")


def default_scale_down() -> ScalingRules:
    """Upstream default: the controller's downscale stabilization; all surplus pods per 15 s."""
    return ScalingRules(None, (ScalingPolicy("Percent", 100, 15),), "Max")


@dataclass(frozen=True, slots=True)
class Behavior:
    """spec.behavior as the API server stores it: an omitted direction gets the defaults."""

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


# The kube-controller-manager settings an HPASpec carries (flags --horizontal-pod-autoscaler-*).
CONTROLLER_SETTINGS = ("sync_period_s", "tolerance", "downscale_stabilization_s", "cpu_initialization_period_s",
                       "initial_readiness_delay_s")


@dataclass(frozen=True, slots=True)
class HPASpec:
    """One HPA object and the controller that runs it.

    The first fields are the object's spec; `behavior` None means the object has none (the
    controller's legacy path), which is not the same as the default behavior rules. The rest are
    the controller's: its release and its flags, with upstream's defaults.
    """

    min_replicas: int = 1
    max_replicas: int = 10
    metrics: tuple[MetricTarget, ...] = (MetricTarget("Resource", "cpu", "Utilization", 80),)
    behavior: Behavior | None = None
    kubernetes_version: str = DEFAULT_RELEASE
    sync_period_s: float = DEFAULT_SYNC_PERIOD_S                          # ...-sync-period
    tolerance: float = DEFAULT_TOLERANCE                                  # ...-tolerance
    downscale_stabilization_s: float = DEFAULT_DOWNSCALE_STABILIZATION_S  # ...-downscale-stabilization
    cpu_initialization_period_s: float = DEFAULT_CPU_INITIALIZATION_PERIOD_S  # ...-cpu-initialization-period
    initial_readiness_delay_s: float = DEFAULT_INITIAL_READINESS_DELAY_S  # ...-initial-readiness-delay
    name: str = ""
    target: str = ""  # scaleTargetRef.name
    # When the controller first reconciles this HPA, from when the caller starts it (None: as the
    # release does, enqueueHPA: 1.37 at once, 1.32-1.36 one sync period later). The simulator and
    # the local autoscaler then reconcile every sync period after it.
    first_sync_s: float | None = None

    @property
    def first_reconcile_s(self) -> float:
        if self.first_sync_s is not None:
            return self.first_sync_s
        return 0.0 if self.minor >= 37 else self.sync_period_s

    def __post_init__(self) -> None:
        object.__setattr__(self, "kubernetes_version", kubernetes_release(self.kubernetes_version))
        if self.first_sync_s is not None and not 0 <= self.first_sync_s < math.inf:
            raise HPAError(f"first_sync_s must be a finite number >= 0, got {self.first_sync_s}")
        if self.min_replicas < 1:
            raise HPAError(f"minReplicas must be >= 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise HPAError(f"maxReplicas ({self.max_replicas}) must be >= minReplicas ({self.min_replicas})")
        if not self.metrics:
            raise HPAError("an HPA needs at least one metric")
        if not self.sync_period_s > 0:
            raise HPAError(f"sync period must be > 0, got {self.sync_period_s}")
        for setting in CONTROLLER_SETTINGS[1:]:
            value = getattr(self, setting)
            if not 0 <= value < math.inf:
                raise HPAError(f"{setting} must be a finite number >= 0, got {value}")
        if self.minor < 33 and self.behavior is not None:
            for direction, rules in (("scaleUp", self.behavior.scale_up), ("scaleDown", self.behavior.scale_down)):
                if rules.tolerance is not None:
                    raise HPAError(f"spec.behavior.{direction}.tolerance: not in Kubernetes {self.kubernetes_version}"
                                   " (added in 1.33)")

    @property
    def minor(self) -> int:
        return int(self.kubernetes_version.split(".")[1])

    @staticmethod
    def from_manifest(manifest: Mapping[str, Any], **controller: Any) -> "HPASpec":
        """Read an `autoscaling/v2` HorizontalPodAutoscaler object (as parsed from YAML), with
        the API server's defaults for everything omitted; `controller` sets kubernetes_version
        and the CONTROLLER_SETTINGS."""
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
                       name=str((manifest.get("metadata") or {}).get("name", "")),
                       target=str((spec.get("scaleTargetRef") or {}).get("name", "")), **controller)


def load_hpa_manifests(path: str | Path, **controller: Any) -> list[HPASpec]:
    """Every HorizontalPodAutoscaler in a (multi-document) YAML file; other kinds are skipped."""
    documents = yaml.safe_load_all(Path(path).read_text(encoding="utf-8"))
    return [HPASpec.from_manifest(doc, **controller) for doc in documents
            if isinstance(doc, Mapping) and doc.get("kind") == "HorizontalPodAutoscaler"]


def find_hpa(path: str | Path, name: str | None = None, **controller: Any) -> HPASpec:
    """The HPA named `name` (metadata.name or scaleTargetRef.name) in a manifest file;
    without a name the file must hold exactly one."""
    specs = load_hpa_manifests(path, **controller)
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


_RULE_KEYS = {"stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance"}


def _rules_from_manifest(raw: Any, default: ScalingRules, where: str) -> ScalingRules:
    """GenerateHPAScale{Up,Down}Rules: every field the manifest leaves out (or null) is the default's."""
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        raise HPAError(f"{where}: must be a mapping")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise HPAError(f"{where}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(_RULE_KEYS))})")
    policies = default.policies
    if raw.get("policies") is not None:
        try:
            policies = tuple(ScalingPolicy(p["type"], _integer(p["value"]), _integer(p["periodSeconds"]))
                             for p in raw["policies"])
        except (KeyError, TypeError) as exc:
            raise HPAError(f"{where}.policies: each policy needs type, value, periodSeconds ({exc})") from None
        except HPAError as exc:
            raise HPAError(f"{where}.policies: {exc}") from None
    window, tolerance = raw.get("stabilizationWindowSeconds"), raw.get("tolerance")
    try:
        return ScalingRules(stabilization_window_s=default.stabilization_window_s if window is None else _integer(window),
                            policies=policies, select_policy=raw.get("selectPolicy") or default.select_policy,
                            tolerance=None if tolerance is None else approximate_float64(tolerance))
    except HPAError as exc:
        raise HPAError(f"{where}: {exc}") from None


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HPAError(f"expected an integer, got {value!r}")
    return value


def _behavior_from_manifest(raw: Any) -> Behavior | None:
    """SetDefaults_HorizontalPodAutoscalerBehavior: no behavior stays none; a behavior, even an
    empty one, gets both directions filled in."""
    if raw is None:
        return None
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

    For cpu the controller distrusts samples around a pod's start (groupPods); it reads, on the
    caller's clock: `started_at` (status.startTime; None: long ago and readiness unchanged since,
    so `ready` alone decides), `ready_changed_at` (the Ready condition's lastTransitionTime;
    None: at the start) and `window_start` (the CPU sample's timestamp minus its window; None:
    before everything).
    """

    name: str
    ready: bool = True
    phase: Literal["Pending", "Running", "Failed"] = "Running"
    deleting: bool = False
    values: Mapping[str, float] = field(default_factory=dict)
    requests: Mapping[str, float] = field(default_factory=dict)
    started_at: float | None = None
    ready_changed_at: float | None = None
    window_start: float | None = None


def metric_averages(pods: Iterable[PodSample]) -> dict[str, float]:
    """Each metric's mean over the pods that report it (what `kubectl get hpa` shows as current)."""
    values: dict[str, list[float]] = {}
    for pod in pods:
        for name, value in pod.values.items():
            values.setdefault(name, []).append(value)
    return {name: sum(samples) / len(samples) for name, samples in sorted(values.items())}


class MetricUnavailable(Exception):
    """No usable sample for a metric (upstream: the metric is invalid this sync)."""


@dataclass(frozen=True, slots=True)
class _PodGroups:
    ready: dict[str, int]      # pod -> metric (milli-units)
    unready: set[str]
    missing: set[str]


def _cpu_sample_untrusted(pod: PodSample, now: float, spec: HPASpec) -> bool:
    """groupPods' cpu rule: within the CPU initialization period after the pod started, a sample
    counts only from a ready pod and only if its window began after the last readiness change;
    later, only a pod that has never been ready since its start is ignored."""
    if pod.started_at is None:
        return not pod.ready
    changed = pod.started_at if pod.ready_changed_at is None else pod.ready_changed_at
    if pod.started_at + spec.cpu_initialization_period_s > now:
        window_start = -math.inf if pod.window_start is None else pod.window_start
        return not pod.ready or window_start < changed
    return not pod.ready and pod.started_at + spec.initial_readiness_delay_s > changed


def _group_pods(pods: Iterable[PodSample], metric: MetricTarget, now: float, spec: HPASpec) -> _PodGroups:
    """groupPods(): failed / deleting pods are ignored, pending pods are unready, pods without
    a sample are missing, and for cpu an untrusted sample makes its pod unready."""
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
        if metric.kind == "Resource" and metric.name == "cpu" and _cpu_sample_untrusted(pod, now, spec):
            unready.add(pod.name)
            continue
        ready[pod.name] = milli(value)
    return _PodGroups(ready, unready, missing)


def tolerances(spec: HPASpec) -> tuple[float, float]:
    """tolerancesForHpa: (scale-down, scale-up) tolerance; a per-direction one in `behavior`
    replaces the controller's where the release honours it (HPAConfigurableTolerance, 1.35+)."""
    down = up = spec.tolerance
    if spec.behavior is not None and spec.minor >= 35:
        if spec.behavior.scale_down.tolerance is not None:
            down = spec.behavior.scale_down.tolerance
        if spec.behavior.scale_up.tolerance is not None:
            up = spec.behavior.scale_up.tolerance
    return down, up


def within_tolerance(ratio: float, spec: HPASpec) -> bool:
    """The no-change test of the release: 1.33+ Tolerances.isWithin, 1.32 |1 - ratio| <= tolerance."""
    if spec.minor >= 33:
        down, up = tolerances(spec)
        return (1.0 - down) <= ratio <= (1.0 + up)
    return abs(1.0 - ratio) <= spec.tolerance


def replicas_for_metric(spec: HPASpec, metric: MetricTarget, current_replicas: int,
                        pods: list[PodSample], now: float = math.inf) -> int:
    """GetResourceReplicas / calcPlainMetricReplicas for one metric; raises MetricUnavailable.
    `now` matters only for the cpu readiness rule (default: long after every pod started)."""
    groups = _group_pods(pods, metric, now, spec)
    values = dict(groups.ready)
    if not values:
        raise MetricUnavailable(f"no ready pod reports {metric.name!r}")
    ready_count = len(values)
    if metric.target_type == "Utilization":
        without = next((p.name for p in pods if metric.name not in p.requests), None)
        if without is not None:   # calculateRequests: every pod of the target needs the request
            raise MetricUnavailable(f"missing request for {metric.name} in pod {without}")
        requests = {p.name: milli(p.requests[metric.name]) for p in pods}
        target = int(metric.value)

        def ratio_of(sample: dict[str, int]) -> float:   # GetResourceUtilizationRatio
            total_request = sum(requests[n] for n in sample)
            if total_request == 0:
                raise MetricUnavailable(f"pods have no {metric.name!r} request")
            current = (sum(sample.values()) * 100) // total_request  # int32 percent, truncated
            return current / target
        fallback = {n: requests[n] * max(100, target) // 100 for n in groups.missing}
    else:
        target = milli(metric.value)

        def ratio_of(sample: dict[str, int]) -> float:   # GetMetricUsageRatio
            return (sum(sample.values()) // len(sample)) / target
        fallback = {n: target for n in groups.missing}

    ratio = ratio_of(values)
    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if within_tolerance(ratio, spec):
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
    if within_tolerance(new_ratio, spec) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
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
        if decision.desired != current_replicas and self.spec.behavior is not None:
            self._store_scale_event(now, current_replicas, decision.desired)
        return decision.desired

    def decide(self, now: float, current: int, pods: list[PodSample]) -> Decision:
        """reconcileAutoscaler up to the scale update (records this sync's recommendation)."""
        spec = self.spec
        if not self._recommendations:  # recordInitialRecommendation: the first reconcile only
            self._recommendations.append(_Recommendation(current, now))
        if current == 0:
            return Decision(0, None, "ScalingDisabled: the target is scaled to zero")
        if current > spec.max_replicas:
            return Decision(spec.max_replicas, None, "current above maxReplicas")
        if current < spec.min_replicas:
            return Decision(spec.min_replicas, None, "current below minReplicas")
        proposal = self._metric_proposal(now, current, pods)
        if proposal is None:
            return Decision(current, None, "metrics unavailable: no change")
        if spec.behavior is None:
            desired, reason = self._normalize_legacy(now, current, proposal)
        else:
            desired, reason = self._apply_rate_limits(now, current, self._stabilize(now, current, proposal))
        return Decision(desired, proposal, reason)

    def _metric_proposal(self, now: float, current: int, pods: list[PodSample]) -> int | None:
        """computeReplicasForMetrics: max over metrics; invalid metrics block scale-down."""
        best, invalid = 0, 0
        for metric in self.spec.metrics:
            try:
                best = max(best, replicas_for_metric(self.spec, metric, current, pods, now))
            except MetricUnavailable:
                invalid += 1
        if invalid >= len(self.spec.metrics) or (invalid and best < current):
            return None
        return best

    def _window_bounds(self, now: float, desired: int, up_window_s: float, down_window_s: float) -> tuple[int, int]:
        """The lowest recommendation younger than the scale-up window and the highest younger
        than the scale-down window, this sync's `desired` included; then `desired` is recorded
        in the slot of one older than both windows, or appended (upstream reuses one slot)."""
        low = high = desired
        expired = None
        for index, rec in enumerate(self._recommendations):
            age = now - rec.at
            if age < up_window_s:
                low = min(low, rec.replicas)
            if age < down_window_s:
                high = max(high, rec.replicas)
            if age >= up_window_s and age >= down_window_s:
                expired = index
        if expired is None:
            self._recommendations.append(_Recommendation(desired, now))
        else:
            self._recommendations[expired] = _Recommendation(desired, now)
        return low, high

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        """stabilizeRecommendationWithBehaviors: the min over the scale-up window bounds
        from below, the max over the scale-down window bounds from above."""
        behavior = self.spec.behavior
        assert behavior is not None
        down_window = behavior.scale_down.stabilization_window_s
        if down_window is None:   # maybeInitScaleDownStabilizationWindow: the flag, whole seconds
            down_window = int(self.spec.downscale_stabilization_s)
        up, down = self._window_bounds(now, desired, behavior.scale_up.stabilization_window_s or 0, down_window)
        return min(max(current, up), down)

    def _normalize_legacy(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """normalizeDesiredReplicas: stabilizeRecommendation (the highest recommendation of the
        downscale stabilization), then convertDesiredReplicasWithRules (calculateScaleUpLimit)."""
        spec = self.spec
        _, stabilized = self._window_bounds(now, desired, 0.0, spec.downscale_stabilization_s)
        scale_up_limit = int(max(2.0 * current, 4.0))
        if spec.max_replicas > scale_up_limit:
            maximum, reason = scale_up_limit, "ScaleUpLimit"
        else:
            maximum, reason = spec.max_replicas, "TooManyReplicas"
        if stabilized < spec.min_replicas:
            return spec.min_replicas, "TooFewReplicas"
        if stabilized > maximum:
            return maximum, reason
        return stabilized, "DesiredWithinRange"

    def _apply_rate_limits(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """convertDesiredReplicasWithBehaviorRate."""
        spec = self.spec
        if desired > current:
            limit = max(self._scale_up_limit(now, current), current)
            if spec.max_replicas > limit:
                return (limit, "ScaleUpLimit") if desired > limit else (desired, "DesiredWithinRange")
            return (spec.max_replicas, "TooManyReplicas") if desired > spec.max_replicas else (desired, "DesiredWithinRange")
        if desired < current:
            limit = min(self._scale_down_limit(now, current), current)
            if spec.min_replicas < limit:
                return (limit, "ScaleDownLimit") if desired < limit else (desired, "DesiredWithinRange")
            return (spec.min_replicas, "TooFewReplicas") if desired < spec.min_replicas else (desired, "DesiredWithinRange")
        return desired, "DesiredWithinRange"

    def _period_start(self, now: float, current: int, period_s: int) -> int:
        """getReplicasChangePerPeriod: the replica count before this period's scale events."""
        added = sum(e.change for e in self._up_events if now - e.at < period_s)
        deleted = sum(e.change for e in self._down_events if now - e.at < period_s)
        return current - added + deleted

    def _scale_up_limit(self, now: float, current: int) -> int:
        """calculateScaleUpLimitWithScalingRules."""
        assert self.spec.behavior is not None
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
        """calculateScaleDownLimitWithBehaviors."""
        assert self.spec.behavior is not None
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
        """storeScaleEvent: an event as old as the direction's longest policy period is
        outdated (markScaleEventsOutdated) and the last such slot is reused."""
        assert self.spec.behavior is not None
        up = new > previous
        events = self._up_events if up else self._down_events
        longest = (self.spec.behavior.scale_up if up else self.spec.behavior.scale_down).longest_period_s
        event = _ScaleEvent(abs(new - previous), now)
        outdated = [index for index, old in enumerate(events) if now - old.at >= longest]
        if outdated:
            events[outdated[-1]] = event
        else:
            events.append(event)


__all__ = ["metric_averages", "Behavior", "CONTROLLER_SETTINGS", "DEFAULT_RELEASE", "Decision", "HPAController", "HPAError", "HPASpec",
           "MetricTarget", "MetricUnavailable", "PodSample", "RELEASES", "ScalingPolicy", "ScalingRules",
           "approximate_float64", "find_hpa", "kubernetes_release", "load_hpa_manifests", "parse_quantity",
           "replicas_for_metric", "tolerances", "within_tolerance"]
