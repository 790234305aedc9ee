"""`vitzoo export`: a model with its weights as a file another runtime loads (`run_export`).

    run_export(ExportConfig(model="DeiT_small_patch16_224", weights="paddleclas", out="deit_s.onnx"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ExportConfig


@dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    precision: str
    inputs: str  # what the file takes and gives, for people
    max_abs_diff: float | None  # the exported file in its runtime against eager fp32, on random images

    def __str__(self) -> str:
        text = f"wrote {self.path} ({self.inputs})"
        if self.max_abs_diff is not None:
            text += f"\nonnxruntime vs eager: max |logit difference| {self.max_abs_diff:.3g}"
        return text


def run_export(config: ExportConfig) -> ExportResult:
    """Export the model `config` names (a name with weights, or a run folder) to `config.out`."""
    from .factory import load_model_from
    from .infer.onnx import export_onnx, onnx_max_diff

    config.check()
    loaded = load_model_from(config, img_size=config.img_size)
    model = loaded.model.eval()
    path = export_onnx(model, Path(config.out), opset=config.opset)
    size = model.cfg.img_size
    inputs = (f"ONNX opset {config.opset}, input 'images' [batch, 3, {size}, {size}], output 'logits' "
              f"[batch, {model.num_classes}]")  # fmt: skip
    diff = onnx_max_diff(model, path) if config.check_output else None
    return ExportResult(str(path), config.format, config.precision, inputs, diff)
