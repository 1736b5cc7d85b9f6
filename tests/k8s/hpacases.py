"""HPA cases for the differential test: the HPA objects, their scripted metrics, and the replay of
what the real controller saw through edgeoffload.hpa.

A case is an HPA (from autoscale.yml, time-scaled or verbatim, or generated from a seed), the
replica count its Deployment starts with, and a load script: per sync, a level (the metric as a
multiple of its target) from which each pod's value is drawn with per-pod noise; some pods can
go without a sample. The values depend only on (case, sync, metric, pod rank), so the script is
deterministic while pod names are the cluster's.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from edgeoffload.hpa import HPAController, HPASpec, PodSample, parse_quantity
from edgeoffload.unitfolders import autoscale_file

IN_FLIGHT = "edgeoffload_inference_in_flight"
QUEUED = "edgeoffload_test_queued"
CPU_REQUEST_M = 500
SYNCS = 14
# Exact tolerance edges (1 +/- 0.1), where releases differ, are drawn on purpose.
EDGE_LEVELS = (1.1, 0.9, 1.0)


@dataclass(frozen=True)
class Case:
    id: str
    spec: Mapping[str, Any]            # the HPA's spec without scaleTargetRef
    initial_replicas: int
    levels: tuple[float, ...]          # per sync: metric value / target
    noise: float = 0.0                 # per-pod relative spread around the level
    missing: float = 0.0               # chance that a pod has no sample for a metric at a sync

    def manifest(self, namespace: str, target: str) -> dict[str, Any]:
        spec = {**copy.deepcopy(dict(self.spec)),
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}}
        return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": target, "namespace": namespace}, "spec": spec}

    def target_milli(self, metric: str) -> int:
        """The metric's target per pod in milli-units (cpu: millicores)."""
        for entry in self.spec.get("metrics") or ():
            body = entry.get("resource") or entry.get("pods") or {}
            name = body.get("name") or (body.get("metric") or {}).get("name")
            if name != metric:
                continue
            target = body["target"]
            if target["type"] == "Utilization":
                return CPU_REQUEST_M * int(target["averageUtilization"]) // 100
            return math.ceil(round(parse_quantity(target["averageValue"]) * 1000, 6))
        raise KeyError(f"{self.id}: no metric {metric!r}")

    def values(self, sync: int, metric: str, pods: Sequence[str]) -> dict[str, int]:
        """Milli-values for the pods (sorted names; the rank decides), None-free: missing pods are left out."""
        level = self.levels[min(sync, len(self.levels) - 1)]
        target = self.target_milli(metric)
        served: dict[str, int] = {}
        for rank, pod in enumerate(sorted(pods)):
            rng = random.Random(f"{self.id}:{sync}:{metric}:{rank}")
            if self.missing and rng.random() < self.missing:
                continue
            spread = 0.0 if level in EDGE_LEVELS else self.noise * (2 * rng.random() - 1)
            served[pod] = max(0, round(target * level * (1 + spread)))
        return served


