"""Simulator vs local testbed while the testbed autoscales: a load step, replayed and simulated.

    python experiments/sim_vs_real_autoscale.py [--runs 3] [--out experiments/results/sim_vs_real_autoscale]

A seeded step trace (3 cameras at 1.5 frames/s, x6 from 45 s to 135 s, 330 s in all) drives the
local testbed, whose pools scale with the HPAs of autoscale.yml (capped at 3 replicas each, 15 s
sync period, Kubernetes 1.37). Inference replicas pad every frame to 300 ms by sleeping
(INFER_SLEEP_PAD_MS; two detector instances each, as the ConfigMaps ship, so 6.7 frames/s a
replica), so on 2 vCPUs a replica the HPA adds is capacity, as a pod on its own node would be:
the step's 27 frames/s overload the starting 1 edge + 2 cloud replicas (20 frames/s), so the
HPAs' in-flight metric rises well above its target and both pools scale decisively (a step that
only brings them near the target makes every scale decision a coin flip between the two sites). Each run is the sim-vs-real pipeline (edgeoffload/validation.py: profile, a held-out
calibration replay, the evaluated replay started with a fresh autoscaler, 5 simulated seeds with
the same trace, HPA specs and sync phase, cold start and dispatch model), then compared per phase
(before, during, after the step) and sync by sync. About 10 minutes a run; run it on a quiet
machine (`uptime`).

Targets, per run: per-phase p50 and p95 within 15 %, cloud share within 5 points; replicas at
every HPA sync within +-1 of the testbed's, and each scale event at most one sync away (every
simulated seed; the two sync grids agree to milliseconds, analysis.compare_syncs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_vs_real import _shown, write_results  # noqa: E402  (the plain sim-vs-real report, reused)

from edgeoffload.analysis import (Column, ReplicaPoint, SyncComparison, SyncPoint, markdown_table,  # noqa: E402
                                  plot_grouped_bars, plot_timelines, write_table)
from edgeoffload.load.trace import TraceSpec  # noqa: E402
from edgeoffload.local import SiteOptions  # noqa: E402
from edgeoffload.localscale import IN_FLIGHT_METRIC  # noqa: E402
from edgeoffload.validation import ValidationResult, ValidationSetup, run_validation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sim_vs_real_autoscale"
STEP = TraceSpec(kind="step", cameras=3, rate=1.5, duration_s=330.0, seed=11, step_factor=6.0,
                 step_start_s=45.0, step_end_s=135.0)
SITE = SiteOptions(kind="haar-face", replicas=1, max_replicas=3, sleep_pad_ms=300.0)
# The padded replicas wait instead of computing, so they do not slow each other down: no shared_cpu.
SETUP = ValidationSetup(trace=STEP, edge=SITE, cloud=SITE, sync_period_s=15.0, calibration_length=0.5,
                        shared_cpu=False,
                        phases=(("before", 0.0, 45.0), ("during", 45.0, 135.0), ("after", 135.0, 330.0)))
PHASE_COLUMNS = (Column("phase", "phase"), Column("metric", "metric"), Column("real", "testbed", "float"),
                 Column("simulated", "simulator", "float"), Column("error", "error", "float"), Column("unit", "unit"),
                 Column("within", "within"))
SYNC_COLUMNS = (Column("seed", "seed", "int"), Column("syncs", "testbed syncs", "int"),
                Column("within_one", "replicas within +-1", "int"), Column("largest_gap", "largest gap", "int"),
                Column("worst", "at"), Column("matched", "events matched", "int"), Column("missed", "missed"),
                Column("extra", "extra"))


def sync_row(seed: int, comparison: SyncComparison) -> dict[str, Any]:
    def events(items: list) -> str:
        return "; ".join(f"{e.pool} {e.before}->{e.after} at {e.t:.0f} s" for e in items) or "-"
    worst = comparison.worst
    return {"seed": seed, "syncs": comparison.syncs, "within_one": comparison.within_one,
            "largest_gap": comparison.largest_gap,
            "worst": "-" if worst is None else f"{worst.pool} at {worst.t:.0f} s", "matched": len(comparison.matched),
            "missed": events(comparison.missed), "extra": events(comparison.extra),
            "replicas_target_met": comparison.replicas_within_one,
            "events_target_met": comparison.events_within_a_period}


def sync_csv_row(sync: SyncPoint) -> dict[str, Any]:
    """A sync with the metric means the HPA saw (CPU in cores per pod, frames in flight per pod)."""
    return {"t": sync.t, "pool": sync.pool, "current": sync.current, "desired": sync.desired,
            "cpu": sync.metrics.get("cpu"), IN_FLIGHT_METRIC: sync.metrics.get(IN_FLIGHT_METRIC)}


def desired_timeline(syncs: list[SyncPoint]) -> list[ReplicaPoint]:
    """Replicas set at each sync (both pools), as a step line."""
    now = {"edge": None, "cloud": None}
    points = []
    for sync in sorted(syncs, key=lambda s: s.t):
        now[sync.pool] = sync.desired
        if None not in now.values():
            points.append(ReplicaPoint(sync.t, now["edge"], now["cloud"]))
    return points


def run_summary(result: ValidationResult, index: int, out: Path) -> dict[str, Any]:
    """One run's figures and whether each target is met; writes its phase and sync tables and plot."""
    phase_rows = [{"phase": phase.name, **_shown(d)} for phase in result.phases for d in phase.deviations]
    syncs = [sync_row(seed, comparison) for seed, comparison in enumerate(result.sync_comparisons())]
    write_table(out / "phases.csv", phase_rows, PHASE_COLUMNS)
    write_table(out / "syncs.csv", syncs, SYNC_COLUMNS)
    sync_columns = [Column(k, k) for k in ("seed", "t", "pool", "current", "desired", "cpu", IN_FLIGHT_METRIC)]
    write_table(out / "testbed_syncs.csv", [sync_csv_row(s) for s in result.real_syncs], sync_columns[1:])
    write_table(out / "simulator_syncs.csv", [{"seed": seed, **sync_csv_row(s)} for seed, syncs_ in
                                              enumerate(result.sim_syncs) for s in syncs_], sync_columns)
    plot_timelines(out.parent / f"replicas_run{index}.png",
                   {"testbed": desired_timeline(result.real_syncs),
                    **{f"simulator seed {seed}": desired_timeline(syncs_) for seed, syncs_ in
                       enumerate(result.sim_syncs[:3])}},
                   f"Run {index}: replicas the HPA set at each sync")
    phases_met = all(phase.target_met for phase in result.phases)
    replicas_met = all(row["replicas_target_met"] for row in syncs)
    events_met = all(row["events_target_met"] for row in syncs)
    return {"run": index, "phases": [{"name": p.name, "start_s": p.start_s, "end_s": p.end_s,
                                      "testbed": p.real.to_row(), "simulator": p.simulated.to_row(),
                                      "deviations": [_shown(d) for d in p.deviations], "target_met": p.target_met}
                                     for p in result.phases],
            "syncs": syncs, "testbed_syncs": [sync_csv_row(s) for s in result.real_syncs],
            "target_met": {"phases": phases_met, "replicas_at_every_sync": replicas_met,
                           "scale_events_within_a_period": events_met,
                           "all": phases_met and replicas_met and events_met}}


