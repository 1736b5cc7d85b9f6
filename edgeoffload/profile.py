"""`edgeoffload profile`: measure running inference units and the WAN, write a simulator profile.

The simulator needs service-time and network distributions; this measures them on the real
thing at low load (sequential requests, so nothing queues) with the frames the preprocessor
would really send: the sample video prepared exactly as the EdgePreprocessorUnit prepares
it (decode, fit to `max_side`, JPEG re-encode). Per request the client's round trip is
split with the unit's own report (`inference_ms`; `queue_ms` is kept for reference only):

    overhead = round trip - inference               HTTP, body transfer, decode, JSON
    edge:   service = inference + overhead          the whole per-frame path at the edge door
    cloud:  service = inference + median(edge overhead)   same software stack as the edge
            rtt     = round trip - service - bytes*8/bandwidth

The WAN bandwidth comes from two frame sizes: every frame is also sent padded with JPEG
comment segments (identical pixels, so identical model cost, `pad_bytes` more on the wire);
the extra time the padding costs through the cloud path, less what it costs at the edge
(loopback), is the uplink serialisation time of `pad_bytes`.

Under load (`--load-fps F`): the sequential requests above still give the WAN and the idle
service times, and then the service times are measured again while open-loop background senders
offer F frames/s of the same frames (Poisson arrivals), routed between the sites by a policy
(`--load-policy`, default `queue-threshold:1`: the cloud gets a frame when the edge is busy, which
is when edge-first policies offload) and sent by `--concurrency` dispatchers per site, as the
preprocessor sends them. On a machine whose CPUs every unit shares, this is what a frame meets
during an experiment at that rate: other inferences running at the same time. The timed
background requests themselves are the samples; the time a request waited inside the unit for a
model instance (its `queue_ms` above the idle median, i.e. above decoding) is queueing, which the
simulator models itself, so it is taken out of the service time:

    path    = round trip - inference - max(0, queue_ms - idle median queue_ms)
    edge:   service = inference + path
    cloud:  service = inference + median(loaded edge path)

`edge.service_ms`/`cloud.service_ms` are then the loaded samples; the idle ones stay as
`idle_service_ms`.

Answers (unless `--no-answers`): every picture of the source, prepared as above, is sent once to
each site; the cloud's detections are the reference (`cloud.reference`, boxes in the captured
frame's pixels), and `edge.answers` holds, per picture, the edge answer's best score, its count
and whether it agrees with the reference (edgeoffload.agreement): the simulator's `edge.answers`
scenario key, which cascade policies decide on.

The output follows edgeoffload.sim.PROFILE_SCHEMA (`edge.service_ms`, `cloud.service_ms`,
`wan.rtt_ms`, `wan.bandwidth_bps`, `frame_bytes`) plus the raw parts (`inference_ms`,
`overhead_ms`, `preprocess_ms`) so a gap between simulation and testbed can be traced.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import queue
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import requests

from edgeoffload.agreement import agrees
from edgeoffload.load.sample_video import CyclicFrames, open_source, picture_name
from edgeoffload.offload import new_session
from edgeoffload.policy import Observation, SiteState, load_policy
from edgeoffload.records import Detection
from edgeoffload.sim.distributions import stream_seed

log = logging.getLogger(__name__)

PROFILE_VERSION = 1
COMMENT_MARKER = b"\xff\xfe"
MAX_COMMENT_PAYLOAD = 65533          # a JPEG segment length field counts itself (2 bytes), max 65535


class ProfileError(RuntimeError):
    """A unit could not be measured (unreachable, not ready, or answering errors)."""


@dataclass(frozen=True, slots=True)
class RequestSample:
    """One timed POST /infer."""

    bytes: int
    round_trip_ms: float
    inference_ms: float
    queue_ms: float
    cpu_ms: float = 0.0     # the unit's CPU time for it (decode + model): how CPU-bound its work is

    @property
    def overhead_ms(self) -> float:
        """Everything but the model: HTTP, body transfer, decode. The unit's `queue_ms` is not
        subtracted: at sequential load nothing waits, and the unit counts reading the body
        (the transfer this module measures) in it."""
        return max(0.0, self.round_trip_ms - self.inference_ms)


@dataclass(frozen=True, slots=True)
class SiteMeasurement:
    """Sequential requests to one site with the plain frames and with the padded ones."""

    url: str
    model: str
    plain: tuple[RequestSample, ...]
    padded: tuple[RequestSample, ...]

    def overhead_median_ms(self, padded: bool = False) -> float:
        return statistics.median(s.overhead_ms for s in (self.padded if padded else self.plain))

    def padding_cost_ms(self) -> float:
        """Extra round-trip time the padding bytes cost, model time removed: the median over
        back-to-back pairs of the same frame, so load drifting on a shared machine cancels out."""
        return statistics.median(padded.overhead_ms - plain.overhead_ms
                                 for plain, padded in zip(self.plain, self.padded))


@dataclass(frozen=True, slots=True)
class WanEstimate:
    bandwidth_bps: float | None        # None: the padding cost nothing measurable (unshaped link)
    rtt_ms: tuple[float, ...]


@dataclass(frozen=True)
class Profile:
    """What `edgeoffload profile` writes (see the module docstring for the decomposition)."""

    edge: SiteMeasurement
    cloud: SiteMeasurement
    wan: WanEstimate
    frame_bytes: tuple[int, ...]
    preprocess_ms: tuple[float, ...]
    pad_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)
    loaded: "LoadedMeasurement | None" = None
    answers: "PictureAnswers | None" = None

    def idle_edge_service_ms(self) -> list[float]:
        return [s.inference_ms + s.overhead_ms for s in self.edge.plain]

    def idle_cloud_service_ms(self) -> list[float]:
        overhead = self.edge.overhead_median_ms()
        return [s.inference_ms + overhead for s in self.cloud.plain]

    def edge_service_ms(self) -> list[float]:
        """The simulator's edge service times: under load when measured so, else sequential."""
        return self.loaded.edge_service_ms() if self.loaded else self.idle_edge_service_ms()

    def cloud_service_ms(self) -> list[float]:
        return self.loaded.cloud_service_ms() if self.loaded else self.idle_cloud_service_ms()

    def to_dict(self) -> dict[str, Any]:
        def site(name: str, measured: SiteMeasurement, idle: list[float], service: list[float]) -> dict[str, Any]:
            data = {"service_ms": _rounded(service), "inference_ms": _rounded(s.inference_ms for s in measured.plain),
                    "overhead_ms": _rounded(s.overhead_ms for s in measured.plain),
                    "queue_ms": _rounded(s.queue_ms for s in measured.plain), "model": measured.model,
                    "url": measured.url}
            if (busy := sum(s.inference_ms for s in measured.plain)) > 0 and any(s.cpu_ms for s in measured.plain):
                # cores a busy detector uses: 1 for a CPU-bound model, less for one that waits
                data["cpu_per_worker"] = round(min(1.0, sum(s.cpu_ms for s in measured.plain) / busy), 4)
            if self.loaded is not None:
                samples = getattr(self.loaded, name)
                data.update(idle_service_ms=_rounded(idle),
                            loaded={"inference_ms": _rounded(s.inference_ms for s in samples),
                                    "round_trip_ms": _rounded(s.round_trip_ms for s in samples),
                                    "queue_ms": _rounded(s.queue_ms for s in samples)})
            return data
        wan: dict[str, Any] = {"rtt_ms": _rounded(self.wan.rtt_ms)}
        if self.wan.bandwidth_bps is not None:
            wan["bandwidth_bps"] = round(self.wan.bandwidth_bps)
        meta = {**self.meta, "pad_bytes": self.pad_bytes}
        if self.loaded is not None:
            meta["load"] = self.loaded.describe()
        data = {"version": PROFILE_VERSION,
                "edge": site("edge", self.edge, self.idle_edge_service_ms(), self.edge_service_ms()),
                "cloud": site("cloud", self.cloud, self.idle_cloud_service_ms(), self.cloud_service_ms()),
                "wan": wan, "frame_bytes": list(self.frame_bytes),
                "preprocess_ms": _rounded(self.preprocess_ms), "meta": meta}
        if self.answers is not None:
            data["edge"]["answers"] = self.answers.edge_answers()
            data["cloud"]["reference"] = {name: [d.to_dict() for d in found]
                                          for name, found in self.answers.cloud.items()}
        return data

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    def rows(self) -> list[tuple[str, str]]:
        """Medians for people (the file holds every sample)."""
        def med(values: Sequence[float]) -> str:
            return f"{statistics.median(values):.2f} ms" if values else "-"
        bandwidth = "unshaped (not measurable)" if self.wan.bandwidth_bps is None \
            else f"{self.wan.bandwidth_bps / 1e6:.2f} Mbit/s"
        rows = [("frames per site", str(len(self.edge.plain))),
                ("frame bytes (median)", f"{statistics.median(self.frame_bytes):,.0f}"),
                ("preprocess", med(self.preprocess_ms)),
                ("edge model / overhead / service", " / ".join(med(v) for v in (
                    [s.inference_ms for s in self.edge.plain], [s.overhead_ms for s in self.edge.plain],
                    self.idle_edge_service_ms()))),
                ("cloud model / service", " / ".join(med(v) for v in (
                    [s.inference_ms for s in self.cloud.plain], self.idle_cloud_service_ms()))),
                ("wan rtt", med(self.wan.rtt_ms)), ("wan uplink", bandwidth)]
        if self.loaded is not None:
            loaded = self.loaded
            rows += [("load", f"{loaded.load.fps:g} fps, {loaded.load.policy}, {loaded.load.concurrency} per site, "
                              f"{loaded.sent} frames in {loaded.duration_s:.1f} s"),
                     ("loaded edge model / service (frames)", " / ".join(med(v) for v in (
                         [s.inference_ms for s in loaded.edge], loaded.edge_service_ms())) + f" ({len(loaded.edge)})"),
                     ("loaded cloud model / service (frames)", " / ".join(med(v) for v in (
                         [s.inference_ms for s in loaded.cloud], loaded.cloud_service_ms()))
                      + f" ({len(loaded.cloud)})")]
        if self.answers is not None:
            answers = self.answers
            rows += [("answers: pictures / edge found nothing", f"{len(answers.edge)} / {answers.empty_share():.0%}"),
                     ("answers: edge agrees with cloud", f"{answers.agreement():.0%}")]
        return rows


