"""The upgrade-impact report of one run directory: report.md, results.json/csv, plots/.

Built from the run directory alone (resolved plan, results/, outputs/) and byte-for-byte
reproducible: no clock is read, keys and rows are sorted or in plan order, the bootstrap is
seeded per comparison (envmatrix.analysis.stats) and the figures are deterministic (envmatrix.report.plots).
Every user-controlled string (environment, workload and cell names, reasons, log tails) goes
through `md()` or a code fence before it reaches the markdown.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from envmatrix.analysis.decision import (
    COST_METRICS,
    Costs,
    Noise,
    cell_costs,
    change,
    cores_phrase,
    cost_ratios,
    noise,
)
from envmatrix.analysis.parity import CellParity, cell_parity
from envmatrix.analysis.stats import (
    CROSS_HOST_NOTE,
    FASTER,
    INVALID,
    NOISY_PREFIX,
    SLOWER,
    UNCHANGED,
    UNPAIRED,
    RatioCI,
    Validity,
    Verdict,
    VerdictRules,
    check_validity,
    compare_cells,
    is_baseline_cell,
    load_of,
    method_phrase,
    node_share,
    point_value,
    repeat_cv,
    repeat_latencies,
    rules_for,
    run_verdicts,
    too_few_note,
)
from envmatrix.config import expand
from envmatrix.report import plots
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import RunDir, atomic_write_bytes, atomic_write_text, open_run_dir
from envmatrix.rundir.plan import Cell, Environment, Plan, RunRecord
from envmatrix.rundir.results import load_results
from envmatrix.running.containers import reproduce_argv

TOO_FEW_PREFIX = "too few rounds"  # how stats.too_few_note words its note

REPORT_SCHEMA = "envmatrix.report/1"
DASH = "–"
PROVIDER_DISPLAY = {"cpu": "CPU", "openvino": "OpenVINO", "cuda": "CUDA",
                    "tensorrt": "TensorRT", "dnnl": "oneDNN", "rocm": "ROCm",
                    "coreml": "CoreML"}


# ---------------------------------------------------------------- loading a run


@dataclass(frozen=True)
class WithinGroup:
    """The cells of one network in one environment on one host, each compared with the
    first in plan order (the reference) by the verdicts' own procedure."""

    environment: str
    network: str
    host: str | None
    cells: tuple[Cell, ...]  # plan order; cells[0] is the reference
    verdicts: dict[str, Verdict]  # cell id -> against the reference (stats.compare_cells)
    parity: dict[str, CellParity]  # cell id -> outputs against the reference's

    @property
    def reference(self) -> Cell:
        return self.cells[0]


@dataclass
class RunData:
    """Everything the report says, computed once from a run directory."""

    run_dir: RunDir
    plan: Plan  # the plan the run used, read back typed (planfile.read_resolved)
    run: RunRecord  # what the run recorded beside it: id, images
    results: dict[str, dict[str, Any]]  # cell id -> result, plan order
    rules: VerdictRules
    validity: dict[str, Validity] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    parity: dict[str, CellParity] = field(default_factory=dict)  # candidate cell id ->
    costs: dict[str, Costs | None] = field(default_factory=dict)  # cell id ->
    # candidate cell id -> cost metric -> vs its baseline cell (decision.cost_ratios)
    cost_ratios: dict[str, dict[str, RatioCI]] = field(default_factory=dict)
    noise: dict[str, Noise | None] = field(default_factory=dict)  # cell id -> (noisy cells)
    within: list[WithinGroup] = field(default_factory=list)  # settings side by side

    @property
    def baseline(self) -> str:
        return self.plan.baseline

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self.plan.cells

    def verdict_of(self, cell_id: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.candidate == cell_id), None)


def load_run(path: Path, rules: VerdictRules | None = None) -> RunData:
    """Read a run directory and compute validity, verdicts and parity for every cell.

    Without `rules`, the verdict settings the run's plan recorded (matrix.yaml `verdict:`).
    """
    run_dir = open_run_dir(path)
    resolved = planfile.read_resolved(run_dir.resolved_path)
    results = {str(r["cell"]): r for r in load_results(run_dir, resolved)}
    rules = rules or rules_for(resolved.plan.verdict)
    data = RunData(run_dir, resolved.plan, resolved.run, results, rules)
    data.validity = {cid: check_validity(r, data.rules) for cid, r in results.items()}
    data.verdicts = run_verdicts(data.plan, results, data.rules)
    data.costs = {cid: cell_costs(r) for cid, r in results.items()}
    data.cost_ratios = {v.candidate: cost_ratios(v.baseline, results[v.baseline], v.candidate,
                                                 results[v.candidate], data.rules)
                        for v in data.verdicts if v.verdict != INVALID and v.baseline}
    data.noise = {cid: noise(r, data.costs[cid], data.rules.cv_warn) if data.validity[cid].valid
                  else None for cid, r in results.items()}
    for v in data.verdicts:
        if v.baseline and _both_ok(results, v.baseline, v.candidate):
            data.parity[v.candidate] = cell_parity(run_dir.path, v.baseline, v.candidate)
    data.within = within_groups(data)
    return data


BATCH_DIFFERS = "batch differs"  # CellParity.reason of cells whose outputs are not comparable


def within_groups(data: RunData) -> list[WithinGroup]:
    """Every (environment, network, host) with two or more cells, in plan order."""
    groups: dict[tuple[str, str, str | None], list[Cell]] = {}
    for c in data.cells:
        groups.setdefault((c.environment.id, c.workload.network_name, c.host), []).append(c)
    return [_within_group(data, key, cells) for key, cells in groups.items() if len(cells) > 1]


def _within_group(data: RunData, key: tuple[str, str, str | None],
                  cells: Sequence[Cell]) -> WithinGroup:
    # The cells of one environment run in the same interleaved rounds: compare_cells pairs
    # them round by round, exactly as a candidate is paired with its baseline cell.
    ref, others = cells[0], cells[1:]
    verdicts = {c.id: compare_cells(ref, c, data.results, data.rules) for c in others}
    parity = {c.id: _within_parity(data, ref, c) for c in others
              if _both_ok(data.results, ref.id, c.id)}
    return WithinGroup(*key, tuple(cells), verdicts, parity)


