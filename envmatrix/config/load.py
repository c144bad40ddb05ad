"""matrix.yaml (schema version 1): load, cross-check and expand into a `Plan`.

The stages, one module each: `envmatrix.yamlsrc` reads the YAML into plain data with the line
of every key path (the only module that imports `yaml`); `envmatrix.config.spec` validates shape and
grammar with pydantic models (strict allow-lists, `re.fullmatch`); the builder here cross-checks
what needs several parts of the file at once (bases, python sources, ids, runtimes, files) and
expands environments and workloads into cells. Every problem names the file, the line, the key
path and the fix; raw pydantic text never reaches users. docs/matrix-reference.md documents the
schema. The names tests and other modules use (`GRAMMARS`, the `*Spec` models, ...) are
re-exported here, so `envmatrix.config.load` stays the one import for matrix files.
"""

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

from envmatrix import grammar, yamlsrc
from envmatrix.config import expand, gpucompat, hosts, hostwheels, knobs
from envmatrix.config.cabundle import resolve_ca_bundle
from envmatrix.config.spec import (
    DEFAULT_TEMPLATE,
    GRAMMARS,
    REFERENCE,
    RESERVED_ENV,
    SCHEMA_VERSION,
    BaseSpec,
    BootstrapSpec,
    BuildSpec,
    EnvironmentSpec,
    MatrixEntrySpec,
    MatrixFile,
    MeasureSpec,
    ModelExportSpec,
    VerdictSpec,
    WorkloadSpec,
    validate,
)
from envmatrix.errors import ConfigError
from envmatrix.problems import (
    KeyPath,
    PlanError,
    Problem,
    did_you_mean,
    format_path,
    kind_of,
    unique,
)
from envmatrix.rundir import plan as planmod
from envmatrix.rundir.plan import Base, Bootstrap, Environment, Measure, Plan, Workload
from envmatrix.yamlsrc import MAX_FILE_BYTES, MAX_NODES, Doc

__all__ = [
    "DEFAULT_TEMPLATE", "GRAMMARS", "MAX_FILE_BYTES", "MAX_NODES",
    "REFERENCE", "RESERVED_ENV", "SCHEMA_FILE", "SCHEMA_VERSION", "BaseSpec", "BootstrapSpec",
    "BuildSpec", "ConfigWarning", "EnvironmentSpec", "MatrixEntrySpec", "MatrixFile", "Measure",
    "MeasureSpec", "ModelExportSpec", "VerdictSpec", "WorkloadSpec", "load_plan",
    "matrix_json_schema", "schema_text",
]

SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "matrix.schema.json"
CELL_ID_MAX = 200  # results/<cell>.json and logs/run-<cell>.round.log stay under 255 bytes


class ConfigWarning(UserWarning):
    """Something in the matrix is allowed but probably not what the user meant."""


# -- the builder: validated spec -> Plan ----------------------------------------------------


@dataclass
class _Draft:
    """One environment before it becomes an `Environment`, with where each value came from."""

    spec: EnvironmentSpec
    where: KeyPath
    origin: dict[tuple[str, ...], KeyPath]  # ("packages", "numpy") -> path in the file
    varied: tuple[str, ...] = ()  # non-runtime packages a matrix varies (they enter the id)
    varied_providers: bool = False  # a matrix varies providers (they enter the id)
    env_id: str = ""

    def path(self, *key: str) -> KeyPath:
        for depth in range(len(key), 0, -1):
            if key[:depth] in self.origin:
                return self.origin[key[:depth]]
        return self.where


