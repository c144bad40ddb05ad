"""A run directory read back, once: its plan, its run record, one result per cell, its rounds
and looks.

The one place a finished (or interrupted) run is read: the report, compare, the gate and
replay take a `Run` instead of opening the folder, the plan and the results each on their own.
Reading goes through the owners of each file: `layout.open_run_dir` (the marker),
`planfile.read_resolved` (matrix.resolved.yaml), `results.load_results` (results/*.json: one
per plan cell, missing and stale cells as `skipped` placeholders), `rounds.read_rounds` and
`looks.read_looks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envmatrix.rundir import planfile
from envmatrix.rundir.layout import RunDir, open_run_dir
from envmatrix.rundir.looks import LooksFile, read_looks
from envmatrix.rundir.plan import Plan, ResolvedPlan, RunRecord
from envmatrix.rundir.resultfile import Result
from envmatrix.rundir.results import load_results
from envmatrix.rundir.rounds import RoundsFile, read_rounds


@dataclass(frozen=True)
class Run:
    """Everything a run directory holds that the analysis reads, typed."""

    run_dir: RunDir
    resolved: ResolvedPlan  # the plan the run used and its run record
    results: dict[str, Result]  # cell id -> result: every plan cell, in plan order
    rounds: RoundsFile | None = None  # the order cells ran in; None without rounds.json
    looks: LooksFile | None = None  # what an adaptive run decided; None without looks.json

    @property
    def path(self) -> Path:
        return self.run_dir.path

    @property
    def plan(self) -> Plan:
        return self.resolved.plan

    @property
    def record(self) -> RunRecord:
        """What the run recorded beside its plan: id, images, resumes."""
        return self.resolved.run

    def all_ok(self, *cell_ids: str) -> bool:
        """Did each of these cells measure (status ok)? False for a cell the plan lacks."""
        return all((self.results.get(cid) or {}).get("status") == "ok" for cid in cell_ids)


def load_run(where: Path | RunDir) -> Run:
    """Read a run directory (a path such as reports/latest, or one already opened).

    RunDirError when it is not a run directory, its plan is missing or damaged, or a result
    file cannot be interpreted (results.load_results); a plan cell without a result, or whose
    result was measured with other settings, is a `skipped` result saying so.
    """
    run_dir = where if isinstance(where, RunDir) else open_run_dir(where)
    resolved = planfile.read_resolved(run_dir.resolved_path)
    results = {result["cell"]: result for result in load_results(run_dir, resolved)}
    return Run(run_dir, resolved, results, read_rounds(run_dir), read_looks(run_dir))
