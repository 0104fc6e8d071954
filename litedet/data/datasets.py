"""Detection datasets in YOLO txt, COCO json and Pascal VOC xml behind one ``Sample`` type.

A dataset YAML names the format and where the files are; ``load_data_config`` reads it (unknown
keys are errors) and ``DataConfig.load_split`` reads one split, checking every label:

- boxes outside the image are clipped and counted;
- degenerate boxes (width or height below ``min_box_size`` pixels after clipping) are dropped
  and counted;
- an unknown class id (negative, >= the number of names, fractional), or a YOLO label line
  without exactly 5 numbers, is an error naming the file and the line;
- a non-finite value (``nan``, ``inf``) or one beyond ``COORDINATE_LIMIT`` (1e9) in a label is an
  error: every such line of the split is counted and the error names the first (file:line) and
  the count;
- a box repeated exactly within one image (same class, same coordinates) is dropped and counted;
- a missing or empty YOLO label file makes the image a background image (no boxes); a YOLO label
  file without an image is counted as an orphan; a split without a single box is warned about;
- an image that cannot be decoded (or is missing) is skipped and counted.

Every problem with the user's files is a one-line ``litedet.errors.UserError``.

Torch-free: numpy, PIL (image headers) and PyYAML only.

YAML examples (``path`` may use ``${VAR}`` or ``${VAR:-default}``; a relative ``path`` is taken
from the YAML file's folder)::

    # YOLO (ultralytics layout): labels/ beside images/, one "cls cx cy w h" line per box
    path: ${LITEDET_SHARED:-../../../shared}/data/coco256
    train: images/train2017
    val: images/val2017
    names: {0: person, 1: bicycle, ...}

    # COCO json: images folder + instances json per split (a list merges several)
    format: coco
    path: ${LITEDET_SHARED:-../../../shared}/data/tiny_coco50
    train: {images: train2017, annotations: annotations/instances_train2017.json}
    val: {images: train2017, annotations: annotations/instances_train2017.json}

    # Pascal VOC xml: one annotations folder, splits as id lists (.txt) or csv with 'filename'
    format: voc
    path: ${LITEDET_SHARED:-../../../shared}/data/raccoon
    images: images
    annotations: annotations
    train: train_labels.csv
    val: test_labels.csv
    names: [raccoon]
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from litedet.errors import UserError, load_yaml

LOGGER = logging.getLogger(__name__)

# Larger label values are data errors, and would overflow the float32 boxes to inf.
COORDINATE_LIMIT = 1e9
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("yolo", "coco", "voc")
SPLITS = ("train", "val", "test")
# Keys each format accepts at the top level of a dataset YAML.
_FORMAT_KEYS: dict[str, set[str]] = {
    "yolo": {"format", "path", "train", "val", "test", "names", "nc"},
    "coco": {"format", "path", "train", "val", "test", "names", "nc"},
    "voc": {"format", "path", "images", "annotations", "train", "val", "test", "names", "nc"},
}
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class Sample:
    """One image and its boxes.

    ``boxes`` float32 [N, 4] in (x1, y1, x2, y2) original-image pixels; ``classes`` int64 [N],
    contiguous 0..K-1; ``size`` (height, width) of the image as decoded (EXIF orientation
    applied, as ``cv2.imread`` does).
    """

    image: Path
    boxes: np.ndarray
    classes: np.ndarray
    size: tuple[int, int]

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(self.boxes) != len(self.classes):
            raise ValueError(f"{self.image}: {len(self.boxes)} boxes but {len(self.classes)} class ids")


@dataclass
class LabelStats:
    """What the label checks found in one split."""

    images: int = 0
    backgrounds: int = 0
    boxes: int = 0
    clipped: int = 0
    degenerate: int = 0
    crowd: int = 0
    difficult: int = 0
    corrupt: int = 0
    missing: int = 0
    duplicates: int = 0
    orphans: int = 0
    nonfinite: list[str] = field(default_factory=list)  # "file:line" (or "file: annotation #i") of each
    per_class: Counter = field(default_factory=Counter)
    skipped_files: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)


@dataclass
class DetectionDataset:
    """The checked samples of one split, the class names and what the checks found."""

    samples: list[Sample]
    names: list[str]
    stats: LabelStats
    split: str = "train"
    sources: list[str] = field(default_factory=list)
    image_root: Path | None = None  # COCO: the images folder of a single json
    label_sources: list[str] = field(default_factory=list)  # YOLO: the label folders, when not ``sources``

    def __len__(self) -> int:
        return len(self.samples)

    def to_coco(self) -> dict[str, Any]:
        """Ground truth as a COCO-format dict (image ids 1..N in sample order, category ids
        1..K for classes 0..K-1) for pycocotools."""
        images, annotations = [], []
        for image_id, sample in enumerate(self.samples, start=1):
            height, width = sample.size
            images.append({"id": image_id, "file_name": str(sample.image), "height": height, "width": width})
            for box, cls in zip(sample.boxes.tolist(), sample.classes.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0,
                })
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def coco_ground_truth(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """(images folder, COCO json) for ``litedet.engine.evaluator.evaluate_coco``: the original
        json of a single COCO split (it keeps crowd regions; without the images the split check
        found missing, written to ``out_dir``), else ``out_dir/<split>_annotations.json`` written
        from the checked samples (absolute file names, images folder ``/``)."""
        path = Path(out_dir) / f"{self.split}_annotations.json"
        if self.image_root is not None and len(self.sources) == 1:
            if not self.stats.missing:
                return self.image_root, Path(self.sources[0])
            # the split check counted the json's absent images: score the ones there are
            data = _read_coco_json(Path(self.sources[0]))
            present = {image["id"] for image in data["images"] if (self.image_root / image["file_name"]).is_file()}
            data["images"] = [image for image in data["images"] if image["id"] in present]
            data["annotations"] = [a for a in data.get("annotations", []) if a.get("image_id") in present]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
            return self.image_root, path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_coco()))
        return Path("/"), path


# ----------------------------------------------------------------------------------------------
# YAML


def expand_env(text: str, source: str = "dataset YAML") -> str:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$VAR``; an unset variable without a default
    is an error naming it."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise UserError(f"{source}: environment variable {name} is not set (set it or write ${{{name}:-default}})")

    return _ENV_PATTERN.sub(replace, text)


def _parse_names(raw: Any, source: str) -> list[str]:
    if isinstance(raw, dict):
        try:
            # ids are integers (YAML) or their decimal strings (JSON keys); int(1.5) or int(True)
            # would silently make a class id of a float or a bool
            if any(isinstance(k, (bool, float)) for k in raw):
                raise TypeError
            by_id = {int(k): v for k, v in raw.items()}
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{source}: 'names' keys must be class ids 0..K-1, got {list(raw)}"[:300]) from None
        keys = sorted(by_id)
        if len(by_id) != len(raw) or keys != list(range(len(keys))):
            raise UserError(f"{source}: 'names' ids must be 0..{len(raw) - 1} without gaps or repeats, got {list(raw)}"[:300])
        return [str(by_id[k]) for k in keys]
    if isinstance(raw, (list, tuple)) and all(isinstance(n, (str, int)) for n in raw):
        return [str(n) for n in raw]
    raise UserError(f"{source}: 'names' must be a list or a {{id: name}} mapping, got {type(raw).__name__}")


@dataclass
class DataConfig:
    """A parsed dataset YAML. ``splits`` maps split name -> format-specific entries (resolved
    paths); ``names`` is None for COCO when the YAML does not give them (read from the json)."""

    format: str
    root: Path
    splits: dict[str, list[Any]]
    names: list[str] | None
    source: str
    images: Path | None = None
    annotations: Path | None = None

    def load_split(self, split: str, min_box_size: float = 1.0, progress: bool = False) -> DetectionDataset:
        """Read and check one split (``train``, ``val`` or ``test``)."""
        if split not in self.splits:
            raise UserError(f"{self.source}: no '{split}' split (has {sorted(self.splits)})")
        if self.format == "yolo":
            assert self.names is not None
            dataset = _load_yolo(self.splits[split], self.names, min_box_size, progress)
        elif self.format == "coco":
            dataset = _load_coco(self.splits[split], self.coco_names(), min_box_size, progress)
        else:
            assert self.names is not None and self.images is not None and self.annotations is not None
            dataset = _load_voc(self.splits[split], self.images, self.annotations, self.names, min_box_size, progress)
        dataset.split = split
        stats = dataset.stats
        if stats.nonfinite:
            raise UserError(
                f"{stats.nonfinite[0]}: a label has a non-finite value (nan or inf) or one beyond "
                f"{COORDINATE_LIMIT:g}; {len(stats.nonfinite)} such "
                f"label(s) in split '{split}' of {self.source}; fix or delete them"
            )
        if not dataset.samples:
            raise UserError(
                f"{self.source}: split '{split}' has no usable images "
                f"({stats.corrupt} corrupt, {stats.missing} missing) in {', '.join(dataset.sources)}"
            )
        for warning in split_warnings(dataset):
            message = f"{self.source}: {warning}"
            if message not in _WARNED:  # a verb that reads a split twice (tune: calibration per model) says it once
                _WARNED.add(message)
                LOGGER.warning("%s", message)
        return dataset

    def coco_names(self) -> list[str]:
        """COCO: category names in sorted category-id order, merged over every json of every
        split so that train and val share one mapping."""
        if self.names is not None:
            return self.names
        categories: dict[int, str] = {}
        for entries in self.splits.values():
            for _, annotations in entries:
                for cid, name in _coco_categories(_read_coco_json(annotations), annotations).items():
                    if categories.setdefault(cid, name) != name:
                        raise UserError(f"{annotations}: category id {cid} is {name!r} here but {categories[cid]!r} elsewhere")
        if not categories:
            raise UserError(f"{self.source}: the COCO json files list no categories")
        self.names = [categories[cid] for cid in sorted(categories)]
        return self.names


_WARNED: set[str] = set()  # split warnings already logged by this process


def load_data_config(path: str | os.PathLike) -> DataConfig:
    """Parse and check a dataset YAML (see the module docstring for the three layouts)."""
    path = Path(path)
    data = load_yaml(path, "dataset YAML")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a dataset YAML must be a mapping with 'train', 'val' and 'names'")
    source = str(path)
    fmt = str(data.get("format", "yolo")).lower()
    if fmt not in FORMATS:
        raise UserError(f"{path}: format must be one of {list(FORMATS)}, got {data.get('format')!r}")
    unknown = sorted(set(data) - _FORMAT_KEYS[fmt])
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown} for format '{fmt}' (allowed: {sorted(_FORMAT_KEYS[fmt])})")
    for key in ("train", "val"):
        if key not in data or data[key] in (None, ""):
            raise UserError(f"{path}: missing key '{key}'")
    if fmt in ("yolo", "voc") and "names" not in data:
        raise UserError(f"{path}: missing key 'names' (class names in class-id order)")
    if fmt == "voc":
        for key in ("images", "annotations"):
            if key not in data:
                raise UserError(f"{path}: missing key '{key}' (a folder, relative to 'path')")

    root_text = expand_env(str(data.get("path", ".")), source)
    if "\0" in root_text:
        raise UserError(f"{path}: 'path' contains a NUL character")
    root = Path(root_text).expanduser()
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{path}: dataset path {root} does not exist")

    names = _parse_names(data["names"], source) if "names" in data else None
    if names is not None and "nc" in data and (isinstance(data["nc"], bool) or data["nc"] != len(names)):
        raise UserError(f"{path}: nc={data['nc']} but {len(names)} names are given")
    if names is not None and not names:
        raise UserError(f"{path}: 'names' is empty")

    def resolve(value: Any, what: str) -> Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise UserError(f"{path}: {what} must be a path string, got {value!r}"[:300])
        resolved = Path(expand_env(value, source)).expanduser()
        resolved = resolved if resolved.is_absolute() else root / resolved
        if not resolved.exists():
            raise FileNotFoundError(f"{path}: {what} {resolved} does not exist")
        return resolved

    splits: dict[str, list[Any]] = {}
    config = DataConfig(fmt, root, splits, names, source)
    if fmt == "voc":
        config.images = resolve(data["images"], "'images'")
        config.annotations = resolve(data["annotations"], "'annotations'")
    for split in SPLITS:
        if data.get(split) in (None, ""):
            continue
        entries = data[split] if isinstance(data[split], list) else [data[split]]
        resolved_entries: list[Any] = []
        for entry in entries:
            if fmt == "coco":
                if not isinstance(entry, dict) or set(entry) != {"images", "annotations"}:
                    raise UserError(f"{path}: each COCO '{split}' entry needs exactly 'images' and 'annotations', got {entry!r}")
                resolved_entries.append((resolve(entry["images"], f"'{split}.images'"),
                                         resolve(entry["annotations"], f"'{split}.annotations'")))
            else:
                resolved_entries.append(resolve(entry, f"'{split}'"))
        splits[split] = resolved_entries
    return config


# ----------------------------------------------------------------------------------------------
# images


def image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) as ``cv2.imread`` will decode it (EXIF rotation applied), or None when the
    file is not a readable image. Reads the header and verifies the file, without decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
        with Image.open(path) as image:  # verify() must come right after open (getexif may read the PNG)
            image.verify()
        if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            width, height = height, width
        if width < 1 or height < 1:
            return None
        if path.suffix.lower() in (".jpg", ".jpeg"):
            with open(path, "rb") as handle:  # a truncated JPEG lacks the end-of-image marker
                handle.seek(-2, os.SEEK_END)
                if handle.read() != b"\xff\xd9":
                    return None
        return height, width
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return None


def _iter_progress(items: Sequence[Any], progress: bool, desc: str) -> Iterable[Any]:
    if not progress:
        return items
    from litedet.progress import progress_bar

    return progress_bar(items, desc=desc, unit="img", leave=False)


def _usable(values: Sequence[float]) -> bool:
    """Every label value finite and within +-COORDINATE_LIMIT."""
    return all(math.isfinite(v) and abs(v) <= COORDINATE_LIMIT for v in values)


def _check_boxes(boxes: np.ndarray, classes: np.ndarray, size: tuple[int, int], min_box_size: float,
                 stats: LabelStats) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the image (counted) and drop degenerate boxes (counted)."""
    if not len(boxes):
        return boxes.reshape(0, 4).astype(np.float32), classes.reshape(0).astype(np.int64)
    height, width = size
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    # Half a pixel of slack: rounding in normalised YOLO labels is not a box outside the image.
    stats.clipped += int((np.abs(clipped - boxes) > 0.5).any(axis=1).sum())
    keep = ((clipped[:, 2] - clipped[:, 0]) >= min_box_size) & ((clipped[:, 3] - clipped[:, 1]) >= min_box_size)
    stats.degenerate += int((~keep).sum())
    return clipped[keep].astype(np.float32), classes[keep].astype(np.int64)


