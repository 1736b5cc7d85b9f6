import pytest

from edgeoffload.detect.labels import COCO_LABELS, label_of, load_labels


def test_default_labels_are_the_80_coco_classes():
    assert load_labels(None) is COCO_LABELS
    assert len(COCO_LABELS) == 80 and len(set(COCO_LABELS)) == 80
    assert (COCO_LABELS[0], COCO_LABELS[2], COCO_LABELS[79]) == ("person", "car", "toothbrush")


def test_labels_file_skips_blank_lines(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\n  dog \n")
    assert load_labels(path) == ("cat", "dog")
    assert label_of(("cat", "dog"), 1) == "dog" and label_of(("cat", "dog"), 7) == "class_7"


def test_empty_labels_file_is_refused(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no labels"):
        load_labels(path)
