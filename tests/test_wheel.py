"""Installable without a clone: ``python -m build`` makes a wheel and an sdist with every file of
the package; the wheel installed with only the ``runtime`` extra into a fresh venv detects from
an ONNX file without torch, and says in one line which extra ``litedet val`` needs.

Slow (a venv and a pip install of numpy, opencv and onnxruntime from the package index): run
with ``pytest -m slow tests/test_wheel.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def _package_files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in (root / "litedet").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist built by ``python -m build`` from a copy of the project sources."""
    pytest.importorskip("build", reason="needs the 'build' package (the dev extra)")
    root = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, root / name)
    # not the extension an editable install compiled in place: the build must make its own
    shutil.copytree(REPO / "litedet", root / "litedet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd"))
    out = root / "dist"
    result = _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, root, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels, sdists = list(out.glob("litedet-*.whl")), list(out.glob("litedet-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"root": root, "wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_and_sdist_hold_every_package_file(dist):
    expected = _package_files(dist["root"])
    assert "litedet/api.py" in expected and "litedet/runtime/onnxruntime_backend.py" in expected
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "litedet = litedet.cli:main" in wheel.read(entry_points).decode()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    sources = {name for name in expected if name.endswith(".c")}
    assert sources == {"litedet/ops/_native.c"}
    missing = expected - sources - names
    assert not missing, f"not in the wheel: {sorted(missing)[:10]}"
    # the compiled post-processing is in the wheel (this machine has a C compiler)
    assert any(n.startswith("litedet/ops/_native.") and n.endswith((".so", ".pyd")) for n in names), sorted(names)[:20]
    from litedet import __version__

    assert f"Version: {__version__}" in metadata and "Provides-Extra: runtime" in metadata
    with tarfile.open(dist["sdist"]) as sdist:
        members = {Path(*Path(m).parts[1:]).as_posix() for m in sdist.getnames() if len(Path(m).parts) > 1}
    assert {"pyproject.toml", "setup.py", "README.md"} <= members
    assert not expected - members, f"not in the sdist: {sorted(expected - members)[:10]}"


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A tiny v5lite-e exported to ONNX with this (torch) environment, its sidecar beside it."""
    torch = pytest.importorskip("torch")
    import litedet
    from litedet.export.api import export_model
    from litedet.models.checkpoint import save_checkpoint_weights

    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = litedet.create_model("v5lite-e", input_size=64).eval()
    with torch.no_grad():  # every anchor a class-0 candidate, so the detection is not empty
        for conv in model.head.convs:
            conv.bias.view(model.head.num_anchors, -1)[:, 4:6] = 4.0
    weights = save_checkpoint_weights(model, root / "tiny.safetensors")
    return export_model(weights, "onnx", root / "onnx").path


def test_runtime_extra_detects_from_onnx_without_torch(dist, tiny_onnx, tmp_path):
    venv = tmp_path / "venv"
    result = _run(sys.executable, "-m", "venv", venv)
    assert result.returncode == 0, result.stderr
    python, litedet_cli = venv / "bin" / "python", venv / "bin" / "litedet"
    result = _run(python, "-m", "pip", "install", "--quiet", f"{dist['wheel']}[runtime]")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # no torch anywhere in this venv
    result = _run(python, "-c", "import importlib.util as u; print([m for m in ('torch', 'PIL', 'openvino') if u.find_spec(m)])")
    assert result.stdout.strip() == "[]", result.stdout + result.stderr

    import cv2
    import numpy as np

    image = tmp_path / "scene.jpg"
    canvas = np.full((120, 160, 3), 90, np.uint8)
    cv2.rectangle(canvas, (30, 20), (110, 100), (20, 200, 240), -1)
    cv2.imwrite(str(image), canvas)

    result = _run(litedet_cli, "--version")
    from litedet import __version__

    assert result.returncode == 0 and result.stdout.strip() == f"litedet {__version__}", result.stdout + result.stderr
    result = _run(litedet_cli, "detect", "--weights", tiny_onnx, "--source", image, "--json", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["source"] for line in lines] == [str(image)] and lines[0]["detections"]

    script = (
        "import sys, litedet\n"
        f"model = litedet.load({str(tiny_onnx)!r})\n"
        f"result = model({str(image)!r})[0]\n"
        "assert len(result) > 0 and result.class_names[0] == 'person', result\n"
        "assert 'torch' not in sys.modules\n"
        "from litedet.ops import native\n"
        "assert native.available(), 'the compiled post-processing did not install'\n"
        "print(model.engine, len(result))\n"
    )
    result = _run(python, "-c", script, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("onnxruntime "), result.stdout + result.stderr

    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: .\nval: .\nnames: [thing]\n")
    result = _run(litedet_cli, "val", "--weights", tiny_onnx, "--data", data, "--no-progress", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("litedet val: needs the 'torch' extra") and lines[0].endswith("pip install 'litedet[torch]'")
