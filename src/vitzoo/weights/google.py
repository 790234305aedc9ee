"""Google's original ViT release (.npz): JAX/Flax names and layouts.

CONTRACT (filled in by the weights-npz work):
- is_google_layout(keys) -> bool
- google_to_canonical(raw: dict[str, np.ndarray]) -> (canonical dict, list of canonical names that were mapped)
"""

from __future__ import annotations


def is_google_layout(keys) -> bool:
    return any("Transformer/" in k or k.endswith("embedding/kernel") for k in keys)


def google_to_canonical(raw: dict):
    raise ValueError("the Google .npz layout is not supported yet")
