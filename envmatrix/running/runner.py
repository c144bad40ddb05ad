"""Run the cells in interleaved rounds, one container at a time, every outcome kept.

Benchmarks never overlap (they would measure each other), so containers run strictly in turn.
A cell is measured in `measure.round_count` rounds: round 1 of every cell, then round 2 of
every cell, and so on, each round one container running `repeats_per_round` fresh processes.
A machine whose speed drifts over minutes then shifts every cell of a round alike, and the
verdict (envmatrix.analysis.stats) can compare cells round by round. Each round's harness result
lands in `scratch/<cell>/round-<r>.json`; after a cell's last round they are merged into one result
(repeats concatenated, each with its `round`, the summary recomputed by the harness's code).

Each container is a least-privilege cell container as envmatrix.running.containers defines it (user
nobody, no network, read-only root, the inputs read-only and one writable scratch folder); this
module only decides which cell runs when, and what its outcome means.

A cell whose rounds all succeeded is still `env_mismatch` when its fingerprint's installed set
is not what its environment asked for: a pin not met, or, when the matrix has a lock file, any
distribution that differs from the lock (`locks.cell_problems`). Its raw repeats are kept; the
summary goes, as for every status but ok, so its numbers reach no comparison.

An adaptive run (`measure.adaptive`, and a `Looker` handed in by the pipeline, which builds
analysis.stopping.Monitor: this stage cannot import analysis) looks at the comparisons after
every `look_every` rounds; a cell whose comparisons are all settled leaves the rounds and its
result is merged from the rounds it has. Each look is recorded in `looks.json` (rundir.looks).

A failing round never stops the other cells: its outcome is classified (results.classify) and
written as the cell's result with a status, and that cell sits out the later rounds. Ctrl-C
stops the current container (engine.run removes it), writes an `interrupted` result for every
cell that started but did not finish its rounds, keeps every finished one and re-raises, so the
CLI can print `RunDir.resume_hint()`; `--resume` later keeps ok results that still apply and
measures the rest completely, interleaved among themselves (their comparisons with a kept cell
cannot settle early: those cells run the full budget).

Why it is long (over 600 lines): the round loop, its failure isolation, Ctrl-C and --resume
interlock (which cell sits out which round, what an interrupted round leaves): kept together
so that "every outcome kept" can be checked in one file.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, Union, cast

import numpy as np

from envmatrix.errors import EngineError, GpuUnavailableError
from envmatrix.images import locks
from envmatrix.rundir import results
from envmatrix.rundir.invocations import InvocationEntry
from envmatrix.rundir.layout import RunDir, utc_now
from envmatrix.rundir.looks import LooksLog
from envmatrix.rundir.plan import Cell, Measure, Plan
from envmatrix.rundir.rounds import ROUNDS_FILE, ROUNDS_SCHEMA
from envmatrix.running.containers import (
    CELL_LABEL,
    MANAGED,
    OUTPUTS_NAME,
    OWNER_LABEL,
    ContainerSpec,
    cell_spec,
    container_path,
    fresh_volumes,
    harness_command,
    round_result_name,
)
from envmatrix.running.engine import ContainerOutcome, EngineLike
from envmatrix_harness import measure as harness_measure
from envmatrix_harness import modelinfo as harness_modelinfo

T = TypeVar("T")


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


class LookLike(Protocol):
    """What the runner needs of one look (analysis.stopping.Look)."""

    @property
    def leaving(self) -> Sequence[str]: ...  # cells whose comparisons are all settled
    def record(self) -> dict[str, Any]: ...  # the look as looks.json keeps it
    def describe(self) -> str: ...  # the look in one progress line


class Looker(Protocol):
    """The sequential design as the runner sees it (analysis.stopping.Monitor): when to look
    at the comparisons, and which cells may leave the rounds. The runner sits below analysis,
    so the pipeline builds it and hands it in through a `LookerFactory`."""

    def is_look(self, rounds_done: int) -> bool: ...
    def look(self, rounds_done: int, docs: Mapping[str, Sequence[Mapping[str, Any]]],
             running: Iterable[str]) -> LookLike: ...
    def fail(self, cell_id: str) -> None: ...  # a cell ended without numbers
    def design(self) -> dict[str, Any]: ...  # the design as looks.json records it


# Builds the Looker of one invocation from the cells it measures (not those a --resume keeps,
# nor another host's): only comparisons between two of them can settle early.
LookerFactory = Callable[[list[str]], Looker]


@dataclass(frozen=True)
class Launch:
    """One cell's container and its deadline; `adjust` hooks may change both (tests, debug)."""

    spec: ContainerSpec
    timeout_s: float