def _within_parity(data: RunData, ref: Cell, cell: Cell) -> CellParity:
    """Outputs against the reference's; another batch gives other output shapes by design."""
    if ref.workload.batch != cell.workload.batch:
        return CellParity(ref.id, cell.id, "missing", BATCH_DIFFERS)
    return cell_parity(data.run_dir.path, ref.id, cell.id)


def _both_ok(results: Mapping[str, Mapping[str, Any]], a: str, b: str) -> bool:
    return all((results.get(c) or {}).get("status") == "ok" for c in (a, b))


# ---------------------------------------------------------------- markdown helpers

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")


def md(text: Any) -> str:
    """Text safe inside a GitHub markdown paragraph or table cell (user-controlled names)."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\r\n|\r|\n", "<br>", s)


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


def fmt_change(v: Verdict, metric: str = "p50") -> str | None:
    ci = v.ratios.get(metric)
    if ci is None:
        return None
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return f"{fmt_pct(ci.ratio)} [no interval]"  # too few rounds: the notes say why
    return f"{fmt_pct(ci.ratio)} [{fmt_pct(ci.low)}, {fmt_pct(ci.high)}]"


def provider_name(short: str) -> str:
    return PROVIDER_DISPLAY.get(short, short)


def slug(text: str) -> str:
    """A file-name-safe, collision-free form of a user-controlled name (plot file names)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:60]
    if safe == text:
        return safe
    return f"{safe or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- summary


def _parity_phrase(p: CellParity | None) -> str:
    if p is None:
        return "outputs not compared (a cell has no numbers)"
    if p.status == "pass":
        return "outputs match"
    if p.status == "missing":
        return f"outputs not compared ({md(p.reason)})"
    return f"**OUTPUTS DIFFER** from the baseline ({md(p.reason)})"


def fmt_ratio(ratio: float | None) -> str | None:
    return None if ratio is None or not math.isfinite(ratio) else fmt_pct(ratio)


def fmt_bytes(size: float | None) -> str | None:
    return None if size is None else f"{size / 1e6:.0f} MB"


def _costs_of(data: RunData, cid: str | None) -> Costs | None:
    return data.costs.get(cid) if cid else None


def cost_changes(data: RunData, v: Verdict) -> dict[str, float | None]:
    """Candidate / baseline for CPU per inference, cold start and peak RSS (`cost_ratios`)."""
    ratios = data.cost_ratios.get(v.candidate, {})
    return {name: (ratios[name].ratio if name in ratios else None)
            for name, _key, _label in COST_METRICS}


def image_size(data: RunData, env_id: str) -> int | None:
    record = data.run.images.get(env_id)
    return record.size_bytes if record else None


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


SUMMARY_HEADERS = ("candidate", "workload", "provider", "p50 change [95% CI]",
                   "p99 change [95% CI]", "samples/s change [95% CI]", "CPU per inference",
                   "cold start", "peak RSS", "image size", "parity", "verdict p50 / p99",
                   "trust")


def verdict_words(word: str, tail: str | None, decided_by: str | None = "p50") -> str:
    """The verdict column: `**faster** / no significant change` (p50 / p99), or the
    samples/s verdict of two cells at different loads: `**faster** (samples/s)`."""
    if word.startswith("baseline"):
        return word
    if word == INVALID:
        return f"**{INVALID}**"
    shown = f"**{word}**" if word in (FASTER, SLOWER) else word
    if decided_by == "throughput":
        return f"{shown} (samples/s)"
    return f"{shown} / {tail}"


def summary_row(data: RunData, v: Verdict) -> list[Any]:
    costs = cost_changes(data, v)
    parity = data.parity.get(v.candidate)
    words = v.verdict if v.verdict == INVALID else verdict_words(v.verdict, v.tail_verdict,
                                                                 v.decided_by)
    return [md(candidate_name(data, v)), md(v.workload), md(provider_name(v.provider)),
            fmt_change(v, "p50"), fmt_change(v, "p99"), fmt_change(v, "throughput"),
            fmt_ratio(costs["cpu_per_inference"]),
            fmt_ratio(costs["cold_start"]), fmt_ratio(costs["peak_rss"]), _image_cell(data, v),
            "**FAIL**" if parity and parity.status == "fail" else
            (parity.status if parity else None), words, trust_word(data, v)]


def _group_verdicts(data: RunData) -> dict[tuple[str, str], list[Verdict]]:
    groups: dict[tuple[str, str], list[Verdict]] = {}
    for v in data.verdicts:
        groups.setdefault((candidate_name(data, v), v.provider), []).append(v)
    return groups


def candidate_name(data: RunData, v: Verdict) -> str:
    """The candidate's environment, with the knobs the plan varies in the words of the cell
    ids: `env (t2)`, `env (c2 load_config-throughput)`."""
    try:
        cell = data.plan.cell(v.candidate)
    except KeyError:
        return v.environment
    values = expand.knob_values(cell.knobs, cell.provider_options)
    shown = [expand.knob_part(name, values[name]) for name in knob_names(data.cells)
             if values.get(name) is not None]
    return f"{v.environment} ({' '.join(shown)})" if shown else v.environment


# What a verdict word says, by the metric that made it: per request (p50), or in samples/s
# for cells at different loads (more requests in flight trade latency for throughput).
_WORDS_ON = {"p50": {FASTER: "faster per request", SLOWER: "slower per request"},
             "throughput": {FASTER: "more samples/s", SLOWER: "fewer samples/s",
                            UNCHANGED: "no significant change in samples/s"}}


