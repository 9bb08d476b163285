"""Shared helpers for the benchmark scripts: timing, the machine description, Markdown.

Nothing here imports Numba, PyTorch or JAX, so a script can change the environment (for
example ``NUMBA_CACHE_DIR``) after parsing its arguments and before those imports.
"""

from __future__ import annotations

import argparse

import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

__all__ = [
    "ROOT",
    "Budget",
    "Samples",
    "first_call",
    "measure_interleaved",
    "settle",
    "import_timed",
    "describe_machine",
    "thread_settings",
    "markdown_table",
    "microseconds",
    "milliseconds",
    "ratio",
    "stderr",
    "kernel_cache_counts",
    "minor_page_faults",
    "page_faults_per_call",
    "load_average",
    "relative_difference",
    "numba_cache_location",
    "TimingDefaults",
    "run_with_cache_choice",
    "add_timing_arguments",
    "resolve_timing",
    "positive_integers",
]

#: The repository root (the folder above ``benchmarks/``).
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- timing
class Budget:
    """How long to time one cell of a table.

    Each cell is timed until it has run for ``seconds`` in all and at least ``min_repeats``
    times, spread over ``rounds`` rounds in which the implementations take turns (so a burst
    of load from elsewhere on the machine is shared between them instead of landing on one).
    ``max_repeats`` caps very fast cells.
    """

    def __init__(self, seconds: float, min_repeats: int, rounds: int, max_repeats: int = 200_000):
        if seconds <= 0 or min_repeats < 1 or rounds < 1 or max_repeats < min_repeats:
            raise ValueError("Budget: need seconds > 0, min_repeats >= 1, rounds >= 1, max_repeats >= min_repeats")
        self.seconds = float(seconds)
        self.min_repeats = int(min_repeats)
        self.rounds = int(rounds)
        self.max_repeats = int(max_repeats)

    def __repr__(self) -> str:
        return f"Budget(seconds={self.seconds}, min_repeats={self.min_repeats}, rounds={self.rounds})"


class Samples:
    """Wall-clock times of single calls, in seconds."""

    def __init__(self, values: Iterable[float] = ()):
        self.values = list(values)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 <= q <= 1), linear between order statistics."""
        ordered = sorted(self.values)
        position = q * (len(ordered) - 1)
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median (0.05 means +-5 %)."""
        return (self.quantile(0.75) - self.quantile(0.25)) / 2 / self.median

    def summary(self) -> str:
        return f"median {self.median * 1e6:10.1f} us  +-{self.spread * 100:4.1f} % (half IQR)  n={len(self)}"


