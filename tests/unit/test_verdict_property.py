"""Property: a verdict never contradicts its own interval, whatever the rounds or processes.

For random sets of 2-40 paired round ratios and random per-process p50s (unpaired), on every
path the report prints (paired read at planned looks, paired read once, unpaired; latency and
samples/s, where more is better): the verdict is the rule applied to the printed estimate and
interval, one of the four outcomes (an interval without finite bounds is inconclusive, and is
printed as none), the two cells' points divide to the estimate, the words the report prints
say the same outcome, and swapping baseline and candidate swaps faster and slower and keeps
equivalent and inconclusive. Paired, the estimate is the median of the per-round ratios,
whatever the rounds' spread (a drift common to a round cancels).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from envmatrix.analysis import stats
from envmatrix.analysis.stats import EQUIVALENT, FASTER, INCONCLUSIVE, SLOWER, VerdictRules
from envmatrix.report.markdown import outcome_phrase

FIXED = VerdictRules()  # one look at whatever rounds there are
LOOKS = VerdictRules(budget=40, look_every=8)  # the default plan: looks at 8, 16, ..., 40
SWAP = {FASTER: SLOWER, SLOWER: FASTER, EQUIVALENT: EQUIVALENT, INCONCLUSIVE: INCONCLUSIVE}
log_ratio = st.floats(min_value=-0.3, max_value=0.3, allow_nan=False, allow_infinity=False)
p50 = st.floats(min_value=1e-4, max_value=1.0, allow_nan=False, allow_infinity=False)
metric = st.sampled_from(["p50", "throughput"])


def _near(x: float, edge: float) -> bool:
    return math.isfinite(x) and abs(x - edge) <= 1e-9 * edge


def _check_words(ci: stats.RatioCI, rules: VerdictRules) -> None:
    """The sentence the report prints says the verdict and never an interval it lacks."""
    phrase = outcome_phrase(ci, rules)
    assert phrase.startswith(str(ci.verdict)), phrase
    if not ci.bounded:
        assert ci.verdict == INCONCLUSIVE and "too few" in phrase, phrase
        assert "inf" not in phrase and "between" not in phrase, phrase


def _check(ci: stats.RatioCI, swapped: stats.RatioCI, rules: VerdictRules) -> None:
    m, e = rules.min_effect, rules.equivalence
    better = ci.metric in stats.HIGHER_IS_BETTER
    up, down = (FASTER, SLOWER) if better else (SLOWER, FASTER)
    assert ci.base is not None and ci.cand is not None
    # The table's two columns divide to the change (to the last bit of a float).
    assert math.isclose(ci.cand / ci.base, ci.ratio, rel_tol=1e-12)
    # The verdict is the rule on the printed numbers: never against its own interval.
    assert ci.verdict == stats.decide_interval(ci.ratio, ci.low, ci.high, m, better, e)
    assert ci.verdict in (FASTER, SLOWER, EQUIVALENT, INCONCLUSIVE)
    if ci.verdict == up:
        assert ci.low > 1.0 and ci.ratio > 1.0 + m
    if ci.verdict == down:
        assert ci.high < 1.0 and ci.ratio < 1.0 / (1.0 + m)
    if ci.verdict == EQUIVALENT:
        assert 1.0 / (1.0 + e) <= ci.low <= ci.high <= 1.0 + e
    if not ci.bounded:  # too few rounds: the whole line, so nothing is settled
        assert ci.low == 0.0 and math.isinf(ci.high) and ci.verdict == INCONCLUSIVE
    assert ci.low <= ci.ratio <= ci.high
    _check_words(ci, rules)
    # Symmetry, except exactly on an edge (within rounding of a threshold or of 1).
    edges = [(ci.ratio, 1.0 + m), (ci.ratio, 1.0 / (1.0 + m)), (ci.low, 1.0), (ci.high, 1.0),
             (ci.low, 1.0 / (1.0 + e)), (ci.high, 1.0 + e)]
    assume(not any(_near(x, edge) for x, edge in edges))
    assert swapped.verdict == SWAP[ci.verdict]
    assert swapped.look == ci.look  # the same look settles both ways round
    if ci.bounded:
        assert math.isclose(swapped.low, 1.0 / ci.high, rel_tol=1e-12)
        assert math.isclose(swapped.high, 1.0 / ci.low, rel_tol=1e-12)
    else:
        assert not swapped.bounded


def _paired(rounds: list[tuple[float, float]], shift: float, rules: VerdictRules,
            name: str) -> None:
    base = {r: b for r, (b, _) in enumerate(rounds)}
    cand = {r: b * math.exp(x + shift) for r, (b, x) in enumerate(rounds)}
    ci = stats.compare_units("base", base, "cand", cand, True, rules, name)
    swapped = stats.compare_units("cand", cand, "base", base, True, rules, name)
    assert ci.method == stats.PAIRED and ci.n_base == ci.look
    _, looks = rules.design_for(len(rounds))
    assert ci.look in looks and (ci.look == looks[-1] or ci.settled)  # first settled look
    _check(ci, swapped, rules)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(p50, log_ratio), min_size=2, max_size=40),
       st.floats(min_value=-0.1, max_value=0.1), metric)
def test_paired_rounds_read_at_the_planned_looks(rounds: list[tuple[float, float]],
                                                 shift: float, name: str) -> None:
    _paired(rounds, shift, LOOKS, name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(p50, log_ratio), min_size=2, max_size=30),
       st.floats(min_value=-0.1, max_value=0.1), metric)
def test_paired_rounds_read_once(rounds: list[tuple[float, float]], shift: float,
                                 name: str) -> None:
    _paired(rounds, shift, FIXED, name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(p50, min_size=2, max_size=30), st.lists(p50, min_size=2, max_size=30),
       st.floats(min_value=0.5, max_value=2.0), metric)
def test_unpaired_processes(base_p50s: list[float], cand_p50s: list[float],
                            scale: float, name: str) -> None:
    base = dict(enumerate(base_p50s))
    cand = {i: v * scale for i, v in enumerate(cand_p50s)}
    ci = stats.compare_units("base", base, "cand", cand, False, FIXED, name)
    swapped = stats.compare_units("cand", cand, "base", base, False, FIXED, name)
    assert ci.method == stats.UNPAIRED and ci.look is None
    _check(ci, swapped, FIXED)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=-0.5, max_value=0.5), min_size=8, max_size=30),
       st.floats(min_value=-0.2, max_value=0.2))
def test_a_drift_common_to_both_cells_of_a_round_cancels(drift: list[float],
                                                         effect: float) -> None:
    """However the machine drifts from round to round, a constant effect is found exactly."""
    base = {r: 0.005 * math.exp(d) for r, d in enumerate(drift)}
    cand = {r: v * math.exp(effect) for r, v in base.items()}
    ci = stats.compare_units("base", base, "cand", cand, True, FIXED)
    assert math.isclose(ci.ratio, math.exp(effect), rel_tol=1e-9)
    assert math.isclose(ci.low, ci.high, rel_tol=1e-9)  # every round has the same ratio


def test_too_few_rounds_are_inconclusive_and_print_no_interval() -> None:
    base = {r: 0.005 for r in range(4)}
    cand = {r: 0.010 for r in range(4)}  # twice as slow in every round, but 4 rounds
    ci = stats.compare_units("base", base, "cand", cand, True, LOOKS)
    assert (ci.verdict, ci.low, ci.high) == (INCONCLUSIVE, 0.0, math.inf)
    assert not ci.bounded
    assert np.isfinite(ci.ratio) and "too few for an interval" in outcome_phrase(ci, LOOKS)
