"""How much two sites that share one machine slow each other, measured from a replay's records.

On the local testbed the edge and the cloud units run on the same CPUs, so a frame computes
more slowly while the other site computes too (a Haar frame: ~35 ms alone, ~60 ms overlapped).
This module places each answered frame's model time on the wall clock, measures which share of
it overlapped the other site's model time, and from frames of the edge (the site with the most
frames of both kinds) estimates the speed of a frame while both compute. The simulator then
runs both pools on one `shared_cpu` whose cores give that speed, fed with each frame's work as
if alone (`work_ms`), so the slow-down happens where it happened on the testbed: exactly when
both sites are busy.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from edgeoffload.records import FrameRecord

SOLO_BELOW = 0.2          # overlap share under which a frame counts as computed alone
OVERLAPPED_ABOVE = 0.6    # ... and over which as computed while the other site computed
MIN_FRAMES = 5            # of each kind, to estimate anything


@dataclass(frozen=True, slots=True)
class Contention:
    """The measured slow-down of one frame while the other site computes as well."""

    speed: float              # progress of each of the two frames computing together (1 = none)
    solo_ms: float            # median edge model time with the cloud idle
    overlapped_ms: float      # median edge model time while the cloud computed
    solo_frames: int
    overlapped_frames: int

    @property
    def cores(self) -> float:
        """The simulator's shared_cpu cores for two single-worker sites: each of two running frames
        gets cores/2 of a core."""
        return 2.0 * self.speed


def model_intervals(records: Sequence[FrameRecord], cloud_return_ms: float) -> list[tuple[float, float]]:
    """Each answered frame's model time on the wall clock: it ends when the answer left the unit
    (capture + total time, minus the way back from the cloud) and lasts `t_inference_ms`."""
    intervals = []
    for record in records:
        end = record.captured_at + (record.t_total_ms - (cloud_return_ms if record.site == "cloud" else 0.0)) / 1000
        intervals.append((end - record.t_inference_ms / 1000, end))
    return intervals


def overlap_shares(records: Sequence[FrameRecord], cloud_return_ms: float) -> list[float]:
    """For each answered record (status ok), the share of its model time during which a frame of
    the other site was computing; other records get 0."""
    answered = [i for i, r in enumerate(records) if r.status == "ok" and r.site in ("edge", "cloud")]
    chosen = [records[i] for i in answered]
    intervals = model_intervals(chosen, cloud_return_ms)
    by_site = {site: sorted(iv for r, iv in zip(chosen, intervals) if r.site == site) for site in ("edge", "cloud")}
    shares = [0.0] * len(records)
    for index, record, (start, end) in zip(answered, chosen, intervals):
        others = by_site["cloud" if record.site == "edge" else "edge"]
        shares[index] = _covered(start, end, others) / (end - start) if end > start else 0.0
    return shares


def _covered(start: float, end: float, intervals: list[tuple[float, float]]) -> float:
    """Length of [start, end] covered by the union of sorted `intervals`."""
    covered, reach = 0.0, start
    for other_start, other_end in intervals:   # a few hundred frames: a linear scan is plenty
        if other_start >= end:
            break
        lo, hi = max(reach, other_start), min(end, other_end)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return min(covered, end - start)


def estimate(records: Sequence[FrameRecord], shares: Sequence[float], min_frames: int = MIN_FRAMES) -> Contention | None:
    """The slow-down from the edge's frames computed alone vs overlapped (`shares` as given by
    overlap_shares); None when either kind has fewer than `min_frames` frames (or overlapping
    made nothing slower)."""
    edge = [(r.t_inference_ms, share) for r, share in zip(records, shares) if r.site == "edge" and r.status == "ok"]
    solo = [ms for ms, share in edge if share < SOLO_BELOW]
    overlapped = [ms for ms, share in edge if share > OVERLAPPED_ABOVE]
    if len(solo) < min_frames or len(overlapped) < min_frames:
        return None
    solo_ms, overlapped_ms = statistics.median(solo), statistics.median(overlapped)
    if not 0 < solo_ms < overlapped_ms:
        return None
    return Contention(speed=solo_ms / overlapped_ms, solo_ms=solo_ms, overlapped_ms=overlapped_ms,
                      solo_frames=len(solo), overlapped_frames=len(overlapped))


def work_ms(duration_ms: float, overlap_share: float, speed: float) -> float:
    """The time a frame would have taken alone: for `overlap_share` of its duration it progressed
    at `speed`, for the rest at full speed."""
    return duration_ms * (1.0 - overlap_share + overlap_share * speed)


__all__ = ["Contention", "estimate", "model_intervals", "overlap_shares", "work_ms"]
