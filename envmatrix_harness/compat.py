"""The differences between onnxruntime releases (1.5 .. 1.32) that the harness papers over.

Checked by running the harness's tests against real releases (see tests/harness/). Each row:
(first release it applies to, what differs, what the harness does).
"""

import json
import os
import re
import tempfile

from . import optiontable

ORT_DIFFERENCES = (
    ("1.5", "InferenceSession(path, sess_options, providers=[names], provider_options=[dicts]) "
            "works from 1.5 on (checked on 1.5.1 and 1.6.0; providers=[(name, dict)] only from "
            "1.7); set_providers(names, options) exists in 1.5 too",
     "pass providers= and provider_options=; on TypeError (builds older than 1.5, unproven) "
     "create the session without them and call session.set_providers(names, options)"),
    ("1.5", "1.5 has no Python-side fallback: a provider that fails to initialise raises "
            "RuntimeError from InferenceSession; 1.6 added the retry on CPU with 'EP Error ... "
            "Falling back to' on stdout",
     "1.5: the session error is the cell's error; 1.6+: see the silent fallback row"),
    ("1.5", "SessionOptions.profile_file_prefix is missing in 1.5 (the profiling trace goes to "
            "the working directory); trace events: '<node>_kernel_time' with args.provider and "
            "op_name in every release, graph_index (1.5) or node_index (later), fence events "
            "up to 1.16",
     "harness.placement runs the profiled session in a temporary working directory and reads "
     "only the kernel events"),
    ("1.9", "with a GPU/OpenVINO build, providers= must be given explicitly (ValueError "
            "otherwise); before 1.9 every built-in provider was registered by default",
     "always pass the requested provider explicitly"),
    ("1.7", "a provider that fails to initialise (bad option, missing device or library) is "
            "dropped with a log line and the session silently runs on CPU",
     "compare session.get_providers() with the request: provider.fallback = true"),
    ("1.7", "get_available_providers(), session.get_providers(), SessionOptions."
            "intra_op_num_threads and graph_optimization_level exist in every release",
     "used as they are"),
    ("1.7", "a model newer than the runtime fails to load: 'Unknown model file format version' "
            "(<= 1.15) or 'Unsupported model IR version: N, max supported IR version: M', and "
            "'... support for domain ai.onnx is till opset M' for a too-new opset",
     "recognised and rewritten into one line saying what to re-export"),
    ("ov<1.17", "onnxruntime-openvino before 1.17 (OVEP < 5.2): device_type carries the "
                "precision ('CPU_FP32', 'GPU_FP16'); there is no 'precision' option",
     "device_type=CPU + precision=FP32 is merged into device_type=CPU_FP32"),
    ("1.5", "SessionOptions graph_optimization_level, intra/inter_op_num_threads, "
            "execution_mode, enable_mem_pattern, enable_cpu_mem_arena, "
            "add_session_config_entry/get_session_config_entry and session.get_provider_options"
            "() exist from 1.5.1 on; config keys arrive release by release, and onnxruntime "
            "accepts unknown keys silently",
     "harness.optiontable lists the keys with their release; a key newer than the installed "
     "release is an error; every setting is read back into the result"),
    ("ov>=1.24", "onnxruntime-openvino 1.24: load_config takes the JSON text; the docs of "
                 "earlier releases (1.20-1.23) say a JSON file path",
     "a mapping is handed as JSON text from 1.24, as a file in the temp folder before"),
    ("ov>=1.17", "onnxruntime-openvino 1.17+: device_type 'CPU'/'GPU'/'NPU' plus a separate "
                 "'precision' option; 'CPU_FP32' is deprecated (warning) and later removed",
     "device_type=CPU_FP32 is split into device_type=CPU + precision=FP32"),
)

# Short names accepted by --provider (case-insensitive) -> onnxruntime's provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "acl": "ACLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}

