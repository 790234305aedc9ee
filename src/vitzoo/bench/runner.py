"""Benchmarks: vitzoo's models through an inference path, beside the seed's V100 figures and, with compare="timm",
beside timm's equivalent holding the same weights, timed in the same process, alternating run by run; with peers
among openvino, onnxruntime and paddle, beside every peer named, each engine in its own process (`engines.py`).

One record per (model, precision, backend, device, batch size); see `RECORD_FIELDS`. A path other than fp32 eager
also records the cosine similarity of its logits to fp32 eager's on images of the model's own kind: a trained run's
validation set where the run recorded it, else real photographs (`vitzoo.infer.fidelity`); the record says which.
With engines in processes, one record per engine and batch size, and one for each peer skipped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import BenchConfig, ConfigError
from ..factory import LoadedModel, check_calibration, create_model, load_model, resolve_model, resolve_models
from ..infer import InferencePath, build_path, calibration_images, image_shape, lively_init_, logits_cosine, sample_photos
from ..infer.torch_paths import strict_fp32
from ..specs import SPECS
from .latency import device_name, random_images, set_threads, time_alternating

THROUGHPUT_BATCH = {"cpu": 32, "cuda": 256}
RECORD_FIELDS = (
    "model", "precision", "backend", "device", "batch_size", "ms_median", "ms_min", "ms_max", "images_per_s",
    "peak_mem_mb",
)  # fmt: skip
COMPARE_FIELDS = ("timm_ms_median", "ratio")
CEILING_FIELDS = ("effective_gflops", "ceiling_gflops", "ceiling_fraction", "ceiling_kernel")  # CPU, --no-ceiling off
FIDELITY_IMAGES = 8  # images of the model's own kind the cosine to fp32 eager is taken over
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
    """Images of the model's own kind, preprocessed its way: a trained run's validation set where it recorded one,
    else scikit-image's photographs (else random images), and what they are."""
    model = loaded.model
    device = next(model.parameters()).device
    own = loaded.data_set("val")
    if own is not None:
        images = calibration_images(own[0], loaded.transform(), FIDELITY_IMAGES, root=own[1])
        return images.to(device), f"{len(images)} images of the run's val set {own[0]}"
    photos = sample_photos(None, transform=loaded.transform())
    if photos is None:
        return random_images(model, FIDELITY_IMAGES, dtype=torch.float32, seed=0), f"{FIDELITY_IMAGES} random images"
    return photos.to(device), f"{len(photos)} scikit-image photos"


def _calibration(loaded: LoadedModel, config: BenchConfig) -> tuple[torch.Tensor, str]:
    """int8's calibration images (`LoadedModel.calibration_source`: --calibration, else the run's train set)."""
    data, root, what = loaded.calibration_source(config.calibration)
    return calibration_images(data, loaded.transform(), config.calibration_size, root=root), what


def _load(name: str, device: str, weights: str | None) -> LoadedModel:
    """The model to time: a trained run with its own weights, a table model with `weights`, or with random weights
    whose activations stay O(1) (timing does not depend on the values; near-zero ones would flatter lossy paths)."""
    if resolve_model(name).kind == "run":
        loaded = load_model(name, weights)
        loaded.model.to(device)
        return loaded
    with torch.device(device):  # parameters made (and initialised) on the device itself
        loaded = load_model(name, weights, random_weights=weights is None)
    if weights is None:
        lively_init_(loaded.model)
    loaded.model.eval()
    return loaded


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
    name: str, path: InferencePath, sizes, twin_path: InferencePath | None, config: BenchConfig, say, workdir: Path
) -> list[dict]:
    """The records of one model (see `run_bench`); `sizes`: (batch size, is the throughput figure)."""
    loaded = _load(name, path.device, config.weights)
    model = loaded.model
    fidelity = (path.precision, path.backend) != ("fp32", "eager")
    if fidelity:  # fp32 eager's logits, before the model is converted in place
        images, images_note = _fidelity_images(loaded)
        reference = model(images)
    calibration = calibration_note = None
    if path.precision == "int8" or (twin_path is not None and twin_path.precision == "int8"):
        calibration, calibration_note = _calibration(loaded, config)
    if twin_path is not None:
        twin, twin_info = _timm_twin(model)
        twin_run = build_path(twin, twin_path.precision, twin_path.backend, twin_path.device, calibration, workdir / "timm")
        twin_info.update({f"timm_{k}": v for k, v in twin_path.fields().items() if k != "device"})
    run = build_path(model, path.precision, path.backend, path.device, calibration, workdir / "vitzoo")
    common = {"model": loaded.name if loaded.name != "custom" else name, **path.fields(),
              "device_name": device_name(path.device), "path_notes": run.notes}  # fmt: skip
    if calibration_note:
        common["calibration"] = calibration_note
    quiet_s = config.wait_quiet or 0.0
    records = []
    for bs, throughput in sizes:
        say(f"{name} {path.precision} {path.backend} {path.device} batch {bs}")
        x = torch.randn(bs, *image_shape(model), device=path.device)
        candidates = {"vitzoo": lambda: run(x)}
        if twin_path is not None:
            candidates["timm"] = lambda: twin_run(x)
        timings = time_alternating(candidates, bs, path.device, config.warmup, config.runs, quiet_s)
        record = {**common, "batch_size": bs, **_timing_fields(timings["vitzoo"]), "runs": config.runs,
                  "warmup": config.warmup}  # fmt: skip
        if timings["vitzoo"].contended_runs is not None:
            record["contended_runs"] = timings["vitzoo"].contended_runs
        record.update(throughput=throughput, seed_v100_ms=_seed_ms(loaded, bs, throughput))
        if twin_path is not None:
            ratio = round(timings["vitzoo"].ms_median / timings["timm"].ms_median, 4)
            record.update(**twin_info, **_timing_fields(timings["timm"], "timm_"), ratio=ratio)
        records.append(record)
    if fidelity:  # at a batch size already compiled/captured, the images repeated to fill it
        bs = max(bs for bs, _ in sizes)
        pick = torch.arange(bs, device=images.device) % len(images)
        cosine = round(logits_cosine(run(images[pick]), reference[pick]), 6)
        for record in records:
            record.update(cosine_vs_fp32_eager=cosine, fidelity_images=images_note)
    return records


@torch.inference_mode()
def _bench_artifact(ref, sizes, config: BenchConfig, say) -> list[dict]:
    """An exported file timed in its own runtime (no PyTorch model built); its fidelity to fp32 eager was measured when
    it was exported (`vitzoo export` prints it) and shows in `vitzoo eval`."""
    if config.compare:
        raise ConfigError(f"{ref.path}: an exported model is timed alone (--compare sets vitzoo's paths against peers)")
    loaded = load_model(ref.path)
    run = loaded.runner(config)
    common = {"model": loaded.name if loaded.name != "custom" else ref.name, "artifact": str(ref.path),
              **run.path.fields(), "device_name": device_name("cpu"), "path_notes": run.notes}  # fmt: skip
    records = []
    for bs, throughput in sizes:
        say(f"{ref.name} ({run.path.name}) batch {bs}")
        x = torch.randn(bs, 3, loaded.img_size, loaded.img_size)
        timing = time_alternating({"artifact": lambda: run(x)}, bs, "cpu", config.warmup, config.runs,
                                  config.wait_quiet or 0.0)["artifact"]  # fmt: skip
        records.append({**common, "batch_size": bs, **_timing_fields(timing), "runs": config.runs,
                        "warmup": config.warmup, "throughput": throughput,
                        "seed_v100_ms": _seed_ms(loaded, bs, throughput)})  # fmt: skip
    return records


def _seed_ms(loaded: LoadedModel, batch_size: int, throughput: bool) -> float | None:
    """The seed's V100 figure for this batch size, where the seed has one."""
    if throughput or loaded.name not in SPECS:
        return None
    return SPECS[loaded.name].seed.latency_ms.get(batch_size)


def _isolation(threads: int, rounds: int, runs: int, quiet_s: float) -> str:
    wait = (f"before each turn, up to {quiet_s:g} s of waiting for an idle CPU" if quiet_s > 0
            else "no waiting for an idle CPU (--wait-quiet 0)")  # fmt: skip
    return (
        f"each engine in its own process ({threads} threads), built one at a time, then timed in turns: {rounds} "
        f"rounds of {runs} forwards, the order reversed every round; {wait}; ms median: the best round median"
    )


