"""Object detectors behind one protocol: OpenCV built-ins, Darknet via OpenCV DNN, OpenVINO.

`load_detector(config)` builds one instance; `detector_factory(config)` reads the model files
once and returns a constructor, which `DetectorPool` calls once per serving thread.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2

from edgeoffload.detect.base import Detector, DetectorConfig, DetectorConfigError
from edgeoffload.detect.labels import COCO_LABELS, load_labels
from edgeoffload.detect.pool import DetectorPool, PoolExhausted


def detector_factory(config: DetectorConfig) -> Callable[[], Detector]:
    """Read the model files now (errors surface here) and return a cheap per-instance constructor."""
    cv2.setNumThreads(config.threads)
    if config.kind == "haar-face":
        from edgeoffload.detect.builtin import DEFAULT_FACE_CASCADE, HaarFaceDetector

        cascade_path = config.model_path or DEFAULT_FACE_CASCADE
        cascade_xml = _read(cascade_path, "model_path").decode("utf-8")
        name = "haar-face" if not config.model_path else f"haar:{Path(cascade_path).stem}"
        return lambda: HaarFaceDetector(cascade_xml, name=name)
    if config.kind == "hog-people":
        from edgeoffload.detect.builtin import HogPeopleDetector

        return HogPeopleDetector
    labels = load_labels(config.labels_path)
    if config.kind == "darknet":
        from edgeoffload.detect.darknet import DarknetDetector
        from edgeoffload.detect.darknet_cfg import check_weights

        cfg = _read(config.config_path, "config_path")
        weights = _read(config.model_path, "model_path")
        try:
            check_weights(cfg.decode("utf-8", errors="replace"), weights)
        except ValueError as exc:
            raise DetectorConfigError("model_path", f"{config.model_path}: {exc}") from None
        name = f"darknet:{Path(str(config.model_path)).stem}"
        return lambda: DarknetDetector(cfg, weights, name=name, labels=labels, input_size=config.input_size,
                                       conf_threshold=config.conf_threshold, nms_threshold=config.nms_threshold)
    from edgeoffload.detect.openvino import OpenVINODetector, compile_model, model_name

    _require_file(config.model_path, "model_path")
    compiled, input_size = compile_model(config)
    return lambda: OpenVINODetector(compiled, input_size, name=model_name(str(config.model_path)), labels=labels,
                                    conf_threshold=config.conf_threshold, nms_threshold=config.nms_threshold)


def load_detector(config: DetectorConfig) -> Detector:
    """One detector instance (not to be shared between threads unless it says `thread_safe`)."""
    return detector_factory(config)()


def load_pool(config: DetectorConfig, size: int) -> DetectorPool:
    """`size` instances for `size` concurrent threads (one shared instance if thread-safe)."""
    return DetectorPool(detector_factory(config), size)


def _require_file(path: str | None, field: str) -> Path:
    if not path or not Path(path).exists():
        raise DetectorConfigError(field, f"file not found: {path}")
    return Path(path)


def _read(path: str | None, field: str) -> bytes:
    """The whole file (read once, then shared by every instance built from it)."""
    return _require_file(path, field).read_bytes()


__all__ = ["Detector", "DetectorConfig", "DetectorConfigError", "DetectorPool", "PoolExhausted",
           "COCO_LABELS", "detector_factory", "load_detector", "load_pool"]
