"""Contracts of ``litedet.compress.quantize`` a user relies on: which files calibrate a model,
what the calibration batches are, that the INT8 graph rewrites keep every output and align the
channels they document (and touch nothing else), and how ``quantize`` dispatches its methods.
Tiny hand-built ONNX graphs and images; CPU only, a few seconds in all."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

# ------------------------------------------------------------------------------------ helpers


def _write_image(path: Path, height: int = 20, width: int = 30, bgr=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = bgr
    assert cv2.imwrite(str(path), image)
    return path


def _config(size=(32, 32)):
    from litedet.config import ModelConfig

    return ModelConfig(model="v5lite-e", num_classes=1, names=["a"], input_size=size)


class _Builder:
    """A float ONNX graph of Conv/Relu nodes over one image input, weights from a fixed seed."""

    def __init__(self, channels: int = 3, size: int = 8, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self.channels, self.size = channels, size
        self.count = self.relus = 0
        self.channels_of: dict[str, int] = {"images": channels}

    def _init(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int = 1, group: int | None = None, bias: bool = True) -> str:
        from onnx import helper

        self.count += 1
        name = f"conv{self.count}"
        per_group = c_in // (group or 1)
        inputs = [x, self._init(name + "_w", self.rng.standard_normal((c_out, per_group, k, k)) * 0.5)]
        if bias:
            inputs.append(self._init(name + "_b", self.rng.standard_normal(c_out) * 0.1))
        attrs = {"kernel_shape": [k, k], "pads": [k // 2] * 4}
        if group is not None:
            attrs["group"] = group
        self.nodes.append(helper.make_node("Conv", inputs, [name + "_out"], name=name, **attrs))
        self.channels_of[name + "_out"] = c_out
        return name + "_out"

    def relu(self, x: str) -> str:
        from onnx import helper

        self.relus += 1
        self.nodes.append(helper.make_node("Relu", [x], [f"relu{self.relus}_out"], name=f"relu{self.relus}"))
        self.channels_of[f"relu{self.relus}_out"] = self.channels_of[x]
        return f"relu{self.relus}_out"

    def model(self, outputs: list[str], opset: int = 13, domain: str = ""):
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, self.channels, self.size, self.size])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, self.channels_of[o], self.size, self.size]) for o in outputs], self.initializers)
        opsets = [helper.make_opsetid(domain, opset)] if opset else [helper.make_opsetid("com.example", 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 7
        return model


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


def _weights(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _node(model, name: str):
    return next(n for n in model.graph.node if n.name == name)


def _group(node) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)


def _rewrite_keeps_outputs(model, seed: int = 1):
    """Rewrite a copy of ``model``; assert every output is unchanged; return (copy, result)."""
    import onnx

    from litedet.compress.quantize import rewrite_for_int8

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    result = rewrite_for_int8(rewritten)
    onnx.checker.check_model(rewritten)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    before, after = _run(model, x), _run(rewritten, x)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    return rewritten, result


# ------------------------------------------------------------------------- calibration_images


def test_calibration_images_finds_images_recursively_sorted_any_suffix_case(tmp_path):
    from litedet.compress.quantize import calibration_images

    files = [_write_image(tmp_path / "b.jpg"), _write_image(tmp_path / "sub" / "deeper" / "a.png"),
             _write_image(tmp_path / "sub" / "C.JPG"), _write_image(tmp_path / "d.bmp")]
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.json").write_text("{}")
    found = calibration_images(tmp_path)
    assert found == sorted(files)
    assert all(isinstance(f, Path) for f in found)


def test_calibration_images_honours_limit(tmp_path):
    from litedet.compress.quantize import calibration_images

    files = sorted(_write_image(tmp_path / f"{i}.png") for i in range(3))
    assert calibration_images(tmp_path, limit=2) == files[:2]
    assert calibration_images(tmp_path, limit=1) == files[:1]
    assert calibration_images(tmp_path, limit=10) == files
    assert calibration_images(tmp_path, limit=None) == files


@pytest.mark.parametrize("limit", [0, -3])
def test_calibration_images_rejects_a_limit_below_one(tmp_path, limit):
    from litedet.compress.quantize import calibration_images

    _write_image(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match=re.escape(f"calibration image count must be >= 1, got {limit}")):
        calibration_images(tmp_path, limit=limit)


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_calibration_images_takes_the_train_split_of_a_dataset_yaml(tiny_data, tmp_path, suffix):
    from litedet.compress.quantize import calibration_images

    data = tiny_data if suffix == ".yaml" else Path(shutil.copy(tiny_data, tiny_data.with_name("data_copy.yml")))
    found = calibration_images(data)
    train = tiny_data.parent / "images" / "train"
    assert sorted(p.resolve() for p in found) == sorted(p.resolve() for p in train.glob("*.jpg"))
    assert len(found) == 8
    assert len(calibration_images(data, limit=3)) == 3


def test_calibration_images_rejects_a_missing_source_naming_it(tmp_path):
    from litedet.compress.quantize import calibration_images

    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'calibration source not found: {missing}')}$"):
        calibration_images(missing)


def test_calibration_images_rejects_a_file_that_is_neither_folder_nor_yaml(tmp_path):
    from litedet.compress.quantize import calibration_images

    image = _write_image(tmp_path / "single.jpg")
    with pytest.raises(ValueError, match=f"^{re.escape(f'calibration source {image} must be a folder of images or a dataset YAML')}$"):
        calibration_images(image)


def test_calibration_images_rejects_an_empty_folder_naming_it(tmp_path):
    from litedet.compress.quantize import calibration_images

    (tmp_path / "readme.txt").write_text("no images here")
    message = (f"calibration source {tmp_path} has no readable image (0 candidate files); "
               f"give a folder with .jpg/.png images or a dataset YAML")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        calibration_images(tmp_path)


def test_calibration_images_rejects_a_folder_of_unreadable_images(tmp_path):
    from litedet.compress.quantize import calibration_images

    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"calibration source {tmp_path} has no readable image (2 candidate files)")):
        calibration_images(tmp_path)


def test_calibration_images_skips_unreadable_files_with_a_warning(tmp_path, caplog):
    from litedet.compress.quantize import calibration_images

    good = [_write_image(tmp_path / "a.jpg"), _write_image(tmp_path / "c.png")]
    (tmp_path / "b.jpg").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="litedet.compress.quantize"):
        assert calibration_images(tmp_path) == good
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == ["1 of 3 calibration files could not be read and are skipped"]


def test_calibration_images_all_readable_logs_nothing(tmp_path, caplog):
    from litedet.compress.quantize import calibration_images

    _write_image(tmp_path / "a.jpg")
    with caplog.at_level(logging.DEBUG, logger="litedet.compress.quantize"):
        calibration_images(tmp_path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------ calibration_batches


def test_calibration_batches_are_letterboxed_rgb_over_255_at_the_model_input_size(tmp_path):
    """A flat 40x80 BGR (10, 20, 30) image into a 32x48 model: scaled by 0.6 to 48x24, padded
    with 114 by 4 rows above and below; RGB order; pixels / 255."""
    from litedet.compress.quantize import calibration_batches
    from litedet.data.transforms import preprocess

    file = _write_image(tmp_path / "flat.png", 40, 80, (10, 20, 30))
    config = _config((32, 48))
    batches = list(calibration_batches([file], config))
    assert len(batches) == 1
    batch = batches[0]
    assert batch.dtype == np.float32 and batch.shape == (1, 3, 32, 48)
    expected = np.full((1, 3, 32, 48), 114 / 255, np.float32)
    expected[0, :, 4:28, :] = (np.array([30, 20, 10], np.float32) / 255).reshape(3, 1, 1)
    np.testing.assert_allclose(batch, expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(batch, preprocess([cv2.imread(str(file))], config)[0])


def test_calibration_batches_one_per_readable_image_in_order(tmp_path):
    from litedet.compress.quantize import calibration_batches

    first = _write_image(tmp_path / "a.png", 16, 16, (0, 0, 255))
    broken = tmp_path / "b.png"
    broken.write_bytes(b"broken")
    last = _write_image(tmp_path / "c.png", 16, 16, (255, 0, 0))
    batches = list(calibration_batches([first, broken, last], _config((16, 16))))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[0][0, 0], np.ones((16, 16), np.float32))  # red first (RGB)
    np.testing.assert_array_equal(batches[0][0, 2], np.zeros((16, 16), np.float32))
    np.testing.assert_array_equal(batches[1][0, 2], np.ones((16, 16), np.float32))  # then blue
    np.testing.assert_array_equal(batches[1][0, 0], np.zeros((16, 16), np.float32))


# -------------------------------------------------------------------------- rewrite_for_int8


def _mixed_graph():
    """stem 3->24 (image channels) -> Relu -> depthwise 24 (no bias) -> 1x1 24->20 -> 1x1 20->18
    (output channels) and a 20->6 branch (below the 16-channel minimum): every rewrite applies
    exactly once."""
    b = _Builder(3, 8)
    x = b.relu(b.conv("images", 3, 24, k=3))
    x = b.conv(x, 24, 24, k=3, group=24, bias=False)
    x = b.conv(x, 24, 20)
    return b.model([b.conv(x, 20, 18), b.conv(x, 20, 6)])


def test_rewrite_for_int8_keeps_outputs_and_aligns_every_documented_channel_count():
    model = _mixed_graph()
    rewritten, result = _rewrite_keeps_outputs(model)
    assert (result.depthwise_padded, result.outputs_padded, result.inputs_padded) == (1, 1, 1)
    assert result.keep_float == ["conv1_pad_channels"]
    assert result.to_dict() == {"depthwise_padded_to_16": 1, "conv_outputs_padded_to_4": 1, "image_channels_padded_to_4": 1}
    w = _weights(rewritten)
    assert w["conv1_w"].shape == (32, 4, 3, 3) and w["conv1_b"].shape == (32,)  # 24 -> 32 outputs, 3 -> 4 inputs
    assert w["conv2_w"].shape == (32, 1, 3, 3) and _group(_node(rewritten, "conv2")) == 32
    assert w["conv3_w"].shape == (20, 32, 1, 1)
    assert w["conv4_w"].shape == (20, 20, 1, 1) and w["conv4_b"].shape == (20,)  # 18 -> 20, sliced back
    assert w["conv5_w"].shape == (6, 20, 1, 1)  # 6 < 16: left alone
    # the padding is zeros: the real weights are untouched
    original = _weights(model)
    np.testing.assert_array_equal(w["conv1_w"][:24, :3], original["conv1_w"])
    assert not w["conv1_w"][24:].any() and not w["conv1_w"][:, 3:].any() and not w["conv3_w"][:, 24:].any()
    pad = _node(rewritten, "conv1_pad_channels")
    assert pad.op_type == "Pad" and pad.input[0] == "images"
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Slice") == 1 and ops.count("Pad") == 1


def test_rewrite_for_int8_leaves_the_image_of_a_uint8_input_export_unpadded(tmp_path):
    """A ``--uint8-input`` export reaches its stem conv through Transpose and Cast: a Pad there
    would become an innermost-axis pad once ONNX Runtime moves the Transpose, slower than the
    3-channel stem it saves. The other rewrites apply and the outputs stay the same."""
    import onnx
    import torch

    from litedet.compress.quantize import rewrite_for_int8
    from litedet.export.api import export_model
    from litedet.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=64, num_classes=2, names=["a", "b"]).eval()
    with torch.no_grad():  # distinct fused biases: onnxslim shares identical initializers
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
    path = export_model(model, "onnx", tmp_path, imgsz=64, uint8_input=True).path
    original = onnx.load(str(path))
    rewritten = onnx.load(str(path))
    result = rewrite_for_int8(rewritten)
    assert result.inputs_padded == 0 and result.outputs_padded > 0
    assert "Pad" not in [node.op_type for node in rewritten.graph.node]
    pixels = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    for before, after in zip(_run(original, pixels), _run(rewritten, pixels)):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels,bias", [(2, True), (24, False), (12, True)])
def test_rewrite_for_int8_pads_depthwise_convs_to_16_channels(channels, bias):
    b = _Builder(4, 6)
    x = b.conv("images", 4, channels)
    x = b.conv(b.relu(x), channels, channels, k=3, group=channels, bias=bias)
    rewritten, result = _rewrite_keeps_outputs(b.model([b.conv(x, channels, 8)]))
    padded = channels + -channels % 16
    assert result.depthwise_padded == 1 and result.inputs_padded == 0 and result.outputs_padded == 0
    assert _weights(rewritten)["conv2_w"].shape == (padded, 1, 3, 3) and _group(_node(rewritten, "conv2")) == padded
    assert _weights(rewritten)["conv3_w"].shape == (8, padded, 1, 1)


@pytest.mark.parametrize("middle,group", [(1, None), (1, 1), (2, None), (8, None), (8, 1)])
def test_rewrite_for_int8_leaves_dense_convs_between_convs_alone(middle, group):
    """A dense conv is not a depthwise one, whatever its channel count and however its group is
    spelled (absent = 1): nothing is padded to 16."""
    b = _Builder(4, 6)
    x = b.conv("images", 4, 1 if middle <= 2 else middle)
    c_in = 1 if middle <= 2 else middle
    x = b.conv(x, c_in, middle, k=3, group=group)
    model = b.model([b.conv(x, middle, 4)])
    rewritten, result = _rewrite_keeps_outputs(model)
    assert result.depthwise_padded == 0 and result.outputs_padded == 0 and result.inputs_padded == 0
    assert rewritten.graph.node[1].SerializeToString() == model.graph.node[1].SerializeToString()
    assert _weights(rewritten)["conv2_w"].shape == _weights(model)["conv2_w"].shape


def test_rewrite_for_int8_leaves_an_aligned_graph_as_it_is():
    b = _Builder(4, 6)
    x = b.relu(b.conv("images", 4, 16, k=3))
    x = b.conv(x, 16, 16, k=3, group=16)
    model = b.model([b.conv(x, 16, 20)])
    rewritten, result = _rewrite_keeps_outputs(model)
    assert result.to_dict() == {"depthwise_padded_to_16": 0, "conv_outputs_padded_to_4": 0, "image_channels_padded_to_4": 0}
    assert result.keep_float == []
    assert rewritten.graph.SerializeToString() == model.graph.SerializeToString()


@pytest.mark.parametrize("opset", [11, 12, 17])
def test_rewrite_for_int8_accepts_opset_11_and_later(opset):
    _, result = _rewrite_keeps_outputs(_mixed_graph_at(opset))
    assert (result.depthwise_padded, result.outputs_padded, result.inputs_padded) == (1, 1, 1)


def _mixed_graph_at(opset: int, domain: str = ""):
    model = _mixed_graph()
    del model.opset_import[:]
    if opset:
        model.opset_import.add(domain=domain, version=opset)
    model.opset_import.add(domain="com.microsoft", version=1)
    return model


def test_rewrite_for_int8_reads_the_opset_of_the_ai_onnx_domain_spelling():
    from litedet.compress.quantize import rewrite_for_int8

    result = rewrite_for_int8(_mixed_graph_at(13, "ai.onnx"))
    assert (result.depthwise_padded, result.outputs_padded, result.inputs_padded) == (1, 1, 1)


@pytest.mark.parametrize("opset", [10, 7, 0])
def test_rewrite_for_int8_rejects_old_opsets_saying_which_and_what_to_do(opset):
    from litedet.compress.quantize import rewrite_for_int8

    model = _mixed_graph_at(opset)
    before = model.SerializeToString()
    message = (f"INT8 graph rewrites need ONNX opset >= 11 (Pad/Slice with inputs), the model has {opset}; "
               f"re-export it or pass rewrite=False")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        rewrite_for_int8(model)
    assert model.SerializeToString() == before


def test_rewrite_for_int8_warns_about_unfolded_channel_shuffles(caplog):
    from onnx import TensorProto, helper

    from litedet.compress.quantize import rewrite_for_int8

    nodes, inits = [], []
    x = "images"
    for index in range(2):
        shape5, shape4 = f"s5_{index}", f"s4_{index}"
        inits += [helper.make_tensor(shape5, TensorProto.INT64, [5], [1, 2, 2, 4, 4]),
                  helper.make_tensor(shape4, TensorProto.INT64, [4], [1, 4, 4, 4])]
        nodes += [helper.make_node("Reshape", [x, shape5], [f"r{index}"]),
                  helper.make_node("Transpose", [f"r{index}"], [f"t{index}"], perm=[0, 2, 1, 3, 4]),
                  helper.make_node("Reshape", [f"t{index}", shape4], [f"y{index}"])]
        x = f"y{index}"
    nodes.append(helper.make_node("Transpose", [x], ["out"], perm=[0, 1, 3, 2]))  # not a shuffle
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with caplog.at_level(logging.WARNING, logger="litedet.compress.quantize"):
        result = rewrite_for_int8(model)
    assert result.to_dict() == {"depthwise_padded_to_16": 0, "conv_outputs_padded_to_4": 0, "image_channels_padded_to_4": 0}
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == ["the graph has 2 Reshape-Transpose-Reshape channel shuffles, which keep INT8 layout "
                        "transposes; export it with litedet (litedet export) to fold them into the weights"]


def test_rewrite_for_int8_is_silent_without_channel_shuffles(caplog):
    from litedet.compress.quantize import rewrite_for_int8

    with caplog.at_level(logging.DEBUG, logger="litedet.compress.quantize"):
        rewrite_for_int8(_mixed_graph())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -------------------------------------------------------------------------------- quantize


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    """A 3 -> 8 -> 8 conv model with the sidecar an export writes."""
    import onnx

    from litedet.config import sidecar_path

    b = _Builder(3, 32)
    model = b.model([b.conv(b.relu(b.conv("images", 3, 8, k=3)), 8, 8)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    _config((32, 32)).save(sidecar_path(path))
    return path


def _arrays(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(count)]


def test_quantize_defaults_to_ort_static_on_64_calibration_inputs(tiny_onnx, tmp_path):
    from litedet.compress.quantize import quantize

    result = quantize(tiny_onnx, tmp_path / "int8.onnx", calibration=_arrays(66))
    assert result.method == "ort-static" and result.settings["method"] == "ort-static"
    assert result.calibration_images == 64 and result.settings["calibration_images"] == 64


def test_quantize_ort_static_calibrates_on_num_images_from_a_folder(tiny_onnx, tmp_path):
    from litedet.compress.quantize import quantize
    from litedet.config import find_config

    for index in range(3):
        _write_image(tmp_path / "calib" / f"{index}.png", 16, 16, (index * 40, 90, 200))
    result = quantize(tiny_onnx, tmp_path / "int8.onnx", "ort-static", tmp_path / "calib", num_images=2)
    assert result.calibration_images == 2
    assert find_config(result.output).precision == "int8"


def test_quantize_ort_static_passes_num_images_and_options_through(tiny_onnx, tmp_path):
    from litedet.compress.quantize import quantize

    result = quantize(tiny_onnx, tmp_path / "int8.onnx", "ort-static", _arrays(5), num_images=2,
                      per_channel=False, rewrite=False)
    assert result.calibration_images == 2
    assert result.settings["per_channel"] is False and result.settings["int8_rewrites"] is None


def test_quantize_ort_dynamic_needs_no_images_and_takes_its_options(tiny_onnx, tmp_path, caplog):
    import logging

    from litedet.compress.quantize import quantize
    from litedet.config import find_config

    with caplog.at_level(logging.INFO):
        result = quantize(tiny_onnx, tmp_path / "dyn.onnx", "ort-dynamic", per_channel=False)
    assert "pre-processing" not in caplog.text  # ONNX Runtime's advice is not a line of litedet's output
    assert result.method == "ort-dynamic" and result.calibration_images == 0
    assert result.settings["per_channel"] is False
    assert find_config(result.output).extra["quantization"]["method"] == "ort-dynamic"


def test_quantize_openvino_gets_the_calibration_num_images_and_options(tiny_onnx, tmp_path, monkeypatch):
    from litedet.compress import quantize as module

    calls = []

    def fake_openvino(*args, **kwargs):
        calls.append((args, kwargs))
        return "done"

    monkeypatch.setattr(module, "quantize_openvino", fake_openvino)
    assert module.quantize(tiny_onnx, tmp_path / "ov.xml", "openvino", tmp_path, num_images=7, preset="mixed") == "done"
    assert calls == [((tiny_onnx, tmp_path / "ov.xml", tmp_path, 7), {"preset": "mixed"})]
    calls.clear()
    module.quantize(tiny_onnx, tmp_path / "ov.xml", "openvino", tmp_path)
    assert calls == [((tiny_onnx, tmp_path / "ov.xml", tmp_path, 64), {})]


@pytest.mark.parametrize("method", ["ort-static", "openvino"])
def test_quantize_methods_that_calibrate_refuse_to_run_without_images(tiny_onnx, tmp_path, method):
    from litedet.compress.quantize import quantize

    message = f"{method} quantization needs calibration images (--calib FOLDER or a dataset YAML)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        quantize(tiny_onnx, tmp_path / ("out.xml" if method == "openvino" else "out.onnx"), method)
    assert not list(tmp_path.glob("out.*"))


@pytest.mark.parametrize("method", ["tensorrt", "ORT-STATIC", ""])
def test_quantize_rejects_an_unknown_method_listing_the_choices(tiny_onnx, tmp_path, method):
    from litedet.compress.quantize import quantize

    message = f"unknown quantization method {method!r}; choose one of ['ort-static', 'ort-dynamic', 'openvino']"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        quantize(tiny_onnx, tmp_path / "out.onnx", method, tmp_path)


# ------------------------------------------------------------ shared concat ranges, uint8 image


def _split_concat_graph():
    """images -> conv -> relu (a) -> Split (s0, s1); s1 -> conv -> relu (b); Concat(s0, b) = c;
    Resize(c) = r; Concat(r, a) = d: one ShuffleNetV2-like unit, then a YOLO-neck-like concat."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([4, 4], np.int64), "sizes"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["images", "w1"], ["x"]), helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Split", ["a", "sizes"], ["s0", "s1"], axis=1),
             helper.make_node("Conv", ["s1", "w2"], ["y"]), helper.make_node("Relu", ["y"], ["b"]),
             helper.make_node("Concat", ["s0", "b"], ["c"], axis=1),
             helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="nearest"),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "scales"], ["q"], mode="nearest"),
             helper.make_node("Concat", ["r", "q"], ["d"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_concat_groups_join_a_stage_split_and_concat_chain_but_not_a_neck_concat():
    from litedet.compress.quantize import concat_groups

    groups = concat_groups(_split_concat_graph().graph)
    assert groups == [["a", "s0", "s1", "b", "c"]]  # graph order; the Resize-fed concat stays out


def test_shared_ranges_give_every_member_the_union_of_their_ranges_with_zero():
    from litedet.compress.quantize import shared_ranges

    ranges = {"a": (0.0, 3.0), "b": (0.5, 7.5), "c": (-1.0, 2.0), "other": (-4.0, 9.0)}
    shared = shared_ranges([["a", "b", "c", "missing"], ["nothing", "known"]], ranges)
    assert shared == {"a": (-1.0, 7.5), "b": (-1.0, 7.5), "c": (-1.0, 7.5)}
    assert shared_ranges([["b"]], {"b": (0.5, 7.5)}) == {"b": (0.0, 7.5)}  # 0 is always representable


def _tiny_uint8_export(folder: Path, dynamic: bool = False) -> Path:
    """A 64x64 v5lite-e ``--uint8-input`` ONNX export (shuffles folded) with its sidecar; distinct
    BatchNorm statistics, so no two fused biases are equal (an export shares equal initializers,
    which keeps the image normalisation from folding into the stem conv)."""
    import torch

    from litedet.export.api import export_model
    from litedet.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=64, num_classes=2, names=["a", "b"]).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
    return export_model(model, "onnx", folder, imgsz=64, uint8_input=True, dynamic=dynamic).path


@pytest.fixture(scope="module")
def uint8_export(tmp_path_factory) -> Path:
    return _tiny_uint8_export(tmp_path_factory.mktemp("u8"))


def _calibration_folder(folder: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index}.png"), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return folder


def test_quantized_uint8_export_reads_the_image_directly_and_its_stage_concats_copy(uint8_export, tmp_path, monkeypatch):
    """ort-static of a ``--uint8-input`` export: the INT8 graph takes the uint8 image without
    Cast/QuantizeLinear (exactly the same outputs as with them) and every concat of a
    ShuffleNetV2 stage has one scale and zero point on all its inputs and its output."""
    import onnx
    import onnxruntime as ort

    import litedet.compress.quantize as quantize_module
    from litedet.compress.quantize import quantize_onnx_static

    calib = _calibration_folder(tmp_path / "calib")
    direct = quantize_onnx_static(uint8_export, tmp_path / "direct" / "m.onnx", calib, num_images=4)
    assert direct.settings["uint8_image_direct"] is True and direct.settings["shared_concat_ranges"] > 0
    model = onnx.load(str(direct.output))
    assert not any(n.op_type == "Cast" for n in model.graph.node)
    assert [n.op_type for n in model.graph.node if "images" in n.input] == ["Transpose"]
    producer = {out: n for n in model.graph.node for out in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    stage_concats = 0
    for node in model.graph.node:
        if node.op_type != "Concat" or not all(producer[i].op_type == "DequantizeLinear" for i in node.input):
            continue
        sources = [producer[producer[i].input[0]] for i in node.input]  # the QuantizeLinear before each DQ
        if any(s.op_type != "QuantizeLinear" or producer.get(s.input[0]) is None
               or producer[s.input[0]].op_type not in ("Split", "Relu", "Concat", "Conv", "MaxPool") for s in sources):
            continue
        after = [c for c in consumers[node.output[0]] if c.op_type == "QuantizeLinear"]
        params = {(float(inits[q.input[1]]), int(inits[q.input[2]])) for q in sources + after}
        assert len(params) == 1, params
        stage_concats += 1
    assert stage_concats >= 3

    # it ends in its quantized head maps, uint8 channels last, described in its sidecar
    from litedet.config import find_config

    config = find_config(direct.output)
    assert direct.settings["uint8_outputs"] is True and len(config.quantized_outputs) == 3
    assert [o.name for o in model.graph.output] == config.output_names
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] in config.output_names for n in model.graph.node)

    monkeypatch.setattr(quantize_module, "feed_uint8_image", lambda model, tensor: False)
    through_cast = quantize_onnx_static(uint8_export, tmp_path / "cast" / "m.onnx", calib, num_images=4)
    assert through_cast.settings["uint8_image_direct"] is False and through_cast.settings["uint8_outputs"] is False
    pixels = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    outputs = []
    for path in (direct.output, through_cast.output):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"images": pixels}))
    for quantized, plain, params in zip(*outputs, config.quantized_outputs):
        assert quantized.dtype == np.uint8 and quantized.shape[3] >= params["channels"]
        values = (quantized[..., :params["channels"]].astype(np.float32) - np.float32(params["zero_point"])) * np.float32(params["scale"])
        np.testing.assert_array_equal(values.transpose(0, 3, 1, 2), plain)  # what its DequantizeLinear gave

    # and litedet's runtime finds the same boxes in both
    from litedet.engine.predictor import Predictor
    from litedet.runtime import open_backend

    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    found = [Predictor(open_backend(path, threads=1), conf=0.01).predict(image)[0] for path in (direct.output, through_cast.output)]
    np.testing.assert_array_equal(found[0].boxes, found[1].boxes)
    np.testing.assert_array_equal(found[0].class_ids, found[1].class_ids)
    np.testing.assert_array_equal(found[0].scores, found[1].scores)


