"""Local autoscaler: real inference replicas behind a relay, scaled by the HPA algorithm."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from edgeoffload.hpa import Behavior, HPAError, HPASpec, MetricTarget, ScalingPolicy, ScalingRules
from edgeoffload.load.sample_video import SampleVideoSpec, sample_jpegs
from edgeoffload.endpointslices import EndpointSliceStore
from edgeoffload.hpa import load_hpa_manifests
from edgeoffload.local import SiteOptions
from edgeoffload.podmetrics import AVERAGE_WINDOW_S
from edgeoffload.localscale import (IN_FLIGHT_METRIC, LocalAutoscaler, ReplicaPool, check_servable, restart_delay,
                                    process_tree_cpu_seconds, scrape_in_flight)
from edgeoffload.relay import TcpRelay
from edgeoffload.detect.builtin import DEFAULT_FACE_CASCADE
from edgeoffload import localscale
from edgeoffload.unitfolders import autoscale_file

FAST_DOWN = Behavior(scale_down=ScalingRules(0, (ScalingPolicy("Percent", 100, 15),)))


@pytest.fixture
def pool(tmp_path: Path):
    relay = TcpRelay().start()
    replicas = ReplicaPool("edge", SiteOptions(instances=1).inference_env("edge"), relay, tmp_path,
                           endpoints=EndpointSliceStore(), pre_stop_s=0.5)
    replicas.scale_to(1)
    yield replicas
    replicas.stop()
    relay.stop()


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def ready_names(pool: ReplicaPool) -> list[str]:
    _version, slices = pool.endpoints.list("edge-inference")
    return [s["endpoints"][0]["targetRef"]["name"] for s in slices if s["endpoints"][0]["conditions"]["ready"]]


def _flood(url: str, stop: threading.Event, frame: bytes) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            session.post(url + "/infer", data=frame, headers={"Content-Type": "image/jpeg"}, timeout=30)


def test_idle_replica_reports_zero_in_flight_and_its_cpu_time(pool: ReplicaPool) -> None:
    url = pool.replicas[0].unit.url
    assert scrape_in_flight(url) == 0.0
    assert process_tree_cpu_seconds(pool.replicas[0].pid) > 0.1  # python + OpenCV + model load
    assert scrape_in_flight("http://127.0.0.1:9") is None


def test_process_tree_cpu_counts_children() -> None:
    busy = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'x=0\\nfor i in range(10**8): x+=i'])"
    parent = subprocess.Popen([sys.executable, "-c", busy], start_new_session=True)
    try:
        deadline = time.monotonic() + 20  # a generous bound: the machine may be busy
        while process_tree_cpu_seconds(parent.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        # The parent only waits; 0.5 CPU-seconds can only come from the grandchild.
        assert process_tree_cpu_seconds(parent.pid) >= 0.5
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_scales_up_under_load_and_back_down_when_idle(pool: ReplicaPool) -> None:
    spec = HPASpec(min_replicas=1, max_replicas=2, behavior=FAST_DOWN, sync_period_s=1.0,
                   metrics=(MetricTarget("Pods", IN_FLIGHT_METRIC, "AverageValue", 1.0),))
    published: list[dict] = []
    autoscaler = LocalAutoscaler({"edge": (pool, spec)}, publish=published.append)
    frame = sample_jpegs(SampleVideoSpec(frames_per_scene=1, scenes=("coffee",)))[0]
    stop = threading.Event()
    flooders = [threading.Thread(target=_flood, args=(pool.relay.url, stop, frame)) for _ in range(6)]
    for thread in flooders:
        thread.start()
    try:
        time.sleep(1.0)
        for _ in range(8):
            pool.sample()
            time.sleep(0.15)
        (status,) = autoscaler.sync(time.monotonic())
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
    assert status.desired == 2 and pool.desired == 2       # decided at once; the replica starts in the background
    assert status.metrics[IN_FLIGHT_METRIC] > 1.0
    wait_until(lambda: pool.size == 2)
    assert len(pool.relay.backends) == 2
    assert published[-1]["replicas"] == {"edge-inference": 2} and published[-1]["pools"]["edge"]["ready"] == 1
    # a minute later: the loaded samples have left prometheus-adapter's window, the new scrape is idle
    (status,) = autoscaler.sync(time.monotonic() + AVERAGE_WINDOW_S + 1)
    assert status.desired == 1 and pool.size == 1 and len(pool.relay.backends) == 1   # retiring is immediate
    assert pool.peak == 2


def test_the_first_sync_keeps_a_pool_that_starts_above_its_need(pool: ReplicaPool) -> None:
    """The HPA's first reconcile records the current count (horizontal.go recordInitialRecommendation):
    two idle replicas stay two until that record leaves the 30 s scale-down window."""
    pool.scale_to(2)
    spec = HPASpec(min_replicas=1, max_replicas=2, sync_period_s=1.0,
                   behavior=Behavior(scale_down=ScalingRules(30, (ScalingPolicy("Percent", 100, 15),))),
                   metrics=(MetricTarget("Pods", IN_FLIGHT_METRIC, "AverageValue", 1.0),))
    autoscaler = LocalAutoscaler({"edge": (pool, spec)})
    start = time.monotonic()
    for later_s, expected in ((0.0, 2), (15.0, 2), (30.0, 1)):   # idle: 0 in flight wants 1 replica
        pool.sample()
        (status,) = autoscaler.sync(start + later_s)
        assert status.metrics[IN_FLIGHT_METRIC] == 0.0 and (status.desired, pool.size) == (expected, expected)
    (sample,) = pool.pod_samples(spec, time.monotonic())
    replica = pool.replicas[0]
    assert sample.started_at == replica.started_at < sample.ready_changed_at == replica.ready_at <= sample.window_start


def test_replicas_are_published_as_endpointslices_and_drain_on_scale_down(pool: ReplicaPool) -> None:
    pool.scale_to(2)
    assert ready_names(pool) == ["edge-inference-1", "edge-inference-2"]
    leaving = pool.replicas[-1]
    pool.scale_to(1)
    # Out of the Service and terminating at once; still serving during preStop; then gone.
    assert ready_names(pool) == ["edge-inference-1"] and len(pool.relay.backends) == 1
    assert leaving.unit.process.poll() is None and leaving.pid in pool.pids()
    deadline = time.monotonic() + 15
    while len(pool.endpoints.list("edge-inference")[1]) > 1:   # its slice is deleted after SIGTERM
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert leaving.unit.process.wait(5) == 0 and leaving.pid not in pool.pids()


def test_a_replica_still_starting_is_pending_to_the_hpa_and_cancelled_first(pool: ReplicaPool) -> None:
    spec = HPASpec(min_replicas=1, max_replicas=3, metrics=(MetricTarget("Pods", IN_FLIGHT_METRIC, "AverageValue", 1.0),))
    pool.scale_to(3, wait=False)
    assert (pool.desired, pool.size) == (3, 1)
    pending = [p for p in pool.pod_samples(spec, time.monotonic()) if p.phase == "Pending"]
    assert len(pending) == 2 and not any(p.ready or p.values for p in pending)
    pool.scale_to(2, wait=False)                    # the newest one still starting goes, not a ready one
    assert (pool.desired, [r.name for r in pool.replicas]) == (2, ["edge-inference-1"])
    wait_until(lambda: pool.size == 2)
    time.sleep(0.5)
    assert [r.name for r in pool.replicas] == ["edge-inference-1", "edge-inference-2"] and pool.desired == 2
    assert ready_names(pool) == ["edge-inference-1", "edge-inference-2"]


def test_a_replica_that_dies_leaves_the_rotation_at_once_and_a_new_one_replaces_it(pool: ReplicaPool) -> None:
    pool.scale_to(2)
    victim = pool.replicas[0]
    os.killpg(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while "edge-inference-1" in ready_names(pool) or pool.restarts == 0:
        assert time.monotonic() < deadline, ready_names(pool)
        time.sleep(0.05)
    assert [r.name for r in pool.replicas][:1] == ["edge-inference-2"] and pool.desired == 2 and pool.restarts == 1
    assert victim.address not in pool.relay.backends
    wait_until(lambda: pool.size == 2)  # the replacement: a new replica, as a ReplicaSet creates a new pod
    assert [r.name for r in pool.replicas] == ["edge-inference-2", "edge-inference-3"]
    wait_until(lambda: ready_names(pool) == ["edge-inference-2", "edge-inference-3"])
    assert len(pool.relay.backends) == 2 and pool.exits == 1


def test_a_replacement_that_fails_to_start_is_tried_again_with_back_off(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The model file vanishes (say, a volume not mounted yet): the replacement of a dead replica
    cannot start. It is tried again with the crash-loop back-off until it comes up, as the
    kubelet restarts a pod's container, instead of leaving the Deployment a replica short."""
    monkeypatch.setattr(localscale, "RESTART_BACKOFF_S", 0.3)
    model = tmp_path / "face.xml"
    shutil.copyfile(DEFAULT_FACE_CASCADE, model)
    relay = TcpRelay().start()
    pool = ReplicaPool("edge", SiteOptions(instances=1, model_path=str(model)).inference_env("edge"), relay,
                       tmp_path, endpoints=EndpointSliceStore(), pre_stop_s=0.5)
    try:
        pool.scale_to(1)
        model.rename(tmp_path / "away.xml")
        os.killpg(pool.replicas[0].pid, signal.SIGKILL)
        wait_until(lambda: pool.restarts >= 3)       # the replacement, then two failed starts tried again
        assert (pool.size, pool.desired, len(pool.starting)) == (0, 1, 1)
        (tmp_path / "away.xml").rename(model)
        wait_until(lambda: pool.size == 1)
        assert pool.desired == 1 and not pool.starting and pool.exits == 1
        wait_until(lambda: ready_names(pool) == [pool.replicas[0].name])
    finally:
        pool.stop()
        relay.stop()


