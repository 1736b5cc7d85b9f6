"""Live view of the frame records flowing through the testbed: bounded history and statistics.

The web server keeps, per camera, only the last `history` records and a per-second
timeline of the last `timeline_s` seconds, so memory stays bounded however long it runs and
however many records arrive. Rates use the receiving server's clock (when a record
arrived); latencies are the ones in the record (measured by the preprocessor on one
monotonic clock), never differences between two machines' clocks.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from edgeoffload.records import FrameRecord

MAX_CAMERA_NAME = 128
MAX_UNITS = 32
MAX_STATUS_BYTES = 4096
# Latencies kept per timeline second for its percentiles; past it the second is sampled.
MAX_LATENCIES_PER_SECOND = 4096
# Boxes are drawn on a neutral canvas at least this large (frames themselves never travel).
MIN_EXTENT = (640.0, 480.0)
# A replica counts as serving a site at a second if it answered one of the site's frames within
# this many seconds before it (a few frames a second cannot visit every replica each second).
SERVING_WINDOW_S = 10
MAX_REPLICA_NAMES = 64   # replica names kept per site and second


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def check_camera_name(name: str) -> str:
    """Camera names are shown to people: bounded length, no control characters."""
    if not name or len(name) > MAX_CAMERA_NAME:
        raise ValueError(f"camera name must be 1..{MAX_CAMERA_NAME} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError("camera name must not contain control characters")
    return name


@dataclass(frozen=True, slots=True)
class Received:
    """A record and the server wall-clock time it arrived (for rates and ages only)."""

    record: FrameRecord
    received_at: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "received_at": round(self.received_at, 3)}


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Statistics over a set of recent records; shares are of frames routed to a site."""

    frames: int                      # all records ever received (for this scope)
    fps: float                       # records per second over the rate window
    recent: int                      # records the shares/percentiles below are computed over
    edge_share: float | None
    cloud_share: float | None
    drop_rate: float | None
    error_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    escalation_share: float | None = None   # frames a cascade escalated to the cloud after the edge answered

    def to_dict(self) -> dict[str, Any]:
        return {name: _rounded(getattr(self, name)) for name in self.__slots__}  # type: ignore[attr-defined]


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def summarise(recent: Iterable[FrameRecord], frames: int, fps: float) -> StreamStats:
    """Shares, drop rate and latency percentiles of `recent`."""
    count = edge = cloud = dropped = errors = escalated = 0
    latencies: list[float] = []
    for record in recent:
        count += 1
        edge += record.site == "edge"
        cloud += record.site == "cloud"
        dropped += record.status == "dropped"
        errors += record.status == "error"
        escalated += record.escalated
        if record.status == "ok":
            latencies.append(record.t_total_ms)
    latencies.sort()
    routed = edge + cloud
    return StreamStats(
        frames=frames, fps=fps, recent=count,
        edge_share=edge / routed if routed else None, cloud_share=cloud / routed if routed else None,
        drop_rate=dropped / count if count else None, error_rate=errors / count if count else None,
        latency_p50_ms=percentile(latencies, 50), latency_p95_ms=percentile(latencies, 95),
        escalation_share=escalated / count if count else None)


