"""Contention between two sites on one machine, measured from records whose timing is known."""
from __future__ import annotations

import pytest

from edgeoffload.contention import Contention, estimate, model_intervals, overlap_shares, work_ms
from edgeoffload.records import FrameRecord

T0 = 1_800_000_000.0


def answered(site: str, start_s: float, model_ms: float, frame_id: int, return_ms: float = 0.0) -> FrameRecord:
    """A record whose model time runs from T0 + start_s for model_ms (answer back after return_ms)."""
    return FrameRecord(camera=f"cam-{site}", frame_id=frame_id, captured_at=T0, site=site, status="ok",
                       t_inference_ms=model_ms, t_total_ms=start_s * 1000 + model_ms + return_ms)


def records_like_the_testbed(solo: int = 8, overlapped: int = 6, solo_ms: float = 35.0, slow_ms: float = 60.0) -> list[FrameRecord]:
    """Edge frames every 0.2 s; every other one from some point on computes under a cloud frame."""
    records, t = [], 0.0
    for i in range(solo):
        records.append(answered("edge", t, solo_ms, i))
        t += 0.2
    for i in range(overlapped):
        records.append(answered("edge", t, slow_ms, solo + i))
        # the cloud frame covers the edge frame's whole model time (and 20 ms of way back)
        records.append(answered("cloud", t - 0.005, slow_ms + 10, i, return_ms=20.0))
        t += 0.2
    return records


def test_model_intervals_end_when_the_answer_left_the_unit() -> None:
    edge, cloud = answered("edge", 1.0, 40.0, 0), answered("cloud", 2.0, 50.0, 1, return_ms=20.0)
    (e0, e1), (c0, c1) = model_intervals([edge, cloud], cloud_return_ms=20.0)
    assert (e0 - T0, e1 - T0) == pytest.approx((1.0, 1.04))
    assert (c0 - T0, c1 - T0) == pytest.approx((2.0, 2.05))


def test_overlap_share_is_the_part_of_model_time_the_other_site_computed() -> None:
    records = [answered("edge", 0.0, 100.0, 0),
               answered("cloud", 0.05, 20.0, 0), answered("cloud", 0.06, 20.0, 1),  # overlap each other
               answered("edge", 1.0, 10.0, 1),
               FrameRecord(camera="x", frame_id=9, captured_at=T0, site="edge", status="dropped", reason="queue_full")]
    shares = overlap_shares(records, cloud_return_ms=0.0)
    assert shares[0] == pytest.approx(0.30)      # the union 50..80 ms of 0..100 ms
    assert shares[1] == pytest.approx(1.0) and shares[2] == pytest.approx(1.0)
    assert shares[3] == 0.0 and shares[4] == 0.0


def test_estimate_compares_edge_frames_alone_and_overlapped() -> None:
    records = records_like_the_testbed()
    measured = estimate(records, overlap_shares(records, cloud_return_ms=20.0))
    assert measured == Contention(speed=pytest.approx(35 / 60), solo_ms=35.0, overlapped_ms=60.0,
                                  solo_frames=8, overlapped_frames=6)
    assert measured.cores == pytest.approx(2 * 35 / 60)


@pytest.mark.parametrize("records", [records_like_the_testbed(overlapped=4), records_like_the_testbed(solo=3),
                                     records_like_the_testbed(slow_ms=30.0)], ids=["few-overlapped", "few-solo", "not-slower"])
def test_no_estimate_without_enough_evidence(records: list[FrameRecord]) -> None:
    assert estimate(records, overlap_shares(records, cloud_return_ms=20.0)) is None


def test_work_is_the_duration_at_full_speed() -> None:
    assert work_ms(60.0, 1.0, 35 / 60) == pytest.approx(35.0)
    assert work_ms(40.0, 0.0, 0.5) == 40.0
    assert work_ms(80.0, 0.5, 0.5) == pytest.approx(40 + 20)