def test_feed_uint8_image_leaves_a_quantize_that_is_not_the_identity_alone():
    from onnx import TensorProto, helper, numpy_helper

    from litedet.compress.quantize import feed_uint8_image

    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("QuantizeLinear", ["f", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["out"])]
    for scale, zero in ((0.5, 0), (1.0, 3)):
        inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(zero, np.uint8), "z")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 4])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], inits)
        model = helper.make_model(graph)
        assert feed_uint8_image(model, "f") is False
        assert [n.op_type for n in model.graph.node] == ["Cast", "QuantizeLinear", "DequantizeLinear"]


def test_a_dynamic_export_quantizes_and_detects(tmp_path, monkeypatch):
    """A --dynamic export (symbolic batch and image size, where ONNX Runtime's symbolic shape
    inference gives up) quantizes with ONNX's shape inference, leaves nothing in the working
    folder, and detects at any size."""
    from litedet.compress.quantize import quantize_onnx_static
    from litedet.engine.predictor import Predictor
    from litedet.runtime import open_backend

    path = _tiny_uint8_export(tmp_path / "dyn", dynamic=True)
    calib = _calibration_folder(tmp_path / "calib")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = quantize_onnx_static(path, tmp_path / "int8" / "m.onnx", calib, num_images=4)
    assert list(work.iterdir()) == []
    assert result.settings["uint8_outputs"] is True
    predictor = Predictor(open_backend(result.output, threads=1), conf=0.01)
    for shape in ((48, 64, 3), (90, 60, 3)):
        found = predictor.predict(np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8))[0]
        assert found.image_shape == shape[:2]


def test_quantize_cli_passes_the_openvino_preset_to_the_recipe_step(monkeypatch):
    import argparse

    from litedet.cli import compress as cli
    from litedet.compress.recipe import QuantizeStep

    parser = argparse.ArgumentParser()
    cli.add_quantize_arguments(parser)
    seen = []
    monkeypatch.setattr(cli, "_run", lambda args, steps: seen.append(steps) or 0)
    cli.run_quantize(parser.parse_args(["--weights", "m.xml", "--method", "openvino", "--calib", "imgs", "--preset", "mixed"]))
    step = seen[0][0]["quantize"]
    assert step["preset"] == "mixed" and QuantizeStep(**step).preset == "mixed"
    with pytest.raises(ValueError, match="quantize.preset must be 'performance' or 'mixed'"):
        QuantizeStep(method="openvino", calib="imgs", preset="fast")