def _change_words(data: RunData, vs: Sequence[Verdict]) -> str:
    """"faster per request on cnn (-41%) and transformer (-43%)", grouped by verdict words;
    a verdict across loads in samples/s: "more samples/s on cnn (+10.4%, 2 in flight)"."""
    by_word: dict[str, list[str]] = {}
    for v in vs:
        ci = v.decided
        pct = f"{fmt_pct(ci.ratio)}" if ci is not None and math.isfinite(ci.ratio) else ""
        if v.decided_by == "throughput":
            pct = ", ".join(p for p in (pct, _in_flight(data, v)) if p)
        words = _WORDS_ON.get(v.decided_by, {}).get(v.verdict, v.verdict)
        by_word.setdefault(words, []).append(f"{md(v.workload)} ({pct})" if pct else
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
    tails = [f"{md(v.workload)} p99 {v.tail_verdict}" for v in valid
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
    rules = data.rules
    lines += ["", f"Verdicts: {verdict_methods(data.verdicts)} at alpha "
                  f"{1 - rules.confidence:.2g}: \"faster\" or \"slower\" only when the whole "
                  f"{rules.confidence:.0%} interval is on that side of no change and the estimate "
                  f"is beyond a {rules.min_effect:.0%} change; the same rule on p99 gives the "
                  f"tail verdict.{_load_rule(data)} CPU, cold start and memory changes: the same "
                  "estimate and interval on those figures, without a verdict (docs/report.md)."]
    return "\n".join(lines)


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


def verdict_methods(verdicts: Sequence[Verdict]) -> str:
    """Which test(s) the verdicts used, with how many cells each where they differ."""
    used = [v.method for v in verdicts if v.method]
    methods = list(dict.fromkeys(used)) or [UNPAIRED]
    if len(methods) == 1:
        return method_phrase(methods[0])
    return "; ".join(f"{method_phrase(m)} ({used.count(m)} cells)" for m in methods)


# ---------------------------------------------------------------- per-cell numbers

TABLE_HEADERS = ("environment", "provider", "nodes on provider (%)", "p50 (ms)", "p90 (ms)",
                 "p99 (ms)", "samples/s", "cores used", "CPU per inference (ms)",
                 "cold start (ms)", "first inference (ms)", "session creation (ms)",
                 "peak RSS (MiB)",
                 "p50 change [95% CI]", "p99 change [95% CI]", "verdict p50 / p99")


def _latency(result: Mapping[str, Any], key: str) -> float | None:
    if result.get("status") != "ok":
        return None
    return point_value(result, key)


def point_against(v: Verdict | None, result: Mapping[str, Any], metric: str) -> float | None:
    """The number a table shows for a cell compared in `v`: its point from that comparison
    (paired: its value corrected for the reference's drift, so the columns divide to the
    change), else the cell's own median (`point_value`)."""
    ci = v.ratios.get(metric) if v else None
    if ci is not None and ci.cand is not None and math.isfinite(ci.cand):
        return ci.cand
    return _latency(result, metric)


def shown_point(data: RunData, cell: Cell, metric: str) -> float | None:
    """The number the tables show for a cell against its baseline cell (`point_against`)."""
    return point_against(data.verdict_of(cell.id), data.results.get(cell.id) or {}, metric)


def samples_per_request(cell: Cell, result: Mapping[str, Any]) -> int:
    """Samples in one request: what the harness ran (`summary.batch`), else the plan's batch,
    else 1 (results written before batches existed)."""
    batch = (result.get("summary") or {}).get("batch") or cell.workload.batch
    return int(batch) if batch else 1


def scenario(cell: Cell, result: Mapping[str, Any]) -> str:
    """single-stream (one request in flight) or offline (several): as the harness recorded
    it, else from the cell's concurrency."""
    recorded = (result.get("summary") or {}).get("scenario")
    if recorded:
        return str(recorded)
    return "offline" if load_of(cell) > 1 else "single-stream"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _ci(v: Verdict | None, metric: str) -> tuple[Any, Any, Any, Any]:
    ci = v.ratios.get(metric) if v else None
    if ci is None:
        return None, None, None, None
    return ci.ratio, ci.low, ci.high, ci.p_value


def cell_numbers(data: RunData, cell: Cell) -> dict[str, Any]:
    """The numbers of one cell, as numbers: results.csv and results.json carry them as is,
    the tables format them."""
    cid = cell.id
    res = data.results.get(cid) or {}
    ok = res.get("status") == "ok"
    costs = data.costs.get(cid)
    v = data.verdict_of(cid)
    p50, p99, rate = _ci(v, "p50"), _ci(v, "p99"), _ci(v, "throughput")
    rss = costs.peak_rss_bytes if costs else None
    size = image_size(data, cell.environment.id)
    cpu = costs.cpu_per_inference_s if costs else None
    samples = shown_point(data, cell, "throughput") if ok else None
    wl = cell.workload
    return {
        "cell": cid, "environment": cell.environment.id, "workload": wl.name,
        "network": wl.network_name, "provider": cell.provider,
        **({"host": cell.host} if data.plan.multi_host else {}),
        "backend": wl.backend, "batch": wl.batch, "concurrency": cell.knobs.concurrency,
        "scenario": scenario(cell, res),
        "status": res.get("status"),
        "valid": data.validity[cid].valid if cid in data.validity else False,
        "p50_ms": _ms(shown_point(data, cell, "p50")), "p90_ms": _ms(_latency(res, "p90")),
        "p99_ms": _ms(shown_point(data, cell, "p99")), "mean_ms": _ms(_latency(res, "mean")),
        "p50_own_ms": _ms(_latency(res, "p50")),
        # samples per second; throughput_per_s: the same number under its older name
        "samples_per_s": samples, "throughput_per_s": samples,
        "cores_used": costs.cores_used if costs else None,
        "cpu_per_inference_ms": _ms(cpu),
        "cpu_per_sample_ms": _ms(None if cpu is None else cpu / samples_per_request(cell, res)),
        "cold_start_ms": _ms(costs.cold_start_s) if costs else None,
        "first_inference_ms": _ms(costs.first_inference_s) if costs else None,
        "session_create_ms": _ms(costs.session_create_s) if costs else None,
        "peak_rss_mib": rss / 2**20 if rss else None,
        "image_size_mb": size / 1e6 if size else None,
        "cv": repeat_cv(res) if ok else None,
        "p50_ratio": p50[0], "p50_low": p50[1], "p50_high": p50[2], "p50_p_value": p50[3],
        "p99_ratio": p99[0], "p99_low": p99[1], "p99_high": p99[2], "p99_p_value": p99[3],
        "throughput_ratio": rate[0], "throughput_low": rate[1], "throughput_high": rate[2],
        "method": v.method if v else None,
        "units_base": v.p50.n_base if v and v.p50 else None,
        "units_cand": v.p50.n_cand if v and v.p50 else None,
        **_cost_columns(data, cid),
        "verdict": _verdict_word(data, cid, v), "tail_verdict": v.tail_verdict if v else None,
        "verdict_on": v.decided_by if v else None,
        "parity": data.parity[cid].status if cid in data.parity else None,
        "noisy": bool(data.noise.get(cid)),
        "node_share": node_share(res) if ok else None,
        **knob_fields(data.cells, cell),
    }  # fmt: skip


def knob_names(cells: Sequence[Cell]) -> list[str]:
    """Settings the plan varies (threads, session.*, provider_options.*): those that differ
    between cells of one environment, workload and provider, as in the cell ids."""
    return list(_knob_names(tuple(cells)))


@functools.lru_cache(maxsize=8)  # every row of results.csv asks for the same plan's names
def _knob_names(cells: tuple[Cell, ...]) -> tuple[str, ...]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        key = (c.environment.id, c.workload.name, c.provider)
        groups.setdefault(key, []).append(expand.knob_values(c.knobs, c.provider_options))
    return tuple(expand.knob_order(n for values in groups.values()
                                   for n in expand.varied_knobs(values)))


def knob_fields(cells: Sequence[Cell], cell: Cell) -> dict[str, Any]:
    """One column per varied setting (results.csv/json, tables); null: the default."""
    values = expand.knob_values(cell.knobs, cell.provider_options)
    return {name: _knob_text(values.get(name)) for name in knob_names(cells)}


def _knob_text(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def with_knob_columns(cells: Sequence[Cell], headers: Sequence[str],
                      rows: list[list[Any]]) -> tuple[Sequence[str], list[list[Any]]]:
    """Headers and rows with a column per varied setting after `provider` (none: as given)."""
    names = knob_names(cells)
    if not names:
        return list(headers), rows
    values = [[md("default" if v is None else str(v).lower() if isinstance(v, bool) else v)
               for v in knob_fields(cells, c).values()] for c in cells]
    at = list(headers).index("provider") + 1
    return ([*headers[:at], *names, *headers[at:]],
            [[*row[:at], *extra, *row[at:]] for row, extra in zip(rows, values)])


def _cost_columns(data: RunData, cid: str) -> dict[str, float | None]:
    """`<metric>_ratio`, `_low`, `_high` of each cost metric against the baseline."""
    ratios = data.cost_ratios.get(cid, {})
    out: dict[str, float | None] = {}
    for name, _key, _label in COST_METRICS:
        ci = ratios.get(name)
        out.update({f"{name}_ratio": ci.ratio if ci else None,
                    f"{name}_low": ci.low if ci else None,
                    f"{name}_high": ci.high if ci else None})
    return out


def _verdict_word(data: RunData, cid: str, verdict: Verdict | None) -> str:
    if verdict is not None:
        return verdict.verdict
    valid = data.validity.get(cid)
    return "baseline" if valid and valid.valid else "baseline (invalid)"


def _fmt(value: float | None, spec: str) -> str | None:
    return None if value is None or not math.isfinite(value) else format(value, spec)


def _table_cells(data: RunData, cell: Cell) -> list[Any]:
    n = cell_numbers(data, cell)
    v = data.verdict_of(cell.id)
    baseline = n["verdict"].startswith("baseline")
    verdict = verdict_words(n["verdict"], n["tail_verdict"], n["verdict_on"])
    return [md(n["environment"]), md(provider_name(n["provider"])),
            _fmt(None if n["node_share"] is None else 100 * n["node_share"], ".0f"),
            fmt_ms(shown_point(data, cell, "p50")),
            _fmt(n["p90_ms"], ".3g"), _fmt(n["p99_ms"], ".3g"),
            _fmt(n["samples_per_s"], ".1f"), _fmt(n["cores_used"], ".2f"),
            _fmt(n["cpu_per_inference_ms"], ".3g"), _fmt(n["cold_start_ms"], ".0f"),
            _fmt(n["first_inference_ms"], ".3g"), _fmt(n["session_create_ms"], ".3g"),
            _fmt(n["peak_rss_mib"], ".0f"),
            "baseline" if baseline else (fmt_change(v, "p50") if v else None),
            None if baseline else (fmt_change(v, "p99") if v else None), verdict]


def networks(data: RunData) -> list[str]:
    """The networks of the plan in plan order: a workload declared with several backends or
    batch sizes is one network of several workloads (`Workload.network_name`)."""
    return list(dict.fromkeys(c.workload.network_name for c in data.cells))


def network_cells(data: RunData, network: str) -> list[Cell]:
    return [c for c in data.cells if c.workload.network_name == network]


def section_network(data: RunData, network: str, plot_files: Sequence[str]) -> str:
    """## Workload <network>: every cell of the network's workloads, one table."""
    cells = network_cells(data, network)
    rows = [_table_cells(data, c) for c in cells]
    headers, rows = with_host_column(data, cells, rows)
    headers, rows = with_knob_columns(cells, headers, rows)
    headers, rows = with_workload_columns(cells, headers, rows)
    lines = [f"## Workload {md(network)}", ""]
    names = list(dict.fromkeys(c.workload.name for c in cells))
    if names != [network]:
        lines += [f"Network {md(network)}, as workloads {', '.join(md(n) for n in names)}.", ""]
    lines += [table(headers, rows), ""]
    lines += [f"![{md(Path(p).stem)}]({p})" for p in plot_files]
    return "\n".join(lines)


WORKLOAD_FIELDS = ("backend", "batch")  # what tells the workloads of one network apart


def varied_workload_fields(cells: Sequence[Cell]) -> list[str]:
    return [f for f in WORKLOAD_FIELDS if len({getattr(c.workload, f) for c in cells}) > 1]


def with_workload_columns(cells: Sequence[Cell], headers: Sequence[str],
                          rows: list[list[Any]]) -> tuple[Sequence[str], list[list[Any]]]:
    """A backend and/or batch column after `provider` where the cells' workloads differ in
    them (several workloads of one network); none: as given."""
    names = varied_workload_fields(cells)
    if not names:
        return list(headers), rows
    at = list(headers).index("provider") + 1
    values = [[md(getattr(c.workload, f) or "default") for f in names] for c in cells]
    return ([*headers[:at], *names, *headers[at:]],
            [[*row[:at], *extra, *row[at:]] for row, extra in zip(rows, values)])


def setting_parts(cells: Sequence[Cell], cell: Cell,
                  fields: Sequence[str] = ("backend", "batch", "provider")) -> list[str]:
    """What sets a cell apart among `cells`, as short words: `torch`, `b8`, `openvino`,
    then the knobs varied among its workload's cells on its provider, as in cell ids (`c2`,
    `load_config-throughput`; provider options and session settings belong to one provider
    and one backend, so a cpu cell is not "load_config default" next to an OpenVINO one)."""
    parts = []
    varied = [f for f in fields if len({_field(c, f) for c in cells}) > 1]
    for f in varied:
        parts.append(_setting_word(f, _field(cell, f)))
    values = [expand.knob_values(c.knobs, c.provider_options) for c in cells
              if (c.workload.name, c.provider) == (cell.workload.name, cell.provider)]
    own = expand.knob_values(cell.knobs, cell.provider_options)
    # a knob the cell leaves unset is the runtime's default: not a word of its own here
    parts += [expand.knob_part(name, own[name]) for name in expand.varied_knobs(values)
              if own.get(name) is not None]
    return parts


def setting_diff(cell: Cell, ref: Cell) -> list[str]:
    """What differs in a cell from a reference cell, as `setting_parts` words: `torch`, `b8`,
    `c2 load_config-throughput`. Provider options are compared only on one provider and
    session settings only on one backend (they belong to them)."""
    fields = [f for f in ("backend", "batch", "provider") if _field(cell, f) != _field(ref, f)]
    parts = [_setting_word(f, _field(cell, f)) for f in fields]
    own = expand.knob_values(cell.knobs, cell.provider_options)
    theirs = expand.knob_values(ref.knobs, ref.provider_options)
    for name in expand.knob_order(set(own) | set(theirs)):
        if (own.get(name) == theirs.get(name)
                or (name.startswith("provider_options.") and "provider" in fields)
                or (name.startswith("session.") and "backend" in fields)):
            continue
        value = own.get(name)
        parts.append(f"{_knob_label(name)} default" if value is None
                     else expand.knob_part(name, value))
    return parts


def _knob_label(name: str) -> str:
    """`num_of_threads` for provider_options.num_of_threads, as in cell ids."""
    return name.split(".", 1)[1] if name.startswith("provider_options.") else name


def _field(cell: Cell, name: str) -> Any:
    return cell.provider if name == "provider" else getattr(cell.workload, name)


def _setting_word(name: str, value: Any) -> str:
    if name == "backend":
        return dict(expand.RUNTIME_TAGS).get(value, value)
    if name == "batch":
        return "batch default" if value is None else f"b{value}"
    return expand.provider_slug(value)


# ---------------------------------------------------------------- within each environment


def code(text: str) -> str:
    """A setting's words as inline code; text outside the id alphabet is escaped instead."""
    return f"`{text}`" if re.fullmatch(r"[A-Za-z0-9._=+/ -]+", text) else md(text)


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


def within_point(data: RunData, group: WithinGroup, cell: Cell, metric: str) -> float | None:
    """A cell's number in its group's table: from its comparison with the reference
    (`point_against`), the reference's own median for the reference."""
    return point_against(group.verdicts.get(cell.id), data.results.get(cell.id) or {}, metric)


def _word(ci: RatioCI | None) -> str | None:
    if ci is None:
        return None
    return f"**{ci.verdict}**" if ci.verdict in (FASTER, SLOWER) else ci.verdict


def _within_changes(v: Verdict | None) -> list[Any]:
    """p50 change, samples/s change, and the verdict word of each."""
    if v is None:
        return ["reference", "reference", None, None]
    if v.verdict == INVALID:
        return [None, None, f"**{INVALID}**", f"**{INVALID}**"]
    return [fmt_change(v, "p50"), fmt_change(v, "throughput"), _word(v.p50),
            _word(v.ratios.get("throughput"))]


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
                     *_within_changes(group.verdicts.get(cell.id)),
                     _fmt(n["cpu_per_inference_ms"], ".3g"),
                     *([_fmt(n["cpu_per_sample_ms"], ".3g")] if per_sample else []),
                     _fmt(n["cold_start_ms"], ".0f"), _fmt(n["peak_rss_mib"], ".0f"),
                     "reference" if ref else _within_parity_text(group.parity.get(cell.id))])
    return table(headers, rows)


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


def _change_phrase(ci: RatioCI, confidence: float) -> str:
    """`+103.0% [95%: +95.0%, +111.0%], faster`: the comparison's estimate, interval, verdict."""
    word = ci.verdict if ci.verdict in (FASTER, SLOWER) else "no significant difference"
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return f"{fmt_pct(ci.ratio)}, no interval (too few rounds), {word}"
    return f"{fmt_pct(ci.ratio)} [{confidence:.0%}: {fmt_pct(ci.low)}, {fmt_pct(ci.high)}], {word}"


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
    change = _change_phrase(main, data.rules.confidence)
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


def _group_title(data: RunData, group: WithinGroup, strong: bool = True) -> str:
    host = f" on {md(group.host)}" if data.plan.multi_host and group.host else ""
    env = f"**{md(group.environment)}**" if strong else md(group.environment)
    return f"{env} / {md(group.network)}{host}"


def section_within(data: RunData) -> str:
    """## Within each environment: the settings of one network side by side, each against
    the first, by the verdicts' procedure, with the answer below each table."""
    verdicts = [v for g in data.within for v in g.verdicts.values()]
    lines = ["## Within each environment", "",
             "The cells of one network in one environment (backends, batch sizes, providers, "
             "knobs), each against the first in plan order (the reference), by the verdicts' "
             f"own procedure: {verdict_methods(verdicts)}. samples/s: samples per second "
             "(requests completed x batch / wall time of the timed loop). Parity: outputs "
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


def with_host_column(data: RunData, cells: Sequence[Cell], rows: list[list[Any]]
                     ) -> tuple[Sequence[str], list[list[Any]]]:
    """A host column after the environment when the plan has several hosts, and a marker on
    each verdict whose baseline cell ran on another machine."""
    if not data.plan.multi_host:
        return TABLE_HEADERS, rows
    out = []
    for cell, row in zip(cells, rows):
        v = data.verdict_of(cell.id)
        if v is not None and CROSS_HOST_NOTE in v.notes:
            row = [*row[:-1], f"{row[-1]} (cross-host)"]
        out.append([row[0], md(cell.host or ""), *row[1:]])
    return (TABLE_HEADERS[0], "host", *TABLE_HEADERS[1:]), out


def host_rows(data: RunData) -> list[list[Any]]:
    """One row per host: what its engine said (run.hosts) and the CPU its cells saw."""
    rows = []
    for host in data.plan.hosts:
        record = data.run.hosts.get(host.name) or {}
        fp = record.get("fingerprint") or {}
        cpu = next(((r.get("fingerprint") or {}).get("cpu") or {} for c in data.cells
                    if c.host == host.name and (r := data.results.get(c.id) or {})
                    .get("fingerprint")), {})  # fmt: skip
        memory = fp.get("memory_bytes")
        rows.append([md(host.name), md(host.address), md(fp.get("engine_version") or ""),
                     md(" / ".join(str(x) for x in (fp.get("os"), fp.get("kernel")) if x)),
                     md(cpu.get("model") or fp.get("arch") or ""), fp.get("cpus"),
                     f"{memory / 2**30:.1f} GiB" if memory else None,
                     md(", ".join(fp.get("runtimes") or [])),
                     md(record.get("unreachable") or "")])
    return rows


def section_hosts(data: RunData) -> str:
    """## Hosts: the machines that measured, so a cross-host comparison can be judged."""
    headers = ("host", "address", "engine", "OS / kernel", "CPU", "cores", "memory",
               "runtimes", "unreachable")
    return "\n".join(["## Hosts", "", "Verdicts between cells of different hosts compare "
                      "different machines (marked cross-host).", "",
                      table(headers, host_rows(data))])


# ---------------------------------------------------------------- environments, failures


def env_fingerprint(data: RunData, env_id: str) -> dict[str, Any]:
    """The fingerprint of an environment's first cell that produced one."""
    for c in data.plan.cells_of(env_id):
        res = data.results.get(c.id) or {}
        if res.get("fingerprint"):
            return dict(res["fingerprint"])
    return {}


def _runtime(env: Environment, fp: Mapping[str, Any]) -> str | None:
    runtime = env.runtime()
    if runtime is None:
        return None
    pkgs = fp.get("packages") or {}
    name = runtime[0]
    return f"{name} {pkgs.get(name) or pkgs.get(name.replace('-', '_')) or '?'}"


def section_environments(data: RunData) -> str:
    rows = []
    for env in data.plan.environments:
        fp = env_fingerprint(data, env.id)
        name = md(env.id) + (" (baseline)" if env.id == data.baseline else "")
        rows.append([name, md(env.base.image), md((fp.get("python") or {}).get("version")
                                                  or env.python),
                     md((fp.get("os") or {}).get("pretty_name") or ""), md(fp.get("glibc") or ""),
                     md(_runtime(env, fp) or ""), md((fp.get("packages") or {}).get("numpy", "")),
                     md(", ".join(fp.get("providers_available") or []))])
    headers = ("environment", "base image", "Python", "OS", "glibc", "runtime", "numpy",
               "providers available")
    return "\n".join(["## Environments", "", table(headers, rows)])


def section_problems(data: RunData) -> str:
    """Every cell without valid numbers, with status and reasons; a log tail shown once.

    The cells of an environment whose build failed share one build log: it is shown once,
    with the cells listed under it, and the reason is the failing tool's own words.
    """
    bad = [(cid, res) for cid, res in data.results.items() if not data.validity[cid].valid]
    lines = ["## Cells without valid numbers", ""]
    if not bad:
        return "\n".join(lines + ["Every cell produced valid numbers."])
    rows = [[md(cid), md(res.get("status")), md("; ".join(data.validity[cid].reasons))]
            for cid, res in bad]
    lines += [table(("cell", "status", "reasons"), rows), ""]
    builds: dict[str, list[str]] = {}
    for cid, res in bad:
        if res.get("status") == "build_failed":
            builds.setdefault(str(res.get("environment")), []).append(cid)
        elif res.get("log_tail"):
            lines += [details(f"log tail: {md(cid)}", fence(str(res["log_tail"]))), ""]
    for env_id, cids in builds.items():
        first = data.results[cids[0]]
        cells = ", ".join(md(c) for c in cids)
        body = f"Cells: {cells}\n\n" + fence(str(first.get("log_tail") or "no log recorded"))
        lines += [details(f"build log of {md(env_id)}: {md(first.get('reason'))}", body), ""]
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- parity


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


def section_parity(data: RunData) -> str:
    lines = ["## Output parity", "",
             "Each candidate's first-inference outputs against the baseline's, on identical "
             "inputs. Tolerances by dtype are in docs/report.md.", ""]
    if not data.parity:
        return "\n".join(lines + ["No pair of cells had outputs to compare."])
    lines += parity_tables(data.parity, first_column="candidate")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- provenance


def cpu_flags_diff(base: Iterable[str], cand: Iterable[str]) -> str:
    b, c = set(base), set(cand)
    if b == c:
        return f"same ({len(b)} flags)"
    added = " ".join(f"+{f}" for f in sorted(c - b))
    removed = " ".join(f"-{f}" for f in sorted(b - c))
    return " ".join(x for x in (added, removed) if x)


def _active_providers(data: RunData, cell: Cell) -> str:
    active = ((data.results.get(cell.id) or {}).get("provider") or {}).get("active") or ["?"]
    return f"{cell.provider}: {', '.join(active)}"


def provenance_items(data: RunData, env_id: str) -> list[tuple[str, str]]:
    """(item, value) pairs that identify what an environment ran on, in a fixed order."""
    env = data.plan.environment(env_id)
    fp = env_fingerprint(data, env_id)
    image = data.run.images.get(env_id)
    cpu = fp.get("cpu") or {}
    pkgs = fp.get("packages") or {}
    active = sorted({_active_providers(data, c) for c in data.plan.cells_of(env_id)})
    return [
        ("base image", env.base.image),
        ("image id", str((image.image_id if image else None)
                         or (fp.get("image") or {}).get("id") or "?")),
        ("Python", str((fp.get("python") or {}).get("version") or env.python)),
        ("OS", str((fp.get("os") or {}).get("pretty_name") or "?")),
        ("kernel", str((fp.get("os") or {}).get("kernel") or "?")),
        ("glibc", str(fp.get("glibc") or "?")),
        ("runtime", str(_runtime(env, fp) or "?")),
        ("numpy", str(pkgs.get("numpy") or "?")),
        ("providers active", "; ".join(active) or "?"),
        ("CPU model", str(cpu.get("model") or "?")),
        ("cores visible", str(cpu.get("cores_visible") or "?")),
    ]


def section_provenance(data: RunData) -> str:
    lines = ["## Provenance", "", "What differs between the baseline and each candidate "
             "environment (from the fingerprints the harness recorded inside each image).", ""]
    base_items = dict(provenance_items(data, data.baseline))
    base_flags = (env_fingerprint(data, data.baseline).get("cpu") or {}).get("flags") or []
    for env in data.plan.environments:
        if env.id == data.baseline:
            continue
        lines += [f"### {md(env.id)} vs {md(data.baseline)}", ""]
        fingerprint = env_fingerprint(data, env.id)
        if not fingerprint:
            lines += ["No fingerprint: no cell of this environment reached the harness.", ""]
            continue
        rows = []
        for item, value in provenance_items(data, env.id):
            same = value == base_items.get(item)
            rows.append([item, md(base_items.get(item)), md(value),
                         "same" if same else "**differs**"])
        flag_diff = cpu_flags_diff(base_flags, (fingerprint.get("cpu") or {}).get("flags") or [])
        rows.append(["CPU flags seen", DASH, md(flag_diff),
                     "same" if flag_diff.startswith("same") else "**differs**"])
        lines += [table(("", "baseline", "candidate", ""), rows), ""]
    return "\n".join(lines).rstrip()


def docker_run_command(data: RunData, cell: Cell) -> list[str]:
    """The `docker run` of one cell, from what its result recorded (envmatrix.running.containers)."""
    host = (data.results.get(cell.id) or {}).get("host") or {}
    return reproduce_argv(data.run_dir.run_id, cell.id, host, data.plan.measure)


def shell_join(argv: Sequence[str]) -> str:
    """shlex.join, except that "$PWD/..." stays expandable by the shell."""
    return " ".join(f'"{a}"' if a.startswith("$PWD/") else shlex.quote(a) for a in argv)


def section_reproduce(data: RunData) -> str:
    lines = ["## How to reproduce", "",
             "Rebuild and measure one environment with the same matrix, or rerun one cell's "
             "container by hand from inside the run directory (the same flags as the runner; "
             "first `mkdir -p scratch/<cell> && chmod 777 scratch/<cell>`).", ""]
    source = str(data.plan.source)
    for env in data.plan.environments:
        cell = next(iter(data.plan.cells_of(env.id)), None)
        nox = shlex.join(["nox", "-s", "matrix", "--", "--matrix", source, "--only", env.id])
        body = [f"### {md(env.id)}", "", fence(nox, "sh")]
        host = (data.results.get(cell.id) or {}).get("host") or {} if cell else {}
        if cell is not None and host.get("image_id") and host.get("command"):
            body += ["", f"Cell {md(cell.id)}:", "",
                     fence(shell_join(docker_run_command(data, cell)), "sh")]
        lines += body + [""]
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- measured amount, appendix


def measured_totals(data: RunData) -> dict[str, float]:
    processes = iterations = 0
    wall = cpu = 0.0
    for res in data.results.values():
        for rep in res.get("repeats") or []:
            processes += 1
            iterations += len(rep.get("latencies_s") or [])
            wall += float(rep.get("measure_wall_s") or sum(rep.get("latencies_s") or []))
            cpu += float(rep.get("cpu_time_s") or 0.0)
    return {"processes": processes, "iterations": iterations, "measured_s": wall, "cpu_s": cpu}


def section_measured(data: RunData) -> str:
    m = data.plan.measure
    t = measured_totals(data)
    rows = []
    for cid, res in data.results.items():
        reps = res.get("repeats") or []
        cv = repeat_cv(res)
        rows.append([md(cid), str(len(reps)),
                     " / ".join(str(len(r.get("latencies_s") or [])) for r in reps) or None,
                     f"{sum(float(r.get('measure_wall_s') or 0) for r in reps):.1f}" if reps
                     else None, f"{cv:.1%}" if cv is not None else None])
    return "\n".join([
        "## How much was measured", "",
        f"Settings: {m.repeats} fresh processes per cell, each {m.warmup} warm-up "
        f"iterations then at least {m.min_iterations} timed iterations and "
        f"{m.min_time_s} s. In all: {t['processes']} processes, {t['iterations']} timed "
        f"iterations, {t['measured_s']:.1f} s measured, {t['cpu_s']:.1f} s CPU time.", "",
        table(("cell", "repeats", "iterations per repeat", "measured (s)",
               "CV of repeat p50s"), rows)])


def section_appendix(data: RunData) -> str:
    lines = ["## Appendix: fingerprints", ""]
    for env in data.plan.environments:
        fp = env_fingerprint(data, env.id)
        body = fence(json.dumps(fp, indent=2, sort_keys=True), "json") if fp else "none recorded"
        lines += [details(f"{md(env.id)}", body), ""]
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- files


def _plot_series(data: RunData, network: str) -> list[plots.Series]:
    """The figures' data of every cell of one network, in plan order."""
    series = []
    cells = network_cells(data, network)
    for c in cells:
        res = data.results.get(c.id) or {}
        lat = [x * 1000.0 for rep in repeat_latencies(res) for x in rep.tolist()]
        verdict = data.verdict_of(c.id)
        ok = res.get("status") == "ok" and bool(lat)
        base = is_baseline_cell(data.plan, c)
        cost = data.cost_ratios.get(c.id, {}) if ok else {}
        series.append(plots.Series(
            label=plot_label(cells, c) + (" (baseline)" if base else ""),
            latencies_ms=lat if ok else [],
            throughput_per_s=shown_point(data, c, "throughput") if ok else None,
            p50=verdict.ratios.get("p50") if verdict else None,
            p99=verdict.ratios.get("p99") if verdict else None,
            baseline=base,
            verdict=verdict.verdict if verdict else None,
            round_p50_ms=plots.round_p50s_ms(res) if ok else {},
            process_p50_ms=plots.process_p50s_ms(res) if ok else [],
            by_round=plots.by_round(res),
            cost=cost))
    return series


def plot_label(cells: Sequence[Cell], cell: Cell) -> str:
    """`<environment> / <provider>`, then what sets the cell apart among the network's cells
    of its environment (`torch`, `b8`, `t2`): a network that is one workload without knob
    variants keeps the labels, and so the figures, it always had."""
    own_env = [c for c in cells if c.environment.id == cell.environment.id]
    parts = setting_parts(own_env, cell, fields=WORKLOAD_FIELDS)
    return " / ".join([cell.environment.id, provider_name(cell.provider), *parts])


def plot_figures(data: RunData, network: str) -> dict[str, plots.Figure]:
    """The figures of one network by their paths relative to the run directory, in the
    order the report shows them: the answer (ratio, cost) first, then the detail. A network
    that is one workload keeps the file names of that workload."""
    series = _plot_series(data, network)
    name = slug(network)

    def title(what: str) -> str:
        return plots.title(network, what, data.baseline)

    figures = {}
    if any(s.p50 for s in series):
        figures[f"plots/{name}-ratio.png"] = plots.ratio_figure(
            title("latency change"), series, data.rules.min_effect, data.rules.confidence)
    if any(s.cost for s in series):
        figures[f"plots/{name}-cost.png"] = plots.cost_figure(title("cost change"), series)
    figures[f"plots/{name}-latency.png"] = plots.latency_figure(title("latency"), series)
    if any(s.round_p50_ms for s in series):
        figures[f"plots/{name}-rounds.png"] = plots.rounds_figure(title("p50 per round"),
                                                                  series)
    if any(s.throughput_per_s for s in series):
        figures[f"plots/{name}-throughput.png"] = plots.throughput_figure(
            title("throughput"), series)
    return figures


def write_plots(data: RunData, network: str) -> list[str]:
    """The figures of one network; their paths relative to the run directory."""
    figures = plot_figures(data, network)
    for rel, fig in figures.items():
        atomic_write_bytes(data.run_dir.path / rel, plots.png(fig))
    return list(figures)


def _csv_value(value: Any) -> Any:
    """Numbers as numbers (six significant digits), None as an empty field."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else ""
    return value


def results_csv(data: RunData) -> str:
    rows = [cell_numbers(data, c) for c in data.cells]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["cell"],
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buf.getvalue()


def results_document(data: RunData) -> dict[str, Any]:
    """results.json: every cell's result merged, with validity, verdicts and parity."""
    return {
        "schema": REPORT_SCHEMA,
        "run_id": data.run_dir.run_id,
        "baseline": data.baseline,
        "rules": asdict(data.rules),
        "cells": data.results,
        "validity": {cid: asdict(v) for cid, v in data.validity.items()},
        "verdicts": [asdict(v) for v in data.verdicts],
        "parity": {cid: asdict(p) for cid, p in data.parity.items()},
        "rows": [cell_numbers(data, c) for c in data.cells],
        "costs": {cid: asdict(c) if c else None for cid, c in data.costs.items()},
        "cost_ratios": {cid: {k: asdict(r) for k, r in ratios.items()}
                        for cid, ratios in data.cost_ratios.items()},
        "noise": {cid: asdict(n) if n else None for cid, n in data.noise.items()},
        "within": [{"environment": g.environment, "network": g.network, "host": g.host,
                    "reference": g.reference.id, "cells": [c.id for c in g.cells],
                    "verdicts": {cid: asdict(v) for cid, v in g.verdicts.items()},
                    "parity": {cid: asdict(p) for cid, p in g.parity.items()}}
                   for g in data.within],
    }


def render_markdown(data: RunData, plot_files: Mapping[str, Sequence[str]]) -> str:
    m, t = data.plan.measure, measured_totals(data)
    head = [f"# Upgrade-impact report: run {md(data.run_dir.run_id)}", "",
            f"Matrix {md(data.plan.source)}; baseline environment **{md(data.baseline)}**; "
            f"{len(data.cells)} cells in {len(data.plan.environments)} environments. Measured: "
            f"{m.round_count} interleaved rounds of {m.repeats_per_round} fresh process(es) "
            f"per cell, {t['processes']} processes and {t['iterations']} timed inferences in "
            f"all ({t['measured_s']:.0f} s timed)."]
    sections = ["\n".join(head), section_summary(data)]
    sections += [section_within(data)] if data.within else []
    sections += [section_network(data, n, plot_files.get(n, ())) for n in networks(data)]
    sections += [section_hosts(data)] if data.plan.hosts else []
    sections += [section_environments(data), section_problems(data), section_parity(data),
                 section_provenance(data), section_measured(data), section_reproduce(data),
                 section_appendix(data)]
    return "\n\n".join(sections) + "\n"


def _strict(obj: Any) -> Any:
    """NaN and infinities as null: results.json is strict JSON like every result file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _json_text(obj: Any) -> str:
    return json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def build_report(run_dir: Path, rules: VerdictRules | None = None) -> Path:
    """Write report.md, results.json, results.csv and plots/ into run_dir; report.md's path."""
    return write_report_files(load_run(run_dir, rules))


def write_report_files(data: RunData) -> Path:
    """build_report for a run already loaded (the CLI's gate reads the same RunData)."""
    plot_files = {n: write_plots(data, n) for n in networks(data)}
    atomic_write_text(data.run_dir.results_json, _json_text(results_document(data)))
    atomic_write_text(data.run_dir.results_csv, results_csv(data))
    atomic_write_text(data.run_dir.report_path, render_markdown(data, plot_files))
    return data.run_dir.report_path
