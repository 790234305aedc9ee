"""Exported models: files a runtime loads with no Python and no vitzoo, and those files used as models again.

    card = export_artifact(loaded, "deit_t.xml", "openvino", "int8", calibration=images)
    artifact = load_artifact("deit_t.xml")          # its class names, preprocessing and runtime
    logits = artifact.runner()(images)

One module per format (`onnx`, `openvino`, `pt2`, `executorch`), each a writer, an `inspect` reading the description
and shapes the file itself states, and a runner in its runtime; `card` is the description every file carries (sidecar
`OUT.json`, and the format's own metadata where it has a place). What each format takes:
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import executorch, onnx, openvino, pt2
from .card import SUFFIXES, ArtifactCard, ArtifactError, card_path, file_digest, read_card, replace_into, write_card

FORMATS = {"onnx": onnx, "openvino": openvino, "pt2": pt2, "executorch": executorch}
SUFFIX_OF = {runtime: suffix for suffix, runtime in SUFFIXES.items()}
EXPORT_PRECISIONS = {name: module.PRECISIONS for name, module in FORMATS.items()}
# what runs each file in a vitzoo command, named as `--backend` names the exported paths
RUNTIME_BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "pt2": "aotinductor", "executorch": "executorch"}
__doc__ += "".join(f"\n- {name} ({SUFFIX_OF[name]}): {', '.join(ps)}" for name, ps in EXPORT_PRECISIONS.items())


class ExportedLogits(nn.Module):
    """What every artifact computes: fp32 images [B, 3, H, W] -> fp32 logits, the model inside at `dtype`, through its
    trimmed forward (the last block computes only the prefix tokens the head reads)."""

    def __init__(self, model, dtype: torch.dtype = torch.float32):
        from ..infer.fastpath import TrimmedLogits

        super().__init__()
        self.net = TrimmedLogits(model.to(dtype).eval())
        self.dtype = dtype

    @property
    def patch_embed(self):  # what `vitzoo.infer.paths.image_shape` reads
        return self.net.model.patch_embed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(self.dtype)).float()


def unavailable_reason(runtime: str, precision: str) -> str | None:
    """None if this machine can write and run `runtime` files at `precision`, else one line why not."""
    from importlib.util import find_spec

    if precision not in EXPORT_PRECISIONS[runtime]:
        return (f"{runtime} files are exported at {', '.join(EXPORT_PRECISIONS[runtime])}, not {precision} "
                f"({precision} exports: {', '.join(r for r, ps in EXPORT_PRECISIONS.items() if precision in ps)})")  # fmt: skip
    needs = {"onnx": ["onnx", "onnxruntime"], "openvino": ["openvino"], "executorch": ["executorch"], "pt2": []}[runtime]
    if runtime == "openvino" and precision == "int8":
        needs.append("nncf")
    missing = [name for name in needs if find_spec(name) is None]
    if missing:
        return f"{runtime} {precision} needs {', '.join(missing)} (pip install {' '.join(missing)})"
    if precision == "bf16":
        from ..infer.paths import cpu_has_bf16

        if not cpu_has_bf16():
            return "bf16 on this CPU: it has no AVX512-BF16 or AMX, so bf16 would be emulated (slower than fp32)"
    return None


def runtime_of(path: str | Path, runtime: str | None = None) -> str:
    """The format an output name asks for (its suffix), checked against `runtime` where one is named."""
    path = Path(path)
    by_suffix = SUFFIXES.get(path.suffix.lower())
    if runtime is None:
        if by_suffix is None:
            raise ArtifactError(f"{path}: name the file .onnx, .xml (OpenVINO), .pt2 (AOTInductor) or .pte "
                                "(ExecuTorch), or give --format")  # fmt: skip
        return by_suffix
    if by_suffix != runtime:
        raise ArtifactError(f"{path}: a {runtime} file is named *{SUFFIX_OF[runtime]}")
    return runtime


@torch.no_grad()
def export_artifact(
    loaded,
    out: str | Path,
    runtime: str | None = None,
    precision: str = "fp32",
    calibration: torch.Tensor | None = None,
    calibration_source: str | None = None,
    batch: int | None = None,
    check_images: torch.Tensor | None = None,
) -> tuple[ArtifactCard, dict]:
    """Write `loaded` (a `vitzoo.factory.LoadedModel`) as a `runtime` file at `out` with its sidecar `out.json`.

    int8 is calibrated on `calibration` (preprocessed images [N, 3, H, W]); `batch` None makes the batch dynamic
    (ExecuTorch: batch 1). Everything is written into a staging folder beside `out`, loaded back in its runtime and
    compared with fp32 eager on `check_images`; only then renamed into place. Returns the card and the comparison
    ({"max_abs_diff", "cosine", "top1_agreement", "images"}).
    """
    import copy

    from ..infer.fidelity import logits_cosine

    out = Path(out)
    runtime = runtime_of(out, runtime)
    reason = unavailable_reason(runtime, precision)
    if reason:
        raise ArtifactError(reason)
    if precision == "int8" and calibration is None:
        raise ArtifactError("int8 needs calibration images (--calibration FOLDER|LIST)")
    module = FORMATS[runtime]
    if runtime == "executorch" and batch is None:
        batch = executorch.DEFAULT_BATCH
    model = loaded.model.eval()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # fp16/int8: converted by the format's own tools
    exported = ExportedLogits(copy.deepcopy(model), dtype)
    transform = loaded.transform()
    size = model.cfg.img_size
    example = torch.randn(batch or 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    classes = loaded.class_names()
    card = ArtifactCard(
        runtime=runtime, precision=precision, file=out.name, model=loaded.name, source=loaded.source,
        classes=list(classes.labels) if classes.labels else [str(i) for i in range(classes.count)],
        wnids=list(classes.wnids) if classes.wnids else None, input_shape=[batch or -1, 3, size, size],
        preprocessing=_fields(transform), calibration=calibration_source if precision == "int8" else None,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        calibration_array = calibration.float().numpy() if calibration is not None else None
        files = module.write(exported, example, staging / out.name, precision, calibration_array, batch is None,
                             json.dumps(card.record()))  # fmt: skip
        card.files = {f.name: file_digest(f) for f in files}
        files.append(write_card(card, staging / out.name))
        artifact = load_artifact(staging / out.name)
        images = check_images if check_images is not None else example
        expected = model.float()(images)
        got = artifact.runner()(images)
        if got.shape != expected.shape or not torch.isfinite(got).all():
            raise ArtifactError(f"{out}: the exported file answered {tuple(got.shape)} "
                                f"{'non-finite ' if not torch.isfinite(got).all() else ''}logits for "
                                f"{tuple(expected.shape)}; nothing written")  # fmt: skip
        check = {
            "images": len(images), "max_abs_diff": (got - expected).abs().max().item(),
            "cosine": logits_cosine(got, expected),
            "top1_agreement": (got.argmax(-1) == expected.argmax(-1)).float().mean().item(),
        }  # fmt: skip
        replace_into(files, out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card, check


def _fields(transform) -> dict:
    from dataclasses import asdict

    fields = asdict(transform)
    fields["mean"], fields["std"] = list(fields["mean"]), list(fields["std"])
    return fields


@dataclass(frozen=True)
class ArtifactPath:
    """How an artifact runs, as `vitzoo.infer.Runner` and the records name a path."""

    precision: str
    backend: str
    device: str = "cpu"
    dtype: torch.dtype = torch.float32  # artifacts take fp32 images

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.backend}"

    def fields(self) -> dict:
        return {"precision": self.precision, "backend": self.backend, "device": self.device}


@dataclass
class LoadedArtifact:
    """An exported file as a model: what `vitzoo.factory.load_model` returns for one, with `LoadedModel`'s interface
    (class names, preprocessing, a runner), run in its own runtime: no PyTorch model is built."""

    path: Path
    card: ArtifactCard
    model = None  # no PyTorch model: what needs one (attention maps, training) refuses an artifact

    @property
    def name(self) -> str:
        return self.card.model

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def img_size(self) -> int:
        return self.card.img_size

    @property
    def default_protocol(self) -> str:
        return "artifact"

    @property
    def backend(self) -> str:
        return RUNTIME_BACKEND[self.card.runtime]

    def transform(self, protocol: str | None = None):
        if protocol not in (None, "artifact"):
            raise ArtifactError(f"{self.path}: an exported model takes the preprocessing it was exported with (its "
                                f"{card_path(self.path).name}), not protocol {protocol!r}")  # fmt: skip
        return self.card.transform()

    def class_names(self, names_file: str | Path | None = None):
        from ..factory import read_class_names
        from ..labels import ClassNames

        if names_file is not None:
            return ClassNames.of(self.num_classes, read_class_names(names_file), source=str(names_file))
        if self.card.wnids is not None:
            imagenet = ClassNames.imagenet()
            if list(imagenet.wnids) == self.card.wnids:
                return imagenet
        return ClassNames(self.num_classes, tuple(self.card.classes), None, str(card_path(self.path)))

    def data_set(self, which: str) -> None:
        return None

    def calibration_source(self, calibration):
        raise ArtifactError(f"{self.path}: an exported model is quantized (or not) as it was exported; export an int8 "
                            "file to run int8")  # fmt: skip

    def check_path(self, precision: str | None, backend: str | None, device: str = "cpu") -> ArtifactPath:
        """The artifact's own path; a precision, backend or device it does not run is refused (never converted)."""
        card = self.card
        if precision not in (None, card.precision):
            raise ArtifactError(f"{self.path}: exported at {card.precision}; it runs at that precision only (export "
                                f"another file for {precision})")  # fmt: skip
        if backend not in (None, self.backend):
            raise ArtifactError(f"{self.path}: a {card.runtime} file runs in {self.backend}, not {backend}")
        if torch.device(device).type != "cpu":
            raise ArtifactError(f"{self.path}: exported models run on the CPU here")
        return ArtifactPath(card.precision, self.backend)

    def runner(self, options=None, protocol: str | None = None, workdir=None):
        """A `vitzoo.infer.Runner` over the file in its runtime (`options`: precision/backend/device, checked)."""
        from ..infer.paths import Runner

        if protocol is not None:
            self.transform(protocol)
        precision = getattr(options, "precision", None)
        path = self.check_path(precision, getattr(options, "backend", None), getattr(options, "device", "cpu"))
        threads = getattr(options, "threads", None)
        try:
            fn = FORMATS[self.card.runtime].runner(self.path, self.card, threads)
        except ValueError as e:
            raise ArtifactError(str(e)) from None
        notes = f"exported {self.card.runtime} file, {self.card.precision}"
        if self.card.batch is not None:
            fn, notes = _in_batches_of(self.card.batch, fn), f"{notes}, batch {self.card.batch}"
        return Runner(fn, path, notes)


