"""--concurrency and --batch on real runtimes: onnxruntime 1.32 and 1.5 (the oldest, Python
3.6), onnxruntime-openvino 1.24.1 with OpenVINO's THROUGHPUT hint (cached venvs, see
harness_testlib). The torch backend's test is in test_torch_backend.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from harness_testlib import HarnessRun, run_harness
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.slow

LABELS = ("py313-ort1.32", "py36-ort1.5")
FAST = ["--warmup", "4", "--min-iterations", "10", "--min-time", "0.2", "--repeats", "2"]
OV = "OpenVINOExecutionProvider"


def matmul_model(path: Path, first_dim: int | str) -> Path:
    """x [first_dim, 16] -> MatMul -> Relu -> y [first_dim, 8] (IR 7, opset 11: every
    onnxruntime since 1.5); first_dim a dim_param name for a dynamic batch."""
    weight = numpy_helper.from_array(
        np.linspace(-1, 1, 128, dtype=np.float32).reshape(16, 8), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first_dim, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [first_dim, 8])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def load_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("load")
    return {"dynamic": matmul_model(folder / "dynamic.onnx", "batch"),
            "fixed": matmul_model(folder / "fixed.onnx", 1)}


def assert_load(run: HarnessRun, concurrency: int, batch: int | None) -> None:
    doc = run.doc
    assert run.code == 0 and doc["status"] == "ok", doc["reason"]
    assert (doc["settings"]["concurrency"], doc["settings"]["batch"]) == (concurrency, batch)
    summary = doc["summary"]
    assert summary["scenario"] == ("offline" if concurrency > 1 else "single-stream")
    assert (summary["concurrency"], summary["batch"]) == (concurrency, batch)
    for rep in doc["repeats"]:
        assert rep["requests"] == len(rep["latencies_s"]) >= 10
        assert rep["requests_per_s"] == pytest.approx(rep["requests"] / rep["measure_wall_s"])
        assert rep["samples_per_s"] == pytest.approx((batch or 1) * rep["requests_per_s"])
        assert rep["cpu_per_sample_s"] == pytest.approx(
            rep["cpu_time_s"] / (rep["requests"] * (batch or 1)))
    requests = sum(rep["requests"] for rep in doc["repeats"])
    wall = sum(rep["measure_wall_s"] for rep in doc["repeats"])
    assert summary["requests_per_s"] == pytest.approx(requests / wall)
    assert summary["samples_per_s"] == pytest.approx((batch or 1) * summary["requests_per_s"])
    assert summary["samples_per_s"] > 0
    assert f"{concurrency} in flight" in run.stderr


@pytest.mark.parametrize("label", LABELS)
def test_concurrency_and_batch(venv: Callable[[str], Path], load_models: dict,
                               tmp_path: Path, label: str) -> None:
    python = venv(label)
    model = ["--model", str(load_models["dynamic"]), "--shape", "x=4,16"]
    offline = run_harness(python, [*model, "--concurrency", "2", "--batch", "4", *FAST],
                          tmp_path, name="offline.json")
    assert_load(offline, 2, 4)
    single = run_harness(python, [*model, "--batch", "4", *FAST], tmp_path, name="single.json")
    assert_load(single, 1, 4)
    # the two scenarios run the same inference: same outputs
    assert offline.doc["outputs"] == single.doc["outputs"]


@pytest.mark.parametrize("label", LABELS)
def test_batch_that_the_feeds_or_model_do_not_have(venv: Callable[[str], Path],
                                                   load_models: dict, tmp_path: Path,
                                                   label: str) -> None:
    python = venv(label)
    wrong = run_harness(python, ["--model", str(load_models["dynamic"]), "--shape", "x=4,16",
                                 "--batch", "3", *FAST], tmp_path, name="wrong.json")
    assert wrong.code == 2 and wrong.doc["status"] == "error"
    assert wrong.doc["reason"] == (
        "--batch 3: input 'x' is fed with shape [4, 16], whose first dimension (the batch) is "
        "not 3; feed it [3, 16] (--shape x=3,16 or an --inputs file)")
    fixed = run_harness(python, ["--model", str(load_models["fixed"]), "--batch", "8", *FAST],
                        tmp_path, name="fixed.json")
    assert fixed.code == 2 and fixed.doc["status"] == "error"
    assert fixed.doc["reason"] == (
        "--batch 8: the model has no dynamic batch dimension (inputs: x [1, 16]); re-export "
        "it with a dynamic first dimension, or drop --batch")


def test_openvino_throughput_hint_with_requests_in_flight(venv: Callable[[str], Path],
                                                          load_models: dict,
                                                          tmp_path: Path) -> None:
    options = {"device_type": "CPU", "load_config": {"CPU": {"PERFORMANCE_HINT": "THROUGHPUT"}}}
    run = run_harness(venv("py311-ov1.24"), [
        "--model", str(load_models["dynamic"]), "--shape", "x=4,16", "--provider", "openvino",
        "--provider-options-json", json.dumps(options), "--concurrency", "2", "--batch", "4",
        *FAST], tmp_path)
    assert_load(run, 2, 4)
    provider = run.doc["provider"]
    assert provider["active"][0] == OV and provider["fallback"] is False
    assert provider["options"] == options
