"""Coverage-guided fuzzing (atheris) of every reader of untrusted bytes, and the contract each one holds.

The contract: a reader returns a result, or raises vitzoo's own error (WeightsError, BadImageError, DatasetError, the
server's 4xx RequestError) with a message that names the input. Anything else is a finding: another exception type,
a crash, a hang (libFuzzer's -timeout), memory out of proportion to the input (-rss_limit_mb), or code run from the
input. For the last, an audit hook watches for processes, sockets, dynamic code and the canary: seed files hold
pickles whose REDUCE calls `fuzzing.canary` directly or through exec/eval/os.system; a reader that ran one trips it.

Targets live in fuzz_weights.py (the weight containers) and fuzz_data.py (images, list files, folders, requests);
each names the modules atheris instruments, writes its own seed corpus, and builds its one-input function once.

    python tests/fuzzing.py TARGET [-runs=N] [-max_total_time=S] [libFuzzer flags...] CORPUS_DIR
    run_target(name, workdir, runs=N | seconds=S) -> FuzzResult   # the same, in a subprocess, its output parsed

The tests (test_fuzz.py) run every target a few thousand times; benchmarks/fuzz.py runs each for minutes.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
TARGET_MODULES = ("fuzz_weights", "fuzz_data")  # each defines TARGETS: {name: Target}
TIMEOUT_S = 10  # per input: a hang, not a slow input (the slowest seeds run in milliseconds)

# -- the canary: code run from an input ---------------------------------------------------------------------------------
CANARY_CALLS: list[tuple] = []
_WATCHING = False
# audit events no reader has a reason to raise while reading bytes
_FORBIDDEN_EVENTS = (
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen", "pty.spawn",
    "socket.connect", "socket.bind", "socket.getaddrinfo", "ctypes.dlopen", "ctypes.call_function", "builtins.input",
    "webbrowser.open", "os.startfile", "shutil.rmtree", "os.remove", "os.rmdir",
)  # fmt: skip


def canary(*args) -> str:
    """What a hostile seed asks to run. Being called at all is the finding."""
    CANARY_CALLS.append(("canary", args))
    return "canary"


def _audit(event: str, args: tuple) -> None:
    if not _WATCHING:
        return
    if event.startswith(_FORBIDDEN_EVENTS):
        CANARY_CALLS.append((event, args[:2]))
    # code compiled from a string and run (exec/eval of text); "compile" alone is also ast.literal_eval's, harmless
    elif event == "exec" and getattr(args[0], "co_filename", "").startswith("<") and not _importing():
        CANARY_CALLS.append((event, (args[0].co_filename,)))


def _importing() -> bool:
    """Whether a module is being imported: a library that imports lazily (torch does, inside torch.load) runs its
    module's namedtuple and dataclass templates through exec, text from the library, not from the input."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class CanaryTripped(AssertionError):
    """A reader ran something its input asked for."""


class ContractBroken(AssertionError):
    """A reader raised its own error type, but the message does not say which input."""


