"""The seed's tables reproduced on this machine: measured Params/FLOPs and latency beside the seed's figures."""

from __future__ import annotations

import csv
import io
import json
from typing import Callable, Iterable, Sequence

from ..factory import create_model
from ..profile import profile
from ..specs import get_spec, list_models
from .latency import device_name, measure_latency


def build_table(
    models: Iterable[str] | None = None,
    batch_sizes: Sequence[int] = (1, 4, 8),
    latency: bool = True,
    device: str = "cpu",
    warmup: int = 2,
    runs: int = 5,
    progress: Callable[[int, str], None] | None = None,
) -> list[dict]:
    """One record per model. FLOPs are MACs in the seed's convention (paddle.flops); `*_full` in the full count.

    `progress(models_done, model_now)` is called as each model starts.
    """
    names = [get_spec(m).name for m in models] if models else list_models()
    where = device_name(device) if latency else None
    rows = []
    for done, name in enumerate(names):
        spec = get_spec(name)
        if progress:
            progress(done, name)
        prof = profile(name)
        row = {
            "model": name,
            "img_size": prof.img_size,
            "params_m": round(prof.params_seed / 1e6, 4),
            "flops_g": round(prof.macs_seed / 1e9, 4),
            "seed_params_m": spec.seed.params_m,
            "seed_flops_g": spec.seed.flops_g,
            "params_full_m": round(prof.params_full / 1e6, 4),
            "macs_full_g": round(prof.macs_full / 1e9, 4),
            "latency_ms": {},
            "seed_latency_ms": dict(spec.seed.latency_ms),
            "device": where,
            "seed_device": "V100, FP32, TensorRT",
        }
        if latency:
            model = create_model(name).to(device).eval()
            for bs in batch_sizes:
                row["latency_ms"][bs] = round(measure_latency(model, bs, warmup, runs).ms_median, 3)
            del model
        rows.append(row)
    return rows


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def to_markdown(rows: list[dict]) -> str:
    batch_sizes = sorted({bs for r in rows for bs in r["seed_latency_ms"]} | {bs for r in rows for bs in r["latency_ms"]})
    head = ["Model", "Params (M)", "seed", "FLOPs (G)", "seed", "Params full (M)", "MACs full (G)"]
    head += [f"bs{bs} ms (seed V100)" for bs in batch_sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], _fmt(r["params_m"]), _fmt(r["seed_params_m"]), _fmt(r["flops_g"]), _fmt(r["seed_flops_g"])]
        cells += [_fmt(r["params_full_m"]), _fmt(r["macs_full_g"])]
        for bs in batch_sizes:
            cells.append(f"{_fmt(r['latency_ms'].get(bs))} ({_fmt(r['seed_latency_ms'].get(bs))})")
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({r["device"] for r in rows if r["device"]})
    note = "Params/FLOPs in the seed's convention (paddle.flops: leaf layers, Linear+Conv MACs); full: all parameters, "
    note += "attention matmuls included. Latency: FP32 ms per batch, median after warm-up"
    note += f", measured on {'; '.join(devices)}." if devices else "; not measured (--no-latency)."
    return "\n".join(lines) + "\n\n" + note + "\n"


def to_csv(rows: list[dict]) -> str:
    batch_sizes = sorted({bs for r in rows for bs in r["seed_latency_ms"]} | {bs for r in rows for bs in r["latency_ms"]})
    out = io.StringIO()
    writer = csv.writer(out)
    scalar = [k for k in rows[0] if not isinstance(rows[0][k], dict)] if rows else []
    writer.writerow(scalar + [f"latency_ms_bs{bs}" for bs in batch_sizes] + [f"seed_latency_ms_bs{bs}" for bs in batch_sizes])
    for r in rows:
        writer.writerow(
            [r[k] for k in scalar]
            + [r["latency_ms"].get(bs, "") for bs in batch_sizes]
            + [r["seed_latency_ms"].get(bs, "") for bs in batch_sizes]
        )
    return out.getvalue()


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "markdown":
        return to_markdown(rows)
    raise ValueError(f"unknown format {fmt!r}; choose markdown, json or csv")
