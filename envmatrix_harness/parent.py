"""The parent process: one fresh child process per repeat, then one merged result.

Fresh processes make the repeats independent (allocator state, thread pools, caches, page
faults of the session creation), which is what the host's significance tests assume. The parent
never imports the runtime; a child that dies without a result (segfault, OOM kill) becomes a
`crashed` result naming the repeat, its exit status and its last stderr line.
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import measure, result

EXIT_CRASHED = 3
# Lines of a runtime's log that explain why a provider was dropped (onnxruntime's own words).
_PROVIDER_LOG_MARKERS = ("[ERROR]", "EP Error", "[E:onnxruntime", "Failed to create")
_SOURCE_LOCATION = re.compile(r"\S+\.(?:cc|cpp|h):\d+\s+.*?\)\s(?=[A-Z\[])")


def child_argv(settings, index, child_out):
    """The command line of repeat `index`, rebuilt from the parsed settings."""
    argv = [sys.executable, "-m", __package__, "--model", settings["model"],
            "--backend", settings["backend"], "--seed", str(settings["seed"]),
            "--warmup", str(settings["warmup"]),
            "--min-iterations", str(settings["min_iterations"]),
            "--min-time", repr(float(settings["min_time_s"])), "--repeats", "1",
            "--concurrency", str(settings.get("concurrency") or 1),
            "--child-index", str(index), "--child-out", child_out]
    single = (("--provider", settings["provider"]), ("--threads", settings["threads"]),
              ("--graph-optimization", settings["graph_optimization"]),
              ("--inputs", settings["inputs_file"]), ("--batch", settings.get("batch")),
              ("--cell", settings["cell"]),
              ("--environment", settings["environment"]), ("--workload", settings["workload"]))
    for flag, value in single:
        if value is not None:
            argv += [flag, str(value)]
    if index == 0 and settings["save_outputs"]:
        argv += ["--save-outputs", settings["save_outputs"]]
    options = settings["provider_options"]
    if all(isinstance(v, str) for v in options.values()):
        pairs = (("--provider-option", options),)
    else:  # typed values keep their type through the JSON form
        argv += ["--provider-options-json", json.dumps(options, sort_keys=True)]
        pairs = ()
    if settings.get("session"):
        argv += ["--session-options", json.dumps(settings["session"], sort_keys=True)]
    for flag, mapping in pairs + (("--value", settings["values"]),
                                  ("--dtype", settings["dtypes"])):
        for name, value in mapping.items():
            argv += [flag, f"{name}={value}"]
    for name, dims in settings["shapes"].items():
        argv += ["--shape", "{}={}".format(name, ",".join(str(d) for d in dims))]
    return argv


def _run_child(settings, index, folder):
    """(child result or None, exit code, its stdout + stderr) of one repeat.

    Both streams: onnxruntime's C++ logs go to stderr, its Python layer print()s to stdout.
    """
    child_out = os.path.join(folder, f"repeat-{index}.json")
    argv = child_argv(settings, index, child_out)
    # The cold start counts from here: the child subtracts this from its own time.time() when
    # its first inference returns (same machine, same wall clock).
    argv += ["--spawned-at", repr(time.time())]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
    stdout, stderr = process.communicate()
    # Forward the child's output, so the runtime's own log lines reach the cell's log.
    sys.stderr.write(stdout + stderr)
    sys.stderr.flush()
    doc = None
    if os.path.exists(child_out):
        with open(child_out) as handle:
            doc = json.load(handle)
    return doc, process.returncode, stdout + stderr


def _crash_reason(index, code, stderr):
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code} without a result"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    tail = f"; last stderr line: {lines[-1][:300]}" if lines else ""
    return f"repeat {index}: the harness process {how}{tail}"


def _provider_log_line(output):
    """The runtime's most telling line about a dropped provider, or None.

    Markers in order of preference; '[ERROR] msg' gives just msg, and a C++ source location
    with its function signature is dropped.
    """
    from .backends import one_line
    lines = [one_line(line, 100000) for line in output.splitlines()]
    for marker in _PROVIDER_LOG_MARKERS:
        for text in lines:
            if marker not in text or text.strip("* ") == "EP Error":  # ORT's banner line
                continue
            if marker == "[ERROR]":
                text = text.rsplit("[ERROR]", 1)[1].strip()
            return one_line(_SOURCE_LOCATION.sub("", text), 300)
    return None


def merge(docs, started_at, stderr_texts):
    """One result from the repeats' results (all ok): repeats concatenated, summary pooled."""
    merged = copy.deepcopy(docs[0])
    merged["started_at"] = started_at
    merged["repeats"] = [rep for doc in docs for rep in doc["repeats"]]
    merged["summary"] = measure.summarize(merged["repeats"])
    merged["settings"]["repeats"] = len(docs)
    fallback = [doc for doc in docs if doc["provider"]["fallback"]]
    if fallback:
        provider = merged["provider"]
        provider.update(fallback=True, active=fallback[0]["provider"]["active"],
                        reason=fallback[0]["provider"].get("reason"))
        log_line = next((_provider_log_line(t) for t in stderr_texts
                         if _provider_log_line(t)), None)
        if log_line:
            provider["reason"] = "{}; runtime log: {}".format(provider["reason"], log_line)
    merged["finished_at"] = result.utc_now()
    return merged


def run_parent(settings):
    """(result document, exit code) after `settings['repeats']` child processes."""
    started_at = result.utc_now()
    folder = tempfile.mkdtemp(prefix="harness-")
    docs, stderr_texts = [], []
    try:
        for index in range(settings["repeats"]):
            doc, code, stderr = _run_child(settings, index, folder)
            if doc is None:
                failed = result.set_error(result.new_result(settings),
                                          _crash_reason(index, code, stderr), status="crashed")
                failed["log_tail"] = "\n".join(stderr.splitlines()[-20:]) or None
                return failed, EXIT_CRASHED
            if doc["status"] != "ok":
                doc["started_at"] = started_at
                doc["settings"]["repeats"] = settings["repeats"]
                return doc, code or 1
            docs.append(doc)
            stderr_texts.append(stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return merge(docs, started_at, stderr_texts), 0
