"""`edgeoffload profile` against real haar-face inference units, the cloud one behind an emulated WAN."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeoffload import profile as profile_cmd
from edgeoffload.load.sample_video import SampleVideoSpec, sample_jpegs, sample_source
from edgeoffload.profile import (BackgroundLoad, LoadedMeasurement, ProfileError, RequestSample, measure, pad_jpeg,
                                 prepare_frames, timed_infer)
from edgeoffload.offload import new_session
from edgeoffload.relay import LinkProfile, TcpRelay
from edgeoffload.serve import UnitProcess, free_port, start_unit
from edgeoffload.sim import load_scenario

ONE_WAY_S = 0.03
UPLINK_BPS = 8e6


def _unit(site: str) -> UnitProcess:
    return start_unit("inference", env={"INFER_SITE": site, "INFER_KIND": "haar-face", "INFER_THREADS": "1"},
                      threads=3)


@pytest.fixture(scope="module")
def sites() -> tuple[str, str]:
    """(edge URL, cloud URL through a relay with 30 ms one-way delay and an 8 Mbit/s uplink)."""
    edge, cloud = _unit("edge"), _unit("cloud")
    relay = TcpRelay([("127.0.0.1", int(cloud.url.rsplit(":", 1)[1]))],
                     link=LinkProfile(delay_s=ONE_WAY_S, uplink_bps=UPLINK_BPS, downlink_bps=100e6)).start()
    try:
        yield edge.url, relay.url
    finally:
        relay.stop()
        edge.stop()
        cloud.stop()


def test_pad_jpeg_keeps_pixels_and_adds_the_bytes() -> None:
    frame = sample_jpegs(SampleVideoSpec(frames_per_scene=1, scenes=("coffee",)))[0]
    padded = pad_jpeg(frame, 150_000)
    assert 150_000 - 4 <= len(padded) - len(frame) <= 150_000
    original = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    decoded = cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and np.array_equal(original, decoded)
    with pytest.raises(ValueError):
        pad_jpeg(b"\x89PNG\r\n\x1a\n", 1000)


def test_frames_are_prepared_like_the_preprocessor_sends_them() -> None:
    prepared = prepare_frames(sample_source(), 3, max_side=320)
    assert len(prepared.payloads) == len(prepared.preprocess_ms) == 3
    for payload in prepared.payloads:
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        assert max(image.shape[:2]) == 320
    assert all(ms > 0 for ms in prepared.preprocess_ms)


def test_profile_measures_service_rtt_and_bandwidth(sites: tuple[str, str], tmp_path: Path) -> None:
    edge_url, cloud_url = sites
    measured = measure(edge_url, cloud_url, frames=4, max_side=320, pad_bytes=100_000)
    assert len(measured.edge.plain) == len(measured.cloud.plain) == 4
    assert measured.edge.model.startswith("edge/haar-face") and measured.cloud.model.startswith("cloud/haar-face")
    # The service time covers at least the model time the unit reports, plus the HTTP path.
    for sample, service in zip(measured.edge.plain, measured.edge_service_ms()):
        assert service >= sample.inference_ms > 0
    # 100 KB at 8 Mbit/s is 100 ms on the wire: the estimate must find the emulated link.
    assert measured.wan.bandwidth_bps == pytest.approx(UPLINK_BPS, rel=0.3)
    assert 2000 * ONE_WAY_S * 0.7 <= statistics.median(measured.wan.rtt_ms) <= 2000 * ONE_WAY_S * 1.6

    path = measured.write(tmp_path / "profile.json")
    written = json.loads(path.read_text())
    assert written["frame_bytes"] == [len(p) for p in prepare_frames(sample_source(), 4, 320).payloads]
    assert written["wan"]["bandwidth_bps"] == round(measured.wan.bandwidth_bps)
    # The simulator reads it through the documented schema keys (edgeoffload.sim.PROFILE_SCHEMA).
    scenario = load_scenario({
        "duration_s": 1, "cameras": [{"name": "c", "frame_bytes": {"dist": "profile", "file": "profile.json",
                                                                   "key": "frame_bytes"}}],
        "wan": {"profile": "profile.json"},
        "edge": {"service_ms": {"dist": "profile", "file": "profile.json", "key": "edge.service_ms"}},
        "cloud": {"service_ms": {"dist": "profile", "file": "profile.json", "key": "cloud.service_ms"}}},
        base_dir=tmp_path)
    assert scenario.edge.service_ms.samples == tuple(written["edge"]["service_ms"])
    assert scenario.cloud.service_ms.samples == tuple(written["cloud"]["service_ms"])
    assert scenario.wan.bandwidth_bps == written["wan"]["bandwidth_bps"]
    assert scenario.wan.rtt_ms == pytest.approx(statistics.median(written["wan"]["rtt_ms"]))
    # Haar computes the whole time it runs: a busy detector uses up to one core (less when the
    # machine is loaded, as it then waits for the CPU; the lower bound stays loose for that)
    assert 0.2 < written["edge"]["cpu_per_worker"] <= 1.0 and 0.2 < written["cloud"]["cpu_per_worker"] <= 1.0
    # Each sample picture's answer from both sites: the same model at both, so every edge answer
    # agrees with the cloud's; the first picture shows the astronaut's face.
    answers, reference = written["edge"]["answers"], written["cloud"]["reference"]
    assert sorted(answers) == sorted(reference) == sorted(f"frame-{i}" for i in range(len(sample_source().frames)))
    assert all(len(samples) == 1 and samples[0]["agrees"] for samples in answers.values())
    assert answers["frame-0"][0]["detections"] >= 1 and answers["frame-0"][0]["score"] > 0
    assert answers["frame-0"][0]["detections"] == len(reference["frame-0"])
    assert reference["frame-0"][0]["box"][2] > 40   # in the captured frame's pixels (640 wide), not the sent 320
    assert measured.answers is not None and measured.answers.agreement() == 1.0
    with_answers = load_scenario({"duration_s": 1, "cameras": [{"name": "c"}], "cloud": {},
                                  "edge": {"answers": {"file": "profile.json", "key": "edge.answers"}}}, base_dir=tmp_path)
    assert set(with_answers.edge.answers) == set(answers)


def test_profile_command_writes_the_file(sites: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    profile_cmd.register(parser)
    out = tmp_path / "cli-profile.json"
    args = parser.parse_args(["--edge", sites[0], "--cloud", sites[1], "--frames", "3", "--max-side", "240",
                              "--pad-kb", "60", "--no-answers", "-o", str(out)])
    assert profile_cmd.run(args) == 0
    written = json.loads(out.read_text())
    assert len(written["edge"]["service_ms"]) == len(written["cloud"]["service_ms"]) == 3
    assert written["meta"]["max_side"] == 240
    assert "wan uplink" in capsys.readouterr().out


def test_unreachable_or_misused_unit_is_a_clear_error(sites: tuple[str, str]) -> None:
    session = new_session()
    try:
        with pytest.raises(ProfileError, match="ConnectionError"):
            timed_infer(session, f"http://127.0.0.1:{free_port()}", b"\xff\xd8\xff\xd9", timeout_s=2)
        with pytest.raises(ProfileError, match="HTTP 400"):
            timed_infer(session, sites[0], b"\xff\xd8 not a jpeg", timeout_s=10)
    finally:
        session.close()
    with pytest.raises(ValueError, match="frames"):
        measure(sites[0], sites[1], frames=2)


def test_loaded_path_takes_the_wait_for_a_model_out_of_the_service_time() -> None:
    idle_queue_ms = 0.5                                   # decoding, nothing waits
    waited = RequestSample(bytes=1000, round_trip_ms=130.0, inference_ms=60.0, queue_ms=40.5)
    fast = RequestSample(bytes=1000, round_trip_ms=50.0, inference_ms=42.0, queue_ms=0.3)
    assert LoadedMeasurement.path_ms(waited, idle_queue_ms) == pytest.approx(30.0)   # 130 - 60 - 40
    assert LoadedMeasurement.path_ms(fast, idle_queue_ms) == pytest.approx(8.0)      # a faster decode is no wait
    cloud = RequestSample(bytes=1000, round_trip_ms=200.0, inference_ms=70.0, queue_ms=0.4)
    loaded = LoadedMeasurement(BackgroundLoad(5.0), (waited, fast), (cloud,), idle_queue_ms, 3, 0, 1.0)
    assert loaded.edge_service_ms() == pytest.approx([90.0, 50.0])
    # The cloud runs the same software: its model time plus the edge's median path, not the WAN.
    assert loaded.cloud_service_ms() == pytest.approx([70.0 + 19.0])
    with pytest.raises(ValueError, match="fps"):
        BackgroundLoad(0.0)
    with pytest.raises(ValueError, match="concurrency"):
        BackgroundLoad(5.0, concurrency=0)


def test_profile_under_background_load(sites: tuple[str, str], tmp_path: Path) -> None:
    edge_url, cloud_url = sites
    load = BackgroundLoad(fps=12.0, concurrency=2, seed=4)
    measured = measure(edge_url, cloud_url, frames=4, max_side=240, pad_bytes=60_000, load=load, answers=False)
    loaded = measured.loaded
    # Arrivals continue until the slower-filling site has its samples; every frame sent is answered and kept.
    assert loaded is not None and len(loaded.edge) >= 4 and len(loaded.cloud) >= 4 and loaded.failed == 0
    assert loaded.sent == len(loaded.edge) + len(loaded.cloud) + 2 * 2          # + warm-up per site
    # The simulator gets the loaded samples; the sequential ones stay for reference.
    assert measured.edge_service_ms() == loaded.edge_service_ms()
    assert measured.cloud_service_ms() == loaded.cloud_service_ms()
    for sample, service in zip(loaded.edge, loaded.edge_service_ms()):
        assert sample.inference_ms < service <= sample.round_trip_ms + 1e-9
    written = json.loads(measured.write(tmp_path / "loaded.json").read_text())
    assert written["edge"]["service_ms"] == [round(v, 3) for v in loaded.edge_service_ms()]
    assert written["cloud"]["idle_service_ms"] == [round(v, 3) for v in measured.idle_cloud_service_ms()]
    assert len(written["cloud"]["loaded"]["inference_ms"]) == len(loaded.cloud)
    assert written["meta"]["load"]["fps"] == 12.0 and written["meta"]["load"]["policy"] == "queue-threshold:1"
    assert any(name.startswith("loaded cloud") for name, _ in measured.rows())


def test_background_load_that_starves_a_site_is_a_clear_error(sites: tuple[str, str]) -> None:
    with pytest.raises(ProfileError, match="only .* samples"):
        measure(sites[0], sites[1], frames=3, max_side=160, pad_bytes=20_000,
                load=BackgroundLoad(fps=10.0, policy="edge-only", max_duration_s=1.0))


def test_profile_command_with_load(sites: tuple[str, str], tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    profile_cmd.register(parser)
    out = tmp_path / "cli-loaded.json"
    args = parser.parse_args(["--edge", sites[0], "--cloud", sites[1], "--frames", "3", "--max-side", "160",
                              "--pad-kb", "40", "--load-fps", "10", "--load-policy", "alternate", "--concurrency", "1",
                              "--no-answers", "-o", str(out)])
    assert profile_cmd.run(args) == 0
    written = json.loads(out.read_text())
    assert written["meta"]["load"]["policy"] == "alternate" and written["meta"]["load"]["concurrency"] == 1
    # "alternate" routes every other background frame to the cloud.
    samples = written["meta"]["load"]["samples"]
    assert min(samples.values()) >= 3 and abs(samples["edge"] - samples["cloud"]) <= 1
    assert len(written["edge"]["service_ms"]) == samples["edge"] and len(written["edge"]["idle_service_ms"]) == 3
