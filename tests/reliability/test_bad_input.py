"""Hostile input: fuzzed HTTP requests, malformed MQTT payloads, and code that must not be there.

HTTP fuzzing uses Flask test clients of the real apps (fast: no server in the fuzz loop):
every request must get a JSON answer, a 4xx for anything bad, never a 5xx. Malformed MQTT
payloads go through the real broker to the real webserver app, which must ignore them,
count them, and keep serving.
"""
from __future__ import annotations

import json
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeoffload.broker import BrokerProcess
from edgeoffload.frames import FrameError, image_size
from edgeoffload.messaging import MQTTSettings, Publisher
from edgeoffload.records import FrameRecord
from edgeoffload.units.inference import InferenceConfig
from edgeoffload.units.inference import create_app as create_inference_app
from edgeoffload.units.preprocessor import PreprocessorConfig
from edgeoffload.units.preprocessor import create_app as create_preprocessor_app
from edgeoffload.units.webserver import WebConfig
from edgeoffload.units.webserver import create_app as create_web_app

PACKAGE = Path(__file__).resolve().parents[2] / "edgeoffload"
MAX_BODY = 64 * 1024
MAX_PIXELS = 1024 * 1024
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once


def _encoded(extension: str, width: int = 64, height: int = 48) -> bytes:
    image = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(extension, image)[1].tobytes()


JPEG, PNG = _encoded(".jpg"), _encoded(".png")
# pickle.dumps of a reduce to builtins.eval("print(1)"): what an unpickling endpoint would run.
PICKLE = (b"\x80\x04\x95$\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94"
          b"\x8c\x08print(1)\x94\x85\x94R\x94.")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (with a valid CRC) claims width x height, followed by a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG whose frame header claims width x height (baseline, 3 components), then EOI."""
    sof = struct.pack(">BBHBHHB", 0xFF, 0xC0, 17, 8, height, width, 3)
    sof += b"".join(struct.pack(">BBB", component, 0x11, 0) for component in (1, 2, 3))
    return b"\xff\xd8" + sof + b"\xff\xd9"


def real_png_bomb(side: int = 8000) -> bytes:
    """A genuine side x side greyscale PNG of zeros: about 64 MB decoded from ~60 KB."""
    row = b"\x00" + b"\x00" * side
    idat = zlib.compress(row * side, 9)
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
            + struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def _corrupt(kind: str, position: int, junk: bytes) -> bytes:
    data = JPEG if kind == "jpeg" else PNG
    position %= len(data)
    return data[:position] + junk + data[position + len(junk):]


dimension = st.integers(min_value=0, max_value=2**16 - 1)
bomb_headers = st.one_of(st.builds(png_claiming, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                         st.builds(jpeg_claiming, dimension, dimension))
bad_bodies = st.one_of(
    st.binary(max_size=2048),                                                       # random bytes
    st.integers(0, 512).map(lambda n: b"\x00" * n),                                 # zero bytes
    st.integers(0, len(JPEG) - 1).map(lambda n: JPEG[:n]),                          # truncated JPEG
    st.integers(0, len(PNG) - 1).map(lambda n: PNG[:n]),                            # truncated PNG
    st.builds(_corrupt, st.sampled_from(["jpeg", "png"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    bomb_headers,
    st.just(PICKLE),
    st.integers(MAX_BODY - 8, MAX_BODY + 4096).map(lambda n: b"\xff\xd8" + b"\x00" * n),  # around the size limit
)
content_types = st.sampled_from([
    "image/jpeg", "image/png", "IMAGE/JPEG", "image/jpeg; charset=binary", "image/gif", "image/svg+xml", "image/",
    "application/octet-stream", "application/python-pickle", "application/x-python-serialize", "application/json",
    "text/plain", "text/html", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "",
])
# Query strings: MQTT wildcards and separators, unicode, control characters, very long, empty.
odd_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)
camera_ids = st.one_of(odd_text, st.sampled_from(["", "a/b", "#", "+", "cam+1", "cam#", "../etc/passwd", "x" * 65,
                                                  "x" * 5000, "ünïcödé", "a\nb", "a\x00b", "%2F", " cam", "cam "]))
frame_ids = st.one_of(st.none(), odd_text.filter(lambda s: len(s) < 40),
                      st.integers(-2**80, 2**80).map(str),
                      st.sampled_from(["-1", "1e3", "0x10", " 1", "1.0", "²", "١٢", "9" * 5000, "", "NaN", "inf"]))


def is_claimed_too_large(body: bytes) -> bool:
    """True if the body's image header claims more than MAX_PIXELS (or zero) pixels."""
    try:
        width, height = image_size(body)
    except FrameError:
        return False
    return width * height > MAX_PIXELS or width == 0 or height == 0


