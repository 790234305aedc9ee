"""Benchmarks: vitzoo's models through an inference path, beside the seed's V100 figures and, with compare="timm",
beside timm's equivalent holding the same weights, timed in the same process, alternating run by run; with peers
among openvino, onnxruntime and paddle, beside every peer named, each engine in its own process (`engines.py`).

One record per (model, precision, backend, device, batch size); see `RECORD_FIELDS`. A path other than fp32 eager
also records the cosine similarity of its logits to fp32 eager's on real photographs (`vitzoo.infer.fidelity`).
With engines in processes, one record per engine and batch size (`ENGINE_FIELDS`), and one for each peer skipped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..factory import LoadedModel, create_model, load_model
from ..infer import (
    InferencePath, PathUnavailable, build_path, calibration_images, image_shape, lively_init_, logits_cosine,
    sample_photos,
)  # fmt: skip
from ..infer.torch_paths import strict_fp32
from ..specs import get_spec
from .latency import device_name, random_images, set_threads, time_alternating

THROUGHPUT_BATCH = {"cpu": 32, "cuda": 256}
RECORD_FIELDS = (
    "model", "precision", "backend", "device", "batch_size", "ms_median", "ms_min", "ms_max", "images_per_s",
    "peak_mem_mb",
)  # fmt: skip
COMPARE_FIELDS = ("timm_ms_median", "ratio")
ENGINE_FIELDS = ("engine", "engine_version", "ratio", "cosine_vs_fp32_eager", "isolation")  # ratio: peers only
ENGINE_WAIT_S = 10.0  # engines in processes: how long to wait before each turn for an idle CPU, unless told


def _ms(value: float) -> float:
    return round(value, 3)


def _timing_fields(timing, prefix: str = "") -> dict:
    return {
        f"{prefix}ms_median": _ms(timing.ms_median), f"{prefix}ms_min": _ms(timing.ms_min),
        f"{prefix}ms_max": _ms(timing.ms_max), f"{prefix}images_per_s": round(timing.images_per_s, 2),
        f"{prefix}peak_mem_mb": timing.peak_mem_mb,
    }  # fmt: skip


def _fidelity_images(loaded: LoadedModel) -> tuple[torch.Tensor, str]:
    model = loaded.model
    photos = sample_photos(None, transform=loaded.transform())
    if photos is None:
        return random_images(model, 8, dtype=torch.float32, seed=0), "8 random images"
    return photos.to(next(model.parameters()).device), f"{len(photos)} scikit-image photos"


def _build(name: str, device: str, weights: str | None) -> LoadedModel:
    if Path(name).is_dir():  # a trained run: its own weights
        loaded = load_model(name, weights)
        loaded.model.to(device)
        return loaded
    with torch.device(device):  # parameters made (and initialised) on the device itself
        model = create_model(name, weights=weights) if weights else lively_init_(create_model(name))
    return LoadedModel(model.eval(), model.model_name, name)


def _timm_twin(model: nn.Module) -> tuple[nn.Module, dict]:
    from .timm_twin import check_twin, timm_name, timm_twin, uses_default_attention

    twin = timm_twin(model)
    info = {
        "timm_model": timm_name(model),
        "timm_logits_max_diff": check_twin(model, twin, random_images(model, 2, dtype=torch.float32, seed=0)),
    }
    if not uses_default_attention(twin):
        info["timm_note"] = "timm's explicit attention: its fused path cannot take this model's scale"
    return twin, info


@torch.inference_mode()
def _bench_model(
    name: str,
    path: InferencePath,
    sizes: Sequence[tuple[int, bool]],
    warmup: int,
    runs: int,
    twin_path: InferencePath | None,
    weights: str | None,
    calibration_source,
    calibration_size: int,
    quiet_wait_s: float,
    say: Callable[[str], None],
    workdir: Path,
) -> list[dict]:
    """The records of one model (see `bench`); `sizes`: (batch size, is the throughput figure)."""
    loaded = _build(name, path.device, weights)
    model = loaded.model
    fidelity = (path.precision, path.backend) != ("fp32", "eager")
    if fidelity:  # fp32 eager's logits, before the model is converted in place
        photos, photos_note = _fidelity_images(loaded)
        reference = model(photos)
    calibration = None
    if path.precision == "int8":
        calibration = photos
        if calibration_source:
            calibration = calibration_images(calibration_source, loaded.transform(), calibration_size)
    if twin_path is not None:
        twin, twin_info = _timm_twin(model)
        twin_run = build_path(twin, twin_path.precision, twin_path.backend, twin_path.device, calibration, workdir / "timm")
        twin_info.update({f"timm_{k}": v for k, v in twin_path.fields().items() if k != "device"})
    run = build_path(model, path.precision, path.backend, path.device, calibration, workdir / "vitzoo")
    common = {"model": loaded.name if loaded.name != "custom" else name, **path.fields(), "device_name": device_name(path.device), "path_notes": run.notes}
    records = []
    for bs, throughput in sizes:
        say(f"{name} {path.precision} {path.backend} {path.device} batch {bs}")
        x = torch.randn(bs, *image_shape(model), device=path.device)
        candidates = {"vitzoo": lambda: run(x)}
        if twin_path is not None:
            candidates["timm"] = lambda: twin_run(x)
        timings = time_alternating(candidates, bs, path.device, warmup, runs, quiet_wait_s)
        record = {**common, "batch_size": bs, **_timing_fields(timings["vitzoo"]), "runs": runs, "warmup": warmup}
        if timings["vitzoo"].contended_runs is not None:
            record["contended_runs"] = timings["vitzoo"].contended_runs
        seed_ms = None if throughput or loaded.name == "custom" else get_spec(loaded.name).seed.latency_ms.get(bs)
        record.update(throughput=throughput, seed_v100_ms=seed_ms)
        if twin_path is not None:
            ratio = round(timings["vitzoo"].ms_median / timings["timm"].ms_median, 4)
            record.update(**twin_info, **_timing_fields(timings["timm"], "timm_"), ratio=ratio)
        records.append(record)
    if fidelity:  # at a batch size already compiled/captured, the photos repeated to fill it
        bs = max(bs for bs, _ in sizes)
        pick = torch.arange(bs, device=photos.device) % len(photos)
        cosine = round(logits_cosine(run(photos[pick]), reference[pick]), 6)
        for record in records:
            record.update(cosine_vs_fp32_eager=cosine, fidelity_images=photos_note)
    return records


def _isolation(threads: int, rounds: int, runs: int, quiet_s: float) -> str:
    wait = (f"before each turn, up to {quiet_s:g} s of waiting for an idle CPU" if quiet_s > 0
            else "no waiting for an idle CPU (--wait-quiet 0)")  # fmt: skip
    return (
        f"each engine in its own process ({threads} threads), built one at a time, then timed in turns: {rounds} "
        f"rounds of {runs} forwards, the order reversed every round; {wait}; ms median: the best round median"
    )


def _bench_engines(
    name: str,
    path: InferencePath,
    sizes: Sequence[tuple[int, bool]],
    peers: Sequence[str],
    twin_path: InferencePath | None,
    settings: dict,
    say: Callable[[str], None],
    workdir: Path,
) -> list[dict]:
    """The records of one model set against `peers`, each engine in its own process (see `bench`)."""
    from . import engines

    loaded = _build(name, "cpu", settings["weights"])
    model = loaded.model
    photos, photos_note = _fidelity_images(loaded)
    with torch.inference_mode():
        reference = model(photos).numpy()
    wanted = {"vitzoo": ("vitzoo", path.precision, path.backend)}
    wanted.update({peer: engines.peer_engine(peer, path.precision, twin_path) for peer in peers})
    calibration = None
    if any(precision == "int8" for _, precision, _ in wanted.values()):
        calibration = photos
        if settings["calibration"]:
            calibration = calibration_images(settings["calibration"], loaded.transform(), settings["calibration_size"])
    common = engines.prepare(workdir / "engines", model, photos, calibration)
    threads, rounds, runs, quiet_s = (settings[k] for k in ("threads", "rounds", "runs", "quiet_wait_s"))
    model_name = loaded.name if loaded.name != "custom" else name
    what = {"vitzoo": f"vitzoo's model, {path.name}", **{peer: engines.PEERS[peer].what for peer in peers}}
    if twin_path is not None:
        what["timm"] = f"timm's model, {twin_path.name}"
    shared = {"device": "cpu", "device_name": device_name("cpu"), "rounds": rounds, "runs": runs,
              "warmup": settings["warmup"], "threads": threads, "fidelity_images": photos_note,
              "isolation": _isolation(threads, rounds, runs, quiet_s)}  # fmt: skip
    records = []
    log = workdir / "engines.log"
    processes = engines.running(wanted, common, threads, [bs for bs, _ in sizes], settings["warmup"], log, say)
    with processes as (started, skipped):
        logits = {engine: started[engine].logits() for engine in started}
        for bs, throughput in sizes:
            say(f"{name} batch {bs}: {', '.join(started)}, in turns")
            timings = engines.time_group(started, bs, rounds, runs, quiet_s)
            seed_ms = None if throughput or loaded.name == "custom" else get_spec(loaded.name).seed.latency_ms.get(bs)
            for engine, t in timings.items():
                _, precision, backend = wanted[engine]
                cosine, agreement = engines.cosine_and_agreement(logits[engine], reference)
                record = {
                    "model": model_name, "engine": engine, "engine_version": engines.engine_version(*wanted[engine]),
                    "precision": precision, "backend": backend, **shared, "batch_size": bs, "ms_median": t["ms"],
                    "ms_min": t["ms_min"], "ms_max": t["ms_max"], "images_per_s": t["images_per_s"],
                    "round_medians_ms": t["round_medians_ms"], "peak_mem_mb": started[engine].ready["peak_mem_mb"],
                    "throughput": throughput, "seed_v100_ms": seed_ms, "cosine_vs_fp32_eager": cosine,
                    "top1_agreement": agreement, "runs_on": what[engine], "path_notes": started[engine].ready["notes"],
                    "build_s": started[engine].ready["build_s"],
                }  # fmt: skip
                if engine != "vitzoo":
                    record["ratio"] = round(timings["vitzoo"]["ms"] / t["ms"], 4)
                if t["contended_turns"] is not None:
                    record["contended_turns"] = t["contended_turns"]
                records.append(record)
    for engine, reason in skipped.items():
        _, precision, backend = wanted[engine]
        records.append({"model": model_name, "engine": engine, "precision": precision, "backend": backend,
                        "device": "cpu", "runs_on": what[engine], "skipped": reason})  # fmt: skip
    return records


def bench(
    models: Iterable[str],
    batch_sizes: Sequence[int] = (1, 4, 8),
    precision: str = "fp32",
    backend: str = "eager",
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 10,
    throughput: bool = False,
    throughput_batch: int | None = None,
    compare: str | Sequence[str] | None = None,
    timm_baseline: str = "same",
    weights: str | None = None,
    calibration=None,
    calibration_size: int = 300,
    quiet_wait_s: float | None = None,
    progress: Callable[[str], None] | None = None,
    rounds: int = 3,
) -> list[dict]:
    """Time `models` through one inference path; a list of records (`RECORD_FIELDS`; with compare="timm",
    `COMPARE_FIELDS` and the rest of timm's figures; off fp32 eager, the logits' cosine to fp32 eager's).

    Milliseconds per batch of random images (median, min, max over `runs` after `warmup`), images/s at the median,
    peak memory, the seed's V100 FP32 figure for that batch size. `throughput` adds a large batch
    (`throughput_batch`, default 32 on CPU, 256 on CUDA). compare="timm" builds timm's equivalent with vitzoo's
    weights, checks both hold the same weights and give the same fp32 logits, and times it in alternation, through
    the same path (timm_baseline="same") or another one ("fp32-eager", "bf16-cudagraph", ...). Without `weights`,
    models hold random weights with O(1) activations (`lively_init_`): timing does not depend on the values.
    On a shared CPU, `quiet_wait_s` waits before each timed round for other processes to go idle (see
    `time_alternating`); records then count the rounds begun while they were not (`contended_runs`).

    compare="timm,openvino,onnxruntime,paddle" (any of them but timm alone; a comma list or a sequence) times, on
    the CPU, vitzoo's path and every peer named, each holding the same weights in its own process, taking turns
    (`engines.py`): `rounds` rounds of `runs` forwards, waiting before each turn up to `quiet_wait_s` (default 10 s)
    for an idle CPU; the figure is the best round median. A peer runs at its fastest precision not below the one
    asked for (timm: `timm_baseline`); one this machine cannot run gets a record saying why ("skipped").
    """
    device = str(torch.device(device))
    path = InferencePath(precision, backend, device)
    reason = path.unavailable_reason()
    if reason:
        raise PathUnavailable(reason)
    from .engines import parse_peers  # here: `python -m vitzoo.bench.engines` must find it not yet imported

    peers = parse_peers(compare)
    in_process = peers in ((), ("timm",))
    if not in_process and path.on_cuda:
        raise ValueError("--compare with openvino, onnxruntime or paddle sets CPU engines against each other: "
                         "run it with --device cpu")  # fmt: skip
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be >= 1, got {runs} and {rounds}")
    twin_path = None
    if "timm" in peers:
        twin_path = path if timm_baseline == "same" else InferencePath.parse(timm_baseline, device)
    names = [name if Path(name).is_dir() else get_spec(name).name for name in models]
    set_threads(threads)
    if torch.device(device).type == "cuda":
        strict_fp32()  # fp32 runs, vitzoo's and timm's, without TF32
    sizes = [(bs, False) for bs in batch_sizes]
    if throughput:
        sizes.append((throughput_batch or THROUGHPUT_BATCH[torch.device(device).type], True))
    if not sizes:
        raise ValueError("no batch sizes to time")
    say = progress or (lambda message: None)
    settings = {
        "weights": weights, "calibration": calibration, "calibration_size": calibration_size, "warmup": warmup,
        "runs": runs, "rounds": rounds, "threads": threads or torch.get_num_threads(),
        "quiet_wait_s": ENGINE_WAIT_S if quiet_wait_s is None else quiet_wait_s,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vitzoo-bench-") as tmp:
        records = []
        for name in names:
            if not in_process:
                records += _bench_engines(name, path, sizes, peers, twin_path, settings, say, Path(tmp))
                continue
            records += _bench_model(
                name, path, sizes, warmup, runs, twin_path, weights, calibration, calibration_size, quiet_wait_s or 0.0,
                say, Path(tmp),
            )  # fmt: skip
        return records
