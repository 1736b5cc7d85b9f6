"""Live frame sources of the EdgePreprocessorUnit: video files, camera indexes, streams, image folders.

Configured as one string, `cam1=video.mp4,cam2=frames/,cam3=0,cam4=rtsp://host/stream`; each
source runs in its own thread and hands frames to the preprocessor as they are captured.
Files and folders are paced at their frame rate (or a configured one) without bursting to
catch up, as a camera would; live cameras and streams are read as fast as they deliver and
reopened with backoff when they fail.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import cv2
import numpy as np

from edgeoffload.load.sample_video import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

CAMERA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SourceKind = Literal["video", "camera", "stream", "folder"]
DEFAULT_FOLDER_FPS = 10.0
REOPEN_MAX_DELAY_S = 10.0

ImageSink = Callable[[str, np.ndarray], None]
BytesSink = Callable[[str, bytes], None]


def valid_camera(camera: str) -> bool:
    """Camera ids become MQTT topic levels and metric-free labels: 1-64 of [A-Za-z0-9_.-]."""
    return bool(CAMERA_ID.fullmatch(camera))   # match() would let "cam\n" through ($ before a final \n)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    camera: str
    kind: SourceKind
    target: str


def parse_sources(spec: str) -> list[SourceSpec]:
    """Parse `cam=target,...`: a number is a camera index, `scheme://` a stream, a folder
    (existing, or written with a trailing /) a folder of images, anything else a video file."""
    sources: list[SourceSpec] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        camera, sep, target = item.partition("=")
        camera, target = camera.strip(), target.strip()
        if not sep or not target:
            raise ValueError(f"source {item!r}: expected CAMERA=TARGET")
        if not valid_camera(camera):
            raise ValueError(f"source {item!r}: camera id must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if any(s.camera == camera for s in sources):
            raise ValueError(f"camera {camera!r} is configured twice")
        sources.append(SourceSpec(camera, _kind_of(target), target))
    return sources


def _kind_of(target: str) -> SourceKind:
    if target.isdigit():
        return "camera"
    if "://" in target:
        return "stream"
    if target.endswith(("/", "\\")) or Path(target).expanduser().is_dir():
        return "folder"
    return "video"


@dataclass
class SourceStatus:
    """What /api/state shows about one source."""

    camera: str
    kind: str
    target: str
    frames: int = 0
    running: bool = False
    finished: bool = False
    last_error: str = ""


@dataclass
class FrameSource:
    """One source thread. `fps` 0 = the file's own rate (folders: 10 fps; live: as delivered)."""

    spec: SourceSpec
    on_image: ImageSink
    on_bytes: BytesSink
    fps: float = 0.0
    loop: bool = False
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.status = SourceStatus(self.spec.camera, self.spec.kind, self.spec.target)
        self._thread = threading.Thread(target=self._run, name=f"source-{self.spec.camera}", daemon=True)

    def start(self) -> "FrameSource":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        self.status.running = True
        try:
            if self.spec.kind == "folder":
                self._run_folder()
            elif self.spec.kind == "video":
                self._run_video()
            else:
                self._run_live()
        except Exception as exc:  # a broken source must not take the unit down
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("source %s stopped", self.spec.camera)
        finally:
            self.status.running = False
            self.status.finished = True

    # -- folders and files: paced, optionally looped ---------------------------------------
    def _run_folder(self) -> None:
        folder = Path(self.spec.target).expanduser()
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
        pacer = Pacer(self.fps or DEFAULT_FOLDER_FPS)
        while not self.stop_event.is_set():
            for path in paths:
                if not pacer.wait(self.stop_event):
                    return
                self._emit(lambda: self.on_bytes(self.spec.camera, path.read_bytes()))
            if not self.loop:
                return

    def _run_video(self) -> None:
        if not Path(self.spec.target).expanduser().is_file():
            raise FileNotFoundError(f"video file not found: {self.spec.target}")
        while not self.stop_event.is_set():
            capture = cv2.VideoCapture(str(Path(self.spec.target).expanduser()))
            try:
                if not capture.isOpened():
                    raise RuntimeError(f"OpenCV cannot open video {self.spec.target}")
                native = capture.get(cv2.CAP_PROP_FPS)
                pacer = Pacer(self.fps or (native if 0 < native <= 240 else DEFAULT_FOLDER_FPS))
                for image in _frames(capture, self.stop_event):
                    if not pacer.wait(self.stop_event):
                        return
                    self._emit(lambda: self.on_image(self.spec.camera, image))
            finally:
                capture.release()
            if not self.loop:
                return

    # -- cameras and streams: as delivered, reopened with backoff --------------------------
    def _run_live(self) -> None:
        target: int | str = int(self.spec.target) if self.spec.kind == "camera" else self.spec.target
        delay = 0.5
        pacer = Pacer(self.fps) if self.fps > 0 else None
        while not self.stop_event.is_set():
            capture = cv2.VideoCapture(target)
            try:
                if capture.isOpened():
                    for image in _frames(capture, self.stop_event):
                        delay = 0.5
                        if pacer is not None and not pacer.wait(self.stop_event, skip=True):
                            continue
                        self._emit(lambda: self.on_image(self.spec.camera, image))
                    self.status.last_error = "stream ended"
                else:
                    self.status.last_error = f"cannot open {self.spec.target}"
            finally:
                capture.release()
            log.warning("source %s: %s; reopening in %.1fs", self.spec.camera, self.status.last_error, delay)
            if self.stop_event.wait(delay):
                return
            delay = min(delay * 2, REOPEN_MAX_DELAY_S)

    def _emit(self, deliver: Callable[[], None]) -> None:
        try:
            deliver()
            self.status.frames += 1
        except Exception as exc:  # one bad frame must not stop the camera
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("source %s: frame rejected: %s", self.spec.camera, exc)


def _frames(capture: cv2.VideoCapture, stop: threading.Event) -> Iterator[np.ndarray]:
    while not stop.is_set():
        ok, image = capture.read()
        if not ok or image is None:
            return
        yield image


class Pacer:
    """Ticks at `fps` on the monotonic clock. A late tick is not made up for by a burst:
    the schedule restarts from now, as a camera that missed frames would."""

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.period = 1.0 / fps
        self._next = time.monotonic()

    def wait(self, stop: threading.Event, skip: bool = False) -> bool:
        """Block until the next tick; False when stopped. With `skip`, return False at once
        (without blocking) if the tick has not come yet, for sources that cannot be paused."""
        now = time.monotonic()
        if skip and now < self._next:
            return False
        if now < self._next and stop.wait(self._next - now):
            return False
        self._next += self.period
        now = time.monotonic()
        if self._next < now:  # more than a period late: start afresh from now
            self._next = now + self.period
        return not stop.is_set()


__all__ = ["SourceSpec", "SourceStatus", "FrameSource", "Pacer", "parse_sources", "valid_camera", "CAMERA_ID"]
