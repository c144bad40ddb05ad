"""When may a cell leave the rounds? The looks of an adaptive run, asked by the runner.

Which comparisons a run makes is decided here once, for the runner and the report alike
(`comparison_pairs`): every candidate against its baseline cell (stats.run_verdicts) and, within
each environment, every setting against the group's reference (`within_cell_groups`). At each
planned look (sequential.looks_for) the runner hands over what each still-measuring cell's
rounds produced; `Monitor.look` reads every open comparison with the report's own procedure
(stats.compare_units, paired, on the deciding metric) and says which settled and which cells
may leave: a cell leaves once every comparison it takes part in is settled or cannot go on
(its other cell failed). A comparison whose other cell is not measured in these rounds (kept
by --resume, or on another engine) cannot be paired, so it never settles early: its cell runs
the full budget. A cell that takes part in no comparison runs the full budget too.

The runner cannot import this stage (it sits below analysis); the pipeline builds the Monitor
and hands it to the runner, which only knows the `Looker` protocol it implements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envmatrix.analysis import sequential
from envmatrix.analysis.stats import (
    PER_RUN,
    RatioCI,
    VerdictRules,
    compare_units,
    is_baseline_cell,
    load_of,
    match_baseline,
    unit_values,
)
from envmatrix.rundir.plan import Cell, Plan

BASELINE, WITHIN = "baseline", "within"  # Pair.kind


@dataclass(frozen=True)
class Pair:
    """One comparison the run makes: `cand` against `base` on `metric` (the deciding one)."""

    base: str  # cell ids
    cand: str
    metric: str  # "p50", or "throughput" when the two keep different loads (stats.load_of)
    kind: str  # BASELINE | WITHIN


def within_cell_groups(cells: Sequence[Cell]) -> dict[tuple[str, str, str | None], list[Cell]]:
    """(environment, network, host) -> its cells in plan order, for groups of two or more:
    each cell is compared with the group's first (the report's "Within each environment")."""
    groups: dict[tuple[str, str, str | None], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.environment.id, c.workload.network_name, c.host), []).append(c)
    return {key: group for key, group in groups.items() if len(group) > 1}


def _metric(base: Cell, cand: Cell) -> str:
    return "p50" if load_of(base) == load_of(cand) else "throughput"


def comparison_pairs(plan: Plan) -> list[Pair]:
    """Every comparison of the run, baseline ones first, each once."""
    pairs: dict[tuple[str, str], Pair] = {}
    for cell in plan.cells:
        if is_baseline_cell(plan, cell):
            continue
        base, _notes = match_baseline(plan.cells, plan.baseline, cell)
        if base is not None:
            pairs[(base.id, cell.id)] = Pair(base.id, cell.id, _metric(base, cell), BASELINE)
    for group in within_cell_groups(plan.cells).values():
        ref = group[0]
        for cell in group[1:]:
            pairs.setdefault((ref.id, cell.id), Pair(ref.id, cell.id, _metric(ref, cell), WITHIN))
    return list(pairs.values())


@dataclass
class Look:
    """What one look found: the comparisons that settled now, the cells that may leave."""

    rounds: int
    settled: list[tuple[Pair, RatioCI]] = field(default_factory=list)
    leaving: list[str] = field(default_factory=list)
    open: list[tuple[Pair, RatioCI]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The look as looks.json keeps it: every comparison read, settled or not."""
        def entry(pair: Pair, ci: RatioCI, settled: bool) -> dict[str, Any]:
            return {"baseline": pair.base, "candidate": pair.cand, "kind": pair.kind,
                    "metric": pair.metric, "ratio": _finite(ci.ratio), "low": _finite(ci.low),
                    "high": _finite(ci.high), "verdict": ci.verdict, "look": ci.look,
                    "settled": settled}
        return {"round": self.rounds,
                "comparisons": [entry(p, ci, True) for p, ci in self.settled]
                + [entry(p, ci, False) for p, ci in self.open],
                "leaving": list(self.leaving)}

    def describe(self) -> str:
        """One progress line: what settled, how many stay open, which cells leave."""
        said = "; ".join(f"{p.cand} vs {p.base}: {_change(ci)}" for p, ci in self.settled)
        parts = [said or "nothing settled"]
        if self.open:
            parts.append(f"{len(self.open)} comparison(s) still open")
        if self.leaving:
            parts.append(f"leaving the rounds: {', '.join(self.leaving)}")
        return "; ".join(parts)


