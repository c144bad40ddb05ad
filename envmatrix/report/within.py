"""Within each environment: the settings of one network side by side, and the answer.

One table per `WithinGroup` (each cell against the group's first by the verdicts' procedure),
then which setting gives the highest throughput and the lowest latency, and whether the
settings compute what the reference computes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from envmatrix.analysis.parity import CellParity
from envmatrix.analysis.rundata import (
    BATCH_DIFFERS,
    RunData,
    WithinGroup,
    cell_numbers,
    samples_per_request,
    within_point,
)
from envmatrix.analysis.stats import (
    EQUIVALENT,
    INVALID,
    RatioCI,
    Verdict,
    VerdictRules,
    below_min_effect,
)
from envmatrix.report.markdown import (
    band,
    code,
    fmt_change,
    fmt_ms,
    fmt_number,
    fmt_pct,
    fmt_rate,
    md,
    outcome_cell,
    outcome_word,
    settled_early,
    table,
    verdict_methods,
)
from envmatrix.rundir.idwords import setting_diff, setting_parts
from envmatrix.rundir.plan import Cell


def section_within(data: RunData) -> str:
    """## Within each environment: the settings of one network side by side, each against
    the first, by the verdicts' procedure, with the answer below each table."""
    verdicts = [v for g in data.within for v in g.verdicts.values()]
    lines = ["## Within each environment", "",
             "The cells of one network in one environment (backends, batch sizes, providers, "
             "knobs), each against the first in plan order (the reference), by the verdicts' "
             f"own procedure: {verdict_methods(verdicts, data.rules)}. samples/s: samples per "
             "second (requests completed x batch / wall time of the timed loop). Parity: outputs "
             "against the reference's on identical inputs; outputs named differently by two "
             "backends are matched by position.", ""]
    for group in data.within:
        names = within_settings(group)
        lines += [f"### {_group_title(data, group, strong=False)}", "",
                  within_table(data, group), "", " ".join(within_answer(data, group))]
        parity = _parity_sentence(group, names)
        lines += [parity] if parity else []
        notes = list(dict.fromkeys(f"{code(names[cid])}: {md(note)}"
                                   for cid, v in group.verdicts.items() for note in v.notes))
        lines += [f"Notes: {'; '.join(notes)}."] if notes else []
        lines.append("")
    return "\n".join(lines).rstrip()


def within_summary_lines(data: RunData) -> list[str]:
    """One line per group for the summary: its throughput and latency answers."""
    return [f"- {_group_title(data, g)}: {' '.join(within_answer(data, g))}"
            for g in data.within]


def within_settings(group: WithinGroup) -> dict[str, str]:
    """Cell id -> its setting's short text: the reference's by what varies in its group
    (`setting_parts`), every other cell's by what differs from the reference
    (`setting_diff`); the workload's name first where that alone tells no two cells apart."""
    ref = group.reference
    parts = {c.id: setting_parts(group.cells, c) if c is ref else setting_diff(c, ref)
             for c in group.cells}
    texts = {cid: " ".join(words) for cid, words in parts.items()}
    if len(set(texts.values())) < len(texts) or not all(texts.values()):
        texts = {c.id: " ".join([c.workload.name, *parts[c.id]]) for c in group.cells}
    return texts


