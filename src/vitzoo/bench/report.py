"""Benchmark records as a markdown table or JSON."""

from __future__ import annotations

import json


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _timm_path(record: dict) -> str:
    return f"{record['timm_precision']} {record['timm_backend']}"


def _ceiling_cells(r: dict) -> list[str]:
    fraction = r.get("ceiling_fraction")
    return [_num(r.get("effective_gflops"), 0), "-" if fraction is None else f"{fraction:.0%}"]


def _ceiling_note(records: list[dict]) -> str:
    ceilings = sorted({(r["precision"], r["batch_size"], r["ceiling_gflops"], r["ceiling_kernel"])
                       for r in records if "ceiling_gflops" in r})  # fmt: skip
    return ("GFLOP/s: 2 x the model's full MACs x images / ms median; of ceiling: that over this CPU's best GEMM rate at "
            "the same precision and threads, measured in this run (" + "; ".join(
                f"{p} batch {bs}: {g:,.0f} GFLOP/s, {k}" for p, bs, g, k in ceilings) + ").")  # fmt: skip


def to_markdown(records: list[dict]) -> str:
    compared = any("ratio" in r for r in records)
    fidelity = any("cosine_vs_fp32_eager" in r for r in records)
    ceiling = any("ceiling_fraction" in r for r in records)
    head = ["Model", "Precision", "Backend", "Batch", "ms median", "ms min-max", "images/s", "peak MB", "seed V100 ms"]
    if ceiling:
        head += ["GFLOP/s", "of ceiling"]
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
        if ceiling:
            cells += _ceiling_cells(r)
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
    if ceiling:
        notes.append(_ceiling_note(records))
    if compared:
        notes.append("timm: timm's equivalent with the same weights, timed in the same process, alternating.")
    notes += sorted({f"{r['model']}: {r['timm_note']}." for r in records if r.get("timm_note")})
    if fidelity:
        notes.append("cosine: lowest cosine similarity of the logits to fp32 eager's, over the fidelity images.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def engines_markdown(records: list[dict]) -> str:
    """Records of engines timed in their own processes (`vitzoo bench --compare openvino,...`): one row each."""
    head = ["Model", "Batch", "Engine", "Precision", "Backend", "Version", "ms median", "ms min-max", "images/s",
            "peak MB", "vitzoo/peer", "cosine vs fp32"]  # fmt: skip
    ceiling = any("ceiling_fraction" in r for r in records)
    if ceiling:
        head += ["GFLOP/s", "of ceiling"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    timed = [r for r in records if "skipped" not in r]
    for r in timed:
        batch = f"{r['batch_size']} (throughput)" if r.get("throughput") else str(r["batch_size"])
        cells = [r["model"], batch, r["engine"], r["precision"], r["backend"], r["engine_version"]]
        cells += [_num(r["ms_median"]), f"{_num(r['ms_min'])}-{_num(r['ms_max'])}", _num(r["images_per_s"], 1)]
        cells += [_num(r["peak_mem_mb"], 0), _num(r.get("ratio"), 3), _num(r.get("cosine_vs_fp32_eager"), 6)]
        if ceiling:
            cells += _ceiling_cells(r)
        lines.append("| " + " | ".join(cells) + " |")
    devices = "; ".join(sorted({r["device_name"] for r in timed}))
    notes = [f"Milliseconds per batch of random images after warm-up, on {devices}."]
    notes += [f"Isolation: {text}." for text in sorted({r["isolation"] for r in timed})]
    waited = {}  # (model, batch) -> its engines' records, where turns waited for an idle CPU
    for r in timed:
        if r.get("contended_turns") is not None:
            waited.setdefault((r["model"], r["batch_size"]), []).append(r)
    for (model, bs), group in waited.items():
        turns = group[0]["rounds"] * len(group)
        notes.append(f"{model}, batch {bs}: {group[0]['contended_turns']} of {turns} turns began on a busy CPU.")
    notes += [f"{engine}: {what}." for engine, what in {r["engine"]: r["runs_on"] for r in records}.items()]
    notes.append("vitzoo/peer: vitzoo's ms over the peer's (below 1: vitzoo is faster). Same weights everywhere.")
    if ceiling:
        notes.append(_ceiling_note(records))
    notes.append("cosine: lowest cosine similarity of the logits to vitzoo fp32 eager's, over the fidelity images.")
    skipped = [r for r in records if "skipped" in r]
    notes += [f"{r['model']}: {r['engine']} {r['precision']}: skipped: {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def render(records: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "markdown":
        return engines_markdown(records) if any("engine" in r for r in records) else to_markdown(records)
    raise ValueError(f"unknown format {fmt!r}; choose markdown or json")
