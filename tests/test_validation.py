"""Simulation vs testbed: the whole pipeline on a short trace, and the scenario it builds."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from edgeoffload.broker import find_mosquitto
from edgeoffload.load.sample_video import sample_source
from edgeoffload.load.trace import TraceSpec, generate, write_trace
from edgeoffload.local import SiteOptions, hpa_for
from edgeoffload.profile import Profile, RequestSample, SiteMeasurement, WanEstimate
from edgeoffload.records import read_records
from edgeoffload.validation import (PREPROCESSOR, ValidationSetup, breakdown, calibration_trace,
                                    observer_from_state,
                                    profile_from_records, profile_load, run_validation, sent_sizes, simulated_scenario,
                                    local_options, with_offset)
from test_contention import records_like_the_testbed


def test_sent_sizes_are_what_the_preprocessor_sends() -> None:
    from edgeoffload.units.preprocessor import FramePreparer

    frames = sample_source()
    trace = sent_sizes(generate(TraceSpec("periodic", cameras=2, rate=2, duration_s=2)), frames, max_side=200)
    preparer = FramePreparer(max_side=200)
    assert trace.has_sizes
    for event in trace:
        assert event.frame_bytes == len(preparer.from_bytes(frames.frame(event.camera, event.frame_index)).payload)


def test_simulated_scenario_mirrors_the_testbed(tmp_path: Path) -> None:
    trace = write_trace(sent_sizes(generate(TraceSpec("poisson", 2, 3.0, 5.0, seed=1)), sample_source(), 320),
                        tmp_path / "trace.csv")
    (tmp_path / "profile.json").write_text(json.dumps({"edge": {"service_ms": [40.0, 50.0]},
                                                       "cloud": {"service_ms": [30.0]},
                                                       "wan": {"rtt_ms": [41.0, 43.0, 60.0], "bandwidth_bps": 2e7}}))
    setup = ValidationSetup(edge=SiteOptions(max_replicas=3), autoscale=True, sync_period_s=4.0)
    scenario = simulated_scenario(setup, trace, tmp_path / "profile.json", cold_start_s=1.5, duration_s=10.0, seed=2)
    assert scenario.seed == 2 and scenario.warmup_s == setup.warmup_s
    assert scenario.edge.service_ms.samples == (40.0, 50.0) and scenario.cloud.service_ms.samples == (30.0,)
    assert scenario.wan.rtt_ms == 43.0 and scenario.wan.bandwidth_bps == 2e7
    # as shipped: 2 detectors per replica, 6 frames admitted; the preprocessor's queue and concurrency
    assert (scenario.edge.workers, scenario.edge.queue_capacity) == (2, 4)
    assert scenario.dispatch.queue_size == PREPROCESSOR.queue_size == 8
    assert dict(scenario.dispatch.per_replica) == {"edge": 6, "cloud": 6}
    assert (scenario.edge.replicas, scenario.cloud.replicas) == (1, 2)   # cloud: autoscale.yml's minReplicas
    assert scenario.cloud.cold_start_s.mean == 1.5
    assert scenario.cameras[0].deadline_ms == 500.0
    assert len(scenario.cameras[0].trace) == len(generate(TraceSpec("poisson", 2, 3.0, 5.0, seed=1)))
    options = local_options(setup, tmp_path)
    assert scenario.edge.hpa == hpa_for(options, "edge") and scenario.edge.hpa.max_replicas == 3
    assert scenario.cloud.hpa == hpa_for(options, "cloud") and scenario.cloud.hpa.sync_period_s == 4.0
    static = simulated_scenario(ValidationSetup(autoscale=False), trace, tmp_path / "profile.json", 1.5, 10.0, 0)
    assert static.edge.hpa is None and static.cloud.hpa is None


def test_calibrated_profile_holds_work_as_if_alone_and_the_shared_cpu(tmp_path: Path) -> None:
    sample = RequestSample(bytes=15_000, round_trip_ms=45.0, inference_ms=38.0, queue_ms=1.0)
    site = SiteMeasurement("http://unit", "haar-face", (sample,) * 3, (sample,) * 3)
    profile = Profile(site, site, WanEstimate(2e7, (40.0, 40.0)), (15_000,), (1.0,), 150_000)
    records = records_like_the_testbed(solo=8, overlapped=6, solo_ms=35.0, slow_ms=60.0)
    plain = profile_from_records(records, profile, "test", shared_cpu=False)
    assert "shared_cpu" not in plain and sorted(set(plain["edge"]["service_ms"])) == [35.0, 60.0]
    shared = profile_from_records(records, profile, "test")
    assert shared["shared_cpu"]["cores"] == pytest.approx(2 * 35 / 60, abs=1e-3)
    assert shared["edge"]["service_ms"] == pytest.approx([35.0] * 14, abs=0.01)   # every edge frame's work alone
    # 70 ms of cloud model time, 60 of them while the edge computed: 10 + 60 * 35/60 ms alone
    assert shared["cloud"]["service_ms"] == pytest.approx([45.0] * 6, abs=0.01)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(shared))
    trace = write_trace(sent_sizes(generate(TraceSpec("periodic", 1, 2.0, 3.0)), sample_source(), 320),
                        tmp_path / "trace.csv")
    scenario = simulated_scenario(ValidationSetup(autoscale=False), trace, path, 1.0, 10.0, 0)
    assert scenario.shared_cpu is not None and scenario.shared_cpu.cores == shared["shared_cpu"]["cores"]
    assert scenario.shared_cpu.pools == ("edge", "cloud")
    path.write_text(json.dumps(plain))
    assert simulated_scenario(ValidationSetup(autoscale=False), trace, path, 1.0, 10.0, 0).shared_cpu is None


def test_each_pictures_relative_cost_is_taken_out_of_the_samples_and_given_to_the_simulator(tmp_path: Path) -> None:
    from edgeoffload.records import FrameRecord

    sample = RequestSample(bytes=15_000, round_trip_ms=45.0, inference_ms=38.0, queue_ms=1.0)
    site = SiteMeasurement("http://unit", "haar-face", (sample,) * 3, (sample,) * 3)
    profile = Profile(site, site, WanEstimate(2e7, (40.0, 40.0)), (15_000,), (1.0,), 150_000)
    cost = {"cat": 60.0, "rocket": 30.0, "astronaut": 40.0}
    pictures = list(cost)
    records = [FrameRecord("cam", i, 1_800_000_000.0 + i, "edge", "ok", t_inference_ms=cost[pictures[i % 3]],
                           t_total_ms=cost[pictures[i % 3]]) for i in range(12)]
    records.append(FrameRecord("cam", 12, 1_800_000_012.5, "cloud", "ok", t_inference_ms=90.0, t_total_ms=150.0))
    picture = lambda camera, index: pictures[index % 3]
    data = profile_from_records(records, profile, "test", shared_cpu=False, content=picture)
    assert data["content_factor"] == {"astronaut": 1.0, "cat": 1.5, "rocket": 0.75}
    assert data["edge"]["service_ms"] == pytest.approx([40.0] * 12)           # every picture's share taken out
    assert data["cloud"]["service_ms"] == pytest.approx([90.0 / 1.5])         # frame 12 shows the cat
    assert "content_factor" not in profile_from_records(records, profile, "test", shared_cpu=False)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    trace = write_trace(sent_sizes(generate(TraceSpec("periodic", 1, 2.0, 3.0)), sample_source(), 320),
                        tmp_path / "trace.csv")
    scenario = simulated_scenario(ValidationSetup(autoscale=False), trace, path, 1.0, 10.0, 0)
    assert scenario.edge.content_factor == scenario.cloud.content_factor == data["content_factor"]
    assert all(row[3].startswith("frame-") for row in scenario.cameras[0].trace)   # the trace names each picture


def test_simulation_starts_from_the_preprocessors_estimates(tmp_path: Path) -> None:
    state = {"policy": "min-latency",
             "edge": {"in_flight": 0, "replicas": 1, "service_s": 0.039, "rtt_s": 0.005, "uplink_bps": None},
             "cloud": {"in_flight": 0, "replicas": 1, "service_s": 0.060, "rtt_s": 0.043, "uplink_bps": 19.5e6}}
    observer = observer_from_state(state)
    # the simulator's service time includes the HTTP path, the testbed's edge network time
    assert observer == {"edge_service_ms": 44.0, "cloud_service_ms": 65.0, "cloud_rtt_ms": 43.0,
                        "cloud_uplink_mbps": 19.5}
    assert "cloud_uplink_mbps" not in observer_from_state({**state, "cloud": {**state["cloud"], "uplink_bps": None}})
    trace = write_trace(sent_sizes(generate(TraceSpec("periodic", 1, 2.0, 3.0)), sample_source(), 320),
                        tmp_path / "trace.csv")
    (tmp_path / "profile.json").write_text(json.dumps({"edge": {"service_ms": [40.0]}, "cloud": {"service_ms": [30.0]},
                                                       "wan": {"rtt_ms": [41.0], "bandwidth_bps": 2e7}}))
    scenario = simulated_scenario(ValidationSetup(autoscale=False), trace, tmp_path / "profile.json", 1.0, 10.0, 0,
                                  observer)
    assert (scenario.observer.edge_service_ms, scenario.observer.cloud_service_ms) == (44.0, 65.0)
    assert (scenario.observer.cloud_rtt_ms, scenario.observer.cloud_uplink_mbps) == (43.0, 19.5)


def test_profile_load_is_the_traces_offered_rate_with_other_arrivals() -> None:
    spec = TraceSpec("poisson", cameras=2, rate=2.5, duration_s=60.0, seed=7)
    trace = generate(spec)
    load = profile_load(ValidationSetup(trace=spec), trace)
    assert load is not None and load.fps == pytest.approx(len(trace) / 60.0)
    assert load.fps == pytest.approx(5.0, rel=0.2) and load.seed != spec.seed
    assert profile_load(ValidationSetup(trace=spec, profile_under_load=False), trace) is None


def test_calibration_trace_has_other_arrivals_and_is_longer() -> None:
    setup = ValidationSetup(trace=TraceSpec(kind="poisson", cameras=2, rate=2.5, duration_s=60.0, seed=7))
    spec = calibration_trace(setup)
    assert spec.seed != setup.trace.seed and spec.duration_s == 120.0
    assert (spec.kind, spec.cameras, spec.rate) == ("poisson", 2, 2.5)
    assert calibration_trace(dataclasses.replace(setup, calibration_length=1.0)).duration_s == 60.0


def test_offset_adds_latency_and_rejudges_deadlines() -> None:
    from edgeoffload.records import FrameRecord

    records = [FrameRecord("c", 0, 0.0, "edge", "ok", t_total_ms=495.0, deadline_met=True),
               FrameRecord("c", 1, 0.0, "edge", "dropped", t_total_ms=3.0, deadline_met=False)]
    shifted = with_offset(records, 10.0)
    assert shifted[0].t_total_ms == 505.0 and shifted[0].deadline_met is False
    assert shifted[1] == records[1]


def test_pipeline_replays_profiles_and_simulates_the_same_trace(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `make system-deps`")
    spec = TraceSpec(kind="poisson", cameras=2, rate=2.0, duration_s=8.0, seed=3)
    setup = ValidationSetup(trace=spec, policy="alternate", autoscale=False, profile_frames=3, warmup_s=1.0,
                            sim_seeds=2, max_side=240, drain_timeout_s=30.0)
    result = run_validation(setup, tmp_path)

    trace_rows = list(csv.DictReader((tmp_path / "trace.csv").open()))
    assert result.replay.complete, result.replay.report
    assert f"accounted (1 record each)  {len(trace_rows)}/{len(trace_rows)}" in result.replay.report
    # The same frames on both sides: every counted testbed frame is in each simulated run.
    real_keys = {(r.camera, r.frame_id) for r in result.real_records}
    assert len(result.sim_runs) == 2
    for run in result.sim_runs:
        assert {(r.camera, r.frame_id) for r in run} == real_keys
    assert result.real.frames == result.simulated.frames == len(real_keys) > 0
    # The simulator sent the bytes the testbed's preprocessor really sent to the cloud.
    sizes = {(row["camera"], int(row["frame_index"])): int(row["bytes"]) for row in trace_rows}
    cloud = [r for r in result.real_records if r.site == "cloud" and r.status == "ok"]
    assert cloud and all(r.bytes_sent == sizes[(r.camera, r.frame_id)] for r in cloud)
    # "alternate" splits the same way on both sides.
    assert result.real.cloud_share == pytest.approx(0.5, abs=0.15)
    assert result.simulated.cloud_share == pytest.approx(0.5, abs=0.15)

    # the profile measured each picture's answers: the same model at both sites, so every answer agrees
    assert [d.metric for d in result.deviations] == ["p50_ms", "p95_ms", "cloud_share", "drop_rate", "agreement"]
    assert result.real.agreement == result.simulated.agreement == 1.0
    assert all(d.error is not None and math.isfinite(d.error) for d in result.deviations)
    assert result.target_met == all(d.within for d in result.deviations[:3])
    assert result.real_timeline and all(p.edge == p.cloud == 1 for p in result.real_timeline)
    assert result.sim_timeline and all(p.edge == p.cloud == 1 for p in result.sim_timeline)
    assert 0.1 < result.cold_start_s < 60
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["meta"]["max_side"] == 240 and len(profile["edge"]["idle_service_ms"]) == 3
    # Fitted under background load at the trace's offered rate, before the replay.
    assert profile["meta"]["load"]["fps"] == pytest.approx(len(trace_rows) / spec.duration_s)
    assert len(profile["edge"]["service_ms"]) >= 3 and len(profile["cloud"]["service_ms"]) >= 3
    assert result.profile.loaded is not None and result.profile_after.loaded is not None
    # The simulator's service times come from a held-out calibration replay: same spec, other arrivals.
    calibration_rows = list(csv.DictReader((tmp_path / "calibration_trace.csv").open()))
    assert [(r["time_s"], r["camera"]) for r in calibration_rows] != [(r["time_s"], r["camera"]) for r in trace_rows]
    # the simulation starts from what the preprocessor had learned when the replay began
    start = json.loads((tmp_path / "observer_start.json").read_text())
    assert result.observer == start and start["cloud_rtt_ms"] > 0 and start["edge_service_ms"] > 0
    calibrated = json.loads((tmp_path / "profile_calibrated.json").read_text())
    calibration_ok = [r for r in read_records(tmp_path / "calibration_records.csv") if r.status == "ok"]
    assert calibrated["meta"]["method"] == "service times of a held-out calibration replay"
    assert 0 < len(calibrated["edge"]["service_ms"]) <= len(calibration_ok)
    parts = {(row["site"]): row for row in breakdown(result.real_records, "testbed")}
    assert parts["cloud"]["mean_network_ms"] > parts["edge"]["mean_network_ms"]   # the WAN is on the cloud path


def test_the_simulator_gets_the_edge_answers_and_both_sides_judge_agreement_alike(tmp_path: Path) -> None:
    from edgeoffload.records import Detection, FrameRecord
    from edgeoffload.validation import agreement_judges, content_of

    frames = sample_source()
    trace = write_trace(sent_sizes(generate(TraceSpec("poisson", 1, 3.0, 5.0, seed=1)), frames, 320),
                        tmp_path / "trace.csv")
    face = {"label": "face", "score": 3.0, "box": [100.0, 100.0, 50.0, 50.0]}
    profile = {"edge": {"service_ms": [40.0], "answers": {"frame-0": [{"score": 3.0, "detections": 1, "agrees": True}],
                                                          "frame-1": [{"score": None, "detections": 0, "agrees": False}]}},
               "cloud": {"service_ms": [30.0], "reference": {"frame-0": [face], "frame-1": [face]}},
               "wan": {"rtt_ms": [40.0], "bandwidth_bps": 2e7}}
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    scenario = simulated_scenario(ValidationSetup(autoscale=False), trace, tmp_path / "profile.json", 1.0, 10.0, 0)
    assert set(scenario.edge.answers) == {"frame-0", "frame-1"} and not scenario.cloud.answers
    real, simulated = agreement_judges(profile, frames)

    def record(picture: str, site: str, detections: tuple[Detection, ...] = ()) -> FrameRecord:
        frame_id = next(i for i in range(len(frames.frames)) if content_of(frames, "cam", i) == picture)
        return FrameRecord(camera="cam", frame_id=frame_id, captured_at=0.0, site=site, status="ok",  # type: ignore[arg-type]
                           detections=detections)

    found = (Detection("face", 2.0, (102.0, 101.0, 50.0, 50.0)),)
    # the testbed's answer is compared with the cloud's on the picture
    assert real(record("frame-0", "edge", found)) is True and real(record("frame-1", "edge", ())) is False
    assert real(record("frame-2", "edge", found)) is None   # no reference for that picture
    # a simulated answer: the cloud's agrees; the edge's as the picture's measured answer did
    assert simulated(record("frame-1", "cloud")) is True
    assert simulated(record("frame-0", "edge")) is True and simulated(record("frame-1", "edge")) is False
    assert agreement_judges({"edge": {}, "cloud": {}}, frames) is None
