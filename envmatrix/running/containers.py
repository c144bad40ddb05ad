"""The container contract: what one cell container is, in one place.

A cell runs as user nobody (65534) with least privilege: no network, all capabilities dropped,
no-new-privileges, a read-only root with a tmpfs /tmp (HOME=/tmp), memory (without swap) and
pids limits and an optional cpuset, the run's inputs mounted read-only and one writable scratch
folder; never privileged, never the docker socket. On an engine that shares this machine's
paths both are bind mounts of the run directory; on a remote engine (envmatrix.running.hosts
decides) they are volumes of that engine: a named one holding a copy of the inputs, mounted
read-only, and a fresh one for the scratch folder, writable for the run user and copied back
before the container is removed (envmatrix.running.engine makes the volumes and does both
copies). A cell on a GPU provider (cuda, tensorrt) also asks the engine for GPUs (a device
request, what `docker run --gpus` sends); others never. The harness inside is started with
`harness_command`.

One `ContainerSpec` says all of that, and both of its renderings come from here: `create_kwargs`
(the keyword arguments of the SDK's `containers.create`, as plain data; envmatrix.running.engine
only turns mounts into SDK objects) and `run_argv` (the `docker run` a person types, which the
report prints). Keeping both beside each other is what keeps them saying the same thing.

This module must not import docker, directly or through another module: the report imports it
and has to stay importable (and byte-for-byte reproducible) without the SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from envmatrix.grammar import PROVIDER_NAMES
from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.plan import Cell, Measure

NOBODY = 65534
RUN_USER = f"{NOBODY}:{NOBODY}"

# Paths inside the images (dockerfiles/ puts the venv and the harness there).
VENV_PYTHON = "/opt/venv/bin/python"
HARNESS_HOME = "/opt/envmatrix"  # the harness package lives in HARNESS_HOME/harness
INPUTS_MOUNT = PurePosixPath("/envmatrix/inputs")
OUT_MOUNT = PurePosixPath("/envmatrix/out")
OUTPUTS_NAME = "outputs.npz"
# The only writable place besides the scratch mount; HOME points here.
TMPFS = {"/tmp": "rw,size=256m"}

# Labels. Whatever carries MANAGED_LABEL is ours: `clean` removes it, the start-up sweep removes
# such containers when their owner (host:pid) is gone.
MANAGED_LABEL = "envmatrix.managed"
MANAGED = {MANAGED_LABEL: "true"}
RUN_LABEL = "envmatrix.run"
CELL_LABEL = "envmatrix.cell"
OWNER_LABEL = "envmatrix.owner"
# On base images envmatrix made with debootstrap: `clean` keeps them unless asked (slow to redo).
BOOTSTRAP_LABEL = "envmatrix.bootstrap"

# The run directory as the printed reproduce command sees it: people run it from inside that
# folder, and the report then holds no path of the machine that measured.
REPRODUCE_ROOT = Path("$PWD")


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container; the defaults are the hardened benchmark run."""

    image: str
    command: list[str]
    name: str | None = None
    user: str = RUN_USER
    environment: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # (source, container, ro)
    # What the mounts' sources are. "bind": paths of the engine's machine. "volume": volumes of
    # the engine, by name; an empty name is a fresh volume for this container, labelled like
    # it (so `clean` finds a leftover) and removed with it (see `fresh_volumes`).
    mount_type: str = "bind"
    labels: dict[str, str] = field(default_factory=dict)
    # Whether the container also carries MANAGED_LABEL, so `clean` and the start-up sweep may
    # remove it. False only for containers a person starts by hand (the reproduce command): no
    # sweep may kill those mid-run.
    managed: bool = True
    network_disabled: bool = True
    read_only_root: bool = True
    tmpfs: dict[str, str] = field(default_factory=lambda: dict(TMPFS))
    cap_drop_all: bool = True
    no_new_privileges: bool = True
    mem_limit: str | None = "4g"
    pids_limit: int | None = 512
    cpuset_cpus: str | None = None
    working_dir: str | None = None
    # GPUs the engine must give the container: ("all",) or device indexes/UUIDs; None: none.
    gpus: tuple[str, ...] | None = None


def all_labels(spec: ContainerSpec) -> dict[str, str]:
    """The labels the container gets: the spec's, and MANAGED_LABEL when it is managed."""
    return {**MANAGED, **spec.labels} if spec.managed else dict(spec.labels)


