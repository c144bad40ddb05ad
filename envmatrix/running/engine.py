"""The one module that talks to the Docker engine.

Everything else in envmatrix calls `Engine`; only this module imports `docker`, and it turns the
SDK's exceptions into `EngineError`, `BuildError` and `BaseImageError` whose messages say what to
do. Deadlines are enforced here with a monotonic clock because the SDK's own timeouts either leave
a container running (`wait`) or kill a build that is merely quiet (socket read timeouts).

Why it is long (over 600 lines): it is the one door to Docker by design, so every engine call
(images, containers, volumes, builds, pulls, pushes, save/load) and the translation of each SDK
error into our words sit here; split, the `docker` import and its error handling would spread.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Protocol

import docker
import docker.errors
import docker.tls
import docker.utils
import requests.exceptions

from envmatrix.errors import (  # BuildStepError: importers of the engine find it here too
    BaseImageError,
    BuildError,
    BuildStepError,
    EngineError,
    GpuUnavailableError,
    HostUnreachableError,
)
from envmatrix.running.containers import (
    BOOTSTRAP_LABEL,
    ContainerSpec,
    all_labels,
    create_kwargs,
    fresh_volumes,
)
from envmatrix.toolwords import build_cause, clean, gpu_unavailable

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


@dataclass(frozen=True)
class ImageFacts:
    """An image as the engine describes it: what an archive records and a restore compares."""

    image_id: str
    tags: tuple[str, ...]
    repo_digests: tuple[str, ...]  # registry digests: a pulled image has them, a loaded one not
    parent: str  # the local build's parent image; "" for pulled, imported or loaded images
    created: str
    size_bytes: int | None
    layers: tuple[str, ...]  # RootFS diff ids, base layers first
    labels: dict[str, str]


class EngineLike(Protocol):
    """What the stages call on an engine. `Engine` is the one that talks to Docker; the stages
    take any EngineLike, so tests drive them with a fake (tests/fakes.py). Connecting and
    `clean` need the real one and name `Engine` itself. The methods mean what `Engine`'s say."""

    # -- the machine --
    def unreachable(self) -> str | None: ...

    def describe(self) -> dict[str, Any]: ...

    def gpu_support(self) -> dict[str, Any]: ...

    # -- images --
    def image_id(self, ref: str) -> str | None: ...

    def image_identity(self, ref: str) -> tuple[str, tuple[str, ...]] | None: ...

    def image_size(self, ref: str) -> int | None: ...

    def image_facts(self, ref: str) -> ImageFacts | None: ...

    def pull_words(self, ref: str) -> str | None: ...

    def import_rootfs(self, tar_path: Path, ref: str, labels: dict[str, str]) -> str: ...

    def build(self, context_dir: Path, tag: str, *, dockerfile: str = "Dockerfile",
              labels: dict[str, str], buildargs: dict[str, str], log_path: Path,
              timeout_s: float, cancel: threading.Event | None = None,
              nocache: bool = False) -> str: ...

    def push(self, image: str, target: str) -> str: ...

    def save_image(self, image_id: str, write: Callable[[bytes], object]) -> None: ...

    def load_image(self, tar_path: Path) -> list[str]: ...

    def tag_image(self, image_id: str, ref: str) -> None: ...

    # -- containers and volumes --
    def run(self, spec: ContainerSpec, *, timeout_s: float, log_path: Path | None = None,
            on_start: Callable[[str], None] | None = None,
            copy_out: Path | None = None) -> ContainerOutcome: ...

    def remove_labelled_containers(
        self, label_filter: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None
    ) -> int: ...

    def fill_volume(self, name: str, source: Path, *, image: str, target: str,
                    labels: dict[str, str]) -> None: ...

    def remove_volume(self, name: str) -> None: ...

    def remove_labelled_volumes(
        self, label_filter: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None
    ) -> int: ...


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


def _raise_if_no_gpu(err: Exception, spec: ContainerSpec) -> None:
    """A GPU container refused for its GPUs: GpuUnavailableError with the engine's words."""
    words = str(getattr(err, "explanation", None) or err)
    if spec.gpus and gpu_unavailable(words):
        raise GpuUnavailableError(words) from err


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


