"""`build.host_wheels` as the matrix asks for it: which pins each environment has the host's
pip download, for which Python, and what in the matrix makes that impossible.

No download happens here (envmatrix.images.hostwheels fetches the wheels for a build): the
config check and the build context both read these answers, so they cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envmatrix.grammar import normalize_package
from envmatrix.problems import Problem
from envmatrix.rundir.plan import Environment

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
