"""The CPU figures of issue 5, measured in one run: writes benchmarks/cpu.json (bench records) and cpu.md.

    python benchmarks/cpu.py --threads 2 --out benchmarks

Sections, each vitzoo against timm's equivalent holding the same weights, timed alternately in this process:
1. fp32 eager, batch 1/4/8: DeiT_tiny, DeiT_small, ViT_base_patch16_224, DeiT_small_distilled (timm fp32 eager);
2. the best CPU path, bf16 weights + torch.compile (frozen weights, oneDNN), batch 1 and 8, DeiT_small and
   ViT_base_patch16_224, against timm's fp32 eager, with the logits' cosine to fp32 on real photographs;
3. onnxruntime fp32 beside eager, batch 1/4/8, same models, against timm's fp32 eager;
4. the large models' fp32 batch-8 rate against a large fp32 matrix product measured in the same run.
Each section is a `vitzoo bench` call; the equivalent command lines are written into cpu.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from vitzoo.bench import run_bench  # noqa: E402
from vitzoo.config import BenchConfig  # noqa: E402
from vitzoo.bench.report import to_markdown  # noqa: E402
from vitzoo.bench.latency import device_name  # noqa: E402
from vitzoo.profile import profile  # noqa: E402

EAGER_MODELS = ["DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "ViT_base_patch16_224",
                "DeiT_small_distilled_patch16_224"]  # fmt: skip
FAST_MODELS = ["DeiT_small_patch16_224", "ViT_base_patch16_224"]
LARGE_MODELS = ["ViT_base_patch16_224", "ViT_large_patch16_224"]


def sections(runs: int) -> list[dict]:
    """Each section's bench arguments (the same as `vitzoo bench` flags)."""
    return [
        {"title": "fp32 eager (vitzoo's fast eager path)", "models": EAGER_MODELS, "batch_sizes": [1, 4, 8],
         "backend": "fast", "timm_baseline": "fp32-eager", "runs": runs},
        {"title": "best CPU path: bf16 weights + torch.compile", "models": FAST_MODELS, "batch_sizes": [1, 8],
         "precision": "bf16", "backend": "compile", "timm_baseline": "fp32-eager", "runs": runs},
        {"title": "onnxruntime fp32", "models": FAST_MODELS, "batch_sizes": [1, 4, 8], "backend": "onnxruntime",
         "timm_baseline": "fp32-eager", "runs": runs},
        {"title": "large models, fp32 eager (fast), batch 8", "models": LARGE_MODELS[1:], "batch_sizes": [8],
         "backend": "fast", "timm_baseline": "fp32-eager", "runs": max(3, runs // 2)},
    ]  # fmt: skip


def command(section: dict, threads: int, warmup: int, wait_quiet: float) -> str:
    flags = [f"--model {','.join(section['models'])}", f"--batch-sizes {','.join(map(str, section['batch_sizes']))}"]
    flags += [f"--precision {section.get('precision', 'fp32')}", f"--backend {section.get('backend', 'eager')}"]
    flags += [f"--threads {threads}", "--compare timm"]
    if "timm_baseline" in section:
        flags.append(f"--timm-baseline {section['timm_baseline']}")
    flags += [f"--warmup {warmup}", f"--runs {section['runs']}", f"--wait-quiet {wait_quiet:g}", "--format json"]
    return "vitzoo bench " + " ".join(flags)


def matmul_gflops(n: int = 4096, runs: int = 5) -> float:
    """fp32 rate of an n x n x n matrix product on random data, best of `runs` (the machine's large-matmul rate)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def add_matmul_fraction(records: list[dict], gflops: float) -> None:
    """Model GFLOP per image (all matmuls, attention included) over time, as a fraction of the matmul rate."""
    for r in records:
        if r["precision"] != "fp32" or r["backend"] != "fast" or r["batch_size"] != 8 or r["throughput"]:
            continue
        if r["model"] not in LARGE_MODELS:
            continue
        flop = 2 * profile(r["model"]).macs_full * r["batch_size"]
        r["matmul_gflops"] = round(gflops, 1)
        r["fraction_of_matmul_rate"] = round(flop / (r["ms_median"] / 1000) / 1e9 / gflops, 4)
        r["timm_fraction_of_matmul_rate"] = round(flop / (r["timm_ms_median"] / 1000) / 1e9 / gflops, 4)


def targets(records: list[dict]) -> list[str]:
    """The issue's targets, read off the records: met or missed."""

    def find(model, precision, backend, bs):
        return next((r for r in records if (r["model"], r["precision"], r["backend"], r["batch_size"]) ==
                     (model, precision, backend, bs) and not r["throughput"]), None)  # fmt: skip

    rows = ["| target | model | batch | figure | bound | met |", "|---|---|---|---|---|---|"]

    def row(what, model, bs, value, bound, ok):
        rows.append(f"| {what} | {model} | {bs} | {value} | {bound} | {'met' if ok else 'MISSED'} |")

    for model in EAGER_MODELS:
        for bs in (1, 4, 8):
            if r := find(model, "fp32", "fast", bs):
                row("fp32 eager vitzoo/timm", model, bs, f"{r['ratio']:.3f}", "<= 1.00", r["ratio"] <= 1.0)
    for model in FAST_MODELS:
        for bs in (1, 8):
            if r := find(model, "bf16", "compile", bs):
                ok = r["ratio"] <= 0.55 and r["cosine_vs_fp32_eager"] >= 0.999
                row("best path / timm fp32 eager (cosine)", model, bs,
                    f"{r['ratio']:.3f} ({r['cosine_vs_fp32_eager']:.5f})", "<= 0.55 (>= 0.999)", ok)  # fmt: skip
        if r := find(model, "fp32", "onnxruntime", 8):
            row("onnxruntime fp32 / timm fp32 eager", model, 8, f"{r['ratio']:.3f}", "<= 1.00", r["ratio"] <= 1.0)
    for r in records:
        if "fraction_of_matmul_rate" in r:
            value = f"{r['fraction_of_matmul_rate']:.1%} (timm {r['timm_fraction_of_matmul_rate']:.1%})"
            row("fp32 rate / matmul rate", r["model"], 8, value, ">= 85%", r["fraction_of_matmul_rate"] >= 0.85)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder for cpu.json and cpu.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="seconds to wait, before each timed round, for other processes to leave the CPU idle")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started, load_before = datetime.datetime.now(), load_average()
    import onnxruntime
    import timm

    gflops_before = matmul_gflops()
    records, commands = [], []
    for section in sections(args.runs):
        print(f"cpu.py: {section['title']}", file=sys.stderr, flush=True)
        kwargs = {k: v for k, v in section.items() if k != "title"}
        config = BenchConfig(**kwargs, threads=args.threads, warmup=args.warmup, compare=["timm"],
                             wait_quiet=args.wait_quiet)  # fmt: skip
        records += run_bench(config, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        commands.append(f"# {section['title']}\n{command(section, args.threads, args.warmup, args.wait_quiet)}")
    gflops_after = matmul_gflops()
    gflops = max(gflops_before, gflops_after)
    add_matmul_fraction(records, gflops)
    minutes = (datetime.datetime.now() - started).total_seconds() / 60
    contended = sum(r.get("contended_runs", 0) for r in records)
    rounds = sum(r["runs"] for r in records)

    out = Path(args.out)
    (out / "cpu.json").write_text(json.dumps(records, indent=2) + "\n")
    lines = [
        "# vitzoo on this CPU: the figures of issue 5",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} in one run of {minutes:.0f} minutes by `python benchmarks/cpu.py "
        f"--threads {args.threads} --warmup {args.warmup} --runs {args.runs} --wait-quiet {args.wait_quiet:g}`.",
        f"Machine: {device_name('cpu')} (lscpu: {platform.machine()}, {torch.get_num_threads()} of "
        f"{torch.multiprocessing.cpu_count()} cores used). torch {torch.__version__}, timm {timm.__version__}, "
        f"onnxruntime {onnxruntime.__version__}.",
        f"Load average (1/5/15 min) at the start {load_before}, at the end {load_average()}. The machine is shared "
        "with another worker training models now and then: two threads contending with it for two cores slow a "
        "forward many times over. Each timed round (one vitzoo and one timm forward, alternating) waited for the "
        f"CPU to be idle (up to {args.wait_quiet:g} s); {contended} of {rounds} rounds began while it was not.",
        f"Large fp32 matrix product (4096^3, best of 5): {gflops_before:.0f} GFLOP/s before the sections, "
        f"{gflops_after:.0f} after; the rate used below is the higher, {gflops:.0f} GFLOP/s.",
        "",
        "## Targets",
        "",
        *targets(records),
        "",
        "## Figures",
        "",
        to_markdown(records),
        "## Commands (one `vitzoo bench` per section; cpu.py runs them in one process)",
        "",
        "```",
        *commands,
        "```",
        "",
    ]
    (out / "cpu.md").write_text("\n".join(lines))
    print(f"cpu.py: wrote {out / 'cpu.json'} and {out / 'cpu.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
