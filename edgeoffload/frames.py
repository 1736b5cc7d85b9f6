"""Frame handling: validate and decode untrusted image bytes, letterbox to a model's input, re-encode.

Dimensions are read from the header before decoding, so a decompression bomb is refused
without allocating its pixels.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 4096 * 4096


class FrameError(ValueError):
    """The bytes are not an acceptable image (the HTTP layer maps this to 400)."""


@dataclass(frozen=True, slots=True)
class Letterboxed:
    """A resized, padded image plus what is needed to map boxes back to the original frame."""

    image: np.ndarray
    scale: float
    pad_x: int
    pad_y: int

    def to_original(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x, y, w, h = box
        return ((x - self.pad_x) / self.scale, (y - self.pad_y) / self.scale,
                w / self.scale, h / self.scale)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG or PNG header; FrameError for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise FrameError("truncated PNG header")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    raise FrameError("not a JPEG or PNG image")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise FrameError("corrupt JPEG marker stream")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            raise FrameError("corrupt JPEG segment length")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise FrameError("truncated JPEG: no frame header")


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG bytes to a BGR image, refusing empty, corrupt or oversized input."""
    if not data:
        raise FrameError("empty body: expected JPEG or PNG bytes")
    width, height = image_size(data)
    if width <= 0 or height <= 0:
        raise FrameError(f"image has invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise FrameError(f"image {width}x{height} exceeds the limit of {max_pixels} pixels")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameError("image could not be decoded (corrupt or truncated)")
    return image


def letterbox(image: np.ndarray, size: tuple[int, int], fill: int = 114) -> Letterboxed:
    """Resize keeping aspect ratio into `size` (width, height), padding the rest with `fill`."""
    target_w, target_h = size
    height, width = image.shape[:2]
    scale = min(target_w / width, target_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (target_w - new_w) // 2, (target_h - new_h) // 2
    if (new_w, new_h) == (target_w, target_h):
        resized = image if (width, height) == (new_w, new_h) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return Letterboxed(resized, scale, 0, 0)
    canvas = np.full((target_h, target_w, 3), fill, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    return Letterboxed(canvas, scale, pad_x, pad_y)


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (never upscale) so the longer side is at most `max_side`; keeps aspect ratio."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return image
    scale = max_side / longest
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """JPEG-encode a BGR image."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise FrameError("JPEG encoding failed")
    return buffer.tobytes()


def is_image_type(content_type: str | None) -> bool:
    """True for `image/*` Content-Types (parameters ignored); the decoder then checks the bytes."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower().startswith("image/")
