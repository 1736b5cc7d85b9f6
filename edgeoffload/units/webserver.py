"""EdgeWebServerUnit: a read-only live results page, its JSON API, and experiment result pages.

The unit subscribes (read-only `webserver` MQTT account) to every camera's frame records,
latest preview frame (edgeoffload.preview) and every unit's status, keeps a bounded history in memory (`live_results`) and pushes
updates to browsers over Server-Sent Events (`event_stream`).

Run it with ONE gunicorn worker and several threads (WORKERS=1, THREADS=16): each worker
process would hold its own MQTT subscription and its own history, so with several workers
two requests from one browser could see different histories and the broker would carry
every record once per worker. Every open event stream holds one gthread thread; the number
of streams is capped at WEB_MAX_STREAM_CLIENTS and at THREADS - 2, leaving threads for the
page and the API (a browser refused a stream falls back to polling).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Response, abort, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from edgeoffload.broker import PREVIEWS_TOPIC, RESULTS_TOPIC, STATUS_TOPIC
from edgeoffload.config import load_config
from edgeoffload.messaging import MQTTSettings, Subscriber
from edgeoffload.preview import LatestPreviews, Preview
from edgeoffload.records import FrameRecord
from edgeoffload.units.event_stream import EventHub, StreamTiming, TooManyClients, stream
from edgeoffload.units.experiment_pages import ExperimentResults, NotFound
from edgeoffload.units.live_results import LiveResults, check_camera_name

log = logging.getLogger(__name__)

STATE_KEY = "edgeoffload.web"
THREADS_KEPT_FOR_REQUESTS = 2
DEFAULT_RESULTS_LIMIT = 50
SNAPSHOT_REUSE_S = 0.25
# Scripts, styles, images and connections only from this origin; nothing may frame the page.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
READ_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class WebConfig:
    """Settings, read from WEB_<FIELD> environment variables (or the YAML file in WEB_CONFIG)."""

    mqtt_enabled: bool = True
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str = "webserver"
    mqtt_password: str = ""
    mqtt_cafile: str = ""             # TLS is used when set
    mqtt_certfile: str = ""
    mqtt_keyfile: str = ""
    mqtt_session_expiry_s: int = 60   # records missed during a short broker outage are still delivered
    history: int = 200                # records kept per camera
    max_cameras: int = 32             # cameras tracked; the longest-silent one is evicted beyond it
    rate_window_s: float = 5.0        # frames/s are averaged over this window
    timeline_s: int = 120             # seconds of per-second history behind the live charts
    results_dir: str = "experiments/results"  # several folders: separated by os.pathsep (':'), first wins
    max_stream_clients: int = 8       # concurrent Server-Sent Event streams (each holds a thread)
    stream_queue_size: int = 512      # events buffered per stream before a slow client is cut off
    stream_snapshot_interval_s: float = 1.0
    stream_heartbeat_s: float = 15.0
    stream_max_duration_s: float = 300.0

    def __post_init__(self) -> None:
        _check_range("history", self.history, 1, 10_000)
        _check_range("max_cameras", self.max_cameras, 1, 1_000)
        _check_range("rate_window_s", self.rate_window_s, 1, 600)
        _check_range("timeline_s", self.timeline_s, 10, 3_600)
        _check_range("max_stream_clients", self.max_stream_clients, 1, 256)
        _check_range("stream_queue_size", self.stream_queue_size, 16, 100_000)
        _check_range("stream_snapshot_interval_s", self.stream_snapshot_interval_s, 0.1, 60)
        _check_range("stream_heartbeat_s", self.stream_heartbeat_s, 1, 300)
        _check_range("stream_max_duration_s", self.stream_max_duration_s, 5, 86_400)

    def mqtt_settings(self) -> MQTTSettings:
        return MQTTSettings(host=self.mqtt_host, port=self.mqtt_port, username=self.mqtt_username or None,
                            password=self.mqtt_password or None, cafile=self.mqtt_cafile or None,
                            certfile=self.mqtt_certfile or None, keyfile=self.mqtt_keyfile or None,
                            session_expiry_s=self.mqtt_session_expiry_s)

    def stream_timing(self) -> StreamTiming:
        return StreamTiming(self.stream_snapshot_interval_s, self.stream_heartbeat_s, self.stream_max_duration_s)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"WEB_{name.upper()} must be between {low} and {high}, got {value}")


def stream_slots(configured: int, threads: str | None) -> int:
    """Stream cap: the configured one, but never so many that no thread is left for requests."""
    if threads is None or not threads.strip().isdigit():
        return configured
    return max(1, min(configured, int(threads) - THREADS_KEPT_FOR_REQUESTS))


class WebState:
    """What the app serves from: live results, the event hub, experiment folders, MQTT state.

    `on_record`/`on_status`/`on_malformed` are the MQTT subscriber's callbacks (network
    thread); tests feed records through the very same methods.
    """

    def __init__(self, config: WebConfig, max_stream_clients: int) -> None:
        self.config = config
        self.live = LiveResults(config.history, config.max_cameras, config.rate_window_s, config.timeline_s)
        self.hub = EventHub(max_stream_clients, config.stream_queue_size)
        self.previews = LatestPreviews(config.max_cameras)
        self.experiments = ExperimentResults([d for d in config.results_dir.split(os.pathsep) if d])
        self.subscriber: Subscriber | None = None
        self._snapshot_lock = threading.Lock()
        self._snapshot: tuple[float, dict[str, Any]] | None = None

    def on_record(self, _topic: str, record: FrameRecord) -> None:
        item = self.live.add_record(record)
        self.hub.publish("record", item.to_dict())

    def on_status(self, topic: str, status: dict[str, Any]) -> None:
        self.live.add_status(topic.rsplit("/", 1)[-1], status)

    def on_preview(self, _topic: str, payload: bytes) -> None:
        """Keep a camera's newest preview; ValueError (counted as malformed) for a bad one."""
        preview = Preview.from_json(payload)
        check_camera_name(preview.camera)
        self.previews.add(preview)

    def streams(self) -> list[dict[str, Any]]:
        """Per-camera statistics and latest record, with the latest preview's metadata (or None)."""
        previews = self.previews.metas()
        return [{**stream, "preview": previews.get(stream["camera"])} for stream in self.live.streams()]

    def on_malformed(self, _topic: str, _payload: bytes, _error: str) -> None:
        self.live.count_malformed()  # the subscriber already logged it

    def start_mqtt(self) -> None:
        self.subscriber = Subscriber(self.config.mqtt_settings(),
                                     topics=(f"{RESULTS_TOPIC}/#", f"{STATUS_TOPIC}/#", f"{PREVIEWS_TOPIC}/#"),
                                     on_record=self.on_record, on_status=self.on_status,
                                     on_malformed=self.on_malformed, role="webserver", on_preview=self.on_preview)
        self.subscriber.start()

    def mqtt_state(self) -> dict[str, Any]:
        subscriber = self.subscriber
        return {"enabled": subscriber is not None, "connected": bool(subscriber and subscriber.connected),
                "last_error": subscriber.last_error if subscriber else ""}

    def snapshot(self) -> dict[str, Any]:
        """Everything the live page shows, in one object (initial load and stream snapshots).

        Every open stream asks for one per interval; they share one build per
        SNAPSHOT_REUSE_S (with 32 cameras a build costs several milliseconds).
        """
        with self._snapshot_lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot[0] >= SNAPSHOT_REUSE_S:
                self._snapshot = (now, {"summary": self.summary(), "streams": self.streams()})
            return self._snapshot[1]

    def summary(self) -> dict[str, Any]:
        hub = self.hub.stats()
        return {**self.live.summary(), "mqtt": self.mqtt_state(),
                "event_streams": {"clients": hub.clients, "max_clients": hub.max_clients,
                                  "refused": hub.refused, "overflowed": hub.overflowed}}

    def close(self) -> None:
        self.hub.close()
        if self.subscriber is not None:
            self.subscriber.close()


