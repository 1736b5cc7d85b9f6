"""The inference unit served by real gunicorn workers, as deployed."""
from __future__ import annotations

import base64
import http.client
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

from edgeoffload.config import ConfigError, load_config
from edgeoffload.detect import DetectorConfig, load_detector
from edgeoffload.detect.builtin import DEFAULT_FACE_CASCADE
from edgeoffload.detect.testmodels import make_openvino_model
from edgeoffload import openinference
from edgeoffload.frames import checked_size, decode
from edgeoffload.openinference import Tensor
from edgeoffload.serve import start_unit
from edgeoffload.units.inference import InferenceConfig, create_app, in_frame

MAX_BODY = 1024 * 1024
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(data.astronaut()[:, :, ::-1]))[1].tobytes()


@pytest.fixture(scope="module")
def haar_server():
    """Haar faces (real and fast), one request admitted at a time, 1 MiB body limit."""
    unit = start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_QUEUE_BOUND": "1",
                                        "INFER_MAX_BODY_BYTES": str(MAX_BODY), "INFER_REPLICA_NAME": "haar-unit-1"},
                      workers=1, threads=4)
    yield unit
    unit.stop()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return make_openvino_model(tmp_path_factory.mktemp("models"))


def metric_samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = requests.get(url + "/metrics", timeout=5).text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def status_of(url: str) -> int | None:
    """The status code, or None while the worker is still booting (refused or not answering yet)."""
    try:
        return requests.get(url, timeout=5).status_code
    except (requests.ConnectionError, requests.Timeout):
        return None


