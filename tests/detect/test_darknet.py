import threading

import numpy as np
import pytest

from edgeoffload.detect import DetectorConfig, DetectorConfigError, load_detector, load_pool
from edgeoffload.detect.darknet import DarknetDetector
from edgeoffload.records import Detection


def darknet_config(files, **overrides) -> DetectorConfig:
    settings = dict(kind="darknet", model_path=str(files.weights_path), config_path=str(files.cfg_path),
                    labels_path=str(files.labels_path), input_size=files.input_size, conf_threshold=0.2)
    return DetectorConfig(**{**settings, **overrides})


def test_generated_darknet_model_loads_and_detects_in_frame_pixels(tiny_models, astronaut_bgr):
    _xml, files = tiny_models
    frame = astronaut_bgr[:300]  # not square: exercises the letterbox mapping
    detector = load_detector(darknet_config(files))
    assert isinstance(detector, DarknetDetector)
    assert detector.name == "darknet:tiny-test" and detector.input_size == (128, 128)
    found = detector.detect(frame)
    assert found, "the seeded toy model reports boxes on this photo"
    for detection in found:
        assert isinstance(detection, Detection)
        assert detection.label in ("apple", "banana", "cherry")
        assert 0.2 <= detection.score <= 1.0
        x, y, w, h = detection.box
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 512 + 1e-3 and y + h <= 300 + 1e-3
    assert len(detector.detect(frame)) == len(found), "inference is deterministic"


def test_confidence_threshold_filters(tiny_models, astronaut_bgr):
    _xml, files = tiny_models
    low = load_detector(darknet_config(files, conf_threshold=0.2)).detect(astronaut_bgr)
    high = load_detector(darknet_config(files, conf_threshold=0.3)).detect(astronaut_bgr)
    assert len(high) < len(low)
    assert all(d.score >= 0.3 for d in high)


def test_pool_gives_each_thread_its_own_net_and_results_match(tiny_models, astronaut_bgr):
    _xml, files = tiny_models
    pool = load_pool(darknet_config(files), size=3)
    assert len({id(instance) for instance in pool.instances}) == 3
    expected = pool.detect(astronaut_bgr)
    results: list = []

    def work() -> None:
        for _ in range(5):
            results.append(pool.detect(astronaut_bgr, timeout=30))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 15
    assert all(result == expected for result in results)


def test_letterbox_maps_boxes_back_for_a_scaled_frame(tiny_models, astronaut_bgr):
    """The same content at twice the resolution yields the same boxes at twice the coordinates."""
    import cv2

    _xml, files = tiny_models
    detector = load_detector(darknet_config(files))
    small = cv2.resize(astronaut_bgr, (256, 128), interpolation=cv2.INTER_AREA)
    large = cv2.resize(small, (512, 256), interpolation=cv2.INTER_NEAREST)
    a, b = detector.detect(small), detector.detect(large)
    assert a and len(a) == len(b)
    assert np.allclose([d.box for d in b], [[2 * v for v in d.box] for d in a], atol=2.0)


def test_truncated_weights_are_refused_although_opencv_would_accept_them(tiny_models, tmp_path):
    _xml, files = tiny_models
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(files.weights_path.read_bytes()[:-400])
    with pytest.raises(DetectorConfigError, match="model_path: .*holds .* parameters, the cfg needs"):
        load_detector(darknet_config(files, model_path=str(truncated)))
