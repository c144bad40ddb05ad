"""Expanding a matrix into environments and cells: axes, include/exclude, ids, selection.

Nothing here reads files or YAML: `envmatrix.config` validates matrix.yaml and calls these
functions. Problems are reported as `envmatrix.problems.Problem`s carrying a key path; config
turns the path into a file and line. The typed result, `Plan`, lives in `envmatrix.plan`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from envmatrix.errors import ConfigError
from envmatrix.grammar import normalize_package
from envmatrix.plan import GPU_PROVIDERS, PROVIDER_NAMES, Cell, Environment, Workload
from envmatrix.problems import KeyPath, PlanError, Problem, did_you_mean, kind_of, show

# Distributions that provide the `onnxruntime` module: at most one per environment, because each
# overwrites the others' files.
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-rocm",
)
# Runtime package -> short tag used in generated ids (order: the tags' order inside an id).
RUNTIME_TAGS: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "ort"),
    ("onnxruntime-gpu", "ortgpu"),
    ("onnxruntime-openvino", "ortov"),
    ("onnxruntime-directml", "ortdml"),
    ("onnxruntime-rocm", "ortrocm"),
    ("torch", "torch"),
)
# Package names a matrix axis may use bare (`onnxruntime: [...]`); others need `packages.<name>`.
KNOWN_PACKAGES = frozenset(name for name, _ in RUNTIME_TAGS) | {"numpy", "openvino", "onnx"}
# Environment fields a matrix axis may vary, and the extra ones an include entry may set.
AXIS_FIELDS = ("base", "python", "providers")
INCLUDE_FIELDS = (*AXIS_FIELDS, "id", "env", "description", "provider_options", "template",
                  "gpus", "hosts")
# Providers that only exist in some distributions: requesting them elsewhere is a mistake.
PROVIDER_NEEDS: dict[str, tuple[str, ...]] = {
    "openvino": ("onnxruntime-openvino",),
    "cuda": ("onnxruntime-gpu", "torch"),
    "tensorrt": ("onnxruntime-gpu",),
    "rocm": ("onnxruntime-rocm",),
}
TORCH_PROVIDERS = ("cpu", "cuda")  # devices the torch backend can use
NUMPY2_SINCE = (1, 19)  # onnxruntime releases before this were built against numpy 1.x
# Newest ONNX IR version and opset that old onnxruntime releases read (onnxruntime's
# docs/Versioning.md: 1.3-1.5 shipped ONNX 1.7, IR 7); releases from 1.9 on read IR 8+, beyond
# every default here.
ORT_MODEL_LIMITS: dict[tuple[int, ...], tuple[int, int]] = {
    (1, 0): (6, 11), (1, 1): (6, 11), (1, 2): (6, 11), (1, 3): (7, 12), (1, 4): (7, 12),
    (1, 5): (7, 12), (1, 6): (7, 13), (1, 7): (7, 13), (1, 8): (7, 14),
}


# -- matrix expansion (GitHub Actions semantics) ---------------------------------------------


@dataclass(frozen=True)
class Src:
    """A matrix value and where it was written; equality looks at the value only."""

    value: Any
    path: KeyPath = field(compare=False)


Combination = dict[str, Src]


def axis_key(key: str, where: KeyPath) -> str:
    """Canonical key of an axis or include/exclude key: a field name or `packages.<name>`."""
    if key in INCLUDE_FIELDS:
        return key
    if key.startswith("packages."):
        return "packages." + normalize_package(key[len("packages."):])
    if normalize_package(key) in KNOWN_PACKAGES:
        return "packages." + normalize_package(key)
    hint = did_you_mean(key, [*INCLUDE_FIELDS, *sorted(KNOWN_PACKAGES)])
    raise PlanError([Problem(
        where, f"unknown matrix key {key!r}{hint}.",
        f"use one of {', '.join(AXIS_FIELDS)}, a runtime package name "
        f"({', '.join(sorted(KNOWN_PACKAGES))}), or packages.<name> to vary another package.",
        at_key=True)])


def expand_matrix(
    axes: Mapping[str, Sequence[Src]],
    exclude: Sequence[Mapping[str, Src]],
    include: Sequence[Mapping[str, Src]],
    where: KeyPath,
) -> list[Combination]:
    """The axes' cartesian product, minus `exclude`, plus `include` (GitHub Actions rules).

    An exclude entry drops combinations that match all its keys. An include entry is merged
    into every original combination whose original axis values it does not contradict (keys
    added by earlier includes may be overwritten); an entry merged nowhere becomes a new
    combination. Excludes that remove nothing and an empty result are errors: in a benchmark
    matrix they are always mistakes.
    """
    combos = _product(axes, where)
    combos = _apply_exclude(combos, axes, exclude, where)
    combos = _apply_include(combos, axes, include)
    if not combos:
        raise PlanError([Problem(where, "the matrix expands to no environment at all.",
                                 "add axis values or include entries, or remove an exclude.")])
    return combos


def _product(axes: Mapping[str, Sequence[Src]], where: KeyPath) -> list[Combination]:
    combos: list[Combination] = [{}] if axes else []
    for key, values in axes.items():
        if not values:
            raise PlanError([Problem((*where, key), f"axis {key!r} has no values.",
                                     "give it at least one value, or remove the axis.")])
        combos = [{**combo, key: value} for combo in combos for value in values]
    return combos


def _apply_exclude(combos: list[Combination], axes: Mapping[str, Sequence[Src]],
                   exclude: Sequence[Mapping[str, Src]], where: KeyPath) -> list[Combination]:
    for index, entry in enumerate(exclude):
        path = (*where, "exclude", index)
        unknown = [key for key in entry if key not in axes]
        if unknown or not entry:
            raise PlanError([Problem(
                path, f"exclude entry names {unknown or 'no key'}, which is not an axis.",
                f"exclude entries may only use the axes {', '.join(axes) or '(none)'}.")])
        kept = [c for c in combos if any(c[key] != value for key, value in entry.items())]
        if len(kept) == len(combos):
            raise PlanError([Problem(path, "exclude entry matches no combination.",
                                     "fix its values to match an axis value, or remove it.")])
        combos = kept
    return combos


def _apply_include(combos: list[Combination], axes: Mapping[str, Sequence[Src]],
                   include: Sequence[Mapping[str, Src]]) -> list[Combination]:
    originals = [dict(c) for c in combos]  # original axis values, never overwritten
    added: list[Combination] = []
    for entry in include:
        matched = False
        for original, combo in zip(originals, combos):
            if all(original[k] == v for k, v in entry.items() if k in axes):
                combo.update({k: v for k, v in entry.items() if k not in axes})
                matched = True
        if not matched:
            added.append(dict(entry))
    return combos + added


# -- matrix entries: axes, include/exclude, combinations -> environment data --------------


def origin_of(raw: Any, where: KeyPath) -> dict[tuple[str, ...], KeyPath]:
    """Key path of each value in a plain environment entry (for cross-check messages)."""
    origin: dict[tuple[str, ...], KeyPath] = {}
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        origin[(key,)] = (*where, key)
        if isinstance(value, dict):
            for sub in value:
                origin[(key, normalize_package(sub) if key == "packages" else sub)] = (
                    *where, key, sub)
    return origin


def parse_matrix(raw: dict[str, Any], where: KeyPath) -> tuple[
        dict[str, list[Src]], list[dict[str, Src]], list[dict[str, Src]]]:
    """Axes, include and exclude with canonical keys and each value's key path."""
    mpath = (*where, "matrix")
    shared = {k for k in raw if k != "matrix"}
    shared |= {"packages." + normalize_package(n) for n in raw.get("packages") or {}}
    axes: dict[str, list[Src]] = {}
    for key, values in raw["matrix"].items():
        if key in ("include", "exclude"):
            continue
        canon = axis_key(key, (*mpath, key))
        problem = _axis_problem(key, canon, values, axes, shared)
        if problem:
            raise PlanError([Problem((*mpath, key), *problem)])
        axes[canon] = [Src(v, (*mpath, key, i)) for i, v in enumerate(values)]
    include = _entries(raw["matrix"].get("include", []), (*mpath, "include"))
    exclude = _entries(raw["matrix"].get("exclude", []), (*mpath, "exclude"))
    return axes, include, exclude