def _owned_folder(name: str, user: str) -> bytes:
    """A tar of one folder entry `name/` owned by `user`. Put into the folder above a volume's
    mount point, it gives the volume's root that owner and mode: the engine applies an entry
    over an existing folder as metadata (it skips a "./" entry, so the entry must name the
    mount point from its parent). A user given by name (not uid:gid) gets an open folder
    (0777, like a bind-mounted scratch folder)."""
    uid, _, gid = user.partition(":")
    numeric = uid.isdigit() and (gid or uid).isdigit()
    entry = tarfile.TarInfo(f"{name}/")
    entry.type = tarfile.DIRTYPE
    entry.uid, entry.gid = (int(uid), int(gid or uid)) if numeric else (0, 0)
    entry.mode = 0o755 if numeric else 0o777
    entry.mtime = int(time.time())
    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w") as tar:
            tar.addfile(entry)
        spool.seek(0)
        return spool.read()


def _readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """An input file as the cells see it: root's, readable (folders enterable) by everyone."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _pack_folder(source: Path, archive: IO[bytes]) -> None:
    """The contents of a local folder as a tar (links followed: the engine's machine cannot
    follow a link to a path of this one)."""
    with tarfile.open(fileobj=archive, mode="w", dereference=True) as tar:
        tar.add(str(source), arcname=".", filter=_readable)


def _unpack_folder(archive: IO[bytes], top: str, dest: Path) -> None:
    """The regular files and folders under `top/` of a `get_archive` tar, written into dest.

    Links, devices and names that would leave the folder are skipped: the image under test
    wrote them, and nothing it writes may land outside the cell's scratch folder.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if len(parts) < 2 or parts[0] != top or ".." in parts:
                continue
            target = dest.joinpath(*parts[1:])
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is not None:
                    with source, target.open("wb") as out:
                        shutil.copyfileobj(source, out)


_PROBE_VERSION = "1.24"  # any version: the client is built without asking, then asks


@dataclass(frozen=True)
class Target:
    """Where an engine is (envmatrix.running.hosts makes one from a `hosts:` entry or a context).

    `base_url` None: the environment's engine (DOCKER_HOST, else the local socket). TLS files
    are read by the SDK from where the user keeps them. ssh:// goes through the `ssh` binary
    (`use_ssh_client`): the user's own ssh config, agent and keys apply, and no paramiko.
    """

    base_url: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True

    def client(self) -> docker.DockerClient:
        if self.base_url is None:
            return docker.from_env()
        tls: docker.tls.TLSConfig | bool = False
        if self.tls_cert and self.tls_key:
            tls = docker.tls.TLSConfig(client_cert=(self.tls_cert, self.tls_key),
                                       ca_cert=self.tls_ca, verify=self.tls_verify)
        ssh = self.base_url.startswith("ssh://")
        if not tls:
            return docker.DockerClient(base_url=self.base_url, use_ssh_client=ssh)
        # requests lets REQUESTS_CA_BUNDLE (set for TLS-inspecting proxies) override the
        # engine's own CA (psf/requests#3829): the session must not read the environment, so
        # the API version is asked only once that is switched off.
        client = docker.DockerClient(base_url=self.base_url, tls=tls, version=_PROBE_VERSION)
        client.api.trust_env = False
        client.api._version = client.api._retrieve_server_version()
        return client


