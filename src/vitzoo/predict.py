"""Top-k prediction: for images (`predict`), for a whole labelled set into a JSONL file across processes and
resumable (`PredictionsFile`), and `run_predict`, which is `vitzoo predict`.

Every record has the one schema of `vitzoo.labels`: {"image", "target", "top": [{"index", "label", "wnid",
"probability"}, ...]}, "target" the image's own class where the set says it ({"index", "label", "wnid"}), else null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .config import PredictConfig
from .data.datasets import EvalDataset, collate, image_root
from .distributed import DistContext, barrier, distributed
from . import labels
from .labels import ClassNames, image_record


def _classes_for(model, count: int, classes) -> ClassNames:
    """`classes` as ClassNames: given as such or as a list of names; None: ImageNet's for a table model with 1000
    outputs (`vitzoo.labels.ClassNames.of`), else the indices."""
    from .specs import SPECS

    if isinstance(classes, ClassNames):
        return classes
    return ClassNames.of(count, classes, imagenet=getattr(model, "model_name", None) in SPECS)


@torch.inference_mode()
def predict(model, images: list, transform, top_k: int = 5, device="cpu", classes=None) -> list[dict]:
    """Top-k classes with probabilities for each image (a path, bytes, a file object or a PIL image).

    `model`: an nn.Module or an inference path (images -> logits). `classes`: a `vitzoo.labels.ClassNames` or names in
    output order; by default ImageNet's for one of the table's models with 1000 outputs, else the indices.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
    batch = torch.stack([transform(image) for image in images]).to(device)
    probabilities = model(batch).float().softmax(dim=1)
    names = _classes_for(model, probabilities.shape[1], classes)
    return [image_record(image, top) for image, top in zip(images, labels.top_k(probabilities, top_k, names))]


def target_of(label: int, classes: ClassNames) -> dict:
    return {"index": label, "label": classes.label(label), "wnid": classes.wnid(label)}


