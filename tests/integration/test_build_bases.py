"""envmatrix.images.bases against the real engine and the real debootstrap."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import docker
import pytest

from envmatrix.errors import BaseImageError
from envmatrix.images.bases import ensure_base
from envmatrix.rundir.plan import Base, Bootstrap
from envmatrix.running.engine import Engine

pytestmark = pytest.mark.integration

needs_debootstrap = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("debootstrap") is None,
    reason="debootstrap (and root) needed: apt-get install debootstrap, run as root",
)


def _rootfs_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("envmatrix-rootfs-*")}


def test_present_base_is_used_as_is(engine: Engine, bookworm: str, tmp_path: Path) -> None:
    base = Base("bookworm", bookworm, "debian", Bootstrap("no-such-suite"))
    assert ensure_base(engine, base, log_path=tmp_path / "b.log") == engine.image_id(bookworm)


def test_absent_base_without_recipe_says_how_to_fix(engine: Engine, tmp_path: Path) -> None:
    base = Base("mine", "envmatrix-test/absent-base:never", "debian")
    with pytest.raises(BaseImageError, match="could not be pulled.*bootstrap"):
        ensure_base(engine, base, log_path=tmp_path / "b.log")


@needs_debootstrap
def test_failed_debootstrap_names_the_log_and_cleans_up(engine: Engine, tmp_path: Path) -> None:
    before = _rootfs_dirs()
    base = Base("bad", "envmatrix-test/bad-suite:1", "debian", Bootstrap("no-such-suite"))
    log = tmp_path / "base-bad.log"
    with pytest.raises(BaseImageError, match="debootstrap of no-such-suite .*failed") as info:
        ensure_base(engine, base, log_path=log)
    assert str(log) in str(info.value)
    assert "no-such-suite" in log.read_text()
    assert _rootfs_dirs() <= before


@pytest.mark.slow
@needs_debootstrap
def test_bootstrap_makes_a_labelled_working_base(engine: Engine, tmp_path: Path) -> None:
    ref = f"envmatrix-test/bookworm-bootstrap:{int(time.time())}"
    base = Base("fresh", ref, "debian", Bootstrap("bookworm"))
    before = _rootfs_dirs()
    said: list[str] = []
    try:
        image_id = ensure_base(engine, base, log_path=tmp_path / "base.log", progress=said.append)
        assert engine.image_id(ref) == image_id
        # debootstrap's stages with the time, at a sane rate (not one line per package).
        stages = [line for line in said if line.startswith("debootstrap bookworm: ")]
        # (minbase has nothing beyond the required set to configure: no "configuring the base
        # system" stage.)
        for stage in ("retrieving packages", "extracting packages", "installing core packages",
                      "unpacking required packages", "configuring required packages",
                      "unpacking the base system", "base system installed successfully"):
            assert any(line.startswith(f"debootstrap bookworm: {stage} (") for line in stages), said
        assert len(said) < 60, said
        labels = engine.image_labels(ref)
        assert labels == {"envmatrix.managed": "true",
                          "envmatrix.bootstrap": "debootstrap:bookworm"}
        assert "imported as" in (tmp_path / "base.log").read_text()
        assert _rootfs_dirs() <= before
    finally:
        # By reference: the label would also match the shared debian:bookworm base.
        if engine.image_id(ref) is not None:
            docker.from_env().images.remove(ref, force=True)
