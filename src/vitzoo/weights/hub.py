"""Known weight names -> local files (downloaded on request into a cache).

CONTRACT (filled in by the weights-hub work):
- resolve(source, model_name) -> Path: a path as it is if it exists; a known name downloaded (or found in the cache).
"""

from __future__ import annotations

from pathlib import Path


def resolve(source, model_name: str | None = None) -> Path:
    return Path(source)
