"""Pools on a shared CPU: exact processor-sharing timings, the M/M/1-PS queue, and the engine wiring."""
from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from edgeoffload.policy import as_policy, load_policy
from edgeoffload.records import read_records
from edgeoffload.sim import load_scenario, run_scenario
from edgeoffload.sim.pools import Frame, Pool, SharedCpu, make_pool
from edgeoffload.sim.scenario import PoolSpec, SharedCpuSpec

from test_sim_queueing import poisson_queue


class Machine:
    """Pools driven from one event heap like the simulation does, some of them on one SharedCpu.

    Each pool serves its frames with the work (ms at full speed) given to `send`, in start order."""

    def __init__(self, cores: float | None, on_cpu: tuple[str, ...] = ("edge", "cloud"), **specs: Any) -> None:
        self.heap: list = []
        sequence = itertools.count()
        self.cpu = None if cores is None else SharedCpu(cores, self.heap, sequence)
        self.finished: dict[tuple[str, int], tuple[float, float]] = {}   # (pool, frame) -> (end, service)
        self._work: dict[str, deque[float]] = {}
        self.pools: dict[str, Pool] = {}
        for name, fields in specs.items():
            work = self._work[name] = deque()
            pool = make_pool(PoolSpec(name=name, **fields), self.heap, sequence, work.popleft,
                             lambda frame, end, name=name: self._record(name, frame, end),
                             self.cpu if name in on_cpu else None)
            for _ in range(pool.spec.replicas):
                pool.make_ready(pool.add_pod(0.0), 0.0)
            self.pools[name] = pool

    def _record(self, pool: str, frame: Frame, end: float) -> None:
        self.finished[(pool, frame.frame_id)] = (end, frame.service)

    def send(self, pool: str, frame_id: int, now: float, work_ms: float) -> None:
        self.run_until(now)
        self._work[pool].append(work_ms)
        assert self.pools[pool].arrive(Frame("cam", frame_id, now, 1, None), now) is None

    def run_until(self, t: float) -> None:
        while self.heap and self.heap[0][0] <= t:
            _, _, handler, arg = heapq.heappop(self.heap)
            handler(arg)

    def end(self, pool: str, frame_id: int) -> float:
        return self.finished[(pool, frame_id)][0]

    def service(self, pool: str, frame_id: int) -> float:
        return self.finished[(pool, frame_id)][1]


def test_a_frame_alone_runs_at_full_speed() -> None:
    host = Machine(1.0, edge={"workers": 2})
    host.send("edge", 0, 0.5, 10.0)
    host.run_until(10.0)
    assert host.end("edge", 0) == pytest.approx(0.51) and host.service("edge", 0) == pytest.approx(0.01)
    assert host.cpu is not None and host.cpu.running == 0 and host.cpu.speed == 1.0


def test_two_frames_started_together_on_one_core_each_take_twice_as_long() -> None:
    host = Machine(1.0, edge={"workers": 2})
    host.send("edge", 0, 0.0, 10.0)
    host.send("edge", 1, 0.0, 10.0)
    assert host.cpu is not None and host.cpu.speed == pytest.approx(0.5)
    host.run_until(1.0)
    assert [host.end("edge", i) for i in (0, 1)] == pytest.approx([0.02, 0.02])
    assert [host.service("edge", i) for i in (0, 1)] == pytest.approx([0.02, 0.02])
    pod, = host.pools["edge"].pods
    assert pod.busy_seconds(1.0) == pytest.approx(0.04)   # accounting stays per busy worker


def test_a_frame_joining_halfway_shares_the_core_from_then_on() -> None:
    # A (10 ms) alone until 5 ms, then A and B (20 ms) at half speed: A's last 5 ms of work take
    # 10 ms (done at 15 ms); B has done 5 ms of work by then and runs its last 15 ms alone.
    host = Machine(1.0, edge={"workers": 1}, cloud={"workers": 1})
    host.send("edge", 0, 0.0, 10.0)
    host.send("cloud", 0, 0.005, 20.0)
    host.run_until(1.0)
    assert host.end("edge", 0) == pytest.approx(0.015) and host.service("edge", 0) == pytest.approx(0.015)
    assert host.end("cloud", 0) == pytest.approx(0.030) and host.service("cloud", 0) == pytest.approx(0.025)


