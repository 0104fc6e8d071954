"""COCO box mAP of a detector over any backend, with pycocotools (no torch).

Settings follow YOLOv5 ``val.py`` for mAP: score threshold 0.001, per-class NMS at IoU 0.6,
300 detections per image, every class above the threshold kept per box (``multi_label``). One
difference, on purpose: YOLOv5 batches validation images into rectangles of similar aspect
ratio; litedet letterboxes every image to the model's fixed square ``config.input_size`` (what a
static-shape engine runs, so every backend is scored on the same input). Images are shrunk with
``cv2.INTER_AREA`` and enlarged with ``cv2.INTER_LINEAR``, as YOLOv5's loader does.

Beside COCO's mAP, per class: precision and recall at the confidence that maximises the mean F1
over classes, AP50, AP50-95 and the instance count (the table of ultralytics ``val``), their
curves over the confidence, and a confusion matrix at score 0.25 / IoU 0.45 (``ClassMetrics``,
``class_metrics``, ``save_eval_plots``).

Class ids: the model predicts contiguous ids 0..nc-1; COCO json files use their own category ids
(the 91-id space for COCO). Each model class is mapped to the category of the same name; when the
names differ (a custom dataset), class i maps to the i-th category in ascending id order, which
needs as many categories as the model has classes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
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


CONFUSION_CONF = 0.25  # ultralytics ConfusionMatrix defaults: detections above this score,
CONFUSION_IOU = 0.45  # matched to ground truth above this IoU
CURVE_POINTS = 1000  # confidence grid of the P, R and F1 curves


@dataclass
class ClassMetrics:
    """One row of the per-class table: ``precision`` and ``recall`` at IoU 0.5 and the confidence
    of the best mean F1, COCO ``ap50`` and ``ap50_95``, ``instances`` (non-crowd boxes) and
    ``images`` holding the class."""

    name: str
    images: int
    instances: int
    precision: float
    recall: float
    ap50: float
    ap50_95: float

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class EvalResult:
    """COCO box metrics: mAP@[.5:.95], mAP@.5, AP@[.5:.95] per class name (classes with
    ground truth), the 12 COCOeval stats, how many images were scored and which were skipped.

    ``classes`` holds the per-class table (``ClassMetrics``), ``precision``/``recall`` the mean
    over classes at ``best_conf``; ``curves`` the P, R, F1 curves over confidence and
    ``confusion`` the confusion matrix (see ``save_eval_plots``). A split without ground-truth
    boxes has ``note`` set and the mAP fields NaN (``to_dict`` gives null): nothing to score."""

    map50_95: float
    map50: float
    per_class: dict[str, float]
    images: int
    stats: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    summary: str = ""
    # precision at COCO's 101 recall points at IoU 0.5, mean over classes with ground truth
    pr_curve: list[float] = field(default_factory=list)
    classes: list[ClassMetrics] = field(default_factory=list)
    precision: float = float("nan")
    recall: float = float("nan")
    best_conf: float = float("nan")
    instances: int = 0
    detections: int = 0
    curves: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        def number(value: float) -> float | None:
            return None if value is None or math.isnan(value) else float(value)

        return {"map50_95": number(self.map50_95), "map50": number(self.map50), "images": self.images,
                "instances": self.instances, "precision": number(self.precision), "recall": number(self.recall),
                "classes": [row.to_dict() for row in self.classes], "note": self.note or None}

    def table(self) -> str:
        """The per-class table (ultralytics ``val`` layout): an ``all`` row, then one per class."""
        width = max([len("class"), len("all")] + [len(row.name) for row in self.classes])
        lines = [f"{'class':>{width}}  {'images':>6}  {'instances':>9}  {'P':>6}  {'R':>6}  {'mAP50':>6}  {'mAP50-95':>8}"]

        def line(name: str, images: int, instances: int, p: float, r: float, a50: float, a: float) -> str:
            return f"{name:>{width}}  {images:>6}  {instances:>9}  {p:>6.3f}  {r:>6.3f}  {a50:>6.3f}  {a:>8.3f}"

        lines.append(line("all", self.images, self.instances, self.precision, self.recall, self.map50, self.map50_95))
        for row in self.classes:
            lines.append(line(row.name, row.images, row.instances, row.precision, row.recall, row.ap50, row.ap50_95))
        return "\n".join(lines)


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
    """Detect on every image of a COCO json (each must be a file under ``images``; an unreadable
    one is skipped and listed in ``EvalResult.skipped``) and score with COCOeval.

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
        predictor.preprocessor.interpolation = predictor.interpolation  # what the resize actually uses
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
    from litedet.progress import progress_bar

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
    paths = {image_id: images_dir / ground_truth.loadImgs(image_id)[0]["file_name"] for image_id in image_ids}
    absent = [path for path in paths.values() if not path.is_file()]
    if absent:  # a wrong folder, not bad images: a partial score would pass for the split's
        first = ", ".join(path.name for path in absent[:3])
        raise FileNotFoundError(
            f"{len(absent)} of the {len(image_ids)} images in {annotations} are not in {images_dir} "
            f"(e.g. {first}): give the folder that holds them"
        )
    coco_results: list[dict[str, Any]] = []
    scored: list[int] = []
    skipped: list[str] = []
    for image_id in progress_bar(image_ids, enabled=progress, desc="val", unit="img", leave=False):
        path = paths[image_id]
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
    boxes_in_scored = len(ground_truth.getAnnIds(imgIds=scored, iscrowd=False))
    if not boxes_in_scored:
        nan = float("nan")
        return EvalResult(nan, nan, {}, len(scored), skipped=skipped, detections=len(coco_results),
                          note=f"{annotations}: the {len(scored)} scored images hold no ground-truth box, so there "
                               f"is nothing to score (mAP undefined); {len(coco_results)} detections were made")
    if not coco_results:
        result = EvalResult(0.0, 0.0, {}, len(scored), skipped=skipped)
        class_metrics(result, ground_truth, None, coco_results, scored)
        return result
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
    result = EvalResult(stats[0], stats[1], per_class, len(scored), stats, skipped, summary, pr_curve)
    class_metrics(result, ground_truth, evaluator, coco_results, scored)
    return result


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` [N, 4] and ``b`` [M, 4], both COCO (x, y, w, h) -> [N, M]."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    a1, a2 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b1, b2 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None).prod(-1)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return inter / np.maximum(union, 1e-12)


def confusion_matrix(ground_truth: Any, coco_results: Sequence[dict[str, Any]], image_ids: Sequence[int],
                     category_ids: Sequence[int], conf: float = CONFUSION_CONF, iou: float = CONFUSION_IOU) -> np.ndarray:
    """[K + 1, K + 1] counts, rows = predicted category, columns = true category, index K =
    background (ultralytics ``ConfusionMatrix``): detections above ``conf`` are matched one-to-one
    to non-crowd boxes above ``iou`` (highest IoU first, any class); an unmatched box counts as a
    missed (predicted background), an unmatched detection as a false alarm (true background)."""
    index = {category: k for k, category in enumerate(category_ids)}
    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for det in coco_results:
        if det["score"] >= conf and det["category_id"] in index:
            by_image.setdefault(det["image_id"], []).append(det)
    for image_id in image_ids:
        truths = [a for a in ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=[image_id], iscrowd=False))
                  if a["category_id"] in index]
        dets = by_image.get(image_id, [])
        true_cls = np.array([index[a["category_id"]] for a in truths], dtype=np.int64)
        pred_cls = np.array([index[d["category_id"]] for d in dets], dtype=np.int64)
        overlaps = _iou_matrix(np.array([a["bbox"] for a in truths], dtype=np.float64).reshape(-1, 4),
                               np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4))
        gt_done, det_done = np.zeros(len(truths), bool), np.zeros(len(dets), bool)
        pairs = np.argwhere(overlaps > iou)
        for g, d in sorted(pairs.tolist(), key=lambda gd: -overlaps[gd[0], gd[1]]):
            if not gt_done[g] and not det_done[d]:
                gt_done[g] = det_done[d] = True
                matrix[pred_cls[d], true_cls[g]] += 1
        for g in np.flatnonzero(~gt_done):
            matrix[background, true_cls[g]] += 1
        for d in np.flatnonzero(~det_done):
            matrix[pred_cls[d], background] += 1
    return matrix


def class_metrics(result: EvalResult, ground_truth: Any, evaluator: Any, coco_results: Sequence[dict[str, Any]],
                  image_ids: Sequence[int]) -> None:
    """Fill ``result``'s per-class table, mean P/R, curves and confusion matrix.

    Precision and recall per class follow ultralytics ``ap_per_class``: the matches COCOeval made
    at IoU 0.5 (area "all", 100 detections per image, crowd regions ignored) are swept over the
    confidence; P and R are read at the confidence where the mean F1 over classes peaks. AP50 and
    AP50-95 are COCO's own per-class figures, so the ``all`` row equals mAP50 / mAP50-95."""
    categories = sorted(ground_truth.getCatIds())
    name_of = {cat["id"]: cat["name"] for cat in ground_truth.loadCats(categories)}
    grid = np.linspace(0, 1, CURVE_POINTS)
    precision_curves, recall_curves, rows = [], [], []
    instances_total = 0
    evals: dict[tuple[int, int], dict[str, Any]] = {}
    if evaluator is not None:
        for entry in evaluator.evalImgs:
            if entry is not None and entry["aRng"] == evaluator.params.areaRng[0]:
                evals[(entry["category_id"], entry["image_id"])] = entry
    coco_precision = evaluator.eval["precision"][:, :, :, 0, -1] if evaluator is not None else None
    for k, category in enumerate(categories):
        annotation_ids = ground_truth.getAnnIds(imgIds=image_ids, catIds=[category], iscrowd=False)
        instances = len(annotation_ids)
        if not instances:
            continue  # COCO leaves classes without ground truth out of the mean; so does the table
        images = len({a["image_id"] for a in ground_truth.loadAnns(annotation_ids)})
        scores, hits = [], []
        for image_id in image_ids:
            entry = evals.get((category, image_id))
            if entry is None:
                continue
            keep = ~entry["dtIgnore"][0].astype(bool)  # IoU 0.5; ignored: matched to a crowd region
            scores.extend(np.asarray(entry["dtScores"])[keep].tolist())
            hits.extend((entry["dtMatches"][0][keep] > 0).tolist())
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        conf = np.asarray(scores, dtype=np.float64)[order]
        true_positives = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
        false_positives = np.arange(1, len(conf) + 1) - true_positives
        recall = true_positives / instances
        precision = true_positives / np.maximum(true_positives + false_positives, 1e-12)
        if len(conf):  # as ultralytics: interpolate along the falling confidence
            recall_curves.append(np.interp(-grid, -conf, recall, left=0))
            precision_curves.append(np.interp(-grid, -conf, precision, left=1))
        else:
            recall_curves.append(np.zeros_like(grid))
            precision_curves.append(np.ones_like(grid))
        if coco_precision is not None:
            column = coco_precision[:, :, evaluator.params.catIds.index(category)]
            ap50_95 = float(column[column > -1].mean()) if (column > -1).any() else 0.0
            at50 = column[0]
            ap50 = float(at50[at50 > -1].mean()) if (at50 > -1).any() else 0.0
        else:
            ap50 = ap50_95 = 0.0
        rows.append(ClassMetrics(name_of[category], images, instances, 0.0, 0.0, ap50, ap50_95))
        instances_total += instances
    result.instances = instances_total
    result.detections = len(coco_results)
    if not rows:
        return
    p_curves, r_curves = np.array(precision_curves), np.array(recall_curves)
    f1_curves = 2 * p_curves * r_curves / np.maximum(p_curves + r_curves, 1e-12)
    best = int(np.argmax(f1_curves.mean(0)))
    for row, p, r in zip(rows, p_curves[:, best], r_curves[:, best]):
        row.precision, row.recall = float(p), float(r)
    result.classes = rows
    result.precision = float(p_curves[:, best].mean())
    result.recall = float(r_curves[:, best].mean())
    result.best_conf = float(grid[best])
    result.curves = {"confidence": grid.tolist(), "names": [row.name for row in rows],
                     "precision": p_curves.tolist(), "recall": r_curves.tolist(), "f1": f1_curves.tolist()}
    labelled = [c for c in categories if ground_truth.getAnnIds(imgIds=image_ids, catIds=[c], iscrowd=False)]
    result.confusion = {"names": [name_of[c] for c in labelled] + ["background"],
                        "matrix": confusion_matrix(ground_truth, coco_results, image_ids, labelled).tolist(),
                        "conf": CONFUSION_CONF, "iou": CONFUSION_IOU}


def save_eval_plots(result: EvalResult, folder: str | os.PathLike) -> list[Path]:
    """Write ``confusion_matrix.png`` (counts normalised per true class), ``PR_curve.png`` and
    ``F1_curve.png``, ``P_curve.png``, ``R_curve.png`` (over the confidence) into ``folder``;
    returns the files (none for a result without per-class metrics)."""
    if not result.classes:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    curves = result.curves
    grid = np.asarray(curves["confidence"])
    names = curves["names"]
    many = len(names) > 10  # thin grey lines per class, a legend only for few classes

    def per_class_lines(axis: Any, ys: np.ndarray, label_mean: str) -> None:
        for name, y in zip(names, ys):
            axis.plot(grid, y, linewidth=1, color="grey" if many else None, alpha=0.5 if many else 1.0,
                      label=None if many else name)
        axis.plot(grid, ys.mean(0), linewidth=3, color="tab:blue", label=label_mean)

    for key, label in (("f1", "F1"), ("precision", "precision"), ("recall", "recall")):
        values = np.asarray(curves[key])
        figure, axis = plt.subplots(figsize=(6, 4.5))
        mean = values.mean(0)
        best = int(np.argmax(mean)) if key == "f1" else int(np.argmin(np.abs(grid - result.best_conf)))
        per_class_lines(axis, values, f"all classes {mean[best]:.2f} at {grid[best]:.3f}")
        axis.set_xlabel("confidence")
        axis.set_ylabel(label)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower left" if key != "recall" else "upper right")
        axis.set_title(f"{label} over confidence (IoU 0.5)", fontsize=9)
        path = folder / {"f1": "F1_curve.png", "precision": "P_curve.png", "recall": "R_curve.png"}[key]
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

    # precision over recall, one line per class: the confidence sweep, made monotone as COCO does
    recall = np.asarray(curves["recall"])
    precision = np.maximum.accumulate(np.asarray(curves["precision"])[:, ::-1], axis=1)[:, ::-1]
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name, r, p, row in zip(names, recall, precision, result.classes):
        axis.plot(r, p, linewidth=1, color="grey" if many else None, alpha=0.5 if many else 1.0,
                  label=None if many else f"{name} {row.ap50:.3f}")
    if result.pr_curve:
        axis.plot(np.linspace(0, 1, len(result.pr_curve)), result.pr_curve, linewidth=3, color="tab:blue",
                  label=f"all classes {result.map50:.3f} mAP50")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    axis.set_title("precision-recall at IoU 0.5", fontsize=9)
    figure.tight_layout()
    path = folder / "PR_curve.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)

    matrix = np.asarray(result.confusion["matrix"], dtype=np.float64)
    labels = result.confusion["names"]
    normalised = matrix / np.maximum(matrix.sum(0, keepdims=True), 1)
    size = min(max(4.0, 0.25 * len(labels) + 2), 24)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(labels))
    axis.set_xticks(ticks, labels, rotation=90, fontsize=6 if len(labels) > 20 else 8)
    axis.set_yticks(ticks, labels, fontsize=6 if len(labels) > 20 else 8)
    if len(labels) <= 20:
        for (i, j), value in np.ndenumerate(normalised):
            if matrix[i, j]:
                axis.text(j, i, f"{value:.2f}\n({int(matrix[i, j])})", ha="center", va="center", fontsize=7,
                          color="white" if value > 0.5 else "black")
    axis.set_xlabel("true")
    axis.set_ylabel("predicted")
    axis.set_title(f"confusion matrix (score >= {result.confusion['conf']}, IoU > {result.confusion['iou']}), "
                   f"normalised per true class", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    path = folder / "confusion_matrix.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)
    return written


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
        if not str(annotations).startswith(tmp):
            return evaluate(weights, images, annotations, **kwargs)
        # messages name the YAML's split, not the temporary json written from it
        named = f"{data} ({split} split)"
        try:
            result = evaluate(weights, images, annotations, **kwargs)
        except (ValueError, OSError) as err:
            raise type(err)(str(err).replace(str(annotations), named)) from None
        result.note = result.note.replace(str(annotations), named)
        return result

