"""Comparing two run directories: matching, verdicts, and refusing different hardware."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report_fakes import BASELINE, fake_result, make_run

from envmatrix.compare import DifferentHardwareError, compare_runs
from envmatrix.stats import VerdictRules

RULES = VerdictRules(n_boot=300)


def _run(root: Path, run_id: str, p50: float, seed: int, env: str = BASELINE,
         **kw: object) -> Path:
    return make_run(root, [fake_result(f"{env}--cnn--cpu", p50=p50, seed=seed, cv=0.01, **kw)],
                    baseline=env, run_id=run_id)


def test_a_slower_second_run_is_slower(tmp_path: Path) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.0055, seed=2)
    text = compare_runs(a, b, rules=RULES).read_text()
    assert (b / "compare-run-a.md").is_file()
    row = next(line for line in text.splitlines() if line.startswith("| cnn"))
    assert "slower" in row and "| +" in row  # p50 change B vs A is positive


def test_different_hardware_is_refused_by_default(tmp_path: Path) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.005, seed=2, cpu_model="AMD EPYC 9654", cores=4)
    with pytest.raises(DifferentHardwareError) as err:
        compare_runs(a, b, rules=RULES)
    message = str(err.value)
    assert "CPU model" in message and "AMD EPYC 9654" in message and "cores visible" in message
    assert "--allow-different-hardware" in message
    allowed = compare_runs(a, b, tmp_path / "cmp.md", allow_different_hardware=True, rules=RULES)
    text = allowed.read_text()
    assert "**Different hardware:**" in text


def test_a_mapping_pairs_differently_named_environments(tmp_path: Path) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.005, seed=2, env="renamed-env")
    unmapped = compare_runs(a, b, tmp_path / "x.md", rules=RULES).read_text()
    assert "without a partner" in unmapped
    mapped = compare_runs(a, b, tmp_path / "y.md", mapping={BASELINE: "renamed-env"},
                          rules=RULES)
    text = mapped.read_text()
    assert "without a partner" not in text and "renamed-env--cnn--cpu" in text
