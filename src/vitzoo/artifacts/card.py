"""What an exported model carries for whoever feeds it: the sidecar `OUT.json` beside the file, one schema.

    {"format": "vitzoo-artifact", "version": 1, "vitzoo": "0.1.0",
     "runtime": "onnx" | "openvino" | "pt2" | "executorch", "precision": "fp32" | "fp16" | "bf16" | "int8",
     "file": "deit.onnx", "files": {"deit.onnx": {"bytes": ..., "sha256": ...}, ...},
     "model": "DeiT_tiny_patch16_224" | "custom", "source": where the weights came from,
     "num_classes": C, "classes": [C names in output order], "wnids": [ImageNet's WordNet ids] or null,
     "input": {"name": "images", "shape": [-1 or N, 3, H, W], "dtype": "float32", "layout": "NCHW"},
     "output": {"name": "logits", "shape": [-1 or N, C], "dtype": "float32"},
     "preprocessing": {"resize_short", "crop", "interpolation", "mean", "std", "decoder", "rounding"},
     "calibration": what int8's ranges were calibrated on (int8 only)}

`preprocessing` is vitzoo's `EvalTransform`: decode ("cv2": OpenCV's imdecode, as PaddleClas; "pil": Pillow), resize
the short side to `resize_short` ("cv2_bilinear": OpenCV INTER_LINEAR; "pil_bicubic": Pillow BICUBIC; sizes rounded
half to even with "paddle" rounding, the long side truncated with "torchvision"'s), center crop `crop` (offset
floored: "paddle"; rounded: "torchvision"), then (pixel * float32(1/255) - mean) / std per RGB channel, HWC -> CHW.
The same record goes into the file's own metadata where the format has a place for it (ONNX `metadata_props`,
OpenVINO `rt_info`, the AOTInductor package's metadata) under the key "vitzoo".
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

CARD_FORMAT = "vitzoo-artifact"
CARD_VERSION = 1
RUNTIMES = ("onnx", "openvino", "pt2", "executorch")
SUFFIXES = {".onnx": "onnx", ".xml": "openvino", ".pt2": "pt2", ".pte": "executorch"}
METADATA_KEY = "vitzoo"


class ArtifactError(ValueError):
    """An exported model that cannot be used as it is: names the file and the problem."""


def card_path(path: str | Path) -> Path:
    """The sidecar of an exported file: `deit.onnx` -> `deit.onnx.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_digest(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


@dataclass
class ArtifactCard:
    runtime: str
    precision: str
    file: str  # the main file's name; the others (OpenVINO's .bin) lie beside it
    model: str
    source: str
    classes: list[str]
    input_shape: list[int]  # [-1 or N, 3, H, W]
    preprocessing: dict
    files: dict = field(default_factory=dict)  # name -> {"bytes", "sha256"}
    calibration: str | None = None
    wnids: list[str] | None = None
    vitzoo: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        return self.input_shape[-1]

    @property
    def batch(self) -> int | None:
        """The one batch size the file takes, or None for any."""
        return None if self.input_shape[0] < 0 else self.input_shape[0]

    def record(self) -> dict:
        fields = asdict(self)
        batch = self.input_shape[0]
        return {
            "format": CARD_FORMAT, "version": CARD_VERSION, "vitzoo": self.vitzoo or _version(),
            "runtime": self.runtime, "precision": self.precision, "file": self.file, "files": self.files,
            "model": self.model, "source": self.source, "num_classes": self.num_classes, "classes": self.classes,
            "wnids": self.wnids, "input": {"name": "images", "shape": self.input_shape, "dtype": "float32", "layout": "NCHW"},
            "output": {"name": "logits", "shape": [batch, self.num_classes], "dtype": "float32"},
            "preprocessing": fields["preprocessing"], "calibration": self.calibration,
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.record(), indent=2) + "\n"

    @classmethod
    def from_record(cls, record, where: str) -> "ArtifactCard":
        """The card a record describes; anything missing, of another version or inconsistent is refused naming
        `where` (the sidecar or the file whose metadata it is)."""
        if not isinstance(record, dict) or record.get("format") != CARD_FORMAT:
            raise ArtifactError(f"{where}: not a vitzoo artifact's description (format {CARD_FORMAT!r} expected)")
        if record.get("version") != CARD_VERSION:
            raise ArtifactError(
                f"{where}: written by vitzoo {record.get('vitzoo', '?')} in description version "
                f"{record.get('version')!r}; this vitzoo ({_version()}) reads version {CARD_VERSION}: export it again"
            )
        try:
            shape = [int(n) for n in record["input"]["shape"]]
            card = cls(
                runtime=str(record["runtime"]), precision=str(record["precision"]), file=str(record["file"]),
                model=str(record["model"]), source=str(record.get("source", "")),
                classes=[str(c) for c in record["classes"]], input_shape=shape,
                preprocessing=dict(record["preprocessing"]), files=dict(record.get("files") or {}),
                calibration=record.get("calibration"), vitzoo=str(record.get("vitzoo", "")),
                wnids=[str(w) for w in record["wnids"]] if record.get("wnids") is not None else None,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: incomplete artifact description ({type(e).__name__}: {e})") from None
        if card.runtime not in RUNTIMES:
            raise ArtifactError(f"{where}: unknown runtime {card.runtime!r}")
        if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] <= 0:
            raise ArtifactError(f"{where}: input shape {shape} is not [batch, 3, size, size]")
        if record.get("num_classes", card.num_classes) != card.num_classes or not card.classes:
            raise ArtifactError(f"{where}: {card.num_classes} class names for {record.get('num_classes')} classes")
        if card.wnids is not None and len(card.wnids) != card.num_classes:
            raise ArtifactError(f"{where}: {len(card.wnids)} WordNet ids for {card.num_classes} classes")
        card.transform()  # refuses preprocessing it cannot describe
        return card

    def transform(self):
        from ..data.transforms import EvalTransform

        fields = dict(self.preprocessing)
        try:
            fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
            transform = EvalTransform(**fields)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{self.file}: bad preprocessing in its description: {e}") from None
        if transform.crop != self.img_size:
            raise ArtifactError(f"{self.file}: preprocessing crops {transform.crop} for an input of {self.img_size}")
        return transform


def _version() -> str:
    from .. import __version__

    return __version__


def read_card(path: str | Path, verify_files: bool = True) -> ArtifactCard:
    """The sidecar of exported file `path`, checked against the files beside it (their sizes, and with `verify_files`
    their SHA-256: a truncated or replaced .bin/.pte/.pt2 is refused before a runtime reads it)."""
    path = Path(path)
    sidecar = card_path(path)
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no {sidecar.name} beside it (vitzoo export writes one: class names, input "
                            "size, preprocessing)") from None  # fmt: skip
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{sidecar}: unreadable: {e}") from None
    card = ArtifactCard.from_record(record, str(sidecar))
    if card.file != path.name:
        raise ArtifactError(f"{sidecar}: describes {card.file}, not {path.name}")
    if SUFFIXES.get(path.suffix.lower()) != card.runtime:
        raise ArtifactError(f"{sidecar}: describes a {card.runtime} file, but {path.name} is named as another")
    for name, expected in card.files.items():
        file = path.parent / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing (part of {path.name})")
        size = file.stat().st_size
        if size != expected.get("bytes"):
            raise ArtifactError(f"{file}: {size} bytes, {expected.get('bytes')} exported (truncated or replaced)")
        if verify_files and file_digest(file)["sha256"] != expected.get("sha256"):
            raise ArtifactError(f"{file}: its SHA-256 differs from the exported file's (changed since export)")
    return card


def write_card(card: ArtifactCard, path: Path) -> Path:
    sidecar = card_path(path)
    sidecar.write_text(card.to_json(), encoding="utf-8")
    return sidecar


def replace_into(staged: list[Path], folder: Path) -> None:
    """Move finished files from a staging folder (on the same filesystem) into `folder`, each by an atomic rename:
    no reader ever sees a half-written file under the output name. The sidecar goes last, so a file without its
    description is never taken for a complete export."""
    for file in sorted(staged, key=lambda p: p.name.endswith(".json")):
        os.replace(file, folder / file.name)
