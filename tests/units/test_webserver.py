"""EdgeWebServerUnit: JSON API, read-only guards, escaping, experiment pages, MQTT and gunicorn."""
from __future__ import annotations

import http.client
import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edgeoffload.broker import BrokerProcess
from edgeoffload.config import ConfigError, load_config
from edgeoffload.messaging import MQTTSettings, Publisher
from edgeoffload.records import Detection, FrameRecord
from edgeoffload.serve import start_unit
from edgeoffload.units.webserver import STATE_KEY, WebConfig, WebState, create_app, stream_slots

UNITS_DIR = Path(__file__).resolve().parents[2] / "edgeoffload" / "units"
HOSTILE = "<script>alert(1)</script>"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def record(camera: str = "cam", frame_id: int = 0, site: str = "edge", status: str = "ok",
           total_ms: float = 20.0, label: str = "person") -> FrameRecord:
    return FrameRecord(camera=camera, frame_id=frame_id, captured_at=time.time(), site=site, status=status,  # type: ignore[arg-type]
                       detections=(Detection(label, 0.8, (10.0, 20.0, 30.0, 40.0)),), t_total_ms=total_ms)


def wait_for(read: Callable[[], Any], accept: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    value = read()
    while not accept(value):
        assert time.monotonic() < deadline, f"condition not met within {timeout}s; last value: {value!r}"
        time.sleep(0.05)
        value = read()
    return value


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "policy-sweep"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"scenario": HOSTILE, "policies": {
        "edge-only": {"p95_ms": 120.5}, "min-latency": {"p95_ms": 48.25}}}))
    (folder / "runs.csv").write_text(f"policy,note\nmin-latency,{HOSTILE}\n")
    (folder / "latency.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    return tmp_path / "results"


@pytest.fixture
def app(results_dir: Path) -> Flask:
    return create_app(WebConfig(mqtt_enabled=False, history=20, max_cameras=4, results_dir=str(results_dir),
                                max_stream_clients=1))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def state_of(app: Flask) -> WebState:
    return app.extensions[STATE_KEY]


# -- API -------------------------------------------------------------------------------------------

def test_streams_and_summary_reflect_ingested_records(app: Flask, client: FlaskClient) -> None:
    state = state_of(app)
    for frame_id in range(8):
        state.on_record("edgeoffload/results/gate", record("gate", frame_id, "edge" if frame_id < 6 else "cloud",
                                                           total_ms=10.0 + frame_id))
    state.on_record("edgeoffload/results/yard", record("yard", 0, "none", "dropped", 0.0))
    state.on_status("edgeoffload/status/autoscaler", {"replicas": {"edge-inference": 2}})

    streams = client.get("/api/streams").get_json()["cameras"]
    assert [s["camera"] for s in streams] == ["gate", "yard"]
    gate = streams[0]
    assert gate["stats"]["frames"] == 8 and gate["stats"]["edge_share"] == 0.75
    assert gate["stats"]["latency_p50_ms"] == 13.0 and gate["last"]["frame_id"] == 7
    assert gate["last"]["detections"][0]["box"] == [10.0, 20.0, 30.0, 40.0]

    summary = client.get("/api/summary").get_json()
    assert summary["totals"]["frames"] == 9 and summary["totals"]["drop_rate"] == pytest.approx(1 / 9, abs=1e-4)
    assert summary["cameras"] == 2 and summary["replicas"] == {"edge-inference": 2}
    assert summary["mqtt"] == {"enabled": False, "connected": False, "last_error": ""}
    assert len(summary["timeline"]) == 120 and sum(s["edge"] for s in summary["timeline"]) == 6


def preview_payload(camera: str, frame_id: int, **change: Any) -> bytes:
    """A preview as the preprocessor publishes it: a real 160x120 JPEG and a box on it."""
    import base64

    import cv2
    import numpy as np

    ok, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), (0, 128, 255), np.uint8))
    assert ok
    raw = {"camera": camera, "frame_id": frame_id, "site": "cloud", "replica": "cloud-inference-7", "model": "m",
           "width": 160, "height": 120, "detections": [{"label": "face", "score": 0.9, "box": [10, 20, 30, 40]}],
           "jpeg": base64.b64encode(jpeg.tobytes()).decode()}
    return json.dumps({**raw, **change}).encode()