def test_astronaut_face_is_detected(haar_server, astronaut_jpeg):
    response = requests.post(haar_server.url + "/infer", data=astronaut_jpeg, headers=JPEG, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "edge/haar-face"
    assert body["inference_ms"] > 0
    assert 0 < body["queue_ms"] < response.elapsed.total_seconds() * 1000  # decode at least, less than the round trip
    [face] = body["detections"]
    assert face["label"] == "face" and isinstance(face["score"], float)
    x, y, w, h = face["box"]
    assert 160 < x < 200 and 50 < y < 90 and 80 < w < 120 and 80 < h < 120


def test_health_routes(haar_server):
    assert requests.get(haar_server.url + "/v2/health/live", timeout=5).json() == {"live": True}
    ready = requests.get(haar_server.url + "/v2/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["model"] == "edge/haar-face"


@pytest.mark.parametrize("body", [
    b"definitely not an image",
    b"",
    "truncated",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00",
], ids=["garbage", "empty", "truncated-jpeg", "png-bomb-header"])
def test_undecodable_images_are_400(haar_server, astronaut_jpeg, body):
    if body == "truncated":
        body = astronaut_jpeg[:400]
    response = requests.post(haar_server.url + "/infer", data=body, headers={"Content-Type": "image/png"}, timeout=10)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]


def test_bomb_is_refused_by_its_header_dimensions(haar_server):
    bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    response = requests.post(haar_server.url + "/infer", data=bomb, headers=JPEG, timeout=10)
    assert response.status_code == 400 and "100000x100000 exceeds" in response.json()["error"]


def test_too_large_body_is_413_before_it_is_read(haar_server):
    body = b"\xff\xd8" + b"\0" * MAX_BODY
    response = requests.post(haar_server.url + "/infer", data=body, headers=JPEG, timeout=10)
    assert response.status_code == 413 and "exceeds" in response.json()["error"]


def test_too_large_chunked_body_is_413(haar_server):
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB without a Content-Length

    response = requests.post(haar_server.url + "/infer", data=chunks(), headers=JPEG, timeout=10)
    assert response.status_code == 413 and response.json()["error"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
def test_wrong_content_type_is_415(haar_server, astronaut_jpeg, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(haar_server.url + "/infer", data=astronaut_jpeg, headers=headers, timeout=10)
    assert response.status_code == 415 and "image/*" in response.json()["error"]


def test_unknown_route_and_method_are_json(haar_server):
    missing = requests.get(haar_server.url + "/v1/models", timeout=5)
    wrong_method = requests.get(haar_server.url + "/infer", timeout=5)
    assert (missing.status_code, wrong_method.status_code) == (404, 405)
    assert missing.json()["error"] and wrong_method.json()["error"]


def test_503_when_the_admission_bound_is_reached(astronaut_jpeg):
    """One admission slot, held by a request that is being inferred (1.5 s each): a second gets 503.
    A request whose body is still arriving does not hold the slot: the worker admits only
    requests that have fully arrived (edgeoffload.units.buffered_worker)."""
    with start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_QUEUE_BOUND": "1",
                                      "INFER_SLEEP_PAD_MS": "1500"}, threads=4) as unit:
        parts = urlsplit(unit.url)
        half_sent = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            half_sent.putrequest("POST", "/infer")
            half_sent.putheader("Content-Type", "image/jpeg")
            half_sent.putheader("Content-Length", str(len(astronaut_jpeg)))
            half_sent.endheaders(message_body=astronaut_jpeg[:1000])
            held: list[int] = []
            holder = threading.Thread(target=lambda: held.append(requests.post(
                unit.url + "/infer", data=astronaut_jpeg, headers=JPEG, timeout=10).status_code))
            holder.start()
            in_flight = lambda: sample(metric_samples(unit.url), "edgeoffload_inference_in_flight", site="edge")
            wait_for(lambda: in_flight() == 1, what="the second request to be admitted")
            refused = requests.post(unit.url + "/infer", data=astronaut_jpeg, headers=JPEG, timeout=10)
            assert refused.status_code == 503 and "overloaded" in refused.json()["error"]
            holder.join(10)
            assert held == [200]
            half_sent.send(astronaut_jpeg[1000:])
            answer = half_sent.getresponse()
            assert answer.status == 200 and b'"label":"face"' in answer.read()
        finally:
            half_sent.close()


def test_metrics_count_requests_failures_and_inference_time(haar_server, astronaut_jpeg):
    before = metric_samples(haar_server.url)
    for _ in range(2):
        requests.post(haar_server.url + "/infer", data=astronaut_jpeg, headers=JPEG, timeout=10)
    requests.post(haar_server.url + "/infer", data=b"junk", headers=JPEG, timeout=10)
    after = metric_samples(haar_server.url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("edgeoffload_inference_requests_total", site="edge", route="/infer", code="200") == 2
    assert delta("edgeoffload_inference_requests_total", site="edge", route="/infer", code="400") == 1
    assert delta("edgeoffload_inference_failures_total", site="edge", reason="bad_image") == 1
    assert delta("edgeoffload_inference_seconds_count", site="edge", model="haar-face") == 2
    assert sample(after, "edgeoffload_inference_in_flight", site="edge") == 0


def test_ready_only_after_the_model_is_loaded_and_warmed_up(tmp_path, astronaut_jpeg):
    """The cascade file is a named pipe: loading cannot finish until the test writes it."""
    cascade = tmp_path / "face.xml"
    os.mkfifo(cascade)
    unit = start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_MODEL_PATH": str(cascade)},
                      wait_ready=False)
    try:
        wait_for(lambda: status_of(unit.url + "/v2/health/live") == 200, what="liveness")
        not_ready = requests.get(unit.url + "/v2/health/ready", timeout=5)
        assert not_ready.status_code == 503 and not_ready.json() == {"error": "model loading"}
        early = requests.post(unit.url + "/infer", data=astronaut_jpeg, headers=JPEG, timeout=5)
        assert early.status_code == 503 and early.json()["error"] == "model not ready"
        model_ready = requests.get(unit.url + "/v2/models/haar-face/ready", timeout=5)
        assert model_ready.status_code == 503 and model_ready.json() == {"error": "model loading"}

        writer = threading.Thread(target=lambda: cascade.write_bytes(Path(DEFAULT_FACE_CASCADE).read_bytes()),
                                  daemon=True)
        writer.start()
        wait_for(lambda: status_of(unit.url + "/v2/health/ready") == 200, what="readiness")
        writer.join(5)
        answer = requests.post(unit.url + "/infer", data=astronaut_jpeg, headers=JPEG, timeout=10)
        assert answer.status_code == 200 and answer.json()["model"] == "edge/haar:face"
        assert len(answer.json()["detections"]) == 1
    finally:
        unit.stop()


def test_model_that_fails_to_load_turns_liveness_red(tmp_path, tiny_models):
    _xml, files = tiny_models
    corrupt = tmp_path / "corrupt.weights"
    corrupt.write_bytes(files.weights_path.read_bytes()[:1000])
    unit = start_unit("inference", env={"INFER_KIND": "darknet", "INFER_MODEL_PATH": str(corrupt),
                                        "INFER_CONFIG_PATH": str(files.cfg_path)}, wait_ready=False)
    try:
        wait_for(lambda: status_of(unit.url + "/v2/health/live") == 503, what="liveness to fail")
        assert "model failed to load" in requests.get(unit.url + "/v2/health/ready", timeout=5).json()["error"]
    finally:
        unit.stop()


def test_bad_config_stops_the_server_naming_the_variable():
    with pytest.raises(RuntimeError, match="INFER_KIND: unknown detector 'yolo9000'"):
        start_unit("inference", env={"INFER_KIND": "yolo9000"}, ready_timeout=30)


@pytest.mark.parametrize("env, variable", [
    ({"INFER_SITE": "moon"}, "INFER_SITE"),
    ({"INFER_CONF_THRESHOLD": "2"}, "INFER_CONF_THRESHOLD"),
    ({"INFER_QUEUE_BOUND": "lots"}, "INFER_QUEUE_BOUND"),
    ({"INFER_QUEUE_BOUND": "0"}, "INFER_QUEUE_BOUND"),
    ({"INFER_DECODE_BUDGET_MB": "64"}, "INFER_DECODE_BUDGET_MB: must be >= 96 to hold one frame of INFER_MAX_PIXELS"),
    ({"INFER_MAX_SIDE": "8"}, "INFER_MAX_SIDE"),
    ({"INFER_KIND": "darknet", "INFER_MODEL_PATH": "/nonexistent.weights", "INFER_CONFIG_PATH": "/x.cfg"},
     "INFER_MODEL_PATH"),
])
def test_config_errors_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        create_app(load_config(InferenceConfig, "INFER_", env=env))


def served_matches_in_process(unit, jpeg: bytes, config: DetectorConfig) -> list[dict]:
    response = requests.post(unit.url + "/infer", data=jpeg, headers=JPEG, timeout=30)
    assert response.status_code == 200, response.text
    served = response.json()["detections"]
    # What the unit does: decode no larger than the model's input, detect, map back to the frame.
    detector = load_detector(config)
    image = decode(jpeg, at_least=detector.input_size)
    detected = in_frame(detector.detect(image), image.shape, checked_size(jpeg))
    expected = [d.to_dict() for d in detected]
    assert served and [d["label"] for d in served] == [d["label"] for d in expected]
    assert np.allclose([d["box"] for d in served], [d["box"] for d in expected], atol=0.2)
    return served


def test_darknet_model_served_over_http(tiny_models, astronaut_jpeg):
    _xml, files = tiny_models
    env = {"INFER_SITE": "cloud", "INFER_KIND": "darknet", "INFER_MODEL_PATH": str(files.weights_path),
           "INFER_CONFIG_PATH": str(files.cfg_path), "INFER_LABELS_PATH": str(files.labels_path),
           "INFER_INPUT_SIZE": "128x128", "INFER_CONF_THRESHOLD": "0.2"}
    with start_unit("inference", env=env, threads=2) as unit:
        ready = requests.get(unit.url + "/v2/health/ready", timeout=5).json()
        assert ready["model"] == "cloud/darknet:tiny-test"
        served_matches_in_process(unit, astronaut_jpeg, DetectorConfig(
            kind="darknet", model_path=str(files.weights_path), config_path=str(files.cfg_path),
            labels_path=str(files.labels_path), input_size=(128, 128), conf_threshold=0.2))


def test_openvino_model_served_over_http(tiny_models, astronaut_jpeg):
    xml, files = tiny_models
    env = {"INFER_KIND": "openvino", "INFER_MODEL_PATH": str(xml), "INFER_LABELS_PATH": str(files.labels_path),
           "INFER_PRECISION": "f32", "INFER_CONF_THRESHOLD": "0.2"}
    with start_unit("inference", env=env, threads=2) as unit:
        assert requests.get(unit.url + "/v2/health/ready", timeout=5).json()["model"] == "edge/openvino:tiny-test"
        served_matches_in_process(unit, astronaut_jpeg, DetectorConfig(
            kind="openvino", model_path=str(xml), labels_path=str(files.labels_path), precision="f32",
            conf_threshold=0.2))


@pytest.mark.parametrize("threads, queue_bound, instances, expected", [
    ("4", 2, 0, 2),   # never more instances than requests admitted at once
    ("1", 4, 0, 1),   # nor more than gunicorn threads
    ("4", 4, 3, 3),   # an explicit count wins
])
def test_one_detector_instance_per_thread_that_can_be_busy(monkeypatch, threads, queue_bound, instances, expected):
    monkeypatch.setenv("THREADS", threads)
    assert InferenceConfig(queue_bound=queue_bound, instances=instances).pool_size() == expected


def test_answers_name_the_replica_and_the_cpu_the_frame_took(haar_server, astronaut_jpeg):
    body = requests.post(haar_server.url + "/infer", data=astronaut_jpeg, headers={"Content-Type": "image/jpeg"},
                         timeout=30).json()
    assert body["replica"] == "haar-unit-1"
    assert 0 < body["cpu_ms"] <= body["inference_ms"] + body["queue_ms"] + 5   # Haar computes all the time


def test_the_sleep_pad_makes_a_slow_replica_that_does_not_compute(astronaut_jpeg):
    """INFER_SLEEP_PAD_MS, for capacity experiments: every inference lasts at least the pad,
    and the time beyond the model's is spent waiting, not on the CPU."""
    with start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_SLEEP_PAD_MS": "800"}, threads=2) as unit:
        body = requests.post(unit.url + "/infer", data=astronaut_jpeg, headers={"Content-Type": "image/jpeg"},
                             timeout=30).json()
    assert body["inference_ms"] >= 800 and body["cpu_ms"] < 0.5 * body["inference_ms"]
    assert any(d["label"] == "face" for d in body["detections"])      # the real detector still ran


# -- the Open Inference Protocol (KServe v2) routes ---------------------------------------------
V2_INFER = "/v2/models/haar-face/infer"


def v2_post(unit, jpeg: bytes, binary: bool, path: str = V2_INFER, **head: object) -> requests.Response:
    """An infer request carrying `jpeg` as the BYTES input `image` (raw with binary data, else base64)."""
    tensor = Tensor("image", "BYTES", (1,), (jpeg if binary else base64.b64encode(jpeg),), binary)
    body, headers = openinference.encode(head, "inputs", [tensor])
    return requests.post(unit.url + path, data=body, headers=headers, timeout=10)


def v2_answer(response: requests.Response) -> openinference.Message:
    assert response.status_code == 200, response.text
    return openinference.decode(response.content, response.headers.get(openinference.HEADER_LENGTH), "outputs")


def test_v2_server_and_model_metadata(haar_server):
    server = requests.get(haar_server.url + "/v2", timeout=5).json()
    assert server["name"] == "edgeoffload" and server["extensions"] == ["binary_tensor_data"] and server["version"]
    for path in ("/v2/models/haar-face", "/v2/models/haar-face/versions/1"):
        model = requests.get(haar_server.url + path, timeout=5).json()
        assert model["name"] == "haar-face" and model["versions"] == ["1"]
        assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
            ("boxes", "FP32", [-1, 4]), ("scores", "FP32", [-1]), ("labels", "BYTES", [-1])]
    ready = requests.get(haar_server.url + "/v2/models/haar-face/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"name": "haar-face", "ready": True}


@pytest.mark.parametrize("path", ["/v2/models/yolo", "/v2/models/yolo/ready", "/v2/models/haar-face/versions/2",
                                  "/v2/models/haar-face/versions/2/ready"])
def test_v2_unknown_models_and_versions_are_404(haar_server, path):
    response = requests.get(haar_server.url + path, timeout=5)
    assert response.status_code == 404 and "unknown" in response.json()["error"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_infer_finds_what_infer_finds(haar_server, astronaut_jpeg, binary):
    native = requests.post(haar_server.url + "/infer", data=astronaut_jpeg, headers=JPEG, timeout=10).json()
    answer = v2_answer(v2_post(haar_server, astronaut_jpeg, binary, id="frame-1"))
    assert answer.head["model_name"] == "haar-face" and answer.head["id"] == "frame-1"
    parameters = answer.head["parameters"]
    assert parameters["replica"] == "haar-unit-1" and parameters["inference_ms"] > 0
    assert 0 <= parameters["queue_ms"] and 0 < parameters["cpu_ms"]
    assert [(t.name, t.binary) for t in answer.tensors] == [("boxes", False), ("scores", False), ("labels", False)]
    [face] = native["detections"]
    assert answer.tensor("labels").values == (b"face",) and answer.tensor("boxes").shape == (1, 4)
    assert np.allclose(answer.tensor("boxes").values, face["box"], atol=0.1)
    assert np.allclose(answer.tensor("scores").values, [face["score"]], atol=1e-4)


def test_v2_outputs_come_binary_when_asked(haar_server, astronaut_jpeg):
    response = v2_post(haar_server, astronaut_jpeg, True, path="/v2/models/haar-face/versions/1/infer",
                       outputs=[{"name": "boxes", "parameters": {"binary_data": True}}, {"name": "labels"}])
    assert response.headers["Content-Type"] == openinference.BINARY_TYPE
    answer = v2_answer(response)
    assert [(t.name, t.binary) for t in answer.tensors] == [("boxes", True), ("labels", False)]
    assert answer.tensor("boxes").values.dtype == np.dtype("<f4") and answer.tensor("labels").values == (b"face",)


@pytest.mark.parametrize("body, headers, status, error", [
    (b'{"inputs": []}', {"Content-Type": "image/jpeg"}, 415, "Content-Type must be application/json"),
    (b'{"inputs": [', {"Content-Type": "application/json"}, 400, "not valid JSON"),
    (b'{"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}',
     {"Content-Type": "application/json"}, 400, "takes one input 'image'"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}',
     {"Content-Type": "application/json"}, 400, "not a JPEG or PNG image"),
    (b'{"inputs": []}', {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "500"},
     400, "within the body"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}], '
     b'"outputs": [{"name": "masks"}]}', {"Content-Type": "application/json"}, 400, "must be among"),
], ids=["content-type", "json", "input-name", "not-an-image", "header-length", "unknown-output"])
def test_v2_bad_requests_get_json_errors(haar_server, body, headers, status, error):
    response = requests.post(haar_server.url + V2_INFER, data=body, headers=headers, timeout=10)
    assert response.status_code == status and error in response.json()["error"]


