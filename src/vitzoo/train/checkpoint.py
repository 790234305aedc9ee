"""Training checkpoints: everything a run needs to continue bit-exactly, written atomically, read safely.

A checkpoint holds model, optimizer, schedule, loss scaler and EMA states, the position (epoch, step in the epoch,
global step), the running epoch statistics and every process's RNG states (Python, NumPy, torch CPU and CUDA).
It is written to a temporary file in the same folder and moved over the old one with os.replace, so a crash at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = "vitzoo-train-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed here: names the file and the reason."""


def rng_state() -> dict:
    """This process's RNG states, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically (temporary file, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def keep_copy(path: Path, copy: Path) -> None:
    """A lasting copy of a checkpoint: a hard link (last.pt is later replaced, not rewritten), else a file copy."""
    copy.unlink(missing_ok=True)
    try:
        os.link(path, copy)
    except OSError:
        import shutil

        shutil.copyfile(path, copy)


def checkpoint_path(resume: str | Path) -> Path:
    """A checkpoint file, or a run's output folder (its last.pt)."""
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def load_checkpoint(resume: str | Path) -> dict:
    path = checkpoint_path(resume)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torch.save zip that is truncated, or not one at all
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vitzoo training checkpoint (a weights file? use finetune for those)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')}, this vitzoo reads {VERSION}")
    return state


def check_identity(saved: dict, current: dict, path: str | Path) -> None:
    """The checkpoint's model must be the one being trained: same name, same architecture (classes included)."""
    if saved == current:
        return
    differences = [f"model {saved['model']} != {current['model']}"] if saved["model"] != current["model"] else []
    for key in sorted(set(saved["arch"]) | set(current["arch"])):
        a, b = saved["arch"].get(key), current["arch"].get(key)
        if a != b:
            differences.append(f"{key} {a} != {b}")
    raise CheckpointError(
        f"{checkpoint_path(path)}: written for another model than this run's "
        f"(checkpoint vs this run: {'; '.join(differences)})"
    )


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())
