"""Exported files in their runtimes, from Python and from C++: speed, size, cold start and answers.

    python benchmarks/deploy.py [--models DeiT_tiny_patch16_224,DeiT_small_patch16_224,ViT_base_patch16_224]
        [--threads 2] [--rounds 3] [--runs 20] [--work DIR] [--out benchmarks]

For each model: random O(1)-activation weights (`lively_init_`), exported with `vitzoo.artifacts.export_artifact` to
every format and precision (int8 calibrated on scikit-image's photographs and their mirror images), then:

- ms at batch 1 and 8 of each file in its runtime from Python (`vitzoo.bench.engine_worker`'s "artifact" engine:
  the file's `LoadedArtifact.runner`, what `vitzoo bench --model FILE` runs) and, for OpenVINO IR and AOTInductor
  packages, from the C++ programs in `examples/cpp` (`--bench N --bench-batch B`). Each engine is a process of its
  own; the engines of one runtime take turns (the order reversed every round, the CPU idle before each turn, as
  `vitzoo bench --compare` does: `vitzoo.bench.engines.time_group`); a figure is the best of its round medians. The
  C++ program starts afresh for each turn (load, warm-up of max(3, N/10) calls, then N timed calls).
- cold start: a new process, from its start to its first answer on one photograph (`vitzoo predict --model FILE
  IMAGE`, and the C++ program on the same image), the best of two after one unmeasured run (files in the page cache).
- answers: the cosine of each file's logits to fp32 eager's on scikit-image's photographs (the lowest over them) and
  top-1 agreement; the C++ programs' top-1 on the same photographs, and their top-1 probabilities against Python's.
- the saved int8 IR served: `vitzoo serve --model vit_base_int8.xml` from process start to /readyz answering 200.

Targets: each C++ program within 5% of its runtime's Python latency; ExecuTorch int8 DeiT_tiny batch 1 <= 0.6x
ExecuTorch fp32; the ViT_base int8 IR's server ready in <= 10 s; fp32 max |logit difference| <= 1e-4, fp16/bf16
cosine >= 0.999 with every top-1 agreeing, int8 cosine >= 0.995. Writes deploy.json, deploy.md and deploy.png. The
exports are kept in --work (default: a new temporary folder) and reused by a rerun naming the same folder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ["DeiT_tiny_patch16_224", "DeiT_small_patch16_224", "ViT_base_patch16_224"]
FILES = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "fp16"),
         ("openvino", "int8"), ("pt2", "fp32"), ("pt2", "bf16"), ("executorch", "fp32"), ("executorch", "int8")]  # fmt: skip
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "pt2": ".pt2", "executorch": ".pte"}
CPP_PROGRAM = {"openvino": "vitzoo_classify_openvino", "pt2": "vitzoo_classify_aoti"}  # examples/cpp's programs
PACKAGES = ["torch", "onnxruntime", "openvino", "nncf", "executorch"]
BATCH_SIZES = (1, 8)
# what was found about the targets this benchmark has missed (measured in one process while it was built, not in turns)
NOTES = [
    "ExecuTorch int8 against fp32 (target 0.6x at DeiT_tiny batch 1): XNNPACK's int8 linears help only part of the "
    "time. The lowered DeiT_tiny program is cut into 62 XNNPACK delegate calls by ops XNNPACK does not take "
    "(LayerNorm, SDPA's decomposition: expand/squeeze copies, masks, scaling), which run in ExecuTorch's portable "
    "kernels in fp32 either way. Tried on DeiT_tiny batch 1 (one process, 30 calls): dynamic int8 activations 0.71-0.74x "
    "(cosine 0.9998), quantizing every op XNNPACK's quantizer annotates 0.76x (cosine 0.9988, a top-1 lost), explicit "
    "attention instead of SDPA 0.81x, LayerNorm written as XNNPACK-delegable ops 0.74x; none reaches 0.6x, so the "
    "export keeps static int8 on the linear and convolution layers. The larger models gain more (ViT_base 0.45x).",
    "C++ against Python (target within 5%): DeiT_tiny's pt2 fp32 at batch 8 missed (1.06x). The C++ program's round "
    "medians fell round by round (113, 87, 84 ms) while Python's stayed at 79-82 ms: started afresh each turn with "
    "3 warm-up calls, it had not settled. Both run the same libtorch; the same file at batch 1 and the other models' "
    "pt2 fp32 files are at 0.94-1.02x.",
]


def say(message: str) -> None:
    print(message, flush=True)


# -- the C++ programs ---------------------------------------------------------------------------------------------------
def build_cpp(build: Path) -> tuple[dict[str, Path], str | None]:
    """examples/cpp built with CMake into `build`: ({runtime: program}, None), or ({}, why not)."""
    import openvino

    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            return {}, f"no {tool} (apt-get install -y cmake g++)"
    configure = ["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DTORCH_DIR={Path(torch.__file__).parent}",
                 f"-DOpenVINO_DIR={Path(openvino.__file__).parent / 'cmake'}"]  # fmt: skip
    for command in (configure, ["cmake", "--build", str(build), "-j", "2"]):
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            return {}, f"{shlex.join(command[:2])}: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}"
    return {runtime: build / name for runtime, name in CPP_PROGRAM.items()}, None


class CppEngine:
    """A C++ program as a timed engine (`time(batch_size, runs)`, as `vitzoo.bench.engines.Engine`): a new process
    for each turn, which loads the file, warms up and times `runs` calls at one batch size."""

    def __init__(self, program: Path, model_file: Path, threads: int):
        self.command = [str(program), str(model_file), "--threads", str(threads)]

    def time(self, batch_size: int, runs: int) -> list[float]:
        proc = subprocess.run([*self.command, "--bench", str(runs), "--bench-batch", str(batch_size)],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(self.command)}: {proc.stderr.strip()}")
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        return [line["ms_median"]]  # the program's median of `runs` calls

    def classify(self, images: list[Path]) -> list[dict]:
        proc = subprocess.run([*self.command, *map(str, images)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(self.command)}: {proc.stderr.strip()}")
        return [json.loads(line) for line in proc.stdout.strip().splitlines()]


# -- exports ------------------------------------------------------------------------------------------------------------
def export_all(name: str, folder: Path, photos: torch.Tensor) -> list[dict]:
    """Every format x precision of `name` (random lively weights) in `folder`; a file a previous run left there
    (listed in exports.json, and loading) is reused."""
    sys.path.insert(0, str(HERE))
    from cpu_engines import calibration_set

    import vitzoo
    from vitzoo.artifacts import export_artifact, load_artifact, unavailable_reason
    from vitzoo.factory import LoadedModel
    from vitzoo.infer import lively_init_

    folder.mkdir(parents=True, exist_ok=True)
    done_file = folder / "exports.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else {}
    model = lively_init_(vitzoo.create_model(name)).eval()
    loaded = LoadedModel(model, name, source="random O(1)-activation weights (vitzoo.infer.lively_init_, seed 0)")
    calibration = calibration_set(name)
    rows = []
    for runtime, precision in FILES:
        out = folder / f"{name}_{precision}{SUFFIX[runtime]}"
        row = {"model": name, "runtime": runtime, "precision": precision, "file": str(out)}
        reason = unavailable_reason(runtime, precision)
        if reason:
            rows.append({**row, "skipped": reason})
            continue
        if out.name in done:
            try:
                load_artifact(out)
                rows.append(done[out.name])
                say(f"{out.name}: reused")
                continue
            except Exception as e:  # a rerun re-exports whatever does not load
                say(f"{out.name}: re-exporting ({e})")
        start = time.perf_counter()
        try:
            card, check = export_artifact(loaded, out, runtime, precision, calibration=calibration,
                                          calibration_source="scikit-image photographs and their mirror images",
                                          check_images=photos)  # fmt: skip
        except Exception as e:
            rows.append({**row, "skipped": f"export failed: {str(e).splitlines()[0]}"})
            say(f"{out.name}: export failed: {e}")
            continue
        row.update(export_s=round(time.perf_counter() - start, 1), bytes=sum(f["bytes"] for f in card.files.values()),
                   files=sorted(card.files), batch=card.batch, export_check=check)  # fmt: skip
        done[out.name] = row
        done_file.write_text(json.dumps(done, indent=2) + "\n")
        rows.append(row)
        say(f"{out.name}: exported in {row['export_s']} s, {row['bytes'] / 1e6:.1f} MB, check {check}")
    return rows


# -- timing -------------------------------------------------------------------------------------------------------------
def time_runtime(runtime: str, rows: list[dict], programs: dict, args, workdir: Path, photos_npy: Path, log):
    """The Python engine of each file of one runtime, and the C++ program's where there is one, timed in turns at
    each batch size. Fills each row's "python" and "cpp" fields."""
    from vitzoo.bench import engines

    members = {}
    with contextlib.ExitStack() as stack:
        for row in rows:
            if "skipped" in row:
                continue
            slug = Path(row["file"]).name.replace(".", "_")
            spec = {"name": f"python {slug}", "family": "artifact", "artifact": row["file"], "precision":
                    row["precision"], "backend": runtime, "threads": args.threads, "batch_sizes": list(BATCH_SIZES),
                    "warmup": 3, "photos": str(photos_npy), "logits_out": str(workdir / f"{slug}.logits.npy"),
                    "workdir": str(workdir), "slug": slug}  # fmt: skip
            try:
                engine = engines.Engine(spec, log)
            except engines.EngineFailed as e:
                row["python"] = {"skipped": str(e)}
                continue
            stack.callback(engine.close)
            members[("python", row["file"])] = engine
            row["python"] = {"build_s": engine.ready["build_s"], "peak_mem_mb": engine.ready["peak_mem_mb"]}
            if runtime in programs:
                members[("cpp", row["file"])] = CppEngine(programs[runtime], Path(row["file"]), args.threads)
                row["cpp"] = {}
        if not members:
            return
        by_file = {row["file"]: row for row in rows}
        named = {f"{lang} {Path(file).name}": engine for (lang, file), engine in members.items()}
        keys = dict(zip(named, members))
        for bs in BATCH_SIZES:
            timings = engines.time_group(named, bs, args.rounds, args.runs, args.quiet_s)
            for label, t in timings.items():
                lang, file = keys[label]
                by_file[file][lang][f"bs{bs}"] = t
                say(f"  {label} bs{bs}: {t['ms']:.2f} ms (rounds {t['round_medians_ms']})")
        for (lang, file), engine in members.items():
            if lang == "python":
                by_file[file]["python"]["logits"] = engine.logits()


