"""EdgePreprocessorUnit end to end: real Mosquitto, real inference units (gunicorn, Haar faces)."""
from __future__ import annotations

import io
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import requests
from skimage import data

from edgeoffload.broker import RESULTS_TOPIC, BrokerProcess
from edgeoffload.config import ConfigError, load_config
from edgeoffload.endpointslices import EndpointSliceServer, EndpointSliceStore
from edgeoffload.frames import decode
from edgeoffload.load.sample_video import SampleVideoSpec, write_video
from edgeoffload.messaging import MQTTSettings, Subscriber
from edgeoffload.openinference import DetectionMapping
from edgeoffload.policy import Observation, SiteState, load_policy
from edgeoffload.records import FrameRecord
from edgeoffload.serve import UnitProcess, start_unit
from edgeoffload.units.preprocessor import (CameraSlots, FramePreparer, PreprocessorConfig, TooManyCameras,
                                            create_app)

REPO = Path(__file__).resolve().parents[2]
JPEG = "image/jpeg"
WAIT = 20.0


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(data.astronaut()[:, :, ::-1]))[1].tobytes()


def haar_unit(site: str) -> UnitProcess:
    return start_unit("inference", env={"INFER_KIND": "haar-face", "INFER_SITE": site}, workers=1, threads=2)


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[UnitProcess, UnitProcess]]:
    edge, cloud = haar_unit("edge"), haar_unit("cloud")
    yield edge, cloud
    edge.stop()
    cloud.stop()


class Records:
    """Collects the records a `webserver` subscriber receives, counting raw deliveries."""

    def __init__(self, broker: BrokerProcess, client_id: str = "") -> None:
        self.by_key: Counter[tuple[str, int]] = Counter()
        self.records: dict[tuple[str, int], FrameRecord] = {}
        self._cond = threading.Condition()
        settings = MQTTSettings(host=broker.host, port=broker.port, username="webserver",
                                password=broker.users["webserver"], client_id=client_id,
                                reconnect_min_s=0.1, reconnect_max_s=0.5)
        self.subscriber = Subscriber(settings, (f"{RESULTS_TOPIC}/#",), on_record=self._on_record).start()
        assert self.subscriber.wait_subscribed(WAIT)

    def _on_record(self, topic: str, record: FrameRecord) -> None:
        with self._cond:
            self.by_key[(record.camera, record.frame_id)] += 1
            self.records[(record.camera, record.frame_id)] = record
            self._cond.notify_all()

    def wait_for(self, camera: str, count: int, timeout: float = WAIT) -> list[FrameRecord]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.of(camera)) >= count, timeout)
            return self.of(camera)

    def of(self, camera: str) -> list[FrameRecord]:
        return sorted((r for (cam, _), r in self.records.items() if cam == camera), key=lambda r: r.frame_id)

    def close(self) -> None:
        self.subscriber.close()


def pre_config(broker: BrokerProcess, edge_url: str, cloud_url: str, **overrides: object) -> PreprocessorConfig:
    values: dict[str, object] = dict(edge_url=edge_url, cloud_url=cloud_url, mqtt_host=broker.host,
                                     mqtt_port=broker.port, mqtt_password=broker.users["preprocessor"],
                                     health_interval_s=0.5)
    values.update(overrides)
    return PreprocessorConfig(**values)  # type: ignore[arg-type]


class Running:
    """An in-process preprocessor (the same create_app gunicorn serves) plus a test client."""

    def __init__(self, config: PreprocessorConfig, policy: object = None) -> None:
        self.app = create_app(config, policy)  # type: ignore[arg-type]
        self.service = self.app.extensions["preprocessor"]
        self.client = self.app.test_client()
        assert self.service.publisher.wait_connected(WAIT), self.service.publisher.last_error

    def post(self, camera: str, body: bytes, wait: bool = False, content_type: str = JPEG, **params: str):
        query = {"camera": camera, **params}
        if wait:
            query["wait"] = "1"
        return self.client.post("/process", query_string=query, data=body, content_type=content_type)

    def close(self) -> None:
        self.service.close()


@pytest.fixture
def running(broker: BrokerProcess, sites) -> Iterator[callable]:
    started: list[Running] = []

    def start(**overrides: object) -> Running:
        edge, cloud = sites
        overrides.setdefault("edge_url", edge.url)
        overrides.setdefault("cloud_url", cloud.url)
        unit = Running(pre_config(broker, **overrides))  # type: ignore[arg-type]
        started.append(unit)
        return unit

    yield start
    for unit in started:
        unit.close()


@pytest.fixture
def records(broker: BrokerProcess) -> Iterator[Records]:
    sink = Records(broker)
    yield sink
    sink.close()


