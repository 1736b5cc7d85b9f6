"""Simulation against reality: one seeded trace replayed on the local testbed and simulated.

    1. bring the local testbed up (edgeoffload.local) with the given detectors, WAN and HPA;
    2. profile it with `edgeoffload profile` through the same relays the preprocessor uses,
       under open-loop background load at the trace's offered rate (BEFORE the replay, with
       other arrivals: fitting on the evaluated run's own records would be circular), and time
       a replica's cold start;
    3. calibrate on a held-out replay (same spec, other seed, longer): service times, the two
       sites' CPU contention (edgeoffload.contention) and each picture's relative cost;
    4. read the preprocessor's estimates, then replay the trace open-loop
       (edgeoffload.load.replay, in a process of its own), sampling the replica counts;
    5. simulate the same trace (trace-driven cameras with the bytes and pictures the
       preprocessor really sends) with the calibrated profile, the same policy, queue bounds,
       HPA and starting estimates, for a few seeds;
    6. compare with edgeoffload.analysis: latency p50/p95, edge/cloud split, drops, per-site
       time breakdown and replica timelines.

The simulator's modelling choices that the testbed does not share are listed in
`MODEL_DIFFERENCES`, so a report can name the likely causes of a gap.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import requests

from edgeoffload import contention
from edgeoffload.agreement import Judge, agreement_share, agrees
from edgeoffload.analysis import (Deviation, ReplicaPoint, RunMetrics, SyncComparison, SyncPoint, after_warmup, compare,
                                  compare_syncs, from_records, from_runs, in_phase, pod_seconds, timeline_from_summary)
from edgeoffload.load.sample_video import CyclicFrames, open_source, picture_name
from edgeoffload.load.trace import Trace, TraceSpec, generate, with_frame_content, with_frame_sizes, write_trace
from edgeoffload.config import load_config
from edgeoffload.local import SiteOptions, Testbed, TestbedOptions, hpa_for, starting_replicas
from edgeoffload.localscale import LocalAutoscaler
from edgeoffload.profile import BackgroundLoad, Profile, measure
from edgeoffload.records import Detection, FrameRecord, read_records
from edgeoffload.relay import LinkProfile
from edgeoffload.serve import start_unit
from edgeoffload.sim import load_scenario, run_scenario
from edgeoffload.sim.stats import Summary
from edgeoffload.unitfolders import unit_settings
from edgeoffload.units.preprocessor import PreprocessorConfig

log = logging.getLogger(__name__)

# The preprocessor as the testbed runs it: its ConfigMap's settings (unitfolders), which shape queueing.
PREPROCESSOR = load_config(PreprocessorConfig, "PRE_", env=unit_settings("preprocessor").env)
PREPROCESSOR_DEADLINE_MS = PREPROCESSOR.deadline_ms or 500.0

MIN_CONTENT_FRAMES = 2   # answers of one picture needed to estimate its relative cost
TARGET_METRICS = ("p50_ms", "p95_ms", "cloud_share", "escalation_share")

MODEL_DIFFERENCES: tuple[str, ...] = (
    "the preprocessor's own work (decode, resize, JPEG re-encode; `preprocess_ms` in the profile) "
    "is not a stage of the simulator",
    "the preprocessor learns a replica's readiness through a watch of its EndpointSlice (about 0.1 s "
    "after its ready probe); the simulated preprocessor knows at once",
    "the testbed scrapes its replicas' in-flight gauges over HTTP at each sync, a few milliseconds apart; "
    "the simulator reads them at the sync instant (both average the last minute's scrapes)",
    "every testbed process shares this machine's CPUs, so service times under load are longer than the "
    "sequential profile (and a second replica adds no cores); the simulator models frames computing at once "
    "slowing each other (shared_cpu, processor sharing over every replica of both sites, cores measured on the "
    "calibration replay) but not the other processes (preprocessor, relays, broker, web server, load "
    "generator), whose load is only in the samples",
)


@dataclass(frozen=True)
class ValidationSetup:
    """What to run; the defaults are the committed experiment's (about 2 minutes)."""

    trace: TraceSpec = TraceSpec(kind="poisson", cameras=2, rate=2.5, duration_s=60.0, seed=7)
    edge: SiteOptions = SiteOptions(kind="haar-face", replicas=1, max_replicas=2)
    cloud: SiteOptions = SiteOptions(kind="haar-face", replicas=1, max_replicas=2)
    wan: LinkProfile = LinkProfile(delay_s=0.02, uplink_bps=20e6, downlink_bps=100e6)
    policy: str = "min-latency"
    max_side: int = 320
    autoscale: bool = True
    sync_period_s: float = 5.0
    profile_frames: int = 30
    profile_under_load: bool = True        # service times under the trace's offered rate (else sequential)
    calibration_replay: bool = True        # service times from a held-out replay (same spec, another seed)
    content_cost: bool = True              # each picture's relative inference cost (profile_from_records)
    calibration_length: float = 2.0        # calibration replay duration / evaluated trace duration
    shared_cpu: bool = True                # model the two sites slowing each other on this machine (contention.py)
    warmup_s: float = 5.0
    phases: tuple[tuple[str, float, float], ...] = ()   # (name, start, end) s after the first frame: compared apart
    sim_seeds: int = 5
    sample_interval_s: float = 0.5
    drain_timeout_s: float = 60.0


