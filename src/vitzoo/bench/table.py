"""The seed's tables reproduced on this machine (`vitzoo table`, `run_table`): measured Params/FLOPs and FP32 latency
beside the seed's figures, and with `--data` measured Top-1/Top-5 beside the seed's (`accuracy.py`).

    from vitzoo import TableConfig, run_table
    rows = run_table(TableConfig(models=["DeiT_*"]), "markdown")   # the table on stdout, row by row

Latency is measured the way the seed did, on the fastest fp32 path: the seed timed an inference engine (TensorRT on a
V100), so the default is vitzoo's `fast` backend (`vitzoo.infer.build_path(model, "fp32", "fast")`), named in every
format. Each cell (a model at a batch size) takes warm-up forwards, then at least `runs` timed forwards, more while
the cell has taken less than `cell_budget_s`: a large model gets its `runs` and no more, a small one a steadier
median. Every cell reports its median, min and max and the number of timed forwards.

Latency does not depend on the weights' values, so the models are built on the meta device (no random init, which
takes seconds for ViT-Large) and filled with `lively_init_`'s quick random values: never uninitialised memory, whose
denormals or NaNs could change the speed.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import sys
from typing import Callable, Iterable, Iterator, Sequence, TextIO

import torch

from ..config import ConfigError, TableConfig
from ..specs import UnknownModelError, get_spec, list_models
from .latency import device_name, random_images, set_threads, time_cell

FORMATS = ("markdown", "json", "csv")
SEED_DEVICE = "V100, FP32, TensorRT"


def table_models(items: Iterable[str] | None) -> list[str]:
    """The table names that `items` (names, matched case-insensitively, or globs) stand for, in the order given and
    each once; none: all 15. UnknownModelError names an unknown model, or a glob that matches none."""
    names = []
    for item in items or list_models():
        item = str(item).strip()
        if any(c in item for c in "*?["):
            matched = list_models(item)
            if not matched:
                raise UnknownModelError(f"no model matches {item!r}; known models: {', '.join(list_models())}")
            names += matched
        else:
            names.append(get_spec(item).name)
    return list(dict.fromkeys(names))


def profile_row(name: str) -> dict:
    """A model's row without its latency: Params/FLOPs measured in the seed's convention (paddle.flops: leaf layers,
    Linear+Conv MACs) and in the full count, beside the seed's."""
    from ..profile import profile

    spec, prof = get_spec(name), profile(name)
    return {
        "model": spec.name,
        "img_size": prof.img_size,
        "params_m": round(prof.params_seed / 1e6, 4),
        "flops_g": round(prof.macs_seed / 1e9, 4),
        "seed_params_m": spec.seed.params_m,
        "seed_flops_g": spec.seed.flops_g,
        "params_full_m": round(prof.params_full / 1e6, 4),
        "macs_full_g": round(prof.macs_full / 1e9, 4),
        "latency_ms": {},  # batch size -> median ms per forward
        "latency_min_ms": {},
        "latency_max_ms": {},
        "latency_runs": {},  # batch size -> timed forwards
        "seed_latency_ms": dict(spec.seed.latency_ms),
        "device": None,
        "path": None,  # the inference path timed, e.g. fp32-fast
        "path_notes": None,
        "seed_device": SEED_DEVICE,
    }


def random_model(name: str, device: str = "cpu") -> torch.nn.Module:
    """Model `name` with random weights, quickly: built on the meta device (no init), then filled by `lively_init_`
    (O(1) activations, as trained weights give)."""
    from ..factory import create_model
    from ..infer import lively_init_

    with torch.device("meta"):
        model = create_model(name)
    return lively_init_(model.to_empty(device=device)).eval()


def table_rows(
    models: Iterable[str] | None = None,
    batch_sizes: Sequence[int] = (1, 4, 8),
    latency: bool = True,
    device: str = "cpu",
    backend: str = "fast",
    warmup: int = 1,
    runs: int = 3,
    cell_budget_s: float = 1.0,
    progress: Callable[[int, str], None] | None = None,
) -> Iterator[dict]:
    """One row per model, each yielded as soon as it is measured. FLOPs are MACs in the seed's convention
    (paddle.flops); `*_full` in the full count. Latency: fp32 through `backend` on `device` (`time_cell`).

    `progress(models_done, what)` is called as each model, and each of its cells, starts.
    """
    from ..infer import build_path

    names = table_models(models)
    where = device_name(device) if latency else None
    for done, name in enumerate(names):
        if progress:
            progress(done, name)
        row = profile_row(name)
        if latency:
            model = random_model(name, device)
            runner = build_path(model, "fp32", backend, device)
            row.update(device=where, path=runner.path.name, path_notes=runner.notes)
            for bs in batch_sizes:
                if progress:
                    progress(done, f"{name} bs{bs}")
                x = random_images(model, bs, device=device, dtype=torch.float32)
                t = time_cell(lambda: runner(x), bs, device, warmup, runs, cell_budget_s)
                row["latency_ms"][bs] = round(t.ms_median, 3)
                row["latency_min_ms"][bs] = round(t.ms_min, 3)
                row["latency_max_ms"][bs] = round(t.ms_max, 3)
                row["latency_runs"][bs] = t.runs
                del x
            del model, runner
            gc.collect()
        yield row