def within_table(data: RunData, group: WithinGroup) -> str:
    """One row per setting: its numbers, its changes against the reference with their
    intervals and verdicts, its costs (`cell_numbers`) and its outputs' parity."""
    settings, per_sample = within_settings(group), _per_sample(data, group)
    ci = f"[{data.rules.confidence:.0%} CI]"
    headers = ("setting", "p50 (ms)", "p99 (ms)", "samples/s", f"p50 change {ci}",
               f"samples/s change {ci}", "verdict p50", "verdict samples/s",
               "CPU per inference (ms)", *(["CPU per sample (ms)"] if per_sample else []),
               "cold start (ms)", "peak RSS (MiB)", "parity")
    rows = []
    for cell in group.cells:
        n, ref = cell_numbers(data, cell), cell is group.reference
        point = functools.partial(within_point, data, group, cell)
        rows.append([code(settings[cell.id]) + (" (reference)" if ref else ""),
                     fmt_ms(point("p50")), fmt_ms(point("p99")), fmt_rate(point("throughput")),
                     *_within_changes(group.verdicts.get(cell.id), data.rules.equivalence),
                     fmt_number(n["cpu_per_inference_ms"], ".3g"),
                     *([fmt_number(n["cpu_per_sample_ms"], ".3g")] if per_sample else []),
                     fmt_number(n["cold_start_ms"], ".0f"), fmt_number(n["peak_rss_mib"], ".0f"),
                     "reference" if ref else _within_parity_text(group.parity.get(cell.id))])
    return table(headers, rows)


def _within_changes(v: Verdict | None, equivalence: float) -> list[Any]:
    """p50 change, samples/s change, and the verdict word of each (with its settling round)."""
    if v is None:
        return ["reference", "reference", None, None]
    if v.verdict == INVALID:
        return [None, None, f"**{INVALID}**", f"**{INVALID}**"]
    return [fmt_change(v, "p50"), fmt_change(v, "throughput"), outcome_cell(v.p50, equivalence),
            outcome_cell(v.ratios.get("throughput"), equivalence)]


def _within_parity_text(p: CellParity | None) -> str | None:
    if p is None:
        return None
    how = " (matched by position)" if p.matched_by_position else ""
    if p.status == "pass":
        return f"pass{how}"
    if p.status == "fail":
        return f"**FAIL**{how}: {md(p.reason)}"
    return md(p.reason) if p.reason == BATCH_DIFFERS else f"missing: {md(p.reason)}"


def _per_sample(data: RunData, group: WithinGroup) -> bool:
    return any(samples_per_request(c, data.results.get(c.id) or {}) > 1 for c in group.cells)


def within_answer(data: RunData, group: WithinGroup) -> list[str]:
    """The group's answer from its table's numbers: the highest-throughput and the
    lowest-latency setting; cells without valid numbers are left out, saying why."""
    names, ref = within_settings(group), group.reference
    ref_ok = data.validity.get(ref.id)
    if ref_ok is None or not ref_ok.valid:
        why = "; ".join(ref_ok.reasons) if ref_ok else "no result"
        return [f"No answer: the reference {code(names[ref.id])} has no valid numbers "
                f"({md(why)})."]
    invalid = [c for c in group.cells[1:] if group.verdicts[c.id].verdict == INVALID]
    valid = [c for c in group.cells if c.id not in {i.id for i in invalid}]
    lines = [winner_sentence(data, group, names, valid, m) for m in ("throughput", "p50")]
    if invalid:
        lines.append("Left out: " + "; ".join(
            f"{code(names[c.id])} (invalid: {md('; '.join(group.verdicts[c.id].reasons))})"
            for c in invalid) + ".")
    return lines


# metric -> (how the answer starts, which end wins, the other metric quoted beside it)
_WINNERS = {"throughput": ("Highest throughput", max, "p50"),
            "p50": ("Lowest latency", min, "throughput")}


def _number(metric: str, value: float | None) -> str:
    return str(fmt_rate(value) if metric == "throughput" else fmt_ms(value))


def _amount(metric: str, value: float | None) -> str:
    """`812 samples/s`, `p50 4.90 ms`."""
    if metric == "throughput":
        return f"{_number(metric, value)} samples/s"
    return f"p50 {_number(metric, value)} ms"


def _pair(metric: str, first: float | None, second: float | None) -> str:
    """`p50 4.90 vs 2.50 ms`, `812 vs 400 samples/s`."""
    both = f"{_number(metric, first)} vs {_number(metric, second)}"
    return f"{both} samples/s" if metric == "throughput" else f"p50 {both} ms"


