"""The report's summary: each candidate against the baseline, in a table and in sentences.

The summary table, one sentence per candidate environment and provider, the settings'
answers within each environment, the budget note and what makes a verdict less trustworthy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from envmatrix.analysis.decision import Costs, change, cores_phrase
from envmatrix.analysis.rundata import RunData, cost_changes, image_size
from envmatrix.analysis.stats import (
    EQUIVALENT,
    FASTER,
    INCONCLUSIVE,
    INVALID,
    NOISY_PREFIX,
    PAIRED,
    SLOWER,
    UNPAIRED,
    RatioCI,
    Verdict,
    VerdictRules,
    below_min_effect,
    load_of,
    too_few_note,
)
from envmatrix.report.markdown import (
    band,
    error_rate_phrase,
    fmt_bytes,
    fmt_change,
    fmt_pct,
    fmt_ratio,
    md,
    measured_span,
    outcome_word,
    provider_name,
    settled_early,
    table,
    verdict_methods,
    verdict_words,
)
from envmatrix.report.within import within_summary_lines
from envmatrix.rundir.idwords import knob_names, knob_part, knob_values

TOO_FEW_PREFIX = "too few rounds"  # how stats.too_few_note words its note
SUMMARY_HEADERS = ("candidate", "workload", "provider", "p50 change [95% CI]",
                   "p99 change [95% CI]", "samples/s change [95% CI]", "CPU per inference",
                   "cold start", "peak RSS", "image size", "parity", "verdict p50 / p99",
                   "trust")


def section_summary(data: RunData) -> str:
    lines = ["## Summary", ""]
    differ = [p for p in data.parity.values() if p.status == "fail"]
    if differ:
        names = ", ".join(md(p.candidate) for p in differ)
        lines += [f"> **Output parity failure:** {len(differ)} cell(s) compute different "
                  f"outputs from the baseline on identical inputs: {names}. See "
                  f"[Output parity](#output-parity).", ""]
    within = within_summary_lines(data)
    if within:  # the settings' answer stands on its own: a reader of the summary gets it
        within = ["Within each environment, against its first setting ([details]"
                  "(#within-each-environment)):", "", *within, ""]
    if not data.verdicts:
        lines += within
        lines.append(f"Only the baseline {md(data.baseline)} was measured: no other "
                     "environment to compare.")
        return "\n".join(lines)
    lines += [f"Changes against the baseline **{md(data.baseline)}** (negative: less time, "
              "less CPU, less memory).", "",
              table(SUMMARY_HEADERS, [summary_row(data, v) for v in data.verdicts]), ""]
    lines += [f"- {candidate_sentence(data, k, vs)}" for k, vs in _group_verdicts(data).items()]
    lines += ["", *within[:-1]] if within else []
    note = budget_note(data)
    lines += ["", note] if note else []
    notes = trust_notes(data)
    lines += ["", *notes] if notes else []
    lines += ["", procedure_note(data)]
    return "\n".join(lines)


def procedure_note(data: RunData) -> str:
    """The procedure, the four outcomes and the error rate, in one paragraph."""
    rules = data.rules
    valid = len([v for v in data.verdicts if v.verdict != INVALID])
    looks = any(v.method == PAIRED for v in data.verdicts) and rules.look_every is not None
    return (f"Verdicts, at {rules.confidence:.0%} confidence: "
            f"{verdict_methods(data.verdicts, rules)}. Four outcomes: \"faster\" or \"slower\" "
            "when the whole interval is on that side of no change and the estimate is beyond "
            f"a {rules.min_effect:.0%} change; \"equivalent\" when the whole interval lies "
            f"within {band(rules.equivalence)}; else \"inconclusive\", shown with the "
            "interval reached. The same rule on p99 gives the tail verdict."
            f"{_load_rule(data)} Error rate {error_rate_phrase(rules, valid, looks)}. CPU, cold "
            "start and memory changes: the same estimate and interval on those figures, "
            "without a verdict (docs/report.md).")


def summary_row(data: RunData, v: Verdict) -> list[Any]:
    costs = cost_changes(data, v)
    parity = data.parity.get(v.candidate)
    words = verdict_words(v, data.rules.equivalence)
    return [md(candidate_name(data, v)), md(v.workload), md(provider_name(v.provider)),
            fmt_change(v, "p50"), fmt_change(v, "p99"), fmt_change(v, "throughput"),
            fmt_ratio(costs["cpu_per_inference"]),
            fmt_ratio(costs["cold_start"]), fmt_ratio(costs["peak_rss"]), _image_cell(data, v),
            "**FAIL**" if parity and parity.status == "fail" else
            (parity.status if parity else None), words, trust_word(data, v)]


def _costs_of(data: RunData, cid: str | None) -> Costs | None:
    return data.costs.get(cid) if cid else None


def _image_cell(data: RunData, v: Verdict) -> str | None:
    size = image_size(data, v.environment)
    base = image_size(data, data.baseline)
    if size is None:
        return None
    ratio = change(base, size)
    return f"{fmt_bytes(size)} ({fmt_pct(ratio)})" if ratio is not None else fmt_bytes(size)


def trust_word(data: RunData, v: Verdict) -> str:
    """ok, noisy (with the cells that are), too few rounds, or invalid."""
    if v.verdict == INVALID:
        return "**invalid**"
    noisy = [c for c in (v.candidate, v.baseline) if c and data.noise.get(c)]
    words = []
    p50 = v.p50
    if p50 is not None and too_few_note(p50.method or UNPAIRED, p50.n_base or 0,
                                        p50.n_cand or 0, data.rules):
        words.append("too few rounds")
    if noisy:
        words.append("noisy: " + ", ".join("candidate" if c == v.candidate else "baseline"
                                           for c in noisy))
    return "; ".join(words) or "ok"


def candidate_name(data: RunData, v: Verdict) -> str:
    """The candidate's environment, with the knobs the plan varies in the words of the cell
    ids: `env (t2)`, `env (c2 load_config-throughput)`."""
    try:
        cell = data.plan.cell(v.candidate)
    except KeyError:
        return v.environment
    values = knob_values(cell.knobs, cell.provider_options)
    shown = [knob_part(name, values[name]) for name in knob_names(data.cells)
             if values.get(name) is not None]
    return f"{v.environment} ({' '.join(shown)})" if shown else v.environment


def _group_verdicts(data: RunData) -> dict[tuple[str, str], list[Verdict]]:
    groups: dict[tuple[str, str], list[Verdict]] = {}
    for v in data.verdicts:
        groups.setdefault((candidate_name(data, v), v.provider), []).append(v)
    return groups


# What a verdict word says, by the metric that made it: per request (p50), or in samples/s
# for cells at different loads (more requests in flight trade latency for throughput).
_WORDS_ON = {"p50": {FASTER: "faster per request", SLOWER: "slower per request",
                     EQUIVALENT: "equivalent per request within {band}",
                     INCONCLUSIVE: "inconclusive per request"},
             "throughput": {FASTER: "more samples/s", SLOWER: "fewer samples/s",
                            EQUIVALENT: "equivalent in samples/s within {band}",
                            INCONCLUSIVE: "inconclusive in samples/s"}}


def change_detail(ci: RatioCI, rules: VerdictRules) -> list[str]:
    """What a sentence says after a workload's name: the change, the interval where the
    outcome rests on it, and the round it settled at or the rounds it ran out of."""
    if not math.isfinite(ci.ratio):
        return []
    small = below_min_effect(ci, rules.min_effect) if ci.bounded else False
    parts = [f"{fmt_pct(ci.ratio)}, below the {rules.min_effect:.0%} that counts" if small
             else fmt_pct(ci.ratio)]
    if ci.verdict == EQUIVALENT:
        parts.append(f"interval {fmt_pct(ci.low)} to {fmt_pct(ci.high)}")
    if ci.verdict == INCONCLUSIVE:
        parts.append(f"between {fmt_pct(ci.low)} and {fmt_pct(ci.high)} after "
                     f"{measured_span(ci)}: more rounds or a quieter machine needed"
                     if ci.bounded else f"too few rounds for an interval, {measured_span(ci)}")
    look = settled_early(ci)
    if look is not None and ci.planned:
        parts.append(f"settled at round {look} of {ci.planned}")
    return parts


def _change_words(data: RunData, vs: Sequence[Verdict]) -> str:
    """"faster per request on cnn (-41.1%, settled at round 8 of 40) and transformer (...)",
    grouped by verdict words; across loads in samples/s: "more samples/s on cnn (+10.4%, 2 in
    flight)"."""
    by_word: dict[str, list[str]] = {}
    for v in vs:
        ci = v.decided
        parts = change_detail(ci, data.rules) if ci is not None else []
        if v.decided_by == "throughput":
            parts += [p for p in (_in_flight(data, v),) if p]
        words = _WORDS_ON.get(v.decided_by, {}).get(v.verdict, v.verdict)
        words = words.format(band=band(data.rules.equivalence))
        detail = "; ".join(parts) if v.verdict == INCONCLUSIVE else ", ".join(parts)
        by_word.setdefault(words, []).append(f"{md(v.workload)} ({detail})" if detail else
                                             md(v.workload))
    return "; ".join(f"{words} on {' and '.join(items)}" for words, items in by_word.items())


