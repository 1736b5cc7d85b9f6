from edgeoffload.detect import DetectorConfig, load_detector
from edgeoffload.records import Detection

# The astronaut's face in skimage.data.astronaut() (512x512), (x, y, w, h), located by hand.
ASTRONAUT_FACE = (170.0, 60.0, 105.0, 110.0)


def iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter_w = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    inter_h = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = inter_w * inter_h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_haar_finds_the_astronauts_face(astronaut_bgr):
    detector = load_detector(DetectorConfig(kind="haar-face"))
    faces = detector.detect(astronaut_bgr)
    assert detector.name == "haar-face" and detector.input_size is None
    assert len(faces) == 1
    assert faces[0].label == "face"
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.6


def test_haar_finds_nothing_on_a_blank_frame(astronaut_bgr):
    detector = load_detector(DetectorConfig(kind="haar-face"))
    assert detector.detect(astronaut_bgr * 0) == []


def test_hog_returns_person_detections_inside_the_frame(astronaut_bgr):
    detector = load_detector(DetectorConfig(kind="hog-people"))
    people = detector.detect(astronaut_bgr)
    assert people, "HOG finds at least one window on the astronaut photo"
    height, width = astronaut_bgr.shape[:2]
    for person in people:
        assert isinstance(person, Detection) and person.label == "person"
        x, y, w, h = person.box
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
    assert [p.score for p in people] == sorted((p.score for p in people), reverse=True)
