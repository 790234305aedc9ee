"""Inference engines timed side by side on the CPU, each in a process of its own, taking turns.

    common = prepare(workdir, model, photos)           # the weights and photographs every engine loads
    wanted = {"vitzoo": ("vitzoo", "bf16", "compile"), "openvino": peer_engine("openvino", "bf16")}
    with running(wanted, common, threads=2, batch_sizes=[1, 8]) as (engines, skipped):
        timings = time_group(engines, batch_size=1, rounds=3, runs=5, quiet_s=10)

Why processes, and why turns: the thread pools of OpenMP (torch, Paddle), oneDNN, TBB (OpenVINO) and ONNX Runtime
keep spinning for a while after each call, waiting for the next one. Two engines in one process, or two processes
timed at once, tax each other through those threads, and whichever is timed second looks slower than it is. So each
engine runs in its own process, with its thread count fixed at spawn (OMP_NUM_THREADS: Paddle's oneDNN reads it only
at start); engines are built one at a time; and they are timed one at a time, in rounds whose order alternates
(A B C, C B A, ...), the parent waiting before each turn for the whole CPU to go idle (the last engine's threads
asleep, other processes gone). An engine's figure is the best of its round medians.

An engine is (family, precision, backend). Family "vitzoo": vitzoo's model through `vitzoo.infer.build_path`;
"timm": timm's twin holding the same weights through the same paths (backends "openvino" and "onnxruntime" run timm's
ONNX export); "paddle": PaddleClas's model code in Paddle Inference (`vitzoo.bench.paddle_inference`). Every engine
loads the same state dict and classifies the same photographs. This module is the parent's side; the worker is
`vitzoo.bench.engine_worker` (`python -m vitzoo.bench.engine_worker SPEC`): JSON lines in on stdin, out on the stdout
it started with (whatever else prints there is sent to stderr). The worker imports nothing from here."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch


class Peer(NamedTuple):
    family: str
    backend: str | None  # None: timm's path follows vitzoo's (or --timm-baseline)
    what: str
    precisions: tuple[str, ...]  # what it runs here


# the peers `vitzoo bench --compare` knows
PEERS = {
    "timm": Peer("timm", None, "timm's model through vitzoo's path (or --timm-baseline)", ()),
    "openvino": Peer("timm", "openvino", "OpenVINO on timm's ONNX export (int8: NNCF)", ("int8", "bf16", "fp32")),
    "onnxruntime": Peer("timm", "onnxruntime", "ONNX Runtime on timm's ONNX export", ("fp32",)),
    "paddle": Peer("paddle", "paddle", "PaddleClas's model in Paddle Inference (oneDNN)", ("bf16", "fp32")),
}
_RANK = {"int8": 0, "bf16": 1, "fp16": 1, "fp32": 2}  # lower: fewer bits


def parse_peers(compare: str | Sequence[str] | None) -> tuple[str, ...]:
    """compare="timm,openvino" (or a sequence of names) as a tuple of `PEERS`; ValueError naming an unknown one."""
    if not compare:
        return ()
    names = compare.split(",") if isinstance(compare, str) else compare
    peers = tuple(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    unknown = [peer for peer in peers if peer not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    return peers


def peer_engine(peer: str, precision: str, timm_path=None) -> tuple[str, str, str]:
    """(family, precision, backend) of `peer` set against vitzoo at `precision`: timm through `timm_path` (an
    InferencePath), the others at their fastest precision not below the one asked for (ONNX Runtime: fp32, its only
    one; Paddle at int8: bf16)."""
    if peer == "timm":
        return "timm", timm_path.precision, timm_path.backend
    family, backend, _, precisions = PEERS[peer]
    return family, min((p for p in precisions if _RANK[p] >= _RANK[precision]), key=_RANK.get), backend


def unavailable(family: str, precision: str, backend: str) -> str | None:
    """None when this machine can run the engine, else one line why not."""
    if family == "paddle":
        from .paddle_inference import unavailable_reason

        return unavailable_reason(precision)
    if family == "timm" and importlib.util.find_spec("timm") is None:
        return "timm is not installed (pip install timm)"
    from ..infer import InferencePath

    return InferencePath(precision, backend, "cpu").unavailable_reason()


def engine_version(family: str, precision: str, backend: str) -> str:
    """The packages that run an engine, with their versions: "timm 1.0.31, openvino 2026.4.1"."""
    runtime = {"openvino": ["openvino"], "onnxruntime": ["onnxruntime"], "paddle": ["paddleclas", "paddlepaddle"]}
    packages = ([] if family == "paddle" else [family]) + runtime.get(backend, ["torch"])
    if backend == "openvino" and precision == "int8":
        packages.append("nncf")

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return ", ".join(f"{p} {version(p)}" for p in packages)


def prepare(workdir: str | Path, model, photos: torch.Tensor, calibration: torch.Tensor | None = None) -> dict:
    """Write what every engine loads to `workdir`: the model's weights, the photographs each engine classifies and,
    for int8, the calibration images. Returns the spec fields naming them (for `running`)."""
    from safetensors.torch import save_file

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    common = {
        "arch": asdict(model.cfg), "model_name": getattr(model, "model_name", "custom"), "workdir": str(workdir),
        "weights": str(workdir / "weights.safetensors"), "photos": str(workdir / "photos.npy"), "calibration": None,
    }  # fmt: skip
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, common["weights"])
    np.save(common["photos"], photos.float().cpu().numpy())
    if calibration is not None:
        common["calibration"] = str(workdir / "calibration.npy")
        np.save(common["calibration"], calibration.float().cpu().numpy())
    return common


# -- the parent -------------------------------------------------------------------------------------------------------
WORKER = "vitzoo.bench.engine_worker"  # the module each engine's process runs (`python -m WORKER SPEC`)


class EngineFailed(RuntimeError):
    """A worker could not build its engine, or died: one line, naming the engine and the workers' log."""


