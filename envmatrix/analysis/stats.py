"""Verdicts: is a candidate environment faster, slower or unchanged against the baseline?

Everything here works on result dicts (docs/result-schema.md) and is deterministic: the
bootstrap draws from a numpy Generator seeded from the rule seed and the two cell ids (in
sorted order, so swapping baseline and candidate draws the same resamples).

One procedure per metric gives the table's number of each cell, the change, its interval and
the verdict (docs/report.md, "How a verdict is made"):
- a *unit* is a round of the interleaved measurement (envmatrix.running.runner); a result without
  rounds counts each process as its own round. A unit's value is the median over its
  processes of the per-process statistic (p50, p99, mean latency, throughput);
- paired (the two cells were measured in the same interleaved rounds): the *change* is the
  median over rounds of the per-round ratio candidate/baseline, so the machine's drift from
  round to round cancels; its *interval* a percentile bootstrap of that median drawing whole
  rounds; the baseline's *point* is the median of its units' values (`point_value`) and the
  candidate's is the baseline's times the change (its value corrected for the baseline's
  drift), so the table's two columns divide to the change exactly;
- unpaired (other runs, a resumed cell, too few shared rounds): each cell's point is the
  median of its units' values, the change their ratio, its interval a bootstrap drawing each
  cell's units independently;
- the *verdict* is a pure function of (estimate, interval, min_effect) (`decide_interval`),
  on p50; on samples/s when the two cells keep different numbers of requests in flight
  (`decided_by`): a request's latency under load is not comparable to one alone, and what
  more requests in flight are for is throughput.
  With fewer units than the bootstrap can be trusted with (`min_rounds_for`,
  `min_repeats_for`) there is no interval (NaN) and no verdict (`too_few_note` says why).
A cell is *valid* only when it measured what was asked (provider, package versions,
iteration count and time); an invalid cell gets the verdict "invalid" with its reasons.

Why it is long (over 600 lines): this is the one verdict procedure, and validity, the units,
the paired and unpaired estimates, the bootstrap and the decision must read as one piece so
that the number, the interval and the verdict visibly come from the same estimate.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envmatrix.grammar import version_mismatches
from envmatrix.rundir.plan import Cell, Plan, VerdictSettings
from envmatrix.rundir.resultfile import (
    Provider,
    Repeat,
    Result,
    ResultLike,
    fingerprint_of,
    host_of,
    provider_of,
    repeats_of,
    settings_of,
    summary_of,
    timed_repeats,
)

FASTER = "faster"
SLOWER = "slower"
UNCHANGED = "no significant change"
INVALID = "invalid"
NOISY_PREFIX = "noisy:"  # how the noise warning of `check_validity` starts

# How a comparison was made (Verdict.method, RatioCI.method).
PAIRED = "paired rounds"  # rounds drawn jointly for both cells
UNPAIRED = "unpaired"  # each cell's units drawn independently

# Metrics with a ratio, an interval and a verdict word in every comparison. For throughput a
# ratio above 1 is better. p50 makes the verdict, p99 the tail verdict.
METRICS = ("p50", "p99", "mean", "throughput")
HIGHER_IS_BETTER = frozenset({"throughput"})
# Log ratios closer to 0 than this count as 0 (no side): exp() of a smaller one may print as 1.
_LOG_EPS = 1e-12


@dataclass(frozen=True)
class VerdictRules:
    """The knobs of the verdict; defaults justified by benchmarks/sensitivity.py."""

    # Kept for callers that print it: the verdict's level is the interval's, 1 - confidence.
    alpha: float = 0.05
    # Changes smaller than this are reported as "no significant change" even when the
    # interval excludes no change: two measurements of one unchanged image drift apart
    # systematically (other moments, other processes). Applied symmetrically on the log
    # scale: slower above 1 + min_effect, faster below 1 / (1 + min_effect).
    min_effect: float = 0.02
    cv_warn: float = 0.05  # noise warning when the repeats' p50s spread more than this
    # A warning when the requested execution provider ran less than this share of the
    # compute nodes (profiled placement; 1.0: every compute node on the requested provider).
    min_node_share: float = 1.0
    confidence: float = 0.95  # level of the bootstrap intervals, and so of the verdict
    n_boot: int = 2000
    seed: int = 0
    # Unused since verdicts work on per-process statistics; kept so old callers still build.
    max_points_per_repeat: int = 400

    @property
    def level_alpha(self) -> float:
        """Two-sided error rate of the interval that decides: 1 - confidence."""
        return 1.0 - self.confidence


def rules_for(settings: VerdictSettings) -> VerdictRules:
    """The rules of a plan's `verdict:` settings: alpha sets the level of the intervals."""
    return VerdictRules(alpha=settings.alpha, min_effect=settings.min_effect,
                        confidence=1.0 - settings.alpha, min_node_share=settings.min_node_share)


