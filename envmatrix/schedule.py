"""Running one plan on its Docker hosts: one thread per host, one cell at a time each.

A matrix without `hosts:` is a hosts list of one, the local engine (`LOCAL`): its work runs in
the calling thread, where Ctrl-C lands as it always did, and it is no "host" to the user: no
name before its messages, no fingerprint, and a failure of its engine ends the run (exit 3)
instead of becoming its cells' status.

Each host's thread connects to its engine, then runs the pipeline's per-host stages that it is
handed (`Stages`: the images stage, then the cells stage) on a sub-plan holding only its own
cells: interleaved rounds stay per host, containers on one host never overlap, and hosts
measure at the same time (measurements never share a machine, so they do not disturb each
other). Every result lands in the one run directory (one file per cell, so threads never write
the same file; `rounds.json` is merged under a lock by the runner).

A host that cannot be reached, or stops answering mid-run, gives its cells the status
`host_unreachable` with the engine's (or TLS's, or ssh's) words; the other hosts finish, and
`--resume` measures those cells later.

A host whose engine does not share this machine's paths (`hosts.shares_paths`: tcp://, ssh://
by default) cannot bind-mount the run directory: once per run, its thread copies the run's
inputs into a volume there (`remote_inputs`), the cells mount it read-only, each cell's
scratch folder is a fresh volume copied back after its container ends
(envmatrix.running.engine), and the inputs volume is removed when the host's cells are done,
also on Ctrl-C or a lost host.

With several hosts, Ctrl-C reaches the main thread only, so it raises KeyboardInterrupt in each
host's thread (and stops that host's running container so a thread waiting on it wakes up):
`run_cells` then records its unfinished cells as it always does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from envmatrix.errors import EngineError, EnvmatrixError, HostUnreachableError
from envmatrix.images import build as images
from envmatrix.rundir import results
from envmatrix.rundir.layout import RunDir, utc_now
from envmatrix.rundir.plan import Cell, Host, Plan
from envmatrix.running import hosts, runner
from envmatrix.running.containers import INPUTS_MOUNT, MANAGED, OWNER_LABEL, RUN_LABEL
from envmatrix.running.engine import Engine, EngineLike

Progress = Callable[[str, str], None]
JOIN_AFTER_INTERRUPT_S = 120.0  # a host thread may be finishing a base bootstrap (debootstrap)
BUILD_THREAD_PREFIX = "envmatrix-build"  # images.ensure_images' pool threads
SHUTDOWN_PATIENCE_S = 20.0  # how long a host whose cells failed may take to stop answering


class HostLost(EnvmatrixError):
    """The host stopped answering between two rounds (raised by the runner's adjust hook)."""


LOCAL = Host(hosts.DEFAULT)  # the engine of a matrix without hosts: (Docker's own settings)


class ImagesStage(Protocol):
    """The images of a (sub-)plan on one engine, by environment id (envmatrix.pipeline)."""

    def __call__(self, engine: EngineLike, plan: Plan, *, build_dir: Path,
                 progress: Progress) -> dict[str, Any]: ...


class CellsStage(Protocol):
    """Every cell of a (sub-)plan measured on one engine (runner.run_cells' signature). The
    pipeline binds the looker (pipeline.cells_stage): each host's call builds its own Monitor
    from the cells it measures, so only comparisons within one host can settle early."""

    def __call__(self, engine: EngineLike, plan: Plan, run_dir: RunDir, images: Mapping[str, Any],
                 prepared: Mapping[str, Any], *, progress: Progress | None = None,
                 adjust: runner.Adjust | None = None,
                 inputs_volume: str | None = None) -> list[dict[str, Any]]: ...


def connect(host: Host) -> EngineLike:
    """The host's engine: the local one as a run without hosts: always reached it (its error
    ends the run), a matrix host through hosts.connect (HostUnreachableError)."""
    return Engine.connect() if host is LOCAL else hosts.connect(host)


@dataclass(frozen=True)
class Stages:
    """What a host's thread calls: the pipeline's images and cells stages, and how to reach
    and describe an engine; tests hand in fakes (engines without Docker)."""

    images: ImagesStage
    cells: CellsStage = runner.run_cells
    connect: Callable[[Host], EngineLike] = connect
    fingerprint: Callable[[EngineLike], dict[str, Any]] = hosts.fingerprint
    sweep: Callable[[EngineLike], int] = runner.sweep_leftovers


@dataclass
class HostRun:
    """One host's share of the plan and what became of it."""

    host: Host
    plan: Plan  # the sub-plan: this host's cells, their environments and bases
    engine: EngineLike | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    built: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreachable: str | None = None
    interrupted: bool = False
    failure: BaseException | None = None  # anything else: re-raised by run_hosts
    phase: str = "connect"  # connect | build | run | done
    thread: threading.Thread | None = None
    shares_paths: bool = True  # False: inputs and results travel through volumes

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def listed(self) -> bool:
        """A host of the matrix's hosts: (not LOCAL): named, described, and may be lost."""
        return self.host is not LOCAL

    def record(self) -> dict[str, Any]:
        """This host in the run record (matrix.resolved.yaml `run.hosts`): no credentials."""
        return {
            "address": self.host.address, "labels": dict(self.host.labels),
            "fingerprint": self.fingerprint or None, "unreachable": self.unreachable,
            "shared_paths": self.shares_paths,
            "images": {env_id: {"tag": getattr(b, "tag", None),
                                "image_id": getattr(b, "image_id", None),
                                "size_bytes": getattr(b, "size_bytes", None),
                                "built": getattr(b, "built", None)}
                       for env_id, b in sorted(self.built.items())},
        }  # fmt: skip


@dataclass
class Spread:
    """What running a plan across its hosts left behind."""

    runs: list[HostRun]
    results: list[dict[str, Any]]  # one per cell of the plan, plan order

    @property
    def interrupted(self) -> bool:
        return any(r.interrupted for r in self.runs)

    @property
    def build_failures(self) -> list[images.BuildFailure]:
        return [b for r in self.runs for b in r.built.values()
                if isinstance(b, images.BuildFailure)]

    def images(self) -> dict[str, Any]:
        """Environment id -> its image on the first host that has it (run.images)."""
        out: dict[str, Any] = {}
        for run in self.runs:
            for env_id, built in run.built.items():
                if getattr(built, "image_id", None) and env_id not in out:
                    out[env_id] = built
        return out

    def record(self) -> dict[str, Any]:
        """The run record's `hosts:` (empty for LOCAL: a run without hosts records none)."""
        return {run.name: run.record() for run in self.runs if run.listed}


def sub_plan(plan: Plan, cells: list[Cell]) -> Plan:
    """The plan restricted to some cells: their environments, bases and workloads only."""
    env_ids = {c.environment.id for c in cells}
    envs = tuple(e for e in plan.environments if e.id in env_ids)
    base_names = {e.base.name for e in envs}
    return replace(plan, cells=tuple(cells), environments=envs,
                   bases=tuple(b for b in plan.bases if b.name in base_names),
                   workloads=tuple(w for w in plan.workloads
                                   if any(c.workload.name == w.name for c in cells)))


def build_dir(run_dir: RunDir, plan: Plan, host: str) -> Path:
    """Where a host's build logs and Dockerfiles go: per host when there are several (two
    engines may build the same environment at once), else where they always went."""
    return run_dir.path / "hosts" / host if plan.multi_host else run_dir.path


def run_hosts(
    plan: Plan,
    run_dir: RunDir,
    prepared: Mapping[str, Any],
    progress: Progress,
    stages: Stages,
    *,
    stop_after: str = "report",
    adjust: runner.Adjust | None = None,
) -> Spread:
    """Every host's cells on that host, hosts in parallel; one result per cell, plan order."""
    say = _locked(progress)
    if plan.hosts:
        say("hosts", ", ".join(f"{h.name} ({h.address})" for h in plan.hosts))
    runs = host_runs(plan)
    args = (run_dir, prepared, say, stages, adjust, stop_after)
    if len(runs) == 1:  # no thread: Ctrl-C reaches the one host's work where it runs
        _host_main(runs[0], *args)
    else:
        _in_threads(runs, args)
    failed = [r.failure for r in runs if r.failure is not None]
    if failed:
        raise failed[0]
    return Spread(runs, _in_plan_order(plan, run_dir, runs))


def host_runs(plan: Plan) -> list[HostRun]:
    """One HostRun per host with cells; LOCAL with the whole plan when it has no hosts:."""
    if not plan.hosts:
        return [HostRun(LOCAL, plan)]
    return [HostRun(host, sub_plan(plan, cells))
            for host, cells in zip(plan.hosts, hosts.cells_by_host(plan.cells, plan.hosts)
                                   .values()) if cells]  # fmt: skip


def _in_threads(runs: list[HostRun], args: tuple[Any, ...]) -> None:
    for run in runs:
        run.thread = threading.Thread(target=_host_main, args=(run, *args), daemon=True,
                                      name=f"envmatrix-host-{run.name}")
        run.thread.start()
    try:
        _wait(runs)
    except KeyboardInterrupt:
        interrupt(runs)


def _locked(progress: Progress) -> Progress:
    lock = threading.Lock()

    def say(stage: str, message: str) -> None:
        with lock:
            progress(stage, message)

    return say


def _wait(runs: list[HostRun]) -> None:
    """Join the host threads in short slices: the main thread must stay able to take Ctrl-C."""
    for run in runs:
        while run.thread is not None and run.thread.is_alive():
            run.thread.join(0.5)


def interrupt(runs: list[HostRun]) -> None:
    """Ctrl-C: every host's thread gets KeyboardInterrupt, its running container is stopped."""
    build_threads = [t for t in threading.enumerate() if t.name.startswith(BUILD_THREAD_PREFIX)]
    for thread in build_threads:  # builds stop their step; ensure_images then re-raises
        _raise_in(thread)
    for run in runs:
        if run.thread is None or not run.thread.is_alive():
            continue
        run.interrupted = True
        if not (run.phase == "build" and build_threads):
            _raise_in(run.thread)
    for run in runs:  # wakes a thread that waits on its container (engine.run records it)
        if run.engine is not None and run.phase == "run":
            with contextlib.suppress(Exception):
                run.engine.remove_labelled_containers({OWNER_LABEL: runner.owner_label()})
    for run in runs:
        if run.thread is not None:
            run.thread.join(JOIN_AFTER_INTERRUPT_S)


def _raise_in(thread: threading.Thread) -> None:
    """KeyboardInterrupt in another thread, delivered when it next runs Python code."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                   ctypes.py_object(KeyboardInterrupt))


def _host_main(run: HostRun, run_dir: RunDir, prepared: Mapping[str, Any], progress: Progress,
               stages: Stages, adjust: runner.Adjust | None, stop_after: str) -> None:
    """One host's work: connect, the images stage, the cells stage; every outcome kept on
    `run` (a failure that is not a lost host in `run.failure`, re-raised by run_hosts)."""
    say = _prefixed(run, progress)
    started = utc_now()
    try:
        engine = _connect(run, stages, say)
        run.phase = "build"
        run.built = stages.images(engine, run.plan,
                                  build_dir=build_dir(run_dir, run.plan, run.name), progress=say)
        if stop_after == "build":
            return
        run.phase = "run"
        with remote_inputs(run, run_dir, say) as volume:
            got = stages.cells(engine, run.plan, run_dir, run.built, prepared, progress=say,
                               adjust=_guard(run, adjust), inputs_volume=volume)
        run.results = {str(r["cell"]): r for r in got}
    except KeyboardInterrupt:
        run.interrupted = True
        return
    except Exception as err:  # noqa: BLE001 - a lost host is the cells' outcome, not a crash
        run.unreachable = _lost(run, err)
        if run.unreachable is None:
            run.failure = err
            return
    finally:
        run.phase = "done"
    _after(run, run_dir, started, say)


def _prefixed(run: HostRun, progress: Progress) -> Progress:
    """A listed host's messages start with its name; LOCAL's are the run's own."""
    if not run.listed:
        return progress

    def say(stage: str, message: str) -> None:
        progress(stage, f"{run.name}: {message}")

    return say


def _lost(run: HostRun, err: Exception) -> str | None:
    """Why a listed host is lost when `err` says it is; None: a failure that ends the run."""
    if not run.listed:
        return None
    if isinstance(err, HostUnreachableError):
        return str(err)
    words = run.engine.unreachable() if run.engine is not None else None
    return None if words is None else f"host {run.name} stopped answering: {words}"


def _connect(run: HostRun, stages: Stages, say: Progress) -> EngineLike:
    """The host's engine (kept on `run` too), described and swept of earlier leftovers."""
    if run.listed:
        say("host", f"connecting to {run.host.address}")
    run.engine = engine = stages.connect(run.host)
    run.shares_paths = hosts.shares_paths(run.host)
    if run.listed:
        run.fingerprint = stages.fingerprint(engine)
        fp = run.fingerprint
        files = "bind mounts" if run.shares_paths else "copied through volumes"
        say("host", f"engine {fp.get('engine_version')}, {fp.get('cpus')} cores, "
                    f"{fp.get('os')}; {len(run.plan.cells)} cell(s); files: {files}")
    _sweep(engine, stages, say)
    return engine


def _sweep(engine: EngineLike, stages: Stages, say: Progress) -> None:
    try:
        swept = stages.sweep(engine)
    except EngineError as err:  # e.g. another host thread on the same engine removed one
        say("sweep", f"skipped: {err}")
        return
    if swept:
        say("sweep", f"removed {swept} container(s) left by an earlier run")


INPUTS_VOLUME_PREFIX = "envmatrix-inputs"


def inputs_volume_name(run_dir: RunDir, host: str) -> str:
    """The inputs volume of one run, host and process (two hosts may be one engine)."""
    run_id = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_dir.run_id)
    return f"{INPUTS_VOLUME_PREFIX}-{run_id}-{host}-{os.getpid()}"


