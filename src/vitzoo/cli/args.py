"""Argument types and flag groups shared by vitzoo's subcommands (no subcommand imports this package's main)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..infer.paths import BACKENDS, PRECISIONS
from ..specs import list_models


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def model_list(text: str) -> list[str]:
    """Comma-separated names or globs (case-insensitive), each of which must match a model, or run folders."""
    names = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if Path(item).is_dir():  # a trained run's output folder
            names.append(item)
            continue
        matched = list_models(item) if any(c in item for c in "*?[") else [item]
        if not matched:
            raise argparse.ArgumentTypeError(f"no model matches {item!r}; known models: {', '.join(list_models())}")
        names += matched
    return names


MODEL_HELP = "a model name (vitzoo models), or a `vitzoo train` output folder (its architecture, weights and classes)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model NAME|RUN_FOLDER, --weights, --num-classes: the model to load (`vitzoo.factory.load_model`)."""
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--weights", help="checkpoint file, Hugging Face folder, or known name (a run folder: its own)")
    parser.add_argument("--num-classes", type=int, default=1000, help="the checkpoint's classes (a named model)")
    add_resample_argument(parser)


def add_resample_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pos-embed-resample", choices=["timm", "deit"], default="timm",
                        help="resampling a checkpoint's pos_embed to another grid: timm's loader (default; bicubic "
                        "antialiased) or DeiT's fine-tune code (plain bicubic)")  # fmt: skip


def read_class_names(path, num_classes: int) -> list[str]:
    """--class-names: one name per line in output order, as many as the model has outputs."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ValueError(f"{path}: cannot read the class names: {e.strerror or e}") from None
    if len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names for a model with {num_classes} outputs")
    return names


def load_model_from_args(args, img_size: int | None = None):
    """The LoadedModel the flags name; a named model needs --weights (a run folder brings its own)."""
    from ..factory import load_model

    if args.weights is None and not Path(args.model).is_dir():
        raise ValueError(f"--weights is needed for {args.model} (a run folder brings its own)")
    return load_model(args.model, weights=args.weights, num_classes=args.num_classes, img_size=img_size,
                      pos_embed_resample=args.pos_embed_resample)


def add_path_arguments(parser: argparse.ArgumentParser, calibration: bool = True) -> None:
    """--precision, --backend, --device (and int8's --calibration): the inference path to run through."""
    group = parser.add_argument_group("inference path (vitzoo.infer)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32, bf16, fp16 (weights and activations), int8 (static, calibrated)")  # fmt: skip
    group.add_argument("--backend", choices=BACKENDS,
                       help="eager (the model as written; default), fast (trimmed, fused eager), compile "
                       "(torch.compile), cudagraph, onnxruntime, openvino (default for int8)")  # fmt: skip
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    if calibration:
        group.add_argument("--calibration", metavar="FOLDER|LIST|IMAGE",
                           help="int8: images whose activations set the quantization ranges (a folder, any layout, "
                           "or a list file)")  # fmt: skip
        group.add_argument("--calibration-size", type=int, default=300, metavar="N",
                           help="int8: at most N calibration images, spread over the source (default 300)")


def build_runner(args, loaded, workdir=None):
    """The inference path the flags name, built for `loaded` (a LoadedModel); int8 calibrated on --calibration."""
    from ..infer import build_path, calibration_images

    calibration = None
    if args.precision == "int8":
        if not getattr(args, "calibration", None):
            raise ValueError("--precision int8 needs --calibration FOLDER|LIST: images to calibrate activations on")
        calibration = calibration_images(args.calibration, loaded.transform(getattr(args, "protocol", None)),
                                         args.calibration_size)  # fmt: skip
    device = getattr(args, "run_device", None) or args.device
    return build_path(loaded.model, args.precision, args.backend, device, calibration, workdir)
