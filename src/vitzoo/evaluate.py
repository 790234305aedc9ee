"""Top-1 / Top-5 evaluation on a labelled image set, on one process or many (torchrun), and top-k prediction."""

from __future__ import annotations

import json
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


# -- bulk prediction: one JSON line per image, across processes, resumable ---------------------------------------------
def _done_images(path) -> set[str]:
    """Images already written to a JSONL file; a line cut short by a killed run is dropped (rewritten later)."""
    done = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["image"])
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return done


def _keep_complete_lines(path) -> None:
    """Cut a part file back to its last complete line (a kill mid-write leaves half a line)."""
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)


@torch.inference_mode()
def predict_to_jsonl(
    model,
    samples: list,
    transform,
    output,
    top_k: int = 5,
    classes: list[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    root=None,
    progress: bool = True,
    ctx: DistContext | None = None,
) -> dict:
    """Top-k predictions for every image of `samples` [(path, label)] as JSON lines in `output`, in sample order.

    Each rank takes samples[rank::world_size] and appends to its own part file (`output.part<rank>`) batch by batch;
    a rerun skips images already in the output or a part file, so a killed run resumes. When all are done rank 0
    merges the parts into `output` (written atomically) and removes them. An unreadable image gets a line with
    "error" instead of "top" (so a rerun does not retry it forever). Paths are written relative to `root`.
    """
    from pathlib import Path

    ctx = ctx or DistContext()
    output = Path(output)
    part = output.with_name(f"{output.name}.part{ctx.rank}")
    names = [str(Path(p).relative_to(root)) if root else str(p) for p, _ in samples]
    done = _done_images(output)
    for other in output.parent.glob(f"{output.name}.part*"):
        done |= _done_images(other)
    todo = [(i, samples[i]) for i in range(ctx.rank, len(samples), ctx.world_size) if names[i] not in done]
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
    _keep_complete_lines(part)
    imagenet = imagenet_classes() if classes is None else None
    loader = DataLoader(
        EvalDataset([s for _, s in todo], transform, on_bad_image="skip"), batch_size=batch_size, num_workers=workers,
        collate_fn=collate,
    )  # fmt: skip
    written = 0
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * ctx.world_size, desc="predict", unit="img", dynamic_ncols=True)
    with open(part, "a", encoding="utf-8") as out:
        for batch in loader:
            lines = {}
            for index, message in zip(batch["bad_indices"], batch["bad"]):
                lines[index] = {"image": names[todo[index][0]], "error": message}
            if batch["images"] is not None:
                probs = model(batch["images"].to(device)).float().softmax(dim=1)
                values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
                for index, vals, idxs in zip(batch["indices"], values.tolist(), indices.tolist()):
                    i, (_, label) = todo[index]
                    top = [_entry(k, p, classes, imagenet) for p, k in zip(vals, idxs)]
                    lines[index] = {"image": names[i], "label": label, "top": top}
            out.writelines(json.dumps(lines[k]) + "\n" for k in sorted(lines))
            out.flush()
            written += len(lines)
            if bar is not None:
                bar.update(len(lines) * ctx.world_size)
    if bar is not None:
        bar.close()
    if ctx.world_size > 1:
        dist.barrier()
    if ctx.is_main:
        _merge(output, names)
    mine = len(range(ctx.rank, len(samples), ctx.world_size))
    return {"images": len(samples), "written": written, "skipped_as_done": mine - len(todo)}


def _entry(index: int, probability: float, classes, imagenet) -> dict:
    if imagenet is not None and index < len(imagenet):
        wnid, names = imagenet[index]
        return {"index": index, "wnid": wnid, "label": names.split(",")[0], "probability": probability}
    label = classes[index] if classes is not None else str(index)
    return {"index": index, "label": label, "probability": probability}


def _merge(output, names: list[str]) -> None:
    """The output and every part file merged in sample order into `output` (temp file + rename), parts removed."""
    lines = {}
    sources = [output, *sorted(output.parent.glob(f"{output.name}.part*"))]
    for source in sources:
        if not source.exists():
            continue
        with open(source, encoding="utf-8") as f:
            for line in f:
                try:
                    lines[json.loads(line)["image"]] = line if line.endswith("\n") else line + "\n"
                except (ValueError, KeyError, TypeError):
                    continue
    tmp = output.with_name(f".{output.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines[name] for name in names if name in lines)
    os.replace(tmp, output)
    for source in sources[1:]:
        source.unlink(missing_ok=True)
