"""What `vitzoo` does with an error, for every subcommand: one line on stderr, one exit code per kind of error.

The table is read top to bottom, the first class that matches wins (subclasses before their bases). An error not in
it is a bug in vitzoo: its traceback is printed, exit code 1.
"""

from __future__ import annotations

import sys

from ..artifacts import ArtifactError
from ..bench.engines import EngineFailed
from ..config import ConfigError
from ..data.datasets import DatasetError
from ..data.transforms import BadImageError
from ..infer.paths import PathUnavailable
from ..serve import ServeError
from ..specs import UnknownModelError
from ..train import CheckpointError, NonFiniteLossError, TeacherError
from ..weights import WeightsError

# (error class, exit code, what it means). 2: what the command was given cannot be used (as argparse's own usage
# errors); 1: a process vitzoo started failed; 130: interrupted (as a shell reports SIGINT).
EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (ConfigError, 2, "a setting that cannot work"),
    (UnknownModelError, 2, "a model reference that names nothing"),
    (PathUnavailable, 2, "an inference path this machine cannot run"),
    (WeightsError, 2, "a weights file that cannot be used"),
    (ArtifactError, 2, "an exported model file that cannot be used"),
    (CheckpointError, 2, "a training checkpoint that cannot be used"),
    (TeacherError, 2, "a teacher that cannot be used"),
    (DatasetError, 2, "a data set that cannot be read"),
    (BadImageError, 2, "an image that cannot be read"),
    (NonFiniteLossError, 2, "training diverged with these settings"),
    (FileNotFoundError, 2, "a file that does not exist"),
    (OSError, 2, "a file or connection that failed"),
    (ValueError, 2, "a value that cannot work"),
    (EngineFailed, 1, "a benchmark engine's process failed"),
    (ServeError, 1, "the server's model worker could not load the model"),
    (KeyboardInterrupt, 130, "interrupted"),
)


def exit_code(error: BaseException) -> int | None:
    """The exit code of `error` by the table, None if it is not in it (a bug)."""
    for kind, code, _ in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return None


def one_line(error: BaseException) -> str:
    """The error's message on one line (KeyError's repr quotes taken off)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def report(command: str, error: BaseException) -> int:
    """Print `vitzoo COMMAND: error: ...` for an error of the table and return its exit code; re-raise any other."""
    code = exit_code(error)
    if code is None:
        raise error
    print(f"vitzoo {command}: error: {one_line(error)}", file=sys.stderr)
    return code
