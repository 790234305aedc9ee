"""`vitzoo` on the command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .specs import UnknownModelError, list_models
from .data.datasets import DatasetError
from .data.transforms import BadImageError
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


def _cmd_eval(args) -> int:
    from .evaluate import init_distributed, shutdown_distributed

    ctx = init_distributed(args.device)
    try:
        code = _eval(args, ctx)
    except BaseException:
        shutdown_distributed(sync=False)
        raise
    shutdown_distributed()
    return code


def _eval(args, ctx) -> int:
    import json

    import torch

    from .data.datasets import check_labels, load_samples
    from .data.transforms import eval_transform
    from .evaluate import evaluate
    from .factory import create_model
    from .specs import get_spec

    device = f"cuda:{ctx.local_rank}" if args.device == "cuda" and ctx.world_size > 1 else args.device
    spec = get_spec(args.model)
    samples = load_samples(args.data, args.root)
    if args.limit:
        samples = samples[: args.limit]
    model = create_model(spec.name, num_classes=args.num_classes, weights=args.weights)
    check_labels(samples, model.num_classes, str(args.data))
    if args.threads:
        torch.set_num_threads(args.threads)
    transform = eval_transform(spec.name, args.protocol)
    result = evaluate(
        model, samples, transform, batch_size=args.batch_size, workers=args.workers, device=device,
        on_bad_image=args.on_bad_image, progress=not args.quiet, ctx=ctx,
    )  # fmt: skip
    if not ctx.is_main:
        return 0
    seed = spec.seed
    record = {
        "model": spec.name, "weights": str(args.weights), "data": str(args.data), "protocol": args.protocol,
        **result, "batch_size": args.batch_size, "device": str(device),
        "seed": {"top1": seed.top1, "top5": seed.top5, "ref_top1": seed.ref_top1, "ref_top5": seed.ref_top5},
    }  # fmt: skip
    print(
        f"{spec.name} on {result['images']} images ({result['skipped']} skipped), protocol {args.protocol}: "
        f"Top-1 {result['top1']:.4f} (seed {seed.top1:.4f})  Top-5 {result['top5']:.4f} (seed {seed.top5:.4f})  "
        f"loss {result['loss']:.4f}  {result['images_per_s']:.1f} img/s"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(record, f, indent=2)
    return 0


def _cmd_predict(args) -> int:
    import json

    from .data.transforms import eval_transform
    from .evaluate import predict
    from .factory import create_model

    model = create_model(args.model, weights=args.weights)
    results = predict(model, args.images, eval_transform(args.model, args.protocol), args.top_k, args.device)
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result["image"])
        for entry in result["top"]:
            print(f"  {entry['probability']:.4f}  {entry['wnid']}  {entry['label']}")
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

    p = sub.add_parser("eval", help="Top-1/Top-5 on an ImageNet-style folder or a PaddleClas list file")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True, help="checkpoint file, Hugging Face folder, or known name")
    p.add_argument("--data", required=True, help="folder of class subfolders (sorted = class index) or a list file")
    p.add_argument("--root", help="image root for a list file (default: the list file's folder)")
    p.add_argument("--protocol", choices=["seed", "timm", "deit"], default="seed", help="preprocessing (default: seed)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank its LOCAL_RANK GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--on-bad-image", choices=["fail", "skip"], default="fail")
    p.add_argument("--output", "-o", help="write the result as JSON here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="top-5 ImageNet classes for images")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--protocol", choices=["seed", "timm", "deit"], default="seed")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_cmd_predict)

    from .bench_cli import add_parsers as add_bench_parsers
    from .train.cli import add_parser as add_train_parser

    add_train_parser(sub)
    add_bench_parsers(sub)

    p = sub.add_parser("models", help="list the model names")
    p.add_argument("pattern", nargs="?", help="case-insensitive substring or glob")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UnknownModelError, WeightsError, DatasetError, BadImageError, ValueError) as e:
        print(f"vitzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