def test_v2_limits_match_infer(haar_server, astronaut_jpeg):
    too_large = requests.post(haar_server.url + V2_INFER, data=b"{" + b" " * MAX_BODY + b"}",
                              headers={"Content-Type": "application/json"}, timeout=10)
    assert too_large.status_code == 413 and "exceeds" in too_large.json()["error"]
    bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    refused = v2_post(haar_server, bomb, True)
    assert refused.status_code == 400 and "100000x100000 exceeds" in refused.json()["error"]
    unknown = v2_post(haar_server, astronaut_jpeg, True, path="/v2/models/yolo/infer")
    assert unknown.status_code == 404 and "this unit serves 'haar-face'" in unknown.json()["error"]


def test_v2_requests_are_counted_by_route(haar_server, astronaut_jpeg):
    before = metric_samples(haar_server.url)
    v2_post(haar_server, astronaut_jpeg, True)
    requests.post(haar_server.url + V2_INFER, data=b'{"inputs": 1}', headers={"Content-Type": "application/json"},
                  timeout=10)
    v2_post(haar_server, astronaut_jpeg, True, path="/v2/models/yolo/infer")
    after = metric_samples(haar_server.url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    route = "/v2/models/<name>/infer"
    assert delta("edgeoffload_inference_requests_total", site="edge", route=route, code="200") == 1
    assert delta("edgeoffload_inference_requests_total", site="edge", route=route, code="400") == 1
    assert delta("edgeoffload_inference_requests_total", site="edge", route=route, code="404") == 1
    assert delta("edgeoffload_inference_failures_total", site="edge", reason="bad_request") == 1
    assert delta("edgeoffload_inference_failures_total", site="edge", reason="unknown_model") == 1
    assert delta("edgeoffload_inference_seconds_count", site="edge", model="haar-face") == 1


def test_v2_model_name_is_a_setting(astronaut_jpeg):
    with start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_MODEL_NAME": "faces"}, threads=2) as unit:
        assert requests.get(unit.url + "/v2/models/faces/ready", timeout=5).status_code == 200
        assert requests.get(unit.url + "/v2/models/haar-face", timeout=5).status_code == 404
        answer = v2_answer(v2_post(unit, astronaut_jpeg, False, path="/v2/models/faces/infer"))
        assert answer.head["model_name"] == "faces" and answer.tensor("labels").values == (b"face",)
    with pytest.raises(ConfigError, match="INFER_MODEL_NAME"):
        load_config(InferenceConfig, "INFER_", env={"INFER_MODEL_NAME": "a/b"})
