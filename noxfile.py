"""The front door. Every session is a thin call into the `envmatrix` package.

    nox -s matrix                      # the whole pipeline on matrix.yaml
    nox -s matrix -- --only 'bookworm-*' --rebuild
    nox -s tests                       # unit, harness and integration tests
"""

from __future__ import annotations

import os

import nox

TORCH = "torch==2.13.0"
TORCH_DEPS_IF_INSTALLED = (
    "import importlib.util, subprocess, sys\n"
    "if importlib.util.find_spec('torch'):\n"
    f"    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', '{TORCH}'])"
)

nox.options.sessions = ["matrix"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


def _install(session: nox.Session, extras: str = "") -> None:
    session.install("-e", f".[{extras}]" if extras else ".")


def _torch_if_local(session: nox.Session) -> None:
    """torch on the host, from a local wheel only (pip's find-links, or examples/wheels/): the
    host writes the TorchScript twins of zoo models for torch workloads. PyPI's Linux torch is
    a multi-GB CUDA build, so nothing is downloaded; without a local wheel a torch workload
    stops at config time with the fix, and every other workload runs as always."""
    session.run("python", "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                "--find-links", "examples/wheels", TORCH, success_codes=[0, 1])
    session.run("python", "-c", TORCH_DEPS_IF_INSTALLED)


def _wants_torch(posargs: list[str]) -> bool:
    """Whether the matrix file the command reads (--matrix, default matrix.yaml) names torch."""
    path = "matrix.yaml"
    for index, arg in enumerate(posargs):
        if arg == "--matrix" and index + 1 < len(posargs):
            path = posargs[index + 1]
        elif arg.startswith("--matrix="):
            path = arg.split("=", 1)[1]
    try:
        with open(path, encoding="utf-8") as handle:
            return "torch" in handle.read()
    except OSError:
        return False  # envmatrix itself says what is wrong with the path


def _envmatrix(session: nox.Session, command: str) -> None:
    _install(session)
    if command in ("matrix", "run", "build", "lock") and _wants_torch(session.posargs):
        _torch_if_local(session)
    try:
        session.run("python", "-m", "envmatrix", command, *session.posargs)
    except nox.command.CommandFailed as failed:
        # nox itself would exit 1 for any failure: keep envmatrix's own exit code (10 cells
        # failed, 11 the --fail-on gate, ...) so that CI can tell them apart.
        raise SystemExit(failed.return_code or 1) from None


@nox.session
def matrix(session: nox.Session) -> None:
    """Build every environment, run every cell, write the report."""
    _envmatrix(session, "matrix")


@nox.session
def render(session: nox.Session) -> None:
    """Render the Dockerfiles of the matrix without building anything."""
    _envmatrix(session, "render")


@nox.session
def build(session: nox.Session) -> None:
    """Make base images and build (or reuse) every environment image."""
    _envmatrix(session, "build")


@nox.session
def lock(session: nox.Session) -> None:
    """Build from the pins and write the exact installed sets beside the matrix (*.lock.yaml)."""
    _envmatrix(session, "lock")


@nox.session
def run(session: nox.Session) -> None:
    """Build what is missing and run the cells, without writing the report."""
    _envmatrix(session, "run")


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild the report of a run directory: nox -s report -- reports/<run-id>."""
    _envmatrix(session, "report")


@nox.session(name="list")
def list_cells(session: nox.Session) -> None:
    """Dry run: every cell id and image tag; nothing is built."""
    _envmatrix(session, "list")


@nox.session
def clean(session: nox.Session) -> None:
    """Remove the containers and images that envmatrix labelled."""
    _envmatrix(session, "clean")


@nox.session
def push(session: nox.Session) -> None:
    """Push a run's images to your registry: nox -s push -- RUN_DIR --registry HOST[/PREFIX]."""
    _envmatrix(session, "push")


@nox.session
def compare(session: nox.Session) -> None:
    """Compare two run directories: nox -s compare -- RUN_A RUN_B."""
    _envmatrix(session, "compare")


@nox.session
def archive(session: nox.Session) -> None:
    """Save a run's images and bases with checksums: nox -s archive -- RUN_DIR."""
    _envmatrix(session, "archive")


@nox.session
def restore(session: nox.Session) -> None:
    """Verify and load an archive's images: nox -s restore -- ARCHIVE."""
    _envmatrix(session, "restore")


@nox.session
def replay(session: nox.Session) -> None:
    """Measure a run's cells again in its images: nox -s replay -- RUN_DIR [--only CELL]."""
    _envmatrix(session, "replay")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, harness and integration tests (integration needs a Docker engine)."""
    _install(session, "test")
    # torch only from a local wheel (pip's find-links): PyPI's Linux torch is a multi-GB CUDA
    # build. Its dependencies come from the index once the wheel itself is in. On a developer's
    # machine without the wheel the TorchScript tests skip and say so; in CI a failed install
    # fails the session (and the top-level conftest.py turns any skip into a failure there).
    in_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    session.run("python", "-m", "pip", "install", "--no-index", "--no-deps", TORCH,
                success_codes=[0] if in_ci else [0, 1])
    session.run("python", "-c", TORCH_DEPS_IF_INSTALLED)
    session.run("pytest", *(session.posargs or ["-ra", "tests"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on both packages (the harness's own ruff.toml targets the oldest Python ruff knows),
    mypy on the host package, vermin (Python 3.6+, exactly) on the harness."""
    _install(session, "lint")
    session.run("ruff", "check", "envmatrix", "envmatrix_harness", "tests", "noxfile.py",
                "benchmarks")
    session.run("mypy")
    session.run("vermin", "-q", "--no-tips", "-t=3.6-", "--violations", "envmatrix_harness")
