"""Labelled image sets in the two layouts users keep ImageNet in, and the ImageNet class names."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from .transforms import BadImageError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# the longest list-file line read: a path as long as Linux allows (PATH_MAX, 4096 bytes), a space and a label, with
# room to spare; anything longer is not a list file (a binary file, a 1 MB line) and is refused as soon as it is met
MAX_LIST_LINE = 8192
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes that are not UTF-8
LABEL_DIGITS = 9  # labels are class indices: up to 999,999,999 (int() of 5000 digits raises, and takes time)


class DatasetError(ValueError):
    """A dataset that cannot be used as given: names the file, line or folder."""


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ImageNet-1k classes as (wnid, names), in class-index order (sorted wnids)."""
    text = resources.files("vitzoo.data").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if line]


def scan_image_folder(root: str | Path) -> list[tuple[Path, int]]:
    """`root/<class>/<image>` -> [(path, label)], classes in sorted order = class index (torchvision's ImageFolder)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    samples = [
        (path, label)
        for label, cls in enumerate(classes)
        for path in sorted((root / cls).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not samples:
        raise DatasetError(f"{root}: {len(classes)} class folders but no images in them")
    return samples


def read_list_file(list_file: str | Path, root: str | Path | None = None) -> list[tuple[Path, int]]:
    """PaddleClas's list file: one `relative/path label` per line, images under `root` (default: the file's folder)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: no such list file")
    root = Path(root) if root is not None else list_file.parent
    if not root.is_dir():
        raise DatasetError(f"{root}: no such image root folder")
    samples = []
    for number, line in _list_lines(list_file):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"-?[0-9]+", parts[1]):  # ASCII digits: int() of "²" raises
            raise DatasetError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}")
        if len(parts[1].lstrip("-")) > LABEL_DIGITS:
            raise DatasetError(f"{list_file}:{number}: label {parts[1][:20]}... is out of range")
        label = int(parts[1])
        if label < 0:
            raise DatasetError(f"{list_file}:{number}: negative label {label}")
        path = root / parts[0].strip()
        try:
            found = path.is_file()
        except OSError as e:  # a name too long for the file system, a folder it may not read
            raise DatasetError(f"{list_file}:{number}: image {path}: {e.strerror or e}") from None
        if not found:
            raise DatasetError(f"{list_file}:{number}: image {path} does not exist")
        samples.append((path, label))
    if not samples:
        raise DatasetError(f"{list_file}: no images listed")
    return samples


def _list_lines(list_file: Path):
    """(number, line) of a UTF-8 list file, read a line at a time (any newline convention, as PaddleClas reads it),
    each at most MAX_LIST_LINE characters: a giant line is refused when met, not read whole."""
    try:
        # a BOM (Windows editors write one) is skipped; bytes that are not UTF-8 are refused at their line
        with open(list_file, encoding="utf-8-sig", errors="surrogateescape") as f:
            for number, line in enumerate(iter(lambda: f.readline(MAX_LIST_LINE + 1), ""), start=1):
                if len(line) > MAX_LIST_LINE:
                    raise DatasetError(f"{list_file}:{number}: line longer than {MAX_LIST_LINE} characters; "
                                       "not a list file")  # fmt: skip
                if _UNDECODABLE.search(line):
                    raise DatasetError(f"{list_file}:{number}: not UTF-8 text")
                yield number, line.rstrip("\n")
    except OSError as e:
        raise DatasetError(f"{list_file}: cannot read: {e.strerror or e}") from None


def load_samples(data: str | Path, root: str | Path | None = None) -> list[tuple[Path, int]]:
    """A folder (ImageNet layout) or a list file, told apart by what `data` is."""
    data = Path(data)
    if data.is_dir():
        return scan_image_folder(data)
    if data.is_file():
        return read_list_file(data, root)
    raise DatasetError(f"{data}: no such folder or list file")


def image_root(data: str | Path, root: str | Path | None = None) -> Path:
    """The folder a set's image paths are relative to: a list file's root (default: its folder), or the folder."""
    data = Path(data)
    return Path(root) if root else (data if data.is_dir() else data.parent)


def folder_classes(data: str | Path) -> list[str] | None:
    """The class folder names of an image folder in label order (sorted), or None for a list file."""
    data = Path(data)
    return sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else None


class EvalDataset(Dataset):
    """{"image", "label", "index", "decode_s", "preprocess_s"}, or {"index", "bad": message} for an image that cannot
    be read. A bad image is never raised here: in a loader worker the error would reach the caller wrapped in the
    worker's traceback; `collate` passes it on and the consumer decides (`raise_bad` to stop at the first)."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            tensor, decode_s, preprocess_s = self.transform.timed(path)
        except BadImageError as e:
            return {"index": index, "bad": str(e)}
        return {"image": tensor, "label": label, "index": index, "decode_s": decode_s, "preprocess_s": preprocess_s}


def raise_bad(batch: dict) -> None:
    """Stop at a batch's first unreadable image, with its own one-line message."""
    if batch["bad"]:
        raise BadImageError(batch["bad"][0])


def collate(items: list[dict]) -> dict:
    good = [it for it in items if "image" in it]
    return {
        "images": torch.stack([it["image"] for it in good]) if good else None,
        "labels": torch.tensor([it["label"] for it in good], dtype=torch.long),
        "indices": [it["index"] for it in good],
        "bad": [it["bad"] for it in items if "bad" in it],
        "bad_indices": [it["index"] for it in items if "bad" in it],
        "decode_s": sum(it.get("decode_s", 0.0) for it in items),
        "preprocess_s": sum(it.get("preprocess_s", 0.0) for it in items),
    }
