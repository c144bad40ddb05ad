"""The product's main job end to end: `python -m envmatrix matrix` on the real engine.

The CLI runs as a subprocess, exactly as `nox -s matrix` runs it, on small matrices under
matrices/ whose environments are copies of the default matrix's (same content-hash tags, so the
images the other integration tests build are reused and nothing new is built when they exist).
The working directory is a temporary folder and every run has --out, so nothing lands in the
repository's reports/.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from pipelinelib import (
    MATRICES,
    CliRun,
    build_lines,
    cell_ids,
    envmatrix_cli,
    load_result,
    matrix_run,
)

from envmatrix.config import load as config
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = MATRICES / "two_envs.yaml"
BAD_PIN = MATRICES / "bad_pin.yaml"
BAD_ENV = "bullseye-ort1.8.99"
VERDICT = re.compile(r"\b(faster|slower|equivalent|inconclusive)\b")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def first_run(engine: Engine, workdir: Path) -> CliRun:
    return matrix_run(GOOD, workdir, "run1")


@pytest.fixture(scope="module")
def second_run(first_run: CliRun, workdir: Path) -> CliRun:
    assert first_run.code == 0, first_run.stderr
    return matrix_run(GOOD, workdir, "run2")


# -- a good matrix ---------------------------------------------------------------------------


def test_matrix_run_writes_the_report_and_says_where(first_run: CliRun, workdir: Path) -> None:
    assert first_run.code == 0, first_run.stderr
    report = first_run.out / "report.md"
    assert first_run.stdout.strip().splitlines()[-1] == f"Report: {report}"
    text = report.read_text()
    for env_id in ("bullseye-ort1.8.0", "trixie-ort1.32.0"):
        assert env_id in text
    row = next(line for line in text.splitlines()
               if line.startswith("| trixie-ort1.32.0 ") and "%" in line)
    assert VERDICT.search(row), f"no verdict in the candidate's row: {row}"
    assert "baseline environment **bullseye-ort1.8.0**" in text
    assert (first_run.out / "results.json").is_file() and (first_run.out / "results.csv").is_file()
    assert not (workdir / "reports").exists(), "--out must keep the run out of reports/"


def test_every_cell_has_an_ok_result_measured_as_configured(first_run: CliRun) -> None:
    assert first_run.code == 0, first_run.stderr
    measure = config.load_plan(GOOD).measure
    tags = {env_id: line.split()[1] for env_id, line in build_lines(first_run).items()}
    for cell in cell_ids(GOOD):
        result = load_result(first_run.out, cell)
        assert result["schema"] == "envmatrix.result/1"
        assert result["status"] == "ok" and result["reason"] is None, result.get("reason")
        assert result["host"]["image_tag"] == tags[result["environment"]]
        assert result["provider"]["active"][0] == "CPUExecutionProvider"
        assert len(result["repeats"]) == measure.repeats
        for repeat in result["repeats"]:
            assert len(repeat["latencies_s"]) >= measure.min_iterations
            assert repeat["measure_wall_s"] >= measure.min_time_s
        assert 0 < result["summary"]["latency_s"]["p50"] < 1.0
    with (first_run.out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["cell"] for r in rows) == sorted(cell_ids(GOOD))
    assert {r["status"] for r in rows} == {"ok"}
    merged = json.loads((first_run.out / "results.json").read_text())
    assert merged["baseline"] == "bullseye-ort1.8.0"


def test_done_line_accounts_for_the_wall_time(first_run: CliRun) -> None:
    ok, total, wall, inside, overhead = first_run.done()
    assert (ok, total) == (2, 2)
    assert 0 < inside < wall <= first_run.seconds
    assert overhead == pytest.approx(wall - inside, abs=0.16)  # each rounded to 0.1 s


def test_second_run_builds_nothing(second_run: CliRun) -> None:
    assert second_run.code == 0, second_run.stderr
    verbs = build_lines(second_run)
    assert sorted(verbs) == ["bullseye-ort1.8.0", "trixie-ort1.32.0"]
    assert all(v.startswith("reused ") for v in verbs.values()), verbs
    assert not re.search(r": built ", second_run.stderr)
    ok, total, wall, inside, overhead = second_run.done()
    print(f"second run: wall {wall:.1f}s, inside containers {inside:.1f}s, overhead "
          f"{overhead:.1f}s (subprocess {second_run.seconds:.1f}s)")
    assert (ok, total) == (2, 2)
    # Reusing images, preparing one small model and writing the report: seconds, not minutes.
    assert overhead < 30, second_run.stderr


def test_report_command_rebuilds_the_same_bytes(first_run: CliRun, workdir: Path) -> None:
    assert first_run.code == 0, first_run.stderr
    names = ("report.md", "results.csv", "results.json")
    written = {name: (first_run.out / name).read_bytes() for name in names}
    for _ in range(2):
        again = envmatrix_cli(["report", str(first_run.out)], workdir, first_run.out)
        assert again.code == 0, again.stderr
        assert again.stdout.strip().splitlines()[-1] == f"Report: {first_run.out / 'report.md'}"
        for name in names:
            assert (first_run.out / name).read_bytes() == written[name], f"{name} changed"


# -- a matrix with a pin that does not exist -------------------------------------------------


@pytest.fixture(scope="module")
def bad_pin_run(engine: Engine, workdir: Path) -> CliRun:
    return matrix_run(BAD_PIN, workdir, "bad")


def test_bad_pin_fails_its_cells_and_runs_the_others(bad_pin_run: CliRun) -> None:
    assert bad_pin_run.code == 10, bad_pin_run.stderr
    assert build_lines(bad_pin_run)[BAD_ENV].startswith("FAILED")
    for cell in cell_ids(BAD_PIN):
        result = load_result(bad_pin_run.out, cell)
        if result["environment"] == BAD_ENV:
            assert result["status"] == "build_failed"
            # The reason is pip's own line, not the builder's "The command '/bin/sh -c ...'".
            assert result["reason"].startswith("image build failed: pip: ERROR: "), result
            assert "No matching distribution found for onnxruntime==1.8.99" in result["reason"]
            assert "No matching distribution found for onnxruntime==1.8.99" in result["log_tail"]
            assert "\x1b[" not in result["reason"] and "\x1b[" not in result["log_tail"]
            assert "\r" not in result["log_tail"]
            assert result["summary"] is None and result["repeats"] is None
        else:
            assert result["status"] == "ok", result.get("reason")
    assert re.search(rf"failed\s+{BAD_ENV}--mlp--cpu: build_failed: ", bad_pin_run.stderr)
    assert bad_pin_run.stdout.strip().splitlines()[-1] == \
        f"Report: {bad_pin_run.out / 'report.md'}"


def test_bad_pin_report_lists_the_failed_cell_with_its_reason(bad_pin_run: CliRun) -> None:
    text = (bad_pin_run.out / "report.md").read_text()
    failed = text.split("## Cells without valid numbers", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in failed.splitlines() if line.startswith(f"| {BAD_ENV}--mlp--cpu"))
    assert "build\\_failed" in row and "image build failed" in row
    assert "No matching distribution found for onnxruntime==1.8.99" in failed
    assert "trixie-ort1.32.0--mlp--cpu" not in failed


def test_bad_pin_leaves_no_image_behind(bad_pin_run: CliRun, engine: Engine) -> None:
    assert bad_pin_run.code == 10, bad_pin_run.stderr
    # The progress line names the tag the failed build was for.
    found = re.search(rf"envmatrix/{re.escape(BAD_ENV)}:[0-9a-f]{{16}}", bad_pin_run.stderr)
    assert found, bad_pin_run.stderr
    assert engine.image_id(found.group(0)) is None