@dataclass
class ValidationResult:
    setup: ValidationSetup
    profile: Profile
    cold_start_s: float
    replay: "ReplayOutcome"
    real: RunMetrics
    simulated: RunMetrics                      # pooled over every seed
    per_seed: list[RunMetrics]
    deviations: list[Deviation]
    real_timeline: list[ReplicaPoint]
    sim_timeline: list[ReplicaPoint]           # first seed
    real_records: list[FrameRecord]            # after warm-up
    sim_runs: list[list[FrameRecord]]          # after warm-up, one list per seed
    sim_summaries: list[Summary] = field(default_factory=list)
    in_run: RunMetrics | None = None           # simulator with service times measured during the replay
    in_run_deviations: list[Deviation] = field(default_factory=list)
    in_run_records: list[FrameRecord] = field(default_factory=list)   # after warm-up, every seed
    profile_after: Profile | None = None       # the same measurement right after the replay (drift check)
    shared_cpu: dict[str, Any] | None = None   # the contention the simulator modelled (profile's shared_cpu)
    observer: dict[str, float] = field(default_factory=dict)   # the estimates the simulation started from
    content_factor: dict[str, float] = field(default_factory=dict)   # each picture's relative cost
    real_syncs: list[SyncPoint] = field(default_factory=list)        # the testbed's HPA syncs, first frame = 0
    sim_syncs: list[list[SyncPoint]] = field(default_factory=list)   # the simulator's, one list per seed
    phases: list["PhaseResult"] = field(default_factory=list)

    @property
    def sim_records(self) -> list[FrameRecord]:
        return [record for run in self.sim_runs for record in run]

    @property
    def target_met(self) -> bool:
        return all(d.within for d in self.deviations if d.metric in TARGET_METRICS)

    def sync_comparisons(self) -> list[SyncComparison]:
        """The testbed's HPA syncs against each simulated seed's."""
        return [compare_syncs(self.real_syncs, syncs, self.setup.sync_period_s) for syncs in self.sim_syncs]


@dataclass(frozen=True)
class PhaseResult:
    """One phase of the trace (e.g. before, during and after a load step), compared on its own."""

    name: str
    start_s: float
    end_s: float
    real: RunMetrics
    simulated: RunMetrics
    deviations: list[Deviation]

    @property
    def target_met(self) -> bool:
        return all(d.within for d in self.deviations if d.metric in TARGET_METRICS)


def compare_phases(setup: ValidationSetup, real: list[FrameRecord], sim_runs: list[list[FrameRecord]]) -> list[PhaseResult]:
    """`setup.phases` compared one by one (records of every frame, warm-up included, go in)."""
    results = []
    for name, start, end in setup.phases:
        start = max(start, setup.warmup_s)
        real_part = from_records(in_phase(real, start, end), f"testbed {name}")
        sim_part = from_runs([in_phase(run, start, end) for run in sim_runs], f"simulator {name}")
        results.append(PhaseResult(name, start, end, real_part, sim_part, compare(real_part, sim_part)))
    return results


def profile_load(setup: ValidationSetup, trace: Trace) -> BackgroundLoad | None:
    """The background load the profile is measured under: the trace's mean offered rate over all
    cameras (an input of the experiment), with Poisson arrivals of its own (another seed)."""
    if not setup.profile_under_load or setup.trace.duration_s <= 0 or len(trace) == 0:
        return None
    return BackgroundLoad(fps=len(trace) / setup.trace.duration_s, seed=setup.trace.seed + 1000)