class _Builder:
    def __init__(self, source: Path, data: dict[str, Any], spec: MatrixFile) -> None:
        self.source, self.data, self.spec = source, data, spec
        self.root = source.resolve().parent
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def check(self) -> None:
        if self.problems:
            raise PlanError(self.problems)

    # bases ---------------------------------------------------------------------------------

    def bases(self) -> dict[str, Base]:
        out = {}
        for name, spec in self.spec.bases.items():
            family = spec.resolved_family
            if spec.python_source == "deadsnakes" and family != "ubuntu":
                self.problems.append(Problem(
                    ("bases", name, "python_source"), "the deadsnakes PPA exists for Ubuntu only.",
                    "use an Ubuntu image (family: ubuntu), or python_source system/image."))
            boot = spec.bootstrap
            bootstrap = Bootstrap(boot.suite, boot.mirror, boot.variant) if boot else None
            out[name] = Base(name, spec.image, family, bootstrap, spec.python_source, spec.cuda,
                             spec.cudnn)
        return out

    # environments --------------------------------------------------------------------------

    def drafts(self) -> list[_Draft]:
        drafts: list[_Draft] = []
        for index, entry in enumerate(self.spec.environments):
            where: KeyPath = ("environments", index)
            try:
                if isinstance(entry, MatrixEntrySpec):
                    drafts += self._combinations(self.data["environments"][index], entry, where)
                else:
                    origin = expand.origin_of(self.data["environments"][index], where)
                    drafts.append(_Draft(entry, where, origin))
            except PlanError as err:
                self.problems += err.problems
        return drafts

    def _combinations(self, raw: dict[str, Any], entry: MatrixEntrySpec,
                      where: KeyPath) -> list[_Draft]:
        axes, include, exclude = expand.parse_matrix(raw, where)
        combos = expand.expand_matrix(axes, exclude, include, (*where, "matrix"))
        varied = tuple(sorted({k.split(".", 1)[1] for c in combos for k in c
                               if k.startswith("packages.")}))
        by_providers = any("providers" in c for c in combos)
        drafts, problems = [], []
        for combo in combos:
            merged, origin = expand.merge_combination(raw, combo, where)
            try:
                spec = validate(EnvironmentSpec, merged)
            except PlanError as err:
                problems += [Problem(expand.origin_path(origin, p.path, where), p.message, p.fix,
                                     p.at_key) for p in err.problems]
                continue
            drafts.append(_Draft(spec, where, origin, varied, by_providers))
        if problems:
            raise PlanError(unique(problems))
        return drafts

    def environments(self, drafts: list[_Draft], bases: Mapping[str, Base]) -> list[Environment]:
        """One Environment per id whose base exists; sets each draft's env_id. Drafts with one
        id and one environment that differ in knobs are that environment's variants."""
        pairs = []
        for draft in drafts:
            spec = draft.spec
            base = bases.get(spec.base)
            if base is None:
                self.problems.append(Problem(
                    draft.path("base"), f"unknown base {spec.base!r}"
                    f"{did_you_mean(spec.base, bases)}.",
                    f"use one of {', '.join(bases)}, or add it under bases:."))
                continue
            self._check_python(draft, base)
            draft.env_id = spec.id or expand.environment_id(
                spec.base, spec.python, spec.packages, draft.varied,
                spec.providers if draft.varied_providers else ())
            pairs.append((draft, Environment(
                id=draft.env_id, base=base, python=spec.python,
                packages=tuple(sorted(spec.packages.items())), providers=tuple(spec.providers),
                env=tuple(sorted(spec.env.items())), description=spec.description,
                template=spec.template, gpus=spec.gpus)))
        unique = self._check_ids(pairs)
        for draft, env in unique:
            other_index = bool(self.spec.build.pip_index_url)
            for key, message, fix in (*expand.check_environment(env),
                                      *gpucompat.check(env, other_index)):
                self.problems.append(Problem(draft.path(*key), f"environment {env.id}: {message}",
                                             fix))
            for note in (expand.numpy_warning(env), gpucompat.warning(env)):
                if note:
                    self.warnings.append(f"{self.source}: {note}")
        return [env for _, env in unique]

    def variants(self, drafts: list[_Draft], envs: Sequence[Environment]) -> knobs.Variants:
        """Each environment's variants (knobs), checked against the releases it pins."""
        found = knobs.Variants(Measure(**self.spec.measure.model_dump()))
        by_id = {env.id: env for env in envs}
        for draft in drafts:
            if draft.env_id in by_id:
                found.add(draft, by_id[draft.env_id])
        self.problems += found.problems
        self.warnings += [f"{self.source}: {note}" for note in found.warnings]
        return found

    def _check_python(self, draft: _Draft, base: Base) -> None:
        python, source = draft.spec.python, base.python_source
        if python != "system" and source != "deadsnakes":
            self.problems.append(Problem(
                draft.path("python"), f"base {base.name!r} (python_source {source}) provides only "
                f"its own python3, not python {python}.",
                "write python: system, or use an Ubuntu base with python_source: deadsnakes "
                "(or a python:X.Y image base with python_source: image)."))
        if python == "system" and source == "deadsnakes":
            self.problems.append(Problem(
                draft.path("python"), f"base {base.name!r} installs python from deadsnakes and "
                "needs a version.", 'write python: "3.8" (the version to install).'))

    def _check_ids(self, pairs: list[tuple[_Draft, Environment]]
                   ) -> list[tuple[_Draft, Environment]]:
        """The first draft of each id; a repeated id is an error unless both drafts make the
        same environment with different knobs (then they are two variants of it)."""
        seen: dict[str, tuple[_Draft, Environment]] = {}
        for draft, env in pairs:
            why = grammar.check_id(draft.env_id)
            if why:
                self.problems.append(Problem(draft.path("id"), why, "set a shorter id: with "
                                             "lower-case letters, digits and . _ -."))
            first, first_env = seen.setdefault(draft.env_id, (draft, env))
            if first is draft or (first_env == env and
                                  knobs.knob_key(first.spec) != knobs.knob_key(draft.spec)):
                continue
            same = " (another combination of this matrix)" if first.where == draft.where else ""
            self.problems.append(Problem(
                draft.path("id"), f"environment id {draft.env_id!r} is also the id of "
                f"{format_path(first.where)}{same}.",
                "add a distinct id: to one of them (for a matrix combination, an include "
                "entry with id:)."))
        return list(seen.values())

    def env_hosts(self, drafts: list[_Draft], machines: Sequence[planmod.Host]
                  ) -> dict[str, list[str]]:
        """Environment id -> the hosts its `hosts:` selects (all when omitted)."""
        out = {}
        for draft in drafts:
            names, found = hosts.select(draft.spec.hosts, machines, draft.path("hosts"))
            self.problems += found
            out[draft.env_id] = names
        return out

    # workloads -----------------------------------------------------------------------------

    def workloads(self) -> list[Workload]:
        allowed = [self.root, *self._model_dirs()]
        out = []
        for name, spec in self.spec.workloads.items():
            where: KeyPath = ("workloads", name)
            models: dict[str, str] = {
                backend: self._workload_model(spec.model, backend, where, allowed)
                for backend in spec.backend}
            inputs = spec.inputs and self._user_file(spec.inputs, (*where, "inputs"), allowed,
                                                     (".npz",))
            for backend, batch, own in self._expanded(name, spec, where):
                out.append(Workload(
                    name=own, model=models[backend], backend=backend,
                    shapes=tuple((k, tuple(v)) for k, v in sorted(spec.shapes.items())),
                    values=tuple(sorted(spec.values.items())), inputs=inputs or None,
                    seed=spec.seed, description=spec.description, batch=batch,
                    network="" if (spec.network or name) == own else (spec.network or name)))
        return out

    def _workload_model(self, model: str, backend: str, where: KeyPath,
                        allowed: Sequence[Path]) -> str:
        if model.startswith("zoo:"):
            self._check_zoo(model, (*where, "model"))
            return model
        suffixes = (".pt", ".pth") if backend == "torch" else (".onnx",)
        return self._user_file(model, (*where, "model"), allowed, suffixes)

    def _expanded(self, name: str, spec: WorkloadSpec, where: KeyPath
                  ) -> list[tuple[str, int | None, str]]:
        """(backend, batch, workload name) of each workload a declaration makes: a list of
        backends or batch sizes names each one after what it varies (cnn-torch, cnn-b8)."""
        tags = dict(expand.RUNTIME_TAGS)
        batches: list[int | None] = [*spec.batch] if spec.batch else [None]
        out: list[tuple[str, int | None, str]] = []
        for backend in spec.backend:
            for batch in batches:
                parts = [name]
                parts += [tags[backend]] if len(spec.backend) > 1 else []
                parts += [f"b{batch}"] if len(batches) > 1 else []
                out.append((backend, batch, "-".join(parts)))
        if len(spec.backend) > 1 and not spec.model.startswith("zoo:"):
            self.problems.append(Problem(
                (*where, "backend"), f"a list of backends needs a zoo model (it has a "
                f"TorchScript twin); {spec.model!r} is one file.",
                "declare one workload per file (.onnx and .pt) and give both the same network:."))
        taken = set(self.spec.workloads)
        for _, _, own in out:
            why = grammar.check_id(own)
            if own != name and (why or own in taken):
                self.problems.append(Problem(
                    where, f"workload {name!r} expands into {own!r}, "
                    f"{'which another workload is called' if own in taken else why}.",
                    "rename one of the workloads (a shorter name)."))
        return out

    def _model_dirs(self) -> list[Path]:
        dirs = []
        for index, text in enumerate(self.spec.model_dirs):
            folder = (self.root / text).resolve()
            if not folder.is_dir():
                self.problems.append(Problem(("model_dirs", index), f"{text!r} is not a folder.",
                                             "list existing folders that hold your models."))
            dirs.append(folder)
        return dirs

    def _check_zoo(self, model: str, where: KeyPath) -> None:
        name = model.split(":", 1)[1]
        if name not in planmod.ZOO_MODELS:
            self.problems.append(Problem(
                where, f"{model!r} is not in the zoo{did_you_mean(name, planmod.ZOO_MODELS)}.",
                f"use one of {', '.join('zoo:' + n for n in planmod.ZOO_MODELS)}, or a model "
                "file path."))

    def _user_file(self, text: str, where: KeyPath, allowed: Sequence[Path],
                   suffixes: tuple[str, ...]) -> str:
        """Absolute path of a user file that must stay inside the allowed folders."""
        full = (self.root / text).resolve()
        inside = any(full.is_relative_to(folder) for folder in allowed)
        if not inside:
            self.problems.append(Problem(
                where, f"{text!r} is outside the matrix file's folder ({self.root}).",
                "move the file next to the matrix file, or list its folder under model_dirs:."))
        elif not full.is_file():
            self.problems.append(Problem(where, f"file {text!r} does not exist "
                                         f"(looked for {full}).", "fix the path; relative paths "
                                         "start at the matrix file's folder."))
        elif full.suffix not in suffixes:
            self.problems.append(Problem(where, f"{text!r} is not a {' or '.join(suffixes)} "
                                         "file.", f"give a {' or '.join(suffixes)} file, or "
                                         "change backend:."))
        return str(full)

    # everything else -----------------------------------------------------------------------

    def check_model_export(self, envs: Sequence[Environment],
                           workloads: Sequence[Workload]) -> None:
        limits = expand.model_limits(envs)
        export = self.spec.model_export
        if not limits or not any(w.is_zoo for w in workloads):
            return
        max_ir, max_opset, env_id = limits
        for key, value, limit in (("ir_version", export.ir_version, max_ir),
                                  ("opset", export.opset, max_opset)):
            if value > limit:
                self.problems.append(Problem(
                    ("model_export", key), f"{key} {value} is newer than environment {env_id} "
                    f"reads (at most {limit}).", f"set model_export.{key}: {limit}."))

    def build_settings(self) -> dict[str, Optional[str]]:
        build = self.spec.build
        out = {"ca_bundle": self._ca_bundle(build.ca_bundle),
               "wheelhouse": self._folder(build.wheelhouse, "wheelhouse"),
               "template_dir": self._folder(build.template_dir, "template_dir")}
        if build.offline and not build.wheelhouse:
            self.problems.append(Problem(("build", "offline"), "offline builds install from the "
                                         "wheelhouse only, and none is set.",
                                         "set build.wheelhouse: to a folder of wheels."))
        return out

    def _folder(self, text: Optional[str], key: str) -> Optional[str]:
        if text is None:
            return None
        folder = (self.root / text).resolve()
        if not folder.is_dir():
            self.problems.append(Problem(("build", key), f"{text!r} is not a folder "
                                         f"(looked for {folder}).", "fix the path, or remove "
                                         "the key."))
        return str(folder)

    def _ca_bundle(self, text: Optional[str]) -> Optional[str]:
        if text is None:
            return None
        if text == "auto":
            found = resolve_ca_bundle()
            return str(found) if found else None
        full = (self.root / text).resolve()
        if not full.is_file():
            self.problems.append(Problem(("build", "ca_bundle"), f"{text!r} is not a file "
                                         f"(looked for {full}).", "point it at a PEM bundle, "
                                         "write auto, or null for none."))
        return str(full)

    def baseline(self, envs: Sequence[Environment]) -> str:
        ids = [e.id for e in envs]
        wanted = self.spec.baseline or ids[0]
        if wanted not in ids:
            self.problems.append(Problem(
                ("baseline",), f"baseline {wanted!r} is not an environment id"
                f"{did_you_mean(wanted, ids)}.", f"use one of {', '.join(ids)}."))
        return wanted

    def check_cells(self, envs: Sequence[Environment], workloads: Sequence[Workload],
                    cells: Sequence[Any]) -> None:
        used_envs = {c.environment.id for c in cells}
        used_workloads = {c.workload.name for c in cells}
        for env in envs:
            if env.id not in used_envs:
                self.problems.append(Problem(("environments",), f"environment {env.id} runs no "
                                     "workload (torch workloads need torch, onnxruntime ones an "
                                     "onnxruntime package).", "pin the runtime the workloads "
                                     "need, or remove the environment."))
        for wl in workloads:
            if wl.name not in used_workloads:
                self.problems.append(Problem(("workloads", wl.name, "backend"), f"workload "
                                     f"{wl.name} runs in no environment (backend {wl.backend}).",
                                     "add an environment with that runtime, or change backend:."))
        ids = [c.id for c in cells]
        for long in sorted(i for i in set(ids) if len(i) > CELL_ID_MAX):
            self.problems.append(Problem(("environments",), f"cell id {long[:80]!r}... is "
                                 f"longer than {CELL_ID_MAX} characters (it names files).",
                                 "vary fewer knobs in one environment, or give it a shorter "
                                 "id:."))
        for repeated in sorted({i for i in ids if ids.count(i) > 1}):
            self.problems.append(Problem(("environments",), f"two cells share the id "
                                 f"{repeated!r}: their knob values read alike in ids (letter "
                                 "case, or a value longer than an id word).", "make the values "
                                 "differ in more than letter case, or give the environments "
                                 "distinct ids."))
        declared = set(self.spec.bases)
        unused = sorted(declared - {e.base.name for e in envs})
        if unused:
            self.warnings.append(f"{self.source}: bases {', '.join(unused)} are declared but no "
                                 "environment uses them. Fix: remove them or use them.")


