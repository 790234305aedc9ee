"""The distillation teacher: any classifier with the data's classes, frozen in eval mode.

A teacher is a whole model in one file (an exported program, `.pt2` from torch.export, exported in eval mode; or a
TorchScript file), or a model name with a weights file: a vitzoo name, a torchvision name or a timm name, tried in
that order unless prefixed `vitzoo:`, `torchvision:` or `timm:`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SOURCES = ("vitzoo", "torchvision", "timm")


class TeacherError(ValueError):
    """A teacher that cannot be loaded or does not fit the data: says which and why."""


def _source_of(name: str) -> tuple[str, str]:
    prefix, _, rest = name.partition(":")
    if rest and prefix in SOURCES:
        return prefix, rest
    from ..specs import list_models

    if name.lower() in (m.lower() for m in list_models()):
        return "vitzoo", name
    import torchvision

    if name in torchvision.models.list_models():
        return "torchvision", name
    import timm

    if timm.is_model(name):
        return "timm", name
    raise TeacherError(f"teacher {name!r}: not a file and not a vitzoo, torchvision or timm model name")


def _classes_in(state: dict[str, torch.Tensor], model: nn.Module) -> int | None:
    """The class count a weights file was trained for: the first dimension of the tensor(s) that do not fit the
    default-built model's classifier (which has as many rows as the model's default class count)."""
    own = model.state_dict()
    for key, tensor in state.items():
        mine = own.get(key)
        if mine is not None and mine.dim() >= 1 and tensor.dim() == mine.dim() and tensor.shape[0] != mine.shape[0]:
            if tensor.shape[1:] == mine.shape[1:]:
                return tensor.shape[0]
    return None


def _build_named(source: str, name: str, weights: str, img_size: int) -> nn.Module:
    from ..weights import WeightsError, read_weights

    try:
        state, _ = read_weights(weights)
    except WeightsError as e:
        raise TeacherError(f"teacher weights: {e}") from None
    if source == "vitzoo":
        from ..factory import create_model

        if "head.weight" not in state:
            raise TeacherError(f"teacher weights {weights}: no head.weight, so no classifier to distil from")
        return create_model(name, num_classes=state["head.weight"].shape[0], img_size=img_size, weights=weights)
    if source == "torchvision":
        import torchvision

        build = lambda **kw: torchvision.models.get_model(name, weights=None, **kw)  # noqa: E731
    else:
        import timm

        build = lambda **kw: timm.create_model(name, pretrained=False, **kw)  # noqa: E731
    model = build()
    classes = _classes_in(state, model)
    if classes is not None:
        model = build(num_classes=classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TeacherError(f"teacher weights {weights} do not fit {source} model {name}: {e}") from None
    return model


def _load_whole_model(path: Path) -> nn.Module:
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as e:  # noqa: BLE001 - torch.export raises many kinds for a bad archive
            raise TeacherError(f"teacher {path}: not a readable exported program ({str(e).splitlines()[0]})") from None
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise TeacherError(f"teacher {path}: not a TorchScript file ({str(e).splitlines()[0]})") from None


def load_teacher(spec: str, weights: str | None, num_classes: int, img_size: int, device) -> nn.Module:
    """The teacher in eval mode without gradients, checked to predict `num_classes` classes on img_size inputs."""
    path = Path(spec)
    if path.is_file():
        if weights:
            raise TeacherError(f"teacher {spec} is a whole-model file with its weights inside; drop teacher_weights")
        model = _load_whole_model(path)
    else:
        source, name = _source_of(spec)
        if not weights:
            raise TeacherError(f"teacher {spec} ({source}) needs its trained weights: give teacher_weights")
        model = _build_named(source, name, weights, img_size)
    model = model.to(device)
    try:
        model.eval()
    except NotImplementedError:  # an exported program runs as it was exported (in eval mode)
        pass
    for param in model.parameters():
        param.requires_grad_(False)
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, img_size, img_size, device=device))
    except (RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0]
        raise TeacherError(f"teacher {spec} cannot take {img_size}x{img_size} images: {reason}") from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise TeacherError(
            f"teacher {spec} predicts {out.shape[-1]} classes, the training data has {num_classes}: "
            "a teacher must share the student's classes"
        )
    return model
