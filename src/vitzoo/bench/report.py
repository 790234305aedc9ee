"""Benchmark records as a markdown table or JSON."""

from __future__ import annotations

import json


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _timm_path(record: dict) -> str:
    return f"{record['timm_precision']} {record['timm_backend']}"


def to_markdown(records: list[dict]) -> str:
    compared = any("ratio" in r for r in records)
    fidelity = any("cosine_vs_fp32_eager" in r for r in records)
    head = ["Model", "Precision", "Backend", "Batch", "ms median", "ms min-max", "images/s", "peak MB", "seed V100 ms"]
    if compared:
        head += ["timm ms", "timm path", "vitzoo/timm"]
    if fidelity:
        head += ["cosine vs fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        batch = f"{r['batch_size']} (throughput)" if r.get("throughput") else str(r["batch_size"])
        cells = [r["model"], r["precision"], r["backend"], batch, _num(r["ms_median"])]
        cells += [f"{_num(r['ms_min'])}-{_num(r['ms_max'])}", _num(r["images_per_s"], 1), _num(r["peak_mem_mb"], 0)]
        cells += [_num(r.get("seed_v100_ms"))]
        if compared:
            has = "ratio" in r
            cells += [_num(r.get("timm_ms_median")), _timm_path(r) if has else "-", _num(r.get("ratio"), 3)]
        if fidelity:
            cells += [_num(r.get("cosine_vs_fp32_eager"), 6)]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({r["device_name"] for r in records})
    notes = [
        f"Milliseconds per batch of random images after warm-up, on {'; '.join(devices)}.",
        "seed V100 ms: the seed's figure (V100, FP32, TensorRT).",
    ]
    if compared:
        notes.append("timm: timm's equivalent with the same weights, timed in the same process, alternating.")
    notes += sorted({f"{r['model']}: {r['timm_note']}." for r in records if r.get("timm_note")})
    if fidelity:
        notes.append("cosine: lowest cosine similarity of the logits to fp32 eager's, over the fidelity images.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def render(records: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "markdown":
        return to_markdown(records)
    raise ValueError(f"unknown format {fmt!r}; choose markdown or json")
