"""The plan's file form: `matrix.resolved.yaml`, the expanded plan plus the run record.

Reading a run goes through here and `plan.plan_from_dict` alone, so the report, compare, resume
and replay see the objects the run saw without importing the matrix loader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from envmatrix import yamlsrc
from envmatrix.errors import RunDirError
from envmatrix.problems import kind_of
from envmatrix.rundir import plan as planmod
from envmatrix.rundir.layout import atomic_write_text
from envmatrix.rundir.plan import Plan


def dump_resolved(plan: Plan, path: Path | str, extra: Mapping[str, Any]) -> None:
    """Write plan_to_dict(plan) plus `run: extra` as YAML, atomically (temp, fsync, rename)."""
    doc = {**planmod.plan_to_dict(plan), "run": json.loads(json.dumps(dict(extra), default=str))}
    atomic_write_text(Path(path), yamlsrc.dump_plain(doc))


def update_run_record(path: Path | str,
                      update: Callable[[dict[str, Any]], Mapping[str, Any]]) -> None:
    """Replace the `run:` part of a matrix.resolved.yaml by `update(run)`; the plan stays.

    --resume records what it adds (images, when and how it resumed) without writing the plan
    again: the keys before `run:` are written back as they were read, so they keep their bytes
    (a test checks).
    """
    target = Path(path)
    data = yamlsrc.read_plain(target)
    if not isinstance(data, dict):
        raise RunDirError(f"{target}: not a resolved plan. Fix: re-run the matrix.")
    run = json.loads(json.dumps(dict(update(dict(data.get("run") or {}))), default=str))
    kept = {k: v for k, v in data.items() if k != "run"}
    atomic_write_text(target, yamlsrc.dump_plain({**kept, "run": run}))


def read_resolved(path: Path | str) -> planmod.ResolvedPlan:
    """Read a matrix.resolved.yaml back into the typed plan the run used (and its run record).

    The only way other modules read a run's plan: YAML through yamlsrc, then
    `plan.plan_from_dict`, so report, compare and resume see the objects the run saw.
    """
    target = Path(path)
    try:
        data = yamlsrc.read_plain(target)
    except FileNotFoundError:
        raise RunDirError(f"{target}: missing. Fix: give a run directory that a run "
                          "created (it writes matrix.resolved.yaml first).") from None
    except (OSError, UnicodeDecodeError, yamlsrc.YamlError) as err:
        raise RunDirError(f"{target}: unreadable ({err}). Fix: re-run the matrix.") from None
    if not isinstance(data, dict) or data.get("schema") != planmod.PLAN_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else kind_of(data)
        raise RunDirError(f"{target}: expected schema {planmod.PLAN_SCHEMA}, found {found!r}. "
                          "Fix: use a run directory written by this envmatrix version.")
    try:
        return planmod.plan_from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"{target}: the plan is damaged ({type(err).__name__}: {err}). Fix: "
                          "re-run the matrix, or restore the file from the run's copy.") from None
