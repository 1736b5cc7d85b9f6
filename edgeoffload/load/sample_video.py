"""Real frames without any download: panning "videos" over images shipped with scikit-image.

The demo, the replay and the tests need realistic JPEG frames (faces for the Haar
detector, textures for realistic sizes), but the testbed must run offline. scikit-image
ships a few photographs in its wheel (astronaut, coffee, chelsea, rocket); a camera-like
sequence is made by sliding a fixed-size window across each of them in turn.

Two named sequences: `sample` pans over the photographs as they are (one face in four
scenes; the sim-vs-real experiments were measured on it, so its bytes never change), and
`faces` pans over the same backdrops with the astronaut's face composed into every scene,
so the shipped face detector has something to find in nearly every frame (the demo's).

Frame sources used by the replay are also here: the sample video, a folder of images,
or any video file OpenCV can read. All hand out already-encoded JPEG bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edgeoffload.frames import FrameError, encode_jpeg, fit_within

SCENES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True, slots=True)
class SampleVideoSpec:
    """Shape of the synthetic sequence: `frames_per_scene` window positions per source image."""

    width: int = 640
    height: int = 480
    frames_per_scene: int = 15
    pan_margin: float = 0.25     # the scene is scaled to cover the frame plus this fraction, then panned
    quality: int = 80
    scenes: tuple[str, ...] = SCENES

    def validate(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"frame size must be at least 16x16, got {self.width}x{self.height}")
        if self.frames_per_scene < 1:
            raise ValueError("frames_per_scene must be >= 1")
        if not 0 <= self.pan_margin <= 2:
            raise ValueError("pan_margin must be in [0, 2]")
        unknown = sorted(set(self.scenes) - set(SCENES))
        if unknown or not self.scenes:
            raise ValueError(f"scenes must be a non-empty subset of {', '.join(SCENES)}; unknown: {unknown}")


def scene_image(name: str) -> np.ndarray:
    """A scikit-image sample photograph as a BGR uint8 image (shipped in the wheel, no download)."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency of the demo
        raise RuntimeError("the sample video needs scikit-image (pip install scikit-image)") from exc
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; choose from {', '.join(SCENES)}")
    image = getattr(data, name)()
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)


def pan_frames(image: np.ndarray, spec: SampleVideoSpec) -> list[np.ndarray]:
    """`frames_per_scene` windows of spec.width x spec.height sliding diagonally across `image`."""
    return pan_windows(cover_pan(image, spec), spec)


def cover_pan(image: np.ndarray, spec: SampleVideoSpec) -> np.ndarray:
    """`image` scaled to cover the frame plus the pan margin (the canvas the camera pans over)."""
    height, width = image.shape[:2]
    scale = max(spec.width / width, spec.height / height) * (1.0 + spec.pan_margin)
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)


def pan_windows(scene: np.ndarray, spec: SampleVideoSpec) -> list[np.ndarray]:
    """`frames_per_scene` windows sliding from the canvas's top-left corner to its bottom-right."""
    room_x, room_y = scene.shape[1] - spec.width, scene.shape[0] - spec.height
    steps = np.linspace(0.0, 1.0, spec.frames_per_scene) if spec.frames_per_scene > 1 else np.array([0.5])
    return [np.ascontiguousarray(scene[round(room_y * s):round(room_y * s) + spec.height,
                                       round(room_x * s):round(room_x * s) + spec.width]) for s in steps]


def sample_images(spec: SampleVideoSpec = SampleVideoSpec()) -> list[np.ndarray]:
    """The whole sequence as BGR images, scene after scene."""
    spec.validate()
    return [frame for name in spec.scenes for frame in pan_frames(scene_image(name), spec)]


def sample_jpegs(spec: SampleVideoSpec = SampleVideoSpec()) -> list[bytes]:
    return [encode_jpeg(image, spec.quality) for image in sample_images(spec)]


