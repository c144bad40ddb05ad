"""Base images: use what the engine has, else pull, else make one with debootstrap.

Hosts without a reachable registry (air-gapped, or like our CI) still get Debian/Ubuntu bases:
`debootstrap` writes a root filesystem from the distribution's package mirror and `docker import`
turns it into an image, labelled so `clean` knows envmatrix made it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from envmatrix.containers import BOOTSTRAP_LABEL, MANAGED_LABEL
from envmatrix.engine import Engine
from envmatrix.errors import BaseImageError
from envmatrix.plan import Base, Bootstrap

DEBOOTSTRAP_TIMEOUT_S = 1800.0
Say = Callable[[str, str], None]

# One bootstrap at a time: each downloads and unpacks a few hundred MB, and two threads asking
# for the same base must not both make it.
_BOOTSTRAP_LOCK = threading.Lock()


def is_pinned(ref: str) -> bool:
    """Whether an image reference names its content (`repo@sha256:...`), not a moving tag."""
    return "@" in ref


def ensure_pinned(engine: Engine, bases: Iterable[Base], logs_dir: Path, say: Say) -> None:
    """Bases pinned by digest, before anything is built: one the registry cannot give stops
    the run (BaseImageError, exit 4) instead of failing its environments one by one."""
    for base in bases:
        if is_pinned(base.image):
            image_id = ensure_base(engine, base, log_path=logs_dir / f"base-{base.name}.log")
            say("base", f"{base.name}: {base.image} ({image_id})")


def ensure_base(engine: Engine, base: Base, *, log_path: Path) -> str:
    """The id of `base.image` in the engine, pulling or bootstrapping it when absent.

    A base pinned by digest is pulled or refused, never bootstrapped: a local root filesystem
    would be another image under the pinned name.
    """
    image_id = engine.image_id(base.image)
    if image_id is not None:
        return image_id
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _log(log_path, f"{base.image}: not in the engine; trying to pull it")
    words = engine.pull_words(base.image)
    image_id = None if words else engine.image_id(base.image)
    if image_id is not None:
        digests = ", ".join(engine.repo_digests(base.image)) or "none"
        _log(log_path, f"{base.image}: pulled ({image_id}; registry digests: {digests})")
        return image_id
    _log(log_path, f"{base.image}: the pull failed: {words}")
    if is_pinned(base.image):
        raise BaseImageError(
            f"Base image {base.image} (base {base.name!r}) could not be pulled: {words}. A base "
            "pinned by digest is only ever pulled. Fix: check the digest (the registry lists "
            "a tag's digest: `docker pull REPO:TAG` prints it), that the registry answers and "
            "has the repository, and your login (`docker login REGISTRY`).")
    if base.bootstrap is None:
        raise BaseImageError(
            f"Base image {base.image} (base {base.name!r}) is not in the engine and could not be "
            "pulled, and the matrix gives no bootstrap recipe. Fix: add `bootstrap: {suite: ...}` "
            f"to base {base.name!r}, or pull/load the image yourself (`docker load`)."
        )
    with _BOOTSTRAP_LOCK:
        image_id = engine.image_id(base.image)  # another thread may have made it meanwhile
        if image_id is None:
            image_id = bootstrap_base(engine, base.image, base.bootstrap, log_path=log_path)
    return image_id


def bootstrap_base(engine: Engine, ref: str, recipe: Bootstrap, *, log_path: Path) -> str:
    """debootstrap a root filesystem, tar it and import it as `ref`; the temp files go."""
    debootstrap, tar = _tools()
    scratch = Path(tempfile.mkdtemp(prefix="envmatrix-rootfs-"))
    try:
        rootfs, tarball = scratch / "rootfs", scratch / "rootfs.tar"
        command = [debootstrap, f"--variant={recipe.variant}", recipe.suite, str(rootfs)]
        if recipe.mirror:
            command.append(recipe.mirror)
        started = time.monotonic()
        _run_logged(command, log_path, f"debootstrap of {recipe.suite} for {ref}")
        _run_logged([tar, "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."],
                    log_path, f"packing the {recipe.suite} root filesystem")
        labels = {MANAGED_LABEL: "true", BOOTSTRAP_LABEL: f"debootstrap:{recipe.suite}"}
        image_id = engine.import_rootfs(tarball, ref, labels)
        _log(log_path, f"{ref}: imported as {image_id} in {time.monotonic() - started:.0f} s")
        return image_id
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _tools() -> tuple[str, str]:
    if os.geteuid() != 0:
        raise BaseImageError(
            "Making a base image with debootstrap needs root. Fix: run envmatrix as root, or "
            "make/load the base image yourself (`docker load`, or `debootstrap` + `docker import`)."
        )
    debootstrap, tar = shutil.which("debootstrap"), shutil.which("tar")
    if debootstrap is None or tar is None:
        missing = "debootstrap" if debootstrap is None else "tar"
        raise BaseImageError(
            f"{missing} is not installed, so the base image cannot be made locally. Fix: "
            f"`apt-get install {missing}` (or run scripts/install-engine.sh), or load the image."
        )
    return debootstrap, tar


def _run_logged(command: list[str], log_path: Path, doing: str) -> None:
    _log(log_path, "$ " + " ".join(command))
    with log_path.open("a", encoding="utf-8") as log:
        try:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=DEBOOTSTRAP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as err:
            raise BaseImageError(f"{doing} took over {err.timeout:.0f} s; see {log_path}") from err
    if done.returncode != 0:
        raise BaseImageError(
            f"{doing} failed (exit {done.returncode}); see {log_path}. Check the suite name and "
            "the mirror (`bootstrap.mirror`), and that the package mirror can be reached."
        )


def _log(log_path: Path, line: str) -> None:
    with log_path.open("a", encoding="utf-8") as log:
        log.write(line + "\n")
