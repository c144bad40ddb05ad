"""Which session and provider options each runtime release knows: one table, two readers.

The host (`envmatrix.config.knobs`) checks a matrix against it before anything is built; the harness
(`harness.compat`) checks again inside the image, where the installed release is known for
sure, and maps each value onto that release's API. Standard library only, Python 3.6+.

Sources, per table:
- SESSION_SETTINGS: `onnxruntime.SessionOptions` attributes, present in every release from
  1.5.1 to 1.32.0 (checked with hasattr in the host venvs of tests/harness).
- SESSION_CONFIG_KEYS: keys of `onnxruntime_session_options_config_keys.h`. A (low, high) pair
  brackets the release that introduced the key: absent from the shared library of release
  `low`'s predecessor among the host venvs (1.5.1, 1.6.0, 1.7.0, 1.8.0, 1.16.3, 1.24.1 of
  onnxruntime-openvino, 1.32.0), present in release `high` (`strings` of the library). low ==
  high: the release is exact. onnxruntime accepts any key and ignores those it does not know,
  so this table is what turns a typo or a too-old release into an error.
- OPENVINO_OPTIONS: the OpenVINO EP's provider options, by onnxruntime-openvino release, from
  the "Configuration Options" table of onnxruntime's docs/execution-providers/
  OpenVINO-ExecutionProvider.md and its history (release notes of intel/onnxruntime); every
  name for 1.24.1 checked against the strings of libonnxruntime_providers_openvino.so 1.24.1.
  Releases before 1.24.1 are taken from the docs and are not checked against binaries.
"""

import difflib

