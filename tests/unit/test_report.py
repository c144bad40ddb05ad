"""The report of a fake run directory: content, escaping, determinism (PNG bytes included)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fakeruns import BASELINE, CANDIDATE, failed_result, fake_result, make_run

from envmatrix.analysis.stats import VerdictRules
from envmatrix.report.build import build_report
from envmatrix.report.markdown import fence, md

BASE = f"{BASELINE}--cnn--cpu"
CAND = f"{CANDIDATE}--cnn--cpu"
HOSTILE_ENV = "evil|<img src=x>`rm`*x*\nnext"
HOSTILE = f"{HOSTILE_ENV}--cnn--cpu"
RULES = VerdictRules()  # fewer resamples: same code paths, faster tests


def _run(root: Path, parity_broken: bool = False) -> Path:
    y = np.random.default_rng(0).normal(size=(1, 100)).astype(np.float32)
    results = [fake_result(BASE, p50=0.010, seed=1),
               fake_result(CAND, p50=0.005, seed=2),
               failed_result(HOSTILE, status="crashed", reason="killed by SIGSEGV",
                             log_tail="Segmentation fault\n``` not the end")]
    outputs = {BASE: {"y": y}, CAND: {"y": y + (1.0 if parity_broken else 0.0)}}
    return make_run(root, results, outputs)


def test_md_escapes_what_would_break_a_table_or_inject_html() -> None:
    text = md(HOSTILE_ENV)
    assert "<" not in text.replace("<br>", "") and ">" not in text.replace("<br>", "")
    assert "\n" not in text
    assert re.search(r"(?<!\\)[|`*]", text) is None


def test_fence_is_not_closed_by_backticks_inside() -> None:
    block = fence("a ``` b\n````")
    assert block.startswith("`````\n") and block.endswith("\n`````")


def test_report_summary_tables_and_failures(tmp_path: Path) -> None:
    report = build_report(_run(tmp_path), RULES).read_text()
    summary = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    # Truth: half the latency, so p50 about -50% with an interval around it, in the table row
    # and in the manager's sentence, from the same estimate.
    row = next(line for line in summary.splitlines() if line.startswith(f"| {CANDIDATE}"))
    change = re.search(r"\| (-(?:4[5-9]|5[0-5])\.\d%) \[-\d+\.\d%, -\d+\.\d%\] \|", row)
    assert change and "**faster** / " in row and "| pass " in row, row
    assert f"**{CANDIDATE}** on CPU: faster per request on cnn ({change.group(1)})" in summary
    assert "outputs match" in summary
    assert "**invalid**: status crashed: killed by SIGSEGV" in summary
    assert "| p50 (ms)" in report and "| cores used" in report and "CPU per inference" in report
    # The failed cell is listed with its log tail in a fence that its backticks cannot close.
    assert "Segmentation fault" in report and "````\nSegmentation fault" in report
    assert "docker run --rm --read-only" in report
    assert f"nox -s matrix -- --matrix matrix.yaml --only {CANDIDATE}" in report


def test_the_summary_states_a_difference_in_parallelism_in_words(tmp_path: Path) -> None:
    """Faster per request but with twice the cores: the CPU cost per inference goes up."""
    results = [fake_result(BASE, p50=0.010, seed=1, cores_used=1.0),
               fake_result(CAND, p50=0.006, seed=2, cores_used=2.0)]
    report = build_report(make_run(tmp_path, results), RULES).read_text()
    summary = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    # 2 cores x 6 ms against 1 core x 10 ms: +20% CPU per inference.
    assert re.search(r"faster per request on cnn \(-[34]\d\.\d%\); using 2\.0 cores instead of "
                     r"1\.0: CPU per inference \+(1[5-9]|2[0-5])\.\d% on cnn", summary), summary
    row = next(line for line in summary.splitlines() if line.startswith(f"| {CANDIDATE}"))
    assert re.search(r"\| \+(1[5-9]|2[0-5])\.\d% +\|", row), row


def test_noise_warnings_appear_once_per_cell_with_their_cause(tmp_path: Path) -> None:
    noisy = fake_result(CAND, p50=0.005, cv=0.2, seed=3, repeats=12, cores_used=1.99)
    results = [fake_result(BASE, p50=0.010, seed=1), noisy]
    report = build_report(make_run(tmp_path, results), RULES).read_text()
    assert report.count(f"- {CANDIDATE}--cnn--cpu: CV ") == 1
    assert "the runtime keeps all 2 cores busy (1.99 cores used)" in report
    assert "noisy" not in report.split("## Workload", 1)[1].split("## Environments")[0]


def test_a_failed_build_shows_its_log_once_with_its_cells(tmp_path: Path) -> None:
    env = "bookworm-ort1.99.0"
    reason = ("image build failed: pip: ERROR: No matching distribution found for "
              "onnxruntime==1.99.0")
    tail = "Step 5/9 : RUN pip install\nERROR: No matching distribution found for onnxruntime"
    failed = [failed_result(f"{env}--{w}--cpu", reason=reason, log_tail=tail)
              for w in ("cnn", "transformer")]
    results = [fake_result(BASE, seed=1), fake_result(f"{BASELINE}--transformer--cpu", seed=2),
               *failed]
    report = build_report(make_run(tmp_path, results), RULES).read_text()
    problems = report.split("## Cells without valid numbers", 1)[1].split("\n## ", 1)[0]
    assert problems.count("Step 5/9 : RUN pip install") == 1
    assert f"Cells: {env}--cnn--cpu, {env}--transformer--cpu" in problems
    assert "No matching distribution found for onnxruntime==1.99.0" in problems


def test_hostile_names_keep_every_table_row_intact(tmp_path: Path) -> None:
    report = build_report(_run(tmp_path), RULES).read_text()
    prose = re.sub(r"^(`{3,})[^\n]*\n.*?^\1$", "", report, flags=re.M | re.S)  # drop fences
    assert "<img" not in prose and "`rm`" not in prose and "evil" in prose
    for block in re.findall(r"(?:^\|.*\n)+", report, flags=re.M):
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(counts) == 1, block  # same number of unescaped pipes on every row


def test_a_parity_failure_is_headline_news(tmp_path: Path) -> None:
    report = build_report(_run(tmp_path, parity_broken=True), RULES).read_text()
    head = report.split("## Workload", 1)[0]
    assert "**Output parity failure:**" in head and "**outputs differ** on cnn" in head


def test_csv_and_json_hold_every_cell_as_numbers(tmp_path: Path) -> None:
    run = _run(tmp_path)
    build_report(run, RULES)
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["cell"] for r in rows] == [BASE, CAND, HOSTILE]
    assert rows[1]["verdict"] == "faster" and rows[2]["verdict"] == "invalid"
    cand = rows[1]
    low, ratio, high = (float(cand[k]) for k in ("p50_low", "p50_ratio", "p50_high"))
    assert low <= ratio <= high < 1.0
    assert ratio == pytest.approx(float(cand["p50_ms"]) / float(rows[0]["p50_ms"]), rel=1e-5)
    assert cand["method"] and float(cand["cores_used"]) > 0 and float(cand["cv"]) >= 0
    assert float(cand["cpu_per_inference_ms"]) > 0 and cand["tail_verdict"]
    doc = json.loads((run / "results.json").read_text())
    assert set(doc["cells"]) == {BASE, CAND, HOSTILE}
    assert doc["verdicts"][0]["candidate"] == CAND
    json_row = doc["rows"][1]
    assert isinstance(json_row["p50_ratio"], float) and json_row["p50_ratio"] == pytest.approx(
        ratio, rel=1e-5)


def _outputs(run: Path) -> dict[str, bytes]:
    files = [run / "report.md", run / "results.json", run / "results.csv",
             *sorted((run / "plots").glob("*.png"))]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def test_two_builds_give_identical_bytes_plots_included(tmp_path: Path) -> None:
    run = _run(tmp_path)
    build_report(run, RULES)
    first = _outputs(run)
    build_report(run, RULES)
    assert _outputs(run) == first
    assert {"plots/cnn-latency.png", "plots/cnn-ratio.png", "plots/cnn-throughput.png"} <= set(
        first)
    report = first["report.md"].decode()
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (run / ref).is_file()


def test_a_run_without_a_plan_is_refused_clearly(tmp_path: Path) -> None:
    from envmatrix.errors import RunDirError

    run = _run(tmp_path)
    (run / "matrix.resolved.yaml").unlink()
    with pytest.raises(RunDirError, match="matrix.resolved.yaml: missing"):
        build_report(run, RULES)


def test_nodes_that_fell_back_are_shown_with_their_names(tmp_path: Path) -> None:
    """An OpenVINO cell whose Unique node ran on the CPU: share in the table, names in Trust."""
    ov = f"{CANDIDATE}--cnn--openvino"
    cell = fake_result(ov, p50=0.005, seed=5, provider="OpenVINOExecutionProvider")
    cell["provider"].update(
        node_placement="profiled",
        nodes={"OpenVINOExecutionProvider": 1, "CPUExecutionProvider": 1},
        fallback_nodes=[{"name": "unique_values", "op_type": "Unique",
                         "provider": "CPUExecutionProvider"}], fallback_node_count=1)
    report = build_report(make_run(tmp_path, [fake_result(BASE, seed=1), cell]), RULES)
    text = report.read_text()
    assert ("OpenVINOExecutionProvider ran 1 of 2 compute nodes (50%, below 100%); 1 ran "
            "elsewhere: unique\\_values (Unique on CPUExecutionProvider)") in text
    row = next(line for line in text.split("## Workload cnn")[1].splitlines()
               if line.startswith(f"| {CANDIDATE}"))
    assert "| 50 " in row


def test_the_node_share_threshold_is_a_verdict_setting(tmp_path: Path) -> None:
    from envmatrix.analysis.stats import check_validity, rules_for
    from envmatrix.config import load as config
    from envmatrix.rundir.plan import VerdictSettings

    cell = fake_result(f"{CANDIDATE}--cnn--openvino", provider="OpenVINOExecutionProvider")
    cell["provider"].update(node_placement="profiled", fallback_node_count=1,
                            nodes={"OpenVINOExecutionProvider": 3, "CPUExecutionProvider": 1})
    assert any("ran 3 of 4" in w for w in check_validity(cell, RULES).warnings)
    relaxed = rules_for(VerdictSettings(min_node_share=0.75))
    assert not any("ran 3 of 4" in w for w in check_validity(cell, relaxed).warnings)
    matrix = tmp_path / "m.yaml"
    text = (Path(__file__).resolve().parents[2] / "matrix.yaml").read_text()
    matrix.write_text(text + "\nverdict: {min_node_share: 0.75}\n")
    assert config.load_plan(matrix).verdict.min_node_share == 0.75


def test_a_change_without_an_interval_says_so() -> None:
    """Too few rounds for an interval (NaN, or 0 to infinity): "no interval", never nan/inf."""
    from envmatrix.analysis.stats import RatioCI, Verdict
    from envmatrix.report.markdown import fmt_change
    few = RatioCI("p50", 1.25, float("nan"), float("nan"))
    verdict = Verdict("c", "b", "e", "w", "cpu", "inconclusive", ratios={"p50": few})
    assert fmt_change(verdict) == "+25.0% [no interval]"
    unbounded = RatioCI("p50", 1.25, 0.0, float("inf"), verdict="inconclusive")
    assert fmt_change(Verdict("c", "b", "e", "w", "cpu", "inconclusive",
                              ratios={"p50": unbounded})) == "+25.0% [no interval]"
    sure = RatioCI("p50", 1.25, 1.2, 1.3)
    assert fmt_change(Verdict("c", "b", "e", "w", "cpu", "slower", ratios={"p50": sure})) \
        == "+25.0% [+20.0%, +30.0%]"


def _rounds(res: dict, n: int) -> dict:
    """Every repeat its own interleaved round (one process a round), in one run's window."""
    for i, rep in enumerate(res["repeats"][:n]):
        rep["round"] = i
    res["host"].update(started_at="2026-11-23T12:00:00Z", finished_at="2026-11-23T12:00:14Z")
    return res