def build_table(models: Iterable[str] | None = None, batch_sizes: Sequence[int] = (1, 4, 8), **options) -> list[dict]:
    """`table_rows` as a list."""
    return list(table_rows(models, batch_sizes, **options))


# -- rendering ---------------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _columns(rows: list[dict], batch_sizes: Iterable[int] = ()) -> list[int]:
    """The batch sizes of the latency columns: the seed's and the measured ones."""
    return sorted({int(bs) for r in rows for key in ("seed_latency_ms", "latency_ms") for bs in r[key]}
                  | {int(bs) for bs in batch_sizes})  # fmt: skip


def markdown_header(batch_sizes: Sequence[int], path: str | None) -> str:
    """The table's header (two lines); the latency columns name the path timed."""
    head = ["Model", "Params (M)", "seed", "FLOPs (G)", "seed", "Params full (M)", "MACs full (G)"]
    head += [f"bs{bs} {path} ms (seed V100)" if path else f"bs{bs} ms (seed V100)" for bs in batch_sizes]
    return "| " + " | ".join(head) + " |\n" + "|" + "---|" * len(head) + "\n"


def latency_cell(row: dict, bs: int) -> str:
    """"median [min-max, n=runs] (seed)", or "- (seed)" where not measured."""
    seed = row["seed_latency_ms"].get(bs, row["seed_latency_ms"].get(str(bs)))
    ms = row["latency_ms"].get(bs, row["latency_ms"].get(str(bs)))
    if ms is None:
        return f"- ({_fmt(seed)})"
    low, high = (row[k].get(bs, row[k].get(str(bs))) for k in ("latency_min_ms", "latency_max_ms"))
    runs = row["latency_runs"].get(bs, row["latency_runs"].get(str(bs)))
    return f"{_ms(ms)} [{_ms(low)}-{_ms(high)}, n={runs}] ({_fmt(seed)})"


def markdown_row(row: dict, batch_sizes: Sequence[int]) -> str:
    cells = [row["model"], _fmt(row["params_m"]), _fmt(row["seed_params_m"]), _fmt(row["flops_g"]),
             _fmt(row["seed_flops_g"]), _fmt(row["params_full_m"]), _fmt(row["macs_full_g"])]  # fmt: skip
    cells += [latency_cell(row, bs) for bs in batch_sizes]
    return "| " + " | ".join(cells) + " |\n"


def markdown_note(rows: list[dict], timing: str | None = None) -> str:
    """The paragraph under the table: the conventions, the path timed, how each cell was timed, the machine."""
    note = "Params/FLOPs in the seed's convention (paddle.flops: leaf layers, Linear+Conv MACs); full: all parameters, "
    note += "attention matmuls included."
    devices = sorted({r["device"] for r in rows if r.get("device")})
    paths = sorted({f"{r['path']} path ({r['path_notes']})" if r.get("path_notes") else f"{r['path']} path"
                    for r in rows if r.get("path")})  # fmt: skip
    if devices:
        note += f" Latency: FP32 ms per batch through vitzoo's {'; '.join(paths)}, random weights; each cell "
        note += "the median [min-max, n = timed forwards]"
        note += f" ({timing})" if timing else " after warm-up"
        note += f"; measured on {'; '.join(devices)}. In parentheses: the seed's figure ({SEED_DEVICE})."
    else:
        note += f" Latency: not measured (--no-latency); in parentheses: the seed's figure ({SEED_DEVICE})."
    return "\n" + note + "\n"


def to_markdown(rows: list[dict], timing: str | None = None) -> str:
    columns = _columns(rows)
    path = next((r["path"] for r in rows if r.get("path")), None)
    body = "".join(markdown_row(r, columns) for r in rows)
    return markdown_header(columns, path) + body + markdown_note(rows, timing)


