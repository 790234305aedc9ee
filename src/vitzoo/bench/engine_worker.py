"""One inference engine in a process of its own: `python -m vitzoo.bench.engine_worker SPEC`.

The parent (`vitzoo.bench.engines`: `Engine`, `running`) starts this module with a JSON spec naming the engine
(family, precision, backend), the thread count, the batch sizes, and the files every engine loads (the weights, the
photographs, for int8 the calibration images; written by `engines.prepare`). The worker builds the engine, warms it
up at each batch size, writes its logits of the photographs to spec["logits_out"], says it is ready, then times
forwards on request. The protocol is JSON lines: requests in on stdin ({"batch_size", "runs"} or {"quit": true}),
answers out on the stdout the process started with ({"ready": ...}, {"times_ms": [...]}, or {"error": "one line"}
if the engine cannot be built); whatever else prints to stdout (NNCF's progress, C libraries) is sent to stderr.

This module imports nothing of the parent's: the spec is all it is told.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

_PROTOCOL = sys.stdout


def _send(message: dict) -> None:
    _PROTOCOL.write(json.dumps(message) + "\n")
    _PROTOCOL.flush()


def build_engine(spec: dict, calibration: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The engine a spec names, as `run(images) -> logits`: vitzoo's model with the spec's weights, through
    `vitzoo.infer.build_path` (family "vitzoo"), as timm's twin through the same paths ("timm"), in Paddle
    Inference ("paddle"), or a file from `vitzoo export` in its own runtime ("artifact": spec["artifact"], no
    weights). Exported files go to `workdir/slug/`."""
    if spec["family"] == "artifact":
        from types import SimpleNamespace

        from ..artifacts import load_artifact

        return load_artifact(spec["artifact"]).runner(SimpleNamespace(threads=spec["threads"]))
    from safetensors.torch import load_file

    from ..model import ViTConfig, build_model

    with torch.device("meta"):  # no random init: every weight is loaded
        model = build_model(ViTConfig(**spec["arch"]))
    model.load_state_dict(load_file(spec["weights"]), assign=True)
    model = model.eval()
    model.model_name = spec["model_name"]
    family, precision, backend = spec["family"], spec["precision"], spec["backend"]
    workdir = Path(spec["workdir"]) / spec["slug"]
    if family == "paddle":
        from .paddle_inference import PaddlePredictor, export_paddle

        return PaddlePredictor(export_paddle(model, workdir / "model"), precision, threads=spec["threads"])
    if family == "timm":
        from .timm_twin import timm_twin

        model = timm_twin(model)
    from ..infer import build_path

    return build_path(model, precision, backend, "cpu", calibration, workdir)


def serve(spec: dict) -> None:
    """Build one engine, warm it up at each batch size, classify the photographs (logits to spec["logits_out"]),
    then time forwards on request until told to quit (or stdin closes)."""
    global _PROTOCOL
    _PROTOCOL = os.fdopen(os.dup(1), "w")  # the protocol keeps the real stdout; the rest (NNCF's progress, C
    os.dup2(2, 1)  # libraries) goes to stderr
    from .latency import _peak_memory_mb, _reset_peak_memory

    try:
        torch.set_num_threads(spec["threads"])
        photos = torch.from_numpy(np.load(spec["photos"]))
        calibration = None
        if spec["precision"] == "int8" and spec.get("calibration"):
            calibration = torch.from_numpy(np.load(spec["calibration"]))
        start = time.perf_counter()
        run = build_engine(spec, calibration)
        _reset_peak_memory(torch.device("cpu"))
        inputs = {bs: torch.randn(bs, *photos.shape[1:], generator=torch.Generator().manual_seed(bs))
                  for bs in spec["batch_sizes"]}  # fmt: skip
        with torch.inference_mode():
            for x in inputs.values():  # first calls compile, pack weights, create primitives
                for _ in range(spec["warmup"]):
                    run(x)
            peak = _peak_memory_mb(torch.device("cpu"))
            np.save(spec["logits_out"], run(photos).float().numpy())
    except Exception as e:
        traceback.print_exc()
        _send({"error": f"{type(e).__name__}: {e}".splitlines()[0]})
        return
    _send({"ready": True, "build_s": round(time.perf_counter() - start, 1), "notes": getattr(run, "notes", ""),
           "peak_mem_mb": round(peak, 1)})  # fmt: skip
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        x = inputs[request["batch_size"]]
        times = []
        with torch.inference_mode():
            for _ in range(request["runs"]):
                tick = time.perf_counter()
                run(x)
                times.append((time.perf_counter() - tick) * 1000.0)
        _send({"times_ms": times})


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
