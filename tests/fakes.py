"""One engine without Docker for every test that drives a stage (`EngineLike`).

`FakeEngine` keeps an image store (ids with their facts, names pointing at ids), builds,
pulls, pushes, saves and loads like the engine does, keeps volumes and leftover containers,
and plays each container through a behaviour chosen by its cell. It records what a test may
ask about afterwards. Tests configure it with keyword arguments and small behaviours (the
common ones are here: a harness that measures, a segfault, Ctrl-C); the real engine is
exercised in tests/integration. `spy_execute` records the jobs the pipeline runs.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from envmatrix import pipeline
from envmatrix.errors import BuildStepError, EngineError
from envmatrix.progress import Progress
from envmatrix.rundir import results
from envmatrix.running.containers import CELL_LABEL, OUT_MOUNT, ContainerSpec
from envmatrix.running.engine import ContainerOutcome, EngineLike, ImageFacts
from envmatrix_harness import measure as harness_measure

# What one cell's container does: it gets its spec and the folder its /envmatrix/out is, writes
# there what the harness would, and returns how the container ended (or raises as engine.run).
Behaviour = Callable[[ContainerSpec, Path], ContainerOutcome]
# A container of no cell (the installed-set reader): it mounts nothing, its log is its answer.
Reader = Callable[[ContainerSpec], ContainerOutcome]

CONTAINER_ID = "c0ffee"
PULLED_ID = "sha256:pulled"  # what every pull that works gives
PUSHED_DIGEST = "sha256:" + "5" * 64  # what the registry answers every push with
NO_GPU_RUNTIME = {"runtimes": ["runc"], "default_runtime": "runc", "nvidia_runtime": False,
                  "cdi_spec_dirs": []}


def outcome(code: int | None, log: str = "", *, oom: bool = False,
            timed_out: bool = False) -> ContainerOutcome:
    """How a container ended, as the engine reports it (1.5 s each)."""
    return ContainerOutcome(exit_code=code, oom_killed=oom, timed_out=timed_out, duration_s=1.5,
                            log=log, container_id=CONTAINER_ID)


def arg(spec: ContainerSpec, flag: str) -> str:
    """The value after `flag` in a container's command."""
    return spec.command[spec.command.index(flag) + 1]


# -- behaviours: what a cell's container does --------------------------------------------------


def harness_doc(spec: ContainerSpec, p50: float = 0.004) -> dict[str, Any]:
    """What the harness writes for one round: one repeat per process it was asked for."""
    reps = [{"index": i, "session_create_s": 0.2, "first_inference_s": 0.01,
             "latencies_s": [p50 * f for f in (0.9, 1.0, 1.0, 1.1, 1.3)],
             "measure_wall_s": 5.3 * p50, "cpu_time_s": 0.1, "peak_rss_bytes": 1 << 20}
            for i in range(int(arg(spec, "--repeats")))]  # fmt: skip
    return {"schema": results.SCHEMA, "status": "ok", "cell": arg(spec, "--cell"),
            "settings": {"repeats": len(reps)}, "repeats": reps,
            "summary": harness_measure.summarize(reps),
            "provider": {"requested": "CPUExecutionProvider", "fallback": False}}  # fmt: skip


def harness_ok(spec: ContainerSpec, out: Path) -> ContainerOutcome:
    """The harness measured: its result (and outputs when asked for) in the out folder."""
    (out / PurePosixPath(arg(spec, "--out")).name).write_text(json.dumps(harness_doc(spec)))
    if "--save-outputs" in spec.command:
        (out / "outputs.npz").write_bytes(b"npz")
    return outcome(0, "measured\n")


def segfault(spec: ContainerSpec, out: Path) -> ContainerOutcome:
    return outcome(139, "Fatal Python error: Segmentation fault\n")


def interrupt(spec: ContainerSpec, out: Path) -> ContainerOutcome:
    raise KeyboardInterrupt


@dataclass(frozen=True)
class Build:
    tag: str
    requirements: str  # the context's build/locked-requirements.txt; "" when not locked


