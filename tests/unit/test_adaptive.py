"""Adaptive rounds with a fake engine: cells leave the rounds when their comparisons settle,
every look is recorded in looks.json, and --resume looks only at the cells it measures.

The fake harness's latencies repeat exactly each round, so a comparison's per-round ratios are
all alike: a 2x change settles at the first look (8 rounds all on one side), a cell whose p50
swings +-25% round by round against a steady baseline stays open to the end of the budget.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from fakeruns import MEASURE, Built, make_plan, prepared, run_with_inputs
from fakes import Behaviour, FakeEngine, arg, harness_doc, outcome, segfault
from unitlib import write

from envmatrix import pipeline
from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.looks import LOOKS_SCHEMA, read_looks
from envmatrix.rundir.plan import Cell, Environment, Plan
from envmatrix.running import containers, runner

BASE, FAST, SWINGS = "env1.8.0--cnn--cpu", "env1.16.0--cnn--cpu", "env1.20.0--cnn--cpu"


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    return run_with_inputs(tmp_path)


def cpu_plan(tmp_path: Path, versions: tuple[str, ...] = ("1.8.0", "1.16.0"),
             **measure: Any) -> Plan:
    """One cpu cell per onnxruntime version (the first is the baseline), 40 rounds."""
    plan = make_plan(tmp_path)
    envs = tuple(Environment(id=f"env{v}", base=plan.bases[0], python="system",
                             packages=(("onnxruntime", v),), providers=("cpu",))
                 for v in versions)  # fmt: skip
    cells = tuple(Cell(id=f"{e.id}--cnn--cpu", environment=e, workload=plan.workloads[0],
                       provider="cpu") for e in envs)  # fmt: skip
    # A generous timeout: the fake's containers take 1.5 s each, 40 rounds of them.
    return replace(plan, environments=envs, cells=cells,
                   measure=replace(MEASURE, repeats=40, timeout_s=3600.0, **measure))


def images(plan: Plan) -> dict[str, Built]:
    return {e.id: Built(f"envmatrix/{e.id}:1", f"sha256:{e.id}") for e in plan.environments}


def measures(p50_of_round: Callable[[int], float]) -> Behaviour:
    """A harness whose p50 in round r is p50_of_round(r)."""
    def run(spec: containers.ContainerSpec, out: Path) -> Any:
        name = PurePosixPath(arg(spec, "--out")).name  # round-<r>.json
        doc = harness_doc(spec, p50_of_round(int(name[len("round-"):-len(".json")])))
        (out / name).write_text(json.dumps(doc))
        if "--save-outputs" in spec.command:
            (out / "outputs.npz").write_bytes(b"npz")
        return outcome(0, "measured\n")
    return run


STEADY = measures(lambda r: 0.004)
TWICE_AS_FAST = measures(lambda r: 0.002)
SWINGING = measures(lambda r: 0.005 if r % 2 else 0.003)


def run(plan: Plan, run_dir: RunDir, behaviours: dict[str, Behaviour],
        **kw: Any) -> tuple[FakeEngine, list[dict[str, Any]], list[str]]:
    engine, said = FakeEngine(behaviours), []
    got = runner.run_cells(engine, plan, run_dir, images(plan), prepared(run_dir),
                           looker=pipeline.looker_for(plan),
                           progress=lambda stage, msg: said.append(msg), **kw)
    return engine, got, said


def ran(engine: FakeEngine, cell_id: str) -> int:
    return sum(s.labels["envmatrix.cell"] == cell_id for s in engine.runs)


def test_cells_leave_at_the_first_look_when_their_comparison_settles(
        tmp_path: Path, run_dir: RunDir) -> None:
    plan = cpu_plan(tmp_path)
    engine, got, said = run(plan, run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST})
    assert [r["status"] for r in got] == ["ok", "ok"]
    assert ran(engine, BASE) == ran(engine, FAST) == 8
    for result in got:  # valid as it stands: the repeats of the rounds it ran, and the budget
        settings = result["settings"]
        assert (settings["rounds"], settings["repeats"], settings["rounds_planned"]) == (8, 8, 40)
        assert {rep["round"] for rep in result["repeats"]} == set(range(8))
    looks = read_looks(run_dir)
    assert looks is not None and looks["schema"] == LOOKS_SCHEMA
    (entry,) = looks["invocations"]
    assert entry["design"]["looks"] == [8, 16, 24, 32, 40] and entry["design"]["adaptive"]
    assert entry["design"]["error"] <= entry["design"]["alpha"] + 1e-12
    (look,) = entry["looks"]
    assert look["round"] == 8 and look["leaving"] == [FAST, BASE]
    (compared,) = look["comparisons"]
    assert (compared["baseline"], compared["candidate"], compared["kind"]) == (BASE, FAST,
                                                                                "baseline")
    assert compared["verdict"] == "faster" and compared["settled"] and compared["look"] == 8
    assert compared["ratio"] == pytest.approx(0.5)


def test_progress_says_what_settled_and_who_leaves(tmp_path: Path, run_dir: RunDir) -> None:
    _engine, _got, said = run(cpu_plan(tmp_path), run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST})
    assert f"[round 8/40] [1/2] {BASE}" in said  # the budget is the most a cell runs
    assert not any(line.startswith("[round 9/40]") for line in said)
    assert (f"[look at round 8] {FAST} vs {BASE}: faster -50.0% [-50.0%, -50.0%]; "
            f"leaving the rounds: {FAST}, {BASE}") in said
    assert any(line.startswith(f"[2/2] {FAST}: left the rounds after 8/40: p50 ")
               for line in said)


def test_the_baseline_runs_on_while_one_of_its_comparisons_is_open(
        tmp_path: Path, run_dir: RunDir) -> None:
    plan = cpu_plan(tmp_path, ("1.8.0", "1.16.0", "1.20.0"))
    engine, got, said = run(plan, run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST,
                                            SWINGS: SWINGING})
    assert (ran(engine, BASE), ran(engine, FAST), ran(engine, SWINGS)) == (40, 8, 40)
    assert [r["settings"]["rounds"] for r in got] == [40, 8, 40]
    (entry,) = (read_looks(run_dir) or {"invocations": []})["invocations"]
    assert [look["round"] for look in entry["looks"]] == [8, 16, 24, 32]  # none at the budget
    first, later = entry["looks"][0], entry["looks"][1]
    assert first["leaving"] == [FAST] and later["leaving"] == []
    # A settled comparison is not read again; the open one is read at every look.
    assert [(c["candidate"], c["settled"]) for c in first["comparisons"]] == [
        (FAST, True), (SWINGS, False)]
    assert [(c["candidate"], c["verdict"]) for c in later["comparisons"]] == [
        (SWINGS, "inconclusive")]
    assert "[look at round 16] nothing settled; 1 comparison(s) still open" in said


def test_a_failed_cell_closes_its_comparisons(tmp_path: Path, run_dir: RunDir) -> None:
    def fails_in_round_3(spec: containers.ContainerSpec, out: Path) -> Any:
        if arg(spec, "--out").endswith("round-2.json"):
            return segfault(spec, out)
        return STEADY(spec, out)

    engine, got, said = run(cpu_plan(tmp_path), run_dir, {BASE: STEADY, FAST: fails_in_round_3})
    assert [r["status"] for r in got] == ["ok", "crashed"]
    # The baseline's one comparison cannot go on: it leaves at the next look.
    assert (ran(engine, BASE), ran(engine, FAST)) == (8, 3)
    assert got[0]["settings"]["rounds"] == 8
    (entry,) = (read_looks(run_dir) or {"invocations": []})["invocations"]
    assert entry["looks"] == [{"round": 8, "comparisons": [], "leaving": [BASE]}]


def test_without_adaptive_every_cell_runs_every_round(tmp_path: Path, run_dir: RunDir) -> None:
    plan = cpu_plan(tmp_path, adaptive=False)
    engine, got, said = run(plan, run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST})
    assert ran(engine, BASE) == ran(engine, FAST) == 40
    assert [r["settings"]["rounds"] for r in got] == [40, 40]
    assert [r["settings"]["repeats"] for r in got] == [40, 40]
    assert read_looks(run_dir) is None and not any("[look at" in line for line in said)


def test_without_a_looker_every_cell_runs_every_round(tmp_path: Path, run_dir: RunDir) -> None:
    plan = cpu_plan(tmp_path)
    engine = FakeEngine({BASE: STEADY, FAST: TWICE_AS_FAST})
    runner.run_cells(engine, plan, run_dir, images(plan), prepared(run_dir))
    assert ran(engine, BASE) == ran(engine, FAST) == 40 and read_looks(run_dir) is None


def test_resume_looks_only_at_the_cells_it_measures_and_adds_its_entry(
        tmp_path: Path, run_dir: RunDir) -> None:
    plan = cpu_plan(tmp_path)
    run(plan, run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST})
    run_dir.result_path(FAST).unlink()  # the candidate is measured again, the baseline kept
    engine, got, said = run(plan, run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST}, resume=True)
    assert f"[1/2] {BASE}: kept: " in " ".join(said)
    # Its comparison's other cell is not in these rounds: it cannot settle early.
    assert (ran(engine, BASE), ran(engine, FAST)) == (0, 40)
    assert [r["settings"]["rounds"] for r in got] == [8, 40]
    first, resumed = (read_looks(run_dir) or {"invocations": []})["invocations"]
    assert [look["leaving"] for look in first["looks"]] == [[FAST, BASE]]
    assert [look["round"] for look in resumed["looks"]] == [8, 16, 24, 32]
    assert all(look["comparisons"] == [] and look["leaving"] == [] for look in resumed["looks"])
    rounds = json.loads((run_dir.path / "rounds.json").read_text())["invocations"]
    assert [len(entry["rounds"]) for entry in rounds] == [8, 40]  # one entry each as well


def test_an_interrupted_adaptive_run_keeps_its_looks_and_resumes(
        tmp_path: Path, run_dir: RunDir) -> None:
    plan = cpu_plan(tmp_path, ("1.8.0", "1.16.0", "1.20.0"))

    def stops_in_round_10(spec: containers.ContainerSpec, out: Path) -> Any:
        if arg(spec, "--out").endswith("round-9.json"):
            raise KeyboardInterrupt
        return SWINGING(spec, out)

    with pytest.raises(KeyboardInterrupt):
        run(plan, run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST, SWINGS: stops_in_round_10})
    statuses = {c: json.loads(run_dir.result_path(c).read_text())["status"]
                for c in (BASE, FAST, SWINGS)}
    assert statuses == {BASE: "interrupted", FAST: "ok", SWINGS: "interrupted"}
    (entry,) = (read_looks(run_dir) or {"invocations": []})["invocations"]
    assert [look["leaving"] for look in entry["looks"]] == [[FAST]]
    engine, got, _said = run(plan, run_dir, {BASE: STEADY, FAST: TWICE_AS_FAST,
                                             SWINGS: SWINGING}, resume=True)
    assert (ran(engine, BASE), ran(engine, FAST), ran(engine, SWINGS)) == (40, 0, 40)
    assert [r["status"] for r in got] == ["ok", "ok", "ok"]
    assert len((read_looks(run_dir) or {"invocations": []})["invocations"]) == 2


@pytest.mark.parametrize(("measure", "error"), [
    ("{repeats: 10, look_every: 10}", "look_every: 10 leaves no look before the last of 10"),
    ("{repeats: 20, rounds: 4, look_every: 6}", "look_every: 6 leaves no look before the "
                                                "last of 4"),
    ("{repeats: 10, look_every: 5}", None),
    ("{repeats: 10, look_every: 10, adaptive: false}", None),
    ("{repeats: 5}", None),  # the default look_every: one look, at the end
])
def test_look_every_must_leave_a_look_before_the_budget(tmp_path: Path, measure: str,
                                                        error: str | None) -> None:
    matrix = write(tmp_path, f"""\
        environments:
          - {{id: a, base: bullseye, packages: {{onnxruntime: "1.8.0"}}}}
        baseline: a
        measure: {measure}
        """)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HEAD's unused bases
        if error is None:
            config.load_plan(matrix)
            return
        with pytest.raises(ConfigError, match=r"matrix.yaml:\d+: measure: " + re.escape(error)
                           + r"[\s\S]*Fix: set look_every below"):
            config.load_plan(matrix)