def _change_phrase(ci: RatioCI, rules: VerdictRules) -> str:
    """`+103.0% [95%: +95.0%, +111.0%], faster, settled at round 8 of 40`: the comparison's
    estimate, interval and outcome (equivalent within ±5%, inconclusive: the highest number
    is then not a reliably higher one)."""
    word = str(outcome_word(ci.verdict, rules.equivalence)).strip("*")
    if ci.verdict == EQUIVALENT:
        word = f"equivalent within {band(rules.equivalence)}"
    look = settled_early(ci)
    word += f", settled at round {look} of {ci.planned}" if look and ci.planned else ""
    if not ci.bounded:
        return f"{fmt_pct(ci.ratio)}, no interval (too few rounds), {word}"
    if below_min_effect(ci, rules.min_effect):
        word += f": below the {rules.min_effect:.0%} that counts"
    return (f"{fmt_pct(ci.ratio)} [{rules.confidence:.0%}: {fmt_pct(ci.low)}, "
            f"{fmt_pct(ci.high)}], {word}")


def winner_sentence(data: RunData, group: WithinGroup, names: Mapping[str, str],
                    valid: Sequence[Cell], metric: str) -> str:
    """The highest-throughput (or lowest-latency) setting against the reference, or, when the
    reference wins, the runner-up against it: the table's numbers, interval and verdict."""
    head, pick, other = _WINNERS[metric]
    ref = group.reference

    def point(c: Cell) -> float:
        return within_point(data, group, c, metric) or math.nan

    ranked = [c for c in valid if math.isfinite(point(c))]
    best = pick(ranked, key=point)  # ties: the first in plan order
    rest = [c for c in ranked if c is not ref]
    if best is ref and not rest:
        return (f"{head}: {code(names[ref.id])} (the reference), {_amount(metric, point(ref))}; "
                "no other setting has valid numbers.")
    shown = pick(rest, key=point) if best is ref else best
    v = group.verdicts[shown.id]
    main, side = v.ratios[metric], v.ratios[other]
    change = _change_phrase(main, data.rules)
    if best is ref:
        return (f"{head}: {code(names[ref.id])} (the reference), {_amount(metric, main.base)}; "
                f"next {code(names[shown.id])}, {_amount(metric, main.cand)} ({change}), at "
                f"{_pair(other, side.base, side.cand)}.")
    return (f"{head}: {code(names[shown.id])}, {_amount(metric, main.cand)} against "
            f"{_number(metric, main.base)} for {code(names[ref.id])} ({change}), at "
            f"{_pair(other, side.cand, side.base)}.")


def _parity_sentence(group: WithinGroup, names: Mapping[str, str]) -> str | None:
    """Whether the settings compute what the reference computes: a faster setting that
    computes something else is no answer."""
    def listed(status: str) -> list[str]:
        return [f"{code(names[cid])} ({md(p.reason)})" if p.reason else code(names[cid])
                for cid, p in group.parity.items() if p.status == status]

    failed, skipped = listed("fail"), listed("missing")
    by_position = [code(names[cid]) for cid, p in group.parity.items() if p.matched_by_position]
    if failed:
        words = f"**Outputs differ** from the reference's: {', '.join(failed)}"
    elif len(skipped) < len(group.parity):
        how = f" ({', '.join(by_position)} matched by position)" if by_position else ""
        words = f"Outputs match the reference's{how}"
    else:
        return f"Outputs not compared: {', '.join(skipped)}." if skipped else None
    return words + (f"; not compared: {', '.join(skipped)}." if skipped else ".")


def _group_title(data: RunData, group: WithinGroup, strong: bool = True) -> str:
    host = f" on {md(group.host)}" if data.plan.multi_host and group.host else ""
    env = f"**{md(group.environment)}**" if strong else md(group.environment)
    return f"{env} / {md(group.network)}{host}"
