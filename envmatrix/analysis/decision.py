"""What a decision needs from a run, beyond the verdict: the cost of each speed-up and trust.

The verdict (envmatrix.analysis.stats) says whether a candidate is faster per request. An expert
also asks what it costs: how many cores it keeps busy, CPU time per inference, the cold start of
a fresh process, memory and image size; and whether the numbers can be trusted: a noisy cell
with a visible cause (two modes, more busy threads than free cores, drift over the run) says
which of its figures still stand. Everything here reads result dicts and the typed plan and is
deterministic, so the report built from it rebuilds byte for byte.

Costs are per-cell figures of the same kind as the latency's: each process's figure (CPU time
over its timed loop's wall time, CPU time per inference, cold start, peak RSS), the median per
round, the median over rounds; a change against the baseline is the ratio of two such figures
with the same interval as the verdict's (`cost_ratios`, stats.compare_units), so the
summary table, the cost plot and results.csv show one number (docs/report.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from envmatrix.analysis.stats import (
    RatioCI,
    VerdictRules,
    compare_units,
    pairing,
    repeat_p50s,
    unit_values,
)
from envmatrix.rundir.resultfile import (
    Repeat,
    ResultLike,
    Threads,
    fingerprint_of,
    summary_of,
    timed_repeats,
)

# A cell whose processes use this many more cores than the baseline's counts as "different
# parallelism" in the summary's words: below it the difference is measurement noise.
CORES_DIFFERENCE = 0.25
# Two groups of process p50s at least this far apart (relative) read as two modes.
MODE_GAP = 0.12
# Drift: a rank correlation of round p50 with round index this strong, over enough rounds.
DRIFT_RHO = 0.6
DRIFT_MIN_ROUNDS = 6


# The cost metrics: (name, per-repeat key in the result, legend label).
COST_METRICS = (("cpu_per_inference", "cpu_per_inference_s", "CPU per inference"),
                ("cold_start", "cold_start_s", "cold start"),
                ("peak_rss", "peak_rss_bytes", "peak RSS"))
COST_KEYS = {name: key for name, key, _label in COST_METRICS}




def has_rounds(reps: Sequence[Repeat]) -> bool:
    """Were these repeats measured in two or more interleaved rounds?"""
    rounds = [r.get("round") for r in reps]
    return bool(rounds) and None not in rounds and len(set(rounds)) > 1


def unit_keys(reps: Sequence[Repeat]) -> list[int]:
    """Each timed repeat's unit as envmatrix.analysis.stats.unit_values counts them: its round when
    every repeat has one and there are at least two, else its position."""
    if has_rounds(reps):
        return [int(r["round"]) for r in reps]
    return list(range(len(reps)))


def repeat_cost(rep: Repeat, key: str) -> float | None:
    """One process's cost figure, computed as the schema says where an older harness did not
    record it; None when absent or not positive."""
    value = rep.get(key)  # a key of COST_METRICS, or cores_used, session_create_s...
    if value is None and key == "cpu_per_inference_s":  # older harness: the schema's formula
        cpu, n = rep.get("cpu_time_s"), len(rep.get("latencies_s") or [])
        value = float(cpu) / n if cpu is not None and n else None
    if value is None and key == "cores_used":  # likewise: CPU time over the loop's wall time
        cpu, wall = rep.get("cpu_time_s"), rep.get("measure_wall_s")
        value = float(cpu) / float(wall) if cpu is not None and wall else None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def cost_units(result: ResultLike, key: str) -> dict[int, float]:
    """Per unit (round, else process) the median over its processes of a per-repeat cost
    (`COST_METRICS` keys); units where no process recorded it are left out."""
    reps = timed_repeats(result)
    groups: dict[int, list[float]] = {}
    for unit, rep in zip(unit_keys(reps), reps):
        value = repeat_cost(rep, key)
        if value is not None:
            groups.setdefault(unit, []).append(value)
    return {u: float(np.median(v)) for u, v in sorted(groups.items())}


def cost_ratios(base_id: str, base_res: ResultLike, cand_id: str,
                cand_res: ResultLike, rules: VerdictRules) -> dict[str, RatioCI]:
    """candidate / baseline of each cost metric both cells recorded, by the verdict's own
    procedure (envmatrix.analysis.stats.compare_units: the same paired looks or unpaired
    interval); the two cells must both be valid."""
    paired = pairing(base_res, cand_res, rules)[0]
    out = {}
    for name, key, _label in COST_METRICS:
        base, cand = cost_units(base_res, key), cost_units(cand_res, key)
        if base and cand:
            # Paired on the rounds both hold (a cell that left the rounds early holds the
            # first ones), as the latency's comparison is.
            out[name] = compare_units(base_id, base, cand_id, cand, paired, rules, name)
    return out


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


def _unit_median(result: ResultLike, key: str) -> float | None:
    """A cell's figure: the median over its units of their median process (`cost_units`),
    the statistic the cost ratios take (`cost_ratios`)."""
    units = cost_units(result, key)
    return float(np.median(list(units.values()))) if units else None


def cell_costs(result: ResultLike) -> Costs | None:
    """The costs of an ok cell; None for a cell without numbers."""
    if result.get("status") != "ok":
        return None
    threads = summary_of(result).get("threads") or {}
    alive = threads.get("alive_in_loop")
    return Costs(
        cores_used=_unit_median(result, "cores_used"),
        cpu_per_inference_s=_unit_median(result, "cpu_per_inference_s"),
        cold_start_s=_unit_median(result, "cold_start_s"),
        session_create_s=_unit_median(result, "session_create_s"),
        first_inference_s=_unit_median(result, "first_inference_s"),
        peak_rss_bytes=_unit_median(result, "peak_rss_bytes"),
        threads_alive=int(alive) if isinstance(alive, (int, float)) else None,
        intra_op_threads=threads.get("intra_op_requested"),
        cpus_available=_cpus(result, threads),
    )


def _cpus(result: ResultLike, threads: Threads) -> float | None:
    cpus = threads.get("cpus_available")
    if isinstance(cpus, (int, float)):
        return float(cpus)
    cores = (fingerprint_of(result).get("cpu") or {}).get("cores_visible")
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


def drift(result: ResultLike) -> float | None:
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


def noise(result: ResultLike, costs: Costs | None, cv_warn: float) -> Noise | None:
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
