"""YOLO Darknet models (.cfg + .weights) run with OpenCV DNN.

The files are read once by the factory; every instance parses its own cv2.dnn.Net from those
bytes, because a Net is not thread-safe and each serving thread needs its own.
"""
from __future__ import annotations

import cv2
import numpy as np

from edgeoffload.detect.decode import to_detections, yolo_rows
from edgeoffload.frames import letterbox
from edgeoffload.records import Detection


class DarknetDetector:
    """YOLOv3/v4(-tiny)-style network; forwards every unconnected [yolo] output layer."""

    def __init__(self, cfg: bytes, weights: bytes, *, name: str, labels: tuple[str, ...],
                 input_size: tuple[int, int], conf_threshold: float, nms_threshold: float) -> None:
        self.name = name
        self.input_size = input_size
        self._labels = labels
        self._conf_threshold = conf_threshold
        self._nms_threshold = nms_threshold
        self._net = cv2.dnn.readNetFromDarknet(np.frombuffer(cfg, np.uint8), np.frombuffer(weights, np.uint8))
        self._net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self._net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self._outputs = list(self._net.getUnconnectedOutLayersNames())

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        boxed = letterbox(image_bgr, self.input_size)
        blob = cv2.dnn.blobFromImage(boxed.image, 1 / 255.0, self.input_size, swapRB=True, crop=False)
        self._net.setInput(blob)
        heads = self._net.forward(self._outputs)
        rows = np.concatenate([head.reshape(-1, head.shape[-1]) for head in heads], axis=0)
        boxes, scores, class_ids = yolo_rows(rows, self.input_size, normalized=True, objectness_in_scores=True)
        return to_detections(boxes, scores, class_ids, letterboxed=boxed, original_shape=image_bgr.shape,
                             labels=self._labels, conf_threshold=self._conf_threshold,
                             nms_threshold=self._nms_threshold)
