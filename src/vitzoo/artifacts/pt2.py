"""AOTInductor packages (`.pt2`): the model compiled ahead of time to a shared library in a zip, fp32 and bf16.

Loaded by `torch::inductor::AOTIModelPackageLoader` in C++ (libtorch, no Python) and by
`torch._inductor.aoti_load_package` in Python, neither importing vitzoo. Written with `torch.export.export` (batch
dynamic from 1 to `MAX_BATCH`, or fixed) and `torch._inductor.aoti_compile_and_package`; bf16 packages hold bf16
weights and compute in bf16, taking and giving fp32 like every artifact. The description goes into the package's
metadata (`aot_inductor.metadata`, read back by the loader's `get_metadata()`) under "vitzoo".
"""

from __future__ import annotations

from pathlib import Path

import torch

from .card import METADATA_KEY

PRECISIONS = ("fp32", "bf16")
MAX_BATCH = 256


def export_program(exported, example, dynamic: bool):
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    with torch.no_grad():
        return torch.export.export(exported, (example,), dynamic_shapes=shapes)


def write(exported, example, out: Path, precision: str, calibration, dynamic: bool, metadata: str) -> list[Path]:
    from ..infer.quiet import stdout_to_stderr

    program = export_program(exported, example, dynamic)
    with stdout_to_stderr():
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(out), inductor_configs={"aot_inductor.metadata": {METADATA_KEY: metadata}}
        )
    return [out]


def inspect(path: Path) -> tuple[str | None, None]:
    """The description in the package's metadata; the package states no shapes (export checked them)."""
    return _load(path).get_metadata().get(METADATA_KEY), None


def _load(path: Path):
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as e:  # the loader raises RuntimeError for a bad zip, others for a broken library inside
        raise ValueError(f"{path}: AOTInductor cannot load this package: {str(e).splitlines()[0][:200]}") from None


def runner(path: Path, card, threads: int | None):
    package = _load(path)

    def run(images: torch.Tensor) -> torch.Tensor:
        return package(images.float().contiguous())

    return run
