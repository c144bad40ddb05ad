"""What a decision needs from a run, beyond the verdict: the cost of each speed-up and trust.

The verdict (envmatrix.stats) says whether a candidate is faster per request. An expert also
asks what it costs: how many cores it keeps busy, CPU time per inference, the cold start of a
fresh process, memory and image size; and whether the numbers can be trusted: a noisy cell
with a visible cause (two modes, more busy threads than free cores, drift over the run) says
which of its figures still stand. Everything here reads result dicts and the typed plan and is
deterministic, so the report built from it rebuilds byte for byte.

Costs are per-cell medians over the fresh processes (each process's CPU time over its timed
loop's wall time, and so on); their changes against the baseline are ratios of those medians,
without an interval: they describe what the runtime did, while the latency verdict is the
tested claim (docs/report.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from envmatrix.stats import repeat_p50s, unit_values

# A cell whose processes use this many more cores than the baseline's counts as "different
# parallelism" in the summary's words: below it the difference is measurement noise.
CORES_DIFFERENCE = 0.25
# Two groups of process p50s at least this far apart (relative) read as two modes.
MODE_GAP = 0.12
# Drift: a rank correlation of round p50 with round index this strong, over enough rounds.
DRIFT_RHO = 0.6
DRIFT_MIN_ROUNDS = 6


@dataclass(frozen=True)
class Costs:
    """What one cell's processes spent, as medians over its processes (None: not recorded)."""

    cores_used: float | None  # CPU time / wall time of the timed loop
    cpu_per_inference_s: float | None
    cold_start_s: float | None  # spawn to the end of the first inference
    session_create_s: float | None
    first_inference_s: float | None
    peak_rss_bytes: float | None
    threads_alive: int | None  # OS threads of the process during the timed loop (max)
    intra_op_threads: int | None  # what was asked (None: the runtime's default)
    cpus_available: float | None


def _median(values: Sequence[Any]) -> float | None:
    clean = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.median(clean)) if clean else None


def _per_repeat_cores(rep: Mapping[str, Any]) -> float | None:
    if rep.get("cores_used") is not None:
        return float(rep["cores_used"])
    cpu, wall = rep.get("cpu_time_s"), rep.get("measure_wall_s")  # results before the field
    return float(cpu) / float(wall) if cpu is not None and wall else None


def _per_repeat_cpu(rep: Mapping[str, Any]) -> float | None:
    if rep.get("cpu_per_inference_s") is not None:
        return float(rep["cpu_per_inference_s"])
    cpu, count = rep.get("cpu_time_s"), len(rep.get("latencies_s") or [])
    return float(cpu) / count if cpu is not None and count else None


def cell_costs(result: Mapping[str, Any]) -> Costs | None:
    """The costs of an ok cell; None for a cell without numbers."""
    if result.get("status") != "ok":
        return None
    reps = result.get("repeats") or []
    summary = result.get("summary") or {}
    threads = summary.get("threads") or {}
    alive = threads.get("alive_in_loop")
    return Costs(
        cores_used=_median([_per_repeat_cores(r) for r in reps]),
        cpu_per_inference_s=_median([_per_repeat_cpu(r) for r in reps]),
        cold_start_s=_median([r.get("cold_start_s") for r in reps]),
        session_create_s=_median([r.get("session_create_s") for r in reps]),
        first_inference_s=_median([r.get("first_inference_s") for r in reps]),
        peak_rss_bytes=_median([r.get("peak_rss_bytes") for r in reps]),
        threads_alive=int(alive) if isinstance(alive, (int, float)) else None,
        intra_op_threads=threads.get("intra_op_requested"),
        cpus_available=_cpus(result, threads),
    )


def _cpus(result: Mapping[str, Any], threads: Mapping[str, Any]) -> float | None:
    if isinstance(threads.get("cpus_available"), (int, float)):
        return float(threads["cpus_available"])
    cores = ((result.get("fingerprint") or {}).get("cpu") or {}).get("cores_visible")
    return float(cores) if isinstance(cores, (int, float)) else None


def change(base: float | None, cand: float | None) -> float | None:
    """cand / base, or None when either is missing or the base is zero."""
    if base is None or cand is None or base == 0:
        return None
    return cand / base


# ---------------------------------------------------------------- parallelism in words


