"""Which onnxruntime-gpu release needs which CUDA and cuDNN: one table, and the config check.

The table is onnxruntime's own, from the "Requirements" section of its CUDA execution provider
page (onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html, the CUDA 12.x and
CUDA 11.x tables and the older rows it kept over the years). Each row says what the wheel that
PyPI serves was built with, and which other builds onnxruntime published on a separate package
index. The compatibility rules are the ones that page states:
- CUDA minor version compatibility from CUDA 11 on: a build for CUDA 11.8 runs on any CUDA 11.x,
  a build for CUDA 12.x on any CUDA 12.x. Before 11 the libraries' names carry the minor version
  (libcudart.so.10.2), so a CUDA 10.x build needs exactly that CUDA.
- cuDNN by major version: a build with cuDNN 8.x does not run with cuDNN 9.x, and vice versa.

A base declares what it provides (`bases.<name>.cuda`, `.cudnn`); an impossible pair is refused
before anything is built, with the releases that would work. A pin on a base that declares no
CUDA cannot be checked: that is a warning (the base may bring CUDA some other way, e.g. the
nvidia-* wheels). Add a row when onnxruntime publishes a new CUDA line.
"""

from __future__ import annotations

from dataclasses import dataclass

from envmatrix.grammar import release
from envmatrix.rundir.plan import Environment

PACKAGE = "onnxruntime-gpu"
# A base image that provides what the current releases need, for the fixes we print.
CUDA12_BASE_EXAMPLE = 'nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 (cuda: "12.4", cudnn: "9")'


@dataclass(frozen=True)
class Build:
    cuda: str  # the CUDA the wheel was built with, e.g. "11.8", or "12" for any 12.x
    cudnn: str  # the cuDNN it was built with, e.g. "8.2.4", or "9" for any 9.x


@dataclass(frozen=True)
class Row:
    first: tuple[int, int]  # first and last release (major, minor) of the row, inclusive
    last: tuple[int, int] | None  # None: every later release until a new row says otherwise
    pypi: Build  # what `pip install onnxruntime-gpu==X` gets from PyPI
    other_index: tuple[Build, ...] = ()  # builds published on a separate package index


# onnxruntime's requirements table (see the module docstring), oldest first.
TABLE: tuple[Row, ...] = (
    Row((1, 0), (1, 1), Build("10.0", "7.6.4")),
    Row((1, 2), (1, 4), Build("10.1", "7.6.5")),
    Row((1, 5), (1, 6), Build("10.2", "8.0.3")),
    Row((1, 7), (1, 8), Build("11.0.3", "8.0.4")),
    Row((1, 9), (1, 12), Build("11.4", "8.2.4")),
    Row((1, 13), (1, 14), Build("11.6", "8.2.4")),
    Row((1, 15), (1, 16), Build("11.8", "8.2.4")),
    # 1.17 and 1.18: CUDA 11.8 on PyPI; CUDA 12 builds (cuDNN 8; 1.18.1: cuDNN 9) on their own
    # index. The 1.18.1 detail is below a row's resolution: both cuDNN lines are accepted there.
    Row((1, 17), (1, 18), Build("11.8", "8.2.4"), (Build("12", "8"), Build("12", "9"))),
    # From 1.19, PyPI's default is CUDA 12.x with cuDNN 9; CUDA 11.8 + cuDNN 8 builds of
    # 1.19-1.21 come from a separate feed.
    Row((1, 19), (1, 21), Build("12", "9"), (Build("11.8", "8"),)),
    # From 1.22 on: CUDA 12 only.
    Row((1, 22), None, Build("12", "9")),
)


def row_of(version: str) -> Row | None:
    """The table row of an onnxruntime-gpu version, None when it predates the table."""
    minor = release(version)[:2]
    for row in TABLE:
        if row.first <= minor and (row.last is None or minor <= row.last):
            return row
    return None


def _parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def cuda_runs(build: str, base: str) -> bool:
    """Whether a build for CUDA `build` runs on a base providing CUDA `base`.

    From CUDA 11 on, any minor of the same major (minor version compatibility); before that,
    the same major.minor. "12" (a build for any 12.x) matches every 12.x base.
    """
    wanted, have = _parts(build), _parts(base)
    if wanted[0] != have[0]:
        return False
    return wanted[0] >= 11 or wanted[:2] == have[:2] or len(wanted) == 1 or len(have) == 1


