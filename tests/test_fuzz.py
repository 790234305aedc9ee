"""Every fuzz target runs a few thousand coverage-guided executions with no finding; every finding made so far
replays as fixed; the canary catches code run from an input. The long runs: benchmarks/fuzz.py."""

import pickle
from pathlib import Path

import pytest

import fuzzing

pytest.importorskip("atheris")
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
RUNS = 2000


@pytest.mark.slow  # a minute: every target 2,000 executions (the replays below stay in the fast tier)
@pytest.mark.parametrize("name", sorted(fuzzing.targets()))
def test_a_few_thousand_executions_find_nothing(name, tmp_path):
    result = fuzzing.run_target(name, tmp_path, runs=RUNS, timeout=600)
    assert result.ok, f"{name}: {result.findings}\n{result.trace or result.log_tail}"
    assert result.executions >= RUNS
    assert result.coverage > 0 and result.corpus > 0


@pytest.mark.parametrize(
    "target, file",
    [(p.parent.name, p.name) for p in sorted(REGRESSIONS.glob("*/*")) if p.is_file()],
)
def test_every_finding_stays_fixed(target, file, tmp_path):
    fuzzing.replay(target, (REGRESSIONS / target / file).read_bytes(), tmp_path)


def test_every_recorded_finding_has_its_input():
    import json

    recorded = set()
    for findings in sorted(REGRESSIONS.glob("findings_*.json")):
        for record in json.loads(findings.read_text()):
            assert (REGRESSIONS / record["file"]).is_file(), record
            assert record["target"] in fuzzing.targets() and record["found"] and record["fix"]
            recorded.add(record["file"])
    inputs = {f"{p.parent.name}/{p.name}" for p in REGRESSIONS.glob("*/*") if p.is_file()}
    assert inputs == recorded, "every regression input is a recorded finding, and the reverse"


def _seed(folder: Path, target: str, prefix: str) -> list[Path]:
    fuzzing.targets()[target].seeds(folder)
    return sorted(p for p in folder.iterdir() if p.name.startswith(prefix))


@pytest.mark.parametrize("payload", ["canary", "exec", "eval", "system", "nested"])
def test_the_canary_sees_code_run_from_an_input(payload, tmp_path):
    """A reader that trusts pickles (plain pickle.loads) trips the canary on every hostile seed."""
    fuzzing.prepare(fuzzing.targets()["weights_pdparams"], tmp_path)  # installs the audit hook
    (seed,) = _seed(tmp_path, "weights_pdparams", f"hostile_{payload}_p4")
    unsafe = fuzzing.checked(pickle.loads, "<bytes>", (ValueError,), lambda e: True)
    with pytest.raises(fuzzing.CanaryTripped):
        unsafe(seed.read_bytes())


@pytest.mark.parametrize("target, prefix", [("weights_pdparams", "hostile_"), ("weights_torch", "hostile_")])
def test_vitzoo_refuses_every_hostile_seed(target, prefix, tmp_path):
    one_input = fuzzing.prepare(fuzzing.targets()[target], tmp_path / "work")
    seeds = _seed(tmp_path, target, prefix)
    assert len(seeds) >= 5
    for seed in seeds:
        one_input(seed.read_bytes())  # a WeightsError naming the file, and the canary untouched


@pytest.mark.parametrize("target", ["weights_pdparams", "weights_torch", "weights_safetensors", "weights_npz",
                                    "weights_hf_folder"])  # fmt: skip
def test_the_valid_seeds_load(target, tmp_path):
    """The seeds reach the end of the reader: each valid one loads into the target's tiny model."""
    pytest.importorskip("transformers")
    fuzzing.targets()[target].seeds(tmp_path)
    (tmp_path / "work").mkdir()
    call, _ = fuzzing.targets()[target].build(tmp_path / "work")
    valid = [p for p in sorted(tmp_path.iterdir()) if p.is_file() and not p.name.startswith("hostile_")]
    assert valid
    for seed in valid:
        report = call(seed.read_bytes())
        assert report.loaded > 0, seed.name
