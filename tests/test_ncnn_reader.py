"""The ncnn .param/.bin reader (litedet.models.ncnn_import) on small hand-written files.

Each file is built in ``tmp_path`` so that every property is checked exactly: how values and arrays
parse, the one-line error naming the file and line for each kind of bad .param, the decoding of each
.bin storage (fp32, fp16, int8, lookup table) and the message of a .bin that is too short.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from conftest import require_shared
from litedet.errors import UserError
from litedet.models.ncnn_import import _conv_bn_pairs, read_ncnn_model, read_ncnn_param

TAG_FP32 = 0
TAG_FP32_SCALED = 0x0002C056
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_TABLE = 0x00000001  # any other non-zero tag: a 256-entry float table + uint8 indices


def _param(tmp_path: Path, *lines: str, name: str = "model.param") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        read_ncnn_param(path)
    return str(info.value)


def _not_a_model(path: Path, why: str) -> str:
    return f"{path}: not a litedet/ncnn model ({why})"


# ---- values and arrays ----------------------------------------------------------------------------


def test_array_values_parse_to_exactly_the_listed_elements(tmp_path):
    """``-23300 - id = count,v1,...`` is array parameter ``id`` holding v1..., without the count;
    id 0 (key -23300 itself) is an array too."""
    path = _param(
        tmp_path,
        "7767517",
        "2 2",
        "Input data 0 1 data",
        "Reshape r 1 1 data out -23300=3,1,2,3 -23303=2,-1,4.5 1=7",
    )
    layers = read_ncnn_param(path)
    params = layers[1].params
    assert params == {0: [1, 2, 3], 3: [-1, 4.5], 1: 7}
    assert [type(v) for v in params[3]] == [int, float]


def test_scalar_values_keep_their_int_or_float_type(tmp_path):
    """Integers (signed or with a '+') stay ints; a '.', 'e' or 'E' makes a float."""
    path = _param(
        tmp_path,
        "7767517",
        "1 1",
        "Clip c 0 1 out 0=+5 1=1E3 2=2e-1 3=-4 4=0.5 5=-1.5E2 6=0",
    )
    params = read_ncnn_param(path)[0].params
    assert params == {0: 5, 1: 1000.0, 2: 0.2, 3: -4, 4: 0.5, 5: -150.0, 6: 0}
    assert {key: type(value) for key, value in params.items()} == {
        0: int, 1: float, 2: float, 3: int, 4: float, 5: float, 6: int,
    }


def test_layer_fields_blobs_and_zero_outputs_are_read(tmp_path):
    """Type, name, inputs and outputs come from the line; a layer with no outputs (a sink) is valid."""
    path = _param(
        tmp_path,
        "7767517",
        "3 3",
        "Input data 0 1 data",
        "Split split 1 2 data a b",
        "Noop sink 2 0 a b",
    )
    layers = read_ncnn_param(path)
    assert [(layer.type, layer.name, layer.inputs, layer.outputs) for layer in layers] == [
        ("Input", "data", [], ["data"]),
        ("Split", "split", ["data"], ["a", "b"]),
        ("Noop", "sink", ["a", "b"], []),
    ]


# ---- bad .param files: one line naming the file and the line ------------------------------------

_LONG_NAME = "n" * 70
_LONG_KEY = "k" * 30


@pytest.mark.parametrize(
    "lines,why",
    [
        (["7767518", "0 0"], "first line '7767518', expected the ncnn magic 7767517"),
        ([_LONG_NAME, "0 0"], f"first line {_LONG_NAME[:40]!r}, expected the ncnn magic 7767517"),
        ([], "first line '', expected the ncnn magic 7767517"),
        (["7767517"], "line 2 must be 'layer_count blob_count'"),
        (["7767517", "1"], "line 2 must be 'layer_count blob_count'"),
        (["7767517", "1 1", "Input"], "line 3: expected 'type name inputs outputs ...', got 'Input'"),
        (["7767517", "2 2", "Input data 0 1 data", f"Convolution {_LONG_NAME} one 1 data out"],
         f"line 4: expected 'type name inputs outputs ...', got {('Convolution ' + _LONG_NAME)[:60]!r}"),
        (["7767517", "1 1", "Split s -1 1 a"], "line 3: layer 's' has a negative blob count -1 1"),
        (["7767517", "1 1", "Split s 1 -1 a"], "line 3: layer 's' has a negative blob count 1 -1"),
        (["7767517", "1 3", "Split s 1 2 a b"], "line 3: layer 's' lists fewer blobs than 1+2"),
        (["7767517", "1 2", "ReLU r 1 1 a b 0"], "line 3: bad parameter '0' (expected key=value)"),
        (["7767517", "1 2", "ReLU r 1 1 a b k=1"], "line 3: bad parameter key 'k'"),
        (["7767517", "1 2", f"ReLU r 1 1 a b {_LONG_KEY}=1"], f"line 3: bad parameter key {_LONG_KEY[:20]!r}"),
        # int() would read these non-ASCII digits as 1; ncnn keys are ASCII
        (["7767517", "1 2", "ReLU r 1 1 a b \u0661=1"], "line 3: bad parameter key '\u0661'"),
        (["7767517", "1 2", "ReLU r 1 1 a b \uff11=1"], "line 3: bad parameter key '\uff11'"),
        (["7767517", "1 2", "ReLU r 1 1 a b 0=abc"], "line 3: bad parameter value 'abc'"),
        (["7767517", "1 2", "ReLU r 1 1 a b 0=1=2"], "line 3: bad parameter value '1=2'"),
        (["7767517", "2 3", "Input data 0 1 data", "ReLU r 1 1 data b 0=1.5.5"], "line 4: bad parameter value '1.5.5'"),
        (["7767517", "1 2", "ReLU r 1 1 a b -23300=2,1,x"], "line 3: bad parameter value 'x'"),
        (["7767517", "1 2", "ReLU r 1 1 a b 0=" + "9" * 10 + "x" * 20], f"line 3: bad parameter value {('9' * 10 + 'x' * 10)!r}"),
        (["7767517", "2 2", "Input data 0 1 data"], "header says 2 layers, file has 1"),
    ],
    ids=[
        "magic", "long-first-line", "empty", "no-header", "short-header", "short-layer", "long-bad-layer", "negative-in",
        "negative-out", "few-blobs", "no-equals", "bad-key", "long-key", "arabic-digit-key",
        "fullwidth-digit-key", "bad-value", "value-with-equals", "bad-float-line-4", "bad-array-element",
        "long-value", "layer-count",
    ],
)
def test_bad_param_is_rejected_with_one_line_naming_file_and_line(tmp_path, lines, why):
    path = _param(tmp_path, *lines)
    assert _error(path) == _not_a_model(path, why)


def test_blank_lines_are_skipped_and_errors_name_the_physical_line(tmp_path):
    """ncnn skips blank lines; the error still names the line as an editor numbers it."""
    good = _param(tmp_path, "7767517", "", "1 1", "  ", "Input data 0 1 data", "", name="good.param")
    assert [layer.name for layer in read_ncnn_param(good)] == ["data"]
    bad_layer = _param(tmp_path, "7767517", "", "2 2", "", "Input data 0 1 data", "", "ReLU r 1 1 data out 0=x",
                       name="layer.param")
    assert _error(bad_layer) == _not_a_model(bad_layer, "line 7: bad parameter value 'x'")
    bad_header = _param(tmp_path, "", "7767517", "", "2 two", name="header.param")
    assert _error(bad_header) == _not_a_model(bad_header, "line 4 must be 'layer_count blob_count'")
    no_header = _param(tmp_path, "", "7767517", "", name="none.param")
    assert _error(no_header) == _not_a_model(no_header, "line 2 must be 'layer_count blob_count'")


def test_binary_param_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "model.param"
    path.write_bytes(b"\xff\xfe\x00\x01")
    assert _error(path) == _not_a_model(path, "binary data where an ncnn .param text file was expected")


def test_missing_param_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.param"):
        read_ncnn_param(tmp_path / "nothing.param")


# ---- .bin weights ---------------------------------------------------------------------------------


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _f32(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _conv_model(tmp_path: Path, blob: bytes, out: int = 2, inp: int = 2, bias: bool = True) -> Path:
    """A one-conv graph (1x1 kernel, ``out`` x ``inp`` weights) with ``blob`` as its .bin."""
    param = _param(
        tmp_path,
        "7767517",
        "2 2",
        "Input data 0 1 data",
        f"Convolution conv1 1 1 data out 0={out} 1=1 5={int(bias)} 6={out * inp}",
    )
    param.with_suffix(".bin").write_bytes(blob)
    return param


def _conv(param: Path):
    graph = read_ncnn_model(param)
    (conv,) = graph.conv_layers
    return graph, conv


@pytest.mark.parametrize("tag", [TAG_FP32, TAG_FP32_SCALED])
def test_fp32_weights_and_bias_decode_exactly(tmp_path, tag):
    weights = [0.5, -1.25, 3.0e-7, 1234.5]
    bias = [0.1, -2.0]
    param = _conv_model(tmp_path, _u32(tag) + _f32(weights) + _f32(bias))
    graph, conv = _conv(param)
    assert conv.weight.dtype == np.float32 and conv.bias.dtype == np.float32
    np.testing.assert_array_equal(conv.weight, np.asarray(weights, np.float32).reshape(2, 2, 1, 1))
    np.testing.assert_array_equal(conv.bias, np.asarray(bias, np.float32))
    assert conv.storage == "fp32" and graph.storage == {"fp32"}


def test_fp16_weights_with_odd_count_decode_exactly_and_skip_the_padding(tmp_path):
    """3 fp16 values take 6 bytes padded to 8; the bias starts after the padding."""
    weights = np.asarray([0.5, -1.25, 65504.0], dtype="<f2")
    bias = [7.0, -0.375, 1.5]
    blob = _u32(TAG_FP16) + weights.tobytes() + b"\xab\xcd" + _f32(bias)
    param = _conv_model(tmp_path, blob, out=3, inp=1)
    graph, conv = _conv(param)
    assert conv.weight.dtype == np.float32
    np.testing.assert_array_equal(conv.weight, weights.astype(np.float32).reshape(3, 1, 1, 1))
    np.testing.assert_array_equal(conv.bias, np.asarray(bias, np.float32))
    assert conv.storage == "fp16" and graph.storage == {"fp16"}


def test_table_weights_decode_to_the_indexed_table_entries(tmp_path):
    """Any other tag: 256 fp32 table entries, then one uint8 index per value padded to 4 bytes."""
    table = np.arange(256, dtype=np.float32) * 0.25 - 8.0
    indices = np.asarray([0, 255, 7], dtype=np.uint8)
    bias = [1.0, 2.0, 3.0]
    blob = _u32(TAG_TABLE) + _f32(table) + indices.tobytes() + b"\x00" + _f32(bias)
    param = _conv_model(tmp_path, blob, out=3, inp=1)
    graph, conv = _conv(param)
    assert conv.weight.dtype == np.float32
    np.testing.assert_array_equal(conv.weight.ravel(), np.asarray([-8.0, 55.75, -6.25], np.float32))
    np.testing.assert_array_equal(conv.bias, np.asarray(bias, np.float32))
    assert conv.storage == "table" and graph.storage == {"table"}


def test_int8_weights_are_refused_naming_the_layer(tmp_path):
    param = _conv_model(tmp_path, _u32(TAG_INT8) + bytes(4) + _f32([0, 0]))
    bin_path = param.with_suffix(".bin")
    with pytest.raises(ValueError) as info:
        read_ncnn_model(param)
    assert str(info.value) == (
        f"{bin_path}: layer 'conv1' weights is int8-quantized ncnn weights; import an fp16/fp32 model"
    )


def _truncated(bin_path: Path, what: str, size: int, offset: int, total: int) -> str:
    return (
        f"{bin_path}: truncated ncnn weights: layer 'conv1' {what} needs {size} bytes at offset {offset}, "
        f"the file has {total} bytes (does the .bin belong to this .param?)"
    )


@pytest.mark.parametrize(
    "blob_parts,out,inp,what,size,offset",
    [
        ([b"\x00\x00"], 2, 2, "weights", 4, 0),  # not even the tag
        ([_u32(TAG_FP32), _f32([1, 2, 3])], 2, 2, "weights", 16, 4),
        ([_u32(TAG_FP16), bytes(6)], 3, 1, "weights", 8, 4),  # the padding is missing
        ([_u32(TAG_TABLE), _f32(range(200))], 3, 1, "weights", 1024, 4),  # the table
        ([_u32(TAG_TABLE), _f32(range(256)), bytes(3)], 3, 1, "weights", 4, 1028),  # the indices
        ([_u32(TAG_FP32), _f32([1, 2, 3, 4]), _f32([5])], 2, 2, "bias", 8, 20),
    ],
    ids=["tag", "fp32", "fp16", "table", "table-indices", "bias"],
)
def test_too_short_bin_says_what_is_missing_and_where(tmp_path, blob_parts, out, inp, what, size, offset):
    blob = b"".join(blob_parts)
    param = _conv_model(tmp_path, blob, out=out, inp=inp)
    with pytest.raises(ValueError) as info:
        read_ncnn_model(param)
    assert str(info.value) == _truncated(param.with_suffix(".bin"), what, size, offset, len(blob))


def test_bin_longer_than_the_graph_is_refused(tmp_path):
    param = _conv_model(tmp_path, _u32(TAG_FP32) + _f32([1, 2, 3, 4]) + _f32([5, 6]) + bytes(4))
    with pytest.raises(ValueError, match=r"4 bytes left after the last layer of model\.param"):
        read_ncnn_model(param)


# ---- conv / BatchNorm pairing ---------------------------------------------------------------------


def test_conv_bn_pairs_are_exactly_the_adjacent_conv_then_bn_in_sequentials():
    conv_a, bn_a = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
    conv_b, bn_c = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
    conv_d, bn_d = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
    bn_e, conv_e = nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1)
    model = nn.Sequential(
        conv_a, bn_a, nn.ReLU(),  # paired
        conv_b, nn.ReLU(), bn_c,  # conv then activation, BN after a non-conv: not paired
        nn.Sequential(conv_d, bn_d),  # nested: paired
        nn.Sequential(bn_e, conv_e),  # BN before conv: not paired
    )
    pairs = _conv_bn_pairs(model)
    assert list(pairs.items()) == [(conv_a, bn_a), (conv_d, bn_d)]


# ---- the published files (../shared) --------------------------------------------------------------


def test_published_param_arrays_parse_to_their_counts():
    """Every ``-233xx=count,...`` token of the published v5lite-e.ncnn.param becomes a list of
    ``count`` elements under id ``-key - 23300``, and every conv reads its weights from the .bin."""
    param = require_shared("weights", "yolov5-lite", "v5lite-e.ncnn.param")
    layers = read_ncnn_param(param)
    lines = [line.split() for line in param.read_text().splitlines()[2:] if line.strip()]
    assert len(layers) == int(param.read_text().splitlines()[1].split()[0]) == len(lines)
    arrays = 0
    for layer, fields in zip(layers, lines):
        assert (layer.type, layer.name) == (fields[0], fields[1])
        for item in fields:
            key, _, value = item.partition("=")
            if key.startswith("-233"):
                count, *values = (int(v) for v in value.split(","))
                assert layer.params[-int(key) - 23300] == values and len(values) == count
                arrays += 1
    assert arrays > 0
    graph = read_ncnn_model(param)
    assert graph.storage == {"fp16"}
    assert all(layer.weight is not None and layer.weight.dtype == np.float32 for layer in graph.conv_layers)
