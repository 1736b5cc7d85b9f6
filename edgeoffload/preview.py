"""Camera previews for the live page: now and then, a small copy of a processed frame.

Records carry box coordinates, never pixels: they go at QoS 1 to every subscriber and into
files. A person watching the page still wants to see what the cameras see, so the
preprocessor also publishes, at most `fps` times a second per camera, a frame it processed,
shrunk to `width` pixels and JPEG-encoded, together with that frame's detections mapped onto
it, its site and the replica that answered. The transport is MQTT, beside the records:

- topic `edgeoffload/previews/<camera>`, under the broker's ACL like every other topic (the
  preprocessor writes, the webserver and monitor read), so no new port, route or credential;
- QoS 0 and not buffered: a lost preview is replaced by the next one, and a preview never
  takes the room that records need while the broker is away;
- retained: a webserver that starts (or restarts) later shows every camera's last frame at
  once, and the broker holds at most one preview per camera.

Bounds: width <= MAX_WIDTH, the JPEG <= `max_bytes` (re-encoded once at a lower quality,
else skipped), at most MAX_DETECTIONS boxes; the webserver checks all of it again, since a
payload on the broker is untrusted. `PRE_PREVIEW=false` turns previews off.
"""
from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from edgeoffload.frames import encode_jpeg
from edgeoffload.messaging import json_object
from edgeoffload.records import Detection, FrameRecord

MAX_WIDTH = 640               # previews are thumbnails: wider ones are refused
MAX_HEIGHT = 640
MAX_JPEG_BYTES = 128 * 1024   # what a receiver accepts (the broker's packet limit is 256 KiB)
MAX_DETECTIONS = 100
MAX_NAME = 253                # a pod name
JPEG_START = b"\xff\xd8\xff"
QUALITIES = (70, 45)          # the second only when the first exceeds max_bytes
ANSWERING_SITES = ("edge", "cloud")   # only answered frames have previews


@dataclass(frozen=True, slots=True)
class PreviewSettings:
    """How often and how large; the preprocessor reads them as PRE_PREVIEW*."""

    enabled: bool = True
    width: int = 320
    fps: float = 2.0
    max_bytes: int = 48 * 1024

    def problems(self) -> list[str]:
        """What is out of bounds, as `SETTING: message` (empty when valid)."""
        problems = []
        if not 16 <= self.width <= MAX_WIDTH:
            problems.append(f"WIDTH: must be 16..{MAX_WIDTH}, got {self.width}")
        if not 0 < self.fps <= 10:
            problems.append(f"FPS: must be in (0, 10], got {self.fps}")
        if not 1024 <= self.max_bytes <= MAX_JPEG_BYTES:
            problems.append(f"MAX_BYTES: must be 1024..{MAX_JPEG_BYTES}, got {self.max_bytes}")
        return problems


@dataclass(frozen=True, slots=True)
class Preview:
    """One shrunk frame and what was found in it; boxes are in the preview's pixels."""

    camera: str
    frame_id: int
    site: str
    replica: str
    model: str
    width: int
    height: int
    detections: tuple[Detection, ...]
    jpeg: bytes

    def meta(self) -> dict[str, Any]:
        """Everything but the pixels (for the page's JSON; the JPEG has a route of its own)."""
        return {"camera": self.camera, "frame_id": self.frame_id, "site": self.site, "replica": self.replica,
                "model": self.model, "width": self.width, "height": self.height,
                "detections": [d.to_dict() for d in self.detections], "bytes": len(self.jpeg)}

    def to_json(self) -> bytes:
        return json.dumps({**self.meta(), "jpeg": base64.b64encode(self.jpeg).decode("ascii")},
                          separators=(",", ":")).encode()

    @staticmethod
    def from_json(payload: bytes) -> "Preview":
        """Validate an untrusted payload; ValueError naming what is wrong."""
        if len(payload) > MAX_JPEG_BYTES * 4 // 3 + 64 * 1024:
            raise ValueError(f"preview payload of {len(payload)} bytes is too large")
        raw = json_object(payload, "preview")
        try:
            jpeg = base64.b64decode(str(raw.get("jpeg", "")), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("preview field 'jpeg' must be base64") from None
        if not jpeg.startswith(JPEG_START) or len(jpeg) > MAX_JPEG_BYTES:
            raise ValueError(f"preview field 'jpeg' must be a JPEG of at most {MAX_JPEG_BYTES} bytes")
        detections = raw.get("detections", [])
        if not isinstance(detections, list) or len(detections) > MAX_DETECTIONS:
            raise ValueError(f"preview field 'detections' must be a list of at most {MAX_DETECTIONS}")
        if raw.get("site") not in ANSWERING_SITES:
            raise ValueError(f"preview field 'site' must be one of {', '.join(ANSWERING_SITES)}")
        width, height = _bounded_int(raw, "width", MAX_WIDTH), _bounded_int(raw, "height", MAX_HEIGHT)
        return Preview(camera=_text(raw, "camera", required=True), frame_id=_bounded_int(raw, "frame_id", 2**63 - 1, 0),
                       site=_text(raw, "site"), replica=_text(raw, "replica"), model=_text(raw, "model"),
                       width=width, height=height, detections=tuple(Detection.from_dict(d) for d in detections),
                       jpeg=jpeg)


def _bounded_int(raw: dict[str, Any], name: str, high: int, low: int = 1) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"preview field {name!r} must be an integer in {low}..{high}")
    return value