# name -> (SessionOptions attribute, value kind, first release). Values of kind "enum" map a
# matrix word to the attribute's enum member (looked up by name on the onnxruntime module).
SESSION_SETTINGS = {
    "graph_optimization": ("graph_optimization_level", "enum", "1.5"),
    "intra_op_threads": ("intra_op_num_threads", "int", "1.5"),
    "inter_op_threads": ("inter_op_num_threads", "int", "1.5"),
    "execution_mode": ("execution_mode", "enum", "1.5"),
    "enable_mem_pattern": ("enable_mem_pattern", "bool", "1.5"),
    "enable_cpu_mem_arena": ("enable_cpu_mem_arena", "bool", "1.5"),
}
SESSION_ENUMS = {
    "graph_optimization": ("GraphOptimizationLevel", {
        "disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
        "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}),
    "execution_mode": ("ExecutionMode", {
        "sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}),
}
CONFIG_ENTRY_API = "1.5"  # SessionOptions.add_session_config_entry / get_session_config_entry

# key -> (low, high): see the module docstring.
SESSION_CONFIG_KEYS = {
    "session.use_env_allocators": ("1.5", "1.5"),
    "session.disable_prepacking": ("1.5", "1.5"),
    "session.load_model_format": ("1.5", "1.5"),
    "session.save_model_format": ("1.5", "1.5"),
    "session.set_denormal_as_zero": ("1.6", "1.6"),
    "session.disable_quant_qdq": ("1.8", "1.8"),
    "session.intra_op.allow_spinning": ("1.8", "1.8"),
    "session.inter_op.allow_spinning": ("1.8", "1.8"),
    "session.use_device_allocator_for_initializers": ("1.8", "1.8"),
    "optimization.enable_gelu_approximation": ("1.8", "1.8"),
    "optimization.minimal_build_optimizations": ("1.9", "1.16"),
    "session.force_spinning_stop": ("1.9", "1.16"),
    "session.disable_cpu_ep_fallback": ("1.9", "1.16"),
    "session.intra_op_thread_affinities": ("1.9", "1.16"),
    "session.dynamic_block_base": ("1.9", "1.16"),
    "session.x64quantprecision": ("1.9", "1.16"),
    "session.strict_shape_type_inference": ("1.9", "1.16"),
    "session.enable_quant_qdq_cleanup": ("1.9", "1.16"),
    "session.disable_double_qdq_remover": ("1.9", "1.16"),
    "session.disable_aot_function_inlining": ("1.17", "1.24"),
    "ep.context_enable": ("1.17", "1.24"),
    "session.intra_op.spin_duration_us": ("1.25", "1.32"),
    "session.inter_op.spin_duration_us": ("1.25", "1.32"),
}

# OpenVINO EP option -> (value kind, first onnxruntime-openvino release, release without it
# or None). Kinds: str, int (>= 1), bool, mapping (load_config: OpenVINO properties by device).
OPENVINO_OPTIONS = {
    "device_type": ("str", "1.0", None),
    "device_id": ("str", "1.4", None),
    "enable_vpu_fast_compile": ("bool", "1.4", "1.17"),
    "num_of_threads": ("int", "1.8", None),
    "enable_opencl_throttling": ("bool", "1.12", None),
    "enable_dynamic_shapes": ("bool", "1.12", "1.18"),
    "cache_dir": ("str", "1.13", None),
    "num_streams": ("int", "1.16", None),
    "precision": ("str", "1.17", None),
    "enable_npu_fast_compile": ("bool", "1.17", "1.24"),
    "model_priority": ("str", "1.18", None),
    "enable_qdq_optimizer": ("bool", "1.18", None),
    "disable_dynamic_shapes": ("bool", "1.18", None),
    "load_config": ("mapping", "1.20", None),
    "reshape_input": ("str", "1.22", None),
    "device_luid": ("str", "1.22", None),
    "enable_causallm": ("bool", "1.22", None),
    "layout": ("str", "1.23", None),
}
# Before this release the OpenVINO EP read load_config from a JSON file path; from it on, the
# value is the JSON text itself (docs/execution-providers/OpenVINO-ExecutionProvider.md).
LOAD_CONFIG_AS_TEXT = "1.24"
OPENVINO_THREADS_OPTION = "num_of_threads"  # where `threads` lands for OpenVINO cells
OPENVINO_PACKAGE = "onnxruntime-openvino"


def release(text):
    """'1.16.3' -> (1, 16, 3); unknown trailing parts are dropped."""
    parts = []
    for piece in str(text).split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _known_since(version, since):
    return release(version)[:len(release(since))] >= release(since)


def session_problems(session, package, version):
    """Why each requested session setting cannot run on `package` `version`: [(key, why)].

    Config keys whose release is only bracketed (low < high) and releases inside the bracket
    pass: the runtime may know them (the harness reads each one back).
    """
    found = []
    for name in session:
        if name == "config":
            continue
        entry = SESSION_SETTINGS.get(name)
        if entry is None:
            found.append((name, "is not a session setting (known: {})".format(
                ", ".join(sorted(SESSION_SETTINGS) + ["config"]))))
        elif not _known_since(version, entry[2]):
            found.append((name, f"needs {package} >= {entry[2]} (pinned: {version})"))
    for key in sorted(session.get("config") or {}):
        span = SESSION_CONFIG_KEYS.get(key)
        if span is not None and not _known_since(version, span[0]):
            when = "in onnxruntime " + span[0] if span[0] == span[1] else \
                f"between onnxruntime {span[0]} and {span[1]}"
            found.append(("config." + key,
                          f"was introduced {when}, and {package} {version} does not know it"))
    return found


def unknown_config_keys(session):
    """Config keys this table does not list (onnxruntime would ignore a misspelt one)."""
    return sorted(k for k in (session.get("config") or {}) if k not in SESSION_CONFIG_KEYS)


def openvino_names(version):
    """The OpenVINO EP options onnxruntime-openvino `version` knows, by the table."""
    return sorted(name for name, (_, since, gone) in OPENVINO_OPTIONS.items()
                  if _known_since(version, since) and not (gone and _known_since(version, gone)))


def openvino_problems(options, version, package=OPENVINO_PACKAGE):
    """Why each OpenVINO EP option cannot run on onnxruntime-openvino `version`:
    [(key, why, what)], `what` one of "unknown", "release" (a release without it), "value"."""
    found = []
    for name in sorted(options):
        entry = OPENVINO_OPTIONS.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(OPENVINO_OPTIONS), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            found.append((name, "is not an OpenVINO EP option{}; {} {} has: {}".format(
                hint, package, version, ", ".join(openvino_names(version))), "unknown"))
            continue
        kind, since, gone = entry
        if not _known_since(version, since):
            found.append((name, f"was introduced in {package} {since} (pinned: {version})",
                          "release"))
        elif gone is not None and _known_since(version, gone):
            found.append((name, f"was removed in {package} {gone} (pinned: {version})", "release"))
        else:
            why = kind_problem(kind, options[name])
            if why:
                found.append((name, why, "value"))
    return found


def kind_problem(kind, value):
    """Why `value` does not fit an option of `kind`, or None."""
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        return f"must be a whole number >= 1, got {value!r}"
    if kind == "bool" and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if kind == "mapping" and not isinstance(value, dict):
        return f"must be a mapping (OpenVINO properties by device), got {value!r}"
    if kind == "str" and not isinstance(value, str):
        return f"must be text, got {value!r}"
    return None
