"""matrix.yaml (schema version 1): read, validate, expand into a `Plan`; the only YAML module.

Reading keeps every value's line: the YAML is composed into nodes (nothing is constructed from
tags), walked into plain data, and each key path is mapped to its line; duplicate keys are
errors. Plain scalars stay the text the user wrote (`1.20` stays "1.20", not the float 1.2);
pydantic turns text into numbers where a field is numeric. Validation is two passes: pydantic
models for shape and grammar (strict allow-lists, `re.fullmatch`), then cross-checks (bases,
python sources, ids, runtimes, files). Every problem names the file, the line, the key path and
the fix; raw pydantic text never reaches users. docs/matrix-reference.md documents the schema.
"""

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from envmatrix import plan as planlib
from envmatrix.errors import ConfigError, RunDirError
from envmatrix.model import (
    PROVIDER_NAMES,
    Base,
    Bootstrap,
    Environment,
    Measure,
    Plan,
    Workload,
)
from envmatrix.plan import KeyPath, Problem, kind_of, show

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "matrix.schema.json"
REFERENCE = "docs/matrix-reference.md"
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # alias expansion ("billion laughs") stops here
DEFAULT_TEMPLATE = "default.Dockerfile.j2"
RESERVED_ENV = ("PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")
CA_BUNDLE_VARIABLES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class ConfigWarning(UserWarning):
    """Something in the matrix is allowed but probably not what the user meant."""


# -- grammars (checked with re.fullmatch, so a trailing newline never slips through) ----------

_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]{{1,5}})?"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

GRAMMARS: dict[str, str] = {
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
    "provider": "|".join(PROVIDER_NAMES) + r"|[A-Za-z]+ExecutionProvider",
    "option_key": r"[A-Za-z_][A-Za-z0-9_]*",
    "option_value": r"[A-Za-z0-9 _.,:/=+@%-]*",
    "input_name": r"[A-Za-z0-9_.:/-]+",
    "value": r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|true|false",
    "template": r"[A-Za-z0-9][A-Za-z0-9._-]*",
    "cpuset": r"[0-9]{1,4}(?:-[0-9]{1,4})?(?:,[0-9]{1,4}(?:-[0-9]{1,4})?)*",
    "memory": r"[1-9][0-9]{0,12}[bkmg]?",
    # Free text and paths: anything printable; no control or bidirectional-override characters.
    "text": "[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]*",
}


def _custom(message: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError("envmatrix", "{message}", {"message": message, "fix": fix})


@dataclass(frozen=True)
class _Grammar:
    """Annotation for str fields: checked against GRAMMARS[name]; the JSON schema says the same."""

    name: str
    what: str
    example: str
    max_len: int = 200

    def check(self, value: str) -> str:
        if len(value) > self.max_len:
            raise _custom(f"{show(value)} is longer than {self.max_len} characters.",
                          f"write {self.what} like {self.example}.")
        if not re.fullmatch(GRAMMARS[self.name], value):
            raise _custom(f"{show(value)} is not {self.what}.",
                          f"write {self.what} like {self.example}.")
        return value

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^(?:{GRAMMARS[self.name]})$",
                "maxLength": self.max_len, "description": self.what}


def _no_dashes(value: str) -> str:
    if "--" in value:
        raise _custom(f"{show(value)} contains '--', which separates the parts of cell ids.",
                      "use single separators, e.g. my-name.")
    return value


def _reserved_env(value: str) -> str:
    if value in RESERVED_ENV or value.startswith("ENVMATRIX_"):
        raise _custom(f"{value} is set by envmatrix itself.",
                      f"choose another name (reserved: {', '.join(RESERVED_ENV)}, ENVMATRIX_*).")
    return value


def _short_provider(value: str) -> str:
    """Full names of known providers become their short names: one spelling per provider."""
    short = {full: short for short, full in PROVIDER_NAMES.items()}
    return short.get(value, value)


G = _Grammar  # short alias: the type aliases below read as one line each
Slug = Annotated[str, G("id", "a slug (lower-case letters and digits joined by single . _ -)",
                        "bookworm-ort1.20.1", 63), AfterValidator(_no_dashes)]
PackageName = Annotated[str, G("package", "a PyPI project name", "onnxruntime", 100)]
Version = Annotated[str, G("version", "an exact version (no ranges, URLs, spaces or operators)",
                           '"1.20.1"', 64)]
EnvName = Annotated[str, G("env_name", "an environment variable name", "OMP_NUM_THREADS", 128),
                    AfterValidator(_reserved_env)]
EnvValue = Annotated[str, G("env_value", "a value of letters, digits, spaces and _ . , : / = + @ "
                            "% -", '"2"', 1024)]
ImageRef = Annotated[str, G("image", "a docker image reference", "debian:bookworm", 255)]
Suite = Annotated[str, G("suite", "a debootstrap suite name", "bookworm", 31)]
Mirror = Annotated[str, G("mirror", "an http(s) mirror URL without spaces or quotes",
                          "http://deb.example.org/debian", 300)]
IndexUrl = Annotated[str, G("index_url", "an http(s) or file URL without spaces or quotes",
                            "https://pypi.example.org/simple", 300)]
