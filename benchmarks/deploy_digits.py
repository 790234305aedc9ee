"""Exported files checked with `vitzoo eval`: the digits model `train_digits.py` trains, exported to every format and
precision, each file's Top-1 on the digits' validation set beside the run folder's own (fp32 eager).

    python benchmarks/deploy_digits.py [--run DIR] [--epochs 150] [--out benchmarks]

Trains the model first unless --run names a finished run (`train_digits.py`'s plain run: no distillation). int8 files
are calibrated on the run's own train set. Target: every int8 file within 0.5 point of fp32 Top-1. Writes
deploy_digits.json and deploy_digits.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "fp16"),
         ("openvino", "int8"), ("pt2", "fp32"), ("pt2", "bf16"), ("executorch", "fp32"), ("executorch", "int8")]  # fmt: skip
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "pt2": ".pt2", "executorch": ".pte"}


def vitzoo(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "vitzoo", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vitzoo {shlex.join(map(str, args))}: {proc.stderr.strip().splitlines()[-1]}")
    return proc.stdout


def evaluate(model, val: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        vitzoo("eval", "--model", model, "--data", val, "--workers", "0", "-q", "--output", out.name)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished train_digits run folder (default: train one)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import train_digits

    from vitzoo.bench.latency import device_name

    work = Path(tempfile.mkdtemp(prefix="vitzoo-deploy-digits-"))
    run = args.run
    if run is None:
        train_dir, val_dir = train_digits.write_digits(work / "data")
        train_digits.run(train_digits.train_command(train_dir, val_dir, work / "run", args.epochs))
        run = work / "run"
    card = json.loads((run / "model.json").read_text())
    val = Path(card["data"]["val"])
    reference = evaluate(run, val)
    rows = [{"file": "run folder (fp32 eager)", "top1": reference["top1"], "images": reference["images"]}]
    for runtime, precision in FILES:
        out = work / f"digits_{precision}{SUFFIX[runtime]}"
        start = time.perf_counter()
        try:
            vitzoo("export", "--model", run, "--precision", precision, out)
        except RuntimeError as e:
            rows.append({"file": out.name, "runtime": runtime, "precision": precision, "skipped": str(e)})
            continue
        export_s = time.perf_counter() - start
        result = evaluate(out, val)
        delta = (result["top1"] - reference["top1"]) * 100
        rows.append({"file": out.name, "runtime": runtime, "precision": precision, "top1": result["top1"],
                     "delta_points": round(delta, 2), "bytes": out.stat().st_size, "export_s": round(export_s, 1),
                     "met": abs(delta) <= 0.5 if precision == "int8" else None})  # fmt: skip
        print(rows[-1], flush=True)
    doc = {"command": "python benchmarks/deploy_digits.py " + shlex.join(sys.argv[1:]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": device_name("cpu"),
           "run": str(run), "val": str(val), "rows": rows}  # fmt: skip
    (args.out / "deploy_digits.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# Exported digits models checked with `vitzoo eval`", "",
             f"`{doc['command']}` on {doc['date']}: {doc['cpu']}. The model: `train_digits.py`'s plain run (custom "
             f"ViT, 32x32); {reference['images']} validation images; int8 calibrated on the run's train set. Target: "
             "every int8 file within 0.5 point of the run folder's Top-1.", "",
             "| file | runtime | precision | Top-1 | vs fp32 (points) | main file bytes (.xml without its .bin) | export s | int8 target |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['file']} | {r['runtime']} | {r['precision']} | skipped: {r['skipped']} | | | | |")
            continue
        met = "" if r.get("met") is None else ("met" if r["met"] else "**missed**")
        lines.append(f"| {r['file']} | {r.get('runtime', '')} | {r.get('precision', 'fp32')} | {r['top1']:.4f} | "
                     f"{r.get('delta_points', '')} | {r.get('bytes', '')} | {r.get('export_s', '')} | {met} |")  # fmt: skip
    (args.out / "deploy_digits.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'deploy_digits.json'} and deploy_digits.md")


if __name__ == "__main__":
    main()