def _finite(value: float) -> float | None:
    """JSON has no infinity (an interval too wide to bound) nor NaN: null instead."""
    return value if math.isfinite(value) else None


def _percent(ratio: float) -> str:
    return f"{(ratio - 1.0) * 100:+.1f}%" if math.isfinite(ratio) else "unbounded"


def _change(ci: RatioCI) -> str:
    """`faster -41.2% [-46.0%, -37.1%]`: the verdict, the change and its interval."""
    metric = "" if ci.metric == "p50" else f" ({ci.metric})"
    return (f"{ci.verdict} {_percent(ci.ratio)} [{_percent(ci.low)}, {_percent(ci.high)}]"
            f"{metric}")


class Monitor:
    """The runner's view of the sequential design: when to look, and what a look decides.

    `measured`: the cells this invocation measures on this engine, in its rounds; only pairs
    with both cells among them can settle early (module docstring).
    """

    def __init__(self, plan: Plan, rules: VerdictRules, measured: Iterable[str]) -> None:
        self.rules = rules
        self.budget = plan.measure.round_count
        self.adaptive = plan.measure.adaptive and self.budget > 1
        self.looks = sequential.looks_for(self.budget, plan.measure.look_every
                                          if self.adaptive else None)
        self.measured = set(measured)
        self.pairs = comparison_pairs(plan)
        self.settled: dict[tuple[str, str], RatioCI] = {}
        self.failed: set[str] = set()
        baseline_pairs = sum(p.kind == BASELINE for p in self.pairs)
        # Per-run error rate: the runner stops on Bonferroni's level (alpha / m), never more
        # permissive than the Holm levels the report then reads the same rounds with.
        self._baseline_rules = (rules.at_level(rules.level_alpha / baseline_pairs)
                                if rules.error_rate == PER_RUN and baseline_pairs else rules)

    def design(self) -> dict[str, Any]:
        """The plan's design as looks.json records it."""
        d = sequential.design(self.looks, self.rules.level_alpha)
        return {"adaptive": self.adaptive, "looks": list(d.looks), "ranks": list(d.ranks),
                "alpha": d.alpha, "error": d.error, "nominal": d.nominal}

    def is_look(self, rounds_done: int) -> bool:
        return self.adaptive and rounds_done in self.looks and rounds_done < self.budget

    def fail(self, cell_id: str) -> None:
        """A cell ended without numbers: its comparisons cannot go on."""
        self.failed.add(cell_id)

    def _can_settle(self, pair: Pair) -> bool:
        return pair.base in self.measured and pair.cand in self.measured

    def _closed(self, pair: Pair) -> bool:
        return ((pair.base, pair.cand) in self.settled or pair.base in self.failed
                or pair.cand in self.failed)

    def look(self, rounds_done: int, docs: Mapping[str, Sequence[Mapping[str, Any]]],
             running: Iterable[str]) -> Look:
        """Read every open pair both of whose cells are running, on their rounds so far.

        `docs`: per running cell, its ok rounds' harness documents in round order.
        """
        running = set(running)
        found = Look(rounds_done)
        for pair in self.pairs:
            if self._closed(pair) or not self._can_settle(pair):
                continue
            if pair.base not in running or pair.cand not in running:
                continue
            rules = self._baseline_rules if pair.kind == BASELINE else self.rules
            ci = compare_units(pair.base, _units(docs[pair.base], pair.metric), pair.cand,
                               _units(docs[pair.cand], pair.metric), True, rules, pair.metric)
            if ci.settled:
                self.settled[(pair.base, pair.cand)] = ci
                found.settled.append((pair, ci))
            else:
                found.open.append((pair, ci))
        found.leaving = [cid for cid in sorted(running) if self._may_leave(cid)]
        return found

    def _may_leave(self, cell_id: str) -> bool:
        mine = [p for p in self.pairs if cell_id in (p.base, p.cand)]
        return bool(mine) and all(self._closed(p) for p in mine)


def _units(docs: Sequence[Mapping[str, Any]], metric: str) -> dict[int, float]:
    """{round: value} of one cell's rounds so far, as stats.unit_values reads a result."""
    repeats = [{**rep, "round": r} for r, doc in enumerate(docs)
               for rep in doc.get("repeats") or []]
    return unit_values({"repeats": repeats}, metric)
