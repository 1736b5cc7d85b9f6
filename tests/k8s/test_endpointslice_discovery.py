"""Test group 2: the preprocessor's Kubernetes discovery against the real EndpointSlice controller.

EdgeInferenceUnit's own Deployment, ConfigMap and Service are applied to the `edgeoffload`
namespace (Pod Security restricted), the Deployment bound to a kwok node whose podCIDR lives in
a network namespace of the test's (tests/k8s/podnet.py). The test plays the kubelet: for each
pod kwok runs it starts a real inference unit on the pod's IP and port, and sets the pod Ready
once the unit's readiness endpoint answers; when a pod goes, it stops the unit after the
Deployment's preStop wait. The preprocessor's engine (edgeoffload.offload.Offloader) watches the
Service's EndpointSlices with edgeoffload.discovery.EndpointSliceWatch under the preprocessor's
own ServiceAccount token (rbac.yml), while the test scales the Deployment 1 -> 3 -> 1 and feeds
frames: the new pods must get frames, and no frame may be lost on the way down.
"""
from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from controlplane import ControlPlane, wait_for
from podnet import PodNetwork, available
from serverside import Server
from test_deploy import NAMESPACE, objects

from edgeoffload.discovery import EndpointSliceWatch, Replica, kubernetes_api_client
from edgeoffload.load.sample_video import SampleVideoSpec, sample_jpegs
from edgeoffload.local import SiteOptions
from edgeoffload.offload import CLOUD, EDGE, FrameJob, Offloader, SiteConfig
from edgeoffload.policy import load_policy
from edgeoffload.records import FrameRecord
from edgeoffload.serve import UnitProcess, start_unit
from edgeoffload.unitfolders import unit_settings

NODE = "kwok-podnet"
SERVICE = DEPLOYMENT = "edge-inference"
PORT = 8080
PROBE_PORT = 8081   # the Deployment's `probes` containerPort, where the kubelet probes
SELECTOR = "app.kubernetes.io/name=edgeoffload,app.kubernetes.io/component=edge-inference"
PER_REPLICA = 2
SLEEP_PAD_MS = 60.0   # each inference waits this long: replicas add capacity on 2 cores


class Kubelet:
    """What a kubelet would do for the pods on NODE: run each, probe it, report Ready; stop it
    when the pod is gone (after the preStop wait the Deployment ships)."""

    def __init__(self, api: Any, network: PodNetwork, log_dir: Path) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.network = network
        self.log_dir = log_dir
        self.env = SiteOptions(instances=1, sleep_pad_ms=SLEEP_PAD_MS).inference_env(EDGE)
        self.env["INFER_QUEUE_BOUND"] = str(PER_REPLICA)
        self.pre_stop_s = min(unit_settings(DEPLOYMENT).pre_stop_s, 2.0)
        self.units: dict[str, UnitProcess] = {}
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kubelet")

    def start(self) -> "Kubelet":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=60)
        for unit in self.units.values():
            unit.stop()

    def _run(self) -> None:
        while not self._stopping.wait(0.2):
            try:
                self._sync()
            except Exception as exc:   # recorded; the test asserts there were none
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _sync(self) -> None:
        pods = {p.metadata.name: p for p in self.core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items
                if p.spec.node_name == NODE}
        for name, pod in pods.items():
            if name in self.units or pod.metadata.deletion_timestamp or not pod.status.pod_ip:
                continue
            self.network.add(pod.status.pod_ip)
            self.units[name] = start_unit("inference", {**self.env, "HOSTNAME": name}, port=PORT,
                                          probe_port=PROBE_PORT, host=pod.status.pod_ip, log_dir=self.log_dir,
                                          command_prefix=self.network.prefix)
            ready = {"type": "Ready", "status": "True"}
            self.core.patch_namespaced_pod_status(name, NAMESPACE, {"status": {"conditions": [
                ready, {**ready, "type": "ContainersReady"}]}})
        for name in [n for n in self.units if n not in pods or pods[n].metadata.deletion_timestamp]:
            time.sleep(self.pre_stop_s)
            self.units.pop(name).stop()


class WatchedSource:
    """EndpointSliceWatch, remembering each set of replicas it reported."""

    kind = "kubernetes"

    def __init__(self, inner: EndpointSliceWatch) -> None:
        self.inner = inner
        self.reported: list[tuple[Replica, ...]] = []

    def start(self, on_change: Any) -> None:
        def changed(replicas: tuple[Replica, ...]) -> None:
            self.reported.append(replicas)
            on_change(replicas)
        self.inner.start(changed)

    def stop(self) -> None:
        self.inner.stop()

    def status(self) -> dict[str, Any]:
        return self.inner.status()

    def names(self) -> set[str]:
        return {r.name for r in self.reported[-1]} if self.reported else set()


@pytest.fixture(scope="module")
def pod_network() -> Iterator[PodNetwork]:
    reason = available()
    if reason:
        pytest.skip(f"no pod network for the discovery test: {reason}")
    network = PodNetwork().start()
    yield network
    network.stop()


