"""--resume: finish a run as it was planned, whatever the matrix file says today.

The rules (docs/reproduce.md, "Run directory integrity"):
- The plan is the run's own (`matrix.resolved.yaml`, read by `planfile.read_resolved`), never the
  matrix file read again. That file keeps its plan part byte for byte; only its `run:` record
  grows (the images used now, and one entry per resume saying when and with which filters).
- The matrix file cannot change a run behind the user's back. Given with `--matrix`, it must
  expand to the run's cells with the same settings, or the resume is refused (exit 2) with what
  differs: the user asked for that file, and the run cannot be it. Not given, the file the run
  was made from is compared when it is still there, and a difference is a warning that names
  it and says the run's own plan is used; gone or unreadable (years later), a note.
- `--only`/`--skip` select which of the run's cells run now; the others stay as they are, and
  the report still lists every cell of the plan.
- A kept result must match the cell's config hash, model sha256 and inputs sha256
  (`results.reuse_check`); the runner says why it measures a cell again.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from envmatrix import __version__
from envmatrix.config import expand
from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.progress import Progress
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import RunDir, utc_now
from envmatrix.rundir.plan import Plan, ResolvedPlan, plan_to_dict
from envmatrix.rundir.results import load_results

# Plan-level settings that shape images or models but no cell's config hash.
_SETTINGS = ("build", "model_export")
_LISTED = 6  # cell ids named in a message before "and N more"


@dataclass(frozen=True)
class Resumed:
    """What a resume works from: the run's whole plan and the part of it that runs now."""

    resolved: ResolvedPlan
    selected: Plan


def resume_plan(run_dir: RunDir, *, matrix: Path | None, only: Sequence[str],
                skip: Sequence[str], progress: Progress) -> Resumed:
    """The run's own plan, checked against the matrix file, and the cells selected now."""
    resolved = planfile.read_resolved(run_dir.resolved_path)
    check_matrix(resolved.plan, matrix, progress)
    if resolved.plan.hosts:
        resolved = replace(resolved, plan=with_credentials(resolved.plan, matrix, progress))
    selected = select(resolved.plan, only, skip)
    progress("plan", f"resuming run {run_dir.run_id}: its own plan, {len(resolved.plan.cells)} "
                     f"cells; {len(selected.cells)} selected now")
    return Resumed(resolved, selected)


def with_credentials(run_plan: Plan, given: Path | None, progress: Progress) -> Plan:
    """The run's hosts with the TLS files the matrix names: a run directory never records
    where credentials are kept, so a resumed run reads them from the matrix file again (the
    given one, else the run's own), for each host whose name and address still match."""
    path = given or run_plan.source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file_hosts = {h.name: h for h in config.load_plan(path).hosts}
    except (ConfigError, OSError):
        file_hosts = {}
    hosts = []
    for host in run_plan.hosts:
        mine = file_hosts.get(host.name)
        if mine is not None and mine.address == host.address:
            host = replace(host, tls_ca=mine.tls_ca, tls_cert=mine.tls_cert,
                           tls_key=mine.tls_key, tls_verify=mine.tls_verify)
        elif host.address.startswith("tcp://"):
            progress.warn("resume", f"host {host.name}: {path} does not name it at "
                                    f"{host.address} any more, so no TLS files are known for it")
        hosts.append(host)
    return replace(run_plan, hosts=tuple(hosts))


def select(plan: Plan, only: Sequence[str], skip: Sequence[str]) -> Plan:
    """The plan cut down to the cells the globs keep (what runs now); the baseline stays."""
    if not only and not skip:
        return plan
    cells = expand.select(plan.cells, list(only), list(skip))
    env_ids = {c.environment.id for c in cells}
    envs = tuple(e for e in plan.environments if e.id in env_ids)
    base_names = {e.base.name for e in envs}
    workloads = {c.workload.name for c in cells}
    return replace(plan, cells=tuple(cells), environments=envs,
                   bases=tuple(b for b in plan.bases if b.name in base_names),
                   workloads=tuple(w for w in plan.workloads if w.name in workloads))


