"""The stages and their order, in one place.

The stages: the plan with its templates checked, the run directory with the resolved plan,
the inputs, then on every host (envmatrix.schedule: one thread per host, or the local engine
of a matrix without hosts:) its bases and images with their installed sets, then its cells;
then the run record's images, then the report. `execute` runs them in that order, the one
place it is written. A `Job` says how a command does each stage: `RunJob` for `matrix`, `run`
and `build` (which stop after the cells or after the builds), `LockJob` for `lock` (the images
from the pins, then the lock file) and `reproduce.replay.ReplayJob` (a run's cells again in its
recorded images, on a copy of its inputs). The stages raise our exceptions (`errors`); `cli`
maps them to exit codes. docs/architecture.md follows one cell through the stages.
"""

from __future__ import annotations

import functools
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from envmatrix import __version__, gate, schedule
from envmatrix.analysis import stats, stopping
from envmatrix.analysis.rundata import RunData, analyze
from envmatrix.config import load as config
from envmatrix.config.spec import ModelExportSpec
from envmatrix.errors import BuildError, Interrupted
from envmatrix.images import bases, locks, render
from envmatrix.images import build as images
from envmatrix.inputs import prepare as inputs
from envmatrix.progress import Progress
from envmatrix.report import build as report
from envmatrix.reproduce import resume
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import (
    RunDir,
    atomic_write_text,
    create_run_dir,
    open_run_dir,
    utc_now,
)
from envmatrix.rundir.plan import Plan
from envmatrix.rundir.run import load_run
from envmatrix.running import runner
from envmatrix.running.engine import EngineLike

Stop = Literal["build", "run", "report"]


@dataclass(frozen=True)
class Request:
    """What a pipeline command asks for (the CLI's arguments, typed)."""

    matrix: Path | None  # None with --resume: the run's own plan (see envmatrix.reproduce.resume)
    reports_root: Path
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    out: Path | None = None
    rebuild: bool = False
    resume: Path | None = None
    stop_after: Stop = "report"
    overrides: gate.Overrides = gate.Overrides()  # --repeats, --alpha, ... over matrix.yaml


@dataclass
class Outcome:
    """What a pipeline run left behind."""

    run_dir: RunDir
    plan: Plan  # what ran now
    build_failures: list[images.BuildFailure] = field(default_factory=list)
    images: dict[str, Any] = field(default_factory=dict)  # env id -> its image (first host's)
    results: list[dict[str, Any]] = field(default_factory=list)  # one per cell, plan order
    report_path: Path | None = None
    report_data: RunData | None = None  # what the report says, for the gate
    harness_s: float = 0.0  # container time of the cells measured by this invocation

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("status") != "ok"]


@dataclass(frozen=True)
class Opened:
    """A run directory ready for the stages: the plan that runs now, its resolved plan written."""

    plan: Plan
    run_dir: RunDir
    resumed: resume.Resumed | None = None


class Job(ABC):
    """How one command does each stage; `execute` runs them in their one order. The inputs
    and the record a job does not override are the main run's."""

    local = False  # True: every cell on this machine's engine, whatever hosts: the plan has
    adjust: runner.Adjust | None = None  # a hook before each round (runner.Adjust)

    @property
    def stop_after(self) -> Stop:
        return "report"

    @abstractmethod
    def open(self, progress: Progress) -> Opened:
        """The plan (templates checked), its run directory and resolved plan."""

    def inputs(self, plan: Plan, run_dir: RunDir, progress: Progress) -> dict[str, Any]:
        return prepare_workloads(plan, run_dir, progress)

    @abstractmethod
    def images(self, engine: EngineLike, plan: Plan, *, build_dir: Path,
               progress: schedule.Progress) -> dict[str, Any]:
        """The images stage on one host's engine (schedule.ImagesStage)."""

    def record(self, opened: Opened, spread: schedule.Spread) -> None:
        """The run record: the images used (and the hosts that measured)."""
        write_resolved(opened.plan, opened.run_dir, spread.images(), hosts=spread.record())

    def resume_hint(self, run_dir: RunDir) -> str | None:
        """The command that finishes an interrupted run; None: it cannot be resumed."""
        return run_dir.resume_hint()


