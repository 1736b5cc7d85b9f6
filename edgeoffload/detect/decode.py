"""Turn raw detection-head outputs into Detections in original-frame pixels.

Shared by the Darknet (OpenCV DNN) and OpenVINO backends so both map boxes the same way:
decode in network-input pixels, class-wise NMS, then undo the letterbox.
"""
from __future__ import annotations

import cv2
import numpy as np

from edgeoffload.detect.labels import label_of
from edgeoffload.frames import Letterboxed
from edgeoffload.records import Detection


def yolo_rows(rows: np.ndarray, input_size: tuple[int, int], *, normalized: bool,
              objectness_in_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes xywh in input pixels, scores, class ids) from rows [cx, cy, w, h, obj, class...].

    Darknet via OpenCV gives normalized centres and class scores already multiplied by
    objectness; YOLOv5-style exports give pixels and separate objectness.
    """
    rows = rows.reshape(-1, rows.shape[-1]).astype(np.float32, copy=False)
    class_scores = rows[:, 5:] if objectness_in_scores else rows[:, 5:] * rows[:, 4:5]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), class_ids]
    centres, sizes = rows[:, 0:2].copy(), rows[:, 2:4].copy()
    if normalized:
        scale = np.array(input_size, dtype=np.float32)
        centres *= scale
        sizes *= scale
    boxes = np.concatenate([centres - sizes / 2, sizes], axis=1)
    return boxes, scores, class_ids


def ssd_rows(output: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, class ids) from a DetectionOutput head [1, 1, N, 7]:
    [image_id, label, confidence, x_min, y_min, x_max, y_max] with coordinates in 0..1.
    Rows with image_id < 0 terminate the list (OpenVINO convention)."""
    rows = output.reshape(-1, 7).astype(np.float32, copy=False)
    valid = rows[:, 0] >= 0
    rows = rows[np.cumprod(valid).astype(bool)]
    width, height = input_size
    x0, y0 = rows[:, 3] * width, rows[:, 4] * height
    x1, y1 = rows[:, 5] * width, rows[:, 6] * height
    boxes = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    return boxes, rows[:, 2], rows[:, 1].astype(np.int64)


def to_detections(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, *,
                  letterboxed: Letterboxed, original_shape: tuple[int, ...], labels: tuple[str, ...],
                  conf_threshold: float, nms_threshold: float | None) -> list[Detection]:
    """Threshold, class-wise NMS (skipped when nms_threshold is None), map back and clip to the frame."""
    keep = scores >= conf_threshold
    boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
    if len(scores) == 0:
        return []
    if nms_threshold is not None:
        picked = cv2.dnn.NMSBoxesBatched(boxes.tolist(), scores.tolist(), class_ids.tolist(),
                                         conf_threshold, nms_threshold)
        order = np.asarray(picked, dtype=np.int64).reshape(-1)
    else:
        order = np.arange(len(scores))
    order = order[np.argsort(-scores[order], kind="stable")]
    frame_h, frame_w = original_shape[:2]
    detections = []
    for index in order:
        box = clip_box(letterboxed.to_original(tuple(boxes[index])), frame_w, frame_h)
        if box[2] > 0 and box[3] > 0:
            detections.append(Detection(label_of(labels, int(class_ids[index])), float(scores[index]), box))
    return detections


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """Clip (x, y, w, h) to the frame so every box lies inside the image it describes."""
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(float(width), float(box[0] + box[2])), min(float(height), float(box[1] + box[3]))
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))