def create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """The SDK's `containers.create(**kwargs)` for this spec; mounts as plain dicts of
    `docker.types.Mount`'s arguments. Keep in step with `run_argv` (tests/unit check it)."""
    return {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "user": spec.user,
        "environment": dict(spec.environment),
        "mounts": [_mount_kwargs(spec, src, dst, ro) for src, dst, ro in spec.mounts],
        "labels": all_labels(spec),
        "network_mode": "none" if spec.network_disabled else None,
        "read_only": spec.read_only_root,
        "tmpfs": dict(spec.tmpfs),
        "cap_drop": ["ALL"] if spec.cap_drop_all else None,
        "security_opt": ["no-new-privileges"] if spec.no_new_privileges else None,
        "mem_limit": spec.mem_limit,
        # Swap equal to the memory limit means no swap: an over-limit run is OOM-killed (and
        # reported so) instead of silently slowing down.
        "memswap_limit": spec.mem_limit,
        "pids_limit": spec.pids_limit,
        "cpuset_cpus": spec.cpuset_cpus,
        "working_dir": spec.working_dir,
        "device_requests": device_requests(spec.gpus),
    }


def _mount_kwargs(spec: ContainerSpec, src: str, dst: str, ro: bool) -> dict[str, Any]:
    """One mount as `docker.types.Mount`'s arguments (see ContainerSpec.mount_type)."""
    mount: dict[str, Any] = {"type": spec.mount_type, "source": src, "target": dst,
                             "read_only": ro}
    if spec.mount_type == "volume":
        # Nothing of the image is copied into a volume: the scratch one starts empty, and
        # the copy would also give its root the owner of the image's folder.
        mount["no_copy"] = True
        if not src:
            mount["labels"] = all_labels(spec)
    return mount


def fresh_volumes(spec: ContainerSpec) -> list[str]:
    """Container paths of the spec's fresh volumes (source ""): envmatrix.running.engine makes each
    one a new volume whose root the spec's user owns (an anonymous volume's root is root's,
    and the harness runs as 65534), copies it back after the end and removes it."""
    return [dst for src, dst, ro in spec.mounts if spec.mount_type == "volume" and not src]


def _mount_flags(spec: ContainerSpec, src: str, dst: str, ro: bool) -> list[str]:
    """`-v` for bind mounts (sources may be "$PWD/..."), `--mount` for volumes: it names the
    volume type and labels a fresh (anonymous) volume, which `-v` cannot. Only the SDK path
    makes a fresh volume's root writable for the run user; nobody is shown this form (the
    report prints the bind form, `reproduce_argv`)."""
    if spec.mount_type == "bind":
        return ["-v", f"{src}:{dst}:ro" if ro else f"{src}:{dst}"]
    parts = ["type=volume", *([f"source={src}"] if src else []), f"target={dst}"]
    if ro:
        parts.append("readonly")
    parts.append("volume-nocopy")
    if not src:
        parts += [f"volume-label={key}={value}" for key, value in all_labels(spec).items()]
    return ["--mount", ",".join(parts)]


def device_requests(gpus: tuple[str, ...] | None) -> list[dict[str, Any]] | None:
    """`docker.types.DeviceRequest` arguments for the GPUs, as `docker run --gpus` makes them:
    driver left to the engine, the "gpu" capability, count -1 for all or the ids given."""
    if not gpus:
        return None
    if gpus == ("all",):
        return [{"driver": "", "count": -1, "capabilities": [["gpu"]]}]
    return [{"driver": "", "device_ids": list(gpus), "capabilities": [["gpu"]]}]


def gpu_flag(gpus: tuple[str, ...]) -> str:
    """The value of `--gpus`: `all`, or `"device=0,1"` with its double quotes, which docker's
    CSV parser needs so the comma does not end the field (the shell needs the outer quotes)."""
    return "all" if gpus == ("all",) else '"device=' + ",".join(gpus) + '"'


def parse_gpus(text: str | None) -> tuple[str, ...] | None:
    """A matrix's `gpus:` text ("all", "0,1") as ContainerSpec.gpus; None stays None."""
    return tuple(part for part in text.split(",") if part) if text else None


