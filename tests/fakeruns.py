"""Fake runs: the results and run directories a finished run leaves (for the report, compare,
gate and replay tests), and the plan, images and inputs the runner is handed (for the runner,
scheduler and pipeline tests). Tests of the fakes themselves: tests/unit/test_fakes.py.

A fake cell draws per-process p50s around a true p50 with a chosen spread across processes
(CV), then per-iteration latencies from a lognormal around each process's p50: the shape
real measurements have (docs/result-schema.md; shared/ENVIRONMENT.md's noise figures).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from envmatrix.rundir.layout import RunDir, create_run_dir
from envmatrix.rundir.plan import Base, Cell, Environment, Measure, Plan, Workload, plan_from_dict

# -- results and run directories, as a finished run leaves them -------------------------------

BASELINE = "bullseye-ort1.8.0"
CANDIDATE = "bookworm-ort1.20.1"
CPU_FLAGS = ["avx", "avx2", "fma", "sse4_2"]


def fake_result(
    cell: str,
    *,
    p50: float = 0.005,
    cv: float = 0.02,
    repeats: int = 5,
    iterations: int = 400,
    seed: int = 0,
    provider: str = "CPUExecutionProvider",
    packages: dict[str, str] | None = None,
    cpu_model: str = "Intel(R) Xeon(R) Platinum 8481C",
    cpu_flags: list[str] | None = None,
    cores: int = 2,
    cores_used: float = 0.95,
) -> dict[str, Any]:
    """An ok result of schema envmatrix.result/1 with raw latencies of known truth."""
    env, workload, _prov = cell.split("--")
    rng = np.random.default_rng(seed)
    packages = packages or {"onnxruntime": "1.8.0", "numpy": "1.21.6"}
    reps: list[dict[str, Any]] = []
    for i in range(repeats):
        proc_p50 = p50 * float(np.exp(rng.normal(0.0, cv)))
        lat = proc_p50 * np.exp(rng.normal(0.0, 0.05, size=iterations))
        reps.append({"index": i, "session_create_s": 0.2, "first_inference_s": 3 * p50,
                     "latencies_s": [float(x) for x in lat],
                     "measure_wall_s": float(lat.sum()) * 1.001,
                     "cpu_time_s": cores_used * float(lat.sum()) * 1.001,
                     "peak_rss_bytes": 150 * 2**20})
    pooled = np.concatenate([r["latencies_s"] for r in reps])
    pct = {f"p{q}": float(np.percentile(pooled, q)) for q in (50, 90, 95, 99)}
    return {
        "schema": "envmatrix.result/1", "status": "ok", "reason": None, "log_tail": None,
        "cell": cell, "environment": env, "workload": workload, "backend": "onnxruntime",
        "harness_version": "1", "started_at": "2026-11-23T12:00:00Z",
        "finished_at": "2026-11-23T12:00:14Z",
        "provider": {"requested": provider, "options": {}, "available": [provider],
                     "active": [provider], "fallback": False},
        "settings": {"warmup": 10, "min_iterations": 50, "min_time_s": 0.5 * p50 * iterations,
                     "repeats": repeats, "threads": None, "seed": 0},
        "repeats": reps,
        "summary": {"iterations": int(pooled.size),
                    "latency_s": {**pct, "mean": float(pooled.mean()), "std": float(pooled.std()),
                                  "min": float(pooled.min()), "max": float(pooled.max())},
                    "repeat_p50_s": [float(np.percentile(r["latencies_s"], 50)) for r in reps],
                    "throughput_per_s": float(pooled.size / pooled.sum()),
                    "session_create_s": 0.2, "first_inference_s": 3 * p50,
                    "peak_rss_bytes": 150 * 2**20, "cpu_time_s": 9.5},
        "outputs": [],
        "fingerprint": {
            "python": {"version": "3.9.2", "implementation": "CPython"},
            "os": {"pretty_name": "Debian GNU/Linux 11 (bullseye)", "kernel": "6.1.0"},
            "glibc": "2.31",
            "cpu": {"model": cpu_model, "flags": cpu_flags or CPU_FLAGS, "cores_visible": cores},
            "packages": packages, "providers_available": [provider],
            "image": {"base": "debian:bullseye", "id": f"sha256:{env}"},
        },
        "host": {"exit_code": 0, "image_id": f"sha256:{env}", "image_tag": f"envmatrix/{env}:1",
                 "config_hash": "h-" + cell, "requested_packages": {
                     k: v for k, v in packages.items() if k != "numpy"},
                 "run_id": "run-1", "command": ["/opt/venv/bin/python", "-m", "harness"]},
    }  # fmt: skip


def failed_result(cell: str, status: str = "build_failed", reason: str = "pip failed",
                  log_tail: str = "ERROR: no matching distribution") -> dict[str, Any]:
    env, workload, _prov = cell.split("--")
    return {"schema": "envmatrix.result/1", "status": status, "reason": reason,
            "log_tail": log_tail, "cell": cell, "environment": env, "workload": workload,
            "provider": {"requested": "CPUExecutionProvider"}, "repeats": None, "summary": None,
            "fingerprint": None, "host": {"config_hash": "h-" + cell}}


def plan_dict(cells: list[str], baseline: str = BASELINE) -> dict[str, Any]:
    """A resolved plan (envmatrix.plan/1) holding exactly these cells."""
    envs = list(dict.fromkeys(c.split("--")[0] for c in cells))
    workloads = list(dict.fromkeys(c.split("--")[1] for c in cells))
    return {
        "schema": "envmatrix.plan/1", "source": "matrix.yaml", "baseline": baseline,
        "measure": {"warmup": 10, "min_iterations": 50, "min_time_s": 1.0, "repeats": 5,
                    "threads": None, "cpuset": None, "memory_limit": "4g", "pids_limit": 512},
        "environments": [{"id": e, "base": "b", "image": "debian:bullseye", "python": "system",
                          "packages": {"onnxruntime": "1.8.0"}, "providers": ["cpu"]}
                         for e in envs],
        "workloads": [{"name": w, "model": "zoo:cnn", "backend": "onnxruntime"}
                      for w in workloads],
        "cells": [{"id": c, "environment": c.split("--")[0], "workload": c.split("--")[1],
                   "provider": c.split("--")[2], "provider_options": {},
                   "config_hash": "h-" + c} for c in cells],
        "run": {"run_id": "run-1"},
    }  # fmt: skip


def typed_plan(cells: list[str], baseline: str = BASELINE) -> Plan:
    """The typed `Plan` that a run directory holding plan_dict(cells) reads back as."""
    return plan_from_dict(plan_dict(cells, baseline)).plan


def plan_cell(cell_id: str) -> Cell:
    """One typed plan cell for an id `<environment>--<workload>--<provider>`."""
    return typed_plan([cell_id], baseline=cell_id.split("--")[0]).cells[0]


def make_run(root: Path, results: list[dict[str, Any]],
             outputs: dict[str, dict[str, np.ndarray]] | None = None,
             baseline: str = BASELINE, run_id: str = "run-1") -> Path:
    """A run directory as the runner leaves it: marker, resolved plan, results, outputs."""
    run = create_run_dir(root, run_id=run_id)
    plan = plan_dict([r["cell"] for r in results], baseline)
    (run.path / "matrix.resolved.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    for res in results:
        (run.results_dir / f"{res['cell']}.json").write_text(json.dumps(res))
    for cell, arrays in (outputs or {}).items():
        named: dict[str, Any] = dict(arrays)  # savez's own keywords are typed apart
        np.savez(run.outputs_dir / f"{cell}.npz", **named)
    return run.path



# -- a plan, its images and its inputs, as the runner is handed them --------------------------


@dataclass(frozen=True)
class Built:
    """An environment whose image was built."""

    tag: str
    image_id: str


@dataclass(frozen=True)
class Failed:
    """An environment whose image failed to build."""

    message: str
    log_tail: str


@dataclass(frozen=True)
class Prepared:
    """A workload's prepared inputs."""

    model_path: Path
    inputs_path: Path
    torchscript_path: Path | None = None