def _bench_engines(
    name: str, path: InferencePath, sizes, peers, twin_path: InferencePath | None, config: BenchConfig, say,
    workdir: Path,
) -> list[dict]:  # fmt: skip
    """The records of one model set against `peers`, each engine in its own process (see `run_bench`)."""
    from . import engines

    loaded = _load(name, "cpu", config.weights)
    model = loaded.model
    images, images_note = _fidelity_images(loaded)
    with torch.inference_mode():
        reference = model(images).numpy()
    wanted = {"vitzoo": ("vitzoo", path.precision, path.backend)}
    wanted.update({peer: engines.peer_engine(peer, path.precision, twin_path) for peer in peers})
    calibration = calibration_note = None
    if any(precision == "int8" for _, precision, _ in wanted.values()):
        calibration, calibration_note = _calibration(loaded, config)
    common = engines.prepare(workdir / "engines", model, images, calibration)
    threads = config.threads or torch.get_num_threads()
    quiet_s = ENGINE_WAIT_S if config.wait_quiet is None else config.wait_quiet
    model_name = loaded.name if loaded.name != "custom" else name
    what = {"vitzoo": f"vitzoo's model, {path.name}", **{peer: engines.PEERS[peer].what for peer in peers}}
    if twin_path is not None:
        what["timm"] = f"timm's model, {twin_path.name}"
    shared = {"device": "cpu", "device_name": device_name("cpu"), "rounds": config.rounds, "runs": config.runs,
              "warmup": config.warmup, "threads": threads, "fidelity_images": images_note,
              "isolation": _isolation(threads, config.rounds, config.runs, quiet_s)}  # fmt: skip
    if calibration_note:
        shared["calibration"] = calibration_note
    records = []
    log = workdir / "engines.log"
    processes = engines.running(wanted, common, threads, [bs for bs, _ in sizes], config.warmup, log, say)
    with processes as (started, skipped):
        logits = {engine: started[engine].logits() for engine in started}
        for bs, throughput in sizes:
            say(f"{name} batch {bs}: {', '.join(started)}, in turns")
            timings = engines.time_group(started, bs, config.rounds, config.runs, quiet_s)
            for engine, t in timings.items():
                _, precision, backend = wanted[engine]
                cosine, agreement = engines.cosine_and_agreement(logits[engine], reference)
                record = {
                    "model": model_name, "engine": engine, "engine_version": engines.engine_version(*wanted[engine]),
                    "precision": precision, "backend": backend, **shared, "batch_size": bs, "ms_median": t["ms"],
                    "ms_min": t["ms_min"], "ms_max": t["ms_max"], "images_per_s": t["images_per_s"],
                    "round_medians_ms": t["round_medians_ms"], "peak_mem_mb": started[engine].ready["peak_mem_mb"],
                    "throughput": throughput, "seed_v100_ms": _seed_ms(loaded, bs, throughput),
                    "cosine_vs_fp32_eager": cosine, "top1_agreement": agreement, "runs_on": what[engine],
                    "path_notes": started[engine].ready["notes"], "build_s": started[engine].ready["build_s"],
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


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> list[dict]:
    """`vitzoo bench`: time `config.models` through one inference path; a list of records (`RECORD_FIELDS`; with
    compare=["timm"], `COMPARE_FIELDS` and the rest of timm's figures; off fp32 eager, the logits' cosine to fp32
    eager's on images of the model's own kind, and which).

    Milliseconds per batch of random images (median, min, max over `runs` after `warmup`), images/s at the median,
    peak memory, the seed's V100 FP32 figure for that batch size. `throughput` adds a large batch
    (`throughput_batch`, default 32 on CPU, 256 on CUDA). compare=["timm"] builds timm's equivalent with vitzoo's
    weights, checks both hold the same weights and give the same fp32 logits, and times it in alternation, through
    the same path (timm_baseline="same") or another one ("fp32-eager", "bf16-cudagraph", ...). Without `weights`,
    models hold random weights with O(1) activations (`lively_init_`). int8 is calibrated on `calibration` (or a
    trained run's own train set). On a shared CPU, `wait_quiet` waits before each timed round for other processes
    to go idle (see `time_alternating`); records then count the rounds begun while they were not (`contended_runs`).

    compare with any of openvino, onnxruntime, paddle times, on the CPU, vitzoo's path and every peer named, each
    holding the same weights in its own process, taking turns (`engines.py`): `rounds` rounds of `runs` forwards,
    waiting before each turn up to `wait_quiet` (default 10 s) for an idle CPU; the figure is the best round median.
    A peer runs at its fastest precision not below the one asked for (timm: `timm_baseline`); one this machine
    cannot run gets a record saying why ("skipped"). `progress` receives a line per step.
    """
    from .engines import parse_peers

    config.check()
    device = str(torch.device(config.device))
    path = InferencePath(config.path.precision, config.path.backend, device).require()
    try:
        peers = parse_peers(config.compare)
    except ValueError as e:
        raise ConfigError(f"--compare: {e}") from None
    in_process = peers in ((), ("timm",))
    if not in_process and path.on_cuda:
        raise ConfigError("--compare with openvino, onnxruntime or paddle sets CPU engines against each other: "
                          "run it with --device cpu")  # fmt: skip
    twin_path = None
    if "timm" in peers:
        try:
            twin_path = path if config.timm_baseline == "same" else InferencePath.parse(config.timm_baseline, device)
        except ValueError as e:
            raise ConfigError(f"--timm-baseline: {e}") from None
    refs = resolve_models(config.models)
    if not in_process and any(ref.kind == "artifact" for ref in refs):
        raise ConfigError("--compare sets vitzoo's paths against peers; an exported model is timed in its own runtime "
                          "alone (export it in each format to compare them)")  # fmt: skip
    names = [ref.name for ref in refs]
    for name in names:
        check_calibration(name, path.precision, config.calibration)
    set_threads(config.threads)
    if path.on_cuda:
        strict_fp32()  # fp32 runs, vitzoo's and timm's, without TF32
    sizes = [(bs, False) for bs in config.batch_sizes]
    if config.throughput:
        sizes.append((config.throughput_batch or THROUGHPUT_BATCH[torch.device(device).type], True))
    say = progress or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="vitzoo-bench-") as tmp:
        records = []
        for name, ref in zip(names, refs):
            if ref.kind == "artifact":
                model_records = _bench_artifact(ref, sizes, config, say)
            elif in_process:
                model_records = _bench_model(name, path, sizes, twin_path, config, say, Path(tmp))
            else:
                model_records = _bench_engines(name, path, sizes, peers, twin_path, config, say, Path(tmp))
            if config.ceiling and not path.on_cuda:
                _add_ceiling(model_records, say)
            records += model_records
        return records


def _add_ceiling(records: list[dict], say) -> None:
    """Each timed record's effective rate (2 x the model's full MACs x images / time) and its fraction of this CPU's
    GEMM ceiling at the record's precision (`vitzoo.bench.ceiling`), measured here with the same threads, once per
    precision and batch size. A model whose architecture is not known here (an exported custom model) is left as is."""
    from ..profile import profile
    from .ceiling import effective_gflops, gemm_ceiling, unavailable

    ceilings, macs = {}, {}
    for r in records:
        precision = r.get("precision")  # fp32, bf16, int8; fp16 on a CPU has no ceiling (`unavailable` says so)
        if "ms_median" not in r or unavailable(precision) or r["model"] not in SPECS:
            continue
        if r["model"] not in macs:
            macs[r["model"]] = profile(r["model"]).macs_full
        key = (r["model"], precision, r["batch_size"])
        if key not in ceilings:
            say(f"GEMM ceiling, {precision}, batch {r['batch_size']}")
            with torch.device("meta"):
                cfg = create_model(r["model"]).cfg
            ceilings[key] = gemm_ceiling(precision, cfg, r["batch_size"], min_s=0.2)
        ceiling = ceilings[key]
        rate = effective_gflops(macs[r["model"]], r["batch_size"], r["ms_median"])
        r.update(effective_gflops=round(rate, 1), ceiling_gflops=ceiling["gflops"],
                 ceiling_fraction=round(rate / ceiling["gflops"], 3), ceiling_kernel=ceiling["kernel"])  # fmt: skip

