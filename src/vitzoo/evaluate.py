"""Top-1 / Top-5 evaluation on a labelled image set, on one process or many (torchrun).

    result = run_eval(EvalConfig(model="DeiT_small_patch16_224", weights="paddleclas", data="val/"))

`run_eval` is `vitzoo eval`: the model loaded as the config names it, the labels matched to its classes, the
inference path built, the set evaluated (`evaluate`), the record returned (and written to `output`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import EvalConfig
from .data.datasets import EvalDataset, collate, folder_classes, image_root, load_samples, raise_bad
from .distributed import DistContext, all_reduce_, distributed

log = logging.getLogger("vitzoo")


@dataclass
class Tally:
    """What evaluation counts, summed over batches and across ranks (`all_reduce`)."""

    correct1: float = 0.0
    correct5: float = 0.0
    loss_sum: float = 0.0
    images: float = 0.0
    skipped: float = 0.0
    decode_s: float = 0.0
    preprocess_s: float = 0.0
    model_s: float = 0.0

    def add_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        self.correct1 += (top[:, 0] == labels).sum().item()
        self.correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        self.images += len(labels)

    def all_reduce(self, ctx: DistContext) -> "Tally":
        values = torch.tensor([getattr(self, f.name) for f in fields(self)], dtype=torch.float64)
        return type(self)(*all_reduce_(values, ctx).tolist())


@torch.inference_mode()
def evaluate(
    model,
    samples: list,
    transform,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    on_bad_image: str = "fail",
    progress: bool = True,
    ctx: DistContext | None = None,
    on_batch=None,
) -> dict:
    """Top-1, Top-5 and mean cross-entropy of `model` over `samples` [(path, label)], labels as output indices.

    `model` is an nn.Module (run in eval mode on `device`) or any images -> logits callable, such as an inference
    path from `vitzoo.infer.build_path` (an int8 or OpenVINO model is evaluated the same way as fp32 eager).
    `on_batch(sample_indices, logits)`, if given, sees every batch's logits (eval's --predictions).

    Distributed: each rank takes samples[rank::world_size] (no padding, so every image counts exactly once) and the
    counts are summed across ranks. Timing: decode and preprocess are seconds of worker CPU summed over images,
    model is wall time around the forward passes.
    """
    if on_bad_image not in ("fail", "skip"):
        raise ValueError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
    ctx = ctx or DistContext()
    device = torch.device(device)
    positions = range(ctx.rank, len(samples), ctx.world_size)
    loader = DataLoader(
        EvalDataset([samples[i] for i in positions], transform), batch_size=batch_size, num_workers=workers,
        collate_fn=collate, pin_memory=device.type == "cuda",
    )  # fmt: skip
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc="eval", unit="img", dynamic_ncols=True)
    start = time.perf_counter()
    with contextlib.closing(bar) if bar is not None else contextlib.nullcontext():  # closed on an error too
        tally = _run_batches(model, loader, positions, device, on_bad_image, on_batch, bar, ctx, start)
    wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    tally = tally.all_reduce(ctx)
    wall = all_reduce_(wall, ctx, op=torch.distributed.ReduceOp.MAX).item()
    count = int(tally.images)
    if count == 0:
        skipped = int(tally.skipped)
        raise ValueError("no image could be evaluated" + (f" ({skipped} skipped as unreadable)" if skipped else ""))
    return {
        "images": count,
        "skipped": int(tally.skipped),
        "top1": tally.correct1 / count,
        "top5": tally.correct5 / count,
        "loss": tally.loss_sum / count,
        "images_per_s": (count + tally.skipped) / wall,
        "time_s": {"decode": tally.decode_s, "preprocess": tally.preprocess_s, "model": tally.model_s, "wall": wall},
        "world_size": ctx.world_size,
    }


def _run_batches(model, loader, positions, device, on_bad_image, on_batch, bar, ctx, start) -> Tally:
    """This rank's batches through the model, counted."""
    tally = Tally()
    for batch in loader:
        if on_bad_image == "fail":
            raise_bad(batch)
        for message in batch["bad"]:
            log.warning("skipped %s", message)
        tally.skipped += len(batch["bad"])
        tally.decode_s += batch["decode_s"]
        tally.preprocess_s += batch["preprocess_s"]
        if batch["images"] is not None:
            labels = batch["labels"].to(device)
            tick = time.perf_counter()
            logits = model(batch["images"].to(device, non_blocking=True)).float()
            tally.add_logits(logits, labels)
            tally.model_s += time.perf_counter() - tick
            if on_batch is not None:
                on_batch([positions[i] for i in batch["indices"]], logits)
        if bar is not None:
            seen = (tally.images + tally.skipped) * ctx.world_size
            bar.update(min(int(seen), bar.total) - bar.n)
            bar.set_postfix_str(f"{seen / (time.perf_counter() - start):.1f} img/s, top1 {tally.correct1 / max(tally.images, 1):.4f}")
    return tally