class RateCounter:
    """Events per second over a sliding window, counted in whole-second buckets.

    The buckets kept overlap the window, so the rate divides by the time they span
    (never less than the window itself, so a stream that just started is not overstated).
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._counts: deque[list[int]] = deque()  # [second, count], oldest first

    def add(self, now: float) -> None:
        second = int(now)
        if self._counts and self._counts[-1][0] == second:
            self._counts[-1][1] += 1
        else:
            self._counts.append([second, 1])
        self._prune(now)

    def rate(self, now: float) -> float:
        self._prune(now)
        if not self._counts:
            return 0.0
        span = max(self.window_s, now - self._counts[0][0])
        return sum(count for _, count in self._counts) / span

    def _prune(self, now: float) -> None:
        oldest = now - self.window_s
        while self._counts and self._counts[0][0] + 1 <= oldest:
            self._counts.popleft()


@dataclass
class _Second:
    """Outcomes of the records received during one wall-clock second."""

    edge: int = 0
    cloud: int = 0
    dropped: int = 0
    error: int = 0
    latencies: list[float] = field(default_factory=list)
    seen_ok: int = 0
    serving: dict[str, set[str]] = field(default_factory=dict)   # site -> replicas that answered
    scaled: dict[str, int] | None = None                         # replicas the autoscaler reported

    def add(self, record: FrameRecord) -> None:
        if record.status == "dropped":
            self.dropped += 1
        elif record.status == "error":
            self.error += 1
        elif record.site == "edge":
            self.edge += 1
        elif record.site == "cloud":
            self.cloud += 1
        if record.status == "ok":
            self.seen_ok += 1
            names = self.serving.setdefault(record.site, set())
            if record.replica and len(names) < MAX_REPLICA_NAMES:
                names.add(record.replica)
            if len(self.latencies) < MAX_LATENCIES_PER_SECOND:
                self.latencies.append(record.t_total_ms)
            else:  # deterministic thinning keeps the sample spread over the second
                self.latencies[self.seen_ok % MAX_LATENCIES_PER_SECOND] = record.t_total_ms

    def to_dict(self, second: int) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {"t": second, "edge": self.edge, "cloud": self.cloud, "dropped": self.dropped,
                "error": self.error, "p50_ms": _rounded(percentile(ordered, 50)),
                "p95_ms": _rounded(percentile(ordered, 95))}


class Timeline:
    """Per-second outcome counts, latency percentiles and replicas for the last `seconds` seconds.

    Replicas per site come two ways: `serving`, the replicas that answered the site's frames in
    the SERVING_WINDOW_S seconds before (from the records' `replica`, so on any deployment),
    and `scaled`, the replica counts the autoscaler last reported (the local testbed's), carried
    forward from second to second."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self._buckets: OrderedDict[int, _Second] = OrderedDict()
        self._scaled_before: dict[str, int] | None = None   # the last report older than the buckets

    def _bucket(self, now: float) -> _Second:
        second = int(now)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = _Second()
            while len(self._buckets) > self.seconds + SERVING_WINDOW_S:
                _, old = self._buckets.popitem(last=False)
                if old.scaled is not None:
                    self._scaled_before = old.scaled
        return bucket

    def add(self, record: FrameRecord, now: float) -> None:
        self._bucket(now).add(record)

    def note_replicas(self, replicas: dict[str, int], now: float) -> None:
        self._bucket(now).scaled = dict(replicas)

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """One entry per second (oldest first), zeros for seconds without records."""
        last = int(now)
        first = last - self.seconds + 1
        empty = _Second()
        scaled = self._scaled_before
        recent: deque[dict[str, set[str]]] = deque(maxlen=SERVING_WINDOW_S)
        out = []
        for second in range(first - SERVING_WINDOW_S + 1, last + 1):
            bucket = self._buckets.get(second, empty)
            recent.append(bucket.serving)
            if bucket.scaled is not None:
                scaled = bucket.scaled
            if second < first:
                continue
            serving = {site: len(set().union(*(seen.get(site, set()) for seen in recent))) for site in ("edge", "cloud")}
            out.append({**bucket.to_dict(second), "serving": serving, "scaled": dict(scaled or {})})
        return out


@dataclass
class _Camera:
    recent: deque[Received]
    frames: int
    rate: RateCounter
    extent: tuple[float, float] = MIN_EXTENT

    def add(self, item: Received) -> None:
        self.recent.append(item)
        self.frames += 1
        self.rate.add(item.received_at)
        right = max((d.box[0] + d.box[2] for d in item.record.detections), default=0.0)
        bottom = max((d.box[1] + d.box[3] for d in item.record.detections), default=0.0)
        self.extent = (max(self.extent[0], right), max(self.extent[1], bottom))


@dataclass
class IngestCounters:
    records: int = 0
    status_messages: int = 0
    malformed: int = 0
    evicted_cameras: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"records": self.records, "status_messages": self.status_messages,
                "malformed": self.malformed, "evicted_cameras": self.evicted_cameras}


class LiveResults:
    """Thread-safe store fed by the MQTT network thread and read by request threads.

    At most `max_cameras` cameras are tracked; a new camera beyond that evicts the one
    that has been silent longest (and the eviction is counted).
    """

    def __init__(self, history: int = 200, max_cameras: int = 32, rate_window_s: float = 5.0,
                 timeline_s: int = 120, clock: Callable[[], float] = time.time) -> None:
        self.history = history
        self.max_cameras = max_cameras
        self.rate_window_s = rate_window_s
        self.timeline_s = timeline_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cameras: OrderedDict[str, _Camera] = OrderedDict()  # least recently updated first
        self._frames = 0
        self._rate = RateCounter(rate_window_s)
        self._timeline = Timeline(timeline_s)
        self._units: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._counters = IngestCounters()
        self._last_change = 0.0

    # -- ingest (MQTT network thread) -------------------------------------------------------
    def add_record(self, record: FrameRecord) -> Received:
        """Store one record; ValueError (counted as malformed) for an unusable camera name."""
        check_camera_name(record.camera)
        with self._lock:
            now = self._clock()
            item = Received(record, now)
            camera = self._cameras.get(record.camera)
            if camera is None:
                camera = self._new_camera(record.camera)
            else:
                self._cameras.move_to_end(record.camera)
            camera.add(item)
            self._frames += 1
            self._rate.add(now)
            self._timeline.add(record, now)
            self._counters.records += 1
            self._last_change = now
            return item

    def _new_camera(self, name: str) -> _Camera:
        while len(self._cameras) >= self.max_cameras:
            self._cameras.popitem(last=False)
            self._counters.evicted_cameras += 1
        camera = _Camera(deque(maxlen=self.history), 0, RateCounter(self.rate_window_s))
        self._cameras[name] = camera
        return camera

    def add_status(self, unit: str, status: dict[str, Any]) -> None:
        """Keep the latest (small) status object of a unit; ValueError when it is not usable."""
        check_camera_name(unit)  # same rules: it is a name shown on the page
        if len(_compact_json(status)) > MAX_STATUS_BYTES:
            raise ValueError(f"status of {unit!r} is larger than {MAX_STATUS_BYTES} bytes")
        replicas = status.get("replicas")
        if replicas is not None and not _is_replica_map(replicas):
            raise ValueError("status field 'replicas' must map unit names to non-negative integers")
        with self._lock:
            now = self._clock()
            if replicas is not None:
                self._timeline.note_replicas(replicas, now)
            self._units[unit] = (status, now)
            self._units.move_to_end(unit)
            while len(self._units) > MAX_UNITS:
                self._units.popitem(last=False)
            self._counters.status_messages += 1
            self._last_change = now

    def count_malformed(self) -> int:
        with self._lock:
            self._counters.malformed += 1
            return self._counters.malformed

    # -- reads (request threads) ------------------------------------------------------------
    def cameras(self) -> list[str]:
        with self._lock:
            return sorted(self._cameras)

    def has_camera(self, name: str) -> bool:
        with self._lock:
            return name in self._cameras

    def recent(self, camera: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first; all cameras merged by arrival when `camera` is None."""
        limit = self.history if limit is None else limit
        with self._lock:
            if camera is not None:
                items = list(self._cameras[camera].recent) if camera in self._cameras else []
            else:
                items = sorted((i for c in self._cameras.values() for i in c.recent),
                               key=lambda item: item.received_at)
        return [item.to_dict() for item in reversed(items[-limit:])] if limit else []

    def streams(self) -> list[dict[str, Any]]:
        """Per-camera summary: statistics, frame extent for drawing, latest record."""
        with self._lock:
            now = self._clock()
            out = []
            for name in sorted(self._cameras):
                camera = self._cameras[name]
                stats = summarise((i.record for i in camera.recent), camera.frames, camera.rate.rate(now))
                latest = camera.recent[-1]
                out.append({"camera": name, "stats": stats.to_dict(),
                            "extent": [round(v, 1) for v in camera.extent],
                            "last_received_at": round(latest.received_at, 3), "last": latest.to_dict()})
            return out

    def summary(self) -> dict[str, Any]:
        """Whole-testbed statistics, replica counts, per-second timeline, ingest counters."""
        with self._lock:
            now = self._clock()
            recent = (i.record for c in self._cameras.values() for i in c.recent)
            totals = summarise(recent, self._frames, self._rate.rate(now))
            return {
                "generated_at": round(now, 3),
                "window": {"rate_seconds": self.rate_window_s, "history_per_camera": self.history,
                           "timeline_seconds": self.timeline_s, "max_cameras": self.max_cameras},
                "cameras": len(self._cameras),
                "totals": totals.to_dict(),
                "replicas": self._replicas(),
                "units": {name: {"received_at": round(at, 3), "state": str(status.get("state", ""))[:64]}
                          for name, (status, at) in sorted(self._units.items())},
                "ingest": self._counters.to_dict(),
                "timeline": self._timeline.snapshot(now),
            }

    def _replicas(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for status, _at in self._units.values():
            if isinstance(status.get("replicas"), dict):
                merged.update(status["replicas"])
        return dict(sorted(merged.items()))

    def changed_within(self, seconds: float) -> bool:
        """Whether anything arrived recently (live rates are still moving)."""
        with self._lock:
            return self._clock() - self._last_change <= seconds

    @property
    def counters(self) -> IngestCounters:
        with self._lock:
            return IngestCounters(**self._counters.to_dict())


def _is_replica_map(value: Any) -> bool:
    return isinstance(value, dict) and len(value) <= MAX_UNITS and all(
        isinstance(k, str) and 0 < len(k) <= MAX_CAMERA_NAME and isinstance(v, int)
        and not isinstance(v, bool) and v >= 0 for k, v in value.items())


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


__all__ = ["LiveResults", "StreamStats", "Received", "RateCounter", "Timeline", "IngestCounters",
           "percentile", "summarise", "check_camera_name", "MAX_CAMERA_NAME"]