def first_call(function: Callable[[], Any]) -> tuple[float, Any]:
    """Time one call of ``function``; returns ``(seconds, result)``."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def _run_for(function: Callable[[], Any], seconds: float, min_calls: int, max_calls: int, out: list[float]) -> None:
    clock = time.perf_counter
    spent, calls = 0.0, 0
    while calls < max_calls and (calls < min_calls or spent < seconds):
        started = clock()
        function()
        elapsed = clock() - started
        out.append(elapsed)
        spent += elapsed
        calls += 1


def settle(seconds: float) -> None:
    """Sleep, so that thread pools left spinning by the previous call go idle.

    OpenBLAS's worker threads busy-wait for about 0.1 s after each call before they sleep
    (measured here: 0.1 s of CPU during a 0.5 s pause). NumPy, SciPy, PyTorch and JAX each
    bring their own thread pools, so without a pause the code timed next shares the cores
    with another library's spinning threads.
    """
    if seconds > 0:
        time.sleep(seconds)


def measure_interleaved(functions: Mapping[str, Callable[[], Any]], budget: Budget, warmup: int = 3,
                        pause: float = 0.15) -> dict[str, Samples]:
    """Time each of ``functions`` (called with no arguments) one call at a time.

    In each of ``budget.rounds`` rounds every function in turn runs for its share of the
    budget. Each turn starts with a ``pause`` (see :func:`settle`) and untimed calls: ``warmup``
    in the first round, one in later rounds (to wake the function's own thread pools).
    """
    samples: dict[str, list[float]] = {name: [] for name in functions}
    share = budget.seconds / budget.rounds
    min_calls = math.ceil(budget.min_repeats / budget.rounds)
    max_calls = max(min_calls, budget.max_repeats // budget.rounds)
    for round_ in range(budget.rounds):
        for name, function in functions.items():
            settle(pause)
            for _ in range(warmup if round_ == 0 else 1):
                function()
            _run_for(function, share, min_calls, max_calls, samples[name])
    return {name: Samples(values) for name, values in samples.items()}


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (all threads), or ``None`` where the
    platform does not count them. A first write to freshly mapped memory costs one each."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def page_faults_per_call(function: Callable[[], Any], calls: int = 10) -> float | None:
    """Average minor page faults of one call of ``function``, over ``calls`` untimed calls
    (after one more call, so that one-off set-up is left out)."""
    function()
    before = minor_page_faults()
    if before is None:
        return None
    for _ in range(calls):
        function()
    return (minor_page_faults() - before) / calls


def kernel_cache_counts() -> tuple[int, int] | None:
    """(jitnn kernel signatures loaded from Numba's on-disk cache, signatures compiled) so
    far in this process, if Numba says; ``None`` before jitnn is imported or if it cannot."""
    if "jitnn._jit" not in sys.modules:
        return None
    try:
        kernels = sys.modules["jitnn._jit"].KERNELS
        hits = sum(sum(kernel.stats.cache_hits.values()) for kernel in kernels)
        misses = sum(sum(kernel.stats.cache_misses.values()) for kernel in kernels)
    except Exception:
        return None
    return hits, misses


def import_timed(module: str) -> tuple[Any, float | None, str | None]:
    """Import ``module``; returns ``(module or None, seconds, error message or None)``."""
    started = time.perf_counter()
    try:
        imported = __import__(module, fromlist=["_"])
    except Exception as error:  # ImportError, or a broken install raising something else
        return None, None, f"{type(error).__name__}: {error}"
    return imported, time.perf_counter() - started, None


# --------------------------------------------------------------------------- the machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    try:
        revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("+changes" if dirty else "")


def _blas_libraries() -> list[str]:
    """The BLAS and OpenMP libraries loaded in this process, with their thread counts
    (through threadpoolctl where installed), else NumPy's build-time BLAS."""
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        found = []
        for info in threadpoolctl.threadpool_info():
            name = info.get("internal_api", "?")
            version = info.get("version")
            parts = Path(info.get("filepath", "")).parts  # name the package that ships it
            where = parts[parts.index("site-packages") + 1] if "site-packages" in parts[:-1] else str(Path(*parts[-2:]) if parts else "?")
            label = f"{name} {version}" if version else name
            extra = f", {info['architecture']}" if info.get("architecture") else ""
            found.append(f"{label} ({where}{extra}): {info.get('num_threads')} threads")
        if found:
            return found
    try:
        import numpy
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return [f"NumPy built with {blas.get('name')} {blas.get('version')}"]
    except Exception:
        return []


def describe_machine(packages: Sequence[str]) -> list[str]:
    """Markdown lines: date, CPU, cores, Python and package versions, BLAS libraries.

    Call it after the benchmark has run, so that every BLAS the benchmark loaded is listed.
    """
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = [f"Python {platform.python_version()}"]
    for package in packages:
        version = _version(package)
        versions.append(f"{package} {version if version else 'not installed'}")
    revision = _git_revision()
    lines = [
        f"{now}; {_cpu_model()}, {_usable_cores()} usable cores ({os.cpu_count()} online); "
        f"{platform.system()} {platform.release()}; " + ", ".join(versions)
        + (f"; jitnn at commit {revision}" if revision else ""),
    ]
    libraries = _blas_libraries()
    if libraries:
        lines.append("BLAS and thread pools loaded: " + "; ".join(libraries))
    return lines


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes, this one included), or ``None``."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def numba_cache_location(cold_cache: str | None = None) -> str:
    """Where Numba's on-disk cache is, in words: the fresh folder of a script's
    ``--cold-cache`` option (``cold_cache``), ``NUMBA_CACHE_DIR``, or Numba's default."""
    if cold_cache is not None:
        return "a new, empty Numba cache folder (--cold-cache)"
    if os.environ.get("NUMBA_CACHE_DIR"):
        return f"NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}"
    return "Numba's default cache folders (next to the sources)"


def thread_settings() -> str:
    """The thread-count environment variables that are set, or a note that none are."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "XLA_FLAGS")
    set_ = [f"{name}={os.environ[name]}" for name in names if name in os.environ]
    return ", ".join(set_) if set_ else "no thread-count environment variables set (library defaults)"


# --------------------------------------------------------------------------- checks
def relative_difference(got: Any, expected: Any) -> float:
    """The largest absolute difference between two arrays of the same shape, relative to the
    largest magnitude in ``expected`` (1 if that is 0): 0 for equal arrays, ``inf`` for
    different shapes, NaN if either holds a NaN. Computed in float64."""
    import numpy

    got, expected = numpy.asarray(got, numpy.float64), numpy.asarray(expected, numpy.float64)
    if got.shape != expected.shape:
        return math.inf
    if got.size == 0:
        return 0.0
    scale = float(numpy.max(numpy.abs(expected))) or 1.0
    return float(numpy.max(numpy.abs(got - expected))) / scale


# --------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_align_from: int = 1) -> str:
    """A Markdown table with padded columns; columns from ``right_align_from`` on are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    widths = [max(width, 3) for width in widths]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).rjust(w) if i >= right_align_from else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i >= right_align_from else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def microseconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    value = seconds * 1e6
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def milliseconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    value = seconds * 1e3
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def stderr(*parts: Any) -> None:
    """Progress messages go to stderr, so stdout holds only the Markdown report."""
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- command line
class TimingDefaults(NamedTuple):
    """A script's default timing budget per table cell, for a full and a ``--quick`` run."""

    seconds: float = 0.75
    min_repeats: int = 20
    rounds: int = 5
    quick_seconds: float = 0.1
    quick_min_repeats: int = 5
    quick_rounds: int = 2