def execute(job: Job, progress: Progress) -> Outcome:
    """Every stage in its order, each the job's way, up to `job.stop_after`."""
    started = utc_now()
    opened = job.open(progress)
    prepared = job.inputs(opened.plan, opened.run_dir, progress)
    on_hosts = replace(opened.plan, hosts=()) if job.local else opened.plan
    stages = schedule.Stages(images=job.images, cells=cells_stage(opened.plan, opened.resumed))
    spread = schedule.run_hosts(on_hosts, opened.run_dir, prepared, progress, stages,
                                stop_after=job.stop_after, adjust=job.adjust)
    job.record(opened, spread)  # also when interrupted: what was built is known
    if spread.interrupted:
        raise Interrupted(job.resume_hint(opened.run_dir))
    outcome = Outcome(opened.run_dir, opened.plan, spread.build_failures, spread.images())
    if job.stop_after == "build":
        return outcome
    outcome.results = spread.results
    outcome.harness_s = seconds_in_containers(outcome.results, since=started)
    if opened.resumed is not None:
        _say_unfinished(opened.run_dir, opened.resumed, progress)
    if job.stop_after == "report":
        outcome.report_data = write_report(opened.run_dir, progress)
        outcome.report_path = outcome.report_data.run_dir.report_path
    return outcome


@dataclass(frozen=True)
class RunJob(Job):
    """`matrix`, `run` and `build`: a new run of the matrix, or --resume of one."""

    request: Request

    @property
    def stop_after(self) -> Stop:
        return self.request.stop_after

    def open(self, progress: Progress) -> Opened:
        return open_plan(self.request, progress)

    def images(self, engine: EngineLike, plan: Plan, *, build_dir: Path,
               progress: schedule.Progress) -> dict[str, Any]:
        return build_images(engine, plan, build_dir=build_dir, progress=progress,
                            rebuild=self.request.rebuild)

    def record(self, opened: Opened, spread: schedule.Spread) -> None:
        if opened.resumed is None:
            super().record(opened, spread)
            return
        # the run's plan stays as it was written; only its run record grows
        resume.record(opened.run_dir, image_entries(spread.images()), only=self.request.only,
                      skip=self.request.skip, cells=[cell.id for cell in opened.plan.cells])


@dataclass(frozen=True)
class LockJob(RunJob):
    """`lock`: the images from the pins (any lock file ignored) on this machine's engine;
    `lock` then writes their installed sets beside the matrix."""

    local = True

    @property
    def stop_after(self) -> Stop:
        return "build"

    def inputs(self, plan: Plan, run_dir: RunDir, progress: Progress) -> dict[str, Any]:
        return {}  # no cell is measured

    def images(self, engine: EngineLike, plan: Plan, *, build_dir: Path,
               progress: schedule.Progress) -> dict[str, Any]:
        return build_images(engine, plan, build_dir=build_dir, progress=progress,
                            rebuild=self.request.rebuild, use_lock=False)

    def resume_hint(self, run_dir: RunDir) -> str | None:
        return None  # `lock` again: its images are reused


def run(request: Request, progress: Progress) -> Outcome:
    """`matrix`, `run`, `build`: every stage, up to `request.stop_after`."""
    return execute(RunJob(request), progress)


def lock(request: Request, progress: Progress) -> Path:
    """`lock`: build (or reuse) the images from the pins, ignoring any lock file, read each
    installed set and write them beside the matrix. Environments left out by --only/--skip
    keep their entries of an existing lock file."""
    outcome = execute(LockJob(request), progress)
    if outcome.build_failures:
        raise BuildError("No lock written: " + "; ".join(f"{b.env_id}: {b.message}"
                                                         for b in outcome.build_failures))
    plan = outcome.plan
    old = locks.load_lock(plan.source)
    entries = dict(old.environments) if old else {}
    for env in plan.environments:
        entries[env.id] = locks.read_installed_file(outcome.run_dir.path / "locks"
                                                    / f"{env.id}.json")
    path = locks.write_lock(plan.source, entries)
    progress("lock", f"{path}: {len(entries)} environment(s)")
    return path