MEASURE = Measure(warmup=2, min_iterations=5, min_time_s=0.25, repeats=2, threads=1,
                  cpuset="1", timeout_s=30, memory_limit="512m", pids_limit=64)  # fmt: skip


def make_plan(tmp_path: Path, providers: tuple[str, ...] = ("cpu",)) -> Plan:
    """Two environments (onnxruntime 1.8.0 and 1.16.0) times workload cnn times `providers`."""
    base = Base(name="bullseye", image="debian:bullseye", family="debian")
    envs = tuple(
        Environment(id=f"env{v}", base=base, python="system",
                    packages=(("onnxruntime", v),), providers=("cpu", "openvino"))
        for v in ("1.8.0", "1.16.0")
    )  # fmt: skip
    wl = Workload(name="cnn", model="zoo:cnn")
    cells = tuple(
        Cell(id=f"{e.id}--cnn--{p}", environment=e, workload=wl, provider=p,
             provider_options=(("device_type", "CPU"),) if p == "openvino" else ())
        for e in envs for p in providers
    )  # fmt: skip
    return Plan(source=tmp_path / "matrix.yaml", bases=(base,), environments=envs,
                workloads=(wl,), measure=MEASURE, baseline=envs[0].id, cells=cells)  # fmt: skip


IMAGES = {"env1.8.0": Built("envmatrix/env1.8.0:aa", "sha256:aa"),
          "env1.16.0": Built("envmatrix/env1.16.0:bb", "sha256:bb")}  # fmt: skip


def run_with_inputs(tmp_path: Path) -> RunDir:
    """Run r1 under tmp_path/reports with workload cnn's model and inputs in place."""
    run = create_run_dir(tmp_path / "reports", "r1")
    (run.inputs_dir / "cnn").mkdir()
    (run.inputs_dir / "cnn" / "model.onnx").write_bytes(b"onnx")
    (run.inputs_dir / "cnn" / "inputs.npz").write_bytes(b"npz")
    return run


def prepared(run: RunDir) -> dict[str, Prepared]:
    """What the inputs stage hands on for run_with_inputs's run."""
    folder = run.inputs_dir / "cnn"
    return {"cnn": Prepared(folder / "model.onnx", folder / "inputs.npz")}
