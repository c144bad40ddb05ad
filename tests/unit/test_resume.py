"""--resume rules without an engine: the run's own plan, the matrix check, the selection, and
the run record that grows while the plan part of matrix.resolved.yaml keeps its bytes."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.progress import Progress
from envmatrix.reproduce import resume
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import RunDir, atomic_write_json, create_run_dir
from envmatrix.rundir.plan import Plan

TWO_ENVS = Path(__file__).resolve().parents[1] / "integration" / "matrices" / "two_envs.yaml"
BULLSEYE, TRIXIE = "bullseye-ort1.8.0", "trixie-ort1.32.0"


class Recorder(Progress):
    """Progress that keeps its lines (stage, text, style) instead of printing them."""

    def __init__(self) -> None:
        super().__init__(Console(file=io.StringIO()))
        self.lines: list[tuple[str, str, str]] = []

    def __call__(self, stage: str, message: str, *, style: str = "") -> None:
        self.lines.append((stage, message, style))

    def text(self) -> str:
        return "\n".join(f"{stage} {message}" for stage, message, _ in self.lines)

    def warnings(self) -> list[str]:
        return [message for _, message, style in self.lines if style == "yellow"]


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(TWO_ENVS.read_text())
    return path


def started_run(tmp_path: Path, matrix: Path, **load: Any) -> tuple[RunDir, Plan]:
    """A run directory as `pipeline.run` leaves it after its builds (plan and images)."""
    plan = config.load_plan(matrix, **load)
    run = create_run_dir(tmp_path / "reports", "r1")
    images = {env.id: {"tag": f"envmatrix/{env.id}:aa", "image_id": "sha256:aa",
                       "size_bytes": 1} for env in plan.environments}  # fmt: skip
    planfile.dump_resolved(plan, run.resolved_path, {"run_id": "r1", "images": images,
                                                   "started_at": "2026-11-30T01:00:00Z"})
    return run, plan


def plan_part(path: Path) -> str:
    """Everything of matrix.resolved.yaml before its `run:` record."""
    text = path.read_text()
    return text[: text.index("\nrun:\n")]


def test_resume_works_from_the_run_plan_and_only_selects_what_runs_now(
    tmp_path: Path, matrix: Path
) -> None:
    run, plan = started_run(tmp_path, matrix)
    progress = Recorder()
    resumed = resume.resume_plan(run, matrix=None, only=[TRIXIE], skip=[], progress=progress)
    assert [c.id for c in resumed.resolved.plan.cells] == [c.id for c in plan.cells]
    assert [c.environment.id for c in resumed.selected.cells] == [TRIXIE]
    assert [e.id for e in resumed.selected.environments] == [TRIXIE]
    assert [b.name for b in resumed.selected.bases] == ["trixie"]
    assert resumed.selected.baseline == BULLSEYE  # the run's baseline, not the selection's
    assert "its own plan, 2 cells; 1 selected now" in progress.text()
    assert progress.warnings() == []  # the matrix file is unchanged
    with pytest.raises(ConfigError, match="--only 'nope' matches no environment or cell id"):
        resume.resume_plan(run, matrix=None, only=["nope"], skip=[], progress=progress)


def test_a_changed_matrix_never_changes_the_run(tmp_path: Path, matrix: Path) -> None:
    run, plan = started_run(tmp_path, matrix)
    matrix.write_text(matrix.read_text().replace("warmup: 3", "warmup: 5"))
    progress = Recorder()
    resumed = resume.resume_plan(run, matrix=None, only=[], skip=[], progress=progress)
    assert resumed.selected.measure == plan.measure  # the run's settings, not the file's
    (warning,) = progress.warnings()
    assert "changed since this run was planned; the run's own plan is used" in warning
    assert "2 cells with other settings (measure: warmup 3 in the run, 5 in the file)" in warning
    # Named explicitly, a file that is not the run is refused: the user asked for something
    # the resumed run cannot be.
    with pytest.raises(ConfigError) as info:
        resume.resume_plan(run, matrix=matrix, only=[], skip=[], progress=progress)
    assert "does not describe the run being resumed" in str(info.value)
    assert "Fix: drop --matrix" in str(info.value)


def test_matrix_differences_name_cells_gone_added_and_settings(
    tmp_path: Path, matrix: Path
) -> None:
    run_plan = config.load_plan(matrix)
    text = matrix.read_text()
    text = text.replace('packages: {onnxruntime: "1.32.0"}', 'packages: {onnxruntime: "1.31.0"}')
    text = text.replace("opset: 11", "opset: 12")
    matrix.write_text(text)
    differences, extra = resume.plan_differences(run_plan, config.load_plan(matrix))
    assert differences[0] == f"1 cell of the run not in the file: {TRIXIE}--mlp--cpu"
    assert differences[1] == "model_export: opset 11 in the run, 12 in the file"
    assert extra == ["trixie-ort1.31.0--mlp--cpu"]


def test_a_run_started_with_only_is_not_a_change(tmp_path: Path, matrix: Path) -> None:
    run, _ = started_run(tmp_path, matrix, only=[BULLSEYE])
    progress = Recorder()
    resume.resume_plan(run, matrix=matrix, only=[], skip=[], progress=progress)  # no refusal
    (note,) = progress.warnings()
    assert f"also has 1 cell this run does not plan ({TRIXIE}--mlp--cpu)" in note


def test_a_gone_or_broken_matrix_file_does_not_block_a_resume(
    tmp_path: Path, matrix: Path
) -> None:
    run, _ = started_run(tmp_path, matrix)
    matrix.write_text("version: 1\nbases: [broken\n")
    progress = Recorder()
    resume.resume_plan(run, matrix=None, only=[], skip=[], progress=progress)
    assert "no longer loads" in progress.warnings()[0]
    matrix.unlink()
    progress = Recorder()
    resume.resume_plan(run, matrix=None, only=[], skip=[], progress=progress)
    assert "is not there: the run's own plan is all a resume needs" in progress.text()


def test_record_grows_the_run_record_and_keeps_the_plan_bytes(
    tmp_path: Path, matrix: Path
) -> None:
    run, _ = started_run(tmp_path, matrix)
    before = plan_part(run.resolved_path)
    new_image = {"tag": f"envmatrix/{TRIXIE}:bb", "image_id": "sha256:bb", "size_bytes": 2}
    failed = {"tag": None, "image_id": None, "size_bytes": None}
    resume.record(run, {TRIXIE: new_image, BULLSEYE: failed}, only=[TRIXIE], skip=[],
                  cells=[f"{TRIXIE}--mlp--cpu"])
    assert plan_part(run.resolved_path) == before
    resolved = planfile.read_resolved(run.resolved_path)
    assert resolved.run.images[TRIXIE].tag == f"envmatrix/{TRIXIE}:bb"
    assert resolved.run.images[BULLSEYE].tag == f"envmatrix/{BULLSEYE}:aa"  # kept, not erased
    assert resolved.run.started_at == "2026-11-30T01:00:00Z"
    resume.record(run, {}, only=[], skip=[BULLSEYE], cells=[])
    text = run.resolved_path.read_text()
    assert plan_part(run.resolved_path) == before
    resumes = re.findall(r"(?m)^  - at: ", text)
    assert len(resumes) == 2 and "only:\n    - trixie-ort1.32.0" in text


def test_left_unfinished_names_cells_outside_the_selection_without_an_ok_result(
    tmp_path: Path, matrix: Path
) -> None:
    run, plan = started_run(tmp_path, matrix)
    resumed = resume.resume_plan(run, matrix=None, only=[TRIXIE], skip=[], progress=Recorder())
    assert resume.left_unfinished(run, resumed) == [f"{BULLSEYE}--mlp--cpu"]
    bullseye = plan.cells[0]
    atomic_write_json(run.result_path(bullseye.id), {
        "schema": "envmatrix.result/1", "status": "ok", "cell": bullseye.id,
        "host": {"config_hash": bullseye.config_hash(plan.measure)}})
    assert resume.left_unfinished(run, resumed) == []


@pytest.mark.parametrize("matrix_file", ["matrix.yaml", "examples/cuda-upgrade.yaml"])
def test_the_run_record_update_keeps_every_plan_byte(tmp_path: Path, matrix_file: str) -> None:
    """Long descriptions (folded lines), floats, unicode: written back exactly as they were."""
    plan = config.load_plan(Path(__file__).resolve().parents[2] / matrix_file)
    path = tmp_path / "matrix.resolved.yaml"
    planfile.dump_resolved(plan, path, {"run_id": "r", "started_at": "2026-11-30T01:00:00Z"})
    before = plan_part(path)
    planfile.update_run_record(path, lambda run: {**run, "resumes": [{"at": "now"}]})
    assert plan_part(path) == before
    assert planfile.read_resolved(path).run.started_at == "2026-11-30T01:00:00Z"
