"""Dataset readers: YOLO txt, COCO json, Pascal VOC xml, the dataset YAML and every label check."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from litedet.data.datasets import expand_env, load_data_config, summary_table

REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, width: int = 80, height: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
    return path


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _yolo_dataset(root: Path, labels: dict[str, str], names: str = "[cat, dog]") -> Path:
    """images/{train,val}/NAME.jpg (80x60) with labels/{split}/NAME.txt given as text (None: no file)."""
    for key, text in labels.items():
        split, name = key.split("/")
        _image(root / "images" / split / f"{name}.jpg")
        if text is not None:
            label = root / "labels" / split / f"{name}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    return _yaml(root / "data.yaml", f"path: .\ntrain: images/train\nval: images/val\nnames: {names}\n")


# ---------------------------------------------------------------------------------------------- YOLO


def test_yolo_boxes_in_pixels_and_background(tmp_path):
    data = _yolo_dataset(tmp_path, {
        "train/a": "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.2\n",
        "train/empty": "",
        "train/nolabel": None,
        "val/b": "1 0.5 0.5 1.0 1.0\n",
    })
    config = load_data_config(data)
    train = config.load_split("train")
    assert config.format == "yolo" and train.names == ["cat", "dog"]
    by_name = {s.image.stem: s for s in train.samples}
    np.testing.assert_allclose(by_name["a"].boxes, [[20, 15, 60, 45], [16, 9, 24, 21]], atol=1e-4)
    assert by_name["a"].classes.tolist() == [0, 1] and by_name["a"].size == (60, 80)
    assert len(by_name["empty"].boxes) == 0 and len(by_name["nolabel"].boxes) == 0
    assert train.stats.images == 3 and train.stats.backgrounds == 2 and train.stats.boxes == 2
    assert train.stats.per_class == {0: 1, 1: 1}


def test_yolo_label_saved_with_a_byte_order_mark_reads(tmp_path):
    data = _yolo_dataset(tmp_path, {"train/a": "\ufeff0 0.5 0.5 0.5 0.5\n", "val/b": "1 0.5 0.5 1.0 1.0\n"})
    (sample,) = load_data_config(data).load_split("train").samples
    assert sample.classes.tolist() == [0]


def test_yolo_clips_and_drops_degenerate(tmp_path):
    data = _yolo_dataset(tmp_path, {
        # half outside on the right; a zero-width box; a box entirely outside
        "train/a": "0 1.0 0.5 0.5 0.5\n0 0.5 0.5 0.0 0.5\n1 1.5 0.5 0.2 0.2\n",
        "val/b": "0 0.5 0.5 0.5 0.5\n",
    })
    train = load_data_config(data).load_split("train")
    stats = train.stats
    assert stats.clipped == 2  # the half-outside box and the fully-outside one
    assert stats.degenerate == 2  # zero width; outside -> zero width after clipping
    np.testing.assert_allclose(train.samples[0].boxes, [[60, 15, 80, 45]], atol=1e-4)


def test_yolo_four_numbers_is_an_error_naming_file_and_line(tmp_path):
    data = _yolo_dataset(tmp_path, {"train/a": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n", "val/b": ""})
    with pytest.raises(ValueError, match=r"labels/train/a\.txt:2: expected 5 numbers"):
        load_data_config(data).load_split("train")


def test_yolo_unknown_class_is_an_error_naming_file_and_line(tmp_path):
    data = _yolo_dataset(tmp_path, {"train/a": "\n2 0.5 0.5 0.2 0.2\n", "val/b": ""})
    with pytest.raises(ValueError, match=r"a\.txt:2: class id 2 is not in 0\.\.1"):
        load_data_config(data).load_split("train")


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    data = _yolo_dataset(tmp_path, {"train/a": "0 0.5 0.5 0.2 0.2\n", "val/b": ""})
    (tmp_path / "images" / "train" / "text.jpg").write_text("this is not an image\n")
    truncated = tmp_path / "images" / "train" / "cut.jpg"
    truncated.write_bytes((tmp_path / "images" / "train" / "a.jpg").read_bytes()[:200])
    train = load_data_config(data).load_split("train")
    assert train.stats.corrupt == 2 and train.stats.images == 1
    assert any("text.jpg" in p for p in train.stats.skipped_files)
    assert "skipped (train)" in summary_table([train])


def test_empty_dataset_is_an_error(tmp_path):
    data = _yolo_dataset(tmp_path, {"val/b": ""})
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "bad.png").write_text("nope")
    with pytest.raises(ValueError, match="split 'train' has no usable images"):
        load_data_config(data).load_split("train")


def test_yaml_errors(tmp_path, monkeypatch):
    _yolo_dataset(tmp_path, {"train/a": "", "val/b": ""})
    with pytest.raises(ValueError, match="missing key 'val'"):
        load_data_config(_yaml(tmp_path / "m.yaml", "path: .\ntrain: images/train\nnames: [a]\n"))
    with pytest.raises(ValueError, match="missing key 'names'"):
        load_data_config(_yaml(tmp_path / "n.yaml", "path: .\ntrain: images/train\nval: images/val\n"))
    with pytest.raises(ValueError, match=r"unknown keys \['trian'\]"):
        load_data_config(_yaml(tmp_path / "u.yaml", "train: images/train\nval: images/val\nnames: [a]\ntrian: x\n"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data_config(_yaml(tmp_path / "p.yaml", "path: nowhere\ntrain: images/train\nval: images/val\nnames: [a]\n"))
    with pytest.raises(FileNotFoundError, match="'val' .*images/nothing does not exist"):
        load_data_config(_yaml(tmp_path / "v.yaml", "train: images/train\nval: images/nothing\nnames: [a]\n"))
    with pytest.raises(ValueError, match="format must be one of"):
        load_data_config(_yaml(tmp_path / "f.yaml", "format: kitti\ntrain: a\nval: b\n"))
    with pytest.raises(ValueError, match="nc=3 but 1 names"):
        load_data_config(_yaml(tmp_path / "c.yaml", "train: images/train\nval: images/val\nnames: [a]\nnc: 3\n"))
    with pytest.raises(FileNotFoundError, match="dataset YAML not found"):
        load_data_config(tmp_path / "absent.yaml")
    monkeypatch.delenv("LITEDET_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match="LITEDET_TEST_UNSET is not set"):
        load_data_config(_yaml(tmp_path / "e.yaml", "path: ${LITEDET_TEST_UNSET}\ntrain: a\nval: b\nnames: [a]\n"))


def test_env_expansion_in_path(tmp_path, monkeypatch):
    _yolo_dataset(tmp_path / "ds", {"train/a": "0 0.5 0.5 0.2 0.2\n", "val/b": ""}, names="{0: cat, 1: dog}")
    monkeypatch.setenv("LITEDET_TEST_ROOT", str(tmp_path))
    data = _yaml(tmp_path / "env.yaml", "path: ${LITEDET_TEST_ROOT}/ds\ntrain: images/train\nval: images/val\n"
                 "names: {0: cat, 1: dog}\n")
    config = load_data_config(data)
    assert config.root == tmp_path / "ds" and config.names == ["cat", "dog"]
    monkeypatch.delenv("LITEDET_TEST_ROOT")
    assert expand_env("${LITEDET_TEST_ROOT:-fallback}/x") == "fallback/x"


# ---------------------------------------------------------------------------------------------- COCO


def _coco_dataset(root: Path, annotations: list[dict], categories=None) -> Path:
    images = [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60},
              {"id": 2, "file_name": "b.jpg", "width": 80, "height": 60},
              {"id": 3, "file_name": "missing.jpg", "width": 80, "height": 60}]
    _image(root / "imgs" / "a.jpg")
    _image(root / "imgs" / "b.jpg")
    categories = categories or [{"id": 7, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return _yaml(root / "data.yaml", "format: coco\npath: .\ntrain: {images: imgs, annotations: ann.json}\n"
                 "val: {images: imgs, annotations: ann.json}\n")


def test_coco_category_ids_map_to_contiguous_sorted(tmp_path):
    data = _coco_dataset(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 80, 60], "iscrowd": 1},
    ])
    config = load_data_config(data)
    train = config.load_split("train")
    assert train.names == ["person", "car", "zebra"]  # sorted by category id 1, 3, 7
    sample = next(s for s in train.samples if s.image.name == "a.jpg")
    np.testing.assert_allclose(sample.boxes, [[10, 5, 30, 35], [0, 0, 5, 5]])
    assert sample.classes.tolist() == [2, 0]
    assert train.stats.crowd == 1 and train.stats.missing == 1 and train.stats.backgrounds == 1
    gt = train.to_coco()
    assert [c["name"] for c in gt["categories"]] == ["person", "car", "zebra"]
    assert gt["annotations"][0]["bbox"] == [10.0, 5.0, 20.0, 30.0] and gt["annotations"][0]["category_id"] == 3


def test_coco_ground_truth_leaves_out_the_missing_images(tmp_path):
    data = _coco_dataset(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 80, 60], "iscrowd": 1},
    ])
    split = load_data_config(data).load_split("val")
    images, annotations = split.coco_ground_truth(tmp_path / "out")
    written = json.loads(Path(annotations).read_text())
    assert images == tmp_path / "imgs" and Path(annotations).parent == tmp_path / "out"
    assert [image["file_name"] for image in written["images"]] == ["a.jpg", "b.jpg"]
    assert [a["id"] for a in written["annotations"]] == [1, 3]  # the crowd region stays


def test_coco_annotation_of_an_unknown_image_is_an_error(tmp_path):
    data = _coco_dataset(tmp_path, [{"id": 9, "image_id": 424242, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match=r"ann.json: annotation #0 \(id 9\) has image_id 424242, which is not in 'images'"):
        load_data_config(data).load_split("train")


def test_coco_unknown_category_is_an_error(tmp_path):
    data = _coco_dataset(tmp_path, [{"id": 9, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match="ann.json: annotation #0 .*category_id 42"):
        load_data_config(data).load_split("train")


def test_coco_entry_needs_images_and_annotations(tmp_path):
    _coco_dataset(tmp_path, [])
    bad = _yaml(tmp_path / "bad.yaml", "format: coco\ntrain: {images: imgs}\nval: {images: imgs, annotations: ann.json}\n")
    with pytest.raises(ValueError, match="needs exactly 'images' and 'annotations'"):
        load_data_config(bad)


# ---------------------------------------------------------------------------------------------- VOC

_VOC = """<annotation>
  <filename>{name}.jpg</filename>
  <size><width>80</width><height>60</height><depth>3</depth></size>
{objects}</annotation>
"""
_OBJ = """  <object>
    <name>{cls}</name>
    <difficult>{difficult}</difficult>
    <bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>
  </object>
