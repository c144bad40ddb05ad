"""build.host_wheels: which Python each environment downloads for, the config errors, the
context file the hash reads, and the host's real pip downloading from a local find-links folder."""

from __future__ import annotations

import dataclasses
import textwrap
import zipfile
from pathlib import Path

import pytest
from unitlib import make_env, make_plan, write

from envmatrix.config import hostwheels as wanted
from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.images import hostwheels
from envmatrix.images.render import BUILD_DIR, render_environment
from envmatrix.rundir.plan import Base, Bootstrap, Environment, plan_from_dict, plan_to_dict
from envmatrix.running.engine import BuildStepError

pytestmark = pytest.mark.filterwarnings("ignore:.*are declared but no environment uses them")


@pytest.mark.parametrize(("base", "python", "want"), [
    (Base("b", "debian:bookworm", "debian", Bootstrap("bookworm")), "system", "3.11"),
    (Base("b", "envmatrix/base:x", "debian", Bootstrap("trixie")), "system", "3.13"),
    (Base("b", "debian:bullseye@sha256:" + "a" * 64, "debian"), "system", "3.9"),
    (Base("b", "ubuntu:22.04", "ubuntu"), "system", "3.10"),
    (Base("b", "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04", "ubuntu"), "system", "3.10"),
    (Base("b", "nvidia/cuda:10.2-cudnn8-runtime-ubuntu18.04", "ubuntu"), "system", "3.6"),
    (Base("b", "ubuntu:noble", "ubuntu"), "system", "3.12"),
    (Base("b", "ubuntu:18.04", "ubuntu", python_source="deadsnakes"), "3.8", "3.8"),
    # a python image's Python is its own, not that of the Debian release it is made from
    (Base("b", "python:3.12-slim-bookworm", "debian", python_source="image"), "system", "3.12"),
    (Base("b", "registry.example:5000/python:3.10", "debian", python_source="image"), "system",
     "3.10"),
    (Base("b", "my/python-build:latest", "debian", python_source="image"), "system", None),
    (Base("b", "alpine:3.19", "debian"), "system", None),
    (Base("b", "debian:sid", "debian"), "system", None),
])
def test_python_of_an_environment(base: Base, python: str, want: str | None) -> None:
    assert wanted.python_of(make_env(base, python)) == want


def test_requirements_are_the_environments_own_pins() -> None:
    env = make_env(packages=(("onnxruntime", "1.20.1"), ("torch", "2.13.0+cpu")))
    assert wanted.requirements(env, ["Torch"]) == ["torch==2.13.0+cpu"]
    assert wanted.requirements(env, ["torchvision"]) == []
    assert hostwheels.requirements_text(env, ["torch"]) == "# python 3.9\ntorch==2.13.0+cpu\n"
    assert hostwheels.requirements_text(env, []) is None


BODY = """\
environments:
  - {base: bookworm, packages: {onnxruntime: "1.20.1", torch: "2.13.0+cpu"}}
  - {base: trixie, packages: {onnxruntime: "1.32.0"}}
"""


def test_config_keeps_the_names_and_the_resolved_plan_round_trips(tmp_path: Path) -> None:
    plan = config.load_plan(write(tmp_path, BODY + "build: {ca_bundle: null, host_wheels: "
                                  "[torch]}\n", head=_head()))
    assert plan.host_wheels == ("torch",)
    assert plan_from_dict(plan_to_dict(plan)).plan.host_wheels == ("torch",)


def _head() -> str:
    return textwrap.dedent("""\
        version: 1
        bases:
          bookworm: {image: "debian:bookworm"}
          trixie: {image: "debian:trixie"}
          odd: {image: "example/odd:latest"}
        workloads:
          cnn: {model: "zoo:cnn"}
        """)


