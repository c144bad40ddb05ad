"""The stages in order: plan → inputs → bases → images → cells → report.

Each function here is one stage's glue: it calls the stage's module, reports progress and
records what it did in the run directory. The CLI picks which stages run.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envmatrix import __version__, bases, config, images, inputs, render, report, runner
from envmatrix.engine import Engine
from envmatrix.model import Plan
from envmatrix.progress import Progress
from envmatrix.rundir import RunDir

HARNESS_DIR = Path(__file__).resolve().parent.parent / "harness"


@dataclass
class RunOutcome:
    run_dir: RunDir
    results: list[dict[str, Any]] = field(default_factory=list)
    built: int = 0
    reused: int = 0
    build_failed: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("status") != "ok"]

    @property
    def harness_seconds(self) -> float:
        return sum(float((r.get("host") or {}).get("duration_s") or 0.0) for r in self.results)


def write_resolved(plan: Plan, run_dir: RunDir, built: dict[str, Any] | None = None) -> None:
    """Record the expanded plan (and image tags once known) so the run can be reported alone."""
    extra: dict[str, Any] = {
        "run_id": run_dir.run_id,
        "envmatrix_version": __version__,
        "started_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if built:
        extra["images"] = {
            env_id: {"tag": getattr(b, "tag", None), "image_id": getattr(b, "image_id", None)}
            for env_id, b in sorted(built.items())
        }
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


def render_all(plan: Plan, run_dir: RunDir, progress: Progress) -> dict[str, render.RenderedContext]:
    """Render every environment's build context; the Dockerfiles are kept for people to read."""
    rendered = {}
    for env in plan.environments:
        ctx = render.render_environment(
            env, plan, harness_dir=HARNESS_DIR, out_dir=run_dir.path / "contexts" / env.id
        )
        (run_dir.dockerfiles_dir / f"{env.id}.Dockerfile").write_text(ctx.dockerfile_text)
        progress("render", f"{env.id}: tag {images.tag_for(env, ctx)}")
        rendered[env.id] = ctx
    return rendered


def make_bases(engine: Engine, plan: Plan, run_dir: RunDir, progress: Progress) -> None:
    used = {env.base.name for env in plan.environments}
    for base in plan.bases:
        if base.name not in used:
            continue
        progress("base", f"{base.name}: {base.image}")
        started = time.monotonic()
        bases.ensure_base(engine, base, log_path=run_dir.logs_dir / f"base-{base.name}.log")
        progress("base", f"{base.name}: ready ({time.monotonic() - started:.1f}s)")


def build_images(
    engine: Engine, plan: Plan, run_dir: RunDir, progress: Progress, *, rebuild: bool
) -> dict[str, Any]:
    progress("build", f"{len(plan.environments)} environment image(s)")
    built = images.ensure_images(
        engine, plan, run_dir=run_dir.path, rebuild=rebuild, progress=progress
    )
    return built


def run_cells(
    engine: Engine,
    plan: Plan,
    run_dir: RunDir,
    built: dict[str, Any],
    prepared: dict[str, Any],
    progress: Progress,
    *,
    resume: bool,
) -> list[dict[str, Any]]:
    return runner.run_cells(
        engine, plan, run_dir, built, prepared, resume=resume, progress=progress
    )


def write_report(run_dir: RunDir, progress: Progress) -> Path:
    progress("report", str(run_dir.path))
    return report.build_report(run_dir.path)
