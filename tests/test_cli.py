"""`vitzoo table` end to end, in a fresh process with the network shut (`run_table` itself: test_table_run.py)."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

import vitzoo

NO_NETWORK = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline test")
socket.socket.connect = _refuse
socket.create_connection = _refuse
"""


def run_vitzoo(tmp_path, *args, check=True):
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TORCH_", "XDG_"))}
    env.update(PYTHONPATH=str(tmp_path), HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "vitzoo", *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_table_json_with_latency_offline(tmp_path):
    proc = run_vitzoo(
        tmp_path, "table", "--format", "json", "--models", "DeiT_tiny_patch16_224,deit_tiny_distilled*",
        "--batch-sizes", "1,2", "--warmup", "1", "--runs", "2", "--cell-budget-s", "0",
    )  # fmt: skip
    rows = json.loads(proc.stdout)  # stdout holds the JSON alone
    assert [r["model"] for r in rows] == ["DeiT_tiny_patch16_224", "DeiT_tiny_distilled_patch16_224"]
    for row in rows:
        for key in ("model", "params_m", "flops_g", "seed_params_m", "seed_flops_g", "params_full_m", "macs_full_g",
                    "latency_ms", "seed_latency_ms", "device"):  # fmt: skip
            assert key in row
        assert round(row["params_m"], 2) == row["seed_params_m"]
        assert round(row["flops_g"], 2) == row["seed_flops_g"]
        assert set(row["latency_ms"]) == {"1", "2"}
        assert all(0 < ms < 60_000 for ms in row["latency_ms"].values())
        assert row["path"] == "fp32-fast" and row["latency_runs"] == {"1": 2, "2": 2}  # the default path, named
        assert all(row["latency_min_ms"][bs] <= row["latency_ms"][bs] <= row["latency_max_ms"][bs] for bs in "12")
        assert row["seed_latency_ms"] == {"1": 3.61, "4": 3.94, "8": 6.10} or row["model"] != "DeiT_tiny_patch16_224"
        assert "threads" in row["device"]
    assert "vitzoo table" in proc.stderr  # the progress bar


@pytest.mark.slow
def test_table_all_models_without_latency_in_every_format(tmp_path):
    rows = json.loads(run_vitzoo(tmp_path, "table", "--no-latency", "--format", "json", "-q").stdout)
    assert [r["model"] for r in rows] == vitzoo.list_models()
    assert all(r["latency_ms"] == {} and r["device"] is None for r in rows)

    proc = run_vitzoo(tmp_path, "table", "--no-latency", "-q")
    md = proc.stdout
    assert sum(line.startswith("| ") for line in md.splitlines()) == 16  # header + 15 models
    assert proc.stderr == ""  # --quiet: no progress
    assert "| ViT_base_patch16_224 | 86.42 | 86.42 | 16.85 | 16.85 | 86.57 | 17.56 |" in md

    out = tmp_path / "table.csv"
    run_vitzoo(tmp_path, "table", "--no-latency", "--format", "csv", "-q", "--output", str(out))
    records = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(records) == 15 and records[7]["model"] == "DeiT_tiny_patch16_224"
    assert records[7]["seed_latency_ms_bs8"] == "6.1"


def test_table_bad_model_name(tmp_path):
    proc = run_vitzoo(tmp_path, "table", "--models", "ViT_huge", "--no-latency", check=False)
    assert proc.returncode == 2
    assert "unknown model 'ViT_huge'" in proc.stderr and "DeiT_base_distilled_patch16_384" in proc.stderr
    proc = run_vitzoo(tmp_path, "table", "--models", "nothing*", check=False)
    assert proc.returncode == 2 and "no model matches 'nothing*'" in proc.stderr


def test_models_command(tmp_path):
    assert run_vitzoo(tmp_path, "models", "distilled").stdout.split() == vitzoo.list_models("distilled")


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["0", "a,b", ""])
def test_table_bad_batch_sizes(tmp_path, bad):
    proc = run_vitzoo(tmp_path, "table", "--batch-sizes", bad, check=False)
    assert proc.returncode == 2 and "--batch-sizes" in proc.stderr
