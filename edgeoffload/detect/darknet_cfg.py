"""Darknet model files: parse a .cfg, walk its layer shapes, and read/write .weights.

Covers the layer types of YOLOv3-tiny-style networks ([convolutional], [maxpool], [route],
[upsample], [yolo]); used to generate test models and to convert Darknet models to OpenVINO.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

SUPPORTED_LAYERS = ("convolutional", "maxpool", "route", "upsample", "yolo")
HEAD_WEIGHT_GAIN, HEAD_OBJECTNESS_BIAS = 0.5, -3.0
HEADER = struct.Struct("<iiiq")  # major, minor, revision, images seen (int64 since version 0.2)


@dataclass(frozen=True, slots=True)
class Section:
    kind: str
    options: dict[str, str]

    def int(self, key: str, default: int) -> int:
        return int(self.options.get(key, default))

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer with its input/output shape (channels, height, width)."""

    index: int
    section: Section
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    inputs: tuple[int, ...] = field(default_factory=tuple)  # absolute indices of route sources


@dataclass(frozen=True, slots=True)
class ConvWeights:
    """One convolution's parameters, in Darknet order; BN terms are None without batch_normalize."""

    biases: np.ndarray
    weights: np.ndarray  # [filters, channels, k, k]
    scales: np.ndarray | None = None
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None


