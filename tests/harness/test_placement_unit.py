"""Node placement from profiling traces, without a runtime: real traces of one inference of
`unique_model` (harness_testlib) written by onnxruntime 1.5.1, 1.16.3 and 1.32.0 on the CPU EP
and by onnxruntime-openvino 1.24.1 on the OpenVINO EP (tests/harness/data/traces), a
constructed CUDA trace with the device copies onnxruntime inserts, and the host's warning."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from envmatrix.analysis.stats import placement_warning
from envmatrix_harness import placement

TRACES = Path(__file__).resolve().parent / "data" / "traces"
CPU = "CPUExecutionProvider"
OV = "OpenVINOExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _trace(name: str) -> list[dict[str, Any]]:
    return placement.read_trace(str(TRACES / name))


@pytest.mark.parametrize("name", ["ort1.5.1-cpu.json", "ort1.16.3-cpu.json",
                                  "ort1.32.0-cpu.json"])
def test_cpu_traces_of_every_era(name: str) -> None:
    """1.5 (graph_index, fence events), 1.16 (node_index, fences), 1.32 (kernel events only)."""
    fields = placement.summarize_trace(_trace(name), CPU)
    assert fields == {"node_placement": "profiled", "nodes": {CPU: 3}, "copy_nodes": 0,
                      "node_share": 1.0, "fallback_nodes": [], "fallback_node_count": 0}


def test_openvino_trace_counts_the_fused_subgraph_as_one_node() -> None:
    fields = placement.summarize_trace(_trace("ov1.24.1-openvino-unique.json"), OV)
    assert fields["nodes"] == {OV: 1, CPU: 1}  # OpenVINO-EP-subgraph_1 (MatMul+Relu), Unique
    assert fields["node_share"] == 0.5
    assert fields["fallback_nodes"] == [{"name": "unique_values", "op_type": "Unique",
                                         "provider": CPU}]
    # the same trace read as if the CPU had been requested: the subgraph is the fallback
    as_cpu = placement.summarize_trace(_trace("ov1.24.1-openvino-unique.json"), CPU)
    assert as_cpu["fallback_nodes"][0]["op_type"] == "OpenVINO-EP-subgraph_1"


def _event(name: str, op: str, provider: str | None, index: int) -> dict[str, Any]:
    args: dict[str, Any] = {"op_name": op, "node_index": str(index)}
    if provider:
        args["provider"] = provider
    return {"cat": "Node", "name": name, "ph": "X", "dur": 1, "ts": index, "args": args}


def _cuda_trace(fallen: int) -> list[dict[str, Any]]:
    """Constructed in the shape of a 1.16 CUDA trace: copies in and out, one Shape on CPU."""
    events: list[dict[str, Any]] = [
        {"cat": "Session", "name": "model_run", "args": {}},
        _event("Memcpy_token_0_kernel_time", "MemcpyFromHost", CUDA, 0),
        _event("conv_kernel_time", "Conv", CUDA, 1),
        _event("conv_fence_before", "Conv", None, 1),
    ]
    for i in range(fallen):
        events.append(_event(f"shape_{i}_kernel_time", "Shape", CPU, 10 + i))
    events.append(_event("Memcpy_token_1_kernel_time", "MemcpyToHost", CUDA, 99))
    return events


def test_copies_are_no_compute_nodes_and_the_list_is_capped() -> None:
    fields = placement.summarize_trace(_cuda_trace(1), CUDA)
    assert fields["nodes"] == {CUDA: 1, CPU: 1} and fields["copy_nodes"] == 2
    assert fields["node_share"] == 0.5
    many = placement.summarize_trace(_cuda_trace(80), CUDA, limit=5)
    assert many["fallback_node_count"] == 80 and len(many["fallback_nodes"]) == 5
    assert many["fallback_nodes"][0] == {"name": "shape_0", "op_type": "Shape", "provider": CPU}


def test_a_node_run_twice_counts_once_and_an_empty_trace_is_unavailable() -> None:
    twice = [_event("body_kernel_time", "Add", CPU, 3)] * 2
    assert placement.summarize_trace(twice, CPU)["nodes"] == {CPU: 1}
    empty = placement.summarize_trace([{"cat": "Session", "name": "model_run"}], CPU)
    assert empty["node_placement"] == "unavailable: the trace names no node"
    assert empty["nodes"] == {} and empty["node_share"] is None


class _Options:
    """SessionOptions of 1.5: no profile_file_prefix."""

    enable_profiling = False


class _Session:
    def __init__(self, trace: list[dict[str, Any]]) -> None:
        self.trace = trace
        self.runs = 0

    def run(self, names: Any, feeds: dict) -> list:
        self.runs += 1
        return []

    def end_profiling(self) -> str:
        name = "onnxruntime_profile__test.json"  # relative, in the working directory (1.5)
        with open(name, "w") as handle:
            json.dump(self.trace, handle)
        return name


def test_profile_once_reads_the_trace_from_a_temporary_cwd_and_deletes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    seen: dict[str, Any] = {}

    def make(options: _Options) -> _Session:
        seen["enabled"] = options.enable_profiling
        seen["cwd"] = os.getcwd()
        return _Session(_cuda_trace(1))

    events = placement.profile_once(make, _Options(), {"x": 1})
    assert seen["enabled"] is True and seen["cwd"] != str(tmp_path)
    assert os.getcwd() == str(tmp_path) and not os.path.exists(seen["cwd"])
    assert placement.summarize_trace(events, CUDA)["copy_nodes"] == 2
    assert list(tmp_path.iterdir()) == []


def _result(nodes: dict[str, int] | None, fallen: list[dict], count: int | None = None,
            placed: str | None = "profiled", requested: str = OV) -> dict[str, Any]:
    return {"provider": {"requested": requested, "node_placement": placed, "nodes": nodes,
                         "fallback_nodes": fallen,
                         "fallback_node_count": len(fallen) if count is None else count}}


def test_placement_warning() -> None:
    fallen = [{"name": f"n{i}", "op_type": "Unique", "provider": CPU} for i in range(12)]
    result = _result({OV: 4, CPU: 12}, fallen, count=14)
    assert placement_warning(result) == (
        f"{OV} ran 4 of 16 compute nodes (25%, below 100%); 14 ran elsewhere: "
        + ", ".join(f"n{i} (Unique on {CPU})" for i in range(10)) + " and 4 more")
    assert placement_warning(result, min_share=0.2) is None
    assert placement_warning(_result({OV: 3}, [])) is None
    # nothing profiled: torch cells, older results, a trace that could not be had
    assert placement_warning(_result(None, [], placed=None)) is None
    assert placement_warning(_result(None, [], placed="unavailable: x")) is None
    assert placement_warning({"provider": None}) is None