def cudnn_runs(build: str, base: str) -> bool:
    """cuDNN builds run on the same major version only (8.x and 9.x do not mix)."""
    return _parts(build)[0] == _parts(base)[0]


def build_runs(build: Build, cuda: str, cudnn: str | None) -> bool:
    return cuda_runs(build.cuda, cuda) and (cudnn is None or cudnn_runs(build.cudnn, cudnn))


def describe(build: Build) -> str:
    cuda = f"{build.cuda}.x" if "." not in build.cuda else build.cuda
    cudnn = f"{build.cudnn}.x" if "." not in build.cudnn else build.cudnn
    return f"CUDA {cuda} with cuDNN {cudnn}"


def _span(first: Row, last: Row) -> str:
    start = f"{first.first[0]}.{first.first[1]}"
    if last.last is None:
        return f"{start} and later"
    end = f"{last.last[0]}.{last.last[1]}"
    return start if first.first == last.last else f"{start}-{end}"


def releases_for(cuda: str, cudnn: str | None) -> list[str]:
    """Release spans whose PyPI wheel runs on this CUDA (and cuDNN), newest first; adjacent
    rows are joined ("1.7-1.18")."""
    runs: list[list[Row]] = []
    previous_ok = False
    for row in TABLE:
        ok = build_runs(row.pypi, cuda, cudnn)
        if ok and previous_ok:
            runs[-1].append(row)
        elif ok:
            runs.append([row])
        previous_ok = ok
    return [_span(group[0], group[-1]) for group in reversed(runs)]


def check(env: Environment, other_index: bool = False) -> list[tuple[tuple[str, ...], str, str]]:
    """(key inside the environment, message, fix) when the base cannot run the pinned release.

    `other_index`: the build sets pip_index_url, so onnxruntime's builds on other indexes count
    as well as PyPI's (we cannot tell which index it is, so any published build is accepted).
    """
    version = env.package_dict.get(PACKAGE)
    base = env.base
    if version is None or base.cuda is None:
        return []
    row = row_of(version)
    if row is None:
        return []
    builds = (row.pypi, *row.other_index) if other_index else (row.pypi,)
    if any(build_runs(b, base.cuda, base.cudnn) for b in builds):
        return []
    return [(("packages", PACKAGE), _message(version, row, base.name, base.cuda, base.cudnn),
             _fix(row, base.cuda, base.cudnn, other_index))]


def _provides(cuda: str, cudnn: str | None) -> str:
    return f"CUDA {cuda}" + (f" with cuDNN {cudnn}" if cudnn else "")


def _message(version: str, row: Row, base: str, cuda: str, cudnn: str | None) -> str:
    return (f"{PACKAGE} {version} needs {describe(row.pypi)} (the wheel PyPI serves), but base "
            f"{base!r} provides {_provides(cuda, cudnn)}.")


def _fix(row: Row, cuda: str, cudnn: str | None, other_index: bool) -> str:
    """The releases that run on this base, a base that runs this release, and an other-index
    build of this release that would run here, if onnxruntime published one."""
    working = releases_for(cuda, cudnn)
    base = f"use a base with {describe(row.pypi)}"
    if row.pypi.cuda.startswith("12"):
        base += f", e.g. {CUDA12_BASE_EXAMPLE}"
    if working:
        fix = (f"pin a release built for {_provides(cuda, cudnn)}: {PACKAGE} "
               f"{', '.join(working)}; or {base}")
    else:
        fix = f"no {PACKAGE} wheel on PyPI is built for {_provides(cuda, cudnn)}: {base}"
    fitting = [b for b in row.other_index if build_runs(b, cuda, cudnn)]
    if fitting and not other_index:
        fix += (f" (or install onnxruntime's {describe(fitting[0])} build of this release from "
                "its separate index: set build.pip_index_url)")
    return fix + "."


def warning(env: Environment) -> str | None:
    """A pin we cannot check, because the base declares no CUDA version."""
    version = env.package_dict.get(PACKAGE)
    if version is None or env.base.cuda is not None:
        return None
    row = row_of(version)
    need = f": it needs {describe(row.pypi)}" if row else ""
    return (f"environment {env.id}: {PACKAGE} {version} is pinned on base {env.base.name!r}, which "
            f"declares no CUDA version, so its CUDA and cuDNN cannot be checked{need}. "
            f"Fix: set bases.{env.base.name}.cuda (and cudnn) to what the image provides.")
