"""torch ``Dataset``, collate and a deterministic ``DataLoader`` for detection training.

Determinism: sample ``i`` of epoch ``e`` draws its augmentation from
``numpy.random.default_rng([seed, e, i])`` and the epoch's order is a permutation seeded by
``(seed, e)``, so batches do not depend on worker count, worker scheduling or on what ran before;
a resumed run replays the same batches from any step of an epoch.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from litedet.data.augment import AugmentConfig, augment_sample, letterbox_with_boxes, resize_long_side
from litedet.data.datasets import DetectionDataset
from litedet.errors import UserError

LOGGER = logging.getLogger(__name__)


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 [H, W, 3]; a file that cannot be decoded is a ``UserError`` naming it."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if Path(path).is_file() else None  # no OpenCV warning for a missing file
    if image is None:
        raise UserError(f"{path}: cannot read the image (deleted, or not an image any more)")
    return image


class DetectionTrainDataset(Dataset):
    """Items are ``(image uint8 [3, S, S] RGB, targets float32 [N, 5] (class, cx, cy, w, h)
    normalised to S, image path)``.

    ``augment=None`` gives letterboxed images without augmentation (evaluation order).
    ``cache=True`` keeps every image resized to the long side ``size`` in memory (decoded once).

    An image that cannot be read any more (deleted or replaced after the dataset check) is
    skipped: the next readable sample takes its place, a warning names it and ``skipped`` counts
    it over all DataLoader workers. Training stops with one line only when no image is left.
    """

    def __init__(self, dataset: DetectionDataset, size: int, augment: AugmentConfig | None = None, seed: int = 0,
                 cache: bool = False) -> None:
        if size <= 0 or size % 32:
            raise ValueError(f"training image size must be a positive multiple of 32, got {size}")
        self.dataset = dataset
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.use_mosaic = True
        # Shared memory, so skips in DataLoader worker processes are counted here too.
        self._skipped = multiprocessing.Value("i", 0)
        self._warned: set[int] = set()
        self._cache: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        if cache:
            self._cache = [self._load_uncached(i) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def skipped(self) -> int:
        """How many times an unreadable image was skipped (every worker, every epoch)."""
        return int(self._skipped.value)

    def set_epoch(self, epoch: int, use_mosaic: bool = True) -> None:
        """Select the epoch whose augmentation draws to replay (and whether mosaic is on)."""
        self.epoch = epoch
        self.use_mosaic = use_mosaic

    def _load_uncached(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = self.dataset.samples[index]
        image = read_image(sample.image)
        if image.shape[:2] != tuple(sample.size):
            # The checked size came from the header; a decoder that disagrees would misplace boxes.
            raise UserError(f"{sample.image}: decoded size {image.shape[:2]} differs from the checked size {sample.size}")
        image, boxes = resize_long_side(image, sample.boxes, self.size)
        return image, boxes, sample.classes

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image resized to the long side ``size``, its boxes and class ids."""
        return self._load_readable(index)[1:]

    def _load_readable(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """``load`` of ``index``, or of the next sample that can still be read; returns its index first."""
        if self._cache is not None:
            image, boxes, classes = self._cache[index]
            return index, image, boxes.copy(), classes.copy()
        first_error = None
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                return (candidate, *self._load_uncached(candidate))
            except UserError as err:  # changed on disk since the dataset check
                first_error = first_error or err
                with self._skipped.get_lock():
                    self._skipped.value += 1
                if candidate not in self._warned:
                    self._warned.add(candidate)
                    LOGGER.warning("skipping %s", err)
        raise UserError(f"no training image can be read any more ({first_error})")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        if self.augment is None:
            index, image, boxes, classes = self._load_readable(index)
            image, boxes = letterbox_with_boxes(image, boxes, self.size)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, boxes, classes = augment_sample(self.load, index, self.size, self.augment, rng, len(self),
                                                   use_mosaic=self.use_mosaic)
        targets = np.zeros((len(boxes), 5), np.float32)
        if len(boxes):
            height, width = image.shape[:2]
            targets[:, 0] = classes
            targets[:, 1] = (boxes[:, 0] + boxes[:, 2]) / 2 / width
            targets[:, 2] = (boxes[:, 1] + boxes[:, 3]) / 2 / height
            targets[:, 3] = (boxes[:, 2] - boxes[:, 0]) / width
            targets[:, 4] = (boxes[:, 3] - boxes[:, 1]) / height
        chw = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(chw), torch.from_numpy(targets), str(self.dataset.samples[index].image)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack images; targets become one [M, 6] tensor (image index in batch, class, cx, cy, w, h)."""
    images, targets, paths = zip(*batch)
    rows = []
    for index, target in enumerate(targets):
        column = torch.full((len(target), 1), float(index))
        rows.append(torch.cat([column, target], dim=1))
    return torch.stack(images), torch.cat(rows) if rows else torch.zeros((0, 6)), list(paths)


class EpochSampler(Sampler[int]):
    """The epoch's permutation seeded by ``(seed, epoch)``, optionally starting at ``start`` (to
    resume in the middle of an epoch)."""

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return self.length - self.start


def seed_worker(worker_id: int) -> None:
    """Seed python/numpy in each worker from torch's per-worker seed (deterministic given the
    loader's generator). Augmentations do not use these global generators, but any library that
    does is then reproducible too."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def build_loader(dataset: DetectionTrainDataset, batch_size: int, seed: int, shuffle: bool = True,
                 num_workers: int = 0, drop_last: bool = False) -> tuple[DataLoader, EpochSampler]:
    """A DataLoader over ``dataset`` with an ``EpochSampler`` (call ``sampler.set_epoch`` and
    ``dataset.set_epoch`` before each epoch)."""
    sampler = EpochSampler(len(dataset), seed, shuffle)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
        worker_init_fn=seed_worker, generator=generator, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
    )
    return loader, sampler
