"""Image identity and locks on the real engine.

- A base re-made with other content under the same reference gives the next run a new image
  (the tag hashes the base's id). The base is the shared trixie image plus one file, the
  environment a one-step template on it: seconds, nothing downloaded.
- Lock, build from the lock, remove the image and build it again without the cache: the same
  tag and the same installed set; an edited lock with a version that does not exist fails the
  build with the distribution named. The environment is `trixie-ort1.32.0` of
  matrices/two_envs.yaml, copied exactly, so `lock` reuses the image the other tests build.

Every image a test makes is removed by it; the shared trixie image and bases stay.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from pipelinelib import MATRICES, envmatrix_cli

from envmatrix.config import load as config
from envmatrix.images import locks
from envmatrix.images.bases import ensure_base
from envmatrix.images.build import BuiltImage, ensure_image, ensure_images
from envmatrix.rundir.plan import Plan
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIXIE = "trixie-ort1.32.0"
TINY_TEMPLATE = """\
ARG BASE_IMAGE={{ base_image }}
FROM ${BASE_IMAGE}
COPY {{ harness_dir }}/ /opt/envmatrix/harness/
USER envmatrix
"""


def _remove(*refs: str) -> None:
    client = docker.from_env()
    for ref in refs:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(ref, force=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("identity")


@pytest.fixture(scope="module")
def trixie_plan(workdir: Path) -> Plan:
    """two_envs.yaml's trixie environment, the matrix copied into a folder of its own (its
    lock file lands beside it)."""
    matrix = workdir / "two.yaml"
    shutil.copyfile(MATRICES / "two_envs.yaml", matrix)
    return config.load_plan(matrix, only=[TRIXIE])


@pytest.fixture(scope="module")
def trixie(engine: Engine, trixie_plan: Plan, workdir: Path) -> BuiltImage:
    """The shared trixie-ort1.32.0 image, built from its pins unless another test made it."""
    outcome = ensure_images(engine, trixie_plan, run_dir=workdir / "shared", use_lock=False)
    built = outcome[TRIXIE]
    assert isinstance(built, BuiltImage), built
    return built


# -- identity ---------------------------------------------------------------------------------


def _make_base(engine: Engine, ref: str, parent: str, marker: str, folder: Path) -> str:
    """`parent` plus one file, tagged `ref` (a base made again under the same name)."""
    folder.mkdir()
    (folder / "marker").write_text(marker)
    (folder / "Dockerfile").write_text(f"FROM {parent}\nCOPY marker /etc/envmatrix-test-marker\n")
    return engine.build(folder, ref, labels={}, buildargs={}, log_path=folder / "build.log",
                        timeout_s=300)


def _tiny_plan(workdir: Path, base_ref: str) -> Plan:
    templates = workdir / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "tiny.Dockerfile.j2").write_text(TINY_TEMPLATE)
    matrix = workdir / "remade.yaml"
    matrix.write_text(f"""\
version: 1
bases:
  remade: {{image: "{base_ref}"}}
environments:
  - base: remade
    packages: {{onnxruntime: "1.32.0"}}
    providers: [cpu]
    template: tiny.Dockerfile.j2
workloads:
  mlp: {{model: "zoo:mlp"}}
