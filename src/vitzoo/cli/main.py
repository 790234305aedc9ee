"""`vitzoo` on the command line: the flags of each subcommand are its config's fields (`vitzoo.config`,
`vitzoo.train.TrainConfig`), each subcommand a thin call of the Python function of the same job (`commands.py`), and
every error of the table in `errors.py` one line on stderr with its exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .. import __version__
from ..config import BenchConfig, EvalConfig, ExportConfig, PredictConfig, ServeConfig, TableConfig
from . import commands
from .errors import report
from .flags import add_config_arguments

TRAIN_GROUPS = {  # the first field of each group of training's flags, and the group's title
    "model": "model", "data": "data", "epochs": "optimisation", "smoothing": "regularisation and augmentation",
    "ema": "EMA, precision, memory", "distillation": "distillation", "output": "the run",
}  # fmt: skip
PATH_GROUP = {"precision": "inference path (vitzoo.infer)"}


def _add(sub, name: str, handler, help: str, config=None, formats=None, output: bool = False, **options):
    parser = sub.add_parser(name, help=help, description=help)
    if config is not None:
        add_config_arguments(parser, config, **options)
    if formats:
        parser.add_argument("--format", choices=formats, default=formats[0], help=f"default {formats[0]}")
    if output:
        parser.add_argument("--output", "-o", help="write to this file instead of standard output")
    parser.set_defaults(func=handler, command=name)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from ..train.recipe import CHOICES, TrainConfig, list_recipes

    parser = argparse.ArgumentParser(prog="vitzoo", description="ViT and DeiT models: the PaddleClas series in PyTorch.")
    parser.add_argument("--version", action="version", version=f"vitzoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add(sub, "table", commands.table, "the seed's Params/FLOPs and latency tables, measured on this machine",
         TableConfig, formats=["markdown", "json", "csv"], output=True)  # fmt: skip
    p = _add(sub, "convert", commands.convert, "any supported checkpoint -> canonical .safetensors (or .pdparams)")
    p.add_argument("src", help="a checkpoint file, a Hugging Face folder, or a known name (paddleclas, hf, timm)")
    p.add_argument("dst", help="output file: .safetensors (canonical, timm names) or .pdparams (PaddleClas)")
    p.add_argument("--model", required=True, help="the vitzoo model the weights belong to")
    p.add_argument("--format", choices=["safetensors", "pdparams"], help="default: from the output file's suffix")
    p.add_argument("--img-size", type=int, help="resample pos_embed for another input size")
    p.add_argument("--pos-embed-resample", choices=["timm", "deit"], default="timm",
                   help="timm's resampling (default) or DeiT's fine-tune code's")  # fmt: skip
    _add(sub, "eval", commands.evaluate, "Top-1/Top-5 on an image folder or a PaddleClas list file", EvalConfig,
         formats=["text", "json"], groups=PATH_GROUP)  # fmt: skip
    _add(sub, "predict", commands.predict, "top-k classes of images, or of a whole folder/list into a JSONL file",
         PredictConfig, formats=["text", "json"], groups=PATH_GROUP)  # fmt: skip
    _add(sub, "bench", commands.bench, "latency and throughput of inference paths, against timm, OpenVINO, "
         "ONNX Runtime and Paddle Inference", BenchConfig, formats=["markdown", "json"], output=True)  # fmt: skip
    _add(sub, "export", commands.export, "a model as a file ONNX Runtime, OpenVINO, AOTInductor or ExecuTorch loads", ExportConfig)
    p = _add(sub, "train", commands.train, "train or fine-tune with DeiT's recipe (distillation, torchrun, exact "
             "resume); flags over a recipe file over DeiT's defaults", TrainConfig, groups=TRAIN_GROUPS,
             choices=CHOICES, layered=True)  # fmt: skip
    p.add_argument("--config", help=f"a recipe file (.yaml, .json) or a shipped recipe: {', '.join(list_recipes())}")
    _add(sub, "serve", commands.serve, "serve a model over HTTP (API, web page, dynamic batching); listens on "
         "127.0.0.1 unless --host says otherwise", ServeConfig, groups=PATH_GROUP)  # fmt: skip
    p = _add(sub, "models", commands.models, "list the model names")
    p.add_argument("pattern", nargs="?", help="case-insensitive substring or glob")
    return parser


@contextlib.contextmanager
def reserved_stdout():
    """Standard output kept for the command's answer: while the command runs, whatever a library writes to file
    descriptor 1 or to sys.stdout (NNCF's progress bars, OpenVINO's notes) goes to stderr. Yields the stream the
    answer is written to."""
    stream = sys.stdout
    try:
        real = stream.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a captured sys.stdout (pytest's capsys): only Python writes
        real = False
    stream.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    answer = os.fdopen(os.dup(saved), "w", encoding="utf-8") if real else stream
    try:
        yield answer
    finally:
        answer.flush()
        if real:
            answer.close()
        sys.stdout = stream
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with reserved_stdout() as out:
            return args.func(args, out)
    except BaseException as e:  # noqa: BLE001  (the table decides: one line and its code, or a bug's traceback)
        if isinstance(e, SystemExit):
            raise
        return report(args.command, e)


if __name__ == "__main__":
    sys.exit(main())