def create_app(config: WebConfig | None = None, connect_mqtt: bool = True) -> Flask:
    """The Flask app; gunicorn calls `create_app()` (config from WEB_* environment variables)."""
    config = config or load_config(WebConfig, "WEB_")
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = 1024  # nothing is uploaded here
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.add_template_filter(format_timestamp, "timestamp")
    _warn_about_several_workers(os.environ.get("WORKERS"))
    state = WebState(config, stream_slots(config.max_stream_clients, os.environ.get("THREADS")))
    app.extensions[STATE_KEY] = state
    _register_guards(app)
    _register_live_routes(app, state)
    _register_experiment_routes(app, state)
    if connect_mqtt and config.mqtt_enabled:
        state.start_mqtt()
    _close_streams_on_sigterm(state.hub)
    return app


def _warn_about_several_workers(workers: str | None) -> None:
    if workers is not None and workers.strip() not in ("", "1"):
        log.warning("WORKERS=%s: every gunicorn worker of the web server keeps its own MQTT subscription and "
                    "history, so pages may disagree; run WORKERS=1 with more THREADS instead", workers)


# -- request guards, headers, errors -------------------------------------------------------------

def _register_guards(app: Flask) -> None:
    @app.before_request
    def read_only() -> Any:
        if request.method not in READ_METHODS:
            response = jsonify(error=f"method {request.method} is not allowed: this server is read-only")
            response.status_code = 405
            response.headers["Allow"] = ", ".join(READ_METHODS)
            return response
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.path.startswith("/api/") or request.path == "/healthz":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        code = error.code or 500
        if request.path.startswith("/api/") or request.path == "/healthz" or request.method not in READ_METHODS:
            return jsonify(error=error.description, status=code), code
        return render_template("error.html", code=code, message=error.description), code