def report(runs: list[dict[str, Any]], wall_s: float) -> str:
    lines = [f"# Simulator vs testbed while it autoscales: {'all targets MET' if all(r['target_met']['all'] for r in runs) else 'targets NOT all met'}",
             "", f"{len(runs)} run(s) of `python experiments/sim_vs_real_autoscale.py`, {wall_s / 60:.0f} min in all; "
             "each run's own report (profile, calibration, latency CDF) is in `runN/report.md`.", ""]
    for run in runs:
        met = run["target_met"]
        lines += [f"## Run {run['run']}: phases {'met' if met['phases'] else 'NOT met'}, replicas at every sync "
                  f"{'met' if met['replicas_at_every_sync'] else 'NOT met'}, scale events "
                  f"{'met' if met['scale_events_within_a_period'] else 'NOT met'}", "",
                  markdown_table([{"phase": p["name"], **d} for p in run["phases"] for d in p["deviations"]],
                                 PHASE_COLUMNS), "", markdown_table(run["syncs"], SYNC_COLUMNS), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    began = time.monotonic()
    runs = []
    for index in range(1, args.runs + 1):
        out = args.out / f"run{index}"
        out.mkdir(parents=True, exist_ok=True)
        run_began, load_before = time.monotonic(), os.getloadavg()[0]
        result = run_validation(SETUP, out / "records", progress=lambda m, i=index: print(
            f"sim_vs_real_autoscale run {i}: {m}", file=sys.stderr, flush=True))
        write_results(result, out, time.monotonic() - run_began)
        summary = run_summary(result, index, out)
        summary.update(wall_s=round(time.monotonic() - run_began, 1), load_average_before=load_before,
                       load_average_after=os.getloadavg()[0])
        runs.append(summary)
        print(f"sim_vs_real_autoscale run {index}: targets {summary['target_met']}", file=sys.stderr, flush=True)
    wall = time.monotonic() - began
    phase_bars = {f"run {r['run']} {p['name']}": {f"{side} p95": p[side]["p95_ms"] for side in ("testbed", "simulator")}
                  for r in runs for p in r["phases"]}
    plot_grouped_bars(args.out / "p95_by_phase.png", phase_bars, "p95 latency (ms)",
                      "p95 per phase: testbed vs simulator")
    summary = {"target_met": all(r["target_met"]["all"] for r in runs), "runs": runs,
               "setup": {"trace": dataclasses.asdict(SETUP.trace), "edge": dataclasses.asdict(SETUP.edge),
                         "cloud": dataclasses.asdict(SETUP.cloud), "policy": SETUP.policy,
                         "sync_period_s": SETUP.sync_period_s, "phases": SETUP.phases, "sim_seeds": SETUP.sim_seeds},
               "wall_s": round(wall, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    text = report(runs, wall)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
