"""EdgePreprocessorUnit: frames in, one offloading decision and one FrameRecord per frame out.

Routes:
  POST /process?camera=ID[&frame_id=N][&wait=1]
                         frame bytes (Content-Type image/*). 202 {"camera","frame_id"} once
                         accepted; with wait=1, 200 and the frame's FrameRecord when it is done.
                         400 bad camera id / undecodable frame (an error record is published
                         when the camera already has a slot, see CameraSlots), 413 too large,
                         415 not image/*, 429 every camera slot taken by an active camera.
  GET  /api/state        JSON snapshot of both sites as the policy sees them, queues, MQTT, sources
  GET  /v2/health/live   200 while the process runs
  GET  /v2/health/ready  200 once each site's replicas are known and while the record buffer
                         has room for every open frame, else 503
  GET  /metrics          Prometheus text format
Frames also come from built-in sources (PRE_SOURCES, see edgeoffload.sources).

Each frame is decoded, downscaled (or letterboxed) for the model, re-encoded as JPEG, and
handed to the offloading engine (edgeoffload.offload), which asks the policy, dispatches
and publishes the record QoS 1 to `edgeoffload/results/<camera>`.

Queues, estimates and policy state live in the worker process: run ONE gunicorn worker with
several threads (WORKERS=1, THREADS=8, the unit's default in its manifest); several workers
would each keep their own view of the sites and split the policy's learning.
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from edgeoffload import metrics
from edgeoffload.estimate import DEFAULT_ALPHA, DEFAULT_PROBE_INTERVAL_S
from edgeoffload.config import ConfigError, load_config
from edgeoffload.discovery import (EndpointSliceWatch, ReplicaSource, StaticReplicas, kubernetes_api_client,
                                   pod_namespace, service_of)
from edgeoffload.frames import (DEFAULT_MAX_PIXELS, DecodeBudget, DecodeBudgetFull, FrameError, checked_size, decode,
                                decoded_bytes, encode_jpeg, fit_within, is_image_type, letterbox, min_decode_budget_mb,
                                unscale)
from edgeoffload.messaging import MQTTSettings, Publisher
from edgeoffload.offload import (CLOUD, EDGE, NATIVE, Box, FrameJob, Offloader, SiteConfig, SiteProtocol, V2Protocol,
                                 identity_box)
from edgeoffload.openinference import DetectionMapping
from edgeoffload.policy import Policy, load_policy
from edgeoffload.preview import PreviewSampler, PreviewSettings
from edgeoffload.records import FrameRecord
from edgeoffload.sources import FrameSource, parse_sources, valid_camera
from edgeoffload.units.body import read_body

ENV_PREFIX = "PRE_"
UNIT = "preprocessor"
MAX_FRAME_ID = 2**63 - 1
DISCOVERY_KINDS = ("static", "kubernetes")
log = logging.getLogger("edgeoffload.preprocessor")


@dataclass(frozen=True)
class PreprocessorConfig:
    """Settings of the preprocessor; env var PRE_<FIELD> or a YAML file named by PRE_CONFIG."""

    edge_url: str = "http://127.0.0.1:8081"
    cloud_url: str = "http://127.0.0.1:8082"
    # built-in name[:arg], module:attr or path/file.py:attr. Default min-latency (measurement
    # driven, routes around an unhealthy site); "alternate" reproduces the original demo.
    policy: str = "min-latency"
    seed: int = 0                            # seeds a policy that draws random numbers (random:p, bandit)
    deadline_ms: float | None = 500.0        # per-frame target; None = no deadline
    drop_expired: bool = False               # drop frames whose deadline passed while queued
    jpeg_quality: int = 80
    max_side: int = 640                      # downscale so the longer side fits (0 = keep size)
    input_size: tuple[int, int] | None = None  # letterbox to WxH instead (boxes mapped back)
    queue_size: int = 8                      # frames waiting per site; the oldest is dropped beyond
    request_timeout_s: float = 5.0
    # Where each site's replicas come from: "static" (the URL is all there is: a Service, one
    # unit, a server elsewhere) or "kubernetes" (the ready endpoints of a Service, watched).
    edge_discovery: str = "static"
    cloud_discovery: str = "static"
    edge_service: str = ""                   # Service to watch ([NAMESPACE/]NAME); default: the URL's host name
    cloud_service: str = ""
    edge_port_name: str = "http"             # the Service port (by name) whose endpoints take the requests
    cloud_port_name: str = "http"
    namespace: str = ""                      # of those Services; default: this pod's namespace
    kubeconfig: str | None = None            # outside a cluster: the API server to ask (local testbed)
    # Requests at once per ready replica: the inference unit's admission bound (INFER_QUEUE_BOUND
    # x its WORKERS). A site's concurrency is this x its ready replicas, so it follows the HPA.
    edge_replica_concurrency: int = 4
    cloud_replica_concurrency: int = 4
    max_in_flight_per_site: int = 256        # requests at once per site, whatever the replicas
    edge_replicas: int = 1                   # replicas assumed behind a static URL (discovery counts them)
    cloud_replicas: int = 1
    # How to ask each site: "edgeoffload" (a unit's POST /infer) or "v2" (the Open Inference
    # Protocol: Triton, OVMS, KServe, MLServer, or a unit's /v2 routes), then naming the model,
    # optionally its tensors (`input=..,input_type=BYTES|UINT8,boxes=..,scores=..,labels=..,
    # box_format=xywh|xyxy,version=..`; edgeoffload.openinference.DetectionMapping), and
    # whether to send the image as binary tensor data (else JSON, the image as base64 text).
    edge_protocol: str = "edgeoffload"
    cloud_protocol: str = "edgeoffload"
    edge_v2_model: str = ""
    cloud_v2_model: str = ""
    edge_v2_mapping: str = ""
    cloud_v2_mapping: str = ""
    edge_v2_binary: bool = True
    cloud_v2_binary: bool = True
    edge_service_ms: float = 80.0            # initial estimates, replaced by measurements
    cloud_service_ms: float = 80.0
    cloud_rtt_ms: float = 40.0
    cloud_uplink_mbps: float = 20.0
    ewma_alpha: float = DEFAULT_ALPHA
    health_interval_s: float = DEFAULT_PROBE_INTERVAL_S           # ready probe period per site (0 = off)
    max_body_bytes: int = 8 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Decoded frames held at once (HTTP frames; 503 beyond). A 4096x4096 PNG holds ~60 MiB while
    # reduced to max_side; the pod's memory limit (512 Mi) must cover this plus bodies and buffers.
    decode_budget_mb: int = 128
    max_cameras: int = 1024                  # camera slots (frame numbering per camera id)
    camera_idle_s: float = 3600.0            # a slot idle this long is freed when a new camera needs one
    wait_timeout_s: float = 30.0             # how long ?wait=1 waits for the record
    sources: str = ""                        # cam1=video.mp4,cam2=folder/,cam3=0,cam4=rtsp://...
    source_fps: float = 0.0                  # 0 = the file's own rate (folders 10 fps)
    source_loop: bool = False
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str = "preprocessor"
    mqtt_password: str | None = None
    mqtt_cafile: str | None = None
    mqtt_certfile: str | None = None
    mqtt_keyfile: str | None = None
    mqtt_client_id: str = ""
    mqtt_max_buffered: int = 10000
    mqtt_resend_window_s: float = 10.0       # >= 2x the broker's autosave_interval (5 s)
    flush_timeout_s: float = 10.0            # at shutdown, wait this long for broker acks
    # Camera previews for the live page (edgeoffload.preview): a shrunk processed frame with its
    # boxes, retained at QoS 0 on edgeoffload/previews/<camera>, at most PREVIEW_FPS per camera.
    preview: bool = True
    preview_width: int = 320
    preview_fps: float = 2.0
    preview_max_bytes: int = 48 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"{ENV_PREFIX}JPEG_QUALITY: must be 1..100, got {self.jpeg_quality}")
        for name in ("queue_size", "edge_replicas", "cloud_replicas", "edge_replica_concurrency",
                     "cloud_replica_concurrency", "max_in_flight_per_site", "max_body_bytes",
                     "max_pixels", "max_cameras", "mqtt_max_buffered"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}: must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "edge_service_ms", "cloud_service_ms", "cloud_uplink_mbps",
                     "wait_timeout_s", "camera_idle_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}: must be > 0, got {getattr(self, name)}")
        if self.decode_budget_mb < (needed := min_decode_budget_mb(self.max_pixels)):
            raise ConfigError(f"{ENV_PREFIX}DECODE_BUDGET_MB: must be >= {needed} to hold one frame of "
                              f"{ENV_PREFIX}MAX_PIXELS={self.max_pixels}, got {self.decode_budget_mb}")
        if not 0 <= self.mqtt_resend_window_s <= 3600:
            raise ConfigError(f"{ENV_PREFIX}MQTT_RESEND_WINDOW_S: must be 0..3600, got {self.mqtt_resend_window_s}")
        for site in ("edge", "cloud"):
            if getattr(self, f"{site}_discovery") not in DISCOVERY_KINDS:
                raise ConfigError(f"{ENV_PREFIX}{site.upper()}_DISCOVERY: must be one of {', '.join(DISCOVERY_KINDS)}, "
                                  f"got {getattr(self, f'{site}_discovery')!r}")
        for site in ("edge", "cloud"):
            self.site_protocol(site)
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ConfigError(f"{ENV_PREFIX}DEADLINE_MS: must be > 0 (or none), got {self.deadline_ms}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 16):
            raise ConfigError(f"{ENV_PREFIX}INPUT_SIZE: expected WIDTHxHEIGHT of at least 16, got {self.input_size}")
        try:
            parse_sources(self.sources)
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}SOURCES: {exc}") from None
        if self.preview and (problems := self.preview_settings().problems()):
            raise ConfigError(f"{ENV_PREFIX}PREVIEW_{problems[0]}")
        try:
            self.mqtt_settings()
        except ValueError as exc:   # e.g. a client id the broker would refuse for this account
            raise ConfigError(f"{ENV_PREFIX}MQTT_*: {exc}") from None

    def preview_settings(self) -> PreviewSettings:
        return PreviewSettings(self.preview, self.preview_width, self.preview_fps, self.preview_max_bytes)

    def site_protocol(self, site: str) -> SiteProtocol:
        """How the preprocessor asks `site`; ConfigError names the setting that is wrong."""
        protocol, variable = getattr(self, f"{site}_protocol"), f"{ENV_PREFIX}{site.upper()}"
        if protocol == NATIVE.name:
            return NATIVE
        if protocol != V2Protocol.name:
            raise ConfigError(f"{variable}_PROTOCOL: must be {NATIVE.name} or {V2Protocol.name}, got {protocol!r}")
        model = getattr(self, f"{site}_v2_model")
        if not model:
            raise ConfigError(f"{variable}_V2_MODEL: the model to ask is required with {variable}_PROTOCOL=v2")
        try:
            return V2Protocol(DetectionMapping.parse(model, getattr(self, f"{site}_v2_mapping"),
                                                     binary=getattr(self, f"{site}_v2_binary")))
        except ValueError as exc:
            setting = "MODEL" if str(exc).startswith("model:") else "MAPPING"
            raise ConfigError(f"{variable}_V2_{setting}: {exc}") from None

    def site_configs(self) -> tuple[SiteConfig, SiteConfig]:
        common = dict(queue_size=self.queue_size, max_in_flight=self.max_in_flight_per_site,
                      timeout_s=self.request_timeout_s)
        edge = SiteConfig(EDGE, self.edge_url, replicas=self.edge_replicas, service_s=self.edge_service_ms / 1000,
                          per_replica=self.edge_replica_concurrency, rtt_s=0.0, uplink_bps=math.inf,
                          protocol=self.site_protocol(EDGE), **common)  # type: ignore[arg-type]
        cloud = SiteConfig(CLOUD, self.cloud_url, replicas=self.cloud_replicas, service_s=self.cloud_service_ms / 1000,
                           per_replica=self.cloud_replica_concurrency, rtt_s=self.cloud_rtt_ms / 1000,
                           uplink_bps=self.cloud_uplink_mbps * 1e6, estimate_uplink=True,
                           protocol=self.site_protocol(CLOUD), **common)  # type: ignore[arg-type]
        return edge, cloud

    def replica_sources(self) -> dict[str, ReplicaSource]:
        """Each site's replica source; ConfigError when Kubernetes discovery has no API to ask."""
        sources: dict[str, ReplicaSource] = {}
        api_client = None
        for site, url, replicas in ((EDGE, self.edge_url, self.edge_replicas), (CLOUD, self.cloud_url, self.cloud_replicas)):
            if getattr(self, f"{site}_discovery") == "static":
                sources[site] = StaticReplicas(url, replicas)
                continue
            if api_client is None:
                try:
                    api_client = kubernetes_api_client(self.kubeconfig)
                except Exception as exc:  # no ServiceAccount mount, unreadable kubeconfig
                    raise ConfigError(f"{ENV_PREFIX}{site.upper()}_DISCOVERY=kubernetes: cannot reach the Kubernetes "
                                      f"API ({type(exc).__name__}: {str(exc)[:200]}); run in a pod with the "
                                      f"preprocessor ServiceAccount or set {ENV_PREFIX}KUBECONFIG") from None
            namespace, _, service = (getattr(self, f"{site}_service") or service_of(url)).rpartition("/")
            sources[site] = EndpointSliceWatch(api_client, namespace or self.namespace or pod_namespace(), service,
                                               port_name=getattr(self, f"{site}_port_name"),
                                               scheme=urlsplit(url).scheme)
        return sources

    def mqtt_settings(self) -> MQTTSettings:
        return MQTTSettings(host=self.mqtt_host, port=self.mqtt_port, username=self.mqtt_username or None,
                            password=self.mqtt_password, cafile=self.mqtt_cafile, certfile=self.mqtt_certfile,
                            keyfile=self.mqtt_keyfile, client_id=self.mqtt_client_id,
                            max_buffered=self.mqtt_max_buffered, resend_window_s=self.mqtt_resend_window_s)


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    """A frame ready to send, and how to map boxes in it back to the captured frame."""

    payload: bytes
    to_original: Callable[[Box], Box]
    image: np.ndarray | None = None   # the decoded frame, for the camera preview; dropped after ingest