def _rounded(values: Any, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


# --- frames -------------------------------------------------------------------------------

def pad_jpeg(data: bytes, extra: int) -> bytes:
    """The same JPEG with `extra` more bytes (to within 4) in comment (COM) segments after SOI.

    Decoders skip COM segments, so pixels and model cost are unchanged: only the size grows.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("pad_jpeg needs a JPEG (starts with FFD8)")
    segments = []
    remaining = extra
    while remaining > 4:
        payload = min(MAX_COMMENT_PAYLOAD, remaining - 4)
        segments.append(COMMENT_MARKER + (payload + 2).to_bytes(2, "big") + b"\x00" * payload)
        remaining -= payload + 4
    return data[:2] + b"".join(segments) + data[2:]


@dataclass(frozen=True, slots=True)
class PreparedFrames:
    payloads: tuple[bytes, ...]
    preprocess_ms: tuple[float, ...]


def prepare_frames(source: CyclicFrames, count: int, max_side: int = 640, quality: int = 80) -> PreparedFrames:
    """The first `count` frames of `source` as the preprocessor would send them, and what that cost."""
    from edgeoffload.units.preprocessor import FramePreparer  # Flask app module: import only when profiling

    preparer = FramePreparer(max_side=max_side, quality=quality)
    payloads, costs = [], []
    for index in range(count):
        raw = source.frames[index % len(source.frames)]
        started = time.perf_counter()
        payloads.append(preparer.from_bytes(raw).payload)
        costs.append((time.perf_counter() - started) * 1000.0)
    return PreparedFrames(tuple(payloads), tuple(costs))


@dataclass(frozen=True)
class PictureAnswers:
    """Each picture's answer from both sites (boxes in the captured frame's pixels)."""

    edge: dict[str, tuple[Detection, ...]]
    cloud: dict[str, tuple[Detection, ...]]

    def agrees(self, picture: str) -> bool:
        return agrees(self.edge[picture], self.cloud[picture])

    def agreement(self) -> float:
        return sum(map(self.agrees, self.edge)) / len(self.edge) if self.edge else 0.0

    def empty_share(self) -> float:
        return sum(1 for found in self.edge.values() if not found) / len(self.edge) if self.edge else 0.0

    def edge_answers(self) -> dict[str, list[dict[str, Any]]]:
        """The scenario key `edge.answers`: per picture, the edge answer's summary."""
        return {name: [{"score": round(max(d.score for d in found), 4) if found else None,
                        "detections": len(found), "agrees": self.agrees(name)}]
                for name, found in self.edge.items()}