# ------------------------------------------------------------------ cases from autoscale.yml
def _scaled_rules(rules: Mapping[str, Any], factor: int) -> dict[str, Any]:
    scaled = copy.deepcopy(dict(rules))
    if "stabilizationWindowSeconds" in scaled:
        scaled["stabilizationWindowSeconds"] = scaled["stabilizationWindowSeconds"] // factor
    for policy in scaled.get("policies") or ():
        policy["periodSeconds"] = max(1, policy["periodSeconds"] // factor)
    return scaled


def autoscale_cases(time_scale: int = 15) -> list[Case]:
    """The shipped HPAs: verbatim, and with every window and period divided by `time_scale`
    (the default sync period of 15 s becomes the test's 1 s, so the HPAs act as in a cluster)."""
    cases: list[Case] = []
    hpas = [d for d in yaml.safe_load_all(autoscale_file().read_text(encoding="utf-8"))
            if d and d.get("kind") == "HorizontalPodAutoscaler"]
    levels = (3.0, 2.5, 2.0, 1.5, 1.1, 1.0, 0.9, 0.6, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2)
    for hpa in hpas:
        spec = {k: v for k, v in hpa["spec"].items() if k != "scaleTargetRef"}
        name = hpa["metadata"]["name"]
        cases.append(Case(f"autoscale-{name}", spec, spec.get("minReplicas", 1), levels, noise=0.2))
        scaled = {**spec, "behavior": {direction: _scaled_rules(rules, time_scale)
                                       for direction, rules in spec["behavior"].items()}}
        cases.append(Case(f"autoscale-{name}-x{time_scale}", scaled, spec.get("minReplicas", 1), levels, noise=0.2))
    return cases


# ------------------------------------------------------------------ generated cases
def _metric(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "cpu-utilization":
        return {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": rng.choice((40, 50, 60, 70, 80, 90))}}}
    if kind == "cpu-average":
        return {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "AverageValue", "averageValue": rng.choice(("200m", "250m", "400m"))}}}
    name = IN_FLIGHT if kind == "in-flight" else QUEUED
    return {"type": "Pods", "pods": {"metric": {"name": name}, "target": {
        "type": "AverageValue", "averageValue": rng.choice(("500m", "1", "2", "3", "8"))}}}


def _rules(rng: random.Random) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    if rng.random() < 0.8:
        rules["stabilizationWindowSeconds"] = rng.choice((0, 0, 1, 2, 3, 5))
    if rng.random() < 0.8:
        rules["policies"] = [
            {"type": "Pods", "value": rng.randint(1, 4), "periodSeconds": rng.randint(1, 5)}
            if rng.random() < 0.5 else
            {"type": "Percent", "value": rng.choice((10, 25, 50, 100, 200)), "periodSeconds": rng.randint(1, 5)}
            for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.7:
        rules["selectPolicy"] = rng.choices(("Max", "Min", "Disabled"), (5, 3, 1))[0]
    if rng.random() < 0.3:
        rules["tolerance"] = rng.choice(("0", "0.05", "0.2", "500m"))
    return rules


def _levels(rng: random.Random) -> tuple[float, ...]:
    level, levels = rng.uniform(0.3, 2.5), []
    for _ in range(SYNCS):
        roll = rng.random()
        if roll < 0.15:
            levels.append(rng.choice(EDGE_LEVELS))
            continue
        level = min(4.0, max(0.05, level * math.exp(rng.gauss(0, 0.45)) if roll < 0.85 else rng.uniform(0.1, 3.0)))
        levels.append(round(level, 3))
    return tuple(levels)


def generated_case(seed: int) -> Case:
    rng = random.Random(seed)
    minimum = rng.randint(1, 3)
    maximum = minimum + rng.randint(0, 6)
    kinds = rng.sample(("in-flight", "queued", "cpu-utilization", "cpu-average"), rng.choice((1, 1, 2, 2, 3)))
    if "cpu-utilization" in kinds and "cpu-average" in kinds:
        kinds.remove("cpu-average")
    spec: dict[str, Any] = {"minReplicas": minimum, "maxReplicas": maximum, "metrics": [_metric(rng, k) for k in kinds]}
    shape = rng.choices(("none", "empty", "rules"), (3, 1, 6))[0]
    if shape == "empty":
        spec["behavior"] = {}
    elif shape == "rules":
        spec["behavior"] = {d: _rules(rng) for d in ("scaleUp", "scaleDown") if rng.random() < 0.85}
    # Within [min, max]: a sync that only brings the count back inside reads no metric, so the
    # test could not see it (and the model's record of it could not be aligned).
    initial = rng.randint(minimum, maximum)
    return Case(f"seed-{seed}-{shape}-{'+'.join(kinds)}", spec, initial, _levels(rng),
                noise=rng.choice((0.0, 0.1, 0.3, 0.5)), missing=rng.choice((0.0, 0.0, 0.0, 0.15)))


# ------------------------------------------------------------------ what the controller saw, replayed
@dataclass(frozen=True)
class PodView:
    name: str
    phase: str
    ready: bool
    deleting: bool
    cpu_request_m: int


@dataclass
class Sync:
    """One sync of one HPA, as the test's metrics server saw it."""

    at: float
    current: int                                   # the Deployment's spec.replicas (the scale)
    pods: tuple[PodView, ...]
    values: dict[str, dict[str, int]] = field(default_factory=dict)   # metric -> pod -> milli


@dataclass(frozen=True)
class Difference:
    case: str
    sync: int
    current: int
    expected: int     # what the real controller set (spec.replicas seen at the next sync)
    got: int          # what edgeoffload.hpa decided
    reason: str       # edgeoffload.hpa's reason, and its metric proposal
    boundary: bool = False   # only a record at a window / period boundary decided (clock jitter)

    def __str__(self) -> str:
        return (f"{self.case}, sync {self.sync}: current {self.current}, the controller set {self.expected}, "
                f"edgeoffload.hpa {self.got} ({self.reason}){' at a time boundary' if self.boundary else ''}")


def pod_samples(sync: Sync) -> list[PodSample]:
    samples = []
    for pod in sync.pods:
        values = {metric: served[pod.name] / 1000 for metric, served in sync.values.items() if pod.name in served}
        phase = pod.phase if pod.phase in ("Pending", "Failed") else "Running"
        samples.append(PodSample(pod.name, ready=pod.ready, phase=phase, deleting=pod.deleting, values=values,
                                 requests={"cpu": pod.cpu_request_m / 1000}))
    return samples


def hpa_spec(case: Case, controller: Mapping[str, Any]) -> HPASpec:
    """The case's HPA for edgeoffload.hpa, run with the controller's release and flags."""
    return HPASpec.from_manifest(case.manifest("ns", "target"), **controller)


# How far the controller's time stamp of a recommendation may be from the test's time of that
# sync. Later recommendations are stamped after the metrics were served, within milliseconds;
# the first reconcile's (recordInitialRecommendation in reconcileAutoscaler) before the
# controller reads the scale, lists the pods and fetches the metrics through the aggregator,
# which took over 70 ms on this 2-vCPU machine at a load of 4 (a scale-up window of 3 s let
# the controller scale 2.93 s after the test saw the first sync).
BOUNDARY_S = 0.3


def replay(case: Case, syncs: Sequence[Sync], controller: Mapping[str, Any]) -> list[Difference]:
    """Feed edgeoffload.hpa what the real controller saw, sync by sync, at the times the test saw
    each sync, and compare its decision with the replicas the controller set (the scale the next
    sync read). Returns the first real disagreement, or [] — preceded by the syncs where the two
    disagree only at a window or period boundary (a record whose age is within BOUNDARY_S of it:
    the controller's own clock decided), where the replay continues as the controller went."""
    model = HPAController(hpa_spec(case, controller))
    boundary: list[Difference] = []
    start = syncs[0].at if syncs else 0.0
    for index, (sync, following) in enumerate(zip(syncs, syncs[1:])):
        now, samples = sync.at - start, pod_samples(sync)
        before = copy.deepcopy(model)
        got = model.step(now, sync.current, samples)
        if got == following.current:
            continue
        difference = _difference(case, index, sync, following, got, model)
        for shifted in (now - BOUNDARY_S, now + BOUNDARY_S):
            alternative = copy.deepcopy(before)
            if alternative.step(shifted, sync.current, samples) == following.current:
                boundary.append(dataclasses.replace(difference, boundary=True))
                model = alternative
                break
        else:
            return [*boundary, difference]
    return boundary


def _difference(case: Case, index: int, sync: Sync, following: Sync, got: int, model: HPAController) -> Difference:
    last = model.last
    reason = f"{last.reason}, metric proposal {last.metric_proposal}" if last else ""
    return Difference(case.id, index, sync.current, following.current, got, reason)


def save_recording(path: Any, runs: Sequence[tuple[Case, Sequence[Sync]]]) -> None:
    """What the controller saw, per case, as JSON: replayable against another edgeoffload.hpa."""
    import json

    path.write_text(json.dumps([{"case": dataclasses.asdict(case), "syncs": [dataclasses.asdict(s) for s in syncs]}
                                for case, syncs in runs], indent=1), encoding="utf-8")


def load_recording(path: Any) -> list[tuple[Case, list[Sync]]]:
    import json

    runs = []
    for entry in json.loads(path.read_text(encoding="utf-8")):
        case = Case(**{**entry["case"], "levels": tuple(entry["case"]["levels"])})
        syncs = [Sync(s["at"], s["current"], tuple(PodView(**p) for p in s["pods"]), s["values"]) for s in entry["syncs"]]
        runs.append((case, syncs))
    return runs
