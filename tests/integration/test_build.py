"""Real image builds of the default matrix's oldest and newest environments.

The environments come from matrix.yaml itself (same content hash, so CI builds each image once
for these tests and for `nox -s matrix`), with the CA bundle the host's pip trusts.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import docker
import pytest

from envmatrix.config.load import load_plan
from envmatrix.images.build import BuildFailure, BuiltImage, ensure_image, ensure_images
from envmatrix.rundir.plan import Plan
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEFAULT_MATRIX = Path(__file__).resolve().parents[2] / "matrix.yaml"
OLDEST, NEWEST = "bullseye-ort1.8.0", "trixie-ort1.32.0"


@pytest.fixture(scope="module")
def plan() -> Plan:
    return load_plan(DEFAULT_MATRIX, only=[OLDEST, NEWEST])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def built(engine: Engine, plan: Plan, run_dir: Path) -> dict[str, BuiltImage]:
    outcomes = ensure_images(engine, plan, run_dir=run_dir)
    assert sorted(outcomes) == sorted([OLDEST, NEWEST])
    for outcome in outcomes.values():
        assert isinstance(outcome, BuiltImage), outcome
    return outcomes  # type: ignore[return-value]


def _in_image(engine: Engine, image: BuiltImage, script: str, user: str = "65534:65534") -> str:
    spec = ContainerSpec(image.image_id, ["sh", "-c", script], user=user,
                         environment={"HOME": "/tmp"}, labels={"envmatrix.run": "test-build"})
    outcome = engine.run(spec, timeout_s=120)
    assert outcome.exit_code == 0, outcome.log
    return outcome.log


@pytest.mark.parametrize(("env_id", "version"), [(OLDEST, "1.8.0"), (NEWEST, "1.32.0")])
def test_runtime_imports_as_nobody_in_a_hardened_container(
    engine: Engine, built: dict[str, BuiltImage], env_id: str, version: str
) -> None:
    log = _in_image(engine, built[env_id],
                    "python -c 'import onnxruntime, harness; print(onnxruntime.__version__)'")
    assert log.strip().splitlines()[-1] == version


def test_image_identity_labels_and_saved_files(engine: Engine, built: dict[str, BuiltImage],
                                               plan: Plan, run_dir: Path) -> None:
    for env_id, image in built.items():
        assert re.fullmatch(rf"envmatrix/{re.escape(env_id)}:[0-9a-f]{{16}}", image.tag)
        labels = engine.image_labels(image.tag)
        assert labels["envmatrix.managed"] == "true"
        assert labels["envmatrix.environment"] == env_id
        # The matrix of the build that made the image: this one, unless another matrix with the
        # same environment (same content, same tag) built it first and this call reused it.
        if image.built:
            assert labels["envmatrix.matrix"] == plan.source.name
        else:
            assert labels["envmatrix.matrix"].endswith(".yaml")
        assert labels["envmatrix.content-hash"].startswith(image.tag.rsplit(":", 1)[1])
        assert "envmatrix.stage" not in labels  # the builder stage's label stays behind
        saved = (run_dir / "dockerfiles" / f"{env_id}.Dockerfile").read_text()
        assert saved.startswith("# Rendered by envmatrix")
        assert image.log_path == run_dir / "logs" / f"build-{env_id}.log"


def test_image_content_contract(engine: Engine, built: dict[str, BuiltImage]) -> None:
    log = _in_image(
        engine, built[OLDEST],
        'id -u envmatrix; echo "$ENVMATRIX_ENVIRONMENT $ENVMATRIX_BASE_IMAGE"; '
        "command -v python; test -f /opt/envmatrix/harness/__init__.py && echo harness-ok",
    )
    assert log.split("\n")[:4] == ["1000", f"{OLDEST} debian:bullseye",
                                   "/opt/venv/bin/python", "harness-ok"]


def test_second_call_reuses_the_image(engine: Engine, built: dict[str, BuiltImage], plan: Plan,
                                      run_dir: Path) -> None:
    again = ensure_image(engine, plan.environment(OLDEST), plan, run_dir=run_dir)
    assert again.built is False
    assert (again.tag, again.image_id) == (built[OLDEST].tag, built[OLDEST].image_id)
    assert again.log_path.read_text().startswith("# reused")


def test_ca_bundle_stays_out_of_the_final_image(engine: Engine, built: dict[str, BuiltImage],
                                                plan: Plan) -> None:
    assert plan.ca_bundle, "the host pip trusts no CA bundle: this test needs one to mean much"
    for image in built.values():
        history = "\n".join(engine.image_history(image.tag))
        assert "FROM runtime" not in history  # sanity: this is the final image's history
        assert "ca.pem" not in history and "envmatrix-build" not in history
        found = _in_image(
            engine, image,
            "find / -xdev \\( -name ca.pem -o -name 'envmatrix-build*' -o -name wheelhouse \\) "
            "-print 2>/dev/null; echo searched",
            user="0:0",
        )
        assert found.strip() == "searched"


def test_builder_stage_is_labelled_for_clean(engine: Engine, built: dict[str, BuiltImage]) -> None:
    client = docker.from_env()
    stages = client.images.list(filters={"label": ["envmatrix.stage=builder"]})
    assert stages, "the builder stage (which holds the CA bundle) must be findable by clean"
    assert all(img.labels.get("envmatrix.managed") == "true" for img in stages)


def test_a_failed_build_is_a_value_beside_the_others(engine: Engine, built: dict[str, BuiltImage],
                                                     plan: Plan, run_dir: Path) -> None:
    good = plan.environment(OLDEST)
    bad = dataclasses.replace(good, id="bullseye-ort0.0.1",
                              packages=(("onnxruntime", "0.0.1"),))
    outcomes = ensure_images(engine, plan, run_dir=run_dir, environments=[good, bad])
    assert isinstance(outcomes[OLDEST], BuiltImage) and outcomes[OLDEST].built is False
    failure = outcomes["bullseye-ort0.0.1"]
    assert isinstance(failure, BuildFailure)
    assert "onnxruntime==0.0.1" in failure.log_tail or "0.0.1" in failure.log_tail
    # The reason is pip's own line, not the builder's "returned a non-zero code".
    assert "No matching distribution found for onnxruntime==0.0.1" in failure.message
    assert "non-zero code" not in failure.message and failure.log_path.is_file()
