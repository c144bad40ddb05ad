"""The OpenVINO execution provider, really active, and its silent fallback to CPU, detected.

What was found (onnxruntime-openvino 1.24.1 here; 1.15.0 checked by hand the same way): an EP
that fails to initialise is dropped with a log line and the session runs on CPU without an
exception. Ways to force it: device_type=GPU on a machine without an Intel GPU ("Device GPU is
not available"), precision=FP64 ("Unsupported inference precision"), or an unknown option key
("Invalid OpenVINO EP option", printed as "EP Error ... Falling back to CPU"). An unknown
device_type such as "BOGUS" is accepted by 1.24.1 (the EP stays active). With 1.15.0,
device_type=CPU (the newer spelling) is the one that silently falls back: the harness
translates it to CPU_FP32 there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness_testlib import run_harness

pytestmark = pytest.mark.slow

OV = "OpenVINOExecutionProvider"
ARGS = ["--shape", "x=2,16", "--shape", "ids=2,8", "--warmup", "2", "--min-iterations", "20",
        "--min-time", "0.05", "--repeats", "2"]


@pytest.fixture(scope="module")
def ov_python(venv: Callable[[str], Path]) -> Path:
    return venv("py311-ov1.24")


def test_openvino_is_active_with_translated_options(ov_python: Path, models: dict,
                                                    tmp_path: Path) -> None:
    run = run_harness(ov_python, ["--model", str(models["tiny"]), "--provider", "openvino",
                                  "--provider-option", "device_type=CPU_FP32", *ARGS], tmp_path)
    provider = run.doc["provider"]
    assert run.code == 0 and run.doc["status"] == "ok", run.doc["reason"]
    assert provider["requested"] == OV and provider["active"][0] == OV
    assert provider["fallback"] is False
    # the old spelling is split for onnxruntime-openvino >= 1.17
    assert provider["options"] == {"device_type": "CPU", "precision": "FP32"}
    assert provider["notes"] and "split" in provider["notes"][0]
    assert run.doc["fingerprint"]["packages"]["onnxruntime-openvino"] == "1.24.1"
    assert OV in run.doc["fingerprint"]["providers_available"]


@pytest.mark.parametrize(("option", "log_text"), [
    ("device_type=GPU", "Device GPU is not available"),
    # an unknown option key never reaches the EP now: the harness refuses it first
    # (tests/harness/test_knobs_runtimes.py); an unsupported value still falls back
    ("precision=FP64", "Unsupported inference precision"),
])
def test_silent_fallback_is_detected(ov_python: Path, models: dict, tmp_path: Path,
                                     option: str, log_text: str) -> None:
    run = run_harness(ov_python, ["--model", str(models["tiny"]), "--provider", "OpenVINO",
                                  "--provider-option", option, *ARGS], tmp_path)
    provider = run.doc["provider"]
    assert run.code == 0 and run.doc["status"] == "ok"  # measured, but the host marks it invalid
    assert provider["fallback"] is True
    assert provider["active"] == ["CPUExecutionProvider"]
    assert provider["reason"].startswith(
        f"{OV} was requested but the session runs on CPUExecutionProvider")
    assert log_text in provider["reason"]
    assert "FALLBACK" in run.stderr


def test_node_placement_names_the_node_openvino_left_to_the_cpu(ov_python: Path, models: dict,
                                                                tmp_path: Path) -> None:
    """MatMul+Relu run as one fused OpenVINO subgraph; Unique falls back to the CPU EP, which
    get_providers() does not show (it lists both providers either way)."""
    run = run_harness(ov_python, ["--model", str(models["unique"]), "--provider", "openvino",
                                  "--shape", "x=2,16", *ARGS[4:]], tmp_path)
    provider = run.doc["provider"]
    assert run.code == 0 and run.doc["status"] == "ok", run.doc["reason"]
    assert provider["fallback"] is False and provider["active"][0] == OV
    assert provider["node_placement"] == "profiled"
    assert provider["nodes"] == {OV: 1, "CPUExecutionProvider": 1}
    assert provider["node_share"] == 0.5
    assert provider["fallback_nodes"] == [
        {"name": "unique_values", "op_type": "Unique", "provider": "CPUExecutionProvider"}]
    assert provider["fallback_node_count"] == 1
    from envmatrix.analysis.stats import placement_warning
    warning = placement_warning(run.doc)
    assert warning == (f"{OV} ran 1 of 2 compute nodes (50%, below 100%); 1 ran elsewhere: "
                       "unique_values (Unique on CPUExecutionProvider)")
    assert placement_warning(run.doc, min_share=0.5) is None
    # the same model on the CPU EP: every node there
    cpu = run_harness(ov_python, ["--model", str(models["unique"]), "--provider", "cpu",
                                  "--shape", "x=2,16", *ARGS[4:]], tmp_path, name="cpu.json")
    assert cpu.doc["provider"]["nodes"] == {"CPUExecutionProvider": 3}
    assert cpu.doc["provider"]["node_share"] == 1.0
    assert placement_warning(cpu.doc) is None


def test_openvino_where_it_is_not_installed(ort_python: Path, models: dict,
                                            tmp_path: Path) -> None:
    run = run_harness(ort_python, ["--model", str(models["tiny"]), "--provider", "openvino",
                                   *ARGS], tmp_path)
    assert run.code == 2 and run.doc["status"] == "error"
    assert run.doc["reason"].startswith(f"provider {OV} is not available in onnxruntime ")
    assert "available: " in run.doc["reason"] and "CPUExecutionProvider" in run.doc["reason"]
