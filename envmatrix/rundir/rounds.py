"""`rounds.json`, the order the cells ran in, per round (the runner writes it, `run` reads it).

One entry (an invocation) per run, resume or host of a multi-host run, each listing its rounds
as they started, so the order of an interrupted run is on disk too (docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict, TypeGuard

from envmatrix.rundir.layout import RunDir

ROUNDS_FILE = "rounds.json"
ROUNDS_SCHEMA = "envmatrix.rounds/1"


class RoundOrder(TypedDict):
    round: int  # 0-based
    order: list[str]  # cell ids, in the order they ran


class Invocation(TypedDict, total=False):
    started_at: str
    rule: str  # how the order was chosen ("rotate by one place per round")
    rounds: list[RoundOrder]
    host: str | None  # the matrix host it ran on (multi-host runs)


class RoundsFile(TypedDict):
    schema: str
    invocations: list[Invocation]


def rounds_path(run_dir: RunDir) -> Path:
    return run_dir.path / ROUNDS_FILE


def read_rounds(run_dir: RunDir) -> RoundsFile | None:
    """The run's round orders; None when it has none (no cell needed a container, a run
    before the file existed) or the file is not one (it is evidence only, never a number)."""
    try:
        doc: object = json.loads(rounds_path(run_dir).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if _is_rounds(doc) else None


def _is_rounds(doc: object) -> TypeGuard[RoundsFile]:
    return (isinstance(doc, dict) and doc.get("schema") == ROUNDS_SCHEMA
            and isinstance(doc.get("invocations"), list)
            and all(isinstance(entry, dict) for entry in doc["invocations"]))