# Hook to change a cell's launch before it starts: tests use it to run crafted commands
# (segfault, OOM, sleep) through the real runner; people can use it to debug one cell.
Adjust = Callable[[Cell, Launch], Launch]


def owner_label() -> str:
    """Which process on which host runs a container: the sweep spares live runs' containers."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(labels: dict[str, str]) -> bool:
    """Whether a managed container may still be in use, so the sweep must keep it.

    Only what a run owns is swept (cell containers, and on remote engines the inputs
    volume, its helper container and scratch volumes): a build's step containers carry the
    managed label too (the builder stage is labelled) but no cell or owner, and a concurrent
    build on the same engine still needs them; the builder removes them itself (`forcerm`).
    """
    if CELL_LABEL not in labels and OWNER_LABEL not in labels:
        return True
    host, _, pid = labels.get(OWNER_LABEL, "").rpartition(":")
    if not pid.isdigit():
        return False  # a cell container with no owner recorded: nothing waits for it
    if host != socket.gethostname():
        return True  # another host's run on a shared engine: we cannot tell, so keep it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but another user's process
    return True


def sweep_leftovers(engine: EngineLike) -> int:
    """Remove containers a dead run left behind (start-up); never those of a live run."""
    return engine.remove_labelled_containers(dict(MANAGED), keep=_owner_alive)


def sweep_volumes(engine: EngineLike) -> int:
    """Remove the volumes a dead run left on an engine that does not share our paths."""
    return engine.remove_labelled_volumes(dict(MANAGED), keep=_owner_alive)


def prepare_scratch(path: Path) -> None:
    """An empty folder that uid 65534 can write: a retry must not see an old result file."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    # 0o777 rather than chown: works for a non-root host user too (rootless engines map ids).
    os.chmod(path, 0o777)


@dataclass
class _Measuring:
    """A cell on its way through the rounds: what its ok rounds produced so far."""

    index: int  # 1-based position in the plan, for progress lines
    cell: Cell
    image: BuiltImageLike
    workload: PreparedLike
    identity: results.Identity  # what its result records: config hash, model and inputs hashes
    docs: list[dict[str, Any]] = field(default_factory=list)  # harness documents, ok rounds
    hosts: list[dict[str, Any]] = field(default_factory=list)  # host evidence, ok rounds
    lock: locks.EnvLock | None = None  # the environment's entry of the matrix's lock file


