"""Trace generators: long seeded traces match their rates; files round-trip; bad files name the line."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeoffload.load.sample_video import sample_source
from edgeoffload.load.trace import (TraceError, TraceSpec, diurnal_rate, generate, parse_trace, read_trace,
                                    with_frame_content, with_frame_sizes, write_trace)


def _rate(spec: TraceSpec) -> float:
    trace = generate(spec)
    return len(trace) / (spec.cameras * spec.duration_s)


@pytest.mark.parametrize("kind", ["periodic", "poisson", "mmpp", "diurnal", "step"])
def test_long_trace_matches_its_mean_rate(kind: str) -> None:
    # diurnal over whole periods averages to the base rate; mmpp to its dwell-weighted rate.
    spec = TraceSpec(kind=kind, cameras=4, rate=5.0, duration_s=3000.0, seed=7, jitter=0.2, period_s=100.0,
                     calm_s=10.0, burst_s=2.0, burst_factor=5.0, step_start_s=1000.0, step_end_s=2000.0)
    expected = spec.mean_rate()
    assert _rate(spec) == pytest.approx(expected, rel=0.05)


def test_a_step_multiplies_the_rate_between_its_bounds_only() -> None:
    spec = TraceSpec(kind="step", cameras=3, rate=2.0, duration_s=900.0, seed=4, step_factor=3.0,
                     step_start_s=300.0, step_end_s=600.0)
    times = np.array([event.time_s for event in generate(spec)])
    rates = [((times >= a) & (times < b)).sum() / (b - a) / 3 for a, b in ((0, 300), (300, 600), (600, 900))]
    assert rates == pytest.approx([2.0, 6.0, 2.0], rel=0.07)
    assert spec.mean_rate() == pytest.approx(2.0 * (1 + 2 / 3))
    with pytest.raises(TraceError, match="step must satisfy"):
        TraceSpec(kind="step", cameras=1, rate=1.0, duration_s=10.0, step_start_s=5.0, step_end_s=2.0).validate()


def test_mmpp_mean_rate_is_dwell_weighted() -> None:
    spec = TraceSpec(kind="mmpp", cameras=1, rate=2.0, duration_s=10.0, calm_s=8.0, burst_s=2.0, burst_factor=6.0)
    assert spec.mean_rate() == pytest.approx(2.0 * (0.8 + 0.2 * 6.0))


def test_mmpp_is_burstier_than_poisson() -> None:
    """Counts per second of an MMPP are overdispersed (variance > mean); Poisson's are not."""
    def dispersion(kind: str) -> float:
        spec = TraceSpec(kind=kind, cameras=1, rate=4.0, duration_s=4000.0, seed=3)
        times = np.array([e.time_s for e in generate(spec)])
        counts = np.bincount(times.astype(int), minlength=int(spec.duration_s))
        return counts.var() / counts.mean()

    assert dispersion("poisson") == pytest.approx(1.0, abs=0.1)
    assert dispersion("mmpp") > 2.0


def test_diurnal_follows_the_sinusoid() -> None:
    spec = TraceSpec(kind="diurnal", cameras=2, rate=10.0, duration_s=2000.0, period_s=100.0, amplitude=0.8, seed=5)
    times = np.array([e.time_s for e in generate(spec)])
    phase = (times % spec.period_s) / spec.period_s
    peak_quarter = np.count_nonzero((phase > 0.125) & (phase < 0.375))   # around sin = +1
    trough_quarter = np.count_nonzero((phase > 0.625) & (phase < 0.875))  # around sin = -1
    ratio = peak_quarter / trough_quarter
    # Integrated over those quarters: (1 + 0.8*0.9003) / (1 - 0.8*0.9003) = 6.16
    mean_sin = 2 * math.sqrt(2) / math.pi
    assert ratio == pytest.approx((1 + 0.8 * mean_sin) / (1 - 0.8 * mean_sin), rel=0.15)
    assert diurnal_rate(spec, np.array([25.0]))[0] == pytest.approx(18.0)


