"""Calibration images for int8: the images a user names, through the model's own eval preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from ..data.datasets import IMAGE_SUFFIXES, DatasetError, read_list_file

DEFAULT_LIMIT = 300


def _image_files(source: str | Path | Sequence, root=None) -> list[Path]:
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    source = Path(source)
    if source.is_dir():  # any layout: class folders or flat, every image below, in a stable order
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DatasetError(f"{source}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    if source.is_file():
        if source.suffix.lower() in IMAGE_SUFFIXES:
            return [source]
        return [path for path, _ in read_list_file(source, root)]
    raise DatasetError(f"{source}: no such folder, list file or image")


def calibration_images(
    source: str | Path | Sequence, transform: Callable, limit: int = DEFAULT_LIMIT, root=None
) -> torch.Tensor:
    """[n, C, H, W]: up to `limit` images of `source` (a folder, a list file, or paths), spread evenly over it
    (a class-sorted folder gives every class a share), each through `transform` (the model's eval preprocessing)."""
    files = _image_files(source, root)
    if limit < len(files):
        files = [files[i * len(files) // limit] for i in range(limit)]
    return torch.stack([transform(path) for path in files])