class FramePreparer:
    """Decode (bounded, and reduced when the frame is larger than what is sent on), fit to the
    model's input, re-encode as JPEG. With a DecodeBudget, frames are admitted by decoded size."""

    def __init__(self, max_side: int = 640, input_size: tuple[int, int] | None = None, quality: int = 80,
                 max_pixels: int = DEFAULT_MAX_PIXELS, budget: DecodeBudget | None = None) -> None:
        self.max_side = max_side
        self.input_size = input_size
        self.quality = quality
        self.max_pixels = max_pixels
        self.budget = budget
        self.sent_size = input_size or ((max_side, max_side) if max_side > 0 else None)

    def from_bytes(self, data: bytes) -> PreparedFrame:
        width, height = checked_size(data, self.max_pixels)
        held = self.budget.hold(decoded_bytes(data, self.max_pixels, self.sent_size)) if self.budget else nullcontext()
        with held:
            image = decode(data, self.max_pixels, self.sent_size)
            prepared = self.from_image(image)
        if image.shape[:2] == (height, width):
            return prepared
        reduced = unscale(image.shape[1] / width, image.shape[0] / height)
        return PreparedFrame(prepared.payload, lambda box: reduced(prepared.to_original(box)), image)

    def from_image(self, image: np.ndarray) -> PreparedFrame:
        if self.input_size is not None:
            boxed = letterbox(image, self.input_size)
            return PreparedFrame(encode_jpeg(boxed.image, self.quality), boxed.to_original, image)
        fitted = fit_within(image, self.max_side)
        scale = fitted.shape[1] / image.shape[1]
        to_original = unscale(scale, scale) if fitted is not image else identity_box
        return PreparedFrame(encode_jpeg(fitted, self.quality), to_original, image)


