"""Comparing two run directories: matching, verdicts, output parity, refusing different
hardware, and the `compare` command's arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakeruns import BASELINE, fake_result, make_run

from envmatrix import cli, errors
from envmatrix.analysis.stats import VerdictRules
from envmatrix.errors import ConfigError
from envmatrix.report.compare import DifferentHardwareError, compare

RULES = VerdictRules()
CELL = f"{BASELINE}--cnn--cpu"


def _run(root: Path, run_id: str, p50: float, seed: int, env: str = BASELINE,
         **kw: Any) -> Path:
    return make_run(root, [fake_result(f"{env}--cnn--cpu", p50=p50, seed=seed, cv=0.01, **kw)],
                    baseline=env, run_id=run_id)


def _logits() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 5, size=(1, 100)).astype(np.float32)


def _run_with_outputs(root: Path, run_id: str, logits: np.ndarray | None, seed: int,
                      env: str = BASELINE, extra: dict[str, Any] | None = None) -> Path:
    """A one-cell run whose cell saved `logits` as its output (None: saved nothing)."""
    cell = f"{env}--cnn--cpu"
    res = {**fake_result(cell, seed=seed, cv=0.01), **(extra or {})}
    outputs = {cell: {"logits": logits}} if logits is not None else None
    return make_run(root, [res], outputs, baseline=env, run_id=run_id)


def _cells(text: str, start: str) -> list[str]:
    """The cells of the first table row that starts with `start` (no escaped pipes in them)."""
    row = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


# -- timings ---------------------------------------------------------------------------------


def test_a_slower_second_run_is_slower(tmp_path: Path) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.0055, seed=2)
    text = compare(a, b, rules=RULES).path.read_text()
    assert (b / "compare-run-a.md").is_file()
    row = next(line for line in text.splitlines() if line.startswith("| cnn"))
    assert "slower" in row and "| +" in row  # p50 change B vs A is positive


def test_different_hardware_is_refused_by_default(tmp_path: Path) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.005, seed=2, cpu_model="AMD EPYC 9654", cores=4)
    with pytest.raises(DifferentHardwareError) as err:
        compare(a, b, rules=RULES)
    message = str(err.value)
    assert "CPU model" in message and "AMD EPYC 9654" in message and "cores visible" in message
    assert "--allow-different-hardware" in message
    allowed = compare(a, b, tmp_path / "cmp.md", allow_different_hardware=True,
                      rules=RULES).path
    text = allowed.read_text()
    assert "**Different hardware:**" in text


def test_different_hardware_error_lives_with_the_other_errors() -> None:
    assert DifferentHardwareError is errors.DifferentHardwareError
    assert errors.DifferentHardwareError.exit_code == 7


# -- matching and --map ------------------------------------------------------------------------


def test_a_mapping_pairs_differently_named_environments(tmp_path: Path) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.005, seed=2, env="renamed-env")
    unmapped = compare(a, b, tmp_path / "x.md", rules=RULES).path.read_text()
    assert "without a partner" in unmapped
    mapped = compare(a, b, tmp_path / "y.md", mapping={BASELINE: "renamed-env"},
                     rules=RULES).path
    text = mapped.read_text()
    assert "without a partner" not in text and "renamed-env--cnn--cpu" in text


def test_environments_the_mapping_does_not_name_match_by_name(tmp_path: Path) -> None:
    def two_envs(run_id: str, renamed: str, seed: int) -> Path:
        return make_run(tmp_path, [fake_result(CELL, seed=seed, cv=0.01),
                                   fake_result(f"{renamed}--cnn--cpu", seed=seed + 10, cv=0.01)],
                        run_id=run_id)

    a, b = two_envs("run-a", "old-name", 1), two_envs("run-b", "new-name", 2)
    result = compare(a, b, mapping={"old-name": "new-name"}, rules=RULES)
    assert [(p.a, p.b) for p in result.pairs] == [
        (CELL, CELL), ("old-name--cnn--cpu", "new-name--cnn--cpu")]
    assert result.unmatched == ()


def test_a_mapping_naming_an_unknown_environment_is_refused(tmp_path: Path) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.005, seed=2)
    with pytest.raises(ConfigError) as err:
        compare(a, b, mapping={BASELINE: "bookwrm-ort1.20.1"}, rules=RULES)
    message = str(err.value)
    assert "run B" in message and "'bookwrm-ort1.20.1'" in message
    assert f"Its environments: {BASELINE}" in message and "--map" in message
    with pytest.raises(ConfigError, match="run A .* no environment 'nope'"):
        compare(a, b, mapping={"nope": BASELINE}, rules=RULES)


# -- output parity -----------------------------------------------------------------------------


def test_identical_outputs_pass_and_make_no_headline(tmp_path: Path) -> None:
    a = _run_with_outputs(tmp_path, "run-a", _logits(), seed=1)
    b = _run_with_outputs(tmp_path, "run-b", _logits(), seed=2)
    result = compare(a, b, rules=RULES)
    assert [p.parity.status for p in result.pairs if p.parity] == ["pass"]
    assert result.parity_failures == ()
    text = result.path.read_text()
    assert "Output parity failure" not in text
    assert _cells(text, "| cnn")[-1] == "pass"
    assert _cells(_section(text, "Output parity"), f"| {CELL}")[1:4] == ["logits", "float32", "0"]


def test_different_outputs_are_the_headline(tmp_path: Path) -> None:
    base = _logits()
    cand = base.copy()
    cand[0, 17] += 0.75
    model_b = {"model": {"sha256": "b" * 64}}
    a = _run_with_outputs(tmp_path, "run-a", base, seed=1, extra={"model": {"sha256": "a" * 64}})
    b = _run_with_outputs(tmp_path, "run-b", cand, seed=2, extra=model_b)
    result = compare(a, b, rules=RULES)
    assert [(p.a, p.b) for p in result.parity_failures] == [(CELL, CELL)]
    text = result.path.read_text()
    title, headline = text.split("\n\n", 2)[:2]
    assert title.startswith("# Comparison")
    assert headline.startswith("> **Output parity failure:** 1 matched cell(s) of run B")
    assert "1 of 100 elements outside tolerance; max abs diff 0.75, max rel diff" in headline
    assert "model files differ (sha256 aaaaaaaaaaaa in A, bbbbbbbbbbbb in B)" in headline
    assert text.index("Output parity failure") < text.index("| workload")
    assert _cells(text, "| cnn")[-1] == "**FAIL**"
    section = _section(text, "Output parity")
    assert "**FAIL**: 1 of 100 elements outside tolerance" in section
    assert "worst elements" in section and _cells(section, "| [0, 17]")[3] == "0.75"


def test_outputs_missing_on_one_side_are_said_not_failed(tmp_path: Path) -> None:
    a = _run_with_outputs(tmp_path, "run-a", _logits(), seed=1)
    b = _run_with_outputs(tmp_path, "run-b", None, seed=2)
    result = compare(a, b, rules=RULES)
    parity = result.pairs[0].parity
    assert parity is not None and parity.status == "missing"
    assert parity.reason == f"run B has no outputs/{CELL}.npz"
    assert result.parity_failures == () and "Output parity failure" not in result.path.read_text()


def test_other_inputs_make_outputs_not_comparable(tmp_path: Path) -> None:
    def inputs(sha: str) -> dict[str, Any]:
        return {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3], "sha256": sha}]}

    shifted = _logits() + 1.0  # would fail parity if it were compared
    a = _run_with_outputs(tmp_path, "run-a", _logits(), seed=1, extra=inputs("1" * 64))
    b = _run_with_outputs(tmp_path, "run-b", shifted, seed=2, extra=inputs("2" * 64))
    result = compare(a, b, rules=RULES)
    parity = result.pairs[0].parity
    assert parity is not None and parity.status == "not comparable"
    assert "different inputs" in parity.reason
    assert result.parity_failures == ()
    same = _run_with_outputs(tmp_path, "run-c", shifted, seed=3, extra=inputs("1" * 64))
    compared = compare(a, same, rules=RULES).pairs[0].parity
    assert compared is not None and compared.status == "fail"


def test_a_cell_without_numbers_is_not_compared(tmp_path: Path) -> None:
    a = _run_with_outputs(tmp_path, "run-a", _logits(), seed=1)
    b = _run_with_outputs(tmp_path, "run-b", _logits() + 1, seed=2,
                          extra={"status": "crashed", "reason": "killed by SIGKILL"})
    result = compare(a, b, rules=RULES)
    assert result.pairs[0].parity is None and result.parity_failures == ()
    row = _cells(result.path.read_text(), "| cnn")
    assert row[-2].startswith("**invalid**") and row[-1] == "not compared (no numbers)"


# -- the command line --------------------------------------------------------------------------


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_map_is_repeatable_and_parity_failure_is_warned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run_with_outputs(tmp_path, "run-a", _logits(), seed=1, env="old-a")
    b = _run_with_outputs(tmp_path, "run-b", _logits() * 1.1, seed=2, env="new-a")
    out = tmp_path / "cmp.md"
    code, stdout, stderr = _cli(["compare", str(a), str(b), "--out", str(out),
                                 "--map", "old-a=new-a", "--map", "other=other"], capsys)
    assert code == 2 and "run A" in stderr and "'other'" in stderr  # the second pair is unknown
    code, stdout, stderr = _cli(["compare", str(a), str(b), "--out", str(out),
                                 "--map", "old-a=new-a"], capsys)
    assert code == 0, stderr
    assert stdout.strip() == f"Comparison: {out}"
    assert "new-a--cnn--cpu (B) computes different outputs from old-a--cnn--cpu (A)" in stderr
    assert "new-a--cnn--cpu" in out.read_text() and "without a partner" not in out.read_text()


@pytest.mark.parametrize("bad", ["old-a", "=new-a", "old-a=", "old-a new-a"])
def test_cli_rejects_a_map_that_is_not_a_pair(
        bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", str(tmp_path), str(tmp_path), "--map", bad])
    assert exc.value.code == 2
    assert "is not ENV_A=ENV_B" in capsys.readouterr().err


def test_cli_rejects_the_same_environment_mapped_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    code, _out, err = _cli(["compare", str(a), str(a), "--map", f"{BASELINE}=x",
                            "--map", f"{BASELINE}=y"], capsys)
    assert code == 2 and "twice" in err


def test_cli_different_hardware_exits_7(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "run-a", 0.005, seed=1)
    b = _run(tmp_path, "run-b", 0.005, seed=2, cpu_model="AMD EPYC 9654")
    code, _out, err = _cli(["compare", str(a), str(b)], capsys)
    assert code == 7 and "--allow-different-hardware" in err
