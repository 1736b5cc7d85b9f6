"""LiveResults: bounded history, camera eviction, statistics and the per-second timeline."""
from __future__ import annotations

import pytest

from edgeoffload.records import Detection, FrameRecord
from edgeoffload.units.live_results import (
    MAX_CAMERA_NAME,
    SERVING_WINDOW_S,
    LiveResults,
    RateCounter,
    Timeline,
    check_camera_name,
    percentile,
    summarise,
)


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(camera: str = "cam", frame_id: int = 0, site: str = "edge", status: str = "ok",
           total_ms: float = 10.0, boxes: tuple[tuple[float, float, float, float], ...] = (),
           replica: str = "") -> FrameRecord:
    return FrameRecord(camera=camera, frame_id=frame_id, captured_at=0.0, site=site, status=status,  # type: ignore[arg-type]
                       detections=tuple(Detection("person", 0.9, box) for box in boxes), t_total_ms=total_ms,
                       replica=replica)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


def test_history_per_camera_is_bounded_and_newest_first() -> None:
    live = LiveResults(history=20)
    for frame_id in range(50):
        live.add_record(record("a", frame_id))
    recent = live.recent("a")
    assert [r["frame_id"] for r in recent] == list(range(49, 29, -1))
    assert live.streams()[0]["stats"]["frames"] == 50  # the count is not bounded, the history is
    assert live.streams()[0]["stats"]["recent"] == 20
    assert [r["frame_id"] for r in live.recent("a", limit=3)] == [49, 48, 47]


def test_recent_without_camera_merges_cameras_by_arrival() -> None:
    clock = FakeClock()
    live = LiveResults(clock=clock)
    for frame_id, camera in enumerate(["a", "b", "a", "c"]):
        clock.now += 1
        live.add_record(record(camera, frame_id))
    assert [(r["camera"], r["frame_id"]) for r in live.recent(limit=3)] == [("c", 3), ("a", 2), ("b", 1)]
    assert live.recent("missing") == []


def test_longest_silent_camera_is_evicted_beyond_the_limit() -> None:
    live = LiveResults(max_cameras=3)
    for camera in ("a", "b", "c"):
        live.add_record(record(camera))
    live.add_record(record("a", 1))  # a is active again: b is now the longest silent
    live.add_record(record("d"))
    assert live.cameras() == ["a", "c", "d"]
    assert live.counters.evicted_cameras == 1


def test_statistics_over_recent_records() -> None:
    live = LiveResults()
    outcomes = [("edge", "ok", 10.0)] * 6 + [("cloud", "ok", 50.0)] * 2 + [("none", "dropped", 0.0)] * 2
    for frame_id, (site, status, ms) in enumerate(outcomes):
        live.add_record(record("a", frame_id, site, status, ms))
    stats = live.streams()[0]["stats"]
    assert stats["edge_share"] == 0.75 and stats["cloud_share"] == 0.25
    assert stats["drop_rate"] == 0.2 and stats["error_rate"] == 0.0
    assert stats["latency_p50_ms"] == 10.0 and stats["latency_p95_ms"] == 50.0
    totals = live.summary()["totals"]
    assert totals["frames"] == 10 and totals["edge_share"] == 0.75
    assert stats["escalation_share"] == 0.0


def test_escalations_of_a_cascade_are_counted() -> None:
    import dataclasses

    recent = [dataclasses.replace(record("a", i, "cloud"), escalated=True) for i in range(3)] + [record("a", 3)]
    assert summarise(recent, frames=4, fps=1.0).escalation_share == 0.75


def test_statistics_of_no_routed_frames_are_unknown_not_zero() -> None:
    stats = summarise([record(site="none", status="dropped")], frames=1, fps=0.0)
    assert stats.edge_share is None and stats.latency_p50_ms is None and stats.drop_rate == 1.0


def test_frames_per_second_use_the_rate_window() -> None:
    clock = FakeClock(2_000.0)
    live = LiveResults(rate_window_s=5.0, clock=clock)
    for i in range(50):  # 10 frames/s for 5 s
        clock.now = 2_000.0 + i / 10
        live.add_record(record("a", i))
    assert live.summary()["totals"]["fps"] == pytest.approx(10.0)
    clock.now += 10  # silence: the rate decays to zero
    assert live.summary()["totals"]["fps"] == 0.0
    assert live.streams()[0]["stats"]["fps"] == 0.0


def test_rate_counter_measures_a_steady_rate_and_forgets_old_seconds() -> None:
    counter = RateCounter(window_s=2.0)
    for i in range(100):  # 10 events/s for 10 s
        counter.add(i / 10)
    assert counter.rate(9.95) == pytest.approx(10.0, rel=0.05)
    assert counter.rate(10.5) == pytest.approx(20 / 2.5)  # seconds 8 and 9 remain, spanning 2.5 s
    assert counter.rate(12.5) == 0.0
    starting = RateCounter(window_s=5.0)
    starting.add(0.0)
    assert starting.rate(0.05) == pytest.approx(1 / 5.0)  # one event is not 20 events/s


