"""The sequential procedure: its error rate enumerated and simulated, its looks and outcomes."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from fakeruns import BASELINE, CANDIDATE, fake_result, typed_plan

from envmatrix.analysis import sequential, stats
from envmatrix.analysis.stats import VerdictRules

ADAPTIVE = VerdictRules(budget=40, look_every=8)
FIXED = VerdictRules(budget=40)  # one look, at 40 rounds
DECISIVE = (stats.FASTER, stats.SLOWER)


def _brute_force(looks: tuple[int, ...], ranks: tuple[int, ...]) -> float:
    """P(some look misses) by walking every one of the 2**n sign sequences."""
    n, missed = looks[-1], 0
    for signs in itertools.product((0, 1), repeat=n):
        for look, rank in zip(looks, ranks):
            above = sum(signs[:look])
            if rank and (above <= rank - 1 or above >= look - rank + 1):
                missed += 1
                break
    return missed / 2**n


@pytest.mark.parametrize(("looks", "ranks"), [((4, 8, 12), (1, 1, 2)), ((6, 12), (1, 2)),
                                              ((3, 7, 10, 14), (0, 1, 1, 3))])
def test_the_enumerated_miss_probability_is_the_brute_force_one(
        looks: tuple[int, ...], ranks: tuple[int, ...]) -> None:
    assert sequential.miss_probability(looks, ranks) == pytest.approx(
        _brute_force(looks, ranks), abs=1e-12)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
@pytest.mark.parametrize(("budget", "every"), [(40, 8), (40, None), (20, 8), (100, 8),
                                               (24, 4), (7, 8)])
def test_every_design_holds_alpha_over_all_looks_together(
        alpha: float, budget: int, every: int | None) -> None:
    looks = sequential.looks_for(budget, every)
    d = sequential.design(looks, alpha)
    assert d.looks == looks and looks[-1] == budget
    assert d.error <= alpha and d.error == sequential.miss_probability(looks, d.ranks)
    # The last look keeps what one look alone would have (or gives up at most two ranks so
    # that the first look can stop): looking along the way costs little or no power.
    alone = sequential.design((budget,), alpha).ranks[0]
    assert alone - 2 <= d.ranks[-1] <= alone


def test_the_default_design_keeps_the_fixed_budgets_interval_at_the_end() -> None:
    d = sequential.design(sequential.looks_for(40, 8), 0.05)
    assert d.looks == (8, 16, 24, 32, 40) and d.ranks == (1, 3, 6, 9, 14)
    # A single look at 40 takes the 14th value from each end too: the interim looks share
    # what the discreteness leaves (3.85% alone, 4.87% with the four interim looks).
    assert sequential.design((40,), 0.05).ranks == (14,)
    assert round(d.error, 4) == 0.0487
    # Where the first look could not stop, the last gives up a rank: 80 rounds in looks of 8.
    assert sequential.design(sequential.looks_for(80, 8), 0.05).ranks[::9] == (1, 30)


def test_the_mann_whitney_counts_are_exact() -> None:
    for m, n in [(1, 1), (2, 3), (4, 4), (5, 7)]:
        counts = sequential._u_counts(m, n)
        assert sum(counts) == math.comb(m + n, m) and len(counts) == m * n + 1
        # Brute force: every choice of which positions the first sample takes.
        brute = [0] * (m * n + 1)
        for picks in itertools.combinations(range(m + n), m):
            brute[sum(sum(1 for q in range(m + n) if q not in picks and q < p)
                      for p in picks)] += 1
        assert list(counts) == brute
    assert sequential._u_critical(10, 10, 0.05) == 24  # the textbook table: reject U <= 23


# ---------------------------------------------------------------- simulated, end to end


def _noise(kind: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-round values of two cells of one unchanged image: (base, cand)."""
    if kind == "heavy":  # Student t with 2 degrees of freedom: no variance at all
        per_round = 0.03 * rng.standard_t(2, size=(2, n))
        return 0.005 * np.exp(per_round[0]), 0.005 * np.exp(per_round[1])
    if kind == "spikes":  # one round in ten is 40% slower for one cell
        values = 0.005 * np.exp(rng.normal(0, 0.02, size=(2, n)))
        values *= 1 + 0.4 * (rng.random((2, n)) < 0.1)
        return values[0], values[1]
    # drift: the machine slows 30% over the run and wobbles, for both cells of a round alike
    speed = np.linspace(1.0, 1.3, n) * np.exp(rng.normal(0, 0.05, n))
    values = 0.005 * speed * np.exp(rng.normal(0, 0.02, size=(2, n)))
    return values[0], values[1]


def _units(values: np.ndarray) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(values)}


@pytest.mark.parametrize("kind", ["heavy", "spikes", "drift"])
def test_simulated_false_alarms_stay_at_or_below_alpha(kind: str) -> None:
    rng = np.random.default_rng({"heavy": 1, "spikes": 2, "drift": 3}[kind])
    rules = VerdictRules(budget=40, look_every=8, min_effect=0.0)  # no floor: the raw rate
    trials, alarms = 3000, 0
    for _ in range(trials):
        base, cand = _noise(kind, rng, 40)
        ci = stats.compare_units("a", _units(base), "b", _units(cand), True, rules)
        alarms += ci.verdict in DECISIVE
    # The exact joint rate is 4.87%; 3000 trials put 3 standard errors at 1.2 points.
    assert alarms / trials <= 0.0487 + 0.012, (kind, alarms / trials)


