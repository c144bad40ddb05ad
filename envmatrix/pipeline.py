"""The stages in order, in one place: plan → inputs → bases and images → cells → report.

`run` is the whole pipeline; `cli` calls it for `matrix`, `run` and `build` (which stop after
the cells or after the builds) and only parses arguments and maps errors to exit codes. Each
helper below is one stage's glue: it calls the stage's module, reports progress and records
what it did in the run directory (docs/architecture.md follows one cell through them).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envmatrix import __version__, gate, schedule
from envmatrix.analysis import stats
from envmatrix.config import load as config
from envmatrix.errors import BuildError, EnvmatrixError
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
from envmatrix.running import runner
from envmatrix.running.engine import Engine

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
    build_failures: list[images.BuildFailure] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # one per cell, plan order
    report_path: Path | None = None
    report_data: report.RunData | None = None  # what the report says, for the gate
    harness_s: float = 0.0  # container time of the cells measured by this invocation

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("status") != "ok"]


class Interrupted(EnvmatrixError):
    """Ctrl-C or SIGTERM while cells ran: finished results are kept, the run can resume."""

    exit_code = 130

    def __init__(self, run_dir: RunDir) -> None:
        super().__init__("interrupted: finished cells are kept")
        self.run_dir = run_dir


def run(request: Request, progress: Progress) -> Outcome:
    """Every stage in order, up to `request.stop_after`."""
    started = utc_now()
    plan, run_dir, resumed = open_plan(request, progress)
    progress("run", f"run directory {run_dir.path}")
    prepared = prepare_workloads(plan, run_dir, progress)
    if plan.hosts:  # a hosts: section: every host builds and measures its own cells
        return run_on_hosts(request, plan, run_dir, prepared, progress, started, resumed)
    engine = Engine.connect()
    swept = runner.sweep_leftovers(engine)
    if swept:
        progress.warn("sweep", f"removed {swept} container(s) left by an earlier run")
    bases.ensure_pinned(engine, plan.bases, run_dir.logs_dir, progress)
    built = build_images(engine, plan, run_dir, progress, rebuild=request.rebuild)
    if resumed is None:
        write_resolved(plan, run_dir, built)
    else:  # the run's plan stays as it was written; only its run record grows
        resume.record(run_dir, image_entries(built), only=request.only, skip=request.skip,
                      cells=[cell.id for cell in plan.cells])
    outcome = Outcome(run_dir, [b for b in built.values() if isinstance(b, images.BuildFailure)])
    if request.stop_after == "build":
        return outcome
    hashes = resumed.resolved.config_hashes if resumed else None
    try:
        outcome.results = runner.run_cells(engine, plan, run_dir, built, prepared,
                                           resume=resumed is not None, progress=progress,
                                           config_hashes=hashes)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
    outcome.harness_s = seconds_in_containers(outcome.results, since=started)
    if resumed is not None:
        _say_unfinished(run_dir, resumed, progress)
    if request.stop_after == "report":
        outcome.report_data = write_report(run_dir, progress)
        outcome.report_path = outcome.report_data.run_dir.report_path
    return outcome


def run_on_hosts(request: Request, plan: Plan, run_dir: RunDir, prepared: dict[str, Any],
                 progress: Progress, started: str,
                 resumed: resume.Resumed | None = None) -> Outcome:
    """The builds and cells of a plan with hosts, one thread per host (envmatrix.schedule)."""
    progress("hosts", ", ".join(f"{h.name} ({h.address})" for h in plan.hosts))
    spread = schedule.run_hosts(plan, run_dir, prepared, progress, rebuild=request.rebuild,
                                resume=request.resume is not None,
                                stop_after=request.stop_after)
    if resumed is None:
        write_resolved(plan, run_dir, spread.images(), hosts=spread.record())
    else:  # the run's plan stays as it was written; only its run record grows
        resume.record(run_dir, image_entries(spread.images()), only=request.only,
                      skip=request.skip, cells=[cell.id for cell in plan.cells])
    if spread.interrupted:
        raise Interrupted(run_dir)
    outcome = Outcome(run_dir, spread.build_failures)
    if request.stop_after == "build":
        return outcome
    outcome.results = spread.results
    outcome.harness_s = seconds_in_containers(outcome.results, since=started)
    if request.stop_after == "report":
        outcome.report_data = write_report(run_dir, progress)
        outcome.report_path = outcome.report_data.run_dir.report_path
    return outcome


def open_plan(request: Request,
              progress: Progress) -> tuple[Plan, RunDir, resume.Resumed | None]:
    """The plan to run now and its run directory: a new run's, or a resumed run's own."""
    if request.resume is not None:
        run_dir = open_run_dir(request.resume)
        resumed = resume.resume_plan(run_dir, matrix=request.matrix, only=request.only,
                                     skip=request.skip, progress=progress)
        if request.overrides.repeats is not None:  # the budget is part of the run's plan
            progress.warn("resume", "--repeats is ignored: a resumed run keeps its own budget "
                                    f"({resumed.selected.measure.repeats} repeats)")
        check_templates(resumed.selected)
        return resumed.selected, run_dir, resumed
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
    return plan, run_dir, None


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


def write_resolved(plan: Plan, run_dir: RunDir, built: dict[str, Any] | None = None,
                   hosts: dict[str, Any] | None = None) -> None:
    """Record the expanded plan (and image tags once known) so the run can be reported alone."""
    extra: dict[str, Any] = {
        "run_id": run_dir.run_id,
        "envmatrix_version": __version__,
        "started_at": utc_now(),
    }
    if built:
        extra["images"] = image_entries(built)
    if hosts:
        extra["hosts"] = hosts  # per host: address, labels, fingerprint, its own images
    planfile.dump_resolved(plan, run_dir.resolved_path, extra)


def image_entries(built: dict[str, Any]) -> dict[str, dict[str, Any]]:
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
    export = plan.extra.get("model_export", {})
    prepared = {}
    for workload in plan.workloads:
        progress("inputs", f"{workload.name}: {workload.model}")
        prepared[workload.name] = inputs.prepare_workload(
            workload,
            run_dir.inputs_dir / workload.name,
            ir_version=int(export.get("ir_version", 7)),
            opset=int(export.get("opset", 11)),
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


def build_images(
    engine: Engine, plan: Plan, run_dir: RunDir, progress: Progress, *, rebuild: bool
) -> dict[str, images.BuildOutcome]:
    """Bases first, then every environment image, built or reused by content hash."""
    progress("build", f"{len(plan.environments)} environment image(s)")
    return images.ensure_images(engine, plan, run_dir=run_dir.path, rebuild=rebuild,
                                progress=progress)


def lock(request: Request, progress: Progress) -> Path:
    """`lock`: build (or reuse) the images from the pins, ignoring any lock file, read each
    installed set and write them beside the matrix. Environments left out by --only/--skip
    keep their entries of an existing lock file."""
    plan = config.load_plan(request.matrix or Path("matrix.yaml"), only=request.only,
                            skip=request.skip)
    check_templates(plan)
    run_dir = create_run_dir(request.reports_root, out=request.out)
    progress("run", f"run directory {run_dir.path}")
    write_resolved(plan, run_dir)
    engine = Engine.connect()
    progress("build", f"{len(plan.environments)} environment image(s), from the pins")
    built = images.ensure_images(engine, plan, run_dir=run_dir.path, rebuild=request.rebuild,
                                 progress=progress, use_lock=False)
    write_resolved(plan, run_dir, built)
    failed = [b for b in built.values() if isinstance(b, images.BuildFailure)]
    if failed:
        raise BuildError("No lock written: " + "; ".join(f"{b.env_id}: {b.message}"
                                                         for b in failed))
    old = locks.load_lock(plan.source)
    entries = dict(old.environments) if old else {}
    for env in plan.environments:
        entries[env.id] = locks.read_installed_file(run_dir.path / "locks" / f"{env.id}.json")
    path = locks.write_lock(plan.source, entries)
    progress("lock", f"{path}: {len(entries)} environment(s)")
    return path


def write_report(run_dir: RunDir, progress: Progress,
                 overrides: gate.Overrides | None = None) -> report.RunData:
    """Write the report with the plan's verdict settings (or the overrides'); what it says."""
    progress("report", str(run_dir.path))
    settings = planfile.read_resolved(run_dir.resolved_path).plan.verdict
    rules = stats.rules_for(gate.verdict_settings(settings, overrides or gate.Overrides()))
    data = report.load_run(run_dir.path, rules)
    report.write_report_files(data)
    return data
