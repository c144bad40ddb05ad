"""envmatrix_harness/nvml.py and the GPU readings of a repeat, against a FAKE NVML built from C
here (tests/harness/data/fake_nvml.c): the same ctypes path as with the driver's
libnvidia-ml.so.1, with canned values, in three builds: a working one (energy counter), one whose
energy counter is NOT_SUPPORTED (power sampling), and one whose nvmlInit fails."""

from __future__ import annotations

import time
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from harness_testlib import build_shared_library

from envmatrix_harness import child, fingerprint, measure, nvml

SOURCE = Path(__file__).resolve().parent / "data" / "fake_nvml.c"
GIB = 1 << 30
_serial = count()


@pytest.fixture
def fake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """fake(*defines) -> path of a freshly built library (a new file each time, so its static
    counters start afresh: dlopen shares one copy per path within a process)."""
    def build(*defines: str) -> str:
        folder = tmp_path_factory.mktemp("fake-nvml")
        target = folder / f"libfake-nvml-{next(_serial)}.so"
        return str(build_shared_library(SOURCE, target, *defines))
    return build


def test_gpus_for_the_fingerprint(fake: Any) -> None:
    assert nvml.gpus(fake()) == [
        {"name": f"Fake GPU {i}", "driver": "550.54.15", "memory_bytes": 80 * GIB,
         "cuda_driver": "12.4", "index": i, "source": "nvml"} for i in (0, 1)]
    assert nvml.gpus(fake("FAKE_INIT_FAILS")) is None
    assert nvml.gpus("/nonexistent/libnvidia-ml.so.1") is None


def test_energy_counter_around_the_loop(fake: Any) -> None:
    monitor = nvml.GpuMonitor(1, path=fake(), interval_s=0.05).start()
    time.sleep(0.3)
    record = monitor.stop(100)
    assert record["nvml"] == "ok" and record["nvml_index"] == 1
    assert record["energy_method"] == "energy_counter"
    assert record["energy_per_inference_j"] == pytest.approx(6.0 / 100)  # 6000 mJ, 2 reads
    assert record["mean_power_w"] == pytest.approx(6.0 / record["energy_window_s"])
    assert record["energy_window_s"] >= 0.3 and record["power_samples"] is None
    assert record["memory_used_before_bytes"] == GIB
    assert record["memory_used_peak_bytes"] == 3 * GIB
    assert record["memory_samples"] >= 4  # start, >= 2 in the thread, end
    assert record["clocks_mhz"] == {"start": {"sm": 1980, "mem": 2619},
                                    "end": {"sm": 1980, "mem": 2619}}
    assert record["errors"] is None


def test_power_sampling_where_the_energy_counter_is_not_supported(fake: Any) -> None:
    monitor = nvml.GpuMonitor(0, path=fake("FAKE_NO_ENERGY"), interval_s=0.05).start()
    time.sleep(0.3)
    record = monitor.stop(50)
    assert record["energy_method"] == "power_sampling"
    assert record["mean_power_w"] == pytest.approx(250.0)
    assert record["power_samples"] >= 4
    assert record["energy_per_inference_j"] == pytest.approx(
        250.0 * record["energy_window_s"] / 50)
    assert record["errors"] == {
        "energy": "NVML_ERROR_NOT_SUPPORTED (3): not supported by this GPU or driver"}


def test_nvml_that_cannot_start_is_recorded_not_raised(fake: Any) -> None:
    failed = nvml.GpuMonitor(0, path=fake("FAKE_INIT_FAILS")).start().stop(10)
    reason = ("unavailable: nvmlInit_v2: NVML_ERROR_DRIVER_NOT_LOADED (9): the NVIDIA driver "
              "is not loaded")
    assert failed["nvml"] == reason
    assert failed["energy_method"] == "not supported: NVML " + reason
    assert failed["energy_per_inference_j"] is None and failed["memory_used_peak_bytes"] is None
    missing = nvml.GpuMonitor(0, path="/nonexistent/libnvidia-ml.so.1").start().stop(10)
    assert missing["nvml"].startswith("unavailable: cannot load /nonexistent/libnvidia-ml.so.1")
    no_such_gpu = nvml.GpuMonitor(5, path=fake()).start().stop(10)
    assert no_such_gpu["nvml"] == ("unavailable: no handle for GPU 5: NVML_ERROR_INVALID_"
                                   "ARGUMENT (2): invalid argument (e.g. no GPU with that index)")


def test_cuda_visible_devices_maps_to_the_nvml_index(fake: Any) -> None:
    lib = nvml.Nvml(fake())
    assert lib.open() is None
    try:
        assert nvml.nvml_index(lib, 0, {}) == 0
        assert nvml.nvml_index(lib, 0, {"CUDA_VISIBLE_DEVICES": "1"}) == 1
        assert nvml.nvml_index(lib, 1, {"CUDA_VISIBLE_DEVICES": "1,0"}) == 0
        assert nvml.nvml_index(lib, 0, {"CUDA_VISIBLE_DEVICES": "GPU-fake-1111"}) == 1
        assert nvml.nvml_index(lib, 0, {"CUDA_VISIBLE_DEVICES": "MIG-abc"}) == 0
    finally:
        lib.close()


