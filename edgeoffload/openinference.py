"""The Open Inference Protocol (KServe v2) over REST, for detectors: both ends.

Triton, OpenVINO Model Server, KServe and MLServer speak this protocol. The inference unit
serves it beside its native `/infer` (edgeoffload.units.inference), and the preprocessor
speaks it to a site whose protocol is `v2` (edgeoffload.offload), so either end can be one of
those servers. This module holds the wire format once:

- tensors: JSON `data` (a row-major list, nested or flat) or the binary tensor data
  extension (a JSON header of `Inference-Header-Content-Length` bytes, then each binary
  tensor's bytes in order, named by its `binary_data_size` parameter; a BYTES element is a
  4-byte little-endian length and its bytes);
- the detector's model: one input, the encoded image (JPEG/PNG), and three outputs
  (`boxes`, `scores`, `labels`), see `model_metadata`;
- `DetectionMapping`: how the preprocessor asks another server's model and reads its answer
  (input name and type, output names, box format, JSON or binary).

An encoded image does not fit in a JSON string, so a BYTES element in JSON carries its base64
text; in binary it is the raw bytes. A unit accepts either in both forms.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edgeoffload.records import Detection

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
EXTENSIONS = ("binary_tensor_data",)
MODEL_VERSION = "1"
IMAGE_INPUT = "image"
BOXES, SCORES, LABELS = "boxes", "scores", "labels"
BOX_FORMATS = ("xywh", "xyxy")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")     # model names and versions: URL path segments
TENSOR_NAME_PATTERN = re.compile(r"[^\s,=]{1,128}")                # e.g. ONNX's "detection_boxes:0"
MAX_ELEMENTS = 1 << 24          # elements in one tensor: far beyond any detector's answer
# numpy dtype of each numeric datatype, little-endian as the binary extension sends it
NUMERIC = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1",
           "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
DATATYPES = (*NUMERIC, "BYTES")
_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n")


class ProtocolError(ValueError):
    """A message that breaks the protocol or the model's signature (400 at a unit, bad_response at a caller)."""


@dataclass(frozen=True, slots=True)
class Tensor:
    """One named tensor; `values` is flat and row-major: an ndarray, or a tuple of bytes for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: Any
    binary: bool = False             # sent with the binary tensor data extension

    def head(self, binary_size: int = 0) -> dict[str, Any]:
        """The tensor's JSON entry: its data, or when binary the size of its `raw()` bytes."""
        entry: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.binary:
            entry["parameters"] = {"binary_data_size": binary_size}
        elif self.datatype == "BYTES":
            entry["data"] = [value.decode("utf-8") for value in self.values]
        else:
            entry["data"] = self.values.tolist()
        return entry

    def raw(self) -> bytes:
        """The binary extension's bytes of this tensor."""
        if self.datatype == "BYTES":
            return b"".join(struct.pack("<I", len(value)) + value for value in self.values)
        return np.ascontiguousarray(self.values, dtype=NUMERIC[self.datatype]).tobytes()


@dataclass(frozen=True, slots=True)
class Message:
    """A request or a response: its JSON object (without tensors) and its tensors in order."""

    head: dict[str, Any]
    tensors: tuple[Tensor, ...]

    def tensor(self, name: str) -> Tensor:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise ProtocolError(f"no tensor {name!r} (got {', '.join(t.name for t in self.tensors) or 'none'})")


