"""The seed's speed table on an H200, and large-batch throughput, each against timm in the same run (issue 7).

One prepared script for one device run of a few minutes. It installs nothing: the machine's torch and timm, and
vitzoo from this checkout's src/. It writes $OUT/h200.json (records of `vitzoo bench --format json`) and
$OUT/h200.md (the table, the command, the date, the GPU), rewritten after every model so a cut-short run keeps what
it measured.

    python benchmarks/h200.py                    # on the GPU machine: all 15 models, writes to $OUT
    python benchmarks/h200.py --dry-run --out D  # anywhere, on CPU: DeiT_tiny only, tiny batches, one run

Per model: fp32 at batch 1/4/8 (no TF32; small batches replayed as CUDA graphs, for timm too) beside the seed's V100
figures; bf16 weights at the same batches; bf16 large-batch images/s (eager: big batches are not launch-bound). Then
torch.compile (frozen weights, CUDA graphs) for the models in --compile-models, in bf16, against timm's bf16 CUDA
graphs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from vitzoo.bench import run_bench  # noqa: E402
from vitzoo.config import BenchConfig  # noqa: E402
from vitzoo.bench.report import to_markdown  # noqa: E402
from vitzoo.specs import list_models  # noqa: E402

# large-batch sizes for the throughput figure: enough to fill the GPU, well inside its memory in bf16
THROUGHPUT_BATCH = {"tiny": 1024, "small": 1024, "base": 512, "large": 256}
TARGETS = """Targets (issue 7): ViT_base_patch16_224 bf16 batch 1 <= 0.6 ms; fp32 batch 1/4/8 faster than the seed's
V100 for every model; bf16 large batch: ViT_base_patch16_224 >= 10,000, DeiT_tiny >= 60,000, ViT_large_patch16_384
>= 1,200 images/s; vitzoo's throughput >= 1.1 x timm's for the base models."""


def throughput_batch(name: str) -> int:
    size = next(s for s in THROUGHPUT_BATCH if s in name.lower())
    batch = THROUGHPUT_BATCH[size]
    if "patch16_384" in name:  # 3x the tokens of 224 px
        batch //= 4
    return batch


def matmul_tflops(dtype: torch.dtype, device: str, n: int) -> float:
    """The rate of one large matrix product on random data: the ceiling the figures are read against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    runs = 10 if device.startswith("cuda") else 2
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(runs):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e12


def gpu_line() -> str:
    try:
        query = "name,driver_version,memory.total,clocks.max.sm"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi unavailable ({e.__class__.__name__})"


def plan(args) -> list[tuple[str, dict]]:
    """(model, bench keyword arguments) for every section, in the order they run."""
    small_backend = "cudagraph" if args.device.startswith("cuda") else "fast"
    common = {"device": args.device, "warmup": args.warmup, "runs": args.runs, "compare": ["timm"]}
    steps = []
    for name in args.models:
        steps.append((name, {**common, "batch_sizes": args.batch_sizes, "precision": "fp32", "backend": small_backend}))
        steps.append((name, {**common, "batch_sizes": args.batch_sizes, "precision": "bf16", "backend": small_backend}))
        big = args.throughput_batch or throughput_batch(name)
        steps.append((name, {**common, "batch_sizes": [], "precision": "bf16", "backend": "eager", "throughput": True,
                             "throughput_batch": big}))  # fmt: skip
    for name in args.compile_models:
        steps.append((name, {**common, "batch_sizes": args.batch_sizes, "precision": "bf16", "backend": "compile",
                             "timm_baseline": f"bf16-{small_backend}"}))  # fmt: skip
    return steps


def write(out: Path, records: list[dict], header: list[str], errors: list[str]) -> None:
    (out / "h200.json").write_text(json.dumps(records, indent=2) + "\n")
    body = "\n".join(header) + "\n\n" + (to_markdown(records) if records else "(no records)\n")
    if errors:
        body += "\nFailed sections:\n" + "\n".join(f"- {e}" for e in errors) + "\n"
    (out / "h200.md").write_text(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, DeiT_tiny only, batch 1-2, one run")
    parser.add_argument("--models", default=None, help="comma-separated (default: all 15)")
    parser.add_argument("--compile-models", default="ViT_base_patch16_224", help="comma-separated; '' for none")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--throughput-batch", type=int, help="one large batch for every model")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("no output folder: pass --out or set $OUT")
    args.device = "cpu" if args.dry_run else "cuda"
    args.batch_sizes = (1, 2) if args.dry_run else (1, 4, 8)
    if args.dry_run:
        args.models, args.compile_models = "DeiT_tiny_patch16_224", ""
        args.warmup, args.runs, args.throughput_batch = 1, 1, 2
    args.models = args.models.split(",") if args.models else list_models()
    args.compile_models = [m for m in args.compile_models.split(",") if m]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    started = datetime.datetime.now(datetime.timezone.utc)
    matmul_n = 512 if args.dry_run else 8192
    bf16 = matmul_tflops(torch.bfloat16, args.device, matmul_n)
    torch.set_float32_matmul_precision("highest")
    fp32 = matmul_tflops(torch.float32, args.device, matmul_n)
    import timm

    header = [
        "# vitzoo on " + ("CPU (dry run)" if args.dry_run else "H200"),
        "",
        f"Command: `python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}`",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. GPU: {gpu_line() if not args.dry_run else '-'}.",
        f"torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}.",
        f"Matrix product {matmul_n}^3 on random data: bf16 {bf16:.3g} TFLOP/s, fp32 (no TF32) {fp32:.3g} TFLOP/s.",
        "",
        TARGETS,
    ]
    records, errors = [], []
    for name, kwargs in plan(args):
        section = f"{name} {kwargs['precision']} {kwargs['backend']}"
        print(f"h200: {section}", flush=True)
        try:
            records += run_bench(BenchConfig(models=[name], **kwargs))
        except Exception as e:  # one failing section must not cost the others
            traceback.print_exc()
            errors.append(f"{section}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        write(out, records, header, errors)
    print(f"h200: {len(records)} records, {len(errors)} failed sections, {time.time() - started.timestamp():.0f} s")
    return 1 if errors and not records else 0


if __name__ == "__main__":
    sys.exit(main())
