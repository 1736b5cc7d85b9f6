"""Summaries of FrameRecords for people: counts, edge/cloud split, drops, latency percentiles.

Used at the end of a replay and of `edgeoffload demo`; the same function works on records
read back from a CSV/Parquet file, so a run can be summarised again later.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from edgeoffload.records import FrameRecord

PERCENTILES: tuple[int, ...] = (50, 95, 99)


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """Aggregate outcome of a set of records; latencies are t_total_ms of `ok` records."""

    records: int
    by_site: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[int, float] = field(default_factory=dict)
    latency_ms_by_site: dict[str, dict[int, float]] = field(default_factory=dict)
    deadline_met: int = 0
    deadline_missed: int = 0


def percentiles(values: Sequence[float], points: Sequence[int] = PERCENTILES) -> dict[int, float]:
    if not values:
        return {}
    computed = np.percentile(np.asarray(values, dtype=float), points)
    return {p: float(v) for p, v in zip(points, computed)}


def summarize(records: Iterable[FrameRecord]) -> RecordSummary:
    by_site: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    ok_latency: list[float] = []
    site_latency: dict[str, list[float]] = {}
    met = missed = total = 0
    for record in records:
        total += 1
        by_site[record.site] += 1
        by_status[record.status] += 1
        if record.status != "ok":
            reasons[f"{record.status}: {record.reason or 'unspecified'}"] += 1
        else:
            ok_latency.append(record.t_total_ms)
            site_latency.setdefault(record.site, []).append(record.t_total_ms)
        if record.deadline_met is True:
            met += 1
        elif record.deadline_met is False:
            missed += 1
    return RecordSummary(total, dict(by_site), dict(by_status), dict(reasons), percentiles(ok_latency),
                         {site: percentiles(values) for site, values in sorted(site_latency.items())}, met, missed)


def text_table(rows: Sequence[tuple[str, str]], title: str = "") -> str:
    """Two aligned columns, plain text (readable in a terminal and in CI logs)."""
    width = max((len(name) for name, _ in rows), default=0)
    lines = [title, "-" * max(len(title), width + 12)] if title else []
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def summary_rows(summary: RecordSummary) -> list[tuple[str, str]]:
    def share(count: int) -> str:
        return f"{count} ({100.0 * count / summary.records:.1f}%)" if summary.records else "0"

    def latency(values: dict[int, float]) -> str:
        return " / ".join(f"{values[p]:.1f}" for p in PERCENTILES) if values else "-"

    rows = [("records", str(summary.records))]
    rows += [(f"site {site}", share(summary.by_site.get(site, 0))) for site in ("edge", "cloud", "none")]
    rows += [(f"status {status}", share(summary.by_status.get(status, 0))) for status in ("ok", "dropped", "error")]
    rows += [(f"  {reason}", str(count)) for reason, count in sorted(summary.drop_reasons.items())]
    rows.append(("latency ms p50/p95/p99", latency(summary.latency_ms)))
    rows += [(f"  {site} p50/p95/p99", latency(values)) for site, values in summary.latency_ms_by_site.items()]
    if summary.deadline_met or summary.deadline_missed:
        rows.append(("deadline met/missed", f"{summary.deadline_met}/{summary.deadline_missed}"))
    return rows


def summary_numbers(summary: RecordSummary) -> dict[str, Any]:
    """The same summary for a file (summary.json): numbers stay numbers, latencies in ms."""
    def latency(values: dict[int, float]) -> dict[str, float]:
        return {f"p{p}": round(values[p], 3) for p in PERCENTILES if p in values}

    return {"records": summary.records, "by_site": dict(summary.by_site), "by_status": dict(summary.by_status),
            "drop_reasons": dict(summary.drop_reasons), "latency_ms": latency(summary.latency_ms),
            "latency_ms_by_site": {site: latency(values) for site, values in summary.latency_ms_by_site.items()},
            "deadline_met": summary.deadline_met, "deadline_missed": summary.deadline_missed}


__all__ = ["RecordSummary", "summarize", "percentiles", "summary_rows", "summary_numbers", "text_table", "PERCENTILES"]