def cores_phrase(base: Costs | None, cand: Costs | None) -> str | None:
    """"using 2.0 cores instead of 1.0", when the two cells' parallelism differs."""
    if base is None or cand is None or base.cores_used is None or cand.cores_used is None:
        return None
    if abs(cand.cores_used - base.cores_used) < CORES_DIFFERENCE:
        return None
    return f"using {cand.cores_used:.1f} cores instead of {base.cores_used:.1f}"


def parallelism_phrase(base: Costs | None, cand: Costs | None) -> str | None:
    """"using 2.0 cores instead of 1.0: +24% CPU per inference", when parallelism differs."""
    cores = cores_phrase(base, cand)
    if cores is None or base is None or cand is None:
        return None
    cpu = change(base.cpu_per_inference_s, cand.cpu_per_inference_s)
    return f"{cores}: {(cpu - 1) * 100:+.0f}% CPU per inference" if cpu is not None else cores


# ---------------------------------------------------------------- trust: noise and its cause


@dataclass(frozen=True)
class Noise:
    """Why a noisy cell's numbers spread, as far as the run shows it."""

    cv: float
    causes: tuple[str, ...]
    two_modes: bool  # then p90/p99 and throughput mix the modes; the p50 verdict stands


def two_modes(p50s: Sequence[float]) -> tuple[int, float, int, float] | None:
    """(count, median) of the fast and the slow group when the process p50s form two modes.

    Two modes: the widest gap between neighbours (sorted, relative) is at least MODE_GAP and
    wider than the spread inside either group, with two processes or more on each side.
    """
    values = np.sort(np.asarray([p for p in p50s if p > 0], dtype=float))
    if values.size < 4:
        return None
    logs = np.log(values)
    gaps = np.diff(logs)
    cut = int(np.argmax(gaps[1:-1])) + 1  # never split off a single process
    low, high = logs[: cut + 1], logs[cut + 1:]
    widest = float(gaps[cut])
    inside = max(float(np.ptp(low)), float(np.ptp(high)))
    if widest < math.log1p(MODE_GAP) or widest <= inside:
        return None
    return low.size, float(np.exp(np.median(low))), high.size, float(np.exp(np.median(high)))


def drift(result: Mapping[str, Any]) -> float | None:
    """The change from the first to the last third of the rounds when p50 trends with time."""
    rounds = unit_values(result, "p50")
    if len(rounds) < DRIFT_MIN_ROUNDS:
        return None
    order = sorted(rounds)
    values = np.array([rounds[r] for r in order])
    rho = spearmanr(np.arange(values.size), values).statistic
    if not math.isfinite(rho) or abs(rho) < DRIFT_RHO:
        return None
    third = max(values.size // 3, 1)
    return float(np.median(values[-third:]) / np.median(values[:third]))


def noise(result: Mapping[str, Any], costs: Costs | None, cv_warn: float) -> Noise | None:
    """The cell's noise and its likely causes, when its process p50s spread beyond cv_warn."""
    p50s = repeat_p50s(result)
    if p50s.size < 2 or float(np.mean(p50s)) <= 0:
        return None
    cv = float(np.std(p50s, ddof=1) / np.mean(p50s))
    if cv <= cv_warn:
        return None
    causes = []
    modes = two_modes(p50s.tolist())
    if modes:
        n_fast, fast, n_slow, slow = modes
        causes.append(f"two modes: {n_fast} processes near {fast * 1e3:.2f} ms, {n_slow} near "
                      f"{slow * 1e3:.2f} ms")
    busy = _oversubscribed(costs)
    if busy:
        causes.append(busy)
    moved = drift(result)
    if moved is not None:
        causes.append(f"drift: p50 moved {(moved - 1) * 100:+.0f}% from the first to the last "
                      "third of the rounds")
    return Noise(cv, tuple(causes) or ("no cause visible in the recorded data",), bool(modes))


def _oversubscribed(costs: Costs | None) -> str | None:
    """More busy runtime threads than free cores: the OS scheduler decides the latency."""
    if costs is None or costs.cpus_available is None:
        return None
    cpus = costs.cpus_available
    if costs.threads_alive is not None and costs.intra_op_threads is None and \
            costs.threads_alive > cpus:
        return (f"{costs.threads_alive} runtime threads on {cpus:g} available cores (the "
                "runtime's default thread count)")
    if costs.cores_used is not None and costs.cores_used >= cpus - 0.1 and cpus <= 4:
        return (f"the runtime keeps all {cpus:g} cores busy ({costs.cores_used:.2f} cores "
                "used), so anything else on the machine slows it")
    return None