def add_timing_arguments(parser: argparse.ArgumentParser, defaults: TimingDefaults, seed_help: str) -> None:
    """The options every benchmark script shares: budget, seed, cache, pause, spread."""
    parser.add_argument("--quick", action="store_true",
                        help=f"a short, noisier run: {defaults.quick_seconds:g} s and at least {defaults.quick_min_repeats} "
                        f"calls per cell, in {defaults.quick_rounds} rounds")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"time spent per table cell (default {defaults.seconds:g}, or {defaults.quick_seconds:g} with --quick)")
    parser.add_argument("--min-repeats", type=int, default=None,
                        help=f"least number of timed calls per cell (default {defaults.min_repeats}, or "
                        f"{defaults.quick_min_repeats} with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"interleaved rounds the cell's time is spread over (default {defaults.rounds}, or "
                        f"{defaults.quick_rounds} with --quick)")
    parser.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default 0)")
    parser.add_argument("--cold-cache", action="store_true",
                        help="point NUMBA_CACHE_DIR at a new empty folder, so jitnn's first calls compile "
                        "the kernels instead of loading machine code from the on-disk cache")
    parser.add_argument("--pause", type=float, default=0.15,
                        help="seconds to sleep before each implementation's turn and first call, so that "
                        "another library's spinning BLAS threads go idle first (default: %(default)s)")
    parser.add_argument("--spread", action="store_true",
                        help="also print each cell's spread (half the interquartile range, in percent)")


def resolve_timing(parser: argparse.ArgumentParser, args: argparse.Namespace, defaults: TimingDefaults) -> None:
    """Fill in ``args.seconds``, ``min_repeats``, ``rounds`` and ``args.budget``."""
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (defaults.quick_seconds if quick else defaults.seconds)
    args.min_repeats = args.min_repeats if args.min_repeats is not None else (defaults.quick_min_repeats if quick else defaults.min_repeats)
    args.rounds = args.rounds if args.rounds is not None else (defaults.quick_rounds if quick else defaults.rounds)
    try:
        args.budget = Budget(args.seconds, args.min_repeats, args.rounds)
    except ValueError as error:
        parser.error(str(error))


def run_with_cache_choice(run: Callable[[argparse.Namespace, str | None], int], args: argparse.Namespace) -> int:
    """``run(args, None)``, or with ``--cold-cache`` ``run(args, folder)`` with
    ``NUMBA_CACHE_DIR`` pointed at a new, empty folder (set before Numba is imported)."""
    if not args.cold_cache:
        return run(args, None)
    with tempfile.TemporaryDirectory(prefix="jitnn-bench-cache-") as cache:
        os.environ["NUMBA_CACHE_DIR"] = cache
        return run(args, cache)


def positive_integers(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers (``"1,16,64"``), sorted, without
    repeats."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def implementations_type(choices: Sequence[str], required: str | None = None) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: comma-separated names among ``choices`` (``"jitnn,torch"``),
    returned in the order of ``choices`` (the table's), ``required`` among them if given."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
        unknown = [name for name in names if name not in choices]
        if not names or unknown or (required is not None and required not in names):
            included = f", {required} included" if required else ""
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}{included}; got {text!r}")
        return tuple(name for name in choices if name in names)

    return parse
