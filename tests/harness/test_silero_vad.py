"""A real model nobody on the team made: silero_vad.onnx from the silero-vad wheel on PyPI.

Inputs: input float32 [?, ?] (audio samples), state float32 [2, ?, 128], sr int64 scalar.
Dynamic dimensions, three inputs, an int64 scalar: fixed with --shape and --value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness_testlib import run_harness

pytestmark = pytest.mark.slow

SHAPES = ["--shape", "input=1,512", "--shape", "state=2,1,128"]
FAST = ["--warmup", "2", "--min-iterations", "20", "--min-time", "0.05", "--repeats", "1"]


def test_runs_with_shapes_and_a_sample_rate(ort_python: Path, silero_model: Path,
                                            tmp_path: Path) -> None:
    run = run_harness(ort_python, ["--model", str(silero_model), *SHAPES, "--value",
                                   "sr=16000", *FAST], tmp_path)
    doc = run.doc
    assert run.code == 0 and doc["status"] == "ok", doc["reason"]
    assert [i["name"] for i in doc["model"]["inputs"]] == ["input", "state", "sr"]
    inputs = {i["name"]: i for i in doc["inputs"]}
    assert inputs["sr"]["shape"] == [] and inputs["sr"]["dtype"] == "int64"
    assert inputs["sr"]["mean"] == 16000.0 and inputs["sr"]["source"] == "value"
    assert inputs["state"]["shape"] == [2, 1, 128]
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["output"]["shape"] == [1, 1]
    assert 0.0 <= outputs["output"]["mean"] <= 1.0  # a speech probability
    assert len(doc["repeats"][0]["latencies_s"]) >= 20


def test_fails_clearly_without_the_dynamic_dims(ort_python: Path, silero_model: Path,
                                                tmp_path: Path) -> None:
    run = run_harness(ort_python, ["--model", str(silero_model), "--value", "sr=16000",
                                   *FAST], tmp_path)
    assert run.code == 2 and run.doc["status"] == "error"
    assert run.doc["reason"] == ("input 'input' dimension 0 (unnamed) is dynamic and unset; "
                                 "pass --shape input=D1,...,D2 (model shape [?, ?])")


def test_a_wrong_sample_rate_text_is_an_input_error(ort_python: Path, silero_model: Path,
                                                    tmp_path: Path) -> None:
    run = run_harness(ort_python, ["--model", str(silero_model), *SHAPES, "--value",
                                   "sr=16kHz", *FAST], tmp_path)
    assert run.code == 2
    assert run.doc["reason"].startswith("--value sr=16kHz: '16kHz' is not a valid int64 value")