def _add_sample(samples: list[Sample], stats: LabelStats, image: Path, boxes: np.ndarray, classes: np.ndarray,
                size: tuple[int, int], min_box_size: float) -> None:
    boxes, classes = _check_boxes(boxes, classes, size, min_box_size, stats)
    samples.append(Sample(image, boxes, classes, size))
    stats.images += 1
    stats.boxes += len(boxes)
    stats.backgrounds += int(len(boxes) == 0)
    stats.per_class.update(classes.tolist())


def _skip(stats: LabelStats, image: Path, missing: bool) -> None:
    if missing:
        stats.missing += 1
    else:
        stats.corrupt += 1
    stats.skipped_files.append(str(image))
    LOGGER.warning("skipping %s image %s", "missing" if missing else "unreadable", image)


# ----------------------------------------------------------------------------------------------
# YOLO txt


def yolo_label_path(image: Path) -> Path:
    """ultralytics convention: the last ``images`` folder in the path becomes ``labels``."""
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):  # folders only: a file named "images" stays
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _list_images(entry: Path) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    # A .txt list of image paths, relative to the list's folder when not absolute.
    images = []
    try:
        text = entry.read_text()
    except UnicodeDecodeError as err:
        raise UserError(f"{entry}: not a list of image paths (not UTF-8 text: {err.reason} at byte {err.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if "\0" in line:
            raise UserError(f"{entry}:{number}: a NUL character in an image path")
        if line and not line.startswith("#"):
            image = Path(line)
            images.append(image if image.is_absolute() else (entry.parent / image))
    return images


def read_yolo_labels(label_file: Path, num_classes: int, size: tuple[int, int],
                     stats: LabelStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (xyxy pixels, unclipped) and class ids of one YOLO label file.

    A line without exactly 5 numbers or with a class id outside 0..num_classes-1 is a
    ``UserError`` naming file:line. A line with a non-finite value is left out and recorded in
    ``stats.nonfinite`` (an error right away without ``stats``); an exact repeat of an earlier
    line is left out and counted in ``stats.duplicates``."""
    height, width = size
    boxes, classes = [], []
    seen: set[tuple[float, ...]] = set()
    try:
        text = label_file.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of line 1
    except UnicodeDecodeError as err:
        raise UserError(f"{label_file}: not a YOLO label file (not UTF-8 text: {err.reason} at byte {err.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise UserError(
                f"{label_file}:{number}: expected 5 numbers 'class cx cy w h', got {len(fields)}: {line.strip()[:80]!r}"
            )
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise UserError(f"{label_file}:{number}: not numbers: {line.strip()[:80]!r}") from None
        if not _usable(values):
            if stats is None:
                raise UserError(f"{label_file}:{number}: non-finite or out-of-range value in {line.strip()[:80]!r}")
            stats.nonfinite.append(f"{label_file}:{number}")
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise UserError(
                f"{label_file}:{number}: class id {fields[0][:20]} is not in 0..{num_classes - 1} "
                f"({num_classes} names in the dataset YAML)"
            )
        if tuple(values) in seen:  # the same box twice would count twice in training and in mAP
            if stats is not None:
                stats.duplicates += 1
            continue
        seen.add(tuple(values))
        cx, cy, w, h = values[1:]
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        classes.append(int(cls))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(classes, dtype=np.int64)


def _load_yolo(entries: list[Path], names: list[str], min_box_size: float, progress: bool) -> DetectionDataset:
    stats = LabelStats()
    samples: list[Sample] = []
    images = [image for entry in entries for image in _list_images(entry)]
    _count_orphans(entries, images, stats)
    for image in _iter_progress(images, progress, "checking labels"):
        if not image.is_file():
            _skip(stats, image, missing=True)
            continue
        size = image_size(image)
        if size is None:
            _skip(stats, image, missing=False)
            continue
        label_file = yolo_label_path(image)
        if label_file.is_file():
            boxes, classes = read_yolo_labels(label_file, len(names), size, stats)
        else:  # no label file: a background image, as ultralytics treats it
            boxes, classes = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        _add_sample(samples, stats, image, boxes, classes, size, min_box_size)
    label_folders = sorted({str(yolo_label_path(image).parent) for image in images})
    return DetectionDataset(samples, list(names), stats, sources=[str(e) for e in entries],
                            label_sources=label_folders)


def _count_orphans(entries: list[Path], images: list[Path], stats: LabelStats) -> None:
    """Label files under the labels folder of an image folder that belong to no image (a renamed
    or deleted image, or labels copied into the wrong split)."""
    expected = {yolo_label_path(image) for image in images}
    for entry in entries:
        if not entry.is_dir():
            continue
        labels_dir = yolo_label_path(entry / "_.jpg").parent
        if not labels_dir.is_dir():
            continue
        for label_file in sorted(labels_dir.rglob("*.txt")):
            if label_file not in expected and label_file.name != "classes.txt":
                stats.orphans += 1
                stats.orphan_files.append(str(label_file))


# ----------------------------------------------------------------------------------------------
# COCO json


def _read_coco_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"{path}: not a COCO json ({err})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise UserError(f"{path}: not a COCO instances json (needs 'images' and 'annotations')")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list) or not all(isinstance(v, dict) for v in data.get(key, [])):
            raise UserError(f"{path}: '{key}' must be a list of objects")
    return data


def _coco_id(value: Any, path: Path, what: str) -> int:
    """An integer id (``3`` or ``3.0``); anything else is a UserError naming the record."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise UserError(f"{path}: {what} must be an integer id, got {value!r}"[:300])
    return int(value)


def _coco_categories(data: dict[str, Any], path: Path) -> dict[int, str]:
    categories = {}
    for number, category in enumerate(data.get("categories", [])):
        if "id" not in category or "name" not in category:
            raise UserError(f"{path}: category #{number} needs 'id' and 'name'")
        categories[_coco_id(category["id"], path, f"category #{number} 'id'")] = str(category["name"])
    return categories


def _coco_bbox(annotation: dict[str, Any], path: Path, number: int) -> list[float] | None:
    """[x, y, w, h] of an annotation; None when a value is non-finite (the caller counts it)."""
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise UserError(f"{path}: annotation #{number} (id {annotation.get('id')!r}) needs 'bbox' [x, y, w, h], "
                        f"got {bbox!r}"[:300])
    values = [float(v) for v in bbox]
    return values if _usable(values) else None


def _load_coco(entries: list[tuple[Path, Path]], names: list[str], min_box_size: float, progress: bool) -> DetectionDataset:
    stats = LabelStats()
    samples: list[Sample] = []
    for images_dir, json_path in entries:
        data = _read_coco_json(json_path)
        categories = _coco_categories(data, json_path)
        # Contiguous ids: names are in sorted category-id order (DataConfig.coco_names).
        by_name = {name: index for index, name in enumerate(names)}
        to_index: dict[int, int] = {}
        for cid, name in categories.items():
            if name not in by_name:
                raise UserError(f"{json_path}: category {cid} {name!r} is not among the dataset names {names}")
            to_index[cid] = by_name[name]
        per_image: dict[int, list[dict[str, Any]]] = {}
        image_ids = {_coco_id(record.get("id"), json_path, f"image #{number} 'id'")
                     for number, record in enumerate(data["images"])}
        for number, annotation in enumerate(data["annotations"]):
            cid = _coco_id(annotation.get("category_id", -1), json_path, f"annotation #{number} 'category_id'")
            if cid not in to_index:
                raise UserError(
                    f"{json_path}: annotation #{number} (id {annotation.get('id')!r}) has category_id {cid}, "
                    f"which is not in 'categories' {sorted(categories)}"[:300]
                )
            image_id = _coco_id(annotation.get("image_id"), json_path, f"annotation #{number} 'image_id'")
            if image_id not in image_ids:  # its box would be lost without a word
                raise UserError(f"{json_path}: annotation #{number} (id {annotation.get('id')!r}) has image_id "
                                f"{image_id}, which is not in 'images'"[:300])
            bbox = _coco_bbox(annotation, json_path, number)
            if bbox is None:
                stats.nonfinite.append(f"{json_path}: annotation #{number} (id {annotation.get('id')!r})")
                continue
            per_image.setdefault(image_id, []).append({**annotation, "bbox": bbox})
        for number, record in enumerate(_iter_progress(data["images"], progress, f"checking {json_path.name}")):
            if not isinstance(record.get("file_name"), str) or not record["file_name"]:
                raise UserError(f"{json_path}: image #{number} needs a 'file_name' string")
            record_id = _coco_id(record.get("id"), json_path, f"image #{number} 'id'")
            image = images_dir / record["file_name"]
            if not image.is_file():
                _skip(stats, image, missing=True)
                continue
            size = image_size(image)
            if size is None:
                _skip(stats, image, missing=False)
                continue
            boxes, classes = [], []
            seen: set[tuple[float, ...]] = set()
            for annotation in per_image.get(record_id, []):
                if annotation.get("iscrowd", 0):  # crowd regions are not boxes to learn
                    stats.crowd += 1
                    continue
                x, y, w, h = annotation["bbox"]
                cls = to_index[int(annotation["category_id"])]
                if (cls, x, y, w, h) in seen:
                    stats.duplicates += 1
                    continue
                seen.add((cls, x, y, w, h))
                boxes.append([x, y, x + w, y + h])
                classes.append(cls)
            _add_sample(samples, stats, image, np.asarray(boxes, np.float32), np.asarray(classes, np.int64),
                        size, min_box_size)
    return DetectionDataset(samples, list(names), stats, sources=[str(j) for _, j in entries],
                            image_root=entries[0][0] if len(entries) == 1 else None)


# ----------------------------------------------------------------------------------------------
# Pascal VOC xml


def _read_split_list(path: Path) -> list[str]:
    """Image stems from a VOC ImageSets-style .txt (one id per line) or a csv with a ``filename``
    column (first occurrence order, duplicates removed)."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None or "filename" not in reader.fieldnames:
                    raise UserError(f"{path}: a split csv needs a 'filename' column, got {reader.fieldnames}"[:300])
                stems = [Path(row["filename"]).stem for row in reader if isinstance(row.get("filename"), str) and row["filename"]]
        else:
            stems = [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except (csv.Error, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a split list ({err})") from None
    return list(dict.fromkeys(stems))


def read_voc_xml(path: Path, names: list[str], stats: LabelStats | None = None,
                 ) -> tuple[str | None, np.ndarray, np.ndarray, int]:
    """(filename, boxes xyxy pixels, class ids, number of 'difficult' objects left out) of one
    VOC annotation. An object whose name is not in ``names``, or without a numeric bndbox, is a
    ``UserError`` naming file and line; non-finite coordinates go to ``stats.nonfinite`` (an error
    without ``stats``) and exact repeats of an object to ``stats.duplicates``."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path}: not a Pascal VOC xml ({err})") from None
    text = path.read_text(errors="replace")  # to name the line of each <object> in errors
    filename = root.findtext("filename")
    boxes, classes, difficult = [], [], 0
    seen: set[tuple[Any, ...]] = set()
    search_from = 0
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        position = text.find("<object", search_from)
        search_from = position + 1 if position >= 0 else search_from
        line = text.count("\n", 0, position) + 1 if position >= 0 else 0
        if name not in names:
            raise UserError(f"{path}:{line}: object #{index} has class {name[:40]!r}, not among the dataset names {names}"[:300])
        if (obj.findtext("difficult") or "0").strip() == "1":  # VOC evaluation ignores these too
            difficult += 1
            continue
        box = obj.find("bndbox")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError):
            raise UserError(f"{path}:{line}: object #{index} has no valid bndbox xmin/ymin/xmax/ymax") from None
        if not _usable(coords):
            if stats is None:
                raise UserError(f"{path}:{line}: object #{index} has a non-finite bndbox {coords}")
            stats.nonfinite.append(f"{path}:{line}")
            continue
        if (name, *coords) in seen:
            if stats is not None:
                stats.duplicates += 1
            continue
        seen.add((name, *coords))
        boxes.append(coords)
        classes.append(names.index(name))
    return filename, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64), difficult