def answers(rows: list[dict], reference: np.ndarray, programs: dict, photo_files: list[Path], threads: int):
    """Each file's logits (Python) against fp32 eager's; the C++ program's top-1 on the same photographs."""
    from vitzoo.bench.engines import cosine_and_agreement

    for row in rows:
        python = row.get("python", {})
        if "logits" not in python:
            continue
        logits = python.pop("logits")
        cosine, agree = cosine_and_agreement(logits, reference)
        python.update(cosine_vs_fp32=cosine, top1_agreement=agree,
                      max_abs_diff=round(float(np.abs(logits - reference).max()), 7))  # fmt: skip
        if "cpp" in row and row["runtime"] in programs:
            lines = CppEngine(programs[row["runtime"]], Path(row["file"]), threads).classify(photo_files)
            cpp_top1 = np.array([line["top"][0]["index"] for line in lines])
            cpp_p = np.array([line["top"][0]["probability"] for line in lines])
            p = torch.from_numpy(logits).softmax(-1).numpy()
            row["cpp"].update(top1_agreement=round(float((cpp_top1 == reference.argmax(-1)).mean()), 4),
                              top1_same_as_python=bool((cpp_top1 == logits.argmax(-1)).all()),
                              max_top1_probability_diff_vs_python=round(
                                  float(np.abs(cpp_p - p[np.arange(len(p)), cpp_top1]).max()), 7))  # fmt: skip


