"""One image per environment, tagged by the hash of everything that shapes it.

`ensure_image` renders the environment's build context, and builds only when no image with that
content hash exists (or `rebuild` asks). `ensure_images` does every environment: bases first, one
at a time, then builds two at a time; a failed build is a `BuildFailure` value, so the other
environments still get their images and the run can report the failure per cell.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from envmatrix import __version__
from envmatrix.bases import ensure_base
from envmatrix.containers import MANAGED_LABEL
from envmatrix.engine import BuildStepError, Engine
from envmatrix.errors import EnvmatrixError
from envmatrix.plan import Base, Environment, Plan
from envmatrix.render import RenderedContext, render_environment

Progress = Callable[[str, str], None]

# Proxy settings are predefined build args: the builder hands them to RUN steps without
# recording them in the image history, so they may carry credentials.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")


@dataclass(frozen=True)
class BuiltImage:
    env_id: str
    tag: str
    image_id: str
    built: bool  # False: an image with this content hash was already there
    seconds: float
    log_path: Path
    size_bytes: int | None = None  # what the engine reports: the cost of shipping the image


@dataclass(frozen=True)
class BuildFailure:
    env_id: str
    message: str
    log_tail: str
    log_path: Path
    seconds: float
    tag: str | None = None  # None when it failed before a tag was known (base, render)


BuildOutcome = Union[BuiltImage, BuildFailure]


def tag_for(env: Environment, ctx: RenderedContext) -> str:
    return f"envmatrix/{env.id}:{ctx.content_hash[:16]}"


def planned_tag(env: Environment, plan: Plan, *, harness_dir: Path | None = None) -> str:
    """The tag `ensure_image` would use, without an engine (renders into a scratch folder)."""
    with tempfile.TemporaryDirectory(prefix=f"envmatrix-{env.id}-") as scratch:
        ctx = render_environment(env, plan, harness_dir=harness_dir or packaged_harness_dir(),
                                 out_dir=Path(scratch) / "context")
        return tag_for(env, ctx)


def packaged_harness_dir() -> Path:
    """The `harness` package shipped with envmatrix (copied into every image)."""
    spec = importlib.util.find_spec("harness")
    if spec is None or not spec.submodule_search_locations:
        raise EnvmatrixError("The `harness` package is not importable: reinstall envmatrix.")
    return Path(next(iter(spec.submodule_search_locations)))


def image_labels(env: Environment, plan: Plan, ctx: RenderedContext) -> dict[str, str]:
    return {
        MANAGED_LABEL: "true",
        "envmatrix.version": __version__,
        "envmatrix.environment": env.id,
        "envmatrix.matrix": plan.source.name,
        "envmatrix.content-hash": ctx.content_hash,
    }


def build_args(plan: Plan) -> dict[str, str]:
    args = {name: os.environ[name] for name in PROXY_VARIABLES if os.environ.get(name)}
    args.update({n.lower(): os.environ[n.lower()] for n in PROXY_VARIABLES
                 if os.environ.get(n.lower())})
    if plan.pip_index_url:
        args["ENVMATRIX_PIP_INDEX_URL"] = plan.pip_index_url  # builder stage only
    return args


def ensure_image(
    engine: Engine,
    env: Environment,
    plan: Plan,
    *,
    run_dir: Path,
    rebuild: bool = False,
    harness_dir: Path | None = None,
    cancel: threading.Event | None = None,
) -> BuiltImage:
    """Render, then reuse the image with the same content hash or build it; raises on failure."""
    started = time.monotonic()
    log_path = build_log_path(run_dir, env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"envmatrix-{env.id}-") as scratch:
        ctx = render_environment(env, plan, harness_dir=harness_dir or packaged_harness_dir(),
                                 out_dir=Path(scratch) / "context")
        dockerfiles = run_dir / "dockerfiles"
        dockerfiles.mkdir(parents=True, exist_ok=True)
        (dockerfiles / f"{env.id}.Dockerfile").write_text(ctx.dockerfile_text, encoding="utf-8")
        tag = tag_for(env, ctx)
        existing = None if rebuild else engine.image_id(tag)
        if existing is not None:
            log_path.write_text(f"# reused {tag} ({existing}): same content hash\n",
                                encoding="utf-8")
            return BuiltImage(env.id, tag, existing, False, time.monotonic() - started, log_path,
                              engine.image_size(existing))
        image_id = engine.build(
            ctx.context_dir, tag, labels=image_labels(env, plan, ctx), buildargs=build_args(plan),
            log_path=log_path, timeout_s=plan.measure.build_timeout_s, cancel=cancel,
        )
    return BuiltImage(env.id, tag, image_id, True, time.monotonic() - started, log_path,
                      engine.image_size(image_id))


def build_log_path(run_dir: Path, env: Environment) -> Path:
    return run_dir / "logs" / f"build-{env.id}.log"


def ensure_images(
    engine: Engine,
    plan: Plan,
    *,
    run_dir: Path,
    rebuild: bool = False,
    progress: Progress | None = None,
    environments: Sequence[Environment] | None = None,
    max_workers: int = 2,
) -> dict[str, BuildOutcome]:
    """An outcome per environment (plan order): bases one at a time, then parallel builds."""
    say = progress or (lambda stage, message: None)
    envs = list(plan.environments if environments is None else environments)
    outcomes: dict[str, BuildOutcome] = _ensure_bases(engine, envs, run_dir, say)
    todo = [env for env in envs if env.id not in outcomes]
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="envmatrix-build") as pool:
        futures = {
            env.id: pool.submit(_ensure_one, engine, env, plan, run_dir, rebuild, cancel, say)
            for env in todo
        }
        try:
            outcomes.update(_collect(futures))
        except KeyboardInterrupt:
            cancel.set()  # running builds stop their step; queued ones never start
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return {env.id: outcomes[env.id] for env in envs}


def _collect(futures: dict[str, Future[BuildOutcome]]) -> dict[str, BuildOutcome]:
    return {env_id: future.result() for env_id, future in futures.items()}


def _ensure_bases(engine: Engine, envs: Sequence[Environment], run_dir: Path,
                  say: Progress) -> dict[str, BuildOutcome]:
    """Make every base used, serially; environments whose base failed get a BuildFailure."""
    failures: dict[str, BuildOutcome] = {}
    bases: dict[str, Base] = {env.base.name: env.base for env in envs}
    for name, base in bases.items():
        log_path = run_dir / "logs" / f"base-{name}.log"
        started = time.monotonic()
        try:
            ensure_base(engine, base, log_path=log_path)
        except EnvmatrixError as err:
            say("base", f"{name}: FAILED: {err}")
            for env in envs:
                if env.base.name == name:
                    failures[env.id] = BuildFailure(env.id, f"base image {base.image}: {err}", "",
                                                    log_path, time.monotonic() - started)
    return failures


def _ensure_one(engine: Engine, env: Environment, plan: Plan, run_dir: Path, rebuild: bool,
                cancel: threading.Event, say: Progress) -> BuildOutcome:
    if cancel.is_set():
        return BuildFailure(env.id, "cancelled", "", build_log_path(run_dir, env), 0.0)
    started = time.monotonic()
    say("build", f"{env.id}: starting")
    try:
        built = ensure_image(engine, env, plan, run_dir=run_dir, rebuild=rebuild, cancel=cancel)
    except EnvmatrixError as err:
        say("build", f"{env.id}: FAILED after {time.monotonic() - started:.0f}s: {err}")
        return BuildFailure(env.id, _failure_message(err), getattr(err, "log_tail", ""),
                            build_log_path(run_dir, env), time.monotonic() - started)
    verb = "built" if built.built else "reused"
    say("build", f"{env.id}: {verb} {built.tag} in {built.seconds:.0f}s")
    return built


def _failure_message(err: EnvmatrixError) -> str:
    """What a cell's reason says: a failed step in its tool's words ("pip: ERROR: No matching
    distribution found for ..."); the tag and log path of `str(err)` are in the progress line
    and in BuildFailure.log_path, and would only make every cell's reason longer."""
    return err.cause if isinstance(err, BuildStepError) else str(err)