PythonVersion = Annotated[str, G("python", '"system" or a version X.Y', '"3.10"', 6)]
CudaVersion = Annotated[str, G("cuda", "a CUDA version", '"12.4"', 12)]
Provider = Annotated[str, G("provider", "an execution provider (cpu, openvino, cuda, tensorrt, "
                            "dnnl, rocm, coreml or a full XxxExecutionProvider name)",
                            "openvino", 64), AfterValidator(_short_provider)]
OptionKey = Annotated[str, G("option_key", "an option name", "device_type", 64)]
OptionValue = Annotated[str, G("option_value", "an option value", "CPU", 256)]
InputName = Annotated[str, G("input_name", "a model input name", "input_ids", 128)]
ValueText = Annotated[str, G("value", "a number or true/false", "16000", 64)]
TemplateName = Annotated[str, G("template", "a template file name", DEFAULT_TEMPLATE, 128)]
Cpuset = Annotated[str, G("cpuset", "a CPU list", '"0-1"', 64)]
MemoryText = Annotated[str, G("memory", "a memory size with an optional unit b, k, m or g",
                              '"4g"', 16)]
Text = Annotated[str, G("text", "one line of printable text", '"2021 stack"', 300)]
PathText = Annotated[str, G("text", "a file path", "models/net.onnx", 4096), Field(min_length=1)]


# -- models of matrix.yaml ------------------------------------------------------------------


