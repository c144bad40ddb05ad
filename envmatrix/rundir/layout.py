"""Run directories: where one run's plan, logs, results and report live, and atomic writes.

Layout of `reports/<run-id>/` (docs/architecture.md says which stage writes what):

    .envmatrix-run         marker: {"schema": "envmatrix.rundir/1", "run_id", "created_at"}
    matrix.resolved.yaml   the expanded plan plus image ids (planfile.dump_resolved)
    dockerfiles/           rendered Dockerfiles, for people to read
    logs/                  base-<name>.log, build-<env>.log, run-<cell>.log
    locks/<env>.json       the installed set read from inside each image (envmatrix.images.locks)
    results/<cell>.json    one per cell, also for failures (envmatrix.rundir.results)
    outputs/<cell>.npz     the first inference's outputs, for parity checks
    inputs/<workload>/     models and inputs.npz made on the host, mounted read-only
    scratch/<cell>/        the per-cell writable mount (removed after an ok cell)
    report.md, plots/, results.csv, results.json

`reports/latest` is a relative symlink to the newest run, or a `LATEST` text file holding its
name where the file system refuses symlinks. A run directory is never overwritten: a new run
always gets a new folder, and an existing one is only reopened (for `--resume` or `report`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from envmatrix.errors import RunDirError

MARKER = ".envmatrix-run"
MARKER_SCHEMA = "envmatrix.rundir/1"
LATEST_LINK = "latest"
LATEST_FILE = "LATEST"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESUME_HINT = "nox -s matrix -- --resume {path}"


class RunDir:
    """Paths inside one run directory; creating them is `ensure_layout`'s job."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def marker_path(self) -> Path:
        return self.path / MARKER

    @property
    def resolved_path(self) -> Path:
        return self.path / "matrix.resolved.yaml"

    @property
    def dockerfiles_dir(self) -> Path:
        return self.path / "dockerfiles"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    @property
    def outputs_dir(self) -> Path:
        return self.path / "outputs"

    @property
    def inputs_dir(self) -> Path:
        return self.path / "inputs"

    @property
    def scratch_dir(self) -> Path:
        return self.path / "scratch"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def report_path(self) -> Path:
        return self.path / "report.md"

    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def results_json(self) -> Path:
        return self.path / "results.json"

    def build_log(self, env_id: str) -> Path:
        return self.logs_dir / f"build-{env_id}.log"

    def run_log(self, cell_id: str) -> Path:
        return self.logs_dir / f"run-{cell_id}.log"

    def result_path(self, cell_id: str) -> Path:
        return self.results_dir / f"{cell_id}.json"

    def output_path(self, cell_id: str) -> Path:
        return self.outputs_dir / f"{cell_id}.npz"

    def scratch(self, cell_id: str) -> Path:
        return self.scratch_dir / cell_id

    def workload_inputs(self, workload: str) -> Path:
        return self.inputs_dir / workload

    def resume_hint(self) -> str:
        """The command that finishes this run, for messages after an interruption."""
        return _RESUME_HINT.format(path=self.path)

    def ensure_layout(self) -> None:
        for folder in (
            self.dockerfiles_dir,
            self.logs_dir,
            self.results_dir,
            self.outputs_dir,
            self.inputs_dir,
            self.scratch_dir,
            self.plots_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True)


def utc_now() -> str:
    """Now in UTC to the second, as every timestamp in a run's files is written."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(now: dt.datetime | None = None) -> str:
    """UTC timestamp plus a short random suffix: sortable, and unique across parallel starts."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.match(run_id) or run_id in (LATEST_LINK, LATEST_FILE):
        raise RunDirError(
            f"run id {run_id!r} is not usable as a folder name: use letters, digits, '.', '_' "
            f"and '-' only (at most 128 characters), and not {LATEST_LINK!r}"
        )


def _write_marker(run_dir: RunDir) -> None:
    doc = {
        "schema": MARKER_SCHEMA,
        "run_id": run_dir.run_id,
        "created_at": utc_now(),
    }
    atomic_write_json(run_dir.marker_path, doc)