# -- public API -----------------------------------------------------------------------------


def load_plan(path: Union[Path, str], *, only: Optional[list[str]] = None,
              skip: Optional[list[str]] = None) -> Plan:
    """Read, validate and expand a matrix file; `only`/`skip` are globs on env and cell ids.

    Raises ConfigError whose message names the file, the line, the key path and the fix.
    """
    source = Path(path)
    doc = yamlsrc.read_with_lines(source)
    try:
        return _build(source, doc, only, skip)
    except PlanError as err:
        raise ConfigError(_format(source, doc, err.problems)) from None


def _build(source: Path, doc: Doc, only: Optional[list[str]],
           skip: Optional[list[str]]) -> Plan:
    if not isinstance(doc.data, dict):
        raise PlanError([Problem((), f"the file holds {kind_of(doc.data)}, not a mapping.",
                                         "start with `version: 1`, then bases:, environments: "
                                         "and workloads: (see matrix.yaml).")])
    builder = _Builder(source, doc.data, validate(MatrixFile, doc.data))
    bases = builder.bases()
    drafts = builder.drafts()
    envs = builder.environments(drafts, bases)
    builder.check()
    workloads = builder.workloads()
    builder.check_model_export(envs, workloads)
    settings = builder.build_settings()
    builder.problems.extend(hostwheels.problems(envs, builder.spec.build.host_wheels))
    baseline = builder.baseline(envs)
    variants = builder.variants(drafts, envs)
    cells = expand.make_cells(envs, workloads, variants=variants.by_env,
                              gpus=builder.spec.measure.gpus)
    builder.check_cells(envs, workloads, cells)
    machines = hosts.plan_hosts(builder.spec.hosts, builder.root)
    cells = hosts.spread(cells, builder.env_hosts(drafts, machines), machines)
    builder.check()
    plan = _selected_plan(builder, envs, workloads, cells, baseline, settings, only, skip)
    return replace(plan, hosts=tuple(h for h in machines if any(c.host == h.name
                                                                for c in plan.cells)))


