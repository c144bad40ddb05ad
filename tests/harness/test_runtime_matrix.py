"""The harness on real interpreters x real onnxruntime releases (cached venvs, see conftest).

Python 3.6 + onnxruntime 1.5.1, 1.6.0 and 1.7.0 (numpy 1.19; 1.5/1.6 are the CUDA 10.2
releases of onnxruntime-gpu, proven here through their CPU wheels), 3.8 + 1.8 (numpy 1.23),
3.11 + 1.16.3 (numpy 1.26), 3.13 + 1.32.0 (numpy 2.x): the same model and seed must give
identical input bytes everywhere, outputs that agree within float tolerance, and a profiled
node placement (every node on the CPU provider).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from harness_testlib import RUNTIMES, HarnessRun, run_harness

pytestmark = pytest.mark.slow

LABELS = ("py36-ort1.5", "py36-ort1.6", "py36-ort1.7", "py38-ort1.8", "py311-ort1.16",
          "py313-ort1.32")
MIN_ITERATIONS = 30
ARGS = ["--shape", "x=4,16", "--shape", "ids=4,8", "--seed", "11", "--warmup", "3",
        "--min-iterations", str(MIN_ITERATIONS), "--min-time", "0.1", "--repeats", "2"]


@pytest.fixture(scope="module")
def runs(venv: Callable[[str], Path], models: dict,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, HarnessRun]:
    done = {}
    for label in LABELS:
        folder = tmp_path_factory.mktemp(label)
        done[label] = run_harness(venv(label), ["--model", str(models["tiny"]), *ARGS,
                                                "--save-outputs", str(folder / "out.npz")],
                                  folder)
    return done


@pytest.mark.parametrize("label", LABELS)
def test_runs_on_every_runtime(runs: dict[str, HarnessRun], label: str) -> None:
    run = runs[label]
    doc = run.doc
    assert run.code == 0 and doc["status"] == "ok", doc["reason"]
    python, pins = RUNTIMES[label]
    assert doc["fingerprint"]["python"]["version"].startswith(python + ".")
    for pin in pins:
        name, version = pin.split("==")
        assert doc["fingerprint"]["packages"][name] == version
    assert doc["provider"]["active"] == ["CPUExecutionProvider"]
    assert doc["provider"]["fallback"] is False
    assert len(doc["repeats"]) == 2
    assert all(len(rep["latencies_s"]) >= MIN_ITERATIONS for rep in doc["repeats"])
    pooled = [lat for rep in doc["repeats"] for lat in rep["latencies_s"]]
    assert doc["summary"]["iterations"] == len(pooled)
    assert doc["summary"]["latency_s"]["p99"] == pytest.approx(float(np.percentile(pooled, 99)))
    assert doc["summary"]["latency_s"]["min"] == min(pooled)
    # where the nodes ran: one profiled inference in the first repeat, every node on the CPU
    provider = doc["provider"]
    assert provider["node_placement"] == "profiled", provider["node_placement"]
    assert set(provider["nodes"]) == {"CPUExecutionProvider"}
    assert provider["nodes"]["CPUExecutionProvider"] >= 4  # after fusions (Gemm+Relu, ...)
    assert provider["node_share"] == 1.0 and provider["fallback_nodes"] == []
    assert provider["fallback_node_count"] == 0 and provider["copy_nodes"] == 0
    assert provider["engine_cache"] is None
    assert doc["summary"]["gpu"] is None and doc["fingerprint"]["cuda"] is None
    assert all(rep["gpu"] is None and rep["engine_build_s"] is None for rep in doc["repeats"])
    # the profiling trace is deleted, and none is left in the working directory
    assert not list(run.out.parent.glob("*profile*.json"))


def test_generated_inputs_are_identical_across_versions(runs: dict[str, HarnessRun]) -> None:
    digests = {label: [(i["name"], i["dtype"], tuple(i["shape"]), i["sha256"])
                       for i in run.doc["inputs"]] for label, run in runs.items()}
    numpy_versions = {run.doc["fingerprint"]["packages"]["numpy"] for run in runs.values()}
    assert len(numpy_versions) == 4  # really four numpy releases (1.19 for the three on 3.6)
    assert len({tuple(d) for d in digests.values()}) == 1, digests


def test_outputs_agree_across_versions(runs: dict[str, HarnessRun]) -> None:
    reference = np.load(runs[LABELS[-1]].out.parent / "out.npz")
    for label in LABELS[:-1]:
        saved = np.load(runs[label].out.parent / "out.npz")
        for name in ("y", "z"):
            np.testing.assert_allclose(saved[name], reference[name], rtol=1e-5, atol=1e-6)
        for mine, theirs in zip(runs[label].doc["outputs"], runs[LABELS[-1]].doc["outputs"]):
            assert (mine["name"], mine["shape"]) == (theirs["name"], theirs["shape"])
            assert mine["mean"] == pytest.approx(theirs["mean"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("label", "model", "expected"), [
    ("py38-ort1.8", "ir10", "model IR version 10 / opset 11 is newer than onnxruntime 1.8.0 "
                            "accepts; re-export it with IR version <= 7"),
    ("py38-ort1.8", "opset21", "model IR version 7 / opset 21 is newer than onnxruntime 1.8.0 "
                               "accepts; re-export it with opset <= 14"),
    ("py36-ort1.5", "ir10", "model IR version 10 / opset 11 is newer than onnxruntime 1.5.1 "
                            "accepts; re-export it with IR version <= 7"),
    ("py36-ort1.5", "opset21", "model IR version 7 / opset 21 is newer than onnxruntime 1.5.1 "
                               "accepts; re-export it with opset <= 12"),
    ("py36-ort1.6", "opset21", "model IR version 7 / opset 21 is newer than onnxruntime 1.6.0 "
                               "accepts; re-export it with opset <= 13"),
])
def test_old_runtime_names_the_version_to_export(venv: Callable[[str], Path], models: dict,
                                                 tmp_path: Path, label: str, model: str,
                                                 expected: str) -> None:
    run = run_harness(venv(label), ["--model", str(models[model]), *ARGS], tmp_path)
    assert run.code == 2 and run.doc["status"] == "error"
    assert run.doc["reason"].startswith(expected)
