"""Streaming statistics of a simulation run and the summary it produces.

Nothing here keeps per-frame data: latencies go into a log-bucket histogram (1 % relative
resolution, a few KB whatever the run length), means are running sums.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

_RESOLUTION = 0.01                       # bucket width: 1 % of the value
_LOG_STEP = math.log1p(_RESOLUTION)
_MIN_MS = 1e-3                           # everything below 1 us lands in bucket 0
_BUCKETS = int(math.log(1e8 / _MIN_MS) / _LOG_STEP) + 2   # up to ~28 hours


class LatencyHistogram:
    """Fixed log-spaced buckets; quantiles are accurate to +-0.5 % of the value."""

    __slots__ = ("counts", "count")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0

    def add(self, ms: float) -> None:
        index = int(math.log(ms / _MIN_MS) / _LOG_STEP) + 1 if ms > _MIN_MS else 0
        self.counts[index if index < _BUCKETS else _BUCKETS - 1] += 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), as the geometric middle of its bucket; None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, bucket in enumerate(self.counts):
            seen += bucket
            if seen >= rank:
                if index == 0:
                    return 0.0
                return _MIN_MS * math.exp((index - 0.5) * _LOG_STEP)
        return None

    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        merged = LatencyHistogram()
        merged.counts = [a + b for a, b in zip(self.counts, other.counts)]
        merged.count = self.count + other.count
        return merged


class SiteAccumulator:
    """Per-site running totals of counted (post-warm-up) frames."""

    __slots__ = ("frames", "ok", "dropped", "errors", "queue_ms", "network_ms", "inference_ms", "total_ms",
                 "latency", "bytes_sent", "deadline_met", "deadline_missed")

    def __init__(self) -> None:
        self.frames = self.ok = self.dropped = self.errors = self.bytes_sent = 0
        self.deadline_met = self.deadline_missed = 0
        self.queue_ms = self.network_ms = self.inference_ms = self.total_ms = 0.0
        self.latency = LatencyHistogram()


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True)
class SiteSummary:
    frames: int
    ok: int
    dropped: int
    errors: int
    mean_queue_ms: float | None
    mean_network_ms: float | None
    mean_inference_ms: float | None
    mean_total_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    pod_seconds: float
    busy_seconds: float            # worker-seconds spent serving
    peak_replicas: int
    energy_j: float
    cost: float                    # pod-hours x price

    @staticmethod
    def build(acc: SiteAccumulator, pod_seconds: float, busy_seconds: float, peak_replicas: int,
              energy_j: float, cost: float) -> "SiteSummary":
        def mean(total: float, count: int) -> float | None:
            return _rounded(total / count) if count else None
        return SiteSummary(
            frames=acc.frames, ok=acc.ok, dropped=acc.dropped, errors=acc.errors,
            mean_queue_ms=mean(acc.queue_ms, acc.ok), mean_network_ms=mean(acc.network_ms, acc.ok),
            mean_inference_ms=mean(acc.inference_ms, acc.ok), mean_total_ms=mean(acc.total_ms, acc.ok),
            p50_ms=_rounded(acc.latency.quantile(0.50)), p95_ms=_rounded(acc.latency.quantile(0.95)),
            p99_ms=_rounded(acc.latency.quantile(0.99)), pod_seconds=round(pod_seconds, 3),
            busy_seconds=round(busy_seconds, 3), peak_replicas=peak_replicas, energy_j=round(energy_j, 3),
            cost=round(cost, 6))


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    t: float
    edge_replicas: int
    edge_ready: int
    cloud_replicas: int
    cloud_ready: int
    edge_in_flight: int
    cloud_in_flight: int


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run produced; `to_dict()` is what summary.json holds."""

    scenario: str
    policy: str
    seed: int
    duration_s: float
    warmup_s: float
    frames: int                    # counted frames (captured after warm-up)
    ok: int
    dropped: int
    errors: int
    edge_frames: int
    cloud_frames: int
    cloud_share: float | None
    drop_rate: float | None
    mean_ms: float | None          # end-to-end latency of answered frames
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    deadline_frames: int           # frames that had a deadline
    deadline_miss_rate: float | None
    egress_bytes: int
    egress_cost: float
    pod_cost: float
    energy_j: float
    sites: dict[str, SiteSummary] = field(default_factory=dict)
    timeline: tuple[TimelinePoint, ...] = ()
    escalated: int = 0                       # counted frames a cascade policy sent on to the cloud
    escalation_share: float | None = None    # escalated / frames
    agreement: float | None = None           # answered frames whose answer agrees with the cloud model's
                                             # (None: the scenario has no edge.answers with `agrees`)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["timeline"] = [asdict(point) for point in self.timeline]
        return raw

    def table(self) -> str:
        """A human-readable summary for the terminal."""
        def fmt(value: Any, unit: str = "") -> str:
            if value is None:
                return "-"
            if isinstance(value, float):
                return f"{value:,.3f}{unit}" if abs(value) < 1000 else f"{value:,.1f}{unit}"
            return f"{value:,}{unit}"

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.2f} %"
        rows = [
            ("scenario", self.scenario), ("policy", self.policy), ("seed", fmt(self.seed)),
            ("simulated", f"{self.duration_s:g} s (warm-up {self.warmup_s:g} s)"),
            ("frames", fmt(self.frames)), ("answered / dropped / errors", f"{fmt(self.ok)} / {fmt(self.dropped)} / {fmt(self.errors)}"),
            ("edge / cloud", f"{fmt(self.edge_frames)} / {fmt(self.cloud_frames)} (cloud {pct(self.cloud_share)})"),
            ("drop rate", pct(self.drop_rate)),
            ("latency mean / p50 / p95 / p99", " / ".join(fmt(v, " ms") for v in (self.mean_ms, self.p50_ms, self.p95_ms, self.p99_ms))),
            ("deadline miss rate", f"{pct(self.deadline_miss_rate)} of {fmt(self.deadline_frames)}"),
            ("egress", f"{self.egress_bytes / 1e6:,.1f} MB (cost {self.egress_cost:.4f})"),
            ("pod cost", f"{self.pod_cost:.4f}"), ("energy", f"{self.energy_j / 3600:,.3f} Wh"),
        ]
        if self.escalated:
            rows.append(("escalated to the cloud", f"{fmt(self.escalated)} ({pct(self.escalation_share)} of frames)"))
        if self.agreement is not None:
            rows.append(("answers agreeing with the cloud model", pct(self.agreement)))
        for name, site in self.sites.items():
            rows.append((f"{name}: frames ok/drop/err", f"{fmt(site.frames)}: {fmt(site.ok)} / {fmt(site.dropped)} / {fmt(site.errors)}"))
            rows.append((f"{name}: queue / net / infer mean", " / ".join(
                fmt(v, " ms") for v in (site.mean_queue_ms, site.mean_network_ms, site.mean_inference_ms))))
            rows.append((f"{name}: p50 / p95 / p99", " / ".join(fmt(v, " ms") for v in (site.p50_ms, site.p95_ms, site.p99_ms))))
            rows.append((f"{name}: pod-s / peak pods / energy", f"{fmt(site.pod_seconds)} / {site.peak_replicas} / {site.energy_j / 3600:,.3f} Wh"))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


__all__ = ["LatencyHistogram", "SiteAccumulator", "SiteSummary", "Summary", "TimelinePoint"]