def open_plan(request: Request, progress: Progress) -> Opened:
    """The plan to run now and its run directory: a new run's, or a resumed run's own."""
    opened = _open_plan(request, progress)
    progress("run", f"run directory {opened.run_dir.path}")
    return opened


def _open_plan(request: Request, progress: Progress) -> Opened:
    if request.resume is not None:
        run_dir = open_run_dir(request.resume)
        resumed = resume.resume_plan(run_dir, matrix=request.matrix, only=request.only,
                                     skip=request.skip, progress=progress)
        if request.overrides.repeats is not None:  # the budget is part of the run's plan
            progress.warn("resume", "--repeats is ignored: a resumed run keeps its own budget "
                                    f"({resumed.selected.measure.repeats} repeats)")
        check_templates(resumed.selected)
        return Opened(resumed.selected, run_dir, resumed)
    matrix = request.matrix or Path("matrix.yaml")
    plan = gate.apply(config.load_plan(matrix, only=request.only, skip=request.skip),
                      request.overrides)
    progress("plan", f"{len(plan.environments)} environments, {len(plan.cells)} cells "
                     f"from {matrix}")
    if request.overrides.repeats is not None:
        progress("plan", f"--repeats {plan.measure.repeats}: {plan.measure.round_count} rounds "
                         f"of {plan.measure.repeats_per_round} process(es) per cell")
    # Template and model problems are matrix errors too (exit 2): find them before any engine
    # contact, and template ones before a run directory exists.
    check_templates(plan)
    run_dir = create_run_dir(request.reports_root, out=request.out)
    write_resolved(plan, run_dir)
    return Opened(plan, run_dir)


def _say_unfinished(run_dir: RunDir, resumed: resume.Resumed, progress: Progress) -> None:
    unfinished = resume.left_unfinished(run_dir, resumed)
    if unfinished:
        progress.warn("resume", f"{len(unfinished)} cell(s) of the run outside --only/--skip are "
                                f"not finished: {', '.join(unfinished)}; the report lists them "
                                f"as they are. Finish them with `{run_dir.resume_hint()}`")


def seconds_in_containers(results: list[dict[str, Any]], *, since: str) -> float:
    """Container time of the cells measured since `since` (not those a resume kept)."""
    hosts = [r.get("host") or {} for r in results]
    return sum(float(h.get("duration_s") or 0.0) for h in hosts
               if str(h.get("started_at") or "") >= since)


def write_resolved(plan: Plan, run_dir: RunDir, built: Mapping[str, Any] | None = None,
                   hosts: dict[str, Any] | None = None,
                   replay: dict[str, Any] | None = None) -> None:
    """Record the expanded plan (and image tags once known) so the run can be reported alone;
    a replay also records what it replayed (envmatrix.reproduce.replay)."""
    extra: dict[str, Any] = {
        "run_id": run_dir.run_id,
        "envmatrix_version": __version__,
        "started_at": utc_now(),
    }
    if built:
        extra["images"] = image_entries(built)
    if hosts:
        extra["hosts"] = hosts  # per host: address, labels, fingerprint, its own images
    if replay:
        extra["replay"] = replay
    planfile.dump_resolved(plan, run_dir.resolved_path, extra)