def _in_flight(data: RunData, v: Verdict) -> str:
    try:
        return f"{load_of(data.plan.cell(v.candidate))} in flight"
    except KeyError:
        return ""


def _cost_words(data: RunData, vs: Sequence[Verdict]) -> list[str]:
    """"using 2.0 cores instead of 1.0: +17% CPU per inference on cnn, +16% on transformer"."""
    by_cores: dict[str, list[str]] = {}
    for v in vs:
        base, cand = _costs_of(data, v.baseline), _costs_of(data, v.candidate)
        cores = cores_phrase(base, cand)
        cpu = cost_changes(data, v)["cpu_per_inference"]
        if cores:
            by_cores.setdefault(cores, []).append(
                f"{fmt_pct(cpu)} on {md(v.workload)}" if cpu is not None else md(v.workload))
    words = [f"{cores}: CPU per inference {', '.join(items)}"
             for cores, items in by_cores.items()]
    cold = [(v.workload, cost_changes(data, v)["cold_start"]) for v in vs]
    cold_text = [f"{fmt_pct(r)} on {md(w)}" for w, r in cold if r is not None]
    if cold_text:
        words.append("cold start " + ", ".join(cold_text))
    return words


def candidate_sentence(data: RunData, key: tuple[str, str], vs: Sequence[Verdict]) -> str:
    """One sentence a manager can read about one candidate environment on one provider."""
    env, provider = key
    head = f"**{md(env)}** on {md(provider_name(provider))}"
    invalid = [v for v in vs if v.verdict == INVALID]
    valid = [v for v in vs if v.verdict != INVALID]
    parts = [_change_words(data, valid)] if valid else []
    parts += _cost_words(data, valid)
    tails = [f"{md(v.workload)} p99 {_plain_word(v.tail_verdict, data.rules)}" for v in valid
             if v.tail_verdict and v.tail_verdict != v.verdict]
    if tails:
        parts.append("but " + ", ".join(tails))
    differ = [v.workload for v in valid if (p := data.parity.get(v.candidate)) and
              p.status == "fail"]
    if valid:  # parity only says something about cells with numbers
        parts.append(f"**outputs differ** on {', '.join(md(w) for w in differ)}" if differ else
                     "outputs match" if all((p := data.parity.get(v.candidate)) and
                                            p.status == "pass" for v in valid)
                     else "outputs not all compared")
    if invalid:
        parts.append(f"invalid on {', '.join(md(v.workload) for v in invalid)} (see below)")
    return f"{head}: " + "; ".join(parts) + "."


