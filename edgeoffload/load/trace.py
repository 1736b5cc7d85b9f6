"""Frame arrival traces: when each camera emits each frame.

A trace is the open-loop input of both the testbed replay and the simulator, so the same
arrivals can drive both. It is a CSV file `time_s,camera,frame_index[,bytes]` sorted by
time, one row per frame. The optional `bytes` column is the encoded size of the frame the
replay will send (filled in by `with_frame_sizes`), and the optional `content` column after it
names the picture (`with_frame_content`): inference cost depends on what a frame shows, so the
simulator can give frames of the same picture the same relative cost. The simulator's
trace-driven cameras read `time_s,camera,bytes[,content]` from the same file, the replay reads
`frame_index`. Generators are seeded and give every camera its own random stream, so
adding a camera never changes the arrivals of the others.

Kinds (rates are frames per second per camera):
- `periodic`: a camera at `rate` fps; each frame is shifted by uniform jitter of +-`jitter`
  of the period (capture-clock noise) without reordering frames.
- `poisson`: exponential inter-arrivals at `rate`.
- `mmpp`: 2-state Markov-modulated Poisson (bursty): rate `rate` in the calm state and
  `rate * burst_factor` in the burst state; exponential dwell times with means `calm_s`
  and `burst_s`. The long-run rate is the dwell-weighted mean of the two.
- `diurnal`: a Poisson process whose rate follows `rate * (1 + amplitude*sin(2*pi*t/period_s))`,
  drawn by thinning (Lewis & Shedler) a homogeneous process at the peak rate.
- `step`: Poisson at `rate`, at `rate * step_factor` from `step_start_s` to `step_end_s` (a load
  step that makes an autoscaler scale up and, after it, back down).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from edgeoffload.sources import valid_camera

HEADER: tuple[str, ...] = ("time_s", "camera", "frame_index")
SIZE_COLUMN = "bytes"
CONTENT_COLUMN = "content"
MAX_CONTENT_CHARS = 64
KINDS: tuple[str, ...] = ("periodic", "poisson", "mmpp", "diurnal", "step")


class TraceError(ValueError):
    """A trace file or generator setting is invalid; file errors name the line."""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One frame arrival: camera `camera` captures its `frame_index`-th frame at `time_s`."""

    time_s: float
    camera: str
    frame_index: int
    frame_bytes: int = 0         # encoded size of the frame; 0 = not recorded
    content: str = ""            # which picture the frame shows; "" = not recorded


@dataclass(frozen=True, slots=True)
class Trace:
    """Arrivals sorted by time; (camera, frame_index) is unique."""

    events: tuple[TraceEvent, ...]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self):
        return iter(self.events)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(sorted({event.camera for event in self.events}))

    @property
    def duration_s(self) -> float:
        return self.events[-1].time_s if self.events else 0.0

    @property
    def has_sizes(self) -> bool:
        return bool(self.events) and all(event.frame_bytes > 0 for event in self.events)

    @property
    def has_content(self) -> bool:
        return self.has_sizes and all(event.content for event in self.events)

    def per_camera(self) -> dict[str, list[TraceEvent]]:
        grouped: dict[str, list[TraceEvent]] = {}
        for event in self.events:
            grouped.setdefault(event.camera, []).append(event)
        return grouped


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """What to generate; fields unused by a kind keep their defaults."""

    kind: str
    cameras: int
    rate: float
    duration_s: float
    seed: int = 0
    jitter: float = 0.0          # periodic: fraction of the period, 0 <= jitter < 0.5
    burst_factor: float = 5.0    # mmpp: burst rate / calm rate
    calm_s: float = 10.0         # mmpp: mean calm-state dwell
    burst_s: float = 2.0         # mmpp: mean burst-state dwell
    amplitude: float = 0.8       # diurnal: relative swing, 0 <= amplitude <= 1
    period_s: float = 60.0       # diurnal: length of one "day"
    step_factor: float = 3.0     # step: rate multiplier during the step
    step_start_s: float = 0.0    # step: when it starts and ends
    step_end_s: float = 0.0
    camera_prefix: str = "cam"

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise TraceError(f"unknown trace kind {self.kind!r}; choose from {', '.join(KINDS)}")
        checks = [
            (self.cameras >= 1, f"cameras must be >= 1, got {self.cameras}"),
            (math.isfinite(self.rate) and self.rate > 0, f"rate must be > 0 fps, got {self.rate}"),
            (math.isfinite(self.duration_s) and self.duration_s > 0, f"duration must be > 0 s, got {self.duration_s}"),
            (0.0 <= self.jitter < 0.5, f"jitter must be in [0, 0.5) of the period, got {self.jitter}"),
            (self.burst_factor >= 1.0, f"burst_factor must be >= 1, got {self.burst_factor}"),
            (self.calm_s > 0 and self.burst_s > 0, "calm_s and burst_s must be > 0"),
            (0.0 <= self.amplitude <= 1.0, f"amplitude must be in [0, 1], got {self.amplitude}"),
            (self.period_s > 0, f"period_s must be > 0, got {self.period_s}"),
            (self.step_factor > 0, f"step_factor must be > 0, got {self.step_factor}"),
            (0.0 <= self.step_start_s <= self.step_end_s, f"step must satisfy 0 <= start ({self.step_start_s}) "
                                                         f"<= end ({self.step_end_s})"),
            (valid_camera(f"{self.camera_prefix}{self.cameras}"),
             "camera_prefix must be 1-60 characters of A-Z a-z 0-9 _ . -"),
        ]
        for ok, message in checks:
            if not ok:
                raise TraceError(message)

    def mean_rate(self) -> float:
        """Long-run expected frames per second per camera (what tests check generators against)."""
        if self.kind == "mmpp":
            calm_share = self.calm_s / (self.calm_s + self.burst_s)
            return self.rate * (calm_share + (1 - calm_share) * self.burst_factor)
        if self.kind == "step":
            inside = max(0.0, min(self.step_end_s, self.duration_s) - min(self.step_start_s, self.duration_s))
            return self.rate * (1 + (self.step_factor - 1) * inside / self.duration_s)
        return self.rate


