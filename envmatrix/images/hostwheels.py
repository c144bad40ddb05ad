"""`build.host_wheels`: wheels the host's pip fetches for a build, in the host's own setup.

Some wheels reach the host's pip and not a build: PyTorch's CPU builds on PyTorch's own index
(PyPI's Linux torch is a CUDA build of several GB), a company mirror only the host is
configured for, a find-links folder on the host. For every environment that pins a named
package, the host's pip downloads the wheel of that environment's own pin (no dependencies,
binary only, for the environment's Python) straight into the build context's wheelhouse, where
the build's pip finds it (`--find-links`). The dependencies come from the build's index as
usual, and everything else about the build stays as it was.

The image's content hash takes the requirement lines (`build/host-wheels.txt`), not the wheel's
bytes: pins are exact, and `list` shows the same context id without downloading anything.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from envmatrix.errors import BuildStepError
from envmatrix.grammar import normalize_package
from envmatrix.problems import Problem
from envmatrix.rundir.plan import Environment
from envmatrix.toolwords import build_cause, clean

REQUIREMENTS_FILE = "host-wheels.txt"  # under the context's build/ folder
DOWNLOAD_TIMEOUT_S = 1800  # a GB-sized wheel over a slow link

# The python3 of each release a base is made from (debootstrap suite, or the image's tag):
# what the host's pip must download for, since the base itself is not run before the build.
RELEASE_PYTHON = {
    "buster": "3.7", "bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13",
    "bionic": "3.6", "18.04": "3.6", "focal": "3.8", "20.04": "3.8",
    "jammy": "3.10", "22.04": "3.10", "noble": "3.12", "24.04": "3.12",
}
_RELEASE_WORD = re.compile(r"(?:ubuntu)?(\d\d\.\d\d)\b|\b([a-z]+)\b")


def python_of(env: Environment) -> str | None:
    """X.Y of the environment's Python: its own `python:`, else that of its base's release."""
    if env.python != "system":
        return env.python
    name, _, tag = env.base.image.split("@", 1)[0].rsplit("/", 1)[-1].partition(":")
    if env.base.python_source == "image":  # python:3.12-slim-bookworm has 3.12, not 3.11
        own = re.match(r"(\d+\.\d+)", tag) if name == "python" else None
        return own.group(1) if own else None
    bootstrap = env.base.bootstrap
    words = [bootstrap.suite] if bootstrap else []
    words += [a or b for a, b in _RELEASE_WORD.findall(tag)]
    return next((RELEASE_PYTHON[w] for w in words if w in RELEASE_PYTHON), None)


def requirements(env: Environment, names: Sequence[str]) -> list[str]:
    """`name==version` of the environment's pins among `names` (PEP 503 names)."""
    wanted = {normalize_package(n) for n in names}
    return [f"{name}=={version}" for name, version in env.packages if name in wanted]


def problems(envs: Sequence[Environment], names: Sequence[str]) -> list[Problem]:
    """Names no environment pins (they would do nothing) and environments of unknown Python."""
    found: list[Problem] = []
    for index, name in enumerate(names):
        if not any(requirements(env, [name]) for env in envs):
            found.append(Problem(("build", "host_wheels", index), f"{name!r} is pinned by no "
                                 "environment, so there is nothing to download.",
                                 "pin it in an environment's packages:, or remove it."))
    for env in envs:
        wanted = requirements(env, names)
        if wanted and python_of(env) is None:
            found.append(Problem(("build", "host_wheels"), f"environment {env.id} pins "
                                 f"{', '.join(wanted)}, and envmatrix cannot "
                                 f"tell which Python its base {env.base.image} has (it knows "
                                 f"{', '.join(sorted(RELEASE_PYTHON))}).",
                                 "give the base a bootstrap suite or an image tag naming its "
                                 "release, or a python_source image base with python: X.Y."))
    return found


def requirements_text(env: Environment, names: Sequence[str]) -> str | None:
    """The context file the content hash reads; None when the environment fetches nothing."""
    wanted = requirements(env, names)
    if not wanted:
        return None
    return f"# python {python_of(env)}\n" + "".join(f"{line}\n" for line in wanted)


def log_path_for(run_dir: Path, env: Environment) -> Path:
    return run_dir / "logs" / f"host-wheels-{env.id}.log"


def download(env: Environment, names: Sequence[str], wheelhouse: Path, log_path: Path) -> None:
    """Have the host's pip put the environment's wheels into `wheelhouse`, its output in
    `log_path`. Raises BuildStepError with pip's own words when it cannot."""
    wanted = requirements(env, names)
    if not wanted:
        return
    version = python_of(env)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--python-version", str(version), "--dest", str(wheelhouse), *wanted]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=DOWNLOAD_TIMEOUT_S)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        partial = [p.decode(errors="replace") if isinstance(p, bytes) else p or ""
                   for p in (err.stdout, err.stderr)]
        output, code = "".join(partial), -1
        output += f"\nERROR: gave up after {DOWNLOAD_TIMEOUT_S} s\n"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"# build.host_wheels: {' '.join(command[1:])}\n{clean(output)}\n",
                        encoding="utf-8")
    if code != 0:
        cause = build_cause(output) or f"pip: exit status {code}"
        raise BuildStepError(f"The host's pip could not download {', '.join(wanted)} for Python "
                             f"{version} (build.host_wheels; full log: {log_path}).",
                             clean(output)[-4000:], cause)