def format_timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _bad_request(message: str) -> Response:
    response = jsonify(error=message, status=400)
    response.status_code = 400
    return response


# -- live view and API ------------------------------------------------------------------------------

def _register_live_routes(app: Flask, state: WebState) -> None:
    @app.get("/")
    def live_page() -> str:
        return render_template("live.html", page="live")

    @app.get("/healthz")
    def healthz() -> Any:
        """200 whenever the app serves; MQTT state is reported, not required (the page says so)."""
        return jsonify(status="ok", mqtt=state.mqtt_state(), records=state.live.counters.records)

    @app.get("/api/summary")
    def api_summary() -> Any:
        return jsonify(state.summary())

    @app.get("/api/streams")
    def api_streams() -> Any:
        return jsonify(cameras=state.streams())

    @app.get("/api/results")
    def api_results() -> Any:
        camera = request.args.get("camera")
        if camera is not None:
            try:
                check_camera_name(camera)
            except ValueError as exc:
                return _bad_request(f"invalid camera: {exc}")
            if not state.live.has_camera(camera):
                abort(404, description="no records from this camera (yet)")
        raw_limit = request.args.get("limit", str(min(DEFAULT_RESULTS_LIMIT, state.config.history)))
        # isascii: str.isdigit() also accepts '²' and '①', which int() refuses; 6 digits is plenty.
        if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6) \
                or not 1 <= int(raw_limit) <= state.config.history:
            return _bad_request(f"limit must be an integer between 1 and {state.config.history}")
        records = state.live.recent(camera, int(raw_limit))
        return jsonify(camera=camera, count=len(records), results=records)

    @app.get("/api/preview")
    def api_preview() -> Any:
        """The camera's latest preview JPEG; 404 when there is none or, with `frame_id`, when a
        newer one replaced it (the page then waits for the next snapshot's metadata)."""
        camera = request.args.get("camera", "")
        try:
            check_camera_name(camera)
        except ValueError as exc:
            return _bad_request(f"invalid camera: {exc}")
        preview = state.previews.get(camera)
        wanted = request.args.get("frame_id")
        if preview is None or (wanted is not None and wanted != str(preview.frame_id)):
            abort(404, description="no such preview (previews off, none yet, or replaced by a newer one)")
        return Response(preview.jpeg, mimetype="image/jpeg")

    @app.get("/api/events")
    def api_events() -> Any:
        if request.method == "HEAD":  # a HEAD would otherwise hold a stream slot with nobody reading
            return Response(mimetype="text/event-stream", headers={"Cache-Control": "no-store"})
        try:
            client = state.hub.connect()
        except TooManyClients as exc:
            response = jsonify(error=str(exc), status=503)
            response.status_code = 503
            response.headers["Retry-After"] = "10"
            return response
        window = state.config.rate_window_s + state.config.stream_snapshot_interval_s
        body = stream(state.hub, client, state.snapshot, lambda: state.live.changed_within(window),
                      state.config.stream_timing())
        return Response(body, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# -- experiment results ------------------------------------------------------------------------------

def _register_experiment_routes(app: Flask, state: WebState) -> None:
    @app.get("/experiments")
    def experiments() -> str:
        return render_template("experiments.html", page="experiments", entries=state.experiments.entries(),
                               results_dirs=[str(root) for root in state.experiments.roots])

    @app.get("/experiments/<name>")
    def experiment(name: str) -> str:
        try:
            page = state.experiments.page(name)
        except NotFound:
            abort(404, description="no such experiment")
        return render_template("experiment.html", page="experiments", experiment=page)

    @app.get("/experiments/<name>/files/<path:relative>")
    def experiment_file(name: str, relative: str) -> Any:
        try:
            path, media_type = state.experiments.resolve_file(name, relative)
        except NotFound:
            abort(404, description="no such file")
        inline = media_type.startswith("image/")
        return send_file(path, mimetype=media_type, as_attachment=not inline, download_name=path.name,
                         max_age=60)


# -- shutdown ------------------------------------------------------------------------------------------

def _close_streams_on_sigterm(hub: EventHub) -> None:
    """End open event streams when gunicorn stops this worker.

    gunicorn's gthread worker waits (up to graceful_timeout) for in-flight requests, and an
    event stream never finishes by itself; chaining gunicorn's SIGTERM handler lets the
    streams end at once. Only done when a Python handler is installed (i.e. under gunicorn)
    and from the main thread, where signal handlers can be set.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def handle_sigterm(signum: int, frame: Any) -> None:
        hub.close()
        previous(signum, frame)

    signal.signal(signal.SIGTERM, handle_sigterm)


__all__ = ["WebConfig", "WebState", "create_app", "stream_slots", "CONTENT_SECURITY_POLICY"]
