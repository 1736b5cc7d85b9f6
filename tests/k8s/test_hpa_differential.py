"""Test group 3: the real HPA controller against edgeoffload.hpa, sync by sync.

kube-controller-manager (deployment, replicaset and horizontal-pod-autoscaler controllers, a
1.4 s sync period) scales kwok Deployments whose pods' metrics this test serves through the
aggregation layer (tests/k8s/metricsapi.py). Each HPA sync reads the metrics once per metric, so
the test's server sees every sync: it records the Deployment's scale, the pods and the values it
served. edgeoffload.hpa is then fed the same sequence and must set the same replicas as the
controller did, at every sync. The cases: the HPAs of autoscale.yml (verbatim, and with windows
and periods at 1/15 so they act within the test) and HPA_CASES generated ones (behavior absent,
empty or random windows / Pods and Percent policies / selectPolicy / per-direction tolerance;
one to three metrics among two custom Pods metrics and CPU; noise, missing samples, exact
tolerance edges).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
from controlplane import DOWNSCALE_STABILIZATION_S, HPA_SYNC_PERIOD_S, ControlPlane, wait_for
from hpacases import (CPU_REQUEST_M, SYNCS, Case, Difference, PodView, Sync, autoscale_cases, generated_case, replay,
                      save_recording)
from metricsapi import MetricsServer, api_service_objects, serving_hosts

HPA_CASES = int(os.environ.get("EDGEOFFLOAD_K8S_HPA_CASES", "40"))
BATCH = int(os.environ.get("EDGEOFFLOAD_K8S_HPA_BATCH", "12"))
CASES = autoscale_cases() + [generated_case(seed) for seed in range(HPA_CASES)]
# What kube-controller-manager runs with (controlplane.HPA_FLAGS; the rest are upstream
# defaults); its release is asked of the API server.
CONTROLLER = {"sync_period_s": HPA_SYNC_PERIOD_S, "tolerance": 0.1, "downscale_stabilization_s": DOWNSCALE_STABILIZATION_S}
NEW_SYNC_AFTER_S = 0.5   # requests for one HPA closer than this belong to one sync
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"


@dataclass
class CaseRun:
    case: Case
    namespace: str
    syncs: list[Sync] = field(default_factory=list)
    last_at: float = -1.0
    finished: bool = False   # its HPA and Deployment are being deleted: a late sync is not recorded
    lock: threading.Lock = field(default_factory=threading.Lock)


class Recorder:
    """The metrics script: values from each case's load script, and a record of every sync."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.runs: dict[str, CaseRun] = {}
        self.server: MetricsServer | None = None

    def __call__(self, namespace: str, metric: str, selector: str) -> tuple[Mapping[str, int], Any]:
        run = self.runs[namespace]
        with run.lock:
            if run.finished:     # a reconcile that started before the HPA was deleted: no pods to read
                return {}, len(run.syncs)
            if not run.syncs or time.monotonic() - run.last_at > NEW_SYNC_AFTER_S:
                run.syncs.append(self._observe(run, selector))
            run.last_at = time.monotonic()
            sync = run.syncs[-1]
            index = len(run.syncs) - 1
            names = [p.name for p in sync.pods if not p.deleting]
            values = run.case.values(index, metric, names)
            sync.values[metric] = values
            return values, index

    def _observe(self, run: CaseRun, selector: str) -> Sync:
        """The scale and the pods, as the sync being served sees them. Its time is taken once
        they are read, just before the answer: the controller stamps its records after it."""
        scale = self.apps.read_namespaced_deployment_scale("target", run.namespace).spec.replicas
        pods = self.core.list_namespaced_pod(run.namespace, label_selector=selector).items
        return Sync(time.monotonic(), int(scale or 0), tuple(_pod_view(p) for p in pods))


def _pod_view(pod: Any) -> PodView:
    conditions = pod.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return PodView(pod.metadata.name, pod.status.phase or "Pending", ready, pod.metadata.deletion_timestamp is not None,
                   CPU_REQUEST_M)


@pytest.fixture(scope="module")
def recorder(control_plane: ControlPlane, api: Any, kwok_node: str) -> Iterator[Recorder]:
    """The metrics APIs served by this process and registered with the aggregator; Available."""
    from kubernetes import client, utils

    recorder = Recorder(api)
    cert, key = control_plane.ca.issue("metrics-api", "metrics-api", hosts=serving_hosts("kube-system"))
    server = MetricsServer(recorder, str(cert), str(key), str(control_plane.front_proxy_ca.cert_path)).start()
    recorder.server = server
    objects = api_service_objects("kube-system", server.port, control_plane.ca.pem)
    utils.create_from_dict(api, objects[0])
    registration = client.ApiregistrationV1Api(api)
    for service in objects[1:]:
        registration.create_api_service(service)

    def available() -> bool:
        return all(any(c.type == "Available" and c.status == "True" for c in
                       (registration.read_api_service(s["metadata"]["name"]).status.conditions or []))
                   for s in objects[1:])

    wait_for(available, 60, "the metrics APIServices Available", list(control_plane.processes.values()), 0.5)
    yield recorder
    for service in objects[1:]:
        registration.delete_api_service(service["metadata"]["name"])
    server.stop()
    assert not server.errors, server.errors