def write_video(path: str | Path, spec: SampleVideoSpec = SampleVideoSpec(), fps: float = 5.0,
                repeat: int = 1, sequence: str = "sample") -> Path:
    """Write the `sequence` (sample or faces) `repeat` times as an MJPG .avi/.mp4 that
    cv2.VideoCapture reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (spec.width, spec.height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with the MJPG codec (try an .avi suffix)")
    try:
        images = face_images(spec) if sequence == "faces" else sample_images(spec)
        for _ in range(max(1, repeat)):
            for image in images:
                writer.write(image)
    finally:
        writer.release()
    return path


class FrameSource(Protocol):
    """Encoded frames for the replay: the same (camera, index) always gives the same bytes."""

    def frame(self, camera: str, frame_index: int) -> bytes: ...


def picture_name(index: int) -> str:
    """How traces, profiles and scenarios name the `index`-th frame of a source (`content`)."""
    return f"frame-{index}"


@dataclass(frozen=True)
class CyclicFrames:
    """A fixed list of encoded frames, looped; cameras start at different offsets so they differ."""

    frames: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("a frame source needs at least one frame")

    def index(self, camera: str, frame_index: int) -> int:
        """Which of the frames camera `camera` sends as its `frame_index`-th."""
        offset = sum(camera.encode()) * 7
        return (offset + frame_index) % len(self.frames)

    def frame(self, camera: str, frame_index: int) -> bytes:
        return self.frames[self.index(camera, frame_index)]

    @property
    def mean_bytes(self) -> float:
        return sum(len(f) for f in self.frames) / len(self.frames)


def sample_source(spec: SampleVideoSpec = SampleVideoSpec()) -> CyclicFrames:
    return CyclicFrames(tuple(sample_jpegs(spec)))


@dataclass(frozen=True, slots=True)
class FaceScene:
    """A face cut from a shipped photograph, pasted onto a shipped backdrop, filmed panning.

    `height` is the face's height as a fraction of the frame's; the face sits where every
    window of the pan sees it, so it drifts across the frame as the camera moves."""

    backdrop: str
    height: float = 0.45
    mirrored: bool = False
    across: float = 0.5          # where in the part all windows share (0 = left/top, 1 = right/bottom)
    down: float = 0.5


# The astronaut's head (scikit-image's astronaut, 512x512) with a margin of hair and collar:
# (x, y, width, height). Haar's frontal-face cascade needs the whole face and some context.
ASTRONAUT_HEAD = (140, 10, 190, 210)
# Backdrops coffee and chelsea: on rocket's dark sky the detector's histogram equalisation
# washes the face out (it finds it in 1 frame of 15).
FACE_SCENES: tuple[FaceScene, ...] = (
    FaceScene("coffee", 0.50, across=0.3, down=0.4),
    FaceScene("chelsea", 0.45, mirrored=True, across=0.7, down=0.5),
    FaceScene("coffee", 0.42, mirrored=True, across=0.8, down=0.7),
    FaceScene("chelsea", 0.40, across=0.1, down=0.8),
)


def face_patch() -> np.ndarray:
    """The astronaut's head, the one frontal face among the shipped photographs."""
    x, y, width, height = ASTRONAUT_HEAD
    return np.ascontiguousarray(scene_image("astronaut")[y:y + height, x:x + width])


def compose_face_scene(scene: FaceScene, spec: SampleVideoSpec, face: np.ndarray) -> np.ndarray:
    """The backdrop scaled to cover the pan, with the face pasted where every window sees it."""
    canvas = cover_pan(scene_image(scene.backdrop), spec)
    patch_h = round(spec.height * scene.height)
    patch_w = round(face.shape[1] * patch_h / face.shape[0])
    patch = cv2.resize(cv2.flip(face, 1) if scene.mirrored else face, (patch_w, patch_h), interpolation=cv2.INTER_AREA)
    # Every window of the pan covers [room, frame size) of the canvas on each axis.
    room_x, room_y = canvas.shape[1] - spec.width, canvas.shape[0] - spec.height
    left = room_x + round(max(0, spec.width - room_x - patch_w) * scene.across)
    top = room_y + round(max(0, spec.height - room_y - patch_h) * scene.down)
    patch_w, patch_h = min(patch_w, canvas.shape[1] - left), min(patch_h, canvas.shape[0] - top)
    patch, alpha = patch[:patch_h, :patch_w], _oval_mask(patch_h, patch_w)
    region = canvas[top:top + patch_h, left:left + patch_w]
    region[:] = (patch * alpha + region * (1.0 - alpha)).astype(np.uint8)
    return canvas


