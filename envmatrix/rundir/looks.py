"""`looks.json`: what the runner decided at each look of an adaptive run (the runner writes
it, `run` reads it).

One entry per invocation (a run, each --resume, each host of a multi-host run; see
rundir.invocations), holding the sequential design the looks were read with
(analysis.stopping.Monitor.design) and every look's record: each comparison read, settled or
not, and the cells that left the rounds. Written after every look, so an interrupted run keeps
its looks. It is a record of the runner's decisions only: the report recomputes every verdict
from the results (docs/result-schema.md, "looks.json").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, TypeGuard

from envmatrix.rundir.invocations import InvocationEntry
from envmatrix.rundir.layout import RunDir

LOOKS_FILE = "looks.json"
LOOKS_SCHEMA = "envmatrix.looks/1"


class LookedAt(TypedDict):
    """One comparison as a look read it."""

    baseline: str  # cell ids
    candidate: str
    kind: str  # "baseline" (against the run's baseline) or "within" (within an environment)
    metric: str  # "p50" or "throughput"
    ratio: float  # candidate / baseline
    low: float
    high: float
    verdict: str | None  # faster | slower | equivalent | inconclusive
    look: int | None  # rounds at the look that decided
    settled: bool  # settled at this look (it is not read again)


class LookRecord(TypedDict):
    round: int  # rounds done when the look was taken (1-based: 8 = after the 8th round)
    comparisons: list[LookedAt]
    leaving: list[str]  # cells that left the rounds at this look


class Design(TypedDict, total=False):
    adaptive: bool
    looks: list[int]  # the planned looks, in rounds done
    ranks: list[int]  # the order statistic each look's interval reads
    alpha: float
    error: float  # the exact error rate over all looks
    nominal: float  # the per-look level


class LooksInvocation(TypedDict, total=False):
    started_at: str
    design: Design
    looks: list[LookRecord]
    host: str | None  # the matrix host it ran on (multi-host runs)


class LooksFile(TypedDict):
    schema: str
    invocations: list[LooksInvocation]


def looks_path(run_dir: RunDir) -> Path:
    return run_dir.path / LOOKS_FILE


class LooksLog:
    """This invocation's entry of looks.json: its design at once, then each look as taken."""

    def __init__(self, run_dir: RunDir, design: dict[str, Any], host: str | None = None) -> None:
        self._entry = InvocationEntry(looks_path(run_dir), LOOKS_SCHEMA,
                                      {"design": design, "looks": []}, host)
        self._entry.save()

    def add(self, record: dict[str, Any]) -> None:
        self._entry.entry["looks"].append(record)
        self._entry.save()


def read_looks(run_dir: RunDir) -> LooksFile | None:
    """The run's looks; None when it has none (no adaptive rounds, a run before the file
    existed) or the file is not one (it is evidence only, never a number)."""
    try:
        doc: object = json.loads(looks_path(run_dir).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if _is_looks(doc) else None


def _is_looks(doc: object) -> TypeGuard[LooksFile]:
    return (isinstance(doc, dict) and doc.get("schema") == LOOKS_SCHEMA
            and isinstance(doc.get("invocations"), list)
            and all(isinstance(entry, dict) and isinstance(entry.get("looks", []), list)
                    for entry in doc["invocations"]))
