"""Render one environment into a complete Docker build context.

A context folder holds the `Dockerfile` (from a Jinja template, StrictUndefined), the harness
sources under `harness/`, and `build/` with what only the throwaway builder stage may see:
`requirements.txt` (exact pins, never interpolated into RUN lines), `wheelhouse/`, `ca.pem`,
`pip_hashes.py` and, when the matrix has a lock, `locked-requirements.txt`.
The Dockerfile does not depend on whether a CA bundle, a wheelhouse or a lock was given, so
images do not either; the content hash covers everything except the CA bundle's bytes, which may
rotate without changing what gets installed, and it covers the base image's identity (its id
and digests) when it is known: a base made again with other content gives new image tags.

Values from matrix.yaml are checked against conservative allow-lists here even though `config`
validates them too: a value that could break a Dockerfile line never reaches a template.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from envmatrix import __version__, grammar
from envmatrix.errors import ConfigError, EnvmatrixError
from envmatrix.images import hostwheels
from envmatrix.images.locks import EnvLock, requirements_text
from envmatrix.rundir.plan import BaseIdentity, Environment, Plan

PACKAGED_TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "dockerfiles"
BUILD_DIR = "build"  # context subfolder only the builder stage copies
HARNESS_DIR = "harness"
CA_FILE = f"{BUILD_DIR}/ca.pem"
WHEELHOUSE_DIR = f"{BUILD_DIR}/wheelhouse"
LOCKED_FILE = f"{BUILD_DIR}/locked-requirements.txt"
PIP_HASHES_SCRIPT = PACKAGED_TEMPLATE_DIR / "scripts" / "pip_hashes.py"
WHEEL_SUFFIXES = (".whl", ".tar.gz", ".zip")

# The same grammars as the config check (envmatrix.grammar), checked again here as defence in
# depth: a value that reached the plan some other way still cannot add a Dockerfile line.
FAMILIES = ("debian", "ubuntu")
PYTHON_SOURCES = ("system", "image", "deadsnakes")


@dataclass(frozen=True)
class RenderedContext:
    context_dir: Path
    dockerfile_text: str
    content_hash: str  # sha256 hex
    base: BaseIdentity | None = None  # None: the hash lacks the base's id, so it is no tag yet


# -- validation ------------------------------------------------------------------------------


def _refuse(plan: Plan, env: Environment, key: str, value: object, fix: str) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ConfigError(
        f"{plan.source}: environment {env.id!r}: `{key}` = {shown} cannot go into a Dockerfile. "
        f"Fix: {fix}"
    )


def _check(name: str, value: str, plan: Plan, env: Environment, key: str, fix: str) -> None:
    if not isinstance(value, str) or not value.isascii() or not grammar.matches(name, value):
        raise _refuse(plan, env, key, value, fix)


def validate_environment(env: Environment, plan: Plan) -> None:
    """Refuse any value a template could turn into more (or other) Dockerfile lines."""
    _check("id", env.id, plan, env, "id",
           "use lower-case letters, digits and single . _ - between them")
    _check("image", env.base.image, plan, env, "base.image",
           "give an image reference like debian:bookworm or nvidia/cuda:12.4.1-runtime-ubuntu22.04")
    _check("template", env.template, plan, env, "template",
           "name a file inside the template folder, e.g. default.Dockerfile.j2")
    if env.base.family not in FAMILIES:
        raise _refuse(plan, env, "base.family", env.base.family, f"use one of {FAMILIES}")
    if env.base.python_source not in PYTHON_SOURCES:
        raise _refuse(plan, env, "base.python_source", env.base.python_source,
                      f"use one of {PYTHON_SOURCES}")
    _validate_python(env, plan)
    for name, version in env.packages:
        _check("package", name, plan, env, "packages",
               "use a PyPI project name (letters, digits, . _ -)")
        _check("version", version, plan, env, f"packages.{name}",
               "pin an exact version like 1.16.3 (no operators, spaces or markers)")
    for key, value in env.env:
        _check("env_name", key, plan, env, "env", "use a variable name like OMP_NUM_THREADS")
        if grammar.is_reserved_env(key):
            raise _refuse(plan, env, f"env.{key}", key, "envmatrix sets this variable itself")
        _check("env_value", value, plan, env, f"env.{key}",
               "use letters, digits, spaces and _ . , : / = + @ % - only")


def _validate_python(env: Environment, plan: Plan) -> None:
    source = env.base.python_source
    if env.python == "system":
        if source == "deadsnakes":
            raise _refuse(plan, env, "python", env.python,
                          "python_source deadsnakes needs a version like 3.8")
        return
    _check("python", env.python, plan, env, "python", "use `system` or X.Y like 3.8")
    if source == "system":
        raise _refuse(plan, env, "python", env.python,
                      "the distribution's python3 cannot be chosen: use `python: system`, or a "
                      "base with python_source deadsnakes (Ubuntu) or image (python:X.Y)")
    if source == "deadsnakes" and env.base.family != "ubuntu":
        raise _refuse(plan, env, "base.python_source", source,
                      "the deadsnakes PPA exists for Ubuntu bases only")


# -- templates -------------------------------------------------------------------------------


def template_dirs(plan: Plan) -> list[Path]:
    """User folder first (its templates may extend or include the packaged ones)."""
    dirs = [Path(plan.template_dir)] if plan.template_dir else []
    return [*dirs, PACKAGED_TEMPLATE_DIR]


def _jinja(plan: Plan) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(plan)]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - a Dockerfile, not HTML; values are allow-listed
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def template_variables(env: Environment, plan: Plan) -> dict[str, Any]:
    """Every variable a template sees; dockerfiles/README.md documents each one."""
    source = env.base.python_source
    version = "" if env.python == "system" else env.python
    return {
        "envmatrix_version": __version__,
        "env_id": env.id,
        "base_image": env.base.image,
        "family": env.base.family,
        "cuda": env.base.cuda is not None,
        "python_source": source,
        "python_version": version,
        "python_bin": f"python{version}" if source == "deadsnakes" else "python3",
        "env_vars": list(env.env),
        "offline": bool(plan.extra.get("offline", False)),
        "build_dir": BUILD_DIR,
        "harness_dir": HARNESS_DIR,
    }


def render_dockerfile(env: Environment, plan: Plan) -> str:
    """The environment's Dockerfile; ConfigError when the template fails or its text would not
    build cleanly with the classic builder (`lint_dockerfile`), before any build starts."""
    validate_environment(env, plan)
    try:
        template = _jinja(plan).get_template(env.template)
        text = template.render(template_variables(env, plan))
    except jinja2.TemplateNotFound as err:
        folders = ", ".join(str(d) for d in template_dirs(plan))
        raise ConfigError(
            f"{plan.source}: environment {env.id!r}: template {err.name!r} not found in {folders}. "
            "Fix: check `template:` and `template_dir:`."
        ) from err
    except jinja2.TemplateError as err:
        raise _template_failed(env, plan, getattr(err, "filename", None) or env.template,
                               str(err)) from err
    problems = lint_dockerfile(text)
    if problems:
        raise _template_failed(env, plan, env.template, "; ".join(problems))
    return text


def _template_failed(env: Environment, plan: Plan, where: str, why: str) -> ConfigError:
    return ConfigError(
        f"{plan.source}: environment {env.id!r}: template {where} failed: {why}. "
        "Fix the template (every variable is listed in dockerfiles/README.md)."
    )


# -- the context folder ------------------------------------------------------------------------


def render_environment(env: Environment, plan: Plan, *, harness_dir: Path, out_dir: Path,
                       base: BaseIdentity | None = None,
                       lock: EnvLock | None = None) -> RenderedContext:
    """Write a complete build context for `env` into the empty or absent folder `out_dir`.

    `base` (the base image's identity in the engine) enters the content hash; `lock` (the
    environment's entry of the matrix's lock file) becomes build/locked-requirements.txt.
    """
    text = render_dockerfile(env, plan)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EnvmatrixError(f"Build context folder {out_dir} is not empty; give a fresh one.")
    (out_dir / WHEELHOUSE_DIR).mkdir(parents=True)
    (out_dir / "Dockerfile").write_text(text, encoding="utf-8")
    pins = "".join(f"{name}=={version}\n" for name, version in env.packages)
    (out_dir / BUILD_DIR / "requirements.txt").write_text(pins, encoding="utf-8")
    shutil.copyfile(PIP_HASHES_SCRIPT, out_dir / BUILD_DIR / PIP_HASHES_SCRIPT.name)
    if lock is not None:
        (out_dir / LOCKED_FILE).write_text(requirements_text(lock), encoding="utf-8")
    _copy_harness(harness_dir, out_dir / HARNESS_DIR)
    if plan.ca_bundle:
        _copy_ca_bundle(Path(plan.ca_bundle), out_dir / CA_FILE, plan)
    if plan.wheelhouse:
        _link_wheelhouse(Path(plan.wheelhouse), out_dir / WHEELHOUSE_DIR, plan)
    fetched = hostwheels.requirements_text(env, plan.host_wheels)
    if fetched is not None:  # the wheels themselves come once the image must be built
        (out_dir / BUILD_DIR / hostwheels.REQUIREMENTS_FILE).write_text(fetched, encoding="utf-8")
    digest = content_hash(out_dir, text, identity=base_identity_lines(base))
    return RenderedContext(out_dir, text, digest, base)


def base_identity_lines(base: BaseIdentity | None) -> list[str]:
    """What the content hash takes from the base: its reference, id and registry digests."""
    if base is None:
        return []
    return [f"base {base.image} {base.id}", *(f"digest {d}" for d in base.digests)]


def _copy_harness(src: Path, dst: Path) -> None:
    if not (src / "__init__.py").is_file():
        raise EnvmatrixError(
            f"The harness package is missing at {src} (no __init__.py): reinstall envmatrix "
            "or run from a full checkout."
        )
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def _copy_ca_bundle(src: Path, dst: Path, plan: Plan) -> None:
    if not src.is_file():
        raise ConfigError(
            f"{plan.source}: `ca_bundle` names {src}, which is not a file. Fix: point it at a PEM "
            "bundle, or remove it (`auto` picks PIP_CERT / SSL_CERT_FILE / REQUESTS_CA_BUNDLE)."
        )
    shutil.copyfile(src, dst)


def _link_wheelhouse(src: Path, dst: Path, plan: Plan) -> None:
    """Hard-link (or copy) the wheelhouse's top-level archives: pip's --find-links is flat."""
    if not src.is_dir():
        raise ConfigError(
            f"{plan.source}: `wheelhouse` names {src}, which is not a folder. Fix: point it at a "
            "folder of wheels, or remove the key."
        )
    for entry in sorted(src.iterdir()):
        if entry.is_file() and entry.name.endswith(WHEEL_SUFFIXES):
            try:
                os.link(entry, dst / entry.name)
            except OSError:  # another filesystem, or links not allowed: copy instead
                shutil.copy2(entry, dst / entry.name)


def content_hash(context_dir: Path, dockerfile_text: str,
                 exclude: Sequence[str] = (CA_FILE,), identity: Sequence[str] = ()) -> str:
    """sha256 over the envmatrix version, the base's `identity` lines, the Dockerfile and every
    context file (path + bytes)."""
    digest = hashlib.sha256(f"envmatrix {__version__}\n".encode())
    for line in identity:
        digest.update(f"{line}\n".encode())
    digest.update(dockerfile_text.encode("utf-8"))
    files = sorted(p for p in context_dir.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(context_dir).as_posix()
        if rel in exclude:
            continue
        digest.update(f"\0{rel}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# -- lint --------------------------------------------------------------------------------------

INSTRUCTIONS = frozenset(
    [
        "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
        "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
    ]
)
_BUILDKIT_ONLY = re.compile(r"--mount\b|--secret\b|--ssh\b|--link\b|--chmod\b|--parents\b|<<")
_FROM = re.compile(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
_COPY_FROM = re.compile(r"--from=(\S+)")


def _logical_lines(text: str) -> tuple[list[tuple[int, str]], list[str]]:
    """Join backslash continuations (Docker splits on \\n only); skip comments and blanks."""
    problems: list[str] = []
    logical: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.split("\n"), 1):
        if any((ord(ch) < 32 and ch != "\t") or ord(ch) > 126 for ch in line):
            problems.append(f"line {number}: control or non-ASCII character")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker skips these inside a continuation too
        if not current:
            start = number
        current.append(stripped[:-1] if stripped.endswith("\\") else stripped)
        if not stripped.endswith("\\"):
            logical.append((start, " ".join(current)))
            current = []
    if current:
        problems.append(f"line {start}: continuation never ends")
    return logical, problems


def lint_dockerfile(text: str, *, build_only: Sequence[str] = (f"{BUILD_DIR}/",)) -> list[str]:
    """Cheap structural checks for the classic builder; returns problems, empty when clean.

    `build_only` are context paths that must not be mentioned after the last FROM (the CA
    bundle and wheelhouse live there and must stay out of the final image).
    """
    if text.lstrip().lower().startswith("# syntax="):
        return ["line 1: `# syntax=` selects a BuildKit frontend; the classic builder is used"]
    logical, problems = _logical_lines(text)
    stages: list[str] = []
    final_user: str | None = None
    final_leaks: list[str] = []
    for number, line in logical:
        word = line.split(None, 1)[0]
        if word not in INSTRUCTIONS:
            problems.append(f"line {number}: {word!r} is not a Dockerfile instruction")
            continue
        if _BUILDKIT_ONLY.search(line):
            problems.append(f"line {number}: BuildKit-only syntax (--mount, heredoc, ...)")
        if not stages and word not in ("FROM", "ARG"):
            problems.append(f"line {number}: {word} before the first FROM")
        if word == "FROM":
            match = _FROM.match(line)
            stages.append((match.group(2) or "") if match else "")
            final_user, final_leaks = None, []
            continue
        if word == "USER":
            final_user = line.split(None, 1)[1] if " " in line else ""
        if word == "COPY":
            problems += _check_copy_source(number, line, stages)
        if stages and any(path in line for path in build_only):
            final_leaks.append(f"line {number}: the final stage uses build-only {build_only}")
    return problems + final_leaks + _check_stages(stages, final_user)


def _check_copy_source(number: int, line: str, stages: list[str]) -> list[str]:
    source = _COPY_FROM.search(line)
    if source and source.group(1) not in stages[:-1] and not source.group(1).isdigit():
        return [f"line {number}: COPY --from={source.group(1)} names no earlier stage"]
    return []


def _check_stages(stages: list[str], final_user: str | None) -> list[str]:
    problems: list[str] = []
    if not stages:
        problems.append("no FROM instruction")
    if final_user is None:
        problems.append("the final stage sets no USER (it would run as root)")
    elif final_user.split(":")[0] in ("root", "0", ""):
        problems.append(f"the final stage runs as {final_user!r}; use a non-root user")
    return problems
