"""Shared helpers for the benchmark scripts: JSON output, provenance, timing, machine load, peak RSS, the data.

Every benchmark prints ONE JSON object to stdout (progress goes to stderr) and
compares against its reference in the same run, because the machine (2 cores)
is shared: absolute figures move with the load, ratios much less. Every JSON
records where it came from (`Machine.provenance()`): the command that wrote it,
the commit, the machine (`machine()`: CPU model, cores, load average before
and after, and the peak matmul GFLOP/s measured at the start by
`peak_matmul_gflops()`, so a reader can tell a slow machine from a busy one), and
the configurations it ran (`config_record()`: preset, overrides and the sha256 of
the resolved `PipelineConfig`, so a figure taken with an earlier recipe cannot
pass for today's; `tests/benchmarks/test_figures.py` compares it with what the preset
resolves to now).
`benchmarks/render.py` turns the committed JSON files into the figures of
README.md and BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SOURCE = ROOT.parent / "shared" / "pets-sample"
DEFAULT_WORK_DIR = ROOT / "bench-out" / "data"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------- output


def log(*parts: Any) -> None:
    """Progress line on stderr (stdout is reserved for the JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any], out: str | None = None) -> None:
    """Print the result as one JSON object on stdout (and write it to `out` if given)."""
    text = json.dumps(result, indent=2, default=_jsonable)
    print(text, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def r(x: float | None, digits: int = 1) -> float | None:
    """`x` rounded to `digits` decimals, as a float for the JSON (None stays None: a figure not measured)."""
    return None if x is None else round(float(x), digits)


# --------------------------------------------------------------------------- machine and load


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def busy_processes(min_cpu: float = 20.0, limit: int = 5) -> list[str]:
    """Other processes using >= `min_cpu`% CPU right now (ps snapshot), to note concurrent load."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etimes,args", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=5).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out:
        pid, cpu, _, args = line.split(None, 3)
        if int(pid) != os.getpid() and float(cpu) >= min_cpu:
            rows.append(f"{float(cpu):.0f}% {args[:100]}")
    return rows[:limit]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (avx512_bf16, amx_bf16, ...; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}


def git_commit() -> str:
    """HEAD, with `+uncommitted` when the code in segpipe/ or benchmarks/ differs from it (results excluded)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "segpipe", "benchmarks", ":(exclude)benchmarks/results")
    return head + ("+uncommitted" if changed else "")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a reader would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *argv[1:]])