# -- targets ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """One reader under fuzzing.

    build(workdir) -> (call, name): call(data) feeds one input to the reader; `name` is the text (a path or "<bytes>")
    its errors must contain. `errors` are the exception types the contract allows; `error_ok(e)` can narrow them
    (the server's RequestError must be a 4xx). seeds(folder) writes the seed corpus.
    """

    name: str
    instrument: tuple[str, ...]
    build: Callable[[Path], tuple[Callable[[bytes], object], str]]
    seeds: Callable[[Path], None]
    errors: Callable[[], tuple[type, ...]]
    error_ok: Callable[[BaseException], bool] = lambda e: True
    about: str = ""
    memory_mb: int = 2048  # memory an input may take beyond the warm process (address space and RSS)


def targets() -> dict[str, Target]:
    found: dict[str, Target] = {}
    for module in TARGET_MODULES:
        found.update(importlib.import_module(module).TARGETS)
    return found


def checked(call: Callable[[bytes], object], name: str, errors: tuple[type, ...], error_ok) -> Callable[[bytes], None]:
    """`call` wrapped in the contract: vitzoo's error naming the input, or a result; never the canary."""

    def one_input(data: bytes) -> None:
        global _WATCHING
        CANARY_CALLS.clear()
        _WATCHING = True
        try:
            call(data)
        except errors as e:
            if not error_ok(e):
                raise ContractBroken(f"refused with the wrong kind of error: {type(e).__name__}: {e}") from e
            if name not in str(e):
                raise ContractBroken(f"the error does not name the input {name!r}: {type(e).__name__}: {e}") from e
        finally:
            _WATCHING = False
            if CANARY_CALLS:
                raise CanaryTripped(f"the input ran code: {CANARY_CALLS[:3]}")

    return one_input


def prepare(target: Target, workdir: Path) -> Callable[[bytes], None]:
    """The target's checked one-input function (with the audit hook installed), built once for many inputs."""
    _install_audit_hook()
    workdir.mkdir(parents=True, exist_ok=True)
    call, name = target.build(workdir)
    return checked(call, name, target.errors(), target.error_ok)


_HOOKED = False


def _install_audit_hook() -> None:
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True


def scratch_dir() -> Path:
    """Where targets write their per-input files: memory-backed when the machine has /dev/shm."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))


# -- running one target under atheris (in this process) ------------------------------------------------------------------
def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2 or argv[1].startswith("-"):
        sys.exit(f"usage: {argv[0]} TARGET [libFuzzer flags] CORPUS_DIR  (targets: {', '.join(targets())})")
    target = targets()[argv[1]]
    flags = [a for a in argv[2:] if a.startswith("-")]
    corpus = [Path(a) for a in argv[2:] if not a.startswith("-")]
    loaded = [m for m in target.instrument if m in sys.modules]  # imported by the harness or atheris already
    with atheris.instrument_imports(include=list(target.instrument)):
        for module in target.instrument:
            importlib.import_module(module)
    for module in loaded:
        _instrument_loaded(atheris, sys.modules[module])
    workdir = Path(os.environ.get("VITZOO_FUZZ_WORKDIR") or scratch_dir() / f"vitzoo-fuzz-{os.getpid()}")
    for folder in corpus:  # a corpus folder, seeded when empty; a file is one input to run (or minimise)
        if not folder.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            if not any(folder.iterdir()):
                target.seeds(folder)
    one_input = prepare(target, workdir / target.name)
    resident_mb = _limit_memory(target.memory_mb)
    defaults = [f"-rss_limit_mb={resident_mb + target.memory_mb}", f"-timeout={TIMEOUT_S}", "-print_final_stats=1"]
    given = {f.split("=")[0] for f in flags}
    flags += [d for d in defaults if d.split("=")[0] not in given]
    # libFuzzer re-runs argv[0] through the shell to minimise a crash: make it the whole command for this target
    command = f"{sys.executable} {HERE / 'fuzzing.py'} {target.name}"
    atheris.Setup([command, *flags, *map(str, corpus)], one_input)
    atheris.Fuzz()


def _limit_memory(headroom_mb: int) -> int:
    """Cap the address space `headroom_mb` above what the warm process has mapped; returns its peak resident MB
    (libFuzzer's RSS limit is set the same headroom above). An input that makes a reader reserve more (even untouched) fails inside
    the reader with a MemoryError and a traceback: a finding with its input, where libFuzzer's RSS watch only sees
    touched memory and often cannot tell which input it was. Readers must not catch MemoryError as a refusal."""
    import resource

    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + (headroom_mb << 20)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    # libFuzzer compares its limit with the peak RSS, and writing the seeds (the first import of transformers
    # compiles its modules) may have peaked above where the process now sits
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10


def _instrument_loaded(atheris, module) -> None:
    """Instrument an already imported module's functions and methods in place (their code objects are swapped,
    so tables holding the functions, like pickle's opcode dispatch, see it too)."""
    done = set()

    def visit(obj) -> None:
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and id(obj) not in done:
            done.add(id(obj))
            atheris.instrument_func(obj)

    for value in list(vars(module).values()):
        visit(value)
        if inspect.isclass(value) and value.__module__ == module.__name__:
            for member in vars(value).values():
                visit(member)


# -- running a target in a subprocess, for tests and the benchmark -------------------------------------------------------
@dataclasses.dataclass
class FuzzResult:
    target: str
    executions: int
    seconds: float
    coverage: int  # libFuzzer's "cov": instrumented edges reached
    features: int  # libFuzzer's "ft"
    corpus: int
    peak_rss_mb: int
    returncode: int
    findings: list[str]  # artifact files written (crash-, timeout-, oom-, leak-)
    trace: str  # the first Python traceback in the log (what the finding raised)
    log_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.findings


def run_target(name: str, workdir: Path, runs: int | None = None, seconds: int | None = None,
               extra: tuple[str, ...] = (), timeout: float | None = None) -> FuzzResult:  # fmt: skip
    """Fuzz `name` for `runs` inputs or `seconds` in a fresh process; the corpus and findings stay in `workdir`."""
    workdir = Path(workdir)
    corpus, artifacts = workdir / "corpus", workdir / "findings"
    for folder in (corpus, artifacts):
        folder.mkdir(parents=True, exist_ok=True)
    flags = [f"-artifact_prefix={artifacts}/"]
    if runs is not None:
        flags.append(f"-runs={runs}")
    if seconds is not None:
        flags.append(f"-max_total_time={seconds}")
    env = {**os.environ, "VITZOO_FUZZ_WORKDIR": str(workdir / "scratch"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, str(HERE / "fuzzing.py"), name, *flags, *extra, str(corpus)]
    start = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, errors="replace", timeout=timeout)
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    (workdir / "log.txt").write_text(log)
    return parse_log(name, log, proc.returncode, elapsed, artifacts)


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def parse_log(name: str, log: str, returncode: int, elapsed: float, artifacts: Path) -> FuzzResult:
    findings = sorted(str(p) for p in artifacts.iterdir()) if artifacts.is_dir() else []
    return FuzzResult(
        target=name,
        executions=_last_int(r"stat::number_of_executed_units:\s*(\d+)", log) or _last_int(r"Done (\d+) runs", log),
        seconds=round(elapsed, 1),
        coverage=_last_int(r"\bcov: (\d+)", log),
        features=_last_int(r"\bft: (\d+)", log),
        corpus=_last_int(r"\bcorp: (\d+)", log),
        peak_rss_mb=_last_int(r"stat::peak_rss_mb:\s*(\d+)", log),
        returncode=returncode,
        findings=findings,
        trace=first_traceback(log),
        log_tail=log[-4000:],
    )


def first_traceback(log: str) -> str:
    start = log.find("Traceback (most recent call last)")
    if start < 0:
        return ""
    end = log.find("\n\n", start)
    lines = log[start : end if end > 0 else None].splitlines()
    return "\n".join(line for line in lines if line.strip().strip("^~") != "")


def minimize(name: str, crash: Path, out: Path, runs: int = 3000, timeout: float = 300) -> Path:
    """The smallest input libFuzzer finds that still breaks the target the same way, written to `out`."""
    scratch = out.parent / f".{out.name}.minimize"
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(HERE / "fuzzing.py"), name, "-minimize_crash=1", f"-runs={runs}",
               f"-artifact_prefix={scratch}/", str(crash)]  # fmt: skip
    try:
        subprocess.run(command, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass  # keep the smallest found so far
    candidates = sorted(scratch.glob("minimized-from-*"), key=lambda p: p.stat().st_size) or [crash]
    out.write_bytes(candidates[0].read_bytes())
    for leftover in scratch.iterdir():
        leftover.unlink()
    scratch.rmdir()
    return out


def replay(name: str, data: bytes, workdir: Path) -> None:
    """One input through a target's checked function, in this process (regression tests of findings)."""
    prepare(targets()[name], Path(workdir))(data)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    import fuzzing  # the canary and the audit state must be this module's, whatever a pickle imports by name

    fuzzing.main(sys.argv)
