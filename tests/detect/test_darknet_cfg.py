import struct

import numpy as np
import pytest

from edgeoffload.detect.darknet_cfg import (HEADER, ConvWeights, parse_cfg, random_weights, read_weights, walk,
                                            write_weights)
from edgeoffload.detect.testmodels import tiny_test_cfg, yolov3_tiny_cfg

# Size of the yolov3-tiny.weights file published with Darknet: 20-byte header + 8,858,734 floats.
PUBLISHED_YOLOV3_TINY_WEIGHTS_BYTES = 35_434_956


def test_standard_yolov3_tiny_has_the_published_shape_and_weight_count():
    layers = walk(parse_cfg(yolov3_tiny_cfg()))
    yolo = [layer for layer in layers if layer.section.kind == "yolo"]
    assert [layer.in_shape for layer in yolo] == [(255, 13, 13), (255, 26, 26)]
    assert len(layers) == 24
    assert len(write_weights(layers, random_weights(layers))) == PUBLISHED_YOLOV3_TINY_WEIGHTS_BYTES


def test_weights_are_written_in_darknet_order_with_a_version_header():
    cfg = "[net]\nwidth=8\nheight=8\nchannels=2\n" \
          "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=1\nstride=1\npad=1\nactivation=leaky\n" \
          "[convolutional]\nfilters=1\nsize=1\nstride=1\npad=1\nactivation=linear\n"
    layers = walk(parse_cfg(cfg))
    bn = ConvWeights(biases=np.full(3, 1.0), scales=np.full(3, 2.0), mean=np.full(3, 3.0),
                     variance=np.full(3, 4.0), weights=np.full((3, 2, 1, 1), 5.0))
    plain = ConvWeights(biases=np.full(1, 6.0), weights=np.full((1, 3, 1, 1), 7.0))
    data = write_weights(layers, {0: bn, 1: plain})
    assert struct.unpack_from("<iiiq", data) == (0, 2, 0, 0)
    floats = np.frombuffer(data, "<f4", offset=HEADER.size)
    expected = [1.0] * 3 + [2.0] * 3 + [3.0] * 3 + [4.0] * 3 + [5.0] * 6 + [6.0] + [7.0] * 3
    assert floats.tolist() == expected
    parsed = read_weights(layers, data)
    assert parsed[0].variance.tolist() == [4.0] * 3 and parsed[1].scales is None
    assert parsed[1].weights.shape == (1, 3, 1, 1)


def test_weights_that_do_not_match_the_cfg_are_refused():
    layers = walk(parse_cfg(tiny_test_cfg()))
    data = write_weights(layers, random_weights(layers))
    with pytest.raises(ValueError, match="shorter"):
        read_weights(layers, data[:-4])
    with pytest.raises(ValueError, match="more than the cfg"):
        read_weights(layers, data + b"\0\0\0\0")


def test_unsupported_layers_and_malformed_cfg_are_named():
    with pytest.raises(ValueError, match=r"\[shortcut\] is not supported"):
        walk(parse_cfg("[net]\nwidth=32\nheight=32\n[shortcut]\nfrom=-1\n"))
    with pytest.raises(ValueError, match="must start with a \\[net\\]"):
        parse_cfg("[convolutional]\nfilters=1\n")


def test_random_weights_are_reproducible_per_seed():
    layers = walk(parse_cfg(tiny_test_cfg()))
    assert write_weights(layers, random_weights(layers, 3)) == write_weights(layers, random_weights(layers, 3))
    assert write_weights(layers, random_weights(layers, 3)) != write_weights(layers, random_weights(layers, 4))
