"""Command line of `python -m harness`: parse, run (parent or child), always leave a result.

Exit codes: 0 ok (also when provider.fallback is true: the host judges that), 2 bad input
(model, provider, inputs, options), 1 unexpected internal error, 3 a repeat's process died.
"""

import argparse
import collections
import json
import os
import sys
import traceback

from . import HARNESS_VERSION, inputs, result
from .errors import HarnessError, UsageError

TORCH_SUFFIXES = (".pt", ".ts", ".pth", ".torchscript")
EXIT_INTERNAL = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit(2) without a result file
        raise UsageError(f"{message} (see python -m harness --help)")


def build_parser():
    parser = _Parser(
        prog="python -m harness", allow_abbrev=False,
        description="Time one model on one runtime/provider and write an envmatrix.result/1 "
                    "JSON document. Runs with only the standard library, numpy and the runtime "
                    "under test (onnxruntime[-gpu|-openvino] or torch), on Python 3.6+.")
    model = parser.add_argument_group("model and runtime")
    model.add_argument("--model", required=True, metavar="PATH",
                       help=".onnx for onnxruntime; .pt/.ts TorchScript for --backend torch")
    model.add_argument("--backend", choices=("onnxruntime", "torch"),
                       help=f"default: torch for {'/'.join(TORCH_SUFFIXES)}, else onnxruntime")
    model.add_argument("--provider", metavar="NAME",
                       help="CPU, OpenVINO, CUDA, TensorRT (any case) or a full onnxruntime name "
                            "like DnnlExecutionProvider; torch: cpu or cuda. Default: CPU")
    model.add_argument("--provider-option", action="append", default=[], metavar="KEY=VALUE",
                       help="provider option, repeatable (translated across runtime versions, "
                            "e.g. OpenVINO device_type=CPU precision=FP32)")
    model.add_argument("--provider-options-json", metavar="JSON",
                       help="provider options as one JSON object: text, numbers, booleans, "
                            "mappings (OpenVINO load_config); merged over --provider-option")
    model.add_argument("--session-options", metavar="JSON",
                       help="onnxruntime session settings as one JSON object: "
                            "graph_optimization, intra_op_threads, inter_op_threads, "
                            "execution_mode, enable_mem_pattern, enable_cpu_mem_arena, "
                            "config (session config entries); each checked against the "
                            "installed release and read back into the result")
    model.add_argument("--threads", type=int, metavar="N", help="intra-op threads")
    model.add_argument("--graph-optimization", choices=("disable", "basic", "extended", "all"),
                       help="onnxruntime graph optimization level (default: the runtime's)")
    feed = parser.add_argument_group("inputs")
    feed.add_argument("--inputs", metavar="FILE.npz", help="fixed input tensors by input name")
    feed.add_argument("--seed", type=int, default=0,
                      help="seed of the generated inputs (identical on every numpy version)")
    feed.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2,...",
                      help="fix an input's dynamic dimensions, repeatable")
    feed.add_argument("--value", action="append", default=[], metavar="NAME=V",
                      help="fill an input with one number (scalar or whole tensor), repeatable")
    feed.add_argument("--dtype", action="append", default=[], metavar="NAME=DTYPE",
                      help="torch only: dtype of a generated input (default float32)")
    timing = parser.add_argument_group("measurement")
    timing.add_argument("--warmup", type=int, default=10, metavar="N")
    timing.add_argument("--min-iterations", type=int, default=50, metavar="N")
    timing.add_argument("--min-time", type=float, default=2.0, metavar="SECONDS")
    timing.add_argument("--repeats", type=int, default=5, metavar="N",
                        help="fresh processes, each: session, first inference, warm-up, timing")
    timing.add_argument("--batch", type=int, metavar="N",
                        help="samples in one request: the fed tensors' first dimension, "
                             "checked against the model; counts samples_per_s (default: "
                             "not given, one sample per request)")
    timing.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="requests in flight on the one session: 1 = single-stream (one "
                             "at a time), N > 1 = offline (N threads in a closed loop)")
    out = parser.add_argument_group("output and labels")
    out.add_argument("--out", metavar="RESULT.json", help="result file (default: stdout)")
    out.add_argument("--save-outputs", metavar="OUT.npz",
                     help="the first inference's outputs of the first repeat")
    out.add_argument("--cell", help="label copied into the result")
    out.add_argument("--environment", help="label (default: $ENVMATRIX_ENVIRONMENT)")
    out.add_argument("--workload", help="label copied into the result")
    out.add_argument("--version", action="version", version="harness " + HARNESS_VERSION)
    internal = parser.add_argument_group("internal (the parent process uses these)")
    internal.add_argument("--child-index", type=int, metavar="N",
                          help="run repeat N only, in this process")
    internal.add_argument("--child-out", metavar="FILE", help="where a child writes its result")
    internal.add_argument("--spawned-at", type=float, metavar="EPOCH",
                          help="the parent's time.time() just before it started this child "
                               "(the child's cold_start_s counts from it)")
    return parser