# --- generators: one camera's arrival times in [0, duration) ---------------------------

def periodic_times(spec: TraceSpec, rng: np.random.Generator) -> np.ndarray:
    period = 1.0 / spec.rate
    nominal = np.arange(0.0, spec.duration_s, period)
    if spec.jitter == 0:
        return nominal
    # Jitter < half a period keeps frames in order; the first frame never goes negative.
    shifted = nominal + rng.uniform(-spec.jitter, spec.jitter, nominal.size) * period
    return np.clip(shifted, 0.0, np.nextafter(spec.duration_s, 0))


def poisson_times(spec: TraceSpec, rng: np.random.Generator) -> np.ndarray:
    return _homogeneous(spec.rate, spec.duration_s, rng)


def mmpp_times(spec: TraceSpec, rng: np.random.Generator) -> np.ndarray:
    chunks: list[np.ndarray] = []
    start, bursting = 0.0, rng.random() < spec.burst_s / (spec.calm_s + spec.burst_s)  # stationary start
    while start < spec.duration_s:
        dwell = rng.exponential(spec.burst_s if bursting else spec.calm_s)
        end = min(start + dwell, spec.duration_s)
        rate = spec.rate * (spec.burst_factor if bursting else 1.0)
        chunks.append(start + _homogeneous(rate, end - start, rng))
        start, bursting = end, not bursting
    return np.concatenate(chunks) if chunks else np.empty(0)


def diurnal_rate(spec: TraceSpec, t: np.ndarray) -> np.ndarray:
    return spec.rate * (1.0 + spec.amplitude * np.sin(2.0 * np.pi * t / spec.period_s))


def diurnal_times(spec: TraceSpec, rng: np.random.Generator) -> np.ndarray:
    peak = spec.rate * (1.0 + spec.amplitude)
    candidates = _homogeneous(peak, spec.duration_s, rng)
    keep = rng.random(candidates.size) * peak < diurnal_rate(spec, candidates)
    return candidates[keep]


def step_times(spec: TraceSpec, rng: np.random.Generator) -> np.ndarray:
    bounds = sorted({0.0, min(spec.step_start_s, spec.duration_s), min(spec.step_end_s, spec.duration_s),
                     spec.duration_s})
    chunks = [start + _homogeneous(spec.rate * (spec.step_factor if spec.step_start_s <= start < spec.step_end_s
                                                else 1.0), end - start, rng)
              for start, end in zip(bounds, bounds[1:])]
    return np.concatenate(chunks) if chunks else np.empty(0)


