"""`vitzoo bench` and `vitzoo export` on the command line: thin over vitzoo.bench and vitzoo.infer.onnx.

`add_parsers(subparsers)` registers both subcommands on vitzoo's parser; `python -m vitzoo.bench.cli` runs them alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.args import add_model_arguments, add_path_arguments, int_list, load_model_from_args, model_list
from .engines import PEERS, EngineFailed, parse_peers


def peer_list(text: str) -> tuple[str, ...]:
    """--compare: comma-separated peers, each one `vitzoo bench` knows."""
    try:
        peers = parse_peers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (comma-separated)") from None
    if not peers:
        raise argparse.ArgumentTypeError(f"name a peer: {', '.join(PEERS)} (comma-separated)")
    return peers


def _cmd_bench(args) -> int:
    from .report import render
    from .runner import bench

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"vitzoo bench: {message}", file=sys.stderr, flush=True)

    try:
        records = bench(
            args.model, args.batch_sizes, precision=args.precision, backend=args.backend, device=args.device,
            calibration=args.calibration, calibration_size=args.calibration_size,
            threads=args.threads, warmup=args.warmup, runs=args.runs, throughput=args.throughput,
            throughput_batch=args.throughput_batch, compare=args.compare, timm_baseline=args.timm_baseline,
            weights=args.weights, quiet_wait_s=args.wait_quiet, progress=progress, rounds=args.rounds,
        )  # fmt: skip
    except EngineFailed as e:  # a peer's worker process: its one line, its log named
        print(f"vitzoo: error: {e}", file=sys.stderr)
        return 1
    text = render(records, args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_export(args) -> int:
    from ..infer.onnx import export_onnx, onnx_max_diff

    model = load_model_from_args(args, img_size=args.img_size).model
    path = export_onnx(model.eval(), args.out, opset=args.opset)
    print(f"wrote {path} (ONNX opset {args.opset}, input 'images' [batch, 3, {model.cfg.img_size}, "
          f"{model.cfg.img_size}], output 'logits' [batch, {model.num_classes}])")
    if args.check:
        print(f"onnxruntime vs eager: max |logit difference| {onnx_max_diff(model, path):.3g}")
    return 0


def add_parsers(subparsers) -> None:
    """Register `bench` and `export` on an argparse subparsers object."""
    from ..infer.onnx import DEFAULT_OPSET

    p = subparsers.add_parser(
        "bench", help="latency and throughput of inference paths, against timm, OpenVINO, ONNX Runtime, Paddle"
    )
    p.add_argument("--model", required=True, type=model_list,
                   help="NAME[,NAME...]: model names or globs, or `vitzoo train` output folders")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 4, 8], help="default 1,4,8 as the seed")
    add_path_arguments(p)
    p.add_argument("--threads", type=int,
                   help="CPU threads, for torch and onnxruntime, and each engine's process (default: torch's choice)")  # fmt: skip
    p.add_argument("--throughput", action="store_true", help="add a large-batch images/s figure")
    p.add_argument("--throughput-batch", type=int, help="its batch size (default 32 on CPU, 256 on CUDA)")
    p.add_argument("--compare", type=peer_list, metavar="PEER[,PEER...]",
                   help=f"peers holding the same weights, of {', '.join(PEERS)}: timm alone is timed in this process, "
                   "alternating; with any other, vitzoo's path and each peer run in their own processes, taking turns "
                   "on an idle CPU, each peer at its fastest precision not below --precision")  # fmt: skip
    p.add_argument("--timm-baseline", default="same", metavar="same|PRECISION-BACKEND",
                   help="timm through the same path (default) or another, e.g. fp32-eager")  # fmt: skip
    p.add_argument("--format", choices=["markdown", "json"], default="markdown")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards per batch size (default 3)")
    p.add_argument("--runs", type=int, default=10,
                   help="timed forwards per batch size (default 10); with engines in processes, per round")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3,
                   help="engines in processes: rounds of turns, the order reversed every round (default 3)")  # fmt: skip
    p.add_argument("--weights", help="checkpoint or known name (default: random weights)")
    p.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                   help="on a shared CPU, wait up to this long before each timed round (each engine's turn) for other "
                   "processes to leave it idle (default: 0, no waiting; 10 with engines in processes)")  # fmt: skip
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_bench)

    p = subparsers.add_parser("export", help="a model with its weights to ONNX (dynamic batch)")
    add_model_arguments(p)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("out", help="output .onnx file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; 23 writes attention as ONNX's Attention operator)")
    p.add_argument("--img-size", type=int, help="export for another input size (pos_embed resampled)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime vs eager check")
    p.set_defaults(func=_cmd_export)


def main(argv: list[str] | None = None) -> int:
    """The two subcommands alone (until vitzoo's own parser registers them), with vitzoo's error reporting."""
    from ..specs import UnknownModelError
    from ..weights import WeightsError

    parser = argparse.ArgumentParser(prog="vitzoo", description="vitzoo bench and export")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UnknownModelError, WeightsError, ValueError) as e:
        print(f"vitzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