@contextlib.contextmanager
def remote_inputs(run: HostRun, run_dir: RunDir, say: Progress) -> Iterator[str | None]:
    """On a host that does not share our paths: the name of a volume there holding a copy of
    the run's inputs (None on one that does, or when no image was built to mount it from).

    Made once per run and host, removed when the host's cells are done, on Ctrl-C and on a
    lost host too (as far as the engine still answers: the next run's start-up sweep and
    `clean` remove what is left, by its labels). A resumed run copies the inputs again rather
    than trusting a volume that outlived its run; they are small next to a measurement.
    """
    image = next((str(b.image_id) for b in run.built.values()
                  if getattr(b, "image_id", None)), None)  # fmt: skip
    if run.shares_paths or run.engine is None or image is None:
        yield None
        return
    engine, name = run.engine, inputs_volume_name(run_dir, run.name)
    labels = {**MANAGED, RUN_LABEL: run_dir.run_id, OWNER_LABEL: runner.owner_label()}
    try:
        with contextlib.suppress(EngineError):  # e.g. another host on the same engine
            swept = runner.sweep_volumes(engine)
            if swept:
                say("sweep", f"removed {swept} volume(s) left by an earlier run")
        try:
            engine.fill_volume(name, run_dir.inputs_dir, image=image, target=str(INPUTS_MOUNT),
                               labels=labels)
        except EngineError as err:  # the cells cannot run there: the host's outcome
            raise HostUnreachableError(f"host {run.name}: could not copy the run's inputs "
                                       f"there: {err}") from err
        say("host", f"inputs copied into volume {name}")
        yield name
    finally:
        _drop_volume(engine, name, say)


