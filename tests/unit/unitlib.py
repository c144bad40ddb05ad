"""Builders the unit tests share (tests/unit is on sys.path when pytest collects them):
a matrix.yaml written from a body, and an environment and a bare plan to render. The `harness`
folder fixture is in tests/unit/conftest.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from envmatrix.rundir.plan import Base, Bootstrap, Environment, Measure, Plan

# -- matrix.yaml files --------------------------------------------------------------------------

# HEAD declares more bases than most tests use; a test that loads it filters that warning.
HEAD = """\
version: 1
bases:
  bookworm: {image: "debian:bookworm"}
  trixie: {image: "debian:trixie"}
  bullseye: {image: "debian:bullseye"}
workloads:
  cnn: {model: "zoo:cnn"}
build: {ca_bundle: null}
"""


def write(tmp_path: Path, body: str, head: str = HEAD, name: str = "matrix.yaml") -> Path:
    """tmp_path/name holding `head` and then `body` (dedented)."""
    path = tmp_path / name
    path.write_text(head + textwrap.dedent(body))
    return path


# -- environments and plans to render -----------------------------------------------------------

BULLSEYE = Base("bullseye", "debian:bullseye", "debian", Bootstrap("bullseye"))
PINS = (("numpy", "1.23.5"), ("onnxruntime", "1.8.0"))


def make_env(base: Base = BULLSEYE, python: str = "system", **kw: object) -> Environment:
    """Environment env-a on `base` pinning PINS for the CPU; `kw` replaces any field."""
    fields: dict[str, object] = {
        "id": "env-a", "base": base, "python": python, "packages": PINS, "providers": ("cpu",),
    }
    fields.update(kw)
    return Environment(**fields)  # type: ignore[arg-type]


def make_plan(**kw: object) -> Plan:
    """A plan of no cells with baseline env-a; `kw` sets its other fields (build, ...)."""
    return Plan(source=Path("matrix.yaml"), bases=(), environments=(), workloads=(),
                measure=Measure(), baseline="env-a", cells=(), **kw)  # type: ignore[arg-type]
