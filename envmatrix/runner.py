"""Run the cells: one container per cell, one cell at a time, every outcome kept.

Benchmarks never overlap (they would measure each other), so cells run strictly in turn. Each
container runs with least privilege: no network, all capabilities dropped, no-new-privileges,
a read-only root with a tmpfs /tmp, user nobody (65534), memory and pids limits, the inputs
mounted read-only and one writable scratch folder; never privileged, never the docker socket.

A failing cell never stops the next: its outcome is classified (results.classify) and written
as a result with a status. Ctrl-C stops the current container (engine.run removes it), writes
that cell's `interrupted` result, keeps every finished one and re-raises, so the CLI can print
`RunDir.resume_hint()`; `--resume` later keeps ok results that still apply and runs the rest.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, Union, cast

from envmatrix import results
from envmatrix.engine import ContainerOutcome, ContainerSpec, Engine
from envmatrix.errors import EngineError
from envmatrix.model import PROVIDER_NAMES, Cell, Measure, Plan
from envmatrix.rundir import RunDir

NOBODY = 65534
RUN_USER = f"{NOBODY}:{NOBODY}"
VENV_PYTHON = "/opt/venv/bin/python"
HARNESS_HOME = "/opt/envmatrix"  # the harness package lives in HARNESS_HOME/harness
INPUTS_MOUNT = PurePosixPath("/envmatrix/inputs")
OUT_MOUNT = PurePosixPath("/envmatrix/out")
RESULT_NAME = "result.json"
OUTPUTS_NAME = "outputs.npz"
MANAGED = {"envmatrix.managed": "true"}


class BuiltImageLike(Protocol):
    """What the runner needs of images.BuiltImage."""

    @property
    def tag(self) -> str: ...
    @property
    def image_id(self) -> str: ...


class BuildFailureLike(Protocol):
    """What the runner needs of images.BuildFailure (an environment whose build failed)."""

    @property
    def message(self) -> str: ...
    @property
    def log_tail(self) -> str: ...


class PreparedLike(Protocol):
    """What the runner needs of inputs.PreparedWorkload: host paths under run_dir.inputs_dir."""

    @property
    def model_path(self) -> Path: ...
    @property
    def torchscript_path(self) -> Path | None: ...
    @property
    def inputs_path(self) -> Path: ...


ImageEntry = Union[BuiltImageLike, BuildFailureLike]
Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class Launch:
    """One cell's container and its deadline; `adjust` hooks may change both (tests, debug)."""

    spec: ContainerSpec
    timeout_s: float


# Hook to change a cell's launch before it starts: tests use it to run crafted commands
# (segfault, OOM, sleep) through the real runner; people can use it to debug one cell.
Adjust = Callable[[Cell, Launch], Launch]


OWNER_LABEL = "envmatrix.owner"


def owner_label() -> str:
    """Which process on which host runs a container: the sweep spares live runs' containers."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(labels: dict[str, str]) -> bool:
    host, _, pid = labels.get(OWNER_LABEL, "").rpartition(":")
    if not pid.isdigit():
        return False  # no owner recorded: nothing can still be waiting for it
    if host != socket.gethostname():
        return True  # another host's run on a shared engine: we cannot tell, so keep it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but another user's process
    return True


def sweep_leftovers(engine: Engine) -> int:
    """Remove containers a dead run left behind (start-up); never those of a live run."""
    return engine.remove_labelled_containers(dict(MANAGED), keep=_owner_alive)


def harness_command(
    cell: Cell, measure: Measure, model: PurePosixPath, inputs: PurePosixPath
) -> list[str]:
    """The harness's command line for one cell (paths as seen inside the container)."""
    command = [
        VENV_PYTHON, "-m", "harness",
        "--model", str(model),
        "--backend", cell.workload.backend,
        "--inputs", str(inputs),
        "--seed", str(cell.workload.seed),  # recorded only: the inputs file holds the tensors
        "--provider", PROVIDER_NAMES.get(cell.provider, cell.provider),
    ]  # fmt: skip
    for key, value in cell.provider_options:
        command += ["--provider-option", f"{key}={value}"]
    command += [
        "--warmup", str(measure.warmup),
        "--min-iterations", str(measure.min_iterations),
        "--min-time", f"{measure.min_time_s:g}",
        "--repeats", str(measure.repeats),
    ]  # fmt: skip
    if measure.threads is not None:
        command += ["--threads", str(measure.threads)]
    command += [
        "--cell", cell.id,
        "--environment", cell.environment.id,
        "--workload", cell.workload.name,
        "--out", str(OUT_MOUNT / RESULT_NAME),
        "--save-outputs", str(OUT_MOUNT / OUTPUTS_NAME),
    ]  # fmt: skip
    return command


