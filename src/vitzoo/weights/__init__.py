"""Weights: every published checkpoint format, loaded exactly and safely. The formats and their names: README.md, "Weights"."""

from .common import WeightsError
from .convert import convert
from .load import LoadReport, load_weights, read_weights
from .pdparams import write_pdparams

__all__ = ["LoadReport", "WeightsError", "convert", "load_weights", "read_weights", "write_pdparams"]
