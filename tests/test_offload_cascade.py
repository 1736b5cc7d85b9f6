"""Cascade offloading in the preprocessor's engine, against real inference units (gunicorn, Haar
faces): the second decision after an edge answer, the escalated frame's one record, and what
the record says when the escalation fails."""
from __future__ import annotations

import threading
import time
from typing import Iterator

import cv2
import numpy as np
import pytest
from skimage import data

from edgeoffload.offload import CLOUD, EDGE, FrameJob, Offloader, SiteConfig
from edgeoffload.policy import EdgeResult, Observation, load_policy
from edgeoffload.records import FrameRecord
from edgeoffload.serve import UnitProcess, free_port, start_unit

WAIT = 30.0


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(data.astronaut()[:, :, ::-1]))[1].tobytes()


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[UnitProcess, UnitProcess]]:
    edge = start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_SITE": "edge"}, workers=1, threads=2)
    cloud = start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_SITE": "cloud"}, workers=1, threads=2)
    yield edge, cloud
    edge.stop()
    cloud.stop()


class Cascade:
    """Offloads nothing up front; escalates as told, keeping what it was shown and fed back."""

    name = "test-cascade"

    def __init__(self, escalate: bool | Exception = True, first: bool = False) -> None:
        self.escalate = escalate
        self.first = first
        self.results: list[tuple[Observation, EdgeResult]] = []
        self.feedback_records: list[FrameRecord] = []

    def estimate_to_cloud(self, obs: Observation) -> bool:
        return self.first

    def escalate_to_cloud(self, obs: Observation, edge_result: EdgeResult) -> bool:
        self.results.append((obs, edge_result))
        if isinstance(self.escalate, Exception):
            raise self.escalate
        return self.escalate

    def feedback(self, record: FrameRecord) -> None:
        self.feedback_records.append(record)


class Sink:
    def __init__(self) -> None:
        self.records: list[FrameRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: FrameRecord) -> None:
        with self._lock:
            self.records.append(record)


def run_frames(policy: object, edge_url: str, cloud_url: str, payload: bytes, count: int = 3) -> list[FrameRecord]:
    """`count` frames through an Offloader; returns the records its sink got (after they all ended)."""
    sink = Sink()
    offloader = Offloader(policy, SiteConfig(EDGE, edge_url, timeout_s=10), SiteConfig(CLOUD, cloud_url, timeout_s=10),
                          sink, health_interval_s=0).start()  # type: ignore[arg-type]
    try:
        jobs = [offloader.submit(FrameJob(camera="cam", frame_id=i, captured_at=time.time(), arrived=time.monotonic(),
                                          payload=payload)) for i in range(count)]
        assert offloader.wait_idle(WAIT), "frames without a record"
        assert all(job.record is not None for job in jobs)
        assert offloader.state()["edge"]["in_flight"] == 0 and offloader.state()["cloud"]["in_flight"] == 0
    finally:
        offloader.close(drain_timeout_s=5)
    assert sorted(r.frame_id for r in sink.records) == list(range(count)), "exactly one record per frame"
    return sink.records


def test_an_escalated_frame_is_answered_by_the_cloud_and_says_what_the_edge_found(sites, astronaut_jpeg) -> None:
    edge, cloud = sites
    policy = Cascade(escalate=True)
    records = run_frames(policy, edge.url, cloud.url, astronaut_jpeg)
    assert len(policy.results) == 3 and len(policy.feedback_records) == 3
    _, shown = policy.results[0]
    assert shown.detections >= 1 and shown.best_score == max(d.score for d in shown.boxes)
    assert shown.model == "edge/haar-face" and shown.inference_s > 0
    for record in records:
        assert record.escalated and record.site == "cloud" and record.status == "ok" and record.reason == ""
        assert record.model == "cloud/haar-face" and record.detections   # the cloud's answer
        assert record.edge_detections == shown.detections and record.edge_score == pytest.approx(shown.best_score)
        assert 0 < record.t_edge_ms < record.t_total_ms
        assert record.t_queue_ms >= record.t_edge_ms - 1.0   # the edge stage is part of the wait for the answer
        assert record.bytes_sent == len(astronaut_jpeg)   # the egress: the cloud's copy


def test_a_kept_edge_answer_is_final(sites, astronaut_jpeg) -> None:
    edge, cloud = sites
    policy = load_policy("cascade:-1000")   # every Haar answer with a face is confident enough
    records = run_frames(policy, edge.url, cloud.url, astronaut_jpeg)
    assert all(r.site == "edge" and not r.escalated and r.edge_score is None and r.t_edge_ms == 0 for r in records)
    assert all(r.policy == "cascade:-1000" and r.detections for r in records)


def test_a_failed_escalation_keeps_the_edge_answer(sites, astronaut_jpeg) -> None:
    """The cloud is down: no failover back to the edge (it answered already); the one record is the
    edge's answer, status ok, with the cloud's failure as its reason."""
    edge, _ = sites
    nowhere = f"http://127.0.0.1:{free_port()}"
    policy = Cascade(escalate=True)
    records = run_frames(policy, edge.url, nowhere, astronaut_jpeg)
    for record in records:
        assert record.status == "ok" and record.site == "edge" and record.escalated
        assert record.reason.startswith("escalation_failed: cloud: connection")
        assert record.model == "edge/haar-face" and record.detections
        assert record.edge_detections == len(record.detections) and record.t_edge_ms <= record.t_total_ms
    assert sorted(r.frame_id for r in policy.feedback_records) == [0, 1, 2]   # one feedback per frame


def test_a_failover_answer_is_not_asked_again(sites, astronaut_jpeg) -> None:
    """The policy chose the cloud, which is down: the edge's failover answer is final."""
    edge, _ = sites
    policy = Cascade(escalate=True, first=True)
    records = run_frames(policy, edge.url, f"http://127.0.0.1:{free_port()}", astronaut_jpeg)
    assert policy.results == []
    assert all(r.site == "edge" and r.reason == "failover:cloud->edge" and not r.escalated for r in records)


def test_a_broken_hook_keeps_the_edge_answer(sites, astronaut_jpeg) -> None:
    edge, cloud = sites
    records = run_frames(Cascade(escalate=RuntimeError("boom")), edge.url, cloud.url, astronaut_jpeg, count=1)
    assert records[0].status == "ok" and records[0].site == "edge" and not records[0].escalated
    assert records[0].reason == "escalation_error: RuntimeError: boom"
