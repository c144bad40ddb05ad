"""The CI gate without an engine: matrix.yaml `verdict:`, the command-line options, the gate's
decision on fake run directories, exit codes through `cli.main`, the job summary, --repeats."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fakeruns import BASELINE, CANDIDATE, failed_result, fake_result, make_run

from envmatrix import cli, gate, pipeline
from envmatrix.analysis.rundata import load_run
from envmatrix.analysis.stats import EQUIVALENT, INCONCLUSIVE, SLOWER, VerdictRules, rules_for
from envmatrix.config import load as config
from envmatrix.errors import CellsFailed, ConfigError, GateFailed
from envmatrix.report.summary import budget_note, section_summary
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import open_run_dir
from envmatrix.rundir.plan import Measure, VerdictSettings, plan_from_dict, plan_to_dict

REPO = Path(__file__).resolve().parents[2]
TWO_ENVS = REPO / "tests" / "integration" / "matrices" / "two_envs.yaml"
BASE = f"{BASELINE}--cnn--cpu"
CAND = f"{CANDIDATE}--cnn--cpu"
HEAD = """\
version: 1
bases:
  bookworm: {image: "debian:bookworm"}
environments:
  - base: bookworm
    packages: {onnxruntime: "1.20.1"}
workloads:
  cnn: {model: "zoo:cnn"}
build: {ca_bundle: null}
"""


def load(tmp_path: Path, tail: str) -> Any:
    path = tmp_path / "matrix.yaml"
    path.write_text(HEAD + textwrap.dedent(tail))
    return config.load_plan(path)


def fake_run(root: Path, cand_p50: float, *, repeats: int = 10, cand: dict | None = None,
             broken_outputs: bool = False, verdict: dict | None = None,
             run_id: str = "run-1") -> Path:
    """Baseline p50 5 ms, candidate `cand_p50`, `repeats` processes each (unpaired units)."""
    y = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)
    results = [fake_result(BASE, p50=0.005, repeats=repeats, seed=1),
               cand or fake_result(CAND, p50=cand_p50, repeats=repeats, seed=2)]
    outputs = {BASE: {"y": y}, CAND: {"y": y + (1.0 if broken_outputs else 0.0)}}
    path = make_run(root, results, outputs, run_id=run_id)
    if verdict is not None:
        resolved = path / "matrix.resolved.yaml"
        doc = yaml.safe_load(resolved.read_text())
        resolved.write_text(yaml.safe_dump({**doc, "verdict": verdict}, sort_keys=False))
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_job_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run inside GitHub Actions too: never append to the real job summary."""
    monkeypatch.delenv(gate.STEP_SUMMARY, raising=False)


# -- matrix.yaml `verdict:` ------------------------------------------------------------------


def test_verdict_section_lands_in_the_plan(tmp_path: Path) -> None:
    plan = load(tmp_path, "verdict: {alpha: 0.01, min_effect: 0.1, fail_on: [slower, parity]}\n")
    assert plan.verdict == VerdictSettings(alpha=0.01, min_effect=0.1,
                                           fail_on=("slower", "parity"))
    assert load(tmp_path, "").verdict == VerdictSettings()
    rules = rules_for(plan.verdict)
    assert (rules.alpha, rules.min_effect) == (0.01, 0.1)
    assert rules.confidence == pytest.approx(0.99)
    assert rules_for(VerdictSettings()) == VerdictRules()  # defaults change no report


@pytest.mark.parametrize("tail, line, where, message, fix", [
    ("verdict: {alpha: 0}\n", 10, "verdict.alpha", "0 is too small: it must be at least 0.001",
     "use a value >= 0.001"),
    ("verdict:\n  alpha: 0.05\n  min_effect: 1.5\n", 12, "verdict.min_effect",
     "1.5 is too large: it must be at most 1.0", "use a value <= 1.0"),
    ("verdict: {fail_on: [slowr]}\n", 10, "verdict.fail_on[0]",
     "'slowr' is not allowed here (did you mean 'slower'?)", "use one of"),
    ("verdict: {fail_on: [parity, parity]}\n", 10, "verdict.fail_on",
     "'parity' is listed twice", "list it once"),
    ("verdict: {fail_on: slower}\n", 10, "verdict.fail_on", "expected a list",
     "write a YAML list"),
    ("verdict:\n  alfa: 0.1\n", 11, "verdict.alfa", "did you mean 'alpha'",
     "remove it or use one of: alpha, equivalence, error_rate, fail_on, min_effect"),
    ("verdict: {alpha: fast}\n", 10, "verdict.alpha", "expected a number", "2.5"),
])
def test_verdict_section_errors_name_file_line_key_and_fix(
        tmp_path: Path, tail: str, line: int, where: str, message: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, tail)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'matrix.yaml'}:{line}: {where}: "), text
    assert message in text and "Fix: " in text and fix in text.split("Fix:", 1)[1], text