def required_refusal(body: bytes, content_type: str) -> tuple[int, ...]:
    """The statuses a frame upload must get; () when it may be accepted (e.g. a truncated JPEG
    that still decodes). 415 is always allowed for image/* types the units do not take (gif, svg)."""
    if not content_type.lower().startswith("image/"):
        return (415,)
    if len(body) > MAX_BODY:
        return (413, 415)
    if not body or is_claimed_too_large(body):
        return (400, 415)
    return ()


def assert_json_error_or(answer, allowed_ok: tuple[int, ...]) -> dict:
    """Never a 5xx; always a JSON object; errors carry a message."""
    assert answer.status_code < 500, (answer.status_code, answer.get_data(as_text=True)[:300])
    body = answer.get_json(silent=True)
    assert isinstance(body, dict), answer.get_data(as_text=True)[:300]
    if answer.status_code not in allowed_ok:
        assert 400 <= answer.status_code < 500 and isinstance(body.get("error"), str) and body["error"], body
    return body


# -- the inference unit ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inference_client():
    app = create_inference_app(InferenceConfig(kind="haar-face", max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS))
    client = app.test_client()
    deadline = time.monotonic() + 60
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "inference app never became ready"
        time.sleep(0.05)
    return client


@FUZZ
@given(body=bad_bodies, content_type=content_types)
def test_infer_answers_bad_bodies_with_4xx_json(inference_client, body: bytes, content_type: str) -> None:
    answer = inference_client.post("/infer", data=body, content_type=content_type)
    result = assert_json_error_or(answer, (200,))
    if refusal := required_refusal(body, content_type):
        assert answer.status_code in refusal, (answer.status_code, answer.get_json())
    if answer.status_code == 200:  # e.g. a truncated JPEG that still decodes: a normal answer
        assert isinstance(result["detections"], list) and result["inference_ms"] >= 0


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream", "application/python-pickle"])
def test_pickle_payloads_are_refused(inference_client, preprocessor_client, content_type: str) -> None:
    for answer in (inference_client.post("/infer", data=PICKLE, content_type=content_type),
                   preprocessor_client.post("/process?camera=pickle", data=PICKLE, content_type=content_type)):
        assert answer.status_code == (400 if content_type.startswith("image/") else 415)
        assert "error" in answer.get_json()


def test_real_decompression_bomb_is_refused_before_decoding(inference_client) -> None:
    bomb = real_png_bomb()
    assert len(bomb) < MAX_BODY  # it passes the body limit: only the pixel limit stops it
    started = time.perf_counter()
    answer = inference_client.post("/infer", data=bomb, content_type="image/png")
    assert answer.status_code == 400 and "exceeds the limit" in answer.get_json()["error"]
    assert time.perf_counter() - started < 2.0  # decoding 64 MB of pixels would take far longer


# -- the preprocessor --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def preprocessor_client(broker: BrokerProcess):
    config = PreprocessorConfig(edge_url=UNREACHABLE, cloud_url=UNREACHABLE, health_interval_s=0, request_timeout_s=1.0,
                                max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS, queue_size=4,
                                mqtt_host=broker.host, mqtt_port=broker.port, mqtt_password=broker.users["preprocessor"])
    app = create_preprocessor_app(config)
    service = app.extensions["preprocessor"]
    assert service.publisher.wait_connected(10)
    yield app.test_client()
    service.close()


@FUZZ
@given(body=bad_bodies, content_type=content_types)
def test_process_answers_bad_bodies_with_4xx_json(preprocessor_client, body: bytes, content_type: str) -> None:
    answer = preprocessor_client.post("/process?camera=fuzz", data=body, content_type=content_type)
    assert_json_error_or(answer, (202,))
    if refusal := required_refusal(body, content_type):
        assert answer.status_code in refusal, (answer.status_code, answer.get_json())


@FUZZ
@given(camera=camera_ids, frame_id=frame_ids)
def test_process_refuses_bad_camera_and_frame_ids(preprocessor_client, camera: str, frame_id: str | None) -> None:
    query = {"camera": camera, **({"frame_id": frame_id} if frame_id is not None else {})}
    answer = preprocessor_client.post("/process", query_string=query, data=JPEG, content_type="image/jpeg")
    assert_json_error_or(answer, (202,))
    topic_unsafe = not camera or len(camera) > 64 or any(c in camera for c in "/#+") \
        or any(ord(c) < 32 or ord(c) > 126 for c in camera)
    if topic_unsafe:
        assert answer.status_code == 400, (camera, answer.get_json())
    if frame_id not in (None, "") and not is_frame_number(frame_id):
        assert answer.status_code == 400, (frame_id, answer.get_json())