def _find_image(images_dir: Path, stem: str, filename: str | None) -> Path:
    if filename:
        candidate = images_dir / filename
        if candidate.is_file():
            return candidate
    for suffix in IMAGE_SUFFIXES:
        candidate = images_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return images_dir / (filename or f"{stem}.jpg")


def _load_voc(entries: list[Path], images_dir: Path, annotations_dir: Path, names: list[str], min_box_size: float,
              progress: bool) -> DetectionDataset:
    stats = LabelStats()
    samples: list[Sample] = []
    stems = [stem for entry in entries for stem in _read_split_list(entry)]
    for stem in _iter_progress(stems, progress, "checking labels"):
        xml_path = annotations_dir / f"{stem}.xml"
        if xml_path.is_file():
            filename, boxes, classes, difficult = read_voc_xml(xml_path, names, stats)
            stats.difficult += difficult
        else:  # no annotation: a background image
            filename, boxes, classes = None, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        image = _find_image(images_dir, stem, filename)
        if not image.is_file():
            _skip(stats, image, missing=True)
            continue
        size = image_size(image)
        if size is None:
            _skip(stats, image, missing=False)
            continue
        _add_sample(samples, stats, image, boxes, classes, size, min_box_size)
    return DetectionDataset(samples, list(names), stats, sources=[str(e) for e in entries],
                            label_sources=[str(annotations_dir)])


