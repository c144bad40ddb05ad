"""The result file's shape (docs/result-schema.md, `envmatrix.result/1`) as types.

TypedDicts, not classes: a result stays the plain dict that was read or will be written, so
nothing changes at run time (the report rebuilds byte for byte) while mypy checks every key a
reader asks for. `total=False` throughout: results written before a field existed lack it,
and cells that never reached the harness hold null for whatever was not measured, so every
reader must cope with an absent or null field (the accessors below do it once).

Readers must ignore keys they do not know (the schema grows within version 1); keys nothing
in envmatrix reads are typed loosely or left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, Union

from envmatrix_harness import RESULT_SCHEMA

# The one definition is the harness's (it writes the measurement part); the host reads it.
SCHEMA = RESULT_SCHEMA


class Threads(TypedDict, total=False):
    intra_op_requested: int | None
    inter_op_requested: int | None
    intra_op_effective: int | None
    inter_op_effective: int | None
    alive_in_loop: int | None
    cpus_available: float | None


class GpuReadings(TypedDict, total=False):
    """`repeats[].gpu` (all keys) and `summary.gpu` (a subset): NVML's readings."""

    nvml: str
    nvml_index: int | None
    energy_method: str | None
    energy_per_inference_j: float | None
    mean_power_w: float | None
    power_samples: int | None
    energy_window_s: float | None
    memory_used_before_bytes: int | None
    memory_used_peak_bytes: int | None
    memory_samples: int | None
    runtime_peak_memory_bytes: int | None
    clocks_mhz: dict[str, dict[str, int | None]] | None
    errors: dict[str, str] | None


class Repeat(TypedDict, total=False):
    """One fresh process's measurement."""

    index: int
    round: int  # absent when the harness ran alone
    session_create_s: float | None
    first_inference_s: float | None
    latencies_s: list[float]
    measure_wall_s: float | None
    batch: int | None
    concurrency: int | None
    requests: int | None
    requests_per_s: float | None
    samples_per_s: float | None
    cpu_time_s: float | None
    cores_used: float | None
    cpu_per_inference_s: float | None
    cpu_per_sample_s: float | None
    import_s: float | None
    interpreter_start_s: float | None
    cold_start_s: float | None
    threads: Threads | None
    peak_rss_bytes: int | None
    engine_build_s: float | None
    gpu: GpuReadings | None


class Latencies(TypedDict, total=False):
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float


class Summary(TypedDict, total=False):
    """Over all repeats pooled; null unless the status is ok."""

    iterations: int
    latency_s: Latencies
    repeat_p50_s: list[float]
    throughput_per_s: float | None
    batch: int | None
    concurrency: int | None
    scenario: str
    requests_per_s: float | None
    samples_per_s: float | None
    cpu_per_sample_s: float | None
    session_create_s: float | None
    first_inference_s: float | None
    peak_rss_bytes: int | None
    cpu_time_s: float | None
    cores_used: float | None
    cpu_per_inference_s: float | None
    cold_start_s: float | None
    import_s: float | None
    threads: Threads | None
    engine_build_s: float | None
    gpu: GpuReadings | None


class PlacedNode(TypedDict, total=False):
    """A compute node that ran elsewhere than on the requested provider."""

    name: str | None
    op_type: str | None
    provider: str | None


class Provider(TypedDict, total=False):
    requested: str | None
    options: dict[str, Any]
    available: list[str] | None
    active: list[str] | None
    fallback: bool | None
    reason: str | None
    notes: list[str]
    node_placement: str | None  # "profiled" | "unavailable: <why>"
    nodes: dict[str, int] | None
    copy_nodes: int | None
    node_share: float | None
    fallback_nodes: list[PlacedNode] | None
    fallback_node_count: int | None
    options_passed: dict[str, str] | None
    options_in_force: dict[str, Any] | None
    engine_cache: dict[str, Any] | None


class TensorSpec(TypedDict, total=False):
    """An input or output as the runtime reports it (dynamic dims are text or null)."""

    name: str
    dtype: str
    shape: list[int | str | None]


