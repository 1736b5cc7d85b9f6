"""`edgeoffload sim SCENARIO.yaml`: run one scenario under one policy and print the summary."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from edgeoffload.policy import load_policy
from edgeoffload.progress import ProgressBar
from edgeoffload.sim.engine import run_scenario
from edgeoffload.sim.scenario import load_scenario


def simulated_time_progress(bar: ProgressBar) -> Callable[[float, float], None]:
    """The simulator's progress callback (simulated seconds done, total) drawn on `bar`."""
    return lambda done_s, total_s: bar.update(done_s, total_s, f"{done_s:,.0f}/{total_s:,.0f} s simulated")


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
    progress = None if args.no_progress else simulated_time_progress(ProgressBar(sys.stderr))
    result = run_scenario(scenario, policy, out=records, progress=progress)
    print(result.summary.table())
    print(f"\n{result.frames_simulated:,} frames simulated in {result.wall_s:.2f} s "
          f"({result.frames_per_wall_s:,.0f} frames/s)", file=sys.stderr)
    if args.out is not None:
        summary_path = args.out / "summary.json"
        summary_path.write_text(json.dumps(result.summary.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {summary_path}" + (f" and {records}" if records else ""), file=sys.stderr)
    return 0


__all__ = ["register", "run", "simulated_time_progress"]