def _oval_mask(height: int, width: int) -> np.ndarray:
    """1 inside an oval filling the patch, fading to 0 at its edge: a head, not a pasted rectangle."""
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (width // 2, height // 2), (int(width * 0.46), int(height * 0.48)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), max(1.0, min(height, width) / 20))[..., None]


def face_images(spec: SampleVideoSpec = SampleVideoSpec(), scenes: tuple[FaceScene, ...] = FACE_SCENES) -> list[np.ndarray]:
    """The `faces` sequence as BGR images: every scene a pan with the face in view."""
    spec.validate()
    face = face_patch()
    return [frame for scene in scenes for frame in pan_windows(compose_face_scene(scene, spec, face), spec)]


def faces_source(spec: SampleVideoSpec = SampleVideoSpec()) -> CyclicFrames:
    return CyclicFrames(tuple(encode_jpeg(image, spec.quality) for image in face_images(spec)))


# Named sequences `open_source` knows, besides folders and video files.
NAMED_SOURCES = {"sample": sample_source, "faces": faces_source}


def folder_source(folder: str | Path, max_side: int = 1280, quality: int = 80) -> CyclicFrames:
    """Every JPEG/PNG in `folder` (sorted by name), downscaled to `max_side` and re-encoded as JPEG."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    frames = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FrameError(f"{path}: not a readable image")
        frames.append(encode_jpeg(fit_within(image, max_side), quality))
    return CyclicFrames(tuple(frames))


def video_source(path: str | Path, max_frames: int = 300, max_side: int = 1280, quality: int = 80) -> CyclicFrames:
    """Up to `max_frames` frames of a video file, JPEG-encoded (held in memory, looped)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"OpenCV cannot open video {path}")
    frames: list[bytes] = []
    try:
        while len(frames) < max_frames:
            ok, image = capture.read()
            if not ok:
                break
            frames.append(encode_jpeg(fit_within(image, max_side), quality))
    finally:
        capture.release()
    if not frames:
        raise FrameError(f"{path}: no decodable frames")
    return CyclicFrames(tuple(frames))


def open_source(spec: str | None) -> CyclicFrames:
    """`None`/"sample" or "faces" -> a shipped-image sequence; a folder -> its images; a file -> a video."""
    if spec in (None, ""):
        spec = "sample"
    if spec in NAMED_SOURCES:
        return NAMED_SOURCES[spec]()
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return folder_source(path)
    if path.is_file():
        return video_source(path)
    raise FileNotFoundError(f"frame source {spec!r} is neither {', '.join(map(repr, NAMED_SOURCES))}, "
                            "a folder of images nor a video file")


def register(parser: argparse.ArgumentParser) -> None:
    """`edgeoffload sample-video -o sample.avi`: the sample sequence as a file for PRE_SOURCES."""
    parser.add_argument("-o", "--output", required=True, help=".avi, .mp4 or .mkv (MJPG)")
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--frames-per-scene", type=int, default=SampleVideoSpec().frames_per_scene)
    parser.add_argument("--repeat", type=int, default=1, help="write the sequence this many times")
    parser.add_argument("--sequence", choices=("faces", "sample"), default="faces",
                        help="faces: a face in every scene (the demo's); sample: the photographs as they are")


def run(args: argparse.Namespace) -> int:
    spec = SampleVideoSpec(frames_per_scene=args.frames_per_scene)
    path = write_video(args.output, spec, fps=args.fps, repeat=args.repeat, sequence=args.sequence)
    scenes = len(FACE_SCENES) if args.sequence == "faces" else len(spec.scenes)
    frames = spec.frames_per_scene * scenes * max(1, args.repeat)
    print(f"wrote {frames} frames of {spec.width}x{spec.height} at {args.fps:g} fps to {path}", file=sys.stderr)
    return 0


__all__ = ["SampleVideoSpec", "SCENES", "FaceScene", "FACE_SCENES", "NAMED_SOURCES", "face_images", "faces_source", "FrameSource", "CyclicFrames", "picture_name", "sample_images", "sample_jpegs",
           "sample_source", "folder_source", "video_source", "open_source", "write_video", "scene_image"]
