"""What a run leaves to read: the per-epoch JSON-lines metrics log and a PNG of the loss and accuracy curves."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

log = logging.getLogger("vitzoo")


class MetricsLog:
    """One JSON object per line and epoch; only the writing process (rank 0) makes one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def keep_until(self, epoch: int) -> None:
        """Drop rows of epochs after `epoch`: a run resumed from a checkpoint relogs what came after it."""
        rows = [r for r in self.rows() if r["epoch"] <= epoch]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def write_plot(rows: list[dict], path: str | Path) -> Path | None:
    """Loss (train, val) and accuracy (val; each head and EMA where present) per epoch; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plot of the training curves (pip install matplotlib)")
        return None
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        _line(ax_loss, rows, epochs, key, label)
    labels = (("val_top1", "val top-1"), ("val_top1_cls", "cls head"), ("val_top1_dist", "dist head"),
              ("ema_val_top1", "EMA top-1"))  # fmt: skip
    for key, label in labels:
        _line(ax_acc, rows, epochs, key, label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _line(ax, rows: list[dict], epochs: list[int], key: str, label: str) -> None:
    points = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=label)
