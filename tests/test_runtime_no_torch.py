"""A device without torch: `litedet detect` on an exported ONNX model in a subprocess where
importing torch fails, giving the same detections as the torch model in this process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from litedet.config import ModelConfig
from litedet.engine.predictor import Predictor
from litedet.export.api import export_model
from litedet.models.registry import create_model
from litedet.runtime.base import Backend

REPO = Path(__file__).resolve().parents[1]

# Runs in the subprocess: any import of torch (or torchvision) raises, as on a device without it.
CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"No module named {name!r} (blocked: this device has no torch)")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")

    from litedet.cli import main

    code = main(sys.argv[1:])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    print(json.dumps({"code": code, "torch_modules": loaded}))
    """
)


class _EagerBackend(Backend):
    """The torch model as a Backend, for the reference detections."""

    name = "eager"

    def __init__(self, model: nn.Module, config: ModelConfig) -> None:
        super().__init__(config)
        self.model = model

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [out.numpy() for out in self.model(torch.from_numpy(batch))]


def test_detect_from_onnx_without_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=64, num_classes=3, names=["a", "b", "c"]).eval()
    with torch.no_grad():
        for conv in model.head.convs:  # spread the scores so some boxes pass --conf
            nn.init.normal_(conv.weight, std=0.5)
            nn.init.zeros_(conv.bias)
    result = export_model(model, "onnx", tmp_path / "export", imgsz=64)

    # A deployment folder holds just the two files.
    device_dir = tmp_path / "device"
    device_dir.mkdir()
    for path in result.files:
        (device_dir / path.name).write_bytes(path.read_bytes())
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (9, 9), 3)
    image_path = tmp_path / "frame.png"
    assert cv2.imwrite(str(image_path), image)

    conf = 0.2
    expected = Predictor(_EagerBackend(model, result.config), conf=conf, auto=False).predict([image])[0]
    assert len(expected.boxes) > 0

    child = subprocess.run(
        [sys.executable, "-c", CHILD, "detect", "--weights", str(device_dir / "model.onnx"), "--source", str(image_path),
         "--conf", str(conf), "--json", "--no-progress", "--threads", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    lines = [line for line in child.stdout.splitlines() if line.strip()]
    status = json.loads(lines[-1])
    assert status == {"code": 0, "torch_modules": []}
    frames = [json.loads(line) for line in lines[:-1]]  # --json: JSON Lines, one object per frame
    assert len(frames) == 1
    got = frames[0]["detections"]
    assert [d["class_id"] for d in got] == expected.class_ids.tolist()
    np.testing.assert_allclose([d["box"] for d in got], expected.boxes, atol=1.0)
    np.testing.assert_allclose([d["score"] for d in got], expected.scores, atol=1e-3)
    assert {d["class_name"] for d in got} <= {"a", "b", "c"}