def test_resolved_plans_keep_the_verdict_and_old_ones_still_load(tmp_path: Path) -> None:
    plan = load(tmp_path, "verdict: {alpha: 0.1, fail_on: [invalid]}\n")
    doc = json.loads(json.dumps(plan_to_dict(plan)))
    assert doc["verdict"] == {"alpha": 0.1, "min_effect": 0.02, "fail_on": ["invalid"],
                              "min_node_share": 1.0, "equivalence": 0.05,
                              "error_rate": "comparison"}
    assert plan_from_dict(doc).plan.verdict == plan.verdict
    del doc["verdict"]  # a run directory written before the section existed
    assert plan_from_dict(doc).plan.verdict == VerdictSettings()


# -- command-line options ----------------------------------------------------------------------


def test_fail_on_takes_any_subset_or_none() -> None:
    assert gate.fail_on_words("slower") == ("slower",)
    assert gate.fail_on_words(" invalid, slower,parity ,slower") == ("invalid", "slower", "parity")
    assert gate.fail_on_words("none") == ()


@pytest.mark.parametrize("argv, message", [
    (["report", "x", "--fail-on", "slow"], "'slow' is not a verdict to fail on (did you mean "
                                           "'slower'?)"),
    (["report", "x", "--fail-on", ","], "give a comma-separated subset of slower,parity,invalid"),
    (["report", "x", "--fail-on", "slower,none"], "'none' is not a verdict to fail on"),
    (["report", "x", "--alpha", "0"], "alpha must be a number from 0.001 to 0.5, not '0'"),
    (["compare", "a", "b", "--alpha", "nan"], "alpha must be a number from 0.001 to 0.5"),
    (["matrix", "--min-effect", "-0.1"], "min-effect must be a number from 0.0 to 1.0"),
    (["report", "x", "--equivalence", "0"], "equivalence must be a number above 0 and at most 1"),
    (["matrix", "--equivalence", "5%"], "equivalence must be a number above 0 and at most 1"),
    (["report", "x", "--error-rate", "runs"], "'runs' is not an error rate (did you mean "
                                              "'run'?): give comparison"),
    (["compare", "a", "b", "--error-rate", "holm"], "'holm' is not an error rate"),
    (["matrix", "--repeats", "0"], "repeats must be a whole number from 1 to 100, not '0'"),
    (["run", "--repeats", "2.5"], "repeats must be a whole number from 1 to 100"),
    (["run", "--fail-on", "slower"], "unrecognized arguments: --fail-on"),
    (["build", "--repeats", "8"], "unrecognized arguments: --repeats"),
])
def test_bad_options_are_usage_errors(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


# -- --repeats -----------------------------------------------------------------------------


@pytest.mark.parametrize("rounds, repeats, want_rounds", [
    (None, 8, None), (4, 8, 4), (5, 8, None), (8, 4, None), (1, 3, 1)])
def test_repeats_keep_the_rounds_only_when_they_divide(rounds: int | None, repeats: int,
                                                       want_rounds: int | None) -> None:
    measure = gate.with_repeats(Measure(repeats=40, rounds=rounds), repeats)
    assert (measure.repeats, measure.rounds) == (repeats, want_rounds)
    assert measure.repeats_per_round * measure.round_count == repeats


def test_repeats_enter_the_plan_its_hashes_and_the_resolved_file(tmp_path: Path) -> None:
    plan = config.load_plan(TWO_ENVS)
    quick = gate.apply(plan, gate.Overrides(repeats=8, min_effect=0.1))
    assert (quick.measure.repeats, quick.measure.round_count) == (8, 8)
    assert quick.verdict.min_effect == 0.1 and quick.verdict.alpha == plan.verdict.alpha
    cell = plan.cells[0]
    assert cell.config_hash(quick.measure) != cell.config_hash(plan.measure)
    planfile.dump_resolved(quick, tmp_path / "matrix.resolved.yaml", {"run_id": "r"})
    back = planfile.read_resolved(tmp_path / "matrix.resolved.yaml")
    assert back.plan.measure.repeats == 8 and back.plan.verdict.min_effect == 0.1
    assert back.config_hash(cell) == cell.config_hash(quick.measure)


def test_cli_hands_its_overrides_to_the_pipeline(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    seen: list[pipeline.Request] = []
    run = make_run(tmp_path, [fake_result(BASE, repeats=2)])

    def record(request: pipeline.Request, progress: Any) -> pipeline.Outcome:
        seen.append(request)
        run_dir = open_run_dir(run)
        return pipeline.Outcome(run_dir, planfile.read_resolved(run_dir.resolved_path).plan)

    monkeypatch.setattr(pipeline, "run", record)
    assert cli.main(["run", "--matrix", str(TWO_ENVS), "--repeats", "8", "--alpha", "0.01"]) == 0
    assert seen[0].overrides == gate.Overrides(repeats=8, alpha=0.01)


# -- the gate's decision ---------------------------------------------------------------------


def test_a_slowdown_is_found_and_an_unchanged_run_is_not(tmp_path: Path) -> None:
    slow = load_run(fake_run(tmp_path / "slow", 0.008))
    assert slow.verdicts[0].verdict == SLOWER
    found = gate.run_findings(slow, ["slower"])
    assert len(found) == 1 and found[0].startswith(f"slower: {CAND} (p50 +")
    same = load_run(fake_run(tmp_path / "same", 0.005))
    assert same.verdicts[0].verdict == EQUIVALENT
    assert gate.run_findings(same, ["slower", "parity", "invalid"]) == []
    assert gate.run_findings(slow, ["parity", "invalid"]) == []  # only what was asked


def test_parity_and_invalid_are_found(tmp_path: Path) -> None:
    broken = load_run(fake_run(tmp_path / "parity", 0.005, broken_outputs=True))
    assert [f.split(":")[0] for f in gate.run_findings(broken, ["parity"])] == ["parity"]
    failed = load_run(fake_run(tmp_path / "failed", 0.005, cand=failed_result(CAND)))
    found = gate.run_findings(failed, ["slower", "invalid"])
    assert found == [f"invalid: {CAND}: status build_failed: pip failed"]


def test_an_invalid_baseline_counts_as_invalid(tmp_path: Path) -> None:
    path = make_run(tmp_path, [failed_result(BASE, status="crashed"), fake_result(CAND)])
    found = gate.run_findings(load_run(path), ["invalid"])
    assert [f.split(": ")[1] for f in found] == [BASE, CAND]


# -- exit codes through cli.main -----------------------------------------------------------


def test_report_exits_with_the_gate_code_on_a_slowdown(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, 0.008)
    code, out, err = run_cli(["report", str(run), "--fail-on", "slower,parity"], capsys)
    assert code == GateFailed.exit_code == 11
    assert f"slower: {CAND}" in err and "--fail-on slower,parity: 1 finding(s); exit 11" in err
    assert out.strip() == f"Report: {run / 'report.md'}"
    assert run_cli(["report", str(run)], capsys)[0] == 0  # no gate asked for
    assert run_cli(["report", str(run), "--fail-on", "parity,invalid"], capsys)[0] == 0


def test_inconclusive_does_not_fail_the_gate(tmp_path: Path) -> None:
    """Too few rounds for any interval: inconclusive, which shows nothing slower."""
    few = load_run(fake_run(tmp_path, 0.008, repeats=3))
    assert few.verdicts[0].verdict == INCONCLUSIVE
    assert gate.run_findings(few, ["slower"]) == []


def test_equivalence_and_error_rate_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, 0.005)
    assert run_cli(["report", str(run), "--equivalence", "0.1", "--error-rate", "run"],
                   capsys)[0] == 0
    rules = json.loads((run / "results.json").read_text())["rules"]
    assert (rules["equivalence"], rules["error_rate"]) == (0.1, "run")
    text = (run / "report.md").read_text()
    assert "equivalent per request within ±10%" in text and "Error rate per run" in text
    assert gate.verdict_settings(VerdictSettings(), gate.Overrides(error_rate="run")) == \
        VerdictSettings(error_rate="run")


def test_report_exits_0_on_an_unchanged_run(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, 0.005)
    assert run_cli(["report", str(run), "--fail-on", "slower,parity,invalid"], capsys)[0] == 0


def test_the_matrix_fail_on_gates_and_the_command_line_overrides_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, 0.008, verdict={"fail_on": ["slower"]})
    assert run_cli(["report", str(run)], capsys)[0] == 11
    assert run_cli(["report", str(run), "--fail-on", "none"], capsys)[0] == 0
    # A larger minimum effect than the 60% slowdown: no longer "slower".
    assert run_cli(["report", str(run), "--min-effect", "0.9"], capsys)[0] == 0
    text = (run / "report.md").read_text()
    assert "the estimate is beyond a 90% change" in text


