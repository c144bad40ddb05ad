"""Verdicts: is a candidate environment faster, slower or unchanged against the baseline?

Everything here works on result dicts (docs/result-schema.md) and is deterministic: the
bootstrap draws from a numpy Generator seeded from the rule seed and the two cell ids, so the
same results always give the same report, whatever order cells are compared in.

The statistics, in short:
- The *verdict* comes from the fresh processes (repeats), because on a shared machine the
  process-to-process spread (page placement, frequency, neighbours) dwarfs the
  iteration-to-iteration spread within one process, plus a floor on the effect size so that a
  real but negligible shift is not news. When the two cells were measured in the same
  interleaved rounds (envmatrix.runner), the machine's slow drift hit both alike in each
  round, so the test pairs them: a Wilcoxon signed-rank test on the per-round log ratios of
  p50s, the effect being the median ratio. Otherwise (other runs, a resumed cell, too few
  rounds) a Mann-Whitney U test on the per-repeat p50s.
- The *confidence intervals* come from a hierarchical bootstrap: resample repeats, then
  iterations within each resampled repeat, and take the statistic of the pooled sample.
- A cell is *valid* only when it measured what was asked (provider, package versions,
  iteration count and time); an invalid cell gets the verdict "invalid" with its reasons.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu, wilcoxon

from envmatrix.grammar import normalize_package
from envmatrix.plan import Cell, Plan

FASTER = "faster"
SLOWER = "slower"
UNCHANGED = "no significant change"
INVALID = "invalid"

# How a verdict was tested (Verdict.method).
PAIRED = "wilcoxon-rounds"  # Wilcoxon signed-rank over per-round p50 ratios
UNPAIRED = "mann-whitney"  # Mann-Whitney U over per-repeat p50s

# Metrics with a ratio and CI in every verdict. For throughput a ratio above 1 is better.
METRICS = ("p50", "p99", "mean", "throughput")


@dataclass(frozen=True)
class VerdictRules:
    """The knobs of the verdict; defaults justified by benchmarks/sensitivity.py."""

    alpha: float = 0.05  # two-sided significance level of the test over repeats
    # Changes smaller than this (relative p50) are reported as "no significant change" even
    # when the test is significant: two measurements of one unchanged image drift apart
    # systematically (other moments, other processes). 2% rather than 3%: at a repeat CV of
    # 3% a 3% floor alone misses ~7% of real 5% slowdowns, a 2% floor ~1% (docs/report.md).
    min_effect: float = 0.02
    cv_warn: float = 0.05  # noise warning when the repeats' p50s spread more than this
    confidence: float = 0.95  # level of the bootstrap intervals
    n_boot: int = 2000
    seed: int = 0
    # The bootstrap thins each repeat to at most this many order statistics so that a fast
    # model with 100k iterations costs the same as a slow one; it only widens the CI a little.
    max_points_per_repeat: int = 400


@dataclass(frozen=True)
class Validity:
    valid: bool
    reasons: tuple[str, ...] = ()  # why it is invalid
    warnings: tuple[str, ...] = ()  # shown, but the numbers still count


@dataclass(frozen=True)
class RatioCI:
    """candidate / baseline for one metric, with a bootstrap interval."""

    metric: str
    ratio: float
    low: float
    high: float


@dataclass(frozen=True)
class Verdict:
    candidate: str  # cell id
    baseline: str | None  # cell id of the baseline cell it was compared with
    environment: str
    workload: str
    provider: str
    verdict: str  # FASTER | SLOWER | UNCHANGED | INVALID
    ratios: dict[str, RatioCI] = field(default_factory=dict)
    p_value: float | None = None
    reasons: tuple[str, ...] = ()  # why invalid
    notes: tuple[str, ...] = ()  # e.g. "compared with the baseline's cpu cell", noise
    method: str | None = None  # PAIRED | UNPAIRED; None when no test ran (invalid)
    rounds: int | None = None  # rounds paired (PAIRED only)

    @property
    def p50(self) -> RatioCI | None:
        return self.ratios.get("p50")


# ---------------------------------------------------------------- reading result dicts


def repeat_latencies(result: Mapping[str, Any]) -> list[np.ndarray]:
    """Raw latencies of each repeat (seconds), skipping repeats that timed nothing."""
    reps = result.get("repeats") or []
    arrays = [np.asarray(r.get("latencies_s") or [], dtype=float) for r in reps]
    return [a for a in arrays if a.size]


def repeat_p50s(result: Mapping[str, Any]) -> np.ndarray:
    """Per-repeat p50s: the summary's when present, else computed from the raw values."""
    summary = result.get("summary") or {}
    values = summary.get("repeat_p50_s")
    if values:
        return np.asarray(values, dtype=float)
    return np.asarray([np.percentile(a, 50) for a in repeat_latencies(result)], dtype=float)