def run_cells(
    engine: EngineLike,
    plan: Plan,
    run_dir: RunDir,
    images: Mapping[str, ImageEntry],
    prepared: Mapping[str, PreparedLike],
    *,
    resume: bool = False,
    progress: Progress | None = None,
    adjust: Adjust | None = None,
    inputs_volume: str | None = None,
    config_hashes: Mapping[str, str] | None = None,
    looker: LookerFactory | None = None,
) -> list[dict[str, Any]]:
    """Measure every cell of the plan in interleaved rounds; one result per cell, in plan order.

    Cells that need no container (build failed, kept by --resume, inputs missing) are settled
    first; the others run round 1 each, then round 2 each, and so on. `inputs_volume`: the
    engine does not share our paths and holds a copy of the inputs in this volume
    (envmatrix.schedule), so cells mount volumes instead of the run directory.
    `config_hashes`: each cell's hash as its run recorded it (--resume), so old and new
    results carry the same one. `looker`: with `measure.adaptive`, the comparisons are looked
    at between rounds and a cell whose comparisons are all settled leaves the rounds with the
    rounds it has (`_Looks`); without one, every cell runs every round.
    """
    say = progress or (lambda stage, message: None)
    total, rounds = len(plan.cells), plan.measure.round_count
    done: dict[str, dict[str, Any]] = {}
    measuring: list[_Measuring] = []
    identities = Identities(plan, config_hashes or {})
    matrix_lock = locks.load_lock(plan.source)
    for index, cell in enumerate(plan.cells, start=1):
        settled = _settle_without_container(plan, run_dir, cell, images, prepared,
                                            identities if resume else None, say)
        if isinstance(settled, dict):
            done[cell.id] = settled
            kept = "kept: " if settled.get("status") == "ok" else ""
            say("run", f"[{index}/{total}] {cell.id}: {kept}{_summary_line(settled)}")
        else:
            image, workload = settled
            lock = matrix_lock.environments.get(cell.environment.id) if matrix_lock else None
            measuring.append(_Measuring(index, cell, image, workload,
                                        identities.of(cell, workload), lock=lock))
    current: _Measuring | None = None
    host = plan.cells[0].host if plan.cells else None
    orders = RoundOrders(run_dir, host=host)
    looks = _Looks.start(looker, plan, run_dir, measuring, host)
    # Asked once per run, recorded with each GPU cell's result (host.engine_gpu).
    engine_gpu = engine.gpu_support() if any(m.cell.gpus for m in measuring) else None
    try:
        for round_index in range(rounds):
            order = round_order([m for m in measuring if m.cell.id not in done], round_index)
            if not order:
                break  # every cell has its result: no empty rounds to record
            orders.record(round_index, [m.cell.id for m in order])
            for item in order:
                where = f"[{item.index}/{total}] {item.cell.id}"
                if rounds > 1:
                    where = f"[round {round_index + 1}/{rounds}] {where}"  # the budget: the most
                say("run", where)
                current = item
                result = _run_round(engine, plan, run_dir, item, round_index, adjust, engine_gpu,
                                    inputs_volume)
                current = None
                if result is not None:
                    done[item.cell.id] = result
                    looks.ended(result)
                    say("run", f"{where}: {_summary_line(result)}")
                else:
                    say("run", f"{where}: {_round_line(item)}")
            running = [m for m in measuring if m.cell.id not in done]
            for item in looks.leaving(round_index + 1, running, say):
                done[item.cell.id] = _finish_ok(run_dir, item, plan)
                say("run", f"[{item.index}/{total}] {item.cell.id}: left the rounds after "
                           f"{len(item.docs)}/{rounds}: {_summary_line(done[item.cell.id])}")
    except KeyboardInterrupt:
        for unfinished in measuring:  # a container stopped mid-round recorded its own
            if unfinished is not current and unfinished.cell.id not in done and unfinished.docs:
                _record_unfinished(run_dir, plan, unfinished)
        raise
    return [done[cell.id] for cell in plan.cells]


class _Looks:
    """An adaptive run's looks: taken after the planned rounds, each recorded in looks.json.

    Without a looker, or with `measure.adaptive: false`, it never looks and writes nothing:
    every cell runs every round, as a fixed-budget run always did.
    """

    def __init__(self, looker: Looker | None = None, log: LooksLog | None = None) -> None:
        self.looker, self.log = looker, log

    @classmethod
    def start(cls, factory: LookerFactory | None, plan: Plan, run_dir: RunDir,
              measuring: Sequence[_Measuring], host: str | None) -> _Looks:
        if factory is None or not plan.measure.adaptive or not measuring:
            return cls()
        looker = factory([m.cell.id for m in measuring])
        # The design is written before any round, so even a run stopped early says how it
        # meant to look.
        return cls(looker, LooksLog(run_dir, looker.design(), host))

    def ended(self, result: Mapping[str, Any]) -> None:
        """A cell's result came from its rounds: without numbers, its comparisons close."""
        if self.looker is not None and result.get("status") != "ok":
            self.looker.fail(str(result.get("cell")))

    def leaving(self, rounds_done: int, running: Sequence[_Measuring],
                say: Progress) -> list[_Measuring]:
        """The cells that leave the rounds now (a look is planned after this round)."""
        if self.looker is None or self.log is None or not running:
            return []
        if not self.looker.is_look(rounds_done):
            return []
        look = self.looker.look(rounds_done, {m.cell.id: m.docs for m in running},
                                [m.cell.id for m in running])
        self.log.add(look.record())  # before the cells leave: an interrupt keeps the decision
        say("run", f"[look at round {rounds_done}] {look.describe()}")
        gone = set(look.leaving)
        return [m for m in running if m.cell.id in gone]


def round_order(items: Sequence[T], round_index: int) -> list[T]:
    """The cells of one round, rotated by one place per round.

    Running the baseline first in every round would hand it whatever the first position
    brings (a cooler CPU, caches warmed by the previous round's last cell) every time; rotated,
    each cell takes each position equally often over as many rounds as there are cells.
    """
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


