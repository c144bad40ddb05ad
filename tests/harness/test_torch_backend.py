"""The TorchScript backend on the host's torch (skipped where torch is not installed)."""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from harness_testlib import run_harness

from envmatrix_harness import backends, cli, measure

torch = pytest.importorskip("torch")

FAST = ["--warmup", "2", "--min-iterations", "20", "--min-time", "0.05", "--repeats", "2"]


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(16, 8)
        self.table = torch.nn.Embedding(1000, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.linear(x)), self.table(ids).mean(dim=1)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("torch") / "net.pt"
    torch.jit.script(_Net()).save(str(path))
    return path


def test_torchscript_runs_with_generated_inputs(scripted: Path, tmp_path: Path) -> None:
    run = run_harness(sys.executable, ["--model", str(scripted), "--shape", "x=2,16",
                                       "--shape", "ids=2,8", "--dtype", "ids=int64", *FAST,
                                       "--save-outputs", str(tmp_path / "o.npz")], tmp_path)
    doc = run.doc
    assert run.code == 0 and doc["status"] == "ok", doc["reason"]
    assert doc["backend"] == "torch" and doc["provider"]["active"] == ["cpu"]
    assert [o["name"] for o in doc["outputs"]] == ["output.0", "output.1"]
    assert doc["fingerprint"]["packages"]["torch"] == torch.__version__
    assert all(len(rep["latencies_s"]) >= 20 for rep in doc["repeats"])
    # the outputs are what torch computes on the same generated inputs
    from envmatrix_harness.inputs import make_inputs
    feeds = make_inputs([("x", "float32", [2, 16]), ("ids", "int64", [2, 8])], 0)
    module = torch.jit.load(str(scripted))
    with torch.no_grad():
        expected = module(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["ids"]))
    saved = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(saved["output.0"], expected[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(saved["output.1"], expected[1].numpy(), rtol=1e-6)


def test_torch_errors(scripted: Path, tmp_path: Path) -> None:
    missing = run_harness(sys.executable, ["--model", str(scripted), "--shape", "x=2,16",
                                           *FAST], tmp_path)
    assert missing.code == 2
    assert missing.doc["reason"] == "input 'ids' has an unknown rank; pass --shape ids=D1,D2,..."
    if not torch.cuda.is_available():
        no_gpu = run_harness(sys.executable, ["--model", str(scripted), "--provider", "cuda",
                                              *FAST], tmp_path)
        assert no_gpu.code == 2
        assert no_gpu.doc["reason"] == (f"torch device cuda is not available in torch "
                                        f"{torch.__version__}; available: cpu")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a zip archive")
    bad = run_harness(sys.executable, ["--model", str(broken), *FAST], tmp_path)
    assert bad.code == 2 and bad.doc["reason"].startswith(
        f"torch {torch.__version__} cannot load {broken} as TorchScript")


def test_inputs_file_with_onnx_names_is_fed_by_position(scripted: Path, tmp_path: Path) -> None:
    """The host writes one .npz with the ONNX model's input names for both backends."""
    feeds = {"input": np.ones((1, 16), np.float32), "input_ids": np.zeros((1, 8), np.int64)}
    np.savez(tmp_path / "in.npz", **feeds)
    run = run_harness(sys.executable, ["--model", str(scripted), "--inputs",
                                       str(tmp_path / "in.npz"), "--provider",
                                       "CPUExecutionProvider", *FAST], tmp_path)
    assert run.code == 0, run.doc["reason"]
    assert run.doc["provider"]["notes"] == [
        "inputs file tensors fed to forward() by position: input -> x, input_ids -> ids"]
    assert [i["name"] for i in run.doc["inputs"]] == ["x", "ids"]


def test_torch_with_requests_in_flight(scripted: Path, tmp_path: Path) -> None:
    shapes = ["--shape", "x=2,16", "--shape", "ids=2,8", "--dtype", "ids=int64"]
    run = run_harness(sys.executable, ["--model", str(scripted), *shapes, "--concurrency", "2",
                                       "--batch", "2", *FAST], tmp_path)
    doc = run.doc
    assert run.code == 0 and doc["status"] == "ok", doc["reason"]
    assert doc["settings"]["concurrency"] == 2 and doc["summary"]["scenario"] == "offline"
    for rep in doc["repeats"]:
        assert rep["requests"] == len(rep["latencies_s"]) >= 20
        assert rep["samples_per_s"] == pytest.approx(2 * rep["requests_per_s"])
    assert doc["summary"]["samples_per_s"] > 0 and "2 in flight" in run.stderr
    # no declared shapes: every fed tensor's first dimension is the batch
    wrong = run_harness(sys.executable, ["--model", str(scripted), *shapes, "--batch", "3",
                                         *FAST], tmp_path, name="wrong.json")
    assert wrong.code == 2 and wrong.doc["reason"].startswith(
        "--batch 3: input 'x' is fed with shape [2, 16]")


def test_worker_threads_run_under_inference_mode(scripted: Path) -> None:
    """inference_mode is thread-local: worker_init enters it in each load thread, and the
    main thread's stays entered after those threads end."""
    settings = cli.settings_from(cli.build_parser().parse_args(["--model", str(scripted)]))
    backend = backends.make_backend(settings, {"path": str(scripted)})
    backend.create()
    seen = []

    def call() -> None:
        seen.append((threading.get_ident(), torch.is_inference_mode_enabled()))
    measure.concurrent_loop(call, (), 3, 10, 0.0, worker_init=backend.worker_init)
    assert {mode for _, mode in seen} == {True} and len({ident for ident, _ in seen}) == 3
    outside = []
    thread = threading.Thread(target=lambda: outside.append(torch.is_inference_mode_enabled()))
    thread.start()
    thread.join()
    assert outside == [False]  # what a thread without worker_init would run under
    gc.collect()
    assert torch.is_inference_mode_enabled()