def run_argv(spec: ContainerSpec) -> list[str]:
    """The `docker run` that creates the same container as `create_kwargs`; `--rm` stands for
    the removal engine.run always does. Bind mounts use `-v`, so sources may be "$PWD/..."."""
    argv = ["docker", "run", "--rm"]
    if spec.read_only_root:
        argv.append("--read-only")
    for path, options in spec.tmpfs.items():
        argv += ["--tmpfs", f"{path}:{options}" if options else path]
    if spec.name is not None:
        argv += ["--name", spec.name]
    argv += ["--user", spec.user]
    if spec.cap_drop_all:
        argv += ["--cap-drop", "ALL"]
    if spec.no_new_privileges:
        argv += ["--security-opt", "no-new-privileges"]
    if spec.network_disabled:
        argv += ["--network", "none"]
    if spec.pids_limit is not None:
        argv += ["--pids-limit", str(spec.pids_limit)]
    if spec.mem_limit is not None:
        argv += ["--memory", spec.mem_limit, "--memory-swap", spec.mem_limit]
    if spec.cpuset_cpus is not None:
        argv += ["--cpuset-cpus", spec.cpuset_cpus]
    if spec.gpus:
        argv += ["--gpus", gpu_flag(spec.gpus)]
    for key, value in spec.environment.items():
        argv += ["-e", f"{key}={value}"]
    if spec.working_dir is not None:
        argv += ["-w", spec.working_dir]
    for key, value in all_labels(spec).items():
        argv += ["--label", f"{key}={value}"]
    for src, dst, ro in spec.mounts:
        argv += _mount_flags(spec, src, dst, ro)
    return [*argv, spec.image, *spec.command]


# -- the cell container --------------------------------------------------------------------


def cell_spec(
    run_dir: RunDir,
    cell_id: str,
    *,
    image: str,
    image_id: str,
    command: Sequence[str],
    memory_limit: str | None,
    pids_limit: int | None,
    cpuset: str | None,
    owner: str | None = None,
    gpus: str | None = None,
    inputs_volume: str | None = None,
) -> ContainerSpec:
    """The least-privilege container of one cell (see the module docstring).

    `run_dir` is the run directory as the engine will see it: an absolute path for the runner,
    REPRODUCE_ROOT for the printed command. `inputs_volume` (a remote engine's volume holding
    the inputs) switches both mounts from bind mounts of run_dir to volumes. `gpus` is the
    cell's (`Cell.gpus`: "all", "0,1", or None for a CPU cell). `owner` (host:pid) lets the
    sweep spare live runs; a container without one is a person's (the printed command) and
    stays unmanaged, since the sweep removes managed containers whose owner is gone, and it
    would kill that one mid-run.
    """
    labels = {RUN_LABEL: run_dir.run_id, CELL_LABEL: cell_id}
    if owner is not None:
        labels[OWNER_LABEL] = owner
    return ContainerSpec(
        image=image,
        command=list(command),
        name=None,  # engine-chosen names: a leftover never blocks the next run
        user=RUN_USER,
        environment={"HOME": "/tmp", "ENVMATRIX_IMAGE_ID": image_id},
        mounts=_cell_mounts(run_dir, cell_id, inputs_volume),
        mount_type="bind" if inputs_volume is None else "volume",
        labels=labels,
        managed=owner is not None,
        network_disabled=True,
        read_only_root=True,
        tmpfs=dict(TMPFS),
        cap_drop_all=True,
        no_new_privileges=True,
        mem_limit=memory_limit,
        pids_limit=pids_limit,
        cpuset_cpus=cpuset,
        working_dir=HARNESS_HOME,
        gpus=parse_gpus(gpus),
    )


def _cell_mounts(run_dir: RunDir, cell_id: str, inputs_volume: str | None
                 ) -> list[tuple[str, str, bool]]:
    if inputs_volume is not None:  # "": a fresh anonymous volume for the scratch folder
        return [(inputs_volume, str(INPUTS_MOUNT), True), ("", str(OUT_MOUNT), False)]
    return [(str(run_dir.inputs_dir), str(INPUTS_MOUNT), True),
            (str(run_dir.scratch(cell_id)), str(OUT_MOUNT), False)]


def installed_spec(image: str, *, labels: Mapping[str, str] | None = None) -> ContainerSpec:
    """The short container that prints an image's installed set (`python -m harness.installed`,
    read by envmatrix.images.locks after each build): a cell's least privilege, no mounts at all."""
    return ContainerSpec(
        image=image,
        command=[VENV_PYTHON, "-m", "harness.installed"],
        environment={"HOME": "/tmp"},
        labels=dict(labels or {}),
        working_dir=HARNESS_HOME,
        mem_limit="512m",
        pids_limit=64,
    )