def image_entries(built: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The run record's `images:` entry of each environment (plan.ImageRecord): the image
    (tag, id, size; None when unbuilt) and the base it was built on."""
    return {env_id: _image_record(b) for env_id, b in sorted(built.items())}


def _image_record(built: Any) -> dict[str, Any]:
    base = getattr(built, "base", None)
    return {"tag": getattr(built, "tag", None), "image_id": getattr(built, "image_id", None),
            "size_bytes": getattr(built, "size_bytes", None),
            "base_image": base.image if base else None, "base_id": base.id if base else None,
            "base_digest": base.digest if base else None}


def prepare_workloads(plan: Plan, run_dir: RunDir, progress: Progress) -> dict[str, Any]:
    """Make zoo models and input tensors on the host once; every cell mounts them read-only."""
    # A resolved plan of an older envmatrix may lack model_export: the matrix's defaults.
    export = ModelExportSpec.model_validate(plan.extra.get("model_export") or {})
    prepared = {}
    for workload in plan.workloads:
        progress("inputs", f"{workload.name}: {workload.model}")
        prepared[workload.name] = inputs.prepare_workload(
            workload,
            run_dir.inputs_dir / workload.name,
            ir_version=export.ir_version,
            opset=export.opset,
            base_dir=plan.source.parent,
        )
    return prepared


def check_templates(plan: Plan) -> None:
    """Render every Dockerfile in memory once, and read the lock file beside the matrix: raises
    ConfigError on a template problem or a damaged lock file."""
    for env in plan.environments:
        render.render_dockerfile(env, plan)
    locks.load_lock(plan.source)


def render_all(plan: Plan, run_dir: RunDir, progress: Progress) -> dict[str, str]:
    """Render every environment's Dockerfile into the run directory; returns the context ids
    (no engine: the image tags also hash the bases' ids, see images.context_id)."""
    ids = {}
    for env in plan.environments:
        with tempfile.TemporaryDirectory(prefix=f"envmatrix-{env.id}-") as scratch:
            ctx = render.render_environment(env, plan, harness_dir=images.packaged_harness_dir(),
                                            out_dir=Path(scratch) / "context",
                                            lock=images.env_lock(plan, env))
        atomic_write_text(run_dir.dockerfiles_dir / f"{env.id}.Dockerfile", ctx.dockerfile_text)
        ids[env.id] = ctx.content_hash[:16]
        progress("render", f"{env.id}: context {ids[env.id]} on base {env.base.image}")
    return ids


def context_ids(plan: Plan) -> dict[str, str]:
    """Each environment's context id (images.context_id); no engine is contacted."""
    return {env.id: images.context_id(env, plan) for env in plan.environments}


def build_images(engine: EngineLike, plan: Plan, *, build_dir: Path, progress: schedule.Progress,
                 rebuild: bool = False, use_lock: bool = True) -> dict[str, images.BuildOutcome]:
    """The images stage on one engine: bases pinned by digest first (one the registry cannot
    give ends the run, exit 4), then every environment image, built or reused by content
    hash, with its installed set (`build_dir`/locks/<env>.json; with `use_lock`, from and
    checked against the lock file)."""
    bases.ensure_pinned(engine, plan.bases, build_dir / "logs", progress)
    pins = "" if use_lock else ", from the pins"
    progress("build", f"{len(plan.environments)} environment image(s){pins}")
    return images.ensure_images(engine, plan, run_dir=build_dir, rebuild=rebuild,
                                progress=progress, use_lock=use_lock)


def cells_stage(plan: Plan, resumed: resume.Resumed | None) -> schedule.CellsStage:
    """The cells stage (runner.run_cells) with the looks of an adaptive run; a resumed run
    keeps its finished results and gives new ones the config hashes it recorded."""
    looker = looker_for(resumed.resolved.plan if resumed is not None else plan)
    if resumed is None:
        return functools.partial(runner.run_cells, looker=looker)
    return functools.partial(runner.run_cells, resume=True, looker=looker,
                             config_hashes=resumed.resolved.config_hashes)


def looker_for(plan: Plan) -> runner.LookerFactory:
    """What the runner builds each invocation's (each host's) Monitor with, from the cells it
    measures. The whole plan's comparisons (a resume's too, not only the cells selected now):
    one whose other cell is kept or on another host then never settles early, and its cell runs
    the full budget, as the report reads it (stopping's docstring). The plan's own verdict
    settings decide when to stop; a report rebuilt with other ones reads the same rounds."""
    return functools.partial(stopping.Monitor, plan, stats.rules_for(plan.verdict, plan.measure))


def write_report(run_dir: RunDir, progress: Progress,
                 overrides: gate.Overrides | None = None) -> RunData:
    """Write the report with the plan's verdict settings (or the overrides'); what it says."""
    progress("report", str(run_dir.path))
    run = load_run(run_dir)  # read once: its plan's verdict settings, then its analysis
    settings = gate.verdict_settings(run.plan.verdict, overrides or gate.Overrides())
    data = analyze(run, stats.rules_for(settings, run.plan.measure))
    report.write_report_files(data)
    return data
