"""Timing loops, process resource figures, summaries and output digests.

The timed loop is kept as bare as a hand-written benchmark: the call and its arguments are
bound to locals beforehand, and each iteration does two perf_counter() reads, the call and one
list append (benchmarks/harness_overhead.py measures the difference to a bare loop).
"""

import hashlib
import os
import resource
import sys
import time

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def timed_loop(call, args, min_iterations, min_time_s, sync=None):
    """Latencies of call(*args) until BOTH min_iterations and min_time_s are reached.

    `sync` (e.g. torch.cuda.synchronize) is called before and after every timed call, so that
    asynchronous devices are measured to completion. Returns (latencies, wall seconds).
    """
    if sync is not None:
        return _synced_loop(call, args, min_iterations, min_time_s, sync)
    perf = time.perf_counter
    latencies = []
    append = latencies.append
    count = 0
    start = perf()
    while True:
        t0 = perf()
        call(*args)
        t1 = perf()
        append(t1 - t0)
        count += 1
        if count >= min_iterations and t1 - start >= min_time_s:
            return latencies, t1 - start


def _synced_loop(call, args, min_iterations, min_time_s, sync):
    perf = time.perf_counter
    latencies = []
    append = latencies.append
    count = 0
    start = perf()
    while True:
        sync()
        t0 = perf()
        call(*args)
        sync()
        t1 = perf()
        append(t1 - t0)
        count += 1
        if count >= min_iterations and t1 - start >= min_time_s:
            return latencies, t1 - start


def warm_up(call, args, count, sync=None):
    for _ in range(count):
        call(*args)
    if sync is not None:
        sync()


def cpu_seconds():
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes():
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def threads_alive():
    """OS threads of this process now (entries of /proc/self/task); None where there is none.

    Sampled before and after the timed loop, never inside it.
    """
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def cpus_available(quota_cores=None):
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (cores,
    from harness.fingerprint.cgroup_limits) when one is set; an int, or the quota (float)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count()
    if quota_cores and (count is None or quota_cores < count):
        return float(quota_cores)
    return count


def latency_summary(latencies):
    """p50/p90/p95/p99 (numpy's default linear interpolation), mean, std, min, max."""
    values = np.asarray(latencies, dtype=np.float64)
    points = np.percentile(values, PERCENTILES)
    summary = dict(("p{}".format(p), float(v)) for p, v in zip(PERCENTILES, points))
    summary.update(mean=float(values.mean()), std=float(values.std()),
                   min=float(values.min()), max=float(values.max()))
    return summary


def _median_of(repeats, key):
    """Median of a per-repeat figure over the repeats that have it (repeats from an older
    harness, merged by the host, may lack it); None when none has it."""
    values = [rep[key] for rep in repeats if rep.get(key) is not None]
    return float(np.median(values)) if values else None


def _threads_summary(repeats):
    """The first repeat's threads block, alive_in_loop the most over all repeats."""
    blocks = [rep["threads"] for rep in repeats if rep.get("threads")]
    if not blocks:
        return None
    summary = dict(blocks[0])
    alive = [block["alive_in_loop"] for block in blocks if block.get("alive_in_loop") is not None]
    summary["alive_in_loop"] = max(alive) if alive else None
    return summary


def _gpu_summary(repeats):
    """Energy and power: medians over the repeats that measured them; memory: the most;
    energy_method and nvml: the first repeat's. None when no repeat has a gpu block."""
    blocks = [rep["gpu"] for rep in repeats if rep.get("gpu")]
    if not blocks:
        return None
    peaks = [b.get(key) for b in blocks
             for key in ("memory_used_peak_bytes",) if b.get(key) is not None]
    runtime = [b["runtime_peak_memory_bytes"] for b in blocks
               if b.get("runtime_peak_memory_bytes") is not None]
    return {"nvml": blocks[0].get("nvml"), "energy_method": blocks[0].get("energy_method"),
            "energy_per_inference_j": _median_of(blocks, "energy_per_inference_j"),
            "mean_power_w": _median_of(blocks, "mean_power_w"),
            "memory_used_peak_bytes": max(peaks) if peaks else None,
            "runtime_peak_memory_bytes": max(runtime) if runtime else None}


def summarize(repeats):
    """The result's `summary` block over all repeats pooled (see docs/result-schema.md)."""
    pooled = [lat for rep in repeats for lat in rep["latencies_s"]]
    if not pooled:
        return None
    return {
        "iterations": len(pooled),
        "latency_s": latency_summary(pooled),
        "repeat_p50_s": [float(np.percentile(rep["latencies_s"], 50)) for rep in repeats],
        "throughput_per_s": len(pooled) / float(sum(pooled)),
        "session_create_s": float(np.median([rep["session_create_s"] for rep in repeats])),
        "first_inference_s": float(np.median([rep["first_inference_s"] for rep in repeats])),
        "peak_rss_bytes": max(rep["peak_rss_bytes"] for rep in repeats),
        "cpu_time_s": float(sum(rep["cpu_time_s"] for rep in repeats)),
        # the cost of the latency figures: medians over repeats, null where none measured it
        "cores_used": _median_of(repeats, "cores_used"),
        "cpu_per_inference_s": _median_of(repeats, "cpu_per_inference_s"),
        "cold_start_s": _median_of(repeats, "cold_start_s"),
        "import_s": _median_of(repeats, "import_s"),
        "threads": _threads_summary(repeats),
        # TensorRT: the first repeat's session creation (engine built, or loaded from a warm
        # cache); GPU cells: energy, power and device memory (null for the others)
        "engine_build_s": repeats[0].get("engine_build_s"),
        "gpu": _gpu_summary(repeats),
    }


def tensor_digest(name, value):
    """{name, dtype, shape, sha256, mean, absmax} of one tensor.

    sha256 is over the C-contiguous little-endian bytes; two tensors are identical when
    sha256, dtype and shape all match. mean/absmax (float64) allow a tolerance comparison.
    """
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - sequences/maps of odd types: digest their text
        array = None
    if array is None or array.dtype == object:
        text = repr(value).encode("utf-8")
        return {"name": name, "dtype": "object", "shape": None,
                "sha256": hashlib.sha256(text).hexdigest(), "mean": None, "absmax": None}
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if not array.flags.c_contiguous:  # not np.ascontiguousarray: it makes 0-d arrays 1-d
        array = np.array(array, order="C")
    mean = absmax = None
    if array.size and array.dtype.kind in "biuf":
        as_float = array.astype(np.float64)
        mean, absmax = float(as_float.mean()), float(np.abs(as_float).max())
        # JSON has no NaN/inf: a non-finite output shows as null (the sha256 still differs)
        mean = mean if np.isfinite(mean) else None
        absmax = absmax if np.isfinite(absmax) else None
    return {"name": name, "dtype": str(array.dtype), "shape": list(array.shape),
            "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
            "mean": mean, "absmax": absmax}
