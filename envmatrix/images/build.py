"""One image per environment, tagged by the hash of everything that shapes it.

`ensure_image` renders the environment's build context, and builds only when no image with that
content hash exists (or `rebuild` asks). The hash covers the base image's identity (its id and
registry digests, looked up in the engine once the base is there), so a tag is only final with
an engine; without one `context_id` names the rest. After the build (or reuse) the image's
installed set is read from inside it into `locks/<env>.json`; when the matrix has a lock file
the image must hold exactly the locked set, or the build fails with the difference named.
`ensure_images` does every environment: bases first, one at a time, then builds two at a time; a
failed build is a `BuildFailure` value, so the other environments still get their images and the
run can report the failure per cell.
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
from envmatrix.errors import BuildError, EnvmatrixError
from envmatrix.images import hostwheels, locks
from envmatrix.images.bases import base_identity, ensure_base
from envmatrix.images.render import WHEELHOUSE_DIR, RenderedContext, render_environment
from envmatrix.rundir.plan import Base, BaseIdentity, Environment, Plan
from envmatrix.running.containers import MANAGED_LABEL
from envmatrix.running.engine import BuildStepError, EngineLike

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
    base: BaseIdentity | None = None  # the base it was built on (id, digests)
    installed: locks.InstalledSet | None = None  # read from inside the image
    locked: bool = False  # built from the matrix's lock file, and found to match it
    notes: tuple[str, ...] = ()  # warnings for the progress lines (e.g. apt versions moved)


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
    """The image tag; only a context rendered with its base's identity has one."""
    if ctx.base is None:
        raise ValueError(f"{env.id}: the tag hashes the base image's id; render with `base=`")
    return f"envmatrix/{env.id}:{ctx.content_hash[:16]}"


def context_id(env: Environment, plan: Plan, *, harness_dir: Path | None = None) -> str:
    """The hash of the build context alone (no base identity), 16 hex digits: what `list` and
    `render` show without an engine. Equal context ids on the same base give equal tags."""
    lock = env_lock(plan, env)
    with tempfile.TemporaryDirectory(prefix=f"envmatrix-{env.id}-") as scratch:
        ctx = render_environment(env, plan, harness_dir=harness_dir or packaged_harness_dir(),
                                 out_dir=Path(scratch) / "context", lock=lock)
        return ctx.content_hash[:16]


def env_lock(plan: Plan, env: Environment) -> locks.EnvLock | None:
    """The environment's entry of the lock file beside the matrix, if there is one."""
    found = locks.load_lock(plan.source)
    return found.environments.get(env.id) if found else None


def packaged_harness_dir() -> Path:
    """The `harness` package shipped with envmatrix (copied into every image)."""
    spec = importlib.util.find_spec("envmatrix_harness")
    if spec is None or not spec.submodule_search_locations:
        raise EnvmatrixError("The `harness` package is not importable: reinstall envmatrix.")
    return Path(next(iter(spec.submodule_search_locations)))


def image_labels(env: Environment, plan: Plan, ctx: RenderedContext) -> dict[str, str]:
    labels = {
        MANAGED_LABEL: "true",
        "envmatrix.version": __version__,
        "envmatrix.environment": env.id,
        "envmatrix.matrix": plan.source.name,
        "envmatrix.content-hash": ctx.content_hash,
    }
    if ctx.base is not None:
        labels["envmatrix.base-image"] = ctx.base.image
        labels["envmatrix.base-id"] = ctx.base.id
        if ctx.base.digest:
            labels["envmatrix.base-digest"] = ctx.base.digest
    return labels


def build_args(plan: Plan) -> dict[str, str]:
    args = {name: os.environ[name] for name in PROXY_VARIABLES if os.environ.get(name)}
    args.update({n.lower(): os.environ[n.lower()] for n in PROXY_VARIABLES
                 if os.environ.get(n.lower())})
    if plan.pip_index_url:
        args["ENVMATRIX_PIP_INDEX_URL"] = plan.pip_index_url  # builder stage only
    return args


