"""An adaptive run on the real engine and harness stops a cell early and writes looks.json.

Two cells of one image of the default matrix (the trixie image the other integration tests
build and reuse), both pinned to one CPU: the baseline runs the harness as it is, the candidate
runs it next to three busy loops in its container (through run_cells' `adjust` hook), so it gets
about a quarter of the CPU and every round is clearly slower. With a budget of 16 rounds and a look
after 8, the comparison settles at the first look and both cells leave with 8 rounds.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from envmatrix import pipeline
from envmatrix.config import load as config
from envmatrix.images import build as images
from envmatrix.inputs import prepare as inputs
from envmatrix.rundir.layout import create_run_dir
from envmatrix.rundir.looks import read_looks
from envmatrix.rundir.plan import Measure
from envmatrix.running import containers, runner
from envmatrix.running.engine import Engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENV_GLOB = "trixie-*"
WORKLOAD = "cnn"
# Short rounds: one process each, a few iterations; 16 rounds at most, a look after 8.
QUICK = Measure(warmup=1, min_iterations=5, min_time_s=0.1, repeats=16, timeout_s=300,
                cpuset="0", memory_limit="1g", pids_limit=128, look_every=8)  # fmt: skip
_LOOP = f"{containers.VENV_PYTHON} -c 'while True: pass' & "
HOG = _LOOP * 3 + 'exec "$@"'  # three busy loops: a quarter of the CPU is left (a shared
# machine's noise moves the baseline's rounds by tens of percent, never fourfold)


def busy_neighbour(cell: object, launch: runner.Launch) -> runner.Launch:
    """The candidate's harness shares its one CPU with busy loops: several times slower."""
    if not str(getattr(cell, "id", "")).endswith("-hog"):
        return launch
    command = ["sh", "-c", HOG, "sh", *launch.spec.command]
    return runner.Launch(replace(launch.spec, command=command), launch.timeout_s)


def test_an_adaptive_run_stops_a_settled_comparison_at_the_first_look(
        engine: Engine, tmp_path: Path) -> None:
    with warnings.catch_warnings():  # the baseline environment is not selected: expected
        warnings.simplefilter("ignore", config.ConfigWarning)
        plan = config.load_plan(REPO / "matrix.yaml", only=[ENV_GLOB])
    env = plan.environments[0]
    built = images.ensure_image(engine, env, plan, run_dir=tmp_path / "build")
    base = next(c for c in plan.cells if c.workload.name == WORKLOAD and c.provider == "cpu")
    cand = replace(base, id=f"{base.id}-hog")  # same environment: a within comparison
    plan = replace(plan, measure=QUICK, baseline=env.id, cells=(base, cand))
    run = create_run_dir(tmp_path / "reports", "adaptive")
    workload = base.workload
    export = plan.extra.get("model_export", {})
    prepared = inputs.prepare_workload(
        workload, run.workload_inputs(WORKLOAD),
        ir_version=int(export.get("ir_version", 7)), opset=int(export.get("opset", 11)),
    )  # fmt: skip
    said: list[str] = []
    got = runner.run_cells(engine, plan, run, {env.id: built}, {WORKLOAD: prepared},
                           adjust=busy_neighbour, looker=pipeline.looker_for(plan),
                           progress=lambda stage, msg: said.append(msg))  # fmt: skip
    assert [r["status"] for r in got] == ["ok", "ok"], [r.get("reason") for r in got]
    looks = read_looks(run)
    assert looks is not None, "\n".join(said)
    (entry,) = looks["invocations"]
    assert entry["design"]["looks"] == [8, 16]
    (look,) = entry["looks"]
    (compared,) = look["comparisons"]
    assert (compared["candidate"], compared["verdict"], compared["settled"]) == (
        cand.id, "slower", True), "\n".join(said)
    assert sorted(look["leaving"]) == sorted([base.id, cand.id])
    for result in got:  # stopped early, and its result says so
        settings = result["settings"]
        assert (settings["rounds"], settings["rounds_planned"], settings["repeats"]) == (8, 16, 8)
        assert len(result["repeats"]) == 8
    assert any(line.startswith("[look at round 8] ") for line in said)
