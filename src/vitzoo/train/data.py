"""Training data: the train/val sets with their classes aligned, DeiT's augmentation (timm's data module), and an
order of samples that makes every augmentation a function of (seed, epoch, rank, position).

That last property is what makes `--resume` exact with any number of loader workers: a resumed run skips the
samples already seen and draws the same crops, RandAugment ops and erasings for the rest.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..data.datasets import DatasetError, EvalDataset, collate, folder_classes, load_samples
from ..data.transforms import decode_pil
from ..labels import ClassNames, align_labels


@dataclass
class LabelledSets:
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    num_classes: int
    class_names: list[str] | None  # folder layout only


def load_sets(data, val, root=None, val_root=None) -> LabelledSets:
    """Train and val samples with val labels expressed in the train set's classes.

    Two folders are matched by class folder name (`vitzoo.labels.align_labels`, as eval matches a folder to a run's
    classes); otherwise labels are compared as numbers. A val class the train set has no image of is an error (the
    model could never predict it).
    """
    train, val_samples = load_samples(data, root), load_samples(val, val_root)
    train_names, val_names = folder_classes(data), folder_classes(val)
    present = {label for _, label in train}
    if train_names is not None and val_names is not None:
        unknown = sorted({val_names[label] for _, label in val_samples} - {train_names[i] for i in present})
        if unknown:
            raise DatasetError(f"{val}: class folder(s) {_listing(unknown)} have no images in the train set {data}")
        classes = ClassNames.of(len(train_names), train_names, source=f"the train set {data}")
        val_samples = align_labels(val_samples, val_names, classes, str(val))
        return LabelledSets(train, val_samples, len(train_names), train_names)
    missing = sorted({label for _, label in val_samples} - present)
    if missing:
        raise DatasetError(f"{val}: label(s) {_listing(missing)} do not occur in the train set {data}")
    num_classes = max(present) + 1 if train_names is None else len(train_names)
    return LabelledSets(train, val_samples, num_classes, train_names)


def _listing(items: list) -> str:
    return ", ".join(map(str, items[:8])) + (f" and {len(items) - 8} more" if len(items) > 8 else "")


# -- augmentation ----------------------------------------------------------------------------------------------------
def train_transform(cfg, img_size: int, mean, std):
    """DeiT's training transform, built by timm: RandomResizedCrop, flip, RandAugment, normalise, random erasing."""
    from timm.data import create_transform

    transform = create_transform(
        img_size, is_training=True, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio), hflip=cfg.hflip,
        color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment or None, interpolation=cfg.interpolation,
        re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount, mean=tuple(mean), std=tuple(std),
    )  # fmt: skip
    _fix_posterize(transform)
    return transform


def _posterize(img, bits_to_keep, **_):
    """timm's posterize with Pillow >= 13, which refuses 0 bits: keeping 0 bits is a black image, as Pillow gave."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, bits_to_keep) if bits_to_keep >= 1 else img.point(lambda _: 0)


def _fix_posterize(transform) -> None:
    """RandAugment's PosterizeIncreasing reaches 0 bits at magnitude 10 (m9 plus its noise): route it to _posterize."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize


def build_mixup(cfg, num_classes: int):
    """timm's Mixup/CutMix (which also applies the label smoothing), or None when both are off."""
    if not cfg.mixup_active:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
        mode="batch", label_smoothing=cfg.smoothing, num_classes=num_classes,
    )  # fmt: skip


@contextmanager
def seeded_rng(seed: int):
    """Python, NumPy and torch (CPU) RNGs seeded for one sample, and the caller's states put back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class TrainDataset(Dataset):
    """Items are addressed by (index, augmentation seed), as `SeededOrder` yields them."""

    def __init__(self, samples: list[tuple[Path, int]], transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        path, label = self.samples[index]
        image = decode_pil(path)
        with seeded_rng(seed):
            return self.transform(image), label


class SeededOrder(Sampler):
    """An epoch's sample order from `base` (a set_epoch sampler), each index paired with its augmentation seed,
    starting `skip` samples in (to resume mid-epoch)."""

    def __init__(self, base: Sampler, seed: int, rank: int):
        self.base, self.seed, self.rank = base, seed, rank
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        for position, index in enumerate(self.base):
            if position >= self.skip:
                key = (self.seed, self.epoch, self.rank, position)
                yield index, int(np.random.SeedSequence(key).generate_state(1)[0])

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


def train_sampler(dataset: Dataset, cfg, rank: int, world_size: int) -> Sampler:
    """Repeated augmentation (timm's RepeatAugSampler) when distributed, else a seeded per-epoch shuffle."""
    if world_size > 1 and cfg.repeated_aug > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        return RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, num_repeats=cfg.repeated_aug)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed)


def train_loader(samples, transform, cfg, rank: int, world_size: int, device: torch.device):
    """(loader, order): call `order.set_epoch(epoch, skip)` before iterating the loader each epoch."""
    dataset = TrainDataset(samples, transform)
    base = train_sampler(dataset, cfg, rank, world_size)
    if len(base) < cfg.batch_size:
        raise DatasetError(
            f"{cfg.data}: {len(base)} training images per process, fewer than one batch of {cfg.batch_size}"
        )
    order = SeededOrder(base, cfg.seed, rank)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.workers, drop_last=True,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),  # not the global RNG
    )  # fmt: skip
    return loader, order


def val_loader(samples, transform, batch_size: int, workers: int, rank: int, world_size: int) -> DataLoader:
    """This rank's share samples[rank::world_size]: no padding, so each image counts once across ranks."""
    shard = samples[rank::world_size]
    return DataLoader(EvalDataset(shard, transform), batch_size=batch_size, num_workers=workers, collate_fn=collate)