def repeat_cv(result: Mapping[str, Any]) -> float | None:
    """Coefficient of variation of the per-repeat p50s (sample std / mean)."""
    p50s = repeat_p50s(result)
    if p50s.size < 2 or float(np.mean(p50s)) <= 0:
        return None
    return float(np.std(p50s, ddof=1) / np.mean(p50s))


def round_p50s(result: Mapping[str, Any]) -> dict[int, float] | None:
    """Per round: the median of its repeats' p50s; None unless every repeat has its `round`."""
    reps = result.get("repeats") or []
    if not reps or any(r.get("round") is None for r in reps):
        return None
    by_round: dict[int, list[float]] = {}
    for rep in reps:
        lat = rep.get("latencies_s") or []
        if lat:
            by_round.setdefault(int(rep["round"]), []).append(float(np.percentile(lat, 50)))
    return {r: float(np.median(v)) for r, v in sorted(by_round.items())}


def _window(result: Mapping[str, Any]) -> tuple[str, str, Any]:
    host = result.get("host") or {}
    return str(host.get("started_at") or ""), str(host.get("finished_at") or ""), host.get("run_id")


def interleaved(base_res: Mapping[str, Any], cand_res: Mapping[str, Any]) -> bool:
    """Were the two cells measured in the same rounds: one run, overlapping in time?

    A resumed run re-measures some cells later, interleaved only among themselves: their
    round k did not happen next to a kept cell's round k, so those pairs carry no shared drift.
    """
    b_start, b_end, b_run = _window(base_res)
    c_start, c_end, c_run = _window(cand_res)
    if not (b_start and b_end and c_start and c_end) or b_run != c_run:
        return False
    return b_start <= c_end and c_start <= b_end


def paired_log_ratios(base_res: Mapping[str, Any], cand_res: Mapping[str, Any]) -> np.ndarray:
    """log(candidate round p50 / baseline round p50) for every round both cells measured."""
    base, cand = round_p50s(base_res) or {}, round_p50s(cand_res) or {}
    shared = sorted(set(base) & set(cand))
    return np.log(np.array([cand[r] / base[r] for r in shared], dtype=float))


def _stat_from_pool(pool: np.ndarray, metric: str) -> float:
    if metric == "p50":
        return float(np.percentile(pool, 50))
    if metric == "p99":
        return float(np.percentile(pool, 99))
    if metric == "mean":
        return float(np.mean(pool))
    if metric == "throughput":
        return float(pool.size / np.sum(pool))
    raise ValueError(f"unknown metric {metric!r}")


def point_value(result: Mapping[str, Any], metric: str) -> float | None:
    """A metric of one cell, from the summary (the harness's numbers) or the raw values."""
    summary = result.get("summary") or {}
    if metric == "throughput" and summary.get("throughput_per_s"):
        return float(summary["throughput_per_s"])
    latency = summary.get("latency_s") or {}
    if metric in latency and latency[metric] is not None:
        return float(latency[metric])
    reps = repeat_latencies(result)
    return _stat_from_pool(np.concatenate(reps), metric) if reps else None


# ---------------------------------------------------------------- validity


def _release(version: str) -> tuple[str, ...]:
    """'2.3.0+cpu' -> ('2', '3'); trailing zeros dropped so 1.8 == 1.8.0."""
    parts = version.strip().split("+", 1)[0].split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return tuple(parts)


def version_mismatches(requested: Mapping[str, str], installed: Mapping[str, str]) -> list[str]:
    """One line per requested pin that is not what the image has installed."""
    have = {normalize_package(k): v for k, v in installed.items()}
    problems = []
    for name, want in sorted(requested.items()):
        got = have.get(normalize_package(name))
        if got is None:
            problems.append(f"{name}=={want} requested but not installed")
        elif _release(got) != _release(want):
            problems.append(f"{name}=={want} requested but {got} installed")
    return problems


def _provider_problems(result: Mapping[str, Any]) -> list[str]:
    prov = result.get("provider") or {}
    requested = prov.get("requested")
    active = prov.get("active") or []
    if prov.get("fallback") or (requested and active and requested not in active):
        # The runtime's own words (e.g. "[OpenVINO] Device GPU is not available") say why.
        why = f"; the runtime said: {prov['reason']}" if prov.get("reason") else ""
        return [f"requested provider {requested} is not active, it fell back to "
                f"{', '.join(active) or 'nothing'}{why}"]
    return []


