"""EdgeInferenceUnit / CloudInferenceUnit: an object detector behind a small HTTP API.

Routes (KServe-v2-style health):
  POST /infer            JPEG/PNG body, Content-Type image/* ->
                         {"model", "detections": [{"label", "score", "box": [x, y, w, h]}], "inference_ms",
                          "queue_ms", "cpu_ms" (this request's CPU time: decode + model), "replica"}
  GET  /v2/health/live   200 while the process is usable (503 if the model failed to load)
  GET  /v2/health/ready  200 once the model is loaded and has run once (warm-up), else 503
  GET  /metrics          Prometheus text format
The Open Inference Protocol (KServe v2, REST) beside /infer, for Triton/KServe/OVMS clients
(wire format and the model's tensors in edgeoffload.openinference):
  GET  /v2               server metadata (extensions: binary_tensor_data)
  GET  /v2/models/{name}[/versions/1]          model metadata: input `image` (BYTES [1]), outputs
                                               `boxes` (FP32 [-1, 4]), `scores` (FP32 [-1]), `labels` (BYTES [-1])
  GET  /v2/models/{name}[/versions/1]/ready    200 once ready, else 503
  POST /v2/models/{name}[/versions/1]/infer    JSON, or binary tensor data (Inference-Header-Content-Length);
                                               the answer's parameters carry inference_ms, queue_ms, cpu_ms, replica
{name} is INFER_MODEL_NAME (default: the detector kind, e.g. haar-face); another name is 404.
Errors are always JSON {"error": "..."}: 400 bad image or request, 413 too large, 415 wrong
Content-Type, 503 overloaded (admission bound or decode budget) or not ready, 404/405 unknown
route/model/method.

Memory is bounded by design: a frame is decoded no larger than the model needs (JPEGs at
1/2..1/8 scale while decoding; detectors that run on the frame as is see it fitted within
INFER_MAX_SIDE), boxes are mapped back to the frame as sent, and frames are admitted by the
bytes their decode holds (INFER_DECODE_BUDGET_MB per worker), not only by count.

Each gunicorn worker loads its model in a background thread (so liveness answers at once)
and builds one detector instance per serving thread. Admission is bounded per worker
(`queue_bound`): a request that would exceed it is refused with 503 straight away, so load
shows up as fast rejections the preprocessor can route around instead of a growing queue.
Refusals need a free gunicorn thread to be answered: with THREADS <= queue_bound, excess
requests wait in gunicorn's backlog instead (no 503), so give THREADS a spare thread or two.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from edgeoffload import metrics, openinference
from edgeoffload.config import ConfigError, load_config
from edgeoffload.detect import DetectorConfig, DetectorConfigError, DetectorPool, detector_factory
from edgeoffload.detect.decode import clip_box
from edgeoffload.frames import (DEFAULT_MAX_PIXELS, DecodeBudget, DecodeBudgetFull, FrameError, checked_size, decode,
                                decoded_bytes, fit_within, is_image_type, min_decode_budget_mb, unscale)
from edgeoffload.records import Detection
from edgeoffload.units.body import read_body

ENV_PREFIX = "INFER_"
SITES = ("edge", "cloud")
V2_CONTENT_TYPES = (openinference.JSON_TYPE, openinference.BINARY_TYPE, "")  # "" = none (some clients send none)
log = logging.getLogger("edgeoffload.inference")


def _log_like_gunicorn() -> None:
    """Send this unit's log lines to gunicorn's error log (stderr) when running under gunicorn."""
    gunicorn_log = logging.getLogger("gunicorn.error")
    if gunicorn_log.handlers and not log.handlers:
        log.handlers = list(gunicorn_log.handlers)
        log.setLevel(gunicorn_log.level)


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of one inference unit; env var INFER_<FIELD> or a YAML file named by INFER_CONFIG."""

    site: str = "edge"                      # edge | cloud: labels metrics and the model name
    kind: str = "haar-face"                 # haar-face | hog-people | darknet | openvino
    model_path: str | None = None           # .weights / .xml / .onnx (optional cascade XML for haar-face)
    config_path: str | None = None          # darknet .cfg
    labels_path: str | None = None          # one label per line; default: COCO
    input_size: tuple[int, int] = (416, 416)
    conf_threshold: float = 0.25
    nms_threshold: float = 0.45
    threads: int = 1                        # compute threads per model instance
    precision: str = ""                     # OpenVINO: f32 | bf16 | f16 | "" (device default)
    performance_hint: str = ""              # OpenVINO: LATENCY | THROUGHPUT | ""
    max_body_bytes: int = 8 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS    # decoded width x height limit (decompression bombs)
    max_side: int = 1280                    # haar-face/hog-people run on the frame fitted within this
    decode_budget_mb: int = 256             # decoded frame bytes held at once per worker (503 beyond)
    queue_bound: int = 4                    # requests admitted at once per worker process, more get 503
    instances: int = 0                      # detector instances per worker; 0 = min(queue_bound, $THREADS)
    warmup: bool = True                     # run once on a synthetic frame before reporting ready
    replica_name: str = ""                  # named in every answer; default $HOSTNAME (the pod name)
    model_name: str = ""                    # the model's name on the /v2 routes; default: `kind`
    # Capacity experiments on small machines ONLY: every inference lasts at least this long, the
    # rest spent sleeping while holding its detector instance. Replicas that wait instead of
    # compute are not CPU-bound, so on 2 cores they scale as replicas on machines of their own.
    sleep_pad_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ConfigError(f"{ENV_PREFIX}SITE: expected one of {', '.join(SITES)}, got {self.site!r}")
        for name, low in (("max_body_bytes", 1), ("max_pixels", 1), ("queue_bound", 1), ("instances", 0),
                          ("sleep_pad_ms", 0), ("max_side", 32), ("decode_budget_mb", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}: must be >= {low}, got {getattr(self, name)}")
        if self.decode_budget_mb < (needed := min_decode_budget_mb(self.max_pixels)):
            raise ConfigError(f"{ENV_PREFIX}DECODE_BUDGET_MB: must be >= {needed} to hold one frame of "
                              f"{ENV_PREFIX}MAX_PIXELS={self.max_pixels}, got {self.decode_budget_mb}")
        if len(self.replica_name) > 253:
            raise ConfigError(f"{ENV_PREFIX}REPLICA_NAME: at most 253 characters")
        if self.model_name and not openinference.NAME_PATTERN.fullmatch(self.model_name):
            raise ConfigError(f"{ENV_PREFIX}MODEL_NAME: 1-128 letters, digits, _ . - (a URL path segment), "
                              f"got {self.model_name!r}")

    @property
    def v2_model_name(self) -> str:
        return self.model_name or self.kind

    def detector_config(self) -> DetectorConfig:
        """The detector part, with errors renamed to the env var that holds the bad value."""
        names = {f.name for f in fields(DetectorConfig)}
        try:
            return DetectorConfig(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in names})
        except DetectorConfigError as exc:
            raise ConfigError(f"{ENV_PREFIX}{exc.field.upper()}: {exc.detail}") from None

    def working_size(self, model_input: tuple[int, int] | None) -> tuple[int, int]:
        """The largest frame detection uses: the model's input, or max_side for the built-ins."""
        return model_input or (self.max_side, self.max_side)

    def pool_size(self, threads: int | None = None) -> int:
        """Instances beyond queue_bound or the gunicorn thread count ($THREADS) would never be used."""
        threads = max(1, threads if threads is not None else int(os.environ.get("THREADS", "1")))
        return self.instances or min(self.queue_bound, threads)


