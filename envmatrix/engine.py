"""The one module that talks to the Docker engine.

Everything else in envmatrix calls `Engine`; only this module imports `docker`, and it turns the
SDK's exceptions into `EngineError`, `BuildError` and `BaseImageError` whose messages say what to
do. Deadlines are enforced here with a monotonic clock because the SDK's own timeouts either leave
a container running (`wait`) or kill a build that is merely quiet (socket read timeouts).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from envmatrix.containers import BOOTSTRAP_LABEL, ContainerSpec, create_kwargs
from envmatrix.errors import BaseImageError, BuildError, EngineError
from envmatrix.toolwords import build_cause, clean

# Seconds a timed-out container gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 2
# Seconds we keep waiting for a timed-out build to notice its killed step before giving up on it.
BUILD_ABORT_GRACE_S = 60.0
LOG_TAIL_LINES = 40

_INSTALL_HINT = (
    "Start the Docker engine: as root run `scripts/install-engine.sh` (installs docker.io and "
    "starts dockerd), or `systemctl start docker`; or point DOCKER_HOST at a running engine."
)


@dataclass(frozen=True)
class ContainerOutcome:
    exit_code: int | None  # None when it never exited by itself (timeout / interrupted)
    oom_killed: bool
    timed_out: bool
    duration_s: float
    log: str  # combined stdout+stderr
    container_id: str


def _label_filters(label_filter: dict[str, str]) -> dict[str, list[str]]:
    return {"label": [f"{key}={value}" for key, value in sorted(label_filter.items())]}


def _engine_error(err: Exception, doing: str) -> EngineError:
    """One place that words an SDK failure: permission, absence, disk, or something else."""
    text = str(err)
    if "Permission denied" in text or isinstance(err, PermissionError):
        return EngineError(
            f"Docker engine refused us while {doing}: permission denied on its socket. "
            "Run as root or add your user to the `docker` group "
            "(`usermod -aG docker $USER`, then log in again)."
        )
    if "No such file or directory" in text or "Connection refused" in text:
        return EngineError(f"No Docker engine answers while {doing}. {_INSTALL_HINT}")
    if "no space left on device" in text.lower():
        return EngineError(
            f"The Docker engine ran out of disk while {doing}. Free space: run `nox -s clean` "
            "(removes envmatrix images) or `docker system prune`."
        )
    return EngineError(f"Docker engine error while {doing}: {text}")


class _BuildStream:
    """Consumes one build's JSON stream in a thread, so the caller can keep its own deadline.

    It appends every line to the log file as it arrives and remembers the container of the step
    that is running, which is what we kill when the deadline passes: the classic builder then
    fails that step and ends the build, and nothing keeps burning CPU after we gave up.
    """

    _RUNNING_IN = re.compile(r"Running in ([0-9a-f]{12,64})")

    def __init__(self, chunks: Iterator[dict[str, Any]], log_path: Path) -> None:
        self._chunks = chunks
        self._log_path = log_path
        # Raw text as it came: a progress bar redraws its line with '\r' over several chunks,
        # so lines are only cut (and cleaned) when the text is read.
        self._parts: list[str] = []
        self.image_id: str | None = None
        self.error: str | None = None
        self.failure: BaseException | None = None
        self.step_container: str | None = None
        self.thread = threading.Thread(target=self._consume, daemon=True)

    def _consume(self) -> None:
        try:
            with self._log_path.open("a", encoding="utf-8") as log:
                for chunk in self._chunks:
                    self._handle(chunk, log)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            self.failure = err

    def _handle(self, chunk: dict[str, Any], log: Any) -> None:
        text = chunk.get("stream") or chunk.get("status") or ""
        if "error" in chunk:
            self.error = str(chunk.get("error", "")).strip()
            text = f"ERROR: {self.error}\n"
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            self.image_id = str(aux["ID"])
        if text:
            log.write(text)
            log.flush()
            self._parts.append(text)
            match = self._RUNNING_IN.search(text)
            if match:
                self.step_container = match.group(1)

    def log_tail(self) -> str:
        """The last lines as plain text (no colour codes or redrawn progress bars)."""
        return "\n".join(clean(self.text()).rstrip().split("\n")[-LOG_TAIL_LINES:])

    def text(self) -> str:
        return "".join(self._parts)


class BuildStepError(BuildError):
    """A build step failed; `cause` is the failing tool's own line (`toolwords.build_cause`).

    Kept beside the engine because only the engine knows the builder's error; what reads
    `cause` (a cell's reason) needs it without the tag and log path that `str()` carries.
    """

    def __init__(self, message: str, log_tail: str, cause: str) -> None:
        super().__init__(message, log_tail)
        self.cause = cause


class Engine:
    """A connected Docker engine; create with `Engine.connect()`."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client

    # -- connection and images -------------------------------------------------------------

    @classmethod
    def connect(cls) -> Engine:
        try:
            client = docker.from_env()
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
            raise _engine_error(err, "connecting") from err
        return cls(client)

    def image_id(self, ref: str) -> str | None:
        try:
            return str(self._client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"looking up image {ref}") from err

    def image_identity(self, ref: str) -> tuple[str, tuple[str, ...]] | None:
        """(image id, registry digests `repo@sha256:...`) of `ref`; None when absent."""
        try:
            attrs = self._client.images.get(ref).attrs
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"inspecting image {ref}") from err
        return str(attrs.get("Id")), tuple(sorted(str(d) for d in attrs.get("RepoDigests") or ()))

    def pull(self, ref: str) -> bool:
        """Try a registry; False when none answers or the image is not there (no raise)."""
        try:
            self._client.images.pull(ref)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        return True

    def import_rootfs(self, tar_path: Path, ref: str, labels: dict[str, str]) -> str:
        """`docker import` of a root filesystem tarball, tagged `ref`, with labels."""
        repository, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        changes = [f'LABEL {key}="{value}"' for key, value in sorted(labels.items())]
        if not tar_path.is_file():  # the SDK would take a missing path for a URL to fetch
            raise BaseImageError(f"docker import: no root filesystem tarball at {tar_path}")
        try:
            self._client.api.import_image(
                src=str(tar_path), repository=repository, tag=tag or "latest", changes=changes
            )
        except docker.errors.DockerException as err:
            raise BaseImageError(f"docker import of {tar_path} as {ref} failed: {err}") from err
        image_id = self.image_id(ref)
        if image_id is None:
            raise BaseImageError(f"docker import of {tar_path} as {ref} left no image behind")
        return image_id

    # -- builds ------------------------------------------------------------------------------

    def build(
        self,
        context_dir: Path,
        tag: str,
        *,
        dockerfile: str = "Dockerfile",
        labels: dict[str, str],
        buildargs: dict[str, str],
        log_path: Path,
        timeout_s: float,
        cancel: threading.Event | None = None,
        nocache: bool = False,
    ) -> str:
        """Build with the classic builder; stream the log to log_path; return the image id.

        `cancel` lets another thread stop the build (Ctrl-C while builds run in parallel);
        `nocache` runs every step again (a rebuild that proves a lock reproduces).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"# envmatrix build of {tag} from {context_dir}\n", encoding="utf-8")
        try:
            chunks = self._client.api.build(
                path=str(context_dir),
                tag=tag,
                dockerfile=dockerfile,
                labels=labels,
                buildargs=buildargs,
                rm=True,
                forcerm=True,
                pull=False,
                nocache=nocache,
                decode=True,
                timeout=None,  # no socket read timeout: quiet steps are fine, our deadline rules
            )
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"starting the build of {tag}") from err
        stream = _BuildStream(chunks, log_path)
        stream.thread.start()
        self._wait_build(stream, tag, timeout_s, cancel or threading.Event())
        return self._build_result(stream, tag, log_path)

    def _wait_build(self, stream: _BuildStream, tag: str, timeout_s: float,
                    cancel: threading.Event) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            # Short joins so a cancel from another thread is seen within a second.
            while stream.thread.is_alive() and time.monotonic() < deadline and not cancel.is_set():
                stream.thread.join(min(1.0, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            self._abort_build(stream)
            raise
        if not stream.thread.is_alive():
            return
        self._abort_build(stream)
        if cancel.is_set():
            raise BuildError(f"Build of {tag} was cancelled.", stream.log_tail())
        raise BuildError(
            f"Build of {tag} took longer than {timeout_s:.0f} s and was stopped. Raise "
            "`measure.build_timeout_s` in the matrix file if the build is just slow.",
            stream.log_tail(),
        )

    def _abort_build(self, stream: _BuildStream) -> None:
        """Kill the running step's container until the builder gives up, for a bounded time."""
        give_up = time.monotonic() + BUILD_ABORT_GRACE_S
        while stream.thread.is_alive() and time.monotonic() < give_up:
            if stream.step_container:
                with contextlib.suppress(docker.errors.DockerException):
                    self._client.api.kill(stream.step_container)
            stream.thread.join(1.0)

    def _build_result(self, stream: _BuildStream, tag: str, log_path: Path) -> str:
        if stream.failure is not None:
            raise BuildError(
                f"Lost the build stream of {tag}: {stream.failure}. See {log_path}.",
                stream.log_tail(),
            )
        if stream.error is not None:
            cause = build_cause(stream.text(), stream.error) or stream.error
            raise BuildStepError(self._build_error_message(tag, stream.error, log_path, cause),
                                 stream.log_tail(), cause)
        image_id = self.image_id(tag)
        if image_id is None:
            raise BuildError(f"Build of {tag} ended without an image. See {log_path}.",
                             stream.log_tail())
        return image_id

    def _build_error_message(self, tag: str, error: str, log_path: Path, cause: str) -> str:
        """The cause in the failing tool's words (the builder's error repeats the whole RUN
        line and only says that it failed), then where the whole log is."""
        message = f"Build of {tag} failed: {cause} (full log: {log_path})."
        if "no space left on device" in error.lower():
            hint = self.disk_free_hint() or ""
            message += (f" The engine is out of disk{' (' + hint + ')' if hint else ''}: run "
                        "`nox -s clean` or `docker system prune`.")
        return message

    # -- containers ----------------------------------------------------------------------------

    def run(
        self,
        spec: ContainerSpec,
        *,
        timeout_s: float,
        log_path: Path | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> ContainerOutcome:
        """Create, start and wait for one container under our own deadline; always remove it."""
        container = self._create(spec)
        started = time.monotonic()
        try:
            container.start()
            if on_start is not None:
                on_start(container.id)
            timed_out = not self._wait_exit(container, started + timeout_s)
            if timed_out:
                self._stop(container)
            return self._outcome(container, timed_out, time.monotonic() - started, log_path)
        except KeyboardInterrupt:
            self._stop(container)
            with contextlib.suppress(docker.errors.DockerException):  # keep the log if we can
                self._outcome(container, True, time.monotonic() - started, log_path)
            raise
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"running a container of {spec.image}") from err
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)

    def _create(self, spec: ContainerSpec) -> Any:
        """The container of a spec, as envmatrix.containers words it for the SDK."""
        kwargs = create_kwargs(spec)
        kwargs["mounts"] = [docker.types.Mount(**mount) for mount in kwargs["mounts"]]
        try:
            return self._client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as err:
            raise EngineError(
                f"Image {spec.image} is not in the engine: build it first (`nox -s build`)."
            ) from err
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"creating a container of {spec.image}") from err

    @staticmethod
    def _wait_exit(container: Any, deadline: float) -> bool:
        """True when the container exited before the deadline. One blocking call, no polling:
        polling would steal CPU from the benchmark it waits for."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            container.wait(timeout=remaining)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            container.reload()
            return str(container.status) not in ("running", "created", "restarting")
        return True

    @staticmethod
    def _stop(container: Any) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            container.stop(timeout=STOP_GRACE_S)
        with contextlib.suppress(docker.errors.DockerException):
            container.kill()

    @staticmethod
    def _outcome(container: Any, timed_out: bool, duration_s: float,
                 log_path: Path | None) -> ContainerOutcome:
        raw = container.logs(stdout=True, stderr=True)
        log = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(log, encoding="utf-8")
        container.reload()
        state = container.attrs.get("State", {})
        return ContainerOutcome(
            exit_code=None if timed_out else int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled", False)),
            timed_out=timed_out,
            duration_s=duration_s,
            log=log,
            container_id=str(container.id),
        )

    # -- cleaning ------------------------------------------------------------------------------

    def remove_labelled_containers(
        self, label_filter: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None
    ) -> int:
        """Remove the containers carrying these labels, except those `keep(labels)` spares."""
        try:
            containers = self._client.containers.list(
                all=True, filters=_label_filters(label_filter)
            )
        except docker.errors.DockerException as err:
            raise _engine_error(err, "listing containers") from err
        removed = 0
        for container in containers:
            if keep is not None and keep(dict(container.labels or {})):
                continue
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
                removed += 1
        return removed

    def remove_labelled_images(self, label_filter: dict[str, str], *,
                               include_bases: bool = False) -> int:
        """Remove images carrying all the labels; an image still used by a container stays.

        Bootstrapped base images (label envmatrix.bootstrap) stay unless include_bases: they
        take a minute each to make again and no registry may be there to pull them from.
        """
        try:
            images = self._client.images.list(filters=_label_filters(label_filter))
        except docker.errors.DockerException as err:
            raise _engine_error(err, "listing images") from err
        removed = 0
        for image in images:
            if BOOTSTRAP_LABEL in (image.labels or {}) and not include_bases:
                continue
            try:
                self._client.images.remove(image.id, force=True)
                removed += 1
            except docker.errors.NotFound:
                continue  # removed meanwhile, e.g. as the parent of another one
            except docker.errors.APIError as err:
                if err.status_code != 409:  # 409: in use by a container; leave it
                    raise _engine_error(err, f"removing image {image.id}") from err
        return removed

    def disk_free_hint(self) -> str | None:
        """'12.3 GiB free on /var/lib/docker' when the engine's data folder is visible here."""
        try:
            root = str(self._client.info().get("DockerRootDir", ""))
        except docker.errors.DockerException:
            return None
        if not root or not os.path.isdir(root):
            return None
        free = shutil.disk_usage(root).free
        return f"{free / 2**30:.1f} GiB free on {root}"

    def image_size(self, ref: str) -> int | None:
        """The image's size in bytes as the engine reports it (None when absent)."""
        try:
            size = self._client.images.get(ref).attrs.get("Size")
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"inspecting image {ref}") from err
        return int(size) if isinstance(size, (int, float)) else None

    def image_labels(self, ref: str) -> dict[str, str]:
        """Labels of an image (empty when absent)."""
        try:
            attrs = self._client.images.get(ref).attrs
        except docker.errors.ImageNotFound:
            return {}
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"inspecting image {ref}") from err
        return dict((attrs.get("Config") or {}).get("Labels") or {})

    def image_history(self, ref: str) -> list[str]:
        """The `CreatedBy` of every layer, untruncated (what `docker history --no-trunc` shows)."""
        try:
            return [str(row.get("CreatedBy", "")) for row in self._client.images.get(ref).history()]
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"reading the history of {ref}") from err
