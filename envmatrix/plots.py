"""The report's figures, drawn on the host with matplotlib's Agg renderer.

Byte-for-byte reproducible: the figures are built from matplotlib's default style whatever
the user's matplotlibrc says, through a private Figure (no pyplot global state), and the PNG
carries no "Software" or date metadata. The same inputs and matplotlib give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from envmatrix.stats import RatioCI

DPI = 100
_STYLE: Any = {k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}
_STYLE.update({"svg.hashsalt": "envmatrix", "figure.dpi": DPI, "savefig.dpi": DPI})
# boxplot's horizontal switch was renamed in matplotlib 3.10 (vert= is deprecated there).
_HORIZONTAL: Any = (
    {"orientation": "horizontal"}
    if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False}
)


@dataclass(frozen=True)
class Series:
    """One cell's data for the figures."""

    label: str  # "<environment> / <provider>"
    latencies_ms: Sequence[float]  # all repeats pooled
    throughput_per_s: float | None = None
    p50: RatioCI | None = None  # vs baseline; None for the baseline or invalid cells
    p99: RatioCI | None = None


def plain(label: str) -> str:
    """A user-controlled label safe from mathtext: '$' would start a formula."""
    return label.replace("\\", "\\\\").replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _height(n: int) -> float:
    return 1.2 + 0.45 * max(n, 1)


def latency_png(title: str, series: Sequence[Series]) -> bytes:
    """Box plot of every cell's latencies (whiskers at p1 and p99, no fliers)."""
    rows = [s for s in series if len(s.latencies_ms)]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(8, _height(len(rows))))
        ax = fig.add_subplot()
        if rows:
            ax.boxplot([list(s.latencies_ms) for s in rows], whis=(1, 99), showfliers=False,
                       **_HORIZONTAL)
            ax.set_yticks(range(1, len(rows) + 1), [plain(s.label) for s in rows])
        ax.invert_yaxis()  # first cell on top, as in the table
        ax.set_xlabel("latency (ms)")
        ax.set_title(plain(title))
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return _png(fig)


def ratio_png(title: str, series: Sequence[Series], min_effect: float) -> bytes:
    """p50 and p99 as candidate/baseline with their bootstrap CIs; the no-change band shaded."""
    rows = [s for s in series if s.p50 is not None]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(8, _height(len(rows))))
        ax = fig.add_subplot()
        ax.axvspan(1 - min_effect, 1 + min_effect, color="0.9", label="below minimum effect")
        ax.axvline(1.0, color="0.4", linewidth=1)
        for offset, metric, color in ((-0.15, "p50", "tab:blue"), (0.15, "p99", "tab:orange")):
            cis = [getattr(s, metric) for s in rows]
            ys = [i + offset for i, ci in enumerate(cis) if ci is not None]
            ok = [ci for ci in cis if ci is not None]
            ax.errorbar([c.ratio for c in ok], ys, fmt="o", color=color, label=metric,
                        xerr=[[max(c.ratio - c.low, 0) for c in ok],
                              [max(c.high - c.ratio, 0) for c in ok]], capsize=3)
        ax.set_yticks(range(len(rows)), [plain(s.label) for s in rows])
        ax.invert_yaxis()
        ax.set_xlabel("candidate / baseline (lower is faster)")
        ax.set_title(plain(title))
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        return _png(fig)


def throughput_png(title: str, series: Sequence[Series]) -> bytes:
    """Inferences per second of every cell that measured any."""
    rows = [s for s in series if s.throughput_per_s]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(8, _height(len(rows))))
        ax = fig.add_subplot()
        ax.barh(range(len(rows)), [float(s.throughput_per_s or 0.0) for s in rows])
        ax.set_yticks(range(len(rows)), [plain(s.label) for s in rows])
        ax.invert_yaxis()
        ax.set_xlabel("throughput (inferences/s)")
        ax.set_title(plain(title))
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return _png(fig)
