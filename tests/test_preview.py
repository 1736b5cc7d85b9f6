"""Camera previews: sampled at most `fps` per camera, shrunk, paired with their record, validated."""
from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from edgeoffload.frames import decode, image_size
from edgeoffload.preview import MAX_JPEG_BYTES, LatestPreviews, Preview, PreviewSampler, PreviewSettings
from edgeoffload.records import Detection, FrameRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def photo(width: int = 640, height: int = 480) -> np.ndarray:
    rng = np.random.default_rng(1)
    return cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (0, 0), 3)


def record(camera: str, frame_id: int, status: str = "ok") -> FrameRecord:
    face = Detection("face", 0.93, (200.0, 100.0, 120.0, 140.0))
    return FrameRecord(camera=camera, frame_id=frame_id, captured_at=1.8e9, site="edge" if status == "ok" else "none",
                       status=status, model="edge/haar-face", detections=(face,) if status == "ok" else (),
                       replica="edge-inference-1")


def test_at_most_fps_previews_per_camera_each_shrunk_with_its_boxes() -> None:
    clock = Clock()
    sampler = PreviewSampler(PreviewSettings(width=320, fps=2.0), clock=clock)
    image = photo()
    kept = []
    for frame_id in range(16):  # 8 fps for 2 s (steps exact in binary)
        sampler.offer("cam", frame_id, image)
        kept.append(sampler.take(record("cam", frame_id)))
        clock.now += 0.125
    previews = [p for p in kept if p is not None]
    assert [p.frame_id for p in previews] == [0, 4, 8, 12]  # 2 per second
    preview = previews[0]
    assert (preview.width, preview.height) == (320, 240) and image_size(preview.jpeg) == (320, 240)
    assert decode(preview.jpeg).shape == (240, 320, 3) and len(preview.jpeg) <= 48 * 1024
    (face,) = preview.detections
    assert face.box == (100.0, 50.0, 60.0, 70.0)  # the record's box, in the preview's pixels
    assert (preview.site, preview.replica, preview.model) == ("edge", "edge-inference-1", "edge/haar-face")


def test_only_the_sampled_frame_of_its_camera_and_only_if_answered() -> None:
    clock = Clock()
    sampler = PreviewSampler(PreviewSettings(), clock=clock)
    sampler.offer("a", 7, photo())
    assert sampler.take(record("b", 7)) is None     # another camera
    assert sampler.take(record("a", 6)) is None     # another frame
    assert sampler.take(record("a", 7, status="dropped")) is None   # no boxes to show
    assert sampler.take(record("a", 7)) is None     # used up
    clock.now += 1
    sampler.offer("a", 8, photo())
    assert sampler.take(record("a", 8)) is not None


def test_off_and_over_the_byte_cap_mean_no_preview() -> None:
    off = PreviewSampler(PreviewSettings(enabled=False))
    off.offer("cam", 0, photo())
    assert off.take(record("cam", 0)) is None
    noisy = np.random.default_rng(2).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # incompressible
    capped = PreviewSampler(PreviewSettings(max_bytes=2048))
    capped.offer("cam", 0, noisy)
    assert capped.take(record("cam", 0)) is None and capped.skipped_too_large == 1


def test_cameras_held_are_bounded() -> None:
    clock = Clock()
    sampler = PreviewSampler(PreviewSettings(), max_cameras=3, clock=clock)
    for camera in "abcde":
        sampler.offer(camera, 0, photo(64, 48))
    assert [sampler.take(record(camera, 0)) is not None for camera in "abcde"] == [False, False, True, True, True]


@pytest.mark.parametrize("settings, problem", [
    (PreviewSettings(width=8), "WIDTH"), (PreviewSettings(width=1280), "WIDTH"),
    (PreviewSettings(fps=0), "FPS"), (PreviewSettings(fps=30), "FPS"),
    (PreviewSettings(max_bytes=10), "MAX_BYTES"), (PreviewSettings(max_bytes=MAX_JPEG_BYTES + 1), "MAX_BYTES"),
])
def test_settings_are_bounded(settings: PreviewSettings, problem: str) -> None:
    assert settings.problems()[0].startswith(f"{problem}: ")


def good_payload() -> dict:
    clock = Clock()
    sampler = PreviewSampler(PreviewSettings(), clock=clock)
    sampler.offer("cam", 3, photo())
    preview = sampler.take(record("cam", 3))
    assert preview is not None
    return json.loads(preview.to_json())


def test_payload_round_trips() -> None:
    raw = good_payload()
    preview = Preview.from_json(json.dumps(raw).encode())
    assert preview.meta() == {k: v for k, v in raw.items() if k != "jpeg"} and preview.jpeg.startswith(b"\xff\xd8\xff")


@pytest.mark.parametrize("change, message", [
    ({"jpeg": "not base64!"}, "base64"),
    ({"jpeg": base64.b64encode(b"<svg onload=alert(1)>").decode()}, "must be a JPEG"),
    ({"jpeg": base64.b64encode(b"\xff\xd8\xff" + bytes(MAX_JPEG_BYTES)).decode()}, "too large|must be a JPEG"),
    ({"width": 4000}, "'width'"),
    ({"height": 0}, "'height'"),
    ({"frame_id": -1}, "'frame_id'"),
    ({"camera": ""}, "'camera'"),
    ({"site": "<b>"}, "'site'"),
    ({"replica": "x" * 300}, "'replica'"),
    ({"detections": [{"label": "face"}] * 101}, "detections"),
    ({"detections": [{"label": "face", "score": 1, "box": [1, 2, 3]}]}, "box"),
])
def test_hostile_payloads_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preview.from_json(json.dumps({**good_payload(), **change}).encode())
    with pytest.raises(ValueError, match="JSON"):
        Preview.from_json(b"\x00not json")


def test_the_webserver_keeps_the_newest_preview_of_at_most_max_cameras() -> None:
    latest = LatestPreviews(max_cameras=2)
    base = Preview.from_json(json.dumps(good_payload()).encode())
    for camera, frame_id in (("a", 1), ("b", 1), ("a", 2), ("c", 1)):
        latest.add(Preview(camera, frame_id, base.site, base.replica, base.model, base.width, base.height,
                           base.detections, base.jpeg))
    assert latest.get("b") is None and latest.get("a").frame_id == 2 and set(latest.metas()) == {"a", "c"}
