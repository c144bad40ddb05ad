"""Verdicts: is a candidate environment faster, slower, equivalent, or is it not yet known?

Everything here works on result dicts (docs/result-schema.md) and is deterministic: nothing is
drawn at random, so the same run directory always gives the same verdicts.

One procedure per metric gives the table's number of each cell, the change, its interval and
the verdict (docs/report.md, "How a verdict is made"):
- a *unit* is a round of the interleaved measurement (envmatrix.running.runner); a result without
  rounds counts each process as its own round. A unit's value is the median over its
  processes of the per-process statistic (p50, p99, mean latency, throughput);
- paired (the two cells were measured in the same interleaved rounds): the *change* is the
  median over rounds of the per-round ratio candidate/baseline, so the machine's drift from
  round to round cancels; its *interval* the sign test's order-statistic interval of those
  ratios, read at the plan's looks at levels that hold alpha over all looks together
  (envmatrix.analysis.sequential); the first look whose verdict is settled decides. The
  baseline's *point* is the median of its units at that look and the candidate's is the
  baseline's times the change, so the table's two columns divide to the change exactly;
- unpaired (other runs, a resumed cell): the Hodges-Lehmann ratio of the two cells' units and
  its exact Mann-Whitney interval, one look;
- the *verdict* is a pure function of (estimate, interval, min_effect, equivalence)
  (`decide_interval`): faster, slower, equivalent or inconclusive; on p50, or on samples/s
  when the two cells keep different numbers of requests in flight (`decided_by`): a request's
  latency under load is not comparable to one alone, and what more requests in flight are for
  is throughput. With too few units the interval is infinite and the verdict inconclusive
  (`too_few_note` says why). With the per-run error rate, Holm's levels (`run_verdicts`).
A cell is *valid* only when it measured what was asked (provider, package versions,
iteration count and time); an invalid cell gets the verdict "invalid" with its reasons.

Why it is long (over 600 lines): this is the one verdict procedure, and validity, the units,
the paired and unpaired estimates and the decision must read as one piece so that the number,
the interval and the verdict visibly come from the same estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from envmatrix.analysis import sequential
from envmatrix.grammar import version_mismatches
from envmatrix.rundir.plan import Cell, Measure, Plan, VerdictSettings
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
EQUIVALENT = "equivalent"  # the interval lies inside +-equivalence
INCONCLUSIVE = "inconclusive"  # none of the above at the end of the budget
INVALID = "invalid"
SETTLED = (FASTER, SLOWER, EQUIVALENT)  # a comparison with one of these may stop measuring
# Per-comparison error rate (each interval holds alpha) or per-run (Holm across the run's
# verdicts against the baseline): VerdictSettings.error_rate.
PER_COMPARISON, PER_RUN = "comparison", "run"
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
    """The knobs of the verdict (VerdictSettings and the plan's Measure); defaults justified
    by benchmarks/sensitivity.py."""

    # The error rate of the intervals, all looks together (sequential.design).
    alpha: float = 0.05
    # Changes smaller than this are not called faster or slower even when the interval
    # excludes no change: two measurements of one unchanged image drift apart systematically
    # (other moments, other processes). Applied symmetrically on the log scale: slower above
    # 1 + min_effect, faster below 1 / (1 + min_effect).
    min_effect: float = 0.02
    # "equivalent" when the interval lies inside [1 / (1 + equivalence), 1 + equivalence].
    equivalence: float = 0.05
    cv_warn: float = 0.05  # noise warning when the repeats' p50s spread more than this
    # A warning when the requested execution provider ran less than this share of the
    # compute nodes (profiled placement; 1.0: every compute node on the requested provider).
    min_node_share: float = 1.0
    confidence: float = 0.95  # 1 - alpha: the level printed with the intervals
    # The planned looks: every `look_every` rounds up to `budget` (the plan's rounds); None:
    # one look at whatever rounds the comparison has (a fixed budget, or an unknown plan).
    budget: int | None = None
    look_every: int | None = None
    error_rate: str = PER_COMPARISON

    @property
    def level_alpha(self) -> float:
        """Two-sided error rate of the interval that decides: 1 - confidence."""
        return 1.0 - self.confidence

    def at_level(self, alpha: float) -> VerdictRules:
        """The same rules at another error rate (Holm's per-comparison levels)."""
        return replace(self, alpha=alpha, confidence=1.0 - alpha)

    def design_for(self, n: int) -> tuple[sequential.Design, tuple[int, ...]]:
        """The design a paired comparison with n shared rounds is read with, and its looks
        up to n. The design is the plan's (its looks fixed before any data); a comparison
        that holds fewer rounds than the first look (or an unknown plan) gets one look at n."""
        if self.budget is not None and n <= self.budget:
            looks = sequential.looks_for(self.budget, self.look_every)
            upto = tuple(look for look in looks if look <= n)
            if upto:
                return sequential.design(looks, self.level_alpha), upto
        return sequential.design((max(n, 1),), self.level_alpha), (max(n, 1),)


def rules_for(settings: VerdictSettings, measure: Measure | None = None) -> VerdictRules:
    """The rules of a plan's `verdict:` settings and, for the looks, its `measure:`."""
    budget = measure.round_count if measure is not None else None
    every = measure.look_every if measure is not None and measure.adaptive else None
    return VerdictRules(alpha=settings.alpha, min_effect=settings.min_effect,
                        equivalence=settings.equivalence, confidence=1.0 - settings.alpha,
                        min_node_share=settings.min_node_share, budget=budget,
                        look_every=every, error_rate=settings.error_rate)


@dataclass(frozen=True)
class Validity:
    valid: bool
    reasons: tuple[str, ...] = ()  # why it is invalid
    warnings: tuple[str, ...] = ()  # shown, but the numbers still count


@dataclass(frozen=True)
class RatioCI:
    """candidate / baseline for one metric: the estimate, its interval and what they say.

    `base` and `cand` are the two cells' points: cand / base == ratio. low and high are
    infinite when there were too few units for an interval (the verdict is inconclusive), NaN
    when a side has no usable value.
    """

    metric: str
    ratio: float
    low: float
    high: float
    base: float | None = None
    cand: float | None = None
    verdict: str | None = None  # FASTER | SLOWER | EQUIVALENT | INCONCLUSIVE (decide_interval)
    method: str | None = None  # PAIRED | UNPAIRED
    n_base: int | None = None  # units used: rounds at the deciding look (paired) or all units
    n_cand: int | None = None
    look: int | None = None  # paired: the rounds at the look that decided
    planned: int | None = None  # paired: the most rounds the plan allowed (None: unknown)
    # Per-run error rate only: the smallest alpha at which this interval excludes 1 (Holm).
    p_value: float | None = None

    @property
    def settled(self) -> bool:
        return self.verdict in SETTLED

    @property
    def bounded(self) -> bool:
        """Has the interval two finite bounds (`finite_interval`)?"""
        return finite_interval(self.low, self.high)


def finite_interval(low: float, high: float) -> bool:
    """Two finite bounds? Too few rounds give none: on the ratio scale the interval then runs
    from 0 to infinity (NaN when a side has no value)."""
    return low > 0.0 and math.isfinite(low) and math.isfinite(high)


@dataclass(frozen=True)
class Verdict:
    candidate: str  # cell id
    baseline: str | None  # cell id of the baseline cell it was compared with
    environment: str
    workload: str
    provider: str
    verdict: str  # FASTER | SLOWER | EQUIVALENT | INCONCLUSIVE | INVALID (decided_by's)
    ratios: dict[str, RatioCI] = field(default_factory=dict)
    p_value: float | None = None  # per-run error rate only: the deciding metric's (Holm)
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
    """Fewest rounds from which one look's paired interval can be finite at `alpha`: the
    smallest n with 2 / 2**n <= alpha (6 at 0.05; sequential.fewest_units). Fewer rounds
    than that, or than the design's first finite look, end "inconclusive" (too few rounds)."""
    return sequential.fewest_units(alpha)


def min_repeats_for(alpha: float) -> int:
    """Fewest units a side from which the unpaired (Mann-Whitney) interval can be finite at
    `alpha`: the smallest n with 2 / C(2n, n) <= alpha (4 at 0.05)."""
    n = 1
    while 2.0 / math.comb(2 * n, n) > alpha:
        n += 1
    return n


def too_few_note(method: str, n_base: int, n_cand: int,
                 rules: VerdictRules | None = None) -> str | None:
    """Why a comparison with these unit counts has no finite interval; None when it has."""
    rules = rules or VerdictRules()
    if method == PAIRED:
        n = min(n_base, n_cand)
        look_design, looks = rules.design_for(n)
        if any(look_design.rank_at(look) for look in looks):
            return None
        return (f"too few rounds for its test: {n} shared rounds, a paired interval at "
                f"{rules.confidence:.0%} needs {min_rounds_for(rules.level_alpha)}")
    need = min_repeats_for(rules.level_alpha)
    if min(n_base, n_cand) < need:
        return (f"too few rounds for its test: {n_base} vs {n_cand} rounds (or processes), an "
                f"unpaired interval at {rules.confidence:.0%} needs at least {need} per side")
    return None


def decide_interval(estimate: float, low: float, high: float, min_effect: float,
                    higher_is_better: bool = False, margin: float | None = None) -> str:
    """The verdict word, a pure function of the estimate and its interval.

    Slower: the whole interval above 1 and the estimate above 1 + min_effect. Faster: the
    whole interval below 1 and the estimate below 1 / (1 + min_effect), the same factor the
    other way, so that swapping baseline and candidate swaps the two words. Equivalent: the
    whole interval inside [1 / (1 + margin), 1 + margin]. Else (NaN or an infinite interval
    included) inconclusive. For a metric where more is better (throughput) faster and slower
    trade places.
    """
    up, down = (FASTER, SLOWER) if higher_is_better else (SLOWER, FASTER)
    if low > 1.0 and estimate > 1.0 + min_effect:
        return up
    if high < 1.0 and estimate < 1.0 / (1.0 + min_effect):
        return down
    if margin is not None and low >= 1.0 / (1.0 + margin) and high <= 1.0 + margin:
        return EQUIVALENT
    return INCONCLUSIVE


def below_min_effect(ci: RatioCI, min_effect: float) -> bool:
    """Does the interval exclude no change while the estimate is within the minimum effect?
    ("+1.1%, below the 2% that counts")."""
    excludes = ci.low > 1.0 or ci.high < 1.0
    return excludes and 1.0 / (1.0 + min_effect) <= ci.ratio <= 1.0 + min_effect


def _looked(metric: str, logs: np.ndarray, rules: VerdictRules) -> tuple[float, float, float,
                                                                          str, int]:
    """The paired sequential procedure on per-round log ratios in round order: at each planned
    look (sequential.design), the median and the order-statistic interval of the rounds so far;
    the first look whose verdict is settled decides, else the last. (log estimate, log low,
    log high, word, rounds at that look)."""
    look_design, looks = rules.design_for(logs.size)
    better = metric in HIGHER_IS_BETTER
    for look in looks:
        part = logs[:look]
        est = float(np.median(part))
        low, high = sequential.sign_interval(part, look_design.rank_at(look))
        word = decide_interval(math.exp(est), math.exp(low), math.exp(high), rules.min_effect,
                               better, rules.equivalence)
        if word in SETTLED:
            break
    return est, low, high, word, look


def ratio_ci(metric: str, base_units: np.ndarray, cand_units: np.ndarray, method: str,
             rules: VerdictRules) -> RatioCI:
    """The point of each side, their ratio, its interval and the verdict (module docstring).

    Paired: base_units and cand_units in the same round order; the sequential looks decide
    (`_looked`) and the points are over the deciding look's rounds. Unpaired: the
    Hodges-Lehmann ratio and its Mann-Whitney interval over every unit. Either way the
    candidate's point is the baseline's times the ratio, so the two points divide to it.
    """
    base_units = np.asarray(base_units, dtype=float)
    cand_units = np.asarray(cand_units, dtype=float)
    ok = (base_units.size > 0 and cand_units.size > 0 and bool(np.all(base_units > 0))
          and bool(np.all(cand_units > 0)) and bool(np.all(np.isfinite(base_units)))
          and bool(np.all(np.isfinite(cand_units))))
    paired = method == PAIRED and base_units.size == cand_units.size
    if not ok:
        return RatioCI(metric, float("nan"), float("nan"), float("nan"), verdict=INCONCLUSIVE,
                       method=method, n_base=int(base_units.size), n_cand=int(cand_units.size))
    if paired:
        est, low, high, word, look = _looked(metric, np.log(cand_units) - np.log(base_units),
                                             rules)
        base_pt = float(np.median(base_units[:look]))
        n_base = n_cand = look
    else:
        est, low, high = sequential.shift_interval(np.log(base_units), np.log(cand_units),
                                                   rules.level_alpha)
        word = decide_interval(math.exp(est), math.exp(low), math.exp(high), rules.min_effect,
                               metric in HIGHER_IS_BETTER, rules.equivalence)
        base_pt = float(np.median(base_units))
        n_base, n_cand, look = int(base_units.size), int(cand_units.size), None
    ratio = math.exp(est)
    return RatioCI(metric, ratio, math.exp(low), math.exp(high), base=base_pt,
                   cand=base_pt * ratio, verdict=word, method=method, n_base=n_base,
                   n_cand=n_cand, look=look, planned=rules.budget)


def compare_units(base_id: str, base_units: Mapping[int, float], cand_id: str,
                  cand_units: Mapping[int, float], paired: bool, rules: VerdictRules,
                  metric: str = "p50") -> RatioCI:
    """One metric of two cells from their unit values ({round: value}, `unit_values`).

    Paired uses the rounds both have, in round order; the caller decides whether pairing is
    legitimate (`pairing`). benchmarks/sensitivity.py calls this on recorded rounds. The two
    ids are kept for callers that name the comparison; the procedure draws nothing at random.
    """
    del base_id, cand_id  # deterministic procedure: no per-pair random stream any more
    if paired:
        shared = sorted(set(base_units) & set(cand_units))
        base = np.array([base_units[r] for r in shared], dtype=float)
        cand = np.array([cand_units[r] for r in shared], dtype=float)
    else:
        base = np.array(list(base_units.values()), dtype=float)
        cand = np.array(list(cand_units.values()), dtype=float)
    return ratio_ci(metric, base, cand, PAIRED if paired else UNPAIRED, rules)


def _shared_prefix(base: Mapping[int, float], cand: Mapping[int, float]) -> int:
    """How many rounds 0, 1, 2... both cells hold: a cell that left the rounds when its
    comparisons settled holds a prefix of the rounds the baseline holds."""
    n = 0
    while n in base and n in cand:
        n += 1
    return n


def pairing(base_res: ResultLike, cand_res: ResultLike,
            rules: VerdictRules) -> tuple[bool, int, str | None]:
    """(pair?, shared rounds, note): pair when measured in the same interleaved rounds and
    one cell's rounds are the first rounds of the other's (adaptive runs stop cells early)."""
    del rules  # any number of shared rounds pairs; too few of them end inconclusive
    base, cand = round_p50s(base_res), round_p50s(cand_res)
    if base is None or cand is None or not interleaved(base_res, cand_res):
        return False, 0, None
    shared = _shared_prefix(base, cand)
    if shared < min(len(base), len(cand)):
        return False, len(set(base) & set(cand)), (
            "the two cells hold different rounds: compared unpaired")
    if shared < 2:
        return False, shared, None  # rounds: 1 chose no interleaving
    return True, shared, None


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
    beside p50's), `p_value` the deciding metric's (per-run error rate only, `holm`).
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
        return ("the median of the per-round ratios (cells measured in interleaved rounds), "
                "with the sign test's order-statistic interval, looked at every few rounds at "
                "levels that hold the error rate over all looks together")
    return ("the Hodges-Lehmann ratio of the two cells' rounds (or processes) with the "
            "Mann-Whitney interval (unpaired)")


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
    """A verdict for every non-baseline cell of a plan, in plan order; with the per-run
    error rate, each at its Holm level (`holm`)."""
    rules = rules or VerdictRules()
    pairs = []
    for cell in plan.cells:
        if not is_baseline_cell(plan, cell):
            pairs.append((cell, *match_baseline(plan.cells, plan.baseline, cell)))
    verdicts = [compare_cells(base, cell, results, rules, notes) for cell, base, notes in pairs]
    if rules.error_rate != PER_RUN:
        return verdicts
    valid = [i for i, v in enumerate(verdicts) if v.verdict != INVALID]
    p_values = [p_value_of(verdicts[i], results, rules) for i in valid]
    for i, level, p in zip(valid, holm(p_values, rules.level_alpha), p_values):
        cell, base, notes = pairs[i]
        note = (f"per-run error rate: Holm's level {level:.2%} for this comparison "
                f"({rules.level_alpha:.0%} over {len(valid)} comparisons)")
        redone = compare_cells(base, cell, results, rules.at_level(level), [*notes, note])
        verdicts[i] = replace(redone, p_value=p)
    return verdicts


def holm(p_values: Sequence[float], alpha: float) -> list[float]:
    """Each comparison's level under Holm's step-down at family rate alpha.

    In order of p: the k-th smallest (0-based) gets alpha / (m - k) while every smaller one
    was below its level; from the first that is not, all the rest get that first failing
    level, so each interval read at its level agrees with Holm's decision.
    """
    m = len(p_values)
    levels = [0.0] * m
    stuck: float | None = None
    for k, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        level = alpha / (m - k)
        if stuck is None and p_values[i] > level:
            stuck = level
        levels[i] = stuck if stuck is not None else level
    return levels


def p_value_of(verdict: Verdict, results: Mapping[str, ResultLike],
               rules: VerdictRules, floor: float = 1e-6) -> float:
    """The smallest alpha at which the verdict's own procedure ends with an interval that
    excludes no change (bisection on the log scale): the p-value Holm orders by."""
    base_res, cand_res = results[verdict.baseline or ""], results[verdict.candidate]
    paired = pairing(base_res, cand_res, rules)[0]
    metric = verdict.decided_by
    base, cand = unit_values(base_res, metric), unit_values(cand_res, metric)

    def excludes(alpha: float) -> bool:
        ci = compare_units("", base, "", cand, paired, rules.at_level(alpha), metric)
        return ci.low > 1.0 or ci.high < 1.0

    if excludes(floor):
        return floor
    low, high = math.log(floor), 0.0
    if not excludes(0.999):
        return 1.0
    for _ in range(30):
        mid = (low + high) / 2.0
        low, high = (low, mid) if excludes(math.exp(mid)) else (mid, high)
    return math.exp(high)