class RoundOrders:
    """`rounds.json` in the run directory: the order the cells ran in, per round.

    One entry per invocation (a resumed run adds its own, each host of a multi-host run too;
    rundir.invocations), written after every round starts, so the order of an interrupted run
    is on disk too.
    """

    def __init__(self, run_dir: RunDir, host: str | None = None) -> None:
        self._file = InvocationEntry(run_dir.path / ROUNDS_FILE, ROUNDS_SCHEMA,
                                     {"rule": "rotate by one place per round", "rounds": []},
                                     host)

    @property
    def entry(self) -> dict[str, Any]:
        return self._file.entry

    def record(self, round_index: int, cell_ids: list[str]) -> None:
        self.entry["rounds"].append({"round": round_index, "order": cell_ids})
        self._file.save()


def _settle_without_container(
    plan: Plan,
    run_dir: RunDir,
    cell: Cell,
    images: Mapping[str, ImageEntry],
    prepared: Mapping[str, PreparedLike],
    resume: Identities | None,
    say: Progress,
) -> dict[str, Any] | tuple[BuiltImageLike, PreparedLike]:
    """The cell's result when no container is needed, else what its rounds need.

    `resume`: given on --resume, where an earlier ok result is kept only when its config,
    model and inputs hashes (and image) match what this run prepared; otherwise the cell is
    measured again and the progress output says why.
    """
    image = images.get(cell.environment.id)
    workload = prepared.get(cell.workload.name)
    if resume is not None and workload is not None:
        # Checked before the build's outcome: a measurement that still applies is kept even
        # when its image cannot be built today (the tag, when known, must still match).
        tag = getattr(image, "tag", None)
        kept, why = results.reuse_check(run_dir, cell, resume.of(cell, workload), tag)
        if kept is not None:
            return results.as_document(kept)
        if why:
            say("resume", f"{cell.id}: measuring again: {why}")
    config_hash = (resume or Identities(plan, {})).config_hash(cell)
    base_host = {"run_id": run_dir.run_id, "config_hash": config_hash}
    if image is None or not _is_built(image):
        return _build_failed(plan, run_dir, cell, image, base_host)
    if workload is None:
        reason = f"inputs of workload {cell.workload.name!r} were not prepared"
        return _write(run_dir, cell, plan, "skipped", reason, None, base_host)
    return cast(BuiltImageLike, image), workload


def harness_model_path(cell: Cell, workload: PreparedLike) -> Path:
    """The model file the harness loads for this cell (what its `model.sha256` hashes)."""
    if cell.workload.backend == "torch" and workload.torchscript_path is not None:
        return workload.torchscript_path
    return workload.model_path


class Identities:
    """Each cell's `results.Identity`; the files are hashed once per run, not once per cell."""

    def __init__(self, plan: Plan, recorded: Mapping[str, str]) -> None:
        self._plan = plan
        self._recorded = recorded
        self._files: dict[Path, str] = {}
        self._tensors: dict[Path, tuple[str, ...]] = {}

    def config_hash(self, cell: Cell) -> str:
        return self._recorded.get(cell.id) or cell.config_hash(self._plan.measure)

    def of(self, cell: Cell, workload: PreparedLike) -> results.Identity:
        return results.Identity(
            config_hash=self.config_hash(cell),
            model_sha256=self._sha256(harness_model_path(cell, workload)),
            inputs_sha256=self._sha256(workload.inputs_path),
            tensor_sha256s=self._tensor_sha256s(workload.inputs_path),
        )

    def _sha256(self, path: Path) -> str:
        if path not in self._files:
            self._files[path] = harness_modelinfo.sha256_file(str(path))  # the harness's code
        return self._files[path]

    def _tensor_sha256s(self, path: Path) -> tuple[str, ...]:
        """Digests of the file's tensors as the harness makes them; () if it is not an .npz."""
        if path not in self._tensors:
            try:
                with np.load(path, allow_pickle=False) as archive:
                    shas = [harness_measure.tensor_digest(name, archive[name])["sha256"]
                            for name in archive.files]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile):
                shas = []
            self._tensors[path] = tuple(sorted(shas))
        return self._tensors[path]


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


