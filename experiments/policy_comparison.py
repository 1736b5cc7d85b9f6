"""Offloading policies compared in the simulator (see experiments/README.md).

    python experiments/policy_comparison.py [--duration 120] [--out experiments/results/policy_comparison]

For every experiments/scenarios/policy-*.yaml (load levels, a slow WAN, a small edge):
every built-in policy as one row (edge/cloud share, uplink bytes, latency p50/p95/p99,
deadline-miss and drop rate, pod-seconds), and sweeps of the parameterised policies
(queue-threshold:k, random:p, deadline:s) as Pareto plots of p95 latency against uplink
bytes and against cloud share. Every run of a scenario uses the same seed, so every policy
sees the same arrivals and frame sizes. About a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from edgeoffload.analysis import (POLICY_COLUMNS, Column, RunMetrics, plot_grouped_bars, plot_pareto,
                                  simulate_policies, write_table)
from edgeoffload.sim import Scenario, load_scenario

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "policy_comparison"
SCENARIOS = ("policy-low-load", "policy-base", "policy-high-load", "policy-slow-wan", "policy-small-edge")
POLICIES = ("edge-only", "cloud-only", "alternate", "random:0.5", "queue-threshold:2", "min-latency", "deadline",
            "bandit:0.1")
SWEEPS: dict[str, tuple[str, ...]] = {
    "queue-threshold:k": tuple(f"queue-threshold:{k}" for k in (1, 2, 3, 4, 6, 8, 12)),
    "random:p": tuple(f"random:{p}" for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),
    # deadline:s is the deadline the policy aims for; it only applies to frames without their own,
    # so this sweep runs the scenario with the cameras' deadlines removed (no miss rate then).
    "deadline:s": tuple(f"deadline:{s}" for s in (0.04, 0.06, 0.08, 0.12, 0.16, 0.25, 0.4)),
}
SCENARIO_COLUMNS = (Column("scenario", "scenario"), *POLICY_COLUMNS)
SWEEP_COLUMNS = (Column("scenario", "scenario"), Column("family", "family"), *POLICY_COLUMNS)


def without_deadlines(scenario: Scenario) -> Scenario:
    return dataclasses.replace(scenario, cameras=tuple(dataclasses.replace(c, deadline_ms=None)
                                                       for c in scenario.cameras))


def shortened(scenario: Scenario, duration_s: float | None) -> Scenario:
    if duration_s is None:
        return scenario
    return dataclasses.replace(scenario, duration_s=duration_s, warmup_s=min(scenario.warmup_s, duration_s / 5))


def rows(scenario_name: str, metrics: Sequence[RunMetrics], **extra: Any) -> list[dict[str, Any]]:
    return [{"scenario": scenario_name, **extra, **m.to_row()} for m in metrics]


def run_scenario_grid(name: str, scenario: Scenario) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    policy_rows = rows(scenario.name, simulate_policies(scenario, POLICIES))
    sweep_rows: list[dict[str, Any]] = []
    for family, specs in SWEEPS.items():
        target = without_deadlines(scenario) if family == "deadline:s" else scenario
        sweep_rows += rows(scenario.name, simulate_policies(target, specs), family=family)
    return policy_rows, sweep_rows


def plot_scenario(out: Path, scenario: str, policy_rows: list[dict[str, Any]], sweep_rows: list[dict[str, Any]]) -> None:
    def points(x_key: str, scale: float) -> dict[str, list[tuple[float, float, str]]]:
        series: dict[str, list[tuple[float, float, str]]] = {}
        for row in sweep_rows:
            if row["scenario"] == scenario and row[x_key] is not None:
                parameter = row["label"].rpartition(":")[2]
                series.setdefault(row["family"], []).append((row[x_key] * scale, row["p95_ms"], parameter))
        return series

    references = [(row["uplink_bytes"] / 1e6, row["p95_ms"], row["label"]) for row in policy_rows
                  if row["scenario"] == scenario and row["label"] in ("min-latency", "bandit:0.1", "alternate")]
    plot_pareto(out / f"pareto_{scenario}_uplink.png", points("uplink_bytes", 1e-6), "uplink (MB, after warm-up)",
                "p95 latency (ms)", f"{scenario}: p95 latency vs uplink bytes", references)
    shares = [(100 * row["cloud_share"], row["p95_ms"], row["label"]) for row in policy_rows
              if row["scenario"] == scenario and row["label"] in ("min-latency", "bandit:0.1", "alternate")]
    plot_pareto(out / f"pareto_{scenario}_cloud_share.png", points("cloud_share", 100.0), "cloud share (%)",
                "p95 latency (ms)", f"{scenario}: p95 latency vs cloud share", shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None, help="override each scenario's duration_s")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), help="scenario names (without .yaml)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    policy_rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    for name in args.scenarios:
        scenario = shortened(load_scenario(HERE / "scenarios" / f"{name}.yaml"), args.duration)
        started = time.monotonic()
        these_policies, these_sweeps = run_scenario_grid(name, scenario)
        policy_rows += these_policies
        sweep_rows += these_sweeps
        print(f"policy_comparison: {scenario.name}: {len(these_policies) + len(these_sweeps)} runs "
              f"in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
        if not args.no_plots:
            plot_scenario(args.out, scenario.name, these_policies, these_sweeps)
    report = ["# Policy comparison (simulator)\n"]
    for scenario in dict.fromkeys(row["scenario"] for row in policy_rows):
        report += [f"## {scenario}", write_table(args.out / f"policies_{scenario}.csv",
                                                 [r for r in policy_rows if r["scenario"] == scenario], POLICY_COLUMNS)]
    write_table(args.out / "policies.csv", policy_rows, SCENARIO_COLUMNS)
    report += ["## Sweeps", write_table(args.out / "sweeps.csv", sweep_rows, SWEEP_COLUMNS)]
    if not args.no_plots:
        scenarios = list(dict.fromkeys(row["scenario"] for row in policy_rows))
        for key, label, file in (("p95_ms", "p95 latency (ms)", "p95_by_policy.png"),
                                 ("cloud_share", "cloud share", "cloud_share_by_policy.png")):
            values = {s: {r["label"]: r[key] for r in policy_rows if r["scenario"] == s} for s in scenarios}
            plot_grouped_bars(args.out / file, values, label, f"{label} per scenario and policy",
                              log_scale=key == "p95_ms")
    wall_s = time.monotonic() - began
    summary = {"scenarios": list(args.scenarios), "policies": list(POLICIES), "sweeps": SWEEPS,
               "duration_override_s": args.duration, "runs": len(policy_rows) + len(sweep_rows),
               "wall_s": round(wall_s, 1), "best_p95_per_scenario": {
                   s: min((r for r in policy_rows if r["scenario"] == s and r["p95_ms"] is not None
                           and (r["drop_rate"] or 0) < 0.01), key=lambda r: r["p95_ms"], default={}).get("label")
                   for s in dict.fromkeys(row["scenario"] for row in policy_rows)},
               "rows": policy_rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    text = "\n\n".join(report) + "\n"
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"policy_comparison: {summary['runs']} runs in {wall_s:.0f}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
