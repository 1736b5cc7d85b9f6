"""Frame source parsing and pacing (the sources feeding real preprocessors are tested in tests/units)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeoffload.sources import FrameSource, Pacer, SourceSpec, parse_sources, valid_camera


def test_parse_sources_recognises_every_kind(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    spec = f"cam1=video.mp4, cam2=frames/, cam3=0,cam4=rtsp://host:554/s?x=1,cam5={folder}"
    assert parse_sources(spec) == [
        SourceSpec("cam1", "video", "video.mp4"), SourceSpec("cam2", "folder", "frames/"),
        SourceSpec("cam3", "camera", "0"), SourceSpec("cam4", "stream", "rtsp://host:554/s?x=1"),
        SourceSpec("cam5", "folder", str(folder))]
    assert parse_sources("") == [] and parse_sources(" , ") == []


@pytest.mark.parametrize("bad", ["cam1", "cam1=", "=video.mp4", "a/b=x.mp4", "c=1,c=2", "x" * 65 + "=v.mp4"])
def test_parse_sources_rejects_bad_entries(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_sources(bad)


def test_camera_ids() -> None:
    assert valid_camera("front-door_1.cam") and valid_camera("x" * 64)
    assert not any(valid_camera(c) for c in ("", "x" * 65, "a b", "a/b", "a+b", "a#", "é"))


def test_pacer_keeps_rate_without_bursting_after_a_stall() -> None:
    pacer, stop = Pacer(100.0), threading.Event()
    start = time.monotonic()
    for _ in range(10):
        assert pacer.wait(stop)
    assert 0.08 <= time.monotonic() - start < 0.5
    time.sleep(0.1)  # a stall of 10 periods
    pacer.wait(stop)
    after = time.monotonic()
    pacer.wait(stop)
    assert time.monotonic() - after >= 0.008  # the next tick is a period away, not immediate
    stop.set()
    assert pacer.wait(stop) is False
    with pytest.raises(ValueError):
        Pacer(0)


def test_folder_source_reports_bad_frames_and_keeps_going(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"one")
    (tmp_path / "b.jpg").write_bytes(b"bad")
    (tmp_path / "c.png").write_bytes(b"three")
    seen: list[bytes] = []

    def on_bytes(camera: str, data: bytes) -> None:
        if data == b"bad":
            raise ValueError("corrupt")
        seen.append(data)

    def on_image(camera: str, image: np.ndarray) -> None:
        raise AssertionError("folders deliver bytes")

    source = FrameSource(SourceSpec("f", "folder", str(tmp_path)), on_image, on_bytes, fps=200).start()
    source.join(5)
    assert seen == [b"one", b"three"]
    assert source.status.frames == 2 and source.status.finished and "corrupt" in source.status.last_error


def test_missing_video_is_reported_not_raised(tmp_path: Path) -> None:
    source = FrameSource(SourceSpec("v", "video", str(tmp_path / "nope.mp4")), lambda c, i: None,
                         lambda c, b: None).start()
    source.join(5)
    assert source.status.finished and "not found" in source.status.last_error
