"""``Detections``: what detection returns for one image or frame (no torch)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np


def _palette(index: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class id (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


@dataclass
class Detections:
    """Detections in one image.

    ``boxes`` float32 [N, 4] (x1, y1, x2, y2) in original-image pixels, clipped to the image;
    ``scores`` float32 [N]; ``class_ids`` int64 [N] (0-based model classes); ``names`` the model's
    class names (``names[class_ids[i]]`` names detection i); ``source`` where the image came from
    (a path, ``video.mp4:17`` for frame 17, a stream URL); ``image_shape`` (height, width);
    ``image`` the BGR image detected on, when kept (``litedet.load`` keeps it, so ``draw()`` and
    ``save()`` need no argument).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: Sequence[str]
    source: str = ""
    image_shape: tuple[int, int] = (0, 0)
    timings: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.class_ids)):
            raise ValueError(
                f"Detections needs as many boxes, scores and class ids: got {len(self.boxes)}, "
                f"{len(self.scores)}, {len(self.class_ids)}"
            )

    @classmethod
    def empty(cls, names: Sequence[str], source: str = "", image_shape: tuple[int, int] = (0, 0)) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), names, source, image_shape)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def class_names(self) -> list[str]:
        """The class name of each detection."""
        return [self._name(int(c)) for c in self.class_ids]

    def _name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else str(class_id)

    def to_json(self) -> dict[str, Any]:
        """``{"source": ..., "detections": [{"box": [x1, y1, x2, y2], "score", "class_id", "class_name"}]}``
        with boxes in original pixels (rounded to 0.01 px) and scores to 5 decimals."""
        return {
            "source": self.source,
            "detections": [
                {
                    "box": [round(float(v), 2) for v in box],
                    "score": round(float(score), 5),
                    "class_id": int(class_id),
                    "class_name": self._name(int(class_id)),
                }
                for box, score, class_id in zip(self.boxes, self.scores, self.class_ids)
            ],
        }

    def draw(self, image: np.ndarray | None = None, line_width: int | None = None) -> np.ndarray:
        """A copy of ``image`` (BGR; default the kept ``self.image``) with each box, its class
        name and score drawn on it."""
        if image is None:
            if self.image is None:
                raise ValueError(f"no image kept for {self.source or 'these detections'}: pass the image to draw on")
            image = self.image
        canvas = np.ascontiguousarray(image).copy()
        width = line_width or max(1, round(sum(canvas.shape[:2]) / 2 * 0.003))
        font_scale = width / 3
        for box, score, class_id in zip(self.boxes, self.scores, self.class_ids):
            color = _palette(int(class_id))
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, width, cv2.LINE_AA)
            label = f"{self._name(int(class_id))} {score:.2f}"
            (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, width - 1))
            above = y1 - text_h - baseline >= 0
            top = y1 - text_h - baseline if above else y1
            cv2.rectangle(canvas, (x1, top), (x1 + text_w, top + text_h + baseline), color, -1, cv2.LINE_AA)
            cv2.putText(
                canvas, label, (x1, top + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                max(1, width - 1), cv2.LINE_AA,
            )
        return canvas

    def save(self, path: str | os.PathLike, image: np.ndarray | None = None, line_width: int | None = None) -> Path:
        """Write the annotated image (``draw``) to ``path``; a folder (existing, or a path without
        a suffix) gets the source's file name (``clip_17.jpg`` for frame 17 of ``clip.mp4``).
        Returns the file written."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / _file_name(self.source)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), self.draw(image, line_width)):
            raise ValueError(f"could not write {path} (is {path.suffix!r} an image format OpenCV writes?)")
        return path

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for name in self.class_names:
            counts[name] = counts.get(name, 0) + 1
        summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "nothing"
        return f"Detections({self.source or '<image>'}: {summary})"


def _file_name(source: str) -> str:
    """An image file name for a result's source: ``a/b.png`` -> ``b.png``, ``clip.mp4:17`` ->
    ``clip_17.jpg``, a URL or an unnamed image -> its last path part or ``image.jpg``."""
    base, _, frame = source.rpartition(":")
    if frame.isdigit() and base:
        return f"{Path(base.split('?')[0].rstrip('/')).stem or 'frame'}_{frame}.jpg"
    name = Path(source.split("?")[0].rstrip("/")).name
    return name if Path(name).suffix else f"{name or 'image'}.jpg"


class Reservoir:
    """A uniform random sample of at most ``capacity`` values from a stream of any length
    (Vitter's algorithm R): medians and percentiles of a run in fixed memory. ``values`` is the
    sample (one list, updated in place); ``len()`` counts every value seen."""

    def __init__(self, capacity: int = 4096, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.count = 0
        self.values: list[float] = []
        self._random = random.Random(seed)

    def slot(self) -> int | None:
        """Where the next value goes (an index into ``values``), or None when it is not kept."""
        index = self.count
        self.count += 1
        if index < self.capacity:
            return index
        slot = self._random.randrange(self.count)
        return slot if slot < self.capacity else None

    def add(self, value: float) -> None:
        slot = self.slot()
        if slot == len(self.values):
            self.values.append(value)
        elif slot is not None:
            self.values[slot] = value

    def __len__(self) -> int:
        return self.count
