"""Failure isolation, interruption and resume, through run_cells on the real engine and image.

One run holds an ok cell (the real harness on a real zoo model) next to cells that exit
non-zero, report a harness error, segfault, get OOM-killed, write a malformed result, time out,
and one whose environment failed to build: each gets its own status, the ok cell stays ok, and
no container is left behind. Crafted commands are injected with run_cells' `adjust` hook, so
the runner's own spec, scratch handling, classification and writing are what is tested.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from envmatrix.config import load as config
from envmatrix.images import build as images
from envmatrix.images.build import BuildFailure, BuiltImage
from envmatrix.inputs import prepare as inputs
from envmatrix.rundir.layout import RunDir, create_run_dir
from envmatrix.rundir.plan import Cell, Measure, Plan
from envmatrix.running import containers, runner
from envmatrix.running.engine import Engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENV_GLOB = "trixie-*"  # one image of the default matrix, shared with the other integration tests
WORKLOAD = "cnn"
FAST = Measure(warmup=1, min_iterations=5, min_time_s=0.1, repeats=2, timeout_s=120,
               memory_limit="1g", pids_limit=128)  # fmt: skip
PY = containers.VENV_PYTHON


@pytest.fixture(scope="module")
def real_env(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, BuiltImage]:
    """The default matrix narrowed to one environment, and its image (built once, then reused)."""
    with warnings.catch_warnings():  # the baseline is not selected: expected here
        warnings.simplefilter("ignore", config.ConfigWarning)
        plan = config.load_plan(REPO / "matrix.yaml", only=[ENV_GLOB])
    built = images.ensure_image(
        engine, plan.environments[0], plan, run_dir=tmp_path_factory.mktemp("build")
    )
    return replace(plan, measure=FAST), built


def make_run(tmp_path: Path, plan: Plan, name: str) -> tuple[RunDir, dict[str, Any]]:
    run = create_run_dir(tmp_path / "reports", name)
    workload = next(w for w in plan.workloads if w.name == WORKLOAD)
    export = plan.extra.get("model_export", {})
    prepared = inputs.prepare_workload(
        workload, run.workload_inputs(WORKLOAD),
        ir_version=int(export.get("ir_version", 7)), opset=int(export.get("opset", 11)),
    )  # fmt: skip
    return run, {WORKLOAD: prepared}


def cells_for(plan: Plan, cases: list[str]) -> tuple[Cell, ...]:
    """One cell per case on the same environment and workload, told apart by their ids."""
    template = next(c for c in plan.cells if c.workload.name == WORKLOAD)
    return tuple(replace(template, id=f"{template.id}-{case}") for case in cases)


def leftover_containers(run_id: str) -> list[Any]:
    client = docker.from_env()
    return client.containers.list(all=True, filters={"label": f"envmatrix.run={run_id}"})


CRAFTED: dict[str, list[str]] = {
    "exit": [PY, "-c", "import sys; print('giving up', file=sys.stderr); sys.exit(3)"],
    "segv": [PY, "-c", "import ctypes; ctypes.string_at(0)"],  # a real fault, not a kill()
    "oom": [PY, "-c", "x = b'x' * (600 << 20); print(len(x))"],
    "malformed": ["sh", "-c", 'printf \'{"schema": "envmatrix.res\' > /envmatrix/out/round-0.json'],
    "timeout": ["sleep", "60"],
}


def adjust_failures(cell: Cell, launch: runner.Launch) -> runner.Launch:
    case = cell.id.rsplit("-", 1)[-1]
    spec = launch.spec
    if case in CRAFTED:
        spec = replace(spec, command=CRAFTED[case])
    if case == "oom":
        spec = replace(spec, mem_limit="128m")
    if case == "harnesserror":  # the real harness, pointed at a model that is not there
        command = list(spec.command)
        command[command.index("--model") + 1] = "/envmatrix/inputs/missing.onnx"
        spec = replace(spec, command=command)
    return runner.Launch(spec, timeout_s=3.0 if case == "timeout" else launch.timeout_s)


def test_each_failure_gets_its_status_and_the_ok_cell_stays_ok(
    engine: Engine, real_env: tuple[Plan, BuiltImage], tmp_path: Path
) -> None:
    plan, built = real_env
    cases = ["ok", "exit", "harnesserror", "segv", "oom", "malformed", "timeout"]
    cells = cells_for(plan, cases)
    broken_env = replace(cells[0].environment, id="broken-env")
    broken = replace(cells[0], id="broken-env--cnn--cpu", environment=broken_env)
    plan = replace(plan, cells=(*cells, broken))
    run, prepared = make_run(tmp_path, plan, "failures")
    failure = BuildFailure("broken-env", "pip could not find onnxruntime==0.0.1",
                           "ERROR: No matching distribution found for onnxruntime==0.0.1",
                           run.build_log("broken-env"), 1.0)  # fmt: skip
    images_ = {built.env_id: built, "broken-env": failure}

    started = time.monotonic()
    got = runner.run_cells(engine, plan, run, images_, prepared, adjust=adjust_failures)
    statuses = {r["cell"].rsplit("-", 1)[-1]: r for r in got}

    assert [r["status"] for r in got] == [
        "ok", "error", "error", "crashed", "oom", "no_result", "timeout", "build_failed",
    ]  # fmt: skip
    ok = statuses["ok"]
    assert ok["summary"]["iterations"] >= FAST.min_iterations * FAST.repeats
    assert ok["provider"]["active"][0] == "CPUExecutionProvider"
    assert ok["fingerprint"]["image"]["id"] == built.image_id
    assert run.output_path(ok["cell"]).stat().st_size > 0
    assert statuses["exit"]["host"]["exit_code"] == 3
    assert "giving up" in statuses["exit"]["reason"]
    assert "missing.onnx" in statuses["harnesserror"]["reason"]
    assert statuses["segv"]["host"]["signal"] == "SIGSEGV"
    assert statuses["segv"]["host"]["exit_code"] == 139
    assert statuses["oom"]["host"]["oom_killed"] is True
    assert "128m" in statuses["oom"]["reason"]
    assert "not valid JSON" in statuses["malformed"]["reason"]
    assert statuses["timeout"]["host"]["timed_out"] is True
    assert statuses["timeout"]["host"]["duration_s"] < 15  # 3 s deadline + stop grace
    assert "No matching distribution" in statuses["cpu"]["log_tail"]  # the build_failed cell
    for result in got:
        assert json.loads(run.result_path(result["cell"]).read_text())["status"] == result["status"]
        assert result["status"] == "ok" or result["reason"]
    assert leftover_containers(run.run_id) == []
    assert time.monotonic() - started < 240


@pytest.fixture
def interrupt_later() -> Iterator[list[threading.Timer]]:
    # A process started in the background by a script inherits SIGINT ignored, and Python then
    # never raises KeyboardInterrupt: make Ctrl-C mean KeyboardInterrupt here, as the CLI does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timers: list[threading.Timer] = []
    yield timers
    for timer in timers:
        timer.cancel()
    signal.signal(signal.SIGINT, previous)


def test_interrupt_leaves_nothing_running_and_resume_completes(
    engine: Engine,
    real_env: tuple[Plan, BuiltImage],
    tmp_path: Path,
    interrupt_later: list[threading.Timer],
) -> None:
    plan, built = real_env
    plan = replace(plan, cells=cells_for(plan, ["a", "b", "c"]))
    run, prepared = make_run(tmp_path, plan, "interrupted")

    def stall_c(cell: Cell, launch: runner.Launch) -> runner.Launch:
        # The second round runs rotated, b, c, a: in c's last round b has finished all its
        # rounds, a only the first.
        last_round = containers.round_result_name(plan.measure.round_count - 1)
        out = launch.spec.command[launch.spec.command.index("--out") + 1]
        if not cell.id.endswith("-c") or not out.endswith(last_round):
            return launch
        # Ctrl-C as a person would press it: SIGINT to this process while b's container runs.
        timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
        interrupt_later.append(timer)
        timer.start()
        return runner.Launch(replace(launch.spec, command=["sleep", "60"]), launch.timeout_s)

    with pytest.raises(KeyboardInterrupt):
        runner.run_cells(engine, plan, run, {built.env_id: built}, prepared, adjust=stall_c)
    assert leftover_containers(run.run_id) == []
    a, b, c = (run.result_path(cell.id) for cell in plan.cells)
    assert json.loads(b.read_text())["status"] == "ok"
    stopped = json.loads(c.read_text())
    assert stopped["status"] == "interrupted" and "--resume" in stopped["reason"]
    unfinished = json.loads(a.read_text())  # one of its two rounds done
    assert unfinished["status"] == "interrupted" and "--resume" in unfinished["reason"]
    kept = b.read_bytes()

    got = runner.run_cells(engine, plan, run, {built.env_id: built}, prepared, resume=True)
    assert [r["status"] for r in got] == ["ok", "ok", "ok"]
    assert b.read_bytes() == kept  # the finished cell was kept, not measured again
    assert leftover_containers(run.run_id) == []