# -- wire format ------------------------------------------------------------------------------
def encode(head: Mapping[str, Any], key: str, tensors: Iterable[Tensor]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a message whose tensors go under `key` ("inputs" or "outputs")."""
    tensors = tuple(tensors)
    binary = [tensor.raw() if tensor.binary else b"" for tensor in tensors]
    entries = [tensor.head(len(raw)) for tensor, raw in zip(tensors, binary)]
    document = json.dumps({**head, key: entries}, separators=(",", ":")).encode()
    if not any(tensor.binary for tensor in tensors):
        return document, {"Content-Type": JSON_TYPE}
    return b"".join([document, *binary]), {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(document))}


def decode(body: bytes, header_length: str | None, key: str) -> Message:
    """Parse a message; `header_length` is the Inference-Header-Content-Length header, if any."""
    json_length = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} must be a byte count within the body ({len(body)} bytes), "
                                f"got {header_length[:32]!r}")
        json_length = int(header_length)
    try:
        head = json.loads(body[:json_length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the JSON part is not valid JSON: {exc}"[:200]) from None
    if not isinstance(head, dict) or not isinstance(head.get(key), list):
        raise ProtocolError(f"expected a JSON object with an {key!r} list")
    offset, tensors = json_length, []
    for entry in head.pop(key):
        tensor, offset = _tensor(entry, body, offset)
        tensors.append(tensor)
    if offset != len(body):
        raise ProtocolError(f"{len(body) - offset} bytes after the last binary tensor")
    return Message(head, tuple(tensors))


def _tensor(entry: Any, body: bytes, offset: int) -> tuple[Tensor, int]:
    """One tensor from its JSON entry, its data in JSON or at `offset` of the body; and the next offset."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError("every tensor must be an object with a name")
    name, datatype, shape = entry["name"][:128], entry.get("datatype"), entry.get("shape")
    if datatype not in DATATYPES:
        raise ProtocolError(f"tensor {name!r}: unknown datatype {str(datatype)[:32]!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape) or len(shape) > 8:
        raise ProtocolError(f"tensor {name!r}: shape must be a list of at most 8 sizes >= 0")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"tensor {name!r}: {count} elements exceed the limit of {MAX_ELEMENTS}")
    parameters = entry.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise ProtocolError(f"tensor {name!r}: binary_data_size {size!r} runs past the body")
        values = _from_raw(name, datatype, body[offset:offset + size], count)
        return Tensor(name, datatype, tuple(shape), values, binary=True), offset + size
    if "data" not in entry:
        raise ProtocolError(f"tensor {name!r}: no data and no binary_data_size")
    flat = _flatten(entry["data"], len(shape))
    if len(flat) != count:
        raise ProtocolError(f"tensor {name!r}: {len(flat)} values for shape {shape}")
    if datatype == "BYTES":
        if not all(isinstance(value, str) for value in flat):
            raise ProtocolError(f"tensor {name!r}: BYTES data in JSON must be strings")
        return Tensor(name, datatype, tuple(shape), tuple(value.encode("utf-8") for value in flat)), offset
    try:
        values = np.asarray(flat, dtype=NUMERIC[datatype])
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"tensor {name!r}: data are not {datatype} values") from None
    return Tensor(name, datatype, tuple(shape), values), offset


def _flatten(data: Any, depth: int) -> list[Any]:
    """Row-major values of nested lists at most `depth` deep (the protocol allows both forms)."""
    if not isinstance(data, list):
        raise ProtocolError("tensor data must be a list")
    flat: list[Any] = []
    for value in data:
        if isinstance(value, list):
            if depth <= 1:
                raise ProtocolError("tensor data nested deeper than its shape")
            flat.extend(_flatten(value, depth - 1))
        else:
            flat.append(value)
    return flat


def _from_raw(name: str, datatype: str, raw: bytes, count: int) -> Any:
    if datatype != "BYTES":
        itemsize = np.dtype(NUMERIC[datatype]).itemsize
        if len(raw) != count * itemsize:
            raise ProtocolError(f"tensor {name!r}: {len(raw)} bytes for {count} {datatype} values")
        return np.frombuffer(raw, dtype=NUMERIC[datatype])
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"tensor {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise ProtocolError(f"tensor {name!r}: BYTES element runs past its binary data")
        values.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    if len(values) != count:
        raise ProtocolError(f"tensor {name!r}: {len(values)} BYTES elements for {count} in its shape")
    return tuple(values)