build: {{template_dir: "{templates}"}}
""")
    return config.load_plan(matrix)


@pytest.fixture()
def remade_base(engine: Engine, trixie: BuiltImage) -> Iterator[str]:
    ref = f"envmatrix-test/remade-base-{os.getpid()}:1"
    yield ref
    _remove(ref)


def test_a_re_made_base_gives_the_next_run_a_new_image(engine: Engine, trixie: BuiltImage,
                                                      remade_base: str, workdir: Path) -> None:
    run_dir = workdir / "remade-run"
    made: list[str] = []
    try:
        first_base = _make_base(engine, remade_base, trixie.image_id, "one", workdir / "base1")
        plan = _tiny_plan(workdir, remade_base)
        env = plan.environments[0]
        ensure_base(engine, env.base, log_path=run_dir / "logs" / "base.log")
        first = ensure_image(engine, env, plan, run_dir=run_dir)
        made.append(first.tag)
        assert first.built and first.base is not None and first.base.id == first_base
        assert ensure_image(engine, env, plan, run_dir=run_dir).tag == first.tag  # reused

        second_base = _make_base(engine, remade_base, trixie.image_id, "two", workdir / "base2")
        assert second_base != first_base and engine.image_id(remade_base) == second_base
        second = ensure_image(engine, env, plan, run_dir=run_dir)
        made.append(second.tag)
        print(f"base {first_base[:19]} -> {first.tag}; base {second_base[:19]} -> {second.tag}")
        assert second.built, "the old image was reused although its base changed"
        assert second.tag != first.tag
        labels = engine.image_labels(second.tag)
        assert labels["envmatrix.base-id"] == second_base
        assert labels["envmatrix.base-image"] == remade_base
        saved = locks.read_installed_file(run_dir / "locks" / f"{env.id}.json")
        assert saved.base is not None and saved.base.id == second_base
        assert saved.installed.pip["onnxruntime"].version == "1.32.0"
        made.append(first_base)
    finally:
        _remove(*made)


# -- locks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(engine: Engine, trixie: BuiltImage, trixie_plan: Plan, workdir: Path) -> Path:
    """`envmatrix lock` on the trixie environment: reuses the shared image, writes the lock."""
    matrix = trixie_plan.source
    run = envmatrix_cli(["lock", "--matrix", str(matrix), "--only", TRIXIE, "--out",
                         str(workdir / "lock-run")], workdir, workdir / "lock-run")
    assert run.code == 0, run.stderr
    assert f"{TRIXIE}: reused {trixie.tag}" in run.stderr
    path = locks.lock_path(matrix)
    assert run.stdout.strip() == f"Lock: {path}"
    return path


def test_lock_file_holds_the_image_set(locked: Path, trixie: BuiltImage, engine: Engine) -> None:
    lock = locks.load_lock(locked.with_name("two.yaml"))
    assert lock is not None and list(lock.environments) == [TRIXIE]
    entry = lock.environments[TRIXIE]
    assert trixie.installed is not None and entry.installed == trixie.installed
    assert entry.installed.pip["onnxruntime"].version == "1.32.0"
    assert entry.installed.apt and entry.installed.apt["python3"]
    assert entry.base is not None and entry.base.id == engine.image_id("debian:trixie")
    hashed = sorted(name for name, dist in entry.installed.pip.items() if dist.sha256)
    print(f"lock: {len(entry.installed.pip)} distributions, {len(hashed)} with sha256, "
          f"hash mode: {entry.hashed}")
    assert "onnxruntime" in hashed  # pip's report gave the hashes of what it downloaded


def test_rebuild_from_the_lock_after_removing_the_image_gives_the_same_tag_and_set(
    engine: Engine, locked: Path, trixie_plan: Plan, workdir: Path
) -> None:
    plan = config.load_plan(trixie_plan.source, only=[TRIXIE])
    env = plan.environment(TRIXIE)
    lock = locks.load_lock(plan.source)
    assert lock is not None
    first = ensure_image(engine, env, plan, run_dir=workdir / "from-lock-1")
    try:
        assert first.locked and first.installed == lock.environments[TRIXIE].installed
        _remove(first.tag)
        assert engine.image_id(first.tag) is None
        again = ensure_image(engine, env, plan, run_dir=workdir / "from-lock-2", nocache=True)
        print(f"from the lock: {first.tag} ({first.image_id[:19]}), after removal and a "
              f"build without cache: {again.tag} ({again.image_id[:19]}); notes: {again.notes}")
        assert again.built and again.tag == first.tag
        assert again.installed is not None
        assert again.installed.pip == lock.environments[TRIXIE].installed.pip
    finally:
        _remove(first.tag)


def test_an_edited_lock_with_a_version_that_does_not_exist_fails_the_build(
    engine: Engine, locked: Path, trixie_plan: Plan, workdir: Path
) -> None:
    edited_dir = workdir / "edited"
    edited_dir.mkdir()
    matrix = edited_dir / "two.yaml"
    shutil.copyfile(trixie_plan.source, matrix)
    text = locked.read_text()
    entry = "      onnxruntime:\n        version: 1.32.0\n"
    assert entry in text
    locks.lock_path(matrix).write_text(text.replace(entry, entry.replace("1.32.0", "1.99.0")))
    run = envmatrix_cli(["build", "--matrix", str(matrix), "--only", TRIXIE, "--out",
                         str(edited_dir / "run")], edited_dir, edited_dir / "run")
    assert run.code == 5, run.stderr
    flat = " ".join(run.stderr.split())
    assert "onnxruntime==1.99.0: not installable: " in flat
    assert "No matching distribution found for onnxruntime==1.99.0" in flat
