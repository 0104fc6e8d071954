"""Export round trips (ONNX, OpenVINO, ncnn) at a tiny input, the in-graph NMS variant, and the
errors a user can meet. Each engine's raw maps must equal torch's within a float tolerance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from litedet.config import ModelConfig
from litedet.export.api import export_model, fuse_for_export, parse_imgsz
from litedet.export.formats import default_stem, export_formats, get_format
from litedet.models.detector import Detector
from litedet.models.heads.yolo import YoloHead
from litedet.models.registry import create_model
from litedet.ops import decode_yolo, non_max_suppression
from litedet.runtime import open_backend

SIZE = 64


@pytest.fixture(scope="module")
def tiny() -> Detector:
    """v5lite-e at 64 px, 3 classes, random weights with non-trivial BatchNorm statistics (so
    Conv+BN fusion is exercised) and a head that gives well-spread scores (no ties in NMS)."""
    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=SIZE, num_classes=3, names=["a", "b", "c"]).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for conv in model.head.convs:
            nn.init.normal_(conv.weight, std=0.5)
            nn.init.zeros_(conv.bias)
    return model


def _raw(model: nn.Module, batch: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [out.numpy() for out in model(torch.from_numpy(batch))]


def _assert_close(outputs: list[np.ndarray], reference: list[np.ndarray], atol: float) -> None:
    assert len(outputs) == len(reference)
    for got, want in zip(outputs, reference):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_format_table() -> None:
    names = [f.name for f in export_formats()]
    assert names == ["onnx", "openvino", "ncnn"]
    assert get_format("ONNX").suffix == ".onnx"
    assert default_stem(get_format("openvino"), half=True) == "model_openvino_fp16"
    assert parse_imgsz("384,640", (416, 416)) == (384, 640)
    assert parse_imgsz(None, (416, 416)) == (416, 416)
    with pytest.raises(ValueError, match="--imgsz"):
        parse_imgsz("big", (416, 416))


def test_fusion_keeps_outputs_and_removes_batchnorm(tiny: Detector) -> None:
    import copy

    fused = fuse_for_export(copy.deepcopy(tiny))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    batch = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    _assert_close(_raw(fused, batch), _raw(tiny, batch), atol=1e-4)


def test_onnx_static_round_trip_non_square(tiny: Detector, tmp_path: Path) -> None:
    """Height != width, so a swapped size shows; the sidecar is the checkpoint's config plus the
    export's fields."""
    height, width = SIZE, SIZE + 32
    result = export_model(tiny, "onnx", tmp_path, imgsz=f"{height},{width}")
    assert result.path == tmp_path / "model.onnx"
    config = ModelConfig.load(tmp_path / "model.json")
    assert config.input_size == (height, width) and config.names == ["a", "b", "c"]
    assert config.output_names == ["out0", "out1", "out2"] and not config.dynamic and config.precision == "fp32"
    assert config.anchors == tiny.config.anchors and config.strides == [8, 16, 32]
    assert config.preprocess == tiny.config.preprocess and config.model == "v5lite-e"
    assert config.extra["export"]["format"] == "onnx" and not config.nms_in_graph
    assert not list(tmp_path.glob(".*export*")), "the staging folder must be gone"
    backend = open_backend(result.path)
    batch = np.random.default_rng(1).random((1, 3, height, width), dtype=np.float32)
    outputs = backend.run(batch)
    assert outputs[0].shape == (1, 24, height // 8, width // 8)
    _assert_close(outputs, _raw(tiny, batch), atol=1e-4)
    with pytest.raises(ValueError, match="--dynamic"):
        backend.run(np.zeros((1, 3, width, height), dtype=np.float32))


def test_onnx_runtime_sessions_stop_spinning_between_runs(tiny: Detector, tmp_path: Path, monkeypatch) -> None:
    """Every ONNX Runtime session litedet opens (its models, the bench's peers and engine files)
    takes ``session_options``: the thread count, one inter-op thread, and worker threads that
    stop spinning when a run ends (they held a core the pipeline needed between runs)."""
    import onnxruntime as ort

    from litedet.bench.peers import open_engine_file
    from litedet.runtime import onnxruntime_backend

    options = onnxruntime_backend.session_options(2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert onnxruntime_backend.session_options().intra_op_num_threads == 0  # ONNX Runtime's default
    seen = []
    original = ort.InferenceSession

    def recording(path, options=None, *args, **kwargs):
        seen.append(options.get_session_config_entry("session.force_spinning_stop"))
        return original(path, options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    result = export_model(tiny, "onnx", tmp_path, imgsz=SIZE)
    open_backend(result.path, threads=2)
    open_engine_file("onnxruntime", result.path, threads=2)
    assert seen == ["1", "1"]


def test_onnx_dynamic_two_sizes(tiny: Detector, tmp_path: Path) -> None:
    result = export_model(tiny, "onnx", tmp_path, imgsz=SIZE, dynamic=True)
    assert result.config.dynamic and result.path.name == "model_dynamic.onnx"
    backend = open_backend(result.path)
    rng = np.random.default_rng(2)
    for shape in ((1, 3, SIZE, SIZE), (2, 3, SIZE + 32, SIZE + 64)):
        batch = rng.random(shape, dtype=np.float32)
        _assert_close(backend.run(batch), _raw(tiny, batch), atol=1e-4)


def _check_nms(tiny: Detector, backend, config: ModelConfig, conf: float, iou: float, max_det: int) -> None:
    rng = np.random.default_rng(3)
    for shape in ((1, 3, SIZE, SIZE), (2, 3, SIZE + 32, SIZE)):
        batch = rng.random(shape, dtype=np.float32)
        detections, counts = backend.run(batch)
        assert detections.shape == (shape[0], max_det, 6) and counts.shape == (shape[0],)
        candidates = decode_yolo(_raw(tiny, batch), config.anchors, config.strides, config.num_classes)
        expected = non_max_suppression(candidates, conf, iou, max_det=max_det)
        for image in range(shape[0]):
            count = int(counts[image])
            assert count == len(expected[image]) and count > 0
            np.testing.assert_allclose(detections[image, :count], expected[image], rtol=0, atol=1e-3)
            assert not detections[image, count:].any(), "rows past num_detections are zero"


def test_onnx_nms_matches_numpy_postprocessing(tiny: Detector, tmp_path: Path) -> None:
    conf, iou, max_det = 0.05, 0.45, 20
    result = export_model(tiny, "onnx", tmp_path, imgsz=SIZE, dynamic=True, nms=True, conf=conf, iou=iou, max_det=max_det)
    config = result.config
    assert result.path.name == "model_dynamic_nms.onnx"
    assert config.nms_in_graph and config.output_names == ["detections", "num_detections"]
    _check_nms(tiny, open_backend(result.path), config, conf, iou, max_det)


@pytest.mark.slow
def test_openvino_nms_matches_numpy_postprocessing(tiny: Detector, tmp_path: Path) -> None:
    conf, iou, max_det = 0.05, 0.45, 20
    result = export_model(tiny, "openvino", tmp_path, imgsz=SIZE, dynamic=True, nms=True, conf=conf, iou=iou, max_det=max_det)
    assert result.config.nms_in_graph
    _check_nms(tiny, open_backend(result.path), result.config, conf, iou, max_det)


def test_openvino_round_trip(tiny: Detector, tmp_path: Path) -> None:
    batch = np.random.default_rng(4).random((1, 3, SIZE, SIZE), dtype=np.float32)
    result = export_model(tiny, "openvino", tmp_path, imgsz=SIZE)
    assert {p.name for p in result.files} == {"model_openvino.xml", "model_openvino.bin", "model_openvino.json"}
    _assert_close(open_backend(result.path, precision="fp32").run(batch), _raw(tiny, batch), atol=1e-4)


@pytest.mark.slow
def test_openvino_half_stores_fp16_weights(tiny: Detector, tmp_path: Path) -> None:
    batch = np.random.default_rng(4).random((1, 3, SIZE, SIZE), dtype=np.float32)
    full = export_model(tiny, "openvino", tmp_path, imgsz=SIZE)
    half = export_model(tiny, "openvino", tmp_path, imgsz=SIZE, half=True)
    assert half.config.precision == "fp16" and half.path.name == "model_openvino_fp16.xml"
    assert (tmp_path / "model_openvino_fp16.bin").stat().st_size < 0.6 * (tmp_path / "model_openvino.bin").stat().st_size
    reference = _raw(tiny, batch)
    _assert_close(open_backend(full.path).run(batch), reference, atol=1e-4)
    _assert_close(open_backend(half.path, precision="fp32").run(batch), reference, atol=2e-2)


def test_ncnn_round_trip_dynamic(tiny: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative output folder (pnnx runs in its own working folder)
    result = export_model(tiny, "ncnn", "exports", imgsz=SIZE, dynamic=True)
    assert {p.name for p in result.files} == {"model_ncnn_dynamic.param", "model_ncnn_dynamic.bin", "model_ncnn_dynamic.json"}
    assert result.config.output_names and result.config.extra["input_names"]
    backend = open_backend(result.path, threads=1)
    rng = np.random.default_rng(5)
    for shape in ((1, 3, SIZE, SIZE), (1, 3, SIZE + 32, SIZE)):
        batch = rng.random(shape, dtype=np.float32)
        _assert_close(backend.run(batch), _raw(tiny, batch), atol=1e-4)


# ---- uint8 input: normalisation in the engine ---------------------------------------------------


def _images(seed: int, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in shapes]


def _with_preprocess(model: Detector, **preprocess) -> Detector:
    """A copy of ``model`` whose config normalises differently (BGR, a mean to subtract)."""
    import copy
    import dataclasses

    other = copy.deepcopy(model)
    other.preprocess = dataclasses.replace(other.preprocess, **preprocess)
    return other


@pytest.mark.parametrize("preprocess", [{}, {"rgb": False, "mean": (10.0, 20.5, 30.0), "std": (50.0, 60.0, 70.5)}])
def test_onnx_uint8_input_gives_the_float_graph_outputs(tiny: Detector, tmp_path: Path, preprocess) -> None:
    """Fed the letterboxed uint8 image, the graph returns what the float export returns for the
    normalised one, at every size of a dynamic export, and torch's maps within 1e-4. YOLOv5's
    RGB / 255 (zero mean) is folded into the stem conv's weights (images -> Transpose -> Cast ->
    Conv, equal within float rounding); with a mean the graph keeps Sub and Div, in the numpy
    path's very float32 arithmetic, so its outputs are bit-identical."""
    from litedet.data.transforms import preprocess as prepare

    model = _with_preprocess(tiny, **preprocess)
    plain = export_model(model, "onnx", tmp_path, imgsz=SIZE, dynamic=True)
    packed = export_model(model, "onnx", tmp_path, imgsz=SIZE, dynamic=True, uint8_input=True)
    assert packed.path.name == "model_dynamic_uint8.onnx" and packed.config.uint8_input and not plain.config.uint8_input
    assert ModelConfig.load(tmp_path / "model_dynamic_uint8.json").uint8_input
    import onnx

    ops = [node.op_type for node in onnx.load(str(packed.path)).graph.node]
    folded = not preprocess
    assert ops[:3] == (["Transpose", "Cast", "Conv"] if folded else ["Transpose", "Cast", "Sub"])
    float_backend, uint8_backend = open_backend(plain.path), open_backend(packed.path)
    assert uint8_backend.input_dtype is np.uint8 and uint8_backend.example_input(2).shape == (2, SIZE, SIZE, 3)
    for shapes in ([(40, 30)], [(50, 90), (90, 50)]):
        images = _images(len(shapes), shapes)
        size = (SIZE, SIZE + 32) if len(shapes) > 1 else (SIZE, SIZE)
        floats, _ = prepare(images, plain.config, new_shape=size)
        pixels, _ = prepare(images, packed.config, new_shape=size)
        assert pixels.dtype == np.uint8 and pixels.shape == (len(images), *size, 3)
        expected = float_backend.run(floats)
        if folded:
            _assert_close(uint8_backend.run(pixels), expected, atol=1e-4)
        else:
            for got, want in zip(uint8_backend.run(pixels), expected):
                np.testing.assert_array_equal(got, want)
        _assert_close(expected, _raw(model, floats), atol=1e-4)


def test_uint8_input_detections_equal_the_float_exports_on_openvino_and_ncnn(tiny: Detector, tmp_path: Path) -> None:
    """OpenVINO normalises in its graph, ncnn in its own pixel conversion: the maps stay within
    1e-4 of the float export's and the detections are the same boxes."""
    from litedet.engine.predictor import Predictor

    images = _images(7, [(40, 30), (64, 64), (30, 90)])
    for fmt in ("openvino", "ncnn"):
        plain = export_model(tiny, fmt, tmp_path / fmt, imgsz=SIZE)
        packed = export_model(tiny, fmt, tmp_path / fmt, imgsz=SIZE, uint8_input=True)
        assert packed.config.uint8_input and packed.path.stem.endswith("_uint8")
        reference, fast = Predictor(open_backend(plain.path), conf=0.2), Predictor(open_backend(packed.path), conf=0.2)
        for image in images:
            floats, _ = reference.preprocess(image)
            maps = reference.infer(floats)
            pixels, _ = fast.preprocess(image)
            assert pixels.dtype == np.uint8
            _assert_close(fast.infer(pixels), maps, atol=1e-4)
            want, got = reference.predict(image)[0], fast.predict(image)[0]
            assert len(want) == len(got) > 0
            # equal scores may come out in either order: compare the boxes as sets
            order_want = np.lexsort((*want.boxes.T, want.class_ids))
            order_got = np.lexsort((*got.boxes.T, got.class_ids))
            np.testing.assert_array_equal(got.class_ids[order_got], want.class_ids[order_want])
            np.testing.assert_allclose(got.boxes[order_got], want.boxes[order_want], rtol=0, atol=1e-2)


def test_ssdlite_exports_at_its_own_size_and_its_uint8_export_decodes_like_the_float_one(tmp_path: Path) -> None:
    """SSD's strides (up to 512) need not divide the input; SSD priors scale with the input's
    height and width, which a uint8 batch [B, H, W, 3] holds in other axes than [B, 3, H, W]."""
    from litedet.engine.predictor import Predictor

    torch.manual_seed(0)
    model = create_model("ssdlite-mobilenetv3_small", num_classes=3).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # a random model with distinct scores
            parameter.add_(0.05 * torch.randn_like(parameter))
    plain = export_model(model, "onnx", tmp_path)  # 320: not a multiple of 512
    packed = export_model(model, "onnx", tmp_path, uint8_input=True)
    reference, fast = Predictor(open_backend(plain.path), conf=0.2), Predictor(open_backend(packed.path), conf=0.2)
    image = _images(1, [(120, 200)])[0]
    floats, info = reference.preprocess(image)
    pixels, _ = fast.preprocess(image)
    assert fast.input_hw(pixels) == reference.input_hw(floats) == (320, 320)
    maps = reference.infer(floats)
    _assert_close(fast.infer(pixels), maps, atol=1e-4)
    # the same maps give the same boxes through either predictor (the priors see 320 x 320)
    want = reference.postprocess(maps, [info], [""], input_size=reference.input_hw(floats))[0]
    got = fast.postprocess(maps, [info], [""], input_size=fast.input_hw(pixels))[0]
    assert len(want) > 0
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    own = fast.postprocess(fast.infer(pixels), [info], [""], input_size=(320, 320))[0]
    np.testing.assert_array_equal(fast.predict(image)[0].boxes, own.boxes)  # predict passes (H, W)


def test_input_sizes_ssd_takes_any_and_yolo_its_largest_stride(tiny: Detector, tmp_path: Path) -> None:
    """One rule (``ModelConfig.size_multiple``) for export, the engines' --imgsz and tune: a YOLO
    neck needs every level to divide, SSD's nominal strides (up to 512) do not constrain it."""
    from litedet.runtime import with_input_size
    from litedet.tuner import enumerate_candidates

    ssd = create_model("ssdlite-mobilenetv3_small", num_classes=3).eval()
    assert ssd.config.size_multiple == 1 and tiny.config.size_multiple == 32
    assert with_input_size(ssd.config, 320).input_size == (320, 320)
    assert with_input_size(ssd.config, (300, 256)).input_size == (300, 256)
    assert with_input_size(tiny.config, 96).input_size == (96, 96)
    with pytest.raises(ValueError, match="largest stride 32"):
        with_input_size(tiny.config, 100)
    result = export_model(ssd, "onnx", tmp_path / "ssd", imgsz=288)
    assert open_backend(result.path).input_size == (288, 288)
    from litedet.models.checkpoint import save_checkpoint_weights

    weights = tmp_path / "ssd.safetensors"
    save_checkpoint_weights(ssd, weights)
    notes: list[str] = []
    found = enumerate_candidates([weights], [256, 320], ["onnxruntime"], ["fp32"], [1], bf16=False, notes=notes)
    assert sorted(c.imgsz for c in found) == [256, 320] and not notes


def test_a_sidecar_from_another_export_is_refused(tiny: Detector, tmp_path: Path) -> None:
    """An .onnx whose input type disagrees with its sidecar (files of two exports mixed up)."""
    import shutil

    plain = export_model(tiny, "onnx", tmp_path, imgsz=SIZE)
    packed = export_model(tiny, "onnx", tmp_path, imgsz=SIZE, uint8_input=True)
    shutil.copy(plain.path.with_suffix(".json"), packed.path.with_suffix(".json"))
    with pytest.raises(ValueError, match="model_uint8.onnx: its config says the input is float32 but the model takes "
                                         r"tensor.uint8.; the engine file and its .json sidecar come from different exports"):
        open_backend(packed.path)
    packed.config.save(packed.path.with_suffix(".json"))
    with pytest.raises(ValueError, match=r"onnxruntime: expected uint8 images \[B, H, W, 3\], got shape \[1, 3, 64, 64\]"):
        open_backend(packed.path).run(np.zeros((1, 3, SIZE, SIZE), np.float32))  # a float batch for a uint8 engine


# ---- errors -------------------------------------------------------------------------------------


class _Erfinv(nn.Module):
    """An op ONNX opset 17 has no translation for (aten::erfinv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erfinv(x.tanh() * 0.5)


class _TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 8, 1)
        self.odd = _Erfinv()
        self.down1 = nn.Conv2d(8, 8, 3, 2, 1)
        self.down2 = nn.Conv2d(8, 8, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.odd(self.stem(x))
        p4 = self.down1(p3)
        return [p3, p4, self.down2(p4)]


def test_unknown_format_and_unsupported_option(tiny: Detector, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'tflite'.*onnx, openvino, ncnn"):
        export_model(tiny, "tflite", tmp_path)
    with pytest.raises(ValueError, match="does not support --nms; formats that do: onnx, openvino"):
        export_model(tiny, "ncnn", tmp_path, nms=True)
    with pytest.raises(ValueError, match="does not support --half"):
        export_model(tiny, "onnx", tmp_path, half=True)
    with pytest.raises(ValueError, match=r"imgsz 50 must be a positive multiple of the model's largest stride 32 \(e.g. 64\)"):
        export_model(tiny, "onnx", tmp_path, imgsz=50)
    assert not any(tmp_path.iterdir())


def test_unwritable_output_folder(tiny: Detector, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="is not a folder"):
        export_model(tiny, "onnx", blocker)
    with pytest.raises(ValueError, match="cannot create the output folder"):
        export_model(tiny, "onnx", blocker / "sub")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write"):
            export_model(tiny, "onnx", locked)


def test_weights_of_another_model(tiny: Detector, tmp_path: Path) -> None:
    from litedet.models.checkpoint import save_checkpoint_weights

    weights = save_checkpoint_weights(tiny, tmp_path / "e.safetensors")
    with pytest.raises(ValueError, match=r"--model 'v5lite-s' does not match .*e\.json, which says 'v5lite-e'"):
        export_model(weights, "onnx", tmp_path / "out", model_name="v5lite-s")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        export_model(tmp_path / "missing.safetensors", "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("fmt", ["onnx", "ncnn"])
def test_op_the_engine_cannot_take_names_the_layer(fmt: str, tmp_path: Path) -> None:
    model = Detector(_TinyBackbone(), nn.Identity(), YoloHead([8, 8, 8], (8, 16, 32), 2), input_size=SIZE, model_name="odd").eval()
    with pytest.raises(ValueError, match=r"aten::erfinv in layer backbone\.odd"):
        export_model(model, fmt, tmp_path, imgsz=SIZE)
    assert not any(tmp_path.iterdir()), "a failed export leaves nothing behind"


@pytest.mark.slow
def test_full_size_parity_on_real_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/parity.py on the imported published v5lite-s: every format equals torch on real
    COCO images at 416 and at a non-square 384x640 (same classes, boxes within 1 px, scores
    within 1e-3)."""
    import importlib.util
    import json

    from conftest import require_shared
    from litedet.models.ncnn_import import import_ncnn_weights

    param = require_shared("weights", "yolov5-lite", "v5lite-s.ncnn.param")
    images = require_shared("data", "coco256", "images", "val2017")
    weights, _ = import_ncnn_weights(param, "v5lite-s", tmp_path / "v5lite-s.safetensors")
    spec = importlib.util.spec_from_file_location("parity", Path(__file__).resolve().parents[1] / "scripts" / "parity.py")
    parity = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "parity", parity)  # its dataclasses look their module up
    spec.loader.exec_module(parity)
    out = tmp_path / "parity"
    code = parity.main(["--weights", str(weights), "--images", str(images), "--num-images", "4",
                        "--sizes", "416", "384,640", "--out", str(out)])
    rows = json.loads((out / "parity.json").read_text())
    assert code == 0 and len(rows) == 6
    assert all(row["passed"] and row["detections_torch"] > 0 for row in rows)


def test_image_normalisation_is_folded_only_into_convs_that_alone_read_the_image(tiny: Detector, tmp_path: Path) -> None:
    """A normalised image that something other than a conv also reads keeps its Div: folding it
    into the conv would hand that reader the raw pixels."""
    import onnx
    from onnx import helper

    from litedet.export.onnx import fold_image_normalisation

    model = _with_preprocess(tiny)
    with_div = tmp_path / "unfolded.onnx"
    from litedet.export.onnx import export_onnx

    export_onnx(fuse_for_export(model), with_div, (SIZE, SIZE), uint8_input=model.config.preprocess)
    proto = onnx.load(str(with_div))
    assert [n.op_type for n in proto.graph.node][:3] == ["Transpose", "Cast", "Conv"]  # folded by the export
    # rebuild the unfolded prefix by hand: Cast -> Div(std) -> Conv, plus a second reader of the Div
    conv = proto.graph.node[2]
    std = onnx.numpy_helper.from_array(np.full((1, 3, 1, 1), 255.0, np.float32), "std_again")
    div = helper.make_node("Div", [conv.input[0], "std_again"], ["normalised"], name="div_again")
    spy = helper.make_node("Identity", ["normalised"], ["normalised_copy"], name="spy")
    conv.input[0] = "normalised"
    proto.graph.initializer.append(std)
    proto.graph.node.insert(2, div)
    proto.graph.node.insert(3, spy)
    proto.graph.output.append(helper.make_tensor_value_info("normalised_copy", onnx.TensorProto.FLOAT, None))
    assert not fold_image_normalisation(proto)
    assert [n.op_type for n in proto.graph.node][:4] == ["Transpose", "Cast", "Div", "Identity"]
    proto.graph.node.remove(spy)
    del proto.graph.output[-1]
    assert fold_image_normalisation(proto)
    assert [n.op_type for n in proto.graph.node][:3] == ["Transpose", "Cast", "Conv"]


def test_image_normalisation_folds_into_a_stem_conv_whose_weights_another_node_shares(tmp_path: Path) -> None:
    """An export shares initializers of equal value (a fresh model's zero biases, say): the stem
    conv still takes the fold, on its own copy of the weight, and the other reader keeps the
    original values."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from litedet.export.onnx import INPUT_NAME, fold_image_normalisation

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Slice", ["f", "starts", "ends", "axes", "steps"], ["rgb"]),
             helper.make_node("Div", ["rgb", "std"], ["x"]),
             helper.make_node("Conv", ["x", "w"], ["stem"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["other_in", "w"], ["other"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.full((1, 3, 1, 1), 255.0, np.float32), "std"),
             numpy_helper.from_array(np.array([-1], np.int64), "starts"),
             numpy_helper.from_array(np.array([-(2 ** 62)], np.int64), "ends"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(np.array([-1], np.int64), "steps")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [1, 8, 8, 3]),
                                           helper.make_tensor_value_info("other_in", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("stem", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("other", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    feeds = {INPUT_NAME: rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8), "other_in": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}

    def run(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    before = run(proto)
    assert fold_image_normalisation(proto)
    assert [n.op_type for n in proto.graph.node][:3] == ["Transpose", "Cast", "Conv"]
    after = run(proto)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(after[1], before[1])


def test_openvino_pins_threads_only_when_it_has_every_core(tiny: Detector, tmp_path: Path) -> None:
    # Two inference streams each on a share of the cores: pinned, both would land on the same ones.
    from litedet.config import usable_cores

    cores = usable_cores()
    if cores < 2:
        pytest.skip("needs two cores: one thread is then a share of them")
    path = export_model(tiny, "openvino", tmp_path, imgsz=SIZE).path
    # In a child process: OpenVINO engines on different thread counts leave thread pools behind
    # that can crash a later torch run in the same process (a signal during training).
    script = (
        "import sys, openvino as ov; from litedet.runtime import open_backend\n"
        "pin = lambda b: b.compiled.get_property('ENABLE_CPU_PINNING')\n"
        f"share = open_backend(sys.argv[1], threads={cores - 1}); whole = open_backend(sys.argv[1], threads={cores})\n"
        "print(pin(share), pin(share.reopen(threads=1)), pin(whole) == ov.Core().get_property('CPU', 'ENABLE_CPU_PINNING'))\n"
    )
    child = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["False", "False", "True"]