class PredictionsFile:
    """The records of a labelled set's images as JSON lines in `output`, in sample order, across processes.

    Each rank appends its images (samples[rank::world_size]) to its own part file (`output.part<rank>`) batch by
    batch; on a clean exit rank 0 merges the parts into `output` (written atomically) and removes them. With `resume`,
    images already in the output or a part file are left out of `todo` (a killed run resumes); a line cut short by the
    kill is not counted, and is rewritten. Image names are paths relative to `root`.
    """

    def __init__(self, output, samples: list, classes: ClassNames, k: int, ctx: DistContext | None = None,
                 resume: bool = True, root=None):  # fmt: skip
        self.output = Path(output)
        self.samples, self.classes, self.k = samples, classes, k
        self.ctx = ctx or DistContext()
        self.resume = resume
        self.part = self.output.with_name(f"{self.output.name}.part{self.ctx.rank}")
        self.names = [str(Path(p).relative_to(root)) if root else str(p) for p, _ in samples]
        self.done = set()
        if resume:
            for source in [self.output, *self._parts()]:
                self.done |= _complete_records(source)
        self.written = 0
        self._file = None

    def _parts(self) -> list[Path]:
        return sorted(self.output.parent.glob(f"{self.output.name}.part*"))

    def todo(self) -> list[int]:
        """This rank's sample positions still to write."""
        return [i for i in range(self.ctx.rank, len(self.samples), self.ctx.world_size) if self.names[i] not in self.done]

    def __enter__(self) -> "PredictionsFile":
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.resume:
            _keep_complete_lines(self.part)
        else:
            self.part.unlink(missing_ok=True)
        self._file = open(self.part, "a", encoding="utf-8")
        return self

    def write(self, positions: list[int], probabilities: torch.Tensor | None, errors: dict[int, str] | None = None):
        """Records for the samples at `positions` (their probabilities [n, classes]), and an "error" record for each
        position in `errors` (an unreadable image: a rerun does not retry it forever); in sample order."""
        lines = {}
        if probabilities is not None:
            for i, top in zip(positions, labels.top_k(probabilities, self.k, self.classes)):
                lines[i] = image_record(self.names[i], top, target_of(self.samples[i][1], self.classes))
        for i, message in (errors or {}).items():
            lines[i] = {"image": self.names[i], "target": target_of(self.samples[i][1], self.classes), "error": message}
        self._file.writelines(json.dumps(lines[i]) + "\n" for i in sorted(lines))
        self._file.flush()
        self.written += len(lines)

    def __exit__(self, kind, error, traceback) -> None:
        self._file.close()
        if kind is not None:
            return
        barrier(self.ctx)
        if self.ctx.is_main:
            self._merge()

    def _merge(self) -> None:
        """The output (when resuming) and every part file merged in sample order into `output`, parts removed."""
        lines = {}
        sources = ([self.output] if self.resume else []) + self._parts()
        for source in sources:
            if source.exists():
                for record, line in _records(source):
                    lines[record["image"]] = line
        tmp = self.output.with_name(f".{self.output.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines[name] for name in self.names if name in lines)
        os.replace(tmp, self.output)
        for part in self._parts():
            part.unlink(missing_ok=True)


def _records(path: Path):
    """(record, line) of each complete line of a JSONL file: a last line without its newline was cut short by a
    kill (a record can be whole JSON and still cut: its newline not yet written) and is not taken."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    return
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("image"), str):
                    yield record, line
    except FileNotFoundError:
        return


def _complete_records(path: Path) -> set[str]:
    return {record["image"] for record, _ in _records(path)}


def _keep_complete_lines(path: Path) -> None:
    """Cut a part file back to its last complete line (a kill mid-write leaves half a line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)


@torch.inference_mode()
def predict_to_jsonl(model, samples: list, transform, output, top_k: int = 5, classes: ClassNames | None = None,
                     batch_size: int = 64, workers: int = 0, device="cpu", root=None, progress: bool = True,
                     ctx: DistContext | None = None) -> dict:  # fmt: skip
    """Top-k records for every image of `samples` [(path, label)] as JSON lines in `output`, in sample order, each
    image once across the processes of `ctx`, resumable (`PredictionsFile`). Labels are the model's output indices."""
    ctx = ctx or DistContext()
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
    sink = PredictionsFile(output, samples, classes or ClassNames(0), top_k, ctx, resume=True, root=root)
    todo = sink.todo()
    loader = DataLoader(EvalDataset([samples[i] for i in todo], transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate)  # fmt: skip
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * ctx.world_size, desc="predict", unit="img", dynamic_ncols=True)
    with sink:
        for batch in loader:
            errors = {todo[i]: message for i, message in zip(batch["bad_indices"], batch["bad"])}
            probabilities = None
            if batch["images"] is not None:
                probabilities = model(batch["images"].to(device)).float().softmax(dim=1)
                if sink.classes.count == 0:
                    sink.classes = ClassNames(probabilities.shape[1])
            sink.write([todo[i] for i in batch["indices"]], probabilities, errors)
            if bar is not None:
                bar.update((len(batch["indices"]) + len(errors)) * ctx.world_size)
    if bar is not None:
        bar.close()
    mine = len(range(ctx.rank, len(samples), ctx.world_size))
    return {"images": len(samples), "written": sink.written, "skipped_as_done": mine - len(todo)}


def run_predict(config: PredictConfig) -> list[dict] | dict:
    """`vitzoo predict`: the records of `config.images` (a list, one per image), or with `config.data` every image of
    a set written to `config.output` (returns {"images", "written", "skipped_as_done", "output"})."""
    from dataclasses import replace

    from .evaluate import labelled_samples
    from .factory import load_model_from

    config.check()
    if config.threads:
        torch.set_num_threads(config.threads)
    loaded = load_model_from(config)
    classes = loaded.class_names(config.class_names)
    transform = loaded.transform(config.protocol)
    if not config.data:
        runner = loaded.runner(config, config.protocol)
        return predict(runner, config.images, transform, config.top_k, config.device, classes=classes)
    with distributed(config.device) as ctx:
        device = ctx.device(config.device)
        samples = labelled_samples(config.data, config.root, classes)
        runner = loaded.runner(replace(config, device=device), config.protocol)
        result = predict_to_jsonl(
            runner, samples, transform, config.output, config.top_k, classes, config.batch_size, config.workers,
            device, root=image_root(config.data, config.root), progress=config.progress, ctx=ctx,
        )  # fmt: skip
    return {**result, "output": str(config.output)}