class _Strict(BaseModel):
    """Unknown keys are errors with a "did you mean" hint, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError("envmatrix_key", "unknown key", {
                        "key": str(key), "known": sorted(cls.model_fields)})
        return data


class BootstrapSpec(_Strict):
    suite: Suite
    mirror: Optional[Mirror] = None
    variant: Literal["minbase", "buildd"] = "minbase"


class BaseSpec(_Strict):
    image: ImageRef
    family: Optional[Literal["debian", "ubuntu"]] = Field(
        default=None, description="default: ubuntu when the image reference contains 'ubuntu'")
    bootstrap: Optional[BootstrapSpec] = None
    python_source: Literal["system", "image", "deadsnakes"] = "system"
    cuda: Optional[CudaVersion] = None

    @property
    def resolved_family(self) -> str:
        return self.family or ("ubuntu" if "ubuntu" in self.image.lower() else "debian")


def _normalized_packages(value: dict[str, str]) -> dict[str, str]:
    """PEP 503 names; two spellings of one package would otherwise silently collapse."""
    out: dict[str, str] = {}
    for name, version in value.items():
        norm = planlib.normalize_package(name)
        if norm in out:
            raise _custom(f"package {norm!r} is pinned twice (spelled differently).",
                          "keep one pin per package.")
        out[norm] = version
    return out


Packages = Annotated[dict[PackageName, Version], AfterValidator(_normalized_packages)]
ProviderOptions = dict[Provider, dict[OptionKey, OptionValue]]


class _EnvironmentFields(_Strict):
    python: PythonVersion = "system"
    packages: Packages = {}
    providers: Annotated[list[Provider], Field(min_length=1)] = ["cpu"]
    env: dict[EnvName, EnvValue] = {}
    provider_options: ProviderOptions = {}
    description: Text = ""
    template: TemplateName = DEFAULT_TEMPLATE

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, value: list[str]) -> list[str]:
        repeated = sorted({p for p in value if value.count(p) > 1})
        if repeated:
            raise _custom(f"provider {repeated[0]!r} is listed twice.", "list it once.")
        return value

    @model_validator(mode="after")
    def _options_for_listed_providers(self) -> "_EnvironmentFields":
        for provider in self.provider_options:
            if provider not in self.providers:
                raise _custom(f"provider_options names {provider!r}, which is not in providers "
                              f"{self.providers}.", f"add {provider!r} to providers, or remove "
                              "its options.")
        return self


class EnvironmentSpec(_EnvironmentFields):
    """One environment, as written or as one matrix combination."""

    id: Optional[Slug] = None
    base: Slug


class MatrixEntrySpec(_Strict):
    """An entry with `matrix:`; the other keys are shared by every combination."""

    matrix: dict[str, Any] = Field(json_schema_extra={
        "description": "axes (base, python, providers, a runtime package name or "
                       "packages.<name>) mapping to lists, plus optional include and exclude",
        "properties": {"include": {"type": "array", "items": {"type": "object"}},
                       "exclude": {"type": "array", "items": {"type": "object"}}},
        "additionalProperties": {"type": "array"}})
    base: Optional[Slug] = None
    python: Optional[PythonVersion] = None
    packages: Packages = {}
    providers: Optional[Annotated[list[Provider], Field(min_length=1)]] = None
    env: dict[EnvName, EnvValue] = {}
    provider_options: ProviderOptions = {}
    description: Optional[Text] = None
    template: Optional[TemplateName] = None

    @model_validator(mode="before")
    @classmethod
    def _no_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "id" in data:
            raise PydanticCustomError("envmatrix_key", "unknown key", {
                "key": "id", "known": sorted(cls.model_fields),
                "why": "a matrix entry makes several environments, so it cannot carry one id",
                "fix": "name one combination with an include entry that sets id:"})
        return data


def _entry_kind(value: Any) -> str:
    return "matrix" if isinstance(value, dict) and "matrix" in value else "single"


EnvironmentEntry = Annotated[
    Union[Annotated[EnvironmentSpec, Tag("single")], Annotated[MatrixEntrySpec, Tag("matrix")]],
    Discriminator(_entry_kind),
]


class WorkloadSpec(_Strict):
    model: Annotated[PathText, Field(description="zoo:<name> or a path to an .onnx/.pt file")]
    backend: Literal["onnxruntime", "torch"] = "onnxruntime"
    shapes: dict[InputName, list[Annotated[int, Field(ge=1, le=1_000_000)]]] = {}
    values: dict[InputName, ValueText] = {}
    inputs: Optional[PathText] = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    description: Text = ""


_MEASURE = Measure()


class MeasureSpec(_Strict):
    warmup: Annotated[int, Field(ge=0, le=100_000)] = _MEASURE.warmup
    min_iterations: Annotated[int, Field(ge=1, le=10_000_000)] = _MEASURE.min_iterations
    min_time_s: Annotated[float, Field(gt=0, le=3600)] = _MEASURE.min_time_s
    repeats: Annotated[int, Field(ge=1, le=100)] = _MEASURE.repeats
    threads: Optional[Annotated[int, Field(ge=1, le=1024)]] = _MEASURE.threads
    cpuset: Optional[Cpuset] = _MEASURE.cpuset
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] = _MEASURE.timeout_s
    build_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = _MEASURE.build_timeout_s
    memory_limit: MemoryText = _MEASURE.memory_limit
    pids_limit: Annotated[int, Field(ge=16, le=1_000_000)] = _MEASURE.pids_limit


class BuildSpec(_Strict):
    ca_bundle: Optional[PathText] = Field(
        default="auto", description="auto: the host's PIP_CERT, SSL_CERT_FILE, "
        "REQUESTS_CA_BUNDLE or pip's cert setting; null: none; else a PEM file")
    wheelhouse: Optional[PathText] = None
    pip_index_url: Optional[IndexUrl] = None
    template_dir: Optional[PathText] = None
    offline: bool = False


class ModelExportSpec(_Strict):
    ir_version: Annotated[int, Field(ge=3, le=11)] = 7
    opset: Annotated[int, Field(ge=11, le=25)] = 11


def _version_one(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise _custom(f"this envmatrix reads matrix version {SCHEMA_VERSION}, not {value}.",
                      f"write version: {SCHEMA_VERSION} and follow {REFERENCE}.")
    return value


class MatrixFile(_Strict):
    """The whole matrix.yaml."""

    version: Annotated[int, AfterValidator(_version_one), WithJsonSchema({"const": 1})]
    bases: Annotated[dict[Slug, BaseSpec], Field(min_length=1)]
    environments: Annotated[list[EnvironmentEntry], Field(min_length=1)]
    workloads: Annotated[dict[Slug, WorkloadSpec], Field(min_length=1)]
    measure: MeasureSpec = MeasureSpec()
    baseline: Optional[Slug] = None
    build: BuildSpec = BuildSpec()
    model_export: ModelExportSpec = ModelExportSpec()
    model_dirs: list[PathText] = []


# -- YAML with line numbers -----------------------------------------------------------------


@dataclass
class _Doc:
    """Plain data from a YAML file, plus the line of every key path (1-based)."""

    data: Any = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    key_lines: dict[KeyPath, int] = field(default_factory=dict)
    nodes: int = 0

    def line(self, path: KeyPath, at_key: bool = False) -> int:
        if at_key and path in self.key_lines:
            return self.key_lines[path]
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


_STANDARD_TAG = "tag:yaml.org,2002:"
# Tags whose text we accept; anything else (e.g. !!python/object) is refused, not interpreted.
_PLAIN_TAGS = {_STANDARD_TAG + t for t in
               ("null", "bool", "int", "float", "str", "timestamp", "map", "seq", "merge")}


def _read_yaml(path: Path) -> _Doc:
    """Compose (never construct) the YAML, then walk the nodes into plain data with lines."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: the file is larger than {MAX_FILE_BYTES} bytes. "
                              "Fix: a matrix file is a short YAML document; check the path.")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such matrix file. Fix: pass the path of an existing "
                          "matrix file (the default is matrix.yaml).") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the matrix file ({err}). "
                          "Fix: give a readable UTF-8 text file.") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        doc = _Doc()
        doc.data = _walk(node, loader, (), doc, path) if node is not None else None
        return doc
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(p) for p in (err.context, err.problem) if p)
        if err.context_mark and mark and err.context_mark.line != mark.line:
            what += f" (the construct starts at line {err.context_mark.line + 1})"
        raise ConfigError(f"{where}: YAML syntax error: {what}.\n  Fix: correct the YAML at "
                          "that line (indentation, a missing ':' or an unclosed quote).") from None
    finally:
        loader.dispose()