class FrameRejected(Exception):
    """A frame could not be prepared. `record` is its published error record, or None when its
    camera had no slot: such a frame is refused outright and takes none."""

    def __init__(self, message: str, record: FrameRecord | None) -> None:
        super().__init__(message)
        self.record = record


class TooManyCameras(Exception):
    pass


class CameraSlots:
    """Frame numbering per camera, for at most `capacity` cameras.

    A camera takes a slot with its first frame that decodes (junk never does). When every slot
    is taken, a new camera gets the slot of the camera idle longest, if that one has been idle
    at least `idle_s`; otherwise TooManyCameras. A camera that lost its slot and comes back
    numbers its frames from 0 again (or from the frame_id it sends)."""

    def __init__(self, capacity: int, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.idle_s = idle_s
        self._clock = clock
        self._next_ids: OrderedDict[str, int] = OrderedDict()   # least recently used first
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._next_ids)

    def has(self, camera: str) -> bool:
        with self._lock:
            return camera in self._next_ids

    def check_room(self, camera: str) -> None:
        """TooManyCameras if `camera` could not get a slot now."""
        with self._lock:
            self._make_room(camera, evict=False)

    def assign(self, camera: str, requested: int | None = None) -> int:
        """The caller's id if given, else the camera's next number; takes a slot if needed."""
        with self._lock:
            self._make_room(camera, evict=True)
            frame_id = requested if requested is not None else self._next_ids.get(camera, 0)
            self._next_ids[camera] = max(self._next_ids.get(camera, 0), frame_id + 1)
            self._next_ids.move_to_end(camera)
            self._last_used[camera] = self._clock()
            return frame_id

    def _make_room(self, camera: str, evict: bool) -> None:
        if camera in self._next_ids or len(self._next_ids) < self.capacity:
            return
        oldest = next(iter(self._next_ids))
        if self._clock() - self._last_used[oldest] < self.idle_s:
            raise TooManyCameras(f"all {self.capacity} camera slots are in use by cameras active within "
                                 f"{self.idle_s:g}s")
        if evict:
            del self._next_ids[oldest], self._last_used[oldest]


