"""Timing loops, process resource figures, summaries and output digests.

The timed loop is kept as bare as a hand-written benchmark: the call and its arguments are
bound to locals beforehand, and each iteration does two perf_counter() reads, the call and one
list append (benchmarks/harness_overhead.py measures the difference to a bare loop).

Load scenarios (MLPerf LoadGen's names): concurrency 1 is "single-stream" (timed_loop, one
request at a time); concurrency N > 1 is "offline" (concurrent_loop: a closed loop of N threads
on the same session, so N requests are always in flight).
"""

import hashlib
import os
import resource
import sys
import threading
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


def scenario(concurrency):
    return "single-stream" if (concurrency or 1) == 1 else "offline"


def _in_threads(concurrency, work, worker_init=None):
    """Run work(start, errors) in `concurrency` threads released together by one barrier.

    Returns (start, [each thread's return value]); start is the perf_counter() read by the
    barrier's action, just before the threads are released. The first exception raised in any
    thread is re-raised here after all have ended (a thread that fails also breaks the
    barrier, so none waits for it, and the others see `errors` and stop).
    """
    started, results, errors = [], [None] * concurrency, []
    barrier = threading.Barrier(concurrency, action=lambda: started.append(time.perf_counter()))

    def worker(index):
        try:
            if worker_init is not None:
                worker_init()  # thread-local runtime state (torch's inference_mode)
            barrier.wait()
            results[index] = work(started[0], errors)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread below
            errors.append(err)  # before abort(): the waiting threads' BrokenBarrierError
            barrier.abort()     # lands after it, so errors[0] is the cause
    threads = [threading.Thread(target=worker, args=(index,), name=f"harness-load-{index}")
               for index in range(concurrency)]
    for thread in threads:
        thread.daemon = True  # an interrupted run must not wait for them
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return started[0], results


def concurrent_loop(call, args, concurrency, min_iterations, min_time_s, sync=None,
                    worker_init=None):
    """The offline scenario: `concurrency` threads each loop call(*args) on the same session,
    so that many requests are in flight at all times (a closed loop), until the requests
    completed by all threads reach min_iterations AND min_time_s has passed since the start.

    Each thread times its own requests like timed_loop (sync, if given, after each call);
    a thread that sees both minimums reached stops after its current request, so the last
    requests run with fewer in flight. Returns (latencies of every completed request, thread by
    thread, wall seconds from the barrier's release to the end of the last thread's request).
    onnxruntime's session.run and torch modules release the GIL while they compute.
    """
    lock = threading.Lock()
    completed = [0]

    def work(start, errors):
        perf = time.perf_counter
        latencies = []
        append = latencies.append
        while True:
            t0 = perf()
            call(*args)
            if sync is not None:
                sync()
            t1 = perf()
            append(t1 - t0)
            with lock:  # a shared count: one uncontended lock per request, no GIL reliance
                completed[0] += 1
                done = completed[0]
            if errors or (done >= min_iterations and t1 - start >= min_time_s):
                return latencies, t1

    start, results = _in_threads(concurrency, work, worker_init)
    latencies = [lat for thread_latencies, _ in results for lat in thread_latencies]
    return latencies, max(end for _, end in results) - start


def concurrent_warm_up(call, args, concurrency, count, sync=None, worker_init=None):
    """max(1, count // concurrency) untimed calls in each of `concurrency` threads, so what a
    runtime makes per concurrent request (OpenVINO infer requests, torch's pools) exists
    before the timed loop; after the sequential warm_up."""
    per_thread = max(1, count // concurrency)

    def work(start, errors):
        for _ in range(per_thread):
            call(*args)
        if sync is not None:
            sync()

    _in_threads(concurrency, work, worker_init)


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
    summary = dict((f"p{p}", float(v)) for p, v in zip(PERCENTILES, points))
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


def load_figures(latencies, wall, cpu, concurrency, batch):
    """A repeat's load figures: requests completed in the timed loop, their rate and the rate
    of samples (requests x batch; 1 sample per request without --batch) over its wall time,
    and the CPU time per sample."""
    requests = len(latencies)
    samples = requests * (batch or 1)
    return {"batch": batch, "concurrency": concurrency, "requests": requests,
            "requests_per_s": requests / wall if wall > 0 else None,
            "samples_per_s": samples / wall if wall > 0 else None,
            "cpu_per_sample_s": cpu / samples}


def _load_summary(repeats):
    """Rates over all repeats: completed requests (samples) / wall time of the timed loops, so
    each repeat weighs by its length. Repeats of an older harness count as single-stream
    without a batch (one request per latency)."""
    concurrency = repeats[0].get("concurrency") or 1
    batch = repeats[0].get("batch")
    counts = [(rep.get("requests", len(rep["latencies_s"])), rep.get("batch") or 1)
              for rep in repeats]
    requests = sum(n for n, _ in counts)
    samples = sum(n * batch for n, batch in counts)
    wall = float(sum(rep.get("measure_wall_s") or 0.0 for rep in repeats))
    return {"batch": batch, "concurrency": concurrency, "scenario": scenario(concurrency),
            "requests_per_s": requests / wall if wall > 0 else None,
            "samples_per_s": samples / wall if wall > 0 else None,
            "cpu_per_sample_s": _median_of(repeats, "cpu_per_sample_s")}


def summarize(repeats):
    """The result's `summary` block over all repeats pooled (see docs/result-schema.md)."""
    pooled = [lat for rep in repeats for lat in rep["latencies_s"]]
    if not pooled:
        return None
    summary = {
        "iterations": len(pooled),
        "latency_s": latency_summary(pooled),
        "repeat_p50_s": [float(np.percentile(rep["latencies_s"], 50)) for rep in repeats],
        # 1 / mean latency; under concurrency > 1 that is not the rate (samples_per_s is)
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
    summary.update(_load_summary(repeats))
    return summary


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
