"""Parameters and MACs of a model, counted from the model itself in two conventions.

- "seed": PaddleClas's `paddle.flops` (Paddle 2.2), which the seed's tables used: it hooks leaf layers only, so MACs
  are those of Linear (in_features x output elements) and Conv2d (output elements x (Cin*k*k + 1 for the bias)), the
  attention matmuls count 0, and parameters are those of leaf layers (pos_embed and the prefix tokens left out).
- "full": every parameter, and the MACs of every matmul and convolution that runs, attention included, as counted by
  torch's FlopCounterMode (FLOPs / 2). This is the figure timm and fvcore users compare against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .factory import create_model


@dataclass(frozen=True)
class Profile:
    model: str
    img_size: int
    params_seed: int  # leaf-layer parameters (paddle.flops)
    macs_seed: int  # Linear + Conv2d MACs per image (paddle.flops' "FLOPs")
    params_full: int  # all parameters
    macs_full: int  # all matmul/conv MACs per image, attention matmuls included

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.model} @ {self.img_size}px\n"
            f"  seed convention (paddle.flops: leaf layers, Linear+Conv): "
            f"{self.params_seed / 1e6:.2f} M params, {self.macs_seed / 1e9:.2f} G MACs\n"
            f"  full count (all parameters, attention matmuls included):  "
            f"{self.params_full / 1e6:.2f} M params, {self.macs_full / 1e9:.2f} G MACs ({2 * self.macs_full / 1e9:.2f} GFLOPs)"
        )


def _math_attention():
    """Route SDPA through its math path, whose matmuls FlopCounterMode sees (fused CPU kernels count as 0)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)


def profile(model_or_name: nn.Module | str, img_size: int | None = None) -> Profile:
    """Count parameters and per-image MACs of a model (or of a model built by name, on the meta device: no memory)."""
    if isinstance(model_or_name, str):
        with torch.device("meta"):
            model = create_model(model_or_name, img_size=img_size)
    else:
        model = model_or_name
    cfg = model.cfg
    name = getattr(model, "model_name", type(model).__name__)
    param = next(model.parameters())
    x = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size, device=param.device, dtype=param.dtype)

    seed_macs = 0

    def count(module, inputs, output):
        nonlocal seed_macs
        if isinstance(module, nn.Linear):
            seed_macs += output.numel() * module.in_features
        else:
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            seed_macs += output.numel() * (k + (module.bias is not None))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _math_attention(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Profile(
        model=name,
        img_size=cfg.img_size,
        params_seed=sum(p.numel() for m in leaves for p in m.parameters(recurse=False)),
        macs_seed=seed_macs,
        params_full=sum(p.numel() for p in model.parameters()),
        macs_full=counter.get_total_flops() // 2,
    )
