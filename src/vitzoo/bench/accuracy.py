"""The seed's accuracy tables measured: Top-1/Top-5 of each model on a user's ImageNet val set (the same evaluation as
`vitzoo eval`), beside the seed's Top1/Top5 and Reference columns, in the seed's own layout (a ViT table and a DeiT
table, its column order).

All 15 models over 50,000 images is hours of work: each model's result is written to `output_dir/<model>.json` as it
finishes, and a rerun keeps what is there (for the same data, weights and protocol) and computes the rest. Under
torchrun each model's images are split across the processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..data.datasets import DatasetError
from ..data.transforms import eval_transform
from ..distributed import DistContext
from ..evaluate import evaluate, labelled_samples
from ..factory import create_model
from ..labels import ClassNames
from ..profile import profile
from ..specs import get_spec

WEIGHT_SUFFIXES = (".safetensors", ".pdparams", ".pth", ".pt", ".bin", ".npz")


def weights_for(name: str, weights: str) -> str:
    """`weights` for model `name`: a known source ("paddleclas", "hf", "timm") as it is, or from a folder the file
    named by the model (`<folder>/<name>.<suffix>`, or a Hugging Face folder `<folder>/<name>/`)."""
    folder = Path(weights)
    if not folder.is_dir():
        return weights
    for candidate in [folder / name, *(folder / f"{name}{s}" for s in WEIGHT_SUFFIXES)]:
        if candidate.exists():
            return str(candidate)
    raise DatasetError(f"{folder}: no weights for {name} (expected {name}.safetensors, .pdparams, .pth, ... or {name}/)")


def _key(data, root, weights: str, protocol: str) -> dict:
    return {"data": str(Path(data).resolve()), "root": str(root) if root else None, "weights": weights,
            "protocol": protocol}  # fmt: skip


def measure_accuracy(
    models: list[str],
    data,
    root=None,
    weights: str = "paddleclas",
    protocol: str = "seed",
    device: str = "cpu",
    output_dir=None,
    batch_size: int = 64,
    workers: int = 0,
    ctx: DistContext | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """model -> its `vitzoo eval` result (top1, top5, images, ...), kept in `output_dir/<model>.json` per model.

    The table's models all classify ImageNet-1k: the set's class folders are matched to ImageNet's classes by their
    WordNet ids (a list file's labels are class indices), once for every model, before any is evaluated."""
    ctx = ctx or DistContext()
    say = progress or (lambda message: None)
    samples = labelled_samples(data, root, ClassNames.imagenet())
    out = Path(output_dir) if output_dir else None
    if out is not None and ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in (get_spec(m).name for m in models):
        source = weights_for(name, weights)
        key = _key(data, root, source, protocol)
        kept = out / f"{name}.json" if out is not None else None
        if kept is not None and kept.is_file():
            try:
                previous = json.loads(kept.read_text())
            except ValueError:
                previous = {}
            if previous.get("key") == key:
                say(f"{name}: kept from {kept}")
                results[name] = previous
                continue
        say(f"{name}: evaluating {len(samples)} images")
        model = create_model(name, weights=source)
        result = evaluate(model, samples, eval_transform(name, protocol), batch_size=batch_size, workers=workers,
                          device=device, progress=False, ctx=ctx)  # fmt: skip
        record = {"model": name, "key": key, "device": str(device), **result}
        if kept is not None and ctx.is_main:  # written whole or not at all: a rerun never reads half a result
            tmp = kept.with_name(f".{kept.name}.tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, kept)
        results[name] = record
    return results


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def accuracy_markdown(results: dict[str, dict], weights: str, device: str, protocol: str) -> str:
    """The seed's two tables (ViT, DeiT) in its column order, each measured figure beside the printed one."""
    head = ["Models", "Top1", "Top1 (seed)", "Top5", "Top5 (seed)", "Reference<br>top1", "Reference<br>top5",
            "FLOPS<br>(G)", "FLOPS (seed)", "Params<br>(M)", "Params (seed)"]  # fmt: skip
    sections = []
    for family in ("ViT", "DeiT"):
        names = [n for n in results if n.startswith(family + "_")]
        if not names:
            continue
        lines = [f"### {family}", "", "| " + " | ".join(head) + " |", "|" + ":--:|" * len(head)]
        for name in names:
            r, seed, prof = results[name], get_spec(name).seed, profile(name)
            cells = [name, _num(r["top1"]), _num(seed.top1), _num(r["top5"]), _num(seed.top5), _num(seed.ref_top1),
                     _num(seed.ref_top5), _num(prof.macs_seed / 1e9, 2), _num(seed.flops_g, 2),
                     _num(prof.params_seed / 1e6, 2), _num(seed.params_m, 2)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    images = sorted({r["images"] for r in results.values()})
    note = (f"Top1/Top5 measured by vitzoo on {', '.join(map(str, images))} images with the {protocol} protocol, "
            f"weights {weights}, on {device}; (seed): the figures PaddleClas prints. Reference: the original "
            f"papers' figures as the seed quotes them. FLOPS and Params in the seed's convention (paddle.flops).")  # fmt: skip
    return "\n\n".join(sections) + "\n\n" + note + "\n"