@dataclass(frozen=True)
class Validity:
    valid: bool
    reasons: tuple[str, ...] = ()  # why it is invalid
    warnings: tuple[str, ...] = ()  # shown, but the numbers still count


@dataclass(frozen=True)
class RatioCI:
    """candidate / baseline for one metric: the estimate, its interval and what they say.

    `base` and `cand` are the two cells' points (`point_value`): cand / base == ratio. low and
    high are NaN when there were too few units for an interval; then verdict is UNCHANGED.
    """

    metric: str
    ratio: float
    low: float
    high: float
    base: float | None = None
    cand: float | None = None
    verdict: str | None = None  # FASTER | SLOWER | UNCHANGED (decide_interval)
    method: str | None = None  # PAIRED | UNPAIRED
    n_base: int | None = None  # units used: rounds (paired: shared rounds) or processes
    n_cand: int | None = None
    p_value: float | None = None  # bootstrap two-sided p: < 1 - confidence iff 1 is outside


@dataclass(frozen=True)
class Verdict:
    candidate: str  # cell id
    baseline: str | None  # cell id of the baseline cell it was compared with
    environment: str
    workload: str
    provider: str
    verdict: str  # FASTER | SLOWER | UNCHANGED | INVALID (from p50)
    ratios: dict[str, RatioCI] = field(default_factory=dict)
    p_value: float | None = None  # p50's bootstrap p-value (supplementary)
    reasons: tuple[str, ...] = ()  # why invalid
    notes: tuple[str, ...] = ()  # e.g. "compared with the baseline's cpu cell", noise
    method: str | None = None  # PAIRED | UNPAIRED; None when no test ran (invalid)
    rounds: int | None = None  # rounds paired (PAIRED only)
    tail_verdict: str | None = None  # the same procedure on p99; None when invalid or on load
    decided_by: str = "p50"  # the metric of `verdict`: "throughput" across loads (`load_of`)

    @property
    def p50(self) -> RatioCI | None:
        return self.ratios.get("p50")

    @property
    def decided(self) -> RatioCI | None:
        """The comparison the verdict word comes from."""
        return self.ratios.get(self.decided_by)

    @property
    def p99(self) -> RatioCI | None:
        return self.ratios.get("p99")


# ---------------------------------------------------------------- reading result dicts


def repeat_latencies(result: ResultLike) -> list[np.ndarray]:
    """Raw latencies of each repeat (seconds), skipping repeats that timed nothing."""
    arrays = [np.asarray(r.get("latencies_s") or [], dtype=float) for r in repeats_of(result)]
    return [a for a in arrays if a.size]


def repeat_p50s(result: ResultLike) -> np.ndarray:
    """Per-repeat p50s: the summary's when present, else computed from the raw values."""
    values = summary_of(result).get("repeat_p50_s")
    if values:
        return np.asarray(values, dtype=float)
    return np.asarray([np.percentile(a, 50) for a in repeat_latencies(result)], dtype=float)


