import numpy as np
import openvino as ov
import pytest
from onnx import TensorProto, helper

from edgeoffload.detect import DetectorConfig, DetectorConfigError, load_detector, load_pool
from edgeoffload.detect.openvino import OpenVINODetector, UnsupportedModelError
from edgeoffload.detect.testmodels import make_onnx_ssd_model


@pytest.fixture(scope="module")
def ssd_onnx(tmp_path_factory):
    """SSD head reporting (class, x0, y0, x1, y1) in 0..1 of the 96x96 input, scored by brightness."""
    boxes = [(0, 0.1, 0.2, 0.5, 0.6), (2, 0.5, 0.5, 1.0, 1.0)]
    return make_onnx_ssd_model(tmp_path_factory.mktemp("ssd") / "ssd.onnx", boxes, input_size=(96, 96))


def openvino_config(path, **overrides) -> DetectorConfig:
    return DetectorConfig(**{"kind": "openvino", "model_path": str(path), "precision": "f32", **overrides})


def test_ir_converted_from_darknet_gives_the_same_detections_as_opencv(tiny_models, astronaut_bgr):
    xml, files = tiny_models
    labels = str(files.labels_path)
    openvino = load_detector(openvino_config(xml, labels_path=labels, conf_threshold=0.2))
    darknet = load_detector(DetectorConfig(kind="darknet", model_path=str(files.weights_path),
                                           config_path=str(files.cfg_path), labels_path=labels,
                                           input_size=files.input_size, conf_threshold=0.2))
    assert isinstance(openvino, OpenVINODetector)
    assert openvino.input_size == (128, 128) and openvino.precision == "f32"
    frame = astronaut_bgr[50:450]
    ours, reference = openvino.detect(frame), darknet.detect(frame)
    assert reference
    assert [d.label for d in ours] == [d.label for d in reference]
    assert np.allclose([d.score for d in ours], [d.score for d in reference], atol=1e-4)
    assert np.allclose([d.box for d in ours], [d.box for d in reference], atol=0.05)


def test_detect_many_matches_detect_per_frame(tiny_models, astronaut_bgr):
    xml, files = tiny_models
    detector = load_detector(openvino_config(xml, labels_path=str(files.labels_path), conf_threshold=0.2,
                                             performance_hint="THROUGHPUT"))
    frames = [astronaut_bgr, astronaut_bgr[:256], astronaut_bgr[:, ::-1].copy(), astronaut_bgr[100:, 30:]]
    assert detector.detect_many(frames, jobs=2) == [detector.detect(frame) for frame in frames]
    assert detector.detect_many([]) == []


def test_onnx_ssd_head_is_decoded_to_frame_pixels(ssd_onnx):
    detector = load_detector(openvino_config(ssd_onnx, labels_path=None, conf_threshold=0.5))
    assert detector.input_size == (96, 96)
    white = np.full((50, 100, 3), 255, np.uint8)  # letterboxed to 96x48 + 24 px grey (114) bars
    found = detector.detect(white)
    expected_score = (48 * 1.0 + 48 * 114 / 255) / 96
    assert [d.label for d in found] == ["person", "car"]  # COCO ids 0 and 2
    assert np.allclose([d.score for d in found], expected_score, atol=1e-3)
    # (0.1, 0.2)-(0.5, 0.6) of 96 px, minus the 24 px top bar, divided by scale 0.96, clipped at y=0
    assert np.allclose(found[0].box, (10.0, 0.0, 40.0, 35.0), atol=0.05)
    assert np.allclose(found[1].box, (50.0, 25.0, 50.0, 25.0), atol=0.05)
    assert detector.detect(np.zeros((50, 100, 3), np.uint8)) == []


def test_unsupported_output_head_is_refused_with_the_shapes(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["score"], axes=[2, 3], keepdims=0)], "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "classifier.onnx"
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    with pytest.raises(UnsupportedModelError, match=r"unsupported output shape\(s\) \[\(1, 3\)\].*SSD"):
        load_detector(openvino_config(path))


def test_one_compiled_model_is_shared_by_all_threads(tiny_models):
    xml, _files = tiny_models
    pool = load_pool(openvino_config(xml), size=4)
    assert len(pool.instances) == 1 and pool.size == 4


def test_default_precision_is_the_device_default_and_f32_can_be_forced(tiny_models):
    xml, _files = tiny_models
    default = load_detector(openvino_config(xml, precision=""))
    assert default.precision == ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    assert load_detector(openvino_config(xml, precision="f32")).precision == "f32"


def test_missing_model_file_names_the_setting(tmp_path):
    with pytest.raises(DetectorConfigError, match="model_path: file not found"):
        load_detector(openvino_config(tmp_path / "absent.xml"))