def reproduce_argv(run_id: str, cell_id: str, host: Mapping[str, Any], measure: Measure
                   ) -> list[str]:
    """The `docker run` of one cell as its result file recorded it (its `host` part), to be run
    from inside the run directory; the plan's measure fills limits an older result lacks.

    Always the bind-mount form, also for a cell measured on a remote engine through volumes:
    a person runs it on their own machine, inside the run directory, where `inputs/` and
    `scratch/` are plain folders.
    """

    image_id = str(host.get("image_id") or "")
    spec = cell_spec(
        RunDir(REPRODUCE_ROOT, run_id),
        cell_id,
        image=image_id or str(host.get("image_tag") or ""),
        image_id=image_id,
        command=[str(arg) for arg in host.get("command") or []],
        memory_limit=_text_or_none(host.get("memory_limit", measure.memory_limit)),
        pids_limit=_int_or_none(host.get("pids_limit", measure.pids_limit)),
        cpuset=_text_or_none(host.get("cpuset", measure.cpuset)),
        gpus=_text_or_none(host.get("gpus")),
    )
    return run_argv(spec)


def _text_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


# -- the harness inside it -----------------------------------------------------------------


def round_result_name(round_index: int) -> str:
    """The harness result file of one round (0-based) in the cell's scratch folder."""
    return f"round-{round_index}.json"


def container_path(run_dir: RunDir, host_path: Path) -> PurePosixPath:
    """Where a file under the run's inputs folder appears inside the container."""
    try:
        relative = host_path.resolve().relative_to(run_dir.inputs_dir.resolve())
    except ValueError:
        raise ValueError(
            f"{host_path} is not inside {run_dir.inputs_dir}: prepared inputs must live in the "
            f"run's inputs folder, which is the only one mounted into containers"
        ) from None
    return INPUTS_MOUNT / PurePosixPath(relative.as_posix())


def options_arguments(cell: Cell) -> list[str]:
    """Provider options and session settings, as data: text-only options keep today's
    `--provider-option KEY=VALUE`; typed ones (numbers, booleans, mappings) and the session
    settings travel as one JSON argument each. Containers run an argument list, never a
    shell, and the harness parses the JSON; nothing here is interpreted by a shell."""
    args: list[str] = []
    options = dict(cell.provider_options)
    if all(isinstance(v, str) for v in options.values()):
        for key, value in cell.provider_options:
            args += ["--provider-option", f"{key}={value}"]
    else:
        args += ["--provider-options-json", json.dumps(options, sort_keys=True)]
    if cell.knobs.session:
        args += ["--session-options", json.dumps(cell.knobs.session_dict, sort_keys=True)]
    return args


def harness_command(
    cell: Cell,
    measure: Measure,
    model: PurePosixPath,
    inputs: PurePosixPath,
    round_index: int = 0,
) -> list[str]:
    """The harness's command line for one round of a cell (paths as seen inside the container).

    Outputs are saved in the first round only: parity needs one copy, and every round computes
    the same outputs from the same inputs.
    """
    command = [
        VENV_PYTHON, "-m", "harness",
        "--model", str(model),
        "--backend", cell.workload.backend,
        "--inputs", str(inputs),
        "--seed", str(cell.workload.seed),  # recorded only: the inputs file holds the tensors
        "--provider", PROVIDER_NAMES.get(cell.provider, cell.provider),
    ]  # fmt: skip
    command += options_arguments(cell)
    command += [
        "--warmup", str(measure.warmup),
        "--min-iterations", str(measure.min_iterations),
        "--min-time", f"{measure.min_time_s:g}",
        "--repeats", str(measure.repeats_per_round),
    ]  # fmt: skip
    if measure.threads is not None:
        command += ["--threads", str(measure.threads)]
    if cell.workload.batch is not None:
        command += ["--batch", str(cell.workload.batch)]
    if cell.knobs.concurrency is not None:
        command += ["--concurrency", str(cell.knobs.concurrency)]
    command += [
        "--cell", cell.id,
        "--environment", cell.environment.id,
        "--workload", cell.workload.name,
        "--out", str(OUT_MOUNT / round_result_name(round_index)),
    ]  # fmt: skip
    if round_index == 0:
        command += ["--save-outputs", str(OUT_MOUNT / OUTPUTS_NAME)]
    return command