def _check_ranges(args):
    for name, low in (("warmup", 0), ("min_iterations", 1), ("repeats", 1), ("threads", 1),
                      ("min_time", 0), ("batch", 1), ("concurrency", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UsageError("--{} must be >= {} (got {})".format(
                name.replace("_", "-"), low, value))


def settings_from(args):
    """The plain dict every other module works from (also handed to the child processes)."""
    _check_ranges(args)
    _session_names(_json_object("--session-options", args.session_options))
    backend = args.backend or ("torch" if args.model.lower().endswith(TORCH_SUFFIXES)
                               else "onnxruntime")
    dtypes = inputs.parse_assignments("--dtype", args.dtype)
    for name, dtype in dtypes.items():
        inputs.normalize_dtype(name, dtype)
    return collections.OrderedDict([
        ("model", args.model), ("backend", backend), ("provider", args.provider),
        ("provider_options", _provider_options(args)),
        ("session", _json_object("--session-options", args.session_options)),
        ("threads", args.threads), ("graph_optimization", args.graph_optimization),
        ("inputs_file", args.inputs), ("seed", args.seed),
        ("shapes", inputs.parse_shapes(args.shape)),
        ("values", inputs.parse_assignments("--value", args.value)), ("dtypes", dtypes),
        ("warmup", args.warmup), ("min_iterations", args.min_iterations),
        ("min_time_s", args.min_time), ("repeats", args.repeats),
        ("batch", args.batch), ("concurrency", args.concurrency),
        ("out", args.out), ("save_outputs", args.save_outputs),
        ("cell", args.cell), ("workload", args.workload),
        ("environment", args.environment or os.environ.get("ENVMATRIX_ENVIRONMENT")),
    ])


def _json_object(flag, text):
    """A JSON object given on the command line (as data: nothing here runs a shell)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UsageError(f"{flag} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value


def _provider_options(args):
    options = inputs.parse_assignments("--provider-option", args.provider_option)
    options.update(_json_object("--provider-options-json", args.provider_options_json))
    return options


def _session_names(session):
    from . import optiontable
    unknown = sorted(set(session) - set(optiontable.SESSION_SETTINGS) - {"config"})
    if unknown:
        raise UsageError("--session-options: unknown setting(s) {}; known: {}".format(
            ", ".join(unknown), ", ".join(sorted(optiontable.SESSION_SETTINGS) + ["config"])))
    if not isinstance(session.get("config", {}), dict):
        raise UsageError("--session-options: config must be a JSON object of text values")
    return session


def _out_from_argv(argv):
    """--out, found by hand, for a result file even when argparse rejects the command line."""
    for index, item in enumerate(argv):
        if item == "--out" and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith("--out="):
            return item[len("--out="):]
    return None


def emit(doc, out_path, code):
    """Write the result (file or stdout) and say one line on stderr; returns the exit code."""
    text = json.dumps(doc, indent=1) + "\n"
    if out_path:
        result.write_atomic(out_path, text)
    else:
        sys.stdout.write(text)
    if doc["status"] == "ok":
        sys.stderr.write(f"harness: {_ok_line(doc)}\n")
    else:
        sys.stderr.write("harness: {}: {}\n".format(doc["status"], doc["reason"]))
    return code


def _ok_line(doc):
    summary = doc["summary"]
    line = "ok: p50 {:.3f} ms over {} iterations in {} repeat(s) on {}".format(
        summary["latency_s"]["p50"] * 1e3, summary["iterations"], len(doc["repeats"]),
        ", ".join(doc["provider"]["active"] or []))
    if summary.get("concurrency", 1) > 1 or summary.get("batch") is not None:
        line += "; {} in flight, {:.1f} samples/s".format(summary["concurrency"],
                                                         summary["samples_per_s"])
    if doc["provider"]["fallback"]:
        line += "; FALLBACK: " + doc["provider"].get("reason", "")
    share = doc["provider"].get("node_share")
    if share is not None and share < 1:
        line += "; {} ran {:.0%} of the nodes ({} elsewhere)".format(
            doc["provider"]["requested"], share, doc["provider"].get("fallback_node_count"))
    return line


def _failure(settings, err):
    """A status-error document for any exception (HarnessError or unexpected)."""
    doc = result.new_result(settings)
    if isinstance(err, HarnessError):
        return result.set_error(doc, str(err)), err.exit_code
    reason = "{}: {}".format(type(err).__name__, " ".join(str(err).split()))
    return result.set_error(doc, reason, traceback_text=traceback.format_exc()), EXIT_INTERNAL


def main(argv=None, started_at=None):
    """started_at: time.time() when the interpreter reached the harness (__main__ sets it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = {"out": _out_from_argv(argv)}
    try:
        args = build_parser().parse_args(argv)
        settings = settings_from(args)
        if args.child_index is not None:
            return _child_main(settings, args, started_at)
        from . import parent
        doc, code = parent.run_parent(settings)
    except Exception as err:  # noqa: BLE001 - every failure must still leave a result
        doc, code = _failure(settings, err)
    try:
        return emit(doc, settings.get("out"), code)
    except OSError as err:
        sys.stderr.write("harness: error: cannot write the result to {}: {}\n".format(
            settings.get("out"), err))
        return EXIT_INTERNAL


def _child_main(settings, args, started_at):
    from . import child
    try:
        doc, code = child.run_child(settings, args.child_index, spawned_at=args.spawned_at,
                                    started_at=started_at), 0
    except Exception as err:  # noqa: BLE001 - reported to the parent through the file
        doc, code = _failure(settings, err)
    result.write_result(args.child_out, doc)
    return code
