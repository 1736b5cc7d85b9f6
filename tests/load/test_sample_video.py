"""Sample frames from shipped images: real JPEGs, panning, readable back as a video file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeoffload.frames import decode, image_size
from edgeoffload.load.sample_video import (FACE_SCENES, NAMED_SOURCES, CyclicFrames, SampleVideoSpec, face_images, faces_source,
                                           folder_source, open_source, sample_images, sample_jpegs, video_source,
                                           write_video)

SMALL = SampleVideoSpec(frames_per_scene=4)


def test_frames_are_640x480_jpegs_of_realistic_size() -> None:
    jpegs = sample_jpegs(SMALL)
    assert len(jpegs) == 4 * len(SMALL.scenes)
    for data in jpegs:
        assert image_size(data) == (640, 480)
        assert 15_000 < len(data) < 200_000
    assert decode(jpegs[0]).shape == (480, 640, 3)


def test_consecutive_frames_pan_across_the_scene() -> None:
    images = sample_images(SMALL)
    first_scene = images[:4]
    differences = [float(np.mean(cv2.absdiff(a, b))) for a, b in zip(first_scene, first_scene[1:])]
    assert all(d > 1.0 for d in differences)


def test_astronaut_frames_contain_a_face_haar_finds() -> None:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    astronaut = sample_images(SampleVideoSpec(frames_per_scene=3, scenes=("astronaut",)))
    found = [len(cascade.detectMultiScale(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), 1.1, 5)) for img in astronaut]
    assert max(found) >= 1


def test_video_file_round_trips_through_opencv(tmp_path: Path) -> None:
    path = write_video(tmp_path / "sample.avi", SMALL, fps=5)
    capture = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        assert image.shape == (480, 640, 3)
        count += 1
    capture.release()
    assert count == 4 * len(SMALL.scenes)
    assert len(video_source(path, max_frames=5).frames) == 5


def test_sources_loop_and_cameras_start_at_different_frames(tmp_path: Path) -> None:
    frames = CyclicFrames((b"a", b"b", b"c"))
    assert frames.frame("cam0", 0) == frames.frame("cam0", 3)
    assert [frames.frame("cam0", i) for i in range(3)] != [frames.frame("cam1", i) for i in range(3)]
    for i, image in enumerate(sample_images(SampleVideoSpec(frames_per_scene=1))):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), image)
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(folder_source(tmp_path).frames) == 4
    assert len(open_source(str(tmp_path)).frames) == 4


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        sample_images(SampleVideoSpec(scenes=("moon",)))
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "nope.avi"))
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        folder_source(tmp_path)


def test_preprocessor_video_source_reads_the_written_file(tmp_path: Path) -> None:
    from edgeoffload.sources import FrameSource, parse_sources

    path = write_video(tmp_path / "sample.mp4", SMALL, fps=50)
    received: list[tuple[str, tuple[int, ...]]] = []
    (spec,) = parse_sources(f"cam1={path}")
    source = FrameSource(spec, lambda camera, image: received.append((camera, image.shape)),
                         lambda camera, data: None, fps=100).start()
    source.join(10)
    assert source.status.finished and source.status.last_error == ""
    assert received == [("cam1", (480, 640, 3))] * (4 * len(SMALL.scenes))


def test_sample_video_command_writes_a_file(tmp_path: Path) -> None:
    import argparse

    from edgeoffload.load import sample_video

    parser = argparse.ArgumentParser()
    sample_video.register(parser)
    out = tmp_path / "demo.avi"
    assert sample_video.run(parser.parse_args(["-o", str(out), "--frames-per-scene", "2", "--repeat", "2"])) == 0
    assert len(video_source(out).frames) == 2 * 2 * 4


def test_the_demo_detector_finds_a_face_in_most_faces_frames_at_the_demo_resolution() -> None:
    """The demo's frames go through the preprocessor (downscaled to the demo's 320 px, JPEG
    re-encoded) to the inference unit's default detector, OpenCV's shipped Haar frontal face."""
    from edgeoffload.demo import DEMO_MAX_SIDE
    from edgeoffload.detect import load_detector
    from edgeoffload.frames import decode
    from edgeoffload.units.inference import InferenceConfig
    from edgeoffload.units.preprocessor import PreprocessorConfig, FramePreparer

    config = InferenceConfig()
    assert config.kind == "haar-face"
    detector = load_detector(config.detector_config())
    preparer = FramePreparer(DEMO_MAX_SIDE, quality=PreprocessorConfig().jpeg_quality)
    frames = faces_source().frames
    found = [bool(detector.detect(decode(preparer.from_bytes(jpeg).payload))) for jpeg in frames]
    share = sum(found) / len(found)
    print(f"haar-face finds a face in {sum(found)}/{len(found)} faces frames ({share:.0%})")
    assert len(found) == 60 and share >= 0.8


def test_faces_frames_pan_over_several_backdrops_with_the_face_moving() -> None:
    images = face_images(SMALL)
    assert len(images) == 4 * len(FACE_SCENES) and all(image.shape == (480, 640, 3) for image in images)
    steps = [float(np.mean(cv2.absdiff(a, b))) for a, b in zip(images, images[1:])]
    assert min(steps) > 1.0  # every frame differs from the one before: the camera pans
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    centres = [tuple(cascade.detectMultiScale(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), 1.1, 5)[0][:2])
               for image in images[:4]]
    assert len(set(centres)) == 4  # the face sits still in the scene, so it moves in the frame


def test_named_sources_and_the_sample_sequence_is_unchanged() -> None:
    assert set(NAMED_SOURCES) == {"sample", "faces"}
    assert open_source("faces").frames == faces_source().frames
    # `sample` (and the default) are the frames the sim-vs-real experiments were measured on.
    assert open_source("sample").frames == open_source(None).frames == tuple(sample_jpegs())
    with pytest.raises(FileNotFoundError, match="'sample', 'faces'"):
        open_source("face")
