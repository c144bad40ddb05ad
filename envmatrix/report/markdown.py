"""Markdown and number formats every part of the report shares.

Every user-controlled string (environment, workload and cell names, reasons, log tails) goes
through `md()`, `code()` or a code fence before it reaches the markdown.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tabulate import tabulate

from envmatrix.analysis import sequential
from envmatrix.analysis.parity import CellParity
from envmatrix.analysis.rundata import settled_round
from envmatrix.analysis.stats import (
    EQUIVALENT,
    FASTER,
    INCONCLUSIVE,
    INVALID,
    PAIRED,
    PER_RUN,
    SLOWER,
    UNPAIRED,
    RatioCI,
    Verdict,
    VerdictRules,
    below_min_effect,
    method_phrase,
)

DASH = "–"
PROVIDER_DISPLAY = {"cpu": "CPU", "openvino": "OpenVINO", "cuda": "CUDA",
                    "tensorrt": "TensorRT", "dnnl": "oneDNN", "rocm": "ROCm",
                    "coreml": "CoreML"}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")


def md(text: Any) -> str:
    """Text safe inside a GitHub markdown paragraph or table cell (user-controlled names)."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\r\n|\r|\n", "<br>", s)


def code(text: str) -> str:
    """A setting's words as inline code; text outside the id alphabet is escaped instead."""
    return f"`{text}`" if re.fullmatch(r"[A-Za-z0-9._=+/ -]+", text) else md(text)


