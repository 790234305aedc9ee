"""`vitzoo` on the command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import __version__
from ..data.datasets import DatasetError
from ..data.transforms import BadImageError
from ..specs import UnknownModelError, list_models
from ..weights import WeightsError
from .args import (
    add_model_arguments, add_path_arguments, add_resample_argument, build_runner, int_list, load_model_from_args,
    model_list, read_class_names,
)  # fmt: skip


def _cmd_table(args) -> int:
    from tqdm import tqdm

    from ..bench.latency import set_threads
    from ..bench.table import build_table, render

    set_threads(args.threads)
    models = args.models or list_models()
    bar = tqdm(total=len(models), desc="vitzoo table", unit="model", file=sys.stderr, disable=args.quiet)

    def progress(done: int, name: str) -> None:
        bar.update(done - bar.n)
        bar.set_postfix_str(name)

    accuracy = _table_accuracy(args, models) if args.data else None
    if accuracy is not None and not accuracy[1].is_main:
        return 0
    with bar:
        rows = build_table(
            models, args.batch_sizes, latency=not args.no_latency, device=args.device,
            warmup=args.warmup, runs=args.runs, progress=progress,
        )  # fmt: skip
        progress(len(rows), "done")
    text = render(rows, args.format)
    if accuracy is not None:
        from ..bench.accuracy import accuracy_markdown

        results = accuracy[0]
        if args.format == "markdown":
            text = accuracy_markdown(results, args.weights, args.device, args.protocol) + "\n" + text
        elif args.format == "json":
            text = json.dumps({"accuracy": results, "table": json.loads(text)}, indent=2) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _table_accuracy(args, models):
    """Top-1/Top-5 of each model on --data (torchrun: each model's images split across the processes)."""
    from ..bench.accuracy import measure_accuracy
    from ..evaluate import init_distributed, shutdown_distributed

    ctx = init_distributed(args.device)
    device = f"cuda:{ctx.local_rank}" if args.device == "cuda" and ctx.world_size > 1 else args.device
    try:
        results = measure_accuracy(
            models, args.data, args.root, args.weights, args.protocol, device, args.output_dir, args.batch_size,
            args.workers, ctx, progress=None if args.quiet or not ctx.is_main else lambda m: print(m, file=sys.stderr),
        )  # fmt: skip
    except BaseException:
        shutdown_distributed(sync=False)
        raise
    shutdown_distributed()
    return results, ctx


def _cmd_convert(args) -> int:
    from ..factory import create_model
    from ..weights.convert import convert

    model = create_model(args.model, img_size=args.img_size)
    report = convert(args.src, args.dst, model, fmt=args.format, pos_embed_resample=args.pos_embed_resample)
    print(f"{report}\nwrote {args.dst}")
    return 0


def _cmd_eval(args) -> int:
    from ..evaluate import init_distributed, shutdown_distributed

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

    from ..data.datasets import check_labels, load_samples
    from ..evaluate import evaluate
    from ..specs import get_spec

    args.run_device = f"cuda:{ctx.local_rank}" if args.device == "cuda" and ctx.world_size > 1 else args.device
    samples = load_samples(args.data, args.root)
    if args.limit:
        samples = samples[: args.limit]
    loaded = load_model_from_args(args)
    check_labels(samples, loaded.model.num_classes, str(args.data))
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol = args.protocol or loaded.default_protocol
    transform = loaded.transform(protocol)
    runner = build_runner(args, loaded)
    result = evaluate(
        runner, samples, transform, batch_size=args.batch_size, workers=args.workers, device=args.run_device,
        on_bad_image=args.on_bad_image, progress=not args.quiet, ctx=ctx,
    )  # fmt: skip
    if not ctx.is_main:
        return 0
    record = {
        "model": loaded.name, "source": loaded.source, "weights": str(args.weights), "data": str(args.data),
        "protocol": protocol, "precision": runner.path.precision, "backend": runner.path.backend,
        "path_notes": runner.notes, **result, "batch_size": args.batch_size, "device": str(args.run_device),
    }  # fmt: skip
    seed1 = seed5 = ""
    if loaded.name != "custom":
        seed = get_spec(loaded.name).seed
        record["seed"] = {"top1": seed.top1, "top5": seed.top5, "ref_top1": seed.ref_top1, "ref_top5": seed.ref_top5}
        seed1, seed5 = f" (seed {seed.top1:.4f})", f" (seed {seed.top5:.4f})"
    print(
        f"{loaded.name} on {result['images']} images ({result['skipped']} skipped), protocol {protocol}, "
        f"{runner.path.name}: Top-1 {result['top1']:.4f}{seed1}  Top-5 {result['top5']:.4f}{seed5}  "
        f"loss {result['loss']:.4f}  {result['images_per_s']:.1f} img/s"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(record, f, indent=2)
    return 0


def _cmd_predict(args) -> int:
    import json

    from ..evaluate import predict

    if bool(args.images) == bool(args.data):
        raise ValueError("predict takes image files, or --data FOLDER|LIST with --output FILE.jsonl (not both)")
    if args.data and not args.output:
        raise ValueError("--data needs --output FILE.jsonl (one JSON line per image)")
    loaded = load_model_from_args(args)
    classes = loaded.classes  # None: ImageNet's (with wnids) for a 1000-class output, else indices
    if args.class_names:
        classes = read_class_names(args.class_names, loaded.model.num_classes)
    transform = loaded.transform(args.protocol)
    if args.data:
        return _predict_bulk(args, loaded, transform, classes)
    runner = build_runner(args, loaded)
    results = predict(runner, args.images, transform, args.top_k, args.device, classes=classes)
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result["image"])
        for entry in result["top"]:
            print(f"  {entry['probability']:.4f}  {entry['wnid']}  {entry['label']}")
    return 0


def _predict_bulk(args, loaded, transform, classes) -> int:
    from pathlib import Path

    from ..data.datasets import load_samples
    from ..evaluate import init_distributed, predict_to_jsonl, shutdown_distributed

    ctx = init_distributed(args.device)
    try:
        args.run_device = f"cuda:{ctx.local_rank}" if args.device == "cuda" and ctx.world_size > 1 else args.device
        samples = load_samples(args.data, args.root)
        root = Path(args.root) if args.root else (Path(args.data) if Path(args.data).is_dir() else Path(args.data).parent)
        runner = build_runner(args, loaded)
        result = predict_to_jsonl(
            runner, samples, transform, args.output, args.top_k, classes, args.batch_size, args.workers,
            args.run_device, root=root, progress=not args.quiet, ctx=ctx,
        )  # fmt: skip
    except BaseException:
        shutdown_distributed(sync=False)
        raise
    shutdown_distributed()
    if ctx.is_main:
        print(f"{args.output}: {result['images']} images ({result['skipped_as_done']} already done on rank 0)")
    return 0


def _cmd_models(args) -> int:
    for name in list_models(args.pattern):
        print(name)
    return 0


PROTOCOLS = ["seed", "timm", "deit", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitzoo", description="ViT and DeiT models: the PaddleClas series in PyTorch.")
    parser.add_argument("--version", action="version", version=f"vitzoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("table", help="the seed's Params/FLOPs and latency tables, measured on this machine")
    p.add_argument("--models", type=model_list, help="comma-separated model names or globs (default: all 15)")
    p.add_argument("--no-latency", action="store_true", help="only Params and FLOPs (instant, no forward pass)")
    p.add_argument("--format", choices=["markdown", "json", "csv"], default="markdown")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 4, 8], help="default 1,4,8 as the seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards before timing (default 2)")
    p.add_argument("--runs", type=int, default=5, help="timed forwards per batch size; the median is reported")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    group = p.add_argument_group("accuracy (the seed's Top-1/Top-5 columns, measured)")
    group.add_argument("--data", help="ImageNet val: a folder of class folders or a list file; adds measured Top-1/5")
    group.add_argument("--root", help="image root for a list file")
    group.add_argument("--weights", default="paddleclas",
                       help="paddleclas (default), hf, timm, or a FOLDER holding one file per model named by it")
    group.add_argument("--protocol", choices=["seed", "timm", "deit"], default="seed")
    group.add_argument("--output-dir", help="each model's result kept here as it finishes; a rerun skips those")
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("convert", help="any supported checkpoint -> canonical .safetensors (or .pdparams)")
    p.add_argument("src", help="a checkpoint file, a Hugging Face folder, or a known name (paddleclas, hf, timm)")
    p.add_argument("dst", help="output file: .safetensors (canonical, timm names) or .pdparams (PaddleClas)")
    p.add_argument("--model", required=True, help="the vitzoo model the weights belong to")
    p.add_argument("--format", choices=["safetensors", "pdparams"], help="default: from the output file's suffix")
    p.add_argument("--img-size", type=int, help="resample pos_embed for another input size")
    add_resample_argument(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("eval", help="Top-1/Top-5 on an ImageNet-style folder or a PaddleClas list file")
    add_model_arguments(p)
    p.add_argument("--data", required=True, help="folder of class subfolders (sorted = class index) or a list file")
    p.add_argument("--root", help="image root for a list file (default: the list file's folder)")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="preprocessing (default: seed; a run folder: run, the one it was validated with)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    add_path_arguments(p)  # --device cuda under torchrun: each rank its LOCAL_RANK GPU
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--on-bad-image", choices=["fail", "skip"], default="fail")
    p.add_argument("--output", "-o", help="write the result as JSON here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="top-k classes for images, or for a whole folder/list into a JSONL file")
    add_model_arguments(p)
    p.add_argument("images", nargs="*", help="image files (or use --data)")
    p.add_argument("--data", help="bulk: an ImageNet-style folder or a list file; under torchrun each image once")
    p.add_argument("--root", help="bulk: image root for a list file (default: the list file's folder)")
    p.add_argument("--output", "-o", help="bulk: the JSONL file (one line per image; a rerun resumes it)")
    p.add_argument("--batch-size", type=int, default=64, help="bulk: images per forward")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="bulk: data loading processes")
    p.add_argument("--quiet", "-q", action="store_true", help="bulk: no progress bar")
    p.add_argument("--protocol", choices=PROTOCOLS, help="preprocessing (default: seed; a run folder: run)")
    p.add_argument("--class-names", help="a text file of class names, one per line in output order")
    p.add_argument("--top-k", type=int, default=5)
    add_path_arguments(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_cmd_predict)

    from ..bench.cli import add_parsers as add_bench_parsers
    from ..serve.cli import add_parser as add_serve_parser
    from ..train.cli import add_parser as add_train_parser

    add_train_parser(sub)
    add_bench_parsers(sub)
    add_serve_parser(sub)

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
