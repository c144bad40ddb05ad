"""Expanding a matrix into environments and cells: axes, include/exclude, ids, selection.

Nothing here reads files or YAML: `envmatrix.config.load` validates matrix.yaml and calls these
functions. Problems are reported as `envmatrix.problems.Problem`s carrying a key path; config
turns the path into a file and line. The typed result, `Plan`, lives in `envmatrix.rundir.plan`.
The words ids are made of (`t2`, `opt-all`) live in `envmatrix.rundir.idwords`, which the report
reads too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from envmatrix.errors import ConfigError
from envmatrix.grammar import PROVIDER_NAMES, normalize_package, release
from envmatrix.problems import KeyPath, PlanError, Problem, did_you_mean, kind_of, show
from envmatrix.rundir.idwords import (
    KNOB_FIELDS,
    RUNTIME_TAGS,
    knob_order,
    knob_part,
    knob_values,
    provider_slug,
    slug,
    varied_knobs,
)
from envmatrix.rundir.plan import GPU_PROVIDERS, NO_KNOBS, Cell, Environment, Knobs, Workload
from envmatrix_harness.optiontable import SESSION_SETTINGS

# Distributions that provide the `onnxruntime` module: at most one per environment, because each
# overwrites the others' files.
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-rocm",
)
# Package names a matrix axis may use bare (`onnxruntime: [...]`); others need `packages.<name>`.
KNOWN_PACKAGES = frozenset(name for name, _ in RUNTIME_TAGS) | {"numpy", "openvino", "onnx"}
# Environment fields a matrix axis may vary, and the extra ones an include entry may set.
# Knobs shape a cell's numbers but not its image: they are cell settings, so combinations
# that differ only in knobs are one environment (one image) with several cells.
AXIS_FIELDS = ("base", "python", "providers", *KNOB_FIELDS)
INCLUDE_FIELDS = (*AXIS_FIELDS, "id", "env", "description", "provider_options", "template",
                  "gpus", "hosts", "session")
# Dotted axes that vary one setting inside a mapping: session.<setting>,
# session.config.<key>, provider_options.<provider>.<option>.
SESSION_AXES = tuple(f"session.{name}" for name in SESSION_SETTINGS)
DOTTED_HINTS = (*SESSION_AXES, "session.config.<key>", "provider_options.<provider>.<option>")
# Providers that only exist in some distributions: requesting them elsewhere is a mistake.
PROVIDER_NEEDS: dict[str, tuple[str, ...]] = {
    "openvino": ("onnxruntime-openvino",),
    "cuda": ("onnxruntime-gpu", "torch"),
    "tensorrt": ("onnxruntime-gpu",),
    "rocm": ("onnxruntime-rocm",),
}
PROVIDER_SHORT = {full: short for short, full in PROVIDER_NAMES.items()}
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
    if key.startswith(("session.", "provider_options.")):
        return _dotted_key(key, where)
    if key.startswith("packages."):
        return "packages." + normalize_package(key[len("packages."):])
    if normalize_package(key) in KNOWN_PACKAGES:
        return "packages." + normalize_package(key)
    hint = did_you_mean(key, [*INCLUDE_FIELDS, *sorted(KNOWN_PACKAGES), *SESSION_AXES])
    raise PlanError([Problem(
        where, f"unknown matrix key {key!r}{hint}.",
        f"use one of {', '.join(AXIS_FIELDS)}, a runtime package name "
        f"({', '.join(sorted(KNOWN_PACKAGES))}), packages.<name> to vary another package, "
        f"or one setting: {', '.join(DOTTED_HINTS)}.", at_key=True)])


def _dotted_key(key: str, where: KeyPath) -> str:
    """`session.<setting>`, `session.config.<key>` or `provider_options.<provider>.<option>`."""
    head, _, rest = key.partition(".")
    if head == "session" and (key in SESSION_AXES or
                              (rest.startswith("config.") and len(rest) > len("config."))):
        return key
    provider, _, option = rest.partition(".")
    if head == "provider_options" and provider and option and "." not in option:
        return f"provider_options.{PROVIDER_SHORT.get(provider, provider)}.{option}"
    hint = did_you_mean(key, SESSION_AXES) if head == "session" else ""
    raise PlanError([Problem(where, f"unknown matrix key {key!r}{hint}.",
                             f"write one of {', '.join(DOTTED_HINTS)}.", at_key=True)])


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
    shared |= _dotted_shared(raw)
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


def _dotted_shared(raw: Mapping[str, Any]) -> set[str]:
    """Dotted names of the session settings and provider options set next to matrix:."""
    session = raw.get("session")
    session = session if isinstance(session, dict) else {}
    config = session.get("config")
    config = config if isinstance(config, dict) else {}
    names = {f"session.{k}" for k in session if k != "config"}
    names |= {f"session.config.{k}" for k in config}
    options = raw.get("provider_options")
    for provider, values in (options.items() if isinstance(options, dict) else ()):
        short = PROVIDER_SHORT.get(provider, provider)
        names |= {f"provider_options.{short}.{k}" for k in (values or {})
                  if isinstance(values, dict)}
    return names


def _axis_problem(key: str, canon: str, values: Any, axes: Mapping[str, Any],
                  shared: set[str]) -> tuple[str, str] | None:
    if canon not in AXIS_FIELDS and not canon.startswith(("packages.", "session.",
                                                          "provider_options.")):
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
        elif key.startswith(("session.", "provider_options.")):
            _set_dotted(merged, key, src.value)
            origin[tuple(_dotted_parts(key))] = src.path
        elif key in ("env", "provider_options", "session") and isinstance(src.value, dict):
            merged[key] = {**(merged.get(key) or {}), **src.value}
            origin.update({(key, sub): (*src.path, sub) for sub in src.value})
        else:
            merged[key] = src.value
            origin[(key,)] = src.path
    return merged, origin


def _dotted_parts(key: str) -> list[str]:
    """`session.config.a.b` -> [session, config, a.b]; `provider_options.p.o` -> 3 parts."""
    head, _, rest = key.partition(".")
    if head == "session" and rest.startswith("config."):
        return [head, "config", rest[len("config."):]]
    return [head, *rest.split(".", 1)]


def _set_dotted(merged: dict[str, Any], key: str, value: Any) -> None:
    """Set one setting inside a mapping of the merged environment (copies, never aliases)."""
    parts = _dotted_parts(key)
    node = merged
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value


def origin_path(origin: Mapping[tuple[str, ...], KeyPath], loc: KeyPath,
                 where: KeyPath) -> KeyPath:
    """Map a path inside a merged combination back to where the value was written."""
    keys = tuple(str(p) for p in loc)
    for depth in range(len(keys), 0, -1):
        if keys[:depth] in origin:
            return (*origin[keys[:depth]], *loc[depth:])
    return (*where, "matrix")


# -- ids ------------------------------------------------------------------------------------


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


def cell_id(env_id: str, workload: str, provider: str, knobs: Sequence[str] = ()) -> str:
    """`<env>--<workload>--<provider>`, then one `--<part>` per knob its variants vary."""
    return "--".join((env_id, workload, provider_slug(provider), *knobs))


def knob_summary(cell: Cell) -> str:
    """`threads=1 session.graph_optimization=all` for `nox -s list`, after the workload's
    backend and batch when its network has several (`backend=torch batch=8`); empty when
    nothing is set."""
    values = knob_values(cell.knobs, cell.provider_options)
    shown = {n: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
             for n, v in values.items()}
    wl = cell.workload
    own = [f"backend={wl.backend}"] if wl.network else []
    own += [f"batch={wl.batch}"] if wl.batch is not None else []
    return " ".join([*own, *(f"{name}={shown[name]}" for name in knob_order(values))])


# -- environment checks ---------------------------------------------------------------------


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


Variant = tuple[Knobs, Mapping[str, tuple[tuple[str, Any], ...]]]  # knobs, options by provider


def make_cells(
    environments: Sequence[Environment],
    workloads: Sequence[Workload],
    provider_options: Mapping[str, Mapping[str, tuple[tuple[str, Any], ...]]] | None = None,
    gpus: str = "all",
    variants: Mapping[str, Sequence[Variant]] | None = None,
) -> list[Cell]:
    """Every environment x workload x provider of that environment that can run, x variant.

    `provider_options` maps environment id -> provider -> options (one variant per
    environment); `variants` maps environment id -> its variants (knobs, options by provider)
    and wins. A torch workload pairs with torch environments on cpu/cuda only (session
    settings and provider options are onnxruntime's: its cells leave them out); an
    onnxruntime workload with onnxruntime environments. Variants that are alike for one
    provider (options of another provider) make one cell; knobs that differ between the
    remaining ones name the cells (`--t1`, `--opt-all`). Cells on a GPU provider get the
    environment's `gpus`, else the run's (`gpus`); others none.
    """
    options = provider_options or {}
    cells: list[Cell] = []
    for env in environments:
        own = (variants or {}).get(env.id) or [(NO_KNOBS, options.get(env.id, {}))]
        for wl in workloads:
            for provider in env.providers:
                if runs(env, wl, provider):
                    devices = (env.gpus or gpus) if provider in GPU_PROVIDERS else None
                    cells += _variant_cells(env, wl, provider, own, devices)
    return cells


def _variant_cells(env: Environment, wl: Workload, provider: str,
                   variants: Sequence[Variant], gpus: str | None) -> list[Cell]:
    settings: list[tuple[Knobs, tuple[tuple[str, Any], ...]]] = []
    for knobs, by_provider in variants:
        pair = (knobs, tuple(by_provider.get(provider, ())))
        if wl.backend == "torch":  # session and provider options are onnxruntime's
            pair = (Knobs(knobs.threads, knobs.cpuset, knobs.memory_limit,
                          concurrency=knobs.concurrency), ())
        if pair not in settings:
            settings.append(pair)
    values = [knob_values(knobs, opts) for knobs, opts in settings]
    varied = varied_knobs(values)
    parts = [[knob_part(n, v[n]) for n in varied if n in v] for v in values]
    if len({tuple(p) for p in parts}) < len(parts):  # mappings alike in their leaf words
        parts = [[knob_part(n, v[n], exact=True) for n in varied if n in v] for v in values]
    return [Cell(cell_id(env.id, wl.name, provider, own), env, wl, provider, opts, gpus=gpus,
                 knobs=knobs)
            for (knobs, opts), own in zip(settings, parts)]


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