def answer_of(session: requests.Session, url: str, payload: bytes, timeout_s: float = 30.0) -> tuple[Detection, ...]:
    """A site's detections for one frame (boxes in the sent frame's pixels)."""
    try:
        response = session.post(url.rstrip("/") + "/infer", data=payload, headers={"Content-Type": "image/jpeg"},
                                timeout=timeout_s)
        response.raise_for_status()
        return tuple(Detection.from_dict(d) for d in response.json().get("detections", []))
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise ProfileError(f"{url}/infer: {type(exc).__name__}: {exc}") from None


def measure_answers(edge_url: str, cloud_url: str, source: CyclicFrames, max_side: int = 640,
                    quality: int = 80) -> PictureAnswers:
    """Every picture of `source`, prepared as the preprocessor sends it, answered once by each site."""
    from edgeoffload.units.preprocessor import FramePreparer  # Flask app module: import only when profiling

    preparer = FramePreparer(max_side=max_side, quality=quality)
    answers: dict[str, dict[str, tuple[Detection, ...]]] = {"edge": {}, "cloud": {}}
    session = new_session()
    try:
        for index, raw in enumerate(source.frames):
            prepared = preparer.from_bytes(raw)
            for site, url in (("edge", edge_url), ("cloud", cloud_url)):
                answers[site][picture_name(index)] = tuple(
                    Detection(d.label, d.score, prepared.to_original(d.box))
                    for d in answer_of(session, url, prepared.payload))
    finally:
        session.close()
    return PictureAnswers(answers["edge"], answers["cloud"])