def _launch(
    plan: Plan, run_dir: RunDir, item: _Measuring, round_index: int, adjust: Adjust | None,
    inputs_volume: str | None = None,
) -> Launch:
    """One round's container. measure.timeout_s is per cell: a round gets what is left of it."""
    cell, workload = item.cell, item.workload
    model = harness_model_path(cell, workload)
    measure = cell.measure_for(plan.measure)  # the cell's own threads, cpuset, memory
    command = harness_command(
        cell,
        measure,
        container_path(run_dir, model),
        container_path(run_dir, workload.inputs_path),
        round_index,
    )
    image_id = item.image.image_id
    spec = cell_spec(
        RunDir(run_dir.path.resolve(), run_dir.run_id),  # the engine needs absolute mounts
        cell.id,
        image=image_id,  # the image id, not the tag: the exact image, even if the tag moves
        image_id=image_id,
        command=command,
        memory_limit=measure.memory_limit,
        pids_limit=measure.pids_limit,
        cpuset=measure.cpuset,
        owner=owner_label(),
        gpus=cell.gpus,
        inputs_volume=inputs_volume,
    )
    spent = sum(float(h.get("duration_s") or 0.0) for h in item.hosts)
    launch = Launch(spec=spec, timeout_s=max(plan.measure.timeout_s - spent, 1.0))
    return adjust(cell, launch) if adjust is not None else launch


def _run_round(
    engine: EngineLike,
    plan: Plan,
    run_dir: RunDir,
    item: _Measuring,
    round_index: int,
    adjust: Adjust | None,
    engine_gpu: dict[str, Any] | None = None,
    inputs_volume: str | None = None,
) -> dict[str, Any] | None:
    """One round of one cell; the cell's final result when this round ended it, else None."""
    cell = item.cell
    launch = _launch(plan, run_dir, item, round_index, adjust, inputs_volume)
    if round_index == 0:
        prepare_scratch(run_dir.scratch(cell.id))
        run_dir.logs_dir.mkdir(parents=True, exist_ok=True)
        run_dir.run_log(cell.id).unlink(missing_ok=True)  # a retry's log must be its own
    round_log = run_dir.logs_dir / f"run-{cell.id}.round.log"
    round_log.unlink(missing_ok=True)
    host = _host_base(run_dir, item, launch)
    if cell.gpus and engine_gpu is not None:
        host["engine_gpu"] = engine_gpu
    # A scratch volume on a remote engine comes back into the scratch folder, so what follows
    # reads the round's files where a bind mount would have left them.
    copy: dict[str, Any] = {"copy_out": run_dir.scratch(cell.id)} if fresh_volumes(
        launch.spec) else {}
    started = time.monotonic()
    try:
        outcome = engine.run(launch.spec, timeout_s=launch.timeout_s, log_path=round_log, **copy)
    except KeyboardInterrupt:
        _append_round_log(run_dir, cell, plan, round_index, round_log, None)
        _record_interrupted(run_dir, item, plan, host, time.monotonic() - started, round_index)
        raise
    except EngineError as err:
        host.update(duration_s=round(time.monotonic() - started, 3), finished_at=utc_now())
        if isinstance(err, GpuUnavailableError):  # this cell's outcome; the others run on
            reason = f"the engine could not give the container a GPU: {err}"
            return _finish_failed(run_dir, item, plan, None, "no_gpu", reason, None, host)
        reason = f"the engine could not run the container: {err}"
        return _finish_failed(run_dir, item, plan, None, "error", reason, None, host)
    log = _append_round_log(run_dir, cell, plan, round_index, round_log, outcome.log)
    return _collect(run_dir, item, plan, launch, outcome, host, round_index, log)


def _append_round_log(
    run_dir: RunDir, cell: Cell, plan: Plan, round_index: int, round_log: Path, fallback: str | None
) -> str:
    """Add one round's container log to the cell's run log; returns that round's log."""
    text = round_log.read_text(errors="replace") if round_log.is_file() else (fallback or "")
    round_log.unlink(missing_ok=True)
    rounds = plan.measure.round_count
    header = f"===== round {round_index + 1}/{rounds} =====\n" if rounds > 1 else ""
    with run_dir.run_log(cell.id).open("a", encoding="utf-8", errors="replace") as handle:
        handle.write(header + text)
    return text


