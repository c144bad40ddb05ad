"""One grammar table: what an id, a version, a package or variable name may look like.

The config check (`spec`, with pydantic) and the render-time injection guard (`render`, as
defence in depth) both match values against these patterns with `re.fullmatch`, so the two can
never disagree about what is allowed; the JSON schema for editors carries the same patterns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Provider short names users write in matrix.yaml -> onnxruntime's provider names.
PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}

_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]{{1,5}})?"
_GPU = r"(?:[0-9]{1,4}|(?:GPU|MIG)-[A-Za-z0-9/-]{1,80})"  # an index or a UUID (nvidia-smi -L)
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

GRAMMARS: dict[str, str] = {
    # Also a docker repository component and a file name: ids name images, logs and results.
    "id": r"[a-z0-9]+(?:[._-][a-z0-9]+)*",
    "package": r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?",
    "version": (r"[0-9]+(?:\.[0-9]+)*(?:[a-z]+[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
                r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?"),
    "env_name": r"[A-Z_][A-Z0-9_]*",
    "env_value": r"[A-Za-z0-9 _.,:/=+@%-]*",
    "image": (rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
              rf"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@{_DIGEST})?"),
    "suite": r"[a-z][a-z0-9-]{1,30}",
    "mirror": r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%+/-]*)?",
    "index_url": r"(?:https?|file)://[A-Za-z0-9._~%+/:@=-]+",
    "python": r"system|3\.[0-9]{1,2}",
    "cuda": r"[0-9]{1,2}(?:\.[0-9]{1,3}){0,2}",
    "cudnn": r"[0-9]{1,2}(?:\.[0-9]{1,3}){0,3}",
    # "all", or GPU indexes / UUIDs (GPU-..., MIG-...) separated by commas: docker's --gpus.
    "gpus": rf"all|{_GPU}(?:,{_GPU})*",
    "provider": "|".join(PROVIDER_NAMES) + r"|[A-Za-z]+ExecutionProvider",
    "option_key": r"[A-Za-z_][A-Za-z0-9_]*",
    # Provider option values go to the harness as data (JSON), never through a shell or a
    # Dockerfile; brackets for the OpenVINO EP's reshape_input/layout (`x[1..8]`, `x[NCHW]`).
    "option_value": r"[A-Za-z0-9 _.,:/=+@%\[\]-]*",
    "config_key": r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+",
    "property_key": r"[A-Za-z_][A-Za-z0-9_.:-]*",
    "input_name": r"[A-Za-z0-9_.:/-]+",
    "value": r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|true|false",
    "template": r"[A-Za-z0-9][A-Za-z0-9._-]*",
    "cpuset": r"[0-9]{1,4}(?:-[0-9]{1,4})?(?:,[0-9]{1,4}(?:-[0-9]{1,4})?)*",
    "memory": r"[1-9][0-9]{0,12}[bkmg]?",
    # A Docker engine's address (DOCKER_HOST style): a socket path, tcp://host:port or
    # ssh://[user@]host[:port]; no query strings or spaces, which the SDK would pass on.
    "host_url": (r"unix:///[A-Za-z0-9._~%+/-]*"
                 r"|tcp://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?"
                 r"|ssh://(?:[A-Za-z0-9._-]+@)?(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])"
                 r"(?::[0-9]{1,5})?"),
    "context": r"[A-Za-z0-9][A-Za-z0-9_.+-]*",  # docker's own rule for context names
    "label_key": r"[a-z][a-z0-9_.-]*",
    "label_value": r"[A-Za-z0-9_.-]*",
    # Free text and paths: anything printable; no control or bidirectional-override characters.
    "text": "[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*",
}

# Longest values (ids also name docker images and files, which have limits of their own).
MAX_LENGTH = {"id": 63, "package": 100, "version": 64, "env_name": 128, "env_value": 1024,
              "image": 255, "suite": 31, "mirror": 300, "index_url": 300, "python": 6,
              "cuda": 12, "cudnn": 16, "gpus": 600, "provider": 64, "option_key": 64,
              "option_value": 256, "config_key": 128, "property_key": 128, "input_name": 128,
              "value": 64, "template": 128, "cpuset": 64, "memory": 16, "text": 300,
              "host_url": 300, "context": 100, "label_key": 64, "label_value": 64}
ID_MAX = MAX_LENGTH["id"]

# Environment variables envmatrix sets in every image itself; ENVMATRIX_* are reserved too.
RESERVED_ENV = ("PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")
RESERVED_ENV_PREFIX = "ENVMATRIX_"

_COMPILED = {name: re.compile(pattern) for name, pattern in GRAMMARS.items()}


def matches(grammar: str, value: object) -> bool:
    """Whether `value` is a str that the grammar accepts whole and within its length limit."""
    if not isinstance(value, str) or len(value) > MAX_LENGTH.get(grammar, len(value)):
        return False
    return _COMPILED[grammar].fullmatch(value) is not None


def is_reserved_env(name: str) -> bool:
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIX)


def normalize_package(name: str) -> str:
    """PEP 503 normal form, so `ONNXRuntime_GPU` and `onnxruntime-gpu` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_id(env_id: str) -> str | None:
    """Why `env_id` is not usable as an id, or None."""
    if len(env_id) > ID_MAX:
        return f"id {env_id!r} is longer than {ID_MAX} characters."
    if not _COMPILED["id"].fullmatch(env_id):
        return (f"id {env_id[:80]!r} is not a slug: lower-case letters and digits, joined by "
                "single '.', '_' or '-'.")
    return None


_RELEASE = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version: `1.8.0rc1` -> (1, 8, 0), `2.3.0+cpu` -> (2, 3, 0);
    () when it starts with no number."""
    head = _RELEASE.match(version)
    return tuple(int(p) for p in head.group().split(".")) if head else ()


def _pin_key(version: str) -> tuple[tuple[int, ...], str]:
    """What a pin must match: the release without trailing zeros (1.8 == 1.8.0) and whatever
    follows it (pre-, post-, dev-release), the local label (`+cpu`) left out."""
    public = version.strip().split("+", 1)[0]
    head = _RELEASE.match(public)
    parts = release(public)
    while len(parts) > 1 and parts[-1] == 0:
        parts = parts[:-1]
    return parts, public[head.end():] if head else public


def version_mismatches(requested: Mapping[str, object], installed: Mapping[str, object]
                       ) -> list[str]:
    """One line per requested pin that is not what the image has installed.

    `installed` may list every distribution of the image, under any spelling: names compare
    in PEP 503 form, and when several distributions share a normal form (e.g. `Foo` and
    `foo` both installed) the pin is met if any of them has the version. A distribution
    recorded without a version does not meet a pin.
    """
    have: dict[str, list[str]] = {}
    for name, version in installed.items():
        have.setdefault(normalize_package(str(name)), []).append(
            "" if version is None else str(version))
    problems = []
    for name, want in sorted((str(k), str(v)) for k, v in requested.items()):
        got = have.get(normalize_package(name))
        if got is None:
            problems.append(f"{name}=={want} requested but not installed")
        elif not any(v and _pin_key(v) == _pin_key(want) for v in got):
            shown = ", ".join(sorted(v or "no version" for v in got))
            problems.append(f"{name}=={want} requested but {shown} installed")
    return problems
