"""Prove the harness's GPU path on a machine with an NVIDIA GPU and torch with CUDA (no Docker).

    python benchmarks/gpu_check.py [--batch 8] [--min-time 2] [--repeats 3] [--keep DIR]

What it does, in under 5 minutes: takes the zoo's cnn as TorchScript (envmatrix.inputs.zoo with
torchscript=True, when the envmatrix package and onnx are importable) or else a small
convolutional network scripted here; runs `python -m harness --provider cuda` on it from this
checkout (torch.cuda.synchronize around each timed iteration, NVML through ctypes); prints p50,
the GPU's name, driver, CUDA and cuDNN versions, clocks, peak GPU memory and energy or power per
inference; and checks that each of them was recorded. Exit 0: all recorded; 1: the harness ran
but something is missing (listed); 2: this machine cannot run the check (no torch, no CUDA).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 240


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"gpu_check: {message}\n")
    return code


def _torch_or_reason() -> tuple[Any, str | None]:
    try:
        import torch
    except ImportError as err:
        return None, (f"torch is not importable here ({err}); this check needs a machine with "
                      "an NVIDIA GPU and torch built with CUDA (pip install torch)")
    if not torch.cuda.is_available():
        return None, (f"torch {torch.__version__} sees no CUDA device (torch.version.cuda = "
                      f"{torch.version.cuda}); run this on a machine with an NVIDIA GPU, its "
                      "driver, and a CUDA build of torch")
    return torch, None


def _small_cnn(torch: Any, path: Path, batch: int) -> tuple[Path, list[str], str]:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            layers: list[Any] = []
            channels = 3
            for width in (32, 64, 128, 256):
                layers += [torch.nn.Conv2d(channels, width, 3, stride=2, padding=1),
                           torch.nn.BatchNorm2d(width), torch.nn.ReLU6()]
                channels = width
            self.features = torch.nn.Sequential(*layers)
            self.head = torch.nn.Linear(channels, 1000)

        def forward(self, x: Any) -> Any:
            return self.head(self.features(x).mean(dim=(2, 3)))

    torch.jit.script(Net().eval()).save(str(path))
    return path, ["--shape", f"x={batch},3,224,224"], "a small CNN scripted by this check"


def _model(torch: Any, folder: Path, batch: int) -> tuple[Path, list[str], str]:
    """The zoo cnn's TorchScript twin, else the small CNN; (path, harness args, what)."""
    try:
        sys.path.insert(0, str(REPO))
        from envmatrix.inputs import zoo
        model = zoo.write_model("cnn", folder, torchscript=True)
        if model.torchscript_path is not None:
            args = []
            for spec in model.inputs:
                dims = [batch if not isinstance(d, int) else d for d in spec.shape]
                args += ["--shape", f"{spec.name}={','.join(str(d) for d in dims)}"]
                if spec.dtype != "float32":
                    args += ["--dtype", f"{spec.name}={spec.dtype}"]
            return Path(model.torchscript_path), args, "the zoo's cnn (TorchScript twin)"
    except Exception as err:  # noqa: BLE001 - the zoo needs onnx; fall back to our own
        sys.stderr.write(f"gpu_check: zoo cnn unavailable ({err}); using a small CNN\n")
    return _small_cnn(torch, folder / "small_cnn.pt", batch)


def _mib(value: Any) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def _report(doc: dict[str, Any]) -> list[str]:
    """Print the figures; return what is missing."""
    summary = doc["summary"]
    gpu = summary.get("gpu") or {}
    repeat_gpu = doc["repeats"][0].get("gpu") or {}
    fingerprint = doc.get("fingerprint") or {}
    cards = fingerprint.get("gpu") or [{}]
    cuda = fingerprint.get("cuda") or {}
    energy = gpu.get("energy_per_inference_j")
    power = gpu.get("mean_power_w")
    lines = [
        ("p50", f"{summary['latency_s']['p50'] * 1e3:.3f} ms over {summary['iterations']} "
                f"iterations in {len(doc['repeats'])} processes"),
        ("device", ", ".join(doc["provider"]["active"])),
        ("GPU", f"{cards[0].get('name')} (source {cards[0].get('source')})"),
        ("driver", f"{cards[0].get('driver')}, CUDA driver {cards[0].get('cuda_driver')}"),
        ("CUDA runtime / cuDNN", f"{cuda.get('cuda_runtime')} / {cuda.get('cudnn')} "
                                 f"(from {cuda.get('source')})"),
        ("clocks (MHz)", json.dumps(repeat_gpu.get("clocks_mhz"))),
        ("NVML", str(gpu.get("nvml"))),
        ("peak GPU memory", f"{_mib(gpu.get('memory_used_peak_bytes'))} used on the device "
                            f"(NVML); {_mib(gpu.get('runtime_peak_memory_bytes'))} "
                            "torch.cuda.max_memory_allocated"),
        ("energy", f"{gpu.get('energy_method')}: "
                   + ("n/a" if energy is None else f"{energy * 1e3:.2f} mJ per inference")
                   + ("" if power is None else f", {power:.1f} W mean")),
    ]
    for key, text in lines:
        print(f"{key:>22}: {text}")
    missing = []
    if doc["provider"]["active"] != ["cuda"]:
        missing.append("the run was not on cuda")
    if gpu.get("nvml") != "ok":
        missing.append(f"NVML: {gpu.get('nvml')}")
    if not cards[0].get("name") or not cards[0].get("driver"):
        missing.append("GPU name or driver")
    if gpu.get("memory_used_peak_bytes") is None or gpu.get("runtime_peak_memory_bytes") is None:
        missing.append("peak GPU memory")
    if energy is None:
        missing.append(f"energy per inference ({gpu.get('energy_method')})")
    if not cuda.get("cuda_runtime"):
        missing.append("CUDA runtime version")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the model and result.json here")
    args = parser.parse_args(argv)
    torch, reason = _torch_or_reason()
    if reason:
        return _fail(reason)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    folder.mkdir(parents=True, exist_ok=True)
    model, shape_args, what = _model(torch, folder, args.batch)
    print(f"model: {what}: {model}")
    out = folder / "result.json"
    command = [sys.executable, "-m", "envmatrix_harness", "--model", str(model),
               "--provider", "cuda", *shape_args, "--warmup", "20", "--min-iterations", "100",
               "--min-time", str(args.min_time), "--repeats", str(args.repeats),
               "--out", str(out)]
    started = time.time()
    try:
        done = subprocess.run(command, cwd=str(REPO), capture_output=True, text=True,
                              timeout=TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        return _fail(f"the harness took longer than {TIME_LIMIT_S} s", 1)
    print(f"harness: exit {done.returncode} after {time.time() - started:.1f} s")
    if not out.exists():
        return _fail(f"no result file; stderr:\n{done.stderr[-3000:]}", 1)
    doc = json.loads(out.read_text())
    if doc["status"] != "ok":
        return _fail(f"harness {doc['status']}: {doc['reason']}\n{done.stderr[-3000:]}", 1)
    missing = _report(doc)
    print(f"result: {out}")
    if missing:
        return _fail("recorded incompletely: " + "; ".join(missing), 1)
    print("gpu_check: ok: the torch CUDA path and the NVML readings are recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
