"""Training and evaluation data loading: dataset, collate, deterministic (and resumable) sampling.

Determinism: one ``seed`` fixes the data order (epoch ``e`` shuffles with ``seed + e``, exactly like
torch's ``DistributedSampler``) and the augmentation: the sampler hands each position of the epoch's
index list its own RNG seed, and the dataset runs the transforms under it. The same seed therefore gives
the same batches whatever the number of workers, and a resumed ``InfiniteLoader`` sees exactly the
batches an uninterrupted run would have seen.

Unreadable images (corrupt, vanished, or of another size than annotated) are skipped with a warning and
replaced by the next readable image, so batches keep their size; ``strict=True`` raises instead. Worker
processes count skips in their own copy of the dataset, so each target carries the files skipped to
produce it (``target["skipped"]``) and the loader adds them to the main process's ``dataset.skipped``.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from anchorlab.data.batch import ImageBatch, pad_images
from anchorlab.data.core import DataError, DetectionSet
from anchorlab.data.image import ImageError, read_rgb
from anchorlab.data.transforms import TransformFn

__all__ = [
    "DetectionDataset",
    "DetectionLoader",
    "EpochSampler",
    "InfiniteLoader",
    "build_loader",
    "collate",
    "read_rgb",
]

Target = dict[str, Any]
Batch = tuple[ImageBatch, list[Target]]


class _Unreadable(Exception):
    pass


class DetectionDataset(Dataset):
    """A ``DetectionSet`` as a torch dataset. ``dataset[i]`` (or ``dataset[(i, seed)]``, which runs the
    transforms under that RNG seed) gives ``(image [3, h, w] float32 0..1, target)`` with target keys
    ``boxes [M, 4]`` float32 xyxy, ``labels [M]`` int64, ``crowd [C, 4]`` float32, ``image_id`` (the
    file's id), ``orig_size (H, W)``, ``size (h, w)``, ``scale (sx, sy)``, ``dropped`` (objects the
    transforms removed) and ``skipped`` (files skipped to produce this sample). ``mosaic`` (e.g.
    ``data.mosaic.Mosaic``) is called as ``mosaic(dataset, index, image, target)`` before the transforms,
    under the same seed (only when there are transforms)."""

    def __init__(
        self,
        data: DetectionSet,
        transforms: TransformFn | None = None,
        *,
        strict: bool = False,
        mosaic: Callable[..., tuple[torch.Tensor, Target]] | None = None,
    ) -> None:
        self.data = data
        self.transforms = transforms
        self.strict = strict
        self.mosaic = mosaic
        self.skipped = 0
        self.skipped_files: Counter[str] = Counter()
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.data.images)

    def read_image(self, index: int) -> torch.Tensor:
        """Decode image ``index`` as uint8 RGB ``[3, H, W]``; raises ``_Unreadable`` with the reason."""
        record = self.data.images[index]
        try:
            image = read_rgb(record.file, self.data.max_pixels)
        except ImageError as err:
            raise _Unreadable(err.reason) from err
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if record.width > 0 and record.height > 0 and (width, height) != (record.width, record.height):
            raise _Unreadable(
                f"decoded size {width}x{height} differs from the annotated {record.width}x{record.height}"
            )
        return image

    def note_skipped(self, files: Iterable[str]) -> None:
        """Count skipped files (the loader calls this with what worker processes reported)."""
        for file in files:
            self.skipped += 1
            self.skipped_files[file] += 1

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, Target]:
        index, seed = (int(item[0]), int(item[1])) if isinstance(item, tuple | list) else (int(item), None)
        n = len(self)
        skipped: list[str] = []
        for attempt in range(n):
            j = (index + attempt) % n
            file = str(self.data.images[j].file)
            if j in self._bad:
                skipped.append(file)
                continue
            try:
                image = self.read_image(j)
            except _Unreadable as err:
                if self.strict:
                    raise DataError(f"cannot read image {file}: {err}") from err.__cause__
                warnings.warn(f"skipping unreadable image {file}: {err}", RuntimeWarning, stacklevel=2)
                self._bad.add(j)
                skipped.append(file)
                continue
            self.note_skipped(skipped)
            return self._sample(j, image, seed, skipped)
        self.note_skipped(skipped)
        raise DataError(f"no readable image among the {n} images of the dataset (first: {skipped[:3]})")

    def _sample(self, index: int, image: torch.Tensor, seed: int | None, skipped: list[str]):
        record = self.data.images[index]
        height, width = int(image.shape[-2]), int(image.shape[-1])
        target: Target = {
            "boxes": torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(record.labels, dtype=torch.int64).reshape(-1),
            "crowd": torch.as_tensor(record.crowd, dtype=torch.float32).reshape(-1, 4),
            "image_id": int(record.id),
            "orig_size": (height, width),
            "size": (height, width),
            "scale": (1.0, 1.0),
            "dropped": 0,
            "skipped": skipped,
        }
        if self.transforms is None:
            return F.to_dtype(image, torch.float32, scale=True), target
        if seed is None:
            return self._augment(index, image, target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._augment(index, image, target)

    def _augment(self, index: int, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if self.mosaic is not None:
            image, target = self.mosaic(self, index, image, target)
        return self.transforms(image, target)


def collate(batch: list[tuple[torch.Tensor, Target]], size_divisible: int = 32) -> Batch:
    """Pad the images to a common ``[B, 3, H, W]`` with ``H, W`` multiples of ``size_divisible`` (the
    largest stride: 32 for P5, 128 for RetinaNet's P7), keeping each true size in ``ImageBatch.sizes``."""
    images = [image for image, _ in batch]
    return pad_images(images, size_divisible=size_divisible), [target for _, target in batch]


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for one epoch of one rank, starting at position ``start``.

    Indices are those of ``torch.utils.data.DistributedSampler(shuffle, seed, rank, num_replicas,
    drop_last=drop_uneven)`` at the same epoch (for ``world_size == 1`` a plain seeded permutation), so
    the data order equals torch's; each position also gets an RNG seed for its augmentation."""

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_uneven: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if size < 1:
            raise ValueError("the dataset is empty")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.drop_uneven = rank, world_size, drop_uneven
        if drop_uneven and size % world_size:
            self.num_samples = (size - world_size) // world_size + 1
        else:
            self.num_samples = -(-size // world_size)
        self.total_size = self.num_samples * world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch (its shuffle uses ``seed + epoch``) and skip its first ``start`` positions."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside 0..{self.num_samples}")
        self.epoch, self.start = epoch, start

    def indices(self) -> list[tuple[int, int]]:
        """This rank's ``(index, seed)`` list for the whole current epoch."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (self.total_size,), generator=g)
        if self.total_size > self.size:  # pad by repeating from the start, as DistributedSampler does
            order = order.repeat(-(-self.total_size // self.size))
        order = order[: self.total_size]
        mine = slice(self.rank, self.total_size, self.world_size)
        return list(zip(order[mine].tolist(), seeds[mine].tolist(), strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """Seed python, numpy and torch in a worker from (seed, rank, worker_id); the transforms are seeded
    again per sample, this covers anything else a user transform draws."""
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


class DetectionLoader:
    """One epoch per ``iter()``: epochs advance on their own (``set_epoch`` picks one explicitly).
    Yields ``(ImageBatch, list[target])``; ``skipped`` counts images skipped so far."""

    def __init__(
        self, dataset: DetectionDataset, sampler: EpochSampler, loader: DataLoader, workers: int
    ) -> None:
        self.dataset, self.sampler, self.loader, self.workers = dataset, sampler, loader, workers
        self.batch_size = int(loader.batch_size or 1)
        self.next_epoch = 0

    def close(self) -> None:
        """Stop the persistent worker processes now. Left to the garbage collector, a live iterator is
        inherited by processes forked later (an evaluation loader's workers), which then fail to shut
        down workers that are not their children."""
        self._it = None
        iterator = getattr(self.loader, "_iterator", None)  # torch keeps persistent workers here
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    @property
    def skipped(self) -> int:
        return self.dataset.skipped

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def _batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch, start=start_batch * self.batch_size)
        for images, targets in self.loader:
            if self.workers > 0:  # workers counted in their own copies: gather what they report
                self.dataset.note_skipped(f for t in targets for f in t["skipped"])
            yield images, targets

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return self._batches(epoch)

    def __len__(self) -> int:
        """Batches per epoch."""
        full = self.sampler.num_samples
        return full // self.batch_size if self.loader.drop_last else -(-full // self.batch_size)


class InfiniteLoader(DetectionLoader):
    """Endless iterator over epochs for iteration-based training, resumable exactly:
    ``state_dict()`` records ``(epoch, position)`` (batches consumed in the epoch) and
    ``load_state_dict()`` continues from there without loading the skipped batches."""

    def __init__(
        self, dataset: DetectionDataset, sampler: EpochSampler, loader: DataLoader, workers: int
    ) -> None:
        super().__init__(dataset, sampler, loader, workers)
        if len(self) == 0:
            raise ValueError(
                f"an epoch of {sampler.num_samples} images gives no batch of {self.batch_size} (drop_last)"
            )
        self.epoch = 0
        self.position = 0
        self._it: Iterator[Batch] | None = None

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> Batch:
        while True:
            if self._it is None:
                self._it = self._batches(self.epoch, self.position)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.position = self.epoch + 1, 0
                continue
            self.position += 1
            return batch

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.sampler.seed,
            "batch_size": self.batch_size,
            "num_samples": self.sampler.num_samples,
            "skipped": self.dataset.skipped,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        expected = {
            "seed": self.sampler.seed,
            "batch_size": self.batch_size,
            "num_samples": self.sampler.num_samples,
        }
        for key, mine in expected.items():
            if int(state[key]) != mine:
                raise ValueError(
                    f"cannot resume the data stream exactly: saved {key}={state[key]}, now {mine}"
                )
        if not 0 <= int(state["position"]) <= len(self):
            raise ValueError(f"saved position {state['position']} outside 0..{len(self)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.dataset.skipped = int(state.get("skipped", self.dataset.skipped))
        self._it = None


def build_loader(
    data: DetectionDataset | DetectionSet,
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    size_divisible: int = 32,
    transforms: TransformFn | None = None,
    device: torch.device | str | None = None,
    infinite: bool = False,
    drop_last: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    strict: bool = False,
) -> DetectionLoader | InfiniteLoader:
    """A loader of ``(ImageBatch, list[target])``. Training shuffles (epoch ``e`` with ``seed + e``) and by
    default drops the last incomplete batch; ``world_size > 1`` gives this ``rank`` its
    ``DistributedSampler`` share (padded by repetition, so evaluation should de-duplicate by
    ``image_id``). Workers persist across epochs; memory is pinned only when ``device`` is CUDA.
    ``infinite=True`` returns a resumable ``InfiniteLoader``."""
    if batch_size < 1 or workers < 0 or size_divisible < 1:
        raise ValueError(
            f"need batch_size >= 1, workers >= 0, size_divisible >= 1; "
            f"got {batch_size}, {workers}, {size_divisible}"
        )
    if isinstance(data, DetectionSet):
        dataset = DetectionDataset(data, transforms, strict=strict)
    else:
        dataset = data
        if transforms is not None:
            if dataset.transforms is not None and dataset.transforms is not transforms:
                raise ValueError("transforms given both to the DetectionDataset and to build_loader")
            dataset.transforms = transforms
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size)
    pin = device is not None and torch.device(device).type == "cuda"
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=partial(collate, size_divisible=size_divisible),
        pin_memory=pin,
        drop_last=train if drop_last is None else drop_last,
        worker_init_fn=partial(_seed_worker, seed=seed, rank=rank) if workers > 0 else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
    )
    cls = InfiniteLoader if infinite else DetectionLoader
    return cls(dataset, sampler, loader, workers)