def _walk(node: yaml.Node, loader: yaml.SafeLoader, where: KeyPath, doc: _Doc,
          path: Path) -> Any:
    doc.nodes += 1
    if doc.nodes > MAX_NODES or len(where) > 50:
        raise _yaml_problem(path, node, "the document is too large or too deeply nested.",
                            "write a plain matrix file without alias chains.")
    doc.lines[where] = node.start_mark.line + 1
    if node.tag not in _PLAIN_TAGS:
        raise _yaml_problem(path, node, f"the tag {node.tag[:60]!r} is not supported.",
                            "remove the tag; write plain values.", where)
    if isinstance(node, yaml.MappingNode):
        own = {id(k) for k, _ in node.value if k.tag != _STANDARD_TAG + "merge"}
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        return _walk_mapping(node, loader, where, doc, path, own)
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, loader, (*where, i), doc, path) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == _STANDARD_TAG + "null" and node.style is None:
        return None
    return node.value  # the text as written; see the module docstring


def _walk_mapping(node: yaml.MappingNode, loader: yaml.SafeLoader, where: KeyPath, doc: _Doc,
                  path: Path, own: set[int]) -> dict[str, Any]:
    """Keys written in this mapping (`own`) may override keys merged in with `<<`, not repeat."""
    out: dict[str, Any] = {}
    first_nodes: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _yaml_problem(path, key_node, "a key must be plain text, not a list or mapping.",
                                "write `name: value`.", where)
        key = key_node.value
        if key in out and id(first_nodes[key]) in own:
            first = doc.key_lines[(*where, key)]
            raise _yaml_problem(path, key_node, f"key {key!r} appears twice in one mapping "
                                f"(first at line {first}); YAML would keep only the last.",
                                "remove or merge one of them.", (*where, key))
        first_nodes[key] = key_node
        doc.key_lines[(*where, key)] = key_node.start_mark.line + 1
        out[key] = _walk(value_node, loader, (*where, key), doc, path)
    return out


def _yaml_problem(path: Path, node: yaml.Node, message: str, fix: str,
                  where: KeyPath = ()) -> ConfigError:
    line = node.start_mark.line + 1
    prefix = f"{planlib.format_path(where)}: " if where else ""
    return ConfigError(f"{path}:{line}: {prefix}{message}\n  Fix: {fix}")


# -- turning pydantic errors into problems --------------------------------------------------


_MISSING_EXAMPLES = {
    "version": "version: 1",
    "bases": "bases: {bookworm: {image: debian:bookworm}}",
    "environments": "environments: [{base: bookworm, packages: {onnxruntime: \"1.20.1\"}}]",
    "workloads": "workloads: {cnn: {model: zoo:cnn}}",
    "base": "base: <a name under bases:>",
    "image": "image: debian:bookworm",
    "model": "model: zoo:cnn",
    "suite": "suite: bookworm",
}

_TYPE_MESSAGES: dict[str, tuple[str, str]] = {
    "model_type": ("expected a mapping of key: value pairs, got {kind}.",
                   "write `key: value` lines under it."),
    "model_attributes_type": ("expected a mapping of key: value pairs, got {kind}.",
                              "write `key: value` lines under it."),
    "dict_type": ("expected a mapping of key: value pairs, got {kind}.",
                  "write `key: value` lines under it."),
    "list_type": ("expected a list, got {kind}.", "write a YAML list, e.g. [a, b]."),
    "string_type": ("expected one text value, got {kind}.", "write a single value."),
    "int_parsing": ("expected a whole number, got {kind}.", "write a number like 5."),
    "int_type": ("expected a whole number, got {kind}.", "write a number like 5."),
    "int_from_float": ("expected a whole number, got {kind}.", "write a number like 5."),
    "float_parsing": ("expected a number, got {kind}.", "write a number like 2.5."),
    "float_type": ("expected a number, got {kind}.", "write a number like 2.5."),
    "finite_number": ("expected a finite number, got {kind}.", "write a number like 2.5."),
    "bool_parsing": ("expected true or false, got {kind}.", "write true or false."),
    "bool_type": ("expected true or false, got {kind}.", "write true or false."),
    "greater_than_equal": ("{value} is too small: it must be at least {ge}.",
                           "use a value >= {ge}."),
    "greater_than": ("{value} is too small: it must be more than {gt}.",
                     "use a value > {gt}."),
    "less_than_equal": ("{value} is too large: it must be at most {le}.",
                        "use a value <= {le}."),
    "less_than": ("{value} is too large: it must be less than {lt}.", "use a value < {lt}."),
    "too_short": ("needs at least {min_length} entry, got none.",
                  "add at least {min_length} entry."),
    "too_long": ("has more than {max_length} characters or entries.",
                 "shorten it to {max_length}."),
}


