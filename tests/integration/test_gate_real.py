"""The CI gate on the real engine: `matrix --fail-on slower` exits 11 on a real slowdown and 0
on an A/A matrix (two environments with the same packages).

Both matrices copy environments of two_envs.yaml exactly, so the images the other integration
tests build are reused; the budgets are the smallest the paired verdict decides from (8 rounds).
Without an engine these tests skip on a developer machine and fail in CI (the `engine` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipelinelib import MATRICES, CliRun, envmatrix_cli

from envmatrix.errors import GateFailed
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOWDOWN = MATRICES / "slowdown.yaml"  # onnxruntime 1.8 -> 1.32 in a one-CPU container: slower
SAME = MATRICES / "same_packages.yaml"  # the same environment twice under two ids


def gated_run(matrix: Path, workdir: Path, name: str, *extra: str) -> CliRun:
    out = workdir / name
    return envmatrix_cli(["matrix", "--matrix", str(matrix), "--out", str(out),
                          "--fail-on", "slower", *extra], workdir, out)


def p50_verdict(run: CliRun, cell: str) -> dict:
    doc = json.loads((run.out / "results.json").read_text())
    verdict = next(v for v in doc["verdicts"] if v["candidate"] == cell)
    p50 = verdict["ratios"]["p50"]
    print(f"{cell}: {verdict['verdict']}, p50 x{p50['ratio']:.3f} "
          f"[{p50['low']:.3f}, {p50['high']:.3f}], {verdict['method']}, {run.seconds:.0f}s")
    return verdict


def test_a_real_slowdown_fails_the_gate(engine: Engine, tmp_path: Path) -> None:
    run = gated_run(SLOWDOWN, tmp_path, "slow", "--repeats", "8")
    assert run.code == GateFailed.exit_code, run.stderr
    cell = "trixie-ort1.32.0--cnn--cpu"
    assert f"slower: {cell} (p50 +" in run.stderr
    assert "--fail-on slower: 1 finding(s); exit 11" in run.stderr
    verdict = p50_verdict(run, cell)
    assert verdict["verdict"] == "slower" and verdict["method"] == "paired rounds"
    assert verdict["rounds"] == 8  # --repeats 8 reached the plan: 8 rounds of one process
    assert "Settings: 8 fresh processes per cell" in (run.out / "report.md").read_text()


def test_an_a_a_matrix_passes_the_gate(engine: Engine, tmp_path: Path) -> None:
    run = gated_run(SAME, tmp_path, "same")
    assert run.code == 0, run.stderr
    verdict = p50_verdict(run, "trixie-ort1.32.0-again--cnn--cpu")
    assert verdict["verdict"] != "slower" and verdict["method"] == "paired rounds"
    report = (run.out / "report.md").read_text()
    assert "the estimate is beyond a 20% change" in report  # the matrix's verdict.min_effect