def fence(text: str, lang: str = "") -> str:
    """A fenced code block that no backtick run inside the text can close early."""
    runs = [len(m) for m in re.findall(r"`+", text)]
    ticks = "`" * max(3, max(runs, default=0) + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def details(summary: str, body: str) -> str:
    """A collapsed block (GitHub renders <details>); summary must already be escaped."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[DASH if c is None or c == "" else c for c in row] for row in rows]
    return tabulate(rows, headers=list(headers), tablefmt="github", disable_numparse=True)


def shell_join(argv: Sequence[str]) -> str:
    """shlex.join, except that "$PWD/..." stays expandable by the shell."""
    return " ".join(f'"{a}"' if a.startswith("$PWD/") else shlex.quote(a) for a in argv)


def fmt_ms(seconds: float | None) -> str | None:
    """Milliseconds with about three significant digits."""
    return None if seconds is None else _three_digits(seconds * 1000.0)


def fmt_rate(per_s: float | None) -> str | None:
    """Samples per second with about three significant digits."""
    return None if per_s is None or not math.isfinite(per_s) else _three_digits(per_s)


def _three_digits(x: float) -> str:
    digits = 0 if x >= 100 else 1 if x >= 10 else 2 if x >= 1 else 3
    return f"{x:.{digits}f}"


def fmt_pct(ratio: float) -> str:
    return f"{(ratio - 1.0) * 100:+.1f}%"


def fmt_ratio(ratio: float | None) -> str | None:
    return None if ratio is None or not math.isfinite(ratio) else fmt_pct(ratio)


def fmt_bytes(size: float | None) -> str | None:
    return None if size is None else f"{size / 1e6:.0f} MB"


def fmt_number(value: float | None, spec: str) -> str | None:
    """`value` in the format `spec`; None (a dash in tables) when missing or not finite."""
    return None if value is None or not math.isfinite(value) else format(value, spec)


def fmt_change(v: Verdict, metric: str = "p50") -> str | None:
    ci = v.ratios.get(metric)
    if ci is None:
        return None
    if not math.isfinite(ci.ratio):
        return None
    if not ci.bounded:
        return f"{fmt_pct(ci.ratio)} [no interval]"  # too few rounds: the notes say why
    return f"{fmt_pct(ci.ratio)} [{fmt_pct(ci.low)}, {fmt_pct(ci.high)}]"


def provider_name(short: str) -> str:
    return PROVIDER_DISPLAY.get(short, short)


def band(margin: float) -> str:
    """`±5%`: a margin as the report prints it."""
    return f"±{margin * 100:g}%"


def outcome_word(word: str | None, equivalence: float) -> str | None:
    """One of the four outcomes in a table cell: **faster**, **slower**, equivalent ±5%,
    inconclusive (and **invalid**)."""
    if word in (FASTER, SLOWER, INVALID):
        return f"**{word}**"
    if word == EQUIVALENT:
        return f"equivalent {band(equivalence)}"
    return word


def settled_early(ci: RatioCI | None) -> int | None:
    """The round a comparison settled at, when that was before its budget: the news a reader
    wants ("settled at round 8 of 40"). A comparison read at its last look says nothing more
    than the run's own "Measured: 40 rounds" does."""
    look = settled_round(ci)
    if look is None or ci is None or not ci.planned or look >= ci.planned:
        return None
    return look


def _at_round(ci: RatioCI | None) -> str:
    """` (round 16 of 40)` after a settled paired verdict; empty otherwise."""
    look = settled_early(ci)
    if look is None or ci is None:
        return ""
    return f" (round {look} of {ci.planned})"


def outcome_cell(ci: RatioCI | None, equivalence: float) -> str | None:
    """The word of one comparison with the round it settled at: `**faster** (round 8 of 40)`."""
    if ci is None:
        return None
    word = outcome_word(ci.verdict, equivalence)
    return f"{word}{_at_round(ci)}" if word else None


def measured_span(ci: RatioCI) -> str:
    """How much a comparison read: `40 rounds` (paired), `12 and 12 rounds` (unpaired)."""
    if ci.method == PAIRED:
        return f"{ci.look or ci.n_base} rounds"
    return f"{ci.n_base} vs {ci.n_cand} rounds"


def _interval_text(ci: RatioCI) -> str:
    return f"interval {fmt_pct(ci.low)} to {fmt_pct(ci.high)}"


def outcome_phrase(ci: RatioCI, rules: VerdictRules) -> str:
    """One comparison in a reader's words: the outcome, the interval (or the bound reached)
    and where it settled, e.g. "inconclusive: between -46.0% and +1.0% after 40 rounds: more
    rounds or a quieter machine needed"."""
    small = (f"{fmt_pct(ci.ratio)}, below the {rules.min_effect:.0%} that counts"
             if ci.bounded and below_min_effect(ci, rules.min_effect) else "")
    settled = settled_early(ci)
    where = f"; settled at round {settled} of {ci.planned}" if settled and ci.planned else ""
    if ci.verdict in (FASTER, SLOWER):
        return f"{ci.verdict} ({fmt_pct(ci.ratio)}, {_interval_text(ci)}{where})"
    if ci.verdict == EQUIVALENT:
        tail = f": {small}" if small else ""
        return (f"equivalent within {band(rules.equivalence)} ({_interval_text(ci)}{where})"
                f"{tail}")
    if ci.verdict == INCONCLUSIVE and not math.isfinite(ci.ratio):
        return "inconclusive: no usable values"
    if ci.verdict == INCONCLUSIVE and not ci.bounded:
        return (f"inconclusive: {fmt_pct(ci.ratio)}, but {measured_span(ci)} are too few for "
                "an interval: more rounds needed")
    if ci.verdict == INCONCLUSIVE:
        lead = f"{small}, " if small else ""
        return (f"inconclusive: {lead}between {fmt_pct(ci.low)} and {fmt_pct(ci.high)} after "
                f"{measured_span(ci)}: more rounds or a quieter machine needed")
    return str(ci.verdict)


def verdict_words(v: Verdict, equivalence: float) -> str:
    """The verdict column: `**faster** (round 8 of 40) / equivalent ±5%` (p50 / p99), or the
    samples/s verdict of two cells at different loads: `**faster** (samples/s)`."""
    if v.verdict == INVALID:
        return f"**{INVALID}**"
    shown = outcome_cell(v.decided, equivalence) or str(outcome_word(v.verdict, equivalence))
    if v.decided_by == "throughput":
        return f"{shown} (samples/s)"
    tail = outcome_cell(v.p99, equivalence) or outcome_word(v.tail_verdict, equivalence)
    return f"{shown} / {tail}"


def verdict_methods(verdicts: Sequence[Verdict], rules: VerdictRules | None = None) -> str:
    """Which test(s) the verdicts used, with how many cells each where they differ; paired,
    with the looks the rules plan."""
    used = [v.method for v in verdicts if v.method]
    methods = list(dict.fromkeys(used)) or [UNPAIRED]
    phrases = {m: procedure_phrase(m, rules) for m in methods}
    if len(methods) == 1:
        return phrases[methods[0]]
    return "; ".join(f"{phrases[m]} ({used.count(m)} cells)" for m in methods)


def procedure_phrase(method: str, rules: VerdictRules | None) -> str:
    """How a verdict was made, in words: paired with its looks, or unpaired."""
    if method != PAIRED:
        return method_phrase(method)
    head = ("the median of the per-round ratios (cells measured in interleaved rounds) with "
            "the sign test's interval")
    if rules is None or rules.budget is None:
        return f"{head}, read once after all rounds"
    looks = sequential.looks_for(rules.budget, rules.look_every)
    if len(looks) == 1:
        return f"{head}, read once after all {rules.budget} rounds"
    plan = sequential.design(looks, rules.level_alpha)
    shown = ", ".join(str(n) for n in looks[:-1]) + f" and {looks[-1]}"
    return (f"{head}, looked at after {shown} rounds and stopped at the first look that "
            f"settles it; each look reads its interval at {1 - plan.nominal:.1%} so that all "
            f"looks together keep the error rate")


def error_rate_phrase(rules: VerdictRules, comparisons: int, looks: bool = True) -> str:
    """Which error rate the verdicts hold, in a manager's words (`looks`: some comparison was
    read at several looks)."""
    alpha = rules.level_alpha
    if rules.error_rate == PER_RUN:
        return (f"per run: the {comparisons} comparison(s) with the baseline together are "
                f"wrong at most {alpha:.0%} of the time (Holm's method: each comparison is "
                "read at its own, stricter level, given in its note)")
    over = ", over all its looks together" if looks else ""
    return (f"per comparison: each verdict is wrong at most {alpha:.0%} of the time{over}; "
            "with many comparisons a few may be wrong by chance")


def _fmt_g(x: float | None) -> str | None:
    return None if x is None else f"{x:.3g}"


def parity_tables(parities: Mapping[str, CellParity], *, first_column: str,
                  sides: tuple[str, str] = ("baseline", "candidate")) -> list[str]:
    """Per output of each compared cell: differences, tolerances, result; worst elements.

    Shared by the report (candidate vs baseline) and compare (run B vs run A).
    """
    rows = []
    for cid, p in parities.items():
        if not p.outputs:
            rows.append([md(cid), DASH, None, None, None, None, None, None,
                         f"{p.status}: {md(p.reason)}"])
        for o in p.outputs:
            rows.append([md(cid), md(o.name), md(o.dtype), _fmt_g(o.max_abs), _fmt_g(o.max_rel),
                         None if o.cosine is None else f"{o.cosine:.6f}",
                         f"{o.rtol:.0e}" if o.rtol else "exact", f"{o.atol:.1e}" if o.atol else
                         "exact", "pass" if o.passed else f"**FAIL**: {md(o.reason)}"])
    headers = (first_column, "output", "dtype", "max abs diff", "max rel diff", "cosine",
               "rtol", "atol", "result")
    lines = [table(headers, rows), ""]
    for cid, p in parities.items():
        for o in p.outputs:
            if o.worst:
                worst = table(("index", *sides, "abs diff"),
                              [[str(list(w.index)), f"{w.baseline:.7g}", f"{w.candidate:.7g}",
                                f"{w.abs_diff:.3g}"] for w in o.worst])
                lines += [details(f"worst elements: {md(cid)} / {md(o.name)}", worst), ""]
    return lines
