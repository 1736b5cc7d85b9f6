from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from skimage import data

from edgeoffload.frames import (DecodeBudget, DecodeBudgetFull, FrameError, decode, decoded_bytes, encode_jpeg,
                                fit_within, image_size, is_image_type, letterbox, min_decode_budget_mb, reduction,
                                unscale)


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_jpeg_round_trip_keeps_size_and_content(astronaut_bgr: np.ndarray) -> None:
    encoded = encode_jpeg(astronaut_bgr, quality=90)
    assert image_size(encoded) == (512, 512)
    decoded = decode(encoded)
    assert decoded.shape == astronaut_bgr.shape
    assert np.abs(decoded.astype(int) - astronaut_bgr.astype(int)).mean() < 4


def test_png_is_accepted(astronaut_bgr: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", astronaut_bgr[:100, :200])
    assert ok and image_size(png.tobytes()) == (200, 100)
    assert decode(png.tobytes()).shape == (100, 200, 3)


@pytest.mark.parametrize("payload, message", [
    (b"", "empty body"),
    (b"GIF89a....", "not a JPEG or PNG"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG"),
    (b"\x89PNG\r\n\x1a\n\x00", "truncated PNG"),
])
def test_garbage_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode(payload)


def test_truncated_jpeg_body_is_refused(astronaut_bgr: np.ndarray) -> None:
    encoded = encode_jpeg(astronaut_bgr)
    with pytest.raises(FrameError):
        decode(encoded[:300])  # header intact, scan data cut before any MCU row decodes


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(FrameError, match="exceeds the limit"):
        decode(png_header(100_000, 100_000) + b"\x00" * 64)
    with pytest.raises(FrameError, match="invalid dimensions"):
        decode(png_header(0, 10))


def test_letterbox_keeps_aspect_ratio_and_maps_boxes_back() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    boxed = letterbox(frame, (416, 416))
    assert boxed.image.shape == (416, 416, 3)
    assert boxed.scale == pytest.approx(0.65)
    assert (boxed.pad_x, boxed.pad_y) == (0, 52)
    assert boxed.to_original((65.0, 52.0 + 65.0, 130.0, 65.0)) == pytest.approx((100.0, 100.0, 200.0, 100.0))
    same = letterbox(np.zeros((416, 416, 3), np.uint8), (416, 416))
    assert same.scale == 1.0 and same.image.shape == (416, 416, 3)


def test_fit_within_only_downscales() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    assert fit_within(frame, 640).shape == (360, 640, 3)
    assert fit_within(frame, 2000) is frame


def test_content_type_check() -> None:
    assert is_image_type("image/jpeg") and is_image_type("Image/PNG; charset=binary")
    assert not is_image_type("application/octet-stream") and not is_image_type(None)


def test_quality_out_of_range_is_refused(astronaut_bgr: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1..100"):
        encode_jpeg(astronaut_bgr, quality=0)


@pytest.mark.parametrize("size, at_least, factor", [
    ((4096, 4096), (640, 640), 4),      # 1024 still covers 640; 512 would not
    ((4096, 4096), (416, 416), 8),
    ((1280, 720), (640, 640), 2),
    ((640, 480), (640, 640), 1),        # never below what the consumer keeps
    ((4096, 100), (416, 416), 8),       # the longer side decides
    ((1000, 1000), None, 1),
])
def test_reduction_keeps_at_least_what_fitting_keeps(size, at_least, factor) -> None:
    assert reduction(*size, at_least) == factor


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_large_frames_decode_reduced_and_decoded_bytes_says_what_they_hold(astronaut_bgr: np.ndarray,
                                                                          extension: str) -> None:
    big = cv2.resize(astronaut_bgr, (2048, 1536))
    data_bytes = cv2.imencode(extension, big)[1].tobytes()
    image = decode(data_bytes, at_least=(640, 640))
    assert image.shape == (768, 1024, 3)                       # 2048 / 2: the last reduction that covers 640
    full = 2048 * 1536 * 3
    reduced = 1024 * 768 * 3
    assert decoded_bytes(data_bytes, at_least=(640, 640)) == reduced + (0 if extension == ".jpg" else full)
    assert decode(data_bytes).shape == (1536, 2048, 3) and decoded_bytes(data_bytes) == full
    assert min_decode_budget_mb(2048 * 1536) * 2**20 >= decoded_bytes(data_bytes, at_least=(16, 16))


def test_unscale_maps_boxes_back_to_the_original() -> None:
    assert unscale(0.5, 0.25)((10.0, 10.0, 20.0, 4.0)) == (20.0, 40.0, 40.0, 16.0)


def test_decode_budget_refuses_what_does_not_fit_and_frees_what_it_held() -> None:
    budget = DecodeBudget(100)
    with budget.hold(60):
        with pytest.raises(DecodeBudgetFull, match="decode budget"):
            with budget.hold(41):
                pass
        with budget.hold(40):
            assert budget.held == 100
    assert budget.held == 0
    with pytest.raises(RuntimeError):
        with budget.hold(100):
            raise RuntimeError("detector failed")
    assert budget.held == 0
