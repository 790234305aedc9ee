"""Fuzz every reader for a fixed budget and record what was run, what was reached and what was found.

Each target (tests/fuzz_weights.py, tests/fuzz_data.py) runs in its own process under atheris (libFuzzer) until
it has made `--runs` executions or spent `--seconds`, whichever comes first, from seeds it writes itself. A finding
(an exception outside the reader's contract, a crash, a timeout, memory past libFuzzer's -rss_limit_mb, the canary)
is minimised and kept under the work folder; it stays "open" until fixed, when its input moves to
tests/fuzz_regressions/<target>/ with an entry in findings_*.json (listed here as fixed).

    python benchmarks/fuzz.py [--targets a,b] [--runs 100000] [--seconds 600] [--jobs 2] [--merge]
        [--workdir benchmarks/fuzz_work] [--out benchmarks]

Writes fuzz.json and fuzz.md: per target executions, seconds, exec/s, coverage (libFuzzer's instrumented edges
"cov" and features "ft"), corpus size, peak RSS, open findings; the fixed findings; command, date, versions.
`--merge` keeps the other targets' rows of an earlier fuzz.json (to rerun some targets only).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))

import fuzzing  # noqa: E402


def fixed_findings() -> list[dict]:
    records = []
    for file in sorted((TESTS / "fuzz_regressions").glob("findings_*.json")):
        records += json.loads(file.read_text())
    return records


def run_one(name: str, args) -> dict:
    workdir = Path(args.workdir) / name
    result = fuzzing.run_target(name, workdir, runs=args.runs, seconds=args.seconds, timeout=args.seconds + 600)
    minimised = []
    for crash in result.findings:
        out = workdir / "minimised" / Path(crash).name
        out.parent.mkdir(parents=True, exist_ok=True)
        minimised.append(str(fuzzing.minimize(name, Path(crash), out)))
    row = {
        "target": name,
        "about": fuzzing.targets()[name].about,
        "memory_mb": fuzzing.targets()[name].memory_mb,
        "executions": result.executions,
        "seconds": result.seconds,
        "exec_per_s": round(result.executions / max(result.seconds, 1e-9)),
        "coverage_edges": result.coverage,
        "features": result.features,
        "corpus": result.corpus,
        "peak_rss_mb": result.peak_rss_mb,
        "returncode": result.returncode,
        "open_findings": [{"input": m, "trace": result.trace} for m in minimised],
        "stopped_by": "runs" if result.executions >= args.runs else "time" if result.ok else "finding",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"{name}: {row['executions']} executions in {row['seconds']} s, cov {row['coverage_edges']}, "
          f"{len(minimised)} open finding(s)", flush=True)  # fmt: skip
    return row


def environment() -> dict:
    versions = {}
    for package in ("atheris", "torch", "numpy", "safetensors", "pillow", "opencv-python-headless", "starlette",
                    "python-multipart"):  # fmt: skip
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "machine": platform.machine(), "versions": versions}


def to_markdown(doc: dict) -> str:
    lines = [
        "# Fuzzing every reader (atheris, coverage-guided)",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in doc["commands"]) + " (each row has its own date)  ",
        f"Date: {doc['date']}  ",
        f"Budget per target: {doc['runs']} executions or {doc['seconds']} s, whichever first; -timeout="
        f"{doc['timeout_s']} s per input; memory: the address space and libFuzzer's -rss_limit_mb are the warm "
        "process's plus the target's headroom (column)  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["environment"]["versions"].items() if v),
        "",
        "Contract: a reader returns, or raises vitzoo's own error naming the input (WeightsError, BadImageError, "
        "DatasetError, the server's 4xx). Anything else, a crash, a hang, memory past the limit, or the canary "
        "(code run from the input: processes, sockets, exec of text, a pickle's call to `fuzzing.canary`) is a finding.",
        "",
        "| target | what | executions | seconds | exec/s | coverage (edges) | features | corpus | memory headroom MB | "
        "peak RSS MB | stopped by | open findings |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in doc["targets"]:
        lines.append(
            f"| {row['target']} | {row['about']} | {row['executions']:,} | {row['seconds']:.0f} | {row['exec_per_s']} "
            f"| {row['coverage_edges']} | {row['features']} | {row['corpus']} | {row.get('memory_mb', '')} "
            f"| {row['peak_rss_mb']} "
            f"| {row['stopped_by']} | {len(row['open_findings'])} |"
        )
    short = [r["target"] for r in doc["targets"] if r["executions"] < 100_000 and r["seconds"] < 590]
    open_count = sum(len(r["open_findings"]) for r in doc["targets"])
    verdict = "met" if not short and open_count == 0 else "MISSED"
    lines += [
        "",
        f"Target of issue 13 (>= 100,000 executions or 10 minutes per target, 0 open findings): {verdict} "
        f"({open_count} open; short of the budget: {', '.join(short) or 'none'}).",
        "",
        "## Findings fixed (each with a regression input under tests/fuzz_regressions/, replayed by test_fuzz.py)",
        "",
        "| target | input | found | fix |",
        "|---|---|---|---|",
    ]
    for f in doc["fixed_findings"]:
        lines.append(f"| {f['target']} | `{f['file']}` | {f['found']} | {f['fix']} |")
    for row in doc["targets"]:
        for finding in row["open_findings"]:
            lines += ["", f"## OPEN: {row['target']}: `{finding['input']}`", "", "```", finding["trace"], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", help="comma list (default: all)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once (one core each)")
    parser.add_argument("--workdir", default=str(HERE / "fuzz_work"))
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--merge", action="store_true", help="keep other targets' rows of an earlier fuzz.json")
    args = parser.parse_args()
    names = args.targets.split(",") if args.targets else sorted(fuzzing.targets())
    with ThreadPoolExecutor(args.jobs) as pool:  # each job is a subprocess; threads only wait
        rows = list(pool.map(lambda n: run_one(n, args), names))
    out = Path(args.out)
    json_path = out / "fuzz.json"
    commands = ["python benchmarks/fuzz.py " + shlex.join(sys.argv[1:])]
    if args.merge and json_path.is_file():
        before = json.loads(json_path.read_text())
        earlier = [r for r in before["targets"] if r["target"] not in names]
        rows = sorted(earlier + rows, key=lambda r: r["target"])
        commands = [c for c in before.get("commands", [before.get("command")]) if c and earlier] + commands
    doc = {
        "commands": commands,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": args.runs,
        "seconds": args.seconds,
        "timeout_s": fuzzing.TIMEOUT_S,
        "environment": environment(),
        "targets": rows,
        "fixed_findings": fixed_findings(),
    }
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    (out / "fuzz.md").write_text(to_markdown(doc))
    print(f"wrote {json_path} and {out / 'fuzz.md'}")


if __name__ == "__main__":
    main()