def _in_batches_of(batch: int, fn):
    """A file of one fixed batch size run on any number of images: in chunks of `batch`, the last one padded with
    copies of its last image whose answers are dropped."""

    def run(images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            short = batch - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
            outputs.append(fn(chunk.contiguous())[: batch - short])
        return torch.cat(outputs)

    return run


def load_artifact(path: str | Path, verify_files: bool = True) -> LoadedArtifact:
    """An exported file and its description, checked against each other: its sidecar (version, files' sizes and
    SHA-256), the description inside the file where the format keeps one, and the file's own input and output
    shapes. Any disagreement is refused in one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such exported model file")
    card = read_card(path, verify_files)
    module = FORMATS[card.runtime]
    try:
        inside, shapes = module.inspect(path)
    except ArtifactError:
        raise
    except Exception as e:  # each runtime has its own exceptions for a file it cannot parse
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ArtifactError(f"{path}: {card.runtime} cannot read it: {reason}") from None
    if inside is not None:
        own = ArtifactCard.from_record(json.loads(inside), f"{path} (its metadata)")
        for field in ("precision", "classes", "input_shape", "model", "preprocessing"):
            if getattr(own, field) != getattr(card, field):
                raise ArtifactError(f"{card_path(path)}: its {field} disagrees with the file's own metadata "
                                    f"({path.name})")  # fmt: skip
    if shapes is not None:
        inputs, outputs = shapes
        expected_in = card.input_shape
        if len(inputs) != 4 or inputs[1:] != expected_in[1:] or (card.batch and inputs[0] != card.batch):
            raise ArtifactError(f"{card_path(path)}: describes input {expected_in}; {path.name} takes {inputs}")
        if not outputs or outputs[-1] != card.num_classes:
            raise ArtifactError(f"{card_path(path)}: {card.num_classes} classes; {path.name} answers {outputs}")
    return LoadedArtifact(path, card)


__all__ = [
    "ArtifactCard", "ArtifactError", "ArtifactPath", "EXPORT_PRECISIONS", "FORMATS", "LoadedArtifact",
    "export_artifact", "load_artifact", "read_card", "unavailable_reason",
]  # fmt: skip
