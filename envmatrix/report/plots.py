"""The report's figures, drawn on the host with matplotlib's Agg renderer.

One set per network (envmatrix.report.build.write_plots: the cells of a network's workloads, e.g.
cnn-ort and cnn-torch; a network that is one workload keeps that workload's file names), each
titled "<network>: <what>, baseline <environment>" (`title`):
- ratio: p50 and p99 as % change vs the baseline, the very numbers the text prints
  ((ratio - 1) * 100 with the verdict's interval; an interval without finite bounds, too few
  rounds, as a dotted double arrow across the axes), the equivalence band ±equivalence and,
  inside it, the minimum effect ±min_effect shaded, and the outcome of each marker beside its
  row in its colour (faster green, slower red, equivalent blue, inconclusive grey);
- cost: % change vs the baseline of CPU per inference, cold start and peak RSS (`cost_ratios`:
  the verdict's procedure applied to those per-process numbers);
- latency: every cell's latencies as a box plot (whiskers at p1 and p99, no fliers);
- rounds: per cell the p50 of each round as a line, each process's p50 as a faint dot, so
  drift over the run and two modes show;
- throughput: samples per second of every cell, the tables' number (rundata.shown_point).
Legends sit outside the axes and never cover data; the verdict words sit in the right margin.

Byte-for-byte reproducible: the figures are built from matplotlib's default style whatever
the user's matplotlibrc says (font fixed to the bundled DejaVu Sans), through a private Figure
(no pyplot global state), and the PNG carries no "Software" or date metadata. The same inputs
and matplotlib give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from envmatrix.analysis.decision import COST_METRICS, has_rounds, timed_repeats, unit_keys
from envmatrix.analysis.stats import (
    EQUIVALENT,
    FASTER,
    INCONCLUSIVE,
    INVALID,
    SLOWER,
    RatioCI,
    process_stat,
    unit_values,
)

DPI = 100
WIDTH = 9.0  # inches; 900 px at DPI
_STYLE: Any = {k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}
_STYLE.update({"svg.hashsalt": "envmatrix", "figure.dpi": DPI, "savefig.dpi": DPI,
               "font.family": ["DejaVu Sans"]})  # bundled with matplotlib: same glyphs anywhere
# boxplot's horizontal switch was renamed in matplotlib 3.10 (vert= is deprecated there).
_HORIZONTAL: Any = (
    {"orientation": "horizontal"}
    if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False}
)
BASELINE_COLOR = "black"
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan")
_VERDICT_COLORS = {FASTER: "tab:green", SLOWER: "tab:red", EQUIVALENT: "tab:blue",
                   INCONCLUSIVE: "0.45", INVALID: "tab:red"}

@dataclass(frozen=True)
class Series:
    """One cell's data for the figures."""

    label: str  # "<environment> / <provider>[ / <setting>]", "(baseline)" for the baseline's
    latencies_ms: Sequence[float]  # all repeats pooled
    throughput_per_s: float | None = None  # samples per second, as the tables show it
    p50: RatioCI | None = None  # vs baseline; None for the baseline or invalid cells
    p99: RatioCI | None = None
    baseline: bool = False  # a cell of the baseline environment
    verdict: str | None = None  # the candidate's verdict word; None for the baseline
    round_p50_ms: Mapping[int, float] = field(default_factory=dict)  # unit -> its p50 (ms)
    process_p50_ms: Sequence[tuple[int, float]] = ()  # (unit, p50 ms) of every process
    by_round: bool = True  # units are interleaved rounds (else processes)
    cost: Mapping[str, RatioCI] = field(default_factory=dict)  # COST_METRICS name -> vs base


def plain(label: str) -> str:
    """A user-controlled label safe from mathtext: '$' would start a formula."""
    return label.replace("\\", "\\\\").replace("$", r"\$")


def title(network: str, what: str, baseline: str) -> str:
    """Every figure's title: what is shown, of which network, against which baseline."""
    return f"{network}: {what}, baseline {baseline}"


def pct(ratio: float) -> float:
    """A ratio as the text prints it: % change, (ratio - 1) * 100."""
    return (ratio - 1.0) * 100.0


# ---------------------------------------------------------------- data for the figures


def by_round(result: Mapping[str, Any]) -> bool:
    """Are the result's units interleaved rounds (else processes)?"""
    return has_rounds(timed_repeats(result))


def round_p50s_ms(result: Mapping[str, Any]) -> dict[int, float]:
    """p50 of each unit in ms: the values the verdict takes its median of (unit_values)."""
    return {u: 1000.0 * v for u, v in unit_values(result, "p50").items()}


def process_p50s_ms(result: Mapping[str, Any]) -> list[tuple[int, float]]:
    """(unit, p50 in ms) of every process that timed anything, in the order measured."""
    reps = timed_repeats(result)
    return [(u, 1000.0 * process_stat(np.asarray(r["latencies_s"], dtype=float), "p50"))
            for u, r in zip(unit_keys(reps), reps)]


# ---------------------------------------------------------------- drawing