def _problem_from_error(err: Any, root: KeyPath = ()) -> Problem:
    """One pydantic error dict -> a Problem in our words (no raw pydantic text)."""
    loc = tuple(part for i, part in enumerate(err["loc"])
                if not (i == 2 and err["loc"][0] == "environments" and part in ("single",
                                                                               "matrix")))
    path, kind, ctx = (*root, *loc), err["type"], err.get("ctx") or {}
    if path and path[-1] == "[key]":  # a bad mapping key: point at the key itself
        path = path[:-1]
        return Problem(path, f"key {path[-1]!r}: {ctx.get('message', err['msg'])}",
                       ctx.get("fix", f"see {REFERENCE}."), at_key=True)
    if kind == "envmatrix":
        return Problem(path, ctx["message"], ctx["fix"])
    if kind in ("envmatrix_key", "extra_forbidden"):
        key = ctx.get("key", path[-1] if path else "?")
        path = (*path, key) if kind == "envmatrix_key" else path
        known = ctx.get("known", [])
        why = ctx.get("why", f"unknown key {key!r}{planlib.did_you_mean(key, known)}")
        fix = ctx.get("fix", f"remove it or use one of: {', '.join(known)}.")
        return Problem(path, why + ".", fix, at_key=True)
    if kind == "missing":
        example = _MISSING_EXAMPLES.get(str(path[-1]), f"{path[-1]}: ...")
        return Problem(path[:-1], f"required key {path[-1]!r} is missing.",
                       f"add `{example}` (see {REFERENCE}).")
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = planlib.did_you_mean(str(err["input"]), choices)
        return Problem(path, f"{show(err['input'])} is not allowed here{hint}.",
                       f"use one of {expected}.")
    template = _TYPE_MESSAGES.get(kind)
    if template:
        shown = err["input"] if isinstance(err["input"], (int, float)) else show(err["input"])
        if kind.startswith(("greater", "less")):
            shown = str(err["input"])[:40]  # a number's text, as written
        values = {"kind": kind_of(err["input"]), "value": shown, **ctx}
        return Problem(path, template[0].format(**values), template[1].format(**values))
    return Problem(path, f"invalid value {show(err.get('input'))}.", f"see {REFERENCE}.")


