"""The validated, expanded plan that every pipeline stage after `config` works from.

`config` turns matrix.yaml into a `Plan`; `render`, `bases`, `images`, `runner` and `report`
read it and never look at YAML. Everything here is plain frozen data, so a plan can be
written to `matrix.resolved.yaml` and compared across runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Provider short names users write in matrix.yaml -> onnxruntime's provider names.
PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


@dataclass(frozen=True)
class Bootstrap:
    """How to make a base image locally when it is absent and cannot be pulled."""

    suite: str  # debootstrap suite, e.g. "bookworm" or "jammy"
    mirror: str | None = None  # None: debootstrap's own default mirror
    variant: str = "minbase"


@dataclass(frozen=True)
class Base:
    name: str  # key in matrix.yaml `bases:`
    image: str  # image reference, e.g. "debian:bookworm", "nvidia/cuda:10.2-runtime-ubuntu18.04"
    family: str  # "debian" or "ubuntu": selects apt details in the template
    bootstrap: Bootstrap | None = None
    # "system": the distribution's python3; "image": the base already provides python (official
    # python images); "deadsnakes": pythonX.Y from the deadsnakes PPA (Ubuntu only).
    python_source: str = "system"
    cuda: str | None = None  # CUDA version the base provides, for the report and fingerprint


@dataclass(frozen=True)
class Environment:
    id: str  # stable slug, e.g. "bullseye-ort1.8.0"; image tag, file names, report rows
    base: Base
    python: str  # "system" or a version like "3.6" (needs python_source deadsnakes/image)
    packages: tuple[tuple[str, str], ...]  # exact pins (name, version), sorted by name
    providers: tuple[str, ...]  # short provider names, e.g. ("cpu", "openvino")
    env: tuple[tuple[str, str], ...] = ()  # environment variables set in the image
    description: str = ""
    template: str = "default.Dockerfile.j2"  # template file name inside the template folder

    @property
    def package_dict(self) -> dict[str, str]:
        return dict(self.packages)

    def runtime(self) -> tuple[str, str] | None:
        """The inference runtime under test: (package, version), or None."""
        for name in ("onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime", "torch"):
            if name in self.package_dict:
                return name, self.package_dict[name]
        return None


@dataclass(frozen=True)
class Workload:
    name: str  # slug used in cell ids
    model: str  # "zoo:<name>" for a generated model, or a path to a user .onnx file
    backend: str = "onnxruntime"  # or "torch" (TorchScript of a zoo model or a user .pt)
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # fixed dynamic dims per input
    values: tuple[tuple[str, str], ...] = ()  # fixed scalar values per input, as text
    inputs: str | None = None  # user .npz of input tensors (path), overrides generation
    seed: int = 0
    description: str = ""

    @property
    def is_zoo(self) -> bool:
        return self.model.startswith("zoo:")


@dataclass(frozen=True)
class Measure:
    warmup: int = 10  # untimed iterations after the first inference
    min_iterations: int = 50
    min_time_s: float = 1.0  # per process; the verdicts rely on repeats, not on long loops
    repeats: int = 20  # fresh processes per cell: 20 rounds detect 5% (docs/report.md)
    # Interleaved rounds: round 1 of every cell, then round 2 of every cell..., each round one
    # container running repeats/rounds processes, so that slow drift of the machine hits every
    # cell alike and the verdict can pair cells round by round. None: rounds = repeats.
    rounds: int | None = None
    threads: int | None = None  # intra-op threads; None = runtime default
    cpuset: str | None = None  # e.g. "0" or "0-1": CPU pinning of the container
    timeout_s: float = 600.0  # per cell, enforced on the host
    build_timeout_s: float = 1800.0  # per image build, enforced on the host
    memory_limit: str = "4g"
    pids_limit: int = 512

    @property
    def round_count(self) -> int:
        """How many rounds (containers) each cell is measured in."""
        return self.repeats if self.rounds is None else self.rounds

    @property
    def repeats_per_round(self) -> int:
        """Fresh processes in each round's container; config checks that rounds divide repeats."""
        if not 1 <= self.round_count <= self.repeats or self.repeats % self.round_count:
            raise ValueError(f"measure.rounds={self.rounds} must divide measure.repeats="
                             f"{self.repeats} (1 <= rounds <= repeats)")
        return self.repeats // self.round_count


@dataclass(frozen=True)
class Cell:
    id: str  # "<environment>--<workload>--<provider>"
    environment: Environment
    workload: Workload
    provider: str  # short name, key of PROVIDER_NAMES or a full onnxruntime provider name
    provider_options: tuple[tuple[str, str], ...] = ()

    def config_hash(self, measure: Measure) -> str:
        """Hash of everything that shapes this cell's numbers: stale results are refused."""
        doc = {"cell": asdict(self), "measure": asdict(measure)}
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    source: Path  # the matrix file
    bases: tuple[Base, ...]
    environments: tuple[Environment, ...]
    workloads: tuple[Workload, ...]
    measure: Measure
    baseline: str  # environment id
    cells: tuple[Cell, ...]
    ca_bundle: str | None = None  # path to a PEM bundle handed to pip in builds
    wheelhouse: str | None = None  # folder of wheels handed to pip in builds
    pip_index_url: str | None = None  # None: pip's default index
    template_dir: str | None = None  # user template folder; None: the packaged dockerfiles/
    extra: dict[str, Any] = field(default_factory=dict)

    def environment(self, env_id: str) -> Environment:
        for env in self.environments:
            if env.id == env_id:
                return env
        raise KeyError(env_id)