def test_restarts_back_off_like_crash_loop_back_off() -> None:
    assert [restart_delay(streak) for streak in range(0, 8)] == [0, 0, 10, 20, 40, 80, 160, 300]


def test_cpu_metric_is_utilisation_of_the_request(pool: ReplicaPool) -> None:
    spec = HPASpec(min_replicas=1, max_replicas=3, metrics=(MetricTarget("Resource", "cpu", "Utilization", 50),))
    pool.pod_samples(spec, time.monotonic())  # restart the window
    time.sleep(1.0)
    (idle,) = pool.pod_samples(spec, time.monotonic())
    frame = sample_jpegs(SampleVideoSpec(frames_per_scene=1, scenes=("rocket",)))[0]
    stop = threading.Event()
    flooder = threading.Thread(target=_flood, args=(pool.relay.url, stop, frame))
    flooder.start()
    time.sleep(2.0)
    stop.set()
    flooder.join()
    (busy,) = pool.pod_samples(spec, time.monotonic())
    # Cores used over the window (the HPA divides by the 1-core request); bounds allow for a busy machine.
    assert idle.values["cpu"] < 0.1
    assert 0.1 < busy.values["cpu"] <= 2.2
    assert busy.values["cpu"] > 3 * idle.values["cpu"]
    assert busy.requests == {"cpu": 1.0}


def test_only_measurable_metrics_are_accepted() -> None:
    for spec in load_hpa_manifests(autoscale_file()):   # every deployed HPA can be run locally
        check_servable(spec)
    with pytest.raises(HPAError, match="memory"):
        check_servable(HPASpec(metrics=(MetricTarget("Resource", "memory", "AverageValue", 1e9),)))
    with pytest.raises(HPAError, match="queue_depth"):
        check_servable(HPASpec(metrics=(MetricTarget("Pods", "queue_depth", "AverageValue", 3),)))