def engine_words(err: BaseException) -> str:
    """The engine's (or ssh's, or TLS's) own words for a failure, on one line."""
    text = str(getattr(err, "explanation", None) or err) or type(err).__name__
    if "Install paramiko" in text:
        text += " (ssh:// hosts need it: `pip install 'envmatrix[ssh]'`)"
    return " ".join(text.split())


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

    @classmethod
    def connect_to(cls, target: Target, name: str) -> Engine:
        """The engine of one matrix host; HostUnreachableError with its own words if not."""
        try:
            client = target.client()
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                OSError) as err:
            raise HostUnreachableError(f"host {name} cannot be reached: {engine_words(err)}"
                                       ) from err
        return cls(client)

    def unreachable(self) -> str | None:
        """None while the engine answers a ping; else its (or the transport's) words."""
        try:
            self._client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException,
                OSError) as err:
            return engine_words(err)
        return None

    def describe(self) -> dict[str, Any]:
        """What the engine says about its machine (`docker info`, `docker version`)."""
        try:
            info, version = self._client.info(), self._client.version()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
            raise HostUnreachableError(engine_words(err)) from err
        return {"info": dict(info), "version": dict(version)}

    def image_id(self, ref: str) -> str | None:
        attrs = self._image_attrs(ref)
        return None if attrs is None else str(attrs["Id"])

    def _image_attrs(self, ref: str) -> dict[str, Any] | None:
        """What `docker image inspect` says of `ref`; None when the engine has no such image."""
        try:
            return dict(self._client.images.get(ref).attrs)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"inspecting image {ref}") from err

    def image_identity(self, ref: str) -> tuple[str, tuple[str, ...]] | None:
        """(image id, registry digests `repo@sha256:...`) of `ref`; None when absent."""
        attrs = self._image_attrs(ref)
        if attrs is None:
            return None
        return str(attrs.get("Id")), tuple(sorted(str(d) for d in attrs.get("RepoDigests") or ()))

    def pull(self, ref: str) -> bool:
        """Try a registry; False when none answers or the image is not there (no raise)."""
        return self.pull_words(ref) is None

    def pull_words(self, ref: str) -> str | None:
        """Pull `ref` (by tag, or by digest: `repo@sha256:...`) through the SDK, with the
        credentials of the user's docker config; None when it worked, else the engine's words.

        The SDK's `images.pull` drops an error that comes inside the stream; reading the
        stream here keeps the registry's own message ("manifest unknown", "unauthorized").
        """
        repository, tag = docker.utils.parse_repository_tag(ref)
        try:
            for chunk in self._client.api.pull(repository, tag=tag or "latest", stream=True,
                                               decode=True):
                if isinstance(chunk, dict) and chunk.get("error"):
                    return clean(str(chunk["error"])).strip()
        except docker.errors.APIError as err:
            return clean(str(err.explanation or err)).strip()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
            return clean(str(err)).strip()
        return None if self.image_id(ref) is not None else f"the pull of {ref} left no image"

    def repo_digests(self, ref: str) -> list[str]:
        """`repo@sha256:...` names a registry gave the image (empty for a local-only image)."""
        attrs = self._image_attrs(ref)
        return [str(d) for d in (attrs or {}).get("RepoDigests") or []]

    def push(self, image: str, target: str) -> str:
        """Tag `image` as `target` (registry/repo:tag), push it through the SDK and untag it
        again; returns the manifest digest the registry answered with.

        Credentials come from the user's docker config, read by the SDK itself: nothing here
        sees or keeps them.
        """
        repository, tag = docker.utils.parse_repository_tag(target)
        try:
            self._client.api.tag(image, repository, tag)
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"tagging {image} as {target}") from err
        try:
            return self._push_stream(repository, tag or "latest", target)
        finally:
            self.untag(target)

    def _push_stream(self, repository: str, tag: str, target: str) -> str:
        digest = None
        try:
            for chunk in self._client.api.push(repository, tag=tag, stream=True, decode=True):
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise EngineError(f"push of {target} failed: {clean(str(chunk['error']))}")
                aux = chunk.get("aux") if isinstance(chunk, dict) else None
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = str(aux["Digest"])
        except docker.errors.APIError as err:
            raise EngineError(f"push of {target} failed: {err.explanation or err}") from err
        except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
            raise _engine_error(err, f"pushing {target}") from err
        if digest is None:
            raise EngineError(f"push of {target} ended without a digest from the registry")
        return digest

    def untag(self, ref: str) -> None:
        """Remove one name of an image, never the image: a name that is its last is kept."""
        attrs = self._image_attrs(ref)
        if attrs is None:
            return
        names = list(attrs.get("RepoTags") or []) + list(attrs.get("RepoDigests") or [])
        if len(names) < 2:
            return
        try:
            self._client.images.remove(ref, noprune=True)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"removing the name {ref}") from err

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

    # -- save, load, tag (archive and restore) -----------------------------------------------

    def image_facts(self, ref: str) -> ImageFacts | None:
        """What `docker image inspect` says that a save/load may change (None: absent)."""
        attrs = self._image_attrs(ref)
        if attrs is None:
            return None
        size = attrs.get("Size")
        return ImageFacts(
            image_id=str(attrs.get("Id")), tags=tuple(attrs.get("RepoTags") or ()),
            repo_digests=tuple(attrs.get("RepoDigests") or ()),
            parent=str(attrs.get("Parent") or ""), created=str(attrs.get("Created") or ""),
            size_bytes=int(size) if isinstance(size, (int, float)) else None,
            layers=tuple((attrs.get("RootFS") or {}).get("Layers") or ()),
            labels=dict((attrs.get("Config") or {}).get("Labels") or {}))

    def save_image(self, image_id: str, write: Callable[[bytes], object]) -> None:
        """`docker save` of one image, streamed chunk by chunk into `write` (never in memory).

        Saved by id, so the tarball names no repository or tag: `load_image` then adds no tag
        and cannot move one that now names another image; the caller tags what it loaded.
        """
        try:
            for chunk in self._client.api.get_image(image_id):
                write(chunk)
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"saving image {image_id}") from err

    def load_image(self, tar_path: Path) -> list[str]:
        """`docker load` of a tarball, streamed from the file; the ids of the images it held."""
        try:
            with tar_path.open("rb") as handle:
                return [str(image.id) for image in self._client.images.load(handle)]
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"loading {tar_path.name}") from err

    def tag_image(self, image_id: str, ref: str) -> None:
        repository, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        try:
            self._client.api.tag(image_id, repository, tag or "latest")
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"tagging {image_id} as {ref}") from err

    def remove_image(self, ref: str) -> bool:
        """Remove one image or tag, never by force (an image in use stays); False when absent."""
        try:
            self._client.images.remove(ref)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"removing image {ref}") from err
        return True

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
        copy_out: Path | None = None,
    ) -> ContainerOutcome:
        """Create, start and wait for one container under our own deadline; always remove it.

        A spec with fresh volumes (a remote engine's scratch folder, containers.fresh_volumes)
        gets each as a new volume writable for its user, whose contents are copied into the
        local folder `copy_out` once the container ended (or timed out), before the container
        and the volume are removed.
        """
        fresh: dict[str, str] = {}  # container path -> the volume made for it
        try:
            self._make_fresh_volumes(spec, fresh)
            container = self._create(spec, fresh)
            try:
                return self._run_created(container, spec, timeout_s, log_path, on_start,
                                         copy_out)
            finally:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True, v=True)
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"running a container of {spec.image}") from err
        finally:
            for name in fresh.values():
                with contextlib.suppress(docker.errors.DockerException):
                    self._client.volumes.get(name).remove(force=True)

    def _make_fresh_volumes(self, spec: ContainerSpec, made: dict[str, str]) -> None:
        """A named volume for each fresh volume of the spec, labelled like its container, its
        root owned by the spec's user (the harness runs as 65534; a new volume's root is
        root's). The owner is set through a helper container of the spec's image that mounts
        the volume and is never started: the cell container's own root is read-only, so the
        folder above its mount point cannot take an archive. Names go into `made` as they are
        created, so the caller removes each one whatever happens next."""
        for path in fresh_volumes(spec):
            target = PurePosixPath(path)
            name = f"envmatrix-scratch-{uuid.uuid4().hex[:20]}"
            self._client.volumes.create(name=name, labels=all_labels(spec))
            made[path] = name
            helper = self._client.containers.create(
                spec.image, command=["true"], labels=all_labels(spec), network_mode="none",
                mounts=[docker.types.Mount(path, name, type="volume", no_copy=True)])
            try:
                helper.put_archive(str(target.parent), _owned_folder(target.name, spec.user))
            finally:
                with contextlib.suppress(docker.errors.DockerException):
                    helper.remove(force=True)

    def _run_created(self, container: Any, spec: ContainerSpec, timeout_s: float,
                     log_path: Path | None, on_start: Callable[[str], None] | None,
                     copy_out: Path | None) -> ContainerOutcome:
        started = time.monotonic()
        try:
            self._start(container, spec)
            if on_start is not None:
                on_start(container.id)
            timed_out = not self._wait_exit(container, started + timeout_s)
            if timed_out:
                self._stop(container)
            duration_s = time.monotonic() - started  # the copy back is not the cell's time
            if copy_out is not None:
                for path in fresh_volumes(spec):
                    self._copy_out(container, path, copy_out)
            return self._outcome(container, timed_out, duration_s, log_path)
        except KeyboardInterrupt:
            self._stop(container)
            with contextlib.suppress(docker.errors.DockerException):  # keep the log if we can
                self._outcome(container, True, time.monotonic() - started, log_path)
            raise

    @staticmethod
    def _copy_out(container: Any, path: str, dest: Path) -> None:
        """The folder `path` of a container (running or not) unpacked into `dest`."""
        chunks, _ = container.get_archive(path)
        with tempfile.TemporaryFile() as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            _unpack_folder(spool, PurePosixPath(path).name, dest)


    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container of a spec; its id. For inspecting what a spec asks
        of the engine (tests); the caller removes it (`remove_labelled_containers`)."""
        return str(self._create(spec).id)

    def container_attrs(self, container_id: str) -> dict[str, Any]:
        """`docker inspect` of one container."""
        try:
            return dict(self._client.api.inspect_container(container_id))
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"inspecting container {container_id}") from err

    def _create(self, spec: ContainerSpec, fresh: dict[str, str] | None = None) -> Any:
        """The container of a spec, as envmatrix.running.containers words it for the SDK; `fresh`
        names the volumes made for its fresh volumes (else the engine makes anonymous ones)."""
        kwargs = create_kwargs(spec)
        for mount in kwargs["mounts"]:
            if mount["target"] in (fresh or {}):
                mount.update(source=(fresh or {})[mount["target"]], labels=None)
        kwargs["mounts"] = [docker.types.Mount(**mount) for mount in kwargs["mounts"]]
        if kwargs["device_requests"] is not None:
            kwargs["device_requests"] = [docker.types.DeviceRequest(**request)
                                         for request in kwargs["device_requests"]]
        try:
            return self._client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as err:
            raise EngineError(
                f"Image {spec.image} is not in the engine: build it first (`nox -s build`)."
            ) from err
        except docker.errors.DockerException as err:
            _raise_if_no_gpu(err, spec)
            raise _engine_error(err, f"creating a container of {spec.image}") from err

    @staticmethod
    def _start(container: Any, spec: ContainerSpec) -> None:
        """Start; docker reports a GPU it cannot give here, not at create."""
        try:
            container.start()
        except docker.errors.DockerException as err:
            _raise_if_no_gpu(err, spec)
            raise

    def gpu_support(self) -> dict[str, Any]:
        """What the engine says about GPUs (`docker info`): its runtimes, the default one,
        whether an nvidia runtime is among them, and its CDI spec folders (Docker 25+).

        Recorded with every result; never used to skip a GPU cell: the engine's answer to the
        container itself is the truth (the NVIDIA toolkit can work through CDI or the default
        runtime's hook without any "nvidia" runtime listed)."""
        try:
            info = self._client.info()
        except docker.errors.DockerException as err:
            return {"error": str(err)}
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        return {
            "runtimes": runtimes,
            "default_runtime": info.get("DefaultRuntime"),
            "nvidia_runtime": any("nvidia" in name for name in runtimes),
            "cdi_spec_dirs": list(info.get("CDISpecDirs") or []),
        }

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
                container.remove(force=True, v=True)  # with a remote cell's scratch volume
                removed += 1
        return removed

    # -- volumes (engines that do not share this machine's paths) ---------------------------

    def fill_volume(self, name: str, source: Path, *, image: str, target: str,
                    labels: dict[str, str]) -> None:
        """Create the named volume `name` holding a copy of the local folder `source`.

        The copy goes through a helper container of `image` that mounts the volume at `target`
        and is never started (`put_archive` needs a container, not a running one; no command
        of the image runs). Files arrive owned by root and readable by everyone, as the bind
        mount showed them to the run user. The helper is removed whatever happens; the volume
        stays with the caller, who removes it (`remove_volume`).
        """
        try:
            self._client.volumes.create(name=name, labels=labels)
            helper = self._client.containers.create(
                image, command=["true"], labels=labels, network_mode="none",
                mounts=[docker.types.Mount(target, name, type="volume", no_copy=True)])
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"creating volume {name}") from err
        try:
            with tempfile.TemporaryFile() as archive:
                _pack_folder(source, archive)
                archive.seek(0)
                helper.put_archive(target, archive)
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"copying {source} into volume {name}") from err
        finally:
            with contextlib.suppress(docker.errors.DockerException):
                helper.remove(force=True)

    def remove_volume(self, name: str) -> None:
        """Remove a volume; one already gone is fine."""
        try:
            self._client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"removing volume {name}") from err

    def remove_labelled_volumes(
        self, label_filter: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None
    ) -> int:
        """Remove the volumes carrying these labels, except those `keep(labels)` spares and
        those a container still uses."""
        try:
            volumes = self._client.volumes.list(filters=_label_filters(label_filter))
        except docker.errors.DockerException as err:
            raise _engine_error(err, "listing volumes") from err
        removed = 0
        for volume in volumes:
            if keep is not None and keep(dict(volume.attrs.get("Labels") or {})):
                continue
            try:
                volume.remove()
                removed += 1
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as err:
                if err.status_code != 409:  # 409: in use by a container; leave it
                    raise _engine_error(err, f"removing volume {volume.name}") from err
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
        size = (self._image_attrs(ref) or {}).get("Size")
        return int(size) if isinstance(size, (int, float)) else None

    def image_labels(self, ref: str) -> dict[str, str]:
        """Labels of an image (empty when absent)."""
        attrs = self._image_attrs(ref) or {}
        return dict((attrs.get("Config") or {}).get("Labels") or {})

    def image_history(self, ref: str) -> list[str]:
        """The `CreatedBy` of every layer, untruncated (what `docker history --no-trunc` shows)."""
        try:
            return [str(row.get("CreatedBy", "")) for row in self._client.images.get(ref).history()]
        except docker.errors.DockerException as err:
            raise _engine_error(err, f"reading the history of {ref}") from err


if TYPE_CHECKING:  # mypy proves here that the real engine is what the stages take
    _ENGINE_IS_ENGINE_LIKE: type[EngineLike] = Engine
