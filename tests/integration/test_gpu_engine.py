"""GPU cells on a real engine without GPUs (these machines): the device request reaches the
container's HostConfig, the engine refuses it in its own words, and a run goes on without it.

A machine whose engine can give GPUs makes the refusal tests meaningless: they skip there,
saying why (the HostConfig test still runs).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from testlib import envmatrix_process

from envmatrix import toolwords
from envmatrix.errors import GpuUnavailableError
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import Engine

pytestmark = pytest.mark.integration
GPU_MATRIX = Path(__file__).resolve().parent / "matrices" / "gpu_cells.yaml"
CUDA_CELL = "bookworm-ortgpu1.22.0--mlp--cuda"
CPU_CELL = "bullseye-ort1.8.0--mlp--cpu"


def _matrix_run(workdir: Path) -> subprocess.CompletedProcess[str]:
    """`python -m envmatrix matrix` on GPU_MATRIX."""
    return envmatrix_process("matrix", "--matrix", str(GPU_MATRIX), "--out", str(workdir / "gpu"),
                             cwd=workdir)


def _spec(image: str, labels: dict[str, str], gpus: tuple[str, ...] | None) -> ContainerSpec:
    return ContainerSpec(image=image, command=["true"], labels=dict(labels), gpus=gpus)


def _device_requests(engine: Engine, spec: ContainerSpec) -> Any:
    return engine.container_attrs(engine.create(spec))["HostConfig"].get("DeviceRequests")


def test_gpu_cells_carry_a_device_request_and_cpu_cells_none(
        engine: Engine, bookworm: str, run_label: dict[str, str]) -> None:
    every = _device_requests(engine, _spec(bookworm, run_label, ("all",)))
    assert [(r["Driver"], r["Count"], r["Capabilities"]) for r in every] == [("", -1, [["gpu"]])]
    two = _device_requests(engine, _spec(bookworm, run_label, ("0", "1")))
    assert [(r["DeviceIDs"], r["Capabilities"]) for r in two] == [(["0", "1"], [["gpu"]])]
    assert not _device_requests(engine, _spec(bookworm, run_label, None))


@pytest.fixture()
def gpuless(engine: Engine) -> dict[str, Any]:
    support = engine.gpu_support()
    if support.get("nvidia_runtime") or support.get("cdi_spec_dirs"):
        pytest.skip(f"this engine may give GPUs ({support}): no refusal to see")
    return support


def test_the_engine_refuses_a_gpu_in_its_own_words(
        engine: Engine, bookworm: str, run_label: dict[str, str], gpuless: dict[str, Any],
        tmp_path: Path) -> None:
    with pytest.raises(GpuUnavailableError) as err:
        engine.run(_spec(bookworm, run_label, ("all",)), timeout_s=60)
    print(f"engine said: {err.value}")
    assert toolwords.gpu_unavailable(str(err.value))
    # The same container without GPUs runs: the refusal was about the GPU only.
    assert engine.run(_spec(bookworm, run_label, None), timeout_s=60).exit_code == 0


@pytest.mark.slow
def test_a_run_with_a_cuda_cell_and_a_cpu_cell(engine: Engine, gpuless: dict[str, Any],
                                               tmp_path: Path) -> None:
    run = _matrix_run(tmp_path)
    assert run.returncode == 10, run.stderr  # some cells failed, the run finished
    out = tmp_path / "gpu"
    got = {cell: json.loads((out / "results" / f"{cell}.json").read_text())
           for cell in (CUDA_CELL, CPU_CELL)}
    assert got[CPU_CELL]["status"] == "ok"
    cuda = got[CUDA_CELL]
    assert cuda["status"] == "no_gpu", cuda["reason"]
    assert "could not give the container a GPU" in cuda["reason"]
    assert toolwords.gpu_unavailable(cuda["reason"])
    assert cuda["host"]["gpus"] == "all" and cuda["host"]["engine_gpu"] == gpuless
    report = (out / "report.md").read_text().replace("\\", "")  # markdown escapes _ and [
    line = next(ln for ln in report.splitlines() if CUDA_CELL in ln and "| no_gpu" in ln)
    assert 'could not select device driver "" with capabilities: [[gpu]]' in line, line
    assert "--gpus all" in report  # the reproduce command asks for the GPU too
    assert "declares no CUDA version" in run.stderr  # the config warning, shown once