def create_run_dir(
    reports_root: Path, run_id: str | None = None, *, out: Path | None = None
) -> RunDir:
    """Make `reports_root/<run-id>/` (or the explicit `out` folder) for a new run.

    A generated id that collides (two runs started in the same second) is redrawn; an
    explicit id that already exists is refused, so an earlier run is never overwritten.
    `out` (the CLI's `--out DIR`) goes through `claim_run_dir`; `latest` is left alone then,
    since that folder may live outside reports_root.
    """
    if out is not None:
        return claim_run_dir(out)
    reports_root.mkdir(parents=True, exist_ok=True)
    for _attempt in range(20):
        rid = run_id if run_id is not None else new_run_id()
        _check_run_id(rid)
        path = reports_root / rid
        try:
            path.mkdir()  # exclusive: fails when the folder exists, even under a race
        except FileExistsError:
            if run_id is not None:
                raise RunDirError(
                    f"{path} already exists: choose another run id, or finish that run with "
                    f"`{_RESUME_HINT.format(path=path)}`"
                ) from None
            continue
        run_dir = _init(path, rid)
        update_latest(reports_root, run_dir)
        return run_dir
    raise RunDirError(f"could not find a free run id under {reports_root}; is the clock stuck?")


def claim_run_dir(path: Path) -> RunDir:
    """Use an explicit folder (`--out DIR`) for a new run; refuse one that holds anything.

    An empty or absent folder is fine. A folder that holds a run is refused with the resume
    command; any other non-empty folder is refused so that we never mix our files into it.
    """
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a folder: give a folder path")
    if path.is_dir() and any(path.iterdir()):
        if (path / MARKER).is_file():
            raise RunDirError(
                f"--out {path} already holds a run: finish it with "
                f"`{_RESUME_HINT.format(path=path)}` or give a new folder"
            )
        raise RunDirError(f"--out {path} is not empty: give an empty or new folder")
    path.mkdir(parents=True, exist_ok=True)
    rid = path.resolve().name
    if not _RUN_ID.match(rid):
        rid = new_run_id()
    return _init(path, rid)


def _init(path: Path, run_id: str) -> RunDir:
    run_dir = RunDir(path, run_id)
    run_dir.ensure_layout()
    _write_marker(run_dir)
    return run_dir


def open_run_dir(path: Path) -> RunDir:
    """Reopen an existing run directory (resume, report); RunDirError when it is not one."""
    if path.name == LATEST_LINK and not path.exists() and (path.parent / LATEST_FILE).is_file():
        path = path.parent / (path.parent / LATEST_FILE).read_text().strip()
    if not path.is_dir():
        raise RunDirError(
            f"{path} is not a folder: give a run directory such as reports/<run-id> "
            f"(`ls reports/` lists them)"
        )
    marker = path / MARKER
    if not marker.is_file():
        raise RunDirError(
            f"{path} is not an envmatrix run directory (no {MARKER} file): give a folder made "
            f"by `nox -s matrix`, such as reports/latest"
        )
    try:
        doc = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise RunDirError(f"{marker} is unreadable ({err}): the run directory is damaged") from err
    if not isinstance(doc, dict) or doc.get("schema") != MARKER_SCHEMA:
        raise RunDirError(
            f"{marker} has schema {doc.get('schema') if isinstance(doc, dict) else doc!r}, "
            f"expected {MARKER_SCHEMA!r}: it was made by another envmatrix version; start a new run"
        )
    # No ensure_layout here: a finished run may sit on read-only storage and only be read.
    return RunDir(path, str(doc.get("run_id") or path.resolve().name))


def update_latest(reports_root: Path, run_dir: RunDir) -> None:
    """Point `reports_root/latest` at run_dir: a relative symlink, else a LATEST text file."""
    target = os.path.relpath(run_dir.path.resolve(), reports_root.resolve())
    link = reports_root / LATEST_LINK
    tmp = reports_root / f".{LATEST_LINK}.{secrets.token_hex(4)}"
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)  # atomic swap: readers never see a missing link
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        atomic_write_text(reports_root / LATEST_FILE, target + "\n")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data so that readers see the old file or the whole new one, never a part.

    A temporary file in the same folder (same file system, so the rename is atomic) is
    written, flushed and fsynced, then renamed over the target; the folder is fsynced so
    the rename itself survives a power cut. A failure leaves the old file untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; results are meant to be read
        os.replace(tmp_name, path)
    except BaseException:
        # BaseException: a Ctrl-C mid-write must not leave temporary files behind either.
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """JSON, keys in the order given; NaN and infinities become null (strict JSON)."""
    text = json.dumps(_finite(obj), indent=indent, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities by None: strict JSON readers (jq, browsers) reject them."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj
