"""What each command takes, as typed data: one dataclass per command, the command line generated from them.

    from vitzoo import EvalConfig, run_eval
    result = run_eval(EvalConfig(model="DeiT_small_patch16_224", weights="paddleclas", data="val/"))

Every field's metadata carries its help text (the flag's help), its choices and, where the flag is not the field's
name, its flag; `vitzoo.cli` reads them to build the parser, so a flag and a field are one thing. `check()` finds
settings that cannot work, before anything is loaded. Training's configuration is `vitzoo.train.TrainConfig`.
"""

from __future__ import annotations

import os
import typing
from dataclasses import MISSING, dataclass, field

from .artifacts.card import RUNTIMES
from .data.transforms import PROTOCOLS, RUN_PROTOCOL
from .infer.paths import BACKENDS, PRECISIONS, InferencePath


class ConfigError(ValueError):
    """A setting that cannot be used: names the setting (as its flag) and what would be accepted."""


def option(default=MISSING, help: str = "", *, choices=None, flag: str | None = None, short: str | None = None,
           positional: bool = False, negate: str | None = None, factory=None):  # fmt: skip
    """A config field with what the command line needs: `flag` (default --field-name), `short` (-o), `positional`,
    `negate` (a bool shown as a flag that turns it off, e.g. --quiet for progress)."""
    metadata = {"help": help, "choices": choices, "flag": flag, "short": short, "positional": positional,
                "negate": negate}  # fmt: skip
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_of(name: str) -> str:
    """The flag of a field, for messages: --batch-size for batch_size."""
    return "--" + name.replace("_", "-")


def field_kind(hint) -> tuple[type, str | int | None, bool]:
    """(scalar type, shape, optional) of a config field's annotation: shape None (a scalar), "list" (any length) or
    the length of a fixed tuple. The command line and recipe files read fields through it."""
    optional = type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return args[0], "list", optional
    if origin is tuple:
        return args[0], len(args), optional
    return hint, None, optional


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


MODEL_HELP = ("a model name (`vitzoo models`), a `vitzoo train` output folder (its architecture, weights and classes) "
              "or an exported model file")  # fmt: skip


def _positive(config, *names: str, allow_none: bool = True) -> None:
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if value is None or value <= 0:
            raise ConfigError(f"{flag_of(name)} must be positive, got {value}")


def _choice(config, name: str, choices) -> None:
    value = getattr(config, name)
    if value is not None and value not in choices:
        raise ConfigError(f"{flag_of(name)} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(kw_only=True)
class ModelOptions:
    """The model to load (`vitzoo.factory.load_model`): a name with weights, a trained run's folder, an export."""

    model: str = option(help=MODEL_HELP)
    weights: str | None = option(None, "checkpoint file, Hugging Face folder, or known name (paddleclas, hf, timm); "
                                 "a run folder brings its own")  # fmt: skip
    num_classes: int = option(1000, "the checkpoint's classes (a named model)")
    pos_embed_resample: str = option("timm", "resampling a checkpoint's pos_embed to another grid: timm's loader "
                                     "(bicubic, antialiased) or DeiT's fine-tune code (plain bicubic)",
                                     choices=("timm", "deit"))  # fmt: skip

    def check(self):
        if not self.model:
            raise ConfigError("--model is needed: " + MODEL_HELP)
        _positive(self, "num_classes")
        _choice(self, "pos_embed_resample", ("timm", "deit"))
        return self


@dataclass(kw_only=True)
class PathOptions:
    """The inference path a model runs through (`vitzoo.infer`): precision, backend, device; int8's calibration."""

    precision: str | None = option(None, "fp32 (default), bf16, fp16 (weights and activations), int8 (static, "
                                   "calibrated); an exported model runs at its own", choices=PRECISIONS)  # fmt: skip
    backend: str | None = option(None, "eager (the model as written; default), fast (trimmed, fused eager), compile "
                                 "(torch.compile), cudagraph, onnxruntime, openvino (default for int8)",
                                 choices=BACKENDS)  # fmt: skip
    device: str = option("cpu", "cpu or cuda[:N] (under torchrun, cuda: each rank its LOCAL_RANK GPU)")
    calibration: str | None = option(None, "int8: images whose activations set the quantization ranges (a folder, "
                                     "any layout, or a list file; default: a trained run's own train set)")  # fmt: skip
    calibration_size: int = option(300, "int8: at most N calibration images, spread over the source")
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)")

    @property
    def path(self) -> InferencePath:
        return InferencePath(self.precision or "fp32", self.backend, self.device)

    def check(self):
        try:
            self.path  # refuses unknown precisions, backends and combinations no backend runs
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _positive(self, "calibration_size", "threads")
        return self


