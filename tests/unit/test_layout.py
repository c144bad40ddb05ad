"""The layout's rules, read from the source: who may import whom.

Every module's imports are read with `ast` (top-level and inside functions, relative ones
resolved, and `importlib.import_module("...")` with a literal name), so a rule broken by a lazy
import inside a function is caught as well. A failure names the module and the import.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("envmatrix", "envmatrix_harness")
Pairs = list[tuple[str, str]]  # (importer, imported), both dotted module names

# Low to high: a module may import its own stage and lower ones, never a higher one. Names are
# the first part after `envmatrix.`; the top-level vocabulary is shared by every stage.
STAGES = (
    {"__init__", "errors", "problems", "grammar", "yamlsrc", "toolwords", "progress"},
    {"rundir"},
    {"config"},
    {"inputs"},
    {"images"},
    {"running"},
    {"analysis"},
    {"report"},
    {"reproduce"},
    {"__main__", "cli", "pipeline", "schedule", "gate"},
)
# Images are built through the engine, the one door to Docker, and the installed set is read
# in a container the contract module describes: images sit below running but use these two.
ALLOWED_UPWARD = {
    ("envmatrix.images", "envmatrix.running.engine"),
    ("envmatrix.images", "envmatrix.running.containers"),
    # A replay is one of the pipeline's jobs (pipeline.Job, run by pipeline.execute like run
    # and lock), so the stage order stays written once rather than copied into replay.
    ("envmatrix.reproduce.replay", "envmatrix.pipeline"),
    ("envmatrix.reproduce.replay", "envmatrix.schedule"),
}
# Exceptions to the rules below, each with why it stands and where it goes; empty: every rule
# holds. A test fails when an entry is no longer needed, so this list cannot rot.
KNOWN: dict[tuple[str, str], str] = {}

# What reading a run (analysis, report) must never pull in: the engine and the run machinery,
# and the matrix loader (the run directory holds its own plan).
NOT_FOR_READERS = ("docker", "envmatrix.running.engine", "envmatrix.running.runner",
                   "envmatrix.schedule", "envmatrix.pipeline", "envmatrix.config")
# The one module that may import each third-party package.
ONLY_IMPORTER = {"docker": "envmatrix.running.engine", "yaml": "envmatrix.yamlsrc"}
# Inside the images: the standard library, numpy and the runtimes under test.
HARNESS_THIRD_PARTY = {"numpy", "onnxruntime", "torch", "openvino"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (REPO.joinpath(*name.split(".")) / "__init__.py").is_file()


def is_module(name: str) -> bool:
    return is_package(name) or REPO.joinpath(*name.split(".")).with_suffix(".py").is_file()


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    """The module an ImportFrom reads from, relative levels resolved against the importer."""
    if not node.level:
        return node.module or ""
    package = importer if is_package(importer) else importer.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def _import_module_call(node: ast.Call) -> str | None:
    """The literal name given to `importlib.import_module(...)` or a bare `import_module(...)`."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(path: Path, importer: str) -> Iterator[str]:
    """Every module the file imports; `from pkg import sub` yields pkg.sub when sub is a module."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(importer, node)
            for alias in node.names:
                yield f"{source}.{alias.name}" if is_module(f"{source}.{alias.name}") else source
        elif isinstance(node, ast.Call):
            named = _import_module_call(node)
            if named is not None:
                yield named


def all_imports() -> Pairs:
    """(importer, imported) for every module of both packages, in a stable order."""
    found = set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            importer = module_name(path)
            found.update((importer, imported) for imported in imports_of(path, importer))
    return sorted(found)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def stage_of(name: str) -> int | None:
    """The stage of an envmatrix module; None for anything else (harness, third party)."""
    if not within(name, "envmatrix"):
        return None
    part = name.split(".")[1] if "." in name else "__init__"
    return next(rank for rank, names in enumerate(STAGES) if part in names)


def upward_imports(imports: Pairs) -> Pairs:
    """(importer, imported) for each import of a later stage, the allowed exceptions aside."""
    return [(importer, imported) for importer, imported in imports
            if _later(stage_of(importer), stage_of(imported))
            and not any(within(importer, a) and within(imported, b) for a, b in ALLOWED_UPWARD)]


def _later(importer: int | None, imported: int | None) -> bool:
    return importer is not None and imported is not None and imported > importer


def imports_from(imports: Pairs, importers: str, forbidden: tuple[str, ...]) -> Pairs:
    return [(importer, imported) for importer, imported in imports
            if within(importer, importers) and any(within(imported, f) for f in forbidden)]


def harness_outside_imports(imports: Pairs) -> Pairs:
    allowed = set(sys.stdlib_module_names) | HARNESS_THIRD_PARTY | {"envmatrix_harness"}
    return [(importer, imported) for importer, imported in imports
            if within(importer, "envmatrix_harness") and imported.split(".")[0] not in allowed]


def reader_imports(imports: Pairs) -> Pairs:
    return [pair for readers in ("envmatrix.analysis", "envmatrix.report")
            for pair in imports_from(imports, readers, NOT_FOR_READERS)]


def config_imports(imports: Pairs) -> Pairs:
    later = ("envmatrix.inputs", "envmatrix.images", "envmatrix.running", "envmatrix.analysis",
             "envmatrix.report", "envmatrix.reproduce")
    return imports_from(imports, "envmatrix.config", later)


def door_imports(imports: Pairs) -> Pairs:
    """Imports of docker or yaml by any module other than their one door."""
    return [(importer, imported) for importer, imported in imports for package, door
            in ONLY_IMPORTER.items() if within(imported, package) and importer != door]


RULES = (upward_imports, harness_outside_imports, reader_imports, config_imports, door_imports)


def named(pairs: Pairs) -> list[str]:
    """'importer imports imported' for each pair that is not a KNOWN exception."""
    return sorted({f"{a} imports {b}" for a, b in pairs if (a, b) not in KNOWN})


@pytest.fixture(scope="module")
def imports() -> Pairs:
    return all_imports()


def test_every_module_is_in_a_stage() -> None:
    tops = {p.stem if p.is_file() else p.name for p in (REPO / "envmatrix").iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert tops <= set().union(*STAGES), f"place these in STAGES: {tops - set().union(*STAGES)}"


def test_the_harness_imports_only_stdlib_numpy_and_the_runtimes(imports: Pairs) -> None:
    assert named(harness_outside_imports(imports)) == []


def test_reading_a_run_needs_no_engine_runner_or_matrix_loader(imports: Pairs) -> None:
    assert named(reader_imports(imports)) == []


def test_config_imports_no_later_stage(imports: Pairs) -> None:
    assert named(config_imports(imports)) == []


def test_no_stage_imports_a_later_one(imports: Pairs) -> None:
    assert named(upward_imports(imports)) == []


def test_only_the_engine_imports_docker_and_only_yamlsrc_imports_yaml(imports: Pairs) -> None:
    assert named(door_imports(imports)) == []
    for package, door in ONLY_IMPORTER.items():  # the door itself is still found and read
        assert (door, package) in imports


def test_every_known_exception_is_still_needed(imports: Pairs) -> None:
    broken = {pair for rule in RULES for pair in rule(imports)}
    assert sorted(set(KNOWN) - broken) == [], "fixed: remove these from KNOWN"


def test_a_planted_upward_import_is_named(tmp_path: Path) -> None:
    """The reader sees a relative import inside a function and an import_module string alike."""
    planted = tmp_path / "planted.py"
    planted.write_text("import importlib\n\n\ndef f():\n    from ..report import build\n"
                       "    return importlib.import_module('envmatrix.running.runner')\n")
    importer = "envmatrix.rundir.planted"
    found = upward_imports([(importer, imported) for imported in imports_of(planted, importer)])
    assert named(found) == [f"{importer} imports envmatrix.report.build",
                            f"{importer} imports envmatrix.running.runner"]
