from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from anchorlab.data.core import Category, DataError, DetectionSet, ImageRecord
from anchorlab.data.loader import DetectionDataset, EpochSampler, InfiniteLoader, build_loader, collate
from anchorlab.data.transforms import build_transforms


def _make_set(root: Path, n: int = 10, *, gray: tuple[int, ...] = ()) -> DetectionSet:
    """``n`` small PNGs of varied sizes, each with 1-3 boxes; images in ``gray`` saved as grayscale."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0], "L") if i in gray else Image.fromarray(pixels)
        path = root / f"img_{i:02d}.png"
        image.save(path)
        m = int(rng.integers(1, 4))
        x1, y1 = rng.uniform(0, w / 2, m), rng.uniform(0, h / 2, m)
        boxes = np.stack([x1, y1, x1 + rng.uniform(4, w / 2, m), y1 + rng.uniform(4, h / 2, m)], 1)
        records.append(
            ImageRecord(
                id=100 + i,
                file=path,
                width=w,
                height=h,
                boxes=boxes.astype(np.float32),
                labels=rng.integers(0, 2, m).astype(np.int64),
                ann_ids=np.arange(m, dtype=np.int64),
                crowd=np.array([[0, 0, 5, 5]], np.float32) if i % 3 == 0 else np.zeros((0, 4), np.float32),
            )
        )
    return DetectionSet(records, [Category(1, "a"), Category(7, "b")])


@pytest.fixture
def data(tmp_path: Path) -> DetectionSet:
    return _make_set(tmp_path, gray=(2,))


def _train_transforms():
    return build_transforms(True, min_size=32, max_size=64, scale_jitter=(24, 40), photometric=True)


def _take(loader, k: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(k)]


def _assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        assert ia.sizes == ib.sizes and torch.equal(ia.tensor, ib.tensor)
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        for x, y in zip(ta, tb, strict=True):
            assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])


def test_dataset_item(data: DetectionSet):
    ds = DetectionDataset(data)
    image, target = ds[np.int64(2)]  # saved as grayscale: decoded as RGB
    rec = data.images[2]
    assert image.shape == (3, rec.height, rec.width) and image.dtype == torch.float32
    assert torch.equal(image[0], image[1]) and image.min() >= 0.0 and image.max() <= 1.0
    assert target["image_id"] == 102 and target["orig_size"] == target["size"] == (rec.height, rec.width)
    assert torch.equal(target["boxes"], torch.from_numpy(rec.boxes)) and target["labels"].dtype == torch.int64
    assert target["scale"] == (1.0, 1.0) and target["skipped"] == []
    ds = DetectionDataset(data, build_transforms(False, min_size=64, max_size=200))
    image, target = ds[0]
    assert min(image.shape[-2:]) == 64 and target["size"] == tuple(image.shape[-2:])
    assert target["crowd"].shape == (1, 4)


def test_collate_pads_to_stride_and_keeps_sizes():
    batch = [(torch.rand(3, 30, 45), {"image_id": 1}), (torch.rand(3, 50, 20), {"image_id": 2})]
    images, targets = collate(batch, size_divisible=32)
    assert images.tensor.shape == (2, 3, 64, 64) and images.sizes == [(30, 45), (50, 20)]
    assert torch.equal(images.tensor[1, :, :50, :20], batch[1][0])
    assert images.tensor[1, :, 50:].abs().sum() == 0 and images.tensor[1, :, :, 20:].abs().sum() == 0
    assert [t["image_id"] for t in targets] == [1, 2]
    assert collate(batch, size_divisible=128)[0].tensor.shape == (2, 3, 128, 128)


@pytest.mark.parametrize("n,world,shuffle,drop", [(10, 1, True, False), (11, 3, True, False),
                                                   (11, 3, True, True), (7, 2, False, False)])  # fmt: skip
def test_sampler_partition_matches_distributed_sampler(n: int, world: int, shuffle: bool, drop: bool):
    for epoch in (0, 3):
        shares = []
        for rank in range(world):
            ours = EpochSampler(n, shuffle=shuffle, seed=7, rank=rank, world_size=world, drop_uneven=drop)
            ours.set_epoch(epoch)
            ref = DistributedSampler(
                range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=7, drop_last=drop
            )
            ref.set_epoch(epoch)
            mine = [i for i, _ in ours]
            assert mine == list(ref) and len(ours) == len(ref)
            shares.append(mine)
        covered = {i for share in shares for i in share}
        assert covered == set(range(n)) if not drop else len(covered) == len(shares) * len(shares[0])


def test_distributed_loader_splits_the_images(data: DetectionSet):
    ids = []
    for rank in range(2):
        loader = build_loader(data, batch_size=2, train=True, seed=3, rank=rank, world_size=2)
        ids.append([t["image_id"] for _, targets in loader for t in targets])
    assert len(ids[0]) == len(ids[1]) == 4  # 5 per rank, last incomplete batch dropped
    assert not set(ids[0]) & set(ids[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_training_loader_is_deterministic(data: DetectionSet, workers: int):
    state = torch.get_rng_state()
    kwargs = dict(batch_size=3, train=True, seed=11, size_divisible=32, transforms=_train_transforms())
    a = _take(build_loader(data, workers=0, **kwargs), 3)
    b = _take(build_loader(data, workers=workers, **kwargs), 3)
    _assert_same_batches(a, b)  # same batches (augmentation included) whatever the number of workers
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not consumed
    c = _take(build_loader(data, workers=0, **{**kwargs, "seed": 12}), 3)
    assert [t["image_id"] for t in a[0][1]] != [t["image_id"] for t in c[0][1]]
    assert all(im.tensor.shape[-1] % 32 == 0 and im.tensor.shape[-2] % 32 == 0 for im, _ in a)


def test_epochs_reshuffle_deterministically(data: DetectionSet):
    loader = build_loader(data, batch_size=5, train=True, seed=0)
    epochs = [[t["image_id"] for _, targets in loader for t in targets] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(100, 110)) and epochs[0] != epochs[1]
    again = build_loader(data, batch_size=5, train=True, seed=0)
    again.set_epoch(1)
    assert [t["image_id"] for _, targets in again for t in targets] == epochs[1]
    evaluation = build_loader(data, batch_size=4, train=False)
    assert len(evaluation) == 3 and [len(ts) for _, ts in evaluation] == [4, 4, 2]
    assert [t["image_id"] for _, ts in evaluation for t in ts] == list(range(100, 110))


class _CountingDataset(DetectionDataset):
    reads = 0

    def read_image(self, index: int) -> torch.Tensor:
        _CountingDataset.reads += 1
        return super().read_image(index)


@pytest.mark.parametrize("workers", [0, 2])
def test_infinite_loader_resumes_exactly(data: DetectionSet, workers: int):
    kwargs = dict(batch_size=3, train=True, seed=5, transforms=_train_transforms(), infinite=True)
    reference = _take(build_loader(data, **kwargs), 7)  # 3 batches per epoch: crosses two epoch boundaries
    first = build_loader(data, **kwargs)
    _assert_same_batches(_take(first, 4), reference[:4])
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, 1)
    _CountingDataset.reads = 0
    resumed = build_loader(_CountingDataset(data, _train_transforms()), **{**kwargs, "transforms": None},
                           workers=workers)  # fmt: skip
    assert isinstance(resumed, InfiniteLoader)
    resumed.load_state_dict(state)
    _assert_same_batches(_take(resumed, 3), reference[4:7])
    if workers == 0:
        assert _CountingDataset.reads == 9  # the consumed batches were not loaded again
    resumed.load_state_dict(state)  # rewinding a running loader (workers mid-epoch) works too
    _assert_same_batches(_take(resumed, 2), reference[4:6])
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(data, **{**kwargs, "batch_size": 2}).load_state_dict(state)


def test_infinite_loader_needs_a_batch(data: DetectionSet):
    with pytest.raises(ValueError, match="no batch"):
        build_loader(data, batch_size=11, train=True, infinite=True)


def _break_images(data: DetectionSet) -> tuple[str, str]:
    corrupt, vanished = data.images[3].file, data.images[6].file
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    vanished.unlink()
    return str(corrupt), str(vanished)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_skipped_and_counted(data: DetectionSet, workers: int):
    corrupt, vanished = _break_images(data)
    loader = build_loader(data, batch_size=2, train=False, workers=workers)
    with pytest.warns(RuntimeWarning) if workers == 0 else nullcontext():
        batches = list(loader)
    assert [len(ts) for _, ts in batches] == [2] * 5  # batches keep their size
    ids = [t["image_id"] for _, ts in batches for t in ts]
    assert ids == [100, 101, 102, 104, 104, 105, 107, 107, 108, 109]  # replaced by the next readable image
    assert loader.skipped == loader.dataset.skipped == 2
    assert set(loader.dataset.skipped_files) == {corrupt, vanished}
    list(loader)
    assert loader.skipped == 4  # counted per epoch


def test_skip_warning_names_the_file_and_strict_raises(data: DetectionSet):
    corrupt, vanished = _break_images(data)
    ds = DetectionDataset(data)
    with pytest.warns(RuntimeWarning, match=r"img_03\.png"):
        _, target = ds[3]
    assert target["image_id"] == 104 and target["skipped"] == [corrupt] and ds.skipped == 1
    strict = DetectionDataset(data, strict=True)
    with pytest.raises(DataError, match=r"img_03\.png"):
        strict[3]
    with pytest.raises(DataError, match=r"img_06\.png"):
        strict[6]
    assert strict[4][1]["image_id"] == 104
    assert vanished.endswith("img_06.png")


def test_size_mismatch_is_unreadable(data: DetectionSet):
    data.images[0].width += 1
    with pytest.raises(DataError, match="differs from the annotated"):
        DetectionDataset(data, strict=True)[0]


def test_no_readable_image_raises(tmp_path: Path):
    data = _make_set(tmp_path, n=2)
    for rec in data.images:
        rec.file.unlink()
    with pytest.warns(RuntimeWarning), pytest.raises(DataError, match="no readable image"):
        DetectionDataset(data)[0]


def test_pin_memory_only_for_cuda(data: DetectionSet):
    assert not build_loader(data, batch_size=2, train=False, device="cpu").loader.pin_memory
    assert not build_loader(data, batch_size=2, train=False).loader.pin_memory
    assert build_loader(data, batch_size=2, train=False, device="cuda:0").loader.pin_memory
