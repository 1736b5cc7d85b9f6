"""The Open Inference Protocol against third-party implementations, both directions.

- The preprocessor's engine with KServe's own Python model server (tests/kserve_faces.py, a
  custom predictor with tensor names, corner boxes and class ids of its own) as the cloud site:
  records, failover and estimates as with a unit.
- KServe's REST client (kserve.InferenceRESTClient) and Triton's (tritonclient.http) calling an
  inference unit's /v2 routes, JSON and binary tensor data.
"""
from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import requests
import tritonclient.http as tritonclient_http
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from skimage import data

from edgeoffload.config import load_config
from edgeoffload.endpointslices import Endpoint, EndpointSliceServer, EndpointSliceStore
from edgeoffload.offload import FrameJob, Offloader
from edgeoffload.policy import load_policy
from edgeoffload.records import FrameRecord
from edgeoffload.serve import UnitProcess, free_port, start_unit, stop_process_group
from edgeoffload.units.preprocessor import PreprocessorConfig


REPO = Path(__file__).resolve().parent.parent
KSERVE_MODEL = "faces"
KSERVE_MAPPING = ("input=images,boxes=detection_boxes,scores=detection_scores,labels=detection_classes,"
                  "box_format=xyxy")


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(data.astronaut()[:, :, ::-1]))[1].tobytes()


class KServeServer:
    """tests/kserve_faces.py in a process of its own (KServe's ModelServer: uvicorn + FastAPI)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "kserve_faces.py"),
                                         "--http_port", str(self.port), "--model_name", KSERVE_MODEL],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._log: list[bytes] = []
        threading.Thread(target=lambda: self._log.extend(self.process.stdout), daemon=True).start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(f"{self.url}/v2/models/{KSERVE_MODEL}/ready", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the KServe server did not become ready:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return b"".join(self._log).decode(errors="replace")

    def stop(self) -> None:
        stop_process_group(self.process, timeout=10)


@pytest.fixture(scope="module")
def kserve_server() -> Iterator[KServeServer]:
    server = KServeServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unit() -> Iterator[UnitProcess]:
    running = start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_REPLICA_NAME": "edge-unit"},
                         workers=1, threads=4)
    yield running
    running.stop()


def engine(edge_url: str, cloud_url: str, **settings: str) -> tuple[Offloader, list[FrameRecord]]:
    """The preprocessor's engine configured from PRE_ variables, as the unit configures it."""
    env = {"PRE_EDGE_URL": edge_url, "PRE_CLOUD_URL": cloud_url, "PRE_REQUEST_TIMEOUT_S": "10", **settings}
    config = load_config(PreprocessorConfig, "PRE_", env=env)
    records: list[FrameRecord] = []
    edge, cloud = config.site_configs()
    offloader = Offloader(load_policy("cloud-only"), edge, cloud, records.append, health_interval_s=0,
                          sources=config.replica_sources())
    return offloader.start(), records


def send(offloader: Offloader, jpeg: bytes, frame_id: int) -> FrameRecord:
    job = offloader.submit(FrameJob(camera="v2", frame_id=frame_id, captured_at=time.time(), arrived=time.monotonic(),
                                    payload=jpeg))
    record = job.wait(30)
    assert record is not None, f"frame {frame_id} has no record"
    return record


def astronaut_face(record: FrameRecord) -> tuple[float, float, float, float]:
    [face] = record.detections
    x, y, w, h = face.box
    assert 160 < x < 200 and 50 < y < 90 and 80 < w < 120 and 80 < h < 120, face   # as the unit finds it
    return face.box


# -- the preprocessor calling KServe's server --------------------------------------------------
@pytest.mark.parametrize("mapping, binary", [("", "false"), (",input_type=UINT8", "true")],
                         ids=["json-base64-bytes", "binary-uint8"])
def test_kserve_server_is_the_cloud_site(kserve_server, unit, astronaut_jpeg, mapping, binary):
    offloader, records = engine(unit.url, kserve_server.url, PRE_CLOUD_PROTOCOL="v2",
                                PRE_CLOUD_V2_MODEL=KSERVE_MODEL, PRE_CLOUD_V2_MAPPING=KSERVE_MAPPING + mapping,
                                PRE_CLOUD_V2_BINARY=binary)
    try:
        answered = [send(offloader, astronaut_jpeg, i) for i in range(3)]
        state = offloader.state()
    finally:
        offloader.close()
    for record in answered:
        assert (record.status, record.site, record.reason, record.model) == ("ok", "cloud", "", KSERVE_MODEL)
        assert record.detections[0].label == "0"          # the server's class id, named by its number
        astronaut_face(record)
        # KServe reports no timings: its whole round trip is its inference time, no network split
        assert record.t_inference_ms > 0 and record.t_network_ms == 0 and record.replica == ""
        assert record.t_total_ms >= record.t_inference_ms
    assert records == answered
    assert state["cloud"]["protocol"] == "v2" and state["cloud"]["answered"] == 3
    assert state["cloud"]["service_s"] < 5 and state["cloud"]["healthy"] is True