def repeat_cv(result: ResultLike) -> float | None:
    """Coefficient of variation of the per-repeat p50s (sample std / mean)."""
    p50s = repeat_p50s(result)
    if p50s.size < 2 or float(np.mean(p50s)) <= 0:
        return None
    return float(np.std(p50s, ddof=1) / np.mean(p50s))


def process_stat(latencies: np.ndarray, metric: str) -> float:
    """A statistic of one process's latencies: "pNN" (percentile), "mean" or "throughput"
    (requests per summed latency: the throughput of results older than `samples_per_s`)."""
    if metric == "mean":
        return float(np.mean(latencies))
    if metric == "throughput":
        return float(latencies.size / np.sum(latencies))
    if metric.startswith("p") and metric[1:].replace(".", "", 1).isdigit():
        return float(np.percentile(latencies, float(metric[1:])))
    raise ValueError(f"unknown metric {metric!r}")


def repeat_stat(rep: Repeat, metric: str) -> float:
    """One process's statistic. Throughput is samples per second: the repeat's own
    `samples_per_s` (completed requests x batch / wall time of the timed loop: right with
    batches and with several requests in flight, where summed latencies overlap); a repeat
    written before the harness recorded it has one sample per request and one in flight,
    so iterations / summed latencies (`process_stat`)."""
    if metric == "throughput":
        samples = rep.get("samples_per_s")
        if (isinstance(samples, (int, float)) and not isinstance(samples, bool)
                and math.isfinite(samples) and samples > 0):
            return float(samples)
    return process_stat(np.asarray(rep["latencies_s"], dtype=float), metric)


def _by_round(result: ResultLike) -> bool:
    """Do the repeats carry their rounds, from at least two rounds?"""
    rounds = [r.get("round") for r in timed_repeats(result)]
    return bool(rounds) and None not in rounds and len(set(rounds)) > 1


def _grouped(result: ResultLike, metric: str, by_round: bool) -> dict[int, float]:
    groups: dict[int, list[float]] = {}
    for i, rep in enumerate(timed_repeats(result)):
        key = int(rep["round"]) if by_round else i
        value = repeat_stat(rep, metric)
        groups.setdefault(key, []).append(value)
    return {k: float(np.median(v)) for k, v in sorted(groups.items())}


def unit_values(result: ResultLike, metric: str = "p50") -> dict[int, float]:
    """Per unit, the median over its processes of their `metric`: {unit: value}.

    The units are the interleaved rounds when every repeat has its `round` and there are at
    least two; else (the harness alone, `rounds: 1`) each process is its own unit, numbered
    in order. Repeats that timed nothing are skipped.
    """
    return _grouped(result, metric, _by_round(result))


def round_p50s(result: ResultLike) -> dict[int, float] | None:
    """Per round: the median of its repeats' p50s; None unless every repeat has its `round`."""
    reps = repeats_of(result)
    if not reps or any(r.get("round") is None for r in reps):
        return None
    return _grouped(result, "p50", True)


def _window(result: ResultLike) -> tuple[str, str, str | None]:
    host = host_of(result)
    return str(host.get("started_at") or ""), str(host.get("finished_at") or ""), host.get("run_id")


def interleaved(base_res: ResultLike, cand_res: ResultLike) -> bool:
    """Were the two cells measured in the same rounds: one run, overlapping in time?

    A resumed run re-measures some cells later, interleaved only among themselves: their
    round k did not happen next to a kept cell's round k, so those pairs carry no shared drift.
    """
    b_start, b_end, b_run = _window(base_res)
    c_start, c_end, c_run = _window(cand_res)
    if not (b_start and b_end and c_start and c_end) or b_run != c_run:
        return False
    return b_start <= c_end and c_start <= b_end


