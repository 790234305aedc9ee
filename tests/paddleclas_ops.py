"""PaddleClas's own preprocessing operators, imported from the paddleclas wheel without its package __init__.

`import paddleclas` pulls in requests, faiss and more; the operators live in two plain files that need only cv2,
numpy, PIL, six and paddle.vision.
"""

import functools
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import pytest


def paddleclas_folder() -> Path:
    """Where the paddleclas wheel put its files (found without importing it)."""
    try:
        return Path(importlib.metadata.distribution("paddleclas").locate_file("paddleclas"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("paddleclas is not installed (pip install --no-deps paddleclas)")


@functools.lru_cache(maxsize=None)
def _load():
    folder = paddleclas_folder() / "deploy" / "python"
    for name in ("paddleclas", "paddleclas.deploy", "paddleclas.deploy.python"):  # bare packages, no __init__ run
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
    modules = {}
    for stem in ("det_preprocess", "preprocess"):
        name = f"paddleclas.deploy.python.{stem}"
        if name not in sys.modules:
            file_spec = importlib.util.spec_from_file_location(name, folder / f"{stem}.py")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module
            file_spec.loader.exec_module(module)
        modules[stem] = sys.modules[name]
    return modules["preprocess"]


def load_preprocess_module():
    paddleclas_folder()
    pytest.importorskip("paddle")
    pytest.importorskip("six")
    return _load()
