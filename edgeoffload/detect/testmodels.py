"""Generate real model files with random weights, for tests, benchmarks and the offline demo.

Nothing is downloaded: the Darknet files are written in the genuine binary format, the
OpenVINO IR is converted from them (so both backends run the same network), and a small
ONNX SSD-style model is built with `onnx.helper`. With `full_yolov3_tiny=True` the Darknet
cfg is the standard YOLOv3-tiny (416x416, 80 classes), so timings reflect the real shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeoffload.detect.darknet_cfg import HEAD_OBJECTNESS_BIAS, parse_cfg, random_weights, walk, write_weights

TINY_OBJECTNESS_BIAS = -1.5  # the toy head is narrower; this yields tens of boxes on a photo
_YOLO_ANCHORS = "10,14,  23,27,  37,58,  81,82,  135,169,  344,319"


def _conv(filters: int, size: int, activation: str = "leaky", batch_normalize: bool = True, stride: int = 1) -> str:
    bn = "batch_normalize=1\n" if batch_normalize else ""
    return f"[convolutional]\n{bn}filters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={activation}\n"


def _maxpool(stride: int) -> str:
    return f"[maxpool]\nsize=2\nstride={stride}\n"


def _yolo(mask: str, classes: int) -> str:
    return (f"[yolo]\nmask={mask}\nanchors={_YOLO_ANCHORS}\nclasses={classes}\nnum=6\njitter=.3\n"
            "ignore_thresh=.7\ntruth_thresh=1\nrandom=1\n")


def _net(input_size: tuple[int, int]) -> str:
    width, height = input_size
    return (f"[net]\nbatch=1\nsubdivisions=1\nwidth={width}\nheight={height}\nchannels=3\nmomentum=0.9\n"
            "decay=0.0005\nangle=0\nsaturation=1.5\nexposure=1.5\nhue=.1\nlearning_rate=0.001\n"
            "burn_in=1000\nmax_batches=500200\npolicy=steps\nsteps=400000,450000\nscales=.1,.1\n")


def yolov3_tiny_cfg(input_size: tuple[int, int] = (416, 416), classes: int = 80) -> str:
    """The standard YOLOv3-tiny network (layer for layer as published with Darknet)."""
    head = 3 * (5 + classes)
    backbone = [_conv(16, 3), _maxpool(2), _conv(32, 3), _maxpool(2), _conv(64, 3), _maxpool(2),
                _conv(128, 3), _maxpool(2), _conv(256, 3), _maxpool(2), _conv(512, 3), _maxpool(1),
                _conv(1024, 3)]
    coarse = [_conv(256, 1), _conv(512, 3), _conv(head, 1, "linear", False), _yolo("3,4,5", classes)]
    fine = ["[route]\nlayers = -4\n", _conv(128, 1), "[upsample]\nstride=2\n", "[route]\nlayers = -1, 8\n",
            _conv(256, 3), _conv(head, 1, "linear", False), _yolo("0,1,2", classes)]
    return "\n".join([_net(input_size), *backbone, *coarse, *fine])


def tiny_test_cfg(input_size: tuple[int, int] = (128, 128), classes: int = 3) -> str:
    """A YOLOv3-tiny-shaped toy: conv/maxpool backbone, two [yolo] heads joined by route+upsample."""
    head = 3 * (5 + classes)
    layers = [_conv(8, 3), _maxpool(2), _conv(16, 3), _maxpool(2), _conv(16, 3), _maxpool(2),  # 0-5
              _conv(32, 3), _maxpool(2), _conv(32, 3), _maxpool(1),                            # 6-9
              _conv(32, 1), _conv(head, 1, "linear", False), _yolo("3,4,5", classes),           # 10-12
              "[route]\nlayers = -3\n", _conv(16, 1), "[upsample]\nstride=2\n",                 # 13-15
              "[route]\nlayers = -1, 6\n", _conv(32, 3), _conv(head, 1, "linear", False),       # 16-18
              _yolo("0,1,2", classes)]                                                          # 19
    return "\n".join([_net(input_size), *layers])


@dataclass(frozen=True, slots=True)
class DarknetFiles:
    cfg_path: Path
    weights_path: Path
    labels_path: Path | None
    input_size: tuple[int, int]


def make_darknet_model(directory: str | Path, input_size: tuple[int, int] | None = None,
                       full_yolov3_tiny: bool = False, seed: int = 0) -> DarknetFiles:
    """Write `<name>.cfg` and `<name>.weights` (random, seeded) into `directory`.

    The toy model has 3 classes and a labels file; the full YOLOv3-tiny uses the COCO labels."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if full_yolov3_tiny:
        name, size, labels_path = "yolov3-tiny", input_size or (416, 416), None
        cfg, objectness_bias = yolov3_tiny_cfg(size), HEAD_OBJECTNESS_BIAS
    else:
        name, size, objectness_bias = "tiny-test", input_size or (128, 128), TINY_OBJECTNESS_BIAS
        cfg = tiny_test_cfg(size)
        labels_path = directory / f"{name}.names"
        labels_path.write_text("apple\nbanana\ncherry\n", encoding="utf-8")
    layers = walk(parse_cfg(cfg))
    cfg_path, weights_path = directory / f"{name}.cfg", directory / f"{name}.weights"
    cfg_path.write_text(cfg, encoding="utf-8")
    weights_path.write_bytes(write_weights(layers, random_weights(layers, seed, objectness_bias)))
    return DarknetFiles(cfg_path, weights_path, labels_path, size)


def make_openvino_model(directory: str | Path, input_size: tuple[int, int] | None = None,
                        full_yolov3_tiny: bool = False, seed: int = 0) -> tuple[Path, DarknetFiles]:
    """An OpenVINO IR (FP32) converted from `make_darknet_model(...)` with the same weights."""
    from edgeoffload.detect.darknet2ov import convert_files

    darknet = make_darknet_model(directory, input_size, full_yolov3_tiny, seed)
    xml_path = convert_files(darknet.cfg_path, darknet.weights_path, darknet.cfg_path.with_suffix(".xml"))
    return xml_path, darknet


def make_onnx_ssd_model(path: str | Path, boxes: Sequence[tuple[int, float, float, float, float]],
                        input_size: tuple[int, int] = (96, 96)) -> Path:
    """An ONNX model with an SSD DetectionOutput head [1, 1, N+1, 7] built with onnx.helper.

    Each (class_id, x_min, y_min, x_max, y_max) in `boxes` (0..1 coordinates) is reported with
    confidence = the mean input intensity (0..1), so a white frame yields every box at score 1
    and a black frame none; a final row with image_id -1 ends the list.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width, height = input_size
    rows = np.array([[0, c, 0, x0, y0, x1, y1] for c, x0, y0, x1, y1 in boxes] + [[-1, 0, 0, 0, 0, 0, 0]],
                    dtype=np.float32).reshape(1, 1, -1, 7)
    confidence_mask = np.zeros_like(rows)
    confidence_mask[0, 0, :-1, 2] = 1.0
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["brightness"], keepdims=1),
         helper.make_node("Mul", ["brightness", "confidence_mask"], ["confidence"]),
         helper.make_node("Add", ["rows", "confidence"], ["detection_out"])],
        "ssd_test",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("detection_out", TensorProto.FLOAT, list(rows.shape))],
        initializer=[numpy_helper.from_array(rows, "rows"), numpy_helper.from_array(confidence_mask, "confidence_mask")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
