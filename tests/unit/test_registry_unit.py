"""Registry pushes and pinned bases without an engine: names, registry.json, the failures' words.

The real registry (Debian's docker-registry on the loopback address) is exercised in
tests/integration/test_registry.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import PUSHED_DIGEST, FakeEngine

from envmatrix import cli
from envmatrix.config import load as config
from envmatrix.errors import BaseImageError, ConfigError, EngineError
from envmatrix.images import bases
from envmatrix.reproduce import registry
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import RunDir, create_run_dir
from envmatrix.rundir.plan import Base, Bootstrap

TWO_ENVS = Path(__file__).resolve().parents[1] / "integration" / "matrices" / "two_envs.yaml"

DIGEST = PUSHED_DIGEST
MISSING = "manifest unknown: manifest unknown"  # a registry's words for a digest it lacks


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    """A run whose record names an image per environment, as a finished build leaves it."""
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(TWO_ENVS.read_text())
    plan = config.load_plan(matrix)
    run = create_run_dir(tmp_path / "reports", "r1")
    images = {env.id: {"tag": f"envmatrix/{env.id}:aa", "image_id": "sha256:aa"}
              for env in plan.environments}
    planfile.dump_resolved(plan, run.resolved_path, {"run_id": "r1", "images": images})
    return run


def test_target_names_keep_the_content_hash_and_refuse_what_is_no_image_name() -> None:
    name = registry.target_name("127.0.0.1:5000/team/", "bullseye-ort1.8.0",
                                "envmatrix/bullseye-ort1.8.0:6c8588e77e3571ba")
    assert name == "127.0.0.1:5000/team/bullseye-ort1.8.0:6c8588e77e3571ba"
    for bad in ("http://127.0.0.1:5000", "127.0.0.1:5000/Team", "host/x@sha256:00", ""):
        with pytest.raises(ConfigError, match="does not make a valid image name"):
            registry.target_name(bad, "env", "envmatrix/env:aa")


def test_push_run_pushes_every_recorded_image_and_records_the_digests(run: RunDir) -> None:
    engine = FakeEngine.holding({"envmatrix/bullseye-ort1.8.0:aa": "sha256:aa",
                                 "envmatrix/trixie-ort1.32.0:aa": "sha256:aa"})
    lines: list[str] = []
    path = registry.push_run(engine, run, "127.0.0.1:5000/team",
                             lambda stage, text: lines.append(text))
    assert engine.pushed == [("sha256:aa", "127.0.0.1:5000/team/bullseye-ort1.8.0:aa"),
                             ("sha256:aa", "127.0.0.1:5000/team/trixie-ort1.32.0:aa")]
    doc = json.loads(path.read_text())
    assert doc["schema"] == "envmatrix.registry/1"
    entry = doc["registries"]["127.0.0.1:5000/team"]["images"]["trixie-ort1.32.0"]
    assert entry["digest"] == DIGEST
    assert entry["reference"] == f"127.0.0.1:5000/team/trixie-ort1.32.0@{DIGEST}"
    assert lines[-1] == f"trixie-ort1.32.0: 127.0.0.1:5000/team/trixie-ort1.32.0@{DIGEST}"


def test_push_run_refuses_an_image_that_is_not_the_one_the_run_measured(run: RunDir) -> None:
    engine = FakeEngine.holding({"envmatrix/bullseye-ort1.8.0:aa": "sha256:other"})
    with pytest.raises(EngineError, match=r"bullseye-ort1.8.0: image envmatrix/bullseye-ort1.8.0"
                                          r":aa is now sha256:other, not sha256:aa"):
        registry.push_run(engine, run, "127.0.0.1:5000", lambda *a: None)
    assert not (run.path / "registry.json").exists()


def test_a_failed_push_says_the_registry_words_and_the_fix(run: RunDir) -> None:
    engine = FakeEngine.holding({"envmatrix/bullseye-ort1.8.0:aa": "sha256:aa"},
                                push_fails="connection refused")
    with pytest.raises(EngineError) as info:
        registry.push_run(engine, run, "127.0.0.1:5000", lambda *a: None)
    assert "connection refused" in str(info.value) and "docker login" in str(info.value)


def test_push_needs_a_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(registry.REGISTRY_VARIABLE, raising=False)
    run = create_run_dir(tmp_path, "r")
    assert cli.main(["push", str(run.path)]) == ConfigError.exit_code


def test_a_pinned_base_that_cannot_be_pulled_is_refused_with_the_engine_words(
    tmp_path: Path,
) -> None:
    ref = f"127.0.0.1:5000/debian@{DIGEST}"
    base = Base("bookworm", ref, "debian", Bootstrap("bookworm"))
    log = tmp_path / "base.log"
    with pytest.raises(BaseImageError) as info:
        bases.ensure_base(FakeEngine(pull_fails=MISSING), base, log_path=log)
    message = str(info.value)
    assert f"Base image {ref} (base 'bookworm') could not be pulled: manifest unknown" in message
    assert "only ever pulled" in message and "Fix: check the digest" in message
    assert "the pull failed: manifest unknown" in log.read_text()  # and no debootstrap ran


def test_pinned_bases_are_pulled_first_and_their_digest_logged(tmp_path: Path) -> None:
    ref = f"127.0.0.1:5000/debian@{DIGEST}"
    engine = FakeEngine()
    said: list[str] = []
    tagged = Base("trixie", "debian:trixie", "debian")  # not pinned: left to the builds
    bases.ensure_pinned(engine, [Base("b", ref, "debian"), tagged], tmp_path,
                        lambda stage, text: said.append(text))
    assert said == [f"b: {ref} (sha256:pulled)"]
    log = (tmp_path / "base-b.log").read_text()
    assert f"pulled (sha256:pulled, {ref})" in log  # the pulled id and its registry digest
