"""Shared fixtures: a real photo and generated model files (no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from edgeoffload.detect.testmodels import DarknetFiles, make_openvino_model


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DarknetFiles]:
    """(OpenVINO IR converted from the toy Darknet model, the Darknet files themselves)."""
    return make_openvino_model(tmp_path_factory.mktemp("tiny-yolo"))