def is_frame_number(text: str) -> bool:
    """0 <= int(text) < 2**63, written with digits only (Python's int() also takes non-ASCII digits)."""
    try:
        return text.isdigit() and 0 <= int(text) < 2**63
    except ValueError:  # isdigit() is also true for superscripts and circled digits, which int() refuses
        return False


# -- the webserver -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def web_client(tmp_path_factory):
    app = create_web_app(WebConfig(mqtt_enabled=False, results_dir=str(tmp_path_factory.mktemp("results"))),
                         connect_mqtt=False)
    state = app.extensions["edgeoffload.web"]
    state.on_record("edgeoffload/results/gate", FrameRecord(camera="gate", frame_id=1, captured_at=time.time(),
                                                           site="edge", status="ok"))
    yield app.test_client()
    state.close()


@FUZZ
@given(camera=st.one_of(st.none(), camera_ids), limit=st.one_of(st.none(), frame_ids))
def test_results_api_answers_bad_params_with_4xx_json(web_client, camera: str | None, limit: str | None) -> None:
    query = {key: value for key, value in (("camera", camera), ("limit", limit)) if value is not None}
    answer = web_client.get("/api/results", query_string=query)
    body = assert_json_error_or(answer, (200,))
    if answer.status_code == 200:
        assert body["count"] == len(body["results"]) <= 200
        assert all(result["camera"] == camera for result in body["results"]) or camera is None


@pytest.mark.parametrize("limit", ["²", "①", "9" * 5000])  # str.isdigit() is true for these; int() refuses them
def test_results_limit_of_non_decimal_digits_is_400(web_client, limit: str) -> None:
    answer = web_client.get("/api/results", query_string={"limit": limit})
    assert answer.status_code == 400


@FUZZ
@given(path=odd_text)
def test_unknown_paths_never_fail_with_5xx(web_client, path: str) -> None:
    for prefix in ("/api/", "/experiments/"):
        answer = web_client.get(prefix + path)
        assert answer.status_code < 500, (prefix + path, answer.status_code)


# -- malformed MQTT payloads through the real broker ------------------------------------------------------

VALID = {"camera": "gate", "frame_id": 1, "captured_at": 1.0, "site": "edge", "status": "ok"}
# Each must be ignored, counted as malformed, never shown; none may stop the subscriber.
MALFORMED_PAYLOADS: dict[str, bytes] = {
    "random bytes": bytes(np.random.default_rng(3).integers(0, 256, 512, dtype=np.uint8)),
    "zero bytes": b"\x00" * 64,
    "empty": b"",
    "not utf-8": b'{"camera":"\xff","frame_id":1,"site":"edge","status":"ok"}',
    "JSON array": b"[1, 2, 3]",
    "JSON string": b'"record"',
    "deeply nested JSON": b"[" * 100_000,
    "deeply nested detections": json.dumps({**VALID, "detections": "[" * 100_000}).encode(),
    "NaN time": json.dumps({**VALID, "t_total_ms": float("nan")}).encode(),
    "NaN frame id": json.dumps({**VALID, "frame_id": float("nan")}).encode(),
    "NaN score": json.dumps({**VALID, "detections": [{"label": "x", "score": float("nan"), "box": [1, 2, 3, 4]}]}).encode(),
    "infinite frame id": b'{"camera":"gate","frame_id":Infinity,"site":"edge","status":"ok"}',
    "1e400 bytes_sent": b'{"camera":"gate","frame_id":1,"site":"edge","status":"ok","bytes_sent":1e400}',
    "5000-digit frame id": b'{"camera":"gate","frame_id":' + b"9" * 5000 + b',"site":"edge","status":"ok"}',
    "frame id beyond int64": json.dumps({**VALID, "frame_id": 10**30}).encode(),
    "negative frame id": json.dumps({**VALID, "frame_id": -5}).encode(),
    "frame id a word": json.dumps({**VALID, "frame_id": "twelve"}).encode(),
    "frame id true": json.dumps({**VALID, "frame_id": True}).encode(),
    "camera an object": json.dumps({**VALID, "camera": {"name": "gate"}}).encode(),
    "camera with control characters": json.dumps({**VALID, "camera": "a\nb"}).encode(),
    "unknown site": json.dumps({**VALID, "site": "moon"}).encode(),
    "missing fields": json.dumps({"camera": "gate"}).encode(),
    "detections not a list": json.dumps({**VALID, "detections": {"a": 1}}).encode(),
    "box of 3": json.dumps({**VALID, "detections": [{"label": "x", "score": 1, "box": [1, 2, 3]}]}).encode(),
}


