"""Pools on their own: routing, pods joining and leaving, graceful drain."""
from __future__ import annotations

import heapq
import itertools

import pytest

from edgeoffload.hpa import HPASpec, MetricTarget, MetricUnavailable, replicas_for_metric
from edgeoffload.sim.pools import Frame, make_pool
from edgeoffload.sim.scenario import PoolSpec


class Harness:
    """Drives one pool's completion events from its heap, like the simulation does."""

    def __init__(self, **spec) -> None:
        self.heap: list = []
        self.done: list[tuple[int, float, int]] = []   # (frame id, finish time, pod id)
        self.pool = make_pool(PoolSpec(name="p", **spec), self.heap, itertools.count(), lambda: 100.0,
                              lambda frame, end: self.done.append((frame.frame_id, round(end, 9), frame.pod.pid)))

    def send(self, frame_id: int, now: float) -> str | None:
        return self.pool.arrive(Frame("cam", frame_id, now, 1, None), now)

    def run_until(self, t: float) -> None:
        while self.heap and self.heap[0][0] <= t:
            _, _, handler, arg = heapq.heappop(self.heap)
            handler(arg)


def test_round_robin_over_ready_pods_with_per_pod_queues() -> None:
    h = Harness(workers=1, queue="per-pod", queue_capacity=1)
    a, b = h.pool.add_pod(0.0), h.pool.add_pod(0.0)
    h.pool.make_ready(a, 0.0)
    h.pool.make_ready(b, 0.0)
    assert [h.send(i, 0.0) for i in range(5)] == [None, None, None, None, "queue_full"]
    h.run_until(1.0)
    assert sorted(h.done) == [(0, 0.1, a.pid), (1, 0.1, b.pid), (2, 0.2, a.pid), (3, 0.2, b.pid)]


def test_terminating_pod_drains_its_queue_then_leaves() -> None:
    h = Harness(workers=1, queue="per-pod")
    a, b = h.pool.add_pod(0.0), h.pool.add_pod(0.0)
    h.pool.make_ready(a, 0.0)
    h.pool.make_ready(b, 0.0)
    for i in range(4):
        h.send(i, 0.0)
    h.pool.scale_down(1, 0.05)                 # the most recently ready pod (b) goes
    assert b.terminating and h.pool.endpoints == [a] and h.pool.replicas == 1
    h.send(4, 0.05)                            # new work only reaches a
    h.run_until(1.0)
    assert [f for f, _, pod in h.done if pod == b.pid] == [1, 3]
    assert b.gone_at == 0.2 and a.gone_at is None
    assert b.alive_seconds(10.0) == pytest.approx(0.2) and a.busy_seconds(1.0) == pytest.approx(0.3)


def test_shared_queue_is_served_by_a_pod_the_moment_it_is_ready() -> None:
    h = Harness(workers=2, queue="shared")
    first = h.pool.add_pod(0.0)
    h.pool.make_ready(first, 0.0)
    for i in range(5):
        h.send(i, 0.0)
    late = h.pool.add_pod(0.0)
    h.pool.make_ready(late, 0.05)              # takes the two oldest waiting frames at once
    h.run_until(1.0)
    assert sorted(h.done) == [(0, 0.1, first.pid), (1, 0.1, first.pid), (2, 0.15, late.pid), (3, 0.15, late.pid),
                              (4, 0.2, first.pid)]


def test_not_ready_pods_are_removed_first_and_never_serve() -> None:
    h = Harness(workers=1)
    ready, booting = h.pool.add_pod(0.0), h.pool.add_pod(0.0)
    h.pool.make_ready(ready, 0.0)
    h.pool.scale_down(1, 1.0)
    assert booting.terminating and booting.gone_at == 1.0 and not ready.terminating
    h.pool.make_ready(booting, 2.0)            # the boot finishing later changes nothing
    assert h.pool.endpoints == [ready]


def test_pod_samples_report_busy_fraction_and_in_flight() -> None:
    h = Harness(workers=2, queue="per-pod", cpu_per_worker=0.5)
    pod = h.pool.add_pod(0.0)
    h.pool.make_ready(pod, 0.0)
    for i in range(3):
        h.send(i, 0.0)
    h.run_until(0.1)
    sample, = h.pool.pod_samples(0.2, ["inflight"])
    # 0..0.1 two workers busy, 0.1..0.2 one: 0.3 worker-seconds in 0.2 s at 0.5 cores each
    assert sample.values["cpu"] == pytest.approx(0.75) and sample.values["inflight"] == 1.0
    assert sample.phase == "Running" and sample.requests == {"cpu": 1.0} and sample.ready
    assert (sample.started_at, sample.ready_changed_at, sample.window_start) == (0.0, 0.0, pytest.approx(0.2 - 15))
    cpu = MetricTarget("Resource", "cpu", "Utilization", 50)
    with pytest.raises(MetricUnavailable):     # the HPA distrusts it: its window began before the pod was ready
        replicas_for_metric(HPASpec(metrics=(cpu,)), cpu, 1, [sample], now=0.2)
    h.run_until(1.0)
    h.send(3, 5.0)
    h.run_until(6.0)
    later, = h.pool.pod_samples(15.2, ["inflight"])
    assert later.ready and later.values["cpu"] == pytest.approx(0.1 * 0.5 / 15.0)   # 0.1 worker-s since 0.2 s
    assert replicas_for_metric(HPASpec(metrics=(cpu,)), cpu, 1, [later], now=15.2) == 0   # trusted: 0 % of 50 %


@pytest.mark.parametrize("on_shared_cpu", [False, True])
def test_content_factor_scales_each_pictures_service(on_shared_cpu: bool) -> None:
    from edgeoffload.sim.pools import SharedCpu

    heap: list = []
    sequence = itertools.count()
    done: dict[int, float] = {}
    cpu = SharedCpu(8.0, heap, sequence) if on_shared_cpu else None
    pool = make_pool(PoolSpec(name="p", workers=4, content_factor={"cat": 2.0, "rocket": 0.5}), heap, sequence,
                     lambda: 40.0, lambda frame, end: done.__setitem__(frame.frame_id, frame.service), cpu)
    pool.make_ready(pool.add_pod(0.0), 0.0)
    for frame_id, picture in enumerate(["cat", "rocket", "unknown", ""]):
        frame = Frame("cam", frame_id, 0.0, 1, None)
        frame.content = picture
        assert pool.arrive(frame, 0.0) is None
    while heap:
        _, _, handler, arg = heapq.heappop(heap)
        handler(arg)
    assert done == pytest.approx({0: 0.080, 1: 0.020, 2: 0.040, 3: 0.040})   # unknown pictures cost the mean
