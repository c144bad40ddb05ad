"""The stage order is written once (`pipeline.execute`): `matrix`/`run`/`build`, `lock` and
`replay` are jobs of it, and a matrix without hosts: is a hosts list of one, the local engine,
run by the scheduler in the calling thread.

The engine is faked (no Docker) and so are the two stages that would need it or a model
exporter (inputs, images): every other step is the real one, so a command that went around
`execute` or the scheduler would show up in the recorded calls.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakeruns import Built, Prepared
from fakes import FakeEngine, harness_ok, interrupt, spy_execute

from envmatrix import cli, pipeline
from envmatrix.config import load as config
from envmatrix.errors import EngineError, GateFailed, Interrupted
from envmatrix.progress import Progress
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.plan import Plan
from envmatrix.running import runner
from envmatrix.running.engine import Engine

TWO_ENVS = Path(__file__).resolve().parents[1] / "integration" / "matrices" / "two_envs.yaml"


@dataclass
class Recorder:
    calls: list[str]
    threads: list[threading.Thread]
    engine: FakeEngine


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Stage calls in the order they happen, through the real pipeline and scheduler."""
    shutil.copy(TWO_ENVS, tmp_path / "matrix.yaml")
    plan = config.load_plan(tmp_path / "matrix.yaml")
    rec = Recorder([], [], FakeEngine({c.id: harness_ok for c in plan.cells}))
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: rec.engine))

    def inputs(plan: Plan, run_dir: RunDir, progress: Any) -> dict[str, Any]:
        rec.calls.append("inputs")
        folder = run_dir.inputs_dir / "mlp"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"onnx")
        (folder / "inputs.npz").write_bytes(b"npz")
        return {"mlp": Prepared(folder / "model.onnx", folder / "inputs.npz")}

    def images(engine: Any, plan: Plan, *, build_dir: Path, progress: Any,
               **kw: Any) -> dict[str, Any]:
        assert engine is rec.engine and build_dir.name == "run"  # one engine: no hosts/ folder
        rec.calls.append("images" if kw.get("use_lock", True) else "images from the pins")
        rec.threads.append(threading.current_thread())
        return {e.id: Built(f"envmatrix/{e.id}:1", f"sha256:{e.id}") for e in plan.environments}

    real_cells, real_resolved = runner.run_cells, pipeline.write_resolved

    def cells(*args: Any, **kw: Any) -> list[dict[str, Any]]:
        rec.calls.append("cells")
        return real_cells(*args, **kw)

    def resolved(plan: Plan, run_dir: RunDir, built: Any = None, **kw: Any) -> None:
        rec.calls.append("resolved with images" if built else "resolved")
        real_resolved(plan, run_dir, built, **kw)

    monkeypatch.setattr(pipeline, "prepare_workloads", inputs)
    monkeypatch.setattr(pipeline, "build_images", images)
    monkeypatch.setattr(runner, "run_cells", cells)
    monkeypatch.setattr(pipeline, "write_resolved", resolved)
    monkeypatch.chdir(tmp_path)
    return rec


def request(**kw: Any) -> pipeline.Request:
    return pipeline.Request(matrix=Path("matrix.yaml"), reports_root=Path("reports"),
                            out=Path("run"), **kw)


def test_a_run_goes_through_every_stage_once_in_order(recorded: Recorder,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = spy_execute(monkeypatch)
    outcome = pipeline.run(request(stop_after="run"), Progress())
    assert [type(j) for j in jobs] == [pipeline.RunJob]
    assert recorded.calls == ["resolved", "inputs", "images", "cells", "resolved with images"]
    assert [r["status"] for r in outcome.results] == ["ok", "ok"]
    # A matrix without hosts: the local engine's work in this thread, where Ctrl-C lands.
    assert recorded.threads == [threading.main_thread()]
    run = planfile.read_resolved(outcome.run_dir.resolved_path).run
    assert set(run.images) == {e.id for e in outcome.plan.environments} and not run.hosts


def test_build_stops_after_the_images_and_still_records_them(recorded: Recorder) -> None:
    outcome = pipeline.run(request(stop_after="build"), Progress())
    assert recorded.calls == ["resolved", "inputs", "images", "resolved with images"]
    assert not outcome.results and not recorded.engine.runs


def test_the_local_engine_failing_ends_the_run(recorded: Recorder,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a lost host whose cells get a status: exit 3 with the engine's words, as ever."""
    def refuse(cls: type) -> Engine:
        raise EngineError("No Docker engine answers")

    monkeypatch.setattr(Engine, "connect", classmethod(refuse))
    with pytest.raises(EngineError, match="No Docker engine answers"):
        pipeline.run(request(), Progress())
    assert recorded.calls == ["resolved", "inputs"]
    assert not any((Path("run") / "results").iterdir())


def test_ctrl_c_in_the_cells_keeps_the_record_and_names_the_resume(recorded: Recorder) -> None:
    second = sorted(recorded.engine.behaviours)[1]
    recorded.engine.behaviours[second] = interrupt
    with pytest.raises(Interrupted) as stop:
        pipeline.run(request(), Progress())
    assert stop.value.hint is not None and "--resume" in stop.value.hint
    assert recorded.calls[-1] == "resolved with images"  # recorded before it raised


def test_lock_is_a_job_of_the_same_order(recorded: Recorder,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = spy_execute(monkeypatch)
    with pytest.raises(FileNotFoundError, match="locks"):  # the fake builds read no sets
        pipeline.lock(request(), Progress())
    assert [type(j) for j in jobs] == [pipeline.LockJob]
    assert recorded.calls == ["resolved", "images from the pins", "resolved with images"]


# -- exit codes: raised by the stages, mapped in cli.exit_code -------------------------------


def test_exit_codes_come_from_the_exception_classes(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress()
    assert cli.exit_code(GateFailed("--fail-on slower: 1 finding(s)"), progress) == 11
    assert "gate    --fail-on slower: 1 finding(s)" in capsys.readouterr().err
    assert cli.exit_code(Interrupted("envmatrix matrix --resume x"), progress) == 130
    out, err = capsys.readouterr()
    assert out == "envmatrix matrix --resume x\n" and "finished cells are kept" in err
    # Nothing to resume (lock, replay, or before a run directory): how long it ran.
    assert cli.exit_code(Interrupted(None), progress) == 130
    assert cli.exit_code(KeyboardInterrupt(), progress) == 130
    out, err = capsys.readouterr()
    assert not out and err.count("interrupted after") == 2