def check_matrix(run_plan: Plan, given: Path | None, progress: Progress) -> None:
    """Refuse (a given file) or warn (the run's own file) when the matrix differs from the run."""
    path = given or run_plan.source
    if given is None and not path.is_file():
        progress("resume", f"{path}, the matrix this run was made from, is not there: the "
                           "run's own plan is all a resume needs")
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its own warnings are about a run not made here
            file_plan = config.load_plan(path)
    except ConfigError as err:
        if given is not None:
            raise
        progress.warn("resume", f"{path} no longer loads ({str(err).splitlines()[0]}); "
                                "resuming from the run's own plan")
        return
    differences, extra = plan_differences(run_plan, file_plan)
    if differences and given is not None:
        raise ConfigError(
            f"{path} does not describe the run being resumed:\n  " + "\n  ".join(differences)
            + "\nFix: drop --matrix (--resume finishes the run's own plan), or start a new run "
              f"with --matrix {path} to measure what it says now.")
    if differences:
        progress.warn("resume", f"{path} changed since this run was planned; the run's own "
                                "plan is used, the file is not: " + "; ".join(differences)
                      + ". To measure what the file says now, start a new run.")
    if extra:
        progress.warn("resume", f"{path} also has {_count(extra, 'cell')} this run does not "
                                f"plan ({_ids(extra)}): --resume does not add them; a new run "
                                "measures them")


def plan_differences(run_plan: Plan, file_plan: Plan) -> tuple[list[str], list[str]]:
    """(what differs for the run's cells and settings, cells only the file has).

    Hashes are computed by this envmatrix on both sides, so a newer version that hashes more
    fields does not report a change that is not there.
    """
    ours = {c.id: c.config_hash(run_plan.measure) for c in run_plan.cells}
    theirs = {c.id: c.config_hash(file_plan.measure) for c in file_plan.cells}
    differences = []
    gone = [cell for cell in ours if cell not in theirs]
    changed = [cell for cell in ours if cell in theirs and theirs[cell] != ours[cell]]
    if gone:
        differences.append(f"{_count(gone, 'cell')} of the run not in the file: {_ids(gone)}")
    if changed:
        what = _measure_change(run_plan, file_plan) or "their environment, workload or provider"
        differences.append(f"{_count(changed, 'cell')} with other settings ({what}): "
                           f"{_ids(changed)}")
    run_doc, file_doc = plan_to_dict(run_plan), plan_to_dict(file_plan)
    for key in _SETTINGS:
        a, b = _comparable(run_doc.get(key)), _comparable(file_doc.get(key))
        if a != b:
            differences.append(f"{key}: {_changed_keys(a, b)}")
    return differences, [cell for cell in theirs if cell not in ours]


def _comparable(value: Any) -> Any:
    """A settings block without what the host resolved at run time (the CA bundle's path)."""
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k != "ca_bundle_resolved"}
    return value


def _changed_keys(a: Any, b: Any) -> str:
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return f"{a!r} in the run, {b!r} in the file"
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k} {a.get(k)!r} in the run, {b.get(k)!r} in the file" for k in keys)


def _measure_change(run_plan: Plan, file_plan: Plan) -> str | None:
    if run_plan.measure == file_plan.measure:
        return None
    return "measure: " + _changed_keys(plan_to_dict(run_plan)["measure"],
                                       plan_to_dict(file_plan)["measure"])


def _count(items: Sequence[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _ids(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def record(run_dir: RunDir, images: Mapping[str, Mapping[str, Any]], *, only: Sequence[str],
           skip: Sequence[str], cells: Sequence[str]) -> None:
    """Add this resume to the run record: the images used now, and when, how and which cells.

    An environment whose build gave no image now keeps the image the run recorded before.
    """
    def update(run: dict[str, Any]) -> dict[str, Any]:
        recorded = dict(run.get("images") or {})
        recorded.update({env: entry for env, entry in images.items()
                         if entry.get("tag") or env not in recorded})
        resumes = [*(run.get("resumes") or []),
                   {"at": utc_now(), "envmatrix_version": __version__, "only": list(only),
                    "skip": list(skip), "cells": list(cells)}]
        return {**run, "images": dict(sorted(recorded.items())), "resumes": resumes}

    planfile.update_run_record(run_dir.resolved_path, update)


def left_unfinished(run_dir: RunDir, resumed: Resumed) -> list[str]:
    """Cells of the plan outside this resume's selection that still have no ok result."""
    now = {cell.id for cell in resumed.selected.cells}
    return [doc["cell"] for doc in load_results(run_dir, resumed.resolved)
            if doc["cell"] not in now and doc.get("status") != "ok"]