def test_exports_say_where_a_comparison_settled_and_leave_no_interval_empty(
        tmp_path: Path) -> None:
    """16 paired rounds, half the time: settled at the first look that can settle it. Too
    few rounds: no interval, empty in results.csv and null in results.json at both ends."""
    run = make_run(tmp_path / "paired", [_rounds(fake_result(BASE, p50=0.010, repeats=16,
                                                             seed=1), 16),
                                         _rounds(fake_result(CAND, p50=0.005, repeats=16,
                                                             seed=2), 16)])
    rules = VerdictRules(budget=16, look_every=8)
    build_report(run, rules)
    cand = list(csv.DictReader((run / "results.csv").open()))[1]
    assert (cand["verdict"], cand["settled_round"], cand["rounds_planned"]) == (
        "faster", "8", "16")
    assert cand["error_rate"] == "comparison" and cand["p_value"] == ""
    report = (run / "report.md").read_text()
    assert "**faster** (round 8 of 16)" in report and "settled at round 8 of 16" in report
    few = make_run(tmp_path / "few", [fake_result(BASE, p50=0.010, repeats=3, seed=1),
                                      fake_result(CAND, p50=0.005, repeats=3, seed=2)])
    build_report(few, RULES)
    row = list(csv.DictReader((few / "results.csv").open()))[1]
    assert (row["verdict"], row["p50_low"], row["p50_high"], row["settled_round"]) == (
        "inconclusive", "", "", "")
    assert float(row["p50_ratio"]) < 1.0
    doc = json.loads((few / "results.json").read_text())
    assert (doc["rows"][1]["p50_low"], doc["rows"][1]["p50_high"]) == (None, None)
    p50 = doc["verdicts"][0]["ratios"]["p50"]
    assert (p50["low"], p50["high"], p50["verdict"]) == (None, None, "inconclusive")
    text = (few / "report.md").read_text()
    assert "[no interval]" in text and "too few rounds for an interval" in text
    assert "inf%" not in text and not re.search(r"\bnan\b", text, flags=re.I)
