"""vitzoo's CPU inference paths against the engines people deploy with: OpenVINO, ONNX Runtime, Paddle Inference, timm.

Every engine holds the same weights (one random O(1)-activation state dict, `lively_init_`) and runs in its own
process, so that no engine's thread pool (OpenMP, oneDNN, TBB, ONNX Runtime) taxes another: the processes take
turns, one timed at a time, and before each turn the parent waits for the whole CPU to go idle (the last engine's
spinning threads asleep). Rounds alternate the order (A B C, C B A, ...); an engine's figure is the best of its
round medians. Each engine also classifies real photographs (scikit-image's samples through the model's seed
preprocessing), scored by the cosine of its logits to vitzoo fp32 eager's and top-1 agreement. The machinery (the
turns) is `vitzoo.bench.engines`, each engine's process `vitzoo.bench.engine_worker`, which `vitzoo bench --compare
openvino,onnxruntime,paddle` also runs. vitzoo must be installed (pip install -e .): the workers import it.

    python benchmarks/cpu_engines.py [--models DeiT_small_patch16_224,ViT_base_patch16_224] [--batch-sizes 1,8]
        [--threads 2] [--rounds 3] [--runs 5] [--no-digits] [--out benchmarks]

Writes cpu_engines.json and cpu_engines.md: ms per batch, images/s, ratios against the peers and the issue's
targets (met or missed), cosine to fp32, with the command, date, CPU flags and every engine's version. With digits
(default), also trains benchmarks/train_digits.py's model and evaluates it with `vitzoo eval` in fp32, bf16 and int8.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vitzoo.bench import engines  # the machinery: a process per engine, turns (the worker: bench.engine_worker)

HERE = Path(__file__).resolve().parent

# engine -> (family, precision, backend) as `vitzoo.bench.engines` runs it. vitzoo's paths are its own backends; the
# peers are what a user runs.
ENGINES = {
    "vitzoo fp32-eager": ("vitzoo", "fp32", "eager"),
    "vitzoo fp32-fast": ("vitzoo", "fp32", "fast"),
    "vitzoo fp32-compile": ("vitzoo", "fp32", "compile"),
    "vitzoo fp32-openvino": ("vitzoo", "fp32", "openvino"),
    "vitzoo bf16-fast": ("vitzoo", "bf16", "fast"),
    "vitzoo bf16-compile": ("vitzoo", "bf16", "compile"),
    "vitzoo bf16-openvino": ("vitzoo", "bf16", "openvino"),
    "vitzoo int8-openvino": ("vitzoo", "int8", "openvino"),
    "timm fp32-eager": ("timm", "fp32", "eager"),
    "timm bf16-eager": ("timm", "bf16", "eager"),
    "openvino f32 (timm's ONNX)": ("timm", "fp32", "openvino"),
    "openvino bf16 (timm's ONNX)": ("timm", "bf16", "openvino"),
    "openvino int8 (timm's ONNX, NNCF)": ("timm", "int8", "openvino"),
    "onnxruntime fp32 (timm's ONNX)": ("timm", "fp32", "onnxruntime"),
    "paddle fp32 (Paddle Inference, oneDNN)": ("paddle", "fp32", "paddle"),
    "paddle bf16 (Paddle Inference, oneDNN)": ("paddle", "bf16", "paddle"),
}
# engines timed together (each group's rounds alternate among its members); int8 is set against vitzoo's bf16
GROUPS = {
    "fp32": [e for e, (_, p, _) in ENGINES.items() if p == "fp32"],
    "bf16": [e for e, (_, p, _) in ENGINES.items() if p == "bf16"],
    "int8": ["vitzoo int8-openvino", "openvino int8 (timm's ONNX, NNCF)", "vitzoo bf16-compile"],
}


def calibration_set(name: str) -> torch.Tensor:
    """Every photograph scikit-image ships (colour and grey), seed-preprocessed, and each mirrored: the same
    calibration images for vitzoo's int8 and OpenVINO's NNCF."""
    import skimage.data

    from vitzoo import eval_transform
    from vitzoo.data.transforms import BadImageError

    transform = eval_transform(name)
    folder = Path(skimage.data.__file__).parent
    images = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in (".png", ".jpg"):
            try:
                images.append(transform(path))
            except BadImageError:
                continue
    batch = torch.stack(images)
    return torch.cat([batch, batch.flip(-1)])


def bench_model(name: str, args, workdir: Path, log) -> list[dict]:
    """Every group's engines on one model: started (`vitzoo.bench.engines.running`), timed in turns, scored."""
    import vitzoo
    from vitzoo.infer import lively_init_, sample_photos

    model = lively_init_(vitzoo.create_model(name)).eval()
    photos = sample_photos(name)
    common = engines.prepare(workdir, model, photos, calibration_set(name))
    with torch.inference_mode():
        reference = model(photos).numpy()
    del model
    records = []
    for group, members in GROUPS.items():
        wanted = {engine: ENGINES[engine] for engine in members if engine not in args.skip_engines}
        group_engines = engines.running(wanted, common, args.threads, args.batch_sizes, args.warmup, log, _say)
        with group_engines as (started, skipped):
            for bs in args.batch_sizes:
                timings = engines.time_group(started, bs, args.rounds, args.runs, args.quiet_s)
                for engine, t in timings.items():
                    family, precision, backend = ENGINES[engine]
                    cosine, agree = engines.cosine_and_agreement(started[engine].logits(), reference)
                    records.append({
                        "model": name, "batch_size": bs, "group": group, "engine": engine, "family": family,
                        "precision": precision, "backend": backend, **t, "cosine_vs_fp32": cosine,
                        "top1_agreement": agree, "build_s": started[engine].ready["build_s"],
                        "notes": started[engine].ready.get("notes", ""),
                    })  # fmt: skip
                    print(f"  {name} bs{bs} {engine}: {t['ms']:.1f} ms, cosine {cosine}", flush=True)
                for engine, reason in skipped.items():
                    records.append({"model": name, "batch_size": bs, "group": group, "engine": engine,
                                    "skipped": reason})  # fmt: skip
    return records


