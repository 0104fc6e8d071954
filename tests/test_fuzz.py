"""Fuzz the parsers people feed files to: YOLO labels, Pascal VOC xml, COCO json, dataset YAML,
the model config sidecar and ncnn ``.param``. Whatever the bytes, each parser returns a result or
raises the one-line user error (``litedet.errors.UserError``, or ``FileNotFoundError`` for a path
the file names that is not there), whose message names the file and has no newline.

Each input is drawn twice over: as arbitrary text and as something shaped like the real format
with odd values in it. The default suite runs a few dozen examples per parser (seconds);
``LITEDET_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` runs a long pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from litedet.config import ModelConfig  # noqa: E402
from litedet.data.datasets import LabelStats, load_data_config, read_voc_xml, read_yolo_labels  # noqa: E402
from litedet.errors import UserError  # noqa: E402

FUZZ = settings(
    max_examples=int(os.environ.get("LITEDET_FUZZ_EXAMPLES", "40")),
    deadline=None,
    database=None,  # nothing written into the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Numbers as people (and broken tools) write them.
NUMBER_TEXT = st.one_of(
    st.integers(-5, 100).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "inf", "1e999", "-0", "0x10", "1_0", "", "٣", "²", "1.5.2", "NaN", "+1"]),
    st.text(max_size=6),
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((32, 48, 3), np.uint8))
    return root


def _check_error(err: BaseException, path: Path) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert str(path) in message or isinstance(err, FileNotFoundError), message


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    return path


# ---- YOLO labels ---------------------------------------------------------------------------------


YOLO_LINE = st.lists(NUMBER_TEXT, min_size=0, max_size=7).map(" ".join)


@FUZZ
@given(content=st.one_of(st.text(max_size=200), st.binary(max_size=100), st.lists(YOLO_LINE, max_size=6).map("\n".join)))
def test_yolo_labels(workdir, content):
    path = _write(workdir / "label.txt", content)
    stats = LabelStats()
    try:
        boxes, classes = read_yolo_labels(path, 3, (32, 48), stats)
    except UserError as err:
        _check_error(err, path)
        return
    assert boxes.shape == (len(classes), 4) and np.isfinite(boxes).all()
    assert ((classes >= 0) & (classes < 3)).all()


# ---- Pascal VOC xml ------------------------------------------------------------------------------


@st.composite
def voc_xml(draw) -> str:
    objects = []
    for _ in range(draw(st.integers(0, 3))):
        coords = "".join(f"<{k}>{draw(NUMBER_TEXT)}</{k}>" for k in ("xmin", "ymin", "xmax", "ymax")
                         if draw(st.booleans()) or k != "xmax")
        name = draw(st.sampled_from(["a", "b", "", "c", " a "]))
        difficult = draw(st.sampled_from(["", "<difficult>1</difficult>", "<difficult>x</difficult>"]))
        box = f"<bndbox>{coords}</bndbox>" if draw(st.booleans()) else ""
        objects.append(f"<object><name>{name}</name>{difficult}{box}</object>")
    return f"<annotation><filename>{draw(st.text(max_size=8))}</filename>{''.join(objects)}</annotation>"


@FUZZ
@given(content=st.one_of(st.text(max_size=200), voc_xml()))
def test_voc_xml(workdir, content):
    path = _write(workdir / "a.xml", content)
    try:
        _, boxes, classes, _ = read_voc_xml(path, ["a", "b"], LabelStats())
    except UserError as err:
        _check_error(err, path)
        return
    assert boxes.shape == (len(classes), 4) and np.isfinite(boxes).all()


# ---- COCO json (through a dataset YAML, as `train --data` reads it) ------------------------------


@st.composite
def coco_json(draw) -> str:
    def maybe(value):
        return draw(st.one_of(st.just(value), JSON_VALUE))

    data = {
        "images": [{"id": maybe(1), "file_name": maybe("a.png"), "height": 32, "width": 48}],
        "annotations": [{"id": i, "image_id": maybe(1), "category_id": maybe(1),
                         "bbox": draw(st.one_of(st.lists(st.floats(), min_size=4, max_size=4), JSON_VALUE)),
                         "iscrowd": maybe(0)} for i in range(draw(st.integers(0, 3)))],
        "categories": maybe([{"id": maybe(1), "name": maybe("a")}]),
    }
    for key in draw(st.sets(st.sampled_from(sorted(data)), max_size=1)):
        data[key] = draw(JSON_VALUE)  # one top-level value of any shape
    return json.dumps(data)


@FUZZ
@given(content=st.one_of(st.text(max_size=120), coco_json()))
def test_coco_json(workdir, content):
    annotations = _write(workdir / "instances.json", content)
    data = workdir / "coco.yaml"
    entry = {"images": "images", "annotations": "instances.json"}
    data.write_text(yaml.safe_dump({"format": "coco", "path": str(workdir), "train": entry, "val": entry}))
    try:
        dataset = load_data_config(data).load_split("train")
    except (UserError, FileNotFoundError) as err:
        assert "\n" not in str(err)
        assert str(annotations) in str(err) or str(data) in str(err), str(err)
        return
    assert len(dataset.samples) == 1 and np.isfinite(dataset.samples[0].boxes).all()


# ---- split lists: VOC ids (.txt) and csv, YOLO image lists (.txt) ---------------------------------


@FUZZ
@given(content=st.one_of(st.text(max_size=120), st.binary(max_size=60),
                         st.lists(st.sampled_from(["filename,x", "a.png,1", "a", "\0", '"a', "# c", "b.jpg"]), max_size=5)
                         .map("\n".join)),
       kind=st.sampled_from(["voc.txt", "voc.csv", "yolo.txt"]))
def test_split_lists(workdir, content, kind):
    fmt, suffix = kind.split(".")
    listing = _write(workdir / f"split.{suffix}", content)
    data = workdir / "lists.yaml"
    if fmt == "voc":
        (workdir / "annotations").mkdir(exist_ok=True)
        config = {"format": "voc", "path": str(workdir), "images": "images", "annotations": "annotations",
                  "train": listing.name, "val": listing.name, "names": ["a"]}
    else:
        config = {"path": str(workdir), "train": listing.name, "val": listing.name, "names": ["a"]}
    data.write_text(yaml.safe_dump(config))
    try:
        dataset = load_data_config(data).load_split("train")
    except (UserError, FileNotFoundError) as err:
        assert "\n" not in str(err)
        assert str(listing) in str(err) or str(data) in str(err), str(err)
        return
    assert all(sample.image.is_file() for sample in dataset.samples)


# ---- dataset YAML --------------------------------------------------------------------------------


@st.composite
def dataset_yaml(draw) -> str:
    keys = ["format", "path", "train", "val", "test", "names", "nc", "images", "annotations", "other"]
    data = {}
    for key in draw(st.lists(st.sampled_from(keys), max_size=8, unique=True)):
        data[key] = draw(st.one_of(st.sampled_from(["images", ".", "yolo", "coco", "voc", "${NOPE}", "${HOME:-x}"]),
                                   st.lists(st.text(max_size=4), max_size=3), JSON_VALUE))
    return yaml.safe_dump(data)


YAML_TRICKS = st.sampled_from([
    "a: !!python/object/apply:os.system ['true']", "a: [1, 2", "a: *anchor", "- - -", "a: {b: c",
    "%YAML 9.9\n---\na: 1", "a: !!binary xyz", "\t- a", "a: &x [*x]", "? [a]\n: b", "",
])


@FUZZ
@given(content=st.one_of(st.text(max_size=120), YAML_TRICKS, dataset_yaml()))
def test_dataset_yaml(workdir, content):
    path = _write(workdir / "data.yaml", content)
    try:
        load_data_config(path)
    except (UserError, FileNotFoundError) as err:
        _check_error(err, path)


# ---- model config sidecar ------------------------------------------------------------------------


VALID_SIDECAR = {"model": "v5lite-e", "num_classes": 2, "names": ["a", "b"], "input_size": [64, 64]}
SIDECAR_KEYS = ["model", "num_classes", "names", "input_size", "strides", "anchors", "head", "preprocess",
                "output_names", "dynamic", "nms_in_graph", "precision", "source", "extra", "version"]


@FUZZ
@given(content=st.one_of(
    st.text(max_size=120),
    st.dictionaries(st.sampled_from(SIDECAR_KEYS), JSON_VALUE, max_size=4).map(lambda d: json.dumps({**VALID_SIDECAR, **d})),
    st.dictionaries(st.sampled_from(["resize", "pad_value", "center", "rgb", "mean", "std", "x"]), JSON_VALUE, max_size=3)
      .map(lambda p: json.dumps({**VALID_SIDECAR, "preprocess": p})),
))
def test_sidecar_json(workdir, content):
    path = _write(workdir / "model.json", content)
    try:
        config = ModelConfig.load(path)
    except UserError as err:
        _check_error(err, path)
        return
    assert len(config.names) == config.num_classes and min(config.input_size) > 0


# ---- ncnn .param ---------------------------------------------------------------------------------


@st.composite
def ncnn_param(draw) -> str:
    lines = ["7767517", f"{draw(NUMBER_TEXT)} {draw(NUMBER_TEXT)}"]
    for index in range(draw(st.integers(0, 4))):
        n_in, n_out = draw(NUMBER_TEXT), draw(NUMBER_TEXT)
        blobs = " ".join(draw(st.lists(st.text("abc", min_size=1, max_size=3), max_size=4)))
        params = " ".join(f"{draw(st.sampled_from(['0', '1', '-23300', '-23301', 'x', '²', '']))}={draw(NUMBER_TEXT)}"
                          for _ in range(draw(st.integers(0, 3))))
        lines.append(f"{draw(st.sampled_from(['Input', 'Convolution', 'Split', 'X']))} l{index} {n_in} {n_out} {blobs} {params}")
    return "\n".join(lines)


@FUZZ
@given(content=st.one_of(st.text(max_size=120), st.binary(max_size=60), ncnn_param()))
def test_ncnn_param(workdir, content):
    pytest.importorskip("torch")
    from litedet.models.ncnn_import import read_ncnn_param

    path = _write(workdir / "model.param", content)
    try:
        layers = read_ncnn_param(path)
    except UserError as err:
        _check_error(err, path)
        return
    assert all(len(layer.inputs) >= 0 and len(layer.outputs) >= 0 for layer in layers)
