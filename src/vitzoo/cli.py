"""`vitzoo` on the command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .specs import UnknownModelError, list_models
from .weights import WeightsError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _model_list(text: str) -> list[str]:
    """Comma-separated names or globs (case-insensitive), each of which must match a model."""
    names = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        matched = list_models(item) if any(c in item for c in "*?[") else [item]
        if not matched:
            raise argparse.ArgumentTypeError(f"no model matches {item!r}; known models: {', '.join(list_models())}")
        names += matched
    return names


def _cmd_table(args) -> int:
    from tqdm import tqdm

    from .table import build_table, render, set_threads

    set_threads(args.threads)
    models = args.models or list_models()
    bar = tqdm(total=len(models), desc="vitzoo table", unit="model", file=sys.stderr, disable=args.quiet)

    def progress(done: int, name: str) -> None:
        bar.update(done - bar.n)
        bar.set_postfix_str(name)

    with bar:
        rows = build_table(
            models, args.batch_sizes, latency=not args.no_latency, device=args.device,
            warmup=args.warmup, runs=args.runs, progress=progress,
        )  # fmt: skip
        progress(len(rows), "done")
    text = render(rows, args.format)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_convert(args) -> int:
    from .weights.convert import convert

    report = convert(args.src, args.dst, args.model, fmt=args.format, img_size=args.img_size)
    print(f"{report}\nwrote {args.dst}")
    return 0


def _cmd_models(args) -> int:
    for name in list_models(args.pattern):
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitzoo", description="ViT and DeiT models: the PaddleClas series in PyTorch.")
    parser.add_argument("--version", action="version", version=f"vitzoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("table", help="the seed's Params/FLOPs and latency tables, measured on this machine")
    p.add_argument("--models", type=_model_list, help="comma-separated model names or globs (default: all 15)")
    p.add_argument("--no-latency", action="store_true", help="only Params and FLOPs (instant, no forward pass)")
    p.add_argument("--format", choices=["markdown", "json", "csv"], default="markdown")
    p.add_argument("--batch-sizes", type=_int_list, default=[1, 4, 8], help="default 1,4,8 as the seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards before timing (default 2)")
    p.add_argument("--runs", type=int, default=5, help="timed forwards per batch size; the median is reported")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("convert", help="any supported checkpoint -> canonical .safetensors (or .pdparams)")
    p.add_argument("src", help="a checkpoint file, a Hugging Face folder, or a known name (paddleclas, hf, timm)")
    p.add_argument("dst", help="output file: .safetensors (canonical, timm names) or .pdparams (PaddleClas)")
    p.add_argument("--model", required=True, help="the vitzoo model the weights belong to")
    p.add_argument("--format", choices=["safetensors", "pdparams"], help="default: from the output file's suffix")
    p.add_argument("--img-size", type=int, help="resample pos_embed for another input size")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("models", help="list the model names")
    p.add_argument("pattern", nargs="?", help="case-insensitive substring or glob")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UnknownModelError, WeightsError, ValueError) as e:
        print(f"vitzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