def _axis_problem(key: str, canon: str, values: Any, axes: Mapping[str, Any],
                  shared: set[str]) -> tuple[str, str] | None:
    if canon not in AXIS_FIELDS and not canon.startswith("packages."):
        return (f"{key!r} cannot be a matrix axis.",
                f"vary {', '.join(AXIS_FIELDS)} or packages; set {key} in an include "
                "entry or next to matrix:.")
    if not isinstance(values, list):
        return (f"axis {key!r} must list its values, got {kind_of(values)}.",
                f"write {key}: [{show(values)}].")
    if canon in axes:
        return (f"axis {key!r} varies {canon}, which another axis already varies.",
                "keep one of the two axes.")
    if canon in shared:
        return (f"{key!r} is both an axis and a shared value next to matrix:; the shared value "
                "would never be used.", "remove one of them.")
    return None


def _entries(raw: Any, where: KeyPath) -> list[dict[str, Src]]:
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise PlanError([Problem(where, f"expected a list of mappings, got {kind_of(raw)}.",
                                         "write entries like - {base: bookworm}.")])
    return [{axis_key(k, (*where, i, k)): Src(v, (*where, i, k)) for k, v in e.items()}
            for i, e in enumerate(raw)]


def merge_combination(raw: dict[str, Any], combo: Mapping[str, Src], where: KeyPath) -> tuple[
        dict[str, Any], dict[tuple[str, ...], KeyPath]]:
    """Shared values next to `matrix:` overlaid with one combination's values (which win)."""
    merged = {k: v for k, v in raw.items() if k != "matrix"}
    origin = origin_of(merged, where)
    for key, src in combo.items():
        if key.startswith("packages."):
            name = key.split(".", 1)[1]
            merged["packages"] = {**(merged.get("packages") or {}), name: src.value}
            origin[("packages", name)] = src.path
        elif key in ("env", "provider_options") and isinstance(src.value, dict):
            merged[key] = {**(merged.get(key) or {}), **src.value}
            origin.update({(key, sub): (*src.path, sub) for sub in src.value})
        else:
            merged[key] = src.value
            origin[(key,)] = src.path
    return merged, origin