def point_value(result: ResultLike, metric: str) -> float | None:
    """A cell's number for `metric` as the table shows it: the median over its units (rounds,
    else processes) of the unit's median per-process statistic (`unit_values`).

    The same number the verdict's ratio is made of, so a table's two columns divide to the
    change shown next to them. None when nothing was timed.
    """
    values = unit_values(result, metric)
    return float(np.median(list(values.values()))) if values else None


# ---------------------------------------------------------------- validity


def _provider_problems(result: ResultLike) -> list[str]:
    prov = provider_of(result)
    requested = prov.get("requested")
    active = prov.get("active") or []
    if prov.get("fallback") or (requested and active and requested not in active):
        # The runtime's own words (e.g. "[OpenVINO] Device GPU is not available") say why.
        why = f"; the runtime said: {prov['reason']}" if prov.get("reason") else ""
        return [f"requested provider {requested} is not active, it fell back to "
                f"{', '.join(active) or 'nothing'}{why}"]
    return []


def _budget_problems(result: ResultLike) -> list[str]:
    """Each repeat must reach the iterations and time asked for, and all repeats must exist."""
    settings = settings_of(result)
    reps = repeats_of(result)
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


def check_validity(result: ResultLike, rules: VerdictRules | None = None) -> Validity:
    """MLPerf-style VALID/INVALID for one cell, with the reasons and noise warnings."""
    rules = rules or VerdictRules()
    status = result.get("status")
    if status != "ok":
        reason = result.get("reason") or "no reason recorded"
        return Validity(False, (f"status {status}: {reason}",))
    if not repeat_latencies(result):
        return Validity(False, ("no latencies recorded",))
    reasons = _provider_problems(result) + _budget_problems(result)
    requested = host_of(result).get("requested_packages") or {}
    installed = fingerprint_of(result).get("packages") or {}
    reasons += version_mismatches(requested, installed)
    warnings: list[str] = []
    cv = repeat_cv(result)
    if cv is not None and cv > rules.cv_warn:
        warnings.append(
            f"{NOISY_PREFIX} the repeats' p50s vary by {cv:.1%} (CV), above {rules.cv_warn:.0%}"
        )
    placement = placement_warning(result, rules.min_node_share)
    if placement:
        warnings.append(placement)
    return Validity(not reasons, tuple(reasons), tuple(warnings))


def _placement(provider: Provider) -> tuple[int, int] | None:
    """(compute nodes on the requested provider, all compute nodes) when they were profiled."""
    nodes = provider.get("nodes") or {}
    total = sum(nodes.values())
    if provider.get("node_placement") != "profiled" or not total:
        return None
    requested = provider.get("requested")
    return (nodes.get(requested, 0) if requested else 0), total


def node_share(result: ResultLike) -> float | None:
    """The share of the profiled compute nodes that ran on the requested provider, or None."""
    counts = _placement(provider_of(result))
    return None if counts is None else float(counts[0]) / counts[1]


def placement_warning(result: ResultLike, min_share: float = 1.0,
                      names_shown: int = 10) -> str | None:
    """A warning when the requested provider ran less than `min_share` of the compute nodes.

    Reads the harness's profiled node placement (`provider.node_placement == "profiled"`,
    `provider.nodes`, `provider.fallback_nodes`; docs/result-schema.md) and names the nodes
    that ran elsewhere; None when the share is reached or nothing was profiled (torch cells,
    older results, a trace that could not be had).
    """
    provider = provider_of(result)
    counts = _placement(provider)
    if counts is None:
        return None
    requested = provider.get("requested")
    took, total = counts
    share = took / total
    if share >= min_share - 1e-9:
        return None
    listed = provider.get("fallback_nodes") or []
    count = provider.get("fallback_node_count") or len(listed)
    shown = ", ".join(f"{node.get('name') or '(unnamed)'} ({node.get('op_type')} on "
                      f"{node.get('provider')})" for node in listed[:names_shown])
    more = count - min(len(listed), names_shown)
    if more > 0:
        shown += f" and {more} more"
    return (f"{requested} ran {took} of {total} compute nodes ({share:.0%}, below "
            f"{min_share:.0%}); {count} ran elsewhere: {shown}")