# --- the sizes the simulator must see --------------------------------------------------------

def picture_of(setup: ValidationSetup, frames: CyclicFrames) -> Callable[[str, int], str] | None:
    """camera, frame id -> picture, when the setup models content-dependent cost."""
    return (lambda camera, index: content_of(frames, camera, index)) if setup.content_cost else None


def content_of(frames: CyclicFrames, camera: str, frame_index: int) -> str:
    """The picture camera `camera` sends as its `frame_index`-th frame (a trace's `content`)."""
    return picture_name(frames.index(camera, frame_index))


def sent_sizes(trace: Trace, frames: CyclicFrames, max_side: int, quality: int = 80) -> Trace:
    """The trace with each frame's size as the preprocessor sends it (prepared, re-encoded),
    which is what crosses the WAN, not the size the camera produced, and which picture it is."""
    from edgeoffload.units.preprocessor import FramePreparer

    preparer = FramePreparer(max_side=max_side, quality=quality)
    cache: dict[int, int] = {}

    def size(camera: str, index: int) -> int:
        raw = frames.frame(camera, index)
        key = id(raw)
        if key not in cache:
            cache[key] = len(preparer.from_bytes(raw).payload)
        return cache[key]

    return with_frame_content(with_frame_sizes(trace, size), lambda camera, index: content_of(frames, camera, index))


# --- the testbed side ---

# The sequence the committed sim-vs-real results were measured with (replay's default is "faces").
VALIDATION_FRAMES = "sample"

# Runs a command module the way edgeoffload.cli does (register + run), whatever COMMANDS holds.
_COMMAND_RUNNER = ("import argparse, importlib, sys; module = importlib.import_module(sys.argv[1]); "
                   "parser = argparse.ArgumentParser(); module.register(parser); "
                   "sys.exit(module.run(parser.parse_args(sys.argv[2:])))")


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What the replay process reported: exit status (0 = every frame accounted for) and its table."""

    returncode: int
    report: str

    @property
    def complete(self) -> bool:
        return self.returncode == 0


def replay_process(trace_csv: Path, testbed: Testbed, out: Path, drain_timeout_s: float,
                   duration_s: float) -> ReplayOutcome:
    """`edgeoffload replay` in a process of its own. The load generator's threads then do not
    compete for this process's GIL with the relays that emulate the network (they live here,
    in the Testbed), which would add latency the simulator rightly knows nothing about."""
    assert testbed.broker is not None
    env = {**os.environ, "EDGEOFFLOAD_MQTT_PASSWORD": testbed.broker.users["monitor"]}
    command = [sys.executable, "-c", _COMMAND_RUNNER, "edgeoffload.load.replay", str(trace_csv),
               "--target", testbed.preprocessor_url, "--mqtt-host", testbed.broker.host,
               "--mqtt-port", str(testbed.broker.port), "--mqtt-user", "monitor", "--out", str(out),
               "--frames", VALIDATION_FRAMES,  # the frames sent_sizes measured, whatever replay's default
               "--drain-timeout", f"{drain_timeout_s:g}", "--no-progress"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True,
                               timeout=duration_s + drain_timeout_s + 120)
    if completed.returncode not in (0, 1):
        raise RuntimeError(f"replay failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return ReplayOutcome(completed.returncode, completed.stdout)


class ReplicaSampler:
    """Samples the testbed pools' replica counts (ready replicas) on the wall clock."""

    def __init__(self, testbed: Testbed, interval_s: float) -> None:
        self.testbed = testbed
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="replica-sampler")

    def __enter__(self) -> "ReplicaSampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while True:
            self.samples.append((time.time(), self.testbed.pools["edge"].size, self.testbed.pools["cloud"].size))
            if self._stop.wait(self.interval_s):
                return

    def timeline(self, origin: float) -> list[ReplicaPoint]:
        return [ReplicaPoint(round(t - origin, 3), edge, cloud) for t, edge, cloud in self.samples if t >= origin]


def testbed_syncs(autoscaler: LocalAutoscaler, origin: float) -> list[SyncPoint]:
    """The local autoscaler's syncs from the first frame (wall-clock `origin`) on, in seconds since it."""
    return [SyncPoint(round(status.at - origin, 3), status.pool, status.current, status.desired, status.metrics)
            for status in autoscaler.history if status.at >= origin]