def container_path(run_dir: RunDir, host_path: Path) -> PurePosixPath:
    """Where a file under the run's inputs folder appears inside the container."""
    try:
        relative = host_path.resolve().relative_to(run_dir.inputs_dir.resolve())
    except ValueError:
        raise ValueError(
            f"{host_path} is not inside {run_dir.inputs_dir}: prepared inputs must live in the "
            f"run's inputs folder, which is the only one mounted into containers"
        ) from None
    return INPUTS_MOUNT / PurePosixPath(relative.as_posix())


def cell_spec(
    plan: Plan, run_dir: RunDir, cell: Cell, image_ref: str, command: list[str], image_id: str
) -> ContainerSpec:
    """The least-privilege container for one cell (see the module docstring)."""
    measure = plan.measure
    return ContainerSpec(
        image=image_ref,
        command=command,
        name=None,  # engine-chosen names: a leftover never blocks the next run
        user=RUN_USER,
        environment={"HOME": "/tmp", "ENVMATRIX_IMAGE_ID": image_id},
        mounts=[
            (str(run_dir.inputs_dir.resolve()), str(INPUTS_MOUNT), True),
            (str(run_dir.scratch(cell.id).resolve()), str(OUT_MOUNT), False),
        ],
        labels={**MANAGED, "envmatrix.run": run_dir.run_id, "envmatrix.cell": cell.id,
                OWNER_LABEL: owner_label()},
        network_disabled=True,
        read_only_root=True,
        tmpfs={"/tmp": "rw,size=256m"},
        cap_drop_all=True,
        no_new_privileges=True,
        mem_limit=measure.memory_limit,
        pids_limit=measure.pids_limit,
        cpuset_cpus=measure.cpuset,
        working_dir=HARNESS_HOME,
    )


