"""Runner logic with a fake engine: least-privilege specs, failure isolation, interrupt, resume.

The real engine and harness are exercised in tests/integration/test_runner*.py; here a fake
`run` plays the container's part by writing what a harness would into the scratch folder
(tests/fakes.py's behaviours; the plan, images and inputs are tests/fakeruns.py's).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from fakeruns import IMAGES, MEASURE, Built, Failed, Prepared, make_plan, prepared, run_with_inputs
from fakes import Behaviour, FakeEngine, arg, harness_doc, harness_ok, interrupt, outcome, segfault

from envmatrix.config import load as config
from envmatrix.errors import ConfigError, GpuUnavailableError
from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.plan import Cell, Measure
from envmatrix.running import containers, runner
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import ContainerOutcome
from envmatrix_harness import measure as harness_measure


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    return run_with_inputs(tmp_path)


def test_harness_command_carries_every_setting() -> None:
    cell = make_plan(Path("/x"), ("openvino",)).cells[0]
    cmd = containers.harness_command(cell, MEASURE, PurePosixPath("/envmatrix/inputs/cnn/m.onnx"),
                                 PurePosixPath("/envmatrix/inputs/cnn/inputs.npz"))  # fmt: skip
    assert cmd[:3] == ["/opt/venv/bin/python", "-m", "harness"]
    pairs = dict(zip(cmd[3::2], cmd[4::2]))
    assert pairs["--provider"] == "OpenVINOExecutionProvider"
    assert pairs["--provider-option"] == "device_type=CPU"
    assert pairs["--model"] == "/envmatrix/inputs/cnn/m.onnx"
    assert (pairs["--backend"], pairs["--seed"]) == ("onnxruntime", "0")
    assert (pairs["--warmup"], pairs["--min-iterations"], pairs["--min-time"]) == ("2", "5", "0.25")
    # Two repeats in two rounds (rounds null = repeats): one process per container.
    assert (pairs["--repeats"], pairs["--threads"], pairs["--cell"]) == ("1", "1", cell.id)
    assert pairs["--out"] == "/envmatrix/out/round-0.json"
    assert pairs["--save-outputs"] == "/envmatrix/out/outputs.npz"
    later = containers.harness_command(cell, replace(MEASURE, repeats=6, rounds=3),
                                   PurePosixPath("/m.onnx"), PurePosixPath("/i.npz"), 2)
    assert later[later.index("--repeats") + 1] == "2"
    assert later[later.index("--out") + 1] == "/envmatrix/out/round-2.json"
    assert "--save-outputs" not in later  # outputs come from the first round only


def test_cell_spec_is_least_privilege(tmp_path: Path, run_dir: RunDir) -> None:
    plan = make_plan(tmp_path)
    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    spec = engine.runs[0]  # what the runner asked the engine for
    assert (spec.user, spec.network_disabled, spec.read_only_root) == ("65534:65534", True, True)
    assert spec.cap_drop_all and spec.no_new_privileges
    assert (spec.mem_limit, spec.pids_limit, spec.cpuset_cpus) == ("512m", 64, "1")
    assert spec.environment["HOME"] == "/tmp" and spec.tmpfs == {"/tmp": "rw,size=256m"}
    mounts = {dst: (src, ro) for src, dst, ro in spec.mounts}
    assert mounts["/envmatrix/inputs"] == (str(run_dir.inputs_dir.resolve()), True)
    assert mounts["/envmatrix/out"] == (str(run_dir.scratch(plan.cells[0].id).resolve()), False)
    assert not any("docker.sock" in src for src, _, _ in spec.mounts)
    labels = containers.create_kwargs(spec)["labels"]  # what the engine labels it with
    assert labels["envmatrix.run"] == "r1" and labels["envmatrix.managed"] == "true"
    assert spec.labels[containers.OWNER_LABEL] == runner.owner_label()


def test_report_reproduces_the_runners_container(tmp_path: Path, run_dir: RunDir) -> None:
    """The reproduce command rebuilt from a result file is the container the runner made,
    except what a hand run must differ in: mounts relative to the run folder, no owner, and
    no managed label (the start-up sweep must not remove it)."""
    plan = make_plan(tmp_path)
    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    cell = plan.cells[0].id
    made = engine.runs[0]  # round 1: the one that also saves outputs, as results record
    host = json.loads(run_dir.result_path(cell).read_text())["host"]
    printed = containers.reproduce_argv(run_dir.run_id, cell, host, plan.measure)
    by_hand = replace(
        made, managed=False,
        labels={k: v for k, v in made.labels.items() if k != containers.OWNER_LABEL},
        mounts=[("$PWD/inputs", "/envmatrix/inputs", True),
                (f"$PWD/scratch/{cell}", "/envmatrix/out", False)],
    )  # fmt: skip
    assert printed == containers.run_argv(by_hand)


def test_inputs_outside_the_run_are_refused(run_dir: RunDir, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only one mounted"):
        containers.container_path(run_dir, tmp_path / "elsewhere.onnx")


def test_failures_are_isolated_and_each_is_recorded(tmp_path: Path, run_dir: RunDir) -> None:
    plan = make_plan(tmp_path, ("cpu", "openvino"))
    images: dict[str, Any] = {**IMAGES, "env1.8.0": Failed("pip failed", "ERROR: no wheel\n")}
    engine = FakeEngine({"env1.16.0--cnn--cpu": segfault, "env1.16.0--cnn--openvino": harness_ok})
    seen: list[str] = []
    got = runner.run_cells(engine, plan, run_dir, images, prepared(run_dir),
                           progress=lambda stage, msg: seen.append(msg))  # fmt: skip
    assert [r["status"] for r in got] == ["build_failed", "build_failed", "crashed", "ok"]
    assert got[0]["log_tail"] == "ERROR: no wheel" and "pip failed" in got[0]["reason"]
    assert got[2]["host"]["signal"] == "SIGSEGV" and "Segmentation fault" in got[2]["log_tail"]
    # Build failures never start a container; the crashed cell sits out the second round.
    assert [s.labels["envmatrix.cell"] for s in engine.runs] == [
        plan.cells[2].id, plan.cells[3].id, plan.cells[3].id]
    for result in got:
        on_disk = json.loads(run_dir.result_path(result["cell"]).read_text())
        assert on_disk["status"] == result["status"]
    ok_cell = plan.cells[3].id
    assert run_dir.output_path(ok_cell).read_bytes() == b"npz"
    assert not run_dir.scratch(ok_cell).exists()  # cleaned after ok
    assert run_dir.scratch(plan.cells[2].id).is_dir()  # kept after a failure
    log = run_dir.run_log(plan.cells[2].id).read_text().splitlines()
    assert log[:2] == ["===== round 1/2 =====", "Fatal Python error: Segmentation fault"]
    assert got[2]["reason"].startswith("round 1/2: killed by SIGSEGV")
    assert any("p50 4.00 ms" in line for line in seen)


def test_scratch_is_emptied_and_writable_for_nobody(tmp_path: Path, run_dir: RunDir) -> None:
    plan = make_plan(tmp_path)
    stale = run_dir.scratch(plan.cells[0].id)
    stale.mkdir(parents=True)
    (stale / "result.json").write_text('{"schema": "envmatrix.result/1", "status": "ok"}')

    def check(spec: ContainerSpec, out: Path) -> ContainerOutcome:
        assert list(out.iterdir()) == [] and (out.stat().st_mode & 0o777) == 0o777
        return outcome(0)

    engine = FakeEngine({c.id: check for c in plan.cells})
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    assert [r["status"] for r in got] == ["no_result", "no_result"]  # the old file was not read


def interrupt_on_call(n: int) -> Behaviour:
    """Measures normally, except that its n-th container is stopped with Ctrl-C."""
    calls = []

    def behave(spec: ContainerSpec, out: Path) -> ContainerOutcome:
        calls.append(spec)
        if len(calls) == n:
            raise KeyboardInterrupt
        return harness_ok(spec, out)

    return behave


def test_interrupt_keeps_finished_results_and_resume_completes(
    tmp_path: Path, run_dir: RunDir
) -> None:
    plan = make_plan(tmp_path, ("cpu", "openvino"))
    first: dict[str, Behaviour] = {c.id: harness_ok for c in plan.cells}
    # Round 2 runs in the order 1, 2, 3, 0 (rotated): Ctrl-C in cell 2's second round.
    first[plan.cells[2].id] = interrupt_on_call(2)
    engine = FakeEngine(first)
    with pytest.raises(KeyboardInterrupt):
        runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    assert json.loads(run_dir.result_path(plan.cells[1].id).read_text())["status"] == "ok"
    stopped = json.loads(run_dir.result_path(plan.cells[2].id).read_text())
    assert stopped["status"] == "interrupted" and "--resume" in stopped["reason"]
    assert stopped["reason"].startswith("round 2/2: interrupted (Ctrl-C)")
    for cell in (plan.cells[3], plan.cells[0]):  # one round of two done: interrupted too
        unfinished = json.loads(run_dir.result_path(cell.id).read_text())
        assert unfinished["status"] == "interrupted" and unfinished["summary"] is None
        assert "after 1 of 2 rounds" in unfinished["reason"] and "--resume" in unfinished["reason"]

    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir), resume=True)
    assert [r["status"] for r in got] == ["ok"] * 4
    ran = [spec.labels["envmatrix.cell"] for spec in engine.runs]
    # The ok cell was kept, not re-measured; the others were measured again in full rounds,
    # rotated among themselves.
    again = [plan.cells[i].id for i in (0, 2, 3)]
    assert ran == again + runner.round_order(again, 1)


def test_interrupt_in_the_first_round_leaves_unstarted_cells_without_a_result(
    tmp_path: Path, run_dir: RunDir
) -> None:
    plan = make_plan(tmp_path, ("cpu", "openvino"))
    behaviours = {c.id: harness_ok for c in plan.cells}
    behaviours[plan.cells[1].id] = interrupt
    with pytest.raises(KeyboardInterrupt):
        runner.run_cells(FakeEngine(behaviours), plan, run_dir, IMAGES, prepared(run_dir))
    statuses = [json.loads(run_dir.result_path(c.id).read_text())["status"]
                for c in plan.cells[:2]]  # fmt: skip
    assert statuses == ["interrupted", "interrupted"]  # cell 0 had 1 of 2 rounds
    assert not any(run_dir.result_path(c.id).exists() for c in plan.cells[2:])  # "not run"


def test_rounds_interleave_cells_and_merge_into_one_result(
    tmp_path: Path, run_dir: RunDir
) -> None:
    measure = replace(MEASURE, repeats=6, rounds=3)
    plan = replace(make_plan(tmp_path, ("cpu", "openvino")), measure=measure)
    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    seen: list[str] = []
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir),
                           progress=lambda stage, msg: seen.append(msg))  # fmt: skip
    ids = [c.id for c in plan.cells]
    # Round-major order, each round rotated by one place: no cell always goes first.
    assert [s.labels["envmatrix.cell"] for s in engine.runs] == [
        cid for r in range(3) for cid in runner.round_order(ids, r)]
    orders = json.loads((run_dir.path / runner.ROUNDS_FILE).read_text())["invocations"][0]
    assert [o["order"] for o in orders["rounds"]] == [runner.round_order(ids, r)
                                                      for r in range(3)]
    assert [arg(s, "--out") for s in engine.runs[::4]] == [
        f"/envmatrix/out/round-{r}.json" for r in range(3)]
    for result in got:
        reps = result["repeats"]
        assert [(r["index"], r["round"]) for r in reps] == [(i, i // 2) for i in range(6)]
        assert result["summary"] == harness_measure.summarize(reps)
        assert result["settings"]["repeats"] == 6 and result["settings"]["rounds"] == 3
        assert [r["round"] for r in result["host"]["rounds"]] == [0, 1, 2]
        assert result["host"]["duration_s"] == pytest.approx(3 * 1.5)
        assert run_dir.output_path(result["cell"]).read_bytes() == b"npz"
        assert not run_dir.scratch(result["cell"]).exists()
    assert sum("[round 3/3]" in line for line in seen) == 2 * len(ids)
    log = run_dir.run_log(ids[0]).read_text()
    assert [line for line in log.splitlines() if line.startswith("=====")] == [
        f"===== round {r}/3 =====" for r in (1, 2, 3)]


def test_a_failed_round_ends_its_cell_and_the_others_go_on(
    tmp_path: Path, run_dir: RunDir
) -> None:
    plan = replace(make_plan(tmp_path), measure=replace(MEASURE, repeats=3))
    crashing = plan.cells[0].id
    calls: list[int] = []

    def crash_in_round_two(spec: ContainerSpec, out: Path) -> ContainerOutcome:
        calls.append(1)
        return segfault(spec, out) if len(calls) == 2 else harness_ok(spec, out)

    engine = FakeEngine({crashing: crash_in_round_two, plan.cells[1].id: harness_ok})
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    assert [r["status"] for r in got] == ["crashed", "ok"]
    assert got[0]["reason"].startswith("round 2/3: killed by SIGSEGV")
    assert [r["round"] for r in got[0]["host"]["rounds"]] == [0, 1]
    other = plan.cells[1].id  # round 2 is rotated: the other cell goes first
    assert [s.labels["envmatrix.cell"] for s in engine.runs] == [
        crashing, other, other, crashing, other]
    assert len(got[1]["repeats"]) == 3
    assert run_dir.scratch(crashing).is_dir()  # kept for a post-mortem


def test_later_rounds_get_what_is_left_of_the_cell_timeout(
    tmp_path: Path, run_dir: RunDir
) -> None:
    plan = replace(make_plan(tmp_path), measure=replace(MEASURE, repeats=3))
    seen: list[float] = []

    class Recording(FakeEngine):
        def run(self, spec: ContainerSpec, *, timeout_s: float, **kw: Any) -> ContainerOutcome:
            seen.append(timeout_s)
            return super().run(spec, timeout_s=timeout_s, **kw)

    runner.run_cells(Recording({c.id: harness_ok for c in plan.cells}), plan, run_dir, IMAGES,
                     prepared(run_dir))  # fmt: skip
    assert seen[::2] == [30.0, 28.5, 27.0]  # each fake container takes 1.5 s


def test_merge_keeps_a_fallback_of_any_round() -> None:
    spec = ContainerSpec(image="x", command=["--repeats", "2", "--cell", "c"])
    docs = [harness_doc(spec), harness_doc(spec, p50=0.008)]
    docs[1]["provider"] = {"requested": "OpenVINOExecutionProvider", "fallback": True,
                           "active": ["CPUExecutionProvider"]}  # fmt: skip
    merged = runner.merge_rounds(docs, replace(MEASURE, repeats=4))
    assert merged["provider"]["fallback"] is True
    assert merged["summary"]["repeat_p50_s"] == [0.004, 0.004, 0.008, 0.008]
    assert docs[0]["repeats"][0].get("round") is None  # the inputs were not changed


@pytest.mark.parametrize(("repeats", "rounds", "per_round"), [(10, None, 1), (10, 5, 2),
                                                             (10, 1, 10), (7, 7, 1)])
def test_rounds_split_the_repeats(repeats: int, rounds: int | None, per_round: int) -> None:
    assert Measure(repeats=repeats, rounds=rounds).repeats_per_round == per_round


@pytest.mark.parametrize("rounds", [3, 11])
def test_rounds_must_divide_the_repeats(rounds: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must divide"):
        _ = Measure(repeats=10, rounds=rounds).repeats_per_round
    matrix = tmp_path / "matrix.yaml"
    text = (Path(__file__).resolve().parents[2] / "matrix.yaml").read_text()
    text = re.sub(r"(?m)^  repeats: .*$", "  repeats: 10", text)
    matrix.write_text(re.sub(r"(?m)^  rounds: .*$", f"  rounds: {rounds}", text))
    with pytest.raises(ConfigError, match=r"matrix.yaml:\d+: measure: rounds: .* does not "
                                          r"divide repeats: 10[\s\S]*Fix: set rounds to one of "
                                          r"\[1, 2, 5, 10\]"):
        config.load_plan(matrix)


def test_resume_remeasures_when_the_image_changed(tmp_path: Path, run_dir: RunDir) -> None:
    plan = make_plan(tmp_path)
    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    rebuilt = {**IMAGES, "env1.8.0": replace(IMAGES["env1.8.0"], tag="envmatrix/env1.8.0:cc")}
    engine.runs.clear()
    runner.run_cells(engine, plan, run_dir, rebuilt, prepared(run_dir), resume=True)
    assert [s.labels["envmatrix.cell"] for s in engine.runs] == [plan.cells[0].id] * 2


def test_adjust_hook_changes_the_launch(tmp_path: Path, run_dir: RunDir) -> None:
    plan = make_plan(tmp_path)
    seen: list[float] = []

    class Recording(FakeEngine):
        def run(self, spec: ContainerSpec, *, timeout_s: float, **kw: Any) -> ContainerOutcome:
            seen.append(timeout_s)
            return super().run(spec, timeout_s=timeout_s, **kw)

    def adjust(cell: Cell, launch: runner.Launch) -> runner.Launch:
        return runner.Launch(replace(launch.spec, command=["sleep", "9"]), timeout_s=3)

    engine = Recording({c.id: lambda s, o: outcome(None, timed_out=True) for c in plan.cells})
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir), adjust=adjust)
    assert seen == [3, 3] and engine.runs[0].command == ["sleep", "9"]
    assert got[0]["status"] == "timeout" and got[0]["host"]["timeout_s"] == 3


def test_sweep_asks_only_for_containers_envmatrix_labelled() -> None:
    dead = [{**containers.MANAGED, containers.CELL_LABEL: cell} for cell in ("a", "b")]
    engine = FakeEngine(leftovers=[*dead, {containers.CELL_LABEL: "not ours"}])
    assert runner.sweep_leftovers(engine) == 2
    assert engine.swept == [{"envmatrix.managed": "true"}]
    assert engine.leftovers == [{containers.CELL_LABEL: "not ours"}]


def test_sweep_spares_containers_of_live_runs() -> None:
    """A second run must never remove the containers of a run still going on."""
    cell = {**containers.MANAGED, containers.CELL_LABEL: "env--cnn--cpu"}
    alive = {**cell, containers.OWNER_LABEL: runner.owner_label()}  # this process
    elsewhere = {**cell, containers.OWNER_LABEL: "another-host.invalid:1"}  # can't tell: keep
    build_step = dict(containers.MANAGED)  # managed, no cell: a live build may need it
    engine = FakeEngine(leftovers=[
        alive,
        {**cell, containers.OWNER_LABEL: f"{socket.gethostname()}:999999999"},  # no such pid
        cell,  # a cell container with no owner recorded
        elsewhere,
        build_step,
    ])  # fmt: skip
    assert runner.sweep_leftovers(engine) == 2
    assert engine.leftovers == [alive, elsewhere, build_step]


def test_torch_workloads_get_the_torchscript_file(tmp_path: Path, run_dir: RunDir) -> None:
    plan = make_plan(tmp_path)
    torch_wl = replace(plan.cells[0].workload, backend="torch")
    plan = replace(plan, cells=(replace(plan.cells[0], workload=torch_wl),))
    folder = run_dir.inputs_dir / "cnn"
    (folder / "model.pt").write_bytes(b"pt")
    ready = {"cnn": Prepared(folder / "model.onnx", folder / "inputs.npz", folder / "model.pt")}
    engine = FakeEngine({plan.cells[0].id: harness_ok})
    runner.run_cells(engine, plan, run_dir, IMAGES, ready)
    command = engine.runs[0].command
    assert command[command.index("--model") + 1] == "/envmatrix/inputs/cnn/model.pt"
    assert command[command.index("--backend") + 1] == "torch"


NO_GPU_WORDS = 'could not select device driver "" with capabilities: [[gpu]]'


def no_gpu(spec: ContainerSpec, out: Path) -> ContainerOutcome:
    """What engine.run raises when docker cannot give the container a GPU."""
    assert spec.gpus == ("all",)
    raise GpuUnavailableError(NO_GPU_WORDS)


def test_a_cell_without_its_gpu_is_no_gpu_and_the_others_run(tmp_path: Path,
                                                               run_dir: RunDir) -> None:
    plan = make_plan(tmp_path)
    cuda = replace(plan.cells[0], id="env1.8.0--cnn--cuda", provider="cuda", gpus="all")
    plan = replace(plan, cells=(cuda, *plan.cells))
    engine = FakeEngine({cuda.id: no_gpu, **{c.id: harness_ok for c in plan.cells[1:]}})
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    assert [r["status"] for r in got] == ["no_gpu", "ok", "ok"]
    assert got[0]["reason"] == (
        f"round 1/2: the engine could not give the container a GPU: {NO_GPU_WORDS}")
    assert got[0]["host"]["gpus"] == "all"
    assert got[0]["host"]["engine_gpu"]["nvidia_runtime"] is False
    # CPU cells ask for no GPU and carry no GPU record.
    assert all(s.gpus is None for s in engine.runs if s.labels["envmatrix.cell"] != cuda.id)
    assert "engine_gpu" not in got[1]["host"] and got[1]["host"]["gpus"] is None
    # The cell sat out its second round; the CPU cells ran both.
    assert [s.labels["envmatrix.cell"] for s in engine.runs].count(cuda.id) == 1


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_results_record_what_resume_checks(tmp_path: Path, run_dir: RunDir) -> None:
    plan = make_plan(tmp_path)
    recorded = {plan.cells[0].id: "0123456789abcdef"}  # the hash the run wrote in its plan
    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir),
                           config_hashes=recorded)
    host = got[0]["host"]
    assert (host["model_sha256"], host["inputs_sha256"]) == (_sha(b"onnx"), _sha(b"npz"))
    assert host["config_hash"] == "0123456789abcdef"
    assert got[1]["host"]["config_hash"] == plan.cells[1].config_hash(plan.measure)


def test_resume_measures_again_when_the_model_changed_and_says_why(
    tmp_path: Path, run_dir: RunDir
) -> None:
    plan = make_plan(tmp_path)
    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    (run_dir.inputs_dir / "cnn" / "model.onnx").write_bytes(b"onnx, regenerated")
    engine.runs.clear()
    lines: list[tuple[str, str]] = []
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir), resume=True,
                           progress=lambda stage, text: lines.append((stage, text)))
    assert len(engine.runs) == 2 * len(plan.cells)  # every cell measured again, both rounds
    assert got[0]["host"]["model_sha256"] == _sha(b"onnx, regenerated")
    why = [text for stage, text in lines if stage == "resume"]
    assert why[0] == (f"{plan.cells[0].id}: measuring again: model sha256 "
                      f"{_sha(b'onnx')[:12]} in its result, "
                      f"{_sha(b'onnx, regenerated')[:12]} prepared now (the model file changed "
                      "since it was measured)")


def test_resume_keeps_a_result_that_applies_even_when_its_image_cannot_be_built_now(
    tmp_path: Path, run_dir: RunDir
) -> None:
    plan = make_plan(tmp_path)
    engine = FakeEngine({c.id: harness_ok for c in plan.cells})
    first = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    broken: dict[str, Built | Failed] = {**IMAGES, "env1.8.0": Failed("no network today", "")}
    engine.runs.clear()
    lines: list[str] = []
    got = runner.run_cells(engine, plan, run_dir, broken, prepared(run_dir), resume=True,
                           progress=lambda stage, text: lines.append(text))
    assert engine.runs == [] and got == first
    assert any(text.endswith(f"{plan.cells[0].id}: kept: p50 4.00 ms (3.0 s)") for text in lines)


def _with_packages(packages: dict[str, str]) -> Behaviour:
    def behaviour(spec: ContainerSpec, out: Path) -> ContainerOutcome:
        doc = {**harness_doc(spec), "fingerprint": {"packages": packages}}
        (out / PurePosixPath(arg(spec, "--out")).name).write_text(json.dumps(doc))
        return outcome(0, "measured\n")
    return behaviour


def test_a_cell_whose_installed_set_is_not_its_pins_or_lock_is_env_mismatch(
    tmp_path: Path, run_dir: RunDir
) -> None:
    from envmatrix.analysis import stats
    from envmatrix.images import locks

    plan = make_plan(tmp_path)
    lock = {"env1.8.0": locks.EnvLock("env1.8.0", locks.InstalledSet(
        {"onnxruntime": locks.PipDist("1.8.0"), "numpy": locks.PipDist("1.23.5")}))}
    locks.write_lock(plan.source, lock)
    engine = FakeEngine({
        "env1.8.0--cnn--cpu": _with_packages({"onnxruntime": "1.8.0", "numpy": "1.24.0"}),
        "env1.16.0--cnn--cpu": _with_packages({"onnxruntime": "1.16.1"}),
    })
    got = runner.run_cells(engine, plan, run_dir, IMAGES, prepared(run_dir))
    assert [r["status"] for r in got] == ["env_mismatch", "env_mismatch"]
    assert got[0]["reason"] == "installed set differs: numpy: lock 1.23.5, image 1.24.0"
    assert got[1]["reason"] == ("installed set differs: onnxruntime==1.16.0 requested but "
                                "1.16.1 installed")
    assert got[0]["summary"] is None and got[0]["repeats"]  # raw values kept, no numbers used
    validity = stats.check_validity(got[0])
    assert not validity.valid and validity.reasons[0].startswith("status env_mismatch: ")