def _validate(model: type[BaseModel], data: Any, root: KeyPath = ()) -> Any:
    """Validate or raise PlanError with every problem found."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise planlib.PlanError(_problem_from_error(e, root) for e in err.errors()) from None


# -- the builder: validated spec -> Plan ----------------------------------------------------


@dataclass
class _Draft:
    """One environment before it becomes an `Environment`, with where each value came from."""

    spec: EnvironmentSpec
    where: KeyPath
    origin: dict[tuple[str, ...], KeyPath]  # ("packages", "numpy") -> path in the file
    varied: tuple[str, ...] = ()  # non-runtime packages a matrix varies (they enter the id)
    varied_providers: bool = False  # a matrix varies providers (they enter the id)
    env_id: str = ""

    def path(self, *key: str) -> KeyPath:
        for depth in range(len(key), 0, -1):
            if key[:depth] in self.origin:
                return self.origin[key[:depth]]
        return self.where


class _Builder:
    def __init__(self, source: Path, data: dict[str, Any], spec: MatrixFile) -> None:
        self.source, self.data, self.spec = source, data, spec
        self.root = source.resolve().parent
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def check(self) -> None:
        if self.problems:
            raise planlib.PlanError(self.problems)

    # bases ---------------------------------------------------------------------------------

    def bases(self) -> dict[str, Base]:
        out = {}
        for name, spec in self.spec.bases.items():
            family = spec.resolved_family
            if spec.python_source == "deadsnakes" and family != "ubuntu":
                self.problems.append(Problem(
                    ("bases", name, "python_source"), "the deadsnakes PPA exists for Ubuntu only.",
                    "use an Ubuntu image (family: ubuntu), or python_source system/image."))
            boot = spec.bootstrap
            bootstrap = Bootstrap(boot.suite, boot.mirror, boot.variant) if boot else None
            out[name] = Base(name, spec.image, family, bootstrap, spec.python_source, spec.cuda)
        return out

    # environments --------------------------------------------------------------------------

    def drafts(self) -> list[_Draft]:
        drafts: list[_Draft] = []
        for index, entry in enumerate(self.spec.environments):
            where: KeyPath = ("environments", index)
            try:
                if isinstance(entry, MatrixEntrySpec):
                    drafts += self._combinations(self.data["environments"][index], entry, where)
                else:
                    origin = planlib.origin_of(self.data["environments"][index], where)
                    drafts.append(_Draft(entry, where, origin))
            except planlib.PlanError as err:
                self.problems += err.problems
        return drafts

    def _combinations(self, raw: dict[str, Any], entry: MatrixEntrySpec,
                      where: KeyPath) -> list[_Draft]:
        axes, include, exclude = planlib.parse_matrix(raw, where)
        combos = planlib.expand_matrix(axes, exclude, include, (*where, "matrix"))
        varied = tuple(sorted({k.split(".", 1)[1] for c in combos for k in c
                               if k.startswith("packages.")}))
        by_providers = any("providers" in c for c in combos)
        drafts, problems = [], []
        for combo in combos:
            merged, origin = planlib.merge_combination(raw, combo, where)
            try:
                spec = _validate(EnvironmentSpec, merged)
            except planlib.PlanError as err:
                problems += [Problem(planlib.origin_path(origin, p.path, where), p.message, p.fix,
                                     p.at_key) for p in err.problems]
                continue
            drafts.append(_Draft(spec, where, origin, varied, by_providers))
        if problems:
            raise planlib.PlanError(planlib.unique(problems))
        return drafts

    def environments(self, drafts: list[_Draft], bases: Mapping[str, Base]) -> list[Environment]:
        """One Environment per draft whose base exists; sets each draft's env_id."""
        pairs = []
        for draft in drafts:
            spec = draft.spec
            base = bases.get(spec.base)
            if base is None:
                self.problems.append(Problem(
                    draft.path("base"), f"unknown base {spec.base!r}"
                    f"{planlib.did_you_mean(spec.base, bases)}.",
                    f"use one of {', '.join(bases)}, or add it under bases:."))
                continue
            self._check_python(draft, base)
            draft.env_id = spec.id or planlib.environment_id(
                spec.base, spec.python, spec.packages, draft.varied,
                spec.providers if draft.varied_providers else ())
            pairs.append((draft, Environment(
                id=draft.env_id, base=base, python=spec.python,
                packages=tuple(sorted(spec.packages.items())), providers=tuple(spec.providers),
                env=tuple(sorted(spec.env.items())), description=spec.description,
                template=spec.template)))
        self._check_ids([draft for draft, _ in pairs])
        for draft, env in pairs:
            for key, message, fix in planlib.check_environment(env):
                self.problems.append(Problem(draft.path(*key), f"environment {env.id}: {message}",
                                             fix))
            note = planlib.numpy_warning(env)
            if note:
                self.warnings.append(f"{self.source}: {note}")
        return [env for _, env in pairs]

    def _check_python(self, draft: _Draft, base: Base) -> None:
        python, source = draft.spec.python, base.python_source
        if python != "system" and source != "deadsnakes":
            self.problems.append(Problem(
                draft.path("python"), f"base {base.name!r} (python_source {source}) provides only "
                f"its own python3, not python {python}.",
                "write python: system, or use an Ubuntu base with python_source: deadsnakes "
                "(or a python:X.Y image base with python_source: image)."))
        if python == "system" and source == "deadsnakes":
            self.problems.append(Problem(
                draft.path("python"), f"base {base.name!r} installs python from deadsnakes and "
                "needs a version.", 'write python: "3.8" (the version to install).'))

    def _check_ids(self, drafts: list[_Draft]) -> None:
        seen: dict[str, _Draft] = {}
        for draft in drafts:
            why = planlib.check_id(draft.env_id)
            if why:
                self.problems.append(Problem(draft.path("id"), why, "set a shorter id: with "
                                             "lower-case letters, digits and . _ -."))
            first = seen.setdefault(draft.env_id, draft)
            if first is not draft:
                same = " (another combination of this matrix)" if first.where == draft.where else ""
                self.problems.append(Problem(
                    draft.path("id"), f"environment id {draft.env_id!r} is also the id of "
                    f"{planlib.format_path(first.where)}{same}.",
                    "add a distinct id: to one of them (for a matrix combination, an include "
                    "entry with id:)."))

    # workloads -----------------------------------------------------------------------------

    def workloads(self) -> list[Workload]:
        allowed = [self.root, *self._model_dirs()]
        out = []
        for name, spec in self.spec.workloads.items():
            where: KeyPath = ("workloads", name)
            model = spec.model
            if model.startswith("zoo:"):
                self._check_zoo(model, (*where, "model"))
            else:
                suffixes = (".pt", ".pth") if spec.backend == "torch" else (".onnx",)
                model = self._user_file(model, (*where, "model"), allowed, suffixes)
            inputs = spec.inputs and self._user_file(spec.inputs, (*where, "inputs"), allowed,
                                                     (".npz",))
            out.append(Workload(
                name=name, model=model, backend=spec.backend,
                shapes=tuple((k, tuple(v)) for k, v in sorted(spec.shapes.items())),
                values=tuple(sorted(spec.values.items())), inputs=inputs or None,
                seed=spec.seed, description=spec.description))
        return out

    def _model_dirs(self) -> list[Path]:
        dirs = []
        for index, text in enumerate(self.spec.model_dirs):
            folder = (self.root / text).resolve()
            if not folder.is_dir():
                self.problems.append(Problem(("model_dirs", index), f"{text!r} is not a folder.",
                                             "list existing folders that hold your models."))
            dirs.append(folder)
        return dirs

    def _check_zoo(self, model: str, where: KeyPath) -> None:
        from envmatrix import zoo  # imports onnx: only when a zoo model is asked for

        name = model.split(":", 1)[1]
        if name not in zoo.NAMES:
            self.problems.append(Problem(
                where, f"{model!r} is not in the zoo{planlib.did_you_mean(name, zoo.NAMES)}.",
                f"use one of {', '.join('zoo:' + n for n in zoo.NAMES)}, or a model file path."))

    def _user_file(self, text: str, where: KeyPath, allowed: Sequence[Path],
                   suffixes: tuple[str, ...]) -> str:
        """Absolute path of a user file that must stay inside the allowed folders."""
        full = (self.root / text).resolve()
        inside = any(full.is_relative_to(folder) for folder in allowed)
        if not inside:
            self.problems.append(Problem(
                where, f"{text!r} is outside the matrix file's folder ({self.root}).",
                "move the file next to the matrix file, or list its folder under model_dirs:."))
        elif not full.is_file():
            self.problems.append(Problem(where, f"file {text!r} does not exist "
                                         f"(looked for {full}).", "fix the path; relative paths "
                                         "start at the matrix file's folder."))
        elif full.suffix not in suffixes:
            self.problems.append(Problem(where, f"{text!r} is not a {' or '.join(suffixes)} "
                                         "file.", f"give a {' or '.join(suffixes)} file, or "
                                         "change backend:."))
        return str(full)

    # everything else -----------------------------------------------------------------------

    def check_model_export(self, envs: Sequence[Environment],
                           workloads: Sequence[Workload]) -> None:
        limits = planlib.model_limits(envs)
        export = self.spec.model_export
        if not limits or not any(w.is_zoo for w in workloads):
            return
        max_ir, max_opset, env_id = limits
        for key, value, limit in (("ir_version", export.ir_version, max_ir),
                                  ("opset", export.opset, max_opset)):
            if value > limit:
                self.problems.append(Problem(
                    ("model_export", key), f"{key} {value} is newer than environment {env_id} "
                    f"reads (at most {limit}).", f"set model_export.{key}: {limit}."))

    def build_settings(self) -> dict[str, Optional[str]]:
        build = self.spec.build
        out = {"ca_bundle": self._ca_bundle(build.ca_bundle),
               "wheelhouse": self._folder(build.wheelhouse, "wheelhouse"),
               "template_dir": self._folder(build.template_dir, "template_dir")}
        if build.offline and not build.wheelhouse:
            self.problems.append(Problem(("build", "offline"), "offline builds install from the "
                                         "wheelhouse only, and none is set.",
                                         "set build.wheelhouse: to a folder of wheels."))
        return out

    def _folder(self, text: Optional[str], key: str) -> Optional[str]:
        if text is None:
            return None
        folder = (self.root / text).resolve()
        if not folder.is_dir():
            self.problems.append(Problem(("build", key), f"{text!r} is not a folder "
                                         f"(looked for {folder}).", "fix the path, or remove "
                                         "the key."))
        return str(folder)

    def _ca_bundle(self, text: Optional[str]) -> Optional[str]:
        if text is None:
            return None
        if text == "auto":
            found = resolve_ca_bundle()
            return str(found) if found else None
        full = (self.root / text).resolve()
        if not full.is_file():
            self.problems.append(Problem(("build", "ca_bundle"), f"{text!r} is not a file "
                                         f"(looked for {full}).", "point it at a PEM bundle, "
                                         "write auto, or null for none."))
        return str(full)

    def baseline(self, envs: Sequence[Environment]) -> str:
        ids = [e.id for e in envs]
        wanted = self.spec.baseline or ids[0]
        if wanted not in ids:
            self.problems.append(Problem(
                ("baseline",), f"baseline {wanted!r} is not an environment id"
                f"{planlib.did_you_mean(wanted, ids)}.", f"use one of {', '.join(ids)}."))
        return wanted

    def check_cells(self, envs: Sequence[Environment], workloads: Sequence[Workload],
                    cells: Sequence[Any]) -> None:
        used_envs = {c.environment.id for c in cells}
        used_workloads = {c.workload.name for c in cells}
        for env in envs:
            if env.id not in used_envs:
                self.problems.append(Problem(("environments",), f"environment {env.id} runs no "
                                     "workload (torch workloads need torch, onnxruntime ones an "
                                     "onnxruntime package).", "pin the runtime the workloads "
                                     "need, or remove the environment."))
        for wl in workloads:
            if wl.name not in used_workloads:
                self.problems.append(Problem(("workloads", wl.name, "backend"), f"workload "
                                     f"{wl.name} runs in no environment (backend {wl.backend}).",
                                     "add an environment with that runtime, or change backend:."))
        declared = set(self.spec.bases)
        unused = sorted(declared - {e.base.name for e in envs})
        if unused:
            self.warnings.append(f"{self.source}: bases {', '.join(unused)} are declared but no "
                                 "environment uses them. Fix: remove them or use them.")