# ---------------------------------------------------------------- the procedure


def min_rounds_for(alpha: float) -> int:
    """Fewest shared rounds from which a paired bootstrap interval may decide, at `alpha`.

    A percentile bootstrap has no floor of its own: when all n per-round ratios lie on one
    side of 1, every resample does too and the interval excludes 1, with 2 rounds as with
    20. Under no change that happens with probability 2 / 2**n (50% with 2 rounds, 6% with
    5), and the nearly unanimous patterns add about as much again twice over: simulated
    (docs/report.md), the false-positive rate is 25% at 3 rounds, 6-7% at 5-7, at or below
    alpha from 8. So: the smallest n with 2 / 2**n <= alpha / 4 (8 at alpha 0.05).
    """
    n = 1
    while 2.0 / 2**n > alpha / 4.0:
        n += 1
    return n


def min_repeats_for(alpha: float) -> int:
    """Fewest units a side from which an unpaired bootstrap interval may decide, at `alpha`.

    The unpaired counterpart of `min_rounds_for`: when the n candidate units all lie below
    (or above) the n baseline units, probability 2 / C(2n, n) under no change, every resample
    of the two medians is ordered the same way. Simulated, the false-positive rate is 10% at
    3 a side, 7% at 4, 4% at 5. So: the smallest n with 2 / C(2n, n) <= alpha / 4 (5 at 0.05).
    """
    n = 1
    while 2.0 / math.comb(2 * n, n) > alpha / 4.0:
        n += 1
    return n


def too_few_note(method: str, n_base: int, n_cand: int,
                 rules: VerdictRules | None = None) -> str | None:
    """Why a comparison with these unit counts has no interval or verdict; None when it has."""
    rules = rules or VerdictRules()
    alpha = rules.level_alpha
    if method == PAIRED:
        need = min_rounds_for(alpha)
        if min(n_base, n_cand) < need:
            return (f"too few rounds for its test: {min(n_base, n_cand)} shared rounds, a "
                    f"paired interval at {rules.confidence:.0%} needs {need}")
        return None
    need = min_repeats_for(alpha)
    if min(n_base, n_cand) < need:
        return (f"too few rounds for its test: {n_base} vs {n_cand} rounds (or processes), an "
                f"unpaired interval at {rules.confidence:.0%} needs at least {need} per side")
    return None


def decide_interval(estimate: float, low: float, high: float, min_effect: float,
                    higher_is_better: bool = False) -> str:
    """The verdict word, a pure function of the estimate and its interval.

    Slower: the whole interval above 1 and the estimate above 1 + min_effect. Faster: the
    whole interval below 1 and the estimate below 1 / (1 + min_effect), the same factor the
    other way, so that swapping baseline and candidate swaps the two words. Else (NaN
    included) no significant change. For a metric where more is better (throughput) the two
    words trade places.
    """
    up, down = (FASTER, SLOWER) if higher_is_better else (SLOWER, FASTER)
    if low > 1.0 and estimate > 1.0 + min_effect:
        return up
    if high < 1.0 and estimate < 1.0 / (1.0 + min_effect):
        return down
    return UNCHANGED


