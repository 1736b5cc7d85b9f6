"""The Open Inference Protocol's wire format and the detector's tensors (no network)."""
from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgeoffload import openinference as oip
from edgeoffload.openinference import DetectionMapping, Message, ProtocolError, Tensor
from edgeoffload.records import Detection

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4        # not valid UTF-8: only binary or base64 carry it
FACE = Detection("face", 0.9, (10.0, 20.0, 30.0, 40.0))


def image_request(value: bytes, binary: bool, datatype: str = "BYTES", **head: object) -> Message:
    if datatype == "UINT8":
        tensor = Tensor("image", "UINT8", (len(value),), np.frombuffer(value, dtype="u1"), binary)
    else:
        tensor = Tensor("image", "BYTES", (1,), (value,), binary)
    body, headers = oip.encode(head, "inputs", [tensor])
    return oip.decode(body, headers.get(oip.HEADER_LENGTH), "inputs")


def test_binary_request_layout_follows_the_extension() -> None:
    """JSON header, then the BYTES element as a 4-byte little-endian length and its bytes."""
    body, headers = oip.encode({"id": "r1"}, "inputs", [Tensor("image", "BYTES", (1,), (JPEG,), binary=True)])
    json_length = int(headers[oip.HEADER_LENGTH])
    assert headers["Content-Type"] == oip.BINARY_TYPE
    head = json.loads(body[:json_length])
    assert head == {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                            "parameters": {"binary_data_size": 4 + len(JPEG)}}]}
    assert body[json_length:] == struct.pack("<I", len(JPEG)) + JPEG


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numeric_and_bytes_tensors_round_trip(binary: bool) -> None:
    tensors = [Tensor("boxes", "FP32", (2, 4), np.arange(8, dtype="<f4"), binary),
               Tensor("ids", "INT64", (2,), np.array([3, -1], dtype="<i8"), binary),
               Tensor("labels", "BYTES", (2,), (b"person", b""), binary)]
    body, headers = oip.encode({"model_name": "m"}, "outputs", tensors)
    assert (oip.HEADER_LENGTH in headers) is binary
    message = oip.decode(body, headers.get(oip.HEADER_LENGTH), "outputs")
    assert message.head == {"model_name": "m"}
    assert message.tensor("boxes").values.tolist() == list(range(8))
    assert message.tensor("ids").values.tolist() == [3, -1]
    assert message.tensor("labels").values == (b"person", b"")


@settings(max_examples=60, deadline=None)
@given(datatype=st.sampled_from(sorted(oip.NUMERIC)), shape=st.lists(st.integers(0, 4), max_size=3),
       binary=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_any_numeric_tensor_round_trips(datatype: str, shape: list[int], binary: bool, seed: int) -> None:
    dtype = np.dtype(oip.NUMERIC[datatype])
    count = int(np.prod(shape))
    raw = np.random.default_rng(seed).integers(0, 256, count * dtype.itemsize, dtype=np.uint8).tobytes()
    values = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "f":
        values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=-1.0)   # JSON has no NaN
    if dtype.kind == "b":
        values = np.frombuffer(raw, dtype="u1") % 2 == 1                  # a bool is one byte, 0 or 1
    body, headers = oip.encode({}, "outputs", [Tensor("t", datatype, tuple(shape), values, binary)])
    decoded = oip.decode(body, headers.get(oip.HEADER_LENGTH), "outputs").tensor("t")
    assert decoded.shape == tuple(shape) and np.array_equal(decoded.values, values)


def test_json_data_may_be_nested() -> None:
    body = json.dumps({"outputs": [{"name": "b", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    assert oip.decode(body.encode(), None, "outputs").tensor("b").values.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("body, header_length, error", [
    (b"{not json", None, "not valid JSON"),
    (b'{"inputs": 3}', None, "'inputs' list"),
    (b'{"inputs": []}', "99", "within the body"),
    (b'{"inputs": []}', "-1", "within the body"),
    (b'{"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]}', None, "unknown datatype"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}', None, "shape must be"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [4096, 4096, 4096], "data": []}]}', None,
     "exceed the limit"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}', None, "2 values for shape"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}', None, "not FP32 values"),
    (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]}', None, "must be strings"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [[[1]]]}]}', None, "nested deeper"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "no data"),
], ids=["json", "inputs-type", "header-past-body", "header-negative", "datatype", "shape", "too-many-elements",
        "count", "values", "bytes-as-numbers", "nesting", "no-data"])