@pytest.fixture
def mqtt_web(broker: BrokerProcess) -> Iterator[tuple[object, Callable[[dict[str, bytes]], None]]]:
    """A webserver app on the real broker, and a function publishing raw payloads as the preprocessor."""
    app = create_web_app(WebConfig(mqtt_host=broker.host, mqtt_port=broker.port, mqtt_password=broker.users["webserver"]))
    state = app.extensions["edgeoffload.web"]
    assert state.subscriber.wait_subscribed(10)
    settings = MQTTSettings(host=broker.host, port=broker.port, username="preprocessor",
                            password=broker.users["preprocessor"], session_expiry_s=0)
    publisher = Publisher(settings).start()
    assert publisher.wait_connected(10)

    def publish(payloads: dict[str, bytes]) -> None:
        for payload in payloads.values():
            publisher.publish("edgeoffload/results/gate", payload)
        assert publisher.flush(10)

    yield app, publish
    publisher.close()
    state.close()


def wait_for_summary(client, done: Callable[[dict], bool], timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        summary = client.get("/api/summary").get_json()
        if done(summary) or time.monotonic() > deadline:
            return summary
        time.sleep(0.05)


def test_malformed_payloads_are_ignored_counted_and_the_webserver_keeps_serving(mqtt_web) -> None:
    app, publish = mqtt_web
    client = app.test_client()
    state = app.extensions["edgeoffload.web"]
    publish(MALFORMED_PAYLOADS)
    publish({"valid": FrameRecord(**{**VALID, "frame_id": 7}).to_json().encode()})
    summary = wait_for_summary(client, lambda s: s["ingest"]["records"] >= 1
                               and s["ingest"]["malformed"] >= len(MALFORMED_PAYLOADS))
    assert summary["ingest"]["malformed"] == len(MALFORMED_PAYLOADS)
    assert summary["ingest"]["records"] == 1
    assert state.subscriber.stats().callback_errors == 0  # all refused as malformed, none blew up a callback
    assert state.subscriber.connected
    assert [r["frame_id"] for r in client.get("/api/results?camera=gate").get_json()["results"]] == [7]
    assert client.get("/healthz").status_code == 200


# -- no code execution from data -----------------------------------------------------------------------------

FORBIDDEN = {
    "pickle-family deserialisers": re.compile(r"\b(c?pickle|marshal|shelve|dill|jsonpickle)\b"),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
    "unsafe YAML loading": re.compile(r"yaml\.(load|unsafe_load|full_load|load_all)\s*\("
                                      r"|Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b"),
    "numpy/torch pickle loading": re.compile(r"allow_pickle\s*=\s*True|torch\.load\s*\("),
}
# Reviewed exceptions: (file, rule) -> why it is safe.
ALLOWED = {
    ("sim/fastinit.py", "eval/exec"): "compiles a constructor from a dataclass's own field names; no outside input",
}


def test_no_deserialiser_or_eval_of_data_in_the_package() -> None:
    findings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for rule, pattern in FORBIDDEN.items():
                if pattern.search(code) and (relative, rule) not in ALLOWED:
                    findings.append(f"{relative}:{number}: {rule}: {line.strip()}")
    assert not findings, "\n".join(findings)
    assert any(p.read_text(encoding="utf-8").count("safe_load") for p in PACKAGE.rglob("*.py")), \
        "YAML is read somewhere with yaml.safe_load"


def test_forbidden_patterns_catch_what_they_should() -> None:
    """The grep above is only worth something if its patterns match the real thing."""
    samples = {"import pickle": "pickle-family deserialisers", "x = marshal.loads(b)": "pickle-family deserialisers",
               "eval(text)": "eval/exec", "exec (code)": "eval/exec", "yaml.load(stream)": "unsafe YAML loading",
               "yaml.load(f, Loader=yaml.Loader)": "unsafe YAML loading", "np.load(p, allow_pickle=True)":
               "numpy/torch pickle loading"}
    for line, rule in samples.items():
        assert FORBIDDEN[rule].search(line), line
    for harmless in ("yaml.safe_load(stream)", "ast.literal_eval(s)", "model.evaluate(x)", "self.executor(x)"):
        assert not any(pattern.search(harmless) for pattern in FORBIDDEN.values()), harmless