def first_sync_in_trace(autoscaler: LocalAutoscaler, origin: float, trace: Trace) -> float:
    """When, on the trace's clock, the testbed's autoscaler reconciled first at or after the
    first frame: the simulation's HPAs reconcile in the same phase."""
    specs = [spec for _, spec in autoscaler.pools.values()]
    period = min(spec.sync_period_s for spec in specs)
    first = autoscaler.started_wall + min(spec.first_reconcile_s for spec in specs) - origin
    while first < 0:
        first += period
    return round(first + (trace.events[0].time_s if len(trace) else 0.0), 3)


def time_cold_start(testbed: Testbed, site: str = "cloud") -> float:
    """Seconds from starting one more replica process of `site` to its ready probe passing."""
    pool = testbed.pools[site]
    started = time.monotonic()
    unit = start_unit("inference", env=pool.env, workers=1, threads=pool.threads, log_dir=testbed.log_dir)
    elapsed = time.monotonic() - started
    unit.stop()
    return elapsed


def local_options(setup: ValidationSetup, workdir: Path) -> TestbedOptions:
    return TestbedOptions(edge=setup.edge, cloud=setup.cloud, wan=setup.wan, policy=setup.policy,
                          max_side=setup.max_side, autoscale=setup.autoscale, sync_period_s=setup.sync_period_s,
                          broker_port=0, preprocessor_port=0, web_port=0, workdir=str(workdir))


# --- the simulator side --------------------------------------------------------------------

def observer_from_state(state: dict[str, Any]) -> dict[str, float]:
    """The simulator's starting estimates from the preprocessor's /api/state: the testbed carries
    what it learned (e.g. in the calibration replay) into the replay, so the simulation starts
    there too. The simulator's service time includes the HTTP path, which the testbed counts as
    the edge's network time, so that is added to both sites' service estimates."""
    edge, cloud = state["edge"], state["cloud"]
    path_s = edge["rtt_s"]
    observer = {"edge_service_ms": round(1000 * (edge["service_s"] + path_s), 3),
                "cloud_service_ms": round(1000 * (cloud["service_s"] + path_s), 3),
                "cloud_rtt_ms": round(1000 * cloud["rtt_s"], 3)}
    if cloud.get("uplink_bps"):
        observer["cloud_uplink_mbps"] = round(cloud["uplink_bps"] / 1e6, 3)
    return observer


def preprocessor_state(testbed: Testbed) -> dict[str, Any]:
    response = requests.get(testbed.preprocessor_url + "/api/state", timeout=10)
    response.raise_for_status()
    return response.json()