def test_periodic_without_jitter_is_exact_and_jitter_keeps_order() -> None:
    exact = generate(TraceSpec(kind="periodic", cameras=1, rate=4.0, duration_s=2.0))
    assert [e.time_s for e in exact] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    jittered = generate(TraceSpec(kind="periodic", cameras=1, rate=10.0, duration_s=100.0, jitter=0.45, seed=1))
    times = [e.time_s for e in jittered]
    assert len(times) == 1000
    assert [e.frame_index for e in jittered] == list(range(1000))
    assert all(abs(t - i * 0.1) <= 0.045 + 1e-6 for i, t in enumerate(times))
    assert times != [round(i * 0.1, 6) for i in range(1000)]


def test_same_seed_same_trace_and_cameras_are_independent() -> None:
    spec = TraceSpec(kind="poisson", cameras=3, rate=5.0, duration_s=30.0, seed=11)
    assert generate(spec) == generate(spec)
    assert generate(spec) != generate(TraceSpec(kind="poisson", cameras=3, rate=5.0, duration_s=30.0, seed=12))
    # Adding a camera leaves the existing cameras' arrivals unchanged.
    wider = generate(TraceSpec(kind="poisson", cameras=4, rate=5.0, duration_s=30.0, seed=11))
    assert generate(spec).per_camera()["cam1"] == wider.per_camera()["cam1"]


def test_trace_is_sorted_with_unique_frames_per_camera() -> None:
    trace = generate(TraceSpec(kind="mmpp", cameras=3, rate=3.0, duration_s=60.0, seed=2))
    times = [e.time_s for e in trace]
    assert times == sorted(times)
    assert trace.cameras == ("cam0", "cam1", "cam2")
    for camera, events in trace.per_camera().items():
        assert [e.frame_index for e in events] == list(range(len(events)))
        assert all(0 <= e.time_s < 60.0 for e in events)


def test_file_round_trip(tmp_path: Path) -> None:
    trace = generate(TraceSpec(kind="poisson", cameras=2, rate=7.0, duration_s=20.0, seed=4))
    path = write_trace(trace, tmp_path / "trace.csv")
    assert path.read_text().splitlines()[0] == "time_s,camera,frame_index"
    assert read_trace(path) == trace


@pytest.mark.parametrize("body, message", [
    ("time_s,camera,frame_index\n0.0,cam0,0\n0.5,cam0,x\n", ":3: frame_index must be an integer"),
    ("time_s,camera,frame_index\n0.0,cam0,0\n-1,cam0,1\n", ":3: time_s must be finite and >= 0"),
    ("time_s,camera,frame_index\n0.5,cam0,0\n0.2,cam0,1\n", ":3: time_s 0.2 is earlier"),
    ("time_s,camera,frame_index\n0.1,cam0,0\n0.2,cam0,0\n", ":3: duplicate frame 0 of camera 'cam0'"),
    ("time_s,camera,frame_index\n0.1,cam0\n", ":2: expected 3 columns"),
    ("time_s,camera,frame_index,bytes\n0.1,cam0,0,0\n", ":2: bytes must be a positive integer"),
    ("time_s,camera,frame_index,bytes\n0.1,cam0,0\n", ":2: expected 4 columns"),
    ("time_s,camera,frame_index\n0.1,cam/0,0\n", ":2: camera must be"),
    ("time_s,camera,frame_index\n0.1,cam 0,0\n", ":2: camera must be"),
    ("time_s,camera,frame_index\nnan,cam0,0\n", ":2: time_s must be finite"),
    ("time,cam,idx\n0.1,cam0,0\n", ":1: header must be time_s,camera,frame_index[,bytes[,content]]"),
    ("time_s,camera,frame_index,bytes,content\n0.1,cam0,0,10,\n", ":2: content must be 1-64 printable"),
    ("time_s,camera,frame_index,bytes,content\n0.1,cam0,0,10\n", ":2: expected 5 columns"),
    ("", "empty file"),
])
def test_validation_errors_name_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_blank_lines_are_ignored_and_line_numbers_stay_right() -> None:
    with pytest.raises(TraceError, match=r"<t>:5: frame_index"):
        parse_trace(["time_s,camera,frame_index\n", "0,a,0\n", "\n", "1,a,1\n", "2,a,-3\n"], "<t>")


