"""The Detector protocol every backend implements, and the settings that select and tune one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edgeoffload.records import Detection

KINDS: tuple[str, ...] = ("haar-face", "hog-people", "darknet", "openvino")
PRECISIONS: tuple[str, ...] = ("", "f32", "bf16", "f16")
PERFORMANCE_HINTS: tuple[str, ...] = ("", "LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@runtime_checkable
class Detector(Protocol):
    """Finds objects in one BGR frame; boxes come back in that frame's pixels (x, y, w, h).

    `input_size` is the (width, height) the model runs at, or None when it runs on the frame as is.
    Instances are not assumed thread-safe: a backend that is sets `thread_safe = True`, and
    DetectorPool then shares one instance instead of building one per thread.
    """

    name: str
    input_size: tuple[int, int] | None

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


class DetectorConfigError(ValueError):
    """A detector setting is invalid; `field` names it so callers can name their own variable."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Which detector to build and how.

    kind: haar-face | hog-people (built into OpenCV, no files needed) | darknet | openvino.
    model_path: darknet .weights, OpenVINO IR .xml or .onnx; for haar-face an optional cascade XML.
    config_path: darknet .cfg. labels_path: one label per line (default: the 80 COCO labels).
    input_size: (width, height) the frame is letterboxed to (OpenVINO uses the model's own
    static size when it has one). threads: cv2.setNumThreads / OpenVINO INFERENCE_NUM_THREADS
    per instance. precision: OpenVINO INFERENCE_PRECISION_HINT ("" = the device default, BF16 on
    CPUs with AMX/AVX512-BF16). performance_hint: OpenVINO PERFORMANCE_HINT ("" = default).
    """

    kind: str = "haar-face"
    model_path: str | None = None
    config_path: str | None = None
    labels_path: str | None = None
    input_size: tuple[int, int] = (416, 416)
    conf_threshold: float = 0.25
    nms_threshold: float = 0.45
    threads: int = 1
    precision: str = ""
    performance_hint: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DetectorConfigError("kind", f"unknown detector {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.kind in ("darknet", "openvino") and not self.model_path:
            raise DetectorConfigError("model_path", f"the {self.kind} detector needs a model file")
        if self.kind == "darknet" and not self.config_path:
            raise DetectorConfigError("config_path", "the darknet detector needs its .cfg file")
        if len(self.input_size) != 2 or min(self.input_size) < 32 or max(self.input_size) > 4096:
            raise DetectorConfigError("input_size", f"expected WIDTHxHEIGHT within 32..4096, got {self.input_size}")
        for name in ("conf_threshold", "nms_threshold"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise DetectorConfigError(name, f"must be in (0, 1], got {value}")
        if not 1 <= self.threads <= 256:
            raise DetectorConfigError("threads", f"must be 1..256, got {self.threads}")
        if self.precision.lower() not in PRECISIONS:
            raise DetectorConfigError("precision", f"choose from {', '.join(p or '(default)' for p in PRECISIONS)}")
        if self.performance_hint.upper() not in PERFORMANCE_HINTS:
            raise DetectorConfigError("performance_hint",
                                      f"choose from {', '.join(h or '(default)' for h in PERFORMANCE_HINTS)}")