def simulated_scenario(setup: ValidationSetup, trace_csv: Path, profile_json: Path, cold_start_s: float,
                       duration_s: float, seed: int, observer: dict[str, float] | None = None,
                       first_sync_s: float | None = None) -> Any:
    """The testbed as a scenario: trace-driven cameras, profile-driven pools and WAN, the HPA
    the local autoscaler runs (the very same HPASpec objects), and the preprocessor's estimates
    at the start of the replay (`observer`, see observer_from_state) when given."""
    profile_data = json.loads(profile_json.read_text(encoding="utf-8"))

    options = local_options(setup, trace_csv.parent)

    def pool(site: str, site_options: SiteOptions) -> dict[str, Any]:
        workers = site_options.detectors_per_replica(site)
        return {"replicas": starting_replicas(options, site), "workers": workers, "queue": "per-pod",
                # what the unit admits beyond the frames in service (more get 503)
                "queue_capacity": max(0, site_options.replica_concurrency(site) - workers),
                "service_ms": {"dist": "profile", "file": str(profile_json.resolve()), "key": f"{site}.service_ms"},
                **({"content_factor": {"file": str(profile_json.resolve()), "key": "content_factor"}}
                   if profile_data.get("content_factor") else {}),
                # each picture's measured edge answer (cascade policies decide on it)
                **({"answers": {"file": str(profile_json.resolve()), "key": "edge.answers"}}
                   if site == "edge" and profile_data.get("edge", {}).get("answers") else {}),
                "cold_start_s": {"dist": "constant", "value": round(cold_start_s, 3)},
                # the CPU a busy detector uses (the HPA's CPU metric, the shared CPU's demand), as profiled
                "cpu_per_worker": profile_data.get(site, {}).get("cpu_per_worker", 1.0),
                "model": f"{site}/{site_options.kind}"}

    raw = {"name": "sim-vs-real", "duration_s": duration_s, "warmup_s": setup.warmup_s, "seed": seed,
           "timeline_interval_s": setup.sample_interval_s,
           "cameras": [{"name": "trace", "trace": str(trace_csv.resolve()), "deadline_ms": PREPROCESSOR_DEADLINE_MS}],
           "wan": {"profile": str(profile_json.resolve())},
           "edge": pool("edge", setup.edge), "cloud": pool("cloud", setup.cloud), "observer": observer or {},
           # the preprocessor's queue and per-replica concurrency (edgeoffload/sim/dispatch.py)
           "dispatch": {"queue_size": PREPROCESSOR.queue_size, "max_in_flight": PREPROCESSOR.max_in_flight_per_site,
                        "per_replica": {"edge": PREPROCESSOR.edge_replica_concurrency,
                                        "cloud": PREPROCESSOR.cloud_replica_concurrency}}}
    shared = profile_data.get("shared_cpu")
    if shared:   # the profile's service times are then work as if alone (profile_from_records)
        raw["shared_cpu"] = {"cores": shared["cores"], "pools": ["edge", "cloud"]}
    scenario = load_scenario(raw, base_dir=trace_csv.parent)
    if setup.autoscale:
        def hpa(site: str) -> Any:   # the testbed's HPA, synced in the testbed's phase when known
            return dataclasses.replace(hpa_for(options, site), first_sync_s=first_sync_s)
        scenario = dataclasses.replace(scenario, edge=dataclasses.replace(scenario.edge, hpa=hpa("edge")),
                                       cloud=dataclasses.replace(scenario.cloud, hpa=hpa("cloud")))
    return scenario


@dataclass
class Simulated:
    """The simulator's runs of one trace: per seed, its summary, records and HPA syncs."""

    summaries: list[Summary] = field(default_factory=list)
    records: list[list[FrameRecord]] = field(default_factory=list)
    syncs: list[list[SyncPoint]] = field(default_factory=list)


def simulate(setup: ValidationSetup, trace_csv: Path, profile_json: Path, cold_start_s: float, duration_s: float,
             records_dir: Path, observer: dict[str, float] | None = None,
             first_sync_s: float | None = None) -> Simulated:
    """`setup.sim_seeds` simulations of the trace; sync times are given since the first frame."""
    runs = Simulated()
    for seed in range(setup.sim_seeds):
        scenario = simulated_scenario(setup, trace_csv, profile_json, cold_start_s, duration_s, seed, observer,
                                      first_sync_s)
        path = records_dir / f"sim_records_seed{seed}.csv"
        result = run_scenario(scenario, setup.policy, out=path)
        first_frame = min((row[0] for group in scenario.cameras for row in group.trace), default=0.0)
        runs.summaries.append(result.summary)
        runs.records.append(list(read_records(path)))
        runs.syncs.append([SyncPoint(round(s.t - first_frame, 3), s.pool, s.current, s.desired, s.metrics)
                           for s in result.hpa_syncs])
    return runs


