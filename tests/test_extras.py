"""A missing optional dependency is one line naming the pip extra that installs it, for every
verb and engine; the table behind it is litedet's own extras list."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from litedet import extras
from litedet.extras import MissingExtraError, extra_for, extras_table, missing_extra_message

REPO = Path(__file__).resolve().parents[1]


def test_table_is_read_from_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    table = extras_table()
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
            if name == "litedet":
                continue
            module = extras.module_name(name)
            assert module in table, f"{name} of [{extra}] is missing from the table"
    for requirement in project["dependencies"]:
        assert table[extras.module_name(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))] == extras.CORE
    assert extra_for("torch") == "torch" and extra_for("torch.nn.functional") == "torch"
    assert extra_for("PIL") == "torch" and extra_for("onnxruntime") == "runtime"
    assert extra_for("openvino") == "openvino" and extra_for("ncnn") == "ncnn"
    assert extra_for("torch_pruning") == "compress" and extra_for("pynvml") == "bench"
    assert extra_for("not_a_dependency") is None


def test_installed_metadata_gives_the_same_answers(monkeypatch):
    monkeypatch.setattr(extras, "_pyproject_requirements", lambda: None)
    extras_table.cache_clear()
    try:
        table = extras_table()
        if not table:
            pytest.skip("litedet is not installed (no package metadata)")
        assert table["torch"] == "torch" and table["onnxruntime"] == "runtime" and table["cv2"] == extras.CORE
    finally:
        extras_table.cache_clear()


def test_messages():
    assert missing_extra_message("torch") == "needs the 'torch' extra (no module named 'torch'): pip install 'litedet[torch]'"
    assert missing_extra_message("cv2") == "needs 'cv2', a core dependency that is missing: pip install litedet"
    assert missing_extra_message("no_such_module") is None and missing_extra_message(None) is None
    error = extras.missing_extra_error(ModuleNotFoundError("No module named 'ncnn'", name="ncnn"), "the ncnn engine")
    assert isinstance(error, MissingExtraError) and isinstance(error, ImportError)
    assert str(error) == "the ncnn engine needs the 'ncnn' extra (no module named 'ncnn'): pip install 'litedet[ncnn]'"


# Runs in a fresh interpreter where the optional packages cannot be imported, as in a venv
# with only the `runtime` extra: every verb and engine must answer in one line.
_WITHOUT_EXTRAS = r"""
import contextlib, io, json, sys
for name in ("torch", "torchvision", "PIL", "pycocotools", "openvino", "ncnn", "onnx", "safetensors"):
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError(name=name)
from litedet.cli import main
import litedet
cases = json.loads(sys.argv[1])
out = {}
for key, argv in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    out[key] = [code, err.getvalue()]
try:
    litedet.load(cases["xml"][2])
except ImportError as error:
    out["load"] = [type(error).__name__, str(error)]
print(json.dumps(out))
"""


def test_verbs_and_engines_name_the_extra_without_a_traceback(tmp_path):
    config = tmp_path / "model.json"  # a sidecar, so the engine is reached
    sidecar = {"model": "v5lite-e", "num_classes": 1, "names": ["thing"], "input_size": [64, 64]}
    config.write_text(json.dumps(sidecar))
    for suffix in (".xml", ".param", ".onnx", ".safetensors"):
        (tmp_path / f"model{suffix}").write_bytes(b"")
    images = tmp_path / "images"
    images.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(images / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames: [thing]\n")
    image = str(images / "a.jpg")
    cases = {
        "val": ["val", "--weights", str(tmp_path / "model.onnx"), "--data", str(data), "--no-progress"],
        "models": ["models"],
        "export": ["export", "--weights", str(tmp_path / "model.safetensors"), "--format", "onnx"],
        "xml": ["detect", "--weights", str(tmp_path / "model.xml"), "--source", image, "--no-progress"],
        "param": ["detect", "--weights", str(tmp_path / "model.param"), "--source", image, "--no-progress"],
        "train": ["train", "--data", str(data), "--epochs", "1"],
    }
    result = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS, json.dumps(cases)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"val": "torch", "models": "torch", "export": "torch", "xml": "openvino", "param": "ncnn", "train": "torch"}
    for key, extra in expected.items():
        code, stderr = answers[key]
        verb = cases[key][0]
        assert code == 2, (key, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, f"{key}: expected one line, got:\n{stderr}"
        assert lines[0].startswith(f"litedet {verb}: ") and f"needs the '{extra}' extra" in lines[0], lines[0]
        assert lines[0].endswith(f"pip install 'litedet[{extra}]'"), lines[0]
    kind, message = answers["load"]
    assert kind == "MissingExtraError" and "pip install 'litedet[openvino]'" in message and "model.xml" in message