def test_kserve_replicas_come_from_their_services_endpointslices(kserve_server, unit, astronaut_jpeg, tmp_path):
    """A Service in another namespace, found by its EndpointSlices: records name the discovered pod."""
    store = EndpointSliceStore("models")
    store.set_endpoint("faces-predictor", Endpoint("faces-predictor-7d9f", "127.0.0.1", kserve_server.port))
    with EndpointSliceServer(store) as api:
        offloader, records = engine(unit.url, "http://faces-predictor.models:8080", PRE_CLOUD_PROTOCOL="v2",
                                    PRE_CLOUD_V2_MODEL=KSERVE_MODEL, PRE_CLOUD_V2_MAPPING=KSERVE_MAPPING,
                                    PRE_CLOUD_V2_BINARY="false", PRE_CLOUD_DISCOVERY="kubernetes",
                                    PRE_CLOUD_SERVICE="models/faces-predictor",
                                    PRE_KUBECONFIG=str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            record = send(offloader, astronaut_jpeg, 0)
            state = offloader.state()
        finally:
            offloader.close()
    assert (record.site, record.status, record.replica) == ("cloud", "ok", "faces-predictor-7d9f")
    assert state["cloud"]["replicas"] == 1 and state["cloud"]["discovery"]["namespace"] == "models"
    astronaut_face(record)


def test_kserve_server_down_fails_over_to_the_edge(unit, astronaut_jpeg):
    server = KServeServer()
    offloader, _records = engine(unit.url, server.url, PRE_CLOUD_PROTOCOL="v2", PRE_CLOUD_V2_MODEL=KSERVE_MODEL,
                                 PRE_CLOUD_V2_MAPPING=KSERVE_MAPPING, PRE_CLOUD_V2_BINARY="false")
    try:
        first = send(offloader, astronaut_jpeg, 0)
        server.stop()
        second = send(offloader, astronaut_jpeg, 1)
    finally:
        offloader.close()
        server.stop()
    assert (first.site, first.status, first.model) == ("cloud", "ok", KSERVE_MODEL)
    assert (second.site, second.status, second.reason) == ("edge", "ok", "failover:cloud->edge")
    assert second.model == "edge/haar-face" and second.replica == "edge-unit"
    assert astronaut_face(first) == pytest.approx(astronaut_face(second), abs=0.5)


def test_a_mapping_that_does_not_fit_the_server_fails_over_naming_the_mismatch(kserve_server, unit, astronaut_jpeg):
    """Wrong output names: the answer is the site's fault, so the frame fails over once."""
    offloader, records = engine(unit.url, kserve_server.url, PRE_CLOUD_PROTOCOL="v2",
                                PRE_CLOUD_V2_MODEL=KSERVE_MODEL, PRE_CLOUD_V2_MAPPING="input=images",
                                PRE_CLOUD_V2_BINARY="false")
    try:
        record = send(offloader, astronaut_jpeg, 0)
    finally:
        offloader.close()
    assert (record.site, record.status, record.reason) == ("edge", "ok", "failover:cloud->edge")
    assert "no tensor 'boxes'" in offloader.state()["cloud"]["last_error"]
    assert records == [record]


# -- KServe's and Triton's clients calling a unit ---------------------------------------------
def image_array(jpeg: bytes, binary: bool) -> np.ndarray:
    """BYTES carry the image raw in binary tensor data; in JSON, its base64 text."""
    return np.array([jpeg if binary else base64.b64encode(jpeg)], dtype=np.object_)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_kserve_client_calls_a_unit(unit, astronaut_jpeg, binary):
    async def ask():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
        try:
            ready = await client.is_model_ready(unit.url, "haar-face")
            image = InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(image_array(astronaut_jpeg, binary), binary_data=binary)
            request = InferRequest(model_name="haar-face", infer_inputs=[image], request_id="kserve-1",
                                   request_outputs=[RequestedOutput("boxes", {"binary_data": binary}),
                                                    RequestedOutput("labels")])
            return ready, await client.infer(unit.url, request, model_name="haar-face")
        finally:
            await client.close()

    ready, response = asyncio.run(ask())
    assert ready is True
    assert response.model_name == "haar-face" and response.id == "kserve-1"
    assert response.parameters["replica"] == "edge-unit" and response.parameters["inference_ms"] > 0
    [boxes, labels] = response.outputs
    assert (boxes.name, labels.name) == ("boxes", "labels")
    x, y, w, h = boxes.as_numpy().reshape(-1, 4)[0]
    assert 160 < x < 200 and 50 < y < 90 and 80 < w < 120 and 80 < h < 120
    assert [label.decode() if isinstance(label, bytes) else label for label in labels.as_numpy()] == ["face"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_client_calls_a_unit(unit, astronaut_jpeg, binary):
    host_port = unit.url.removeprefix("http://")
    client = tritonclient_http.InferenceServerClient(url=host_port, network_timeout=30)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("haar-face")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        metadata = client.get_model_metadata("haar-face")
        assert [o["name"] for o in metadata["outputs"]] == ["boxes", "scores", "labels"]
        image = tritonclient_http.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(image_array(astronaut_jpeg, binary), binary_data=binary)
        outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=binary)
                   for name in ("boxes", "scores", "labels")]
        result = client.infer("haar-face", [image], outputs=outputs, request_id="triton-1")
        assert not client.is_model_ready("yolo")
    finally:
        client.close()
    response = result.get_response()
    assert response["model_name"] == "haar-face" and response["id"] == "triton-1"
    assert response["parameters"]["replica"] == "edge-unit"
    x, y, w, h = result.as_numpy("boxes").reshape(-1, 4)[0]
    assert 160 < x < 200 and 50 < y < 90 and 80 < w < 120 and 80 < h < 120
    native = requests.post(unit.url + "/infer", data=astronaut_jpeg, headers={"Content-Type": "image/jpeg"},
                           timeout=30).json()
    assert result.as_numpy("scores").tolist() == pytest.approx([d["score"] for d in native["detections"]], abs=1e-4)
    label = result.as_numpy("labels")[0]
    assert (label.decode() if isinstance(label, bytes) else label) == "face"