def _text(raw: dict[str, Any], name: str, required: bool = False) -> str:
    value = raw.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_NAME or (required and not value):
        raise ValueError(f"preview field {name!r} must be a{' non-empty' if required else ''} string "
                         f"of at most {MAX_NAME} characters")
    return value


@dataclass(frozen=True, slots=True)
class _Pending:
    frame_id: int
    jpeg: bytes
    scale: float          # preview pixels per original pixel
    size: tuple[int, int]


class PreviewSampler:
    """Picks at most `fps` frames a second per camera, shrinks them, and pairs each with its
    record when that comes back (only answered frames become previews: their boxes are known).

    At most one shrunk frame is held per camera, and at most `max_cameras` cameras."""

    def __init__(self, settings: PreviewSettings, max_cameras: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.max_cameras = max_cameras
        self.skipped_too_large = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._last_offer: OrderedDict[str, float] = OrderedDict()
        self._pending: dict[str, _Pending] = {}

    def due(self, camera: str) -> bool:
        """Whether this camera's next frame should become a preview (and, if so, note it)."""
        if not self.settings.enabled:
            return False
        now = self._clock()
        with self._lock:
            last = self._last_offer.get(camera)
            if last is not None and now - last < 1.0 / self.settings.fps:
                return False
            self._last_offer[camera] = now
            self._last_offer.move_to_end(camera)
            while len(self._last_offer) > self.max_cameras:
                forgotten, _ = self._last_offer.popitem(last=False)
                self._pending.pop(forgotten, None)
            return True

    def offer(self, camera: str, frame_id: int, image: np.ndarray) -> None:
        """Keep a shrunk copy of a captured frame if the camera is due for a preview."""
        if not self.due(camera):
            return
        height, width = image.shape[:2]
        scale = min(1.0, self.settings.width / width, MAX_HEIGHT / height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else image
        jpeg = next((data for data in (encode_jpeg(small, q) for q in QUALITIES)
                     if len(data) <= self.settings.max_bytes), None)
        with self._lock:
            if jpeg is None:
                self.skipped_too_large += 1
                self._pending.pop(camera, None)
                return
            if camera in self._last_offer:  # not forgotten meanwhile
                self._pending[camera] = _Pending(frame_id, jpeg, scale, size)

    def take(self, record: FrameRecord) -> Preview | None:
        """The preview of this record's frame, if one was kept for it and the frame was answered."""
        with self._lock:
            pending = self._pending.get(record.camera)
            if pending is None or pending.frame_id != record.frame_id:
                return None
            del self._pending[record.camera]
        if record.status != "ok":
            return None
        scale = pending.scale
        detections = tuple(Detection(d.label, d.score, tuple(v * scale for v in d.box))  # type: ignore[arg-type]
                           for d in record.detections[:MAX_DETECTIONS])
        return Preview(record.camera, record.frame_id, record.site, record.replica[:MAX_NAME], record.model[:MAX_NAME],
                       pending.size[0], pending.size[1], detections, pending.jpeg)


class LatestPreviews:
    """The webserver's side: the newest preview per camera, at most `max_cameras` of them."""

    def __init__(self, max_cameras: int = 32) -> None:
        self.max_cameras = max_cameras
        self._lock = threading.Lock()
        self._latest: OrderedDict[str, Preview] = OrderedDict()

    def add(self, preview: Preview) -> None:
        with self._lock:
            self._latest[preview.camera] = preview
            self._latest.move_to_end(preview.camera)
            while len(self._latest) > self.max_cameras:
                self._latest.popitem(last=False)

    def get(self, camera: str) -> Preview | None:
        with self._lock:
            return self._latest.get(camera)

    def metas(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {camera: preview.meta() for camera, preview in self._latest.items()}


__all__ = ["Preview", "PreviewSettings", "PreviewSampler", "LatestPreviews", "MAX_WIDTH", "MAX_JPEG_BYTES"]
