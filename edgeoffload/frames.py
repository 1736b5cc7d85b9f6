"""Frame handling: validate and decode untrusted image bytes, letterbox to a model's input, re-encode.

Dimensions are read from the header before decoding, so a decompression bomb is refused
without allocating its pixels. A frame larger than its consumer needs is decoded at 1/2, 1/4
or 1/8 scale (libjpeg's DCT scaling: the full-size pixels are never allocated for a JPEG), and
what a decode will hold is known up front (`decoded_bytes`), so a DecodeBudget can refuse
frames before memory runs out instead of after.
"""
from __future__ import annotations

import math
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 4096 * 4096
REDUCED_DECODES = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
Box = tuple[float, float, float, float]


class FrameError(ValueError):
    """The bytes are not an acceptable image (the HTTP layer maps this to 400)."""


class DecodeBudgetFull(Exception):
    """Decoding this frame now would hold more decoded bytes than the budget (HTTP 503)."""


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


def checked_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of acceptable image bytes; FrameError for empty, unknown or oversized ones."""
    if not data:
        raise FrameError("empty body: expected JPEG or PNG bytes")
    width, height = image_size(data)
    if width <= 0 or height <= 0:
        raise FrameError(f"image has invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise FrameError(f"image {width}x{height} exceeds the limit of {max_pixels} pixels")
    return width, height


def reduction(width: int, height: int, at_least: tuple[int, int] | None) -> int:
    """The largest decode reduction (8, 4, 2, else 1) after which a width x height frame still
    covers what fitting it into `at_least` (width, height) keeps of it: no detail is lost."""
    if at_least is None:
        return 1
    keep = min(at_least[0] / width, at_least[1] / height)
    return next((factor for factor, _flag in REDUCED_DECODES if factor * keep <= 1.0), 1)


def decoded_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, at_least: tuple[int, int] | None = None) -> int:
    """Bytes `decode(data, max_pixels, at_least)` holds at its peak. OpenCV scales JPEGs while
    decoding; other formats are decoded at full size first, then reduced."""
    width, height = checked_size(data, max_pixels)
    factor = reduction(width, height, at_least)
    reduced = 3 * math.ceil(width / factor) * math.ceil(height / factor)
    full = 0 if factor == 1 or data[:2] == b"\xff\xd8" else 3 * width * height
    return reduced + full


def min_decode_budget_mb(max_pixels: int) -> int:
    """MiB a DecodeBudget needs to admit any one frame within `max_pixels` (full size + reduced)."""
    return -(-6 * max_pixels // 2**20)


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, at_least: tuple[int, int] | None = None) -> np.ndarray:
    """Decode JPEG/PNG bytes to a BGR image, refusing empty, corrupt or oversized input.

    With `at_least`, a larger frame comes back reduced (see `reduction`); callers map boxes
    back with `unscale` from the image's size to the one `checked_size` reports."""
    width, height = checked_size(data, max_pixels)
    factor = reduction(width, height, at_least)
    flag = next((f for reduced, f in REDUCED_DECODES if reduced == factor), cv2.IMREAD_COLOR)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        raise FrameError("image could not be decoded (corrupt or truncated)")
    return image


def unscale(scale_x: float, scale_y: float) -> Callable[[Box], Box]:
    """Maps (x, y, w, h) in an image resized by (scale_x, scale_y) back to the original."""
    def to_original(box: Box) -> Box:
        return (box[0] / scale_x, box[1] / scale_y, box[2] / scale_x, box[3] / scale_y)
    return to_original


class DecodeBudget:
    """Decoded bytes held at once by one process. Frames are admitted by what they will hold
    (`decoded_bytes`), not by count, so the peak memory of decoding is bounded whatever the
    mix of frame sizes; a frame that does not fit now is refused (DecodeBudgetFull), not queued."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._lock:
            if self.held + nbytes > self.limit_bytes:
                raise DecodeBudgetFull(f"decoding needs {nbytes >> 20} MiB, {(self.limit_bytes - self.held) >> 20} "
                                       f"MiB of the {self.limit_bytes >> 20} MiB decode budget free")
            self.held += nbytes
        try:
            yield
        finally:
            with self._lock:
                self.held -= nbytes


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