def png(fig: Figure) -> bytes:
    """The figure's PNG bytes, without metadata that would change from run to run."""
    with matplotlib.rc_context(_STYLE):
        buf = io.BytesIO()
        FigureCanvasAgg(fig)
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        return buf.getvalue()


def _height(n: int) -> float:
    return 1.2 + 0.45 * max(n, 1)


def _new(height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    return fig, fig.add_subplot()


def _rows_axis(ax: Axes, labels: Sequence[str]) -> None:
    ax.set_yticks(range(len(labels)), [plain(x) for x in labels])
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first cell on top, as in the table


def _legend_below(fig: Figure, ax: Axes, ncols: int) -> None:
    """The legend in the figure's bottom margin, below the x label: never over the data
    (the constrained layout makes room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small",
               frameon=False)


def _errorbars(ax: Axes, xs: Sequence[float], ys: Sequence[float], cis: Sequence[RatioCI],
               color: str, label: str, gid: str) -> None:
    """Markers at xs (% change) with each interval where it has finite bounds (the others:
    `_unbounded`)."""
    lo = [x - pct(c.low) if c.bounded else 0.0 for x, c in zip(xs, cis)]
    hi = [pct(c.high) - x if c.bounded else 0.0 for x, c in zip(xs, cis)]
    bars = ax.errorbar(xs, ys, xerr=[[max(v, 0.0) for v in lo], [max(v, 0.0) for v in hi]],
                       fmt="o", color=color, label=label, capsize=3, markersize=5)
    bars.lines[0].set_gid(gid)


def _span(cis: Sequence[RatioCI], margin: float) -> tuple[float, float]:
    """The x range (% change) the finite intervals, the estimates and the bands need."""
    xs = [pct(1.0 / (1.0 + margin)), pct(1.0 + margin)]
    for ci in cis:
        xs += [pct(ci.low), pct(ci.high)] if ci.bounded else []
        xs += [pct(ci.ratio)] if math.isfinite(ci.ratio) else []
    low, high = min(xs), max(xs)
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def _unbounded(ax: Axes, found: Sequence[tuple[float, RatioCI]], color: str,
               span: tuple[float, float], gid: str) -> None:
    """An interval without finite bounds (too few rounds): a dotted double arrow across the
    whole axes, so it reads "anywhere" rather than as a point known exactly."""
    for y, ci in found:
        if ci.bounded:
            continue
        ax.annotate("", xy=(span[0], y), xytext=(span[1], y), gid=f"unbounded-{gid}",
                    arrowprops={"arrowstyle": "<->", "linestyle": ":", "color": color,
                                "shrinkA": 0, "shrinkB": 0})


def latency_figure(fig_title: str, series: Sequence[Series]) -> Figure:
    """Box plot of every cell's latencies (whiskers at p1 and p99, no fliers)."""
    rows = [s for s in series if len(s.latencies_ms)]
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new(_height(len(rows)))
        if rows:
            boxes = ax.boxplot([list(s.latencies_ms) for s in rows], positions=range(len(rows)),
                               whis=(1, 99), showfliers=False, **_HORIZONTAL)
            for s, median in zip(rows, boxes["medians"]):
                median.set_color(BASELINE_COLOR if s.baseline else "tab:orange")
                median.set_linewidth(2)
        _rows_axis(ax, [s.label for s in rows])
        ax.set_xlabel("latency (ms)")
        ax.set_title(plain(fig_title))
        ax.grid(axis="x", alpha=0.3)
        return fig


def ratio_figure(fig_title: str, series: Sequence[Series], min_effect: float,
                 confidence: float = 0.95, equivalence: float = 0.05) -> Figure:
    """p50 and p99 of every candidate as % change vs the baseline with their intervals (a
    dotted double arrow where there is no finite one), the equivalence band ±equivalence and
    inside it the minimum effect (decide_interval's thresholds: -m/(1+m) and +m), and each
    marker's outcome in the right margin, in its colour."""
    rows = [s for s in series if not s.baseline and (s.p50 is not None or s.verdict)]
    cis = [ci for s in rows for ci in (s.p50, s.p99) if ci is not None]
    span = _span(cis, max(equivalence, min_effect))
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new(_height(len(rows)) + 0.35)
        ax.axvspan(pct(1.0 / (1.0 + equivalence)), pct(1.0 + equivalence), color="#dbe9f6",
                   label=f"within ±{equivalence * 100:g}%: the equivalence margin")
        ax.axvspan(pct(1.0 / (1.0 + min_effect)), pct(1.0 + min_effect), color="0.85",
                   label=f"within ±{min_effect * 100:g}%: below the minimum effect")
        ax.axvline(0.0, color="0.4", linewidth=1)
        for offset, metric, color in ((-0.15, "p50", "tab:blue"), (0.15, "p99", "tab:orange")):
            found = [(i, getattr(s, metric)) for i, s in enumerate(rows)
                     if getattr(s, metric) is not None and math.isfinite(getattr(s, metric).ratio)]
            if found:
                _errorbars(ax, [pct(ci.ratio) for _i, ci in found],
                           [i + offset for i, _ci in found], [ci for _i, ci in found], color,
                           f"{metric} [{confidence:.0%} interval]", metric)
                _unbounded(ax, [(i + offset, ci) for i, ci in found], color, span, metric)
            for i, s in enumerate(rows):
                ci = getattr(s, metric)
                if ci is not None:
                    _outcome_label(ax, f"{metric}: {_outcome_text(ci, equivalence)}",
                                   i + offset, ci.verdict or "", metric)
        for i, s in enumerate(rows):
            if s.p50 is None:
                _outcome_label(ax, s.verdict or INVALID, i, INVALID, "p50")
        ax.set_xlim(*span)
        _rows_axis(ax, [s.label for s in rows])
        ax.set_xlabel("% change vs baseline (negative is faster)")
        ax.set_title(plain(fig_title))
        ax.grid(axis="x", alpha=0.3)
        _legend_below(fig, ax, 2)
        return fig


def _outcome_text(ci: RatioCI, equivalence: float) -> str:
    """The outcome as the report words it, short enough for the margin."""
    if ci.verdict == EQUIVALENT:
        return f"equivalent ±{equivalence * 100:g}%"
    word = ci.verdict or ""
    return f"{word} (no interval)" if not ci.bounded else word


def _outcome_label(ax: Axes, text: str, y: float, verdict: str, metric: str) -> None:
    ax.annotate(text, (1.01, y), xycoords=("axes fraction", "data"), va="center",
                fontsize="small", color=_VERDICT_COLORS.get(verdict, "0.25"),
                annotation_clip=False, gid=f"verdict-{metric}")


def cost_figure(fig_title: str, series: Sequence[Series]) -> Figure:
    """CPU per inference, cold start and peak RSS of every candidate as % change vs the
    baseline, with the verdict procedure's interval where there are enough units for one."""
    rows = [s for s in series if not s.baseline and s.cost]
    names = [m for m in COST_METRICS if any(m[0] in s.cost for s in rows)]
    step = 0.6 / max(len(names), 1)
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new(_height(len(rows)) + 0.35)
        ax.axvline(0.0, color="0.4", linewidth=1)
        for k, ((name, _key, label), color) in enumerate(zip(names, _COLORS)):
            found = [(i, s.cost[name]) for i, s in enumerate(rows) if name in s.cost]
            offset = (k - (len(names) - 1) / 2.0) * step
            _errorbars(ax, [pct(ci.ratio) for _i, ci in found],
                       [i + offset for i, _ci in found], [ci for _i, ci in found], color,
                       label, name)
        _rows_axis(ax, [s.label for s in rows])
        ax.set_xlabel("% change vs baseline (negative is cheaper)")
        ax.set_title(plain(fig_title))
        ax.grid(axis="x", alpha=0.3)
        if names:
            _legend_below(fig, ax, len(names))
        return fig


def rounds_figure(fig_title: str, series: Sequence[Series]) -> Figure:
    """Per cell the p50 of each round (line with markers) and of each process (faint dots):
    drift over the run shows as a slope, two modes as two bands of dots. The baseline's line
    is black and drawn on top."""
    rows = [s for s in series if s.round_p50_ms]
    order = [s for s in rows if not s.baseline] + [s for s in rows if s.baseline]
    colors = {s.label: BASELINE_COLOR if s.baseline else _COLORS[i % len(_COLORS)]
              for i, s in enumerate(r for r in rows if not r.baseline)}
    colors.update({s.label: BASELINE_COLOR for s in rows if s.baseline})
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new(3.6)
        for s in order:
            color = colors[s.label]
            if s.process_p50_ms:
                ax.scatter([u for u, _v in s.process_p50_ms], [v for _u, v in s.process_p50_ms],
                           s=12, color=color, alpha=0.35, linewidths=0,
                           gid=f"processes:{s.label}")
            units = sorted(s.round_p50_ms)
            ax.plot(units, [s.round_p50_ms[u] for u in units], marker="o", markersize=3.5,
                    color=color, linewidth=2.2 if s.baseline else 1.2, label=plain(s.label),
                    zorder=3 if s.baseline else 2, gid=f"rounds:{s.label}")
        ax.scatter([], [], s=12, color="0.3", alpha=0.5, linewidths=0, label="one process")
        every_round = all(s.by_round for s in rows)
        ax.set_xlabel("round" if every_round else "round (process where not interleaved)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("p50 (ms)")
        ax.set_title(plain(fig_title))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  frameon=False)
        return fig


def throughput_figure(fig_title: str, series: Sequence[Series]) -> Figure:
    """Samples per second of every cell that measured any; the baseline's bar grey."""
    rows = [s for s in series if s.throughput_per_s]
    with matplotlib.rc_context(_STYLE):
        fig, ax = _new(_height(len(rows)))
        ax.barh(range(len(rows)), [float(s.throughput_per_s or 0.0) for s in rows],
                color=["0.3" if s.baseline else "tab:blue" for s in rows])
        _rows_axis(ax, [s.label for s in rows])
        ax.set_xlabel("throughput (samples/s)")
        ax.set_title(plain(fig_title))
        ax.grid(axis="x", alpha=0.3)
        return fig

