"""`vitzoo serve`: the flags. `add_parser(subparsers)` registers the subcommand in `vitzoo`; `python -m vitzoo.serve`
runs it on its own. The web stack (LitServe, FastAPI, uvicorn) is imported only when the command runs, so
`vitzoo --help` stays fast and works without it installed."""

from __future__ import annotations

import argparse
import sys

from ..cli.args import add_model_arguments, add_path_arguments

DESCRIPTION = ("Serve a model over HTTP: POST /v1/classify and /v1/attention, a web page at /, dynamic batching, "
               "/healthz, /readyz, /metrics. Listens on 127.0.0.1 unless --host says otherwise.")  # fmt: skip
PROTOCOLS = ["seed", "timm", "deit", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--class-names", help="a text file of class names, one per line in output order")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="default preprocessing (seed; a run folder: run); requests may ask for another")
    add_path_arguments(parser)
    group = parser.add_argument_group("serving")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                       "only; 0.0.0.0 or :: for every interface)")  # fmt: skip
    group.add_argument("--port", type=int, default=8000)
    group.add_argument("--max-batch-size", type=int, default=16, help="requests run through the model together")
    group.add_argument("--batch-timeout-ms", type=float, default=5.0,
                       help="how long a batch waits to fill up (default 5 ms)")
    group.add_argument("--workers", type=int, default=1, help="model worker processes (each loads the model)")
    group.add_argument("--threads", type=int, help="torch threads per worker (default: torch's choice)")
    group.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MB)")
    group.add_argument("--max-megapixels", type=float, default=50.0,
                       help="largest image, read from its header before decoding (default 50)")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for its answer")
    group.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _check(args) -> None:
    for name in ("max_batch_size", "workers", "port", "max_upload_mb", "max_megapixels", "timeout"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.batch_timeout_ms < 0:
        raise ValueError("--batch-timeout-ms must not be negative")


def run_command(args: argparse.Namespace) -> int:
    """The handler: errors in the flags or the model raise ValueError and friends, which `vitzoo` prints."""
    _check(args)
    try:
        from .server import serve
    except ImportError as e:
        print(f"vitzoo serve: error: {e.name or e} is not installed; pip install litserve fastapi uvicorn "
              "python-multipart prometheus-client", file=sys.stderr)  # fmt: skip
        return 2
    return serve(args)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="serve a model over HTTP (API, web page, dynamic batching)",
                                   description=DESCRIPTION)  # fmt: skip
    add_arguments(parser)
    parser.set_defaults(func=run_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m vitzoo.serve ...`: the subcommand on its own, with `vitzoo`'s error handling."""
    from ..data.datasets import DatasetError
    from ..specs import UnknownModelError
    from ..weights import WeightsError

    parser = argparse.ArgumentParser(prog="vitzoo serve", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except (UnknownModelError, WeightsError, DatasetError, ValueError, OSError) as e:
        print(f"vitzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
