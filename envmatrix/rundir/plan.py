"""The plan: the validated, expanded matrix that every stage after `config` works from.

`config` turns matrix.yaml into a `Plan` (with `expand`); `render`, `bases`, `images`, `runner`
and `report` read it and never look at YAML. Everything here is plain frozen data. A run
writes its plan to `matrix.resolved.yaml` with `plan_to_dict`, and whatever reads a run
directory back (report, compare, resume) gets the same typed objects from `plan_from_dict`:
one shape on the way in and on the way back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

PLAN_SCHEMA = "envmatrix.plan/1"

# The models envmatrix.inputs.zoo makes on the host: a workload's `model: zoo:<name>`.
ZOO_MODELS: tuple[str, ...] = ("cnn", "transformer", "mlp")
# Providers whose cells get GPUs from the engine (a device request); every other cell gets none.
GPU_PROVIDERS = ("cuda", "tensorrt")


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
    cuda: str | None = None  # CUDA version the base provides (checked by config.gpucompat)
    cudnn: str | None = None  # cuDNN version the base provides, likewise


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
    gpus: str | None = None  # GPUs of its GPU cells ("all", "0,1"); None: the measure's

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
    # Samples in one request: the first dimension of every input whose model-declared first
    # dimension is dynamic (zoo models are then written with one). None: the model's own
    # shapes (and `shapes:`), one sample per request.
    batch: int | None = None
    # The workload as declared in matrix.yaml: a declaration listing several backends or
    # batch sizes expands into one workload each (`cnn-torch`, `cnn-b8`), all of network
    # `cnn`; the report compares the cells of one network within each environment. "": name.
    network: str = ""

    @property
    def is_zoo(self) -> bool:
        return self.model.startswith("zoo:")

    @property
    def network_name(self) -> str:
        return self.network or self.name


@dataclass(frozen=True)
class Measure:
    warmup: int = 10  # untimed iterations after the first inference
    min_iterations: int = 50
    min_time_s: float = 1.0  # per process; the verdicts rely on repeats, not on long loops
    # Fresh processes per cell (one per round): 40 rounds detect 95% of 5% slowdowns at the
    # runtime's default threads on a 2-core VM (benchmarks/sensitivity.py, docs/report.md).
    # With `adaptive`, the most a comparison may take.
    repeats: int = 40
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
    gpus: str = "all"  # GPUs of cuda/tensorrt cells: "all" or indexes/UUIDs ("0,1")
    # Look at every comparison each `look_every` rounds and let a cell leave the rounds once
    # every comparison it takes part in is settled (analysis.sequential); False: every cell
    # runs every round, and each comparison is read once, at the end.
    adaptive: bool = True
    look_every: int = 8

    @property
    def round_count(self) -> int:
        """How many rounds (containers) each cell is measured in."""
        return self.repeats if self.rounds is None else self.rounds

    @property
    def looks_early(self) -> bool:
        """Can a cell leave the rounds before the budget (an adaptive run with a look before
        the last round)?"""
        return self.adaptive and self.look_every < self.round_count

    @property
    def repeats_per_round(self) -> int:
        """Fresh processes in each round's container; config checks that rounds divide repeats."""
        if not 1 <= self.round_count <= self.repeats or self.repeats % self.round_count:
            raise ValueError(f"measure.rounds={self.rounds} must divide measure.repeats="
                             f"{self.repeats} (1 <= rounds <= repeats)")
        return self.repeats // self.round_count


# What `--fail-on` / `verdict.fail_on` may name (envmatrix.gate says what each one matches).
FAIL_ON_WORDS = ("slower", "parity", "invalid")