def test_reason_for_every_code_is_readable() -> None:
    assert nvml.reason_for(3) == ("NVML_ERROR_NOT_SUPPORTED (3): not supported by this GPU "
                                  "or driver")
    assert nvml.reason_for(4242) == "NVML return code (4242): not documented in nvml.h"


def test_cuda_and_cudnn_versions_from_the_loaded_libraries(fake: Any) -> None:
    lib = fake()
    versions = fingerprint.cuda_libraries({"cudart": lib, "cudnn": lib})
    assert versions == {"cuda_runtime": "11.8", "cudnn": "8.9.7", "source": "loaded libraries",
                        "cudart_path": lib, "cudnn_path": lib}
    assert fingerprint.cuda_libraries({})["source"] is None
    maps = ("7f0-7f1 r-xp 00000000 08:01 1 /usr/local/cuda/lib64/libcudart.so.11.8.89\n"
            "7f2-7f3 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libcudnn_ops.so.9.1.0\n"
            "7f4-7f5 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libcudnn.so.9.1.0\n"
            "7f6-7f7 rw-p 00000000 00:00 0 \n")
    assert fingerprint.loaded_libraries(maps) == {
        "cudart": "/usr/local/cuda/lib64/libcudart.so.11.8.89",
        "cudnn": "/usr/lib/x86_64-linux-gnu/libcudnn.so.9.1.0"}
    assert fingerprint._cudnn_version(90100) == "9.1.0"
    assert fingerprint._cuda_version(12040) == "12.4"


class _GpuBackend:
    """The backend surface child._measure uses, for a pretend GPU cell."""

    requested = "CUDAExecutionProvider"

    def __init__(self, index: int | None = 0) -> None:
        self.index = index

    def runner(self, feeds: dict) -> tuple:
        return (lambda: time.sleep(0.001)), (), None

    def gpu_index(self) -> int | None:
        return self.index

    def gpu_memory_peak(self) -> int:
        return 123

    def threads(self) -> dict:
        return {}


def test_a_gpu_repeat_records_the_nvml_block(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """child._measure loads NVML through ENVMATRIX_NVML_LIBRARY, as inside an image."""
    monkeypatch.setenv(nvml.ENV_LIBRARY, fake())
    settings = {"warmup": 1, "min_iterations": 20, "min_time_s": 0.25}
    record, _ = child._measure(settings, _GpuBackend(), {}, None)
    gpu = record["gpu"]
    assert gpu["nvml"] == "ok" and gpu["energy_method"] == "energy_counter"
    assert gpu["energy_per_inference_j"] == pytest.approx(6.0 / len(record["latencies_s"]))
    assert gpu["memory_used_peak_bytes"] == 3 * GIB and gpu["runtime_peak_memory_bytes"] == 123
    # the summary over repeats: energy and power medians, memory the most
    second = dict(record, gpu=dict(gpu, energy_per_inference_j=1.0, mean_power_w=0.0,
                                   memory_used_peak_bytes=4 * GIB))
    summary = measure.summarize([dict(record, index=0, session_create_s=0.1,
                                      first_inference_s=0.01, engine_build_s=0.1),
                                 dict(second, index=1, session_create_s=0.1,
                                      first_inference_s=0.01, engine_build_s=0.01)])
    assert summary["gpu"]["energy_per_inference_j"] == pytest.approx(
        (gpu["energy_per_inference_j"] + 1.0) / 2)
    assert summary["gpu"]["memory_used_peak_bytes"] == 4 * GIB
    assert summary["gpu"]["energy_method"] == "energy_counter"
    assert summary["engine_build_s"] == 0.1  # the first session's: the engine was built there


def test_cpu_cells_never_load_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(nvml.ENV_LIBRARY, "/nonexistent/libnvidia-ml.so.1")
    record, _ = child._measure({"warmup": 0, "min_iterations": 3, "min_time_s": 0},
                               _GpuBackend(None),
                               {}, None)
    assert record["gpu"] is None
    assert measure.summarize([dict(record, index=0, session_create_s=0.1,
                                   first_inference_s=0.01)])["gpu"] is None


def test_gpu_check_script_stops_cleanly_without_a_gpu() -> None:
    """benchmarks/gpu_check.py is for a machine with a GPU; here it says why it cannot run."""
    import subprocess
    import sys

    from harness_testlib import REPO
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.stdout.strip() == "True":
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.py itself")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gpu_check: torch ")
    assert "NVIDIA GPU" in done.stderr and "Traceback" not in done.stderr
