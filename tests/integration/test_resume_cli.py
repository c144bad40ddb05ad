"""Run directory integrity through the real CLI: `--resume --only` finishes part of a run
without changing its plan, re-measures a kept result whose model hash no longer matches (and
says so), and its report still lists every cell of the plan.

The matrix is tests/integration/matrices/two_envs.yaml copied exactly (its images are the ones
the other integration tests build and reuse), in a temporary folder; every run has --out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testlib import envmatrix_process as cli

from envmatrix.config import load as config
from envmatrix.rundir import planfile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWO_ENVS = Path(__file__).resolve().parent / "matrices" / "two_envs.yaml"
BULLSEYE, TRIXIE = "bullseye-ort1.8.0", "trixie-ort1.32.0"


def plan_part(path: Path) -> bytes:
    """matrix.resolved.yaml up to its `run:` record: the plan, which a resume never rewrites."""
    data = path.read_bytes()
    return data[: data.index(b"\nrun:\n")]


def result(run: Path, cell: str) -> dict[str, object]:
    return dict(json.loads((run / "results" / f"{cell}.json").read_text()))


def test_resume_with_only_keeps_the_plan_and_reports_every_cell(
    engine: object, tmp_path: Path
) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(TWO_ENVS.read_text())
    cells = [cell.id for cell in config.load_plan(matrix).cells]
    bullseye, trixie = (next(c for c in cells if c.startswith(env)) for env in (BULLSEYE, TRIXIE))
    run = tmp_path / "run"
    first = cli("matrix", "--matrix", str(matrix), "--out", str(run), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    plan_bytes = plan_part(run / "matrix.resolved.yaml")
    recorded = planfile.read_resolved(run / "matrix.resolved.yaml").config_hashes

    # A partial run: trixie's result is gone, and bullseye's claims another model.
    (run / "results" / f"{trixie}.json").unlink()
    tampered = result(run, bullseye)
    tampered["model"] = {**dict(tampered["model"]), "sha256": "0" * 64}  # type: ignore[arg-type]
    (run / "results" / f"{bullseye}.json").write_text(json.dumps(tampered))
    # The matrix file changes meanwhile: the run must not follow it.
    matrix.write_text(matrix.read_text().replace("warmup: 3", "warmup: 4"))

    refused = cli("matrix", "--resume", str(run), "--matrix", str(matrix), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "does not describe the run being resumed" in refused.stderr
    assert not (run / "results" / f"{trixie}.json").exists()  # nothing ran

    resumed = cli("matrix", "--resume", str(run), "--only", BULLSEYE, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "the run's own plan is used" in resumed.stderr  # the changed file, named
    assert f"{bullseye}: measuring again: model sha256 000000000000 in its result" in (
        resumed.stderr)
    assert f"not finished: {trixie}" in resumed.stderr
    assert plan_part(run / "matrix.resolved.yaml") == plan_bytes
    again = result(run, bullseye)
    assert again["status"] == "ok" and dict(again["model"])["sha256"] != "0" * 64  # type: ignore[arg-type]
    assert dict(again["host"])["config_hash"] == recorded[bullseye]  # type: ignore[arg-type]
    assert not (run / "results" / f"{trixie}.json").exists()  # not selected: not run
    reported = json.loads((run / "results.json").read_text())["cells"]  # cell id -> result
    assert list(reported) == cells, "the report lists every cell of the plan"
    assert [reported[cell]["status"] for cell in cells] == ["ok", "skipped"]
    assert "not run" in reported[trixie]["reason"]
    assert trixie in (run / "report.md").read_text()

    finished = cli("matrix", "--resume", str(run), cwd=tmp_path)  # everything left
    assert finished.returncode == 0, finished.stderr
    assert plan_part(run / "matrix.resolved.yaml") == plan_bytes
    assert f"{bullseye}: kept:" in finished.stderr  # every hash matches: not measured again
    assert "measuring again" not in finished.stderr
    assert result(run, bullseye) == again
    assert result(run, trixie)["status"] == "ok"
    record = (run / "matrix.resolved.yaml").read_text()
    assert record.count("\n  - at: ") == 2  # both resumes are in the run record