class Preprocessor:
    """The unit's state: publisher, offloading engine, frame numbering, sources."""

    def __init__(self, config: PreprocessorConfig, policy: Policy | None = None) -> None:
        self.config = config
        self.policy = policy or load_policy(config.policy, seed=config.seed)
        self.preparer = FramePreparer(config.max_side, config.input_size, config.jpeg_quality, config.max_pixels,
                                      DecodeBudget(config.decode_budget_mb << 20))
        self.previews = PreviewSampler(config.preview_settings(), config.max_cameras)
        self.sources = [FrameSource(spec, self.ingest_image, self.ingest_bytes, config.source_fps, config.source_loop)
                        for spec in parse_sources(config.sources)]
        self.publisher = Publisher(config.mqtt_settings(), unit=UNIT, online_status={
            "policy": self.policy.name, "cameras": [s.spec.camera for s in self.sources]})
        edge, cloud = config.site_configs()
        self.offloader = Offloader(self.policy, edge, cloud, self._emit, ewma_alpha=config.ewma_alpha,
                                   health_interval_s=config.health_interval_s, drop_expired=config.drop_expired,
                                   on_decision=lambda site: metrics.PREPROCESSOR_DECISIONS.labels(site).inc(),
                                   sources=config.replica_sources())
        self.deadline_s = config.deadline_ms / 1000.0 if config.deadline_ms is not None else None
        self.cameras = CameraSlots(config.max_cameras, config.camera_idle_s)
        self._closed = False
        metrics.PREPROCESSOR_POLICY.labels(self.policy.name).set(1)

    def start(self) -> "Preprocessor":
        self.publisher.start()
        self.offloader.start()
        for source in self.sources:
            source.start()
        return self

    def close(self) -> None:
        """Stop sources, let queued frames finish, flush every record to the broker."""
        if self._closed:
            return
        self._closed = True
        for source in self.sources:
            source.stop()
        self.offloader.close(drain_timeout_s=self.config.request_timeout_s * 2)
        if not self.publisher.close(self.config.flush_timeout_s, offline_status={"policy": self.policy.name}):
            log.warning("shutdown: %d records were not acknowledged by the broker", self.publisher.stats().buffered)

    # -- frames in -------------------------------------------------------------------------
    def ingest_bytes(self, camera: str, data: bytes, frame_id: int | None = None, origin: str = "source") -> FrameJob:
        """Accept an encoded frame; FrameRejected if it does not decode (see FrameRejected)."""
        return self._ingest(camera, frame_id, origin, lambda: self.preparer.from_bytes(data))

    def ingest_image(self, camera: str, image: np.ndarray, frame_id: int | None = None,
                     origin: str = "source") -> FrameJob:
        """Accept a captured (already decoded) frame."""
        return self._ingest(camera, frame_id, origin, lambda: self.preparer.from_image(image))

    def _ingest(self, camera: str, frame_id: int | None, origin: str,
                prepare: Callable[[], PreparedFrame]) -> FrameJob:
        """Once the frame has an id, every path ends in exactly one record."""
        arrived, captured_at = time.monotonic(), time.time()
        had_slot = self.cameras.has(camera)
        if not had_slot:
            self.cameras.check_room(camera)  # refuse before spending a decode on it
        metrics.PREPROCESSOR_FRAMES.labels(origin).inc()
        try:
            prepared = prepare()
        except (FrameError, ValueError) as exc:
            if not had_slot:
                raise FrameRejected(str(exc), None) from None
            job = self._new_job(camera, frame_id, arrived, captured_at)
            raise FrameRejected(str(exc), self.offloader.reject(job, f"bad_frame: {exc}")) from None
        job = self._new_job(camera, frame_id, arrived, captured_at)
        self._offer_preview(job, prepared.image)
        job.payload = prepared.payload
        job.to_original = prepared.to_original
        return self.offloader.submit(job)

    def _offer_preview(self, job: FrameJob, image: np.ndarray | None) -> None:
        if image is None:
            return
        try:
            self.previews.offer(job.camera, job.frame_id, image)
        except Exception:  # a preview must never cost the frame its record
            log.exception("preview of frame %s/%d failed", job.camera, job.frame_id)

    def _new_job(self, camera: str, frame_id: int | None, arrived: float, captured_at: float) -> FrameJob:
        return FrameJob(camera=camera, frame_id=self.cameras.assign(camera, frame_id), captured_at=captured_at,
                        arrived=arrived, payload=b"", deadline_s=self.deadline_s)

    # -- records out -----------------------------------------------------------------------
    def _emit(self, record: FrameRecord) -> int | None:
        """Count and publish a record; its MQTT message id (None if the buffer was full)."""
        metrics.PREPROCESSOR_RECORDS.labels(record.site, record.status).inc()
        if record.status == "ok":
            metrics.PREPROCESSOR_LATENCY.labels(record.site).observe(record.t_total_ms / 1000.0)
            if record.reason.startswith("failover:"):
                from_site = record.reason.split(":", 1)[1].split("->", 1)[0]
                metrics.PREPROCESSOR_FAILOVERS.labels(from_site, record.site).inc()
            if record.escalated:
                metrics.PREPROCESSOR_ESCALATIONS.labels("answered" if record.site == "cloud" else "failed").inc()
        else:
            metrics.PREPROCESSOR_DROPS.labels(drop_reason(record)).inc()
        mid = self.publisher.publish_record(record)
        if mid is None:
            log.error("record %s/%d lost: MQTT buffer full", record.camera, record.frame_id)
        if (preview := self.previews.take(record)) is not None:
            self.publisher.publish_preview(record.camera, preview.to_json())
        return mid

    def record_room(self) -> int:
        """Records the MQTT buffer can still take beyond those every open frame will produce."""
        return self.config.mqtt_max_buffered - self.publisher.stats().buffered - self.offloader.open_frames

    def state(self) -> dict[str, Any]:
        return {**self.offloader.state(),
                "mqtt": {"connected": self.publisher.connected, "last_error": self.publisher.last_error,
                         **asdict(self.publisher.stats())},
                "sources": [asdict(source.status) for source in self.sources]}

    def refresh_gauges(self) -> None:
        for site, monitor in self.offloader.monitors.items():
            metrics.PREPROCESSOR_IN_FLIGHT.labels(site).set(monitor.snapshot().in_flight)
        metrics.PREPROCESSOR_MQTT_UNACKED.set(self.publisher.stats().buffered)