def test_the_matrix_alpha_reaches_the_report(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, 0.008, verdict={"alpha": 0.01, "min_effect": 0.05})
    assert run_cli(["report", str(run)], capsys)[0] == 0
    text = (run / "report.md").read_text()
    assert "at 99% confidence:" in text and "wrong at most 1% of the time" in text
    rules = json.loads((run / "results.json").read_text())["rules"]
    assert (rules["alpha"], rules["min_effect"]) == (0.01, 0.05)


def _fake_pipeline(monkeypatch: pytest.MonkeyPatch, run: Path, failed: bool) -> None:
    """pipeline.run replaced by one that only writes the report of a finished fake run."""
    def report_only(request: pipeline.Request, progress: Any) -> pipeline.Outcome:
        run_dir = open_run_dir(run)
        plan = planfile.read_resolved(run_dir.resolved_path).plan
        outcome = pipeline.Outcome(run_dir, plan, results=[{"status": "ok"}] + (
            [{"status": "crashed", "cell": CAND}] if failed else []))
        outcome.report_data = pipeline.write_report(run_dir, progress, request.overrides)
        outcome.report_path = run_dir.report_path
        return outcome
    monkeypatch.setattr(pipeline, "run", report_only)


@pytest.mark.parametrize("cand_p50, failed, fail_on, code", [
    (0.008, False, "slower", 11),
    (0.005, False, "slower", 0),
    (0.008, True, "slower", 11),  # the gate's code wins over 10
    (0.005, True, "slower", CellsFailed.exit_code),  # nothing the gate names: 10
    (0.008, False, "none", 0),
])
def test_matrix_exit_codes_and_their_precedence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        cand_p50: float, failed: bool, fail_on: str, code: int) -> None:
    _fake_pipeline(monkeypatch, fake_run(tmp_path, cand_p50), failed)
    got, _, err = run_cli(["matrix", "--matrix", str(TWO_ENVS), "--fail-on", fail_on], capsys)
    assert got == code, err


