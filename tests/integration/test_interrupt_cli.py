"""Ctrl-C in the middle of `python -m envmatrix matrix`, then `--resume`, on the real engine.

The interrupted run must leave no container behind, keep the finished cells' results, record
the interrupted cell, print how to resume; the resumed run must measure only what is missing
and end with a complete report.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import docker
import pytest
from testlib import envmatrix_process, envmatrix_started

from envmatrix.config import load as config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWO_ENVS = Path(__file__).resolve().parent / "matrices" / "two_envs.yaml"
# Measurement settings are not part of an image: slower cells, the same (reused) images.
SLOW_MEASURE = ("measure: {warmup: 3, min_iterations: 20, min_time_s: 1.0, repeats: 3, "
                "timeout_s: 300}")
START_TIMEOUT_S = 1200  # a fresh engine builds the two images first


def _statuses(run_dir: Path) -> dict[str, str]:
    return {p.stem: json.loads(p.read_text())["status"]
            for p in (run_dir / "results").glob("*.json")}


def _containers_of(run_id: str) -> list[str]:
    client = docker.from_env()
    found = client.containers.list(all=True, filters={"label": f"envmatrix.run={run_id}"})
    return [c.name for c in found]


def test_interrupted_run_leaves_no_container_and_resumes_to_a_complete_report(
    engine: object, tmp_path: Path
) -> None:
    text = TWO_ENVS.read_text()
    measure_line = next(line for line in text.splitlines() if line.startswith("measure:"))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(text.replace(measure_line, SLOW_MEASURE))
    cells = [cell.id for cell in config.load_plan(matrix).cells]
    out = tmp_path / "run"
    proc = envmatrix_started("matrix", "--matrix", str(matrix), "--out", str(out), cwd=tmp_path)
    # Interrupt once the first cell has finished and the second one's container is running.
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_statuses(out)) >= 1 and (out / "scratch").exists() and any(
            (out / "scratch").iterdir()
        ):
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be interrupted:\n{proc.communicate()[1]}")
    time.sleep(1.0)  # inside the second cell (each takes about 4 s)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    print(stderr)

    assert proc.returncode == 130, stderr
    assert "--resume" in stdout + stderr, "the interrupted run must say how to resume"
    run_id = json.loads((out / ".envmatrix-run").read_text())["run_id"]
    assert _containers_of(run_id) == [], "an interrupted run left containers behind"
    statuses = _statuses(out)
    assert "ok" in statuses.values(), statuses
    assert "interrupted" in statuses.values(), statuses
    finished = {cell for cell, status in statuses.items() if status == "ok"}
    finished_bytes = {cell: (out / "results" / f"{cell}.json").read_bytes() for cell in finished}

    resumed = envmatrix_process("matrix", "--resume", str(out), cwd=tmp_path,
                                timeout=START_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr
    # Only the re-measured cell counts as time inside containers: overhead is never negative.
    overhead = re.search(r"overhead (-?[\d.]+)s", resumed.stderr)
    assert overhead and float(overhead.group(1)) >= 0.0, resumed.stderr
    assert _statuses(out) == dict.fromkeys(cells, "ok")
    for cell, before in finished_bytes.items():  # finished cells were kept, not re-measured
        assert (out / "results" / f"{cell}.json").read_bytes() == before
    report = (out / "report.md").read_text()
    assert all(cell_id.split("--")[0] in report for cell_id in cells)
    assert _containers_of(run_id) == []
