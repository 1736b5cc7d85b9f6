"""OpenVINO models (IR .xml/.bin or .onnx) on the CPU.

Supported output heads (anything else is refused at load time with the shapes it found):
- YOLO rows: one or more outputs shaped [1, N, 5+C] or [N, 5+C], each row
  (cx, cy, w, h in network-input pixels, objectness, C class probabilities); the score is
  objectness x class probability. This is the YOLOv5 export convention and what
  `edgeoffload.detect.darknet2ov` produces from a Darknet model.
- SSD DetectionOutput: one output [1, 1, N, 7] of
  (image_id, class_id, confidence, x_min, y_min, x_max, y_max) with coordinates in 0..1;
  the model's own NMS is trusted, class_id indexes the labels directly.
The model input must be one NCHW image, RGB scaled to 0..1; the pre-processing (u8 BGR NHWC
to that) is compiled into the model so it runs inside OpenVINO.

A compiled model is thread-safe; each concurrent detect() call borrows an infer request of its
own (created on demand, kept for reuse), so one instance serves all threads of a worker
(`thread_safe = True`). The requests belong to the detector and die with it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints
from openvino.preprocess import ColorFormat, PrePostProcessor

from edgeoffload.detect.base import DetectorConfig
from edgeoffload.detect.decode import ssd_rows, to_detections, yolo_rows
from edgeoffload.frames import Letterboxed, letterbox
from edgeoffload.records import Detection

SUPPORTED_HEADS = ("YOLO rows [1, N, 5+C] or [N, 5+C] (one or more outputs), "
                   "SSD DetectionOutput [1, 1, N, 7]")
_PRECISION_TYPES = {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}


class UnsupportedModelError(ValueError):
    """The model's inputs or outputs are not a layout this backend can decode."""


@dataclass(frozen=True, slots=True)
class HeadLayout:
    kind: str  # "yolo" | "ssd"
    outputs: int


def compile_model(config: DetectorConfig, core: ov.Core | None = None) -> tuple[ov.CompiledModel, tuple[int, int]]:
    """Read, add u8-BGR pre-processing, fix the input size, and compile for the CPU."""
    core = core or ov.Core()
    model = core.read_model(str(config.model_path))
    if len(model.inputs) != 1:
        raise UnsupportedModelError(f"expected one image input, model has {len(model.inputs)}")
    input_size = _static_input_size(model, config.input_size)
    width, height = input_size
    model.reshape({model.input(0): ov.PartialShape([1, 3, height, width])})
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).scale(255.0)
    model = ppp.build()
    return core.compile_model(model, "CPU", _compile_properties(config)), input_size


def _static_input_size(model: ov.Model, fallback: tuple[int, int]) -> tuple[int, int]:
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4:
        raise UnsupportedModelError(f"expected an NCHW image input, got shape {shape}")
    if shape[1].is_static and shape[1].get_length() != 3:
        raise UnsupportedModelError(f"expected 3 input channels (NCHW), got shape {shape}")
    if shape[2].is_static and shape[3].is_static:
        return int(shape[3].get_length()), int(shape[2].get_length())
    return fallback


def _compile_properties(config: DetectorConfig) -> dict[Any, Any]:
    properties: dict[Any, Any] = {props.inference_num_threads: config.threads}
    if config.performance_hint:
        properties[hints.performance_mode] = getattr(hints.PerformanceMode, config.performance_hint.upper())
    if config.precision:
        properties[hints.inference_precision] = _PRECISION_TYPES[config.precision.lower()]
    return properties


def head_layout(compiled: ov.CompiledModel) -> HeadLayout:
    """Which supported head the outputs form; UnsupportedModelError naming the shapes otherwise."""
    shapes = [tuple(output.get_partial_shape().to_shape()) if output.get_partial_shape().is_static else None
              for output in compiled.outputs]
    if len(shapes) == 1 and shapes[0] is not None and len(shapes[0]) == 4 and shapes[0][:2] == (1, 1) and shapes[0][3] == 7:
        return HeadLayout("ssd", 1)
    if shapes and all(s is not None and len(s) in (2, 3) and s[-1] > 5 and (len(s) == 2 or s[0] == 1) for s in shapes):
        if len({s[-1] for s in shapes}) == 1:  # type: ignore[index]
            return HeadLayout("yolo", len(shapes))
    raise UnsupportedModelError(f"unsupported output shape(s) {shapes}; supported heads: {SUPPORTED_HEADS}")