def test_testbed_sized_host_slows_two_sites_to_the_measured_range() -> None:
    # 38 ms Haar frames on both sites of a machine with 1.4 cores for inference: 38 / 0.7 ms each
    host = Machine(1.4, edge={"workers": 1}, cloud={"workers": 1})
    host.send("edge", 0, 0.0, 38.0)
    host.send("cloud", 0, 0.0, 38.0)
    host.run_until(1.0)
    assert host.service("edge", 0) == pytest.approx(0.038 / 0.7) == host.service("cloud", 0)


def test_a_queued_frame_starts_when_its_worker_frees_and_changes_the_speed() -> None:
    # one edge worker with a queue, one cloud worker, 1 core
    host = Machine(1.0, edge={"workers": 1}, cloud={"workers": 1})
    host.send("edge", 0, 0.0, 10.0)
    host.send("edge", 1, 0.0, 10.0)          # waits for the edge worker
    host.send("cloud", 0, 0.0, 30.0)
    host.run_until(1.0)
    # 0..20 ms: e0 + c0 at 1/2 (10 ms of work each). 20..40 ms: e1 + c0 at 1/2 (10 more each):
    # e1 done at 40 ms; c0 has 10 ms of work left and runs it alone: done at 50 ms.
    assert host.end("edge", 0) == pytest.approx(0.02) and host.end("edge", 1) == pytest.approx(0.04)
    assert host.service("edge", 1) == pytest.approx(0.02)     # service excludes its 20 ms in the queue
    assert host.end("cloud", 0) == pytest.approx(0.05) and host.service("cloud", 0) == pytest.approx(0.05)


@pytest.mark.parametrize("queue", ["per-pod", "shared"])
def test_enough_cores_for_every_busy_worker_changes_nothing(queue: str) -> None:
    works = [12.0, 7.0, 30.0, 3.0, 18.0, 9.0, 25.0, 4.0]
    arrivals = [0.0, 0.001, 0.002, 0.004, 0.010, 0.011, 0.020, 0.021]
    runs = []
    for cores in (None, 4.0):
        host = Machine(cores, edge={"replicas": 2, "workers": 1, "queue": queue},
                       cloud={"replicas": 1, "workers": 2, "queue": queue})
        for i, (t, work) in enumerate(zip(arrivals, works)):
            host.send("edge" if i % 2 else "cloud", i, t, work)
        host.run_until(10.0)
        runs.append(host.finished)
    plain, shared = runs
    assert plain.keys() == shared.keys() and len(plain) == len(works)
    for key in plain:
        assert shared[key] == pytest.approx(plain[key])


def test_half_core_workers_share_one_core_without_slowing_until_a_third_joins() -> None:
    host = Machine(1.0, edge={"workers": 3, "cpu_per_worker": 0.5})
    host.send("edge", 0, 0.0, 10.0)
    host.send("edge", 1, 0.0, 10.0)
    assert host.cpu is not None and host.cpu.speed == 1.0      # demand 1.0 = cores
    host.run_until(0.004)
    host.send("edge", 2, 0.004, 10.0)                          # demand 1.5: speed 2/3
    host.run_until(1.0)
    # 4 ms of work done; the first two have 6 ms left at 2/3 speed: 9 ms more, done at 13 ms.
    # The third has done 6 ms of work by then and runs its last 4 ms at full speed: done at 17 ms.
    assert [host.end("edge", i) for i in (0, 1, 2)] == pytest.approx([0.013, 0.013, 0.017])
    assert host.service("edge", 2) == pytest.approx(0.013)