# ----------------------------------------------------------------------------------------------
# summary


def _shown(paths: Sequence[str], most: int = 3) -> str:
    """Up to ``most`` paths, then how many more."""
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more


def split_warnings(dataset: DetectionDataset) -> list[str]:
    """One line per thing in a checked split a person should look at before training on it."""
    stats, warnings = dataset.stats, []
    if stats.boxes == 0:
        warnings.append(
            f"split '{dataset.split}' has no boxes: all {stats.images} images are background "
            f"(empty or missing labels in {_shown(dataset.label_sources or dataset.sources)}?); a detector trained on "
            "it finds nothing"
        )
    if stats.duplicates:
        warnings.append(f"split '{dataset.split}': {stats.duplicates} repeated box(es) dropped (same class and coordinates)")
    if stats.orphans:
        first = stats.orphan_files[0]
        warnings.append(f"split '{dataset.split}': {stats.orphans} label file(s) without an image, e.g. {first}")
    return warnings


def summary_table(datasets: Sequence[DetectionDataset], max_classes: int = 10) -> str:
    """A plain-text table of what the label checks found, one row per split, then the most
    frequent classes and a ``warning:`` line for each thing to look at (``split_warnings``)."""
    header = ("split", "images", "background", "boxes", "clipped", "degenerate", "duplicate", "crowd", "difficult",
              "corrupt", "missing", "orphan labels")
    rows = [header]
    for dataset in datasets:
        s = dataset.stats
        rows.append((dataset.split, s.images, s.backgrounds, s.boxes, s.clipped, s.degenerate, s.duplicates, s.crowd,
                     s.difficult, s.corrupt, s.missing, s.orphans))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if datasets:
        names = datasets[0].names
        totals: Counter = Counter()
        for dataset in datasets:
            totals.update(dataset.stats.per_class)
        common = totals.most_common(max_classes)
        more = len(totals) - len(common)
        listed = ", ".join(f"{names[c]} {n}" for c, n in common)
        lines.append(f"{len(names)} classes; boxes per class: {listed}" + (f", ... ({more} more)" if more > 0 else ""))
    for dataset in datasets:
        for path in dataset.stats.skipped_files[:5]:
            lines.append(f"skipped ({dataset.split}): {path}")
        lines += [f"warning: {warning}" for warning in split_warnings(dataset)]
    return "\n".join(lines)