OPENVINO = "OpenVINOExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
NVIDIA_PROVIDERS = ("CUDAExecutionProvider", TENSORRT)
OPENVINO_SPLIT_PRECISION = (1, 17)  # first onnxruntime-openvino with a 'precision' option
_OV_COMBINED = re.compile(r"^(CPU|GPU(?:\.\d+)?|NPU|MYRIAD|VAD-M|VAD-F|HDDL)_(FP32|FP16)$")


def parse_version(text):
    """'1.16.3' -> (1, 16, 3); '1.8.0.dev2021' -> (1, 8, 0); unknown parts are dropped."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group(0)))
    return tuple(parts)


def provider_full_name(name, available=()):
    """'openvino' / 'OpenVINO' / 'OpenVINOExecutionProvider' -> 'OpenVINOExecutionProvider'.

    Any other full name is matched case-insensitively against the available list, so
    'dnnlexecutionprovider' works too; unknown names are returned unchanged for the caller to
    report against the available list.
    """
    text = str(name).strip()
    lowered = text.lower()
    if lowered in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[lowered]
    if not lowered.endswith("executionprovider"):
        candidate = lowered + "executionprovider"
    else:
        candidate = lowered
    for known in tuple(available) + tuple(PROVIDER_ALIASES.values()):
        if known.lower() == candidate:
            return known
    return text


def translate_options(provider, options, runtime_version, package):
    """Provider options as this runtime spells them; returns (options, notes).

    Only the OpenVINO EP needs translating: its device_type/precision split changed in 1.17.
    `package` is the distribution under test (e.g. 'onnxruntime-openvino'), `runtime_version`
    its version tuple.
    """
    options = dict(options)
    notes = []
    if provider != OPENVINO or "openvino" not in str(package):
        return options, notes
    device = options.get("device_type")
    if runtime_version >= OPENVINO_SPLIT_PRECISION:
        match = _OV_COMBINED.match(str(device or ""))
        if match and "precision" not in options:
            options["device_type"], options["precision"] = match.group(1), match.group(2)
            notes.append(f"device_type={device} split into device_type={match.group(1)} "
                         f"precision={match.group(2)} (onnxruntime-openvino >= 1.17)")
    elif device and "precision" in options and not _OV_COMBINED.match(str(device)):
        precision = options.pop("precision")
        options["device_type"] = f"{device}_{precision}"
        notes.append("device_type={} precision={} merged into device_type={} (onnxruntime-"
                     "openvino < 1.17)".format(device, precision, options["device_type"]))
    elif device and not _OV_COMBINED.match(str(device)) and "_" not in str(device) \
            and ":" not in str(device):
        options["device_type"] = f"{device}_FP32"
        notes.append(f"device_type={device} became {device}_FP32 (onnxruntime-openvino < 1.17 "
                     "wants the precision in device_type)")
    return options, notes


def tensorrt_cache(provider, options):
    """{"enabled", "path"} of the TensorRT engine cache from the provider options (passed to
    the runtime as they are: trt_engine_cache_enable, trt_engine_cache_path); None for every
    other provider."""
    if provider != TENSORRT:
        return None
    enabled = str(options.get("trt_engine_cache_enable", "")).strip().lower()
    return {"enabled": enabled in ("1", "true", "yes", "on"),
            "path": options.get("trt_engine_cache_path")}


def create_session(ort, path, sess_options, provider, options):
    """An InferenceSession on `provider` (plus the CPU fallback that onnxruntime always adds)."""
    try:
        return ort.InferenceSession(path, sess_options, providers=[provider],
                                    provider_options=[options])
    except TypeError:
        # Builds older than 1.7 lack the keywords: create, then pick the providers afterwards.
        session = ort.InferenceSession(path, sess_options)
        session.set_providers([provider], [options])
        return session


_IR_MAX = re.compile(r"max supported IR version: (\d+)")
_OPSET_MAX = re.compile(r"domain ([\w.]*) is till opset (\d+)")


# onnxruntime < 1.9 says only "Unknown model file format version"; 1.5 to 1.8 read IR 7 at
# most (checked), later releases name their limit in the message.
OLD_IR_LIMIT = ((1, 9), 7)


def explain_load_error(message, model, runtime, runtime_version=()):
    """A one-line reason for a model the runtime refused, or None when it is another error."""
    text = str(message)
    ir_version = model.get("ir_version")
    opset = model.get("opsets", {}).get("", model.get("opsets", {}).get("ai.onnx"))
    too_new_ir = "Unknown model file format version" in text or _IR_MAX.search(text)
    too_new_opset = _OPSET_MAX.search(text)
    if not (too_new_ir or too_new_opset):
        return None
    limits = []
    if _IR_MAX.search(text):
        limits.append(f"IR version <= {_IR_MAX.search(text).group(1)}")
    elif too_new_ir and runtime_version and runtime_version < OLD_IR_LIMIT[0]:
        limits.append(f"IR version <= {OLD_IR_LIMIT[1]}")
    if too_new_opset:
        limits.append(f"opset <= {too_new_opset.group(2)}")
    advice = " and ".join(limits) if limits else "a lower IR version and opset"
    return (f"model IR version {ir_version} / opset {opset} is newer than {runtime} accepts; "
            f"re-export it with {advice} (e.g. the exporter's opset_version, "
            "onnx.version_converter, and model.ir_version)")


# -- session settings and typed provider options (tables: harness.optiontable) ---------------


def apply_session(ort, options, session):
    """Set each requested session setting on a SessionOptions; a setting the installed
    release lacks raises AttributeError naming it (never silently skipped)."""
    for name, value in sorted(session.items()):
        if name == "config":
            for key, text in sorted(value.items()):
                options.add_session_config_entry(str(key), str(text))
            continue
        attribute, kind, _ = optiontable.SESSION_SETTINGS[name]
        if not hasattr(options, attribute):
            raise AttributeError(f"SessionOptions has no {attribute} here")
        if kind == "enum":
            enum_name, words = optiontable.SESSION_ENUMS[name]
            value = getattr(getattr(ort, enum_name), words[value])
        setattr(options, attribute, value)


def session_in_force(options, session):
    """What a session's SessionOptions say after creation: every setting of the table, and
    each requested config entry as the session reads it back (None where it cannot)."""
    found = {}
    for name, (attribute, kind, _) in sorted(optiontable.SESSION_SETTINGS.items()):
        value = getattr(options, attribute, None)
        if kind == "enum" and value is not None:
            words = dict((member, word) for word, member in
                         optiontable.SESSION_ENUMS[name][1].items())
            value = words.get(str(value).split(".")[-1], str(value))
        found[name] = value
    config = {}
    for key in sorted(session.get("config") or {}):
        try:
            config[key] = options.get_session_config_entry(key)
        except Exception:  # noqa: BLE001 - an unset key raises in some releases
            config[key] = None
    found["config"] = config
    return found


def runtime_option_values(provider, options, package_version, scratch=None):
    """Typed provider options as the text onnxruntime's API takes (it wants str -> str):
    booleans true/false, numbers as digits, OpenVINO's load_config as JSON text (from
    onnxruntime-openvino 1.24) or a JSON file beside `scratch` (before it)."""
    out = {}
    for key, value in options.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, dict):
            text = json.dumps(value, sort_keys=True)
            if provider == OPENVINO and package_version < parse_version(
                    optiontable.LOAD_CONFIG_AS_TEXT):
                text = _json_file(text, scratch)
            out[key] = text
        else:
            out[key] = str(value)
    return out


def _json_file(text, folder):
    handle, path = tempfile.mkstemp(prefix="load_config-", suffix=".json", dir=folder)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    return path


def provider_options_in_force(session, provider):
    """The provider's options as the session holds them (get_provider_options), or None."""
    try:
        found = session.get_provider_options()
    except Exception:  # noqa: BLE001 - a release or provider without it
        return None
    options = (found or {}).get(provider)
    return dict(options) if options is not None else None