# -- configuration and pure parts ---------------------------------------------------------------

def test_config_from_environment() -> None:
    config = load_config(PreprocessorConfig, "PRE_", env={
        "PRE_POLICY": "queue-threshold:3", "PRE_DEADLINE_MS": "none", "PRE_INPUT_SIZE": "416x416",
        "PRE_SOURCES": "cam1=video.mp4,cam2=frames/,cam3=0,cam4=rtsp://example/stream", "PRE_SOURCE_LOOP": "yes",
        "PRE_MQTT_PORT": "8883", "PRE_MQTT_CAFILE": "/etc/ca.pem", "PRE_MQTT_RESEND_WINDOW_S": "30"})
    assert config.policy == "queue-threshold:3" and config.deadline_ms is None
    assert config.input_size == (416, 416) and config.source_loop is True
    settings = config.mqtt_settings()
    assert settings.port == 8883 and settings.cafile == "/etc/ca.pem" and settings.username == "preprocessor"
    assert settings.resend_window_s == 30
    edge, cloud = config.site_configs()
    assert cloud.rtt_s == pytest.approx(0.04) and cloud.uplink_bps == pytest.approx(20e6) and cloud.estimate_uplink
    assert edge.rtt_s == 0 and not edge.estimate_uplink
    for bad in ({"PRE_JPEG_QUALITY": "0"}, {"PRE_SOURCES": "bad/cam=video.mp4"}, {"PRE_QUEUE_SIZE": "0"},
                {"PRE_INPUT_SIZE": "8x8"}, {"PRE_MQTT_RESEND_WINDOW_S": "-1"}):
        with pytest.raises(ConfigError):
            load_config(PreprocessorConfig, "PRE_", env=bad)


def test_each_site_has_its_protocol() -> None:
    config = load_config(PreprocessorConfig, "PRE_", env={
        "PRE_CLOUD_PROTOCOL": "v2", "PRE_CLOUD_V2_MODEL": "yolo", "PRE_CLOUD_V2_MAPPING": "box_format=xyxy, version=3",
        "PRE_CLOUD_V2_BINARY": "no"})
    edge, cloud = config.site_configs()
    assert edge.protocol.name == "edgeoffload" and edge.protocol.infer_path == "/infer"
    assert cloud.protocol.name == "v2" and cloud.protocol.infer_path == "/v2/models/yolo/versions/3/infer"
    assert cloud.protocol.mapping == DetectionMapping("yolo", version="3", box_format="xyxy", binary=False)


@pytest.mark.parametrize("env, error", [
    ({"PRE_CLOUD_PROTOCOL": "grpc"}, "PRE_CLOUD_PROTOCOL: must be edgeoffload or v2"),
    ({"PRE_EDGE_PROTOCOL": "v2"}, "PRE_EDGE_V2_MODEL: the model to ask is required"),
    ({"PRE_EDGE_PROTOCOL": "v2", "PRE_EDGE_V2_MODEL": "../admin"}, "PRE_EDGE_V2_MODEL: model: expected"),
    ({"PRE_CLOUD_PROTOCOL": "v2", "PRE_CLOUD_V2_MODEL": "m", "PRE_CLOUD_V2_MAPPING": "boxes=detection boxes"},
     "PRE_CLOUD_V2_MAPPING: boxes: expected"),
    ({"PRE_CLOUD_PROTOCOL": "v2", "PRE_CLOUD_V2_MODEL": "m", "PRE_CLOUD_V2_MAPPING": "nms=0.5"},
     "PRE_CLOUD_V2_MAPPING: 'nms=0.5': expected key=value"),
])
def test_protocol_errors_name_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_config(PreprocessorConfig, "PRE_", env=env)


def test_a_discovered_service_may_live_in_another_namespace_behind_a_named_port(tmp_path: Path) -> None:
    store = EndpointSliceStore("edgeoffload")
    with EndpointSliceServer(store) as api:
        config = load_config(PreprocessorConfig, "PRE_", env={
            "PRE_EDGE_URL": "http://edge-inference:8080", "PRE_EDGE_DISCOVERY": "kubernetes",
            "PRE_CLOUD_DISCOVERY": "kubernetes",
            "PRE_CLOUD_SERVICE": "models/triton", "PRE_CLOUD_PORT_NAME": "http-triton", "PRE_NAMESPACE": "edgeoffload",
            "PRE_KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig"))})
        sources = config.replica_sources()
    edge, cloud = sources["edge"], sources["cloud"]
    assert (edge.namespace, edge.service, edge.port_name) == ("edgeoffload", "edge-inference", "http")
    assert (cloud.namespace, cloud.service, cloud.port_name) == ("models", "triton", "http-triton")


