"""A run directory read back once (`rundir.run.load_run`), written by the real writers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from envmatrix.config import load as config
from envmatrix.errors import RunDirError
from envmatrix.rundir import planfile, results
from envmatrix.rundir.layout import RunDir, create_run_dir
from envmatrix.rundir.plan import Plan
from envmatrix.rundir.rounds import ROUNDS_SCHEMA, read_rounds, rounds_path
from envmatrix.rundir.run import Run, load_run
from envmatrix.running.runner import RoundOrders

REPO = Path(__file__).resolve().parents[2]


def _harness_doc() -> dict[str, Any]:
    return {"schema": results.SCHEMA, "status": "ok", "reason": None, "harness_version": "1",
            "summary": {"iterations": 2, "latency_s": {"p50": 0.005}},
            "repeats": [{"index": 0, "round": 0, "latencies_s": [0.005, 0.006]}]}


def _write(run_dir: RunDir, plan: Plan, index: int, *, stale: bool = False) -> None:
    measure = replace(plan.measure, warmup=plan.measure.warmup + 1) if stale else plan.measure
    doc = results.finalize_result(_harness_doc(), cell=plan.cells[index], measure=measure,
                                  status="ok", reason=None, log_tail=None,
                                  host={"run_id": run_dir.run_id})
    results.write_result(run_dir, doc)


@pytest.fixture
def made(tmp_path: Path) -> tuple[RunDir, Plan]:
    """A run of matrix.yaml's plan: cell 0 measured, cell 1 measured under other settings
    (stale), the others never run; two rounds recorded."""
    plan = config.load_plan(REPO / "matrix.yaml")
    run_dir = create_run_dir(tmp_path / "reports", "r1")
    planfile.dump_resolved(plan, run_dir.resolved_path, {"run_id": run_dir.run_id})
    _write(run_dir, plan, 0)
    _write(run_dir, plan, 1, stale=True)
    orders = RoundOrders(run_dir)
    orders.record(0, [c.id for c in plan.cells[:2]])
    orders.record(1, [c.id for c in reversed(plan.cells[:2])])
    return run_dir, plan


def test_a_run_has_one_result_per_plan_cell_in_plan_order(made: tuple[RunDir, Plan]) -> None:
    run_dir, plan = made
    run = load_run(run_dir.path)
    assert isinstance(run, Run) and run.path == run_dir.path and run.run_dir.run_id == "r1"
    assert run.plan == plan and run.record.run_id == "r1"
    assert list(run.results) == [c.id for c in plan.cells]
    assert [r["cell"] for r in run.results.values()] == [c.id for c in plan.cells]
    first, stale, missing = list(run.results.values())[:3]
    assert first["status"] == "ok" and (first.get("summary") or {}).get("iterations") == 2
    assert stale["status"] == "skipped" and (stale.get("reason") or "").startswith("stale:")
    assert stale.get("summary") is None and (stale.get("host") or {}).get("stale", {}).get(
        "status") == "ok"
    assert missing["status"] == "skipped" and "not run" in (missing.get("reason") or "")
    assert run.all_ok(plan.cells[0].id) and not run.all_ok(plan.cells[0].id, plan.cells[1].id)
    assert not run.all_ok("no-such-cell")


def test_a_run_reads_its_round_orders(made: tuple[RunDir, Plan]) -> None:
    run_dir, plan = made
    rounds = load_run(run_dir).rounds  # an opened RunDir works as well as a path
    assert rounds is not None and rounds["schema"] == ROUNDS_SCHEMA
    (entry,) = rounds["invocations"]
    assert [r["order"] for r in entry.get("rounds", [])] == [
        [plan.cells[0].id, plan.cells[1].id], [plan.cells[1].id, plan.cells[0].id]]


@pytest.mark.parametrize("content", ["{broken", '{"schema": "envmatrix.rounds/9"}', "[]"])
def test_round_orders_that_are_not_ours_read_as_none(made: tuple[RunDir, Plan],
                                                     content: str) -> None:
    run_dir, _plan = made
    rounds_path(run_dir).write_text(content)
    assert read_rounds(run_dir) is None and load_run(run_dir).rounds is None
    rounds_path(run_dir).unlink()
    assert load_run(run_dir).rounds is None


def test_latest_names_the_run(made: tuple[RunDir, Plan]) -> None:
    run_dir, _plan = made
    assert load_run(run_dir.path.parent / "latest").run_dir.run_id == "r1"


@pytest.mark.parametrize(("content", "words"), [
    ('{"schema": "envmatrix.result/1", "status": "ok"', "not a readable result"),
    ('{"schema": "envmatrix.result/1", "status": "ok"}', "no valid status/cell"),
    ('{"schema": "other/1", "status": "ok", "cell": "x"}', "result schema 'other/1'"),
])
def test_a_damaged_result_file_refuses_the_run(made: tuple[RunDir, Plan], content: str,
                                               words: str) -> None:
    run_dir, plan = made
    path = run_dir.result_path(plan.cells[2].id)
    path.write_text(content)
    with pytest.raises(RunDirError, match=words) as info:
        load_run(run_dir)
    assert str(path) in str(info.value)


def test_a_folder_without_its_plan_is_refused(made: tuple[RunDir, Plan]) -> None:
    run_dir, _plan = made
    run_dir.resolved_path.unlink()
    with pytest.raises(RunDirError, match="matrix.resolved.yaml: missing"):
        load_run(run_dir)


def test_results_read_back_are_what_was_written(made: tuple[RunDir, Plan]) -> None:
    run_dir, plan = made
    written = json.loads(run_dir.result_path(plan.cells[0].id).read_text())
    assert load_run(run_dir).results[plan.cells[0].id] == written