def ensure_image(
    engine: EngineLike,
    env: Environment,
    plan: Plan,
    *,
    run_dir: Path,
    rebuild: bool = False,
    harness_dir: Path | None = None,
    cancel: threading.Event | None = None,
    use_lock: bool = True,
    nocache: bool = False,
) -> BuiltImage:
    """Render, then reuse the image with the same content hash or build it; then read its
    installed set (and hold it against the lock). Raises on failure; the base must exist."""
    started = time.monotonic()
    log_path = build_log_path(run_dir, env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = base_identity(engine, env.base)
    lock = env_lock(plan, env) if use_lock else None
    with tempfile.TemporaryDirectory(prefix=f"envmatrix-{env.id}-") as scratch:
        ctx = render_environment(env, plan, harness_dir=harness_dir or packaged_harness_dir(),
                                 out_dir=Path(scratch) / "context", base=base, lock=lock)
        dockerfiles = run_dir / "dockerfiles"
        dockerfiles.mkdir(parents=True, exist_ok=True)
        (dockerfiles / f"{env.id}.Dockerfile").write_text(ctx.dockerfile_text, encoding="utf-8")
        tag = tag_for(env, ctx)
        image_id = None if rebuild else engine.image_id(tag)
        built = image_id is None
        if image_id is not None:
            log_path.write_text(f"# reused {tag} ({image_id}): same content hash\n",
                                encoding="utf-8")
        else:
            hostwheels.download(env, plan.host_wheels, ctx.context_dir / WHEELHOUSE_DIR,
                                hostwheels.log_path_for(run_dir, env))
            image_id = _build(engine, env, plan, ctx, tag, log_path, cancel, nocache, lock)
    installed = locks.read_installed(engine, image_id)
    locks.write_installed(run_dir, env.id, installed, tag=tag, image_id=image_id, base=base)
    notes = _check_lock(plan, env, tag, installed, lock, base) if use_lock else ()
    return BuiltImage(env.id, tag, image_id, built, time.monotonic() - started, log_path,
                      engine.image_size(image_id), base, installed, lock is not None, notes)


def _build(engine: EngineLike, env: Environment, plan: Plan, ctx: RenderedContext, tag: str,
           log_path: Path, cancel: threading.Event | None, nocache: bool,
           lock: locks.EnvLock | None) -> str:
    try:
        return engine.build(
            ctx.context_dir, tag, labels=image_labels(env, plan, ctx),
            buildargs=build_args(plan), log_path=log_path,
            timeout_s=plan.measure.build_timeout_s, cancel=cancel, nocache=nocache,
        )
    except BuildStepError as err:
        named = locks.not_installable(err.cause, lock) if lock is not None else None
        if named is None:
            raise
        raise BuildStepError(f"Build of {tag} from the lock failed: {named} (full log: "
                             f"{log_path}).", err.log_tail, named) from err


def _check_lock(plan: Plan, env: Environment, tag: str, installed: locks.InstalledSet,
                lock: locks.EnvLock | None, base: BaseIdentity) -> tuple[str, ...]:
    """Raise when the image does not hold the locked set; warnings for what may differ."""
    path = locks.lock_path(plan.source)
    if lock is None:
        missing = f"{env.id} is not in {path.name}: built from its pins (`nox -s lock` adds it)"
        return (missing,) if path.is_file() else ()
    problems = locks.differences(locks.versions(lock.installed), locks.versions(installed))
    if problems:
        raise BuildError(f"Image {tag} does not reproduce {path.name}: " + "; ".join(problems))
    notes = []
    apt = locks.apt_differences(lock, installed)
    if apt:
        shown = "; ".join(apt[:5]) + (f"; and {len(apt) - 5} more" if len(apt) > 5 else "")
        notes.append(f"{env.id}: {len(apt)} Debian package(s) differ from {path.name} (apt "
                     f"installs the mirror's current versions): {shown}")
    if lock.base is not None and lock.base.id != base.id:
        recorded = f"{lock.base.id} ({lock.base.digest})" if lock.base.digest else lock.base.id
        notes.append(f"{env.id}: base {base.image} is {base.id}, {path.name} recorded "
                     f"{recorded}; pin the base by digest in the matrix to build on that one")
    return tuple(notes)


def build_log_path(run_dir: Path, env: Environment) -> Path:
    return run_dir / "logs" / f"build-{env.id}.log"


def ensure_images(
    engine: EngineLike,
    plan: Plan,
    *,
    run_dir: Path,
    rebuild: bool = False,
    progress: Progress | None = None,
    environments: Sequence[Environment] | None = None,
    max_workers: int = 2,
    use_lock: bool = True,
) -> dict[str, BuildOutcome]:
    """An outcome per environment (plan order): bases one at a time, then parallel builds."""
    say = progress or (lambda stage, message: None)
    envs = list(plan.environments if environments is None else environments)
    outcomes: dict[str, BuildOutcome] = _ensure_bases(engine, envs, run_dir, say)
    todo = [env for env in envs if env.id not in outcomes]
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="envmatrix-build") as pool:
        futures = {
            env.id: pool.submit(_ensure_one, engine, env, plan, run_dir, rebuild, cancel, say,
                                use_lock)
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


def _ensure_bases(engine: EngineLike, envs: Sequence[Environment], run_dir: Path,
                  say: Progress) -> dict[str, BuildOutcome]:
    """Make every base used, serially; environments whose base failed get a BuildFailure."""
    failures: dict[str, BuildOutcome] = {}
    bases: dict[str, Base] = {env.base.name: env.base for env in envs}
    for name, base in bases.items():
        log_path = run_dir / "logs" / f"base-{name}.log"
        started = time.monotonic()
        try:
            ensure_base(engine, base, log_path=log_path, progress=_base_progress(say, name))
        except EnvmatrixError as err:
            say("base", f"{name}: FAILED: {err}")
            for env in envs:
                if env.base.name == name:
                    failures[env.id] = BuildFailure(env.id, f"base image {base.image}: {err}", "",
                                                    log_path, time.monotonic() - started)
    return failures


def _base_progress(say: Progress, name: str) -> Callable[[str], None]:
    def _say(message: str) -> None:
        say("base", f"{name}: {message}")
    return _say


def _ensure_one(engine: EngineLike, env: Environment, plan: Plan, run_dir: Path, rebuild: bool,
                cancel: threading.Event, say: Progress, use_lock: bool = True) -> BuildOutcome:
    if cancel.is_set():
        return BuildFailure(env.id, "cancelled", "", build_log_path(run_dir, env), 0.0)
    started = time.monotonic()
    say("build", f"{env.id}: starting")
    try:
        built = ensure_image(engine, env, plan, run_dir=run_dir, rebuild=rebuild, cancel=cancel,
                             use_lock=use_lock)
    except EnvmatrixError as err:
        say("build", f"{env.id}: FAILED after {time.monotonic() - started:.0f}s: {err}")
        return BuildFailure(env.id, _failure_message(err), getattr(err, "log_tail", ""),
                            build_log_path(run_dir, env), time.monotonic() - started)
    verb = "built" if built.built else "reused"
    locked = " from the lock" if built.locked else ""
    say("build", f"{env.id}: {verb} {built.tag}{locked} in {built.seconds:.0f}s")
    for note in built.notes:
        say("build", f"warning: {note}")
    return built


def _failure_message(err: EnvmatrixError) -> str:
    """What a cell's reason says: a failed step in its tool's words ("pip: ERROR: No matching
    distribution found for ..."); the tag and log path of `str(err)` are in the progress line
    and in BuildFailure.log_path, and would only make every cell's reason longer."""
    return err.cause if isinstance(err, BuildStepError) else str(err)