def the_unit(kind: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(next(o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name))


class Site:
    """The running pieces, and the frames' records."""

    def __init__(self, api: Any, source: WatchedSource, offloader: Offloader, kubelet: Kubelet,
                 records: list[FrameRecord]) -> None:
        from kubernetes import client

        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.source, self.offloader, self.kubelet, self.records = source, offloader, kubelet, records
        self.frames = sample_jpegs(SampleVideoSpec(width=160, height=120, frames_per_scene=2))
        self.sent = 0

    def scale(self, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(DEPLOYMENT, NAMESPACE, {"spec": {"replicas": replicas}})

    def pods(self) -> set[str]:
        return {p.metadata.name for p in self.core.list_namespaced_pod(NAMESPACE, label_selector=SELECTOR).items
                if not p.metadata.deletion_timestamp}

    def feed(self, frames: int, fps: float) -> list[int]:
        ids = []
        for _ in range(frames):
            frame_id = self.sent
            self.sent += 1
            self.offloader.submit(FrameJob(camera="k8s", frame_id=frame_id, captured_at=time.time(),
                                           arrived=time.monotonic(), payload=self.frames[frame_id % len(self.frames)]))
            ids.append(frame_id)
            time.sleep(1 / fps)
        assert self.offloader.wait_idle(30), "frames still in flight after 30 s"
        return ids

    def served_by(self, ids: list[int]) -> dict[str, int]:
        wanted = set(ids)
        counts: dict[str, int] = {}
        for record in self.records:
            if record.frame_id in wanted:
                counts[record.replica] = counts.get(record.replica, 0) + 1
        return counts


@pytest.fixture(scope="module")
def site(api: Any, server: Server, namespace: str, preprocessor_kubeconfig: Path, kwok: ControlPlane,
         pod_network: PodNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    kwok.create_kwok_node(api, NODE, pod_network.pod_cidr, labels={"edgeoffload.io/edge": "true"})
    deployment = the_unit("Deployment", DEPLOYMENT)
    deployment["spec"]["replicas"] = 1
    deployment["spec"]["template"]["spec"]["nodeName"] = NODE   # no scheduler runs
    for obj in (the_unit("ConfigMap", DEPLOYMENT), the_unit("Service", SERVICE), deployment):
        answer = server.apply(obj, dry_run=False)
        assert answer.accepted and not answer.warnings, answer
    folder = tmp_path_factory.mktemp("discovery")
    kubelet = Kubelet(api, pod_network, folder / "units").start()
    source = WatchedSource(EndpointSliceWatch(kubernetes_api_client(str(preprocessor_kubeconfig)), NAMESPACE, SERVICE))
    records: list[FrameRecord] = []
    edge = SiteConfig(EDGE, f"http://{SERVICE}:{PORT}", queue_size=256, per_replica=PER_REPLICA,
                      service_s=SLEEP_PAD_MS / 1000)
    offloader = Offloader(load_policy("edge-only"), edge, SiteConfig(CLOUD, "http://127.0.0.1:9"), records.append,
                          health_interval_s=0, sources={EDGE: source}).start()
    yield Site(api, source, offloader, kubelet, records)
    offloader.close(drain_timeout_s=10)
    server.session.delete(server.url(deployment, DEPLOYMENT), params={"propagationPolicy": "Background"}, timeout=30)
    kubelet.stop()
    assert not kubelet.errors, kubelet.errors


def wait_for_replicas(site: Site, count: int, timeout: float = 90.0) -> set[str]:
    """Until the source reports exactly the Deployment's `count` live pods; returns their names."""
    def settled() -> bool:
        pods = site.pods()
        return len(pods) == count and site.source.names() == pods
    wait_for(settled, timeout, f"discovery to report {count} replicas", interval=0.2)
    return site.source.names()


def test_discovery_follows_the_endpointslice_controller_and_frames_reach_new_pods(site: Site) -> None:
    (first,) = wait_for_replicas(site, 1)
    ids = site.feed(20, fps=20)
    assert site.served_by(ids) == {first: 20}

    site.scale(3)
    scaled_up = wait_for_replicas(site, 3)
    assert first in scaled_up
    ids = site.feed(90, fps=40)
    served = site.served_by(ids)
    assert set(served) == scaled_up and sum(served.values()) == 90, served
    # Least-outstanding balancing across three equal replicas: each takes a real share.
    assert min(served.values()) >= 90 * 0.2, served

    site.scale(1)
    stop_feeding = threading.Event()
    during: list[int] = []

    def feed_during_scale_down() -> None:
        while not stop_feeding.is_set():
            during.extend(site.feed(5, fps=25))

    feeder = threading.Thread(target=feed_during_scale_down)
    feeder.start()
    try:
        (survivor,) = wait_for_replicas(site, 1)
        time.sleep(site.kubelet.pre_stop_s + 1)   # the removed pods' units have stopped by now
    finally:
        stop_feeding.set()
        feeder.join(timeout=60)
    assert survivor in scaled_up
    ids = site.feed(20, fps=20)
    assert site.served_by(ids) == {survivor: 20}
    # Every frame fed since the start has exactly one record, and none failed on the way down.
    by_frame: dict[int, list[FrameRecord]] = {}
    for record in site.records:
        by_frame.setdefault(record.frame_id, []).append(record)
    assert sorted(by_frame) == list(range(site.sent)) and all(len(r) == 1 for r in by_frame.values())
    failed = [r for r in site.records if r.status != "ok"]
    assert not failed, [(r.frame_id, r.status, r.reason, r.replica) for r in failed[:5]]
    assert during, "no frame was fed while the pods went away"
    assert site.source.inner.lists >= 1 and site.source.inner.events >= 4
