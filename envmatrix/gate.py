"""The CI gate: what the command line may change for one run, and whether a report fails it.

`--fail-on slower,parity,invalid` (any subset; or matrix.yaml `verdict.fail_on`) names the
findings that make `matrix`, `report` and `compare` exit with `GateFailed.exit_code` (11):
- `slower`: a candidate cell whose verdict is "slower" (on p50; on samples/s across loads).
  The tail (p99) verdict does not count: with the small budgets CI affords, p99 is noisy, and
  it is shown in the report. "inconclusive" does not fail the gate (nothing was shown slower:
  the report says how far the interval reached), nor does "equivalent". The verdicts hold the
  error rate the plan names: per comparison by default, per run (Holm) with
  `verdict.error_rate: run` or `--error-rate run`;
- `parity`: a candidate cell whose outputs differ from the baseline's (parity "fail"; outputs
  that could not be compared do not count);
- `invalid`: any cell without valid numbers (the baseline's and failed cells included), and
  any candidate whose verdict is "invalid" (e.g. its baseline cell has no valid numbers).
The gate's code wins over 10 (some cells failed): the gate is what CI asked about, and the
failed cells are listed either way.

`--repeats`, `--alpha`, `--min-effect`, `--equivalence` and `--error-rate` enter the plan
(`apply`), so matrix.resolved.yaml, the cells' config hashes and the report show what was
really used.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from envmatrix.analysis.stats import INVALID, PER_COMPARISON, PER_RUN, SLOWER, RatioCI
from envmatrix.config.spec import ALPHA_RANGE, MIN_EFFECT_RANGE
from envmatrix.problems import did_you_mean
from envmatrix.rundir.plan import FAIL_ON_WORDS, Measure, Plan, VerdictSettings

if TYPE_CHECKING:  # report imports plots (matplotlib): not needed to parse arguments
    from envmatrix.analysis.rundata import RunData
    from envmatrix.report.compare import Comparison

STEP_SUMMARY = "GITHUB_STEP_SUMMARY"
NONE = "none"  # --fail-on none: no gate, whatever the matrix's verdict.fail_on says


@dataclass(frozen=True)
class Overrides:
    """What the command line sets over matrix.yaml; None: the matrix's value."""

    repeats: int | None = None
    alpha: float | None = None
    min_effect: float | None = None
    fail_on: tuple[str, ...] | None = None
    equivalence: float | None = None
    error_rate: str | None = None  # stats.PER_COMPARISON | stats.PER_RUN


# ---------------------------------------------------------------- argparse types


def fail_on_words(text: str) -> tuple[str, ...]:
    """`--fail-on slower,parity` -> ("slower", "parity"); `none` -> (); else a usage error."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == [NONE]:
        return ()
    for word in words:
        if word not in FAIL_ON_WORDS:
            raise argparse.ArgumentTypeError(
                f"{word!r} is not a verdict to fail on{did_you_mean(word, FAIL_ON_WORDS)}: "
                f"give a comma-separated subset of {','.join(FAIL_ON_WORDS)} (or {NONE})")
    if not words:
        raise argparse.ArgumentTypeError(
            f"give a comma-separated subset of {','.join(FAIL_ON_WORDS)} (or {NONE})")
    return tuple(dict.fromkeys(words))


def _bounded(name: str, low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{name} must be a number from {low} to {high}, "
                                             f"not {text!r}")
        return value
    parse.__name__ = name  # argparse names the type in some messages
    return parse


alpha_value = _bounded("alpha", *ALPHA_RANGE)
min_effect_value = _bounded("min-effect", *MIN_EFFECT_RANGE)
ERROR_RATES = (PER_COMPARISON, PER_RUN)


def equivalence_value(text: str) -> float:
    """`--equivalence 0.05`: the margin of "equivalent", above 0 and at most 1 (as in
    matrix.yaml's verdict.equivalence)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"equivalence must be a number above 0 and at most 1 "
                                         f"(0.05 = ±5%), not {text!r}")
    return value