def _drop_volume(engine: EngineLike, name: str, say: Progress) -> None:
    try:
        engine.remove_volume(name)
    except EnvmatrixError as err:
        say("host", f"volume {name} was left behind ({err}); `nox -s clean` removes it")


def _guard(run: HostRun, adjust: runner.Adjust | None) -> runner.Adjust | None:
    """Before each round: a listed host still answers (else HostLost ends its cells), then
    the caller's own hook. One ping between containers, never during a measurement."""
    if not run.listed:
        return adjust

    def check(cell: Cell, launch: runner.Launch) -> runner.Launch:
        words = run.engine.unreachable() if run.engine is not None else "no engine"
        if words is not None:
            raise HostLost(words)
        return adjust(cell, launch) if adjust is not None else launch

    return check


def _after(run: HostRun, run_dir: RunDir, started: str, say: Progress) -> None:
    """Settle a listed host's cells once its work is done: unreachable ones get their
    status, the measured ones their host's fingerprint (LOCAL has neither)."""
    if not run.listed:
        return
    if run.unreachable is None and run.engine is not None and _errors_since(run, started):
        words = _gone(run.engine)  # a run that ended in errors: was it the host?
        if words is not None:
            run.unreachable = f"host {run.name} stopped answering: {words}"
    if run.unreachable is not None:
        say("host", f"UNREACHABLE: {run.unreachable}")
        _mark_unreachable(run, run_dir, started)
    for result in run.results.values():
        _stamp(run, run_dir, result)


