"""Session settings and provider options in real runtimes: in force (read back) or refused.

onnxruntime 1.7 (the last release before the spinning config keys), 1.32 and
onnxruntime-openvino 1.24.1, in the host venvs of harness_testlib. The result's `session`
block is what SessionOptions of the created session say; `provider.options_passed` is the
text handed to the API; `provider.options_in_force` is get_provider_options() (the OpenVINO
EP 1.24.1 reports nothing there: an unknown option key makes it fall back instead, which the
harness detects, so `fallback: false` is the evidence the EP took them; a property OpenVINO
rejects inside load_config fails the session creation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from harness_testlib import run_harness

pytestmark = pytest.mark.slow

ARGS = ["--shape", "x=2,16", "--shape", "ids=2,8", "--warmup", "2", "--min-iterations", "10",
        "--min-time", "0.02", "--repeats", "1"]
OV = "OpenVINOExecutionProvider"


def session_args(config: dict[str, str]) -> list[str]:
    session = {"graph_optimization": "basic", "execution_mode": "parallel",
               "inter_op_threads": 2, "enable_mem_pattern": False,
               "enable_cpu_mem_arena": False, "config": config}
    return ["--threads", "1", "--session-options", json.dumps(session)]


@pytest.mark.parametrize(("label", "config"), [
    ("py36-ort1.7", {"session.disable_prepacking": "1"}),
    ("py313-ort1.32", {"session.disable_prepacking": "1", "session.intra_op.allow_spinning": "0"}),
])
def test_session_settings_are_in_force(venv: Callable[[str], Path], models: dict,
                                       tmp_path: Path, label: str, config: dict) -> None:
    run = run_harness(venv(label), ["--model", str(models["tiny"]), *session_args(config),
                                    *ARGS], tmp_path)
    assert run.code == 0 and run.doc["status"] == "ok", run.doc["reason"]
    assert run.doc["session"] == {
        "graph_optimization": "basic", "execution_mode": "parallel", "intra_op_threads": 1,
        "inter_op_threads": 2, "enable_mem_pattern": False, "enable_cpu_mem_arena": False,
        "config": config}
    threads = run.doc["repeats"][0]["threads"]
    assert (threads["intra_op_requested"], threads["intra_op_effective"]) == (1, 1)
    assert (threads["inter_op_requested"], threads["inter_op_effective"]) == (2, 2)
    assert run.doc["settings"]["session"]["config"] == config


def test_config_key_newer_than_the_release_fails_clearly(venv: Callable[[str], Path],
                                                         models: dict, tmp_path: Path) -> None:
    run = run_harness(venv("py36-ort1.7"), [
        "--model", str(models["tiny"]), *session_args({"session.intra_op.allow_spinning": "0"}),
        *ARGS], tmp_path)
    assert run.code == 2 and run.doc["status"] == "error"
    assert run.doc["reason"] == ("config.session.intra_op.allow_spinning was introduced in "
                                 "onnxruntime 1.8, and onnxruntime 1.7.0 does not know it")


def test_openvino_typed_options_are_taken(venv: Callable[[str], Path], models: dict,
                                          tmp_path: Path) -> None:
    options = {"device_type": "CPU", "num_of_threads": 1, "num_streams": 1,
               "enable_qdq_optimizer": False,
               "load_config": {"CPU": {"PERFORMANCE_HINT": "LATENCY"}}}
    run = run_harness(venv("py311-ov1.24"), [
        "--model", str(models["tiny"]), "--provider", "openvino",
        "--provider-options-json", json.dumps(options), *ARGS], tmp_path)
    provider = run.doc["provider"]
    assert run.code == 0 and run.doc["status"] == "ok", run.doc["reason"]
    assert provider["active"][0] == OV and provider["fallback"] is False
    assert provider["options"] == options
    assert provider["options_passed"] == {
        "device_type": "CPU", "num_of_threads": "1", "num_streams": "1",
        "enable_qdq_optimizer": "false",
        "load_config": '{"CPU": {"PERFORMANCE_HINT": "LATENCY"}}'}
    assert provider["options_in_force"] == {}  # what this EP reports back: nothing


def test_openvino_load_config_reaches_openvino(venv: Callable[[str], Path], models: dict,
                                               tmp_path: Path) -> None:
    """A property OpenVINO does not know, inside load_config: OpenVINO's backend throws while
    the session is created (1.24.1 does not fall back here), so the mapping reached it."""
    options = {"device_type": "CPU", "load_config": {"CPU": {"NO_SUCH_PROPERTY": "1"}}}
    run = run_harness(venv("py311-ov1.24"), [
        "--model", str(models["tiny"]), "--provider", "openvino",
        "--provider-options-json", json.dumps(options), *ARGS], tmp_path)
    assert run.code == 2 and run.doc["status"] == "error", run.doc["reason"]
    assert "could not create a session" in run.doc["reason"]
    assert "openvino_ep::BasicBackend" in run.doc["reason"]


@pytest.mark.parametrize(("options", "reason"), [
    ({"num_stream": 2}, "num_stream is not an OpenVINO EP option (did you mean 'num_streams'?)"),
    ({"enable_npu_fast_compile": True}, "enable_npu_fast_compile was removed in "
                                        "onnxruntime-openvino 1.24 (pinned: 1.24.1)"),
    ({"num_streams": "two"}, "num_streams must be a whole number >= 1, got 'two'"),
])
def test_openvino_option_unknown_to_the_release_fails_clearly(
        venv: Callable[[str], Path], models: dict, tmp_path: Path, options: dict,
        reason: str) -> None:
    run = run_harness(venv("py311-ov1.24"), [
        "--model", str(models["tiny"]), "--provider", "openvino",
        "--provider-options-json", json.dumps(options), *ARGS], tmp_path)
    assert run.code == 2 and run.doc["status"] == "error"
    assert run.doc["reason"].startswith(reason), run.doc["reason"]