class Engine:
    """The parent's handle on one worker process: built and warmed up when made, then timed on request."""

    def __init__(self, spec: dict, log=None):
        self.name = spec["name"]
        self.spec = spec
        self.log = log
        # OMP_NUM_THREADS is set before any import: Paddle's oneDNN takes its thread count from it at start (and
        # paddle sets it to 1 in os.environ when it is unset). The worker imports the installed vitzoo, as this does.
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(spec["threads"]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER, json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, text=True, env=env,
        )  # fmt: skip
        self.ready = self._receive()

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        message = json.loads(line) if line else {}
        if "error" in message or not line:
            self.close()
            why = message.get("error") or f"the worker died (exit {self.proc.wait()})"
            where = f"; its log: {self.log.name}" if getattr(self.log, "name", None) else ""
            raise EngineFailed(f"{self.name}: {why}{where}")
        return message

    def time(self, batch_size: int, runs: int) -> list[float]:
        self.proc.stdin.write(json.dumps({"batch_size": batch_size, "runs": runs}) + "\n")
        self.proc.stdin.flush()
        return self._receive()["times_ms"]

    def logits(self) -> np.ndarray:
        """Its logits of the photographs."""
        return np.load(self.spec["logits_out"])

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(
    engines: Mapping[str, tuple[str, str, str]],
    common: dict,
    threads: int,
    batch_sizes: Sequence[int],
    warmup: int = 3,
    log=None,
    say: Callable[[str], None] = print,
) -> Iterator[tuple[dict[str, Engine], dict[str, str]]]:
    """Start each engine (`name -> (family, precision, backend)`) in its own process, one at a time so that builds
    never share the CPU; yield (the engines running, {name: why} for those this machine cannot run); stop them all
    at the end. `common`: from `prepare`; `log`: a file or path for the workers' stderr (default: this process's)."""
    started, skipped = {}, {}
    with contextlib.ExitStack() as stack:
        if isinstance(log, (str, Path)):
            log = stack.enter_context(open(log, "a"))

        @stack.callback
        def stop():
            for engine in started.values():
                engine.close()

        for name, (family, precision, backend) in engines.items():
            reason = unavailable(family, precision, backend)
            if reason:
                say(f"{name}: skipped: {reason}")
                skipped[name] = reason
                continue
            slug = "".join(c if c.isalnum() else "_" for c in name)
            spec = {
                **common, "name": name, "family": family, "precision": precision, "backend": backend, "slug": slug,
                "threads": threads, "batch_sizes": list(batch_sizes), "warmup": warmup,
                "logits_out": str(Path(common["workdir"]) / f"{slug}.logits.npy"),
            }  # fmt: skip
            tick = time.perf_counter()
            started[name] = Engine(spec, log)
            say(f"{name}: built in {time.perf_counter() - tick:.0f} s")
        yield started, skipped


def time_group(engines: Mapping[str, Engine], batch_size: int, rounds: int, runs: int, quiet_s: float) -> dict:
    """Time the engines in turns: `rounds` rounds of `runs` forwards each, the order reversed every round, waiting up
    to `quiet_s` before each turn for an idle CPU (0: no waiting). Per engine: ms (the best round median), the round
    medians, min, max, images/s, and how many turns began on a busy CPU (None when not waiting)."""
    from .latency import wait_for_quiet_cpu

    names = list(engines)
    medians = {n: [] for n in names}
    all_times = {n: [] for n in names}
    contended = 0
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if quiet_s > 0 and not wait_for_quiet_cpu(quiet_s):
                contended += 1
            times = engines[name].time(batch_size, runs)
            medians[name].append(statistics.median(times))
            all_times[name] += times
    return {
        n: {"ms": round(min(medians[n]), 3), "round_medians_ms": [round(m, 3) for m in medians[n]],
            "ms_min": round(min(all_times[n]), 3), "ms_max": round(max(all_times[n]), 3),
            "images_per_s": round(1000.0 * batch_size / min(medians[n]), 2),
            "contended_turns": contended if quiet_s > 0 else None}
        for n in names
    }  # fmt: skip


def cosine_and_agreement(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """The lowest cosine of each image's logits to the reference's, and the share of images with the same top-1."""
    from ..infer import logits_cosine

    a, b = torch.from_numpy(logits), torch.from_numpy(reference)
    cosine = logits_cosine(a, b)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return round(cosine, 6), round(agree, 4)
