"""Contention between two sites on one machine, measured from records whose timing is known."""
from __future__ import annotations

import pytest

from edgeoffload.contention import busy_share, concurrency, estimate, model_intervals, work_ms
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


def test_concurrency_counts_the_other_frames_computing_piece_by_piece() -> None:
    records = [answered("edge", 0.0, 100.0, 0),
               answered("cloud", 0.05, 20.0, 0), answered("cloud", 0.06, 20.0, 1),  # overlap each other
               answered("edge", 1.0, 10.0, 1),
               FrameRecord(camera="x", frame_id=9, captured_at=T0, site="edge", status="dropped", reason="queue_full")]
    loads = concurrency(records, cloud_return_ms=0.0)
    # edge 0..100 ms: alone 0-50, one cloud frame 50-60, two 60-70, one 70-80, alone 80-100
    assert [(pytest.approx(share), count) for share, count in loads[0]] == [(0.5, 0), (0.1, 1), (0.1, 2), (0.1, 1), (0.2, 0)]
    assert busy_share(loads[0]) == pytest.approx(0.3)
    # cloud 50..70 ms: the edge frame throughout, the other cloud frame from 60
    assert [(pytest.approx(share), count) for share, count in loads[1]] == [(0.5, 1), (0.5, 2)]
    assert loads[3] == ((1.0, 0),) and loads[4] == ()


def test_estimate_finds_the_cores_that_explain_the_slow_down() -> None:
    records = records_like_the_testbed()
    measured = estimate(records, concurrency(records, cloud_return_ms=20.0))
    assert measured is not None
    assert (measured.solo_ms, measured.overlapped_ms, measured.solo_frames, measured.overlapped_frames) == (35.0, 60.0, 8, 6)
    # each slow edge frame computed beside one cloud frame: at speed cores / 2 = 35 / 60
    assert measured.others == pytest.approx(1.0)
    assert measured.cores == pytest.approx(2 * 35 / 60, rel=1e-4)


def test_estimate_counts_every_frame_beside_it_not_just_the_other_site() -> None:
    """Two edge instances and a cloud frame: an edge frame beside two others took 3x its solo time
    on a 1-core machine; the old two-frame assumption would have said 2 x 1/3 = 0.67 cores."""
    records, t = [], 0.0
    for i in range(8):
        records.append(answered("edge", t, 40.0, i))
        t += 0.5
    for i in range(6):
        records.append(answered("edge", t, 120.0, 100 + i))
        records.append(answered("edge", t, 120.0, 200 + i))
        records.append(answered("cloud", t, 120.0, i))
        t += 0.5
    measured = estimate(records, concurrency(records, cloud_return_ms=0.0))
    assert measured is not None and measured.others == pytest.approx(2.0)
    assert measured.cores == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("records", [records_like_the_testbed(overlapped=4), records_like_the_testbed(solo=3),
                                     records_like_the_testbed(slow_ms=30.0)], ids=["few-overlapped", "few-solo", "not-slower"])
def test_no_estimate_without_enough_evidence(records: list[FrameRecord]) -> None:
    assert estimate(records, concurrency(records, cloud_return_ms=20.0)) is None


def test_work_is_the_duration_at_full_speed() -> None:
    assert work_ms(60.0, ((1.0, 1),), 2 * 35 / 60) == pytest.approx(35.0)
    assert work_ms(40.0, ((1.0, 0),), 1.0) == 40.0
    assert work_ms(80.0, ((0.5, 0), (0.5, 1)), 1.0) == pytest.approx(40 + 20)
    assert work_ms(90.0, ((1.0, 2),), 6.0) == 90.0                      # more cores than frames: no slow-down
