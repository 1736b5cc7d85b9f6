import numpy as np

from edgeoffload.detect.decode import clip_box, ssd_rows, to_detections, yolo_rows
from edgeoffload.frames import letterbox


def test_yolo_rows_normalized_with_premultiplied_scores():
    rows = np.array([[0.5, 0.5, 0.25, 0.5, 0.9, 0.1, 0.8]], np.float32)
    boxes, scores, ids = yolo_rows(rows, (200, 100), normalized=True, objectness_in_scores=True)
    assert boxes.tolist() == [[75.0, 25.0, 50.0, 50.0]]
    assert np.allclose(scores, [0.8]) and ids.tolist() == [1]


def test_yolo_rows_in_pixels_multiply_objectness():
    rows = np.array([[[10, 20, 4, 8, 0.5, 0.6, 0.2]]], np.float32)
    boxes, scores, ids = yolo_rows(rows, (64, 64), normalized=False, objectness_in_scores=False)
    assert boxes.tolist() == [[8.0, 16.0, 4.0, 8.0]]
    assert np.allclose(scores, [0.3]) and ids.tolist() == [0]


def test_ssd_rows_stop_at_the_first_negative_image_id():
    out = np.array([[0, 1, 0.9, 0.0, 0.0, 0.5, 0.5], [-1, 0, 0, 0, 0, 0, 0], [0, 2, 0.9, 0, 0, 1, 1]],
                   np.float32).reshape(1, 1, 3, 7)
    boxes, scores, ids = ssd_rows(out, (100, 50))
    assert boxes.tolist() == [[0.0, 0.0, 50.0, 25.0]] and ids.tolist() == [1]


def test_nms_is_per_class_and_boxes_map_back_to_the_frame():
    frame = np.zeros((100, 200, 3), np.uint8)
    boxed = letterbox(frame, (100, 100))  # scale 0.5, 25 px bars top and bottom
    boxes = np.array([[10, 30, 20, 20], [11, 31, 20, 20], [10, 30, 20, 20], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    ids = np.array([0, 0, 1, 0])
    found = to_detections(boxes, scores, ids, letterboxed=boxed, original_shape=frame.shape,
                          labels=("a", "b"), conf_threshold=0.5, nms_threshold=0.45)
    # the 0.8 box overlaps the 0.9 one of its class; the 0.7 one is another class; the 0.95 one
    # lies entirely in the letterbox bar above the frame, so it has no area left after clipping
    assert [(d.label, round(d.score, 2)) for d in found] == [("a", 0.9), ("b", 0.7)]
    assert found[0].box == (20.0, 10.0, 40.0, 40.0)


def test_clip_box_keeps_boxes_inside():
    assert clip_box((-5, -5, 20, 20), 10, 10) == (0.0, 0.0, 10.0, 10.0)
    assert clip_box((12, 0, 5, 5), 10, 10)[2] == 0.0
