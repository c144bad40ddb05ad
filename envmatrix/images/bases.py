"""Base images: use what the engine has, else pull, else make one with debootstrap.

Hosts without a reachable registry (air-gapped, or like our CI) still get Debian/Ubuntu bases:
`debootstrap` writes a root filesystem from the distribution's package mirror and `docker import`
turns it into an image, labelled so `clean` knows envmatrix made it. debootstrap's own output is
streamed into the base's log and summarised as progress (its stage and the time so far).

A base may be pinned by digest (`debian@sha256:...`, `nvidia/cuda:12.4.1-runtime@sha256:...`):
it is looked up and pulled by that digest. `base_identity` is what the image tag hashes: the
image id, and the registry digests when the base was pulled (an imported base has none).
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

from envmatrix.errors import BaseImageError
from envmatrix.rundir.plan import Base, BaseIdentity, Bootstrap
from envmatrix.running.containers import BOOTSTRAP_LABEL, MANAGED_LABEL
from envmatrix.running.engine import EngineLike

Say = Callable[[str], None]
StageSay = Callable[[str, str], None]  # progress(stage, message)

DEBOOTSTRAP_TIMEOUT_S = 1800.0

# One bootstrap at a time: each downloads and unpacks a few hundred MB, and two threads asking
# for the same base must not both make it.
_BOOTSTRAP_LOCK = threading.Lock()


def lookup_ref(ref: str) -> str:
    """The reference to look up and pull: `repo@digest` when a digest pins it (a tag beside
    the digest only names it for people; the digest decides), else `ref` itself."""
    name, at, digest = ref.partition("@")
    if not at:
        return ref
    last = name.rsplit("/", 1)[-1]
    repo = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return f"{repo}@{digest}"


def base_identity(engine: EngineLike, base: Base) -> BaseIdentity:
    """The base's id and digests in the engine; BaseImageError when it is not there yet."""
    found = engine.image_identity(lookup_ref(base.image))
    if found is None:
        raise BaseImageError(
            f"Base image {base.image} (base {base.name!r}) is not in the engine, so the image "
            "tags that hash its id are not known yet. Fix: make the bases first "
            "(`nox -s build`, or `bases.ensure_base`)."
        )
    image_id, digests = found
    return BaseIdentity(base.image, image_id, digests)


def is_pinned(ref: str) -> bool:
    """Whether an image reference names its content (`repo@sha256:...`), not a moving tag."""
    return "@" in ref


def ensure_pinned(engine: EngineLike, bases: Iterable[Base], logs_dir: Path, say: StageSay) -> None:
    """Bases pinned by digest, before anything is built: one the registry cannot give stops
    the run (BaseImageError, exit 4) instead of failing its environments one by one."""
    for base in bases:
        if is_pinned(base.image):
            image_id = ensure_base(engine, base, log_path=logs_dir / f"base-{base.name}.log")
            say("base", f"{base.name}: {base.image} ({image_id})")


def ensure_base(engine: EngineLike, base: Base, *, log_path: Path,
                progress: Say | None = None) -> str:
    """The id of `base.image` in the engine, pulling or bootstrapping it when absent.

    A base pinned by digest is pulled or refused, never bootstrapped: a local root filesystem
    would be another image under the pinned name.
    """
    say = progress or (lambda message: None)
    ref = lookup_ref(base.image)
    image_id = engine.image_id(ref)
    if image_id is not None:
        return image_id
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _log(log_path, f"{base.image}: not in the engine; trying to pull {ref}")
    words = engine.pull_words(ref)
    found = None if words else engine.image_identity(ref)
    if found is not None:
        digests = ", ".join(found[1]) or "no digest"
        _log(log_path, f"{base.image}: pulled ({found[0]}, {digests})")
        say(f"pulled {base.image} ({digests})")
        return found[0]
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
            image_id = bootstrap_base(engine, base.image, base.bootstrap, log_path=log_path,
                                      progress=say)
    return image_id


