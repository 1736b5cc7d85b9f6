"""Does an answer agree with the reference answer (the cloud model's) on the same frame?

Two answers agree when both found nothing, or when their detections can be paired one to one
(each pair with the same label and boxes overlapping with IoU >= `min_iou`) so that every
detection of both answers is in a pair: same objects, same classes, roughly the same places;
scores do not matter. A missed or an extra object means disagreement.

The pairing is a maximum bipartite matching (augmenting paths), not a greedy one, so the answer
does not depend on the order of the detections.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from edgeoffload.records import Detection, FrameRecord

MIN_IOU = 0.5


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes (0 when either is empty)."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def agrees(answer: Sequence[Detection], reference: Sequence[Detection], min_iou: float = MIN_IOU) -> bool:
    """Whether `answer` agrees with `reference` (see the module docstring)."""
    if len(answer) != len(reference):
        return False
    candidates = [[j for j, ref in enumerate(reference) if ref.label == found.label and iou(found.box, ref.box) >= min_iou]
                  for found in answer]
    partner: dict[int, int] = {}   # reference index -> answer index

    def pair(i: int, seen: set[int]) -> bool:
        for j in candidates[i]:
            if j not in seen:
                seen.add(j)
                if j not in partner or pair(partner[j], seen):
                    partner[j] = i
                    return True
        return False

    return all(pair(i, set()) for i in range(len(answer)))


Judge = Callable[[FrameRecord], "bool | None"]


def agreement_share(records: Iterable[FrameRecord], judge: Judge) -> float | None:
    """Share of answered records whose answer agrees with the cloud model's on the same frame, as
    `judge(record)` tells (e.g. `agrees(record.detections, reference)` on the testbed); None if the
    judge cannot tell for any answered record."""
    answered = agreed = 0
    for record in records:
        if record.status != "ok":
            continue
        verdict = judge(record)
        if verdict is None:
            return None
        answered += 1
        agreed += verdict
    return agreed / answered if answered else None


__all__ = ["MIN_IOU", "Judge", "agreement_share", "agrees", "iou"]