def _refusal(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config.load_plan(write(tmp_path, body, head=_head()))
    return str(caught.value)


def test_a_name_no_environment_pins_is_refused(tmp_path: Path) -> None:
    text = _refusal(tmp_path, BODY + "build: {ca_bundle: null, host_wheels: [torch, tensorflow]}\n")
    assert "build.host_wheels[1]" in text and "'tensorflow' is pinned by no environment" in text
    assert "Fix: pin it in an environment's packages:, or remove it." in text


def test_an_environment_of_unknown_python_is_refused(tmp_path: Path) -> None:
    text = _refusal(tmp_path, BODY + "  - {base: odd, packages: {torch: \"2.13.0\"}}\n"
                    "build: {ca_bundle: null, host_wheels: [torch]}\n")
    assert "build.host_wheels" in text and "example/odd:latest" in text
    assert "odd-torch2.13.0" in text  # the environment, by id


def test_the_hash_reads_the_requirement_lines_and_only_where_set(tmp_path: Path,
                                                                 harness: Path) -> None:
    env = make_env(packages=(("onnxruntime", "1.20.1"), ("torch", "2.13.0+cpu")))

    def render(name: str, plan_env: Environment, **kw: object) -> tuple[str, Path]:
        ctx = render_environment(plan_env, make_plan(**kw), harness_dir=harness,
                                 out_dir=tmp_path / name)
        return ctx.content_hash, ctx.context_dir / BUILD_DIR / hostwheels.REQUIREMENTS_FILE

    plain, no_file = render("plain", env)
    fetched, listed = render("fetched", env, host_wheels=("torch",))
    assert not no_file.exists() and listed.read_text() == "# python 3.9\ntorch==2.13.0+cpu\n"
    assert fetched != plain
    # an environment not pinning the package renders and hashes as without host_wheels
    other = dataclasses.replace(env, packages=(("onnxruntime", "1.20.1"),))
    assert render("other", other, host_wheels=("torch",))[0] == render("other2", other)[0]
    bumped = dataclasses.replace(env, packages=(("onnxruntime", "1.20.1"), ("torch", "2.12.0")))
    assert render("bumped", bumped, host_wheels=("torch",))[0] != fetched


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel, enough for pip to find and download it."""
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                             f"Version: {version}\n")
        archive.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                          "Root-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{dist}/RECORD", "")
    return path


@pytest.fixture()
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host's pip sees one find-links folder and no index (what a host's pip.conf does)."""
    links = tmp_path / "links"
    links.mkdir()
    _wheel(links, "envmatrix_probe", "1.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    return links


def test_the_hosts_pip_downloads_the_pinned_wheel(tmp_path: Path, local_index: Path) -> None:
    env = make_env(packages=(("envmatrix-probe", "1.0"), ("onnxruntime", "1.20.1")))
    house, log = tmp_path / "house", tmp_path / "logs" / "host-wheels-env-a.log"
    house.mkdir()
    hostwheels.download(env, ["envmatrix-probe"], house, log)
    assert [p.name for p in house.iterdir()] == ["envmatrix_probe-1.0-py3-none-any.whl"]
    assert "--python-version 3.9" in log.read_text()  # bullseye's Python, not the host's
    hostwheels.download(env, ["torch"], house, log)  # nothing pinned: nothing asked of pip
    assert len(list(house.iterdir())) == 1


def test_a_failed_download_fails_in_pips_words(tmp_path: Path, local_index: Path) -> None:
    env = make_env(packages=(("envmatrix-probe", "2.0"),))
    house, log = tmp_path / "house", tmp_path / "host-wheels.log"
    house.mkdir()
    with pytest.raises(BuildStepError) as caught:
        hostwheels.download(env, ["envmatrix-probe"], house, log)
    assert caught.value.cause.startswith("pip: ERROR: "), caught.value.cause
    assert "envmatrix-probe==2.0" in caught.value.cause or "envmatrix_probe" in caught.value.cause
    assert "build.host_wheels" in str(caught.value) and str(log) in str(caught.value)
    assert "ERROR:" in log.read_text()
