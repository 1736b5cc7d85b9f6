"""Simulator vs local testbed on the same seeded trace (see experiments/README.md).

    python experiments/sim_vs_real.py [--duration 60] [--out experiments/results/sim_vs_real]

Brings the local testbed up, profiles it (`edgeoffload profile`, service times under background
load at the trace's offered rate, before the replay), replays a seeded Poisson
trace open-loop, simulates the same trace with the fitted profile, and writes tables,
plots and summary.json to the results folder. Takes about 2-3 minutes; run it on a quiet
machine (`uptime`): every testbed process shares the CPUs with whatever else runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

from edgeoffload.analysis import (CASCADE_COLUMNS, Column, Deviation, POLICY_COLUMNS, from_runs, markdown_table, plot_latency_cdf,
                                  plot_timelines, step_at, write_table)
from edgeoffload.load.trace import TraceSpec
from edgeoffload.validation import (MODEL_DIFFERENCES, ValidationResult, ValidationSetup, breakdown, run_validation,
                                    with_offset)

RESULTS = Path(__file__).resolve().parent / "results" / "sim_vs_real"
RUN_COLUMNS = (Column("label", "run"), *POLICY_COLUMNS[1:], *CASCADE_COLUMNS)
DEVIATION_COLUMNS = (Column("metric", "metric"), Column("real", "testbed (ms or %)", "float"),
                     Column("simulated", "simulator (ms or %)", "float"), Column("error", "error", "float"),
                     Column("unit", "unit"), Column("tolerance", "tolerance", "float"), Column("within", "within"))
BREAKDOWN_COLUMNS = (Column("run", "run"), Column("site", "site"), Column("answered", "answered", "int"),
                     Column("mean_queue_ms", "queue ms", "ms"), Column("mean_network_ms", "network ms", "ms"),
                     Column("mean_inference_ms", "inference ms", "ms"), Column("mean_total_ms", "total ms", "ms"),
                     Column("p50_total_ms", "p50 total ms", "ms"))


def write_results(result: ValidationResult, out: Path, wall_s: float) -> str:
    """Tables (CSV + markdown), plots and summary.json; returns the markdown report."""
    profile = result.profile
    preprocess_ms = statistics.median(profile.preprocess_ms)
    adjusted_runs = [with_offset(list(run), preprocess_ms) for run in result.sim_runs]
    adjusted = from_runs(adjusted_runs, "simulator + preprocessing", result.simulated.pod_seconds)
    runs = [r for r in (result.real, result.simulated, adjusted, result.in_run, *result.per_seed) if r is not None]
    sections = ["## Runs (after warm-up)", write_table(out / "runs.csv", [r.to_row() for r in runs], RUN_COLUMNS)]

    deviations = [_shown(d) for d in result.deviations]
    sections += ["## Target: p50/p95 within 15 %, cloud share within 5 points",
                 write_table(out / "deviations.csv", deviations, DEVIATION_COLUMNS)]
    in_run_dev = [_shown(d) for d in result.in_run_deviations]
    sections += ["## Diagnosis: simulator with the service times the testbed showed during the replay",
                 write_table(out / "deviations_in_run_service.csv", in_run_dev, DEVIATION_COLUMNS)]
    sections += ["## Service time: profile (sequential and under load) vs during the replay (medians, ms)",
                 write_table(out / "service_times.csv", service_rows(result), SERVICE_COLUMNS)]

    parts = breakdown(result.real_records, "testbed") + breakdown(result.sim_records, "simulator")
    sections += ["## Where the time goes (answered frames)", write_table(out / "breakdown.csv", parts, BREAKDOWN_COLUMNS)]

    times = sorted({p.t for p in result.real_timeline} | {p.t for p in result.sim_timeline})
    replicas = [{"t_s": t, **{f"{run}_{site}": step_at(line, t, site) for run, line in
                              (("testbed", result.real_timeline), ("sim", result.sim_timeline))
                              for site in ("edge", "cloud")}} for t in times]
    replica_columns = (Column("t_s", "t (s)", "float"), *(Column(f"{run}_{site}", f"{run} {site}", "int")
                                                         for run in ("testbed", "sim") for site in ("edge", "cloud")))
    write_table(out / "replicas.csv", replicas, replica_columns)
    changes = [row for i, row in enumerate(replicas)
               if i == 0 or any(row[c.key] != replicas[i - 1][c.key] for c in replica_columns[1:])]
    sections += ["## Replica timelines (changes only; replicas.csv has every sample)",
                 markdown_table(changes, replica_columns)]

    plot_latency_cdf(out / "latency_cdf.png", {
        "testbed": [r.t_total_ms for r in result.real_records if r.status == "ok"],
        "simulator": [r.t_total_ms for r in result.sim_records if r.status == "ok"],
        "simulator, in-run service times": [r.t_total_ms for r in result.in_run_records if r.status == "ok"]},
        "End-to-end latency: testbed vs simulator (same trace)")
    plot_timelines(out / "replicas.png", {"testbed": result.real_timeline, "simulator (seed 0)": result.sim_timeline},
                   "Ready replicas: testbed vs simulator")

    setup = result.setup
    summary = {
        "target_met": result.target_met,
        "deviations": deviations,
        "deviations_in_run_service": in_run_dev,
        "testbed": result.real.to_row(), "simulator": result.simulated.to_row(), "simulator_with_preprocessing":
            adjusted.to_row(), "simulator_in_run_service": result.in_run.to_row() if result.in_run else None,
        "setup": {"trace": dataclasses.asdict(setup.trace), "policy": setup.policy, "max_side": setup.max_side,
                  "edge": dataclasses.asdict(setup.edge), "cloud": dataclasses.asdict(setup.cloud),
                  "wan": {"delay_s": setup.wan.delay_s, "uplink_bps": setup.wan.uplink_bps,
                          "downlink_bps": setup.wan.downlink_bps},
                  "autoscale": setup.autoscale, "sync_period_s": setup.sync_period_s, "warmup_s": setup.warmup_s,
                  "sim_seeds": setup.sim_seeds},
        "profile": dict(profile.rows()),
        "profile_after_replay": dict(result.profile_after.rows()) if result.profile_after else None,
        "cold_start_s": round(result.cold_start_s, 3),
        "shared_cpu": result.shared_cpu,
        "observer_start": result.observer,
        "content_factor": result.content_factor,
        "replay": {"complete": result.replay.complete, "report": result.replay.report.splitlines()},
        "model_differences": list(MODEL_DIFFERENCES),
        "load_average_at_end": os.getloadavg()[0],
        "wall_s": round(wall_s, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    verdict = "MET" if result.target_met else "NOT MET"
    header = (f"# Simulator vs testbed: target {verdict}\n\nprofile: "
              + "; ".join(f"{k} {v}" for k, v in profile.rows()) + f"; cold start {result.cold_start_s:.2f} s\n"
              + shared_cpu_line(result.shared_cpu)
              + "\nsimulation starts from the preprocessor's estimates at the start of the replay: "
              + ", ".join(f"{k} {v:g}" for k, v in result.observer.items()) + "\n"
              + content_line(result.content_factor))
    report = header + "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(report, encoding="utf-8")
    return report


SERVICE_COLUMNS = (Column("site", "site"), Column("source", "measured"), Column("frames", "frames", "int"),
                   Column("model_ms", "model", "ms"), Column("path_ms", "HTTP path", "ms"),
                   Column("service_ms", "service (model + path)", "ms"))


def service_rows(result: ValidationResult) -> list[dict]:
    """Where the profile's service times and the replay's differ: model time and HTTP path."""
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None
    rows = []
    profiles = [("profile before replay", result.profile), ("profile after replay", result.profile_after)]
    for site in ("edge", "cloud"):
        for source, profile in profiles:
            if profile is None:
                continue
            plain = getattr(profile, site).plain
            path = profile.edge.overhead_median_ms()
            model = median([s.inference_ms for s in plain])
            rows.append({"site": site, "source": f"{source}, sequential", "frames": len(plain), "model_ms": model,
                         "path_ms": path, "service_ms": None if model is None else model + path})
            loaded = profile.loaded
            if loaded is not None:
                samples = getattr(loaded, site)
                edge_path = median([loaded.path_ms(s, loaded.idle_edge_queue_ms) for s in loaded.edge])
                service = loaded.edge_service_ms() if site == "edge" else loaded.cloud_service_ms()
                rows.append({"site": site, "source": f"{source}, under {loaded.load.fps:.2f} fps load",
                             "frames": len(samples), "model_ms": median([s.inference_ms for s in samples]),
                             "path_ms": edge_path, "service_ms": median(service)})
        answered = [r for r in result.real_records if r.site == site and r.status == "ok"]
        model = median([r.t_inference_ms for r in answered])
        path = median([r.t_network_ms for r in answered]) if site == "edge" else None
        rows.append({"site": site, "source": "replay (records)", "frames": len(answered), "model_ms": model,
                     "path_ms": path, "service_ms": None if model is None or path is None else model + path})
    return rows


def content_line(factors: dict[str, float]) -> str:
    """How much the pictures' inference cost differs (the calibration replay's edge frames)."""
    if not factors:
        return "\npicture-dependent cost: not modelled\n"
    values = sorted(factors.values())
    return (f"\npicture-dependent cost: {len(values)} pictures, relative cost {values[0]:.2f} to {values[-1]:.2f} "
            f"(median work of a picture's edge frames over all, calibration replay)\n")


def shared_cpu_line(shared: dict | None) -> str:
    """How the simulator modelled the two sites sharing this machine's CPUs."""
    if not shared:
        return "\nshared CPU: not modelled (independent service times)\n"
    return (f"\nshared CPU: {shared['cores']:.2f} cores for both sites: an edge frame took {shared['solo_ms']:.1f} ms "
            f"alone ({shared['solo_frames']} frames) and {shared['overlapped_ms']:.1f} ms beside "
            f"{shared['others']:.1f} other computing frames on average ({shared['overlapped_frames']} frames) "
            "in the calibration replay\n")