# --- measurement --------------------------------------------------------------------------

def wait_ready(session: requests.Session, url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = session.get(url.rstrip("/") + "/v2/health/ready", timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise ProfileError(f"{url} is not ready after {timeout_s:g}s ({last})")


def timed_infer(session: requests.Session, url: str, payload: bytes, timeout_s: float = 30.0) -> tuple[RequestSample, str]:
    """One POST /infer timed on the monotonic clock; returns the sample and the model name."""
    started = time.perf_counter()
    try:
        response = session.post(url.rstrip("/") + "/infer", data=payload, headers={"Content-Type": "image/jpeg"},
                                 timeout=timeout_s)
    except requests.RequestException as exc:
        raise ProfileError(f"{url}/infer: {type(exc).__name__}: {exc}") from None
    round_trip_ms = (time.perf_counter() - started) * 1000.0
    if response.status_code != 200:
        raise ProfileError(f"{url}/infer answered HTTP {response.status_code}: {response.text[:200]}")
    try:
        body = response.json()
        inference_ms = float(body["inference_ms"])
        queue_ms = float(body.get("queue_ms", 0.0) or 0.0)
        cpu_ms = float(body.get("cpu_ms", 0.0) or 0.0)
    except (ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"{url}/infer: unexpected answer {response.text[:200]!r} ({exc})") from None
    return RequestSample(len(payload), round_trip_ms, inference_ms, queue_ms, cpu_ms), str(body.get("model", ""))


def measure_site(url: str, payloads: Sequence[bytes], pad_bytes: int, warmup: int = 2,
                 pause_s: float = 0.0, ready_timeout_s: float = 30.0) -> SiteMeasurement:
    """Sequential requests, alternating plain and padded versions of each frame (so slow drifts
    in machine load hit both sizes alike). The first `warmup` pairs are not kept."""
    session = new_session()
    try:
        wait_ready(session, url, ready_timeout_s)
        plain: list[RequestSample] = []
        padded: list[RequestSample] = []
        model = ""
        sequence = list(payloads[:warmup]) + list(payloads)
        for index, payload in enumerate(sequence):
            first, model = timed_infer(session, url, payload)
            second, _ = timed_infer(session, url, pad_jpeg(payload, pad_bytes))
            if index >= min(warmup, len(payloads)):
                plain.append(first)
                padded.append(second)
            if pause_s:
                time.sleep(pause_s)
        return SiteMeasurement(url, model, tuple(plain), tuple(padded))
    finally:
        session.close()


def estimate_wan(edge: SiteMeasurement, cloud: SiteMeasurement, pad_bytes: int,
                 min_padding_ms: float = 0.5) -> WanEstimate:
    """Uplink from the padding's extra cost (cloud minus edge); RTT per cloud request."""
    padding_ms = cloud.padding_cost_ms() - edge.padding_cost_ms()
    bandwidth = pad_bytes * 8 / (padding_ms / 1000.0) if padding_ms > min_padding_ms else None
    server_overhead = edge.overhead_median_ms()
    rtt = []
    for sample in cloud.plain:
        transfer_ms = 0.0 if bandwidth is None else sample.bytes * 8 / bandwidth * 1000.0
        rtt.append(max(0.0, sample.overhead_ms - server_overhead - transfer_ms))
    return WanEstimate(bandwidth, tuple(rtt))


# --- measurement under background load ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class BackgroundLoad:
    """Open-loop background traffic kept up while service times are sampled (see the docstring)."""

    fps: float                               # offered frames/s over both sites (Poisson arrivals)
    policy: str = "queue-threshold:1"        # routes each frame, like the preprocessor's policy
    concurrency: int = 2                     # requests in flight per site (the preprocessor's dispatchers)
    seed: int = 0
    max_duration_s: float = 180.0            # give up waiting for samples after this long

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"load fps must be > 0, got {self.fps}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


@dataclass(frozen=True, slots=True)
class LoadedMeasurement:
    """The timed background requests per site (after warm-up) and the idle figures they are read against."""

    load: BackgroundLoad
    edge: tuple[RequestSample, ...]
    cloud: tuple[RequestSample, ...]
    idle_edge_queue_ms: float                # the edge unit's queue_ms at idle: decoding, no waiting
    sent: int
    failed: int
    duration_s: float

    @staticmethod
    def path_ms(sample: RequestSample, idle_queue_ms: float) -> float:
        """Round trip minus the model and minus the wait for a model instance inside the unit."""
        waited = max(0.0, sample.queue_ms - idle_queue_ms)
        return max(0.0, sample.round_trip_ms - sample.inference_ms - waited)

    def edge_service_ms(self) -> list[float]:
        return [s.inference_ms + self.path_ms(s, self.idle_edge_queue_ms) for s in self.edge]

    def cloud_service_ms(self) -> list[float]:
        path = statistics.median(self.path_ms(s, self.idle_edge_queue_ms) for s in self.edge)
        return [s.inference_ms + path for s in self.cloud]

    def describe(self) -> dict[str, Any]:
        return {"fps": self.load.fps, "policy": self.load.policy, "concurrency": self.load.concurrency,
                "seed": self.load.seed, "sent": self.sent, "failed": self.failed,
                "duration_s": round(self.duration_s, 3), "samples": {"edge": len(self.edge), "cloud": len(self.cloud)}}


class _LoadSite:
    """One site's bounded hand-over queue, dispatcher threads and timed samples."""

    def __init__(self, name: str, url: str, concurrency: int, state: SiteState) -> None:
        self.name, self.url, self.state = name, url, state
        self.jobs: queue.Queue[bytes | None] = queue.Queue()
        self.samples: list[RequestSample] = []
        self.failed = 0
        self.in_flight = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._dispatch, daemon=True, name=f"load-{name}-{i}")
                        for i in range(concurrency)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def submit(self, payload: bytes) -> None:
        with self.lock:
            self.in_flight += 1
        self.jobs.put(payload)

    def observed(self) -> SiteState:
        with self.lock:
            return dataclasses.replace(self.state, in_flight=self.in_flight)

    def count(self) -> int:
        with self.lock:
            return len(self.samples)

    def stop(self, timeout_s: float) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join(timeout_s)

    def _dispatch(self) -> None:
        session = new_session()
        try:
            while (payload := self.jobs.get()) is not None:
                try:
                    sample, _ = timed_infer(session, self.url, payload)
                except ProfileError as exc:
                    log.warning("background %s request failed: %s", self.name, exc)
                    sample = None
                with self.lock:
                    self.in_flight -= 1
                    if sample is None:
                        self.failed += 1
                    else:
                        self.samples.append(sample)
        finally:
            session.close()


def idle_state(site: SiteMeasurement, rtt_ms: float = 0.0, bandwidth_bps: float | None = None) -> SiteState:
    """What a policy would have learnt about a site from the sequential measurement."""
    service_ms = statistics.median(s.inference_ms + s.overhead_ms for s in site.plain)
    return SiteState(in_flight=0, replicas=1, service_s=service_ms / 1000.0, rtt_s=rtt_ms / 1000.0,
                     uplink_bps=math.inf if bandwidth_bps is None else bandwidth_bps)


def measure_loaded(edge: SiteMeasurement, cloud: SiteMeasurement, wan: WanEstimate, payloads: Sequence[bytes],
                   load: BackgroundLoad, samples: int, warmup: int = 2) -> LoadedMeasurement:
    """Offer `load.fps` open-loop until both sites have `samples` timed answers after `warmup`."""
    policy = load_policy(load.policy, seed=stream_seed(load.seed, "policy"))   # not the arrivals' stream
    sites = {"edge": _LoadSite("edge", edge.url, load.concurrency, idle_state(edge)),
             "cloud": _LoadSite("cloud", cloud.url, load.concurrency,
                                idle_state(cloud, statistics.median(wan.rtt_ms) if wan.rtt_ms else 0.0,
                                           wan.bandwidth_bps))}
    for site in sites.values():
        site.start()
    rng = random.Random(load.seed)
    wanted = samples + warmup
    started = next_at = time.monotonic()
    sent = 0
    try:
        while any(site.count() < wanted for site in sites.values()):
            if time.monotonic() - started > load.max_duration_s:
                counts = {name: max(0, site.count() - warmup) for name, site in sites.items()}
                raise ProfileError(f"background load: after {load.max_duration_s:g}s only {counts} samples of "
                                   f"{samples} per site; raise the rate or route more frames to the short site "
                                   f"(--load-policy)")
            next_at += rng.expovariate(load.fps)
            time.sleep(max(0.0, next_at - time.monotonic()))
            payload = payloads[sent % len(payloads)]
            obs = Observation(now=time.monotonic(), camera="profile-load", frame_id=sent, frame_bytes=len(payload),
                              deadline_s=None, edge=sites["edge"].observed(), cloud=sites["cloud"].observed())
            sites["cloud" if policy.estimate_to_cloud(obs) else "edge"].submit(payload)
            sent += 1
    finally:
        for site in sites.values():
            site.stop(timeout_s=30.0)
    duration_s = time.monotonic() - started
    failed = sum(site.failed for site in sites.values())
    if failed > sent // 2:
        raise ProfileError(f"background load: {failed} of {sent} requests failed (see the log)")
    return LoadedMeasurement(load, tuple(sites["edge"].samples[warmup:]), tuple(sites["cloud"].samples[warmup:]),
                             statistics.median(s.queue_ms for s in edge.plain), sent, failed, duration_s)


def measure(edge_url: str, cloud_url: str, frames: int = 40, source: str | None = "sample", max_side: int = 640,
            quality: int = 80, pad_bytes: int = 150_000, load: BackgroundLoad | None = None,
            answers: bool = True) -> Profile:
    """Profile both sites and the WAN between them with `frames` frames each (plus warm-up);
    with `load`, the service times again under that background load (`frames` per site); with
    `answers`, each picture's answer from both sites."""
    if frames < 3:
        raise ValueError(f"--frames must be >= 3 for usable medians, got {frames}")
    if pad_bytes < 1000:
        raise ValueError(f"pad bytes must be >= 1000 to be measurable, got {pad_bytes}")
    pictures = open_source(source)
    prepared = prepare_frames(pictures, frames, max_side, quality)
    edge = measure_site(edge_url, prepared.payloads, pad_bytes)
    cloud = measure_site(cloud_url, prepared.payloads, pad_bytes)
    wan = estimate_wan(edge, cloud, pad_bytes)
    loaded = None if load is None else measure_loaded(edge, cloud, wan, prepared.payloads, load, frames)
    method = ("sequential POST /infer at low load" if loaded is None else
              f"WAN sequentially; service times under {load.fps:g} fps open-loop background load")
    meta = {"frames": frames, "max_side": max_side, "quality": quality, "source": source or "sample",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": f"{method}; see edgeoffload/profile.py"}
    found = measure_answers(edge_url, cloud_url, pictures, max_side, quality) if answers else None
    return Profile(edge, cloud, wan, tuple(len(p) for p in prepared.payloads),
                   prepared.preprocess_ms, pad_bytes, meta, loaded, found)


# --- command line -------------------------------------------------------------------------

def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edge", required=True, help="edge inference URL (e.g. the testbed's edge pool)")
    parser.add_argument("--cloud", required=True, help="cloud inference URL, through the WAN")
    parser.add_argument("--frames", type=int, default=40, help="frames per site (default 40)")
    parser.add_argument("--source", default="sample", help="'sample', an image folder or a video file")
    parser.add_argument("--max-side", type=int, default=640, help="as the preprocessor's PRE_MAX_SIDE (default 640)")
    parser.add_argument("--quality", type=int, default=80, help="as the preprocessor's PRE_JPEG_QUALITY")
    parser.add_argument("--pad-kb", type=float, default=150.0,
                        help="extra bytes (KB) of the second frame size used to measure bandwidth")
    parser.add_argument("--load-fps", type=float, default=None,
                        help="also measure service times while offering this many frames/s open-loop "
                             "(the experiment's rate), so CPU contention is in them; default: sequential only")
    parser.add_argument("--load-policy", default=BackgroundLoad.policy,
                        help="policy routing the background frames "
                             "(default queue-threshold:1: cloud when the edge is busy)")
    parser.add_argument("--concurrency", type=int, default=BackgroundLoad.concurrency,
                        help="background requests in flight per site (default 2, as the preprocessor)")
    parser.add_argument("--load-seed", type=int, default=0, help="seed of the background arrivals")
    parser.add_argument("--no-answers", action="store_true",
                        help="skip each picture's answers from both sites (edge.answers, cloud.reference)")
    parser.add_argument("-o", "--output", required=True, help="profile JSON to write")


def run(args: argparse.Namespace) -> int:
    from edgeoffload.load.summary import text_table

    load = None if args.load_fps is None else BackgroundLoad(args.load_fps, args.load_policy, args.concurrency,
                                                             args.load_seed)
    profile = measure(args.edge, args.cloud, frames=args.frames, source=args.source, max_side=args.max_side,
                      quality=args.quality, pad_bytes=int(args.pad_kb * 1000), load=load,
                      answers=not args.no_answers)
    path = profile.write(args.output)
    print(text_table(profile.rows(), f"profile written to {path}"))
    return 0


__all__ = ["BackgroundLoad", "LoadedMeasurement", "PictureAnswers", "Profile", "ProfileError", "RequestSample", "SiteMeasurement",
           "WanEstimate", "estimate_wan", "idle_state", "measure", "measure_answers", "measure_loaded", "measure_site", "pad_jpeg",
           "prepare_frames", "register", "run", "timed_infer"]
