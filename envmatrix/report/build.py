"""The upgrade-impact report of one run directory: report.md, results.json/csv, plots/.

Built from the run directory alone (resolved plan, results/, outputs/) and byte-for-byte
reproducible: no clock is read, keys and rows are sorted or in plan order, the verdict
procedure draws nothing at random (envmatrix.analysis.stats) and the figures are deterministic
(envmatrix.report.plots). This module puts the sections together and writes the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from envmatrix.analysis.rundata import (
    RunData,
    load_run,
    measured_totals,
    network_cells,
    networks,
    shown_point,
)
from envmatrix.analysis.stats import VerdictRules, is_baseline_cell, repeat_latencies
from envmatrix.report import plots
from envmatrix.report.exports import json_text, results_csv, results_document
from envmatrix.report.markdown import md, provider_name
from envmatrix.report.sections import (
    section_appendix,
    section_environments,
    section_hosts,
    section_measured,
    section_network,
    section_parity,
    section_problems,
    section_provenance,
    section_reproduce,
)
from envmatrix.report.summary import section_summary
from envmatrix.report.within import section_within
from envmatrix.rundir.idwords import WORKLOAD_FIELDS, file_slug, setting_parts
from envmatrix.rundir.layout import atomic_write_bytes, atomic_write_text
from envmatrix.rundir.plan import Cell, Measure


def build_report(run_dir: Path, rules: VerdictRules | None = None) -> Path:
    """Write report.md, results.json, results.csv and plots/ into run_dir; report.md's path."""
    return write_report_files(load_run(run_dir, rules))


def write_report_files(data: RunData) -> Path:
    """build_report for a run already loaded (the CLI's gate reads the same RunData)."""
    plot_files = {n: write_plots(data, n) for n in networks(data)}
    atomic_write_text(data.run_dir.results_json, json_text(results_document(data)))
    atomic_write_text(data.run_dir.results_csv, results_csv(data))
    atomic_write_text(data.run_dir.report_path, render_markdown(data, plot_files))
    return data.run_dir.report_path


def render_markdown(data: RunData, plot_files: Mapping[str, Sequence[str]]) -> str:
    m, t = data.plan.measure, measured_totals(data)
    head = [f"# Upgrade-impact report: run {md(data.run_dir.run_id)}", "",
            f"Matrix {md(data.plan.source)}; baseline environment **{md(data.baseline)}**; "
            f"{len(data.cells)} cells in {len(data.plan.environments)} environments. Measured: "
            f"{_rounds_phrase(m)} of {m.repeats_per_round} fresh process(es) per cell, "
            f"{t['processes']} processes and {t['iterations']} timed inferences in all "
            f"({t['measured_s']:.0f} s timed)."]
    sections = ["\n".join(head), section_summary(data)]
    sections += [section_within(data)] if data.within else []
    sections += [section_network(data, n, plot_files.get(n, ())) for n in networks(data)]
    sections += [section_hosts(data)] if data.plan.hosts else []
    sections += [section_environments(data), section_problems(data), section_parity(data),
                 section_provenance(data), section_measured(data), section_reproduce(data),
                 section_appendix(data)]
    return "\n\n".join(sections) + "\n"


def _rounds_phrase(m: Measure) -> str:
    """"40 interleaved rounds", or for an adaptive run what its budget meant."""
    if m.looks_early:
        return (f"up to {m.round_count} interleaved rounds (looking every {m.look_every}: a "
                "cell left the rounds once its comparisons were settled)")
    return f"{m.round_count} interleaved rounds"


def write_plots(data: RunData, network: str) -> list[str]:
    """The figures of one network; their paths relative to the run directory."""
    figures = plot_figures(data, network)
    for rel, fig in figures.items():
        atomic_write_bytes(data.run_dir.path / rel, plots.png(fig))
    return list(figures)


def plot_figures(data: RunData, network: str) -> dict[str, plots.Figure]:
    """The figures of one network by their paths relative to the run directory, in the
    order the report shows them: the answer (ratio, cost) first, then the detail. A network
    that is one workload keeps the file names of that workload."""
    series = _plot_series(data, network)
    name = file_slug(network)

    def title(what: str) -> str:
        return plots.title(network, what, data.baseline)

    figures = {}
    if any(s.p50 for s in series):
        figures[f"plots/{name}-ratio.png"] = plots.ratio_figure(
            title("latency change"), series, data.rules.min_effect, data.rules.confidence,
            data.rules.equivalence)
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
