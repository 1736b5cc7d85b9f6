"""Scenario files: what the simulator models, validated with errors that name the field.

Top-level keys (see experiments/scenarios/baseline.yaml for a commented example):
  name, duration_s, warmup_s, seed, timeline_interval_s,
  cameras: [ {name, count, fps, arrival, jitter_ms, frame_bytes, deadline_ms, start_s, stop_s} | {name, trace, deadline_ms} ]
  wan:     {bandwidth_mbps | bandwidth_bps, rtt_ms, trace, profile, egress_price_per_gb}
  edge, cloud: {replicas, workers, queue, queue_capacity, service_ms, content_factor, cold_start_s, hpa,
                cpu_request, cpu_per_worker, price_per_pod_hour, power_w: {idle, busy}, model}
  edge.answers: {picture: [{score, detections, agrees}, ...]} | {file: PROFILE, key: edge.answers}
               optional: the edge model's measured answers per picture, drawn for each frame the edge
               answers (cascade policies decide on them; `agrees` gives the answer-agreement share)
  observer: {ewma_alpha, probe_interval_s, edge_service_ms, cloud_service_ms, cloud_rtt_ms, cloud_uplink_mbps}
  shared_cpu: {cores, pools}   optional: the listed pools (default edge and cloud) run on one
                               machine and share `cores` cores (processor sharing, see pools.SharedCpu)
  dispatch: {queue_size, per_replica, max_in_flight}   optional: the preprocessor's per-site queue and
                               per-replica concurrency (see sim.dispatch); absent: frames go straight to the pods
"""
from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from edgeoffload.hpa import CONTROLLER_SETTINGS, HPAError, HPASpec, find_hpa, kubernetes_release
from edgeoffload.sim.distributions import Dist, ScenarioError, constant, load_profile, parse_dist, stream_seed
from edgeoffload.estimate import DEFAULT_ALPHA, DEFAULT_PROBE_INTERVAL_S


@dataclass(frozen=True, slots=True)
class CameraGroup:
    name: str
    count: int = 1
    fps: float = 10.0
    arrival: Literal["periodic", "poisson"] = "periodic"
    jitter_ms: float = 0.0                # periodic: capture time = grid + uniform(-j, +j)
    frame_bytes: Dist = constant(50_000)
    deadline_ms: float | None = None
    start_s: float = 0.0
    stop_s: float | None = None           # captures stop here (default: the scenario's end)
    trace: tuple[tuple[float, str, int, str], ...] = ()   # (time_s, camera, bytes, content), time-sorted

    def camera_names(self) -> list[str]:
        if self.trace:
            return sorted({row[1] for row in self.trace})
        return [self.name] if self.count == 1 else [f"{self.name}-{i}" for i in range(self.count)]


@dataclass(frozen=True, slots=True)
class WanSpec:
    bandwidth_bps: float = 100e6
    rtt_ms: float = 40.0                   # propagation round trip; half each way
    trace: tuple[tuple[float, float, float], ...] = ()   # (time_s, bandwidth_bps, rtt_ms), time-sorted
    egress_price_per_gb: float = 0.0


