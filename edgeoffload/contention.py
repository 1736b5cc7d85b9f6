"""How much frames computing at once on one machine slow each other, measured from a replay's records.

On the local testbed every replica of both sites runs on the same CPUs (two detector instances
per replica, as the ConfigMaps ship), so a frame computes more slowly while other frames compute
too (a Haar frame: ~50 ms alone, ~80 ms beside two others). This module places each answered
frame's model time on the wall clock and measures, piece by piece, how many other frames were
computing beside it (`concurrency`). It then finds the machine's `cores` for egalitarian
processor sharing (a frame beside k others progresses at min(1, cores / (1 + k))): the value
for which edge frames computed beside others, turned into work as if alone (`work_ms`), have
the median of the edge frames computed alone. The simulator runs both pools on one `shared_cpu`
with those cores, fed with each frame's work as if alone, so the slow-down happens where it
happened on the testbed: whenever several frames compute. A busy detector uses about one core
here (`cpu_per_worker` 1.00 in the profile), so cores count frames computing at full speed.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from edgeoffload.records import FrameRecord

SOLO_BELOW = 0.2          # share of its model time with another frame computing, under which a frame counts as alone
OVERLAPPED_ABOVE = 0.6    # ... and over which as computed beside others
MIN_FRAMES = 5            # of each kind, to estimate anything
CORES_RANGE = (1.0, 16.0)  # where the machine's cores are searched (a frame alone runs at full speed)

# A frame's model time in pieces: (share of the time, number of other frames computing meanwhile).
Load = tuple[tuple[float, int], ...]


@dataclass(frozen=True, slots=True)
class Contention:
    """The machine's cores, as seen by frames computing beside others."""

    cores: float              # processor-sharing cores that explain the slow-down
    solo_ms: float            # median edge model time with no other frame computing
    overlapped_ms: float      # median edge model time of frames computed beside others
    others: float             # mean number of other frames computing beside those (time-weighted)
    solo_frames: int
    overlapped_frames: int


def model_intervals(records: Sequence[FrameRecord], cloud_return_ms: float) -> list[tuple[float, float]]:
    """Each answered frame's model time on the wall clock: it ends when the answer left the unit
    (capture + total time, minus the way back from the cloud) and lasts `t_inference_ms`."""
    intervals = []
    for record in records:
        end = record.captured_at + (record.t_total_ms - (cloud_return_ms if record.site == "cloud" else 0.0)) / 1000
        intervals.append((end - record.t_inference_ms / 1000, end))
    return intervals


def concurrency(records: Sequence[FrameRecord], cloud_return_ms: float) -> list[Load]:
    """For each answered record (status ok), its model time in pieces with the number of other
    answered frames (either site) computing meanwhile; other records get ()."""
    answered = [i for i, r in enumerate(records) if r.status == "ok" and r.site in ("edge", "cloud")]
    intervals = model_intervals([records[i] for i in answered], cloud_return_ms)
    order = sorted(range(len(intervals)), key=lambda j: intervals[j][0])
    latest_end = 0.0
    reach = []                          # for each position in `order`, the latest end so far
    for j in order:
        latest_end = max(latest_end, intervals[j][1])
        reach.append(latest_end)
    loads: list[Load] = [()] * len(records)
    for position, j in enumerate(order):
        start, end = intervals[j]
        others = []
        for k in range(position - 1, -1, -1):          # earlier starts, while any can still reach `start`
            if reach[k] <= start:
                break
            if intervals[order[k]][1] > start:
                others.append(intervals[order[k]])
        for k in order[position + 1:]:                 # later starts, until past `end`
            if intervals[k][0] >= end:
                break
            others.append(intervals[k])
        loads[answered[j]] = _pieces(start, end, others)
    return loads


def _pieces(start: float, end: float, others: list[tuple[float, float]]) -> Load:
    """[start, end] cut where the number of `others` covering it changes: (share, count) pieces."""
    if end <= start:
        return ((1.0, 0),)
    edges = sorted({start, end, *(t for iv in others for t in iv if start < t < end)})
    pieces = []
    for lo, hi in zip(edges, edges[1:]):
        middle = (lo + hi) / 2
        count = sum(1 for a, b in others if a <= middle < b)
        pieces.append(((hi - lo) / (end - start), count))
    return tuple(pieces)


def busy_share(load: Load) -> float:
    """The share of a frame's model time with at least one other frame computing."""
    return sum(share for share, count in load if count > 0)


def work_ms(duration_ms: float, load: Load, cores: float) -> float:
    """The time a frame would have taken alone: beside k other frames it progressed at
    min(1, cores / (1 + k))."""
    return duration_ms * sum(share * min(1.0, cores / (1 + count)) for share, count in load)


def estimate(records: Sequence[FrameRecord], loads: Sequence[Load], min_frames: int = MIN_FRAMES) -> Contention | None:
    """The cores (at least one) for which the edge's frames computed beside others, as work, have
    the median work of those computed alone (`loads` as given by concurrency); None when either
    kind has fewer than `min_frames` frames, or frames computed beside others were not slower."""
    edge = [(r.t_inference_ms, load) for r, load in zip(records, loads) if r.site == "edge" and r.status == "ok" and load]
    solo = [(ms, load) for ms, load in edge if busy_share(load) < SOLO_BELOW]
    overlapped = [(ms, load) for ms, load in edge if busy_share(load) > OVERLAPPED_ABOVE]
    if len(solo) < min_frames or len(overlapped) < min_frames:
        return None
    solo_ms = statistics.median(ms for ms, _ in solo)
    overlapped_ms = statistics.median(ms for ms, _ in overlapped)
    if not 0 < solo_ms < overlapped_ms:
        return None

    def excess(cores: float) -> float:   # rises with cores: the overlapped frames' work grows fastest
        return (statistics.median(work_ms(ms, load, cores) for ms, load in overlapped)
                - statistics.median(work_ms(ms, load, cores) for ms, load in solo))

    low, high = CORES_RANGE
    if excess(high) <= 0:                 # slower, but not because of the others computing
        return None
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if excess(middle) < 0 else (low, middle)
    others = sum(share * count for _, load in overlapped for share, count in load) / len(overlapped)
    return Contention(cores=round((low + high) / 2, 4), solo_ms=solo_ms, overlapped_ms=overlapped_ms,
                      others=round(others, 3), solo_frames=len(solo), overlapped_frames=len(overlapped))


__all__ = ["Contention", "Load", "busy_share", "concurrency", "estimate", "model_intervals", "work_ms"]