def _selected_plan(builder: _Builder, envs: Sequence[Environment],
                   workloads: Sequence[Workload], cells: Sequence[Any], baseline: str,
                   settings: Mapping[str, Optional[str]], only: Optional[list[str]],
                   skip: Optional[list[str]]) -> Plan:
    if only is not None or skip is not None:
        cells = expand.select(cells, only, skip)
    kept_envs = [e for e in envs if any(c.environment.id == e.id for c in cells)]
    if baseline not in {e.id for e in kept_envs}:
        builder.warnings.append(f"baseline {baseline} is not selected; comparing against "
                                f"{kept_envs[0].id} instead.")
        baseline = kept_envs[0].id
    for note in builder.warnings:
        warnings.warn(note, ConfigWarning, stacklevel=3)
    spec = builder.spec
    base_names = {e.base.name for e in kept_envs}
    bases = {e.base.name: e.base for e in envs}
    return Plan(
        source=builder.source,
        bases=tuple(bases[name] for name in spec.bases if name in base_names),
        environments=tuple(kept_envs),
        workloads=tuple(w for w in workloads if any(c.workload.name == w.name for c in cells)),
        measure=Measure(**spec.measure.model_dump()),
        verdict=planmod.VerdictSettings(
            alpha=spec.verdict.alpha, min_effect=spec.verdict.min_effect,
            equivalence=spec.verdict.equivalence, error_rate=spec.verdict.error_rate,
            fail_on=tuple(spec.verdict.fail_on), min_node_share=spec.verdict.min_node_share),
        baseline=baseline,
        cells=tuple(cells),
        ca_bundle=settings["ca_bundle"],
        wheelhouse=settings["wheelhouse"],
        host_wheels=tuple(spec.build.host_wheels),
        pip_index_url=spec.build.pip_index_url,
        template_dir=settings["template_dir"],
        extra={
            "model_export": spec.model_export.model_dump(),
            "offline": spec.build.offline,
            "configured_build": {"ca_bundle": spec.build.ca_bundle},
            "warnings": list(builder.warnings),
        },
    )


def _format(source: Path, doc: Doc, problems: Sequence[Problem]) -> str:
    blocks = [f"{source}:{doc.line(p.path, p.at_key)}: {format_path(p.path)}: "
              f"{p.message}\n  Fix: {p.fix}" for p in unique(problems)]
    if len(blocks) == 1:
        return blocks[0]
    return f"{source}: {len(blocks)} problems:\n" + "\n".join(blocks)


def matrix_json_schema() -> dict[str, Any]:
    """JSON schema of matrix.yaml for editors (the committed file must equal this)."""
    schema = MatrixFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "envmatrix matrix.yaml, version 1", **schema}


def schema_text() -> str:
    """The JSON schema as committed in SCHEMA_FILE (`python -m envmatrix schema --write`)."""
    return json.dumps(matrix_json_schema(), indent=2, sort_keys=True) + "\n"