def _host_base(run_dir: RunDir, item: _Measuring, launch: Launch) -> dict[str, Any]:
    cell, image = item.cell, item.image
    return {
        "run_id": run_dir.run_id,
        "config_hash": item.identity.config_hash,
        # what --resume checks before it keeps this result (the harness adds model.sha256)
        "model_sha256": item.identity.model_sha256,
        "inputs_sha256": item.identity.inputs_sha256,
        "image_tag": image.tag,
        "image_id": image.image_id,
        "requested_packages": cell.environment.package_dict,
        "timeout_s": launch.timeout_s,
        "memory_limit": launch.spec.mem_limit,
        "pids_limit": launch.spec.pids_limit,
        "cpuset": launch.spec.cpuset_cpus,
        "gpus": ",".join(launch.spec.gpus) if launch.spec.gpus else None,
        "command": list(launch.spec.command),
        "run_log": _relative(run_dir, run_dir.run_log(cell.id)),
        "started_at": utc_now(),
    }


# What each round's container leaves as evidence; a cell's host part lists them per round.
ROUND_KEYS = ("container_id", "started_at", "finished_at", "duration_s", "timeout_s",
              "exit_code", "oom_killed", "timed_out", "signal")  # fmt: skip


def _cell_host(hosts: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """A cell's host part: the first round's, the last round's outcome, the total container
    time (`duration_s`), and with several rounds each round's evidence under `rounds`."""
    first, last = hosts[0], hosts[-1]
    merged = {**first, **{k: last[k] for k in ROUND_KEYS if k in last}}
    merged["started_at"] = first.get("started_at")
    merged["duration_s"] = round(sum(float(h.get("duration_s") or 0.0) for h in hosts), 3)
    if rounds > 1:
        merged["rounds"] = [{"round": i, **{k: h.get(k) for k in ROUND_KEYS}}
                            for i, h in enumerate(hosts)]  # fmt: skip
    return merged


def _in_round(reason: str, round_index: int, rounds: int) -> str:
    return f"round {round_index + 1}/{rounds}: {reason}" if rounds > 1 else reason


def _record_interrupted(
    run_dir: RunDir,
    item: _Measuring,
    plan: Plan,
    host: dict[str, Any],
    elapsed: float,
    round_index: int,
) -> None:
    log_path = run_dir.run_log(item.cell.id)
    log = log_path.read_text(errors="replace") if log_path.is_file() else None
    host.update(
        exit_code=None, oom_killed=False, timed_out=False, interrupted=True,
        duration_s=round(elapsed, 3), finished_at=utc_now(),
    )  # fmt: skip
    rounds = plan.measure.round_count
    reason = _in_round(
        f"interrupted (Ctrl-C) after {elapsed:.1f} s; finish with `{run_dir.resume_hint()}`",
        round_index, rounds,
    )  # fmt: skip
    cell_host = {**_cell_host([*item.hosts, host], rounds), "interrupted": True}
    _write(run_dir, item.cell, plan, "interrupted", reason, results.log_tail(log), cell_host)


def _record_unfinished(run_dir: RunDir, plan: Plan, item: _Measuring) -> None:
    """An `interrupted` result for a cell that finished some rounds but not all."""
    log_path = run_dir.run_log(item.cell.id)
    log = log_path.read_text(errors="replace") if log_path.is_file() else None
    rounds = plan.measure.round_count
    reason = (f"interrupted (Ctrl-C) after {len(item.docs)} of {rounds} rounds; finish with "
              f"`{run_dir.resume_hint()}`")
    host = {**_cell_host(item.hosts, rounds), "interrupted": True}
    _write(run_dir, item.cell, plan, "interrupted", reason, results.log_tail(log), host)


def _collect(
    run_dir: RunDir,
    item: _Measuring,
    plan: Plan,
    launch: Launch,
    outcome: ContainerOutcome,
    host: dict[str, Any],
    round_index: int,
    log: str,
) -> dict[str, Any] | None:
    """Classify a finished round; the cell's result when it failed or was the last round."""
    cell = item.cell
    scratch = run_dir.scratch(cell.id)
    harness, problem = results.read_harness_file(scratch / round_result_name(round_index))
    status, reason = results.classify(
        outcome,
        harness,
        problem,
        timeout_s=launch.timeout_s,
        memory_limit=launch.spec.mem_limit,
        log=log,
    )
    host.update(
        exit_code=outcome.exit_code,
        oom_killed=outcome.oom_killed,
        timed_out=outcome.timed_out,
        signal=results.signal_of(outcome.exit_code),
        duration_s=round(outcome.duration_s, 3),
        container_id=outcome.container_id,
        finished_at=utc_now(),
    )
    if round_index == 0:
        host["outputs"] = _keep_outputs(run_dir, cell, scratch)
    if status != "ok":
        tail = results.log_tail(log)
        return _finish_failed(run_dir, item, plan, harness, status, reason, tail, host)
    item.docs.append(cast(dict[str, Any], harness))
    item.hosts.append(host)
    if len(item.docs) < plan.measure.round_count:
        return None
    return _finish_ok(run_dir, item, plan)


def _finish_failed(
    run_dir: RunDir,
    item: _Measuring,
    plan: Plan,
    harness: dict[str, Any] | None,
    status: str,
    reason: str | None,
    tail: str | None,
    host: dict[str, Any],
) -> dict[str, Any]:
    """The failed round's result stands for the cell; its scratch stays for a post-mortem."""
    rounds = plan.measure.round_count
    round_index = len(item.docs)
    result = results.finalize_result(
        harness, cell=item.cell, measure=plan.measure, status=status,
        reason=_in_round(reason or f"status {status}", round_index, rounds),
        log_tail=tail, host=_cell_host([*item.hosts, host], rounds),
    )  # fmt: skip
    results.write_result(run_dir, result)
    return result


def _finish_ok(run_dir: RunDir, item: _Measuring, plan: Plan) -> dict[str, Any]:
    """Merge the cell's rounds into its result, write it, drop its scratch folder."""
    merged = merge_rounds(item.docs, plan.measure)
    packages = (merged.get("fingerprint") or {}).get("packages")
    # A harness that recorded no package list leaves the judgement to stats.check_validity.
    problems = (locks.cell_problems(packages, item.cell.environment, item.lock)
                if isinstance(packages, dict) else [])
    result = results.finalize_result(
        merged, cell=item.cell, measure=plan.measure,
        status="env_mismatch" if problems else "ok",
        reason="installed set differs: " + "; ".join(problems) if problems else None,
        log_tail=None, host=_cell_host(item.hosts, plan.measure.round_count),
    )  # fmt: skip
    results.write_result(run_dir, result)
    shutil.rmtree(run_dir.scratch(item.cell.id), ignore_errors=True)
    return result


def merge_rounds(docs: list[dict[str, Any]], measure: Measure) -> dict[str, Any]:
    """One harness document from a cell's ok rounds (in round order).

    The first round's document, with every round's repeats concatenated (each gains its
    0-based `round`; `index` is renumbered to stay unique in the cell), the summary recomputed
    from all raw latencies by the harness's own code, and a provider fallback in any round
    kept (it makes the cell invalid).
    """
    merged = copy.deepcopy(docs[0])
    repeats: list[dict[str, Any]] = []
    for round_index, doc in enumerate(docs):
        for rep in doc.get("repeats") or []:
            repeats.append({**rep, "index": len(repeats), "round": round_index})
    merged["repeats"] = repeats
    merged["summary"] = harness_measure.summarize(repeats)
    # The cell's settings, not one round's: validity checks all repeats arrived.
    # A cell that left the rounds early (an adaptive run) planned the repeats of the rounds it
    # ran: validity asks for those; the budget it might have taken is kept beside them.
    merged["settings"] = {**(merged.get("settings") or {}),
                          "repeats": measure.repeats_per_round * len(docs), "rounds": len(docs),
                          "rounds_planned": measure.round_count}  # fmt: skip
    merged["finished_at"] = docs[-1].get("finished_at")
    fell_back = [d["provider"] for d in docs if (d.get("provider") or {}).get("fallback")]
    if fell_back:
        merged["provider"] = copy.deepcopy(fell_back[0])
    return merged


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


def _p50_text(summary: Mapping[str, Any] | None) -> str | None:
    latency = ((summary or {}).get("latency_s") or {}).get("p50")
    return f"p50 {latency * 1000:.2f} ms" if isinstance(latency, (int, float)) else None


def _round_line(item: _Measuring) -> str:
    """Progress after an ok round that did not end the cell."""
    p50 = _p50_text(item.docs[-1].get("summary")) or "ok"
    return f"{p50} ({item.hosts[-1].get('duration_s')} s)"


def _summary_line(result: dict[str, Any]) -> str:
    status = str(result.get("status"))
    if status != "ok":
        return f"{status}: {result.get('reason')}"
    took = (result.get("host") or {}).get("duration_s")
    p50 = _p50_text(result.get("summary")) or "ok"
    return f"{p50} ({took} s)" if took is not None else p50