@dataclass(frozen=True)
class VerdictSettings:
    """matrix.yaml `verdict:`: how sure and how big a change must be, and what fails a CI gate.

    Not part of a cell's config hash: these change what the report concludes from the
    numbers, never the numbers, so a report can be rebuilt with other settings.
    """

    alpha: float = 0.05  # the intervals are (1 - alpha) intervals, over all looks together
    min_effect: float = 0.02  # smaller changes are not called faster or slower
    # "equivalent" when the whole interval lies within +-equivalence (docs/report.md says how
    # the default was measured).
    equivalence: float = 0.05
    # "comparison": each verdict's error rate is alpha; "run": alpha for the whole run's
    # verdicts against the baseline together (Holm).
    error_rate: str = "comparison"
    fail_on: tuple[str, ...] = ()  # FAIL_ON_WORDS that make `matrix`/`report` exit 11
    # A warning when the requested provider ran less than this share of the compute nodes.
    min_node_share: float = 1.0


@dataclass(frozen=True)
class Knobs:
    """A cell's own settings that shape its numbers but not its image (docs: "Knobs").

    None / empty: the plan's `measure` (threads, cpuset, memory_limit) or the runtime's default.
    `session` holds onnxruntime session settings by name (graph_optimization, intra_op_threads,
    ..., and `config`: a mapping of session config entries), values as JSON types.
    """

    threads: int | None = None  # intra-op threads; OpenVINO cells: also num_of_threads
    cpuset: str | None = None
    memory_limit: str | None = None
    session: tuple[tuple[str, Any], ...] = field(default=(), hash=False)
    # Requests in flight on one session (1: single-stream; N > 1: a closed loop keeping N in
    # flight, MLPerf LoadGen's offline scenario). None: 1.
    concurrency: int | None = None

    @property
    def session_dict(self) -> dict[str, Any]:
        return dict(self.session)

    def to_dict(self) -> dict[str, Any]:
        """The settings that are set, as plain data (matrix.resolved.yaml, results)."""
        doc = {"threads": self.threads, "cpuset": self.cpuset, "memory_limit": self.memory_limit,
               "session": self.session_dict or None, "concurrency": self.concurrency}
        return {key: value for key, value in doc.items() if value is not None}


NO_KNOBS = Knobs()


@dataclass(frozen=True)
class Cell:
    id: str  # "<environment>--<workload>--<provider>[--<knob>...]"
    environment: Environment
    workload: Workload
    provider: str  # short name, key of PROVIDER_NAMES or a full onnxruntime provider name
    # Values are JSON types: text, numbers, booleans, mappings (OpenVINO's load_config).
    provider_options: tuple[tuple[str, Any], ...] = field(default=(), hash=False)
    # The GPUs the cell's container asks the engine for ("all", "0,1"); None for CPU cells.
    gpus: str | None = None
    knobs: Knobs = NO_KNOBS
    # The `hosts:` entry whose engine measures the cell; None: the local default engine.
    host: str | None = None

    def config_hash(self, measure: Measure) -> str:
        """Hash of everything that shapes this cell's numbers: stale results are refused.

        The GPU settings enter through the cell's own `gpus`, and only when it has GPUs: a CPU
        cell's hash neither changes with them nor differs from before they existed.
        """
        cell, settings = asdict(self), asdict(measure)
        cell["environment"].pop("gpus", None)
        settings.pop("gpus", None)
        # When to stop, not how a round measures: a round's numbers are the same either way.
        settings.pop("adaptive", None)
        settings.pop("look_every", None)
        # Keys added after results existed count only when set, so old hashes stay valid.
        for part, key in ((cell, "gpus"), (cell, "host"), (cell["environment"]["base"], "cudnn"),
                          (cell["workload"], "batch"), (cell["knobs"], "concurrency")):
            if part.get(key) is None:
                part.pop(key, None)
        if cell["workload"].get("network") in ("", self.workload.name):
            del cell["workload"]["network"]
        if self.knobs == NO_KNOBS:
            del cell["knobs"]  # cells that set nothing new keep the hash they always had
        doc = {"cell": cell, "measure": settings}
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def measure_for(self, measure: Measure) -> Measure:
        """The plan's measure with this cell's own threads, cpuset and memory limit."""
        own: dict[str, Any] = {"threads": self.knobs.threads, "cpuset": self.knobs.cpuset,
                               "memory_limit": self.knobs.memory_limit}
        return replace(measure, **{k: v for k, v in own.items() if v is not None})


