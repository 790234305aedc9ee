"""Weights: every published checkpoint format, loaded exactly and safely. Facts: shared/reference/weights.md."""

from .common import WeightsError
from .load import LoadReport, load_weights, read_weights

__all__ = ["LoadReport", "WeightsError", "load_weights", "read_weights"]
