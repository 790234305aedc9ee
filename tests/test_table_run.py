"""`run_table` (what `vitzoo table` does): rows streamed as they are measured, every cell's median with its spread and
its number of runs, the path timed named in every format, a time budget per cell, quick random models, and `out`
receiving nothing but the table."""

import csv
import io
import json
import math
import time

import pytest
import torch

from vitzoo import TableConfig
from vitzoo.bench import table
from vitzoo.bench.latency import time_cell
from vitzoo.config import ConfigError
from vitzoo.specs import UnknownModelError

TINY = ["DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224"]
# one warm-up and two timed forwards of batch 1 and 2, no budget beyond them: a second or two per model
QUICK = dict(models=TINY, batch_sizes=[1, 2], warmup=1, runs=2, cell_budget_s=0.0, threads=2)


class Recorder(io.StringIO):
    """An output stream that logs each write, in order with the events the test logs."""

    def __init__(self, events):
        super().__init__()
        self.events = events

    def write(self, text):
        self.events.append(("write", text))
        return super().write(text)


@pytest.fixture(scope="module")
def markdown():
    """The quick table in markdown, with the order of its writes and of the models' builds."""
    events = []
    original = table.random_model

    def building(name, device="cpu"):
        events.append(("build", name))
        return original(name, device)

    table.random_model = building
    try:
        out = Recorder(events)
        rows = table.run_table(TableConfig(**QUICK, progress=False), "markdown", out)
    finally:
        table.random_model = original
    return rows, out.getvalue(), events


def test_rows_are_written_as_they_are_measured(markdown):
    rows, text, events = markdown
    assert [r["model"] for r in rows] == TINY
    order = [kind if kind == "build" else what.split(" | ")[0].lstrip("| ") for kind, what in events]
    header, first, second = order.index("Model"), order.index(TINY[0]), order.index(TINY[1])
    builds = [i for i, (kind, _) in enumerate(events) if kind == "build"]
    assert header < builds[0] < first < builds[1] < second  # header, model 1 built, its row, model 2 built, its row
    assert text.splitlines()[0].startswith("| Model | Params (M) | seed | FLOPs (G) | seed |")
    assert sum(line.startswith("| ") for line in text.splitlines()) == 3  # the header and 2 rows, each once


