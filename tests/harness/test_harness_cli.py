"""The real harness as a subprocess on an interpreter with onnxruntime: results and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness_testlib import REPO, run_harness, sha256_of

FAST = ["--warmup", "2", "--min-iterations", "20", "--min-time", "0.05"]
TINY_SHAPES = ["--shape", "x=2,16", "--shape", "ids=2,8"]


def test_ok_result_is_complete_and_consistent(ort_python: Path, models: dict,
                                              tmp_path: Path) -> None:
    run = run_harness(ort_python, ["--model", str(models["tiny"]), *TINY_SHAPES, *FAST,
                                   "--repeats", "2", "--cell", "c1", "--workload", "tiny",
                                   "--environment", "host", "--save-outputs",
                                   str(tmp_path / "out.npz")], tmp_path)
    doc = run.doc
    assert run.code == 0 and doc["status"] == "ok" and doc["reason"] is None
    assert (doc["schema"], doc["cell"], doc["workload"], doc["environment"]) == (
        "envmatrix.result/1", "c1", "tiny", "host")
    assert doc["provider"]["active"][0] == "CPUExecutionProvider"
    assert doc["provider"]["fallback"] is False
    assert doc["model"]["sha256"] == sha256_of(models["tiny"])
    assert doc["model"]["ir_version"] == 7 and doc["model"]["opsets"] == {"": 11}
    assert [i["name"] for i in doc["model"]["inputs"]] == ["x", "ids"]
    assert [r["index"] for r in doc["repeats"]] == [0, 1]
    for rep in doc["repeats"]:
        assert len(rep["latencies_s"]) >= 20 and rep["measure_wall_s"] >= 0.05
        assert rep["peak_rss_bytes"] > 10 * 2**20 and rep["cpu_time_s"] > 0
        assert rep["session_create_s"] > 0 and rep["first_inference_s"] > 0
    pooled = [lat for rep in doc["repeats"] for lat in rep["latencies_s"]]
    summary = doc["summary"]
    assert summary["iterations"] == len(pooled)
    assert summary["latency_s"]["p50"] == pytest.approx(float(np.percentile(pooled, 50)))
    assert summary["latency_s"]["max"] == max(pooled)
    assert summary["repeat_p50_s"] == pytest.approx(
        [float(np.median(rep["latencies_s"])) for rep in doc["repeats"]])
    saved = np.load(tmp_path / "out.npz")
    assert sorted(saved.files) == ["y", "z"]
    assert {o["name"]: o["shape"] for o in doc["outputs"]} == {"y": [2, 8], "z": [2, 4]}
    assert doc["outputs"][0]["mean"] == pytest.approx(float(saved["y"].mean()), rel=1e-6)
    assert [i["source"] for i in doc["inputs"]] == ["generated", "generated"]
    fingerprint = doc["fingerprint"]
    for key in ("python", "os", "glibc", "cpu", "cgroup", "packages", "providers_available",
                "gpu", "env", "image"):
        assert key in fingerprint, key
    assert fingerprint["cpu"]["cores_visible"] >= 1 and fingerprint["cpu"]["model"]
    assert any(name.startswith("onnxruntime") for name in fingerprint["packages"])
    assert "ok: p50" in run.stderr


def test_inputs_file_and_environment_label(ort_python: Path, models: dict,
                                           tmp_path: Path) -> None:
    feeds = {"x": np.full((3, 16), 0.25, np.float32), "ids": np.arange(24).reshape(3, 8)}
    np.savez(tmp_path / "in.npz", **feeds)
    run = run_harness(ort_python, ["--model", str(models["tiny"]), "--inputs",
                                   str(tmp_path / "in.npz"), *FAST, "--repeats", "1"], tmp_path)
    assert run.code == 0, run.doc["reason"]
    assert [i["source"] for i in run.doc["inputs"]] == ["file", "file"]
    assert [i["shape"] for i in run.doc["inputs"]] == [[3, 16], [3, 8]]


def _error(ort_python: Path, args: list[str], tmp_path: Path) -> str:
    run = run_harness(ort_python, [*args, *FAST, "--repeats", "1"], tmp_path)
    assert run.code == 2, run.stderr
    assert run.doc["status"] == "error" and run.doc["summary"] is None
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last == f"harness: error: {run.doc['reason']}"
    assert "\n" not in run.doc["reason"]
    return run.doc["reason"]


def test_missing_model(ort_python: Path, tmp_path: Path) -> None:
    reason = _error(ort_python, ["--model", str(tmp_path / "absent.onnx")], tmp_path)
    assert reason == f"model file {tmp_path / 'absent.onnx'} does not exist (or is not a file)"


def test_unreadable_model(ort_python: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    reason = _error(ort_python, ["--model", str(junk)], tmp_path)
    assert reason.startswith(f"model file {junk} is not a valid ONNX file")


def test_model_newer_than_the_runtime(ort_python: Path, models: dict, tmp_path: Path) -> None:
    reason = _error(ort_python, ["--model", str(models["future"]), *TINY_SHAPES], tmp_path)
    assert reason.startswith("model IR version 99 / opset 99 is newer than onnxruntime ")
    assert "; re-export it with IR version <= " in reason


def test_unknown_provider_lists_the_available_ones(ort_python: Path, models: dict,
                                                   tmp_path: Path) -> None:
    reason = _error(ort_python, ["--model", str(models["tiny"]), *TINY_SHAPES,
                                 "--provider", "OpenVINO"], tmp_path)
    assert reason.startswith("provider OpenVINOExecutionProvider is not available in onnxruntime")
    assert reason.split("; available: ")[1].split(", ")[-1] == "CPUExecutionProvider"


def test_unknown_input_name_lists_the_models_inputs(ort_python: Path, models: dict,
                                                    tmp_path: Path) -> None:
    reason = _error(ort_python, ["--model", str(models["tiny"]), *TINY_SHAPES,
                                 "--value", "mask=1"], tmp_path)
    assert reason == "--value names input 'mask', which the model does not have; " \
                     "model inputs: x, ids"


def test_dynamic_dimension_left_unset(ort_python: Path, models: dict, tmp_path: Path) -> None:
    reason = _error(ort_python, ["--model", str(models["tiny"]), "--shape", "x=2,16"], tmp_path)
    assert reason == "input 'ids' dimension 0 ('batch') is dynamic and unset; " \
                     "pass --shape ids=D1,...,D2 (model shape [batch, 8])"


def test_bad_option_syntax_still_writes_a_result(ort_python: Path, models: dict,
                                                 tmp_path: Path) -> None:
    reason = _error(ort_python, ["--model", str(models["tiny"]), "--no-such-option"], tmp_path)
    assert reason.startswith("unrecognized arguments: --no-such-option")


def test_unexpected_runtime_failure_keeps_type_message_and_traceback(
        ort_python: Path, models: dict, tmp_path: Path) -> None:
    # ids beyond the embedding table: the session loads, the first inference fails.
    run = run_harness(ort_python, ["--model", str(models["tiny"]), *TINY_SHAPES,
                                   "--value", "ids=5000", *FAST, "--repeats", "1"], tmp_path)
    assert run.code == 1 and run.doc["status"] == "error"
    assert "5000" in run.doc["reason"] and ":" in run.doc["reason"]
    assert "Traceback" in run.doc["traceback"] and "session.run" not in run.stderr


def test_help_lists_every_option() -> None:
    text = subprocess.run([sys.executable, "-m", "envmatrix_harness", "--help"],
                          capture_output=True, text=True, cwd=str(REPO), check=True).stdout
    for option in ("--model", "--backend", "--provider", "--provider-option", "--threads",
                   "--inputs", "--seed", "--shape", "--value", "--warmup", "--min-iterations",
                   "--min-time", "--repeats", "--out", "--save-outputs", "--cell",
                   "--environment", "--workload", "--graph-optimization"):
        assert option in text, option