def deployment(namespace: str, replicas: int, node: str) -> dict[str, Any]:
    labels = {"app": "target"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "target", "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                                           "containers": [{"name": "main", "image": "kwok.invalid/none",
                                                           "resources": {"requests": {"cpu": f"{CPU_REQUEST_M}m"}}}]}}}}


def run_batch(recorder: Recorder, api: Any, node: str, batch: list[tuple[int, Case]]) -> None:
    from kubernetes import client, utils

    core, autoscaling = client.CoreV1Api(api), client.AutoscalingV2Api(api)
    runs = []
    for number, case in batch:
        namespace = f"hpa-{number}"
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        utils.create_from_dict(api, deployment(namespace, case.initial_replicas, node))
        runs.append(CaseRun(case, namespace))

    def ready(run: CaseRun) -> bool:
        pods = core.list_namespaced_pod(run.namespace, label_selector="app=target").items
        return sum(_pod_view(p).ready for p in pods) == run.case.initial_replicas == len(pods)

    wait_for(lambda: all(ready(r) for r in runs), 120, "kwok pods Ready")
    for run in runs:
        recorder.runs[run.namespace] = run
        autoscaling.create_namespaced_horizontal_pod_autoscaler(run.namespace, run.case.manifest(run.namespace, "target"))
    wait_for(lambda: all(len(r.syncs) > SYNCS for r in runs), SYNCS * HPA_SYNC_PERIOD_S * 4 + 60,
             f"{SYNCS + 1} HPA syncs per case", interval=0.5)
    for run in runs:
        with run.lock:
            run.finished = True
        autoscaling.delete_namespaced_horizontal_pod_autoscaler("target", run.namespace)
        client.AppsV1Api(api).delete_namespaced_deployment("target", run.namespace, propagation_policy="Background")


@pytest.fixture(scope="module")
def differences(recorder: Recorder, api: Any, kwok_node: str, artifacts_dir: Path) -> dict[str, list[Difference]]:
    """Run every case, keep the recording (test-artifacts/hpa-differential.json) and replay it."""
    numbered = list(enumerate(CASES))
    for start in range(0, len(numbered), BATCH):
        run_batch(recorder, api, kwok_node, numbered[start:start + BATCH])
    runs = [(run.case, run.syncs[:SYNCS + 1]) for run in recorder.runs.values()]
    save_recording(artifacts_dir / "hpa-differential.json", runs)
    from kubernetes import client

    controller = {**CONTROLLER, "kubernetes_version": client.VersionApi(api).get_code().git_version}
    return {case.id: replay(case, syncs, controller) for case, syncs in runs}


def test_the_controller_reads_the_metrics_as_its_service_account(recorder: Recorder,
                                                                differences: Mapping[str, Any]) -> None:
    users = {entry.user for entry in recorder.server.served}
    assert users == {HPA_USER}


def test_the_cases_make_the_controller_scale_both_ways(recorder: Recorder, differences: Mapping[str, Any]) -> None:
    """The comparison means something only if the controller acts: most cases change the count."""
    ups = downs = changed = 0
    for run in recorder.runs.values():
        counts = [s.current for s in run.syncs[:SYNCS + 1]]
        steps = [b - a for a, b in zip(counts, counts[1:])]
        ups += sum(d > 0 for d in steps)
        downs += sum(d < 0 for d in steps)
        changed += any(steps)
    assert changed >= 0.75 * len(recorder.runs), f"only {changed} of {len(recorder.runs)} cases scaled"
    assert ups >= len(recorder.runs) // 2 and downs >= len(recorder.runs) // 4, (ups, downs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_edgeoffload_hpa_sets_the_replicas_the_real_controller_sets(differences: Mapping[str, list[Difference]],
                                                                   case: Case) -> None:
    assert case.id in differences, f"{case.id}: not run"
    real = [str(d) for d in differences[case.id] if not d.boundary]
    assert not real, real


def test_clock_boundaries_decide_few_syncs(differences: Mapping[str, list[Difference]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Where a record's age is within a few ms of a window or period, the controller's clock
    decides and the replay follows it; with a 1.4 s sync period against whole-second windows
    that must stay rare, or the comparison would prove little."""
    boundary = [d for found in differences.values() for d in found if d.boundary]
    with capsys.disabled():
        print(f"\nHPA differential: {len(differences)} cases x {SYNCS} syncs; at a clock boundary: {len(boundary)}"
              + "".join(f"\n  {d}" for d in boundary))
    assert len(boundary) <= 0.02 * len(differences) * SYNCS, boundary