def _say(message: str) -> None:
    print(f"  {message}", flush=True)


# -- targets ------------------------------------------------------------------------------------------------------------
def _ms(records, model, bs, group, engine):
    for r in records:
        if (r["model"], r["batch_size"], r["group"], r["engine"]) == (model, bs, group, engine) and "ms" in r:
            return r["ms"]
    return None


def _best_vitzoo(records, model, bs, group, precision, exclude_openvino=False):
    cands = [r for r in records if (r["model"], r["batch_size"], r["group"]) == (model, bs, group)
             and r.get("family") == "vitzoo" and r["precision"] == precision and "ms" in r
             and not (exclude_openvino and r["backend"] == "openvino")]  # fmt: skip
    return min(cands, key=lambda r: r["ms"]) if cands else None


def targets(records: list[dict], models, batch_sizes) -> list[dict]:
    """The issue's targets, each as measured: ratio of times, the bound, met or missed (or not measured)."""
    out = []

    def check(what, model, bs, num, den, bound, num_name, den_name):
        if num is None or den is None:
            out.append({"target": what, "model": model, "batch_size": bs, "met": None, "why": "not measured"})
            return
        ratio = round(num / den, 3)
        out.append({"target": what, "model": model, "batch_size": bs, "ratio": ratio, "bound": bound,
                    "met": ratio <= bound, "numerator": num_name, "denominator": den_name})  # fmt: skip

    for model in models:
        for bs in batch_sizes:
            for precision, peer, bound in (("fp32", "openvino f32 (timm's ONNX)", 0.90),
                                           ("bf16", "openvino bf16 (timm's ONNX)", 0.85)):  # fmt: skip
                best = _best_vitzoo(records, model, bs, precision, precision)
                check(f"{precision}: fastest vitzoo path <= {bound}x {peer}", model, bs,
                      best and best["ms"], _ms(records, model, bs, precision, peer), bound,
                      best and best["engine"], peer)  # fmt: skip
                own = _ms(records, model, bs, precision, f"vitzoo {precision}-openvino")
                native = _best_vitzoo(records, model, bs, precision, precision, exclude_openvino=True)
                check(f"{precision}: fastest torch-native vitzoo path never slower than OpenVINO on vitzoo's export",
                      model, bs, native and native["ms"], own, 1.0, native and native["engine"],
                      f"vitzoo {precision}-openvino")  # fmt: skip
                paddle = f"paddle {precision} (Paddle Inference, oneDNN)"
                check(f"{precision}: vitzoo faster than Paddle Inference", model, bs, best and best["ms"],
                      _ms(records, model, bs, precision, paddle), 0.999, best and best["engine"], paddle)
            int8 = _ms(records, model, bs, "int8", "vitzoo int8-openvino")
            check("int8 <= 0.60x vitzoo bf16 + compile", model, bs, int8,
                  _ms(records, model, bs, "int8", "vitzoo bf16-compile"), 0.60, "vitzoo int8-openvino",
                  "vitzoo bf16-compile")  # fmt: skip
            check("int8 <= 0.90x OpenVINO int8 (NNCF) on timm's export", model, bs, int8,
                  _ms(records, model, bs, "int8", "openvino int8 (timm's ONNX, NNCF)"), 0.90, "vitzoo int8-openvino",
                  "openvino int8 (timm's ONNX, NNCF)")  # fmt: skip
            for r in records:
                if (r["model"], r["batch_size"], r["engine"]) == (model, bs, "vitzoo int8-openvino") and "ms" in r:
                    out.append({"target": "int8 logits cosine to fp32 >= 0.995 on real photographs", "model": model,
                                "batch_size": bs, "value": r["cosine_vs_fp32"], "bound": 0.995,
                                "met": r["cosine_vs_fp32"] >= 0.995})  # fmt: skip
    return out


