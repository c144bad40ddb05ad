"""The result document (schema envmatrix.result/1, docs/result-schema.md) and its atomic write."""

import contextlib
import datetime
import json
import os
import tempfile

from . import HARNESS_VERSION, RESULT_SCHEMA


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_result(settings):
    """Every key of the schema, with null where nothing was measured yet."""
    return {
        "schema": RESULT_SCHEMA,
        "status": "error",
        "reason": "the harness stopped before measuring",
        "log_tail": None,
        "cell": settings.get("cell"),
        "environment": settings.get("environment"),
        "workload": settings.get("workload"),
        "backend": settings.get("backend"),
        "harness_version": HARNESS_VERSION,
        "started_at": utc_now(),
        "finished_at": None,
        "provider": {"requested": settings.get("provider"),
                     "options": dict(settings.get("provider_options") or {}),
                     "available": None, "active": None, "fallback": None, "notes": [],
                     "engine_cache": None, "node_placement": None, "nodes": None,
                     "copy_nodes": None, "node_share": None, "fallback_nodes": None,
                     "fallback_node_count": None, "options_passed": None,
                     "options_in_force": None},
        # onnxruntime's SessionOptions of the created session, read back (null: torch, or
        # the harness stopped before a session existed)
        "session": None,
        "model": {"path": settings.get("model"), "sha256": None, "ir_version": None,
                  "opsets": {}, "inputs": None, "outputs": None},
        "settings": public_settings(settings),
        "inputs": None,
        "repeats": [],
        "summary": None,
        "outputs": None,
        "fingerprint": None,
    }


def public_settings(settings):
    keys = ("warmup", "min_iterations", "min_time_s", "repeats", "threads", "seed", "shapes",
            "values", "inputs_file", "provider_options", "graph_optimization", "dtypes",
            "session", "batch", "concurrency")
    public = dict((key, settings.get(key)) for key in keys)
    public["shapes"] = dict((k, list(v)) for k, v in (settings.get("shapes") or {}).items())
    return public


def set_error(result, reason, status="error", traceback_text=None):
    result["status"] = status
    result["reason"] = reason
    result["summary"] = None
    if traceback_text:
        result["traceback"] = traceback_text
    result["finished_at"] = utc_now()
    return result


@contextlib.contextmanager
def _atomic_stream(path, mode, suffix):
    """A stream to a temporary file beside `path`, renamed over it once complete.

    Same folder, so os.replace is atomic: readers see the old file or the whole new one.
    The data is flushed and fsynced before the rename; on any failure the temporary goes.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def write_atomic(path, text):
    with _atomic_stream(path, "w", ".part") as stream:
        stream.write(text)


def write_result(path, result):
    write_atomic(path, json.dumps(result, indent=1, sort_keys=False, allow_nan=False) + "\n")


def save_npz_atomic(path, arrays):
    """np.savez to a temporary file beside `path`, then rename (parity outputs)."""
    import numpy as np
    with _atomic_stream(path, "wb", ".npz") as stream:
        np.savez(stream, **arrays)