def profile_from_records(records: list[FrameRecord], profile: Profile, method: str,
                         shared_cpu: bool = True, content: Callable[[str, int], str] | None = None) -> dict[str, Any]:
    """A profile whose service times are those the testbed showed in a replay (model time plus the
    HTTP path, per answered frame), with the measured WAN. Used on a held-out calibration replay
    (`calibrate`) and, as a diagnosis only, on the evaluated replay itself (`in_run_profile`).

    With `shared_cpu`, the replay also gives how much frames computing at once slowed each other
    (`contention.estimate`): each sample becomes the frame's work as if computed alone, and
    `shared_cpu.cores` tells the simulator to slow frames down whenever several compute.

    With `content` (camera, frame id -> picture), the edge's frames also give each picture's
    relative cost (`content_factor`: its median work over the median of all); the samples are
    divided by it and the simulator multiplies each frame's draw by its picture's factor, so
    runs of a costly picture are slow together, as on the testbed."""
    data = profile.to_dict()
    return_ms = statistics.median(profile.wan.rtt_ms) / 2 if profile.wan.rtt_ms else 0.0
    loads = contention.concurrency(records, return_ms)
    measured = contention.estimate(records, loads) if shared_cpu else None

    def alone(ms: float, load: contention.Load) -> float:
        return round(ms if measured is None else contention.work_ms(ms, load, measured.cores), 3)

    edge = [(r, load) for r, load in zip(records, loads) if r.site == "edge" and r.status == "ok"]
    cloud = [(r, load) for r, load in zip(records, loads) if r.site == "cloud" and r.status == "ok"]
    path_ms = statistics.median(r.t_network_ms for r, _ in edge) if edge else profile.edge.overhead_median_ms()
    edge_work = [(r, alone(r.t_inference_ms + r.t_network_ms, load)) for r, load in edge]
    cloud_work = [(r, alone(r.t_inference_ms + path_ms, load)) for r, load in cloud]
    factors = content_factors(edge_work, content) if content is not None else {}

    def neutral(work: list[tuple[FrameRecord, float]]) -> list[float]:
        if content is None or not factors:
            return [ms for _, ms in work]
        return [round(ms / factors.get(content(r.camera, r.frame_id), 1.0), 3) for r, ms in work]

    if edge:
        data["edge"]["service_ms"] = neutral(edge_work)
    if cloud:
        data["cloud"]["service_ms"] = neutral(cloud_work)
    if factors:
        data["content_factor"] = factors
    data["meta"] = {**data["meta"], "method": method}
    if measured is not None:
        data["shared_cpu"] = dataclasses.asdict(measured)
    return data


def content_factors(work: list[tuple[FrameRecord, float]], content: Callable[[str, int], str],
                    min_frames: int = MIN_CONTENT_FRAMES) -> dict[str, float]:
    """Each picture's median work over the median work of all frames, for pictures answered at
    least `min_frames` times (the others keep factor 1)."""
    if not work:
        return {}
    overall = statistics.median(ms for _, ms in work)
    by_picture: dict[str, list[float]] = {}
    for record, ms in work:
        by_picture.setdefault(content(record.camera, record.frame_id), []).append(ms)
    return {picture: round(statistics.median(values) / overall, 4) for picture, values in sorted(by_picture.items())
            if len(values) >= min_frames and overall > 0}


def in_run_profile(records: list[FrameRecord], profile: Profile, shared_cpu: bool = True,
                   content: Callable[[str, int], str] | None = None) -> dict[str, Any]:
    """The evaluated replay's own service times. Simulating with it separates the queueing/policy
    model from the service-time input; it is fitted on the evaluated run, so it is a diagnosis
    only, never the calibration."""
    return profile_from_records(records, profile, "service times of the replay's own answered frames", shared_cpu,
                                content)


def calibration_trace(setup: ValidationSetup) -> TraceSpec:
    """The calibration workload: the experiment's trace spec with arrivals of another seed, so the
    evaluated trace is never seen while fitting, `calibration_length` times as long (the few
    offloaded frames are the scarce samples)."""
    return replace(setup.trace, seed=setup.trace.seed + 2000,
                   duration_s=setup.trace.duration_s * setup.calibration_length)


def calibrate(setup: ValidationSetup, testbed: "Testbed", frames: CyclicFrames, profile: Profile, out: Path,
              progress: Callable[[str], None]) -> Path:
    """Replay a held-out trace through the whole testbed and take the simulator's service times from
    its answered frames. Unlike a profile of the inference units alone, this load includes every
    process's CPU contention at the experiment's rate, bursts included."""
    trace = sent_sizes(generate(calibration_trace(setup)), frames, setup.max_side)
    trace_csv = write_trace(trace, out / "calibration_trace.csv")
    progress(f"calibration: replaying a held-out trace of {len(trace)} frames (seed {calibration_trace(setup).seed})")
    replay_process(trace_csv, testbed, out / "calibration_records.csv", setup.drain_timeout_s, trace.duration_s)
    records = after_warmup(list(read_records(out / "calibration_records.csv")), setup.warmup_s)
    calibrated = profile_from_records(records, profile, "service times of a held-out calibration replay",
                                      setup.shared_cpu, picture_of(setup, frames))
    path = out / "profile_calibrated.json"
    path.write_text(json.dumps(calibrated, indent=1) + "\n", encoding="utf-8")
    return path


# --- answer quality ------------------------------------------------------------------------