def error_rate_value(text: str) -> str:
    """`--error-rate comparison|run`: which error rate the verdicts hold."""
    word = text.strip()
    if word not in ERROR_RATES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an error rate{did_you_mean(word, ERROR_RATES)}: give "
            f"{PER_COMPARISON} (each verdict wrong at most alpha of the time) or {PER_RUN} "
            "(all the run's verdicts together, Holm)")
    return word


def repeats_value(text: str) -> int:
    """`--repeats N`: the limits of measure.repeats (1-100)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"repeats must be a whole number from 1 to 100, "
                                         f"not {text!r}")
    return int(text)


# ---------------------------------------------------------------- overrides into the plan


def with_repeats(measure: Measure, repeats: int) -> Measure:
    """measure with `repeats` processes: the matrix's rounds when they divide it, else one
    process per round (as many rounds as repeats), so the verdict can still pair rounds."""
    rounds = measure.rounds if measure.rounds and repeats % measure.rounds == 0 else None
    return replace(measure, repeats=repeats, rounds=rounds)


def verdict_settings(settings: VerdictSettings, overrides: Overrides) -> VerdictSettings:
    keys = ("alpha", "min_effect", "fail_on", "equivalence", "error_rate")
    changed = {k: getattr(overrides, k) for k in keys if getattr(overrides, k) is not None}
    return replace(settings, **changed)


def apply(plan: Plan, overrides: Overrides) -> Plan:
    """The plan with the command line's budget and verdict settings."""
    measure = plan.measure if overrides.repeats is None else with_repeats(plan.measure,
                                                                           overrides.repeats)
    return replace(plan, measure=measure, verdict=verdict_settings(plan.verdict, overrides))


# ---------------------------------------------------------------- the decision


def run_findings(data: RunData, fail_on: Iterable[str]) -> list[str]:
    """One line per finding of a report that `fail_on` names; empty: the gate passes."""
    wanted = set(fail_on)
    found = []
    if "slower" in wanted:
        found += [f"slower: {v.candidate} ({_change(v.decided)})" for v in data.verdicts
                  if v.verdict == SLOWER]
    if "parity" in wanted:
        found += [f"parity: {cid}: {p.reason}" for cid, p in data.parity.items()
                  if p.status == "fail"]
    if "invalid" in wanted:
        found += [f"invalid: {cid}: {why}" for cid, why in _invalid(data)]
    return found


def _invalid(data: RunData) -> list[tuple[str, str]]:
    """(cell, why) for every cell without valid numbers or with the verdict "invalid"."""
    out = []
    for cell in data.cells:
        validity, verdict = data.validity.get(cell.id), data.verdict_of(cell.id)
        if validity is None or not validity.valid:
            out.append((cell.id, "; ".join(validity.reasons) if validity else "no result"))
        elif verdict is not None and verdict.verdict == INVALID:
            out.append((cell.id, "; ".join(verdict.reasons)))
    return out


def comparison_findings(comparison: Comparison, fail_on: Iterable[str]) -> list[str]:
    """The same for `compare`: run B's cells against their partners in run A."""
    wanted = set(fail_on)
    found = []
    for pair in comparison.pairs:
        if pair.verdict == SLOWER and "slower" in wanted:
            found.append(f"slower: {pair.b} (B) vs {pair.a} (A)")
        if pair.verdict == INVALID and "invalid" in wanted:
            found.append(f"invalid: {pair.b} (B) vs {pair.a} (A)")
    if "parity" in wanted:
        found += [f"parity: {p.b} (B) vs {p.a} (A)" for p in comparison.parity_failures]
    return found


def _change(ci: RatioCI | None) -> str:
    if ci is None:
        return "p50"
    name = "samples/s" if ci.metric == "throughput" else ci.metric
    return (f"{name} {(ci.ratio - 1) * 100:+.1f}% [{(ci.low - 1) * 100:+.1f}%, "
            f"{(ci.high - 1) * 100:+.1f}%]")


# ---------------------------------------------------------------- GitHub's job summary


def write_step_summary(markdown: str) -> Path | None:
    """Append to the file GITHUB_STEP_SUMMARY names (GitHub shows it on the run's page)."""
    target = os.environ.get(STEP_SUMMARY)
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as out:
        out.write(markdown.rstrip() + "\n\n")
    return Path(target)
