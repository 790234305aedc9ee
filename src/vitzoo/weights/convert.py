"""Convert any supported checkpoint to a canonical .safetensors file (or back to .pdparams for Paddle users)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from .common import WeightsError
from .load import LoadReport

FORMATS = {".safetensors": "safetensors", ".pdparams": "pdparams"}


def save_atomic(write, dst: Path) -> None:
    """Write through `write(tmp_path)` to a temp file beside `dst`, then rename: `dst` is never half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert(src, dst, model, fmt: str | None = None, pos_embed_resample: str = "timm") -> LoadReport:
    """Load `src` into `model` (a vitzoo model of the checkpoint's architecture, at the size to write; checked
    exactly as `load_weights` does) and write its state dict to `dst`."""
    from .load import load_weights

    dst = Path(dst)
    fmt = fmt or FORMATS.get(dst.suffix.lower())
    if fmt not in FORMATS.values():
        raise WeightsError(f"{dst}: cannot tell the output format; use a .safetensors or .pdparams name, or --format")
    model.load_report = load_weights(model, src, pos_embed_resample)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        metadata = {
            "format": "pt", "vitzoo_model": getattr(model, "model_name", "custom"),
            "img_size": str(model.cfg.img_size), "vitzoo_arch": json.dumps(asdict(model.cfg)),
        }  # fmt: skip
        save_atomic(lambda tmp: save_file(state, str(tmp), metadata=metadata), dst)
    else:
        from .pdparams import write_pdparams

        write_pdparams(state, dst)
    return model.load_report
