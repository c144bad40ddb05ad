"""The stages in order: plan → inputs → bases → images → cells → report.

Each function here is one stage's glue: it calls the stage's module, reports progress and
records what it did in the run directory. The CLI picks which stages run.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from envmatrix import __version__, config, images, inputs, render, report
from envmatrix.engine import Engine
from envmatrix.plan import Plan
from envmatrix.progress import Progress
from envmatrix.rundir import RunDir, atomic_write_text


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


def write_report(run_dir: RunDir, progress: Progress) -> Path:
    progress("report", str(run_dir.path))
    return report.build_report(run_dir.path)
