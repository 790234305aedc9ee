"""How close vitzoo's CPU paths run to this CPU's GEMM ceiling, with OpenVINO beside, and where each path's time goes.

    python benchmarks/ceiling.py [--models DeiT_small_patch16_224,ViT_base_patch16_224] [--batch-sizes 1,8]
        [--threads 2] [--rounds 3] [--runs 10] [--no-breakdown] [--out benchmarks]

For each model and batch size:
- the ceiling: this CPU's best GEMM rate at fp32, bf16 and int8 over 2048^3 and the model's linear shapes at that
  batch (`vitzoo.bench.ceiling.gemm_ceiling`: torch.mm fp32/bf16, oneDNN's quantized linear for int8), measured
  in a process of its own with the same threads, just before the paths are timed;
- each path's ms (every engine in its own process, taking turns on an idle CPU: `vitzoo.bench.engines`; the best of
  the round medians), its effective rate (2 x the model's full MACs x images / time) and that rate's fraction of the
  ceiling at the path's precision, and its cosine / top-1 agreement to fp32 eager on scikit-image's photographs;
- each path's op-class breakdown (gemm, attention, norm, pointwise, copies, other), profiled in a process of its
  own: torch's profiler (Inductor's kernels by name) or OpenVINO's per-node counters.

Paths: vitzoo fp32/bf16 fast and compile, int8 through OpenVINO + NNCF (vitzoo's export) and int8-compile (PT2E x86 +
Inductor: the path added for this benchmark, "new" in the report); OpenVINO on timm's ONNX export at fp32, bf16 and
int8 (NNCF) beside. Random O(1)-activation weights (`lively_init_`); int8 calibrated on scikit-image's photographs
and their mirror images (as benchmarks/cpu_engines.py). Writes ceiling.json, ceiling.md and ceiling.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
MODELS = ["DeiT_small_patch16_224", "ViT_base_patch16_224"]
# engine -> (family, precision, backend); grouped by precision, each group's engines taking turns
ENGINES = {
    "vitzoo fp32-fast": ("vitzoo", "fp32", "fast"),
    "vitzoo fp32-compile": ("vitzoo", "fp32", "compile"),
    "openvino fp32 (timm's ONNX)": ("timm", "fp32", "openvino"),
    "vitzoo bf16-fast": ("vitzoo", "bf16", "fast"),
    "vitzoo bf16-compile": ("vitzoo", "bf16", "compile"),
    "openvino bf16 (timm's ONNX)": ("timm", "bf16", "openvino"),
    "vitzoo int8-openvino": ("vitzoo", "int8", "openvino"),
    "vitzoo int8-compile": ("vitzoo", "int8", "compile"),
    "openvino int8 (timm's ONNX, NNCF)": ("timm", "int8", "openvino"),
}
NEW = {"vitzoo int8-compile"}  # the paths this benchmark's change added ("after"); the rest were there before
PEER = {"bf16": ("openvino bf16 (timm's ONNX)", 0.85), "int8": ("openvino int8 (timm's ONNX, NNCF)", 0.90),
        "fp32": ("openvino fp32 (timm's ONNX)", None)}  # fmt: skip
# (precision, batch, models, bound): the best vitzoo path's fraction of the ceiling (issue 22's targets, AMX host)
FRACTION_TARGETS = [("bf16", 8, MODELS, 0.70), ("int8", 8, MODELS, 0.70), ("fp32", 8, MODELS, 0.90),
                    ("bf16", 1, ["ViT_base_patch16_224"], 0.40)]  # fmt: skip


def say(message: str) -> None:
    print(message, flush=True)


def in_process(*args: str, threads: int) -> dict:
    """`python -m vitzoo.bench.ceiling ARGS` in a fresh process with `threads` threads: its JSON line."""
    import os

    from vitzoo.bench.latency import wait_for_quiet_cpu

    wait_for_quiet_cpu(10)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    code = f"import torch, sys; torch.set_num_threads({threads}); from vitzoo.bench.ceiling import _main; _main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(name: str, args, workdir: Path, log) -> tuple[list[dict], dict]:
    sys.path.insert(0, str(HERE))
    from cpu_engines import calibration_set

    import vitzoo
    from vitzoo.bench import engines
    from vitzoo.bench.ceiling import effective_gflops
    from vitzoo.infer import lively_init_, sample_photos
    from vitzoo.profile import profile

    macs = profile(name).macs_full
    model = lively_init_(vitzoo.create_model(name)).eval()
    photos = sample_photos(name)
    calibration = calibration_set(name)
    common = engines.prepare(workdir, model, photos, calibration)
    with torch.inference_mode():
        reference = model(photos).numpy()
    del model
    ceilings = {bs: in_process("ceiling", name, str(bs), threads=args.threads) for bs in args.batch_sizes}
    for bs, c in ceilings.items():
        say(f"  ceiling {name} bs{bs}: " + ", ".join(f"{p} {v.get('gflops', v)} GFLOP/s" for p, v in c.items()))
    records = []
    for precision in ("fp32", "bf16", "int8"):
        wanted = {e: spec for e, spec in ENGINES.items() if spec[1] == precision and e not in args.skip}
        with engines.running(wanted, common, args.threads, args.batch_sizes, 3, log, say) as (started, skipped):
            for bs in args.batch_sizes:
                timings = engines.time_group(started, bs, args.rounds, args.runs, args.quiet_s)
                ceiling = ceilings[bs].get(precision, {}).get("gflops")
                for engine, t in timings.items():
                    cosine, agree = engines.cosine_and_agreement(started[engine].logits(), reference)
                    rate = effective_gflops(macs, bs, t["ms"])
                    family, _, backend = ENGINES[engine]
                    records.append({"model": name, "batch_size": bs, "engine": engine, "family": family,
                                    "precision": precision, "backend": backend, "new": engine in NEW, **t,
                                    "effective_gflops": round(rate, 1), "ceiling_gflops": ceiling,
                                    "ceiling_fraction": round(rate / ceiling, 3) if ceiling else None,
                                    "cosine_vs_fp32": cosine, "top1_agreement": agree,
                                    "notes": started[engine].ready.get("notes", "")})  # fmt: skip
                    say(f"  {name} bs{bs} {engine}: {t['ms']:.1f} ms, {rate:.0f} GFLOP/s "
                        f"({records[-1]['ceiling_fraction']} of the ceiling), cosine {cosine}")  # fmt: skip
                for engine, reason in skipped.items():
                    records.append({"model": name, "batch_size": bs, "engine": engine, "precision": precision,
                                    "skipped": reason})  # fmt: skip
    if not args.no_breakdown:  # each path built once, in a process of its own, profiled at every batch size
        for engine in dict.fromkeys(r["engine"] for r in records if "skipped" not in r):
            family, precision, backend = ENGINES[engine]
            extra = [common["calibration"]] if precision == "int8" else []
            sizes = ",".join(map(str, args.batch_sizes))
            result = in_process("breakdown", name, sizes, precision, backend, family, *extra, threads=args.threads)
            for r in records:
                if r["engine"] == engine and "skipped" not in r:
                    r["breakdown"] = result.get(str(r["batch_size"]), result)
                    say(f"  breakdown {name} bs{r['batch_size']} {engine}: {r['breakdown'].get('shares', r['breakdown'])}")
    return records, ceilings


def targets(records: list[dict], models, batch_sizes) -> list[dict]:
    out = []

    def best(model, bs, precision):
        cands = [r for r in records if (r["model"], r["batch_size"], r["precision"]) == (model, bs, precision)
                 and r.get("family") == "vitzoo" and "ms" in r]  # fmt: skip
        return min(cands, key=lambda r: r["ms"]) if cands else None

    for precision, bs, target_models, bound in FRACTION_TARGETS:
        for model in target_models:
            if model not in models or bs not in batch_sizes:
                continue
            b = best(model, bs, precision)
            value = b and b["ceiling_fraction"]
            out.append({"target": f"{precision} batch {bs}: fastest vitzoo path >= {bound:.0%} of the {precision} GEMM "
                        "ceiling", "model": model, "batch_size": bs, "path": b and b["engine"], "value": value,
                        "bound": bound, "met": value is not None and value >= bound})  # fmt: skip
    for model in models:
        for bs in batch_sizes:
            for precision, (peer, bound) in PEER.items():
                if bound is None:
                    continue
                b = best(model, bs, precision)
                p = next((r for r in records if (r["model"], r["batch_size"], r["engine"]) == (model, bs, peer)
                          and "ms" in r), None)  # fmt: skip
                value = round(b["ms"] / p["ms"], 3) if b and p else None
                out.append({"target": f"{precision}: fastest vitzoo path <= {bound}x {peer}", "model": model,
                            "batch_size": bs, "path": b and b["engine"], "value": value, "bound": bound,
                            "met": value is not None and value <= bound})  # fmt: skip
    return out


def to_markdown(doc: dict) -> str:
    lines = ["# vitzoo's CPU paths against this CPU's GEMM ceiling", "",
             f"`{doc['command']}` on {doc['environment']['date']}: {doc['environment']['cpu']}; flags "
             f"{' '.join(doc['environment']['cpu_flags'])}; {doc['threads']} threads. Versions: "
             + ", ".join(f"{k} {v}" for k, v in doc["environment"]["versions"].items() if v) + ".", "",
             doc["method"], ""]  # fmt: skip
    for model in doc["models"]:
        for bs in doc["batch_sizes"]:
            c = doc["ceilings"][model][str(bs)]
            lines += [f"## {model}, batch {bs}", "",
                      "Ceiling (GFLOP/s, best over 2048^3 and the model's linear shapes): " + "; ".join(
                          f"{p} {v['gflops']:,.0f} ({v['kernel']}, at {v['shape']})" if "gflops" in v else f"{p}: {v}"
                          for p, v in c.items()), "",
                      "| engine | ms | images/s | effective GFLOP/s | of the ceiling | cosine to fp32 | top-1 agree | "
                      "gemm / attention / norm / pointwise / copies / other |",
                      "|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for r in doc["records"]:
                if (r["model"], r["batch_size"]) != (model, bs):
                    continue
                if "skipped" in r:
                    lines.append(f"| {r['engine']} | skipped: {r['skipped']} | | | | | | |")
                    continue
                shares = r.get("breakdown", {}).get("shares")
                split = " / ".join(f"{shares[k]:.0%}" for k in ("gemm", "attention", "norm", "pointwise", "copies",
                                                                 "other")) if shares else r.get("breakdown", {}).get("error", "")  # fmt: skip
                frac = f"{r['ceiling_fraction']:.0%}" if r["ceiling_fraction"] is not None else "-"
                name = r["engine"] + (" (new)" if r.get("new") else "")
                lines.append(f"| {name} | {r['ms']:.2f} | {r['images_per_s']:.1f} | {r['effective_gflops']:,.0f} | "
                             f"{frac} | {r['cosine_vs_fp32']:.6f} | {r['top1_agreement']:.3f} | {split} |")
            lines.append("")
    lines += ["![fraction of the ceiling and where the time goes](ceiling.png)", "", "## Targets", "",
              "| target | model | batch | path | measured | bound | |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in doc["targets"]:
        met = "met" if t["met"] else "**missed**"
        lines.append(f"| {t['target']} | {t['model']} | {t['batch_size']} | {t['path']} | {t['value']} | "
                     f"{t['bound']} | {met} |")
    lines += ["", "## Top kernels of each path (share of its profiled time)", ""]
    for r in doc["records"]:
        top = r.get("breakdown", {}).get("top")
        if top:
            lines.append(f"- {r['model']} bs{r['batch_size']} {r['engine']}: "
                         + "; ".join(f"{name} [{klass}] {share:.0%}" for name, klass, share in top[:5]))
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(m, bs) for m in doc["models"] for bs in doc["batch_sizes"]]
    fig, axes = plt.subplots(2, len(cells), figsize=(4.2 * len(cells), 8), squeeze=False)
    colors = {"gemm": "#4472c4", "attention": "#ed7d31", "norm": "#a5a5a5", "pointwise": "#ffc000",
              "copies": "#5b9bd5", "other": "#70ad47"}  # fmt: skip
    for j, (model, bs) in enumerate(cells):
        rows = [r for r in doc["records"] if (r["model"], r["batch_size"]) == (model, bs) and "ms" in r]
        labels = [r["engine"].replace(" (timm's ONNX", "\n(timm").replace(", NNCF)", ")") for r in rows]
        y = np.arange(len(rows))
        ax = axes[0][j]
        ax.barh(y, [r["ceiling_fraction"] or 0 for r in rows], color=["#c00000" if r.get("new") else "#4472c4"
                                                                       for r in rows])  # fmt: skip
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.axvline(0.7, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{model.split('_patch')[0]} bs{bs}: fraction of ceiling", fontsize=9)
        ax = axes[1][j]
        left = np.zeros(len(rows))
        for klass, color in colors.items():
            share = np.array([r.get("breakdown", {}).get("shares", {}).get(klass, 0) for r in rows])
            ax.barh(y, share, left=left, color=color, label=klass)
            left += share
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title("where the time goes", fontsize=9)
        if j == 0:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{doc['environment']['cpu']}, {doc['threads']} threads (red: new path)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quiet-s", type=float, default=10.0)
    parser.add_argument("--skip", default="", help="engines to leave out, comma-separated")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    models = args.models.split(",")
    sys.path.insert(0, str(HERE))
    from cpu_engines import environment

    records, ceilings = [], {}
    with tempfile.TemporaryDirectory(prefix="vitzoo-ceiling-") as work, open(args.out / "ceiling.log", "w") as log:
        for name in models:
            say(f"== {name}")
            model_records, model_ceilings = bench_model(name, args, Path(work) / name, log)
            records += model_records
            ceilings[name] = {str(bs): c for bs, c in model_ceilings.items()}
    doc = {
        "command": "python benchmarks/ceiling.py " + shlex.join(sys.argv[1:]),
        "environment": environment(), "threads": args.threads, "models": models, "batch_sizes": args.batch_sizes,
        "method": "Each engine in its own process, the engines of one precision taking turns on an idle CPU (the "
                  f"order reversed each round, {args.rounds} rounds of {args.runs} calls; a figure is the best round "
                  "median). Effective rate: 2 x the model's full MACs (vitzoo.profile, attention included) x images / "
                  "time. Ceiling: the best GEMM rate at the path's precision, measured in its own process with the same "
                  "threads just before. Breakdown: self time by op class, profiled in a process of its own (torch's "
                  "profiler with Inductor's kernels named; OpenVINO's per-node counters). Random O(1) weights; int8 "
                  "calibrated on scikit-image's photographs and their mirror images; cosine to fp32 eager over 8 of "
                  "them.",
        "ceilings": ceilings, "records": records,
    }  # fmt: skip
    doc["targets"] = targets(records, models, args.batch_sizes)
    (args.out / "ceiling.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "ceiling.md").write_text(to_markdown(doc))
    plot(doc, args.out / "ceiling.png")
    say(f"wrote {args.out / 'ceiling.json'}, ceiling.md, ceiling.png")
    for t in doc["targets"]:
        say(f"{'met' if t['met'] else 'MISSED'}: {t}")


if __name__ == "__main__":
    main()