def test_timeline_has_one_entry_per_second_with_zeros_for_gaps() -> None:
    timeline = Timeline(seconds=10)
    timeline.add(record(site="edge", total_ms=10.0), 100.2)
    timeline.add(record(site="cloud", total_ms=30.0), 100.7)
    timeline.add(record(site="none", status="dropped"), 103.1)
    snapshot = timeline.snapshot(105.5)
    assert len(snapshot) == 10 and snapshot[-1]["t"] == 105
    by_second = {entry["t"]: entry for entry in snapshot}
    assert by_second[100] == {"t": 100, "edge": 1, "cloud": 1, "dropped": 0, "error": 0, "p50_ms": 10.0, "p95_ms": 30.0,
                              "serving": {"edge": 0, "cloud": 0}, "scaled": {}}
    assert by_second[103]["dropped"] == 1 and by_second[103]["p50_ms"] is None
    assert by_second[101]["edge"] == 0


def test_timeline_memory_is_bounded() -> None:
    timeline = Timeline(seconds=5)
    for second in range(100):
        timeline.add(record(replica=f"edge-{second}"), float(second))
    assert len(timeline._buckets) == 5 + SERVING_WINDOW_S   # the shown seconds and the window before them


def test_timeline_counts_replicas_serving_each_site_and_the_autoscalers_reports() -> None:
    timeline = Timeline(seconds=30)
    timeline.note_replicas({"edge-inference": 1, "cloud-inference": 2}, 95.0)   # before the window: carried in
    timeline.add(record(site="edge", replica="edge-1"), 100.1)
    timeline.add(record(site="edge", replica="edge-1"), 100.6)
    timeline.add(record(site="cloud", replica="cloud-1"), 101.0)
    timeline.note_replicas({"edge-inference": 2, "cloud-inference": 2}, 104.2)
    timeline.add(record(site="edge", replica="edge-2"), 105.3)
    timeline.add(record(site="edge", status="dropped"), 106.0)
    by_second = {entry["t"]: entry for entry in timeline.snapshot(125.0)}
    assert by_second[100]["serving"] == {"edge": 1, "cloud": 0}
    assert by_second[105]["serving"] == {"edge": 2, "cloud": 1}          # within the last 10 s
    assert by_second[111]["serving"] == {"edge": 1, "cloud": 0}          # edge-1 last seen at 100
    assert by_second[116]["serving"] == {"edge": 0, "cloud": 0}
    assert by_second[103]["scaled"] == {"edge-inference": 1, "cloud-inference": 2}
    assert by_second[125]["scaled"] == {"edge-inference": 2, "cloud-inference": 2}


@pytest.mark.parametrize("name", ["", "x" * (MAX_CAMERA_NAME + 1), "cam\n1", "cam\x00", "tab\there"])
def test_unusable_camera_names_are_refused(name: str) -> None:
    live = LiveResults()
    with pytest.raises(ValueError):
        live.add_record(record(name))
    assert live.cameras() == []
    assert check_camera_name("<b>hostile</b> but printable") == "<b>hostile</b> but printable"


def test_extent_grows_to_cover_every_box_seen() -> None:
    live = LiveResults()
    live.add_record(record("a", boxes=((10, 10, 20, 20),)))
    assert live.streams()[0]["extent"] == [640.0, 480.0]
    live.add_record(record("a", 1, boxes=((1200, 600, 80, 120),)))
    assert live.streams()[0]["extent"] == [1280.0, 720.0]


def test_status_replicas_are_merged_and_validated() -> None:
    live = LiveResults()
    live.add_status("autoscaler", {"replicas": {"edge-inference": 2, "cloud-inference": 3}, "at": 1.0})
    live.add_status("preprocessor", {"state": "running"})
    summary = live.summary()
    assert summary["replicas"] == {"cloud-inference": 3, "edge-inference": 2}
    assert summary["units"]["preprocessor"]["state"] == "running"
    for bad in ({"replicas": {"edge": -1}}, {"replicas": {"edge": "2"}}, {"replicas": [2]},
                {"replicas": {"edge": True}}, {"blob": "x" * 5000}):
        with pytest.raises(ValueError):
            live.add_status("autoscaler", bad)
    assert live.summary()["replicas"] == {"cloud-inference": 3, "edge-inference": 2}
    assert live.counters.status_messages == 2


def test_changed_within_tracks_the_last_update() -> None:
    clock = FakeClock()
    live = LiveResults(clock=clock)
    assert not live.changed_within(5)
    live.add_record(record())
    clock.now += 3
    assert live.changed_within(5)
    clock.now += 3
    assert not live.changed_within(5)
