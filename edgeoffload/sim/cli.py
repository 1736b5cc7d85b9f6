"""`edgeoffload sim SCENARIO.yaml`: run one scenario under one policy and print the summary."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from edgeoffload.policy import load_policy
from edgeoffload.sim.engine import run_scenario
from edgeoffload.sim.scenario import load_scenario


class ProgressBar:
    """A one-line bar driven by simulated time; redraws at most 10 times per wall-second.
    On a non-terminal stream it stays silent (logs should not fill with carriage returns)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.enabled = stream.isatty()
        self._started = time.perf_counter()
        self._drawn_at = -1.0

    def __call__(self, done_s: float, total_s: float) -> None:
        now = time.perf_counter()
        final = done_s >= total_s
        if not self.enabled or (now - self._drawn_at < 0.1 and not final):
            return
        self._drawn_at = now
        fraction = min(1.0, done_s / total_s) if total_s > 0 else 1.0
        filled = int(fraction * self.width)
        self.stream.write(f"\r[{'#' * filled}{'-' * (self.width - filled)}] {100 * fraction:5.1f} % "
                          f"{done_s:,.0f}/{total_s:,.0f} s simulated, {now - self._started:,.1f} s wall")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", type=Path, help="scenario YAML (see experiments/scenarios/baseline.yaml)")
    parser.add_argument("--policy", default="min-latency",
                        help="built-in name[:arg], module:attr or path/to/file.py:attr (default: min-latency)")
    parser.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    parser.add_argument("--out", type=Path, default=None, help="folder for summary.json (and records)")
    parser.add_argument("--records", choices=("csv", "parquet", "none"), default="none",
                        help="also write one FrameRecord per frame to OUT/records.<fmt> (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")


def run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    policy = load_policy(args.policy, seed=scenario.policy_seed)
    if args.records != "none" and args.out is None:
        raise ValueError("--records needs --out DIR")
    records = None if args.records == "none" else args.out / f"records.{args.records}"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    progress = None if args.no_progress else ProgressBar(sys.stderr)
    result = run_scenario(scenario, policy, out=records, progress=progress)
    print(result.summary.table())
    print(f"\n{result.frames_simulated:,} frames simulated in {result.wall_s:.2f} s "
          f"({result.frames_per_wall_s:,.0f} frames/s)", file=sys.stderr)
    if args.out is not None:
        summary_path = args.out / "summary.json"
        summary_path.write_text(json.dumps(result.summary.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {summary_path}" + (f" and {records}" if records else ""), file=sys.stderr)
    return 0


__all__ = ["ProgressBar", "register", "run"]
