"""The offloading engine's parts that need no network: site estimates and bounded queues."""
from __future__ import annotations

import math
import threading

import pytest

from edgeoffload.offload import CLOUD, EDGE, FrameJob, SiteConfig, SiteMonitor, SiteQueue


def job(frame_id: int) -> FrameJob:
    return FrameJob(camera="c", frame_id=frame_id, captured_at=0.0, arrived=0.0, payload=b"x")


def test_site_config_validates() -> None:
    with pytest.raises(ValueError):
        SiteConfig("fog", "http://x")
    with pytest.raises(ValueError):
        SiteConfig(EDGE, "ftp://x")
    with pytest.raises(ValueError):
        SiteConfig(EDGE, "http://x", queue_size=0)


def test_monitor_tracks_service_time_in_flight_and_health() -> None:
    monitor = SiteMonitor(SiteConfig(EDGE, "http://edge", replicas=2, service_s=0.1), alpha=0.5)
    assert monitor.snapshot().service_s == 0.1 and monitor.snapshot().replicas == 2
    monitor.reserve()
    monitor.reserve()
    assert monitor.snapshot().in_flight == 2
    monitor.release()
    monitor.record_answer(inference_s=0.3, network_s=0.01, bytes_sent=1000)
    state = monitor.snapshot()
    assert state.in_flight == 1 and state.service_s == pytest.approx(0.2)
    assert state.rtt_s == pytest.approx(0.005) and math.isinf(state.uplink_bps)  # EWMA of 0 and 0.01
    for _ in range(3):
        monitor.record_failure("connection: refused")
    assert monitor.snapshot().healthy is False and monitor.describe()["last_error"] == "connection: refused"
    monitor.set_ready(True)
    assert monitor.snapshot().healthy is True
    monitor.set_ready(False, "ready probe: HTTP 503")
    assert monitor.snapshot().healthy is False and monitor.describe()["uplink_bps"] is None


def test_queue_drops_oldest_when_full_and_closes() -> None:
    queue = SiteQueue(2)
    assert queue.put(job(0)) is None and queue.put(job(1)) is None
    evicted = queue.put(job(2))
    assert evicted is not None and evicted.frame_id == 0 and len(queue) == 2
    assert [queue.get().frame_id, queue.get().frame_id] == [1, 2]
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(queue.get()))
    consumer.start()
    queue.close()
    consumer.join(2)
    assert got == [None]


def test_frame_job_wait_returns_record_only_when_done() -> None:
    frame = job(1)
    assert frame.wait(0.01) is None and not frame.done


def test_offloader_accounts_for_every_frame_even_without_dispatchers() -> None:
    """Not started: nothing is sent, yet eviction, shutdown and late submits each yield one record."""
    from edgeoffload.offload import Offloader
    from edgeoffload.policy import load_policy

    records = []
    feedback = []
    policy = load_policy("edge-only")
    policy.feedback = feedback.append  # type: ignore[method-assign]
    offloader = Offloader(policy, SiteConfig(EDGE, "http://127.0.0.1:9", queue_size=2),
                          SiteConfig(CLOUD, "http://127.0.0.1:9"), records.append, health_interval_s=0)
    jobs = [offloader.submit(job(i)) for i in range(3)]
    assert [(r.frame_id, r.status, r.reason, r.site) for r in records] == [(0, "dropped", "queue_full", "edge")]
    assert offloader.state()["edge"]["in_flight"] == 2 and offloader.state()["open_frames"] == 2
    assert not offloader.wait_idle(0.05)
    offloader.close(drain_timeout_s=0.05)
    late = offloader.submit(job(3))
    assert [(r.frame_id, r.reason) for r in records[1:]] == [(1, "shutdown"), (2, "shutdown"), (3, "shutdown")]
    assert all(j.done and j.record is not None for j in [*jobs, late])
    assert [r.frame_id for r in feedback] == [0, 1, 2, 3]
    assert offloader.state()["edge"]["in_flight"] == 0 and offloader.wait_idle(0)


class FakeResponse:
    def __init__(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.status, self.data, self.headers = 200, data, headers or {}


class FakePool:
    """Answers every request with `response` and remembers what was sent."""

    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def urlopen(self, method: str, path: str, body: bytes, headers: dict[str, str], **_: object) -> FakeResponse:
        self.sent.append((path, body, headers))
        return self.response


def test_network_time_excludes_the_units_own_queueing() -> None:
    """post_frame reads queue_ms so a busy unit is not mistaken for a slow network."""
    from edgeoffload import offload

    pool = FakePool(FakeResponse(b'{"model": "m", "detections": [], "inference_ms": 20.0, "queue_ms": 30.0, '
                                 b'"replica": "edge-7"}'))
    answer = offload.post_frame(pool, "", b"x", 1.0)  # type: ignore[arg-type]
    assert answer.inference_s == pytest.approx(0.020) and answer.queue_s == pytest.approx(0.030)
    assert answer.replica == "edge-7" and pool.sent == [("/infer", b"x", {"Content-Type": "image/jpeg"})]


def test_v2_answers_need_not_carry_timings_or_replica() -> None:
    """A Triton-like answer: no parameters; the engine then counts the round trip as inference."""
    from edgeoffload import offload
    from edgeoffload.openinference import DetectionMapping, decode

    answer_body = (b'{"model_name": "yolo", "outputs": [{"name": "boxes", "datatype": "FP32", "shape": [1, 4], '
                   b'"data": [1, 2, 3, 4]}, {"name": "scores", "datatype": "FP32", "shape": [1], "data": [0.5]}, '
                   b'{"name": "labels", "datatype": "BYTES", "shape": [1], "data": ["car"]}]}')
    pool = FakePool(FakeResponse(answer_body, {"Content-Type": "application/json"}))
    protocol = offload.V2Protocol(DetectionMapping("yolo"))
    answer = offload.post_frame(pool, "/cloud", b"\xff\xd8jpeg", 1.0, protocol=protocol)  # type: ignore[arg-type]
    assert (answer.model, answer.inference_s, answer.queue_s, answer.replica) == ("yolo", None, 0.0, "")
    assert [(d.label, d.box) for d in answer.detections] == [("car", (1, 2, 3, 4))]
    [(path, body, headers)] = pool.sent
    assert path == "/cloud/v2/models/yolo/infer"
    request = decode(body, headers["Inference-Header-Content-Length"], "inputs")
    assert request.tensors[0].values == (b"\xff\xd8jpeg",)


def test_base_path_keeps_a_path_prefix() -> None:
    from edgeoffload.offload import base_path

    assert base_path("http://edge-inference:8080") == ""
    assert base_path("https://gw.example/cloud/") == "/cloud"
