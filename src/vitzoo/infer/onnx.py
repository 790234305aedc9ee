"""ONNX export with a dynamic batch axis, and an onnxruntime session called like a model.

torch's dynamo exporter writes `F.scaled_dot_product_attention` out as MatMul/Softmax/MatMul at opsets 18-22
(the default, 18, runs on any current runtime) and as ONNX's own Attention operator at opset 23, which recent
onnxruntime runs fused; both measured alike on CPU. vitzoo models are exported through their trimmed forward
(`TrimmedLogits`): the last block computes only the prefix tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..model import VisionTransformer
from .fastpath import TrimmedLogits
from .paths import image_shape
from .quiet import stdout_to_stderr

DEFAULT_OPSET = 18
ONNX_FILE_LIMIT = 1_900_000_000  # bytes of weights one .onnx file takes: protobuf refuses messages over 2 GiB


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET, batch: int | None = None) -> Path:
    """Write `model` (eval mode, its current dtype and device) to `path` as ONNX: input "images" [batch, C, H, W],
    output "logits" [batch, classes], the batch axis dynamic (or fixed at `batch`). The exporter's messages go to
    stderr."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    param = next(model.parameters())
    # traced at batch 2: the exporter would take a batch of 1 for a constant, not the dynamic axis
    example = torch.randn(batch or 2, *image_shape(model), device=param.device, dtype=param.dtype)
    exported = TrimmedLogits(model) if isinstance(model, VisionTransformer) else model
    # one file, unless the weights pass protobuf's 2 GB limit (ViT-L is 1.2 GB in fp32): then a .onnx.data beside it
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with stdout_to_stderr():
        torch.onnx.export(
            exported, (example,), str(path), dynamo=True, opset_version=opset, input_names=["images"],
            output_names=["logits"], dynamic_shapes=None if batch else ({0: torch.export.Dim("batch")},), verbose=False,
            external_data=weight_bytes > ONNX_FILE_LIMIT,
        )  # fmt: skip
    return path


class OrtRunner:
    """An onnxruntime session over an exported model: `runner(images) -> logits`, torch tensors in and out.

    On CPU, `threads` sets onnxruntime's intra-op threads (default: torch's thread count, for a like-for-like
    comparison). On CUDA (onnxruntime-gpu), inputs and outputs stay on the GPU through I/O binding.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        import onnxruntime as ort

        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDA provider here: install onnxruntime-gpu")
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return self._run_cuda(images)
        out = self.session.run([self.output_name], {self.input_name: images.detach().cpu().numpy()})[0]
        return torch.from_numpy(out)

    def _run_cuda(self, images: torch.Tensor) -> torch.Tensor:
        """Input and output bound to CUDA memory by pointer: no host round trip."""
        import numpy as np

        images = images.to(self.device, torch.float32).contiguous()
        logits = torch.empty(images.shape[0], self.session.get_outputs()[0].shape[1], device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(self.input_name, "cuda", index, np.float32, tuple(images.shape), images.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, tuple(logits.shape), logits.data_ptr())
        self.session.run_with_iobinding(binding)
        return logits


@torch.inference_mode()
def onnx_max_diff(model: nn.Module, path: str | Path) -> float:
    """Largest |onnxruntime - eager| logit difference on random images (fp32), at a batch size the export never saw."""
    images = torch.randn(3, *image_shape(model), generator=torch.Generator().manual_seed(0))
    expected = model.eval()(images.to(next(model.parameters()).device)).float().cpu()
    return (OrtRunner(path)(images) - expected).abs().max().item()