def prepare_scratch(path: Path) -> None:
    """An empty folder that uid 65534 can write: a retry must not see an old result file."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    # 0o777 rather than chown: works for a non-root host user too (rootless engines map ids).
    os.chmod(path, 0o777)


def run_cells(
    engine: Engine,
    plan: Plan,
    run_dir: RunDir,
    images: Mapping[str, ImageEntry],
    prepared: Mapping[str, PreparedLike],
    *,
    resume: bool = False,
    progress: Progress | None = None,
    adjust: Adjust | None = None,
) -> list[dict[str, Any]]:
    """Run every cell of the plan in turn; one result per cell, in plan order."""
    say = progress or (lambda stage, message: None)
    done: list[dict[str, Any]] = []
    total = len(plan.cells)
    for index, cell in enumerate(plan.cells, start=1):
        say("run", f"[{index}/{total}] {cell.id}")
        result = _run_or_reuse(engine, plan, run_dir, cell, images, prepared, resume, adjust)
        done.append(result)
        say("run", f"[{index}/{total}] {cell.id}: {_summary_line(result)}")
    return done


def _run_or_reuse(
    engine: Engine,
    plan: Plan,
    run_dir: RunDir,
    cell: Cell,
    images: Mapping[str, ImageEntry],
    prepared: Mapping[str, PreparedLike],
    resume: bool,
    adjust: Adjust | None,
) -> dict[str, Any]:
    image = images.get(cell.environment.id)
    base_host = {"run_id": run_dir.run_id, "config_hash": cell.config_hash(plan.measure)}
    if image is None or not _is_built(image):
        return _build_failed(plan, run_dir, cell, image, base_host)
    built = cast(BuiltImageLike, image)
    if resume:
        kept = results.reusable_result(run_dir, cell, plan.measure, built.tag)
        if kept is not None:
            return kept
    workload = prepared.get(cell.workload.name)
    if workload is None:
        reason = f"inputs of workload {cell.workload.name!r} were not prepared"
        return _write(run_dir, cell, plan, "skipped", reason, None, base_host)
    return run_cell(engine, plan, run_dir, cell, built, workload, adjust=adjust)


def _is_built(image: ImageEntry) -> bool:
    if not getattr(image, "ok", True):
        return False
    return bool(getattr(image, "image_id", None)) and bool(getattr(image, "tag", None))


def _build_failed(
    plan: Plan,
    run_dir: RunDir,
    cell: Cell,
    failure: ImageEntry | None,
    host: dict[str, Any],
) -> dict[str, Any]:
    env_id = cell.environment.id
    if failure is None:
        reason, tail = f"no image was built for environment {env_id}", None
    else:
        message = str(getattr(failure, "message", "") or "the image build failed")
        reason = f"image build failed: {results.last_log_line(message) or message}"
        tail = results.log_tail(str(getattr(failure, "log_tail", "") or "")) or None
    host = {**host, "build_log": _relative(run_dir, run_dir.build_log(env_id))}
    return _write(run_dir, cell, plan, "build_failed", reason, tail, host)


def _write(
    run_dir: RunDir,
    cell: Cell,
    plan: Plan,
    status: str,
    reason: str,
    tail: str | None,
    host: dict[str, Any],
) -> dict[str, Any]:
    result = results.failure_result(cell, status, reason, tail, host, measure=plan.measure)
    results.write_result(run_dir, result)
    return result


def run_cell(
    engine: Engine,
    plan: Plan,
    run_dir: RunDir,
    cell: Cell,
    image: BuiltImageLike,
    workload: PreparedLike,
    *,
    adjust: Adjust | None = None,
) -> dict[str, Any]:
    """Run one cell's container, classify what happened, write and return its result."""
    model = workload.model_path
    if cell.workload.backend == "torch" and workload.torchscript_path is not None:
        model = workload.torchscript_path
    command = harness_command(
        cell,
        plan.measure,
        container_path(run_dir, model),
        container_path(run_dir, workload.inputs_path),
    )
    # The image id, not the tag: the exact image measured, even if the tag moves meanwhile.
    spec = cell_spec(plan, run_dir, cell, image.image_id, command, image.image_id)
    launch = Launch(spec=spec, timeout_s=plan.measure.timeout_s)
    if adjust is not None:
        launch = adjust(cell, launch)
    scratch = run_dir.scratch(cell.id)
    prepare_scratch(scratch)
    run_dir.logs_dir.mkdir(parents=True, exist_ok=True)
    run_dir.run_log(cell.id).unlink(missing_ok=True)  # a retry's log must be its own
    host = _host_base(run_dir, cell, plan, image, launch)
    started = time.monotonic()
    try:
        outcome = engine.run(
            launch.spec, timeout_s=launch.timeout_s, log_path=run_dir.run_log(cell.id)
        )
    except KeyboardInterrupt:
        _record_interrupted(run_dir, cell, plan, host, time.monotonic() - started)
        raise
    except EngineError as err:
        host.update(duration_s=round(time.monotonic() - started, 3), finished_at=results.utc_now())
        reason = f"the engine could not run the container: {err}"
        return _write(run_dir, cell, plan, "error", reason, None, host)
    return _collect(run_dir, cell, plan, launch, outcome, host)


