"""Top-1 / Top-5 evaluation on a labelled image set, on one process or many (torchrun), and top-k prediction."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data.datasets import EvalDataset, collate, imagenet_classes

log = logging.getLogger("vitzoo")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed(sync: bool = True) -> None:
    """Leave the process group; a gloo group left open aborts the process at exit.

    `sync` waits for every rank first: a rank that tears its group down while another still talks to it aborts
    (gloo). A rank leaving on an error does not wait, or it would hang on ranks that will never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


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
) -> dict:
    """Top-1, Top-5 and mean cross-entropy of `model` over `samples` [(path, label)].

    `model` is an nn.Module (run in eval mode on `device`) or any images -> logits callable, such as an inference
    path from `vitzoo.infer.build_path` (an int8 or OpenVINO model is evaluated the same way as fp32 eager).

    Distributed: each rank takes samples[rank::world_size] (no padding, so every image counts exactly once) and the
    counts are summed across ranks. Timing: decode and preprocess are seconds of worker CPU summed over images,
    model is wall time around the forward passes.
    """
    ctx = ctx or DistContext()
    device = torch.device(device)
    shard = samples[ctx.rank :: ctx.world_size]
    loader = DataLoader(
        EvalDataset(shard, transform, on_bad_image), batch_size=batch_size, num_workers=workers,
        collate_fn=collate, pin_memory=device.type == "cuda",
    )  # fmt: skip
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
    # correct@1, correct@5, loss sum, images, skipped, decode s, preprocess s, model s
    totals = torch.zeros(8, dtype=torch.float64)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc="eval", unit="img", dynamic_ncols=True)
    start = time.perf_counter()
    for batch in loader:
        for message in batch["bad"]:
            log.warning("skipped %s", message)
        totals[4] += len(batch["bad"])
        totals[5] += batch["decode_s"]
        totals[6] += batch["preprocess_s"]
        if batch["images"] is not None:
            labels = batch["labels"].to(device)
            tick = time.perf_counter()
            logits = model(batch["images"].to(device, non_blocking=True)).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            totals[0] += (top[:, 0] == labels).sum().item()
            totals[1] += (top == labels[:, None]).any(dim=1).sum().item()
            totals[2] += F.cross_entropy(logits, labels, reduction="sum").item()
            totals[3] += len(labels)
            totals[7] += time.perf_counter() - tick
        if bar is not None:
            seen = (totals[3] + totals[4]).item() * ctx.world_size
            bar.update(min(int(seen), bar.total) - bar.n)
            bar.set_postfix_str(f"{seen / (time.perf_counter() - start):.1f} img/s, top1 {totals[0] / max(totals[3], 1):.4f}")
    wall = time.perf_counter() - start
    if ctx.world_size > 1:
        dist.all_reduce(totals)
        wall_t = torch.tensor([wall], dtype=torch.float64)
        dist.all_reduce(wall_t, op=dist.ReduceOp.MAX)
        wall = wall_t.item()
    if bar is not None:
        bar.close()
    correct1, correct5, loss_sum, count, skipped, decode_s, preprocess_s, model_s = totals.tolist()
    count = int(count)
    if count == 0:
        raise ValueError("no image could be evaluated" + (f" ({int(skipped)} skipped as unreadable)" if skipped else ""))
    return {
        "images": count,
        "skipped": int(skipped),
        "top1": correct1 / count,
        "top5": correct5 / count,
        "loss": loss_sum / count,
        "images_per_s": (count + skipped) / wall,
        "time_s": {"decode": decode_s, "preprocess": preprocess_s, "model": model_s, "wall": wall},
        "world_size": ctx.world_size,
    }


@torch.inference_mode()
def predict(
    model, images: list, transform, top_k: int = 5, device="cpu", classes: list[str] | None = None
) -> list[dict]:
    """Top-k classes with probabilities for each image (path, bytes or PIL image).

    `model`: an nn.Module or an inference path (images -> logits). `classes`: names in output order; by default
    ImageNet's for a 1000-class output, else the indices.
    """
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
    batch = torch.stack([transform(image) for image in images]).to(device)
    probs = model(batch).float().softmax(dim=1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    if classes is not None and len(classes) != probs.shape[1]:
        raise ValueError(f"{len(classes)} class names for a model with {probs.shape[1]} outputs")
    imagenet = imagenet_classes() if classes is None and probs.shape[1] == 1000 else None
    results = []
    for image, vals, idxs in zip(images, values.tolist(), indices.tolist()):
        top = []
        for p, i in zip(vals, idxs):
            if imagenet:  # "n01440764", "tench, Tinca tinca"
                wnid, names = imagenet[i]
                label = names.split(",")[0]
            else:
                wnid, names = str(i), classes[i] if classes is not None else str(i)
                label = names
            top.append({"index": i, "wnid": wnid, "label": label, "names": names, "probability": p})
        results.append({"image": str(image) if not hasattr(image, "size") else "<image>", "top": top})
    return results
