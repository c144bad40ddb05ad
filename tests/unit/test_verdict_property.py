"""Property: a verdict never contradicts its own interval, whatever the rounds or processes.

For random sets of 2-30 paired round ratios and random per-process p50s (unpaired): the verdict
is the rule applied to the printed estimate and interval, the two cells' points divide to the
estimate, and swapping baseline and candidate swaps faster and slower. Paired, the estimate is
the median of the per-round ratios, whatever the rounds' spread (a drift common to a round
cancels).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from envmatrix.analysis import stats
from envmatrix.analysis.stats import FASTER, SLOWER, UNCHANGED, VerdictRules

RULES = VerdictRules()
SWAP = {FASTER: SLOWER, SLOWER: FASTER, UNCHANGED: UNCHANGED}
log_ratio = st.floats(min_value=-0.3, max_value=0.3, allow_nan=False, allow_infinity=False)
p50 = st.floats(min_value=1e-4, max_value=1.0, allow_nan=False, allow_infinity=False)


def _near(x: float, edge: float) -> bool:
    return math.isfinite(x) and abs(x - edge) <= 1e-9 * edge


def _check(ci: stats.RatioCI, swapped: stats.RatioCI) -> None:
    m = RULES.min_effect
    assert ci.base is not None and ci.cand is not None
    # The table's two columns divide to the change (to the last bit of a float).
    assert math.isclose(ci.cand / ci.base, ci.ratio, rel_tol=1e-12)
    # The verdict is the rule on the printed numbers: never against its own interval.
    assert ci.verdict == stats.decide_interval(ci.ratio, ci.low, ci.high, m)
    if ci.verdict == FASTER:
        assert ci.high < 1.0 and ci.ratio < 1.0 / (1.0 + m)
    if ci.verdict == SLOWER:
        assert ci.low > 1.0 and ci.ratio > 1.0 + m
    if not np.isnan(ci.low):
        assert ci.low <= ci.high
    # Symmetry, except exactly on an edge (within rounding of the threshold or of 1).
    edges = [(ci.ratio, 1.0 + m), (ci.ratio, 1.0 / (1.0 + m)), (ci.low, 1.0), (ci.high, 1.0)]
    assume(not any(_near(x, e) for x, e in edges))
    assert swapped.verdict == SWAP[ci.verdict]
    if not np.isnan(ci.low):
        assert math.isclose(swapped.low, 1.0 / ci.high, rel_tol=1e-12)
        assert math.isclose(swapped.high, 1.0 / ci.low, rel_tol=1e-12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(p50, log_ratio), min_size=2, max_size=30),
       st.floats(min_value=-0.1, max_value=0.1))
def test_paired_rounds(rounds: list[tuple[float, float]], shift: float) -> None:
    base = {r: b for r, (b, _) in enumerate(rounds)}
    cand = {r: b * math.exp(x + shift) for r, (b, x) in enumerate(rounds)}
    ci = stats.compare_units("base", base, "cand", cand, True, RULES)
    swapped = stats.compare_units("cand", cand, "base", base, True, RULES)
    assert ci.method == stats.PAIRED and ci.n_base == len(rounds)
    _check(ci, swapped)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(p50, min_size=2, max_size=30), st.lists(p50, min_size=2, max_size=30),
       st.floats(min_value=0.5, max_value=2.0))
def test_unpaired_processes(base_p50s: list[float], cand_p50s: list[float],
                            scale: float) -> None:
    base = dict(enumerate(base_p50s))
    cand = {i: v * scale for i, v in enumerate(cand_p50s)}
    ci = stats.compare_units("base", base, "cand", cand, False, RULES)
    swapped = stats.compare_units("cand", cand, "base", base, False, RULES)
    assert ci.method == stats.UNPAIRED
    _check(ci, swapped)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=-0.5, max_value=0.5), min_size=8, max_size=30),
       st.floats(min_value=-0.2, max_value=0.2))
def test_a_drift_common_to_both_cells_of_a_round_cancels(drift: list[float],
                                                         effect: float) -> None:
    """However the machine drifts from round to round, a constant effect is found exactly."""
    base = {r: 0.005 * math.exp(d) for r, d in enumerate(drift)}
    cand = {r: v * math.exp(effect) for r, v in base.items()}
    ci = stats.compare_units("base", base, "cand", cand, True, RULES)
    assert math.isclose(ci.ratio, math.exp(effect), rel_tol=1e-9)
    assert math.isclose(ci.low, ci.high, rel_tol=1e-9)  # every resample sees the same ratio
