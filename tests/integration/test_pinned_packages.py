"""A pin of any package, not only the runtime, is checked against what the image installed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from pipelinelib import MATRICES, load_result, matrix_run

from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pins_of_protobuf_and_packaging_give_valid_cells(engine: Engine, tmp_path: Path) -> None:
    run = matrix_run(MATRICES / "pinned_extra.yaml", tmp_path, "pinned")
    assert run.code == 0, run.stderr
    rows = {r["cell"]: r for r in csv.DictReader((run.out / "results.csv").open())}
    assert list(rows) == ["trixie-ort1.32.0--mlp--cpu"]
    result = load_result(run.out, "trixie-ort1.32.0--mlp--cpu")
    installed = result["fingerprint"]["packages"]
    assert installed["protobuf"] == "5.29.5" and installed["packaging"] == "24.2"
    assert "flatbuffers" in installed  # every distribution, also those nobody pinned
    assert [r["valid"] for r in rows.values()] == ["True"], rows
    assert "requested but" not in (run.out / "report.md").read_text()
