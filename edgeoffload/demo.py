"""`edgeoffload demo`: bring the local testbed up, replay a sample video through it, summarise.

The default run is 2 cameras x 5 fps x 20 s of 640x480 frames made from images shipped with
scikit-image (no download; the `faces` sequence, a face in every scene), replayed open-loop
at their trace instants; the preprocessor downscales them to 320 px for the built-in Haar
face detector. The records are written as an experiment folder the web page lists
(summary.json with numbers, records.csv, the latency CDF and decisions-over-time plots),
the summary is printed, and every process is stopped at the end (or on Ctrl-C), unless
--keep-running leaves the testbed up for the browser.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from edgeoffload.load.replay import ReplayOptions, ReplayResult, format_report, replay, report_numbers
from edgeoffload.load.sample_video import open_source
from edgeoffload.load.summary import text_table
from edgeoffload.load.trace import TraceSpec, generate, read_trace
from edgeoffload.local import StopOnSignals, Testbed, add_testbed_arguments, options_from
from edgeoffload.policy import load_policy
from edgeoffload.records import FrameRecord, RecordWriter, read_records

DEMO_EXPERIMENT = "demo"
RECORDS_FILE = "records.csv"
DEMO_MAX_SIDE = 320   # the preprocessor's downscale in the demo: what the detector sees


def register(parser: argparse.ArgumentParser) -> None:
    add_testbed_arguments(parser)
    # Haar on a full 640x480 frame takes 120-360 ms on one core: 10 fps would saturate a 2-vCPU
    # machine, so the demo detects on 320 px frames (--max-side 640 shows the overloaded case).
    parser.set_defaults(sync_period=5.0, max_side=DEMO_MAX_SIDE)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second per camera")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of video to replay")
    parser.add_argument("--kind", default="periodic", help="trace kind (periodic, poisson, mmpp, diurnal)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None, help="replay this trace CSV instead of generating one")
    parser.add_argument("--frames", default="faces",
                        help="'faces' or 'sample' (made of shipped images), an image folder or a video file")
    parser.add_argument("--out", default=None, help="also write a copy of the records here (.csv or .parquet)")
    parser.add_argument("--keep-running", action="store_true", help="leave the testbed up after the replay")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no unit logs")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    began = time.monotonic()
    load_policy(args.policy)  # a typo or a broken policy file: one line, before anything starts
    trace = read_trace(args.trace) if args.trace else generate(TraceSpec(
        kind=args.kind, cameras=args.cameras, rate=args.fps, duration_s=args.duration, seed=args.seed,
        jitter=0.1 if args.kind == "periodic" else 0.0))
    frames = open_source(args.frames)
    with StopOnSignals() as stop, Testbed(options_from(args)) as testbed:
        _say(f"testbed up in {time.monotonic() - began:.1f}s")
        print(testbed.describe(), flush=True)
        if stop.is_set():
            return 130
        experiment = testbed.workdir / "results" / DEMO_EXPERIMENT
        _say(f"replaying {len(trace)} frames from {len(trace.cameras)} camera(s) over {trace.duration_s:.0f}s")
        result = replay(trace, testbed.preprocessor_url, frames, testbed.mqtt_settings("monitor"),
                        out=experiment / RECORDS_FILE,
                        options=ReplayOptions(progress=not args.quiet, drain_timeout_s=30.0), stop=stop)
        write_experiment(experiment, result, testbed.scaling_numbers(), args.out)
        print(format_report(result, "demo summary"))
        print(text_table(testbed.scaling_rows()))
        if args.out:
            print(f"records copied to {args.out}")
        print(f"web page: {testbed.web_url}/  (results: {testbed.web_url}/experiments/{DEMO_EXPERIMENT})")
        if args.keep_running and not stop.is_set():
            _say("testbed still running (--keep-running); Ctrl-C stops every process")
            while not stop.wait(0.5):
                pass
    _say(f"stopped; demo took {time.monotonic() - began:.1f}s")
    if stop.is_set() and not args.keep_running:
        return 130
    return 0 if result.complete else 1


def write_experiment(folder: Path, result: ReplayResult, replicas: dict[str, dict[str, int]],
                     copy_to: str | None = None) -> None:
    """The demo as an experiment folder beside its records.csv: summary.json (numbers, not
    display strings), the latency CDF and decisions over time (when matplotlib is installed),
    and a copy of the records at `copy_to` (its suffix picks CSV or Parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {**report_numbers(result), "replicas": replicas}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    records = list(read_records(folder / RECORDS_FILE)) if (folder / RECORDS_FILE).is_file() else []
    if copy_to:
        with RecordWriter(copy_to) as writer:
            writer.write_all(records)
    try:
        draw_plots(folder, records)
    except RuntimeError as exc:  # no matplotlib: the tables are still there
        _say(f"no plots: {exc}")


def draw_plots(folder: Path, records: list[FrameRecord]) -> None:
    """latency_cdf.png (per answering site and overall) and decisions.png (per second)."""
    from edgeoffload.analysis import plot_decisions, plot_latency_cdf

    answered = [r for r in records if r.status == "ok"]
    samples = {"all": [r.t_total_ms for r in answered]}
    for site in ("edge", "cloud"):
        samples[site] = [r.t_total_ms for r in answered if r.site == site]
    plot_latency_cdf(folder / "latency_cdf.png", {name: values for name, values in samples.items() if values},
                     "demo: end-to-end latency")
    plot_decisions(folder / "decisions.png", records, "demo: decisions per second")


def _say(message: str) -> None:
    print(f"edgeoffload demo: {message}", file=sys.stderr, flush=True)


__all__ = ["register", "run", "write_experiment", "draw_plots"]
