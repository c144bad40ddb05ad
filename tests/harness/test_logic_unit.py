"""Pure logic of the harness: statistics, timing loop, option translation, model header, CLI."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from harness_testlib import tiny_model

from envmatrix_harness import cli, compat, measure, modelinfo, parent
from envmatrix_harness.errors import HarnessInputError, ModelError, UsageError


def test_latency_summary_uses_linear_percentiles() -> None:
    values = [0.004, 0.001, 0.003, 0.002, 0.010]
    summary = measure.latency_summary(values)
    assert summary["p50"] == pytest.approx(0.003)
    assert summary["p90"] == pytest.approx(0.004 + 0.6 * 0.006)  # between 0.004 and 0.010
    assert summary["min"] == 0.001 and summary["max"] == 0.010
    assert summary["mean"] == pytest.approx(0.004)
    assert summary["std"] == pytest.approx(float(np.std(values)))


def _repeat(index: int, latencies: list[float]) -> dict:
    return {"index": index, "session_create_s": 0.1 * (index + 1), "first_inference_s": 0.02,
            "latencies_s": latencies, "measure_wall_s": sum(latencies),
            "cpu_time_s": 1.5, "peak_rss_bytes": 1000 + index}


def test_summary_pools_repeats_and_keeps_one_p50_per_repeat() -> None:
    repeats = [_repeat(0, [0.001, 0.002, 0.003]), _repeat(1, [0.004, 0.005]),
               _repeat(2, [0.006])]
    summary = measure.summarize(repeats)
    assert summary["iterations"] == 6
    assert summary["repeat_p50_s"] == pytest.approx([0.002, 0.0045, 0.006])
    assert summary["latency_s"]["p50"] == pytest.approx(0.0035)
    assert summary["throughput_per_s"] == pytest.approx(6 / 0.021)
    assert summary["session_create_s"] == pytest.approx(0.2)
    assert summary["peak_rss_bytes"] == 1002 and summary["cpu_time_s"] == pytest.approx(4.5)


def test_timed_loop_stops_when_both_count_and_time_are_reached() -> None:
    latencies, wall = measure.timed_loop(time.sleep, (0.001,), 5, 0.05)
    assert len(latencies) >= 5 and wall >= 0.05
    assert all(lat >= 0.001 for lat in latencies)
    few, _ = measure.timed_loop(time.sleep, (0.02,), 3, 0.0)
    assert len(few) == 3  # min_time 0: the count alone decides


def test_synced_loop_calls_sync_around_every_iteration() -> None:
    calls: list[str] = []
    latencies, _ = measure.timed_loop(lambda: calls.append("run"), (), 4, 0.0,
                                      sync=lambda: calls.append("sync"))
    assert len(latencies) == 4
    assert calls == ["sync", "run", "sync"] * 4


def test_tensor_digest_covers_dtype_shape_and_bytes() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    digest = measure.tensor_digest("y", array.T)  # not C-contiguous: hashed in C order
    assert digest["shape"] == [3, 2] and digest["dtype"] == "float32"
    assert digest["sha256"] == hashlib.sha256(np.ascontiguousarray(array.T).tobytes()).hexdigest()
    assert digest["mean"] == pytest.approx(2.5) and digest["absmax"] == 5.0
    scalar = measure.tensor_digest("sr", np.array(16000, dtype=np.int64))
    assert scalar["shape"] == [] and scalar["mean"] == 16000.0
    nan = measure.tensor_digest("n", np.array([np.nan], dtype=np.float32))
    assert nan["mean"] is None and nan["absmax"] is None


@pytest.mark.parametrize(("name", "full"), [
    ("CPU", "CPUExecutionProvider"), ("openvino", "OpenVINOExecutionProvider"),
    ("TensorRT", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider"),
    ("DnnlExecutionProvider", "DnnlExecutionProvider"),
    ("dnnlexecutionprovider", "DnnlExecutionProvider"),
    ("Vitisai", "VitisAIExecutionProvider"),  # matched against the available list
])
def test_provider_names(name: str, full: str) -> None:
    assert compat.provider_full_name(name, ["VitisAIExecutionProvider"]) == full


@pytest.mark.parametrize(("options", "version", "expected"), [
    ({"device_type": "CPU_FP32"}, (1, 24, 1), {"device_type": "CPU", "precision": "FP32"}),
    ({"device_type": "GPU.0_FP16"}, (1, 17, 1), {"device_type": "GPU.0", "precision": "FP16"}),
    ({"device_type": "CPU", "precision": "FP32"}, (1, 24, 1),
     {"device_type": "CPU", "precision": "FP32"}),
    ({"device_type": "CPU", "precision": "FP16"}, (1, 15, 0), {"device_type": "CPU_FP16"}),
    ({"device_type": "CPU"}, (1, 15, 0), {"device_type": "CPU_FP32"}),
    ({"device_type": "CPU_FP32"}, (1, 11, 0), {"device_type": "CPU_FP32"}),
    ({"device_type": "HETERO:GPU,CPU"}, (1, 11, 0), {"device_type": "HETERO:GPU,CPU"}),
])
def test_openvino_options_follow_the_runtime_version(options: dict, version: tuple,
                                                     expected: dict) -> None:
    translated, notes = compat.translate_options(
        "OpenVINOExecutionProvider", options, version, "onnxruntime-openvino")
    assert translated == expected
    assert bool(notes) == (translated != options)


def test_options_of_other_providers_pass_unchanged() -> None:
    options = {"device_type": "CPU_FP32"}
    assert compat.translate_options("CUDAExecutionProvider", options, (1, 16), "onnxruntime-gpu") \
        == (options, [])


def test_parse_version() -> None:
    assert compat.parse_version("1.8.0.dev20210101") == (1, 8, 0)
    assert compat.parse_version("2.13.0+cpu") == (2, 13, 0)
    assert compat.parse_version("1.16.3") > compat.parse_version("1.9")


@pytest.mark.parametrize(("message", "expected"), [
    ("Load model from m.onnx failed: Unknown model file format version.",
     "model IR version 10 / opset 21 is newer than onnxruntime 1.8.0 accepts; re-export it "
     "with IR version <= 7"),
    ("... Unsupported model IR version: 10, max supported IR version: 9",
     "model IR version 10 / opset 21 is newer than onnxruntime 1.8.0 accepts; re-export it "
     "with IR version <= 9"),
    ("... Current official support for domain ai.onnx is till opset 19.",
     "model IR version 10 / opset 21 is newer than onnxruntime 1.8.0 accepts; re-export it "
     "with opset <= 19"),
])
def test_load_errors_are_explained(message: str, expected: str) -> None:
    model = {"ir_version": 10, "opsets": {"": 21}}
    reason = compat.explain_load_error(message, model, "onnxruntime 1.8.0", (1, 8, 0))
    assert reason is not None and reason.startswith(expected)
    assert compat.explain_load_error("some other failure", model, "x", (1, 8)) is None


def test_model_header_matches_the_onnx_library(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "m.onnx", ir_version=8, opset=13)
    model = onnx.load(str(path))
    header = modelinfo.read_onnx_header(str(path))
    assert header["ir_version"] == model.ir_version == 8
    assert header["opsets"] == {o.domain: o.version for o in model.opset_import} == {"": 13}
    described = modelinfo.describe(str(path), "onnxruntime")
    assert described["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_problems_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        modelinfo.describe(str(tmp_path / "missing.onnx"), "onnxruntime")
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a protobuf at all")
    with pytest.raises(ModelError, match="is not a valid ONNX file"):
        modelinfo.describe(str(junk), "onnxruntime")


def _settings(argv: list[str]) -> dict:
    return dict(cli.settings_from(cli.build_parser().parse_args(argv)))


def test_child_command_line_reproduces_the_settings(tmp_path: Path) -> None:
    argv = ["--model", "m.onnx", "--provider", "openvino", "--provider-option",
            "device_type=CPU", "--provider-option", "precision=FP32", "--threads", "2",
            "--shape", "x=1,3", "--value", "sr=16000", "--seed", "9", "--min-time", "0.25",
            "--repeats", "4", "--cell", "c", "--workload", "w", "--environment", "e",
            "--save-outputs", "o.npz", "--graph-optimization", "basic"]
    settings = _settings(argv)
    child = parent.child_argv(settings, 0, str(tmp_path / "r.json"))[3:]
    child_settings = _settings(child)
    for key in settings:
        if key not in ("repeats", "out"):
            assert child_settings[key] == settings[key], key
    later = _settings(parent.child_argv(settings, 1, "r.json")[3:])
    assert later["save_outputs"] is None  # only the first repeat saves outputs


def test_backend_is_inferred_from_the_extension() -> None:
    assert _settings(["--model", "m.pt"])["backend"] == "torch"
    assert _settings(["--model", "m.onnx"])["backend"] == "onnxruntime"
    assert _settings(["--model", "m.pt", "--backend", "onnxruntime"])["backend"] == "onnxruntime"


@pytest.mark.parametrize(("argv", "error", "message"), [
    (["--model", "m.onnx", "--repeats", "0"], UsageError, "--repeats must be >= 1"),
    (["--model", "m.onnx", "--provider-option", "device_type"], HarnessInputError,
     "--provider-option device_type: expected NAME=VALUE"),
    (["--model", "m.onnx", "--dtype", "x=complex64"], HarnessInputError,
     "input 'x' has type complex64"),
    (["--model", "m.onnx", "--min-iterations", "x"], UsageError, "invalid int value"),
])
def test_bad_command_lines(argv: list[str], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _settings(argv)


def test_provider_log_line_picks_the_runtimes_reason() -> None:
    output = "\n".join([
        "*************** EP Error ***************",
        "EP Error /src/onnxruntime_pybind_state.cc:1053 std::shared_ptr<F> Create(const "
        "Options&, const std::string&) Invalid OpenVINO EP option: bogus",
        "\x1b[0;93m2026 [W:onnxruntime] Failed to create OpenVINOExecutionProvider.\x1b[m",
    ])
    assert parent._provider_log_line(output) == "EP Error Invalid OpenVINO EP option: bogus"
    error = "2026 [E:onnxruntime, x.cc:1 Create] /p/f.cc:141 std::string P(const O&) " \
            "[ERROR] [OpenVINO] Device GPU is not available"
    assert parent._provider_log_line(output + "\n" + error) == \
        "[OpenVINO] Device GPU is not available"
    assert parent._provider_log_line("all fine\n") is None


def test_crash_reason_names_repeat_signal_and_last_line() -> None:
    assert parent._crash_reason(2, -11, "loading\nSegmentation fault\n") == (
        "repeat 2: the harness process was killed by SIGSEGV; last stderr line: "
        "Segmentation fault")
    assert parent._crash_reason(0, 1, "") == \
        "repeat 0: the harness process exited with code 1 without a result"


@pytest.mark.parametrize(("provider", "device"), [
    (None, "cpu"), ("CPU", "cpu"), ("CPUExecutionProvider", "cpu"),
    ("CUDAExecutionProvider", "cuda"), ("cuda:1", "cuda:1"),
])
def test_torch_device_names(provider: str | None, device: str) -> None:
    from envmatrix_harness.backends import torch_device
    assert torch_device(provider) == device
