"""The CLI run on small matrices, as the end-to-end tests use it (test_pipeline and others).

The matrices under matrices/ have environments copied from the default matrix (the same
content-hash tags), so the images the integration tests build are reused between them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testlib import envmatrix_process

from envmatrix.config import load as config

MATRICES = Path(__file__).resolve().parent / "matrices"
DONE = re.compile(r"done\s+(\d+)/(\d+) cells ok; wall ([\d.]+)s, inside containers ([\d.]+)s, "
                  r"overhead (-?[\d.]+)s")


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    seconds: float  # measured around the subprocess
    out: Path  # the run directory given with --out (or the report command's argument)

    def done(self) -> tuple[int, int, float, float, float]:
        """(ok, total, wall, inside containers, overhead) from the `done` progress line."""
        match = DONE.search(self.stderr)
        assert match, f"no done line in:\n{self.stderr}"
        ok, total, wall, inside, overhead = match.groups()
        return int(ok), int(total), float(wall), float(inside), float(overhead)


def envmatrix_cli(args: list[str], cwd: Path, out: Path) -> CliRun:
    """`envmatrix_process`, timed, with the run directory it was given."""
    started = time.monotonic()
    proc = envmatrix_process(*args, cwd=cwd)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started, out)


def matrix_run(matrix: Path, workdir: Path, name: str) -> CliRun:
    out = workdir / name
    return envmatrix_cli(["matrix", "--matrix", str(matrix), "--out", str(out)], workdir, out)


def cell_ids(matrix: Path) -> list[str]:
    return [cell.id for cell in config.load_plan(matrix).cells]


def load_result(run_dir: Path, cell: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((run_dir / "results" / f"{cell}.json").read_text())
    return doc


def build_lines(run: CliRun) -> dict[str, str]:
    """environment id -> what its build progress line says after the id (reused/built/FAILED)."""
    found = re.findall(r"build\s+(\S+): (reused|built|FAILED)\b(.*)$", run.stderr, re.MULTILINE)
    return {env_id: f"{verb}{rest}" for env_id, verb, rest in found}