@dataclass(frozen=True)
class Host:
    """A Docker engine of the matrix's `hosts:` (envmatrix.running.hosts connects to it).

    `address` is what the user wrote: a URL (unix://, tcp://, ssh://), `context:<name>`, or
    `default` (DOCKER_HOST or the local socket). The TLS fields are paths where the user keeps
    the files: they are read when connecting and never written into a run directory.
    """

    name: str
    address: str = "default"
    labels: tuple[tuple[str, str], ...] = ()
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    # The matrix's `shared_paths:`; None: decided from the address (hosts.shares_paths).
    shared_paths: bool | None = None

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


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
    host_wheels: tuple[str, ...] = ()  # packages whose pinned wheel the host's pip fetches
    pip_index_url: str | None = None  # None: pip's default index
    template_dir: str | None = None  # user template folder; None: the packaged dockerfiles/
    extra: dict[str, Any] = field(default_factory=dict)
    verdict: VerdictSettings = field(default_factory=VerdictSettings)
    hosts: tuple[Host, ...] = ()  # empty: the local default engine, as before hosts existed

    @property
    def multi_host(self) -> bool:
        """Cell ids, tables and results.csv name the host only when there is more than one."""
        return len(self.hosts) > 1

    def environment(self, env_id: str) -> Environment:
        for env in self.environments:
            if env.id == env_id:
                return env
        raise KeyError(env_id)

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise KeyError(cell_id)

    def cells_of(self, env_id: str) -> list[Cell]:
        return [c for c in self.cells if c.environment.id == env_id]



@dataclass(frozen=True)
class BaseIdentity:
    """What a base image is in the engine: the reference the matrix gives, the image id, and
    the registry digests (`repo@sha256:...`) when it was pulled; an imported base has none."""

    image: str
    id: str
    digests: tuple[str, ...] = ()

    @property
    def digest(self) -> str | None:
        return self.digests[0] if self.digests else None


@dataclass(frozen=True)
class ImageRecord:
    """The image an environment's cells ran in, as the run recorded it."""

    tag: str | None
    image_id: str | None
    size_bytes: int | None = None
    # The base it was built on; older run records lack these keys and read back as None.
    base_image: str | None = None
    base_id: str | None = None
    base_digest: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """The `run:` part of matrix.resolved.yaml: what this run added to the plan."""

    run_id: str = ""
    envmatrix_version: str = ""
    started_at: str = ""
    images: dict[str, ImageRecord] = field(default_factory=dict)  # environment id ->
    # host name -> {address, labels, fingerprint, images, error}: what each host said and built
    hosts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedPlan:
    """A run directory's plan read back: the `Plan` the run used and what the run recorded."""

    plan: Plan
    run: RunRecord
    # Each cell's config hash as the run wrote it: results are checked against what the run
    # recorded, so a later envmatrix that hashes more fields never calls old results stale.
    config_hashes: dict[str, str] = field(default_factory=dict)

    def config_hash(self, cell: Cell) -> str:
        return self.config_hashes.get(cell.id) or cell.config_hash(self.plan.measure)