def _homogeneous(rate: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals in [0, duration): a Poisson count, then sorted uniform times."""
    if duration <= 0:
        return np.empty(0)
    return np.sort(rng.uniform(0.0, duration, rng.poisson(rate * duration)))


GENERATORS: dict[str, Callable[[TraceSpec, np.random.Generator], np.ndarray]] = {
    "periodic": periodic_times, "poisson": poisson_times, "mmpp": mmpp_times, "diurnal": diurnal_times,
    "step": step_times,
}


def camera_names(spec: TraceSpec) -> list[str]:
    return [f"{spec.camera_prefix}{i}" for i in range(spec.cameras)]


def generate(spec: TraceSpec) -> Trace:
    """The trace `spec` describes; the same spec always gives the same trace."""
    spec.validate()
    streams = np.random.SeedSequence(spec.seed).spawn(spec.cameras)
    events: list[TraceEvent] = []
    for camera, stream in zip(camera_names(spec), streams):
        times = GENERATORS[spec.kind](spec, np.random.default_rng(stream))
        events.extend(TraceEvent(round(float(t), 6), camera, i) for i, t in enumerate(times))
    events.sort(key=lambda e: (e.time_s, e.camera, e.frame_index))
    return Trace(tuple(events))


def with_frame_sizes(trace: Trace, frame_size: Callable[[str, int], int]) -> Trace:
    """The trace with each event's `frame_bytes` set, e.g. from the replay's frame source."""
    return Trace(tuple(TraceEvent(e.time_s, e.camera, e.frame_index, frame_size(e.camera, e.frame_index), e.content)
                       for e in trace))


def with_frame_content(trace: Trace, content: Callable[[str, int], str]) -> Trace:
    """The trace with each event's `content` set (which picture the replay sends for it)."""
    return Trace(tuple(TraceEvent(e.time_s, e.camera, e.frame_index, e.frame_bytes,
                                  _checked_content(content(e.camera, e.frame_index), "content"))
                       for e in trace))


def _checked_content(value: str, where: str) -> str:
    if not value or len(value) > MAX_CONTENT_CHARS or "," in value or not value.isprintable():
        raise TraceError(f"{where}: content must be 1-{MAX_CONTENT_CHARS} printable characters without commas, "
                         f"got {value!r}")
    return value


# --- file format ------------------------------------------------------------------------

def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write `trace`; the `bytes` column is included when every event has a size, and the
    `content` column when every event also has a content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sized, with_content = trace.has_sizes, trace.has_content
    header = HEADER + ((SIZE_COLUMN,) if sized else ()) + ((CONTENT_COLUMN,) if with_content else ())
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for event in trace:
            row: list[object] = [f"{event.time_s:.6f}", event.camera, event.frame_index]
            row += [event.frame_bytes] if sized else []
            row += [event.content] if with_content else []
            writer.writerow(row)
    return path


def read_trace(path: str | Path) -> Trace:
    """Read and validate a trace file; TraceError names the file and line of the first problem."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        return parse_trace(handle, str(path))


def parse_trace(lines: Iterable[str], source: str = "<trace>") -> Trace:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise TraceError(f"{source}: empty file, expected header {','.join(HEADER)}")
    columns = tuple(cell.strip() for cell in header)
    if columns not in (HEADER, HEADER + (SIZE_COLUMN,), HEADER + (SIZE_COLUMN, CONTENT_COLUMN)):
        raise TraceError(f"{source}:1: header must be {','.join(HEADER)}[,{SIZE_COLUMN}[,{CONTENT_COLUMN}]], "
                         f"got {','.join(header)}")
    events: list[TraceEvent] = []
    seen: set[tuple[str, int]] = set()
    previous_time = -math.inf
    for row in reader:
        where = f"{source}:{reader.line_num}"
        if not row or all(not cell.strip() for cell in row):
            continue
        event = _parse_row(row, len(columns), where)
        if event.time_s < previous_time:
            raise TraceError(f"{where}: time_s {event.time_s} is earlier than the previous row ({previous_time}); sort by time")
        key = (event.camera, event.frame_index)
        if key in seen:
            raise TraceError(f"{where}: duplicate frame {event.frame_index} of camera {event.camera!r}")
        seen.add(key)
        previous_time = event.time_s
        events.append(event)
    return Trace(tuple(events))


def _parse_row(row: Sequence[str], width: int, where: str) -> TraceEvent:
    if len(row) != width:
        raise TraceError(f"{where}: expected {width} columns like the header, got {len(row)}")
    raw_time, camera, raw_index = (cell.strip() for cell in row[:3])
    try:
        time_s = float(raw_time)
    except ValueError:
        raise TraceError(f"{where}: time_s must be a number, got {raw_time!r}") from None
    if not math.isfinite(time_s) or time_s < 0:
        raise TraceError(f"{where}: time_s must be finite and >= 0, got {raw_time!r}")
    if not valid_camera(camera):
        raise TraceError(f"{where}: camera must be 1-64 characters of A-Z a-z 0-9 _ . - (it names an MQTT topic), "
                         f"got {camera!r}")
    try:
        frame_index = int(raw_index)
    except ValueError:
        raise TraceError(f"{where}: frame_index must be an integer, got {raw_index!r}") from None
    if frame_index < 0:
        raise TraceError(f"{where}: frame_index must be >= 0, got {frame_index}")
    frame_bytes = 0
    if width > len(HEADER):
        raw_bytes = row[3].strip()
        if not raw_bytes.isdigit() or int(raw_bytes) <= 0:
            raise TraceError(f"{where}: bytes must be a positive integer, got {raw_bytes!r}")
        frame_bytes = int(raw_bytes)
    content = _checked_content(row[4].strip(), where) if width > len(HEADER) + 1 else ""
    return TraceEvent(time_s, camera, frame_index, frame_bytes, content)


# --- command line: `edgeoffload trace gen|info` -----------------------------------------

def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("gen", help="generate a seeded arrival trace (CSV)")
    gen.add_argument("--kind", choices=KINDS, default="poisson")
    gen.add_argument("--cameras", type=int, default=1)
    gen.add_argument("--rate", type=float, required=True, help="frames per second per camera (calm rate for mmpp)")
    gen.add_argument("--duration", type=float, required=True, help="seconds")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--jitter", type=float, default=0.0, help="periodic: +- fraction of the period")
    gen.add_argument("--burst-factor", type=float, default=5.0, help="mmpp: burst rate / calm rate")
    gen.add_argument("--calm", type=float, default=10.0, help="mmpp: mean calm dwell (s)")
    gen.add_argument("--burst", type=float, default=2.0, help="mmpp: mean burst dwell (s)")
    gen.add_argument("--amplitude", type=float, default=0.8, help="diurnal: relative rate swing")
    gen.add_argument("--period", type=float, default=60.0, help="diurnal: period (s)")
    gen.add_argument("--step-factor", type=float, default=3.0, help="step: rate multiplier during the step")
    gen.add_argument("--step-start", type=float, default=0.0, help="step: start (s)")
    gen.add_argument("--step-end", type=float, default=0.0, help="step: end (s)")
    gen.add_argument("--camera-prefix", default="cam")
    gen.add_argument("--frames", default="sample",
                     help="record each frame's size from this source ('sample', a folder, a video; 'none' = no sizes)")
    gen.add_argument("-o", "--output", required=True, help="trace CSV to write")
    info = sub.add_parser("info", help="validate a trace and print per-camera counts and rates")
    info.add_argument("trace")


def run(args: argparse.Namespace) -> int:
    if args.action == "gen":
        spec = TraceSpec(kind=args.kind, cameras=args.cameras, rate=args.rate, duration_s=args.duration,
                         seed=args.seed, jitter=args.jitter, burst_factor=args.burst_factor, calm_s=args.calm,
                         burst_s=args.burst, amplitude=args.amplitude, period_s=args.period,
                         step_factor=args.step_factor, step_start_s=args.step_start, step_end_s=args.step_end,
                         camera_prefix=args.camera_prefix)
        trace = generate(spec)
        if args.frames != "none":
            from edgeoffload.load.sample_video import open_source  # OpenCV/scikit-image only when needed

            source = open_source(args.frames)
            trace = with_frame_sizes(trace, lambda camera, index: len(source.frame(camera, index)))
            trace = with_frame_content(trace, lambda camera, index: f"frame-{source.index(camera, index)}")
        write_trace(trace, args.output)
        print(f"wrote {len(trace)} frames for {spec.cameras} camera(s) over {spec.duration_s:g}s "
              f"(expected {spec.mean_rate() * spec.cameras * spec.duration_s:.0f}) to {args.output}", file=sys.stderr)
        return 0
    trace = read_trace(args.trace)
    span = max(trace.duration_s, 1e-9)
    print(f"{args.trace}: {len(trace)} frames, {len(trace.cameras)} camera(s), last arrival at {trace.duration_s:.3f}s")
    for camera, events in trace.per_camera().items():
        print(f"  {camera}: {len(events)} frames, {len(events) / span:.2f} fps")
    return 0


__all__ = ["Trace", "TraceEvent", "TraceSpec", "TraceError", "KINDS", "generate", "read_trace",
           "write_trace", "parse_trace", "diurnal_rate", "with_frame_content", "with_frame_sizes"]
