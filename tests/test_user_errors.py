"""One line for every user error: each case runs the CLI verb as a user does (``litedet.cli.main``,
in-process so torch is imported once; one case through a real subprocess) and checks a non-zero
exit with one ``litedet VERB: error:`` line that names the file (and the line, for labels), and
no traceback. The dataset checks' counts (duplicates, orphans, all-background) and the skip of an
image deleted during training are checked through the library."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from litedet.cli import main
from litedet.data.datasets import load_data_config, summary_table
from litedet.errors import UserError

SIZE = 64


def _dataset(root: Path, labels: dict[str, str], extra_labels: dict[str, str] | None = None) -> Path:
    """A YOLO dataset: one 64x64 image per entry of ``labels`` (name -> label file text), names
    [a, b]; ``extra_labels`` are label files without an image. Returns the YAML path."""
    images, label_dir = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for index, (name, text) in enumerate(labels.items()):
        cv2.imwrite(str(images / f"{name}.png"), np.full((SIZE, SIZE, 3), 30 * index, np.uint8))
        if text is not None:
            (label_dir / f"{name}.txt").write_text(text)
    for name, text in (extra_labels or {}).items():
        (label_dir / f"{name}.txt").write_text(text)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: [a, b]\n")
    return yaml_path


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _assert_one_line(code: int, err: str, verb: str, *needles: str) -> str:
    assert code != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"litedet {verb}:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `train` makes its run folder under the working directory
    return tmp_path


# ---- a backbone where a detector is needed -------------------------------------------------------


def test_a_backbone_name_is_one_line_for_train_and_bench(capsys, in_tmp):
    code, err = _run(capsys, "train", "--model", "shufflenetv2_x1_0", "--data", "nowhere.yaml")
    _assert_one_line(code, err, "train", "'shufflenetv2_x1_0' is a backbone", "train yolo-shufflenetv2_x1_0")
    code, err = _run(capsys, "bench", "--models", "vovnet39", "--engines", "onnxruntime", "--runs", "1")
    _assert_one_line(code, err, "bench", "'vovnet39' is a backbone")


# ---- YAML files: --config and --data --------------------------------------------------------------


@pytest.mark.parametrize("text, needle", [
    ("epochs: 3\nlr0: [0.1\n", "not valid YAML"),
    ("epochs: !!python/object/apply:os.system ['echo owned']\n", "!!python/object/apply:os.system"),
])
def test_bad_experiment_yaml_is_one_line(capsys, in_tmp, text, needle):
    config = in_tmp / "exp.yaml"
    config.write_text(text)
    code, err = _run(capsys, "train", "--config", str(config))
    line = _assert_one_line(code, err, "train", f"{config}:", needle)
    assert "owned" not in line or "tag" in line


@pytest.mark.parametrize("text, needle", [
    ("path: .\ntrain: images\n  val: x\n", "not valid YAML"),
    ("path: !!python/name:os.getcwd\ntrain: a\nval: a\nnames: [a]\n", "not allowed"),
])
def test_bad_data_yaml_is_one_line(capsys, in_tmp, text, needle):
    data = in_tmp / "data.yaml"
    data.write_text(text)
    code, err = _run(capsys, "train", "--data", str(data), "--epochs", "1")
    _assert_one_line(code, err, "train", f"{data}:", needle)


def test_bad_recipe_yaml_is_one_line(capsys, in_tmp):
    recipe = in_tmp / "recipe.yaml"
    recipe.write_text("model: v5lite-e\nsteps:\n  - prune: !!python/object/new:dict {}\n")
    code, err = _run(capsys, "compress", "--recipe", str(recipe), "--check")
    _assert_one_line(code, err, "compress", f"{recipe}:3:", "!!python/object/new:dict", "not allowed")


@pytest.mark.slow  # a fresh interpreter imports torch: ~15 s on a loaded 2-core machine
def test_yaml_error_through_a_real_process(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("epochs: [1\n")
    done = subprocess.run([sys.executable, "-m", "litedet", "train", "--config", str(config)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"litedet train: error: {config}:2: not valid YAML")


# ---- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("label, what", [
    ("nan 0.5 0.5 0.2 0.2", "non-finite"),
    ("inf 0.5 0.5 0.2 0.2", "non-finite"),
    ("0 0.5 0.5 inf 0.2", "non-finite"),
    ("0 0.5 0.5 1e300 0.2", "beyond 1e+09"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1 is not in 0..1"),
    ("2 0.5 0.5 0.2 0.2", "class id 2 is not in 0..1"),
    ("0.5 0.5 0.5 0.2 0.2", "class id 0.5 is not in 0..1"),
    ("0 0.5 0.5 0.2", "expected 5 numbers"),
])
def test_bad_label_names_file_and_line(capsys, in_tmp, label, what):
    data = _dataset(in_tmp / "ds", {"ok": "0 0.5 0.5 0.3 0.3\n", "bad": f"1 0.4 0.4 0.2 0.2\n{label}\n"})
    code, err = _run(capsys, "train", "--data", str(data), "--epochs", "1")
    bad = in_tmp / "ds" / "labels" / "train" / "bad.txt"
    _assert_one_line(code, err, "train", f"{bad}:2", what)


def test_nonfinite_labels_are_counted_before_the_error(tmp_path):
    data = _dataset(tmp_path, {"a": "0 nan 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 inf\n"})
    with pytest.raises(UserError, match=r"a\.txt:1: .*non-finite.*2 such label"):
        load_data_config(data).load_split("train")


def test_duplicates_are_dropped_and_counted(tmp_path):
    line = "0 0.5 0.5 0.25 0.25\n"
    data = _dataset(tmp_path, {"a": line * 3 + "1 0.3 0.3 0.1 0.1\n", "b": line})
    dataset = load_data_config(data).load_split("train")
    assert dataset.stats.duplicates == 2
    assert dataset.stats.boxes == 3 and [len(s.boxes) for s in dataset.samples] == [2, 1]
    table = summary_table([dataset])
    assert "duplicate" in table.splitlines()[0]
    assert "warning: split 'train': 2 repeated box(es) dropped" in table


def test_orphan_label_files_are_counted(tmp_path):
    data = _dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"}, extra_labels={"gone": "0 0.5 0.5 0.2 0.2\n"})
    dataset = load_data_config(data).load_split("train")
    assert dataset.stats.orphans == 1
    assert dataset.stats.orphan_files == [str(tmp_path / "labels" / "train" / "gone.txt")]
    assert "1 label file(s) without an image" in summary_table([dataset])


def test_all_background_split_warns(tmp_path, caplog):
    data = _dataset(tmp_path, {"a": None, "b": ""})  # no label file, and an empty one
    with caplog.at_level(logging.WARNING, logger="litedet.data.datasets"):
        dataset = load_data_config(data).load_split("train")
    assert dataset.stats.backgrounds == 2 and dataset.stats.boxes == 0
    assert any("has no boxes: all 2 images are background" in r.getMessage() for r in caplog.records)
    assert "warning: split 'train' has no boxes" in summary_table([dataset])
    # the hint names where the labels were looked for, not the images folder
    assert f"empty or missing labels in {tmp_path / 'labels' / 'train'}?" in summary_table([dataset])


# ---- an image deleted during training ----------------------------------------------------------


def test_image_deleted_during_training_is_skipped_and_counted(tmp_path):
    torch = pytest.importorskip("torch")
    from litedet.data.loader import DetectionTrainDataset, build_loader

    names = {f"i{k}": "0 0.5 0.5 0.3 0.3\n" for k in range(4)}
    dataset = load_data_config(_dataset(tmp_path, names)).load_split("train")
    train = DetectionTrainDataset(dataset, SIZE, augment=None)
    (tmp_path / "images" / "train" / "i1.png").unlink()  # after the check, as during a long run
    loader, sampler = build_loader(train, batch_size=2, seed=0, shuffle=False, num_workers=2)
    batches = list(loader)
    assert sum(len(paths) for _, _, paths in batches) == 4  # i1's slot got the next readable image
    assert not any(path.endswith("i1.png") for _, _, paths in batches for path in paths)
    assert train.skipped == 1  # counted in the worker process, seen here
    for path in tmp_path.glob("images/train/*.png"):
        path.unlink()
    with pytest.raises(UserError, match="no training image can be read any more"):
        train[0]
    assert isinstance(batches[0][0], torch.Tensor)


# ---- sidecars and export -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    pytest.importorskip("torch")
    import litedet.models.zoo  # noqa: F401
    from litedet.models.checkpoint import save_checkpoint_weights
    from litedet.models.registry import create_model

    root = tmp_path_factory.mktemp("sidecar")
    return save_checkpoint_weights(create_model("v5lite-e", input_size=SIZE).eval(), root / "e64.safetensors")


@pytest.mark.parametrize("change, needle", [
    ({"head": "ssdlite"}, "head 'ssdlite' contradicts model 'v5lite-e'"),
    ({"input_size": "ab"}, "input_size must be [height, width], got 'ab'"),
    ({"input_size": ["a", "b"]}, "input_size must be an integer, got 'a'"),
    ({"num_classes": "80"}, "num_classes must be an integer"),
    ({"names": None}, "names must be a list of strings"),
    ({"version": 99}, "model config version 99; this litedet reads versions up to 1"),
    ({"precision": "int3"}, "precision must be one of ['fp32', 'fp16', 'bf16', 'int8'], got 'int3'"),
    ({"nms_in_graph": True}, "nms_in_graph is set, which only an exported graph has"),
])
def test_bad_sidecar_is_one_line(capsys, tmp_path, weights, change, needle):
    local = tmp_path / weights.name
    local.write_bytes(weights.read_bytes())
    sidecar = local.with_suffix(".json")
    config = json.loads(weights.with_suffix(".json").read_text())
    sidecar.write_text(json.dumps({**config, **change}))
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((SIZE, SIZE, 3), np.uint8))
    code, err = _run(capsys, "detect", "--source", str(image), "--weights", str(local))
    _assert_one_line(code, err, "detect", str(sidecar), needle)


def test_export_out_of_space_is_one_line(capsys, tmp_path, weights, monkeypatch):
    pytest.importorskip("onnx")
    import onnx

    def full_disk(proto, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx, "save", full_disk)
    out = tmp_path / "exports"
    out.mkdir()
    (out / "keep.onnx").write_bytes(b"an earlier export")
    code, err = _run(capsys, "export", "--weights", str(weights), "--format", "onnx", "--output", str(out))
    _assert_one_line(code, err, "export", str(out), "no space left on the device")
    assert sorted(p.name for p in out.iterdir()) == ["keep.onnx"]  # no staging folder or partial file left


def test_export_of_a_file_that_is_not_litedet_weights_says_what_to_give(capsys, tmp_path, weights):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"resume state")
    (run / "last.safetensors").write_bytes(weights.read_bytes())
    (tmp_path / "model.onnx").write_bytes(b"an export")
    (tmp_path / "yolo.pt").write_bytes(b"a pickle")
    cases = [
        (run / "last.pt", f"resume state of a training run; its weights are {run / 'best.safetensors'}"),
        (tmp_path / "model.onnx", "already exported for an engine"),
        (tmp_path / "yolo.pt", "a PyTorch pickle, which litedet does not open"),
    ]
    for path, needle in cases:
        code, err = _run(capsys, "export", "--weights", str(path), "--format", "onnx", "--output", str(tmp_path / "x"))
        _assert_one_line(code, err, "export", str(path), needle)


def test_a_read_only_output_folder_is_one_line_before_the_work(capsys, tmp_path, weights, monkeypatch):
    read_only = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    data = _dataset(tmp_path / "data", {"a": "0 0.5 0.5 0.2 0.2\n"})
    code = main(["train", "--data", str(data), "--epochs", "1", "--out", str(read_only / "run")])
    out, err = capsys.readouterr()
    _assert_one_line(code, err, "train", str(read_only / "run"), "Read-only file system")
    assert "boxes per class" not in out  # refused before the data checks
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((SIZE, SIZE, 3), np.uint8))
    code, err = _run(capsys, "detect", "--source", str(image), "--weights", str(weights), "--save", str(read_only / "det"))
    _assert_one_line(code, err, "detect", str(read_only / "det"), "Read-only file system")


def test_an_openvino_error_keeps_the_line_that_says_what_is_wrong():
    from litedet.runtime.openvino_backend import openvino_reason

    raised = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'is_valid_weights_range(a, b, c)' "
                          "failed at src/core/xml_util/src/xml_deserialize_util.cpp:900:\nIncorrect weights in bin file!\n\n")
    assert openvino_reason(raised) == "Incorrect weights in bin file!"
    assert openvino_reason(RuntimeError("")) == "RuntimeError"


def test_split_profile_at_a_size_off_the_stride_is_one_line(capsys, tmp_path):
    pytest.importorskip("torch")
    code, err = _run(capsys, "split", "profile", "--model", "v5lite-e", "--imgsz", "50", "--repeats", "1",
                     "-o", str(tmp_path / "p.json"))
    _assert_one_line(code, err, "split", "imgsz 50 must be a positive multiple of the model's largest stride 32 (e.g. 64)")