# -- the digits model in fp32, bf16 and int8 through `vitzoo eval` ------------------------------------------------------
def digits_accuracy(workdir: Path, epochs: int, threads: int) -> dict:
    sys.path.insert(0, str(HERE))
    from train_digits import run, train_command, write_digits

    train_dir, val_dir = write_digits(workdir / "digits")
    output = workdir / "digits_run"
    result, seconds = run(train_command(train_dir, val_dir, output, epochs))
    print(f"digits: trained {epochs} epochs in {seconds:.0f} s, val top-1 {result['metrics']['val_top1']:.4f}")
    evals = {}
    for precision, backend in (("fp32", "eager"), ("bf16", "fast"), ("int8", "openvino")):
        out = workdir / f"digits_eval_{precision}.json"
        command = ["vitzoo", "eval", "--model", str(output), "--data", str(val_dir), "--precision", precision,
                   "--backend", backend, "--threads", str(threads), "--workers", "0", "-q", "--output", str(out)]
        if precision == "int8":
            command += ["--calibration", str(train_dir)]
        proc = subprocess.run([sys.executable, "-m", "vitzoo", *command[1:]], capture_output=True, text=True)
        if proc.returncode:
            evals[precision] = {"error": proc.stderr.strip().splitlines()[-1:], "command": shlex.join(command)}
            continue
        record = json.loads(out.read_text())
        evals[precision] = {"top1": record["top1"], "top5": record["top5"], "images": record["images"],
                            "backend": backend, "command": shlex.join(command).replace(str(workdir), "$WORK")}
    fp32, int8 = evals.get("fp32", {}).get("top1"), evals.get("int8", {}).get("top1")
    gap = None if fp32 is None or int8 is None else round(100 * (fp32 - int8), 3)
    return {
        "model": "benchmarks/train_digits.py's custom ViT (width 64, depth 4, 32x32), no distillation",
        "epochs": epochs, "train_val_top1": result["metrics"]["val_top1"], "eval": evals,
        "int8_gap_points": gap, "target": "int8 top-1 within 0.5 point of fp32", "met": gap is not None and gap <= 0.5,
    }  # fmt: skip


# -- reports --------------------------------------------------------------------------------------------------------
def environment() -> dict:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    from vitzoo.bench.latency import device_name
    from vitzoo.infer.paths import _cpu_flags

    flags = sorted(f for f in _cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": device_name("cpu"),
        "cpu_flags": flags, "python": platform.python_version(),
        "versions": {p: version(p) for p in ("vitzoo", "torch", "timm", "openvino", "nncf", "onnxruntime",
                                              "paddlepaddle", "paddleclas")},
    }  # fmt: skip


def to_markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [
        "# CPU engines: vitzoo's inference paths against OpenVINO, ONNX Runtime, Paddle Inference and timm", "",
        f"`{doc['command']}` on {env['date']}: {env['cpu']}; flags {' '.join(env['cpu_flags'])}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".", "",
        doc["method"], "",
    ]  # fmt: skip
    for model in doc["models"]:
        for bs in doc["batch_sizes"]:
            lines += [f"## {model}, batch {bs}", "",
                      "| group | engine | ms | images/s | vs vitzoo fp32 eager | cosine to fp32 | top-1 agree | notes |",
                      "|---|---|---|---|---|---|---|---|"]  # fmt: skip
            base = _ms(doc["records"], model, bs, "fp32", "vitzoo fp32-eager")
            for r in doc["records"]:
                if (r["model"], r["batch_size"]) != (model, bs):
                    continue
                if "skipped" in r:
                    lines.append(f"| {r['group']} | {r['engine']} | skipped: {r['skipped']} | | | | | |")
                    continue
                rel = f"{r['ms'] / base:.3f}" if base else "-"
                lines.append(f"| {r['group']} | {r['engine']} | {r['ms']:.1f} | {r['images_per_s']:.1f} | {rel} | "
                             f"{r['cosine_vs_fp32']:.6f} | {r['top1_agreement']:.3f} | {r['notes']} |")
            lines.append("")
    lines += ["![ms per batch, every engine](cpu_engines.png)", "", "## Targets", "", "| target | model | batch | measured | bound | met |", "|---|---|---|---|---|---|"]
    for t in doc["targets"]:
        value = t.get("ratio", t.get("value", "-"))
        who = f" ({t['numerator']} / {t['denominator']})" if "numerator" in t else ""
        met = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']}{who} | {t['model']} | {t['batch_size']} | {value} | {t.get('bound', '-')} | {met} |")
    if doc.get("digits"):
        d = doc["digits"]
        lines += ["", "## int8 on real data: the digits model through `vitzoo eval`", "",
                  f"{d['model']}, {d['epochs']} epochs (training's own val top-1 {d['train_val_top1']:.4f}).", "",
                  "| precision | backend | top-1 | top-5 | images |", "|---|---|---|---|---|"]  # fmt: skip
        for precision, e in d["eval"].items():
            if "error" in e:
                lines.append(f"| {precision} | - | error: {e['error']} | | |")
            else:
                lines.append(f"| {precision} | {e['backend']} | {e['top1']:.4f} | {e['top5']:.4f} | {e['images']} |")
        met = "met" if d["met"] else "**missed**"
        lines += ["", f"int8 - fp32 gap: {d['int8_gap_points']} points ({d['target']}: {met}). "
                  f"Commands: `{d['eval'].get('int8', {}).get('command', '-')}` and the same with fp32/bf16."]
    return "\n".join(lines) + "\n"


