"""The stages in order, in one place: plan → inputs → bases and images → cells → report.

`run` is the whole pipeline; `cli` calls it for `matrix`, `run` and `build` (which stop after
the cells or after the builds) and only parses arguments and maps errors to exit codes. Each
helper below is one stage's glue: it calls the stage's module, reports progress and records
what it did in the run directory (docs/architecture.md follows one cell through them).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envmatrix import (
    __version__,
    config,
    gate,
    images,
    inputs,
    render,
    report,
    runner,
    schedule,
    stats,
)
from envmatrix.engine import Engine
from envmatrix.errors import EnvmatrixError
from envmatrix.plan import Plan
from envmatrix.progress import Progress
from envmatrix.results import utc_now
from envmatrix.rundir import RunDir, atomic_write_text, create_run_dir, open_run_dir

Stop = Literal["build", "run", "report"]


@dataclass(frozen=True)
class Request:
    """What a pipeline command asks for (the CLI's arguments, typed)."""

    matrix: Path
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
    plan = gate.apply(config.load_plan(request.matrix, only=request.only, skip=request.skip),
                      request.overrides)
    progress("plan", f"{len(plan.environments)} environments, {len(plan.cells)} cells "
                     f"from {request.matrix}")
    if request.overrides.repeats is not None:
        progress("plan", f"--repeats {plan.measure.repeats}: {plan.measure.round_count} rounds "
                         f"of {plan.measure.repeats_per_round} process(es) per cell")
    # Template and model problems are matrix errors too (exit 2): find them before any engine
    # contact, and template ones before a run directory exists.
    check_templates(plan)
    run_dir = open_run_dir(request.resume) if request.resume else create_run_dir(
        request.reports_root, out=request.out)
    progress("run", f"run directory {run_dir.path}")
    write_resolved(plan, run_dir)
    prepared = prepare_workloads(plan, run_dir, progress)
    if plan.hosts:  # a hosts: section: every host builds and measures its own cells
        return run_on_hosts(request, plan, run_dir, prepared, progress, started)
    engine = Engine.connect()
    swept = runner.sweep_leftovers(engine)
    if swept:
        progress.warn("sweep", f"removed {swept} container(s) left by an earlier run")
    built = build_images(engine, plan, run_dir, progress, rebuild=request.rebuild)
    write_resolved(plan, run_dir, built)
    outcome = Outcome(run_dir, [b for b in built.values() if isinstance(b, images.BuildFailure)])
    if request.stop_after == "build":
        return outcome
    try:
        outcome.results = runner.run_cells(engine, plan, run_dir, built, prepared,
                                           resume=request.resume is not None, progress=progress)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
    outcome.harness_s = seconds_in_containers(outcome.results, since=started)
    if request.stop_after == "report":
        outcome.report_data = write_report(run_dir, progress)
        outcome.report_path = outcome.report_data.run_dir.report_path
    return outcome


def run_on_hosts(request: Request, plan: Plan, run_dir: RunDir, prepared: dict[str, Any],
                 progress: Progress, started: str) -> Outcome:
    """The builds and cells of a plan with hosts, one thread per host (envmatrix.schedule)."""
    progress("hosts", ", ".join(f"{h.name} ({h.address})" for h in plan.hosts))
    spread = schedule.run_hosts(plan, run_dir, prepared, progress, rebuild=request.rebuild,
                                resume=request.resume is not None,
                                stop_after=request.stop_after)
    write_resolved(plan, run_dir, spread.images(), hosts=spread.record())
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
        "started_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if built:
        extra["images"] = {
            env_id: {"tag": getattr(b, "tag", None), "image_id": getattr(b, "image_id", None),
                     "size_bytes": getattr(b, "size_bytes", None)}
            for env_id, b in sorted(built.items())
        }
    if hosts:
        extra["hosts"] = hosts  # per host: address, labels, fingerprint, its own images
    config.dump_resolved(plan, run_dir.resolved_path, extra)


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
    """Render every Dockerfile in memory once: raises ConfigError on a template problem."""
    for env in plan.environments:
        render.render_dockerfile(env, plan)


def render_all(plan: Plan, run_dir: RunDir, progress: Progress) -> dict[str, str]:
    """Render every environment's Dockerfile into the run directory; returns the image tags."""
    tags = {}
    for env in plan.environments:
        with tempfile.TemporaryDirectory(prefix=f"envmatrix-{env.id}-") as scratch:
            ctx = render.render_environment(env, plan, harness_dir=images.packaged_harness_dir(),
                                            out_dir=Path(scratch) / "context")
        atomic_write_text(run_dir.dockerfiles_dir / f"{env.id}.Dockerfile", ctx.dockerfile_text)
        tags[env.id] = images.tag_for(env, ctx)
        progress("render", f"{env.id}: {tags[env.id]}")
    return tags


def image_tags(plan: Plan) -> dict[str, str]:
    """The tag each environment's image has or will have; nothing is built."""
    return {env.id: images.planned_tag(env, plan) for env in plan.environments}


def build_images(
    engine: Engine, plan: Plan, run_dir: RunDir, progress: Progress, *, rebuild: bool
) -> dict[str, images.BuildOutcome]:
    """Bases first, then every environment image, built or reused by content hash."""
    progress("build", f"{len(plan.environments)} environment image(s)")
    return images.ensure_images(engine, plan, run_dir=run_dir.path, rebuild=rebuild,
                                progress=progress)


def write_report(run_dir: RunDir, progress: Progress,
                 overrides: gate.Overrides | None = None) -> report.RunData:
    """Write the report with the plan's verdict settings (or the overrides'); what it says."""
    progress("report", str(run_dir.path))
    settings = config.read_resolved(run_dir.resolved_path).plan.verdict
    rules = stats.rules_for(gate.verdict_settings(settings, overrides or gate.Overrides()))
    data = report.load_run(run_dir.path, rules)
    report.write_report_files(data)
    return data