"""


def _voc_dataset(root: Path, objects: dict[str, list[tuple[str, tuple, int]]], split_file: str) -> Path:
    for name, objs in objects.items():
        _image(root / "JPEGImages" / f"{name}.jpg")
        text = "".join(_OBJ.format(cls=c, b=b, difficult=d) for c, b, d in objs)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(_VOC.format(name=name, objects=text))
    if split_file.endswith(".csv"):
        rows = "".join(f"{n}.jpg,80,60,x,0,0,1,1\n" for n in objects)
        (root / split_file).write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n" + rows)
    else:
        (root / split_file).write_text("".join(f"{n}\n" for n in objects))
    return _yaml(root / "data.yaml", f"format: voc\npath: .\nimages: JPEGImages\nannotations: Annotations\n"
                 f"train: {split_file}\nval: {split_file}\nnames: [cat, dog]\n")


@pytest.mark.parametrize("split_file", ["train.csv", "train.txt"])
def test_voc_reads_boxes_and_drops_difficult(tmp_path, split_file):
    data = _voc_dataset(tmp_path, {"a": [("dog", (10, 5, 30, 35), 0), ("cat", (1, 1, 9, 9), 1)],
                                   "b": [("cat", (0, 0, 90, 20), 0)]}, split_file)
    train = load_data_config(data).load_split("train")
    by_name = {s.image.stem: s for s in train.samples}
    np.testing.assert_allclose(by_name["a"].boxes, [[10, 5, 30, 35]])
    assert by_name["a"].classes.tolist() == [1]
    assert train.stats.difficult == 1 and train.stats.clipped == 1  # b's box reaches x=90 > 80


def test_voc_unknown_class_is_an_error_naming_file_and_line(tmp_path):
    data = _voc_dataset(tmp_path, {"a": [("dog", (10, 5, 30, 35), 0), ("horse", (1, 1, 9, 9), 0)]}, "t.txt")
    with pytest.raises(ValueError, match=r"a\.xml:9: object #1 has class 'horse'"):
        load_data_config(data).load_split("train")


def test_voc_needs_its_folders(tmp_path):
    _voc_dataset(tmp_path, {"a": []}, "t.txt")
    with pytest.raises(ValueError, match="missing key 'annotations'"):
        load_data_config(_yaml(tmp_path / "x.yaml", "format: voc\nimages: JPEGImages\ntrain: t.txt\nval: t.txt\nnames: [a]\n"))


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name, train_images, train_boxes, val_images", [
    ("raccoon", 160, 173, 40),
    ("coco256", 128, 929, 128),
    ("tiny_coco50", 50, 465, 50),
])
def test_shipped_dataset_yamls_on_shared(shared, monkeypatch, name, train_images, train_boxes, val_images):
    monkeypatch.setenv("LITEDET_SHARED", str(shared))
    config = load_data_config(REPO / "configs" / "data" / f"{name}.yaml")
    train, val = config.load_split("train"), config.load_split("val")
    assert (train.stats.images, train.stats.boxes, val.stats.images) == (train_images, train_boxes, val_images)
    assert train.stats.corrupt == 0 and train.stats.missing == 0
    assert len(train.names) == (1 if name == "raccoon" else 80)
    if name == "tiny_coco50":
        assert train.stats.crowd == 5
