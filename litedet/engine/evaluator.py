"""COCO box mAP of a detector over any backend, with pycocotools (no torch).

Settings follow YOLOv5 ``val.py`` for mAP: score threshold 0.001, per-class NMS at IoU 0.6,
300 detections per image, every class above the threshold kept per box (``multi_label``). One
difference, on purpose: YOLOv5 batches validation images into rectangles of similar aspect
ratio; litedet letterboxes every image to the model's fixed square ``config.input_size`` (what a
static-shape engine runs, so every backend is scored on the same input). Images are shrunk with
``cv2.INTER_AREA`` and enlarged with ``cv2.INTER_LINEAR``, as YOLOv5's loader does.

Class ids: the model predicts contiguous ids 0..nc-1; COCO json files use their own category ids
(the 91-id space for COCO). Each model class is mapped to the category of the same name; when the
names differ (a custom dataset), class i maps to the i-th category in ascending id order, which
needs as many categories as the model has classes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from litedet.data.sources import read_image
from litedet.engine.predictor import Predictor
from litedet.runtime.base import Backend

LOGGER = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """COCO box metrics: mAP@[.5:.95], mAP@.5, AP@[.5:.95] per class name (classes with
    ground truth), the 12 COCOeval stats, how many images were scored and which were skipped."""

    map50_95: float
    map50: float
    per_class: dict[str, float]
    images: int
    stats: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    summary: str = ""
    # precision at COCO's 101 recall points at IoU 0.5, mean over classes with ground truth
    pr_curve: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"map50_95": self.map50_95, "map50": self.map50, "images": self.images}


def category_mapping(names: Sequence[str], categories: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Model class index -> annotation category id, by name, else by ascending category id."""
    by_name = {cat["name"]: int(cat["id"]) for cat in categories}
    if categories and all(cat["name"] in names for cat in categories):
        return {index: by_name[name] for index, name in enumerate(names) if name in by_name}
    if len(categories) != len(names):
        raise ValueError(
            f"cannot map {len(names)} model classes to the {len(categories)} annotation categories: the names "
            f"differ (e.g. {sorted(set(by_name) - set(names))[:3]}) and the counts differ"
        )
    return {index: int(cat["id"]) for index, cat in enumerate(sorted(categories, key=lambda c: int(c["id"])))}


INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def evaluate_coco(
    backend: Backend,
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    progress: bool = True,
    limit: int | None = None,
    multi_label: bool = True,
    shrink_interpolation: int = cv2.INTER_AREA,
) -> EvalResult:
    """Detect on every image of a COCO json that exists under ``images`` and score with COCOeval.

    ``limit`` scores only the first N images (by id), for quick checks. ``multi_label=False``
    keeps only each box's best class (YOLOv5 ``detect.py``); ``shrink_interpolation`` is the
    OpenCV resize used when an image is larger than the input (YOLOv5 val: ``INTER_AREA``).
    """
    config = backend.config
    predictor = Predictor(backend, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label, auto=False)

    def detect(image: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        target = config.input_size
        # YOLOv5 loader: INTER_AREA when shrinking, INTER_LINEAR when enlarging
        shrink = min(target[0] / image.shape[0], target[1] / image.shape[1]) < 1
        predictor.interpolation = shrink_interpolation if shrink else cv2.INTER_LINEAR
        (detections,) = predictor.predict([image], [str(path)])
        return detections.boxes, detections.scores, detections.class_ids

    return evaluate_detector(detect, config.names, images, annotations, progress=progress, limit=limit)


def evaluate_detector(
    detect: Callable[[np.ndarray, Path], tuple[np.ndarray, np.ndarray, np.ndarray]],
    names: Sequence[str],
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    progress: bool = True,
    limit: int | None = None,
) -> EvalResult:
    """Score any detector with COCOeval: ``detect(image_bgr, path)`` returns boxes [N, 4] (x1, y1,
    x2, y2 in original-image pixels), scores [N] and class indices [N] into ``names``. What
    ``evaluate_coco`` runs for litedet models, and what scores peers with their own pre- and
    post-processing (``litedet.tune``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from tqdm import tqdm

    images_dir, annotations = Path(images), Path(annotations)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    if not annotations.is_file():
        raise FileNotFoundError(f"annotations not found: {annotations}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            ground_truth = COCO(str(annotations))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{annotations}: not a COCO instances json ({err})") from None
    categories = ground_truth.loadCats(ground_truth.getCatIds())
    class_to_category = category_mapping(names, categories)
    image_ids = sorted(ground_truth.getImgIds())[:limit]
    coco_results: list[dict[str, Any]] = []
    scored: list[int] = []
    skipped: list[str] = []
    for image_id in tqdm(image_ids, desc="val", unit="img", disable=not progress, leave=False):
        info = ground_truth.loadImgs(image_id)[0]
        path = images_dir / info["file_name"]
        try:
            image = read_image(path)
        except (OSError, ValueError) as err:
            LOGGER.warning("skipping %s: %s", path, err)
            skipped.append(str(path))
            continue
        boxes, scores, class_ids = detect(image, path)
        scored.append(image_id)
        for box, score, class_id in zip(boxes, scores, class_ids):
            category = class_to_category.get(int(class_id))
            if category is None:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            coco_results.append(
                {"image_id": image_id, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
            )
    if not scored:
        raise ValueError(f"none of the {len(image_ids)} images in {annotations} could be read from {images_dir}")
    if not coco_results:
        return EvalResult(0.0, 0.0, {}, len(scored), skipped=skipped)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        detections_coco = ground_truth.loadRes(coco_results)
        evaluator = COCOeval(ground_truth, detections_coco, "bbox")
        evaluator.params.imgIds = scored
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats]
    # precision: [T IoUs, R recall points, K categories, A areas, M maxDets]; area "all", 100 dets
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    name_of = {cat["id"]: cat["name"] for cat in categories}
    per_class: dict[str, float] = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        if values.size:
            per_class[name_of[category]] = float(values.mean())
    summary = "\n".join(line for line in buffer.getvalue().splitlines() if "Average" in line)
    at_50 = precision[0]  # [R, K]
    valid = (at_50 > -1).all(axis=0)
    pr_curve = at_50[:, valid].mean(axis=1).tolist() if valid.any() else []
    return EvalResult(stats[0], stats[1], per_class, len(scored), stats, skipped, summary, pr_curve)


def evaluate(
    weights: str | os.PathLike,
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    model: str | None = None,
    imgsz: int | None = None,
    engine: str | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 300,
    progress: bool = True,
    resize: str | None = None,
    interpolation: str = "area",
) -> EvalResult:
    """Open ``weights`` (``litedet.runtime.open_backend``) and score it with ``evaluate_coco``;
    what ``litedet val`` runs.

    ``resize`` overrides the sidecar's ``preprocess.resize`` (``letterbox`` or ``resize``, a plain
    stretch to the input size, as mobile demos that scale a bitmap do); ``interpolation`` is the
    OpenCV resize used when an image shrinks: ``area`` (YOLOv5 val) or ``linear`` (bilinear, as
    ``ncnn::Mat::from_pixels_resize`` and Android's scaled bitmaps)."""
    from litedet.runtime import open_backend

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    backend = open_backend(weights, engine=engine, threads=threads, precision=precision, model=model, imgsz=imgsz)
    try:
        if resize is not None:
            spec = backend.config.preprocess
            backend.config.preprocess = replace(spec, resize=resize)  # validates the value
        return evaluate_coco(backend, images, annotations, conf=conf, iou=iou, max_det=max_det, progress=progress,
                             shrink_interpolation=INTERPOLATIONS[interpolation])
    finally:
        backend.close()


def evaluate_data(weights: str | os.PathLike, data: str | os.PathLike, split: str = "val", **kwargs: Any) -> EvalResult:
    """``evaluate`` on a split of a dataset YAML in any format litedet reads (YOLO txt, COCO json,
    Pascal VOC; ``litedet.data.datasets``): the labels are checked as for training and written as
    COCO ground truth (a single COCO json is used as it is). ``kwargs`` go to ``evaluate``."""
    import tempfile

    from litedet.data.datasets import load_data_config

    dataset = load_data_config(data).load_split(split)
    if not len(dataset):
        raise ValueError(f"{data}: the {split} split has no image")
    with tempfile.TemporaryDirectory(prefix="litedet-val-") as tmp:
        images, annotations = dataset.coco_ground_truth(tmp)
        return evaluate(weights, images, annotations, **kwargs)