def parse_cfg(text: str) -> list[Section]:
    """Sections in file order; the first must be [net]."""
    sections: list[Section] = []
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append(Section(line[1:-1].strip(), {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ValueError(f"cannot parse cfg line {raw_line!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise ValueError("a darknet cfg must start with a [net] section")
    return sections


def input_shape(sections: list[Section]) -> tuple[int, int, int]:
    net = sections[0]
    return net.int("channels", 3), net.int("height", 416), net.int("width", 416)


def walk(sections: list[Section]) -> list[Layer]:
    """Every layer with its shapes; ValueError for layer types outside SUPPORTED_LAYERS."""
    layers: list[Layer] = []
    shape = input_shape(sections)
    for index, section in enumerate(sections[1:]):
        inputs: tuple[int, ...] = ()
        channels, height, width = shape
        if section.kind == "convolutional":
            size, stride = section.int("size", 1), section.int("stride", 1)
            pad = size // 2 if section.int("pad", 0) else section.int("padding", 0)
            out = (section.int("filters", 1), (height + 2 * pad - size) // stride + 1,
                   (width + 2 * pad - size) // stride + 1)
        elif section.kind == "maxpool":
            size, stride = section.int("size", 1), section.int("stride", 1)
            pad = section.int("padding", size - 1)
            out = (channels, (height + pad - size) // stride + 1, (width + pad - size) // stride + 1)
        elif section.kind == "route":
            inputs = tuple(i if i >= 0 else index + i for i in section.ints("layers"))
            sources = [layers[i].out_shape for i in inputs]
            out = (sum(s[0] for s in sources), sources[0][1], sources[0][2])
        elif section.kind == "upsample":
            stride = section.int("stride", 2)
            out = (channels, height * stride, width * stride)
        elif section.kind == "yolo":
            out = shape
        else:
            raise ValueError(f"layer {index}: [{section.kind}] is not supported (supported: {', '.join(SUPPORTED_LAYERS)})")
        layers.append(Layer(index, section, shape, out, inputs))
        shape = out
    return layers


def conv_layers(layers: list[Layer]) -> Iterator[Layer]:
    return (layer for layer in layers if layer.section.kind == "convolutional")


def _conv_sizes(layer: Layer) -> tuple[int, int, int, bool]:
    filters = layer.out_shape[0]
    channels = layer.in_shape[0]
    size = layer.section.int("size", 1)
    return filters, channels, size, bool(layer.section.int("batch_normalize", 0))


def check_weights(cfg_text: str, data: bytes) -> None:
    """ValueError unless `data` holds exactly the parameters the cfg needs.

    OpenCV loads a truncated .weights file without complaint (the rest stays zero), so a
    half-downloaded model would serve nonsense; this catches it. Networks with layer types
    outside SUPPORTED_LAYERS are not checked."""
    try:
        layers = walk(parse_cfg(cfg_text))
    except ValueError:
        return
    expected = 0
    for layer in conv_layers(layers):
        filters, channels, size, batch_norm = _conv_sizes(layer)
        expected += filters * (4 if batch_norm else 1) + filters * channels * size * size
    if len(data) < HEADER.size - 4:
        raise ValueError("weights file is shorter than its header")
    major, minor = struct.unpack_from("<ii", data)
    header = HEADER.size if major * 10 + minor >= 2 else HEADER.size - 4
    found = (len(data) - header) / 4
    if found != expected:
        raise ValueError(f"weights file holds {found:.0f} parameters, the cfg needs {expected}")


def read_weights(layers: list[Layer], data: bytes) -> dict[int, ConvWeights]:
    """Convolution parameters by layer index; ValueError if the file size does not match the cfg."""
    major, minor, _revision, _seen = HEADER.unpack_from(data)
    offset = HEADER.size if major * 10 + minor >= 2 else HEADER.size - 4
    values = np.frombuffer(data, dtype="<f4", offset=offset)
    position = 0

    def take(count: int) -> np.ndarray:
        nonlocal position
        if position + count > len(values):
            raise ValueError("weights file is shorter than the cfg requires")
        chunk = values[position:position + count]
        position += count
        return chunk.astype(np.float32)

    result: dict[int, ConvWeights] = {}
    for layer in conv_layers(layers):
        filters, channels, size, batch_norm = _conv_sizes(layer)
        if batch_norm:
            biases, scales, mean, variance = take(filters), take(filters), take(filters), take(filters)
        else:
            biases, scales, mean, variance = take(filters), None, None, None
        weights = take(filters * channels * size * size).reshape(filters, channels, size, size)
        result[layer.index] = ConvWeights(biases, weights, scales, mean, variance)
    if position != len(values):
        raise ValueError(f"weights file has {len(values) - position} values more than the cfg uses")
    return result


def write_weights(layers: list[Layer], params: dict[int, ConvWeights]) -> bytes:
    """The .weights bytes for `params` (header version 0.2.0, seen = 0)."""
    chunks = [HEADER.pack(0, 2, 0, 0)]
    for layer in conv_layers(layers):
        conv = params[layer.index]
        parts = [conv.biases]
        if conv.scales is not None:
            parts += [conv.scales, conv.mean, conv.variance]
        parts.append(conv.weights)
        chunks += [np.ascontiguousarray(p, dtype="<f4").tobytes() for p in parts]  # type: ignore[arg-type]
    return b"".join(chunks)


def random_weights(layers: list[Layer], seed: int = 0,
                   objectness_bias: float = HEAD_OBJECTNESS_BIAS) -> dict[int, ConvWeights]:
    """He-initialised convolutions with mild batch-norm statistics, so activations stay bounded.

    Convolutions feeding a [yolo] layer get small weights and a low objectness bias, so like a
    trained model only a handful of boxes pass a usual confidence threshold, not hundreds."""
    rng = np.random.default_rng(seed)
    params: dict[int, ConvWeights] = {}
    for layer in conv_layers(layers):
        filters, channels, size, batch_norm = _conv_sizes(layer)
        std = np.sqrt(2.0 / (channels * size * size))
        feeds_yolo = layer.index + 1 < len(layers) and layers[layer.index + 1].section.kind == "yolo"
        if feeds_yolo:
            std *= HEAD_WEIGHT_GAIN
        weights = rng.normal(0.0, std, (filters, channels, size, size)).astype(np.float32)
        biases = rng.normal(0.0, 0.1, filters).astype(np.float32)
        if feeds_yolo:
            fields = 5 + layers[layer.index + 1].section.int("classes", 80)
            objectness = np.arange(filters) % fields == 4
            biases[objectness] = rng.normal(objectness_bias, 1.0, int(objectness.sum()))
        if batch_norm:
            params[layer.index] = ConvWeights(
                biases, weights, scales=rng.uniform(0.5, 1.5, filters).astype(np.float32),
                mean=rng.normal(0.0, 0.1, filters).astype(np.float32),
                variance=rng.uniform(0.5, 1.5, filters).astype(np.float32))
        else:
            params[layer.index] = ConvWeights(biases, weights)
    return params