def test_previews_are_served_with_the_streams_and_checked(app: Flask, client: FlaskClient) -> None:
    state = state_of(app)
    state.on_record("edgeoffload/results/gate", record("gate", 4))
    assert client.get("/api/streams").get_json()["cameras"][0]["preview"] is None
    assert client.get("/api/preview?camera=gate").status_code == 404
    state.on_preview("edgeoffload/previews/gate", preview_payload("gate", 4))
    (stream,) = client.get("/api/streams").get_json()["cameras"]
    assert stream["preview"]["frame_id"] == 4 and stream["preview"]["replica"] == "cloud-inference-7"
    assert stream["preview"]["detections"] == [{"label": "face", "score": 0.9, "box": [10.0, 20.0, 30.0, 40.0]}]
    assert "jpeg" not in stream["preview"]  # pixels only through their own route
    image = client.get("/api/preview?camera=gate&frame_id=4")
    assert image.status_code == 200 and image.mimetype == "image/jpeg" and image.data.startswith(b"\xff\xd8\xff")
    assert image.headers["X-Content-Type-Options"] == "nosniff" and image.headers["Cache-Control"] == "no-store"
    assert client.get("/api/preview?camera=gate&frame_id=3").status_code == 404  # replaced by a newer one
    assert client.get("/api/preview?camera=").status_code == 400
    for bad in (preview_payload("gate", 5, jpeg="PHN2Zz4="), preview_payload("bad\ncamera", 1), b"[]"):
        with pytest.raises(ValueError):
            state.on_preview("edgeoffload/previews/gate", bad)
    assert client.get("/api/streams").get_json()["cameras"][0]["preview"]["frame_id"] == 4


def test_history_and_camera_count_are_bounded(app: Flask, client: FlaskClient) -> None:
    state = state_of(app)
    for frame_id in range(50):
        state.on_record("t", record("gate", frame_id))
    body = client.get("/api/results?camera=gate&limit=20").get_json()
    assert body["count"] == 20 and body["results"][-1]["frame_id"] == 30  # history=20 kept of 50
    for camera in ("a", "b", "c", "d"):  # max_cameras=4
        state.on_record("t", record(camera))
    assert client.get("/api/summary").get_json()["ingest"]["evicted_cameras"] == 1
    assert client.get("/api/results?camera=gate").status_code == 404  # evicted: longest silent


def test_results_are_newest_first_and_filtered_by_camera(app: Flask, client: FlaskClient) -> None:
    state = state_of(app)
    for frame_id in range(5):
        state.on_record("t", record("gate", frame_id))
        state.on_record("t", record("yard", frame_id))
    body = client.get("/api/results?camera=gate&limit=3").get_json()
    assert body["camera"] == "gate" and [r["frame_id"] for r in body["results"]] == [4, 3, 2]
    assert {r["camera"] for r in body["results"]} == {"gate"}
    assert all("received_at" in r for r in body["results"])
    assert client.get("/api/results").get_json()["count"] == 10  # default limit covers all here


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=abc", "limit=21", "limit=1e3", "limit=",
                                   "camera=", "camera=" + "x" * 129, "camera=a%0Ab"])
def test_bad_parameters_are_400_json(client: FlaskClient, query: str) -> None:
    response = client.get("/api/results?" + query)
    assert response.status_code == 400 and response.is_json
    assert response.get_json()["error"]


def test_unknown_camera_is_404_json(client: FlaskClient) -> None:
    response = client.get("/api/results?camera=nobody")
    assert response.status_code == 404 and response.get_json()["status"] == 404


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "mqtt": {"enabled": False, "connected": False, "last_error": ""},
                                   "records": 0}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/", "/api/results", "/api/summary", "/experiments", "/nowhere"])