def encoded_image(tensor: Tensor) -> bytes:
    """The encoded image an input carries: BYTES (one element: the image or its base64 text) or UINT8."""
    if tensor.datatype == "UINT8":
        return tensor.values.tobytes()
    if tensor.datatype != "BYTES" or len(tensor.values) != 1:
        raise ProtocolError(f"input {tensor.name!r} must be BYTES with one element (the encoded image) or "
                            f"UINT8 (its bytes), got {tensor.datatype} shape {list(tensor.shape)}")
    [value] = tensor.values
    if value.startswith(_IMAGE_MAGIC):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"input {tensor.name!r} is neither a JPEG/PNG image nor its base64 text") from None


# -- the detector's model, as a unit serves it --------------------------------------------------
def model_metadata(name: str) -> dict[str, Any]:
    """`GET /v2/models/{name}`: one encoded image in, detections out (boxes in pixels of that image)."""
    return {"name": name, "versions": [MODEL_VERSION], "platform": "edgeoffload",
            "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": BOXES, "datatype": "FP32", "shape": [-1, 4]},
                        {"name": SCORES, "datatype": "FP32", "shape": [-1]},
                        {"name": LABELS, "datatype": "BYTES", "shape": [-1]}]}


def image_of_request(request: Message) -> bytes:
    """The encoded image of an infer request to the unit's model; ProtocolError names what is wrong."""
    if len(request.tensors) != 1 or request.tensors[0].name != IMAGE_INPUT:
        names = ", ".join(repr(t.name) for t in request.tensors) or "none"
        raise ProtocolError(f"the model takes one input {IMAGE_INPUT!r} (BYTES, shape [1]: the encoded image), "
                            f"got {names}")
    return encoded_image(request.tensors[0])


def requested_outputs(request: Message) -> tuple[tuple[str, bool], ...]:
    """(name, binary) of each output an infer request asks for: all three when it names none."""
    binary_default = bool(_parameters(request.head).get("binary_data_output", False))
    wanted = request.head.get("outputs")
    if wanted is None:
        wanted = [{"name": name} for name in (BOXES, SCORES, LABELS)]
    if not isinstance(wanted, list) or not all(isinstance(w, dict) and w.get("name") in (BOXES, SCORES, LABELS)
                                               for w in wanted):
        raise ProtocolError(f"requested outputs must be among {BOXES}, {SCORES}, {LABELS}")
    return tuple((w["name"], bool(_parameters(w).get("binary_data", binary_default))) for w in wanted)