def test_frame_preparer_resizes_and_maps_boxes_back() -> None:
    image = np.zeros((720, 1280, 3), np.uint8)
    fitted = FramePreparer(max_side=640).from_image(image)
    assert decode(fitted.payload).shape[:2] == (360, 640)
    assert fitted.to_original((10, 20, 30, 40)) == pytest.approx((20, 40, 60, 80))
    boxed = FramePreparer(input_size=(416, 416)).from_image(image)
    assert decode(boxed.payload).shape[:2] == (416, 416)
    x, y, w, h = boxed.to_original((0, 91, 416, 234))  # the letterboxed content area
    assert (x, y, w, h) == pytest.approx((0, 0, 1280, 720), abs=2)
    small = FramePreparer(max_side=640).from_image(np.zeros((100, 200, 3), np.uint8))
    assert small.to_original((1, 2, 3, 4)) == (1, 2, 3, 4)


def test_pre_seed_seeds_the_policy(running) -> None:
    """PRE_SEED reaches a random policy: the same seed repeats its coin flips, another flips others."""
    from edgeoffload.policy import Observation, SiteState

    observation = Observation(0.0, "cam", 0, 1000, None, SiteState(), SiteState())

    def flips(seed: int) -> list[bool]:
        policy = running(policy="random:0.5", seed=seed).service.policy
        return [policy.estimate_to_cloud(observation) for _ in range(100)]
    assert load_config(PreprocessorConfig, "PRE_", env={"PRE_SEED": "5"}).seed == 5
    assert flips(5) == flips(5) != flips(6)


def test_example_policy_file_loads_and_decides() -> None:
    policy = load_policy(str(REPO / "EdgePreprocessorUnit" / "policy.py") + ":estimate_to_cloud")
    assert policy.name == "estimate_to_cloud"

    def obs(edge: SiteState, cloud: SiteState) -> Observation:
        return Observation(now=0.0, camera="c", frame_id=0, frame_bytes=50_000, deadline_s=0.2, edge=edge, cloud=cloud)

    fast_cloud = SiteState(service_s=0.02, rtt_s=0.02, uplink_bps=100e6)
    assert policy.estimate_to_cloud(obs(SiteState(in_flight=0), fast_cloud)) is False       # edge idle
    assert policy.estimate_to_cloud(obs(SiteState(in_flight=6, service_s=0.08), fast_cloud)) is True
    slow_cloud = SiteState(service_s=0.5, rtt_s=0.2, uplink_bps=1e6)
    assert policy.estimate_to_cloud(obs(SiteState(in_flight=2, service_s=0.08), slow_cloud)) is False
    assert policy.estimate_to_cloud(obs(SiteState(healthy=False), fast_cloud)) is True
    assert policy.estimate_to_cloud(obs(SiteState(in_flight=9), SiteState(healthy=False))) is False
    policy.feedback(FrameRecord(camera="c", frame_id=0, captured_at=0, site="edge", status="ok"))  # accepted


# -- end to end ---------------------------------------------------------------------------------

