"""A `threads: [1, 2]` axis through the real engine: one image, two cells, each in force.

The environment is trixie-ort1.32.0 of the default matrix, copied exactly (its image is
reused); the axis makes two cells whose results show 1 and 2 intra-op threads, read back from
the session, and the report and results.csv carry a threads column.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from pipelinelib import MATRICES, load_result, matrix_run

from envmatrix.config import load as config
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MATRIX = MATRICES / "threads_axis.yaml"
CELLS = {"trixie-ort1.32.0--mlp--cpu--t1": 1, "trixie-ort1.32.0--mlp--cpu--t2": 2}


def test_threads_axis_cells_run_with_their_threads(engine: Engine, tmp_path: Path) -> None:
    plan = config.load_plan(MATRIX)
    assert [e.id for e in plan.environments] == ["trixie-ort1.32.0"]
    assert [c.id for c in plan.cells] == list(CELLS)
    run = matrix_run(MATRIX, tmp_path, "run")
    assert run.code == 0, run.stderr[-3000:]
    for cell, threads in CELLS.items():
        result = load_result(run.out, cell)
        assert result["status"] == "ok", result["reason"]
        assert result["settings"]["threads"] == threads
        assert result["session"]["intra_op_threads"] == threads  # read back from the session
        assert {r["threads"]["intra_op_effective"] for r in result["repeats"]} == {threads}
        assert result["host"]["command"][result["host"]["command"].index("--threads") + 1] \
            == str(threads)
    with (run.out / "results.csv").open() as handle:
        rows = {row["cell"]: row for row in csv.DictReader(handle)}
    assert {cell: rows[cell]["threads"] for cell in CELLS} == {
        cell: str(threads) for cell, threads in CELLS.items()}
    assert re.search(r"\|\s*threads\s*\|", (run.out / "report.md").read_text())


BATCH_MATRIX = MATRICES / "batch_axis.yaml"


def test_batch_and_concurrency_cells_run_as_named(engine: Engine, tmp_path: Path) -> None:
    """Each cell feeds its batch and keeps its requests in flight: samples/s counts the
    batch, the model's dynamic first dimension takes it, and results.csv says both."""
    plan = config.load_plan(BATCH_MATRIX)
    assert {c.workload.name for c in plan.cells} == {"mlp-b1", "mlp-b4", "transformer"}
    run = matrix_run(BATCH_MATRIX, tmp_path, "run")
    assert run.code == 0, run.stderr[-3000:]
    with (run.out / "results.csv").open() as handle:
        rows = {row["cell"]: row for row in csv.DictReader(handle)}
    for cell in plan.cells:
        result = load_result(run.out, cell.id)
        assert result["status"] == "ok", result["reason"]
        batch, in_flight = cell.workload.batch, cell.knobs.concurrency
        assert result["settings"]["batch"] == batch
        assert result["settings"]["concurrency"] == in_flight
        assert [i["shape"][0] for i in result["inputs"]] == [batch] * len(result["inputs"])
        assert [o["shape"][0] for o in result["outputs"]] == [batch] * len(result["outputs"])
        summary = result["summary"]
        assert summary["samples_per_s"] == pytest.approx(batch * summary["requests_per_s"])
        assert rows[cell.id]["batch"] == str(batch)
        assert rows[cell.id]["concurrency"] == str(in_flight)