def bootstrap_base(engine: EngineLike, ref: str, recipe: Bootstrap, *, log_path: Path,
                   progress: Say | None = None) -> str:
    """debootstrap a root filesystem, tar it and import it as `ref`; the temp files go."""
    say = progress or (lambda message: None)
    debootstrap, tar = _tools()
    scratch = Path(tempfile.mkdtemp(prefix="envmatrix-rootfs-"))
    try:
        rootfs, tarball = scratch / "rootfs", scratch / "rootfs.tar"
        command = [debootstrap, f"--variant={recipe.variant}", recipe.suite, str(rootfs)]
        if recipe.mirror:
            command.append(recipe.mirror)
        watch = DebootstrapProgress(lambda text: say(f"debootstrap {recipe.suite}: {text}"))
        say(f"{ref} is not in the engine and cannot be pulled: making it with debootstrap "
            f"{recipe.suite} (about a minute)")
        _run_logged(command, log_path, f"debootstrap of {recipe.suite} for {ref}", watch.feed)
        say(f"packing and importing the root filesystem ({watch.elapsed():.0f}s)")
        _run_logged([tar, "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."],
                    log_path, f"packing the {recipe.suite} root filesystem")
        labels = {MANAGED_LABEL: "true", BOOTSTRAP_LABEL: f"debootstrap:{recipe.suite}"}
        image_id = engine.import_rootfs(tarball, ref, labels)
        _log(log_path, f"{ref}: imported as {image_id} in {watch.elapsed():.0f} s")
        say(f"{ref} made in {watch.elapsed():.0f}s")
        return image_id
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- debootstrap's progress ------------------------------------------------------------------

# debootstrap prints "I: <what>" lines; these headers open its later stages.
_HEADERS = ("Installing core packages", "Unpacking required packages",
            "Configuring required packages", "Unpacking the base system",
            "Configuring the base system", "Base system installed successfully")
_LISTS = "reading the release and package lists"


def debootstrap_stage(line: str) -> tuple[str | None, str | None] | None:
    """(stage, item) of one line of debootstrap's output: the stage it starts (None: the
    current one goes on) and the package it names (None: none). None for a non-`I:` line."""
    if not line.startswith("I: "):
        return None
    text = line[3:].strip().rstrip(".").strip()
    for header in _HEADERS:
        if text.startswith(header):
            return header.lower(), None
    verb, _, rest = text.partition(" ")
    if verb in ("Retrieving", "Validating"):
        # "Retrieving apt 2.6.1" names a package and its version; "Retrieving Packages" a list.
        return ("retrieving packages", rest) if len(rest.split()) == 2 else (_LISTS, None)
    if verb in ("Checking", "Valid", "Resolving", "Found"):
        return _LISTS, None
    if verb in ("Chosen", "Extracting"):
        return "extracting packages", rest if verb == "Extracting" else None
    if verb in ("Unpacking", "Configuring"):
        return None, rest  # a package of the header's stage
    return None, None


class DebootstrapProgress:
    """Turns debootstrap's output into a few progress lines: one when a stage starts, then one
    every `heartbeat_s` while it lasts (a stage names hundreds of packages, one line each)."""

    def __init__(self, say: Say, *, heartbeat_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._say, self._clock, self._heartbeat_s = say, clock, heartbeat_s
        self.started = self._last = clock()
        self.stage: str | None = None
        self.items = 0
        self.item: str | None = None

    def elapsed(self) -> float:
        return self._clock() - self.started

    def feed(self, line: str) -> None:
        parsed = debootstrap_stage(line)
        if parsed is None:
            if line.startswith(("E: ", "W: ")):  # errors and warnings: always shown
                self._emit(line.strip())
            return
        stage, item = parsed
        if stage is not None and stage != self.stage:
            self.stage, self.items, self.item = stage, 0, None
            self._emit(stage)
        if item:
            self.items, self.item = self.items + 1, item
        if self.stage and self._clock() - self._last >= self._heartbeat_s:
            self._emit(f"{self.stage}: {self.items} so far ({self.item or 'working'})")

    def _emit(self, text: str) -> None:
        self._last = self._clock()
        self._say(f"{text} ({self._last - self.started:.0f}s)")


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


def _run_logged(command: list[str], log_path: Path, doing: str,
                on_line: Say | None = None) -> None:
    """Run a tool, its output appended line by line to the log (and handed to `on_line`)."""
    _log(log_path, "$ " + " ".join(command))
    with log_path.open("a", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            proc.kill()

        killer = threading.Timer(DEBOOTSTRAP_TIMEOUT_S, _kill)  # readline has no deadline
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            returncode = proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:  # Ctrl-C while reading: do not leave it running
                proc.kill()
                proc.wait()
    if timed_out.is_set():
        raise BaseImageError(f"{doing} took over {DEBOOTSTRAP_TIMEOUT_S:.0f} s; see {log_path}")
    if returncode != 0:
        raise BaseImageError(
            f"{doing} failed (exit {returncode}); see {log_path}. Check the suite name and "
            "the mirror (`bootstrap.mirror`), and that the package mirror can be reached."
        )


def _log(log_path: Path, line: str) -> None:
    with log_path.open("a", encoding="utf-8") as log:
        log.write(line + "\n")