def drop_reason(record: FrameRecord) -> str:
    """A bounded metric label for why a frame got no detections."""
    for known in ("queue_full", "deadline_expired", "bad_frame", "policy_error", "shutdown"):
        if record.reason.startswith(known):
            return known
    return "failed"


def _log_like_gunicorn() -> None:
    gunicorn_log = logging.getLogger("gunicorn.error")
    for name in ("edgeoffload.preprocessor", "edgeoffload.offload", "edgeoffload.messaging", "edgeoffload.sources"):
        logger = logging.getLogger(name)
        if gunicorn_log.handlers and not logger.handlers:
            logger.handlers = list(gunicorn_log.handlers)
            logger.setLevel(gunicorn_log.level)


def _query_frame_id(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_FRAME_ID:
        raise ValueError(f"frame_id must be an integer 0..{MAX_FRAME_ID}, got {raw[:32]!r}")
    return int(raw)


def create_app(config: PreprocessorConfig | None = None, policy: Policy | None = None) -> Flask:
    _log_like_gunicorn()
    config = config or load_config(PreprocessorConfig, ENV_PREFIX)
    if config.sources and int(os.environ.get("WORKERS", "1") or 1) > 1:
        log.warning("PRE_SOURCES with WORKERS=%s: every worker reads every source (duplicate frames); "
                    "run the preprocessor with WORKERS=1", os.environ["WORKERS"])
    service = Preprocessor(config, policy).start()
    atexit.register(service.close)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.extensions["preprocessor"] = service

    def error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
        return jsonify(error=message, **extra), status

    @app.post("/process")
    def process():
        camera = request.args.get("camera", "")
        if not valid_camera(camera):
            return error(400, "query parameter camera must be 1-64 characters of A-Z a-z 0-9 _ . -")
        try:
            requested_id = _query_frame_id(request.args.get("frame_id"))
        except ValueError as exc:
            return error(400, str(exc))
        if not is_image_type(request.content_type):
            return error(415, f"Content-Type must be image/* (JPEG or PNG), got {request.content_type or 'none'!r}")
        if request.content_length is not None and request.content_length > config.max_body_bytes:
            return error(413, f"body of {request.content_length} bytes exceeds {config.max_body_bytes}")
        if service.record_room() <= 0:
            return error(503, "record buffer full: the broker has not acknowledged earlier records")
        try:
            job = service.ingest_bytes(camera, read_body(config.max_body_bytes), requested_id, origin="http")
        except FrameRejected as exc:
            if exc.record is None:
                return error(400, str(exc), camera=camera)
            return error(400, str(exc), camera=camera, frame_id=exc.record.frame_id, record=exc.record.to_dict())
        except TooManyCameras as exc:
            return error(429, str(exc))
        except DecodeBudgetFull as exc:
            return error(503, f"busy: {exc}")
        if request.args.get("wait", "") not in ("1", "true", "yes"):
            return jsonify(camera=job.camera, frame_id=job.frame_id), 202
        # 200 only once the broker holds the record: a preprocessor crash after that loses nothing.
        deadline = time.monotonic() + config.wait_timeout_s
        record = job.wait(config.wait_timeout_s)
        if record is None:
            return error(504, f"no outcome within {config.wait_timeout_s:g}s", camera=camera, frame_id=job.frame_id)
        if job.receipt is None or not service.publisher.wait_acked(job.receipt, max(0.0, deadline - time.monotonic())):
            return error(504, f"record not acknowledged by the broker within {config.wait_timeout_s:g}s (it is "
                              f"{'kept and re-sent' if job.receipt is not None else 'lost: MQTT buffer full'})",
                         camera=camera, frame_id=job.frame_id, record=record.to_dict())
        return jsonify(record.to_dict())

    @app.get("/api/state")
    def api_state():
        return jsonify(service.state())

    @app.get("/v2/health/live")
    def live():
        return jsonify(live=True)

    @app.get("/v2/health/ready")
    def ready():
        # Ready while every frame accepted now can still have its record held until the broker
        # takes it: a broker restart alone does not take the unit out of its Service.
        room, connected = service.record_room(), service.publisher.connected
        if pending := service.offloader.discovery_pending():
            errors = "; ".join(f"{site}: {service.offloader.sources[site].status().get('last_error') or 'listing'}"
                               for site in pending)
            return error(503, f"waiting for the replicas of {', '.join(pending)} ({errors})")
        if room <= 0:
            return error(503, f"record buffer full ({config.mqtt_max_buffered}); MQTT connected: {connected} "
                              f"{service.publisher.last_error}".strip())
        return jsonify(ready=True, policy=service.policy.name, mqtt_connected=connected, record_room=room)

    @app.get("/metrics")
    def prometheus_metrics():
        service.refresh_gauges()
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=exc.description or exc.name), exc.code

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    return app


__all__ = ["PreprocessorConfig", "Preprocessor", "FramePreparer", "PreparedFrame", "FrameRejected", "CameraSlots",
           "create_app",
           "drop_reason", "ENV_PREFIX"]
