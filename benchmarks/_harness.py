"""Benchmark harness (Liger-Kernel style): timing, peak memory, environment tags, CSV rows, tables.

Choices:

* Timing reports the median and the 20th/80th percentiles of ``reps`` calls after ``warmup`` calls. On
  CUDA each call is bracketed by CUDA events (with a ``torch.cuda.synchronize`` before the first and
  after each call); no L2 flush, since the benchmarked ops stream far more than the L2 holds. On the CPU
  each call is timed with ``time.perf_counter``.
* Peak memory is measured on CUDA only (``max_memory_allocated`` minus the allocation before the call);
  on the CPU torch allocations are not tracked, so the answer is None, printed as 'n/a'.
* Hardware limits follow DESIGN §7, not the datasheets: an H100 or H200 is taken at ~800 TFLOP/s dense
  bf16/fp16 and ~60 TFLOP/s fp32 (the 989 TFLOP/s bf16 datasheet figure is not reached by real GEMMs),
  3.0 TB/s HBM on an H100 and 4.8 TB/s on an H200. CPUs and other GPUs have no limit (blank fractions).
* CSV rows are tagged with the device name, torch and triton versions, the repository's short git SHA
  (``-dirty`` when tracked files differ from HEAD) and the UTC date; a file is rewritten atomically
  (temporary file + ``os.replace``), and a header that gains columns is widened, old rows kept.

Nothing here touches CUDA unless a function is called with a CUDA device.
"""

from __future__ import annotations

import csv
import datetime
import functools
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# DESIGN §7 working limits, keyed on a substring of the CUDA device name.
_PEAK_TFLOPS = {"H100": {"half": 800.0, "fp32": 60.0}, "H200": {"half": 800.0, "fp32": 60.0}}
_PEAK_TBPS = {"H100": 3.0, "H200": 4.8}


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


@dataclass(frozen=True)
class Timing:
    """Per-call wall times of one benchmark, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    times_ms: list[float] = field(repr=False)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted list (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_ms: list[float]) -> Timing:
    ordered = sorted(times_ms)
    return Timing(statistics.median(ordered), _quantile(ordered, 0.2), _quantile(ordered, 0.8), list(times_ms))


def time_fn(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10, device) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``reps`` times timed; return the median and p20/p80."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    device = _device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def peak_extra_memory(fn: Callable[[], object], device) -> int | None:
    """Bytes allocated at the peak of one ``fn()`` call beyond what was allocated before it (CUDA only).

    On the CPU torch does not track allocations, so this returns None without calling ``fn``.
    """
    device = _device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                      if line.startswith("Model name:")), "")
    except (OSError, subprocess.SubprocessError):
        model = ""
    model = model or platform.processor() or platform.machine() or "cpu"
    simd = _simd_level()
    return f"{model} ({os.cpu_count()} cores{', ' + simd if simd else ''})"


def _simd_level() -> str:
    """The widest x86 vector extension the CPU reports ('' elsewhere): what CPU GEMM speed hinges on."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return ""
    for flag, name in (("amx_bf16", "amx-bf16"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"),
                       ("avx2", "avx2")):
        if flag in flags:
            return name
    return ""


def device_name(device) -> str:
    """The GPU's name for a CUDA device, else the CPU model and core count."""
    device = _device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def _triton_version() -> str:
    for dist in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def _git_sha() -> str:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], check=False, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("diff", "--quiet", "HEAD").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


@functools.cache
def _static_tags(device_key: str) -> dict[str, str]:
    return {
        "device": device_name(device_key),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "git_sha": _git_sha(),
    }