def test_simulated_intervals_cover_the_true_change_at_their_stopping_look() -> None:
    rng = np.random.default_rng(11)
    trials, covered, rounds = 2000, 0, []
    for _ in range(trials):
        base, cand = _noise("heavy", rng, 40)
        ci = stats.compare_units("a", _units(base), "b", _units(cand * 1.05), True, ADAPTIVE)
        covered += ci.low <= 1.05 <= ci.high
        rounds.append(ci.look)
    assert covered / trials >= 0.95 - 0.012
    assert np.mean(rounds) < 40  # and it stopped early on average


def test_a_large_change_settles_at_the_first_look_and_a_tie_is_equivalent() -> None:
    rng = np.random.default_rng(5)
    base = 0.005 * np.exp(rng.normal(0, 0.02, 40))
    big = stats.compare_units("a", _units(base), "b", _units(base * 1.3 * np.exp(
        rng.normal(0, 0.02, 40))), True, ADAPTIVE)
    assert big.verdict == stats.SLOWER and big.look == 8 and big.n_base == 8
    tie = stats.compare_units("a", _units(base), "b", _units(base * np.exp(
        rng.normal(0, 0.005, 40))), True, ADAPTIVE)
    assert tie.verdict == stats.EQUIVALENT and tie.look is not None and tie.look < 40
    assert tie.low >= 1 / 1.05 and tie.high <= 1.05


def test_a_wide_interval_at_the_budget_is_inconclusive_not_no_change() -> None:
    rng = np.random.default_rng(9)
    base = 0.005 * np.exp(rng.normal(0, 0.3, 40))
    cand = 0.005 * np.exp(rng.normal(0, 0.3, 40))
    ci = stats.compare_units("a", _units(base), "b", _units(cand), True, ADAPTIVE)
    assert ci.verdict == stats.INCONCLUSIVE and ci.look == 40
    assert ci.low < 1 / 1.05 or ci.high > 1.05


def test_the_fixed_budget_reads_one_look_at_the_end() -> None:
    rng = np.random.default_rng(5)
    base = 0.005 * np.exp(rng.normal(0, 0.02, 40))
    ci = stats.compare_units("a", _units(base), "b", _units(base * 1.3), True, FIXED)
    assert ci.look == 40 and ci.verdict == stats.SLOWER


def test_the_unpaired_interval_covers_a_shift_at_its_level() -> None:
    rng = np.random.default_rng(3)
    trials, covered = 1500, 0
    for _ in range(trials):
        base = 0.005 * np.exp(rng.standard_t(3, 12) * 0.03)
        cand = 0.005 * 1.1 * np.exp(rng.standard_t(3, 9) * 0.03)
        ci = stats.compare_units("a", _units(base), "b", _units(cand), False, VerdictRules())
        covered += ci.low <= 1.1 <= ci.high
    assert covered / trials >= 0.95 - 0.017


def test_holm_levels_step_down_and_stop_at_the_first_failure() -> None:
    assert stats.holm([0.001, 0.02, 0.04, 0.5], 0.05) == pytest.approx(
        [0.0125, 0.05 / 3, 0.05 / 3, 0.05 / 3])
    assert stats.holm([0.001, 0.01, 0.03], 0.05) == pytest.approx([0.05 / 3, 0.025, 0.05])


# ---------------------------------------------------------------- the per-run error rate


def _in_rounds(cell: str, ratios: np.ndarray) -> dict:
    """An ok result of one process per round whose round r has p50 0.005 * ratios[r]."""
    res = fake_result(cell, repeats=ratios.size, seed=1)
    for r, (rep, ratio) in enumerate(zip(res["repeats"], ratios)):
        rep["latencies_s"] = [0.005 * float(ratio)] * 60
        rep["round"] = r
    res["summary"]["repeat_p50_s"] = [0.005 * float(x) for x in ratios]
    res["host"].update(started_at="2026-11-23T12:00:00Z", finished_at="2026-11-23T12:05:00Z")
    return res


def test_the_per_run_error_rate_reads_each_comparison_at_its_holm_level() -> None:
    envs = [BASELINE, CANDIDATE, "trixie-ort1.32.0", "bookworm-ortov1.24.1"]
    cells = [f"{env}--cnn--cpu" for env in envs]
    plan = typed_plan(cells)
    rng = np.random.default_rng(4)
    noise = np.exp(rng.normal(0, 0.03, size=(4, 40)))
    # round by round: a 30% slowdown, a 4% one and no change
    shifts = [1.0, 1.3, 1.04, 1.0]
    results = {c: _in_rounds(c, shift * noise[i]) for i, (c, shift) in
               enumerate(zip(cells, shifts))}
    each = stats.run_verdicts(plan, results, FIXED)
    run = stats.run_verdicts(plan, results, replace(FIXED, error_rate=stats.PER_RUN))
    assert [v.verdict for v in each] == [stats.SLOWER, stats.SLOWER, stats.EQUIVALENT]
    assert [v.p_value for v in each] == [None, None, None]
    assert [v.verdict for v in run] == [stats.SLOWER, stats.SLOWER, stats.EQUIVALENT]
    for v in run:
        assert v.p_value is not None and any("Holm's level" in n for n in v.notes)
        ci = v.p50
        assert ci is not None
        # the word still agrees with the interval read at the comparison's own level
        assert (v.verdict in DECISIVE) == (ci.low > 1.0 or ci.high < 1.0) or \
            stats.below_min_effect(ci, FIXED.min_effect)
    strongest = min(run, key=lambda v: v.p_value or 1.0)
    assert strongest.candidate == cells[1] and strongest.verdict == stats.SLOWER
    # Holm's intervals are wider than the per-comparison ones: never narrower.
    for a, b in zip(each, run):
        assert a.p50 is not None and b.p50 is not None
        assert b.p50.low <= a.p50.low and b.p50.high >= a.p50.high
