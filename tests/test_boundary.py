"""The typed boundary: only `vitzoo.cli` knows argparse and nothing imports it, no import circles, every subcommand
a thin call of a Python function, and one table deciding what each error prints and exits with."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import vitzoo
from vitzoo.bench.engines import EngineFailed
from vitzoo.cli import errors
from vitzoo.cli.main import main
from vitzoo.config import ConfigError, EvalConfig, PredictConfig
from vitzoo.data.datasets import DatasetError
from vitzoo.data.transforms import BadImageError
from vitzoo.infer.paths import PathUnavailable
from vitzoo.serve import ServeError
from vitzoo.specs import UnknownModelError
from vitzoo.train import CheckpointError, NonFiniteLossError, TeacherError
from vitzoo.weights import WeightsError

SRC = Path(vitzoo.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str], top_level_only: bool) -> set[str]:
    """The vitzoo modules `name` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[: len(base) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import metrics` imports a module
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
            if target in known:
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
    return found - {name}


def test_only_cli_knows_argparse_and_nothing_imports_cli():
    for name, path in _modules().items():
        if name.startswith("vitzoo.cli") or name == "vitzoo.__main__":  # `python -m vitzoo` is the command itself
            continue
        text = path.read_text()
        assert "argparse" not in text, name
        assert not any(t.startswith("vitzoo.cli") for t in _imports(name, path, set(_modules()), False)), name


def test_no_import_circles():
    """Module-level imports form no cycle (a package's __init__ importing its own modules aside)."""
    modules = _modules()
    graph = {name: _imports(name, path, set(modules), True) for name, path in modules.items()}
    for name in graph:  # a module importing its own package's __init__ is how Python loads it, not a circle
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# -- one error table for every subcommand ------------------------------------------------------------------------------
# each subcommand: the flags it needs to parse, and the Python function it calls (module, attribute)
SUBCOMMANDS = {
    "table": (["--no-latency"], ("vitzoo.bench", "run_table")),
    "convert": (["a.pth", "b.safetensors", "--model", "DeiT_tiny_patch16_224"], ("vitzoo.weights.convert", "convert")),
    "eval": (["--model", "m", "--data", "d"], ("vitzoo.evaluate", "run_eval")),
    "predict": (["--model", "m", "x.png"], ("vitzoo.predict", "run_predict")),
    "bench": (["--model", "m"], ("vitzoo.bench", "run_bench")),
    "export": (["--model", "m", "out.onnx"], ("vitzoo.export", "run_export")),
    "train": (["--model", "custom"], ("vitzoo.train", "train")),
    "serve": (["--model", "m"], ("vitzoo.serve", "run")),
    "models": ([], ("vitzoo.specs", "list_models")),
}
ERRORS = [
    ConfigError("--top-k must be positive, got 0"), UnknownModelError("unknown model 'm'"),
    PathUnavailable("bf16 on this CPU: no AVX512-BF16"), WeightsError("w.pth: truncated"),
    CheckpointError("last.pt: another model"), TeacherError("teacher.pt: 5 classes"),
    DatasetError("val.txt:3: label out of range"), BadImageError("x.png: not a decodable image"),
    NonFiniteLossError("loss is nan at step 3"), EngineFailed("openvino: the worker died"),
    ServeError("the model worker could not load the model"),
    FileNotFoundError(2, "No such file or directory", "missing.png"), OSError("disk full"),
    ValueError("a message\nover two lines"), KeyboardInterrupt(),
]


def test_the_error_table_is_ordered_and_covers_every_error_class():
    classes = [kind for kind, _, _ in errors.EXIT_CODES]
    for i, kind in enumerate(classes):  # a subclass listed after its base would never be reached
        assert not any(issubclass(kind, earlier) for earlier in classes[:i]), kind
    assert {type(e) for e in ERRORS} <= set(classes)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_reports_every_error_in_one_line(command, monkeypatch, capsys):
    import importlib

    argv, (module, attribute) = SUBCOMMANDS[command]
    target = importlib.import_module(module)
    for error in ERRORS:
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(target, attribute, fail)
        code = main([command, *argv])
        captured = capsys.readouterr()
        assert code == errors.exit_code(error), (command, error)
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"vitzoo {command}: error: "), (command, error, captured.err)
        assert "Traceback" not in captured.err and captured.out == ""


def test_a_bug_is_not_dressed_as_an_error(monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("vitzoo.evaluate"), "run_eval", lambda config: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["eval", "--model", "m", "--data", "d"])


def test_every_subcommand_is_a_call_of_a_python_function():
    """The configs the CLI builds are the ones users build: flags and fields are one thing."""
    from vitzoo.cli.main import build_parser

    args = build_parser().parse_args(["eval", "--model", "DeiT_tiny_patch16_224", "--data", "val", "--top-k", "3",
                                      "--quiet", "--precision", "bf16"])  # fmt: skip
    from vitzoo.cli.flags import config_values

    config = EvalConfig(**config_values(EvalConfig, args))
    assert config == EvalConfig(model="DeiT_tiny_patch16_224", data="val", top_k=3, progress=False, precision="bf16")
    args = build_parser().parse_args(["predict", "--model", "m", "a.png", "b.png", "--top-k", "2"])
    assert PredictConfig(**config_values(PredictConfig, args)).images == ["a.png", "b.png"]


@pytest.mark.parametrize("argv, message", [
    (["predict", "--model", "DeiT_tiny_patch16_224", "--weights", "w", "x.png", "--top-k", "0"], "--top-k must be positive"),
    (["predict", "--model", "DeiT_tiny_patch16_224", "--weights", "w", "x.png", "--top-k", "-1"], "--top-k must be positive"),
    (["eval", "--model", "DeiT_tiny_patch16_22", "--data", "val"], "did you mean DeiT_tiny_patch16_224?"),
    (["predict", "--model", "DeiT_tiny_patch16_22", "x.png"], "did you mean DeiT_tiny_patch16_224?"),
    (["bench", "--model", "DeiT_tiny_patch16_22"], "did you mean DeiT_tiny_patch16_224?"),
    (["serve", "--model", "DeiT_tiny_patch16_224", "--weights", "w", "--precision", "int8"], "needs --calibration"),
    (["bench", "--model", "DeiT_tiny_patch16_224", "--precision", "int8"], "needs --calibration"),
])  # fmt: skip
def test_the_newcomers_mistakes_are_one_line(argv, message, capsys):
    """Each of these was a traceback, a wrong hint or a silent run."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_json_stdout_is_pure_while_libraries_print(monkeypatch, capfd):
    """Whatever a library prints while a command runs (to sys.stdout or to file descriptor 1) goes to stderr."""
    import os

    def chatty(config):
        print("progress bar")
        os.write(1, b"native progress\n")
        return [{"image": "x", "target": None, "top": []}]

    import importlib

    monkeypatch.setattr(importlib.import_module("vitzoo.predict"), "run_predict", chatty)
    assert main(["predict", "--model", "m", "x.png", "--format", "json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out) == [{"image": "x", "target": None, "top": []}]
    assert "progress bar" in err and "native progress" in err


def test_vitzoo_help_is_quick_and_needs_no_web_stack():
    code = ("import sys; from vitzoo.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'prometheus_client') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
