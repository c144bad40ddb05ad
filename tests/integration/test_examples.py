"""The two knob examples, run as committed at a small budget through the real engine.

examples/openvino-tuning.yaml: one onnxruntime-openvino image, cells differing in OpenVINO's
performance hint, streams, threads and requests in flight; examples/torch-vs-onnx.yaml: one
image with onnxruntime and torch, the zoo's networks through both. Each cell must run on the
settings it names (the result shows them in force), and the report must answer the example's
question in its summary. Four rounds instead of the examples' twenty keep this short; the
committed reports (reports/openvino-tuning, reports/torch-vs-onnx) come from full runs.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from pipelinelib import envmatrix_cli, load_result

from envmatrix.config import load as config
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROUNDS = "4"


def _copy_example(name: str, tmp_path: Path) -> Path:
    """The example as committed, in the test's own folder."""
    matrix = tmp_path / name
    shutil.copy(EXAMPLES / name, matrix)
    return matrix


def _run_example(matrix: Path, tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    out = tmp_path / "run"
    run = envmatrix_cli(["matrix", "--matrix", str(matrix), "--out", str(out),
                         "--repeats", ROUNDS], tmp_path, out)
    assert run.code == 0, run.stderr[-4000:]
    with (out / "results.csv").open() as handle:
        rows = {row["cell"]: row for row in csv.DictReader(handle)}
    return out, rows


def test_openvino_tuning_cells_run_on_their_settings(engine: Engine, tmp_path: Path) -> None:
    matrix = _copy_example("openvino-tuning.yaml", tmp_path)
    plan = config.load_plan(matrix)
    assert len({c.environment.id for c in plan.cells}) == 1  # one image
    out, rows = _run_example(matrix, tmp_path)
    for cell in plan.cells:
        result = load_result(out, cell.id)
        assert result["status"] == "ok", result["reason"]
        want = cell.knobs.concurrency or 1
        assert result["settings"]["concurrency"] == want
        assert result["summary"]["scenario"] == ("offline" if want > 1 else "single-stream")
        assert {r["concurrency"] for r in result["repeats"]} == {want}
        assert result["summary"]["samples_per_s"] > 0
        # what the OpenVINO EP was handed: the hint of the cell's own load_config
        options = dict(cell.provider_options)
        passed = result["provider"]["options_passed"]
        hint = options["load_config"]["CPU"]["PERFORMANCE_HINT"]
        assert hint in passed["load_config"], passed
        if cell.knobs.threads:
            assert passed["num_of_threads"] == str(cell.knobs.threads)
            assert result["session"]["intra_op_threads"] == cell.knobs.threads
        assert rows[cell.id]["concurrency"] == str(want)
        assert float(rows[cell.id]["samples_per_s"]) > 0
    report = (out / "report.md").read_text()
    summary = report.split("\n## ", 2)[1]
    assert "Highest throughput" in summary and "samples/s" in summary
    assert "## Within each environment" in report


def test_torch_vs_onnx_compares_backends_in_one_image(engine: Engine, tmp_path: Path) -> None:
    # torch 2.13.0+cpu reaches the build through the host's pip (build.host_wheels), as on any
    # machine whose pip knows a CPU wheel of it: nothing is set up for the test beforehand
    matrix = _copy_example("torch-vs-onnx.yaml", tmp_path)
    plan = config.load_plan(matrix)
    out, rows = _run_example(matrix, tmp_path)
    for cell in plan.cells:
        result = load_result(out, cell.id)
        assert result["status"] == "ok", result["reason"]
        assert result["backend"] == cell.workload.backend
        assert rows[cell.id]["backend"] == cell.workload.backend
        assert rows[cell.id]["network"] == cell.workload.network_name
        assert float(rows[cell.id]["cold_start_ms"]) > 0
        assert float(rows[cell.id]["peak_rss_mib"]) > 0
    torch_cells = [c for c in plan.cells if c.workload.backend == "torch"]
    assert {c.workload.network_name for c in torch_cells} == {"cnn", "transformer"}
    report = (out / "report.md").read_text()
    within = report.split("## Within each environment", 1)[1].split("\n## ", 1)[0]
    for cell in torch_cells:  # one table per network, the torch row against onnxruntime's
        table = within.split(f"### {cell.environment.id} / {cell.workload.network_name}")[1]
        row = next(line for line in table.splitlines() if line.startswith("| `torch`"))
        assert "pass (matched by position)" in row, row
    summary = report.split("\n## ", 2)[1]
    assert "Lowest latency" in summary