def labelled_samples(data, root, classes, limit: int | None = None) -> list:
    """The samples of a labelled set, labels as the model's output indices (`vitzoo.labels.align_labels`)."""
    from .labels import align_labels

    samples = load_samples(data, root)
    if limit:
        samples = samples[:limit]
    return align_labels(samples, folder_classes(data), classes, str(data))


def run_eval(config: EvalConfig) -> dict:
    """`vitzoo eval`: Top-1/Top-5 of the model `config` names on its labelled set. Returns the record (the same
    on every rank under torchrun; only rank 0 writes `output` and `predictions`)."""
    from .factory import load_model_from
    from .predict import PredictionsFile
    from .specs import SPECS

    config.check()
    with distributed(config.device) as ctx:
        device = ctx.device(config.device)
        loaded = load_model_from(config)
        classes = loaded.class_names()
        samples = labelled_samples(config.data, config.root, classes, config.limit)
        if config.threads:
            torch.set_num_threads(config.threads)
        protocol = config.protocol or loaded.default_protocol
        transform = loaded.transform(protocol)
        runner = loaded.runner(replace(config, device=device), protocol)
        predictions, on_batch = None, None
        if config.predictions:
            predictions = PredictionsFile(config.predictions, samples, classes, config.top_k, ctx, resume=False,
                                          root=image_root(config.data, config.root))  # fmt: skip

            def on_batch(positions, logits):
                predictions.write(positions, logits.softmax(dim=1))

        with predictions or contextlib.nullcontext():
            result = evaluate(
                runner, samples, transform, batch_size=config.batch_size, workers=config.workers, device=device,
                on_bad_image=config.on_bad_image, progress=config.progress, ctx=ctx, on_batch=on_batch,
            )  # fmt: skip
    record = {
        "model": loaded.name, "source": loaded.source, "weights": str(config.weights) if config.weights else None,
        "data": str(config.data), "protocol": protocol, "precision": runner.path.precision,
        "backend": runner.path.backend, "path_notes": runner.notes, **result, "batch_size": config.batch_size,
        "device": device, "classes": classes.source,
    }  # fmt: skip
    if loaded.name in SPECS:
        seed = SPECS[loaded.name].seed
        record["seed"] = {"top1": seed.top1, "top5": seed.top5, "ref_top1": seed.ref_top1, "ref_top5": seed.ref_top5}
    if config.output and ctx.is_main:
        with open(config.output, "w") as f:
            json.dump(record, f, indent=2)
    return record


def describe(record: dict) -> str:
    """One line for people: the model, what it was run through, Top-1/Top-5 (beside the seed's)."""
    seed = record.get("seed") or {}
    seed1 = f" (seed {seed['top1']:.4f})" if seed else ""
    seed5 = f" (seed {seed['top5']:.4f})" if seed else ""
    return (
        f"{record['model']} on {record['images']} images ({record['skipped']} skipped), protocol {record['protocol']}, "
        f"{record['precision']}-{record['backend']}: Top-1 {record['top1']:.4f}{seed1}  Top-5 {record['top5']:.4f}"
        f"{seed5}  loss {record['loss']:.4f}  {record['images_per_s']:.1f} img/s"
    )

