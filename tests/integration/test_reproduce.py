"""The report's reproduce command works as printed, on the real engine.

A one-environment copy of matrices/two_envs.yaml (same environment, so the same content-hash
image the other integration tests build is reused) runs through the real CLI with a tiny
measure; then the `docker run` that report.md prints for its cell is run with bash from inside
the run directory, exactly as printed, after the preparation the report asks for. It must
exit 0 and leave a harness result with status ok: the printed flags (read-only root, user
nobody, no network, limits, mounts relative to the run directory) are a container that works.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from testlib import REPO, envmatrix_process, in_ci

from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWO_ENVS = Path(__file__).resolve().parent / "matrices" / "two_envs.yaml"
ENV = "bullseye-ort1.8.0"  # two_envs.yaml's baseline
CELL = f"{ENV}--mlp--cpu"
TINY_MEASURE = ("measure: {warmup: 1, min_iterations: 5, min_time_s: 0.05, repeats: 1, "
                "timeout_s: 300}")
# A first run on an engine without the image builds it (about 2 minutes on 2 cores).
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def docker_cli() -> str:
    """The docker client the report's reader would use."""
    found = shutil.which("docker")
    if found is None:
        if in_ci():
            pytest.fail("CI is set but there is no `docker` client on PATH", pytrace=False)
        pytest.skip("no `docker` client on PATH to run the printed command with")
    return found


@pytest.fixture(scope="module")
def run_dir(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("reproduce")
    text, found = re.subn(r"(?m)^measure: .*$", TINY_MEASURE, TWO_ENVS.read_text())
    assert found == 1, "two_envs.yaml no longer has a one-line measure: update this test"
    matrix = work / "matrix.yaml"
    matrix.write_text(text)
    out = work / "run"
    proc = envmatrix_process("matrix", "--matrix", str(matrix), "--only", ENV, "--out", str(out),
                             cwd=work, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    return out


def reproduce_section(report: str) -> str:
    return report.split("## How to reproduce", 1)[1].split("\n## ", 1)[0]


def printed_docker_run(section: str) -> str:
    """The one `docker run` fenced block of the section (the other blocks are nox commands)."""
    blocks = re.findall(r"(?ms)^(`{3,})sh\n(.*?)\n\1$", section)
    commands = [body for _ticks, body in blocks if body.startswith("docker run ")]
    assert len(commands) == 1, section
    return commands[0]


def printed_preparation(section: str, cell: str) -> str:
    """The `mkdir ... && chmod ...` the report tells people to run first, for one cell."""
    found = re.search(r"`(mkdir -p scratch/<cell> && chmod 777 scratch/<cell>)`", section)
    assert found, section
    return found.group(1).replace("<cell>", cell)


def test_printed_reproduce_command_runs_the_cell(run_dir: Path, docker_cli: str) -> None:
    section = reproduce_section((run_dir / "report.md").read_text())
    assert f"Cell {CELL}:" in section
    command = printed_docker_run(section)
    assert str(run_dir) not in command and str(REPO) not in command  # no local path
    assert "--memory-swap" in command
    script = f"{printed_preparation(section, CELL)}\n{command}\n"
    done = subprocess.run(["bash", "-c", script], cwd=run_dir, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    out = run_dir / "scratch" / CELL
    result = json.loads((out / "round-0.json").read_text())
    assert result["status"] == "ok", result.get("reason")
    assert result["cell"] == CELL
    assert (out / "outputs.npz").is_file()
