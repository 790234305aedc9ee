"""What every weight reader shares: the error type and array conversion."""

from __future__ import annotations

import numpy as np
import torch


class WeightsError(ValueError):
    """A weight file that cannot be loaded: names the file and the problem. Nothing has been loaded."""


def as_tensor(value) -> torch.Tensor:
    """numpy array or tensor -> a CPU tensor that owns its memory (never a view of a reader's buffer)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    array = np.asarray(value)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(np.array(array, copy=True))
