"""The preprocessor's dispatch in the simulator (edgeoffload/sim/dispatch.py): a bounded queue per
site, concurrency = ready replicas x per_replica, least outstanding requests first."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edgeoffload.policy import load_policy
from edgeoffload.records import read_records
from edgeoffload.sim import run_scenario
from edgeoffload.sim.scenario import ScenarioError


def mm1k_loss(arrivals_per_s: float, mean_service_ms: float, capacity: int) -> float:
    """Blocking probability of an M/M/1/K queue (K frames in the system at most)."""
    load = arrivals_per_s * mean_service_ms / 1000.0
    return (1 - load) * load ** capacity / (1 - load ** (capacity + 1))


def test_a_bounded_queue_in_front_of_one_replica_loses_frames_as_mm1k(scenario) -> None:
    # one replica, one request at a time, 4 frames waiting at the preprocessor: K = 5; rho = 0.9.
    # Dropping the oldest instead of the newest frame leaves the number in the system, hence the
    # loss rate, as for M/M/1/K.
    built = scenario(cameras=[{"name": "src", "fps": 90, "arrival": "poisson", "frame_bytes": 1000}],
                     duration_s=4_000, warmup_s=20, seed=5,
                     edge={"replicas": 1, "workers": 1, "service_ms": {"dist": "exponential", "mean": 10}},
                     dispatch={"queue_size": 4, "per_replica": 1})
    edge = run_scenario(built, load_policy("edge-only")).summary.sites["edge"]
    assert edge.frames > 350_000
    assert edge.dropped / edge.frames == pytest.approx(mm1k_loss(90, 10, 5), rel=0.03)


def test_requests_go_to_the_least_loaded_replica_and_name_it(scenario, tmp_path: Path) -> None:
    built = scenario(cameras=[{"name": "cam", "fps": 30}], duration_s=10,
                     edge={"replicas": 3, "workers": 1, "service_ms": 20}, dispatch={"per_replica": 2})
    records = tmp_path / "records.csv"
    run_scenario(built, load_policy("edge-only"), out=records)
    served = Counter(r.replica for r in read_records(records))
    assert set(served) == {"edge-0", "edge-1", "edge-2"}
    assert max(served.values()) - min(served.values()) <= 1      # idle replicas taken in turn


def test_concurrency_follows_the_ready_replicas(scenario, tmp_path: Path) -> None:
    """Overload: 2 replicas x 2 requests at once, the rest waits at the preprocessor (queue 50);
    the HPA's third pod takes its third of the frames as soon as it is ready."""
    built = scenario(cameras=[{"name": "cam", "fps": 60}], duration_s=40, timeline_interval_s=1,
                     edge={"replicas": 2, "workers": 1, "service_ms": 50, "cold_start_s": 1,
                           "hpa": {"minReplicas": 2, "maxReplicas": 3, "sync_period_s": 5,
                                   "metrics": [{"type": "Pods", "pods": {"metric": {"name": "in_flight"},
                                                "target": {"type": "AverageValue", "averageValue": "1"}}}]}},
                     dispatch={"queue_size": 50, "per_replica": 2})
    records = tmp_path / "records.csv"
    summary = run_scenario(built, load_policy("edge-only"), out=records).summary
    rows = [r for r in read_records(records) if r.status == "ok"]
    assert {r.replica for r in rows} == {"edge-0", "edge-1", "edge-2"}
    assert max(r.t_queue_ms for r in rows) > 500                # waited at the preprocessor
    assert summary.sites["edge"].peak_replicas == 3
    late = [r for r in rows if r.captured_at > 20]
    share = Counter(r.replica for r in late)
    assert share["edge-2"] / len(late) == pytest.approx(1 / 3, abs=0.05)


def test_the_dispatch_model_needs_per_pod_queues(scenario) -> None:
    with pytest.raises(ScenarioError, match="edge.queue"):
        scenario(edge={"queue": "shared"}, dispatch={"per_replica": 2})
    with pytest.raises(ScenarioError, match="dispatch.per_replica.cloud"):
        scenario(dispatch={"per_replica": {"edge": 2, "cloud": 0}})
    built = scenario(dispatch={"per_replica": {"edge": 6, "cloud": 3}, "queue_size": 5})
    assert dict(built.dispatch.per_replica) == {"edge": 6, "cloud": 3} and built.dispatch.queue_size == 5
