"""`vitzoo train`: the flags are TrainConfig's fields (same names, dashes for underscores), over a recipe file.

Precedence: DeiT's defaults < `--config` recipe < flags. `add_parser(subparsers)` registers the subcommand in
`vitzoo`; `python -m vitzoo.train.cli ...` runs it on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields

from ..specs import UnknownModelError
from .recipe import CHOICES, FIELDS, TrainConfig, field_kind, list_recipes, load_config
from .trainer import NonFiniteLossError, train

DESCRIPTION = "Train or fine-tune a ViT/DeiT with DeiT's recipe (distillation, torchrun, exact resume)."
# the first field of each group of flags, and the group's title
GROUPS = {
    "model": "model", "data": "data", "epochs": "optimisation", "smoothing": "regularisation and augmentation",
    "ema": "EMA, precision, memory", "distillation": "distillation", "output": "the run",
}  # fmt: skip


def _optional(kind: type):
    """A flag value where 'none' or 'null' means None (e.g. --clip-grad none)."""

    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    shipped = ", ".join(list_recipes())
    parser.add_argument("--config", help=f"a recipe file (.yaml, .json) or a shipped recipe: {shipped}")
    group = parser
    for f in fields(TrainConfig):
        if f.name in GROUPS:
            group = parser.add_argument_group(GROUPS[f.name])
        kind, length, optional = field_kind(f.name)
        default = "" if f.default is None else f" (default: {f.default})"
        options = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata["help"] + default}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _optional(kind) if optional else kind
            if length:
                options.update(nargs=length, metavar=f.name.upper())
            if f.name in CHOICES:
                options["choices"] = CHOICES[f.name]
        group.add_argument("--" + f.name.replace("_", "-"), **options)


def run_command(args: argparse.Namespace) -> int:
    """The handler: a config from the parsed flags, then `train`; errors are printed, not raised."""
    _configure_logging()
    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    try:
        result = train(load_config(args.config, **overrides))
    except (ValueError, UnknownModelError, NonFiniteLossError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"vitzoo train: error: {message}", file=sys.stderr)
        return 2
    if result.world_size == 1 or os.environ.get("RANK", "0") == "0":
        m = result.metrics
        heads = "".join(f"  {k} {m[k]:.4f}" for k in ("val_top1_cls", "val_top1_dist", "ema_val_top1") if k in m)
        print(
            f"trained {result.epochs} epochs ({result.global_step} steps, {result.seconds:.1f} s): "
            f"val top-1 {m.get('val_top1', float('nan')):.4f}{heads}; weights {result.weights}"
        )
    return 0


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        main = os.environ.get("RANK", "0") == "0"
        logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train or fine-tune (DeiT recipe)", description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run_command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitzoo train", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
