"""The pools against queueing theory, and exact hand-computed FIFO / uplink timings."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgeoffload.policy import load_policy
from edgeoffload.records import read_records
from edgeoffload.sim import run_scenario


def erlang_c_wait_ms(servers: int, arrivals_per_s: float, mean_service_ms: float) -> float:
    """Mean wait in queue of an M/M/c queue (Erlang C)."""
    rate = 1000.0 / mean_service_ms
    load = arrivals_per_s / rate
    tail = load ** servers / math.factorial(servers) * servers / (servers - load)
    waiting_probability = tail / (sum(load ** k / math.factorial(k) for k in range(servers)) + tail)
    return waiting_probability / (servers * rate - arrivals_per_s) * 1000.0


def poisson_queue(scenario, arrivals_per_s: float, pods: int, workers: int, mean_ms: float, duration_s: float):
    return scenario(cameras=[{"name": "src", "fps": arrivals_per_s, "arrival": "poisson", "frame_bytes": 1000}],
                    duration_s=duration_s, warmup_s=50, seed=1,
                    edge={"replicas": pods, "workers": workers, "queue": "shared",
                          "service_ms": {"dist": "exponential", "mean": mean_ms}})


def test_mm1_mean_wait_matches_theory(scenario) -> None:
    # rho = 0.5: Wq = rho / (mu - lambda) = 10 ms; 500k customers
    result = run_scenario(poisson_queue(scenario, 50, 1, 1, 10, 10_000), load_policy("edge-only"))
    edge = result.summary.sites["edge"]
    assert edge.frames > 490_000
    assert edge.mean_queue_ms == pytest.approx(erlang_c_wait_ms(1, 50, 10), rel=0.03)
    assert erlang_c_wait_ms(1, 50, 10) == pytest.approx(10.0)
    assert edge.mean_inference_ms == pytest.approx(10.0, rel=0.01)


def test_mmc_mean_wait_matches_erlang_c(scenario) -> None:
    # c = 4 workers spread over 2 pods sharing one queue, rho = 0.75; 450k customers
    result = run_scenario(poisson_queue(scenario, 300, 2, 2, 10, 1_550), load_policy("edge-only"))
    assert result.summary.sites["edge"].mean_queue_ms == pytest.approx(erlang_c_wait_ms(4, 300, 10), rel=0.03)


def test_fifo_backlog_grows_by_the_excess_service_time(scenario, tmp_path: Path) -> None:
    # one camera at 10 fps, 150 ms constant service on one worker: frame k waits 50 ms * k
    built = scenario(cameras=[{"name": "solo", "fps": 10}], duration_s=2, edge={"workers": 1, "service_ms": 150})
    records = tmp_path / "records.csv"
    run_scenario(built, load_policy("edge-only"), out=records)
    waits = [r.t_queue_ms for r in read_records(records)]
    assert len(waits) == 20
    assert waits == pytest.approx([50.0 * k for k in range(20)])


def test_uplink_is_fifo_at_the_link_bandwidth(scenario, tmp_path: Path) -> None:
    # 1 Mbit frames every 100 ms on a 5 Mbit/s link: 200 ms each, so frame k's upload takes 200 + 100 k ms
    built = scenario(cameras=[{"name": "solo", "fps": 10, "frame_bytes": 125_000}], duration_s=1,
                     wan={"bandwidth_mbps": 5, "rtt_ms": 40}, cloud={"replicas": 1, "service_ms": 5})
    records = tmp_path / "records.csv"
    run_scenario(built, load_policy("cloud-only"), out=records)
    rows = list(read_records(records))
    assert [r.t_network_ms for r in rows] == pytest.approx([200 + 100 * k + 40 for k in range(10)])
    assert all(r.t_inference_ms == pytest.approx(5) and r.t_queue_ms == pytest.approx(0) for r in rows)
    assert [r.t_total_ms for r in rows] == pytest.approx([r.t_network_ms + 5 for r in rows])
    assert {r.bytes_sent for r in rows} == {125_000}


def test_camera_and_bandwidth_traces(scenario, tmp_path: Path) -> None:
    # a 1 Mbit frame at t=9.5 s: 0.5 s at 1 Mbit/s, then the rest at 2 Mbit/s after the change at 10 s
    (tmp_path / "frames.csv").write_text("time_s,camera,bytes\n9.5,door,125000\n12.0,door,125000\n")
    (tmp_path / "wan.csv").write_text("time_s,bandwidth_bps,rtt_ms\n0,1000000,10\n10,2000000,30\n")
    raw = {"name": "traces", "duration_s": 20, "cameras": [{"name": "door", "trace": "frames.csv"}],
           "wan": {"trace": "wan.csv"}, "edge": {}, "cloud": {"service_ms": 5}}
    from edgeoffload.sim import load_scenario
    records = tmp_path / "records.csv"
    run_scenario(load_scenario(raw, base_dir=tmp_path), load_policy("cloud-only"), out=records)
    first, second = read_records(records)
    assert (first.camera, first.frame_id, second.frame_id) == ("door", 0, 1)
    assert first.t_network_ms == pytest.approx(750 + 30)     # upload 0.75 s, then 15 + 15 ms propagation
    assert second.t_network_ms == pytest.approx(500 + 30)    # all at 2 Mbit/s
