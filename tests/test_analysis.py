"""The analysis pipeline: one metric definition for simulated and real runs, tables, fronts, plots."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edgeoffload.analysis import (POLICY_COLUMNS, Column, ReplicaPoint, after_warmup, compare, decisions_per_bin, from_records,
                                  from_runs, from_summary, markdown_table, pareto_front, plot_grouped_bars,
                                  plot_decisions, plot_latency_cdf, plot_pareto, plot_timelines, pod_seconds, simulate_policies,
                                  step_at, timeline_from_summary, write_table)
from edgeoffload.records import FrameRecord, read_records
from edgeoffload.sim import load_scenario, run_scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(frame_id: int, site: str = "edge", status: str = "ok", total: float = 10.0, sent: int = 0,
           met: bool | None = None, captured: float = 0.0, camera: str = "c") -> FrameRecord:
    return FrameRecord(camera=camera, frame_id=frame_id, captured_at=captured, site=site, status=status,  # type: ignore[arg-type]
                       bytes_sent=sent, t_total_ms=total, deadline_met=met)


SCENARIO = {
    "name": "analysis", "duration_s": 40, "warmup_s": 5, "seed": 3, "timeline_interval_s": 5,
    "cameras": [{"name": "cam", "count": 4, "fps": 10, "arrival": "poisson",
                 "frame_bytes": {"dist": "lognormal", "mean": 40000, "cv": 0.2}, "deadline_ms": 120}],
    "wan": {"bandwidth_mbps": 40, "rtt_ms": 30},
    "edge": {"replicas": 1, "workers": 1, "queue_capacity": 5, "service_ms": {"dist": "exponential", "mean": 30}},
    "cloud": {"replicas": 1, "workers": 2, "service_ms": {"dist": "lognormal", "mean": 20, "cv": 0.3}},
}


def test_record_metrics_follow_the_documented_definitions() -> None:
    records = [record(0, total=10), record(1, total=20, met=True), record(2, "cloud", total=30, sent=1000, met=False),
               record(3, "cloud", "dropped", total=5, sent=900, met=False), record(4, "edge", "dropped", total=1),
               record(5, "none", "error", total=0)]
    metrics = from_records(records, "run", pod_seconds=12.0)
    assert (metrics.frames, metrics.ok, metrics.dropped, metrics.errors) == (6, 3, 2, 1)
    assert (metrics.edge_frames, metrics.cloud_frames) == (3, 2)
    assert metrics.cloud_share == pytest.approx(2 / 5)            # of frames that reached a site
    assert metrics.edge_share == pytest.approx(3 / 5)
    assert metrics.uplink_bytes == 1900                            # dropped at the cloud still crossed the WAN
    assert metrics.drop_rate == pytest.approx(2 / 6)
    assert metrics.deadline_frames == 3 and metrics.deadline_miss_rate == pytest.approx(2 / 3)
    assert metrics.p50_ms == pytest.approx(float(np.percentile([10, 20, 30], 50)))
    assert metrics.p95_ms == pytest.approx(float(np.percentile([10, 20, 30], 95)))
    assert metrics.mean_ms == pytest.approx(20.0)
    assert metrics.pod_seconds == 12.0
    empty = from_records([], "empty")
    assert empty.cloud_share is None and empty.p50_ms is None and empty.drop_rate is None


def test_simulator_summary_and_its_records_give_the_same_metrics(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO)
    result = run_scenario(scenario, "random:0.4", out=tmp_path / "records.csv")
    from_sim = from_summary(result.summary, "summary")
    counted = [r for r in read_records(tmp_path / "records.csv") if r.captured_at >= scenario.warmup_s]
    from_files = from_records(counted, "records")
    for name in ("frames", "ok", "dropped", "errors", "edge_frames", "cloud_frames", "uplink_bytes", "deadline_frames"):
        assert getattr(from_sim, name) == getattr(from_files, name), name
    assert from_sim.cloud_share == pytest.approx(from_files.cloud_share, abs=1e-6)
    assert from_sim.deadline_miss_rate == pytest.approx(from_files.deadline_miss_rate, abs=1e-6)
    assert from_sim.dropped > 0 and 0 < from_sim.cloud_share < 1   # the scenario exercises both
    for name in ("p50_ms", "p95_ms"):  # the simulator's histogram is exact to +-0.5 %, plus rank rounding
        assert getattr(from_sim, name) == pytest.approx(getattr(from_files, name), rel=0.03)
    assert from_sim.pod_seconds == sum(site.pod_seconds for site in result.summary.sites.values())
    timeline = timeline_from_summary(result.summary)
    assert [p.t for p in timeline] == [p.t for p in result.summary.timeline]
    assert all(p.edge == 1 and p.cloud == 1 for p in timeline)


def test_simulate_policies_runs_every_spec_on_the_same_arrivals() -> None:
    scenario = load_scenario(SCENARIO)
    rows = simulate_policies(scenario, ["edge-only", "cloud-only", "random:0.3"], label=lambda s: f"p/{s}")
    assert [r.label for r in rows] == ["p/edge-only", "p/cloud-only", "p/random:0.3"]
    assert len({r.frames for r in rows}) == 1
    assert rows[0].cloud_share == 0 and rows[0].uplink_bytes == 0
    assert rows[1].cloud_share == 1 and rows[1].uplink_bytes > 0
    assert 0.2 < rows[2].cloud_share < 0.4


def test_warmup_is_relative_to_the_first_capture() -> None:
    records = [record(i, captured=1000.0 + i) for i in range(10)]
    assert [r.frame_id for r in after_warmup(records, 3.0)] == list(range(3, 10))


def test_pooled_runs_average_counts_and_pool_percentiles() -> None:
    first = [record(i, "cloud", total=10.0 * (i + 1), sent=100) for i in range(4)]
    second = [record(i, "edge", total=100.0) for i in range(2)]
    pooled = from_runs([first, second], "both")
    assert pooled.frames == 3 and pooled.uplink_bytes == 200        # means per run
    assert pooled.cloud_share == pytest.approx(4 / 6)               # over the pooled records
    assert pooled.p50_ms == pytest.approx(float(np.percentile([10, 20, 30, 40, 100, 100], 50)))
    with pytest.raises(ValueError):
        from_runs([], "none")


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1.0, 9.0), (2.0, 5.0), (3.0, 6.0), (4.0, 2.0), (5.0, 2.0), (2.0, 7.0), (float("nan"), 1.0)]
    assert pareto_front(points) == [0, 1, 3]
    assert pareto_front([]) == []


def test_compare_checks_relative_latency_and_absolute_share_errors() -> None:
    real = from_records([record(i, "cloud" if i % 4 == 0 else "edge", total=100.0 + i) for i in range(100)], "real")
    close = from_records([record(i, "cloud" if i % 5 == 0 else "edge", total=110.0 + i) for i in range(100)], "sim")
    far = from_records([record(i, "cloud" if i % 2 == 0 else "edge", total=150.0 + i) for i in range(100)], "sim")
    by_metric = {d.metric: d for d in compare(real, close)}
    assert by_metric["p50_ms"].within and by_metric["p50_ms"].error == pytest.approx(100 * 10 / 149.5, rel=1e-3)
    assert by_metric["cloud_share"].within and by_metric["cloud_share"].error == pytest.approx(-5.0)
    assert by_metric["cloud_share"].unit == "pts" and by_metric["p95_ms"].unit == "%"
    by_metric = {d.metric: d for d in compare(real, far)}
    assert not by_metric["p50_ms"].within and not by_metric["p95_ms"].within
    assert not by_metric["cloud_share"].within and by_metric["cloud_share"].error == pytest.approx(25.0)
    assert by_metric["drop_rate"].within


def test_replica_timeline_helpers() -> None:
    timeline = [ReplicaPoint(0.0, 1, 1), ReplicaPoint(10.0, 1, 2), ReplicaPoint(15.0, 2, 2)]
    assert pod_seconds(timeline, 20.0) == pytest.approx(2 * 10 + 3 * 5 + 4 * 5)
    assert pod_seconds(timeline, 12.0) == pytest.approx(2 * 10 + 3 * 2)
    assert step_at(timeline, 9.9, "cloud") == 1 and step_at(timeline, 10.0, "cloud") == 2
    assert step_at(timeline, -1.0, "edge") is None


def test_tables_as_csv_and_markdown(tmp_path: Path) -> None:
    rows = [from_records([record(0, total=12.345), record(1, "cloud", total=50.0, sent=2_500_000)], "x").to_row(),
            {"label": "missing"}]
    text = write_table(tmp_path / "t.csv", rows, POLICY_COLUMNS)
    lines = text.splitlines()
    assert lines[0].startswith("| policy | frames | edge % | cloud % | uplink MB")
    assert lines[1].startswith("|---|---:|")
    assert "| x | 2 | 50.0 | 50.0 | 2.5 |" in lines[2]
    assert lines[3].startswith("| missing | - | - |")
    with (tmp_path / "t.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == [c.key for c in POLICY_COLUMNS]
    assert written[0]["cloud_share"] == "0.5" and written[1]["frames"] == ""
    assert markdown_table([{"a": 1234567}], [Column("a", "A", "int")]).splitlines()[2] == "| 1,234,567 |"


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    paths = [
        plot_pareto(tmp_path / "pareto.png", {"k": [(1.0, 9.0, "1"), (2.0, 5.0, "2")], "p": [(3.0, None, "x")]},
                    "uplink MB", "p95 ms", "front", references=[(2.5, 4.0, "min-latency")]),
        plot_grouped_bars(tmp_path / "bars.png", {"s1": {"a": 1.0, "b": 2.0}, "s2": {"a": 3.0, "b": None}},
                          "p95 ms", "bars", log_scale=True),
        plot_latency_cdf(tmp_path / "cdf.png", {"real": [1.0, 2.0, 3.0], "sim": [1.5, 2.5]}, "cdf"),
        plot_timelines(tmp_path / "sub" / "timeline.png", {"real": [ReplicaPoint(0, 1, 1), ReplicaPoint(5, 1, 2)]},
                       "replicas"),
        plot_decisions(tmp_path / "decisions.png", [record(i, "edge" if i % 2 else "cloud") for i in range(6)],
                       "decisions"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_syncs_compare_replicas_within_one_and_events_within_a_period() -> None:
    from edgeoffload.analysis import SyncPoint, compare_syncs, scale_events

    real = [SyncPoint(0.4, "edge", 1, 1), SyncPoint(15.4, "edge", 1, 3), SyncPoint(30.4, "edge", 3, 3),
            SyncPoint(45.4, "edge", 3, 2), SyncPoint(15.4, "cloud", 2, 2)]
    close = [SyncPoint(0.5, "edge", 1, 1), SyncPoint(15.5, "edge", 1, 2), SyncPoint(30.5, "edge", 2, 3),
             SyncPoint(45.5, "edge", 3, 3), SyncPoint(60.5, "edge", 3, 2), SyncPoint(15.5, "cloud", 2, 2)]
    result = compare_syncs(real, close, period_s=15)
    assert (result.syncs, result.within_one, result.largest_gap) == (5, 5, 1) and result.replicas_within_one
    # up 1->3 at 15.4 matches up 1->2 at 15.5; the down at 45.4 matches the one a sync later (60.5);
    # the simulator's second step up (30.5) has no counterpart
    assert [(r.t, s.t) for r, s in result.matched] == [(15.4, 15.5), (45.4, 60.5)]
    assert result.missed == [] and [e.t for e in result.extra] == [30.5]
    assert not result.events_within_a_period
    late = compare_syncs(real, [SyncPoint(45.5, "edge", 1, 3), SyncPoint(75.5, "edge", 3, 2)], period_s=15)
    assert [e.t for e in late.missed] == [15.4, 45.4]            # two syncs (30 s) late is too late
    far = compare_syncs(real, [SyncPoint(15.5, "edge", 1, 4)], period_s=15)   # 4 in force from 15.5 on
    assert (far.within_one, far.largest_gap, far.worst) == (3, 2, real[3]) and not far.replicas_within_one
    assert [e.direction for e in scale_events(real)] == ["up", "down"]


def test_phases_are_cut_on_the_time_since_the_first_frame() -> None:
    from edgeoffload.analysis import in_phase

    records = [FrameRecord("cam", i, 1000.0 + t, "edge", "ok") for i, t in enumerate((0.0, 5.0, 44.9, 45.0, 120.0))]
    assert [r.frame_id for r in in_phase(records, 5.0, 45.0)] == [1, 2]
    assert [r.frame_id for r in in_phase(records, 45.0, 1e9)] == [3, 4]


def test_decisions_are_counted_per_second_of_capture_time() -> None:
    records = [FrameRecord(camera="c", frame_id=i, captured_at=1000.0 + t, site=site, status=status)  # type: ignore[arg-type]
               for i, (t, site, status) in enumerate([(0.0, "edge", "ok"), (0.5, "cloud", "ok"), (1.2, "edge", "ok"),
                                                      (2.9, "none", "dropped"), (2.95, "none", "error")])]
    assert decisions_per_bin(records) == {"edge": [1, 1, 0], "cloud": [1, 0, 0], "dropped": [0, 0, 1],
                                          "error": [0, 0, 1]}
    assert decisions_per_bin([]) == {"edge": [], "cloud": [], "dropped": [], "error": []}
