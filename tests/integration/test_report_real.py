"""The report's headline cases, proved with real runs: the CLI as a subprocess, the real engine,
the real harness in the default matrix's images.

(a) A silent provider fallback (OpenVINO asked for device GPU on a machine without one) makes
    the cell invalid in the summary and the table, while the run itself succeeds.
(b) Two runs of one environment whose model differs only by perturbed weights: `compare` puts
    the output parity failure at the top, with the size of the difference.
(c) A rerun of the same matrix compares with output parity passing.

The matrices under matrices/report_*.yaml copy environments of matrix.yaml exactly (same
content-hash tags), so the images of the default matrix are reused; each run measures a small
MLP in two short repeats. Every run has --out in a temporary folder.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testlib import envmatrix_process

import envmatrix
from envmatrix.analysis.parity import TOLERANCES
from envmatrix.config import load as config
from envmatrix.inputs import zoo
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(envmatrix.__file__).resolve().parents[1]
MATRICES = Path(__file__).resolve().parent / "matrices"
DEFAULT = REPO / "matrix.yaml"
FALLBACK = MATRICES / "report_fallback.yaml"
USER_MODEL = MATRICES / "report_user_model.yaml"
OV_ENV, BASE_ENV = "bookworm-ortov1.24.1", "trixie-ort1.32.0"
OV_CELL = f"{OV_ENV}--mlp--openvino"
M_CELL = f"{BASE_ENV}--m--cpu"
PERTURB = 0.05
# A first run on an engine without the ortov image builds it (about 2 minutes on 2 cores).
TIMEOUT_S = 900


Cli = subprocess.CompletedProcess  # returncode, stdout, stderr


def cli(*args: str, cwd: Path) -> Cli[str]:
    return envmatrix_process(*args, cwd=cwd, timeout=TIMEOUT_S)


def matrix(matrix_file: Path, out: Path) -> Cli[str]:
    return cli("matrix", "--matrix", str(matrix_file), "--out", str(out), cwd=out.parent)


def listed_tags(matrix_file: Path, cwd: Path) -> dict[str, str]:
    """environment id -> "context <hash> + base <ref>", as `envmatrix list` prints them (the
    image tag hashes the same context and the base's id: same context and base, same tag)."""
    run = cli("list", "--matrix", str(matrix_file), cwd=cwd)
    assert run.returncode == 0, run.stderr
    return dict(re.findall(r"^(\S+)\t(context [0-9a-f]{16} \+ base \S+)$", run.stdout,
                           re.MULTILINE))


def result(run_dir: Path, cell: str) -> dict[str, Any]:
    return json.loads((run_dir / "results" / f"{cell}.json").read_text())


def section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def row_cells(text: str, start: str) -> list[str]:
    """The cells of the first markdown table row starting with `start`."""
    row = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in row.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report-real")


# -- (a) a silent fallback to the CPU is shown ---------------------------------------------


@pytest.fixture(scope="module")
def fallback(engine: Engine, workdir: Path) -> tuple[Cli[str], Path]:
    out = workdir / "fallback"
    return matrix(FALLBACK, out), out


def test_fallback_matrix_reuses_the_default_matrix_images(
        fallback: tuple[Cli[str], Path], workdir: Path) -> None:
    """Provider options belong to the cell, not to the image: the tags are the default's."""
    run, _out = fallback
    ours, default = listed_tags(FALLBACK, workdir), listed_tags(DEFAULT, workdir)
    assert sorted(ours) == [OV_ENV, BASE_ENV]
    for env_id, context in ours.items():
        assert context == default[env_id], f"{env_id}: {context} is not the default's image"
        assert re.search(rf"build\s+{re.escape(env_id)}: (reused|built) envmatrix/"
                         rf"{re.escape(env_id)}:[0-9a-f]{{16}} ", run.stderr), run.stderr


def test_fallback_cell_records_the_fallback(fallback: tuple[Cli[str], Path]) -> None:
    _run, out = fallback
    res = result(out, OV_CELL)
    assert res["status"] == "ok", res.get("reason")
    prov = res["provider"]
    assert prov["requested"] == "OpenVINOExecutionProvider"
    assert prov["options"] == {"device_type": "GPU"}
    assert "OpenVINOExecutionProvider" in prov["available"]
    assert prov["active"] == ["CPUExecutionProvider"]
    assert prov["fallback"] is True
    assert "GPU" in prov["reason"], prov["reason"]
    baseline = result(out, f"{BASE_ENV}--mlp--cpu")
    assert baseline["status"] == "ok" and baseline["provider"]["fallback"] is False


def test_fallback_is_invalid_in_the_summary_and_the_table(fallback: tuple[Cli[str], Path]) -> None:
    _run, out = fallback
    text = (out / "report.md").read_text()
    summary = section(text, "Summary")
    # The summary table's row, the manager's sentence, and the reason once, in stats' words
    # with the runtime's own.
    summary_row = row_cells(summary, f"| {OV_ENV} ")
    assert summary_row[2] == "OpenVINO" and summary_row[-1] == "**invalid**"
    assert f"- **{OV_ENV}** on OpenVINO: invalid on mlp (see below)" in summary
    reason = next(line for line in summary.splitlines()
                  if line.startswith(f"- {OV_CELL}: **invalid**: "))
    assert reason.startswith(
        f"- {OV_CELL}: **invalid**: requested provider OpenVINOExecutionProvider is not active, "
        "it fell back to CPUExecutionProvider; the runtime said: ")
    assert "Device GPU is not available" in reason
    table_row = row_cells(section(text, "Workload mlp"), f"| {OV_ENV} ")
    assert table_row[1] == "OpenVINO" and table_row[-1] == "**invalid**"
    assert table_row[-2] == table_row[-3] == "–"  # no change for numbers that do not count
    problems = row_cells(section(text, "Cells without valid numbers"), f"| {OV_CELL}")
    assert problems[1] == "ok" and "is not active" in problems[2]


def test_fallback_is_a_finished_run_with_exit_0(fallback: tuple[Cli[str], Path]) -> None:
    """A fallback measured something (the CPU): its status is ok, its verdict invalid; the
    CLI counts only cells without numbers as failed (exit 10), so this run exits 0."""
    run, out = fallback
    assert run.returncode == 0, run.stderr
    assert re.search(r"done\s+2/2 cells ok", run.stderr), run.stderr
    assert run.stdout.strip().splitlines()[-1] == f"Report: {out / 'report.md'}"


# -- (b), (c) output parity between runs ---------------------------------------------------


def _model_run_folder(workdir: Path, name: str, perturb: float) -> Path:
    """A folder with the user-model matrix and the zoo's mlp written as its mlp.onnx."""
    folder = workdir / name
    folder.mkdir()
    export = config.load_plan(DEFAULT).extra["model_export"]
    zoo.write_model("mlp", folder, ir_version=int(export["ir_version"]),
                    opset=int(export["opset"]), perturb=perturb)
    shutil.copyfile(USER_MODEL, folder / "matrix.yaml")
    return folder


@pytest.fixture(scope="module")
def model_runs(engine: Engine, workdir: Path) -> dict[str, Path]:
    """Run 1 and its rerun on the clean model, and run 2 on the perturbed one."""
    clean = _model_run_folder(workdir, "clean", 0.0)
    perturbed = _model_run_folder(workdir, "perturbed", PERTURB)
    runs = {"run1": clean, "rerun": clean, "run2": perturbed}
    for name, folder in runs.items():
        done = matrix(folder / "matrix.yaml", workdir / name)
        assert done.returncode == 0, done.stderr
    return {name: workdir / name for name in runs}


def _compare(a: Path, b: Path, workdir: Path) -> tuple[Cli[str], str]:
    out = workdir / f"{a.name}-vs-{b.name}.md"
    run = cli("compare", str(a), str(b), "--out", str(out), cwd=workdir)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"Comparison: {out}"
    return run, out.read_text()


def _max_abs_diff(a: Path, b: Path) -> float:
    """Computed here from the two runs' saved outputs, independently of
    envmatrix.analysis.parity."""
    with np.load(a / "outputs" / f"{M_CELL}.npz") as xa, \
            np.load(b / "outputs" / f"{M_CELL}.npz") as xb:
        assert xa.files == xb.files == ["logits"]
        return float(np.max(np.abs(xa["logits"].astype(float) - xb["logits"].astype(float))))


def test_the_runs_saw_the_same_inputs(model_runs: dict[str, Path]) -> None:
    inputs = {name: result(path, M_CELL)["inputs"] for name, path in model_runs.items()}
    assert inputs["run1"] == inputs["rerun"] == inputs["run2"]
    models = {name: result(path, M_CELL)["model"]["sha256"] for name, path in model_runs.items()}
    assert models["run1"] == models["rerun"] != models["run2"]


def test_perturbed_weights_are_the_comparison_headline(model_runs: dict[str, Path],
                                                       workdir: Path) -> None:
    run, text = _compare(model_runs["run1"], model_runs["run2"], workdir)
    assert f"parity  {M_CELL} (B) computes different outputs from {M_CELL} (A)" in run.stderr
    title, headline = text.split("\n\n", 2)[:2]
    assert title.startswith("# Comparison: run run2 (B) vs run run1 (A)")
    assert headline.startswith("> **Output parity failure:** 1 matched cell(s) of run B "
                               "compute different outputs from run A on identical inputs:")
    found = re.search(r"logits: (\d+) of (\d+) elements outside tolerance; max abs diff "
                      r"(\S+), max rel diff (\S+), cosine (\S+); the model files differ",
                      headline)
    assert found, headline
    bad, total, max_abs, _max_rel, cosine = found.groups()
    expected = _max_abs_diff(model_runs["run1"], model_runs["run2"])
    assert max_abs == f"{expected:.3g}"
    rtol, _atol = TOLERANCES["float32"]
    assert expected > 100 * rtol, "a 5% perturbation must move the logits well past rtol"
    assert 0 < int(bad) <= int(total) and float(cosine) < 1.0
    assert row_cells(text, "| m ")[-1] == "**FAIL**"


def test_a_rerun_compares_with_parity_passing(model_runs: dict[str, Path],
                                              workdir: Path) -> None:
    run, text = _compare(model_runs["run1"], model_runs["rerun"], workdir)
    assert "Output parity failure" not in text and "parity" not in run.stderr
    assert row_cells(text, "| m ")[-1] == "pass"
    parity_row = row_cells(section(text, "Output parity"), f"| {M_CELL}")
    assert parity_row[1] == "logits" and parity_row[-1] == "pass"
    assert parity_row[3] == f"{_max_abs_diff(model_runs['run1'], model_runs['rerun']):.3g}"