def agreement_judges(profile_data: dict[str, Any], frames: CyclicFrames) -> tuple[Judge, Judge] | None:
    """(testbed, simulator) judges of whether a record's answer agrees with the cloud model's on
    its picture, from a profile's answers (None if it has none). A testbed record carries its
    detections, compared with the profile's cloud reference; a simulated record has none, so its
    answer agrees if the cloud gave it, else as the picture's measured edge answer agreed."""
    reference = profile_data.get("cloud", {}).get("reference")
    answers = profile_data.get("edge", {}).get("answers")
    if not reference or not answers:
        return None
    expected = {name: tuple(Detection.from_dict(d) for d in found) for name, found in reference.items()}
    edge_agrees = {name: {sample.get("agrees") for sample in samples} for name, samples in answers.items()}

    def picture(record: FrameRecord) -> str:
        return content_of(frames, record.camera, record.frame_id)

    def real(record: FrameRecord) -> bool | None:
        found = expected.get(picture(record))
        return None if found is None else agrees(record.detections, found)

    def simulated(record: FrameRecord) -> bool | None:
        if record.site == "cloud":
            return True
        verdicts = edge_agrees.get(picture(record), set())
        return next(iter(verdicts)) if len(verdicts) == 1 else None   # one measured verdict for the picture

    return real, simulated


# --- the whole pipeline --------------------------------------------------------------------

