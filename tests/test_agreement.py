"""When an answer agrees with the cloud model's answer on the same frame."""
from __future__ import annotations

import pytest

from edgeoffload.agreement import agreement_share, agrees, iou
from edgeoffload.records import Detection, FrameRecord


def face(x: float, y: float, w: float = 10.0, label: str = "face") -> Detection:
    return Detection(label, 1.0, (x, y, w, w))


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_agreement_needs_a_one_to_one_pairing_of_every_box() -> None:
    assert agrees((), ())
    assert agrees((face(0, 0),), (face(1, 1),))                   # IoU 0.68
    assert not agrees((face(0, 0),), (face(5, 0),))               # IoU 0.33
    assert not agrees((face(0, 0),), ())                          # an extra object
    assert not agrees((), (face(0, 0),))                          # a missed one
    assert not agrees((face(0, 0, label="person"),), (face(0, 0),))
    # two answer boxes may not share one reference box
    assert not agrees((face(0, 0), face(1, 0)), (face(0, 0), face(50, 50)))
    # a greedy pairing (first answer box to its best match) would fail here; the matching does not
    first, second = Detection("face", 1, (0, 0, 10, 10)), Detection("face", 1, (4, 0, 10, 10))
    ref_a, ref_b = Detection("face", 1, (1, 0, 10, 10)), Detection("face", 1, (-3, 0, 10, 10))
    assert iou(first.box, ref_a.box) > iou(first.box, ref_b.box) and iou(second.box, ref_b.box) < 0.5
    assert agrees((first, second), (ref_a, ref_b)) and agrees((second, first), (ref_b, ref_a))


def test_agreement_share_counts_answered_records_only() -> None:
    def record(frame_id: int, status: str = "ok") -> FrameRecord:
        return FrameRecord(camera="c", frame_id=frame_id, captured_at=0.0, site="edge", status=status)  # type: ignore[arg-type]

    records = [record(0), record(1), record(2), record(3, "dropped")]
    assert agreement_share(records, lambda r: r.frame_id != 1) == pytest.approx(2 / 3)
    assert agreement_share(records, lambda r: None if r.frame_id == 2 else True) is None
    assert agreement_share([record(3, "error")], lambda r: True) is None