def _shown(deviation: Deviation) -> dict:
    """A deviation row in display units: latencies in ms, shares in percent."""
    row = dataclasses.asdict(deviation)
    if deviation.unit == "pts":
        row.update(real=None if deviation.real is None else 100 * deviation.real,
                   simulated=None if deviation.simulated is None else 100 * deviation.simulated)
    return row


def shipped_cascade(name: str) -> str:
    """The path of a Haar cascade OpenCV ships; exits with a one-line error if there is none."""
    import cv2

    path = Path(cv2.data.haarcascades) / name
    if not path.is_file():
        shipped = sorted(p.name for p in Path(cv2.data.haarcascades).glob("haarcascade_frontalface*.xml"))
        raise SystemExit(f"sim_vs_real: no cascade {name!r} in OpenCV's data (frontal-face ones: {', '.join(shipped)})")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ValidationSetup()
    parser.add_argument("--duration", type=float, default=defaults.trace.duration_s, help="trace seconds")
    parser.add_argument("--rate", type=float, default=defaults.trace.rate, help="fps per camera (Poisson)")
    parser.add_argument("--cameras", type=int, default=defaults.trace.cameras)
    parser.add_argument("--seed", type=int, default=defaults.trace.seed)
    parser.add_argument("--policy", default=defaults.policy)
    parser.add_argument("--edge-haar", metavar="CASCADE", default=None,
                        help="the edge runs this frontal-face cascade shipped with OpenCV (a file name in "
                             "cv2.data.haarcascades, e.g. haarcascade_frontalface_alt2.xml) instead of the "
                             "default one the cloud runs: different models at the two sites, for cascade policies")
    parser.add_argument("--no-autoscale", action="store_true")
    parser.add_argument("--profile-frames", type=int, default=defaults.profile_frames)
    parser.add_argument("--sequential-profile", action="store_true",
                        help="profile one request at a time on an idle testbed (the first calibration)")
    parser.add_argument("--no-calibration-replay", action="store_true",
                        help="take service times from the unit profile instead of a held-out calibration replay")
    parser.add_argument("--no-content-cost", action="store_true",
                        help="draw every frame's service time alike, whatever picture it shows")
    parser.add_argument("--no-shared-cpu", action="store_true",
                        help="do not model the two sites slowing each other (independent service times)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    edge = defaults.edge if args.edge_haar is None else dataclasses.replace(defaults.edge, model_path=shipped_cascade(
        args.edge_haar))
    setup = dataclasses.replace(defaults, policy=args.policy, autoscale=not args.no_autoscale, edge=edge,
                                profile_frames=args.profile_frames, profile_under_load=not args.sequential_profile,
                                calibration_replay=not args.no_calibration_replay,
                                shared_cpu=not args.no_shared_cpu, content_cost=not args.no_content_cost,
                                trace=TraceSpec(kind="poisson", cameras=args.cameras, rate=args.rate,
                                                duration_s=args.duration, seed=args.seed))
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_validation(setup, args.out / "records", progress=lambda m: print(f"sim_vs_real: {m}", file=sys.stderr,
                                                                                   flush=True))
    print(write_results(result, args.out, time.monotonic() - began))
    print(f"sim_vs_real: done in {time.monotonic() - began:.0f}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