def to_csv(rows: list[dict]) -> str:
    columns = _columns(rows)
    out = io.StringIO()
    writer = csv.writer(out)
    scalar = [k for k in rows[0] if not isinstance(rows[0][k], dict)] if rows else []
    per_cell = ["latency_ms", "latency_min_ms", "latency_max_ms", "latency_runs", "seed_latency_ms"]
    writer.writerow(scalar + [f"{key}_bs{bs}" for key in per_cell for bs in columns])
    for r in rows:
        writer.writerow([r[k] for k in scalar] + [r[key].get(bs, r[key].get(str(bs), "")) for key in per_cell
                                                   for bs in columns])  # fmt: skip
    return out.getvalue()


def render(rows: list[dict], fmt: str, timing: str | None = None) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "markdown":
        return to_markdown(rows, timing)
    raise ValueError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")


# -- the command -------------------------------------------------------------------------------------------------------
def _timing(config: TableConfig) -> str:
    warm = f"{config.warmup} warm-up forward{'s' if config.warmup != 1 else ''}"
    return f"{warm}, then at least {config.runs} timed, more within {config.cell_budget_s:g} s per cell"


def run_table(config: TableConfig, fmt: str = "markdown", out: TextIO | None = None) -> list[dict]:
    """`vitzoo table`: the table of `config` written to `out` (default: sys.stdout) in `fmt` (markdown, json, csv).

    Markdown is written as it is measured (the header first, then each model's row as soon as it is done, flushed);
    json and csv whole at the end. `out` receives the table alone: progress goes to stderr, when `config.progress`.
    With `config.data`, measured Top-1/Top-5 (`accuracy.py`) come first: the seed's accuracy tables in markdown,
    {"accuracy", "table"} in json, top1/top5 columns in csv; under torchrun each model's images are split across the
    processes, and the other ranks return [] once accuracy is done. Only rank 0 writes and measures latency.
    Returns the rows (the json records)."""
    from tqdm import tqdm

    from ..distributed import distributed
    from ..infer import InferencePath

    config.check()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    names = table_models(config.models)  # an unknown name is refused before anything is loaded
    path = InferencePath("fp32", config.backend, config.device)
    if config.latency:
        path.require()  # a path this machine cannot run: PathUnavailable, before any work
    set_threads(config.threads)
    accuracy = None
    with distributed(config.device) as ctx:
        if config.data:
            from .accuracy import measure_accuracy

            say = (lambda message: print(message, file=sys.stderr, flush=True)) if config.progress else None
            accuracy = measure_accuracy(
                names, config.data, config.root, config.weights, config.protocol, ctx.device(config.device),
                config.output_dir, config.batch_size, config.workers, ctx, progress=say if ctx.is_main else None,
            )  # fmt: skip
    if not ctx.is_main:
        return []

    out = out if out is not None else sys.stdout
    bar = tqdm(total=len(names), desc="vitzoo table", unit="model", file=sys.stderr, disable=not config.progress)

    def write(text: str) -> None:  # around the progress bar, which may share the terminal
        bar.clear()
        out.write(text)
        out.flush()
        bar.refresh()

    def progress(done: int, what: str) -> None:
        bar.update(done - bar.n)
        bar.set_postfix_str(what)

    measured = config.batch_sizes if config.latency else []
    columns = sorted({bs for n in names for bs in get_spec(n).seed.latency_ms} | set(measured))
    rows = []
    with bar:
        if fmt == "markdown":
            if accuracy is not None:
                from .accuracy import accuracy_markdown

                write(accuracy_markdown(accuracy, config.weights, config.device, config.protocol) + "\n")
            write(markdown_header(columns, path.name if config.latency else None))
        rows_now = table_rows(names, config.batch_sizes, config.latency, config.device, config.backend, config.warmup,
                              config.runs, config.cell_budget_s, progress)  # fmt: skip
        for row in rows_now:
            if accuracy is not None:
                row.update(top1=accuracy[row["model"]]["top1"], top5=accuracy[row["model"]]["top5"])
            rows.append(row)
            if fmt == "markdown":
                write(markdown_row(row, columns))
        progress(len(rows), "done")
    if fmt == "markdown":
        write(markdown_note(rows, _timing(config) if config.latency else None))
    elif fmt == "json" and accuracy is not None:
        write(json.dumps({"accuracy": accuracy, "table": rows}, indent=2) + "\n")
    else:
        write(render(rows, fmt))
    return rows