def write_png(doc: dict, path: Path) -> Path | None:
    """One panel per (model, batch): ms per engine, vitzoo's paths and the peers in their own colours."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cells = [(m, b) for m in doc["models"] for b in doc["batch_sizes"]]
    colours = {"vitzoo": "#1f77b4", "timm": "#ff7f0e", "paddle": "#2ca02c"}
    fig, axes = plt.subplots(len(cells), 1, figsize=(9, 3.2 * len(cells)), squeeze=False)
    for ax, (model, bs) in zip(axes[:, 0], cells):
        rows = [r for r in doc["records"] if (r["model"], r["batch_size"]) == (model, bs) and "ms" in r]
        rows.sort(key=lambda r: (["fp32", "bf16", "int8"].index(r["precision"]), r["ms"]))
        seen, uniq = set(), []
        for r in rows:  # vitzoo bf16-compile is timed in two groups: show it once
            if r["engine"] not in seen:
                seen.add(r["engine"])
                uniq.append(r)
        ax.barh(range(len(uniq)), [r["ms"] for r in uniq], color=[colours[r["family"]] for r in uniq])
        ax.set_yticks(range(len(uniq)), [r["engine"] for r in uniq], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{model}, batch {bs}: ms per batch (lower is better)", fontsize=9)
        for i, r in enumerate(uniq):
            ax.text(r["ms"], i, f" {r['ms']:.1f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="DeiT_small_patch16_224,ViT_base_patch16_224")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="timed forwards per engine per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quiet-s", type=float, default=10.0, help="wait up to this long for an idle CPU per turn")
    parser.add_argument("--skip-engines", default="", help="comma-separated engine names to leave out")
    parser.add_argument("--no-digits", dest="digits", action="store_false")
    parser.add_argument("--digits-epochs", type=int, default=150)
    parser.add_argument("--digits-dir", type=Path, help="keep the digits data and run here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.skip_engines = {e.strip() for e in args.skip_engines.split(",") if e.strip()}
    command = "python benchmarks/cpu_engines.py " + shlex.join(sys.argv[1:])
    doc = {
        "command": command.strip(), "environment": environment(), "models": args.models,
        "batch_sizes": args.batch_sizes, "threads": args.threads,
        "method": (
            f"Each engine in its own process with {args.threads} threads, built one at a time, then timed in turns: "
            f"{args.rounds} rounds of {args.runs} forwards each, the order reversed every round, and before each "
            "turn the parent waits for the whole CPU to go idle (other engines' spinning threads asleep), so no "
            "engine's thread pool taxes another. ms: the best round median; random input, preprocessing not timed. "
            "Same weights everywhere (random, O(1) activations). int8 engines are calibrated on the same images "
            "(scikit-image's photographs, seed-preprocessed, and their mirror images). cosine: the lowest cosine of "
            "an engine's logits to vitzoo fp32 eager's over 8 real photographs."
        ),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vitzoo-engines-") as tmp:
        work = Path(tmp)
        with open(args.out / "cpu_engines.log", "w") as log:
            records = []
            for name in args.models:
                print(f"{name}:", flush=True)
                model_dir = work / name
                model_dir.mkdir()
                records += bench_model(name, args, model_dir, log)
        doc["records"] = records
        doc["targets"] = targets(records, args.models, args.batch_sizes)
        if args.digits:
            digits_dir = args.digits_dir or work
            digits_dir.mkdir(parents=True, exist_ok=True)
            doc["digits"] = digits_accuracy(digits_dir, args.digits_epochs, args.threads)
    (args.out / "cpu_engines.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "cpu_engines.md").write_text(to_markdown(doc))
    write_png(doc, args.out / "cpu_engines.png")
    print(f"wrote {args.out / 'cpu_engines.json'} and {args.out / 'cpu_engines.md'}")


if __name__ == "__main__":
    main()
