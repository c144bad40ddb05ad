"""Locks: the exact installed set of each environment, and the lock file that reproduces it.

After every build (or reuse) `read_installed` runs a short least-privilege container of the
image (`containers.installed_spec`, `python -m harness.installed`) and the set it prints lands
in the run directory as `locks/<env>.json`: every Python distribution with its version and, where
pip recorded one when it installed it, the sha256 of the archive; every Debian package with its
version; the Python version; the base image's id and digest.

`nox -s lock` writes those sets beside the matrix as `<matrix stem>.lock.yaml` (schema
`envmatrix.lock/1`, docs/reproduce.md). A matrix with a lock file builds from it: the builder
stage installs `build/locked-requirements.txt` (`requirements_text`) with `--no-deps`, hashes
required when the lock has one for every distribution, and the installed set of the image is
compared with the lock afterwards (`differences`): any difference fails that environment's
build, named ("numpy: lock 1.23.5, image 1.24.0"). Cells are checked the same way against their
fingerprint (`cell_problems`), which makes them `env_mismatch`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envmatrix import __version__, grammar, yamlsrc
from envmatrix.errors import BuildError, ConfigError
from envmatrix.rundir.layout import atomic_write_json, atomic_write_text, utc_now
from envmatrix.rundir.plan import BaseIdentity, Environment
from envmatrix.running.containers import installed_spec

if TYPE_CHECKING:  # the report imports this module without the docker SDK
    from envmatrix.running.engine import EngineLike

LOCK_SCHEMA = "envmatrix.lock/1"
INSTALLED_SCHEMA = "envmatrix.installed/1"
LOCK_SUFFIX = ".lock.yaml"
MARKER = "ENVMATRIX-INSTALLED "  # harness.installed.MARKER
READ_TIMEOUT_S = 120.0
# A locked version goes into a requirements file: nothing that pip could read as an option.
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PipDist:
    version: str
    sha256: str | None = None


@dataclass(frozen=True)
class InstalledSet:
    """What an image holds: Python distributions (PEP 503 names), Debian packages, Python."""

    pip: dict[str, PipDist]
    apt: dict[str, str] | None = None  # None: the image has no dpkg
    python: str | None = None


@dataclass(frozen=True)
class EnvLock:
    env_id: str
    installed: InstalledSet
    base: BaseIdentity | None = None

    @property
    def hashed(self) -> bool:
        """Whether every distribution has a hash: only then can pip require hashes."""
        return bool(self.installed.pip) and all(d.sha256 for d in self.installed.pip.values())


@dataclass(frozen=True)
class MatrixLock:
    path: Path
    environments: dict[str, EnvLock] = field(default_factory=dict)


def lock_path(matrix: Path) -> Path:
    """`matrix.yaml` -> `matrix.lock.yaml`, beside it."""
    return matrix.with_name(matrix.stem + LOCK_SUFFIX)


# -- the installed set, read from inside an image ----------------------------------------------


def parse_installed(log: str) -> InstalledSet:
    """The set `python -m harness.installed` printed; ValueError when its line is missing."""
    for line in reversed(log.splitlines()):
        if line.startswith(MARKER):
            return installed_from_dict(json.loads(line[len(MARKER):]))
    raise ValueError("no installed set was printed")


def read_installed(engine: EngineLike, image: str, *, labels: Mapping[str, str] | None = None
                   ) -> InstalledSet:
    """Run the image's reader (no network, user nobody, read-only root) and parse what it says."""
    outcome = engine.run(installed_spec(image, labels=labels), timeout_s=READ_TIMEOUT_S)
    try:
        if outcome.exit_code != 0:
            raise ValueError(f"exit code {outcome.exit_code}")
        return parse_installed(outcome.log)
    except ValueError as err:
        raise BuildError(f"Could not read the installed set of {image} ({err}).",
                         outcome.log[-2000:]) from None


def installed_from_dict(doc: Mapping[str, Any]) -> InstalledSet:
    pip = {str(name): PipDist(str(d["version"]), d.get("sha256") or None)
           for name, d in (doc.get("pip") or {}).items()}
    apt = doc.get("apt")
    return InstalledSet(pip=dict(sorted(pip.items())),
                        apt=None if apt is None else {str(k): str(v) for k, v in apt.items()},
                        python=doc.get("python"))


def installed_to_dict(installed: InstalledSet) -> dict[str, Any]:
    return {
        "python": installed.python,
        "pip": {name: {"version": d.version, "sha256": d.sha256}
                for name, d in sorted(installed.pip.items())},
        "apt": None if installed.apt is None else dict(sorted(installed.apt.items())),
    }


def base_to_dict(base: BaseIdentity | None) -> dict[str, Any] | None:
    if base is None:
        return None
    return {"image": base.image, "id": base.id, "digest": base.digest}


def write_installed(run_dir: Path, env_id: str, installed: InstalledSet, *, tag: str,
                    image_id: str, base: BaseIdentity | None) -> Path:
    """`locks/<env>.json` in the run directory."""
    path = run_dir / "locks" / f"{env_id}.json"
    atomic_write_json(path, {"schema": INSTALLED_SCHEMA, "environment": env_id, "tag": tag,
                             "image_id": image_id, "base": base_to_dict(base),
                             **installed_to_dict(installed)})
    return path


