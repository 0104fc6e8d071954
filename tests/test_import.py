"""Importing ncnn param/bin models: fidelity against the ncnn engine itself, and clear refusals."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import require_shared
from litedet.cli import main as cli_main
from litedet.config import ModelConfig, sidecar_path
from litedet.models.ncnn_import import import_ncnn, load_ncnn_weights, read_ncnn_model
from litedet.layers import ConvBnAct
from litedet.models.checkpoint import load_detector

ncnn = pytest.importorskip("ncnn")

FP16_TAG = 0x01306B47

# A tiny graph in the same dialect as the YOLOv5-Lite files: fused conv+BN(+ReLU), a depthwise
# conv, and a 1x1 prediction conv with bias.
TINY_PARAM = """7767517
4 4
Input                    images    0 1 images
Convolution              conv0     1 1 images a 0=8 1=3 3=2 4=1 5=1 6=216 9=1
ConvolutionDepthWise     conv1     1 1 a b 0=8 1=3 4=1 5=1 6=72 7=8
Convolution              conv2     1 1 b out 0=6 1=1 5=1 6=48
"""


def _tiny_model(last_out: int = 6) -> nn.Module:
    return nn.Sequential(
        ConvBnAct(3, 8, 3, 2, act="relu"),
        nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8)),
        nn.Conv2d(8, last_out, 1),
    )


def _blob(values: np.ndarray, fp16: bool) -> bytes:
    if fp16:
        data = values.astype("<f2").tobytes()
        data += b"\0" * (-len(data) % 4)
        return struct.pack("<I", FP16_TAG) + data
    return struct.pack("<I", 0) + values.astype("<f4").tobytes()


def _write_tiny(tmp_path: Path, seed: int = 0) -> tuple[Path, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays = [
        rng.normal(0, 0.5, (8, 3, 3, 3)), rng.normal(0, 0.1, 8),  # conv0 fp16
        rng.normal(0, 0.5, (8, 1, 3, 3)), rng.normal(0, 0.1, 8),  # conv1 fp32
        rng.normal(0, 0.5, (6, 8, 1, 1)), rng.normal(0, 0.1, 6),  # conv2 fp16
    ]
    arrays = [a.astype(np.float32) for a in arrays]
    data = (
        _blob(arrays[0], True) + arrays[1].astype("<f4").tobytes()
        + _blob(arrays[2], False) + arrays[3].astype("<f4").tobytes()
        + _blob(arrays[4], True) + arrays[5].astype("<f4").tobytes()
    )
    param = tmp_path / "tiny.param"
    param.write_text(TINY_PARAM)
    param.with_suffix(".bin").write_bytes(data)
    return param, arrays


def _ncnn_run(param: Path, bin_path: Path, image: np.ndarray, outputs: list[str], input_name: str = "images") -> list[np.ndarray]:
    net = ncnn.Net()
    # ncnn's fp16 storage/arithmetic would differ from fp32 by ~1e-2; compare in fp32.
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_arithmetic = False
    net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(bin_path)) == 0
    extractor = net.create_extractor()
    extractor.input(input_name, ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32)))
    results = []
    for name in outputs:
        ret, mat = extractor.extract(name)
        assert ret == 0, f"ncnn could not extract {name}"
        results.append(np.array(mat))
    return results


def test_tiny_graph_fp16_and_fp32_weights_match_ncnn(tmp_path):
    param, arrays = _write_tiny(tmp_path)
    graph = read_ncnn_model(param)
    assert graph.storage == {"fp16", "fp32"}
    assert graph.output_names == ["out"]
    model = _tiny_model().eval()
    load_ncnn_weights(model, graph, "tiny")
    # fp16-stored weights arrive rounded to fp16; fp32 ones exactly.
    np.testing.assert_array_equal(model[0].conv.weight.detach().numpy(), arrays[0].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(model[1][0].weight.detach().numpy(), arrays[2])
    image = np.random.default_rng(1).random((3, 16, 20), dtype=np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(image)[None])[0].numpy()
    (theirs,) = _ncnn_run(param, param.with_suffix(".bin"), image, ["out"])
    assert theirs.shape == ours.shape == (6, 8, 10)
    assert np.abs(theirs - ours).max() < 1e-4


def test_tiny_graph_mismatch_names_layer_and_shapes(tmp_path):
    param, _ = _write_tiny(tmp_path)
    with pytest.raises(ValueError, match=r"'conv2'.*\[6, 8, 1, 1\].*\[7, 8, 1, 1\]"):
        load_ncnn_weights(_tiny_model(last_out=7), read_ncnn_model(param), "tiny")
    with pytest.raises(ValueError, match="graph has 3 convs"):
        load_ncnn_weights(_tiny_model()[:2], read_ncnn_model(param), "tiny")


def test_truncated_or_foreign_bin_and_random_param_are_refused(tmp_path):
    param, _ = _write_tiny(tmp_path)
    bin_path = param.with_suffix(".bin")
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_ncnn_model(param)
    bin_path.write_bytes(data + b"\0" * 8)
    with pytest.raises(ValueError, match="bytes left"):
        read_ncnn_model(param)
    junk = tmp_path / "junk.param"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a litedet/ncnn model"):
        read_ncnn_model(junk)
    text = tmp_path / "text.param"
    text.write_text("hello\n1 1\n")
    with pytest.raises(ValueError, match="not a litedet/ncnn model"):
        load_detector(text, "v5lite-e")
    with pytest.raises(FileNotFoundError, match="missing.param"):
        read_ncnn_model(tmp_path / "missing.param")
    param.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"tiny\.bin"):
        read_ncnn_model(param)


# ---- the published YOLOv5-Lite ncnn models (../shared) --------------------------------------------


def _letterboxed(path: Path, size: int) -> np.ndarray:
    import cv2

    from litedet.data.transforms import letterbox

    image = cv2.imread(str(path))
    boxed, _ = letterbox(image, size, pad_value=114)
    return np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / 255.0


@pytest.mark.parametrize("arch,size", [("v5lite-e", 320), ("v5lite-s", 416)])
def test_published_ncnn_raw_outputs_match_torch(arch, size):
    """Same letterboxed RGB/255 input: our torch model with imported weights vs the ncnn engine
    running the same .param/.bin, every raw head value within 1e-3."""
    param = require_shared("weights", "yolov5-lite", f"{arch}.ncnn.param")
    images = sorted(require_shared("data", "coco256", "images", "val2017").glob("*.jpg"))[:2]
    model = import_ncnn(param, arch)
    assert model.num_classes == 80 and model.config.input_size == (size, size)
    for image_path in images:
        image = _letterboxed(image_path, size)
        with torch.no_grad():
            ours = model(torch.from_numpy(image)[None])
        theirs = _ncnn_run(param, param.with_suffix(".bin"), image, ["output", "1111", "2222"])
        for level, (mine, other) in enumerate(zip(ours, theirs)):
            grid = (size // 8 >> level) ** 2
            assert other.shape == (3, grid, 85)
            # ours [1, 255, H, W] -> (3, 85, H*W) -> (3, H*W, 85), the ncnn Reshape + Permute
            mine = mine[0].numpy().reshape(3, 85, -1).transpose(0, 2, 1)
            assert np.abs(mine - other).max() <= 1e-3, f"{arch} level {level} on {image_path.name}"
            assert np.abs(other).max() > 1.0  # real logits, not an all-zero comparison


def test_published_graph_of_other_arch_is_refused_naming_layer():
    param = require_shared("weights", "yolov5-lite", "v5lite-e.ncnn.param")
    with pytest.raises(ValueError) as info:
        import_ncnn(param, "v5lite-s")
    message = str(info.value)
    assert "'Conv_320'" in message and "[96, 464, 1, 1]" in message
    assert "backbone.stage4.2.branch2.0" in message and "[232, 232, 1, 1]" in message


def test_cli_import_writes_weights_and_sidecar(tmp_path, capsys):
    param = require_shared("weights", "yolov5-lite", "v5lite-e.ncnn.param")
    output = tmp_path / "e.safetensors"
    assert cli_main(["import", str(param), "--arch", "v5lite-e", "-o", str(output)]) == 0
    config = ModelConfig.load(sidecar_path(output))
    assert config.model == "v5lite-e" and config.input_size == (320, 320)
    assert config.names[0] == "person" and len(config.names) == 80
    assert config.anchors[2][2] == [373.0, 326.0] and config.strides == [8, 16, 32]
    assert config.preprocess.rgb and config.preprocess.pad_value == 114 and config.preprocess.std == (255.0,) * 3
    assert "fp16" in config.source
    loaded, _ = load_detector(output)
    direct = import_ncnn(param, "v5lite-e")
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(loaded(x), direct(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the wrong architecture: one error line naming the first mismatched layer, exit code 2
    assert cli_main(["import", str(param), "--arch", "v5lite-s", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "Conv_320" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