def origin_path(origin: Mapping[tuple[str, ...], KeyPath], loc: KeyPath,
                 where: KeyPath) -> KeyPath:
    """Map a path inside a merged combination back to where the value was written."""
    keys = tuple(str(p) for p in loc)
    for depth in range(len(keys), 0, -1):
        if keys[:depth] in origin:
            return (*origin[keys[:depth]], *loc[depth:])
    return (*where, "matrix")


# -- ids ------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """Lower-case, every run of other characters one '-', no separator at either end."""
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    text = re.sub(r"[._-]{2,}", lambda m: m.group()[0], text)
    return text.strip("._-")


def environment_id(base: str, python: str, packages: Mapping[str, str],
                   varied: Sequence[str] = (), providers: Sequence[str] = ()) -> str:
    """A stable slug: base, python (unless system), runtime pins, varied packages, providers.

    `varied` names non-runtime packages that a matrix varies (e.g. numpy) and `providers` is
    given when a matrix varies them, so combinations differing only there get different ids.
    Positions in the file never enter the id.
    """
    parts = [base]
    if python != "system":
        parts.append(f"py{python}")
    parts += [f"{tag}{packages[name]}" for name, tag in RUNTIME_TAGS if name in packages]
    runtimes = {name for name, _ in RUNTIME_TAGS}
    parts += [f"{name}{packages[name]}" for name in varied
              if name in packages and name not in runtimes]
    parts += [provider_slug(p) for p in providers]
    return slug("-".join(parts))


def provider_slug(provider: str) -> str:
    """`openvino` stays; a full name like `MIGraphXExecutionProvider` becomes `migraphx`."""
    if provider in PROVIDER_NAMES:
        return provider
    return slug(provider.removesuffix("ExecutionProvider"))


def cell_id(env_id: str, workload: str, provider: str) -> str:
    return f"{env_id}--{workload}--{provider_slug(provider)}"