class OpenVINODetector:
    """detect() for one frame (latency); detect_many() keeps several requests in flight (throughput)."""

    thread_safe = True

    def __init__(self, compiled: ov.CompiledModel, input_size: tuple[int, int], *, name: str,
                 labels: tuple[str, ...], conf_threshold: float, nms_threshold: float) -> None:
        self.name = name
        self.input_size = input_size
        self.precision = compiled.get_property(hints.inference_precision).to_string()
        self._compiled = compiled
        self._layout = head_layout(compiled)
        self._labels = labels
        self._conf_threshold = conf_threshold
        self._nms_threshold = nms_threshold
        self._idle_requests: list[ov.InferRequest] = []
        self._lock = threading.Lock()

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        boxed = letterbox(image_bgr, self.input_size)
        with self._lock:
            request = self._idle_requests.pop() if self._idle_requests else self._compiled.create_infer_request()
        try:
            request.infer({0: boxed.image[np.newaxis]})
            outputs = [request.get_output_tensor(i).data for i in range(len(self._compiled.outputs))]
            return self._decode(outputs, boxed, image_bgr.shape)
        finally:
            with self._lock:
                self._idle_requests.append(request)

    def detect_many(self, images: Sequence[np.ndarray], jobs: int = 0) -> list[list[Detection]]:
        """Detections per image, running up to `jobs` (0 = OpenVINO's optimum) inferences at once.

        Results are harvested on this thread when a request comes back idle, not in an
        AsyncInferQueue callback: Python callbacks run on OpenVINO's own threads, and a garbage
        collection triggered there can free an OpenVINO object whose destructor then joins the
        very thread it runs on (std::system_error "Resource deadlock avoided", process abort).
        """
        queue = ov.AsyncInferQueue(self._compiled, jobs)
        owner: list[int | None] = [None] * len(queue)
        boxed: list[Letterboxed | None] = [None] * len(images)
        results: list[list[Detection]] = [[] for _ in images]

        def harvest(slot: int) -> None:
            index = owner[slot]
            if index is not None:
                request = queue[slot]
                outputs = [request.get_output_tensor(i).data for i in range(len(self._compiled.outputs))]
                results[index] = self._decode(outputs, boxed[index], images[index].shape)  # type: ignore[arg-type]
                owner[slot] = None

        for index, image in enumerate(images):
            boxed[index] = letterbox(image, self.input_size)
            slot = queue.get_idle_request_id()  # blocks until a request is free; start_async takes that one
            harvest(slot)
            owner[slot] = index
            queue.start_async({0: boxed[index].image[np.newaxis]})  # type: ignore[union-attr]
        queue.wait_all()
        for slot in range(len(queue)):
            harvest(slot)
        return results

    def _decode(self, outputs: list[np.ndarray], boxed: Letterboxed, shape: tuple[int, ...]) -> list[Detection]:
        if self._layout.kind == "ssd":
            boxes, scores, class_ids = ssd_rows(outputs[0], self.input_size)
            nms = None
        else:
            rows = np.concatenate([out.reshape(-1, out.shape[-1]) for out in outputs], axis=0)
            boxes, scores, class_ids = yolo_rows(rows, self.input_size, normalized=False, objectness_in_scores=False)
            nms = self._nms_threshold
        return to_detections(boxes, scores, class_ids, letterboxed=boxed, original_shape=shape, labels=self._labels,
                             conf_threshold=self._conf_threshold, nms_threshold=nms)


def model_name(path: str | Path) -> str:
    return f"openvino:{Path(path).stem}"