@dataclass(kw_only=True)
class EvalConfig(ModelOptions, PathOptions):
    """`vitzoo eval`: Top-1/Top-5 of a model on a labelled image set (`vitzoo.run_eval`)."""

    data: str = option(help="a folder of class folders (matched to the model's classes by name) or a list file "
                       "('relative/path label' per line, labels are class indices)")  # fmt: skip
    root: str | None = option(None, "image root of a list file (default: the list file's folder)")
    protocol: str | None = option(None, "preprocessing (default: seed; a run folder: run, its own)", choices=PROTOCOLS)
    batch_size: int = option(64, "images per forward")
    workers: int = option(factory=default_workers, help="data loading processes (0: in this process)")
    limit: int | None = option(None, "only the first N images")
    on_bad_image: str = option("fail", "an unreadable image stops the run, or is counted and skipped",
                               choices=("fail", "skip"))  # fmt: skip
    output: str | None = option(None, "write the result as JSON here", short="-o")
    predictions: str | None = option(None, "also write each image's top-k here, one JSON line per image")
    top_k: int = option(5, "classes per image in --predictions")
    progress: bool = option(True, "no progress bar", negate="--quiet")

    def check(self):
        ModelOptions.check(self)
        PathOptions.check(self)
        if not self.data:
            raise ConfigError("--data is needed: a folder of class folders or a list file")
        _positive(self, "batch_size", "limit", "top_k")
        _choice(self, "protocol", PROTOCOLS)
        _choice(self, "on_bad_image", ("fail", "skip"))
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        return self


@dataclass(kw_only=True)
class PredictConfig(ModelOptions, PathOptions):
    """`vitzoo predict`: the top-k classes of images (`vitzoo.run_predict`), or of a whole set into a JSONL file."""

    images: list[str] = option(factory=list, help="image files (or --data)", positional=True)
    data: str | None = option(None, "bulk: an image folder or a list file; under torchrun each image once")
    root: str | None = option(None, "bulk: image root of a list file (default: the list file's folder)")
    output: str | None = option(None, "bulk: the JSONL file (one line per image; a rerun resumes it)", short="-o")
    batch_size: int = option(64, "bulk: images per forward")
    workers: int = option(factory=default_workers, help="bulk: data loading processes")
    protocol: str | None = option(None, "preprocessing (default: seed; a run folder: run)", choices=PROTOCOLS)
    class_names: str | None = option(None, "a text file of class names, one per line in output order")
    top_k: int = option(5, "classes per image")
    progress: bool = option(True, "bulk: no progress bar", negate="--quiet")

    def check(self):
        ModelOptions.check(self)
        PathOptions.check(self)
        if bool(self.images) == bool(self.data):
            raise ConfigError("predict takes image files, or --data FOLDER|LIST with --output FILE.jsonl (not both)")
        if self.data and not self.output:
            raise ConfigError("--data needs --output FILE.jsonl (one JSON line per image)")
        _positive(self, "batch_size", "top_k")
        _choice(self, "protocol", PROTOCOLS)
        return self