def detection_response(model: str, request: Message, detections: Sequence[Detection],
                       parameters: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The infer response for `detections`, with the outputs the request asks for, binary where it asks."""
    count = len(detections)
    outputs = {BOXES: Tensor(BOXES, "FP32", (count, 4), np.array([d.box for d in detections], dtype="<f4").reshape(-1)),
               SCORES: Tensor(SCORES, "FP32", (count,), np.array([d.score for d in detections], dtype="<f4")),
               LABELS: Tensor(LABELS, "BYTES", (count,), tuple(d.label.encode("utf-8") for d in detections))}
    head: dict[str, Any] = {"model_name": model, "model_version": MODEL_VERSION, "parameters": dict(parameters)}
    if isinstance(request.head.get("id"), str):
        head["id"] = request.head["id"][:256]
    chosen = (replace(outputs[name], binary=binary) for name, binary in requested_outputs(request))
    return encode(head, "outputs", chosen)


def _parameters(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    parameters = entry.get("parameters")
    return parameters if isinstance(parameters, dict) else {}


# -- calling another server's model (the preprocessor's side) ---------------------------------
@dataclass(frozen=True, slots=True)
class DetectionMapping:
    """How a detector served over the protocol is asked and answered; the defaults fit a unit.

    The model must answer decoded detections (after non-maximum suppression), boxes in pixels
    of the image it was sent: raw network heads (e.g. YOLO's grids) are not decoded here.
    """

    model: str
    version: str = ""
    input: str = IMAGE_INPUT
    input_type: str = "BYTES"        # BYTES (one element: the encoded image) or UINT8 (its bytes)
    boxes: str = BOXES
    scores: str = SCORES
    labels: str = LABELS             # BYTES label names, or numeric class ids (named by their number)
    box_format: str = "xywh"         # xywh (x, y, width, height) or xyxy (corners)
    binary: bool = True              # binary tensor data extension; else JSON (BYTES as base64 text)
    infer_path: str = field(init=False, default="")
    ready_path: str = field(init=False, default="")

    def __post_init__(self) -> None:
        for key in ("model", "version"):
            if (key == "model" or self.version) and not NAME_PATTERN.fullmatch(getattr(self, key)):
                raise ValueError(f"{key}: expected 1-128 letters, digits, _ . - (a URL path segment), "
                                 f"got {getattr(self, key)!r}")
        for key in ("input", "boxes", "scores", "labels"):
            if not TENSOR_NAME_PATTERN.fullmatch(getattr(self, key)):
                raise ValueError(f"{key}: expected a tensor name (1-128 characters, no space, comma or =), "
                                 f"got {getattr(self, key)!r}")
        if self.input_type not in ("BYTES", "UINT8"):
            raise ValueError(f"input_type: expected BYTES or UINT8, got {self.input_type!r}")
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"box_format: expected one of {', '.join(BOX_FORMATS)}, got {self.box_format!r}")
        model_path = f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "")
        object.__setattr__(self, "infer_path", model_path + "/infer")
        object.__setattr__(self, "ready_path", model_path + "/ready")

    @classmethod
    def parse(cls, model: str, spec: str = "", binary: bool = True) -> "DetectionMapping":
        """From a model name and `key=value,...` (keys: the fields after `model`); ValueError names the key."""
        known = {f.name for f in fields(cls) if f.init} - {"model", "binary"}
        values: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in known:
                raise ValueError(f"{item!r}: expected key=value with a key among {', '.join(sorted(known))}")
            values[key.strip()] = value.strip()
        return cls(model=model, binary=binary, **values)

    def request(self, image: bytes) -> tuple[bytes, dict[str, str]]:
        """(body, headers) asking the model about one encoded image."""
        if self.input_type == "UINT8":
            tensor = Tensor(self.input, "UINT8", (len(image),), np.frombuffer(image, dtype="u1"), self.binary)
        else:
            tensor = Tensor(self.input, "BYTES", (1,), (image if self.binary else base64.b64encode(image),),
                            self.binary)
        outputs = [{"name": name} for name in (self.boxes, self.scores, self.labels)]
        return encode({"outputs": outputs}, "inputs", [tensor])

    def answer(self, body: bytes, header_length: str | None) -> tuple[str, tuple[Detection, ...], dict[str, Any]]:
        """(model name, detections, response parameters) of an infer response."""
        response = decode(body, header_length, "outputs")
        boxes = np.asarray(response.tensor(self.boxes).values, dtype=float)
        if boxes.size % 4:
            raise ProtocolError(f"output {self.boxes!r}: {boxes.size} values are not boxes of 4")
        boxes = boxes.reshape(-1, 4)
        if self.box_format == "xyxy":
            boxes = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        scores = response.tensor(self.scores).values
        labels = response.tensor(self.labels)
        if not len(scores) == len(labels.values) == len(boxes):
            raise ProtocolError(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels.values)} labels")
        if not np.isfinite(boxes).all() or not np.isfinite(np.asarray(scores, dtype=float)).all():
            raise ProtocolError("boxes and scores must be finite")
        names = [_label(value) for value in labels.values]
        detections = tuple(Detection(name, float(score), tuple(float(v) for v in box))  # type: ignore[arg-type]
                           for name, score, box in zip(names, scores, boxes))
        model = response.head.get("model_name")
        return (model if isinstance(model, str) else self.model)[:253], detections, dict(_parameters(response.head))


def _label(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")[:128]
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


__all__ = ["HEADER_LENGTH", "JSON_TYPE", "BINARY_TYPE", "EXTENSIONS", "MODEL_VERSION", "IMAGE_INPUT", "NAME_PATTERN",
           "ProtocolError", "Tensor", "Message", "encode", "decode", "encoded_image", "model_metadata",
           "image_of_request", "requested_outputs", "detection_response", "DetectionMapping"]
