"""Shipped training recipes (YAML): `vitzoo train --config NAME`."""
