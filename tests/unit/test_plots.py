"""The report's figures from fake run directories (no engine): each is drawn, reproducible
byte for byte, titled with the baseline, keeps its legend off the data, and shows the same
numbers as the text."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakeruns import BASELINE, CANDIDATE, failed_result, fake_result, make_run
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from envmatrix.analysis import decision
from envmatrix.analysis.rundata import RunData, load_run
from envmatrix.analysis.stats import INVALID, VerdictRules, unit_values
from envmatrix.report import plots
from envmatrix.report.build import plot_figures, write_plots
from envmatrix.report.markdown import fmt_pct

BASE = f"{BASELINE}--cnn--cpu"
CAND = f"{CANDIDATE}--cnn--cpu"
OTHER = "trixie-ort1.32.0--cnn--cpu"
BROKEN = "bad$env--cnn--cpu"  # '$' would start mathtext if a label were not made plain
RULES = VerdictRules()
EXAMPLE = Path(__file__).resolve().parents[2] / "reports" / "example"
KINDS = ("ratio", "cost", "latency", "rounds", "throughput")


def _with_rounds_and_cost(res: dict[str, Any], cpu_scale: float, cold: float,
                          per_round: int = 2) -> dict[str, Any]:
    """A fake result measured in interleaved rounds (per_round processes each) that recorded
    the cost of compute; the first process's cpu_per_inference_s is left out (an older
    harness), so its cost comes from cpu_time_s / iterations."""
    for i, rep in enumerate(res["repeats"]):
        rep["round"] = i // per_round
        n = len(rep["latencies_s"])
        rep["cpu_time_s"] = cpu_scale * float(np.sum(rep["latencies_s"])) * (1 + 0.01 * i)
        if i:
            rep["cpu_per_inference_s"] = rep["cpu_time_s"] / n
        rep["cold_start_s"] = cold * (1 + 0.02 * (i % 3))
        rep["peak_rss_bytes"] = (100 + i) * 2**20
    return res


def _run(root: Path) -> Path:
    results = [
        _with_rounds_and_cost(fake_result(BASE, p50=0.010, repeats=10, iterations=100, seed=1),
                              cpu_scale=1.0, cold=0.6),
        _with_rounds_and_cost(fake_result(CAND, p50=0.005, repeats=10, iterations=100, seed=2),
                              cpu_scale=2.5, cold=0.9),
        _with_rounds_and_cost(fake_result(OTHER, p50=0.0101, repeats=10, iterations=100,
                                          seed=3), cpu_scale=1.0, cold=0.6),
        failed_result(BROKEN, status="crashed", reason="killed"),
    ]
    return make_run(root, results)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> RunData:
    return load_run(_run(tmp_path_factory.mktemp("plots")), RULES)


def _drawn(fig: Figure) -> Figure:
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig


def _legends(fig: Figure) -> list[Any]:
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]


def test_title_names_what_is_compared_with_which_baseline() -> None:
    assert plots.title("cnn", "latency", BASELINE) == f"cnn: latency, baseline {BASELINE}"


def test_every_figure_is_drawn_and_titled_with_the_baseline(data: RunData) -> None:
    figures = plot_figures(data, "cnn")
    assert list(figures) == [f"plots/cnn-{k}.png" for k in KINDS]
    for rel, fig in figures.items():
        (ax,) = fig.axes
        assert ax.get_title().startswith("cnn: ") and ax.get_title().endswith(
            f", baseline {BASELINE}"), rel
        assert plots.png(fig).startswith(b"\x89PNG\r\n\x1a\n")


def test_figures_are_byte_identical_when_drawn_twice(data: RunData, tmp_path: Path) -> None:
    first = {rel: plots.png(fig) for rel, fig in plot_figures(data, "cnn").items()}
    second = {rel: plots.png(fig) for rel, fig in plot_figures(data, "cnn").items()}
    assert first == second
    written = write_plots(data, "cnn")
    assert {rel: (data.run_dir.path / rel).read_bytes() for rel in written} == first


def _outside(box: Any, ax_box: Any) -> bool:
    return bool(box.x1 <= ax_box.x0 or box.x0 >= ax_box.x1 or box.y1 <= ax_box.y0
                or box.y0 >= ax_box.y1)


def _assert_nothing_covers_the_data(figures: dict[str, Figure]) -> None:
    for rel, fig in figures.items():
        _drawn(fig)
        (ax,) = fig.axes
        ax_box = ax.get_window_extent()
        legends = _legends(fig)
        if any(k in rel for k in ("ratio", "cost", "rounds")):
            assert legends, f"{rel}: no legend"
        for legend in legends:
            assert _outside(legend.get_window_extent(), ax_box), f"{rel}: legend over the data"
            fig_box = fig.bbox
            box = legend.get_window_extent()
            assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 + 0.5, f"{rel}: legend cut off"
            assert fig_box.y0 <= box.y0 and box.y1 <= fig_box.y1 + 0.5, f"{rel}: legend cut off"
        for text in ax.texts:  # the ratio figure's verdict words live in the right margin
            box = text.get_window_extent()
            assert _outside(box, ax_box), f"{rel}: {text.get_text()!r} over the data"
            assert box.x1 <= fig.bbox.x1 + 0.5, f"{rel}: {text.get_text()!r} cut off"


def test_legends_and_verdict_words_stay_off_the_data(data: RunData) -> None:
    _assert_nothing_covers_the_data(plot_figures(data, "cnn"))


@pytest.mark.skipif(not (EXAMPLE / "results").is_dir(), reason="no example run directory")
def test_the_example_runs_figures_keep_their_legends_off_the_data() -> None:
    example = load_run(EXAMPLE, VerdictRules())
    for workload in ("cnn", "transformer"):
        figures = plot_figures(example, workload)
        assert len(figures) == 5  # latency, per-round, change, samples/s and cost figures
        _assert_nothing_covers_the_data(figures)


def _line(fig: Figure, gid: str) -> Any:
    (line,) = [x for x in fig.axes[0].get_lines() if x.get_gid() == gid]
    return line


def test_ratio_plot_shows_the_texts_percent_change_and_verdict_words(data: RunData) -> None:
    fig = plot_figures(data, "cnn")["plots/cnn-ratio.png"]
    valid = [v for v in data.verdicts if v.verdict != INVALID]
    assert [v.candidate for v in valid] == [CAND, OTHER]
    for metric in ("p50", "p99"):
        xs = list(_line(fig, metric).get_xdata())
        want = [(v.ratios[metric].ratio - 1.0) * 100.0 for v in valid]
        assert xs == pytest.approx(want, rel=0, abs=1e-9)
        # rounded as the text rounds, it is the number the text prints
        assert [f"{x:+.1f}%" for x in xs] == [fmt_pct(v.ratios[metric].ratio) for v in valid]
    words = [t.get_text() for t in fig.axes[0].texts]
    assert valid[0].verdict == "faster"
    for v in valid:
        for metric, word in (("p50", v.verdict), ("p99", v.tail_verdict)):
            assert any(w.startswith(f"{metric}: {word}") for w in words), (metric, word, words)
    assert INVALID in words  # the crashed candidate has its row and its word
    band = [p for p in fig.axes[0].patches if p.get_label().startswith("within ±2%")]
    assert len(band) == 1
    extent = band[0].get_extents()  # pixels; back to data coordinates along x
    x0, x1 = fig.axes[0].transData.inverted().transform([[extent.x0, 0], [extent.x1, 0]])[:, 0]
    assert (x0, x1) == pytest.approx(((1 / 1.02 - 1) * 100, 2.0), abs=0.05)


def test_ratio_plot_interval_is_the_verdicts_interval(data: RunData) -> None:
    fig = plot_figures(data, "cnn")["plots/cnn-ratio.png"]
    ci = data.verdict_of(CAND).ratios["p50"]  # type: ignore[union-attr]
    segments = [c for c in fig.axes[0].containers if c.lines[0].get_gid() == "p50"][0].lines[2]
    first = segments[0].get_segments()[0]
    assert [p[0] for p in first] == pytest.approx([(ci.low - 1) * 100, (ci.high - 1) * 100])


def test_cost_plot_compares_cpu_per_inference_cold_start_and_rss(data: RunData) -> None:
    fig = plot_figures(data, "cnn")["plots/cnn-cost.png"]
    base, cand = data.results[BASE], data.results[CAND]
    costs = decision.cost_ratios(BASE, base, CAND, cand, data.rules)
    assert set(costs) == {"cpu_per_inference", "cold_start", "peak_rss"}
    assert costs == data.cost_ratios[CAND]  # the report's table and CSV use the same ratios
    # cpu_per_inference_s of every process, computed from cpu_time_s where it is missing
    def per_process(res: dict[str, Any]) -> list[float]:
        return [r["cpu_time_s"] / len(r["latencies_s"]) for r in res["repeats"]]
    def rounds(values: list[float]) -> np.ndarray:  # each round's median (2 processes a round)
        return np.array([np.median(values[i:i + 2]) for i in range(0, 10, 2)])
    # two cells not measured together: unpaired, the Hodges-Lehmann ratio of the round
    # medians (the median of every pairwise ratio), the verdict's own estimate
    pairwise = np.subtract.outer(np.log(rounds(per_process(cand))),
                                 np.log(rounds(per_process(base))))
    want = float(np.exp(np.median(pairwise)))
    assert costs["cpu_per_inference"].ratio == pytest.approx(want)
    # 2.5 cores busy instead of 1, for half the latency: 25% more CPU per inference
    assert costs["cpu_per_inference"].ratio == pytest.approx(1.25, rel=0.05)
    assert math.isfinite(costs["cpu_per_inference"].high)  # 5 rounds a side: an interval
    for name, ci in costs.items():
        xs = list(_line(fig, name).get_xdata())
        assert xs[0] == pytest.approx((ci.ratio - 1) * 100)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [f"{CANDIDATE} / CPU", "trixie-ort1.32.0 / CPU"]


def test_rounds_plot_shows_each_rounds_p50_and_each_process(data: RunData) -> None:
    fig = plot_figures(data, "cnn")["plots/cnn-rounds.png"]
    ax = fig.axes[0]
    base_label = f"{BASELINE} / CPU (baseline)"
    line = _line(fig, f"rounds:{base_label}")
    units = unit_values(data.results[BASE], "p50")
    assert list(line.get_xdata()) == sorted(units) == [0, 1, 2, 3, 4]
    assert list(line.get_ydata()) == pytest.approx([units[u] * 1000 for u in sorted(units)])
    assert line.get_color() == plots.BASELINE_COLOR and line.get_label().endswith("(baseline)")
    (dots,) = [c for c in ax.collections if c.get_gid() == f"processes:{base_label}"]
    assert len(dots.get_offsets()) == 10  # every process, two per round
    assert ax.get_xlabel() == "round"
    assert not any(BROKEN.split("--")[0] in str(x.get_gid()) for x in ax.get_lines())


def test_hostile_labels_are_drawn_as_text() -> None:
    series = [plots.Series(label="a$b$c / CPU (baseline)", latencies_ms=[1.0, 2.0],
                           baseline=True, round_p50_ms={0: 1.0}, process_p50_ms=[(0, 1.0)])]
    for fig in (plots.latency_figure(plots.title("w$", "latency", "a$b$c"), series),
                plots.rounds_figure(plots.title("w$", "p50 per round", "a$b$c"), series)):
        _drawn(fig)
        assert fig.axes[0].get_title() == r"w\$: " + fig.axes[0].get_title().split(": ", 1)[1]


def test_the_overlap_check_catches_a_legend_over_the_data() -> None:
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], label="data")
    ax.legend(loc="center")
    with pytest.raises(AssertionError, match="legend over the data"):
        _assert_nothing_covers_the_data({"plots/x-rounds.png": fig})
