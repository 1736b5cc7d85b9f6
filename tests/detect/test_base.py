import pytest

from edgeoffload.detect import Detector, DetectorConfig, DetectorConfigError, load_detector


@pytest.mark.parametrize("settings, field", [
    (dict(kind="yolo9000"), "kind"),
    (dict(kind="darknet", config_path="x.cfg"), "model_path"),
    (dict(kind="darknet", model_path="x.weights"), "config_path"),
    (dict(kind="openvino"), "model_path"),
    (dict(conf_threshold=0.0), "conf_threshold"),
    (dict(nms_threshold=1.5), "nms_threshold"),
    (dict(threads=0), "threads"),
    (dict(input_size=(16, 416)), "input_size"),
    (dict(precision="int4"), "precision"),
    (dict(performance_hint="fast"), "performance_hint"),
])
def test_invalid_settings_name_the_field(settings, field):
    with pytest.raises(DetectorConfigError) as raised:
        DetectorConfig(**settings)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_builtin_detectors_satisfy_the_protocol():
    for kind in ("haar-face", "hog-people"):
        assert isinstance(load_detector(DetectorConfig(kind=kind)), Detector)


def test_custom_cascade_file_is_used(tmp_path):
    import cv2

    eyes = tmp_path / "eyes.xml"
    with open(cv2.data.haarcascades + "haarcascade_eye.xml", "rb") as source:
        eyes.write_bytes(source.read())
    assert load_detector(DetectorConfig(kind="haar-face", model_path=str(eyes))).name == "haar:eyes"
    broken = tmp_path / "broken.xml"
    broken.write_text("this is not XML")
    with pytest.raises(ValueError, match="not a valid OpenCV cascade"):
        load_detector(DetectorConfig(kind="haar-face", model_path=str(broken)))