def comparison_rng(rules: VerdictRules, base_id: str, cand_id: str) -> np.random.Generator:
    """A generator that depends only on the rules' seed and the pair of cells compared."""
    first, second = sorted((base_id, cand_id))
    digest = hashlib.sha256(f"{rules.seed}\0{first}\0{second}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_units(rules: VerdictRules, base_id: str, cand_id: str, n_base: int, n_cand: int,
               paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap resamples of unit indices, (n_boot, n) for each side.

    Paired: the same round indices for both. Unpaired: independent, drawn in the order of the
    sorted cell ids, so that swapping baseline and candidate gives each cell the same draws.
    """
    rng = comparison_rng(rules, base_id, cand_id)
    if paired:
        picks = rng.integers(0, n_base, size=(rules.n_boot, n_base))
        return picks, picks
    if cand_id < base_id:
        cand_picks = rng.integers(0, n_cand, size=(rules.n_boot, n_cand))
        return rng.integers(0, n_base, size=(rules.n_boot, n_base)), cand_picks
    base_picks = rng.integers(0, n_base, size=(rules.n_boot, n_base))
    return base_picks, rng.integers(0, n_cand, size=(rules.n_boot, n_cand))


def ratio_ci(metric: str, base_units: np.ndarray, cand_units: np.ndarray,
             picks: tuple[np.ndarray, np.ndarray] | None, method: str,
             rules: VerdictRules) -> RatioCI:
    """The point of each side, their ratio, its percentile bootstrap interval and the verdict.

    base_units and cand_units are the units' values (paired: in the same round order); picks
    come from `draw_units`, None when there are too few units (`too_few_note`): then the
    interval is NaN and the verdict "no significant change".
    """
    base_pt, cand_pt = float(np.median(base_units)), float(np.median(cand_units))
    ok = base_pt > 0 and cand_pt > 0 and math.isfinite(base_pt) and math.isfinite(cand_pt)
    ratio = cand_pt / base_pt if ok else float("nan")
    paired = method == PAIRED and ok and base_units.size == cand_units.size
    if paired:
        # The median of the per-round log ratios: the machine's drift from round to round
        # hits both cells of a round alike and cancels in each ratio, which a ratio of the
        # two medians does not (benchmarks/sensitivity.py: at 20 rounds with the runtime's
        # default threads, 71% against 34% of 5% slowdowns found). The candidate's point is
        # then the baseline's times that ratio: its p50 corrected for the baseline's drift,
        # so the two points still divide exactly to the change.
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratios = np.log(cand_units) - np.log(base_units)
        ratio = float(np.exp(np.median(log_ratios)))
        cand_pt = base_pt * ratio
    low = high = float("nan")
    p_value = None
    if picks is not None and ok:
        with np.errstate(divide="ignore", invalid="ignore"):
            if paired:
                boot = np.median(log_ratios[picks[0]], axis=1)
            else:
                boot = (np.log(np.median(cand_units[picks[1]], axis=1))
                        - np.log(np.median(base_units[picks[0]], axis=1)))
        boot = np.sort(boot)
        n = boot.size
        # k resamples excluded in each tail; the interval excludes 1 exactly when p < alpha.
        k = max(math.ceil(rules.level_alpha * n / 2.0 - 1e-9) - 1, 0)
        low, high = float(np.exp(boot[k])), float(np.exp(boot[n - 1 - k]))
        below, above = int(np.sum(boot <= 0.0)), int(np.sum(boot >= 0.0))
        p_value = min(1.0, 2.0 * min(below, above) / n)
    word = decide_interval(ratio, low, high, rules.min_effect, metric in HIGHER_IS_BETTER)
    return RatioCI(metric, ratio, low, high, base=base_pt, cand=cand_pt, verdict=word,
                   method=method, n_base=int(base_units.size), n_cand=int(cand_units.size),
                   p_value=p_value)


def compare_units(base_id: str, base_units: Mapping[int, float], cand_id: str,
                  cand_units: Mapping[int, float], paired: bool, rules: VerdictRules,
                  metric: str = "p50") -> RatioCI:
    """One metric of two cells from their unit values ({round: value}, `unit_values`).

    Paired uses the rounds both have; the caller decides whether pairing is legitimate
    (`pairing`). benchmarks/sensitivity.py calls this on recorded rounds.
    """
    if paired:
        shared = sorted(set(base_units) & set(cand_units))
        base = np.array([base_units[r] for r in shared], dtype=float)
        cand = np.array([cand_units[r] for r in shared], dtype=float)
    else:
        base = np.array(list(base_units.values()), dtype=float)
        cand = np.array(list(cand_units.values()), dtype=float)
    method = PAIRED if paired else UNPAIRED
    few = too_few_note(method, base.size, cand.size, rules) if base.size and cand.size else "-"
    picks = None if few else draw_units(rules, base_id, cand_id, base.size, cand.size, paired)
    return ratio_ci(metric, base, cand, picks, method, rules)


def pairing(base_res: ResultLike, cand_res: ResultLike,
            rules: VerdictRules) -> tuple[bool, int, str | None]:
    """(pair?, shared rounds, note): pair when measured in the same interleaved rounds, both
    cells hold the same rounds, and there are at least `min_rounds_for` of them."""
    base, cand = round_p50s(base_res), round_p50s(cand_res)
    if base is None or cand is None or not interleaved(base_res, cand_res):
        return False, 0, None
    if set(base) != set(cand):
        return False, len(set(base) & set(cand)), (
            "the two cells hold different rounds: compared unpaired")
    need = min_rounds_for(rules.level_alpha)
    if len(base) < need:
        note = (f"only {len(base)} shared rounds (pairing needs {need}): compared unpaired"
                if len(base) > 1 else None)  # rounds: 1 chose no interleaving
        return False, len(base), note
    return True, len(base), None


# ---------------------------------------------------------------- one comparison


def _verdict(cand_cell: Cell, **kw: Any) -> Verdict:
    return Verdict(candidate=cand_cell.id, environment=cand_cell.environment.id,
                   workload=cand_cell.workload.name, provider=cand_cell.provider, **kw)


def _missing(cell_id: str) -> Result:
    return {"status": "no_result", "reason": f"no result file for {cell_id}"}




def compare_cells(
    base_cell: Cell | None,
    cand_cell: Cell,
    results: Mapping[str, ResultLike],
    rules: VerdictRules,
    notes: Sequence[str] = (),
) -> Verdict:
    """The verdict of one candidate cell against one baseline cell.

    The notes say how the comparison was made; a cell's own noise warnings are not repeated
    here (the report shows them once per cell, `Validity.warnings`).
    """
    cid = cand_cell.id
    cand_res = results.get(cid) or _missing(cid)
    cand_valid = check_validity(cand_res, rules)
    reasons = list(cand_valid.reasons)
    notes = list(notes)
    if base_cell is None:
        reasons.append(f"the baseline has no {cand_cell.workload.name} cell to compare with")
        return _verdict(cand_cell, baseline=None, verdict=INVALID, reasons=tuple(reasons),
                        notes=tuple(notes))
    base_id = base_cell.id
    base_res = results.get(base_id) or _missing(base_id)
    base_valid = check_validity(base_res, rules)
    reasons += [f"baseline {base_id}: {r}" for r in base_valid.reasons]
    if reasons:
        return _verdict(cand_cell, baseline=base_id, verdict=INVALID, reasons=tuple(reasons),
                        notes=tuple(notes))
    decide = "p50" if load_of(base_cell) == load_of(cand_cell) else "throughput"
    return _verdict(cand_cell, baseline=base_id, **measured_comparison(
        base_id, base_res, cid, cand_res, rules, notes, decide=decide))


def load_of(cell: Cell) -> int:
    """Requests the cell keeps in flight: 1 is single-stream, more the offline scenario."""
    return cell.knobs.concurrency or 1


def measured_comparison(
    base_id: str,
    base_res: ResultLike,
    cand_id: str,
    cand_res: ResultLike,
    rules: VerdictRules,
    notes: Sequence[str] = (),
    metrics: Sequence[str] = METRICS,
    decide: str = "p50",
) -> dict[str, Any]:
    """Ratios with intervals, verdict words and method of two valid cells (Verdict fields).

    One procedure for every metric (module docstring): `verdict` is the `decide` metric's
    (p50's, or throughput's across loads), `tail_verdict` p99's (when computed, and only
    beside p50's), `p_value` the deciding metric's bootstrap p-value, supplementary.
    """
    paired, shared, note = pairing(base_res, cand_res, rules)
    notes = list(notes) + ([note] if note else [])
    ratios = {m: compare_units(base_id, unit_values(base_res, m), cand_id,
                               unit_values(cand_res, m), paired, rules, m) for m in metrics}
    main = ratios.get(decide) or next(iter(ratios.values()))
    few = too_few_note(main.method or UNPAIRED, main.n_base or 0, main.n_cand or 0, rules)
    if few:
        notes.append(few)
    tail = ratios.get("p99") if decide == "p50" else None
    return {"verdict": main.verdict, "ratios": ratios, "p_value": main.p_value,
            "notes": tuple(notes), "method": PAIRED if paired else UNPAIRED,
            "rounds": shared if paired else None,
            "tail_verdict": tail.verdict if tail else None, "decided_by": main.metric}


def method_phrase(method: str) -> str:
    """How a verdict was made, in words for reports."""
    if method == PAIRED:
        return ("the median over rounds of each cell, compared with a paired percentile "
                "bootstrap over rounds (cells measured in interleaved rounds)")
    return ("the median over rounds (or processes) of each cell, compared with an unpaired "
            "percentile bootstrap")


# ---------------------------------------------------------------- a whole run


def match_baseline(
    cells: Sequence[Cell], baseline_env: str, cand: Cell
) -> tuple[Cell | None, list[str]]:
    """The baseline cell for a candidate: same workload and provider (and the same knobs
    where the baseline has such a cell), else the cpu cell; on the candidate's own host when
    the baseline ran there (else across hosts). A baseline environment's other knob variants
    are candidates against its first one (`t2` against `t1`)."""
    same_wl = [c for c in cells if c.environment.id == baseline_env and c is not cand
               and c.workload.name == cand.workload.name]
    same_wl = [c for c in same_wl if c.host == cand.host] or same_wl
    same_provider = [c for c in same_wl if c.provider == cand.provider]
    for c in same_provider:
        if (c.knobs, c.provider_options) == (cand.knobs, cand.provider_options):
            return c, cross_host(c, cand)
    if same_provider:
        return same_provider[0], cross_host(same_provider[0], cand)
    for c in same_wl:
        if c.provider == "cpu":
            note = f"the baseline has no {cand.provider} cell: compared with its cpu cell"
            return c, [note, *cross_host(c, cand)]
    return None, []


CROSS_HOST_NOTE = "cross-host comparison: different machines"


def cross_host(base: Cell, cand: Cell) -> list[str]:
    """The note a verdict carries when its two cells ran on different hosts."""
    return [CROSS_HOST_NOTE] if base.host != cand.host else []


def is_baseline_cell(plan: Plan, cell: Cell) -> bool:
    """The first cell of the baseline environment for its workload, provider and host; the
    others (knob variants) get verdicts against it."""
    if cell.environment.id != plan.baseline:
        return False
    first = next(c for c in plan.cells if c.environment.id == plan.baseline
                 and c.workload.name == cell.workload.name and c.provider == cell.provider
                 and c.host == cell.host)
    return first is cell


def run_verdicts(
    plan: Plan,
    results: Mapping[str, ResultLike],
    rules: VerdictRules | None = None,
) -> list[Verdict]:
    """A verdict for every non-baseline cell of a plan, in plan order."""
    rules = rules or VerdictRules()
    verdicts = []
    for cell in plan.cells:
        if is_baseline_cell(plan, cell):
            continue
        base_cell, notes = match_baseline(plan.cells, plan.baseline, cell)
        verdicts.append(compare_cells(base_cell, cell, results, rules, notes))
    return verdicts