def test_the_server_is_read_only(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(path, method=method, data=b"x")
    assert response.status_code == 405 and response.is_json
    assert response.headers["Allow"] == "GET, HEAD"


def test_unknown_api_path_is_404_json(client: FlaskClient) -> None:
    response = client.get("/api/nothing")
    assert response.status_code == 404 and response.is_json


# -- Server-Sent Events ------------------------------------------------------------------------------

def test_event_stream_sends_a_snapshot_then_records(app: Flask, client: FlaskClient) -> None:
    response = client.get("/api/events", buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    chunks: Iterator[bytes] = iter(response.response)
    assert next(chunks) == b"retry: 3000\n\n"
    snapshot = next(chunks).decode()
    assert snapshot.startswith("event: snapshot\ndata: ")
    assert set(json.loads(snapshot.split("data: ", 1)[1])) == {"summary", "streams"}
    state_of(app).on_record("t", record(HOSTILE, 3))
    event = next(chunks).decode()
    assert event.startswith("event: record\n")
    assert json.loads(event.split("data: ", 1)[1])["camera"] == HOSTILE
    assert client.head("/api/events").status_code == 200  # HEAD takes no slot
    busy = client.get("/api/events")  # the only slot is taken
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "10" and busy.is_json
    response.close()
    assert state_of(app).hub.stats().clients == 0


def test_stream_slots_leave_threads_for_requests() -> None:
    assert stream_slots(8, None) == 8
    assert stream_slots(8, "16") == 8
    assert stream_slots(8, "4") == 2
    assert stream_slots(8, "1") == 1
    assert stream_slots(8, "many") == 8


# -- escaping and headers -------------------------------------------------------------------------------

def test_security_headers_on_pages_and_api(client: FlaskClient) -> None:
    for path in ("/", "/api/summary", "/experiments", "/static/js/live.js"):
        headers = client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"


def test_live_page_is_static_markup_without_inline_script(app: Flask, client: FlaskClient) -> None:
    state_of(app).on_record("t", record(HOSTILE, label=HOSTILE))
    html = client.get("/").get_data(as_text=True)
    assert HOSTILE not in html and "alert(1)" not in html  # data only ever travels as JSON
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, re.S)
    assert scripts and all(body.strip() == "" for body in scripts)  # CSP: no inline code
    assert "style=" not in html and not re.search(r"<[^>]+\son[a-z]+\s*=", html, re.I)  # no inline handlers


def test_page_scripts_never_parse_data_as_html() -> None:
    for script in (UNITS_DIR / "static" / "js").glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                     "setAttribute(\"on", "setAttribute('on"):
            assert sink not in code, f"{script.name} uses {sink}"
    live = (UNITS_DIR / "static" / "js" / "live.js").read_text()
    assert "textContent" in live


def test_templates_keep_autoescaping_on() -> None:
    for template in (UNITS_DIR / "templates").glob("*.html"):
        text = template.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text and "Markup" not in text
        assert "style=" not in text and not re.search(r"<script(?![^>]*\bsrc=)", text)
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", text, re.I)


# -- experiment pages ---------------------------------------------------------------------------------

def test_experiment_list_and_page(client: FlaskClient) -> None:
    listing = client.get("/experiments")
    assert listing.status_code == 200 and b'href="/experiments/policy-sweep"' in listing.data
    page = client.get("/experiments/policy-sweep").get_data(as_text=True)
    assert '<td>min-latency</td><td class="num">48.25</td>' in page.replace("\n", "").replace("  ", "")
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'src="/experiments/policy-sweep/files/latency.png"' in page
    plot = client.get("/experiments/policy-sweep/files/latency.png")
    assert plot.status_code == 200 and plot.mimetype == "image/png" and plot.data == PNG
    csv_file = client.get("/experiments/policy-sweep/files/runs.csv")
    assert csv_file.mimetype == "text/csv" and csv_file.headers["Content-Disposition"].startswith("attachment")


def test_empty_results_dir_is_explained(tmp_path: Path) -> None:
    client = create_app(WebConfig(mqtt_enabled=False, results_dir=str(tmp_path / "none"))).test_client()
    assert b"No experiment results yet" in client.get("/experiments").data


def test_several_results_folders_are_named_and_listed(results_dir: Path, tmp_path: Path) -> None:
    own = tmp_path / "own"
    (own / "demo").mkdir(parents=True)
    (own / "demo" / "summary.json").write_text('{"records": 12}')
    client = create_app(WebConfig(mqtt_enabled=False, results_dir=f"{own}:{results_dir}")).test_client()
    page = client.get("/experiments").get_data(as_text=True)
    assert f"<code>{own}</code> and <code>{results_dir}</code>" in page
    assert ">demo</a>" in page and ">policy-sweep</a>" in page
    assert client.get("/experiments/policy-sweep/files/latency.png").status_code == 200


@pytest.mark.parametrize("path", [
    "/experiments/policy-sweep/files/../../secret.png",
    "/experiments/policy-sweep/files/..%2F..%2Fsecret.png",
    "/experiments/policy-sweep/files/%2e%2e/%2e%2e/secret.png",
    "/experiments/..%2Fpolicy-sweep/files/latency.png",
    "/experiments/%2e%2e/files/secret.png",
    "/experiments/policy-sweep/files//etc/passwd",
    "/experiments/policy-sweep/files/..\\..\\secret.png",
    "/experiments/policy-sweep/files/summary.json/../../../secret.png",
    "/experiments/nope",
    "/experiments/..",
])
def test_no_path_traversal(client: FlaskClient, path: str) -> None:
    response = client.get(path, follow_redirects=True)  # werkzeug redirects '//' to '/' first
    assert response.status_code == 404
    assert response.data != PNG