def _gone(engine: EngineLike, patience_s: float = SHUTDOWN_PATIENCE_S) -> str | None:
    """The engine's words once it stops answering within `patience_s`, else None: an engine
    that is shutting down still answers pings for a while after it began refusing work."""
    deadline = time.monotonic() + patience_s
    while True:
        words = engine.unreachable()
        if words is not None or time.monotonic() >= deadline:
            return words
        time.sleep(0.5)


def _errors_since(run: HostRun, started: str) -> bool:
    return any(r.get("status") == "error" and _since(r, started) for r in run.results.values())


def _since(result: Mapping[str, Any], started: str) -> bool:
    return str((result.get("host") or {}).get("started_at") or "") >= started


def _mark_unreachable(run: HostRun, run_dir: RunDir, started: str) -> None:
    """host_unreachable for every cell of the host without an ok result (kept or new), and
    for those that failed in this run because the host went away."""
    for cell in run.plan.cells:
        current = run.results.get(cell.id) or _on_disk(run_dir, cell.id)
        if current is not None and current.get("status") == "ok":
            continue
        lost = current is not None and current.get("status") == "error" and _since(current,
                                                                                   started)
        if cell.id in run.results and not lost:
            continue  # its own outcome of this run (crashed, build_failed, ...) stands
        host = {"run_id": run_dir.run_id, "config_hash": cell.config_hash(run.plan.measure),
                "started_at": started, "finished_at": utc_now(),
                "machine": machine(run)}
        result = results.failure_result(cell, "host_unreachable", run.unreachable or "",
                                        None, host, measure=run.plan.measure)
        results.write_result(run_dir, result)
        run.results[cell.id] = result


def _on_disk(run_dir: RunDir, cell_id: str) -> dict[str, Any] | None:
    path = run_dir.result_path(cell_id)
    try:
        return results.as_document(results.read_result(path)) if path.is_file() else None
    except EnvmatrixError:
        return None


def machine(run: HostRun) -> dict[str, Any]:
    """`host.machine` of a result: which host measured it and what that machine is."""
    return {"name": run.name, "address": run.host.address, "shared_paths": run.shares_paths,
            **run.fingerprint}


def _stamp(run: HostRun, run_dir: RunDir, result: dict[str, Any]) -> None:
    part = result.get("host")
    if not isinstance(part, dict) or part.get("machine"):
        return
    part["machine"] = machine(run)
    results.write_result(run_dir, result)


def _in_plan_order(plan: Plan, run_dir: RunDir, runs: list[HostRun]) -> list[dict[str, Any]]:
    by_cell = {cid: r for run in runs for cid, r in run.results.items()}
    out = []
    for cell in plan.cells:
        result = by_cell.get(cell.id) or _on_disk(run_dir, cell.id)
        if result is not None:
            out.append(result)
    return out