def test_malformed_messages_are_refused_with_the_reason(body: bytes, header_length: str | None, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        oip.decode(body, header_length, "inputs")


def binary_body(entry: dict, payload: bytes) -> tuple[bytes, str]:
    head = json.dumps({"inputs": [entry]}).encode()
    return head + payload, str(len(head))


@pytest.mark.parametrize("entry, payload, error", [
    ({"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}, b"\0" * 4,
     "runs past the body"),
    ({"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}, b"\0" * 4,
     "4 bytes for 2 FP32"),
    ({"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
     struct.pack("<I", 9) + b"ab", "runs past its binary data"),
    ({"name": "x", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 5}},
     struct.pack("<I", 1) + b"a", "1 BYTES elements for 2"),
    ({"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 2}}, b"\0\0",
     "truncated BYTES element length"),
    ({"name": "x", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": 1}}, b"\0\0",
     "1 bytes after the last binary tensor"),
], ids=["size-past-body", "size-vs-shape", "element-past-data", "element-count", "truncated-length", "trailing"])
def test_malformed_binary_data_is_refused(entry: dict, payload: bytes, error: str) -> None:
    body, header_length = binary_body(entry, payload)
    with pytest.raises(ProtocolError, match=error):
        oip.decode(body, header_length, "inputs")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_image_may_come_raw_or_as_base64_text(binary: bool) -> None:
    if binary:
        assert oip.image_of_request(image_request(JPEG, binary=True)) == JPEG
    assert oip.image_of_request(image_request(base64.b64encode(JPEG), binary)) == JPEG
    assert oip.image_of_request(image_request(JPEG, binary, datatype="UINT8")) == JPEG


@pytest.mark.parametrize("request_message, error", [
    (lambda: image_request(b"not an image, not base64!", False), "neither a JPEG/PNG image nor its base64"),
    (lambda: Message({}, (Tensor("pixels", "BYTES", (1,), (JPEG,)),)), "takes one input 'image'"),
    (lambda: Message({}, ()), "got none"),
    (lambda: Message({}, (Tensor("image", "BYTES", (2,), (JPEG, JPEG)),)), "one element"),
    (lambda: Message({}, (Tensor("image", "FP32", (1,), np.zeros(1, "<f4")),)), "BYTES with one element"),
], ids=["garbage", "wrong-name", "no-input", "two-images", "wrong-type"])
def test_requests_that_do_not_fit_the_model_are_refused(request_message, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        oip.image_of_request(request_message())


def test_response_has_the_asked_outputs_binary_where_asked() -> None:
    request = image_request(JPEG, True, id="frame-7", outputs=[{"name": "labels"},
                                                               {"name": "boxes", "parameters": {"binary_data": True}}])
    body, headers = oip.detection_response("haar-face", request, [FACE], {"inference_ms": 5.0, "replica": "r1"})
    response = oip.decode(body, headers[oip.HEADER_LENGTH], "outputs")
    assert response.head == {"model_name": "haar-face", "model_version": "1", "id": "frame-7",
                             "parameters": {"inference_ms": 5.0, "replica": "r1"}}
    assert [(t.name, t.binary) for t in response.tensors] == [("labels", False), ("boxes", True)]
    assert response.tensor("boxes").values.tolist() == [10, 20, 30, 40]
    assert response.tensor("boxes").shape == (1, 4) and response.tensor("labels").values == (b"face",)


def test_all_outputs_by_default_and_binary_when_the_request_says_so() -> None:
    plain = oip.requested_outputs(image_request(JPEG, True))
    assert plain == (("boxes", False), ("scores", False), ("labels", False))
    binary = oip.requested_outputs(image_request(JPEG, True, parameters={"binary_data_output": True}))
    assert all(flag for _, flag in binary)
    with pytest.raises(ProtocolError, match="must be among"):
        oip.requested_outputs(image_request(JPEG, True, outputs=[{"name": "masks"}]))


def test_no_detections_is_an_empty_answer() -> None:
    body, headers = oip.detection_response("m", image_request(JPEG, True), [], {})
    model, detections, parameters = DetectionMapping("m").answer(body, headers.get(oip.HEADER_LENGTH))
    assert (model, detections, parameters) == ("m", (), {})


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_units_answer_maps_back_to_its_detections(binary: bool) -> None:
    mapping = DetectionMapping("haar-face", binary=binary)
    body, headers = mapping.request(JPEG)
    request = oip.decode(body, headers.get(oip.HEADER_LENGTH), "inputs")
    assert oip.image_of_request(request) == JPEG
    answer_body, answer_headers = oip.detection_response("haar-face", request, [FACE], {"replica": "edge-1"})
    model, detections, parameters = mapping.answer(answer_body, answer_headers.get(oip.HEADER_LENGTH))
    assert model == "haar-face" and parameters == {"replica": "edge-1"}
    [face] = detections
    assert face.label == "face" and face.score == pytest.approx(0.9) and face.box == FACE.box


def test_another_servers_names_corner_boxes_and_class_ids_are_mapped() -> None:
    mapping = DetectionMapping.parse("ssd", "input=images,input_type=UINT8,boxes=detection_boxes,"
                                            "scores=detection_scores,labels=detection_classes,box_format=xyxy,version=2",
                                     binary=False)
    assert mapping.infer_path == "/v2/models/ssd/versions/2/infer"
    assert mapping.ready_path == "/v2/models/ssd/versions/2/ready"
    request = oip.decode(mapping.request(JPEG)[0], None, "inputs")
    assert request.tensors[0].name == "images" and request.tensors[0].datatype == "UINT8"
    answer = {"model_name": "ssd", "outputs": [
        {"name": "detection_boxes", "datatype": "FP32", "shape": [1, 2, 4], "data": [10, 20, 40, 60, 0, 0, 1, 1]},
        {"name": "detection_scores", "datatype": "FP32", "shape": [1, 2], "data": [0.8, 0.3]},
        {"name": "detection_classes", "datatype": "INT32", "shape": [1, 2], "data": [17, 0]}]}
    _model, detections, _parameters = mapping.answer(json.dumps(answer).encode(), None)
    assert [(d.label, d.box) for d in detections] == [("17", (10, 20, 30, 40)), ("0", (0, 0, 1, 1))]


@pytest.mark.parametrize("outputs, error", [
    ([("boxes", "FP32", [3], [1, 2, 3])], "not boxes of 4"),
    ([("boxes", "FP32", [1, 4], [0, 0, 1, 1]), ("scores", "FP32", [2], [1, 1]), ("labels", "BYTES", [1], ["a"])],
     "1 boxes, 2 scores and 1 labels"),
    ([("boxes", "FP32", [1, 4], [0, 0, 1, 1]), ("labels", "BYTES", [1], ["a"])], "no tensor 'scores'"),
], ids=["not-boxes", "counts", "missing"])
def test_answers_that_do_not_fit_the_mapping_are_refused(outputs: list, error: str) -> None:
    body = json.dumps({"outputs": [{"name": n, "datatype": t, "shape": s, "data": d} for n, t, s, d in outputs]})
    with pytest.raises(ProtocolError, match=error):
        DetectionMapping("m").answer(body.encode(), None)


@pytest.mark.parametrize("model, spec, error", [
    ("", "", "model: expected"),
    ("a/b", "", "model: expected"),
    ("m", "boxes", "expected key=value"),
    ("m", "colour=red", "expected key=value"),
    ("m", "box_format=cxcywh", "box_format: expected one of xywh, xyxy"),
    ("m", "input_type=FP32", "input_type: expected BYTES or UINT8"),
    ("m", "labels=a b", "labels: expected"),
    ("m", "version=../1", "version: expected"),
])
def test_mapping_errors_name_the_key(model: str, spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        DetectionMapping.parse(model, spec)