def _plain_word(word: str, rules: VerdictRules) -> str:
    """A verdict word in a sentence: "equivalent within ±5%", the others as they are."""
    if word == EQUIVALENT:
        return f"equivalent within {band(rules.equivalence)}"
    return str(outcome_word(word, rules.equivalence)).strip("*")


def trust_notes(data: RunData) -> list[str]:
    """Once per cell: its noise and the likely cause; then the comparisons' notes (how a cell
    was matched) and why a cell is invalid."""
    noisy = [(cell.id, found) for cell in data.cells if (found := data.noise.get(cell.id))]
    lines = []
    if noisy:
        lines += [f"Noisy cells (their processes' p50s spread more than {data.rules.cv_warn:.0%}, "
                  "CV): their p50 verdicts and intervals still stand, since they are computed "
                  "over rounds and include the spread; single-process figures (first inference, "
                  "session creation) are rough.", ""]
    for cid, found in noisy:
        mixed = "; p90/p99 and throughput mix the two modes" if found.two_modes else ""
        lines.append(f"- {md(cid)}: CV {found.cv:.0%}; likely cause: "
                     f"{md('; '.join(found.causes))}{mixed}.")
    for cell in data.cells:  # the other warnings (noise has its line above): node placement
        validity = data.validity.get(cell.id)
        lines += [f"- {md(cell.id)}: {md(w)}." for w in (validity.warnings if validity else ())
                  if not w.startswith(NOISY_PREFIX)]
    for v in data.verdicts:  # a too-few-rounds note is said once, by budget_note
        lines += [f"- {md(v.candidate)}: {md(note)}." for note in v.notes
                  if not note.startswith(TOO_FEW_PREFIX)]
        if v.verdict == INVALID:
            lines.append(f"- {md(v.candidate)}: **invalid**: {md('; '.join(v.reasons))}.")
    return lines


def _load_rule(data: RunData) -> str:
    """Said when some verdict compares cells at different loads: what decided it."""
    if not any(v.decided_by == "throughput" for v in data.verdicts):
        return ""
    return (" A cell that keeps another number of requests in flight than its baseline is "
            "decided the same way on samples/s (marked \"(samples/s)\"): each request's "
            "latency under load is not comparable to a request's alone, and throughput is "
            "what more requests in flight are for.")


def budget_note(data: RunData) -> str | None:
    """One line when some comparison had too few rounds for its test (so no verdict)."""
    notes = [too_few_note(ci.method, ci.n_base or 0, ci.n_cand or 0, data.rules)
             for v in data.verdicts if (ci := v.p50) is not None and ci.method]
    found = list(dict.fromkeys(n for n in notes if n))
    if not found:
        return None
    return (f"> **Too few rounds for a verdict** in {len([n for n in notes if n])} of "
            f"{len(data.verdicts)} comparison(s): {md('; '.join(found))}. Measure more rounds "
            "(measure.repeats, or --repeats N) for a decision.")
