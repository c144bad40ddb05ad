"""Sequential looks with exact error control: the intervals every verdict is read from.

**Paired (cells measured in the same interleaved rounds).** The change is the median of the
per-round log ratios candidate/baseline, and its interval the order-statistic interval
[X(l), X(n+1-l)] of those n log ratios, sorted. That is the inversion of the sign test: the
true median lies outside the interval exactly when at most l-1 of the n rounds fall on one side
of it. Whatever the noise does (heavy tails, a slow round now and then, a machine drifting over
minutes, which shifts both cells of a round alike), as long as the rounds are independent, the
number of rounds above the true median is Binomial(n, 1/2); looked at after n1 < n2 < ... rounds
it is a binomial random walk. So the chance that the interval misses the truth at *any* of the
planned looks is a finite sum over the walk's paths: `miss_probability` computes it exactly, no
approximation and no assumption about the shape of the noise.

**The design** (`design`), Haybittle-Peto's shape made exact: the last look keeps the interval a
single look at the budget would have (at 40 rounds and alpha 0.05 the 14th ratio from each
end, 3.85% alone: the levels are discrete), so looking along the way costs no power at the
budget; the interim looks share what that leaves of alpha at one constant nominal level, the
largest whose exact joint miss probability stays <= alpha (looks at 8, 16, 24, 32: the 1st, 3rd,
6th and 9th ratio from each end; 4.87% over all five looks). Why not Pocock's shape (one level
at every look, the last included): on the recordings of benchmarks/sensitivity.py it found
80% of 5% slowdowns where the fixed budget found 89%, for a few rounds saved on large changes.
Why not O'Brien-Fleming's (or a spending function of that shape): the point of looking is to
stop the large changes early, and with 8 rounds at the first look only all eight on one side
can decide (2 / 2**8 = 0.8%); an O'Brien-Fleming first look (nominal level ~5e-6) could
never stop anything before 24 rounds.

Because the joint coverage holds over all looks, the interval at whichever look a comparison
stops is a (1 - alpha) interval: the verdict read from it (faster, slower, equivalent) is wrong
with probability at most alpha however the stopping was decided.

**Unpaired (two runs, a resumed cell).** No looks: the Hodges-Lehmann shift of the log values
(the median of all pairwise differences) and its exact distribution-free interval, the inversion
of the Mann-Whitney test (`shift_interval`), at level alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Rounds between two looks when a plan says nothing else: the first look can stop a change
# that all 8 rounds agree on (a 30% change does), and 5 looks fit the default 40 rounds.
LOOK_EVERY = 8


@dataclass(frozen=True)
class Design:
    """Where a paired comparison is looked at and the interval each look gets.

    `ranks[k]` is l at look k: the interval of the n = looks[k] sorted log ratios is
    [X(l), X(n+1-l)]; 0 means no finite interval is possible yet (too few rounds). `error` is
    the exact probability that some look's interval misses the true median; <= alpha.
    """

    looks: tuple[int, ...]
    alpha: float
    ranks: tuple[int, ...]
    error: float
    nominal: float  # the per-look level all but the last look share (1 - their coverage)

    def rank_at(self, n: int) -> int:
        return self.ranks[self.looks.index(n)]


def looks_for(budget: int, every: int | None) -> tuple[int, ...]:
    """The planned looks: every `every` rounds, and the budget itself; None: one look."""
    if budget < 1:
        raise ValueError(f"a budget of {budget} rounds")
    if every is None or every >= budget:
        return (budget,)
    return (*range(every, budget, every), budget)


def _tail(n: int, rank: int) -> float:
    """P(the interval [X(rank), X(n+1-rank)] of n rounds misses the median) at one look."""
    if rank <= 0:
        return 0.0
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(rank)) / 2.0**n)


def miss_probability(looks: Sequence[int], ranks: Sequence[int]) -> float:
    """Exactly: P(some look k has at most ranks[k]-1 rounds on one side of the median).

    The walk of "rounds above the median" moves up with probability 1/2 each round; paths that
    cross at a look are removed from `alive` and their mass counted. Enumerated, not simulated.
    """
    alive = np.zeros(max(looks) + 1)
    alive[0] = 1.0
    missed, n = 0.0, 0
    for look, rank in zip(looks, ranks):
        while n < look:
            alive[1:n + 2] = 0.5 * alive[1:n + 2] + 0.5 * alive[0:n + 1]
            alive[0] *= 0.5
            n += 1
        if rank > 0:
            low, high = rank - 1, look - rank + 1  # at most rank-1 above, or below
            missed += float(alive[:low + 1].sum() + alive[high:look + 1].sum())
            alive[:low + 1] = 0.0
            alive[high:look + 1] = 0.0
    return missed


def _rank_for(n: int, level: float) -> int:
    """The largest l whose single-look miss probability at n rounds is <= level."""
    rank = 0
    while rank + 1 <= n // 2 and _tail(n, rank + 1) <= level + 1e-15:
        rank += 1
    return rank


def _interim_ranks(looks: tuple[int, ...], final: int, alpha: float) -> tuple[list[int], float]:
    """With the last look's rank fixed: the interim looks' ranks at the largest constant
    nominal level whose exact joint miss probability stays <= alpha, and that level."""
    interim = looks[:-1]
    levels = sorted({_tail(n, r) for n in interim for r in range(1, n // 2 + 1)})
    best: list[int] = [0 for _ in interim]
    nominal = 0.0
    for level in levels:  # increasing: ranks only grow, and so does the miss probability
        ranks = [_rank_for(n, level) for n in interim]
        if miss_probability(looks, [*ranks, final]) > alpha:
            break
        best, nominal = ranks, level
    return best, nominal


_MAX_GIVEN_UP = 2  # ranks the last look may give up so that the first look can stop


@lru_cache(maxsize=256)
def design(looks: tuple[int, ...], alpha: float) -> Design:
    """The design of `looks` at overall level alpha, computed exactly (Haybittle-Peto's shape).

    The last look keeps the rank one look alone would take at alpha, so looking along the way
    costs no power at the budget; the interim looks share what the discreteness leaves, at one
    constant nominal level. When that leaves the first look unable to stop anything, the last
    look gives up one or two ranks if that lets it: a large change should settle at the first
    look (at 80 and 100 rounds in looks of 8 it gives up one; at alpha 0.01 nothing helps).
    """
    if not looks or list(looks) != sorted(set(looks)) or looks[0] < 1:
        raise ValueError(f"looks must be increasing round counts, not {looks}")
    fixed = _rank_for(looks[-1], alpha)
    final = fixed
    interim, nominal = _interim_ranks(looks, final, alpha)
    if len(looks) > 1 and not interim[0]:
        for fewer in range(fixed - 1, max(fixed - 1 - _MAX_GIVEN_UP, 0), -1):
            tried, level = _interim_ranks(looks, fewer, alpha)
            if tried[0]:
                final, interim, nominal = fewer, tried, level
                break
    ranks = (*interim, final)
    return Design(tuple(looks), alpha, ranks, miss_probability(looks, ranks), nominal)


def sign_interval(log_ratios: np.ndarray, rank: int) -> tuple[float, float]:
    """[X(rank), X(n+1-rank)] of the log ratios (log scale); (-inf, inf) when rank is 0."""
    if rank <= 0:
        return -math.inf, math.inf
    ordered = np.sort(np.asarray(log_ratios, dtype=float))
    return float(ordered[rank - 1]), float(ordered[ordered.size - rank])


# ---------------------------------------------------------------- unpaired: Mann-Whitney


@lru_cache(maxsize=64)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """How many of the C(m+n, m) orderings give each Mann-Whitney U = 0..m*n (exact integers).

    The coefficients of the Gaussian binomial [m+n choose m]_q, built factor by factor:
    times (1 - q**(n+i)), then divided by (1 - q**i), which keeps every step a polynomial.
    """
    size = m * n + 1
    poly = np.zeros(size, dtype=object)
    poly[0] = 1
    for i in range(1, m + 1):
        shift = n + i
        if shift < size:
            poly[shift:] = poly[shift:] - poly[:-shift].copy()
        for start in range(i):  # dividing by (1 - q**i): a running sum along each stride
            poly[start::i] = np.cumsum(poly[start::i])
    return tuple(int(c) for c in poly)


def _u_critical(m: int, n: int, alpha: float) -> int:
    """The largest c with P(U <= c - 1) <= alpha / 2 under no shift (0: no finite interval)."""
    counts = _u_counts(m, n)
    total = math.comb(m + n, m)
    cumulative, c = 0, 0
    while c < len(counts) and 2 * (cumulative + counts[c]) <= alpha * total:
        cumulative += counts[c]
        c += 1
    return c


def shift_interval(base_logs: np.ndarray, cand_logs: np.ndarray,
                   alpha: float) -> tuple[float, float, float]:
    """(Hodges-Lehmann shift, low, high) of cand - base on the log scale, exact at alpha.

    The interval is [D(c), D(mn+1-c)] of the m*n pairwise differences sorted, c from the exact
    null distribution of the Mann-Whitney U: it misses the true shift with probability <= alpha
    when the two sets differ by a shift, whatever their shape. Infinite when too few values.
    """
    diffs = np.sort(np.subtract.outer(np.asarray(cand_logs, float),
                                      np.asarray(base_logs, float)).ravel())
    estimate = float(np.median(diffs))
    c = _u_critical(len(base_logs), len(cand_logs), alpha)
    if c <= 0:
        return estimate, -math.inf, math.inf
    return estimate, float(diffs[c - 1]), float(diffs[diffs.size - c])


def fewest_units(alpha: float) -> int:
    """Fewest rounds from which a paired interval can be finite at one look at `alpha`:
    the smallest n with 2 / 2**n <= alpha (6 at alpha 0.05)."""
    n = 1
    while _tail(n, 1) > alpha:
        n += 1
    return n