@pytest.mark.parametrize("change, message", [
    ({"kind": "zipf"}, "unknown trace kind"),
    ({"rate": 0.0}, "rate must be > 0"),
    ({"cameras": 0}, "cameras must be >= 1"),
    ({"duration_s": -1.0}, "duration must be > 0"),
    ({"jitter": 0.5}, "jitter must be in"),
    ({"amplitude": 1.5}, "amplitude must be in"),
])
def test_bad_specs_are_refused(change: dict, message: str) -> None:
    settings = {"kind": "poisson", "cameras": 1, "rate": 1.0, "duration_s": 1.0, **change}
    with pytest.raises(TraceError, match=message):
        generate(TraceSpec(**settings))


def test_cli_generates_a_readable_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeoffload.load import trace as trace_module
    import argparse

    parser = argparse.ArgumentParser()
    trace_module.register(parser)
    out = tmp_path / "t.csv"
    args = parser.parse_args(["gen", "--kind", "poisson", "--cameras", "4", "--rate", "5", "--duration", "60",
                              "--seed", "1", "-o", str(out)])
    assert trace_module.run(args) == 0
    trace = read_trace(out)
    generated = generate(TraceSpec(kind="poisson", cameras=4, rate=5.0, duration_s=60.0, seed=1))
    assert [(e.time_s, e.camera, e.frame_index) for e in trace] == [(e.time_s, e.camera, e.frame_index)
                                                                   for e in generated]
    sample = sample_source()  # by default each row records the size and picture of the frame the replay sends
    assert all(e.frame_bytes == len(sample.frame(e.camera, e.frame_index)) for e in trace)
    assert all(e.content == f"frame-{sample.index(e.camera, e.frame_index)}" for e in trace)
    assert out.read_text().splitlines()[0] == "time_s,camera,frame_index,bytes,content"
    assert trace_module.run(parser.parse_args(["info", str(out)])) == 0
    assert "4 camera(s)" in capsys.readouterr().out
    unsized = tmp_path / "unsized.csv"
    assert trace_module.run(parser.parse_args(["gen", "--rate", "1", "--duration", "3", "--frames", "none",
                                               "-o", str(unsized)])) == 0
    assert unsized.read_text().splitlines()[0] == "time_s,camera,frame_index"


def test_sized_trace_drives_the_simulator_too(tmp_path: Path) -> None:
    from edgeoffload.sim.scenario import load_scenario

    trace = with_frame_sizes(generate(TraceSpec(kind="mmpp", cameras=2, rate=2.0, duration_s=10.0, seed=3)),
                             lambda camera, index: 20_000 + index)
    write_trace(trace, tmp_path / "trace.csv")
    assert read_trace(tmp_path / "trace.csv") == trace
    pool = {"replicas": 1, "workers": 1, "service_ms": 50}
    scenario = load_scenario({"name": "replayed", "duration_s": 10, "edge": pool, "cloud": pool,
                              "cameras": [{"name": "replayed", "trace": "trace.csv"}]}, base_dir=tmp_path)
    assert scenario.cameras[0].trace == tuple((e.time_s, e.camera, e.frame_bytes, "") for e in trace)
    pictured = with_frame_content(trace, lambda camera, index: f"pic-{index % 3}")
    write_trace(pictured, tmp_path / "pictured.csv")
    assert read_trace(tmp_path / "pictured.csv") == pictured
    scenario = load_scenario({"name": "replayed", "duration_s": 10, "edge": pool, "cloud": pool,
                              "cameras": [{"name": "replayed", "trace": "pictured.csv"}]}, base_dir=tmp_path)
    assert scenario.cameras[0].trace == tuple((e.time_s, e.camera, e.frame_bytes, e.content) for e in pictured)
    with pytest.raises(TraceError, match="content must be"):
        with_frame_content(trace, lambda camera, index: "a,b")
