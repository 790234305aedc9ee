"""Standard output kept for the caller's own results while a chatty library runs (NNCF's progress bars, the ONNX
exporter's messages), so `vitzoo ... --format json | jq` reads only JSON."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys


def _flush_all() -> None:
    """Out go Python's and C's buffered writes, to where descriptor 1 points now."""
    for stream in (sys.stdout, sys.__stdout__):
        if stream is not None:
            stream.flush()
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no C library to ask (not on Linux or macOS)
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def stdout_to_stderr():
    """Python's sys.stdout and file descriptor 1 both write to standard error until the block ends, exceptions
    included: nothing reaches the caller's standard output meanwhile. Process-wide (other threads' output moves too).
    """
    _flush_all()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _flush_all()
        os.dup2(saved, 1)
        os.close(saved)
