"""Memory stays within the Deployments' limits at the documented maximum input.

Issue 16: one 4096x4096 PNG (tens of KiB on the wire, within INFER_MAX_PIXELS) took an
inference worker to 1.1 GiB, four concurrent ones past the 1 GiB limit (an OOM kill on
Kubernetes); eight took the preprocessor past its 512 MiB. The units run here with their
ConfigMaps' settings under real gunicorn, and the resident memory of the whole process tree
(what the container's limit counts) is sampled while the frames are processed.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import cv2
import numpy as np
import pytest
import requests

from edgeoffload.broker import BrokerProcess
from edgeoffload.frames import DEFAULT_MAX_PIXELS
from edgeoffload.localscale import peak_tree_rss
from edgeoffload.serve import UnitProcess, start_unit
from edgeoffload.unitfolders import unit_settings

SIDE = 4096


def largest_png(seed: int = 0) -> bytes:
    """A SIDE x SIDE PNG (the most pixels the units accept) that compresses to a small body:
    64-pixel blocks of random colours, so the detectors have edges to work on."""
    blocks = np.random.default_rng(seed).integers(0, 256, (SIDE // 64, SIDE // 64, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 64, axis=0), 64, axis=1)
    return cv2.imencode(".png", image)[1].tobytes()


def deployed_preprocessor(broker: BrokerProcess, inference_url: str) -> UnitProcess:
    """The preprocessor with its ConfigMap's settings, sending to one inference unit, on `broker`."""
    settings = unit_settings("preprocessor")
    env = {**settings.env, "PRE_EDGE_URL": inference_url, "PRE_CLOUD_URL": inference_url,
           "PRE_EDGE_DISCOVERY": "static", "PRE_CLOUD_DISCOVERY": "static", "PRE_MQTT_HOST": broker.host,
           "PRE_MQTT_PORT": str(broker.port), "PRE_MQTT_PASSWORD": broker.users["preprocessor"],
           "PRE_MQTT_CAFILE": ""}
    return start_unit("preprocessor", env=env, threads=int(settings.env.get("THREADS", "8")))


def post_concurrently(url: str, body: bytes, count: int) -> list[int]:
    def post(_index: int) -> int:
        return requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=120).status_code
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


@pytest.fixture(scope="module")
def png() -> bytes:
    body = largest_png()
    assert SIDE * SIDE == DEFAULT_MAX_PIXELS and len(body) < 2 << 20  # far within the 8 MiB body limit
    return body


@pytest.fixture(scope="module")
def inference() -> Iterator[UnitProcess]:
    env = unit_settings("edge-inference").env
    unit = start_unit("inference", env={**env, "INFER_KIND": "haar-face"}, workers=int(env.get("WORKERS", "1")),
                      threads=int(env.get("THREADS", "8")))
    yield unit
    unit.stop()


def test_four_concurrent_largest_pngs_stay_within_the_inference_limit(inference: UnitProcess, png: bytes) -> None:
    limit = unit_settings("edge-inference").memory_limit
    statuses: list[int] = []
    peak = peak_tree_rss(inference.process.pid,
                         lambda: statuses.extend(post_concurrently(inference.url + "/infer", png, 4)))
    assert statuses == [200] * 4
    assert peak < 0.8 * limit, f"peak {peak / 2**20:.0f} MiB against a limit of {limit / 2**20:.0f} MiB"


def test_the_largest_frame_is_detected_at_the_working_size_and_boxes_come_back_in_its_pixels(
        inference: UnitProcess) -> None:
    from skimage import data
    face = np.ascontiguousarray(data.astronaut()[:, :, ::-1])      # 512x512, one face
    big = cv2.resize(face, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
    body = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()
    small = requests.post(inference.url + "/infer", data=cv2.imencode(".jpg", face)[1].tobytes(),
                          headers={"Content-Type": "image/jpeg"}, timeout=60).json()["detections"]
    large = requests.post(inference.url + "/infer", data=body, headers={"Content-Type": "image/jpeg"},
                          timeout=60).json()["detections"]
    assert small and large
    expected = [v * SIDE / 512 for v in small[0]["box"]]
    assert all(abs(a - b) < 0.1 * expected[2] for a, b in zip(large[0]["box"], expected)), (large[0], expected)


def test_eight_concurrent_largest_pngs_stay_within_the_preprocessor_limit(broker: BrokerProcess,
                                                                           inference: UnitProcess, png: bytes) -> None:
    settings = unit_settings("preprocessor")
    with deployed_preprocessor(broker, inference.url) as unit:
        statuses: list[int] = []
        peak = peak_tree_rss(unit.process.pid, lambda: statuses.extend(
            post_concurrently(unit.url + "/process?camera=big", png, 8)))
    assert set(statuses) <= {202, 503} and statuses.count(202) >= 1, statuses
    assert peak < 0.8 * settings.memory_limit, \
        f"peak {peak / 2**20:.0f} MiB against a limit of {settings.memory_limit / 2**20:.0f} MiB"
