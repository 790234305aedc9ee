"""A model's classes, and the top-k record every command writes for an image.

One rule for class names (`ClassNames.of`): a trained run's own names; ImageNet-1k's for a 1000-class model of the
table (its WordNet ids, and its first English name as the label); a `--class-names` file over either; otherwise the
classes are their indices. One record (`top_k`): predict, bulk predict, eval's --predictions and serve all write
{"index", "label", "wnid", "probability"} per class, "wnid" null unless the classes are ImageNet's.

A labelled folder is matched to the model's classes by name (`align_labels`): its class folders are looked up among
the model's names (ImageNet's wnids, a run's class names), so a folder holding a subset of the classes is labelled
right; a folder the model does not know is an error. Only a model whose classes are bare indices takes the folders
in sorted order, as torchvision's ImageFolder does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data.datasets import DatasetError, imagenet_classes


@dataclass(frozen=True)
class ClassNames:
    """The classes of a model's outputs, in output order. `labels` None: the classes are their indices."""

    count: int
    labels: tuple[str, ...] | None = None
    wnids: tuple[str, ...] | None = None  # ImageNet's WordNet ids, where the classes are ImageNet-1k's
    source: str = "indices"  # where the names come from, for messages

    @classmethod
    def imagenet(cls) -> "ClassNames":
        classes = imagenet_classes()  # [(wnid, "tench, Tinca tinca"), ...]
        return cls(len(classes), tuple(names.split(",")[0] for _, names in classes),
                   tuple(wnid for wnid, _ in classes), "ImageNet-1k")  # fmt: skip

    @classmethod
    def of(cls, count: int, names: list[str] | None = None, imagenet: bool = False, source: str = "") -> "ClassNames":
        """The one rule: given `names` (a run's, or a --class-names file's), those; else ImageNet's where the model is a
        table model with 1000 outputs (`imagenet`); else indices."""
        if names is not None:
            if len(names) != count:
                raise ValueError(f"{source or 'class names'}: {len(names)} class names for a model with {count} outputs")
            return cls(count, tuple(names), None, source or "class names")
        if imagenet and count == len(imagenet_classes()):
            return cls.imagenet()
        return cls(count)

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels is not None else str(index)

    def wnid(self, index: int) -> str | None:
        return self.wnids[index] if self.wnids is not None else None

    def index_of(self, name: str) -> int | None:
        """The output index of a class named `name` (a wnid or a label), or None."""
        for keys in (self.wnids, self.labels):
            if keys is not None and name in keys:
                return keys.index(name)
        return None

    @property
    def named(self) -> bool:
        return self.labels is not None


def top_k(probabilities: torch.Tensor, k: int, classes: ClassNames) -> list[list[dict]]:
    """Each row of `probabilities` [B, classes] as its k most probable classes, most probable first."""
    if probabilities.shape[1] != classes.count:
        raise ValueError(f"{classes.count} class names ({classes.source}) for a model with {probabilities.shape[1]} "
                         "outputs")  # fmt: skip
    values, indices = probabilities.float().topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [{"index": i, "label": classes.label(i), "wnid": classes.wnid(i), "probability": p} for p, i in zip(vs, ids)]
        for vs, ids in zip(values.tolist(), indices.tolist())
    ]


def image_record(image, top: list[dict], target: dict | None = None) -> dict:
    """The record of one image: what it was (its path, or "<bytes>" for data given in memory), its own class where
    known ({"index", "label", "wnid"}) and its top-k."""
    name = str(image) if isinstance(image, (str, Path)) else getattr(image, "name", None) or f"<{type(image).__name__}>"
    return {"image": name, "target": target, "top": top}


def align_labels(samples: list[tuple[Path, int]], folder_classes: list[str] | None, classes: ClassNames,
                 source: str) -> list[tuple[Path, int]]:  # fmt: skip
    """`samples` [(path, label)] with labels as the model's output indices.

    `folder_classes`: the set's class folder names in label order (None for a list file, whose labels are already
    class indices). Folders are matched to the model's classes by name; a model whose classes are bare indices takes
    them in sorted order. Any label the model cannot output is an error naming it.
    """
    if folder_classes is not None and classes.named:
        index = {}
        unknown = []
        for name in folder_classes:
            found = classes.index_of(name)
            if found is None:
                unknown.append(name)
            index[name] = found
        if unknown:
            shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            example = classes.wnid(0) or classes.label(0)
            raise DatasetError(f"{source}: class folder(s) {shown} are not among the model's {classes.count} classes "
                               f"({classes.source}, e.g. {example!r}); name the folders by class, or use a list "
                               "file of class indices")  # fmt: skip
        return [(path, index[folder_classes[label]]) for path, label in samples]
    for path, label in samples:
        if label >= classes.count:
            raise DatasetError(f"{source}: label {label} of {path} is out of range for a {classes.count}-class model")
    return samples