# -- the resolved plan, both ways -----------------------------------------------------------


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-able data: the body of matrix.resolved.yaml (`envmatrix.plan/1`)."""
    configured = plan.extra.get("configured_build", {})
    return {
        "schema": PLAN_SCHEMA,
        "source": str(plan.source),
        "baseline": plan.baseline,
        "measure": asdict(plan.measure),
        "verdict": {**asdict(plan.verdict), "fail_on": list(plan.verdict.fail_on)},
        "build": {
            "ca_bundle": configured.get("ca_bundle", plan.ca_bundle),
            "ca_bundle_resolved": plan.ca_bundle,
            "wheelhouse": plan.wheelhouse,
            "host_wheels": list(plan.host_wheels),
            "pip_index_url": plan.pip_index_url,
            "template_dir": plan.template_dir,
            "offline": bool(plan.extra.get("offline", False)),
        },
        "model_export": dict(plan.extra.get("model_export", {})),
        "warnings": list(plan.extra.get("warnings", [])),
        "bases": [{
            "name": b.name, "image": b.image, "family": b.family,
            "bootstrap": asdict(b.bootstrap) if b.bootstrap else None,
            "python_source": b.python_source, "cuda": b.cuda, "cudnn": b.cudnn,
        } for b in plan.bases],
        "environments": [{
            "id": e.id, "base": e.base.name, "image": e.base.image, "python": e.python,
            "packages": dict(e.packages), "providers": list(e.providers), "env": dict(e.env),
            "description": e.description, "template": e.template, "gpus": e.gpus,
        } for e in plan.environments],
        "workloads": [{
            "name": w.name, "model": w.model, "backend": w.backend,
            "shapes": {name: list(dims) for name, dims in w.shapes},
            "values": dict(w.values), "inputs": w.inputs, "seed": w.seed,
            "description": w.description,
            **({"batch": w.batch} if w.batch is not None else {}),
            **({"network": w.network} if w.network not in ("", w.name) else {}),
        } for w in plan.workloads],
        "cells": [{
            "id": c.id, "environment": c.environment.id, "workload": c.workload.name,
            "provider": c.provider, "provider_options": dict(c.provider_options),
            "gpus": c.gpus,
            **({"knobs": c.knobs.to_dict()} if c.knobs != NO_KNOBS else {}),
            "config_hash": c.config_hash(plan.measure),
            **({"host": c.host} if c.host else {}),
        } for c in plan.cells],
        # Names, addresses and labels only: the TLS paths stay in matrix.yaml.
        **({"hosts": [{"name": h.name, "address": h.address, "labels": dict(h.labels),
                       **({"shared_paths": h.shared_paths} if h.shared_paths is not None
                          else {})}
                      for h in plan.hosts]} if plan.hosts else {}),
    }


def _pairs(mapping: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (mapping or {}).items()))


def _options(mapping: Any) -> tuple[tuple[str, Any], ...]:
    """Provider options as written: text stays text, typed values keep their type."""
    return tuple(sorted((str(k), v) for k, v in (mapping or {}).items()))


def _knobs(doc: Any) -> Knobs:
    doc = doc if isinstance(doc, dict) else {}
    return Knobs(threads=doc.get("threads"), cpuset=doc.get("cpuset"),
                 memory_limit=doc.get("memory_limit"),
                 session=tuple(sorted((doc.get("session") or {}).items())),
                 concurrency=doc.get("concurrency"))


def _base(doc: dict[str, Any]) -> Base:
    boot = doc.get("bootstrap")
    return Base(name=str(doc["name"]), image=str(doc["image"]), family=str(doc["family"]),
                bootstrap=Bootstrap(**boot) if boot else None,
                python_source=str(doc.get("python_source") or "system"), cuda=doc.get("cuda"),
                cudnn=doc.get("cudnn"))


def _environment(doc: dict[str, Any], bases: dict[str, Base]) -> Environment:
    return Environment(
        id=str(doc["id"]), base=bases[str(doc["base"])], python=str(doc["python"]),
        packages=_pairs(doc.get("packages")), providers=tuple(doc.get("providers") or ()),
        env=_pairs(doc.get("env")), description=str(doc.get("description") or ""),
        template=str(doc.get("template") or "default.Dockerfile.j2"), gpus=doc.get("gpus"))


def _workload(doc: dict[str, Any]) -> Workload:
    return Workload(
        name=str(doc["name"]), model=str(doc["model"]),
        backend=str(doc.get("backend") or "onnxruntime"),
        shapes=tuple(sorted((str(k), tuple(int(d) for d in v))
                            for k, v in (doc.get("shapes") or {}).items())),
        values=_pairs(doc.get("values")), inputs=doc.get("inputs"),
        seed=int(doc.get("seed") or 0), description=str(doc.get("description") or ""),
        batch=None if doc.get("batch") is None else int(doc["batch"]),
        network=str(doc.get("network") or ""))


def _measure(doc: Any) -> Measure:
    """The `measure:` part. A plan written before adaptive runs measured every cell in every
    round: it is read as what it was, a fixed budget with one look at the end."""
    doc = doc if isinstance(doc, dict) else {}
    return Measure(**{"adaptive": False, **doc})


def _verdict(doc: Any) -> VerdictSettings:
    """The `verdict:` part; plans written before it existed get the defaults."""
    doc = doc if isinstance(doc, dict) else {}
    default = VerdictSettings()
    return VerdictSettings(alpha=float(doc.get("alpha", default.alpha)),
                           min_effect=float(doc.get("min_effect", default.min_effect)),
                           fail_on=tuple(str(w) for w in doc.get("fail_on") or ()),
                           min_node_share=float(doc.get("min_node_share",
                                                        default.min_node_share)),
                           equivalence=float(doc.get("equivalence", default.equivalence)),
                           error_rate=str(doc.get("error_rate", default.error_rate)))


def _image_record(rec: dict[str, Any]) -> ImageRecord:
    return ImageRecord(**{key: rec.get(key) for key in ImageRecord.__dataclass_fields__})


def _run_record(doc: Any) -> RunRecord:
    doc = doc if isinstance(doc, dict) else {}
    images = {str(env_id): _image_record(rec or {})
              for env_id, rec in (doc.get("images") or {}).items()}
    return RunRecord(run_id=str(doc.get("run_id") or ""),
                     envmatrix_version=str(doc.get("envmatrix_version") or ""),
                     started_at=str(doc.get("started_at") or ""), images=images,
                     hosts=dict(doc.get("hosts") or {}))


def plan_from_dict(doc: dict[str, Any]) -> ResolvedPlan:
    """The inverse of `plan_to_dict` (plus the `run:` part): the typed plan a run used.

    Raises KeyError or TypeError on a document that is not a resolved plan; the caller that
    read the file words that for users (`planfile.read_resolved`).
    """
    bases = {b.name: b for b in (_base(d) for d in doc.get("bases") or [])}
    for env_doc in doc.get("environments") or []:  # plans of old runs may not list bases
        if env_doc["base"] not in bases:
            bases[env_doc["base"]] = Base(env_doc["base"], env_doc.get("image", "?"), "debian")
    envs = {e.id: e for e in (_environment(d, bases) for d in doc.get("environments") or [])}
    workloads = {w.name: w for w in (_workload(d) for d in doc.get("workloads") or [])}
    cells = tuple(
        Cell(id=str(c["id"]), environment=envs[str(c["environment"])],
             workload=workloads[str(c["workload"])], provider=str(c["provider"]),
             provider_options=_options(c.get("provider_options")), gpus=c.get("gpus"),
             knobs=_knobs(c.get("knobs")), host=c.get("host"))
        for c in doc.get("cells") or [])
    build = doc.get("build") or {}
    plan = Plan(
        source=Path(str(doc.get("source") or "matrix.yaml")),
        bases=tuple(bases.values()), environments=tuple(envs.values()),
        workloads=tuple(workloads.values()), measure=_measure(doc.get("measure")),
        baseline=str(doc["baseline"]), cells=cells,
        ca_bundle=build.get("ca_bundle_resolved"), wheelhouse=build.get("wheelhouse"),
        host_wheels=tuple(build.get("host_wheels") or ()),
        pip_index_url=build.get("pip_index_url"), template_dir=build.get("template_dir"),
        extra={"model_export": dict(doc.get("model_export") or {}),
               "offline": bool(build.get("offline", False)),
               "configured_build": {"ca_bundle": build.get("ca_bundle")},
               "warnings": list(doc.get("warnings") or [])},
        verdict=_verdict(doc.get("verdict")),
        hosts=tuple(Host(str(h["name"]), str(h.get("address") or "default"),
                         _pairs(h.get("labels")), shared_paths=h.get("shared_paths"))
                    for h in doc.get("hosts") or []))
    hashes = {str(c["id"]): str(c["config_hash"]) for c in doc.get("cells") or []
              if c.get("config_hash")}
    return ResolvedPlan(plan=plan, run=_run_record(doc.get("run")), config_hashes=hashes)
