"""Record summaries: counts, split, drop reasons and latency percentiles of ok frames only."""
from __future__ import annotations

import pytest

from edgeoffload.load.summary import percentiles, summarize, summary_rows, text_table
from edgeoffload.records import FrameRecord


def _records() -> list[FrameRecord]:
    edge = [FrameRecord("c", i, 0.0, "edge", "ok", t_total_ms=float(i), deadline_met=i < 80) for i in range(1, 101)]
    cloud = [FrameRecord("c", 100 + i, 0.0, "cloud", "ok", t_total_ms=1000.0) for i in range(10)]
    dropped = [FrameRecord("c", 200 + i, 0.0, "none", "dropped", reason="queue_full", t_total_ms=5e6) for i in range(5)]
    error = [FrameRecord("c", 300, 0.0, "cloud", "error", reason="")]
    return edge + cloud + dropped + error


def test_summary_counts_and_latencies() -> None:
    summary = summarize(_records())
    assert summary.records == 116
    assert summary.by_site == {"edge": 100, "cloud": 11, "none": 5}
    assert summary.by_status == {"ok": 110, "dropped": 5, "error": 1}
    assert summary.drop_reasons == {"dropped: queue_full": 5, "error: unspecified": 1}
    assert summary.latency_ms_by_site["edge"][50] == pytest.approx(50.5)
    assert summary.latency_ms_by_site["cloud"] == {50: 1000.0, 95: 1000.0, 99: 1000.0}
    assert summary.latency_ms[99] < 5e6  # dropped frames never count as latency
    assert (summary.deadline_met, summary.deadline_missed) == (79, 21)


def test_rows_render_as_an_aligned_table() -> None:
    rows = dict(summary_rows(summarize(_records())))
    assert rows["site edge"] == "100 (86.2%)"
    assert rows["status dropped"] == "5 (4.3%)"
    assert rows["deadline met/missed"] == "79/21"
    table = text_table([("a", "1"), ("longer name", "2")], "title")
    assert table.splitlines() == ["title", "-" * 23, "a            1", "longer name  2"]


def test_empty_input() -> None:
    summary = summarize([])
    assert summary.records == 0 and summary.latency_ms == {}
    assert dict(summary_rows(summary))["latency ms p50/p95/p99"] == "-"
    assert percentiles([]) == {}