def wall_s(command: list[str], env=None) -> float:
    from vitzoo.bench.latency import wait_for_quiet_cpu

    wait_for_quiet_cpu(10)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)}: {proc.stderr.strip().splitlines()[-1]}")
    return seconds


def cold_starts(rows: list[dict], programs: dict, photo: Path, threads: int) -> None:
    """Process start to first answer on one photograph: best of two after one unmeasured run."""
    for row in rows:
        if "skipped" in row:
            continue
        commands = {"python": [sys.executable, "-m", "vitzoo", "predict", "--model", row["file"], str(photo),
                               "--threads", str(threads), "--format", "json"]}  # fmt: skip
        if row["runtime"] in programs:
            commands["cpp"] = [str(programs[row["runtime"]]), row["file"], str(photo), "--threads", str(threads)]
        for lang, command in commands.items():
            try:
                wall_s(command)
                times = [wall_s(command) for _ in range(2)]
            except RuntimeError as e:
                row.setdefault(lang, {})["cold_start_error"] = str(e)
                continue
            row.setdefault(lang, {})["cold_start_s"] = round(min(times), 3)
            say(f"  cold start {lang} {Path(row['file']).name}: {min(times):.2f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_ready_s(command: list[str], port: int, limit_s: float = 600) -> dict:
    """A `vitzoo serve` command's time from process start to /readyz answering 200; the server is then stopped."""
    from vitzoo.bench.latency import wait_for_quiet_cpu

    wait_for_quiet_cpu(10)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - start < limit_s:
            if proc.poll() is not None:
                return {"error": f"exited {proc.returncode}: {proc.stderr.read().strip().splitlines()[-1]}"}
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return {"ready_s": round(time.perf_counter() - start, 2)}
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        return {"error": f"not ready in {limit_s} s"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_int8(rows: list[dict], weights: Path, calibration_dir: Path, threads: int) -> dict:
    """ViT_base's saved int8 IR served, and beside it the same weights quantized with NNCF at start."""
    ir = next((r for r in rows if r["model"] == "ViT_base_patch16_224" and r["runtime"] == "openvino"
               and r["precision"] == "int8" and "skipped" not in r), None)  # fmt: skip
    if ir is None:
        return {"skipped": "no ViT_base int8 IR"}
    out = {}
    port = free_port()
    base = [sys.executable, "-m", "vitzoo", "serve", "--port", str(port), "--threads", str(threads)]
    out["saved int8 IR"] = {"command": shlex.join(["vitzoo", "serve", "--model", Path(ir["file"]).name]),
                            **serve_ready_s([*base, "--model", ir["file"]], port)}  # fmt: skip
    port = free_port()
    base[base.index("--port") + 1] = str(port)
    nncf = ["--model", "ViT_base_patch16_224", "--weights", str(weights), "--precision", "int8", "--backend",
            "openvino", "--calibration", str(calibration_dir)]  # fmt: skip
    out["NNCF at start"] = {"command": shlex.join(["vitzoo", "serve", *nncf]), **serve_ready_s([*base, *nncf], port)}
    for what, result in out.items():
        say(f"  serve {what}: {result}")
    return out


# -- the report ---------------------------------------------------------------------------------------------------------
def targets(rows: list[dict], serve: dict) -> list[dict]:
    out = []
    for r in rows:
        name = f"{r['model']} {r['runtime']} {r['precision']}"
        py, cpp = r.get("python", {}), r.get("cpp", {})
        for bs in BATCH_SIZES:
            if f"bs{bs}" in cpp and f"bs{bs}" in py:
                ratio = round(cpp[f"bs{bs}"]["ms"] / py[f"bs{bs}"]["ms"], 3)
                out.append({"target": "C++ within 5% of Python's latency (C++ / Python <= 1.05)", "file": name,
                            "batch_size": bs, "value": ratio, "bound": 1.05, "met": ratio <= 1.05})  # fmt: skip
        if "cosine_vs_fp32" in py:
            if r["precision"] == "fp32":
                value, bound, what = py["max_abs_diff"], 1e-4, "fp32: max |logit difference| to eager <= 1e-4"
                met = value <= bound
            elif r["precision"] in ("fp16", "bf16"):
                value, bound, what = py["cosine_vs_fp32"], 0.999, "fp16/bf16: cosine >= 0.999, every top-1 agreeing"
                met = value >= bound and py["top1_agreement"] == 1.0
            else:
                value, bound, what = py["cosine_vs_fp32"], 0.995, "int8: cosine >= 0.995"
                met = value >= bound
            out.append({"target": what, "file": name, "value": value, "bound": bound, "met": met})

    def ms(model, runtime, precision, bs):
        for r in rows:
            if (r["model"], r["runtime"], r["precision"]) == (model, runtime, precision):
                return r.get("python", {}).get(f"bs{bs}", {}).get("ms")
        return None

    fp32, int8 = ms("DeiT_tiny_patch16_224", "executorch", "fp32", 1), ms("DeiT_tiny_patch16_224", "executorch", "int8", 1)
    if fp32 and int8:
        out.append({"target": "ExecuTorch int8 DeiT_tiny batch 1 <= 0.6x ExecuTorch fp32", "file":
                    "DeiT_tiny executorch int8", "batch_size": 1, "value": round(int8 / fp32, 3), "bound": 0.6,
                    "met": int8 / fp32 <= 0.6})  # fmt: skip
    saved = serve.get("saved int8 IR", {})
    if saved:
        out.append({"target": "ViT_base int8 IR: server ready <= 10 s", "file": "ViT_base openvino int8",
                    "value": saved.get("ready_s"), "bound": 10.0,
                    "met": saved.get("ready_s") is not None and saved["ready_s"] <= 10.0})  # fmt: skip
    return out


def _cell(d: dict, key: str, fmt: str = "{:.2f}") -> str:
    value = d.get(key)
    if isinstance(value, dict):
        value = value.get("ms")
    return fmt.format(value) if value is not None else ""


def write_report(doc: dict, out: Path) -> None:
    (out / "deploy.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# Exported files in their runtimes: Python and C++", "",
             f"`{doc['command']}` on {doc['date']}: {doc['cpu']} (threads: --threads {doc['threads']}). "
             f"{doc['versions']}.", "",
             "Weights: random with O(1) activations (`lively_init_`); answers are against fp32 eager on scikit-image's "
             f"{doc['photos']} photographs; int8 calibrated on scikit-image's photographs and their mirror images. ms: "
             "best of the round medians, the engines of one runtime taking turns, each in its own process (the C++ "
             "program started afresh for each turn). ExecuTorch files take batch 1 (its export default), so batch 8 "
             "is 8 calls. Cold start: process start to the first answer on one photograph (`vitzoo predict`, or the "
             "C++ program). C++ programs exist for OpenVINO IR and AOTInductor packages (`examples/cpp`).", "",
             "| model | runtime | precision | MB | export s | Python ms bs1 | C++ ms bs1 | Python ms bs8 | C++ ms bs8 | "
             "cold start s Python / C++ | cosine to fp32 | top-1 agree | C++ top-1 agree |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in doc["rows"]:
        short = r["model"].split("_patch")[0]
        if "skipped" in r:
            lines.append(f"| {short} | {r['runtime']} | {r['precision']} | skipped: {r['skipped']} |"
                         + " |" * 9)  # fmt: skip
            continue
        py, cpp = r.get("python", {}), r.get("cpp", {})
        cold = " / ".join(x for x in (_cell(py, "cold_start_s"), _cell(cpp, "cold_start_s")) if x)
        lines.append(f"| {short} | {r['runtime']} | {r['precision']} | {r['bytes'] / 1e6:.1f} | {r['export_s']} | "
                     f"{_cell(py, 'bs1')} | {_cell(cpp, 'bs1')} | {_cell(py, 'bs8')} | {_cell(cpp, 'bs8')} | {cold} | "
                     f"{_cell(py, 'cosine_vs_fp32', '{:.6f}')} | {_cell(py, 'top1_agreement', '{:.3f}')} | "
                     f"{_cell(cpp, 'top1_agreement', '{:.3f}')} |")  # fmt: skip
    lines += ["", "## Serving the saved int8 IR", "", "| server | ready s (process start to /readyz 200) |", "|---|---|"]
    for what, result in doc["serve"].items():
        if isinstance(result, dict):
            lines.append(f"| {what}: `{result.get('command', '')}` | {result.get('ready_s', result.get('error'))} |")
    lines += ["", "## Targets", "", "| target | file | batch | measured | bound | |", "|---|---|---|---|---|---|"]
    for t in doc["targets"]:
        met = "met" if t["met"] else "**missed**"
        lines.append(f"| {t['target']} | {t['file']} | {t.get('batch_size', '')} | {t['value']} | {t['bound']} | {met} |")
    missed = [t for t in doc["targets"] if not t["met"]]
    lines += ["", f"{len(doc['targets']) - len(missed)} of {len(doc['targets'])} targets met."]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in doc["notes"]]
    (out / "deploy.md").write_text("\n".join(lines) + "\n")
    plot(doc, out / "deploy.png")


def plot(doc: dict, path: Path) -> None:
    """ms at batch 1 and 8 per file, Python and C++ side by side, one panel per model and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in doc["rows"]))
    fig, axes = plt.subplots(len(models), len(BATCH_SIZES), figsize=(12, 3.2 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        rows = [r for r in doc["rows"] if r["model"] == model and "skipped" not in r]
        labels = [f"{r['runtime']} {r['precision']}" for r in rows]
        for j, bs in enumerate(BATCH_SIZES):
            ax = axes[i][j]
            y = np.arange(len(rows))
            py = [r.get("python", {}).get(f"bs{bs}", {}).get("ms", 0) for r in rows]
            cpp = [r.get("cpp", {}).get(f"bs{bs}", {}).get("ms", 0) for r in rows]
            ax.barh(y - 0.2, py, 0.4, label="Python")
            ax.barh(y + 0.2, cpp, 0.4, label="C++")
            ax.set_yticks(y, labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("ms (lower is better)")
            ax.set_title(f"{model.split('_patch')[0]}, batch {bs}", fontsize=10)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"vitzoo exports in their runtimes ({doc['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quiet-s", type=float, default=10.0, help="wait up to this long for an idle CPU per turn")
    parser.add_argument("--work", type=Path, help="where the exports go (kept; reused by a rerun)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--no-serve", action="store_true")
    parser.add_argument("--report", type=Path, help="only rewrite deploy.md and deploy.png from this deploy.json")
    args = parser.parse_args()
    if args.report:
        doc = json.loads(args.report.read_text())
        doc["notes"] = NOTES
        write_report(doc, args.out)
        return
    torch.set_num_threads(args.threads)

    import skimage.data

    from vitzoo.bench.latency import device_name
    from vitzoo.infer import sample_photos
    from vitzoo.infer.fidelity import SAMPLE_PHOTOS

    work = args.work or Path(tempfile.mkdtemp(prefix="vitzoo-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"work folder: {work}")
    programs, cpp_reason = build_cpp(work / "cpp_build")
    say(f"C++ programs: {programs or cpp_reason}")
    photo_dir = Path(skimage.data.__file__).parent
    photo_files = [photo_dir / f for f in SAMPLE_PHOTOS]
    log = open(work / "workers.log", "a")
    rows = []
    weights = {}
    for name in args.models.split(","):
        say(f"== {name}")
        import vitzoo
        from vitzoo.infer import lively_init_

        photos = sample_photos(name)
        model = lively_init_(vitzoo.create_model(name)).eval()
        with torch.inference_mode():
            reference = model(photos).numpy()
        if name == "ViT_base_patch16_224":  # for the server that quantizes at start
            from safetensors.torch import save_file

            weights[name] = work / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights[name])
        del model
        model_rows = export_all(name, work / name, photos)
        photos_npy = work / name / "photos.npy"
        np.save(photos_npy, photos.numpy())
        for runtime in SUFFIX:
            say(f"-- {name} {runtime}")
            time_runtime(runtime, [r for r in model_rows if r["runtime"] == runtime], programs, args, work / name,
                         photos_npy, log)  # fmt: skip
        answers(model_rows, reference, programs, photo_files, args.threads)
        cold_starts(model_rows, programs, photo_files[0], args.threads)
        rows += model_rows
    serve = {"skipped": "--no-serve"}  # commands are shown with $WORK for the work folder
    if not args.no_serve and "ViT_base_patch16_224" in weights:
        calibration_dir = work / "calibration"
        calibration_dir.mkdir(exist_ok=True)
        for f in photo_dir.iterdir():
            if f.suffix.lower() in (".png", ".jpg"):
                shutil.copy(f, calibration_dir / f.name)
        serve = serve_int8(rows, weights["ViT_base_patch16_224"], calibration_dir, args.threads)

    def version(p):
        try:
            return f"{p} {importlib.metadata.version(p)}"
        except importlib.metadata.PackageNotFoundError:
            return f"{p} not installed"

    doc = {"command": "python benchmarks/deploy.py " + shlex.join(sys.argv[1:]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": device_name("cpu"),
           "threads": args.threads, "versions": ", ".join(version(p) for p in PACKAGES), "photos": len(photo_files),
           "cpp": cpp_reason or "built (examples/cpp, CMake, Release)", "rows": rows, "serve": serve,
           "notes": NOTES}  # fmt: skip
    doc["targets"] = targets(rows, serve if isinstance(serve.get("saved int8 IR"), dict) else {})
    write_report(doc, args.out)
    say(f"wrote {args.out / 'deploy.json'}, deploy.md and deploy.png")
    for t in doc["targets"]:
        if not t["met"]:
            say(f"missed: {t}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