def _budget_problems(result: Mapping[str, Any]) -> list[str]:
    """Each repeat must reach the iterations and time asked for, and all repeats must exist."""
    settings = result.get("settings") or {}
    reps = result.get("repeats") or []
    min_iter = int(settings.get("min_iterations") or 0)
    min_time = float(settings.get("min_time_s") or 0.0)
    problems = []
    want = int(settings.get("repeats") or 0)
    if len(reps) < max(want, 1):
        problems.append(f"{len(reps)} of {want} repeats produced numbers")
    for rep in reps:
        lat = rep.get("latencies_s") or []
        wall = rep.get("measure_wall_s")
        timed = float(wall) if wall is not None else float(sum(lat))
        if len(lat) < min_iter:
            problems.append(f"repeat {rep.get('index')}: {len(lat)} iterations < {min_iter}")
        # 1% slack: perf_counter's wall time and the summed latencies differ by loop overhead.
        if timed < 0.99 * min_time:
            problems.append(f"repeat {rep.get('index')}: measured {timed:.2f} s < {min_time} s")
    return problems


def check_validity(result: Mapping[str, Any], rules: VerdictRules | None = None) -> Validity:
    """MLPerf-style VALID/INVALID for one cell, with the reasons and noise warnings."""
    rules = rules or VerdictRules()
    status = result.get("status")
    if status != "ok":
        reason = result.get("reason") or "no reason recorded"
        return Validity(False, (f"status {status}: {reason}",))
    if not repeat_latencies(result):
        return Validity(False, ("no latencies recorded",))
    reasons = _provider_problems(result) + _budget_problems(result)
    requested = (result.get("host") or {}).get("requested_packages") or {}
    installed = (result.get("fingerprint") or {}).get("packages") or {}
    reasons += version_mismatches(requested, installed)
    warnings = []
    cv = repeat_cv(result)
    if cv is not None and cv > rules.cv_warn:
        warnings.append(
            f"noisy: the repeats' p50s vary by {cv:.1%} (CV), above {rules.cv_warn:.0%}"
        )
    return Validity(not reasons, tuple(reasons), tuple(warnings))


# ---------------------------------------------------------------- bootstrap and test


def _thin(values: np.ndarray, m: int) -> np.ndarray:
    """At most m evenly spaced order statistics of values: same distribution, fewer points."""
    if values.size <= m:
        return np.sort(values)
    return np.quantile(values, (np.arange(m) + 0.5) / m)


def _boot_pools(reps: Sequence[np.ndarray], n_boot: int, m: int, rng: np.random.Generator
                ) -> np.ndarray:
    """n_boot hierarchical resamples, shape (n_boot, R*m): repeats, then iterations within."""
    size = min(m, min(a.size for a in reps))
    table = np.stack([_thin(a, size) for a in reps])  # (R, size)
    n_rep = table.shape[0]
    pick_rep = rng.integers(0, n_rep, size=(n_boot, n_rep))
    pick_it = rng.integers(0, size, size=(n_boot, n_rep, size))
    return table[pick_rep[:, :, None], pick_it].reshape(n_boot, n_rep * size)


def _boot_stats(pools: np.ndarray, metric: str) -> np.ndarray:
    if metric == "p50":
        return np.percentile(pools, 50, axis=1)
    if metric == "p99":
        return np.percentile(pools, 99, axis=1)
    mean = pools.mean(axis=1)
    return 1.0 / mean if metric == "throughput" else mean