@dataclass(frozen=True, slots=True)
class Served:
    """One answered request, whatever the protocol."""

    model: str
    detections: Sequence[Detection]
    inference_ms: float
    queue_ms: float
    cpu_ms: float
    replica: str

    def timings(self) -> dict[str, Any]:
        """The fields both protocols report (native: in the body; v2: as response parameters)."""
        return {"inference_ms": self.inference_ms, "queue_ms": self.queue_ms, "cpu_ms": self.cpu_ms,
                "replica": self.replica}


class ModelHolder:
    """Loads the detector pool off the request path and records whether it is usable yet."""

    def __init__(self, config: InferenceConfig) -> None:
        self.config = config
        self.pool: DetectorPool | None = None
        self.ready = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            pool = DetectorPool(detector_factory(self.config.detector_config()), self.config.pool_size())
            if self.config.warmup:
                pool.warm_up(warmup_frame())
            self.pool = pool
            self.ready.set()
            log.info("model %s ready (%d instance(s)) after %.2fs", pool.name, len(pool.instances),
                     time.perf_counter() - started)
        except Exception as exc:  # any load failure must surface on the health routes, not kill silently
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")


def warmup_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A deterministic textured frame, so warm-up exercises the same code paths as a camera frame."""
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def in_frame(detections: list[Detection], shape: tuple[int, ...], size: tuple[int, int]) -> list[Detection]:
    """Detections on a reduced image (`shape`) mapped back to the frame as sent (width, height)."""
    height, width = shape[:2]
    if (width, height) == size:
        return detections
    to_original = unscale(width / size[0], height / size[1])
    return [Detection(d.label, d.score, clip_box(to_original(d.box), *size)) for d in detections]


def _validate_files(config: InferenceConfig) -> None:
    for name in ("model_path", "config_path", "labels_path"):
        path = getattr(config, name)
        if path and not Path(path).exists():
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}: file not found: {path}")


def create_app(config: InferenceConfig | None = None) -> Flask:
    _log_like_gunicorn()
    config = config or load_config(InferenceConfig, ENV_PREFIX)
    config.detector_config()
    _validate_files(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    holder = ModelHolder(config)
    admission = threading.BoundedSemaphore(config.queue_bound)
    budget = DecodeBudget(config.decode_budget_mb << 20)
    site = config.site
    replica = config.replica_name or os.environ.get("HOSTNAME") or socket.gethostname()
    pad_s = config.sleep_pad_ms / 1000.0
    model_name = config.v2_model_name
    in_flight = metrics.INFERENCE_IN_FLIGHT.labels(site)

    def error(status: int, message: str, reason: str | None = None) -> tuple[Response, int]:
        if reason:
            metrics.INFERENCE_FAILURES.labels(site, reason).inc()
        return jsonify(error=message), status

    def serve(image_of: Callable[[bytes], bytes],
              answer: Callable[[Served], Response]) -> Response | tuple[Response, int]:
        """Admit one request, run the detector on the image `image_of` finds in its body, `answer`."""
        if request.content_length is not None and request.content_length > config.max_body_bytes:
            return error(413, f"body of {request.content_length} bytes exceeds {config.max_body_bytes}", "too_large")
        if not holder.ready.is_set() or holder.pool is None:
            return error(503, "model not ready", "not_ready")
        if not admission.acquire(blocking=False):
            return error(503, f"overloaded: {config.queue_bound} requests already in progress", "overloaded")
        in_flight.inc()
        try:
            body = read_body(config.max_body_bytes)  # the upload is network time, not queueing
            admitted, cpu_started = time.perf_counter(), time.thread_time()
            encoded = image_of(body)
            size = checked_size(encoded, config.max_pixels)
            working = config.working_size(holder.pool.input_size)
            with budget.hold(decoded_bytes(encoded, config.max_pixels, working)):
                image = decode(encoded, config.max_pixels, working)
                if holder.pool.input_size is None:
                    image = fit_within(image, config.max_side)
                with holder.pool.borrow() as detector:
                    started = time.perf_counter()
                    detections = in_frame(detector.detect(image), image.shape, size)
                    if pad_s and (rest := pad_s - (time.perf_counter() - started)) > 0:
                        time.sleep(rest)
                    elapsed = time.perf_counter() - started
            metrics.INFERENCE_SECONDS.labels(site, holder.pool.name).observe(elapsed)
            # queue_ms: time in this unit from the whole body being read to inference starting
            # (decode, waiting for a model instance), so the caller can split its round trip.
            return answer(Served(f"{site}/{holder.pool.name}", detections, inference_ms=round(elapsed * 1000.0, 3),
                                 queue_ms=round((started - admitted) * 1000.0, 3),
                                 cpu_ms=round((time.thread_time() - cpu_started) * 1000.0, 3), replica=replica))
        except FrameError as exc:
            return error(400, str(exc), "bad_image")
        except DecodeBudgetFull as exc:
            return error(503, f"overloaded: {exc}", "overloaded")
        except openinference.ProtocolError as exc:
            return error(400, str(exc), "bad_request")
        finally:
            in_flight.dec()
            admission.release()

    @app.post("/infer")
    def infer():
        if not is_image_type(request.content_type):
            return error(415, f"Content-Type must be image/* (JPEG or PNG), got {request.content_type or 'none'!r}",
                         "unsupported_type")
        return serve(lambda body: body, lambda served: jsonify(
            model=served.model, detections=[d.to_dict() for d in served.detections], **served.timings()))

    def not_ready() -> tuple[Response, int] | None:
        if holder.error:
            return jsonify(error=f"model failed to load: {holder.error}"), 503
        if not holder.ready.is_set() or holder.pool is None:
            return jsonify(error="model loading"), 503
        return None

    @app.get("/v2/health/live")
    def live():
        if holder.error:
            return jsonify(error=f"model failed to load: {holder.error}"), 503
        return jsonify(live=True)

    @app.get("/v2/health/ready")
    def ready():
        return not_ready() or jsonify(ready=True, model=f"{site}/{holder.pool.name}", replica=replica)

    # -- Open Inference Protocol (KServe v2): edgeoffload.openinference has the wire format -------
    def unknown_model(name: str, version: str | None) -> str:
        """Why the route's model is not this unit's ("" when it is)."""
        if name != model_name:
            return f"unknown model {name[:128]!r}: this unit serves {model_name!r}"
        if version is not None and version != openinference.MODEL_VERSION:
            return f"unknown version {version[:32]!r} of model {model_name!r} (it has {openinference.MODEL_VERSION!r})"
        return ""

    @app.get("/v2")
    def server_metadata():
        return jsonify(name="edgeoffload", version=metadata.version("edgeoffload"),
                       extensions=list(openinference.EXTENSIONS))

    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None):
        if missing := unknown_model(name, version):
            return error(404, missing)
        return jsonify(openinference.model_metadata(model_name))

    @app.get("/v2/models/<name>/ready")
    @app.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None):
        if missing := unknown_model(name, version):
            return error(404, missing)
        return not_ready() or jsonify(name=model_name, ready=True)

    @app.post("/v2/models/<name>/infer")
    @app.post("/v2/models/<name>/versions/<version>/infer")
    def v2_infer(name: str, version: str | None = None):
        if missing := unknown_model(name, version):
            return error(404, missing, "unknown_model")
        if request.mimetype not in V2_CONTENT_TYPES:
            return error(415, f"Content-Type must be {openinference.JSON_TYPE} (or {openinference.BINARY_TYPE} with "
                              f"{openinference.HEADER_LENGTH}), got {request.content_type!r}", "unsupported_type")
        header_length = request.headers.get(openinference.HEADER_LENGTH)
        parsed: list[openinference.Message] = []

        def image_of(body: bytes) -> bytes:
            parsed.append(openinference.decode(body, header_length, "inputs"))
            openinference.requested_outputs(parsed[0])  # a bad request fails before the model runs
            return openinference.image_of_request(parsed[0])

        def answer(served: Served) -> Response:
            body, headers = openinference.detection_response(model_name, parsed[0], served.detections,
                                                             served.timings())
            return Response(body, headers=headers)

        return serve(image_of, answer)

    @app.get("/metrics")
    def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            metrics.INFERENCE_FAILURES.labels(site, "too_large").inc()
        return jsonify(error=exc.description or exc.name), exc.code

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        metrics.INFERENCE_FAILURES.labels(site, "error").inc()
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    @app.after_request
    def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.INFERENCE_REQUESTS.labels(site, route, str(response.status_code)).inc()
        return response

    holder.start()
    return app