def read_installed_file(path: Path) -> EnvLock:
    """An environment's `locks/<env>.json` back (what `lock` turns into the lock file)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return EnvLock(str(doc["environment"]), installed_from_dict(doc), _base(doc.get("base")))


# -- comparing ---------------------------------------------------------------------------------


def differences(expected: Mapping[str, str], got: Mapping[str, str], *,
                what: str = "lock", where: str = "image") -> list[str]:
    """One line per distribution whose version differs, sorted by name:
    "numpy: lock 1.23.5, image 1.24.0"; absent on one side: "not in the image"."""
    lines = []
    for name in sorted(set(expected) | set(got)):
        want, have = expected.get(name), got.get(name)
        if want == have:
            continue
        left = f"{what} {want}" if want is not None else f"not in the {what}"
        right = f"{where} {have}" if have is not None else f"not in the {where}"
        lines.append(f"{name}: {left}, {right}")
    return lines


def versions(installed: InstalledSet) -> dict[str, str]:
    return {name: d.version for name, d in installed.pip.items()}


def apt_differences(lock: EnvLock, installed: InstalledSet) -> list[str]:
    """Debian packages: the Dockerfile installs python3 from the mirror of the day, which keeps
    only the newest version of a suite; differences are warnings, the pip set must match."""
    if lock.installed.apt is None or installed.apt is None:
        return []
    return differences(lock.installed.apt, installed.apt, where="image")


def not_installable(cause: str, lock: EnvLock) -> str | None:
    """"onnxruntime==1.99.0: not installable: <pip's words>" when pip's failure names a locked
    distribution; None when it names none."""
    for name, dist in lock.installed.pip.items():
        pin = re.compile(rf"(?<![\w.-]){re.escape(name)}==({re.escape(dist.version)})(?![\w.])",
                         re.IGNORECASE)
        if pin.search(grammar.normalize_package(cause)) or pin.search(cause):
            return f"{name}=={dist.version}: not installable: {cause}"
    return None


def cell_problems(packages: Mapping[str, Any], env: Environment, lock: EnvLock | None
                  ) -> list[str]:
    """Why a cell's fingerprint (`fingerprint.packages`) is not its environment: a pin not met,
    or (when the matrix has a lock) any distribution that differs from the lock."""
    problems = grammar.version_mismatches(env.package_dict, packages)
    if lock is not None:
        got = {grammar.normalize_package(str(k)): str(v) for k, v in packages.items()}
        problems += differences(versions(lock.installed), got)
    return problems


# -- the lock file -----------------------------------------------------------------------------


def requirements_text(lock: EnvLock) -> str:
    """`build/locked-requirements.txt`: exact pins, with hashes when every entry has one."""
    lines = ["# written by envmatrix from the matrix's lock file; installed with --no-deps\n"]
    if lock.hashed:
        lines.append("--require-hashes\n")
    for name, dist in sorted(lock.installed.pip.items()):
        sha = f" --hash=sha256:{dist.sha256}" if lock.hashed else ""
        lines.append(f"{name}=={dist.version}{sha}\n")
    return "".join(lines)


def lock_to_dict(matrix: Path, entries: Mapping[str, EnvLock]) -> dict[str, Any]:
    return {
        "schema": LOCK_SCHEMA,
        "matrix": matrix.name,
        "envmatrix_version": __version__,
        "created_at": utc_now(),
        "environments": {env_id: {"base": base_to_dict(e.base), **installed_to_dict(e.installed)}
                         for env_id, e in entries.items()},
    }


def write_lock(matrix: Path, entries: Mapping[str, EnvLock]) -> Path:
    path = lock_path(matrix)
    atomic_write_text(path, yamlsrc.dump_plain(lock_to_dict(matrix, entries), header=(
        "# envmatrix lock file: the exact installed set of every environment, read from its\n"
        "# image. Builds of the matrix install this set; rewrite it with `nox -s lock`.\n")))
    return path


def load_lock(matrix: Path) -> MatrixLock | None:
    """The lock file beside the matrix, None when there is none; ConfigError when damaged."""
    path = lock_path(matrix)
    if not path.is_file():
        return None
    try:
        doc = yamlsrc.read_plain(path)
        if not isinstance(doc, dict) or doc.get("schema") != LOCK_SCHEMA:
            raise ValueError(f"expected schema {LOCK_SCHEMA}")
        envs = {str(env_id): _env_lock(str(env_id), entry)
                for env_id, entry in (doc.get("environments") or {}).items()}
    except (OSError, UnicodeDecodeError, yamlsrc.YamlError, ValueError, TypeError,
            KeyError, AttributeError) as err:
        raise ConfigError(f"{path}: not a usable lock file ({type(err).__name__}: {err}). Fix: "
                          "correct it, or delete it and run `nox -s lock` again.") from None
    return MatrixLock(path, envs)


def _env_lock(env_id: str, entry: Mapping[str, Any]) -> EnvLock:
    installed = installed_from_dict(entry)
    for name, dist in installed.pip.items():
        if not grammar.matches("package", name) or not _VERSION.fullmatch(dist.version):
            raise ValueError(f"{env_id}: {name!r} {dist.version!r} is not a name and version")
        if dist.sha256 is not None and not _SHA256.fullmatch(dist.sha256):
            raise ValueError(f"{env_id}: {name}: sha256 {dist.sha256!r} is not 64 hex digits")
    return EnvLock(env_id, installed, _base(entry.get("base")))


def _base(doc: Any) -> BaseIdentity | None:
    if not isinstance(doc, dict) or not doc.get("id"):
        return None
    digest = doc.get("digest")
    return BaseIdentity(str(doc.get("image") or ""), str(doc["id"]),
                        (str(digest),) if digest else ())