@functools.lru_cache(maxsize=1)
def _pip_config_cert() -> Optional[str]:
    """The `cert` that the host's pip is configured with, if any (asked of pip itself)."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.cert"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def resolve_ca_bundle(environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """What `ca_bundle: auto` means: the bundle the host's pip trusts, or None.

    The first of PIP_CERT, SSL_CERT_FILE and REQUESTS_CA_BUNDLE that names a file wins, then
    pip's own `global.cert` setting.
    """
    environ = os.environ if environ is None else environ
    for name in CA_BUNDLE_VARIABLES:
        value = environ.get(name)
        if value and Path(value).is_file():
            return Path(value).resolve()
    configured = _pip_config_cert()
    return Path(configured).resolve() if configured and Path(configured).is_file() else None


# -- public API -----------------------------------------------------------------------------


def load_plan(path: Union[Path, str], *, only: Optional[list[str]] = None,
              skip: Optional[list[str]] = None) -> Plan:
    """Read, validate and expand a matrix file; `only`/`skip` are globs on env and cell ids.

    Raises ConfigError whose message names the file, the line, the key path and the fix.
    """
    source = Path(path)
    doc = _read_yaml(source)
    try:
        return _build(source, doc, only, skip)
    except planlib.PlanError as err:
        raise ConfigError(_format(source, doc, err.problems)) from None


def _build(source: Path, doc: _Doc, only: Optional[list[str]],
           skip: Optional[list[str]]) -> Plan:
    if not isinstance(doc.data, dict):
        raise planlib.PlanError([Problem((), f"the file holds {kind_of(doc.data)}, not a mapping.",
                                         "start with `version: 1`, then bases:, environments: "
                                         "and workloads: (see matrix.yaml).")])
    builder = _Builder(source, doc.data, _validate(MatrixFile, doc.data))
    bases = builder.bases()
    drafts = builder.drafts()
    envs = builder.environments(drafts, bases)
    builder.check()
    workloads = builder.workloads()
    builder.check_model_export(envs, workloads)
    settings = builder.build_settings()
    baseline = builder.baseline(envs)
    options = {d.env_id: {p: tuple(sorted(o.items())) for p, o in d.spec.provider_options.items()}
               for d in drafts}
    cells = planlib.make_cells(envs, workloads, options)
    builder.check_cells(envs, workloads, cells)
    builder.check()
    return _selected_plan(builder, envs, workloads, cells, baseline, settings, only, skip)


def _selected_plan(builder: _Builder, envs: Sequence[Environment],
                   workloads: Sequence[Workload], cells: Sequence[Any], baseline: str,
                   settings: Mapping[str, Optional[str]], only: Optional[list[str]],
                   skip: Optional[list[str]]) -> Plan:
    if only is not None or skip is not None:
        cells = planlib.select(cells, only, skip)
    kept_envs = [e for e in envs if any(c.environment.id == e.id for c in cells)]
    if baseline not in {e.id for e in kept_envs}:
        builder.warnings.append(f"baseline {baseline} is not selected; comparing against "
                                f"{kept_envs[0].id} instead.")
        baseline = kept_envs[0].id
    for note in builder.warnings:
        warnings.warn(note, ConfigWarning, stacklevel=3)
    spec = builder.spec
    base_names = {e.base.name for e in kept_envs}
    bases = {e.base.name: e.base for e in envs}
    return Plan(
        source=builder.source,
        bases=tuple(bases[name] for name in spec.bases if name in base_names),
        environments=tuple(kept_envs),
        workloads=tuple(w for w in workloads if any(c.workload.name == w.name for c in cells)),
        measure=Measure(**spec.measure.model_dump()),
        baseline=baseline,
        cells=tuple(cells),
        ca_bundle=settings["ca_bundle"],
        wheelhouse=settings["wheelhouse"],
        pip_index_url=spec.build.pip_index_url,
        template_dir=settings["template_dir"],
        extra={
            "model_export": spec.model_export.model_dump(),
            "offline": spec.build.offline,
            "configured_build": {"ca_bundle": spec.build.ca_bundle},
            "warnings": list(builder.warnings),
        },
    )


def _format(source: Path, doc: _Doc, problems: Sequence[Problem]) -> str:
    blocks = [f"{source}:{doc.line(p.path, p.at_key)}: {planlib.format_path(p.path)}: "
              f"{p.message}\n  Fix: {p.fix}" for p in planlib.unique(problems)]
    if len(blocks) == 1:
        return blocks[0]
    return f"{source}: {len(blocks)} problems:\n" + "\n".join(blocks)


def dump_resolved(plan: Plan, path: Union[Path, str], extra: Mapping[str, Any]) -> None:
    """Write plan_to_dict(plan) plus `run: extra` as YAML, atomically (temp, fsync, rename)."""
    doc = {**planlib.plan_to_dict(plan), "run": json.loads(json.dumps(dict(extra), default=str))}
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_resolved(path: Union[Path, str]) -> dict[str, Any]:
    """Read a matrix.resolved.yaml back (the only way other modules read YAML)."""
    target = Path(path)
    try:
        data = yaml.safe_load(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{target}: missing. Fix: give a run directory that a run "
                          "created (it writes matrix.resolved.yaml first).") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunDirError(f"{target}: unreadable ({err}). Fix: re-run the matrix.") from None
    if not isinstance(data, dict) or data.get("schema") != planlib.PLAN_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else kind_of(data)
        raise RunDirError(f"{target}: expected schema {planlib.PLAN_SCHEMA}, found {found!r}. "
                          "Fix: use a run directory written by this envmatrix version.")
    return data


def matrix_json_schema() -> dict[str, Any]:
    """JSON schema of matrix.yaml for editors (the committed file must equal this)."""
    schema = MatrixFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "envmatrix matrix.yaml, version 1", **schema}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m envmatrix.config --schema [--write]`, or `--check FILE` to validate."""
    parser = argparse.ArgumentParser(prog="python -m envmatrix.config", description=main.__doc__)
    parser.add_argument("--schema", action="store_true", help="print the JSON schema")
    parser.add_argument("--write", action="store_true", help=f"write it to {SCHEMA_FILE}")
    parser.add_argument("--check", metavar="FILE", help="validate a matrix file and list cells")
    args = parser.parse_args(argv)
    if args.check:
        try:
            plan = load_plan(Path(args.check))
        except ConfigError as err:
            print(err, file=sys.stderr)
            return err.exit_code
        print("\n".join(cell.id for cell in plan.cells))
        return 0
    text = json.dumps(matrix_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.write:
        SCHEMA_FILE.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_FILE.write_text(text, encoding="utf-8")
    elif args.schema:
        sys.stdout.write(text)
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
