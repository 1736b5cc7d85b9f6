"""Convert a YOLOv3-tiny-style Darknet model to an OpenVINO model with a decoded YOLO head.

The output is one tensor [1, N, 5+C] of (cx, cy, w, h in input pixels, objectness, class
probabilities), the layout `edgeoffload.detect.openvino` decodes. Batch norm is folded into
the convolutions. Input: [1, 3, H, W] RGB in 0..1, as Darknet expects.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from edgeoffload.detect.darknet_cfg import ConvWeights, Layer, input_shape, parse_cfg, read_weights, walk

BN_EPSILON = 1e-6  # Darknet divides by sqrt(var) + .000001
LEAKY_SLOPE = 0.1


def convert(cfg_text: str, weights: bytes) -> ov.Model:
    sections = parse_cfg(cfg_text)
    layers = walk(sections)
    params = read_weights(layers, weights)
    channels, height, width = input_shape(sections)
    image = ops.parameter([1, channels, height, width], ov.Type.f32, name="images")
    outputs: list[ov.Output] = []
    heads: list[ov.Output] = []
    for layer in layers:
        previous = outputs[-1] if outputs else image.output(0)
        kind = layer.section.kind
        if kind == "convolutional":
            node = _convolution(previous, layer, params[layer.index])
        elif kind == "maxpool":
            node = _max_pool(previous, layer)
        elif kind == "route":
            sources = [outputs[i] for i in layer.inputs]
            node = sources[0] if len(sources) == 1 else ops.concat(sources, axis=1).output(0)
        elif kind == "upsample":
            node = _upsample_nearest(previous, layer)
        else:  # yolo
            heads.append(_yolo_head(previous, layer, (width, height)))
            node = previous
        outputs.append(node)
    rows = heads[0] if len(heads) == 1 else ops.concat(heads, axis=1).output(0)
    result = ops.result(rows)
    result.output(0).get_tensor().set_names({"detections"})
    return ov.Model([result], [image], "darknet")


def convert_files(cfg_path: str | Path, weights_path: str | Path, xml_path: str | Path) -> Path:
    """Write an OpenVINO IR (.xml + .bin, FP32) converted from Darknet files; returns the .xml path."""
    model = convert(Path(cfg_path).read_text(encoding="utf-8"), Path(weights_path).read_bytes())
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return Path(xml_path)


def _constant(array: np.ndarray) -> ov.Output:
    return ops.constant(np.ascontiguousarray(array, dtype=np.float32)).output(0)


def _convolution(x: ov.Output, layer: Layer, conv: ConvWeights) -> ov.Output:
    size, stride = layer.section.int("size", 1), layer.section.int("stride", 1)
    pad = size // 2 if layer.section.int("pad", 0) else layer.section.int("padding", 0)
    weights, biases = conv.weights, conv.biases
    if conv.scales is not None:  # fold batch norm: scale * (conv - mean) / (sqrt(var) + eps) + bias
        factor = conv.scales / (np.sqrt(conv.variance) + BN_EPSILON)
        weights = weights * factor[:, None, None, None]
        biases = biases - conv.mean * factor
    out = ops.convolution(x, _constant(weights), [stride, stride], [pad, pad], [pad, pad], [1, 1]).output(0)
    out = ops.add(out, _constant(biases.reshape(1, -1, 1, 1))).output(0)
    activation = layer.section.options.get("activation", "logistic")
    if activation == "leaky":
        return ops.prelu(out, _constant(np.array([LEAKY_SLOPE]))).output(0)
    if activation == "linear":
        return out
    if activation == "logistic":
        return ops.sigmoid(out).output(0)
    raise ValueError(f"layer {layer.index}: activation {activation!r} is not supported")


def _max_pool(x: ov.Output, layer: Layer) -> ov.Output:
    size, stride = layer.section.int("size", 1), layer.section.int("stride", 1)
    pad = layer.section.int("padding", size - 1)
    begin, end = pad // 2, pad - pad // 2
    return ops.max_pool(x, [stride, stride], [1, 1], [begin, begin], [end, end], [size, size],
                        rounding_type="floor").output(0)


def _upsample_nearest(x: ov.Output, layer: Layer) -> ov.Output:
    """Nearest-neighbour upsampling as reshape + broadcast (exact, no interpolation semantics)."""
    stride = layer.section.int("stride", 2)
    channels, height, width = layer.in_shape
    expanded = ops.reshape(x, [1, channels, height, 1, width, 1], special_zero=False).output(0)
    tiled = ops.broadcast(expanded, ops.constant(np.array([1, channels, height, stride, width, stride], np.int64))).output(0)
    return ops.reshape(tiled, [1, channels, height * stride, width * stride], special_zero=False).output(0)


def _yolo_head(x: ov.Output, layer: Layer, net_size: tuple[int, int]) -> ov.Output:
    """Decode one [yolo] layer to rows (cx, cy, w, h, obj, classes) in input pixels."""
    section = layer.section
    classes = section.int("classes", 80)
    anchors = np.array(section.ints("anchors"), dtype=np.float32).reshape(-1, 2)
    mask = section.ints("mask") if "mask" in section.options else list(range(len(anchors)))
    count, (_channels, grid_h, grid_w) = len(mask), layer.in_shape
    fields = 5 + classes
    rows = ops.reshape(x, [1, count, fields, grid_h, grid_w], special_zero=False).output(0)
    rows = ops.transpose(rows, ops.constant(np.array([0, 1, 3, 4, 2], np.int64))).output(0)
    rows = ops.reshape(rows, [1, count * grid_h * grid_w, fields], special_zero=False).output(0)
    xy, wh, scores = ops.variadic_split(rows, ops.constant(np.int64(2)), ops.constant(np.array([2, 2, fields - 4], np.int64))).outputs()
    grid_y, grid_x = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    cells = np.broadcast_to(np.stack([grid_x, grid_y], axis=-1), (count, grid_h, grid_w, 2)).reshape(1, -1, 2)
    cell_size = np.array([net_size[0] / grid_w, net_size[1] / grid_h], dtype=np.float32)
    anchor_rows = np.broadcast_to(anchors[mask][:, None, None, :], (count, grid_h, grid_w, 2)).reshape(1, -1, 2)
    centres = ops.multiply(ops.add(ops.sigmoid(xy), _constant(cells)), _constant(cell_size)).output(0)
    sizes = ops.multiply(ops.exp(wh), _constant(anchor_rows)).output(0)
    return ops.concat([centres, sizes, ops.sigmoid(scores).output(0)], axis=2).output(0)