def env_tags(device) -> dict[str, str]:
    """device, torch, triton (or 'none'), git_sha (or 'unknown'), date (UTC ISO, seconds)."""
    tags = dict(_static_tags(str(_device(device))))
    tags["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return tags


def peak_tflops(device, dtype: torch.dtype) -> float | None:
    """Working dense-matmul limit in TFLOP/s for ``dtype`` on ``device`` (None on a CPU or unknown GPU)."""
    device = _device(device)
    if device.type != "cuda":
        return None
    name = device_name(device)
    for key, peaks in _PEAK_TFLOPS.items():
        if key in name:
            if dtype in (torch.bfloat16, torch.float16):
                return peaks["half"]
            return peaks["fp32"] if dtype == torch.float32 else None
    return None


def peak_tbps(device) -> float | None:
    """Working memory-bandwidth limit in TB/s (None on a CPU or unknown GPU)."""
    device = _device(device)
    if device.type != "cuda":
        return None
    name = device_name(device)
    return next((tbps for key, tbps in _PEAK_TBPS.items() if key in name), None)


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    if not path.exists():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_rows(path, rows: list[dict], *, device="cpu") -> None:
    """Append ``rows`` (each tagged with ``env_tags(device)``) to the CSV at ``path``, atomically.

    The header is the union of the existing columns and the new ones (new columns last); old rows get
    blanks for columns they lack. The file is written to a temporary file beside it, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = env_tags(device)
    new_rows = [{**row, **tags} for row in rows]
    header, old_rows = _read_rows(path)
    for row in new_rows:
        header += [key for key in row if key not in header]
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(old_rows + new_rows)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print ``rows`` as a fixed-width table of ``columns`` (floats to 3 significant digits, None blank)."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    numeric = [all(_is_number(row.get(col)) for row in rows) for col in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    print(line(columns))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if _device(device).type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device) -> None:
    """Collect garbage and return cached CUDA blocks, so a row starts from what it allocates itself."""
    gc.collect()
    if _device(device).type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- CLI
def parse_ints(text: str, name: str, parser) -> tuple[int, ...]:
    """A comma list of positive ints (``--prompts 1,8``); ``parser.error`` names the option otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        parser.error(f"{name} must be a comma list of integers, got {text!r}")
    if any(v < 1 for v in values):
        parser.error(f"{name} values must be >= 1, got {text!r}")
    return values


def parse_choices(text: str, choices, what: str, parser) -> list[str]:
    """A comma list of names, each one of ``choices``; ``parser.error`` lists them otherwise."""
    values = [v for v in text.split(",") if v]
    if bad := [v for v in values if v not in choices]:
        parser.error(f"unknown {what} {bad}; choose from {list(choices)}")
    return values


def resolve_common(args, parser, *, stem: str, reps: tuple[int, int], warmup: tuple[int, int],
                   shape_sets=None) -> torch.device:
    """The options every benchmark shares, resolved in place: ``--device`` (an error when CUDA is named but
    absent), ``--shapes`` (a comma list of ``shape_sets`` keys or ``all``, default ``gpu`` on CUDA and ``cpu``
    elsewhere; skipped when ``shape_sets`` is None), ``--reps`` / ``--warmup`` (defaults (cuda, cpu)), and
    ``--csv`` (default ``benchmarks/results/<stem>_<device>.csv``). Returns the device."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if shape_sets is not None:
        shapes = (args.shapes or ("gpu" if on_cuda else "cpu")).split(",")
        args.shapes = list(shape_sets) if "all" in shapes else parse_choices(",".join(shapes), shape_sets,
                                                                           "shape set(s)", parser)
    args.reps = args.reps if args.reps is not None else reps[0 if on_cuda else 1]
    args.warmup = args.warmup if args.warmup is not None else warmup[0 if on_cuda else 1]
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first call is the check / cold call)")
    args.csv = args.csv or Path(__file__).resolve().parent / "results" / f"{stem}_{device.type}.csv"
    return device


def announce(device) -> dict[str, str]:
    """Print the run's tags (device, torch, triton, git SHA, date) on stderr; return them."""
    tags = env_tags(device)
    print(f"# {tags['device']} | torch {tags['torch']} | triton {tags['triton']} | git {tags['git_sha']} | "
          f"{tags['date']}", file=sys.stderr)
    return tags


def show_results(rows: list[dict], columns: list[str], device, title: str, csv_path) -> None:
    """Print ``title`` and the table of the columns any row fills (``mem_mib`` 'n/a' off CUDA), then where the
    CSV rows went."""
    shown = [{**r, "mem_mib": r.get("mem_mib") if _device(device).type == "cuda" else "n/a"} for r in rows]
    print(title)
    print_table(shown, [c for c in columns if any(r.get(c) is not None for r in shown)])
    print(f"rows appended to {csv_path}")