def test_a_pool_not_on_the_machine_is_unaffected() -> None:
    host = Machine(1.0, on_cpu=("edge",), edge={"workers": 2}, cloud={"workers": 1})
    host.send("edge", 0, 0.0, 10.0)
    host.send("edge", 1, 0.0, 10.0)
    host.send("cloud", 0, 0.0, 10.0)
    host.run_until(1.0)
    assert host.pools["cloud"].shared_cpu is None
    assert host.end("cloud", 0) == pytest.approx(0.01) and host.service("cloud", 0) == pytest.approx(0.01)
    assert host.end("edge", 0) == pytest.approx(0.02) and host.end("edge", 1) == pytest.approx(0.02)


def test_mm1_ps_mean_sojourn_matches_theory(scenario) -> None:
    # M/M/1-PS: 64 workers (a frame almost never waits for one) sharing 1 core, lambda 50/s,
    # mu 100/s: mean sojourn 1 / (mu - lambda) = 20 ms whatever the service distribution's shape
    built = dataclasses.replace(poisson_queue(scenario, 50, 1, 64, 10, 4_050),
                                shared_cpu=SharedCpuSpec(cores=1.0, pools=("edge",)))
    edge = run_scenario(built, load_policy("edge-only")).summary.sites["edge"]
    assert edge.frames > 195_000
    assert edge.mean_queue_ms == pytest.approx(0.0, abs=1e-9)
    assert edge.mean_queue_ms + edge.mean_inference_ms == pytest.approx(1000 / (100 - 50), rel=0.03)


# ------------------------------------------------------------------ engine wiring
def _paired_trace(tmp_path: Path) -> Path:
    """Cameras a and b capture at the same instants, 0.5 s apart (no overlap between instants)."""
    rows = [f"{k * 0.5:.1f},{camera},30000" for k in range(10) for camera in ("a", "b")]
    path = tmp_path / "paired.csv"
    path.write_text("time_s,camera,bytes\n" + "\n".join(rows) + "\n")
    return path


def _paired_run(tmp_path: Path, shared_cpu: dict[str, Any] | None) -> list:
    raw: dict[str, Any] = {
        "name": "paired", "duration_s": 10, "cameras": [{"name": "pair", "trace": str(_paired_trace(tmp_path))}],
        "wan": {"bandwidth_mbps": 1e7, "rtt_ms": 0},        # the cloud frame starts with the edge one
        "edge": {"workers": 1, "service_ms": 40}, "cloud": {"workers": 1, "service_ms": 40}}
    if shared_cpu is not None:
        raw["shared_cpu"] = shared_cpu
    out = tmp_path / f"records-{shared_cpu is not None}.csv"
    split = as_policy(lambda obs: obs.camera == "b", name="b-to-cloud")   # alternate frames, same instants
    run_scenario(load_scenario(raw, base_dir=tmp_path), split, out=out)
    return list(read_records(out))


def test_engine_sites_sharing_a_core_take_longer_than_alone(tmp_path: Path) -> None:
    alone = _paired_run(tmp_path, None)
    shared = _paired_run(tmp_path, {"cores": 1})
    assert len(alone) == len(shared) == 20
    assert {r.site for r in shared} == {"edge", "cloud"}
    assert [r.t_inference_ms for r in alone] == pytest.approx([40.0] * 20)
    assert [r.t_inference_ms for r in shared] == pytest.approx([80.0] * 20, rel=1e-4)
    assert all(s.t_total_ms > a.t_total_ms + 39 for a, s in zip(alone, shared))


def test_engine_shared_cpu_is_deterministic_and_only_touches_listed_pools(scenario) -> None:
    both = {"cores": 1.5}
    first = run_scenario(scenario(shared_cpu=both), load_policy("random:0.5")).summary
    again = run_scenario(scenario(shared_cpu=both), load_policy("random:0.5")).summary
    plain = run_scenario(scenario(), load_policy("random:0.5")).summary
    assert first.to_dict() == again.to_dict()
    assert first.sites["edge"].mean_inference_ms > plain.sites["edge"].mean_inference_ms * 1.05
    # only the edge on the machine and every frame to the cloud: identical to no sharing at all
    cloud_only = run_scenario(scenario(shared_cpu={"cores": 0.5, "pools": ["edge"]}), load_policy("cloud-only"))
    assert cloud_only.summary.to_dict() == run_scenario(scenario(), load_policy("cloud-only")).summary.to_dict()