@dataclass(frozen=True, slots=True)
class EdgeAnswer:
    """One measured edge answer to a picture (`edgeoffload profile`): the best detection score
    (None: nothing found), how many objects, and whether it agrees with the cloud model's answer
    on the same picture (edgeoffload.agreement; None: not measured)."""

    score: float | None
    detections: int = 0
    agrees: bool | None = None


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One inference site: a Deployment of pods with `workers` servers each."""

    name: str
    replicas: int = 1
    workers: int = 1
    queue: Literal["per-pod", "shared"] = "per-pod"
    queue_capacity: int | None = None      # waiting frames per pod (per-pod) or in total (shared)
    service_ms: Dist = constant(50.0)
    content_factor: Mapping[str, float] = field(default_factory=dict)   # picture -> service multiplier
    cold_start_s: Dist = constant(10.0)
    hpa: HPASpec | None = None
    cpu_request: float = 1.0               # cores per pod, the base of Utilization targets
    cpu_per_worker: float = 1.0            # cores a busy worker uses
    price_per_pod_hour: float = 0.0
    idle_w: float = 0.0
    busy_w: float = 0.0                    # power of a pod with every worker busy
    model: str = ""
    answers: Mapping[str, tuple[EdgeAnswer, ...]] = field(default_factory=dict)   # picture -> edge answers


@dataclass(frozen=True, slots=True)
class ObserverSpec:
    """How the preprocessor estimates site state (defaults: the testbed's SiteMonitor/Offloader)."""

    ewma_alpha: float = DEFAULT_ALPHA
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S   # ready probes of each site
    # Estimates before the first answer (the preprocessor's PRE_EDGE_SERVICE_MS etc.; a running
    # preprocessor's /api/state to continue from its learned state). Service = model + HTTP path.
    edge_service_ms: float = 80.0
    cloud_service_ms: float = 80.0
    cloud_rtt_ms: float = 0.0
    cloud_uplink_mbps: float | None = None    # None: unknown until fitted from answers


SHARED_CPU_POOLS = ("edge", "cloud")


@dataclass(frozen=True, slots=True)
class SharedCpuSpec:
    """The listed pools' pods run on one machine with `cores` cores for inference, so a frame
    computes more slowly while workers of the other pools compute too (as on the local testbed)."""

    cores: float
    pools: tuple[str, ...] = SHARED_CPU_POOLS


@dataclass(frozen=True, slots=True)
class DispatchSpec:
    """The preprocessor's dispatch (PRE_QUEUE_SIZE, PRE_*_REPLICA_CONCURRENCY, PRE_MAX_IN_FLIGHT_PER_SITE)."""

    queue_size: int = 8
    per_replica: Mapping[str, int] = field(default_factory=lambda: {"edge": 4, "cloud": 4})
    max_in_flight: int = 256


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration_s: float
    cameras: tuple[CameraGroup, ...]
    edge: PoolSpec
    cloud: PoolSpec
    wan: WanSpec = field(default_factory=WanSpec)
    observer: ObserverSpec = field(default_factory=ObserverSpec)
    warmup_s: float = 0.0                  # frames captured earlier are simulated but not counted
    seed: int = 0
    timeline_interval_s: float = 15.0
    shared_cpu: SharedCpuSpec | None = None
    dispatch: DispatchSpec | None = None

    def with_seed(self, seed: int) -> "Scenario":
        return dataclasses.replace(self, seed=seed)

    @property
    def policy_seed(self) -> int:
        """The seed a policy built for this scenario gets (load_policy(spec, seed=...)): the
        scenario seed's "policy" stream, independent of every other stream."""
        return stream_seed(self.seed, "policy")


# ------------------------------------------------------------------ validation helpers
class _Fields:
    """Typed access to one mapping of a scenario; every error names the full field path."""

    def __init__(self, raw: Any, path: str, allowed: set[str]) -> None:
        if not isinstance(raw, Mapping):
            raise ScenarioError(path or "scenario", "must be a mapping")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ScenarioError(self._join(path, str(unknown[0])),
                                f"unknown key (allowed: {', '.join(sorted(allowed))})")
        self.raw, self.path = raw, path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def where(self, key: str) -> str:
        return self._join(self.path, key)

    def number(self, key: str, default: float | None = None, *, gt: float | None = None,
               ge: float | None = None, le: float | None = None) -> float:
        if key not in self.raw or self.raw[key] is None:
            if default is None:
                raise ScenarioError(self.where(key), "is required")
            return default
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ScenarioError(self.where(key), f"must be a finite number, got {value!r}")
        if gt is not None and not value > gt:
            raise ScenarioError(self.where(key), f"must be > {gt:g}")
        if ge is not None and not value >= ge:
            raise ScenarioError(self.where(key), f"must be >= {ge:g}")
        if le is not None and not value <= le:
            raise ScenarioError(self.where(key), f"must be <= {le:g}")
        return float(value)

    def integer(self, key: str, default: int | None = None, *, ge: int = 0) -> int:
        value = self.raw.get(key, default)
        if value is None:
            raise ScenarioError(self.where(key), "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(self.where(key), f"must be an integer, got {value!r}")
        if value < ge:
            raise ScenarioError(self.where(key), f"must be >= {ge}")
        return value

    def optional_number(self, key: str, *, gt: float | None = None, ge: float | None = None) -> float | None:
        if self.raw.get(key) is None:
            return None
        return self.number(key, gt=gt, ge=ge)

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.raw.get(key, default)
        if value not in options:
            raise ScenarioError(self.where(key), f"must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    def text(self, key: str, default: str) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ScenarioError(self.where(key), f"must be a string, got {value!r}")
        return str(value)


# ------------------------------------------------------------------ parsing
def load_scenario(source: str | Path | Mapping[str, Any], base_dir: Path | None = None) -> Scenario:
    """A Scenario from a YAML file or an already-parsed mapping; relative file references
    (traces, profiles, HPA manifests) are resolved against the file's folder."""
    if isinstance(source, Mapping):
        return parse_scenario(source, base_dir or Path.cwd())
    path = Path(source)
    return parse_scenario(read_yaml(path, "scenario"), base_dir or path.resolve().parent)


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of a file; a ScenarioError naming the file if it cannot be read or parsed."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError("", f"cannot read {what} {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError("", f"{path} is not valid YAML: {problem}"
                                + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")) from None


def parse_scenario(raw: Any, base_dir: Path) -> Scenario:
    top = _Fields(raw, "", {"name", "duration_s", "warmup_s", "seed", "timeline_interval_s", "cameras",
                            "wan", "edge", "cloud", "observer", "shared_cpu", "dispatch"})
    cameras_raw = raw.get("cameras")
    if not isinstance(cameras_raw, list) or not cameras_raw:
        raise ScenarioError("cameras", "must be a non-empty list of camera groups")
    cameras = tuple(_camera(c, f"cameras[{i}]", base_dir) for i, c in enumerate(cameras_raw))
    names = [n for group in cameras for n in group.camera_names()]
    if len(names) != len(set(names)):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ScenarioError("cameras", f"camera name {duplicate!r} is used twice")
    duration = top.number("duration_s", gt=0)
    warmup = top.number("warmup_s", 0.0, ge=0)
    if warmup >= duration:
        raise ScenarioError("warmup_s", f"must be < duration_s ({duration:g})")
    observer = _Fields(raw.get("observer") or {}, "observer", {"ewma_alpha", "probe_interval_s", "edge_service_ms",
                                                                "cloud_service_ms", "cloud_rtt_ms", "cloud_uplink_mbps"})
    return Scenario(
        name=top.text("name", "scenario"), duration_s=duration, warmup_s=warmup,
        seed=top.integer("seed", 0), timeline_interval_s=top.number("timeline_interval_s", 15.0, gt=0),
        cameras=cameras, wan=_wan(raw.get("wan") or {}, base_dir),
        edge=_pool(raw.get("edge"), "edge", base_dir), cloud=_pool(raw.get("cloud"), "cloud", base_dir),
        observer=ObserverSpec(ewma_alpha=observer.number("ewma_alpha", DEFAULT_ALPHA, gt=0, le=1),
                              probe_interval_s=observer.number("probe_interval_s", DEFAULT_PROBE_INTERVAL_S, gt=0),
                              edge_service_ms=observer.number("edge_service_ms", 80.0, gt=0),
                              cloud_service_ms=observer.number("cloud_service_ms", 80.0, gt=0),
                              cloud_rtt_ms=observer.number("cloud_rtt_ms", 0.0, ge=0),
                              cloud_uplink_mbps=observer.optional_number("cloud_uplink_mbps", gt=0)),
        shared_cpu=_shared_cpu(raw.get("shared_cpu")), dispatch=_dispatch(raw))


def _dispatch(raw: Mapping[str, Any]) -> DispatchSpec | None:
    """`dispatch: {queue_size, per_replica: N | {edge: N, cloud: M}, max_in_flight}`."""
    if raw.get("dispatch") is None:
        return None
    fields = _Fields(raw["dispatch"], "dispatch", {"queue_size", "per_replica", "max_in_flight"})
    per_replica = raw["dispatch"].get("per_replica", 4)
    if isinstance(per_replica, Mapping):
        sites = _Fields(per_replica, "dispatch.per_replica", {"edge", "cloud"})
        bounds = {site: sites.integer(site, 4, ge=1) for site in ("edge", "cloud")}
    else:
        bound = fields.integer("per_replica", 4, ge=1)
        bounds = {"edge": bound, "cloud": bound}
    for site in ("edge", "cloud"):
        if (raw.get(site) or {}).get("queue") == "shared":
            raise ScenarioError(f"{site}.queue", "dispatch sends each request to one replica: use queue: per-pod")
    return DispatchSpec(queue_size=fields.integer("queue_size", 8, ge=1), per_replica=bounds,
                        max_in_flight=fields.integer("max_in_flight", 256, ge=1))


def _camera(raw: Any, path: str, base_dir: Path) -> CameraGroup:
    fields = _Fields(raw, path, {"name", "count", "fps", "arrival", "jitter_ms", "frame_bytes", "deadline_ms",
                                 "start_s", "stop_s", "trace"})
    name = fields.text("name", path.replace("[", "").replace("]", ""))
    deadline = fields.optional_number("deadline_ms", gt=0)
    if raw.get("trace") is not None:
        clash = sorted({"count", "fps", "arrival", "jitter_ms", "frame_bytes", "start_s", "stop_s"} & set(raw))
        if clash:
            raise ScenarioError(f"{path}.{clash[0]}", "cannot be combined with trace (the trace gives times and sizes)")
        return CameraGroup(name=name, deadline_ms=deadline,
                           trace=_camera_trace(base_dir / str(raw["trace"]), f"{path}.trace"))
    fps = fields.number("fps", 10.0, gt=0)
    jitter = fields.number("jitter_ms", 0.0, ge=0)
    if jitter / 1000 >= 0.5 / fps:
        raise ScenarioError(f"{path}.jitter_ms", f"must be < half the frame period ({500 / fps:g} ms)")
    start = fields.number("start_s", 0.0, ge=0)
    stop = fields.optional_number("stop_s", gt=start)
    return CameraGroup(name=name, count=fields.integer("count", 1, ge=1), fps=fps, start_s=start, stop_s=stop,
                       arrival=fields.choice("arrival", ("periodic", "poisson"), "periodic"),  # type: ignore[arg-type]
                       jitter_ms=jitter, deadline_ms=deadline,
                       frame_bytes=parse_dist(raw.get("frame_bytes", 50_000), f"{path}.frame_bytes", base_dir))


def _read_csv(path: Path, where: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ScenarioError(where, f"{path.name} lacks column(s) {', '.join(missing)} (needs {', '.join(columns)})")
            return list(reader)
    except OSError as exc:
        raise ScenarioError(where, f"cannot read {path}: {exc.strerror}") from None


def _camera_trace(path: Path, where: str) -> tuple[tuple[float, str, int, str], ...]:
    """(time_s, camera, bytes, content) rows; `content` (which picture, optional) is "" when absent."""
    rows = []
    last = -math.inf
    for line, row in enumerate(_read_csv(path, where, ("time_s", "camera", "bytes")), start=2):
        try:
            time_s, size = float(row["time_s"]), int(row["bytes"])
        except ValueError:
            raise ScenarioError(where, f"{path.name} line {line}: time_s must be a number and bytes an integer") from None
        if time_s < last or size <= 0 or not math.isfinite(time_s):
            raise ScenarioError(where, f"{path.name} line {line}: times must be sorted and bytes > 0")
        last = time_s
        rows.append((time_s, row["camera"], size, (row.get("content") or "").strip()))
    if not rows:
        raise ScenarioError(where, f"{path.name} has no rows")
    return tuple(rows)


def _wan(raw: Any, base_dir: Path) -> WanSpec:
    fields = _Fields(raw, "wan", {"bandwidth_mbps", "bandwidth_bps", "rtt_ms", "trace", "profile", "egress_price_per_gb"})
    if "bandwidth_mbps" in raw and "bandwidth_bps" in raw:
        raise ScenarioError("wan.bandwidth_bps", "give bandwidth_mbps or bandwidth_bps, not both")
    bandwidth = (fields.number("bandwidth_mbps", gt=0) * 1e6 if "bandwidth_mbps" in raw
                 else fields.number("bandwidth_bps", 100e6, gt=0))
    rtt = fields.number("rtt_ms", 40.0, ge=0)
    if raw.get("profile") is not None:
        profile = load_profile(base_dir / str(raw["profile"]), "wan.profile")
        wan = profile.get("wan") or {}
        if "rtt_ms" not in raw and wan.get("rtt_ms"):
            rtt = float(statistics.median(wan["rtt_ms"]))
        if "bandwidth_mbps" not in raw and "bandwidth_bps" not in raw and wan.get("bandwidth_bps"):
            bandwidth = float(wan["bandwidth_bps"])
    trace: list[tuple[float, float, float]] = []
    if raw.get("trace") is not None:
        path = base_dir / str(raw["trace"])
        for line, row in enumerate(_read_csv(path, "wan.trace", ("time_s", "bandwidth_bps", "rtt_ms")), start=2):
            try:
                point = (float(row["time_s"]), float(row["bandwidth_bps"]), float(row["rtt_ms"]))
            except ValueError:
                raise ScenarioError("wan.trace", f"{path.name} line {line}: values must be numbers") from None
            if point[1] <= 0 or point[2] < 0 or (trace and point[0] <= trace[-1][0]):
                raise ScenarioError("wan.trace", f"{path.name} line {line}: times must increase, bandwidth > 0, rtt >= 0")
            trace.append(point)
    return WanSpec(bandwidth_bps=bandwidth, rtt_ms=rtt, trace=tuple(trace),
                   egress_price_per_gb=fields.number("egress_price_per_gb", 0.0, ge=0))


def _pool(raw: Any, name: str, base_dir: Path) -> PoolSpec:
    if raw is None:
        raise ScenarioError(name, "is required (a pool: replicas, workers, service_ms, ...)")
    fields = _Fields(raw, name, {"replicas", "workers", "queue", "queue_capacity", "service_ms", "content_factor",
                                 "cold_start_s", "hpa", "cpu_request", "cpu_per_worker", "price_per_pod_hour",
                                 "power_w", "model", "answers"})
    power = _Fields(raw.get("power_w") or {}, f"{name}.power_w", {"idle", "busy"})
    idle_w = power.number("idle", 0.0, ge=0)
    capacity = raw.get("queue_capacity")
    if capacity is not None:
        capacity = fields.integer("queue_capacity", ge=0)
    return PoolSpec(
        name=name, replicas=fields.integer("replicas", 1, ge=0), workers=fields.integer("workers", 1, ge=1),
        queue=fields.choice("queue", ("per-pod", "shared"), "per-pod"),  # type: ignore[arg-type]
        queue_capacity=capacity,
        service_ms=parse_dist(raw.get("service_ms", 50.0), f"{name}.service_ms", base_dir),
        content_factor=_content_factor(raw.get("content_factor"), f"{name}.content_factor", base_dir),
        cold_start_s=parse_dist(raw.get("cold_start_s", 10.0), f"{name}.cold_start_s", base_dir, positive=False),
        hpa=_hpa(raw.get("hpa"), f"{name}.hpa", base_dir),
        cpu_request=fields.number("cpu_request", 1.0, gt=0), cpu_per_worker=fields.number("cpu_per_worker", 1.0, gt=0),
        price_per_pod_hour=fields.number("price_per_pod_hour", 0.0, ge=0),
        idle_w=idle_w, busy_w=power.number("busy", idle_w, ge=idle_w), model=fields.text("model", ""),
        answers=_answers(raw.get("answers"), f"{name}.answers", base_dir, name))


def _shared_cpu(raw: Any) -> SharedCpuSpec | None:
    """`shared_cpu: {cores, pools}`; absent means every pool computes on machines of its own."""
    if raw is None:
        return None
    fields = _Fields(raw, "shared_cpu", {"cores", "pools"})
    cores = fields.number("cores", gt=0)
    listed = raw.get("pools", list(SHARED_CPU_POOLS))
    if not isinstance(listed, list) or not listed:
        raise ScenarioError("shared_cpu.pools", f"must be a non-empty list of {' and/or '.join(SHARED_CPU_POOLS)}")
    for index, name in enumerate(listed):
        if name not in SHARED_CPU_POOLS:
            raise ScenarioError(f"shared_cpu.pools[{index}]", f"must be edge or cloud, got {name!r}")
        if name in listed[:index]:
            raise ScenarioError(f"shared_cpu.pools[{index}]", f"{name!r} is listed twice")
    return SharedCpuSpec(cores=cores, pools=tuple(listed))


def _content_factor(raw: Any, path: str, base_dir: Path) -> dict[str, float]:
    """`content_factor`: {picture: multiplier} inline, or {file: PROFILE, key: dotted.key} naming such a
    mapping in a profile. A frame's service draw is multiplied by its picture's factor (1 if unknown)."""
    if raw is None:
        return {}
    raw, path = _per_picture(raw, path, base_dir, "factor")
    factors = {}
    for content, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ScenarioError(f"{path}.{content}", f"must be a number > 0, got {value!r}")
        factors[str(content)] = float(value)
    return factors


def _per_picture(raw: Any, path: str, base_dir: Path, what: str) -> tuple[Mapping[str, Any], str]:
    """A {picture: value} mapping given inline, or as {file: PROFILE, key: dotted.key} naming one
    in a profile; returns it with the path its errors should name."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(path, f"must be a mapping of picture -> {what}, or {{file, key}}")
    if "file" not in raw:
        return raw, path
    _Fields(raw, path, {"file", "key"})
    data: Any = load_profile(base_dir / str(raw["file"]), f"{path}.file")
    for part in str(raw.get("key", "")).split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{path}.key", f"{raw.get('key')!r} is not a mapping in {raw['file']}")
    return data, f"{path}[{raw['file']}:{raw.get('key')}]"


def _answers(raw: Any, path: str, base_dir: Path, pool: str) -> dict[str, tuple[EdgeAnswer, ...]]:
    """`answers`: {picture: [{score, detections, agrees}, ...]} (inline or {file, key}). Frames of an
    unlisted picture (or of cameras without pictures) draw from every listed answer."""
    if raw is None:
        return {}
    if pool != "edge":
        raise ScenarioError(path, "only the edge's answers are modelled (the cloud's answer is the reference)")
    raw, path = _per_picture(raw, path, base_dir, "list of answers")
    answers: dict[str, tuple[EdgeAnswer, ...]] = {}
    for picture, samples in raw.items():
        where = f"{path}.{picture}"
        if not isinstance(samples, list) or not samples:
            raise ScenarioError(where, "must be a non-empty list of {score, detections, agrees}")
        parsed = []
        for index, sample in enumerate(samples):
            fields = _Fields(sample, f"{where}[{index}]", {"score", "detections", "agrees"})
            agrees = sample.get("agrees")
            if agrees is not None and not isinstance(agrees, bool):
                raise ScenarioError(fields.where("agrees"), f"must be true or false, got {agrees!r}")
            score = fields.optional_number("score")
            detections = fields.integer("detections", 0 if score is None else 1, ge=0)
            if (score is None) != (detections == 0):
                raise ScenarioError(fields.where("score"), "is null exactly when nothing was found (detections 0)")
            parsed.append(EdgeAnswer(score, detections, agrees))
        answers[str(picture)] = tuple(parsed)
    if not answers:
        raise ScenarioError(path, "must list at least one picture")
    return answers


def _hpa(raw: Any, path: str, base_dir: Path) -> HPASpec | None:
    """`hpa:` is either {manifest: FILE, name: NAME} (an autoscaling/v2 file such as autoscale.yml)
    or inline HPA spec fields (minReplicas, maxReplicas, metrics, behavior); next to either, the
    controller's release (`kubernetes_version`) and settings (CONTROLLER_SETTINGS, upstream defaults)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ScenarioError(path, "must be a mapping")
    controller_keys = {"kubernetes_version", "first_sync_s", *CONTROLLER_SETTINGS}
    settings = _Fields({k: v for k, v in raw.items() if k in controller_keys}, path, controller_keys)
    controller: dict[str, Any] = {key: settings.number(key, gt=0) if key == "sync_period_s" else settings.number(key, ge=0)
                                  for key in (*CONTROLLER_SETTINGS, "first_sync_s") if settings.raw.get(key) is not None}
    if raw.get("kubernetes_version") is not None:
        try:
            controller["kubernetes_version"] = kubernetes_release(raw["kubernetes_version"])
        except HPAError as exc:
            raise ScenarioError(f"{path}.kubernetes_version", str(exc)) from None
    try:
        if "manifest" in raw:
            unknown = sorted(set(raw) - {"manifest", "name"} - controller_keys)
            if unknown:
                raise ScenarioError(f"{path}.{unknown[0]}", "unknown key next to manifest (allowed: name, "
                                    + ", ".join(sorted(controller_keys)) + ")")
            spec = find_hpa(base_dir / str(raw["manifest"]), raw.get("name"), **controller)
        else:
            body = {k: v for k, v in raw.items() if k not in controller_keys}
            spec = HPASpec.from_manifest({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                                          "spec": body}, **controller)
    except (HPAError, OSError) as exc:
        raise ScenarioError(path, str(exc)) from None
    for index, metric in enumerate(spec.metrics):
        if metric.kind == "Resource" and metric.name != "cpu":
            raise ScenarioError(f"{path}.metrics[{index}]", f"resource {metric.name!r} is not modelled (cpu only)")
    return spec


__all__ = ["CameraGroup", "DispatchSpec", "EdgeAnswer", "ObserverSpec", "PoolSpec", "Scenario", "ScenarioError", "SharedCpuSpec", "WanSpec",
           "load_scenario", "parse_scenario", "read_yaml"]