def cpu_seconds_tree() -> float:
    """CPU seconds (user + system) of this process, all its threads, and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_matmul_gflops(dtype: str = "float32", seconds: float = 1.0, n: int = 1024,
                       device: str | None = None) -> float:
    """GFLOP/s of square `n` x `n` matmuls in TensorFlow for about `seconds` (after one warm-up call).

    A probe of what the machine delivers right now (the cores, their vector units, and what
    other work leaves of them), recorded at the start of every benchmark; `device` as
    TensorFlow names it (default: TensorFlow's own placement, so a GPU if there is one).
    """
    import tensorflow as tf

    with tf.device(device) if device else contextlib.nullcontext():
        a = tf.random.uniform((n, n), dtype=tf.float32, seed=1)
        b = tf.random.uniform((n, n), dtype=tf.float32, seed=2)
        a, b = tf.cast(a, dtype), tf.cast(b, dtype)
        _ = tf.linalg.matmul(a, b).numpy()  # warm-up: kernel selection, thread pools
        calls, start = 0, time.perf_counter()
        while True:
            c = tf.linalg.matmul(a, b)
            calls += 1
            if calls % 4 == 0:
                _ = c.numpy()  # wait for the device
                if time.perf_counter() - start >= seconds:
                    break
        elapsed = time.perf_counter() - start
    return round(2.0 * n**3 * calls / elapsed / 1e9, 1)


def machine(probe: bool = True, seconds: float = 1.0) -> dict[str, Any]:
    """The machine a benchmark runs on: CPU model, cores, Python, load average now and, with `probe`, the
    fp32 matmul GFLOP/s it delivers now (`peak_matmul_gflops`, about `seconds`)."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }
    if probe:
        info["peak_matmul_gflops_float32"] = peak_matmul_gflops("float32", seconds)
        info["peak_matmul_probe"] = f"1024x1024 float32 matmuls in TensorFlow for {seconds:g} s, at the start"
    return info


class Machine:
    """The machine, load and busy processes at start and end of a benchmark; `provenance()` for the JSON.

    Created at the start of a run: it records the command, the commit, the machine (with the
    matmul probe) and the load then; `report()`/`provenance()` add the load at the end.
    """

    def __init__(self, probe: bool = True) -> None:
        self.command = command_line()
        self.commit = git_commit()
        self.start_load = load_average()
        self.start_busy = busy_processes()
        self.start = machine(probe=probe)
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        self.tree0 = cpu_seconds_tree()

    def report(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        return {
            **self.start,
            "load_average_start": self.start_load,
            "load_average_end": load_average(),
            "busy_processes_start": self.start_busy,
            "busy_processes_end": busy_processes(),
            "benchmark_wall_s": r(wall),
            "benchmark_cpu_s_this_process": r(time.process_time() - self.cpu0),
            "benchmark_cpu_s_with_children": r(cpu_seconds_tree() - self.tree0),
            "note": "shared cores: compare ratios within one run; a load average above the core count means "
                    "other work competed",
        }

    def provenance(self, configs: Sequence[dict[str, Any]] = (), config_note: str = "") -> dict[str, Any]:
        """`command`, `commit`, `machine` and `configs` (`config_record()` each) for the top level of a result.

        A benchmark that runs no PipelineConfig (a kernel check, synthetic data with model defaults) passes
        none and says so in `config_note`; the figure test requires one or the other."""
        if not configs and not config_note:
            raise ValueError("provenance(): record the configurations run (config_record) or say why there are none")
        out = {"command": self.command, "commit": self.commit, "machine": self.report(), "configs": list(configs)}
        if config_note:
            out["config_note"] = config_note
        return out


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}


# --------------------------------------------------------------------------- configuration


def config_json(cfg: Any) -> str:
    """The resolved PipelineConfig as canonical JSON: `model_dump(mode="json")`, sorted keys, no spaces."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def dotted_get(record: Any, dotted: str) -> Any:
    """`record["a"]["b"]` for "a.b" in nested dicts; None where a part is missing."""
    for part in dotted.split("."):
        record = record.get(part) if isinstance(record, dict) else None
    return record


def config_digest(cfg: Any) -> str:
    """sha256 (hex) of `config_json(cfg)`: what a result records as the configuration it ran."""
    return hashlib.sha256(config_json(cfg).encode()).hexdigest()


def resolve_config(preset: str | None, overrides: dict[str, Any] | None = None, *, check_files: bool = True) -> Any:
    """`segpipe.config.build_config(preset, overrides)`: the configuration a recorded run asks for (with
    `check_files=False`, a weights file the run named need not exist on this machine)."""
    from segpipe.config import build_config

    return build_config(preset, dict(overrides or {}), check_files=check_files)


def config_record(preset: str | None, overrides: dict[str, Any] | None = None, *, role: str = "",
                  cfg: Any = None) -> dict[str, Any]:
    """What a result records about one configuration it ran: the preset, the overrides (dotted fields, as
    `build_config` takes them), the sha256 of the resolved config (`config_digest`) and the resolved config.

    `cfg` (when the caller built it already) must be what `build_config(preset, overrides)` resolves to: the
    record is re-resolved from `preset` and `overrides` and the two digests compared, so a figure test can
    later resolve the same request with today's presets and compare digests."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    resolved = resolve_config(preset, overrides)
    if cfg is not None and config_digest(cfg) != config_digest(resolved):
        raise ValueError(f"config_record({preset!r}, {overrides!r}): the config given is not what they resolve to")
    record = {"preset": preset, "overrides": overrides, "digest": config_digest(resolved),
              "resolved": resolved.model_dump(mode="json")}
    return {"role": role, **record} if role else record


def spread(values: Sequence[float]) -> dict[str, float]:
    """{mean, min, max} of per-seed figures."""
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


median = statistics.median


# --------------------------------------------------------------------------- subprocesses


def peak_rss_mb_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT,
                 timeout: float | None = None, pass_stderr: bool = False) -> dict[str, Any]:
    """Run `cmd`; return wall seconds, its own peak RSS (MiB, via wait4), exit code, stdout and stderr.

    Output goes to temporary files (no pipe deadlock); `pass_stderr` lets the child's
    stderr (its progress) through to ours instead. wait4 gives the child's own
    rusage, so each call measures a fresh process.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=None if pass_stderr else err, env=env, cwd=cwd)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return {
            "wall_s": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "returncode": proc.returncode,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def last_json(text: str) -> dict[str, Any]:
    """The JSON object a child printed last (on the last non-empty line)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("child printed nothing on stdout")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- real data


def segpipe_cmd() -> list[str]:
    """The CLI, run with this interpreter (works without an installed console script)."""
    return [sys.executable, "-m", "segpipe_app.cli.main"]


def ensure_dataset(work_dir: str | os.PathLike[str], source: str | os.PathLike[str]) -> Path:
    """A prepared dataset under `work_dir` (the latest); run `segpipe prepare --split random` if none."""
    from segpipe.layout import WorkDir

    work = WorkDir.at(work_dir)
    if not work.complete_datasets():
        log(f"preparing {source} into {work.root} (once; reused afterwards)")
        cmd = [*segpipe_cmd(), "prepare", "--source", str(source), "--split", "random", "--work-dir", str(work.root)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"segpipe prepare failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return work.dataset(work.latest_dataset())


def extracted_pairs(work_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(image paths, trimap paths) of the extracted archives under `work_dir`, sorted, paired by id.

    Like the Keras example: every `images/*.jpg` with its `annotations/trimaps/<id>.png`.
    """
    from segpipe.layout import WorkDir

    extracted = WorkDir.at(work_dir).root / "extracted"
    images = sorted(p for p in extracted.glob("*/images/*.jpg") if not p.name.startswith("."))
    trimaps = {p.stem: p for p in extracted.glob("*/annotations/trimaps/*.png") if not p.name.startswith(".")}
    pairs = [(str(p), str(trimaps[p.stem])) for p in images if p.stem in trimaps]
    if not pairs:
        raise SystemExit(f"no extracted images/trimaps under {extracted}; run with --source to prepare")
    return [a for a, _ in pairs], [b for _, b in pairs]


def add_data_args(p: Any) -> None:
    p.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR),
                   help="work dir holding (or to receive) the prepared real sample (default bench-out/data)")
    p.add_argument("--source", default=str(DEFAULT_SOURCE),
                   help="images.tar.gz + annotations.tar.gz, prepared into --work-dir if it has no dataset")
    p.add_argument("--out", help="also write the JSON result to this file")
