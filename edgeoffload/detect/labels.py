"""Class labels: the 80 COCO names shipped as a constant, or one label per line from a file."""
from __future__ import annotations

from pathlib import Path

COCO_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa", "pottedplant", "bed",
    "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def load_labels(path: str | Path | None) -> tuple[str, ...]:
    """Labels from a text file (one per line, blank lines ignored); COCO when no path is given."""
    if path is None or str(path) == "":
        return COCO_LABELS
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise ValueError(f"labels file {path} holds no labels")
    return labels


def label_of(labels: tuple[str, ...], class_id: int) -> str:
    """The name of `class_id`, or `class_<id>` when the model has more classes than names."""
    return labels[class_id] if 0 <= class_id < len(labels) else f"class_{class_id}"
