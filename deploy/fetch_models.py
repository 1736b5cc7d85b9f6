"""Build-time model setup for the container image (stdlib only: runs before the package exists).

Writes /models/inference.yaml, the inference unit's default settings (the image points
INFER_CONFIG at it; a ConfigMap's INFER_* variables still override each field), and, when
the image is built with `--build-arg FETCH_YOLO=1`, first downloads the original demo's
YOLOv3-tiny .cfg/.weights. Unlike the demo's wget, the download is verified (size, and
SHA-256 when given) and moved into place atomically, so a truncated file fails the build
instead of a pod at start-up.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

YOLOV3_TINY_CFG_URL = "https://raw.githubusercontent.com/pjreddie/darknet/master/cfg/yolov3-tiny.cfg"
YOLOV3_TINY_WEIGHTS_URL = "https://pjreddie.com/media/files/yolov3-tiny.weights"
YOLOV3_TINY_WEIGHTS_BYTES = 35_434_956
BUILTIN_DETECTORS = ("haar-face", "hog-people")  # need no model files
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
CHUNK_BYTES = 1 << 20
CONFIG_NAME = "inference.yaml"


class FetchError(RuntimeError):
    """A download failed, does not match what was expected, or the settings are inconsistent."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file to fetch; `size` and `sha256` are checked when set."""

    url: str
    filename: str
    size: int | None = None
    sha256: str = ""


def fetch(artifact: Artifact, directory: Path, timeout_s: float = 60.0) -> Path:
    """Download `artifact` into `directory`, verify it, and move it into place atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / artifact.filename
    digest = hashlib.sha256()
    received = 0
    handle, partial_name = tempfile.mkstemp(dir=directory, prefix=f".{artifact.filename}.")
    partial = Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(artifact.url, timeout=timeout_s) as response:
            while chunk := response.read(CHUNK_BYTES):
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise FetchError(f"{artifact.url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
        verify(artifact, received, digest.hexdigest())
        partial.replace(destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    destination.chmod(0o644)
    return destination


def verify(artifact: Artifact, size: int, sha256: str) -> None:
    if artifact.size is not None and size != artifact.size:
        raise FetchError(f"{artifact.url}: got {size} bytes, expected {artifact.size}")
    if artifact.sha256 and sha256 != artifact.sha256.lower():
        raise FetchError(f"{artifact.url}: sha256 {sha256}, expected {artifact.sha256}")


def yolov3_tiny(weights_sha256: str = "", cfg_url: str = YOLOV3_TINY_CFG_URL,
                weights_url: str = YOLOV3_TINY_WEIGHTS_URL) -> tuple[Artifact, Artifact]:
    """The .cfg and .weights of the original demo's detector (size checked for the official file)."""
    size = YOLOV3_TINY_WEIGHTS_BYTES if weights_url == YOLOV3_TINY_WEIGHTS_URL else None
    return (Artifact(cfg_url, "yolov3-tiny.cfg"),
            Artifact(weights_url, "yolov3-tiny.weights", size, weights_sha256))


def inference_settings(detector: str, directory: Path) -> dict[str, str]:
    """InferenceConfig fields for the image's default detector (files must be in `directory`)."""
    if detector in BUILTIN_DETECTORS:
        return {"kind": detector}
    if detector == "darknet":
        weights, cfg = directory / "yolov3-tiny.weights", directory / "yolov3-tiny.cfg"
        missing = [str(p) for p in (weights, cfg) if not p.is_file()]
        if missing:
            raise FetchError(f"detector darknet needs {', '.join(missing)}: build with FETCH_YOLO=1")
        return {"kind": "darknet", "model_path": str(weights), "config_path": str(cfg)}
    raise FetchError(f"unknown default detector {detector!r}; choose from "
                     f"{', '.join((*BUILTIN_DETECTORS, 'darknet'))} (others: set INFER_* in the ConfigMap)")


def write_settings(settings: dict[str, str], directory: Path) -> Path:
    """JSON is valid YAML, so the stdlib can write what load_config reads."""
    path = directory / CONFIG_NAME
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    path.chmod(0o644)
    return path


def parse_flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Set up the image's default detector (and fetch YOLOv3-tiny).")
    parser.add_argument("directory", type=Path, help="where model files and inference.yaml go (e.g. /models)")
    parser.add_argument("--fetch-yolo", type=parse_flag, default=False, metavar="0|1")
    parser.add_argument("--detector", default="", help="default detector (default: darknet with --fetch-yolo 1, "
                                                       "else haar-face)")
    parser.add_argument("--weights-sha256", default="", help="expected SHA-256 of the weights (optional)")
    parser.add_argument("--cfg-url", default=YOLOV3_TINY_CFG_URL)
    parser.add_argument("--weights-url", default=YOLOV3_TINY_WEIGHTS_URL)
    args = parser.parse_args(argv)
    detector = args.detector or ("darknet" if args.fetch_yolo else "haar-face")
    try:
        args.directory.mkdir(parents=True, exist_ok=True)
        if args.fetch_yolo:
            for artifact in yolov3_tiny(args.weights_sha256, args.cfg_url, args.weights_url):
                path = fetch(artifact, args.directory)
                print(f"fetched {artifact.url} -> {path} ({path.stat().st_size} bytes)")
        path = write_settings(inference_settings(detector, args.directory), args.directory)
        print(f"default detector {detector}: {path}")
    except (FetchError, OSError) as exc:
        print(f"fetch_models: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