@dataclass
class FakeEngine:
    """An engine without Docker; every field may be set by the test that makes one."""

    behaviours: Mapping[str, Behaviour] = field(default_factory=dict)  # cell id -> its container
    reader: Reader | None = None  # containers of no cell
    images: dict[str, ImageFacts] = field(default_factory=dict)  # image id -> its facts
    tags: dict[str, str] = field(default_factory=dict)  # name -> image id
    leftovers: list[dict[str, str]] = field(default_factory=list)  # labels of stopped containers
    pull_fails: str | None = None  # the registry's words for every pull; None: pulls work
    push_fails: str | None = None  # the registry's words for every push
    build_fails: str | None = None  # pip's words for every build
    load_as: dict[str, str] = field(default_factory=dict)  # saved id -> the id its load gives
    lost_after: int | None = None  # stops answering after this many containers
    fill_fails: bool = False  # a volume cannot be filled (the disk is full)
    # -- what was asked --
    runs: list[ContainerSpec] = field(default_factory=list)  # as given, in order
    builds: list[Build] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)
    pushed: list[tuple[str, str]] = field(default_factory=list)  # (image, target)
    saved: dict[str, ImageFacts] = field(default_factory=dict)  # image id -> facts when saved
    loaded: list[str] = field(default_factory=list)
    swept: list[dict[str, str]] = field(default_factory=list)  # label filters of container sweeps
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> what filled it
    volume_log: list[str] = field(default_factory=list)  # fill NAME, remove NAME, sweep

    def __post_init__(self) -> None:
        for image_id, facts in self.images.items():
            self.tags.update({tag: image_id for tag in facts.tags})

    @classmethod
    def holding(cls, names: Mapping[str, str], **settings: Any) -> FakeEngine:
        """An engine with an image per name (name -> image id; a name may be the id itself)."""
        engine = cls(**settings)
        for name, image_id in names.items():
            engine.add_image(name, image_id)
        return engine

    # -- the store, for tests ------------------------------------------------------------------

    def add_image(self, ref: str, image_id: str, *, digests: tuple[str, ...] = (),
                  labels: Mapping[str, str] | None = None) -> None:
        """`ref` now names `image_id` (made when new); digests and labels replace its own."""
        facts = self.images.get(image_id) or ImageFacts(
            image_id=image_id, tags=(), repo_digests=(), parent="", created="",
            size_bytes=1000, layers=(), labels={})
        if digests:
            facts = dataclasses.replace(facts, repo_digests=digests)
        if labels:
            facts = dataclasses.replace(facts, labels=dict(labels))
        self.images[image_id] = facts
        if ref != image_id:
            self.tags[ref] = image_id

    def remove(self, image_id: str) -> None:
        """The image and every name of it are gone."""
        del self.images[image_id]
        self.tags = {tag: i for tag, i in self.tags.items() if i != image_id}

    def _find(self, ref: str) -> str | None:
        return ref if ref in self.images else self.tags.get(ref)

    # -- the machine ---------------------------------------------------------------------------

    def unreachable(self) -> str | None:
        lost = self.lost_after is not None and len(self.runs) >= self.lost_after
        return "connection refused" if lost else None

    def describe(self) -> dict[str, Any]:
        return {"info": {"NCPU": 2, "ServerVersion": "27.0"}, "version": {"Version": "27.0"}}

    def gpu_support(self) -> dict[str, Any]:
        return dict(NO_GPU_RUNTIME)

    # -- images --------------------------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        return self._find(ref)

    def image_identity(self, ref: str) -> tuple[str, tuple[str, ...]] | None:
        found = self._find(ref)
        return None if found is None else (found, self.images[found].repo_digests)

    def image_size(self, ref: str) -> int | None:
        found = self._find(ref)
        return None if found is None else self.images[found].size_bytes

    def image_facts(self, ref: str) -> ImageFacts | None:
        found = self._find(ref)
        if found is None:
            return None
        tags = tuple(tag for tag, i in self.tags.items() if i == found)
        return dataclasses.replace(self.images[found], tags=tags)

    def pull_words(self, ref: str) -> str | None:
        """A pull by digest gives that digest (a tag's gives none here)."""
        self.pulled.append(ref)
        if self.pull_fails is not None:
            return self.pull_fails
        self.add_image(ref, PULLED_ID, digests=(ref,) if "@" in ref else ())
        return None

    def import_rootfs(self, tar_path: Path, ref: str, labels: dict[str, str]) -> str:
        image_id = f"sha256:imported-{len(self.images)}"
        self.add_image(ref, image_id, labels=labels)
        return image_id

    def build(self, context_dir: Path, tag: str, *, dockerfile: str = "Dockerfile",
              labels: dict[str, str], buildargs: dict[str, str], log_path: Path,
              timeout_s: float, cancel: threading.Event | None = None,
              nocache: bool = False) -> str:
        locked = context_dir / "build" / "locked-requirements.txt"
        self.builds.append(Build(tag, locked.read_text() if locked.is_file() else ""))
        if self.build_fails:
            raise BuildStepError(f"Build of {tag} failed: {self.build_fails}", "tail",
                                 self.build_fails)
        image_id = f"sha256:built-{len(self.builds)}"
        self.add_image(tag, image_id, labels=labels)
        return image_id

    def push(self, image: str, target: str) -> str:
        if self.push_fails:
            raise EngineError(f"push of {target} failed: {self.push_fails}")
        self.pushed.append((image, target))
        return PUSHED_DIGEST

    def save_image(self, image_id: str, write: Callable[[bytes], object]) -> None:
        self.saved[image_id] = self.images[image_id]
        for _ in range(3):  # streamed in chunks
            write(f"tar of {image_id}\n".encode())

    def load_image(self, tar_path: Path) -> list[str]:
        image_id = tar_path.read_text().splitlines()[0].removeprefix("tar of ")
        given = self.load_as.get(image_id, image_id)
        # What a load brings back: id, layers, size; no tag, no registry digest, no parent.
        self.images[given] = dataclasses.replace(self.saved[image_id], image_id=given, tags=(),
                                                 repo_digests=(), parent="")
        self.loaded.append(given)
        return [given]

    def tag_image(self, image_id: str, ref: str) -> None:
        self.tags[ref] = image_id

    # -- containers ----------------------------------------------------------------------------

    def run(self, spec: ContainerSpec, *, timeout_s: float, log_path: Path | None = None,
            on_start: Callable[[str], None] | None = None,
            copy_out: Path | None = None) -> ContainerOutcome:
        if self.unreachable() is not None:
            raise ConnectionError("Connection aborted: the engine went away")
        self.runs.append(spec)
        if on_start is not None:
            on_start(CONTAINER_ID)
        cell = spec.labels.get(CELL_LABEL)
        if cell is None:
            assert self.reader is not None, f"no reader for a container of {spec.image}"
            ended = self.reader(spec)
        else:
            ended = self.behaviours[cell](spec, self._out_folder(spec, copy_out))
        if log_path is not None:
            log_path.write_text(ended.log)
        return ended

    def _out_folder(self, spec: ContainerSpec, copy_out: Path | None) -> Path:
        """Where the container's /envmatrix/out lands: the bind-mounted folder, or on an
        engine that does not share our paths the folder its scratch volume is copied into."""
        if spec.mount_type != "volume":
            return Path(next(src for src, dst, _ in spec.mounts if dst == str(OUT_MOUNT)))
        assert copy_out is not None, "a scratch volume that is not copied back"
        named = [src for src, _, _ in spec.mounts if src]
        assert all(name in self.volumes for name in named), f"unfilled volumes: {named}"
        return copy_out

    def remove_labelled_containers(
        self, label_filter: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None
    ) -> int:
        self.swept.append(dict(label_filter))
        before = len(self.leftovers)
        self.leftovers = [labels for labels in self.leftovers
                          if not label_filter.items() <= labels.items()
                          or (keep is not None and keep(labels))]
        return before - len(self.leftovers)

    # -- volumes -------------------------------------------------------------------------------

    def fill_volume(self, name: str, source: Path, *, image: str, target: str,
                    labels: dict[str, str]) -> None:
        self.volume_log.append(f"fill {name}")
        if self.fill_fails:
            raise EngineError("Docker engine error while copying: no space left on device")
        files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*"))
        self.volumes[name] = {"image": image, "target": target, "labels": labels, "files": files}

    def remove_volume(self, name: str) -> None:
        if self.unreachable() is not None:
            raise EngineError("No Docker engine answers while removing volume")
        self.volume_log.append(f"remove {name}")
        self.volumes.pop(name, None)

    def remove_labelled_volumes(
        self, label_filter: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None
    ) -> int:
        self.volume_log.append("sweep")
        gone = [name for name, made in self.volumes.items()
                if label_filter.items() <= made["labels"].items()
                and not (keep is not None and keep(made["labels"]))]
        for name in gone:
            del self.volumes[name]
        return len(gone)


_FAKE_IS_ENGINE_LIKE: type[EngineLike] = FakeEngine  # mypy holds the fake to the protocol


# -- the pipeline --------------------------------------------------------------------------------


def spy_execute(monkeypatch: pytest.MonkeyPatch) -> list[pipeline.Job]:
    """The jobs pipeline.execute ran (it still runs them)."""
    jobs: list[pipeline.Job] = []
    real = pipeline.execute

    def spy(job: pipeline.Job, progress: Progress) -> pipeline.Outcome:
        jobs.append(job)
        return real(job, progress)

    monkeypatch.setattr(pipeline, "execute", spy)
    return jobs
