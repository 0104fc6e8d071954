"""INT8 graph rewrites for ONNX Runtime (exactness, what they change) and the static-quantization
options built on them: fixed activation ranges, calibration from arrays, the QAT export path.
Tiny inputs, CPU; behaviour only, never timing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import random_bn_detector

SIZE = 64


def _detector(name: str = "v5lite-s", seed: int = 0) -> nn.Module:
    return random_bn_detector(name, SIZE, seed)

@pytest.fixture(scope="module")
def shufflenet_onnx(tmp_path_factory):
    """v5lite-s (ShuffleNetV2 backbone: channel shuffles, 58/116/232-channel depthwise convs,
    3-channel stem, 255-channel heads) exported to ONNX, and a folder of calibration images."""
    from litedet.export.api import export_model

    out = tmp_path_factory.mktemp("int8")
    result = export_model(_detector(), "onnx", out, stem="model")
    images = out / "calib"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        image = cv2.GaussianBlur(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8), (0, 0), 2 + index)
        cv2.imwrite(str(images / f"img{index}.jpg"), image)
    return Path(result.path), images


def _run(path_or_bytes, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _attr(node, name, default=None):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def test_rewrite_for_int8_is_exact_and_aligns_channels(shufflenet_onnx):
    import onnx
    from onnx import numpy_helper

    from litedet.compress.quantize import rewrite_for_int8

    path, _ = shufflenet_onnx
    model = onnx.load(str(path))
    result = rewrite_for_int8(model)
    onnx.checker.check_model(model)
    assert result.depthwise_padded > 0
    assert result.outputs_padded == 3 and result.inputs_padded == 1 and len(result.keep_float) == 1
    ops = [node.op_type for node in model.graph.node]
    # the exporter folded the channel shuffles into the weights: nothing moves channels
    assert "Gather" not in ops and "Transpose" not in ops and "Reshape" not in ops
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    depthwise = [n for n in model.graph.node if n.op_type == "Conv" and _attr(n, "group", 1) > 1]
    padded = [n for n in depthwise if _attr(n, "group") % 16 == 0]
    assert len(padded) >= result.depthwise_padded
    for node in model.graph.node:
        if node.op_type == "Conv" and _attr(node, "group", 1) == 1:
            assert weights[node.input[1]].shape[1] % 4 == 0  # the stem now reads 4 channels
    x = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    for before, after in zip(_run(str(path), x), _run(model.SerializeToString(), x)):
        assert before.shape == after.shape
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_rewrite_needs_opset_11():
    import onnx
    from onnx import TensorProto, helper

    from litedet.compress.quantize import rewrite_for_int8

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    with pytest.raises(ValueError, match="opset >= 11"):
        rewrite_for_int8(model)
    assert onnx.checker.check_model(model) is None


@pytest.mark.parametrize("rewrite", [True, False])
def test_static_int8_with_and_without_rewrites(shufflenet_onnx, tmp_path, rewrite):
    import onnx

    from litedet.compress.quantize import quantize
    from litedet.runtime import open_backend

    path, images = shufflenet_onnx
    result = quantize(path, tmp_path / "int8.onnx", "ort-static", images, num_images=4, rewrite=rewrite)
    backend = open_backend(result.output, threads=1)
    settings = backend.config.extra["quantization"]
    graph = onnx.load(str(result.output)).graph
    five_d = [n for n in graph.node if n.op_type == "Transpose" and len(_attr(n, "perm", [])) == 5]
    assert not five_d  # the exporter folded the channel shuffles away
    if rewrite:
        assert settings["int8_rewrites"]["depthwise_padded_to_16"] > 0
        # the image Pad stays float: its input is the raw image, quantized after padding
        pad = next(n for n in graph.node if n.op_type == "Pad")
        assert pad.input[0] == "images" or not any(q.output[0] == pad.input[0] for q in graph.node if q.op_type == "DequantizeLinear")
    else:
        assert settings["int8_rewrites"] is None
    # An image of the calibration domain, pre-processed as the backend does (uniform noise lies
    # outside the calibrated ranges and says nothing about the quantizer).
    from litedet.compress.quantize import calibration_batches

    x = next(calibration_batches(sorted(images.iterdir())[:1], backend.config))
    for a, b in zip(_run(str(path), x), backend.run(x)):
        assert a.shape == b.shape
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_fixed_ranges_and_array_calibration(shufflenet_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    from litedet.compress.quantize import quantize_onnx_static

    path, _ = shufflenet_onnx
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    # a conv input made by a Relu (ranges of pass-through outputs such as MaxPool follow their input)
    tensor = next(n.input[0] for n in graph.node if n.op_type == "Conv" and n.input[0] in producer
                  and producer[n.input[0]].op_type == "Relu")
    arrays = [np.random.default_rng(i).random((1, 3, SIZE, SIZE), dtype=np.float32) for i in range(3)]
    result = quantize_onnx_static(path, tmp_path / "fixed.onnx", arrays, ranges={tensor: (0.0, 51.0)})
    assert result.calibration_images == 3 and result.settings["fixed_ranges"] == 1
    quantized = onnx.load(str(result.output)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.initializer}
    q = next(n for n in quantized.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    assert float(inits[q.input[1]]) == pytest.approx(51.0 / 255, rel=1e-5)
    with pytest.raises(ValueError, match="no calibration arrays"):
        quantize_onnx_static(path, tmp_path / "none.onnx", [])


def test_qat_fast_export_uses_learned_ranges_and_rewrites(shufflenet_onnx, tmp_path):
    import onnx

    from litedet.compress.qat import calibrate, export_qat_onnx, learned_ranges, prepare_qat
    from litedet.runtime import open_backend

    model = _detector()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = [o.numpy() for o in model(x)]
    prepare_qat(model)
    calibrate(model, [torch.rand(2, 3, SIZE, SIZE) for _ in range(2)] + [x])
    ranges = learned_ranges(model)
    assert ranges and all(low <= 0.0 <= high for low, high in ranges.values())
    with pytest.raises(ValueError, match="mode"):
        export_qat_onnx(model, tmp_path / "bad", mode="int4")
    fast = export_qat_onnx(model, tmp_path / "fast")
    settings = open_backend(fast, threads=1).config.extra["quantization"]
    assert settings["method"] == "qat" and settings["export"] == "fast"
    assert settings["qat_ranges_fixed"] > 0 and settings["qat_convs_matched"] == len(ranges)
    assert settings["int8_rewrites"]["depthwise_padded_to_16"] > 0
    graph = onnx.load(str(fast)).graph
    assert not {"Gather", "Transpose"} & {n.op_type for n in graph.node}  # shuffles folded at export
    _, images = shufflenet_onnx  # clean images from a folder instead of the kept (training) batches
    from_folder = export_qat_onnx(model, tmp_path / "folder", calibration=images, num_images=2)
    assert open_backend(from_folder, threads=1).config.extra["quantization"]["calibration_images"] == 2
    qdq = export_qat_onnx(model, tmp_path / "qdq", mode="qdq")
    assert open_backend(qdq, threads=1).config.extra["quantization"]["export"] == "qdq"
    for path in (fast, qdq):
        backend = open_backend(path, threads=1)
        assert backend.config.precision == "int8"
        for a, b in zip(reference, backend.run(x.numpy())):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("flag", [[], ["--no-rewrite"]])
def test_cli_quantize_rewrites_by_default(shufflenet_onnx, tmp_path, flag):
    from litedet.cli import main
    from litedet.config import find_config

    path, images = shufflenet_onnx
    out = tmp_path / "q"
    assert main(["quantize", "--weights", str(path), "--calib", str(images), "--num-images", "2", "-o", str(out),
                 "--no-report", "--no-progress", *flag]) == 0
    (model,) = out.rglob("model_int8.onnx")
    rewrites = find_config(model).extra["quantization"]["int8_rewrites"]
    assert (rewrites is None) == bool(flag)
