"""Load scenarios without a runtime: concurrent_loop on fake calls, the load figures and the
summary, --batch against the fed tensors, and the command line of --batch/--concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from envmatrix_harness import cli, inputs, measure, parent, result
from envmatrix_harness.errors import UsageError


class Counted:
    """A fake request: sleeps (releasing the GIL, as session.run does) and counts its calls
    and the threads they came from."""

    def __init__(self, seconds: float, fail_at: int | None = None) -> None:
        self.seconds, self.fail_at = seconds, fail_at
        self.calls = 0
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.calls += 1
            self.threads.add(threading.get_ident())
            calls = self.calls
        if self.fail_at is not None and calls >= self.fail_at:
            raise ValueError(f"request {calls} failed")
        time.sleep(self.seconds)


def test_four_in_flight_give_about_four_times_the_rate() -> None:
    rates = {}
    for concurrency in (1, 4):
        call = Counted(0.01)
        latencies, wall = measure.concurrent_loop(call, (), concurrency, 8, 0.3)
        assert len(latencies) == call.calls  # every completed request is timed once
        assert len(call.threads) == concurrency and threading.get_ident() not in call.threads
        assert wall >= 0.3 and all(lat >= 0.01 for lat in latencies)
        rates[concurrency] = len(latencies) / wall
    assert 2.5 < rates[4] / rates[1] < 4.5, rates  # sleeps overlap: ~4x (loose bounds)


def test_stopping_rule_needs_both_minimums() -> None:
    # the count decides (min_time 0): threads stop after their request in flight
    latencies, _ = measure.concurrent_loop(Counted(0.02), (), 2, 20, 0.0)
    assert 20 <= len(latencies) <= 21
    # the time decides (1 request asked): many more than 1 done in 0.15 s
    latencies, wall = measure.concurrent_loop(Counted(0.001), (), 3, 1, 0.15)
    assert wall >= 0.15 and len(latencies) > 10


def test_an_exception_in_a_worker_reaches_the_caller() -> None:
    call = Counted(0.005, fail_at=5)
    with pytest.raises(ValueError, match="failed"):
        measure.concurrent_loop(call, (), 3, 1000, 10.0)
    assert call.calls < 100  # the other threads stopped too, long before the minimums

    def broken_init() -> None:
        raise RuntimeError("no thread state")
    # the barrier is broken, so no thread waits forever; the cause is what is raised
    with pytest.raises(RuntimeError, match="no thread state"):
        measure.concurrent_loop(Counted(0.001), (), 3, 10, 0.0, worker_init=broken_init)


def test_worker_init_runs_once_in_each_worker_thread() -> None:
    inits: list[int] = []
    lock = threading.Lock()

    def init() -> None:
        with lock:
            inits.append(threading.get_ident())
    call = Counted(0.002)
    measure.concurrent_loop(call, (), 3, 10, 0.0, worker_init=init)
    assert len(inits) == 3 and set(inits) == call.threads  # once per thread, before its calls


def test_sync_follows_every_request() -> None:
    calls: list[str] = []
    latencies, _ = measure.concurrent_loop(lambda: calls.append("run"), (), 2, 6, 0.0,
                                           sync=lambda: calls.append("sync"))
    assert calls.count("run") == calls.count("sync") == len(latencies)


def test_concurrent_warm_up_calls_each_thread() -> None:
    call = Counted(0.001)
    measure.concurrent_warm_up(call, (), 4, 10, worker_init=lambda: None)
    assert call.calls == 4 * 2 and len(call.threads) == 4  # max(1, 10 // 4) each
    few = Counted(0.001)
    measure.concurrent_warm_up(few, (), 4, 0)
    assert few.calls == 4  # at least one call per thread


def _repeat(latencies: list[float], wall: float, cpu: float, concurrency: int,
            batch: int | None) -> dict:
    rep = {"index": 0, "session_create_s": 0.1, "first_inference_s": 0.01,
           "latencies_s": latencies, "measure_wall_s": wall, "cpu_time_s": cpu,
           "peak_rss_bytes": 1}
    rep.update(measure.load_figures(latencies, wall, cpu, concurrency, batch))
    return rep


def test_load_figures_and_summary() -> None:
    first = _repeat([0.02] * 100, 1.0, 2.0, 2, 4)
    assert (first["requests"], first["requests_per_s"], first["samples_per_s"]) == (100, 100, 400)
    assert first["cpu_per_sample_s"] == pytest.approx(2.0 / 400)
    second = _repeat([0.02] * 50, 0.5, 1.5, 2, 4)
    summary = measure.summarize([first, second])
    assert (summary["batch"], summary["concurrency"], summary["scenario"]) == (4, 2, "offline")
    assert summary["requests_per_s"] == pytest.approx(150 / 1.5)
    assert summary["samples_per_s"] == pytest.approx(4 * 150 / 1.5)
    assert summary["cpu_per_sample_s"] == pytest.approx(np.median([2.0 / 400, 1.5 / 200]))
    assert summary["throughput_per_s"] == pytest.approx(50)  # 1 / mean latency, unchanged


def test_summary_of_repeats_from_an_older_harness() -> None:
    old = {"index": 0, "session_create_s": 0.1, "first_inference_s": 0.01,
           "latencies_s": [0.01] * 10, "measure_wall_s": 0.2, "cpu_time_s": 0.1,
           "peak_rss_bytes": 1}
    summary = measure.summarize([old])
    assert (summary["batch"], summary["concurrency"], summary["scenario"]) == (
        None, 1, "single-stream")
    assert summary["requests_per_s"] == summary["samples_per_s"] == pytest.approx(50)
    assert summary["cpu_per_sample_s"] is None


SPECS = [("x", "tensor(float)", ["batch", 16]), ("state", "tensor(float)", [2, None, 8]),
         ("sr", "tensor(int64)", [])]


def _feeds(**shapes: tuple) -> dict:
    return {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}


def test_batch_matches_the_dynamic_first_dimensions() -> None:
    feeds = _feeds(x=(4, 16), state=(2, 4, 8), sr=())
    inputs.check_batch(SPECS, feeds, 4)  # state's fixed 2 and the scalar are not batches
    inputs.check_batch(SPECS, feeds, None)
    with pytest.raises(UsageError) as err:
        inputs.check_batch(SPECS, feeds, 3)
    assert str(err.value) == (
        "--batch 3: input 'x' is fed with shape [4, 16], whose first dimension (the batch) is "
        "not 3; feed it [3, 16] (--shape x=3,16 or an --inputs file)")


def test_batch_on_a_model_without_a_dynamic_first_dimension() -> None:
    specs = [("input", "tensor(float)", [1, 3, 224, 224])]
    feeds = _feeds(input=(1, 3, 224, 224))
    inputs.check_batch(specs, feeds, 1)  # the batch the model fixes
    with pytest.raises(UsageError) as err:
        inputs.check_batch(specs, feeds, 8)
    assert str(err.value) == (
        "--batch 8: the model has no dynamic batch dimension (inputs: input [1, 3, 224, 224]); "
        "re-export it with a dynamic first dimension, or drop --batch")


def test_batch_without_declared_shapes_checks_every_fed_tensor() -> None:
    specs = [("x", None, None), ("ids", "int64", None)]  # TorchScript declares no shapes
    inputs.check_batch(specs, _feeds(x=(2, 16), ids=(2, 8)), 2)
    with pytest.raises(UsageError, match="input 'ids' is fed with shape \\[3, 8\\]"):
        inputs.check_batch(specs, _feeds(x=(2, 16), ids=(3, 8)), 2)


def _settings(argv: list[str]) -> dict:
    return dict(cli.settings_from(cli.build_parser().parse_args(argv)))


def test_batch_and_concurrency_on_the_command_line(tmp_path: Path) -> None:
    defaults = _settings(["--model", "m.onnx"])
    assert (defaults["batch"], defaults["concurrency"]) == (None, 1)
    settings = _settings(["--model", "m.onnx", "--batch", "8", "--concurrency", "4"])
    public = result.public_settings(settings)
    assert (public["batch"], public["concurrency"]) == (8, 4)
    child = _settings(parent.child_argv(settings, 0, str(tmp_path / "r.json"))[3:])
    assert (child["batch"], child["concurrency"]) == (8, 4)
    for flag in ("--batch", "--concurrency"):
        with pytest.raises(UsageError, match=f"{flag} must be >= 1"):
            _settings(["--model", "m.onnx", flag, "0"])


def test_ok_line_says_what_was_in_flight() -> None:
    rep = _repeat([0.02] * 100, 1.0, 2.0, 2, 4)
    doc = {"summary": measure.summarize([rep]), "repeats": [rep],
           "provider": {"active": ["CPUExecutionProvider"], "fallback": False}}
    assert cli._ok_line(doc).endswith("on CPUExecutionProvider; 2 in flight, 400.0 samples/s")
    single = _repeat([0.02] * 100, 1.0, 2.0, 1, None)
    doc.update(summary=measure.summarize([single]), repeats=[single])
    assert cli._ok_line(doc).endswith("on CPUExecutionProvider")