def test_compare_gates_on_run_b_against_run_a(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_a = make_run(tmp_path / "a", [fake_result(BASE, p50=0.005, repeats=10, seed=1)],
                     run_id="run-a")
    run_b = make_run(tmp_path / "b", [fake_result(BASE, p50=0.008, repeats=10, seed=2)],
                     run_id="run-b")
    argv = ["compare", str(run_a), str(run_b), "--out", str(tmp_path / "c.md")]
    assert run_cli(argv, capsys)[0] == 0  # compare gates only when asked
    code, _, err = run_cli([*argv, "--fail-on", "slower"], capsys)
    assert code == 11 and f"slower: {BASE} (B) vs {BASE} (A)" in err
    assert run_cli([*argv, "--fail-on", "slower", "--min-effect", "0.9"], capsys)[0] == 0


# -- the job summary and the budget note ----------------------------------------------------


def test_the_summary_is_appended_to_github_step_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv(gate.STEP_SUMMARY, str(summary))
    run = fake_run(tmp_path / "runs", 0.008)
    assert run_cli(["report", str(run)], capsys)[0] == 0
    text = summary.read_text()
    assert text.startswith("earlier step\n## Summary\n")
    assert f"Changes against the baseline **{BASELINE}**" in text and f"| {CANDIDATE}" in text
    assert text == "earlier step\n" + section_summary(load_run(run)) + "\n\n"


def test_an_unwritable_step_summary_is_a_warning(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(gate.STEP_SUMMARY, str(tmp_path / "no-such-dir" / "summary.md"))
    code, _, err = run_cli(["report", str(fake_run(tmp_path, 0.005))], capsys)
    assert code == 0 and "could not append to $GITHUB_STEP_SUMMARY" in err


def test_too_few_rounds_are_said_once_in_the_summary(tmp_path: Path) -> None:
    few = load_run(fake_run(tmp_path / "few", 0.008, repeats=3))
    note = budget_note(few)
    assert note is not None and "Too few rounds for a verdict" in note
    assert "at least 4 per side" in note and "--repeats N" in note
    assert section_summary(few).count("Too few rounds for a verdict") == 1
    assert budget_note(load_run(fake_run(tmp_path / "enough", 0.008))) is None
