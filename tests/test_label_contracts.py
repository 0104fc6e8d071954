"""Contracts of YOLO label parsing that a user depends on: exact boxes from ``cls cx cy w h``
lines, one-line errors naming file:line with the offending text, the counts the label checks
report (clipped, degenerate, duplicates, non-finite), where a label file is looked for, and the
``names`` forms a dataset YAML may use.

Written against the survivors of mutation testing of ``litedet/data/datasets.py``
(docs/development.md): every count is compared exactly, on top of a non-zero count carried in
from an earlier file, and every message is matched whole.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from litedet.data.datasets import LabelStats, _check_boxes, _parse_names, read_yolo_labels, yolo_label_path
from litedet.errors import UserError


def _whole(message: str) -> str:
    """A ``match`` pattern for exactly ``message``."""
    return rf"^{re.escape(message)}$"


def _label(tmp_path: Path, text: str | bytes, name: str = "img.txt") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# ----------------------------------------------------------------------------- read_yolo_labels


def test_yolo_lines_parse_to_exact_xyxy_pixels_and_int64_classes(tmp_path):
    """Normalised ``cls cx cy w h`` becomes xyxy pixels of a (height, width) image; blank and
    whitespace-only lines are skipped; boxes are float32 and classes int64."""
    label = _label(tmp_path, "\n1 0.5 0.25 0.25 0.5\n   \n\t\n0 0.125 0.75 0.25 0.5\n2 1 1 0 0\n\n")
    boxes, classes = read_yolo_labels(label, 3, (100, 200))
    assert boxes.dtype == np.float32 and classes.dtype == np.int64
    assert boxes.shape == (3, 4) and classes.shape == (3,)
    assert boxes.tolist() == [[75.0, 0.0, 125.0, 50.0], [0.0, 50.0, 50.0, 100.0], [200.0, 100.0, 200.0, 100.0]]
    assert classes.tolist() == [1, 0, 2]


@pytest.mark.parametrize("text", ["", "\n\n", "  \n\t\n"])
def test_an_empty_label_file_gives_no_boxes_with_the_usual_dtypes(tmp_path, text):
    """A background image: (0, 4) float32 boxes and (0,) int64 classes, like a labelled one, so
    that concatenating a batch never turns boxes into float64 or classes into floats."""
    boxes, classes = read_yolo_labels(_label(tmp_path, text), 3, (100, 200))
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32
    assert classes.shape == (0,) and classes.dtype == np.int64


def test_a_line_without_five_fields_names_file_line_and_the_first_80_characters(tmp_path):
    line = "0 " + " ".join(["0.123456789"] * 8)  # 9 fields, 97 characters
    label = _label(tmp_path, "0 0.5 0.5 0.2 0.2\n" + line + "\n")
    message = f"{label}:2: expected 5 numbers 'class cx cy w h', got 9: {line[:80]!r}"
    with pytest.raises(UserError, match=_whole(message)):
        read_yolo_labels(label, 3, (100, 200))


def test_a_short_line_names_its_field_count(tmp_path):
    label = _label(tmp_path, "\n\n0 0.5 0.5 0.2\n")
    message = f"{label}:3: expected 5 numbers 'class cx cy w h', got 4: '0 0.5 0.5 0.2'"
    with pytest.raises(UserError, match=_whole(message)):
        read_yolo_labels(label, 3, (100, 200))


def test_a_non_numeric_line_names_file_line_and_the_first_80_characters(tmp_path):
    line = "0 0.5 0.5 0.2 " + "w" * 100
    label = _label(tmp_path, "0 0.5 0.5 0.2 0.2\n" + line + "\n")
    with pytest.raises(UserError, match=_whole(f"{label}:2: not numbers: {line[:80]!r}")):
        read_yolo_labels(label, 3, (100, 200))


def test_a_non_finite_value_without_stats_is_an_error_naming_file_and_line(tmp_path):
    line = "0 0.50000000000000000000000000000000000000 0.50000000000000000000000000000000000000 nan 0.2"
    assert len(line) > 81
    label = _label(tmp_path, "0 0.5 0.5 0.2 0.2\n" + line + "\n")
    message = f"{label}:2: non-finite or out-of-range value in {line[:80]!r}"
    with pytest.raises(UserError, match=_whole(message)):
        read_yolo_labels(label, 3, (100, 200))


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1.0000001e9", "-2e9"])
def test_every_unusable_value_is_rejected_without_stats(tmp_path, value):
    label = _label(tmp_path, f"0 0.5 0.5 {value} 0.2\n")
    message = f"{label}:1: non-finite or out-of-range value in '0 0.5 0.5 {value} 0.2'"
    with pytest.raises(UserError, match=_whole(message)):
        read_yolo_labels(label, 3, (100, 200))


def test_non_finite_lines_are_recorded_as_file_line_and_the_rest_still_read(tmp_path):
    """With ``stats`` the bad lines are left out and listed ("file:line", in order, appended to
    what earlier files recorded) so the split error can name the first and count them all; the
    lines after them are still read. 1e9 itself is usable."""
    label = _label(tmp_path, "0 0.5 0.5 0.2 0.2\n1 nan 0.5 0.2 0.2\n\n1 0.5 0.5 inf 0.2\n"
                             "2 0.5 0.5 0.5 -1e10\n1 0.25 0.25 0.5 0.5\n0 1e9 0 0 0\n")
    stats = LabelStats(nonfinite=["earlier.txt:7"])
    boxes, classes = read_yolo_labels(label, 3, (100, 200), stats)
    assert stats.nonfinite == ["earlier.txt:7", f"{label}:2", f"{label}:4", f"{label}:5"]
    assert classes.tolist() == [0, 1, 0]
    assert boxes[:2].tolist() == [[80.0, 40.0, 120.0, 60.0], [0.0, 0.0, 100.0, 50.0]]
    assert boxes[2].tolist() == [np.float32(2e11), 0.0, np.float32(2e11), 0.0]  # cx 1e9 of a 200 px wide image


def test_exact_repeats_are_dropped_and_counted_on_top_of_earlier_files(tmp_path):
    """The same class and the same numbers (however written) is one box, counted once per
    repeat; a different class at the same place is another box; reading goes on after a repeat."""
    label = _label(tmp_path, "0 0.5 0.5 0.2 0.2\n0 0.50 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"
                             "0 0.5 0.5 0.2 0.2\n2 0.25 0.25 0.5 0.5\n1 0.5 .5 2e-1 0.2\n")
    stats = LabelStats(duplicates=1)
    boxes, classes = read_yolo_labels(label, 3, (100, 200), stats)
    assert stats.duplicates == 4
    assert classes.tolist() == [0, 1, 2]
    assert boxes.tolist() == [[80.0, 40.0, 120.0, 60.0], [80.0, 40.0, 120.0, 60.0], [0.0, 0.0, 100.0, 50.0]]


def test_exact_repeats_are_dropped_without_stats_too(tmp_path):
    label = _label(tmp_path, "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.5 0.5\n")
    boxes, classes = read_yolo_labels(label, 3, (100, 200))
    assert classes.tolist() == [0, 1]
    assert boxes.tolist() == [[80.0, 40.0, 120.0, 60.0], [0.0, 0.0, 100.0, 50.0]]


def test_a_label_file_that_is_not_utf8_is_one_error_naming_the_byte(tmp_path):
    label = _label(tmp_path, b"0 0.5 0.5 0.2 0.2\n\xff 0.5 0.5 0.2 0.2\n")
    message = f"{label}: not a YOLO label file (not UTF-8 text: invalid start byte at byte 18)"
    with pytest.raises(UserError, match=_whole(message)):
        read_yolo_labels(label, 3, (100, 200))


def test_a_long_fractional_class_id_is_named_by_its_first_20_characters(tmp_path):
    field = "0.5000000000000000000000001"
    label = _label(tmp_path, f"{field} 0.5 0.5 0.2 0.2\n")
    message = f"{label}:1: class id {field[:20]} is not in 0..2 (3 names in the dataset YAML)"
    with pytest.raises(UserError, match=_whole(message)):
        read_yolo_labels(label, 3, (100, 200))


# ----------------------------------------------------------------------------- _check_boxes


@pytest.mark.parametrize("boxes", [np.zeros(0), np.zeros((0, 4)), np.zeros((0, 4), np.float32)])
@pytest.mark.parametrize("classes", [np.zeros(0), np.zeros((0, 1)), np.zeros(0, np.int64)])
def test_no_boxes_come_back_as_0x4_float32_and_0_int64(boxes, classes):
    """Whatever empty arrays a reader built (np.asarray([]) is a float64 vector), an image without
    boxes comes back in the shapes and dtypes of one with boxes, and counts nothing."""
    stats = LabelStats(clipped=2, degenerate=3)
    kept, kept_classes = _check_boxes(boxes, classes, (60, 100), 1.0, stats)
    assert kept.shape == (0, 4) and kept.dtype == np.float32
    assert kept_classes.shape == (0,) and kept_classes.dtype == np.int64
    assert (stats.clipped, stats.degenerate) == (2, 3)


def test_clipping_is_counted_beyond_half_a_pixel_only_and_added_to_earlier_counts():
    """(height 60, width 100). Exactly half a pixel outside is label rounding, not counted; one
    pixel outside is counted, on either side and either axis."""
    boxes = np.array([[-0.5, 10, 50, 40],     # 0.5 px left of the image: clipped, not counted
                      [10, 10, 50, 60.5],     # 0.5 px below: clipped, not counted
                      [10, 10, 101, 40],      # 1 px right: counted
                      [10, -1, 50, 40],       # 1 px above: counted
                      [-0.5, -0.5, 100.5, 60.5],  # 0.5 px on every side: not counted
                      [10, 10, 50, 40]], np.float32)
    stats = LabelStats(clipped=5)
    kept, classes = _check_boxes(boxes, np.arange(6), (60, 100), 1.0, stats)
    assert stats.clipped == 7 and stats.degenerate == 0
    assert classes.tolist() == [0, 1, 2, 3, 4, 5]
    assert kept.tolist() == [[0, 10, 50, 40], [10, 10, 50, 60], [10, 10, 100, 40], [10, 0, 50, 40],
                             [0, 0, 100, 60], [10, 10, 50, 40]]


def test_degenerate_boxes_are_dropped_by_width_and_height_and_added_to_earlier_counts():
    """A box is kept when it is at least ``min_box_size`` wide and high after clipping (exactly
    the minimum is kept); a flat box low in the image is still flat."""
    boxes = np.array([[0, 50, 10, 52],    # exactly 2 px high: kept
                      [0, 30, 10, 30],    # 0 px high at y 30: dropped
                      [0, 40, 10, 41.5],  # 1.5 px high: dropped
                      [20, 10, 22, 30],   # exactly 2 px wide: kept
                      [0, 10, 1.5, 30],   # 1.5 px wide: dropped
                      [0, 70, 10, 80],    # below the image: clipped to 0 px high, dropped
                      [5, 5, 95, 55]], np.float32)
    stats = LabelStats(degenerate=4, clipped=1)
    kept, classes = _check_boxes(boxes, np.array([0, 1, 2, 3, 4, 5, 6]), (60, 100), 2.0, stats)
    assert classes.tolist() == [0, 3, 6]
    assert kept.tolist() == [[0, 50, 10, 52], [20, 10, 22, 30], [5, 5, 95, 55]]
    assert stats.degenerate == 4 + 4 and stats.clipped == 1 + 1


# ----------------------------------------------------------------------------- yolo_label_path


@pytest.mark.parametrize("image, label", [
    ("d/images/train/a.jpg", "d/labels/train/a.txt"),
    ("/abs/images/a.JPG", "/abs/labels/a.txt"),
    ("d/images/a.b.jpeg", "d/labels/a.b.txt"),
    ("d/images/c.webp", "d/labels/c.txt"),
    ("images/x/images/b.png", "images/x/labels/b.txt"),   # only the last images folder
    ("images/a.jpg", "labels/a.txt"),
    ("d/images/images.jpg", "d/labels/images.txt"),
    ("d/images/images", "d/labels/images.txt"),            # a file named images is not a folder
    ("images", "images.txt"),
    ("d/myimages/c.png", "d/myimages/c.txt"),              # whole folder names only
    ("d/Images/c.png", "d/Images/c.txt"),
    ("d/pics/c", "d/pics/c.txt"),
])
def test_yolo_label_path_is_the_yolov5_mapping(image, label):
    """YOLOv5's img2label_paths: the last "/images/" folder becomes "/labels/", the suffix (any,
    or none) becomes .txt; without an images folder the label lies beside the image."""
    assert yolo_label_path(Path(image)) == Path(label)


# ----------------------------------------------------------------------------- _parse_names


@pytest.mark.parametrize("text, names", [
    ("names: [person, bicycle, car]", ["person", "bicycle", "car"]),
    ("names:\n  - person\n  - bicycle\n", ["person", "bicycle"]),
    ("names: {0: person, 1: bicycle}", ["person", "bicycle"]),
    ("names: {1: bicycle, 0: person, 2: car}", ["person", "bicycle", "car"]),
    ("names:\n  '1': bicycle\n  '0': person\n", ["person", "bicycle"]),
    ("names: [0, 1, yes_no]", ["0", "1", "yes_no"]),
    ("names: {0: 7, 1: dog}", ["7", "dog"]),
])
def test_names_accept_the_list_and_mapping_forms_of_a_dataset_yaml(text, names):
    assert _parse_names(yaml.safe_load(text)["names"], "data.yaml") == names


def test_names_as_a_tuple_are_a_list():
    assert _parse_names(("a", "b"), "data.yaml") == ["a", "b"]


@pytest.mark.parametrize("raw, message", [
    ({0: "a", 2: "b"}, "data.yaml: 'names' ids must be 0..1 without gaps or repeats, got [0, 2]"),
    ({1: "a", 2: "b", 3: "c"}, "data.yaml: 'names' ids must be 0..2 without gaps or repeats, got [1, 2, 3]"),
    ({0: "a", "0": "b"}, "data.yaml: 'names' ids must be 0..1 without gaps or repeats, got [0, '0']"),
    ({-1: "a", 0: "b"}, "data.yaml: 'names' ids must be 0..1 without gaps or repeats, got [-1, 0]"),
    ({"a": "x"}, "data.yaml: 'names' keys must be class ids 0..K-1, got ['a']"),
    ({0: "x", 1.5: "y"}, "data.yaml: 'names' keys must be class ids 0..K-1, got [0, 1.5]"),
    ({0.0: "x", 1: "y"}, "data.yaml: 'names' keys must be class ids 0..K-1, got [0.0, 1]"),
    ({False: "x", True: "y"}, "data.yaml: 'names' keys must be class ids 0..K-1, got [False, True]"),
    ("person", "data.yaml: 'names' must be a list or a {id: name} mapping, got str"),
    (None, "data.yaml: 'names' must be a list or a {id: name} mapping, got NoneType"),
    (["a", None], "data.yaml: 'names' must be a list or a {id: name} mapping, got list"),
    (["a", 1.5], "data.yaml: 'names' must be a list or a {id: name} mapping, got list"),
    (7, "data.yaml: 'names' must be a list or a {id: name} mapping, got int"),
])
def test_bad_names_are_one_exact_error(raw, message):
    with pytest.raises(UserError, match=_whole(message)):
        _parse_names(raw, "data.yaml")


def test_a_long_bad_names_mapping_is_cut_at_300_characters():
    raw = {f"class_{i:03d}": "x" for i in range(40)}
    full = f"data.yaml: 'names' keys must be class ids 0..K-1, got {list(raw)}"
    assert len(full) > 301 and not full[299].isspace() and not full[300].isspace()
    with pytest.raises(UserError, match=_whole(full[:300])):
        _parse_names(raw, "data.yaml")


def test_a_long_gapped_names_mapping_is_cut_at_300_characters():
    raw = {i: "x" for i in [*range(100), 1000]}
    full = f"data.yaml: 'names' ids must be 0..100 without gaps or repeats, got {list(raw)}"
    assert len(full) > 301 and not full[299].isspace() and not full[300].isspace()
    with pytest.raises(UserError, match=_whole(full[:300])):
        _parse_names(raw, "data.yaml")