def test_frames_flow_to_both_sites_and_reach_the_webserver(running, records: Records, astronaut_jpeg: bytes) -> None:
    unit = running(policy="alternate")
    answers = [unit.post("e2e", astronaut_jpeg, wait=True) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    bodies = [FrameRecord.from_dict(a.get_json()) for a in answers]
    assert [b.frame_id for b in bodies] == [0, 1, 2, 3]
    assert [b.site for b in bodies] == ["edge", "cloud", "edge", "cloud"]
    for body in bodies:
        assert body.status == "ok" and body.policy == "alternate" and body.model == f"{body.site}/haar-face"
        assert body.t_inference_ms > 0 and body.t_total_ms >= body.t_inference_ms + body.t_network_ms
        assert body.bytes_sent > 0 and body.deadline_met in (True, False)
        faces = [d for d in body.detections if d.label == "face"]
        assert faces, body
        x, y, w, h = faces[0].box  # the astronaut's face, in the 512x512 original's pixels
        assert 120 < x + w / 2 < 320 and 40 < y + h / 2 < 220
    published = records.wait_for("e2e", 4)
    assert published == bodies
    assert all(records.by_key[("e2e", i)] == 1 for i in range(4))

    state = unit.client.get("/api/state").get_json()
    assert state["policy"] == "alternate" and state["mqtt"]["connected"] is True
    assert state["edge"]["answered"] == 2 and state["cloud"]["answered"] == 2
    assert 0 < state["edge"]["service_s"] < 5 and state["edge"]["healthy"] is True
    assert unit.client.get("/v2/health/ready").status_code == 200
    assert unit.client.get("/v2/health/live").get_json() == {"live": True}
    text = unit.client.get("/metrics").get_data(as_text=True)
    assert 'edgeoffload_preprocessor_policy_info{policy="alternate"} 1.0' in text
    assert 'edgeoffload_preprocessor_decisions_total{site="cloud"}' in text
    assert "edgeoffload_preprocessor_latency_seconds_bucket" in text


def test_a_site_asked_over_the_open_inference_protocol(running, records: Records, astronaut_jpeg: bytes) -> None:
    """The cloud unit's /v2 routes instead of /infer: same detections, timings and replica, same records."""
    unit = running(policy="alternate", cloud_protocol="v2", cloud_v2_model="haar-face")
    bodies = [FrameRecord.from_dict(unit.post("v2", astronaut_jpeg, wait=True).get_json()) for _ in range(2)]
    edge, cloud = bodies
    assert (edge.site, edge.model, cloud.site, cloud.model) == ("edge", "edge/haar-face", "cloud", "haar-face")
    assert cloud.status == "ok" and cloud.replica == edge.replica != ""         # both units run on this host
    assert cloud.t_inference_ms > 0 and cloud.t_network_ms > 0                   # the unit's timings split the trip
    assert [d.label for d in cloud.detections] == [d.label for d in edge.detections] == ["face"]
    assert np.allclose([d.box for d in cloud.detections], [d.box for d in edge.detections], atol=0.1)
    assert records.wait_for("v2", 2) == bodies
    state = unit.client.get("/api/state").get_json()
    assert (state["edge"]["protocol"], state["cloud"]["protocol"]) == ("edgeoffload", "v2")
    assert state["cloud"]["answered"] == 1 and state["cloud"]["healthy"] is True


def test_async_requests_answer_202_and_are_published(running, records: Records, astronaut_jpeg: bytes) -> None:
    unit = running(policy="min-latency")
    answers = [unit.post("async", astronaut_jpeg, frame_id=str(100 + i)) for i in range(5)]
    assert [a.status_code for a in answers] == [202] * 5
    assert [a.get_json() for a in answers] == [{"camera": "async", "frame_id": 100 + i} for i in range(5)]
    published = records.wait_for("async", 5)
    assert [r.frame_id for r in published] == [100, 101, 102, 103, 104]
    assert all(r.status == "ok" and r.policy == "min-latency" for r in published)
    assert unit.post("async", astronaut_jpeg).get_json()["frame_id"] == 105  # numbering continues


def test_requests_that_are_not_frames_are_refused_without_a_record(running, records: Records,
                                                                   astronaut_jpeg: bytes) -> None:
    unit = running(policy="edge-only", max_body_bytes=len(astronaut_jpeg) - 1)
    for camera in ("", "a/b", "x" * 65, "cam+1", "cam#"):
        answer = unit.post(camera, astronaut_jpeg)
        assert answer.status_code == 400 and "camera" in answer.get_json()["error"]
    assert unit.post("refused", astronaut_jpeg, content_type="text/plain").status_code == 415
    assert unit.post("refused", astronaut_jpeg, frame_id="-1").status_code == 400
    unicode_digit = unit.post("refused", astronaut_jpeg, frame_id="\u00b2")  # str.isdigit() says yes, int() no
    assert unicode_digit.status_code == 400
    assert unicode_digit.get_json()["error"] == "frame_id must be an integer 0..9223372036854775807, got '\u00b2'"
    too_large = unit.post("refused", astronaut_jpeg)
    assert too_large.status_code == 413 and "error" in too_large.get_json()
    assert unit.client.get("/nope").get_json()["error"]
    time.sleep(0.3)
    assert records.of("refused") == []


def test_camera_ids_are_bounded(running, records: Records, astronaut_jpeg: bytes) -> None:
    unit = running(policy="edge-only", max_cameras=1)
    assert unit.post("only-cam", astronaut_jpeg).status_code == 202
    refused = unit.post("second-cam", astronaut_jpeg)
    assert refused.status_code == 429 and "camera slots" in refused.get_json()["error"]
    assert unit.post("only-cam", astronaut_jpeg).status_code == 202
    assert [r.frame_id for r in records.wait_for("only-cam", 2)] == [0, 1]
    assert records.of("second-cam") == []


def test_junk_frames_take_no_camera_slot(running, records: Records, astronaut_jpeg: bytes) -> None:
    """Issue 16: 1,023 rejected junk requests used to fill the 1,024 slots for good."""
    unit = running(policy="edge-only", max_cameras=3)
    for index in range(20):
        junk = unit.post(f"junk-{index}", b"\xff\xd8 not a jpeg")
        assert junk.status_code == 400 and "record" not in junk.get_json()
    assert len(unit.service.cameras) == 0
    for camera in ("a", "b", "c"):
        assert unit.post(camera, astronaut_jpeg).status_code == 202
    assert unit.post("d", astronaut_jpeg).status_code == 429
    time.sleep(0.3)
    assert all(records.of(f"junk-{index}") == [] for index in range(20))


def test_camera_slots_age_out_least_recently_used_first() -> None:
    now = [0.0]
    slots = CameraSlots(capacity=2, idle_s=60.0, clock=lambda: now[0])
    assert [slots.assign("a"), slots.assign("b"), slots.assign("a")] == [0, 0, 1]
    now[0] = 59.0
    with pytest.raises(TooManyCameras):
        slots.assign("c")
    now[0] = 61.0  # b (last used at 0) is idle long enough, a (used at 0 too, but later) goes after it
    slots.check_room("c")
    assert slots.assign("c") == 0 and not slots.has("b") and slots.has("a")
    assert slots.assign("a") == 2
    now[0] = 200.0
    assert slots.assign("b", requested=7) == 7 and not slots.has("c")
    assert slots.assign("b") == 8 and len(slots) == 2


def test_a_chunked_body_over_the_limit_gets_413(running, records: Records, astronaut_jpeg: bytes) -> None:
    """A chunked body has no Content-Length to check: it used to be cut at the limit and answered 400."""
    unit = running(policy="edge-only", max_body_bytes=len(astronaut_jpeg) - 1)
    answer = unit.client.post("/process", query_string={"camera": "chunked"}, content_type=JPEG,
                              input_stream=io.BytesIO(astronaut_jpeg),
                              environ_overrides={"wsgi.input_terminated": True})
    assert answer.status_code == 413 and "exceeds" in answer.get_json()["error"]
    within = running(policy="edge-only", max_body_bytes=len(astronaut_jpeg))
    answer = within.client.post("/process", query_string={"camera": "chunked", "wait": "1"}, content_type=JPEG,
                                input_stream=io.BytesIO(astronaut_jpeg),
                                environ_overrides={"wsgi.input_terminated": True})
    assert answer.status_code == 200 and answer.get_json()["status"] == "ok"


def test_corrupt_frame_gets_400_and_an_error_record_and_service_continues(running, records: Records,
                                                                          astronaut_jpeg: bytes) -> None:
    unit = running(policy="edge-only")
    unknown = unit.post("corrupt", b"\xff\xd8\xff\xe0 definitely not a jpeg", wait=True)
    assert unknown.status_code == 400 and "record" not in unknown.get_json()  # no slot: refused, no record
    assert unit.post("corrupt", astronaut_jpeg, wait=True).get_json()["frame_id"] == 0
    bad = unit.post("corrupt", b"\xff\xd8\xff\xe0 definitely not a jpeg", wait=True)
    assert bad.status_code == 400
    body = bad.get_json()
    assert body["frame_id"] == 1 and body["record"]["status"] == "error"
    truncated = unit.post("corrupt", astronaut_jpeg[: len(astronaut_jpeg) // 3])
    assert truncated.status_code in (200, 202, 400)  # libjpeg may decode a truncated frame partially
    good = unit.post("corrupt", astronaut_jpeg, wait=True)
    assert good.status_code == 200 and good.get_json()["status"] == "ok"
    published = records.wait_for("corrupt", 4)
    assert [r.frame_id for r in published] == [0, 1, 2, 3]
    assert published[1].status == "error" and published[1].site == "none"
    assert published[1].reason.startswith("bad_frame:")
    assert "bad_frame" in unit.client.get("/metrics").get_data(as_text=True)


def test_chosen_site_down_fails_over_to_the_other(broker: BrokerProcess, sites, records: Records,
                                                  astronaut_jpeg: bytes) -> None:
    edge, _ = sites
    cloud = haar_unit("cloud")
    unit = Running(pre_config(broker, edge.url, cloud.url, policy="cloud-only", health_interval_s=0))
    try:
        first = unit.post("failover", astronaut_jpeg, wait=True).get_json()
        assert first["site"] == "cloud" and first["reason"] == ""
        cloud.stop()
        second = unit.post("failover", astronaut_jpeg, wait=True).get_json()
        assert second["status"] == "ok" and second["site"] == "edge"
        assert second["reason"] == "failover:cloud->edge" and second["model"] == "edge/haar-face"
        state = unit.client.get("/api/state").get_json()
        assert state["cloud"]["failed"] == 1 and "connection" in state["cloud"]["last_error"]
        published = records.wait_for("failover", 2)
        assert [(r.site, r.reason) for r in published] == [("cloud", ""), ("edge", "failover:cloud->edge")]
        text = unit.client.get("/metrics").get_data(as_text=True)
        assert 'edgeoffload_preprocessor_failovers_total{from_site="cloud",to_site="edge"}' in text
    finally:
        unit.close()
        cloud.stop()


def test_both_sites_down_yields_one_error_record(broker: BrokerProcess, records: Records, astronaut_jpeg: bytes) -> None:
    from edgeoffload.serve import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    unit = Running(pre_config(broker, nowhere, nowhere, policy="edge-only", health_interval_s=0))
    try:
        answer = unit.post("down", astronaut_jpeg, wait=True).get_json()
        assert answer["status"] == "error" and answer["site"] == "cloud"
        assert answer["reason"].startswith("failover:edge->cloud; cloud: connection")
        assert records.wait_for("down", 1)[0].status == "error"
    finally:
        unit.close()


def test_full_queue_drops_oldest_and_every_frame_gets_exactly_one_record(running, records: Records,
                                                                         astronaut_jpeg: bytes) -> None:
    unit = running(policy="edge-only", queue_size=2, edge_replica_concurrency=1)
    sent = 15
    for _ in range(sent):
        assert unit.post("burst", astronaut_jpeg).status_code == 202
    assert unit.service.offloader.wait_idle(WAIT)
    published = records.wait_for("burst", sent)
    time.sleep(0.2)
    assert [r.frame_id for r in published] == list(range(sent))
    assert all(records.by_key[("burst", i)] == 1 for i in range(sent))
    dropped = [r for r in published if r.status == "dropped"]
    served = [r for r in published if r.status == "ok"]
    assert len(dropped) >= sent - 6 and len(served) >= 2
    assert all(r.reason == "queue_full" and r.site == "edge" and r.bytes_sent == 0 for r in dropped)
    assert published[-1].status == "ok" and published[-2].status == "ok"  # the newest frames survive
    text = unit.client.get("/metrics").get_data(as_text=True)
    assert 'edgeoffload_preprocessor_drops_total{reason="queue_full"}' in text


class RecordingPolicy:
    """Edge for even frames, cloud for odd ones; raises on frame 3; remembers its feedback.
    Not thread-safe on purpose: the preprocessor must serialise calls."""

    name = "recording"

    def __init__(self) -> None:
        self.feedback_ids: list[int] = []
        self.active = 0
        self.overlaps = 0

    def estimate_to_cloud(self, obs: Observation) -> bool:
        self._enter()
        try:
            if obs.frame_id == 3:
                raise RuntimeError("policy bug")
            assert obs.frame_bytes > 0 and obs.deadline_s == pytest.approx(0.5)
            return obs.frame_id % 2 == 1
        finally:
            self.active -= 1

    def feedback(self, record: FrameRecord) -> None:
        self._enter()
        self.feedback_ids.append(record.frame_id)
        time.sleep(0.001)
        self.active -= 1

    def _enter(self) -> None:
        self.active += 1
        if self.active > 1:
            self.overlaps += 1


def test_policy_gets_one_feedback_per_frame_and_a_broken_decision_fails_only_its_frame(
        broker: BrokerProcess, sites, records: Records, astronaut_jpeg: bytes) -> None:
    edge, cloud = sites
    policy = RecordingPolicy()
    unit = Running(pre_config(broker, edge.url, cloud.url), policy)
    try:
        threads = [threading.Thread(target=unit.post, args=("feedback", astronaut_jpeg)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert unit.service.offloader.wait_idle(WAIT)
        published = records.wait_for("feedback", 8)
    finally:
        unit.close()
    assert sorted(policy.feedback_ids) == list(range(8)) and policy.overlaps == 0
    broken = [r for r in published if r.status == "error"]
    assert [r.frame_id for r in broken] == [3] and broken[0].reason.startswith("policy_error: RuntimeError")
    assert {r.site for r in published if r.status == "ok" and r.frame_id % 2} == {"cloud"}
    assert {r.site for r in published if r.status == "ok" and not r.frame_id % 2} == {"edge"}


def test_frames_past_their_deadline_are_dropped_when_configured(running, records: Records,
                                                                 astronaut_jpeg: bytes) -> None:
    unit = running(policy="edge-only", edge_replica_concurrency=1, queue_size=16, deadline_ms=60, drop_expired=True)
    for _ in range(5):
        assert unit.post("late", astronaut_jpeg).status_code == 202
    published = records.wait_for("late", 5)
    assert published[0].status == "ok" and published[0].deadline_met is False  # Haar takes > 60 ms
    expired = [r for r in published if r.reason == "deadline_expired"]
    assert len(expired) >= 3 and all(r.status == "dropped" and r.deadline_met is False for r in expired)


def wait_for_autosave(broker: BrokerProcess, since: float, timeout: float = 15.0) -> None:
    """Until Mosquitto has saved its database (every autosave_interval, 5 s) after `since`."""
    database = broker.workdir / "data" / "mosquitto.db"
    deadline = time.monotonic() + timeout
    while not (database.exists() and database.stat().st_mtime > since):
        assert time.monotonic() < deadline, "the broker never saved its database"
        time.sleep(0.1)


@pytest.mark.parametrize("kill", [False, True], ids=["SIGTERM", "SIGKILL"])
def test_broker_restart_mid_run_loses_no_record(fresh_broker: BrokerProcess, sites, astronaut_jpeg: bytes,
                                                kill: bool) -> None:
    edge, cloud = sites
    subscribed_at = time.time()
    sink = Records(fresh_broker, client_id=f"webserver-restart-{kill}")
    unit = Running(pre_config(fresh_broker, edge.url, cloud.url, policy="alternate", queue_size=64))
    try:
        if kill:  # a killed broker keeps only what it had saved: the sink's session must be in it
            wait_for_autosave(fresh_broker, subscribed_at + 0.5)
        sent = 24
        for i in range(sent):
            assert unit.post("restart", astronaut_jpeg).status_code == 202
            if i == sent // 2:
                fresh_broker.restart(kill=kill)
            time.sleep(0.03)
        assert unit.service.offloader.wait_idle(WAIT)
        assert unit.service.publisher.flush(WAIT)
        published = sink.wait_for("restart", sent)
        time.sleep(0.3)
        assert [r.frame_id for r in published] == list(range(sent))
        assert all(sink.by_key[("restart", i)] == 1 for i in range(sent))
        assert unit.service.publisher.stats().dropped == 0
    finally:
        unit.close()
        sink.close()


def test_stays_ready_while_the_broker_is_away_until_its_record_buffer_is_full(fresh_broker: BrokerProcess, sites,
                                                                              astronaut_jpeg: bytes) -> None:
    """A broker restart must not take the preprocessor out of its Service: it buffers the records.
    Only when the buffer could not hold one more frame's record does it say not-ready, and it then
    refuses frames (503) rather than accept one whose record it would lose."""
    edge, cloud = sites
    unit = Running(pre_config(fresh_broker, edge.url, cloud.url, policy="edge-only", mqtt_max_buffered=6))
    try:
        fresh_broker.stop()
        deadline = time.monotonic() + WAIT
        while unit.service.publisher.connected:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = unit.client.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.get_json()["mqtt_connected"] is False
        accepted = 0
        while (answer := unit.post("buffered", astronaut_jpeg)).status_code == 202:
            accepted += 1
            assert accepted <= 6
        assert answer.status_code == 503 and "record buffer full" in answer.get_json()["error"]
        not_ready = unit.client.get("/v2/health/ready")
        assert not_ready.status_code == 503 and "record buffer full" in not_ready.get_json()["error"]
        assert accepted >= 5 and unit.service.publisher.stats().dropped == 0   # nothing accepted was lost
        fresh_broker.start()
        assert unit.service.offloader.wait_idle(WAIT) and unit.service.publisher.flush(WAIT)
        assert unit.client.get("/v2/health/ready").status_code == 200
    finally:
        unit.close()


def test_sources_read_folder_and_video(broker: BrokerProcess, sites, records: Records, tmp_path: Path) -> None:
    edge, cloud = sites
    spec = SampleVideoSpec(width=320, height=240, frames_per_scene=2, scenes=("astronaut", "coffee"))
    video = write_video(tmp_path / "clip.avi", spec, fps=20)
    folder = tmp_path / "frames"
    folder.mkdir()
    astronaut = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), astronaut)
    (folder / "notes.txt").write_text("ignored")
    unit = Running(pre_config(broker, edge.url, cloud.url, policy="edge-only", source_fps=20,
                              sources=f"folder-cam={folder}/,video-cam={video}"))
    try:
        from_folder = records.wait_for("folder-cam", 3)
        from_video = records.wait_for("video-cam", 4)
        assert [r.frame_id for r in from_folder] == [0, 1, 2]
        assert [r.frame_id for r in from_video] == [0, 1, 2, 3]
        assert all(r.status == "ok" and any(d.label == "face" for d in r.detections) for r in from_folder)
        state = unit.client.get("/api/state").get_json()["sources"]
        assert {s["camera"]: s["frames"] for s in state} == {"folder-cam": 3, "video-cam": 4}
        assert all(s["finished"] and not s["last_error"] for s in state)
    finally:
        unit.close()


def test_served_by_gunicorn_and_flushes_records_on_shutdown(broker: BrokerProcess, sites, records: Records,
                                                            astronaut_jpeg: bytes) -> None:
    edge, cloud = sites
    env = {"PRE_EDGE_URL": edge.url, "PRE_CLOUD_URL": cloud.url, "PRE_POLICY": "edge-only",
           "PRE_MQTT_HOST": broker.host, "PRE_MQTT_PORT": str(broker.port),
           "PRE_MQTT_PASSWORD": broker.users["preprocessor"], "PRE_QUEUE_SIZE": "32", "PRE_EDGE_REPLICA_CONCURRENCY": "1", "PRE_CLOUD_REPLICA_CONCURRENCY": "1"}
    unit = start_unit("preprocessor", env=env, workers=1, threads=4)
    sent = 20  # ~2-3 s of Haar work on one dispatcher, longer than gunicorn takes to stop a worker
    try:
        session = requests.Session()
        for _ in range(sent):
            answer = session.post(unit.url + "/process", params={"camera": "gunicorn"}, data=astronaut_jpeg,
                                  headers={"Content-Type": JPEG}, timeout=5)
            assert answer.status_code == 202
        session.close()
    finally:
        assert unit.stop() == 0, unit.log()[-3000:]  # SIGTERM while frames are still queued
    published = records.wait_for("gunicorn", sent, timeout=10)
    assert [r.frame_id for r in published] == list(range(sent))
    assert all(r.status == "ok" for r in published), [r.reason for r in published]
    assert "records were not acknowledged" not in unit.log()


def test_status_is_retained_online_then_offline(broker: BrokerProcess, sites) -> None:
    edge, cloud = sites
    statuses: list[dict] = []
    got = threading.Event()

    def on_status(topic: str, status: dict) -> None:
        if topic == "edgeoffload/status/preprocessor":
            statuses.append(status)
            got.set()

    settings = MQTTSettings(host=broker.host, port=broker.port, username="webserver",
                            password=broker.users["webserver"])
    unit = Running(pre_config(broker, edge.url, cloud.url, policy="deadline:0.3"))
    with Subscriber(settings, ("edgeoffload/status/#",), on_status=on_status) as watcher:  # after: retained
        assert got.wait(WAIT)
        unit.close()
        deadline = time.monotonic() + WAIT
        while statuses[-1]["state"] != "offline" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.stats().malformed == 0
    assert statuses[0]["state"] == "online" and statuses[0]["policy"] == "deadline"
    assert statuses[-1]["state"] == "offline"


def test_previews_of_answered_frames_carry_their_boxes_at_most_fps_per_camera(running, broker: BrokerProcess,
                                                                           astronaut_jpeg: bytes) -> None:
    from edgeoffload.broker import PREVIEWS_TOPIC
    from edgeoffload.preview import Preview

    previews: list[Preview] = []
    settings = MQTTSettings(host=broker.host, port=broker.port, username="webserver",
                            password=broker.users["webserver"])
    topics = (f"{PREVIEWS_TOPIC}/preview-cam", f"{PREVIEWS_TOPIC}/preview-off")  # not other tests' retained ones
    with Subscriber(settings, topics,
                    on_preview=lambda _topic, payload: previews.append(Preview.from_json(payload))) as subscriber:
        assert subscriber.wait_subscribed(WAIT)
        unit = running(policy="edge-only", preview_fps=1.0)
        began = time.monotonic()
        answers = [FrameRecord.from_dict(unit.post("preview-cam", astronaut_jpeg, wait=True).get_json())
                   for _ in range(6)]
        took = time.monotonic() - began
        deadline = time.monotonic() + WAIT
        while not previews and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        off = running(policy="edge-only", preview=False)
        off.post("preview-off", astronaut_jpeg, wait=True)
        time.sleep(0.5)
    assert previews and {p.camera for p in previews} == {"preview-cam"}  # none from the unit with previews off
    assert len(previews) <= 1 + took  # at most 1 per second
    first = previews[0]
    assert first.frame_id == 0 and (first.width, first.height) == (320, 320)  # the 512x512 astronaut, shrunk
    (face,) = [d for d in first.detections if d.label == "face"]
    original = next(d for d in answers[0].detections if d.label == "face")
    assert face.box == pytest.approx(tuple(v * 320 / 512 for v in original.box), abs=0.2)
    assert first.site == "edge" and first.replica == answers[0].replica and first.model == "edge/haar-face"


def test_preview_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="PRE_PREVIEW_WIDTH: must be 16..640"):
        load_config(PreprocessorConfig, "PRE_", env={"PRE_PREVIEW_WIDTH": "4000"})
    assert load_config(PreprocessorConfig, "PRE_", env={"PRE_PREVIEW": "false", "PRE_PREVIEW_WIDTH": "4000"}).preview is False
