"""One repeat in one fresh process: session creation, first inference, warm-up, timed loop.

The parent (`harness.parent`) starts `python -m harness --child-index N --child-out FILE ...`
once per repeat and merges the files. Repeat 0 also records the fingerprint, the input and
output digests and (with --save-outputs) the outputs themselves.
"""

import time

from . import backends, compat, fingerprint, inputs, measure, modelinfo, result


def _feeds(settings, backend):
    """(feeds, names taken from the --inputs file)."""
    fixed = inputs.load_npz(settings["inputs_file"]) if settings["inputs_file"] else {}
    fixed = backend.adapt_fixed(fixed)
    feeds = inputs.make_inputs(backend.input_specs(), settings["seed"], settings["shapes"],
                               settings["values"], fixed)
    return feeds, set(fixed)


def _describe_io(specs):
    if specs is None:
        return None
    return [{"name": name, "dtype": inputs.ORT_TYPES.get(str(dtype), dtype),
             "shape": None if shape is None else [d if isinstance(d, int) else (d or None)
                                                  for d in shape]}
            for name, dtype, shape in specs]


def _provider_block(doc, backend):
    active = backend.active()
    block = doc["provider"]
    block.update(requested=backend.requested, options=backend.options,
                 available=backend.available, active=active,
                 fallback=backend.requested not in active, notes=list(backend.notes),
                 engine_cache=compat.tensorrt_cache(backend.requested, backend.options))
    if block["fallback"]:
        block["reason"] = ("{} was requested but the session runs on {}: the provider failed "
                           "to initialise (see the runtime's log lines)".format(
                               backend.requested, ", ".join(active)))


def _since(wall_clock_start):
    """Seconds of wall clock since a time.time() taken in another process (the parent), or
    None without one (a child started by hand) or when the clock stepped backwards."""
    if wall_clock_start is None:
        return None
    elapsed = time.time() - wall_clock_start
    return elapsed if elapsed >= 0 else None


def _measure(settings, backend, feeds, spawned_at):
    """The repeat record; the first inference's raw outputs come back too."""
    call, args, sync = backend.runner(feeds)
    t0 = time.perf_counter()
    first = call(*args)
    if sync is not None:
        sync()
    first_s = time.perf_counter() - t0
    cold_start_s = _since(spawned_at)
    measure.warm_up(call, args, settings["warmup"], sync)
    concurrency = settings.get("concurrency") or 1
    if concurrency > 1:
        measure.concurrent_warm_up(call, args, concurrency, settings["warmup"], sync,
                                   backend.worker_init)
    alive_before = measure.threads_alive()
    # GPU cells: NVML's energy counter (or a 10 Hz power/memory sampler thread) around the
    # loop, started after the thread count above and stopped before the one below.
    monitor = _gpu_monitor(backend)
    cpu0 = measure.cpu_seconds()
    if concurrency > 1:
        latencies, wall = measure.concurrent_loop(call, args, concurrency,
                                                  settings["min_iterations"],
                                                  settings["min_time_s"], sync,
                                                  backend.worker_init)
    else:  # single-stream: the bare loop, unchanged
        latencies, wall = measure.timed_loop(call, args, settings["min_iterations"],
                                             settings["min_time_s"], sync)
    cpu = measure.cpu_seconds() - cpu0
    gpu = monitor.stop(len(latencies)) if monitor is not None else None
    if gpu is not None:
        gpu["runtime_peak_memory_bytes"] = backend.gpu_memory_peak()
    alive_after = measure.threads_alive()
    alive = [n for n in (alive_before, alive_after) if n is not None]
    threads = backend.threads()
    # concurrent_loop's threads live only inside it, so neither count saw them
    load_threads = concurrency if concurrency > 1 else 0
    threads["alive_in_loop"] = max(alive) + load_threads if alive else None
    threads["cpus_available"] = measure.cpus_available(
        fingerprint.cgroup_limits()["cpu_quota_cores"])
    record = {"first_inference_s": first_s, "latencies_s": latencies,
              "measure_wall_s": wall, "cpu_time_s": cpu,
              "cores_used": cpu / wall if wall > 0 else None,
              "cpu_per_inference_s": cpu / len(latencies),
              "cold_start_s": cold_start_s, "threads": threads,
              "peak_rss_bytes": measure.peak_rss_bytes(), "gpu": gpu}
    record.update(measure.load_figures(latencies, wall, cpu, concurrency, settings.get("batch")))
    return record, first


def _gpu_monitor(backend):
    """A started nvml.GpuMonitor for a GPU cell, None for the others (NVML is never loaded)."""
    index = backend.gpu_index()
    if index is None:
        return None
    from . import nvml
    return nvml.GpuMonitor(index).start()


def run_child(settings, index, spawned_at=None, started_at=None):
    """Fill and return a result document for one repeat; HarnessError propagates.

    spawned_at: the parent's time.time() just before it started this process (cold start);
    started_at: time.time() when this interpreter began running the harness's own code.
    """
    doc = result.new_result(settings)
    doc["model"].update(modelinfo.describe(settings["model"], settings["backend"]))
    backend = backends.make_backend(settings, doc["model"])
    doc["provider"].update(requested=backend.requested, available=backend.available,
                           options=backend.options, notes=list(backend.notes))
    t0 = time.perf_counter()
    backend.create()
    create_s = time.perf_counter() - t0
    _provider_block(doc, backend)
    # What the runtime's API was handed (text), and what the session reports back: the
    # OpenVINO EP (1.24.1) reports nothing there, so options_passed is the evidence for it.
    doc["provider"]["options_passed"] = getattr(backend, "runtime_options", None)
    doc["session"], doc["provider"]["options_in_force"] = backend.in_force()
    feeds, from_file = _feeds(settings, backend)
    inputs.check_batch(backend.input_specs(), feeds, settings.get("batch"))
    doc["provider"]["notes"] = list(backend.notes)
    record, first = _measure(settings, backend, feeds, spawned_at)
    interpreter_start_s = None
    if spawned_at is not None and started_at is not None and started_at >= spawned_at:
        interpreter_start_s = started_at - spawned_at
    record.update(import_s=backend.import_s, interpreter_start_s=interpreter_start_s,
                  # TensorRT builds its engines while the session is created (a warm engine
                  # cache loads them instead): that creation time, apart, null otherwise
                  engine_build_s=create_s if backend.requested == compat.TENSORRT else None)
    record = dict([("index", index), ("session_create_s", create_s)] + sorted(record.items()))
    doc["repeats"] = [record]
    doc["model"]["inputs"] = _describe_io(backend.input_specs())
    doc["model"]["outputs"] = _describe_io(backend.output_specs())
    if index == 0:
        # after the measurement, first repeat only: a second, profiled session
        doc["provider"].update(backend.placement(feeds))
        _first_repeat_extras(settings, doc, backend, feeds, first, from_file)
    doc["status"], doc["reason"] = "ok", None
    doc["finished_at"] = result.utc_now()
    return doc


def _first_repeat_extras(settings, doc, backend, feeds, first, from_file):
    named = backend.name_outputs(first)
    doc["outputs"] = [measure.tensor_digest(name, value) for name, value in named]
    digests = []
    for name, array in feeds.items():
        digest = measure.tensor_digest(name, array)
        digest["source"] = "file" if name in from_file else (
            "value" if name in settings["values"] else "generated")
        digests.append(digest)
    doc["inputs"] = digests
    if settings["save_outputs"]:
        result.save_npz_atomic(settings["save_outputs"], dict(named))
    doc["fingerprint"] = fingerprint.collect(backend.available,
                                             gpu_cell=backend.gpu_index() is not None)