def comparison_rng(rules: VerdictRules, base_id: str, cand_id: str) -> np.random.Generator:
    """A generator that depends only on the rules' seed and the two cells compared."""
    digest = hashlib.sha256(f"{rules.seed}\0{base_id}\0{cand_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def ratio_cis(
    base_reps: Sequence[np.ndarray],
    cand_reps: Sequence[np.ndarray],
    rules: VerdictRules,
    rng: np.random.Generator,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of candidate/baseline for every metric in METRICS."""
    base_pools = _boot_pools(base_reps, rules.n_boot, rules.max_points_per_repeat, rng)
    cand_pools = _boot_pools(cand_reps, rules.n_boot, rules.max_points_per_repeat, rng)
    tail = (1.0 - rules.confidence) / 2.0 * 100.0
    out = {}
    for metric in METRICS:
        ratio = _boot_stats(cand_pools, metric) / _boot_stats(base_pools, metric)
        low, high = np.percentile(ratio, [tail, 100.0 - tail])
        out[metric] = (float(low), float(high))
    return out


def repeats_p_value(base_p50s: np.ndarray, cand_p50s: np.ndarray) -> float | None:
    """Two-sided Mann-Whitney U over per-repeat p50s; None with fewer than 2 repeats a side.

    Exact for small samples: with 5 vs 5 repeats the smallest possible p is 0.008, with 3 vs 3
    it is 0.1, so fewer than 4 repeats a side can never reach alpha=0.05.
    """
    if base_p50s.size < 2 or cand_p50s.size < 2:
        return None
    return float(mannwhitneyu(cand_p50s, base_p50s, alternative="two-sided").pvalue)


def decide(ratio: float, p_value: float | None, rules: VerdictRules) -> str:
    """The verdict word: significant over repeats AND at least the minimum effect."""
    if p_value is None or p_value >= rules.alpha or abs(ratio - 1.0) < rules.min_effect:
        return UNCHANGED
    return FASTER if ratio < 1.0 else SLOWER


def min_repeats_for(alpha: float) -> int:
    """Smallest n (same on both sides) whose exact two-sided MWU can reach p < alpha."""
    n = 2
    while 2.0 / math.comb(2 * n, n) >= alpha:
        n += 1
    return n


def min_rounds_for(alpha: float) -> int:
    """Smallest n whose exact two-sided Wilcoxon signed-rank test can reach p < alpha.

    The smallest possible p with n pairs is 2 / 2**n: 0.125 with 4 pairs, 0.0625 with 5, 0.031
    with 6. So pairing needs 6 shared rounds at alpha 0.05; with fewer it could never decide.
    """
    n = 1
    while 2.0 / 2**n >= alpha:
        n += 1
    return n


def rounds_p_value(log_ratios: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank test of the per-round log ratios against 0.

    Exact for up to 50 distinct values (scipy's choice); with tied values, the normal
    approximation with tie correction: scipy's exact path with ties is a permutation test
    that costs 100 ms a call, and ties only arise when rounds are resampled (sensitivity.py).
    Rounds of exactly equal p50s carry no sign and are dropped.
    """
    nonzero = log_ratios[log_ratios != 0.0]
    if not nonzero.size:
        return 1.0
    tied = np.unique(np.abs(nonzero)).size < nonzero.size
    method = "approx" if tied else "auto"
    return float(wilcoxon(log_ratios, alternative="two-sided", method=method).pvalue)


def paired_effect(log_ratios: np.ndarray, rules: VerdictRules, rng: np.random.Generator
                  ) -> tuple[float, float, float]:
    """(median ratio, CI low, CI high): the percentile bootstrap resamples whole rounds."""
    ratios = np.exp(log_ratios)
    picks = rng.integers(0, ratios.size, size=(rules.n_boot, ratios.size))
    boot = np.median(ratios[picks], axis=1)
    tail = (1.0 - rules.confidence) / 2.0 * 100.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return float(np.median(ratios)), float(low), float(high)


# ---------------------------------------------------------------- one comparison


def _verdict(cand_cell: Cell, **kw: Any) -> Verdict:
    return Verdict(candidate=cand_cell.id, environment=cand_cell.environment.id,
                   workload=cand_cell.workload.name, provider=cand_cell.provider, **kw)


def _missing(cell_id: str) -> dict[str, Any]:
    return {"status": "no_result", "reason": f"no result file for {cell_id}"}


def compare_cells(
    base_cell: Cell | None,
    cand_cell: Cell,
    results: Mapping[str, Mapping[str, Any]],
    rules: VerdictRules,
    notes: Sequence[str] = (),
) -> Verdict:
    """The verdict of one candidate cell against one baseline cell."""
    cid = cand_cell.id
    cand_res = results.get(cid) or _missing(cid)
    cand_valid = check_validity(cand_res, rules)
    reasons = list(cand_valid.reasons)
    notes = list(notes) + list(cand_valid.warnings)
    if base_cell is None:
        reasons.append(f"the baseline has no {cand_cell.workload.name} cell to compare with")
        return _verdict(cand_cell, baseline=None, verdict=INVALID, reasons=tuple(reasons),
                        notes=tuple(notes))
    base_id = base_cell.id
    base_res = results.get(base_id) or _missing(base_id)
    base_valid = check_validity(base_res, rules)
    reasons += [f"baseline {base_id}: {r}" for r in base_valid.reasons]
    notes += [f"baseline: {w}" for w in base_valid.warnings]
    if reasons:
        return _verdict(cand_cell, baseline=base_id, verdict=INVALID, reasons=tuple(reasons),
                        notes=tuple(notes))
    return _verdict(cand_cell, baseline=base_id,
                    **measured_comparison(base_id, base_res, cid, cand_res, rules, notes))


def measured_comparison(
    base_id: str,
    base_res: Mapping[str, Any],
    cand_id: str,
    cand_res: Mapping[str, Any],
    rules: VerdictRules,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Ratios with CIs, p-value, verdict word and method of two valid cells (Verdict fields).

    Paired by round when both cells were measured in the same interleaved rounds and share
    enough of them (`min_rounds_for`); else the unpaired test over all repeats.
    """
    rng = comparison_rng(rules, base_id, cand_id)
    cis = ratio_cis(repeat_latencies(base_res), repeat_latencies(cand_res), rules, rng)
    ratios = {}
    for metric in METRICS:
        base_v, cand_v = point_value(base_res, metric), point_value(cand_res, metric)
        point = cand_v / base_v if base_v and cand_v is not None else float("nan")
        ratios[metric] = RatioCI(metric, point, *cis[metric])
    notes = list(notes)
    log_ratios = np.array([])
    if interleaved(base_res, cand_res):
        log_ratios = paired_log_ratios(base_res, cand_res)
    paired = log_ratios.size >= min_rounds_for(rules.alpha)
    p_value: float | None
    if paired:
        ratios["p50"] = RatioCI("p50", *paired_effect(log_ratios, rules, rng))
        p_value = rounds_p_value(log_ratios)
    else:
        if log_ratios.size > 1:  # rounds: 1 chose no interleaving: nothing to say
            notes.append(f"only {log_ratios.size} shared rounds (pairing needs "
                         f"{min_rounds_for(rules.alpha)}): tested unpaired over the repeats")
        p_value = _unpaired_p_value(base_res, cand_res, rules, notes)
    return {"verdict": decide(ratios["p50"].ratio, p_value, rules), "ratios": ratios,
            "p_value": p_value, "notes": tuple(notes), "method": PAIRED if paired else UNPAIRED,
            "rounds": int(log_ratios.size) if paired else None}


def _unpaired_p_value(base_res: Mapping[str, Any], cand_res: Mapping[str, Any],
                      rules: VerdictRules, notes: list[str]) -> float | None:
    base_p50s, cand_p50s = repeat_p50s(base_res), repeat_p50s(cand_res)
    n_min = min_repeats_for(rules.alpha)
    if min(base_p50s.size, cand_p50s.size) < n_min:
        notes.append(f"too few repeats for a verdict: the test needs at least {n_min} "
                     f"per side to reach alpha={rules.alpha}")
    return repeats_p_value(base_p50s, cand_p50s)


def method_phrase(method: str) -> str:
    """How a verdict was tested, in words for reports."""
    if method == PAIRED:
        return ("a Wilcoxon signed-rank test over the per-round p50 ratios (cells measured in "
                "interleaved rounds, paired by round)")
    return "a Mann-Whitney U test over the per-process p50s"


# ---------------------------------------------------------------- a whole run


def match_baseline(
    cells: Sequence[Cell], baseline_env: str, cand: Cell
) -> tuple[Cell | None, list[str]]:
    """The baseline cell for a candidate: same workload and provider, else the cpu cell."""
    same_wl = [c for c in cells
               if c.environment.id == baseline_env and c.workload.name == cand.workload.name]
    for c in same_wl:
        if c.provider == cand.provider:
            return c, []
    for c in same_wl:
        if c.provider == "cpu":
            note = f"the baseline has no {cand.provider} cell: compared with its cpu cell"
            return c, [note]
    return None, []


def run_verdicts(
    plan: Plan,
    results: Mapping[str, Mapping[str, Any]],
    rules: VerdictRules | None = None,
) -> list[Verdict]:
    """A verdict for every non-baseline cell of a plan, in plan order."""
    rules = rules or VerdictRules()
    verdicts = []
    for cell in plan.cells:
        if cell.environment.id == plan.baseline:
            continue
        base_cell, notes = match_baseline(plan.cells, plan.baseline, cell)
        verdicts.append(compare_cells(base_cell, cell, results, rules, notes))
    return verdicts