# -- environment checks ---------------------------------------------------------------------


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a validated version: `1.8.0rc1` -> (1, 8, 0)."""
    head = re.match(r"[0-9]+(?:\.[0-9]+)*", version)
    return tuple(int(p) for p in head.group().split(".")) if head else ()


def check_environment(env: Environment) -> list[tuple[tuple[str, ...], str, str]]:
    """Combinations known not to work: (key inside the environment, message, fix) for each."""
    packages = env.package_dict
    found: list[tuple[tuple[str, ...], str, str]] = []
    ort = [name for name in ORT_DISTRIBUTIONS if name in packages]
    if len(ort) > 1:
        found.append((("packages",), f"{' and '.join(ort)} both install the onnxruntime module.",
                      "keep one onnxruntime distribution per environment (a matrix include "
                      "entry extends every combination whose axis values it matches; to add a "
                      "separate one, give it an axis value no combination has)."))
    if not ort and "torch" not in packages:
        found.append((("packages",), "no inference runtime is pinned.",
                      "pin onnxruntime (or onnxruntime-gpu, onnxruntime-openvino, torch)."))
    for provider in env.providers:
        needs = PROVIDER_NEEDS.get(provider)
        if needs and not any(name in packages for name in needs):
            found.append((("providers",), f"provider {provider!r} needs {' or '.join(needs)}, "
                          "which this environment does not pin.",
                          f"add {needs[0]} to packages, or remove {provider!r} from providers."))
    numpy = packages.get("numpy")
    old = [name for name in ort if release(packages[name]) < NUMPY2_SINCE]
    if old and numpy and release(numpy) >= (2,):
        found.append((("packages", "numpy"),
                      f"{old[0]} {packages[old[0]]} was built against numpy 1.x and fails to "
                      f"import with numpy {numpy}.", "pin numpy<2, e.g. numpy: \"1.23.5\"."))
    return found


def numpy_warning(env: Environment) -> str | None:
    """A warning when an old onnxruntime leaves numpy unpinned (pip would pick numpy 2)."""
    packages = env.package_dict
    old = [n for n in ORT_DISTRIBUTIONS if n in packages and release(packages[n]) < NUMPY2_SINCE]
    if old and "numpy" not in packages:
        return (f"environment {env.id}: {old[0]} {packages[old[0]]} needs numpy 1.x but numpy is "
                "not pinned; pip may install numpy 2 and the import fails. "
                "Fix: pin numpy, e.g. numpy: \"1.23.5\".")
    return None


def model_limits(environments: Iterable[Environment]) -> tuple[int, int, str] | None:
    """The tightest (IR version, opset, environment id) that old runtimes in the plan read."""
    tightest: tuple[int, int, str] | None = None
    for env in environments:
        for name in ORT_DISTRIBUTIONS:
            version = env.package_dict.get(name)
            limits = ORT_MODEL_LIMITS.get(release(version)[:2]) if version else None
            if limits and (tightest is None or limits < tightest[:2]):
                tightest = (*limits, env.id)
    return tightest


# -- cells and selection --------------------------------------------------------------------


def runs(env: Environment, workload: Workload, provider: str) -> bool:
    """Whether an environment can run a workload on a provider at all."""
    packages = env.package_dict
    if workload.backend == "torch":
        return "torch" in packages and provider in TORCH_PROVIDERS
    return any(name in packages for name in ORT_DISTRIBUTIONS)


def make_cells(
    environments: Sequence[Environment],
    workloads: Sequence[Workload],
    provider_options: Mapping[str, Mapping[str, tuple[tuple[str, str], ...]]] | None = None,
    gpus: str = "all",
) -> list[Cell]:
    """Every environment x workload x provider of that environment that can run.

    `provider_options` maps environment id -> provider -> options. A torch workload pairs with
    torch environments on cpu/cuda only; an onnxruntime workload with onnxruntime environments.
    Cells on a GPU provider get the environment's `gpus`, else the run's (`gpus`); others none.
    """
    options = provider_options or {}
    return [
        Cell(cell_id(env.id, wl.name, provider), env, wl, provider,
             tuple(options.get(env.id, {}).get(provider, ())),
             (env.gpus or gpus) if provider in GPU_PROVIDERS else None)
        for env in environments
        for wl in workloads
        for provider in env.providers
        if runs(env, wl, provider)
    ]


def select(cells: Sequence[Cell], only: Sequence[str] | None,
           skip: Sequence[str] | None) -> list[Cell]:
    """Cells kept by `only`/`skip` globs, each matched against environment ids and cell ids.

    A cell is kept when some `only` glob matches its id or its environment's id (or `only` is
    not given) and no `skip` glob matches either. A glob matching nothing is an error, so a
    typo never silently runs (or skips) everything.
    """
    ids = sorted({c.environment.id for c in cells} | {c.id for c in cells})
    for flag, globs in (("--only", only), ("--skip", skip)):
        for glob in globs or ():
            if not any(fnmatchcase(i, glob) for i in ids):
                raise ConfigError(
                    f"{flag} {glob!r} matches no environment or cell id. Ids are:\n  "
                    + "\n  ".join(ids)
                    + f"\nFix: give a glob matching one of them, e.g. {flag} '{ids[0]}*'.")

    def hit(cell: Cell, globs: Sequence[str]) -> bool:
        return any(fnmatchcase(cell.id, g) or fnmatchcase(cell.environment.id, g) for g in globs)

    kept = [c for c in cells if (not only or hit(c, only)) and not hit(c, skip or ())]
    if not kept:
        raise ConfigError(f"--only {list(only or [])} with --skip {list(skip or [])} leaves no "
                          "cell to run. Fix: loosen the globs.")
    return kept
