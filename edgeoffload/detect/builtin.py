"""Detectors built into OpenCV: Haar frontal faces and HOG people. They need no download,
which makes them the default for demos and the fast path for tests.

Scores are the detectors' own confidences (Haar: weight of the last cascade stage, HOG: SVM
margin); they rank detections but are not probabilities.
"""
from __future__ import annotations

import cv2
import numpy as np

from edgeoffload.detect.decode import clip_box
from edgeoffload.records import Detection

DEFAULT_FACE_CASCADE = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"


def read_cascade(xml_text: str) -> cv2.CascadeClassifier:
    """A cascade from XML text (read once by the factory, then shared by every instance)."""
    classifier = cv2.CascadeClassifier()
    try:  # the bindings raise SystemError (wrapping cv2.error) for text that is not FileStorage
        storage = cv2.FileStorage(xml_text, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
        loaded = classifier.read(storage.getFirstTopLevelNode())
    except (cv2.error, SystemError) as exc:
        raise ValueError(f"not a valid OpenCV cascade classifier XML: {exc}") from None
    if not loaded or classifier.empty():
        raise ValueError("not a valid OpenCV cascade classifier XML")
    return classifier


class HaarFaceDetector:
    """Viola-Jones frontal faces on the grayscale, histogram-equalised frame."""

    input_size = None

    def __init__(self, cascade_xml: str, name: str = "haar-face", min_size: int = 24) -> None:
        self.name = name
        self._cascade = read_cascade(cascade_xml)
        self._min_size = (min_size, min_size)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        gray = cv2.equalizeHist(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY))
        boxes, _levels, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=self._min_size, outputRejectLevels=True)
        return _detections("face", boxes, weights, image_bgr.shape)


class HogPeopleDetector:
    """Dalal-Triggs HOG + linear SVM pedestrians (OpenCV's default people detector)."""

    name = "hog-people"
    input_size = None

    def __init__(self) -> None:
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        boxes, weights = self._hog.detectMultiScale(image_bgr, winStride=(8, 8), padding=(8, 8), scale=1.05)
        return _detections("person", boxes, weights, image_bgr.shape)


def _detections(label: str, boxes: np.ndarray, weights: np.ndarray, shape: tuple[int, ...]) -> list[Detection]:
    height, width = shape[:2]
    scores = np.asarray(weights, dtype=np.float64).reshape(-1)
    found = [Detection(label, float(score), clip_box(tuple(float(v) for v in box), width, height))
             for box, score in zip(np.asarray(boxes).reshape(-1, 4), scores)]
    return sorted(found, key=lambda d: -d.score)