def test_page_404_is_html_and_escaped(client: FlaskClient) -> None:
    response = client.get("/experiments/" + urllib.parse.quote("<b>x</b>"))
    assert response.status_code == 404 and response.mimetype == "text/html" and b"<b>x</b>" not in response.data


# -- configuration ------------------------------------------------------------------------------------

def test_config_from_environment_with_bounds() -> None:
    config = load_config(WebConfig, "WEB_", env={"WEB_HISTORY": "50", "WEB_MQTT_PORT": "8883",
                                                 "WEB_MQTT_CAFILE": "/ca.pem", "WEB_MQTT_ENABLED": "false"})
    assert config.history == 50 and not config.mqtt_enabled
    settings = config.mqtt_settings()
    assert settings.port == 8883 and settings.cafile == "/ca.pem" and settings.username == "webserver"
    for bad in ({"WEB_HISTORY": "0"}, {"WEB_HISTORY": "1000000"}, {"WEB_MAX_CAMERAS": "0"},
                {"WEB_MAX_STREAM_CLIENTS": "0"}, {"WEB_HISTORY": "lots"}):
        with pytest.raises(ConfigError):
            load_config(WebConfig, "WEB_", env=bad)


# -- with a real broker and under gunicorn ---------------------------------------------------------------

def test_records_and_status_arrive_over_mqtt_and_malformed_payloads_are_counted(broker: BrokerProcess) -> None:
    config = WebConfig(mqtt_host=broker.host, mqtt_port=broker.port, mqtt_password=broker.users["webserver"])
    app = create_app(config)
    state = state_of(app)
    client = app.test_client()
    settings = MQTTSettings(host=broker.host, port=broker.port, username="preprocessor",
                            password=broker.users["preprocessor"], session_expiry_s=0)
    try:
        assert state.subscriber is not None and state.subscriber.wait_subscribed(10)
        assert client.get("/healthz").get_json()["mqtt"]["connected"] is True
        with Publisher(settings) as publisher:
            assert publisher.wait_connected(10)
            publisher.publish_record(record("gate", 1))
            publisher.publish("edgeoffload/results/gate", b"{not json")
            publisher.publish("edgeoffload/results/gate", b'{"camera":"gate","frame_id":2,"site":"moon","status":"ok"}')
            publisher.publish_record(record("bad\ncamera", 3))
            publisher.publish_status({"state": "running"})
            assert publisher.flush(10)
        summary = wait_for(lambda: client.get("/api/summary").get_json(),
                           lambda s: s["ingest"]["records"] == 1 and s["ingest"]["malformed"] == 3
                           and "preprocessor" in s["units"])
        assert summary["units"]["preprocessor"]["state"] == "running"
        assert [r["frame_id"] for r in client.get("/api/results?camera=gate").get_json()["results"]] == [1]
    finally:
        state.close()


def read_event_stream_head(url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=20)
    connection.request("GET", "/api/events")
    return connection, connection.getresponse()


def test_event_streams_under_gunicorn_are_capped_and_end_on_shutdown(tmp_path: Path) -> None:
    env = {"WEB_MQTT_ENABLED": "false", "WEB_RESULTS_DIR": str(tmp_path)}
    unit = start_unit("webserver", env=env, workers=1, threads=4, log_dir=tmp_path)  # 4 threads -> 2 streams
    try:
        streams = [read_event_stream_head(unit.url) for _ in range(2)]
        for _connection, response in streams:
            assert response.status == 200
            assert response.readline() == b"retry: 3000\n"
        connection, refused = read_event_stream_head(unit.url)
        assert refused.status == 503 and json.loads(refused.read())["status"] == 503
        connection.close()
        summary_connection = http.client.HTTPConnection(*urllib.parse.urlsplit(unit.url).netloc.split(":"))
        summary_connection.request("GET", "/api/summary")  # threads are left for the API
        assert json.loads(summary_connection.getresponse().read())["event_streams"]["clients"] == 2
        started = time.monotonic()
        unit.stop()
        stopped_in = time.monotonic() - started
        for _connection, response in streams:
            response.read()  # the stream ended cleanly (chunked terminator), no exception
        # Without closing the streams on SIGTERM, gunicorn would wait its graceful_timeout (10 s).
        assert stopped_in < 8, unit.log()[-2000:]
    finally:
        unit.stop()