def test_every_cell_has_its_median_spread_and_runs(markdown):
    rows, text, _ = markdown
    for row in rows:
        assert set(row["latency_ms"]) == {1, 2}
        for bs in (1, 2):
            low, ms, high = row["latency_min_ms"][bs], row["latency_ms"][bs], row["latency_max_ms"][bs]
            assert 0 < low <= ms <= high < 60_000 and row["latency_runs"][bs] == 2
        line = next(line for line in text.splitlines() if line.startswith(f"| {row['model']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        bs1, bs2, bs4, bs8 = cells[-4:]
        assert bs1.endswith(", n=2] (3.61)" if row["model"] == TINY[0] else ", n=2] (3.51)")  # the seed's beside
        assert bs2.endswith(", n=2] (-)")  # the seed has no batch 2
        assert bs4.startswith("- (") and bs8.startswith("- (")  # the seed's columns, not measured here
        median, spread = bs2.split(" [", 1)
        assert float(median) == pytest.approx(row["latency_ms"][2], rel=0.01, abs=0.01)
        assert spread.startswith(table._ms(row["latency_min_ms"][2]) + "-")


def test_the_path_timed_is_named(markdown):
    rows, text, _ = markdown
    assert all(r["path"] == "fp32-fast" and "oneDNN" in r["path_notes"] for r in rows)
    header = text.splitlines()[0]
    assert "| bs1 fp32-fast ms (seed V100) | bs2 fp32-fast ms (seed V100) |" in header
    note = text.strip().splitlines()[-1]
    assert "through vitzoo's fp32-fast path" in note and "median [min-max, n = timed forwards]" in note
    assert "1 warm-up forward, then at least 2 timed" in note and "threads" in note


def test_json_and_csv_carry_the_spread_and_the_path_and_out_gets_the_table_alone(capsys):
    config = TableConfig(**{**QUICK, "models": TINY[:1], "batch_sizes": [1], "backend": "eager"}, progress=True)
    out = io.StringIO()
    (row,) = table.run_table(config, "json", out)
    (record,) = json.loads(out.getvalue())  # nothing but the JSON
    assert record["path"] == row["path"] == "fp32-eager"
    assert record["latency_runs"] == {"1": 2} and record["latency_min_ms"]["1"] <= record["latency_ms"]["1"]
    for key in ("model", "params_m", "flops_g", "seed_params_m", "seed_flops_g", "params_full_m", "macs_full_g",
                "latency_ms", "seed_latency_ms", "device"):  # fmt: skip
        assert key in record
    captured = capsys.readouterr()
    assert captured.out == "" and "vitzoo table" in captured.err  # the progress bar, on stderr only

    (line,) = csv.DictReader(io.StringIO(table.render([row], "csv")))
    assert line["path"] == "fp32-eager" and line["latency_runs_bs1"] == "2"
    assert float(line["latency_min_ms_bs1"]) <= float(line["latency_ms_bs1"]) <= float(line["latency_max_ms_bs1"])
    assert line["seed_latency_ms_bs8"] == "6.1" and line["latency_ms_bs8"] == ""


def test_without_latency_nothing_is_built_and_no_path_is_named(monkeypatch):
    monkeypatch.setattr(table, "random_model", lambda *a, **k: pytest.fail("a model was built"))
    out = io.StringIO()
    rows = table.run_table(TableConfig(latency=False, progress=False), "markdown", out)
    assert len(rows) == 15 and all(r["path"] is None and r["latency_ms"] == {} for r in rows)
    assert "| bs1 ms (seed V100) |" in out.getvalue() and "not measured (--no-latency)" in out.getvalue()


def test_models_globs_and_refusals():
    assert table.table_models(["deit_tiny*", "DeiT_tiny_patch16_224"]) == TINY  # each once, in the order given
    assert len(table.table_models([])) == 15
    with pytest.raises(UnknownModelError, match="no model matches 'nothing\\*'"):
        table.table_models(["nothing*"])
    with pytest.raises(UnknownModelError, match="unknown model 'ViT_huge'"):
        table.table_models(["ViT_huge"])
    with pytest.raises(ConfigError, match="--format"):
        table.run_table(TableConfig(latency=False, progress=False), "yaml", io.StringIO())


def test_a_cell_takes_its_runs_then_more_within_its_budget():
    calls = []

    def forward():
        calls.append(time.perf_counter())
        time.sleep(0.01)

    t = time_cell(forward, 1, warmup=2, runs=3, budget_s=0.0)
    assert (len(calls), t.runs) == (5, 3) and t.ms_min >= 9  # warm-up untimed; no budget: exactly `runs`
    calls.clear()
    t = time_cell(forward, 1, warmup=1, runs=2, budget_s=0.2)
    assert 10 <= t.runs <= 20 and len(calls) == t.runs + 1  # more while the cell (warm-up included) is under 0.2 s
    slow = time_cell(lambda: time.sleep(0.05), 1, warmup=1, runs=2, budget_s=0.01)
    assert slow.runs == 2  # a slow forward gets its runs and no more


def test_random_models_are_quick_finite_and_lively():
    tick = time.perf_counter()
    model = table.random_model("ViT_large_patch16_224")
    assert time.perf_counter() - tick < 20  # DeiT's trunc_normal_ init of its 304M parameters takes far longer
    for name, p in model.named_parameters():
        assert p.device.type == "cpu" and torch.isfinite(p).all(), name
    assert 0.5 < model.blocks[0].norm1.weight.mean().item() < 1.5 and model.pos_embed.std().item() > 0.1
    with torch.inference_mode():
        logits = table.random_model("DeiT_tiny_patch16_224")(torch.randn(1, 3, 224, 224))
    assert math.isfinite(logits.std().item()) and logits.std().item() > 0.1