class Model(TypedDict, total=False):
    path: str | None
    sha256: str | None
    ir_version: int | None
    opsets: dict[str, int] | None
    producer: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Settings(TypedDict, total=False):
    """What the harness was asked to do."""

    warmup: int
    min_iterations: int
    min_time_s: float
    repeats: int  # planned for the rounds it ran (a cell may leave an adaptive run early)
    rounds: int  # the rounds it ran
    rounds_planned: int  # the budget: the most rounds it could have run (measure.rounds)
    threads: int | None
    seed: int
    shapes: dict[str, list[int]]
    values: dict[str, Any]
    inputs_file: str | None
    provider_options: dict[str, Any]
    session: dict[str, Any]
    graph_optimization: str | None
    dtypes: dict[str, str]
    batch: int | None
    concurrency: int


class TensorDigest(TypedDict, total=False):
    """A tensor fed (`inputs`, with `source`) or produced (`outputs`), digested."""

    name: str
    dtype: str
    shape: list[int]
    sha256: str
    mean: float | None
    absmax: float | None
    source: str  # inputs only: "generated" | "file" | "value"


class CpuInfo(TypedDict, total=False):
    model: str | None
    flags: list[str]
    cores_visible: int | None
    cores_total: int | None
    affinity: list[int] | None


class Fingerprint(TypedDict, total=False):
    """What the container saw of itself (the harness's part)."""

    python: dict[str, str | None]
    os: dict[str, str | None]
    glibc: str | None
    cpu: CpuInfo
    cgroup: dict[str, Any]
    packages: dict[str, str | None]  # PEP 503 name -> version
    providers_available: list[str]
    gpu: list[dict[str, Any]] | None
    cuda: dict[str, Any] | None
    env: dict[str, str | None]
    image: dict[str, str | None]
    machine: str | None


class Stale(TypedDict):
    """What a stale result was before `load_results` replaced it by a skipped one."""

    status: str | None
    config_hash: str | None


class HostPart(TypedDict, total=False):
    """What the host adds: the engine's evidence and the identity --resume checks."""

    exit_code: int | None
    oom_killed: bool | None
    timed_out: bool | None
    signal: str | None
    duration_s: float | None
    run_id: str
    config_hash: str
    model_sha256: str | None
    inputs_sha256: str | None
    image_tag: str | None
    image_id: str | None
    requested_packages: dict[str, str]
    started_at: str | None
    finished_at: str | None
    container_id: str | None
    timeout_s: float | None
    memory_limit: str | None
    command: list[str]
    gpus: str | None
    engine_gpu: dict[str, Any] | None
    rounds: list[dict[str, Any]]  # per round: its container's evidence
    machine: dict[str, Any]  # multi-host runs: which host measured the cell
    interrupted: bool
    build_log: str
    run_log: str
    stale: Stale  # load_results: what a stale result was


class Result(TypedDict, total=False):
    """One cell's result file, `results/<cell>.json`; keys in the schema's order."""

    schema: str
    status: str  # results.STATUSES
    reason: str | None
    log_tail: str | None
    cell: str
    environment: str | None
    workload: str | None
    backend: str | None
    harness_version: str | None
    started_at: str | None
    finished_at: str | None
    provider: Provider | None
    model: Model | None
    settings: Settings | None
    session: dict[str, Any] | None
    inputs: list[TensorDigest] | None
    repeats: list[Repeat] | None
    summary: Summary | None
    outputs: list[TensorDigest] | None
    fingerprint: Fingerprint | None
    host: HostPart | None
    traceback: str | None


# What the analysis accepts: a Result, or a mapping from a caller that still holds its results
# as plain dicts (a TypedDict is such a mapping too, so this is as wide as Mapping[str, Any]);
# the accessors below turn either into typed parts.
ResultLike = Union[Result, Mapping[str, Any]]


def repeats_of(result: ResultLike) -> list[Repeat]:
    """The result's repeats, in the order measured (none when it has none)."""
    return result.get("repeats") or []


def timed_repeats(result: ResultLike) -> list[Repeat]:
    """The repeats (processes) that timed anything."""
    return [r for r in repeats_of(result) if r.get("latencies_s")]


def summary_of(result: ResultLike) -> Summary:
    return result.get("summary") or {}


def provider_of(result: ResultLike) -> Provider:
    return result.get("provider") or {}


def settings_of(result: ResultLike) -> Settings:
    return result.get("settings") or {}


def fingerprint_of(result: ResultLike) -> Fingerprint:
    return result.get("fingerprint") or {}


def host_of(result: ResultLike) -> HostPart:
    return result.get("host") or {}