def _host_base(
    run_dir: RunDir, cell: Cell, plan: Plan, image: BuiltImageLike, launch: Launch
) -> dict[str, Any]:
    return {
        "run_id": run_dir.run_id,
        "config_hash": cell.config_hash(plan.measure),
        "image_tag": image.tag,
        "image_id": image.image_id,
        "requested_packages": cell.environment.package_dict,
        "timeout_s": launch.timeout_s,
        "memory_limit": launch.spec.mem_limit,
        "pids_limit": launch.spec.pids_limit,
        "cpuset": launch.spec.cpuset_cpus,
        "command": list(launch.spec.command),
        "run_log": _relative(run_dir, run_dir.run_log(cell.id)),
        "started_at": results.utc_now(),
    }


def _record_interrupted(
    run_dir: RunDir, cell: Cell, plan: Plan, host: dict[str, Any], elapsed: float
) -> None:
    log_path = run_dir.run_log(cell.id)
    log = log_path.read_text(errors="replace") if log_path.is_file() else None
    host.update(
        exit_code=None, oom_killed=False, timed_out=False, interrupted=True,
        duration_s=round(elapsed, 3), finished_at=results.utc_now(),
    )  # fmt: skip
    reason = f"interrupted (Ctrl-C) after {elapsed:.1f} s; finish with `{run_dir.resume_hint()}`"
    _write(run_dir, cell, plan, "interrupted", reason, results.log_tail(log), host)


def _collect(
    run_dir: RunDir,
    cell: Cell,
    plan: Plan,
    launch: Launch,
    outcome: ContainerOutcome,
    host: dict[str, Any],
) -> dict[str, Any]:
    """Classify a finished container, keep its outputs, write the cell's result."""
    scratch = run_dir.scratch(cell.id)
    if not run_dir.run_log(cell.id).is_file():
        run_dir.run_log(cell.id).write_text(outcome.log, errors="replace")
    harness, problem = results.read_harness_file(scratch / RESULT_NAME)
    status, reason = results.classify(
        outcome,
        harness,
        problem,
        timeout_s=launch.timeout_s,
        memory_limit=launch.spec.mem_limit,
        log=outcome.log,
    )
    host.update(
        exit_code=outcome.exit_code,
        oom_killed=outcome.oom_killed,
        timed_out=outcome.timed_out,
        signal=results.signal_of(outcome.exit_code),
        duration_s=round(outcome.duration_s, 3),
        container_id=outcome.container_id,
        finished_at=results.utc_now(),
    )
    host["outputs"] = _keep_outputs(run_dir, cell, scratch)
    tail = None if status == "ok" else results.log_tail(outcome.log)
    result = results.finalize_result(
        harness, cell=cell, measure=plan.measure, status=status, reason=reason,
        log_tail=tail, host=host,
    )  # fmt: skip
    results.write_result(run_dir, result)
    if status == "ok":
        shutil.rmtree(scratch, ignore_errors=True)  # failures keep theirs for a post-mortem
    return result


def _keep_outputs(run_dir: RunDir, cell: Cell, scratch: Path) -> str | None:
    """Move the harness's outputs.npz to outputs/<cell>.npz; its run-relative path, or None."""
    source = scratch / OUTPUTS_NAME
    target = run_dir.output_path(cell.id)
    if not source.is_file():
        target.unlink(missing_ok=True)  # never leave an older attempt's outputs for parity
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    return _relative(run_dir, target)


def _relative(run_dir: RunDir, path: Path) -> str:
    return path.relative_to(run_dir.path).as_posix()


def _summary_line(result: dict[str, Any]) -> str:
    status = str(result.get("status"))
    if status != "ok":
        return f"{status}: {result.get('reason')}"
    latency = ((result.get("summary") or {}).get("latency_s") or {}).get("p50")
    took = (result.get("host") or {}).get("duration_s")
    p50 = f"p50 {latency * 1000:.2f} ms" if isinstance(latency, (int, float)) else "ok"
    return f"{p50} ({took} s)" if took is not None else p50