@dataclass(kw_only=True)
class BenchConfig(PathOptions):
    """`vitzoo bench`: latency and throughput of models through an inference path, against peers
    (`vitzoo.run_bench`)."""

    models: list[str] = option(help="NAME[,NAME...]: model names or globs, or `vitzoo train` output folders",
                               flag="--model")  # fmt: skip
    weights: str | None = option(None, "checkpoint or known name (default: random weights)")
    batch_sizes: list[int] = option(factory=lambda: [1, 4, 8], help="comma-separated (default 1,4,8 as the seed)")
    throughput: bool = option(False, "add a large-batch images/s figure")
    throughput_batch: int | None = option(None, "its batch size (default 32 on CPU, 256 on CUDA)")
    compare: list[str] = option(factory=list, help="peers holding the same weights, of timm, openvino, onnxruntime, "
                                "paddle: timm alone is timed in this process, alternating; with any other, vitzoo's "
                                "path and each peer run in their own processes, taking turns on an idle CPU, each "
                                "peer at its fastest precision not below --precision")  # fmt: skip
    timm_baseline: str = option("same", "timm through the same path (default) or another, e.g. fp32-eager")
    warmup: int = option(3, "untimed forwards per batch size")
    runs: int = option(10, "timed forwards per batch size; with engines in processes, per round")
    rounds: int = option(3, "engines in processes: rounds of turns, the order reversed every round")
    wait_quiet: float | None = option(None, "on a shared CPU, wait up to this many seconds before each timed round "
                                      "for other processes to leave it idle (default: 0; 10 with engines in "
                                      "processes)")  # fmt: skip
    ceiling: bool = option(True, "CPU: no GEMM ceiling (each record's effective GFLOP/s and fraction of this CPU's "
                           "GEMM rate at its precision, measured in the same run)", negate="--no-ceiling")  # fmt: skip
    progress: bool = option(True, "no progress lines", negate="--quiet")

    def check(self):
        PathOptions.check(self)
        if not self.models:
            raise ConfigError("--model is needed: model names or globs, or run folders")
        if not (self.batch_sizes or self.throughput) or min(self.batch_sizes, default=1) < 1:
            raise ConfigError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        _positive(self, "throughput_batch", "runs", "rounds")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.wait_quiet is not None and self.wait_quiet < 0:
            raise ConfigError(f"--wait-quiet must be 0 or more, got {self.wait_quiet}")
        return self


EXPORT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TABLE_PROTOCOLS = tuple(p for p in PROTOCOLS if p != RUN_PROTOCOL)  # the table's models are named ones


@dataclass(kw_only=True)
class ExportConfig(ModelOptions):
    """`vitzoo export`: a model with its weights as a file another runtime loads, with no Python and no vitzoo
    (`vitzoo.run_export`); a sidecar OUT.json describes it (class names, input size, preprocessing)."""

    out: str = option(help="the output file: .onnx (ONNX Runtime), .xml (OpenVINO IR), .pt2 (AOTInductor), .pte "
                      "(ExecuTorch)", positional=True)  # fmt: skip
    format: str | None = option(None, "the file format (default: by OUT's suffix)", choices=RUNTIMES)
    precision: str = option("fp32", "onnx: fp32, fp16, int8; openvino: fp32, fp16, int8; pt2: fp32, bf16; "
                            "executorch: fp32, int8", choices=EXPORT_PRECISIONS)  # fmt: skip
    calibration: str | None = option(None, "int8: images whose activations set the quantization ranges (a folder, "
                                     "any layout, or a list file; default: a trained run's own train set)")  # fmt: skip
    calibration_size: int = option(300, "int8: at most N calibration images, spread over the source")
    batch: str = option("dynamic", "the batch the file takes: dynamic (any; executorch: 1) or N")
    img_size: int | None = option(None, "export a named model for another input size (pos_embed resampled)")

    @property
    def batch_size(self) -> int | None:
        return None if self.batch == "dynamic" else int(self.batch)

    def check(self):
        ModelOptions.check(self)
        _choice(self, "format", RUNTIMES)
        _choice(self, "precision", EXPORT_PRECISIONS)
        _positive(self, "img_size", "calibration_size")
        if self.batch != "dynamic" and not (str(self.batch).isdigit() and int(self.batch) > 0):
            raise ConfigError(f"--batch must be dynamic or a positive number, got {self.batch!r}")
        return self


