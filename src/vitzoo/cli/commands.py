"""The subcommands: each builds its config from the flags, calls the Python function users can call, and prints.

`out` is standard output, kept for the command's answer alone (`main.reserved_stdout`): whatever else a library
prints while the command runs goes to standard error, so `--format json` output is pure JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from ..config import BenchConfig, EvalConfig, ExportConfig, PredictConfig, ServeConfig, TableConfig
from .flags import config_values


def _config(cls, args):
    return cls(**config_values(cls, args))


def _write(text: str, out, output: str | None) -> None:
    """`text` to the --output file, else to `out`."""
    if output:
        Path(output).write_text(text)
    else:
        out.write(text)
        out.flush()


def table(args, out) -> int:
    from ..bench import run_table

    config = _config(TableConfig, args)
    if args.output:
        with open(args.output, "w") as f:
            run_table(config, args.format, f)
    else:
        run_table(config, args.format, out)
    return 0


def convert(args, out) -> int:
    from ..factory import create_model
    from ..weights.convert import convert as convert_weights

    model = create_model(args.model, img_size=args.img_size)
    report = convert_weights(args.src, args.dst, model, fmt=args.format, pos_embed_resample=args.pos_embed_resample)
    out.write(f"{report}\nwrote {args.dst}\n")
    return 0


def evaluate(args, out) -> int:
    from ..evaluate import describe, run_eval

    record = run_eval(_config(EvalConfig, args))
    if int(os.environ.get("RANK", "0")) == 0:
        out.write(json.dumps(record, indent=2) + "\n" if args.format == "json" else describe(record) + "\n")
    return 0


def predict(args, out) -> int:
    from ..predict import run_predict

    config = _config(PredictConfig, args)
    result = run_predict(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.format == "json":
        out.write(json.dumps(result, indent=2) + "\n")
    elif config.data:
        out.write(f"{result['output']}: {result['images']} images ({result['skipped_as_done']} already done on "
                  "rank 0)\n")  # fmt: skip
    else:
        for record in result:
            out.write(record["image"] + "\n")
            for entry in record["top"]:
                out.write(f"  {entry['probability']:.4f}  {entry['label']}" + (f"  ({entry['wnid']})" if entry["wnid"]
                                                                                else "") + "\n")  # fmt: skip
    return 0


def bench(args, out) -> int:
    from ..bench import run_bench
    from ..bench.report import render

    def progress(message: str) -> None:
        print(f"vitzoo bench: {message}", file=sys.stderr, flush=True)

    records = run_bench(_config(BenchConfig, args), progress=progress if args.progress else None)
    _write(render(records, args.format), out, args.output)
    return 0


def export(args, out) -> int:
    from ..export import run_export

    out.write(f"{run_export(_config(ExportConfig, args))}\n")
    return 0


def train(args, out) -> int:
    from ..train import load_config
    from ..train import train as run_train
    from ..train.recipe import FIELDS

    if not logging.getLogger().handlers:
        main = os.environ.get("RANK", "0") == "0"
        logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")
    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    result = run_train(load_config(args.config, **overrides))
    if result.world_size == 1 or os.environ.get("RANK", "0") == "0":
        m = result.metrics
        heads = "".join(f"  {k} {m[k]:.4f}" for k in ("val_top1_cls", "val_top1_dist", "ema_val_top1") if k in m)
        out.write(
            f"trained {result.epochs} epochs ({result.global_step} steps, {result.seconds:.1f} s): "
            f"val top-1 {m.get('val_top1', float('nan')):.4f}{heads}; weights {result.weights}\n"
        )
    return 0


def serve(args, out) -> int:
    from ..serve import run

    return run(_config(ServeConfig, args))


def models(args, out) -> int:
    from ..specs import list_models

    for name in list_models(args.pattern):
        out.write(name + "\n")
    return 0