def run_validation(setup: ValidationSetup, out_dir: str | Path,
                   progress: Callable[[str], None] = lambda _m: None) -> ValidationResult:
    """Run the pipeline; `out_dir` receives profile.json, trace.csv and the record files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = open_source(VALIDATION_FRAMES)
    trace = sent_sizes(generate(setup.trace), frames, setup.max_side)
    trace_csv = write_trace(trace, out / "trace.csv")
    with tempfile.TemporaryDirectory(prefix="edgeoffload-validation-") as workdir:
        progress("starting the local testbed")
        with Testbed(local_options(setup, Path(workdir))) as testbed:
            progress("timing a replica cold start")
            cold_start_s = time_cold_start(testbed)
            load = profile_load(setup, trace)
            progress("profiling the inference units and the WAN"
                     + ("" if load is None else f", service times under {load.fps:.2f} fps background load"))
            profile = measure(testbed.relays["edge"].url, testbed.relays["cloud"].url, frames=setup.profile_frames,
                              max_side=setup.max_side, load=load)
            profile_json = profile.write(out / "profile.json")
            progress("ready replicas after profiling: " + ", ".join(f"{site} {pool.size}"
                                                                    for site, pool in testbed.pools.items()))
            if setup.calibration_replay:
                profile_json = calibrate(setup, testbed, frames, profile, out, progress)
            observer = observer_from_state(preprocessor_state(testbed))
            (out / "observer_start.json").write_text(json.dumps(observer, indent=1) + "\n", encoding="utf-8")
            # The evaluated replay starts with the starting replicas and HPAs that remember nothing
            # of the calibration, as the simulation does.
            # Its first reconcile comes one sync period later, inside the replay, where the
            # simulation's first reconcile is put too (first_sync_in_trace).
            autoscaler = testbed.restart_autoscaler(first_sync_s=setup.sync_period_s) if setup.autoscale else None
            progress(f"replaying {len(trace)} frames over {trace.duration_s:.0f}s")
            with ReplicaSampler(testbed, setup.sample_interval_s) as sampler:
                result = replay_process(trace_csv, testbed, out / "real_records.csv", setup.drain_timeout_s,
                                        trace.duration_s)
            if autoscaler is not None:
                autoscaler.stop()   # its syncs are the evaluated run's
            progress("profiling again, to see whether the machine changed during the replay")
            profile_after = measure(testbed.relays["edge"].url, testbed.relays["cloud"].url,
                                    frames=setup.profile_frames, max_side=setup.max_side, load=load, answers=False)
            profile_after.write(out / "profile_after.json")
    calibrated = json.loads(profile_json.read_text(encoding="utf-8"))
    all_real = list(read_records(out / "real_records.csv"))
    origin = min((r.captured_at for r in all_real), default=time.time())
    real_syncs = testbed_syncs(autoscaler, origin) if autoscaler is not None else []
    first_sync = first_sync_in_trace(autoscaler, origin, trace) if autoscaler is not None else None
    progress(f"simulating {setup.sim_seeds} seed(s)")
    simulated_runs = simulate(setup, trace_csv, profile_json, cold_start_s, trace.duration_s + 1e-3, out, observer,
                              first_sync)
    summaries, sim_runs = simulated_runs.summaries, simulated_runs.records
    real_records = after_warmup(all_real, setup.warmup_s)
    real_timeline, sim_timeline = sampler.timeline(origin), timeline_from_summary(summaries[0])
    end = trace.duration_s
    real = from_records(real_records, "testbed", pod_seconds(real_timeline, end))
    sim_counted = [after_warmup(run, setup.warmup_s) for run in sim_runs]
    simulated = from_runs(sim_counted, f"simulator ({setup.sim_seeds} seeds)", pod_seconds(sim_timeline, end))
    per_seed = [from_records(run, f"simulator seed {seed}") for seed, run in enumerate(sim_counted)]
    judges = agreement_judges(calibrated, frames)
    if judges is not None:   # the share of answers agreeing with the cloud model's, same definition both sides
        real = replace(real, agreement=agreement_share(real_records, judges[0]))
        simulated = replace(simulated, agreement=agreement_share([r for run in sim_counted for r in run], judges[1]))
    progress("simulating with the service times seen during the replay")
    in_run_json = out / "in_run_profile.json"
    in_run_json.write_text(json.dumps(in_run_profile(real_records, profile, setup.shared_cpu, picture_of(setup, frames)), indent=1) + "\n", encoding="utf-8")
    in_run_dir = out / "in_run"
    in_run_dir.mkdir(exist_ok=True)
    in_run_runs = simulate(setup, trace_csv, in_run_json, cold_start_s, trace.duration_s + 1e-3, in_run_dir,
                           observer, first_sync).records
    in_run_counted = [after_warmup(run, setup.warmup_s) for run in in_run_runs]
    in_run = from_runs(in_run_counted, "simulator, in-run service times")
    if judges is not None:
        in_run = replace(in_run, agreement=agreement_share([r for run in in_run_counted for r in run], judges[1]))
    return ValidationResult(setup, profile, cold_start_s, result, real, simulated, per_seed,
                            compare(real, simulated), real_timeline, sim_timeline,
                            real_records, sim_counted, summaries, in_run, compare(real, in_run),
                            [record for run in in_run_counted for record in run], profile_after,
                            calibrated.get("shared_cpu"), observer, calibrated.get("content_factor", {}),
                            real_syncs, simulated_runs.syncs, compare_phases(setup, all_real, sim_runs))


# --- where the time goes ---------------------------------------------------------------------

def breakdown(records: list[FrameRecord], label: str) -> list[dict[str, Any]]:
    """Per site: answered frames and the mean/median of each record time component."""
    rows = []
    for site in ("edge", "cloud"):
        ok = [r for r in records if r.site == site and r.status == "ok"]
        row: dict[str, Any] = {"run": label, "site": site, "answered": len(ok)}
        for part in ("t_queue_ms", "t_network_ms", "t_inference_ms", "t_total_ms"):
            values = [getattr(r, part) for r in ok]
            row[f"mean_{part[2:]}"] = statistics.fmean(values) if values else None
            row[f"p50_{part[2:]}"] = statistics.median(values) if values else None
        rows.append(row)
    return rows


def with_offset(records: list[FrameRecord], offset_ms: float) -> list[FrameRecord]:
    """Records with `offset_ms` more end-to-end latency (a stage the simulator does not model,
    e.g. the preprocessor's own work), deadlines re-judged."""
    shifted = []
    for record in records:
        total = record.t_total_ms + offset_ms if record.status == "ok" else record.t_total_ms
        met = record.deadline_met
        if met is not None and record.status == "ok":
            met = total <= PREPROCESSOR_DEADLINE_MS
        shifted.append(dataclasses.replace(record, t_total_ms=total, deadline_met=met))
    return shifted


__all__ = ["MODEL_DIFFERENCES", "PhaseResult", "ReplayOutcome", "Simulated", "compare_phases", "testbed_syncs", "ReplicaSampler", "ValidationResult", "ValidationSetup", "breakdown",
           "in_run_profile", "profile_load", "run_validation", "sent_sizes", "simulate", "simulated_scenario",
           "time_cold_start", "with_offset"]