@dataclass(kw_only=True)
class TableConfig:
    """`vitzoo table`: the seed's tables measured on this machine (`vitzoo.run_table`)."""

    models: list[str] = option(factory=list, help="comma-separated model names or globs (default: all 15)")
    latency: bool = option(True, "only Params and FLOPs (instant, no forward pass)", negate="--no-latency")
    batch_sizes: list[int] = option(factory=lambda: [1, 4, 8], help="comma-separated (default 1,4,8 as the seed)")
    device: str = option("cpu", "cpu or cuda[:N]")
    backend: str = option("fast", "the fp32 path latency is measured on (default fast: the seed measured an inference "
                          "engine, TensorRT)", choices=BACKENDS)  # fmt: skip
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)")
    warmup: int = option(1, "untimed forwards before timing each cell")
    runs: int = option(2, "at least this many timed forwards per cell; the median is reported with its spread")
    cell_budget_s: float = option(1.0, "more timed forwards while a cell has taken less than this many seconds")
    data: str | None = option(None, "ImageNet val (a folder of class folders or a list file): adds measured "
                              "Top-1/Top-5 beside the seed's")  # fmt: skip
    root: str | None = option(None, "image root of a list file")
    weights: str = option("paddleclas", "accuracy: paddleclas, hf, timm, or a FOLDER holding one file per model "
                          "named by it")  # fmt: skip
    protocol: str = option("seed", "accuracy: preprocessing", choices=TABLE_PROTOCOLS)
    output_dir: str | None = option(None, "accuracy: each model's result kept here as it finishes; a rerun skips those")
    batch_size: int = option(64, "accuracy: images per forward")
    workers: int = option(factory=default_workers, help="accuracy: data loading processes")
    progress: bool = option(True, "no progress bar", negate="--quiet")

    def check(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        _positive(self, "threads", "runs", "batch_size")
        if self.warmup < 0 or self.cell_budget_s < 0:
            raise ConfigError("--warmup and --cell-budget-s must be 0 or more")
        _choice(self, "protocol", TABLE_PROTOCOLS)
        try:
            InferencePath("fp32", self.backend, self.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self


@dataclass(kw_only=True)
class ServeConfig(ModelOptions, PathOptions):
    """`vitzoo serve`: a model as a web service (`vitzoo.serve.run`)."""

    class_names: str | None = option(None, "a text file of class names, one per line in output order")
    protocol: str | None = option(None, "default preprocessing (seed; a run folder: run); requests may ask for "
                                  "another", choices=PROTOCOLS)  # fmt: skip
    host: str = option("127.0.0.1", "address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 or :: for "
                       "every interface)")  # fmt: skip
    port: int = option(8000, "port to listen on")
    max_batch_size: int = option(16, "requests run through the model together")
    batch_timeout_ms: float = option(5.0, "how long a batch waits to fill up")
    workers: int = option(1, "model worker processes (each loads the model)")
    max_upload_mb: float = option(20.0, "largest request body")
    max_megapixels: float = option(50.0, "largest image, read from its header before decoding")
    timeout: float = option(30.0, "seconds a request may wait for its answer")
    grace_s: float = option(30.0, "on SIGTERM: seconds to answer the requests already received before exiting (new "
                            "ones get 503 meanwhile)")  # fmt: skip
    header_timeout_s: float = option(10.0, "seconds a client has to send a request's headers")
    log_level: str = option("info", "log level", choices=("debug", "info", "warning", "error"))

    def check(self):
        ModelOptions.check(self)
        PathOptions.check(self)
        _positive(self, "max_batch_size", "workers", "port", "max_upload_mb", "max_megapixels", "timeout", "grace_s",
                  "header_timeout_s", allow_none=False)  # fmt: skip
        if self.batch_timeout_ms < 0:
            raise ConfigError("--batch-timeout-ms must not be negative")
        _choice(self, "protocol", PROTOCOLS)
        _choice(self, "log_level", ("debug", "info", "warning", "error"))
        return self

