"""What a valid matrix.yaml is (schema version 1): pydantic models, strict grammars, our words.

The models check shape and grammar only: every free-form string field is matched with
`re.fullmatch` against an allow-list in `GRAMMARS` (the JSON schema carries the same patterns),
and unknown keys are errors with a "did you mean" hint. Cross-checks that need several parts of
the file at once (bases, python sources, ids, runtimes, files) live in `envmatrix.config.load`.
`validate` turns pydantic's errors into `Problem`s in our words, so raw pydantic text never
reaches users. Nothing here reads files: `envmatrix.yamlsrc` reads the YAML.

Why it is long (over 600 lines): one pydantic model per section of the file, each with its
field descriptions (they are the editors' JSON schema and the reference's words); splitting
the models would split the one answer to "what is a valid matrix.yaml".
"""

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
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

from envmatrix import grammar, problems
from envmatrix.grammar import GRAMMARS, PROVIDER_NAMES, RESERVED_ENV
from envmatrix.problems import KeyPath, Problem, kind_of, show
from envmatrix.rundir.plan import Measure, VerdictSettings

SCHEMA_VERSION = 1
REFERENCE = "docs/matrix-reference.md"
DEFAULT_TEMPLATE = "default.Dockerfile.j2"


def _custom(message: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError("envmatrix", "{message}", {"message": message, "fix": fix})


def _listed_once(value: list[str], what: str = "") -> list[str]:
    """A list whose entries must be distinct: the first repeated one is the problem."""
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise _custom(f"{what}{repeated[0]!r} is listed twice.", "list it once.")
    return value


@dataclass(frozen=True)
class _Grammar:
    """Annotation for str fields: checked against GRAMMARS[name]; the JSON schema says the same."""

    name: str
    what: str
    example: str
    max_len: Optional[int] = None  # None: grammar.MAX_LENGTH's

    @property
    def limit(self) -> int:
        return self.max_len or grammar.MAX_LENGTH[self.name]

    def check(self, value: str) -> str:
        if len(value) > self.limit:
            raise _custom(f"{show(value)} is longer than {self.limit} characters.",
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
                "maxLength": self.limit, "description": self.what}


def _no_dashes(value: str) -> str:
    if "--" in value:
        raise _custom(f"{show(value)} contains '--', which separates the parts of cell ids.",
                      "use single separators, e.g. my-name.")
    return value


def _reserved_env(value: str) -> str:
    if grammar.is_reserved_env(value):
        raise _custom(f"{value} is set by envmatrix itself.",
                      f"choose another name (reserved: {', '.join(RESERVED_ENV)}, ENVMATRIX_*).")
    return value


def _short_provider(value: str) -> str:
    """Full names of known providers become their short names: one spelling per provider."""
    short = {full: short for short, full in PROVIDER_NAMES.items()}
    return short.get(value, value)


G = _Grammar  # short alias: the type aliases below read as one line each
Slug = Annotated[str, G("id", "a slug (lower-case letters and digits joined by single . _ -)",
                        "bookworm-ort1.20.1"), AfterValidator(_no_dashes)]
PackageName = Annotated[str, G("package", "a PyPI project name", "onnxruntime")]
Version = Annotated[str, G("version", "an exact version (no ranges, URLs, spaces or operators)",
                           '"1.20.1"')]
EnvName = Annotated[str, G("env_name", "an environment variable name", "OMP_NUM_THREADS"),
                    AfterValidator(_reserved_env)]
EnvValue = Annotated[str, G("env_value", "a value of letters, digits, spaces and _ . , : / = + @ "
                            "% -", '"2"')]
ImageRef = Annotated[str, G("image", "a docker image reference", "debian:bookworm")]
Suite = Annotated[str, G("suite", "a debootstrap suite name", "bookworm")]
Mirror = Annotated[str, G("mirror", "an http(s) mirror URL without spaces or quotes",
                          "http://deb.example.org/debian")]
IndexUrl = Annotated[str, G("index_url", "an http(s) or file URL without spaces or quotes",
                            "https://pypi.example.org/simple")]
PythonVersion = Annotated[str, G("python", '"system" or a version X.Y', '"3.10"')]
CudaVersion = Annotated[str, G("cuda", "a CUDA version", '"12.4"')]
CudnnVersion = Annotated[str, G("cudnn", "a cuDNN version", '"9"')]
Gpus = Annotated[str, G("gpus", '"all" or GPU indexes or UUIDs separated by commas', '"0,1"')]
Provider = Annotated[str, G("provider", "an execution provider (cpu, openvino, cuda, tensorrt, "
                            "dnnl, rocm, coreml or a full XxxExecutionProvider name)",
                            "openvino"), AfterValidator(_short_provider)]
OptionKey = Annotated[str, G("option_key", "an option name", "device_type")]
OptionValue = Annotated[str, G("option_value", "an option value", "CPU")]
ConfigKey = Annotated[str, G("config_key", "a session config key",
                             "session.intra_op.allow_spinning")]
PropertyKey = Annotated[str, G("property_key", "an OpenVINO property name", "PERFORMANCE_HINT")]
InputName = Annotated[str, G("input_name", "a model input name", "input_ids")]
ValueText = Annotated[str, G("value", "a number or true/false", "16000")]
TemplateName = Annotated[str, G("template", "a template file name", DEFAULT_TEMPLATE)]
Cpuset = Annotated[str, G("cpuset", "a CPU list", '"0-1"')]
MemoryText = Annotated[str, G("memory", "a memory size with an optional unit b, k, m or g",
                              '"4g"')]
Text = Annotated[str, G("text", "one line of printable text", '"2021 stack"', 300)]
PathText = Annotated[str, G("text", "a file path", "models/net.onnx", 4096), Field(min_length=1)]
HostUrl = Annotated[str, G("host_url", "a Docker engine address (unix:///path, tcp://host:port "
                           "or ssh://user@host[:port])", "tcp://10.0.0.5:2376")]
ContextName = Annotated[str, G("context", "a docker context name", "gpu-box")]
LabelKey = Annotated[str, G("label_key", "a label name", "gpu")]
LabelValue = Annotated[str, G("label_value", "a label value (letters, digits, _ . -)", "true")]


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
    cudnn: Optional[CudnnVersion] = None

    @property
    def resolved_family(self) -> str:
        return self.family or ("ubuntu" if "ubuntu" in self.image.lower() else "debian")


def _normalized_packages(value: dict[str, str]) -> dict[str, str]:
    """PEP 503 names; two spellings of one package would otherwise silently collapse."""
    out: dict[str, str] = {}
    for name, version in value.items():
        norm = grammar.normalize_package(name)
        if norm in out:
            raise _custom(f"package {norm!r} is pinned twice (spelled differently).",
                          "keep one pin per package.")
        out[norm] = version
    return out


Packages = Annotated[dict[PackageName, Version], AfterValidator(_normalized_packages)]
OPTION_TREE_DEPTH = 8  # the OpenVINO EP reads load_config nested up to 8 levels
OPTION_TREE_ENTRIES = 256


def _option_tree(value: Any, depth: int = 1) -> int:
    """Check a nested mapping of option text (OpenVINO's load_config); its entry count."""
    if depth > OPTION_TREE_DEPTH:
        raise _custom(f"the mapping is nested deeper than {OPTION_TREE_DEPTH} levels.",
                      "flatten it (the OpenVINO EP reads at most 8 levels).")
    count = 0
    for key, item in value.items():
        _GRAMMAR_PROPERTY.check(str(key))
        if isinstance(item, dict):
            count += _option_tree(item, depth + 1)
        elif isinstance(item, str):
            _GRAMMAR_VALUE.check(item)
        else:
            raise _custom(f"{key}: expected text or a mapping, got {kind_of(item)}.",
                          "write PROPERTY: value or DEVICE: {PROPERTY: value}.")
        count += 1
    if count > OPTION_TREE_ENTRIES:
        raise _custom(f"the mapping has more than {OPTION_TREE_ENTRIES} entries.",
                      "keep the properties that matter.")
    return count


def _option_value(value: Any) -> Any:
    """A provider option: text (typed later by the option table) or a nested mapping."""
    if isinstance(value, str):
        return _GRAMMAR_VALUE.check(value)
    if isinstance(value, dict):
        _option_tree(value)
        return value
    raise _custom(f"expected text or a mapping, got {kind_of(value)}.",
                  "write key: value, or key: {PROPERTY: value} for load_config.")


_GRAMMAR_VALUE = G("option_value", "an option value", "CPU")
_GRAMMAR_PROPERTY = G("property_key", "an OpenVINO property name", "PERFORMANCE_HINT")
ProviderOptionValue = Annotated[Any, AfterValidator(_option_value), WithJsonSchema({
    "anyOf": [{"type": ["string", "number", "boolean"]}, {"type": "object"}],
    "description": "text, a number, true/false, or a mapping (OpenVINO's load_config)"})]
ProviderOptions = dict[Provider, Annotated[dict[OptionKey, ProviderOptionValue],
                                           Field(max_length=64)]]
Threads = Annotated[int, Field(ge=1, le=1024)]
Concurrency = Annotated[int, Field(ge=1, le=256, description=(
    "requests in flight on one session: 1 single-stream, N > 1 a closed loop keeping N in "
    "flight (MLPerf LoadGen's offline scenario)"))]
Batch = Annotated[int, Field(ge=1, le=4096)]
Backend = Literal["onnxruntime", "torch"]


class SessionSpec(_Strict):
    """onnxruntime session settings; names match harness.optiontable.SESSION_SETTINGS."""

    graph_optimization: Optional[Literal["disable", "basic", "extended", "all"]] = None
    intra_op_threads: Optional[Threads] = None
    inter_op_threads: Optional[Threads] = None
    execution_mode: Optional[Literal["sequential", "parallel"]] = None
    enable_mem_pattern: Optional[bool] = None
    enable_cpu_mem_arena: Optional[bool] = None
    config: Annotated[dict[ConfigKey, OptionValue], Field(max_length=64)] = {}

    def as_dict(self) -> dict[str, Any]:
        """The settings that are set (config only when it has entries)."""
        return {k: v for k, v in self.model_dump().items() if v not in (None, {})}


def _label_text(value: Any) -> Any:
    """`gpu: true` and `gpu: "true"` are one label: YAML booleans and numbers become text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else value


Label = Annotated[LabelValue, BeforeValidator(_label_text)]
# Where an environment runs: every host (omitted), a list of host names, or labels to match.
HostSelector = Union[Annotated[list[Slug], Field(min_length=1)],
                     Annotated[dict[LabelKey, Label], Field(min_length=1)]]


class TlsSpec(_Strict):
    """Client certificates for a tcp:// engine: paths where the user keeps them."""

    ca: Optional[PathText] = None
    cert: PathText
    key: PathText
    verify: bool = True


class HostSpec(_Strict):
    """One Docker engine: a context, a URL, or neither (the default engine)."""

    context: Optional[ContextName] = None
    url: Optional[HostUrl] = None
    tls: Optional[TlsSpec] = None
    labels: dict[LabelKey, Label] = {}
    shared_paths: Optional[bool] = Field(default=None, description=(
        "whether the engine sees this machine's paths (cells then bind-mount the run "
        "directory); default: true for the default engine and unix://, false for tcp://, "
        "ssh:// and contexts pointing there (inputs and results then travel through volumes)"))

    @model_validator(mode="after")
    def _one_address(self) -> "HostSpec":
        if self.context and self.url:
            raise _custom("a host has either context: or url:, not both.", "keep one of them.")
        if self.tls and not (self.url or "").startswith("tcp://"):
            raise _custom("tls: applies to a tcp:// url only.",
                          "write url: tcp://host:port, or remove tls: (a context brings its own).")
        return self


class _EnvironmentFields(_Strict):
    python: PythonVersion = "system"
    packages: Packages = {}
    providers: Annotated[list[Provider], Field(min_length=1)] = ["cpu"]
    env: dict[EnvName, EnvValue] = {}
    provider_options: ProviderOptions = {}
    description: Text = ""
    template: TemplateName = DEFAULT_TEMPLATE
    gpus: Optional[Gpus] = Field(default=None, description="GPUs of this environment's cuda and "
                                 "tensorrt cells; default: measure.gpus")
    hosts: Optional[HostSelector] = Field(default=None, description="host names or labels "
                                          "({gpu: true}) this environment runs on; default: all")
    threads: Optional[Threads] = None
    cpuset: Optional[Cpuset] = None
    memory_limit: Optional[MemoryText] = None
    concurrency: Optional[Concurrency] = None
    session: SessionSpec = SessionSpec()

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, value: list[str]) -> list[str]:
        return _listed_once(value, "provider ")

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
        "description": "axes (base, python, providers, a runtime package name, "
                       "packages.<name>, threads, cpuset, memory_limit, concurrency, "
                       "session.<setting>, "
                       "session.config.<key>, provider_options.<provider>.<option>) mapping "
                       "to lists, plus optional include and exclude",
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
    gpus: Optional[Gpus] = None
    hosts: Optional[HostSelector] = None
    threads: Optional[Threads] = None
    cpuset: Optional[Cpuset] = None
    memory_limit: Optional[MemoryText] = None
    concurrency: Optional[Concurrency] = None
    session: Optional[SessionSpec] = None

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


def _one_or_list(value: Any) -> Any:
    """`backend: torch` and `backend: [onnxruntime, torch]` alike: a list of distinct values."""
    values = value if isinstance(value, list) else [value]
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise _custom(f"{repeated[0]!r} is listed twice.", "list each value once.")
    return values


class WorkloadSpec(_Strict):
    model: Annotated[PathText, Field(description="zoo:<name> or a path to an .onnx/.pt file")]
    backend: Annotated[list[Backend], BeforeValidator(_one_or_list), Field(
        min_length=1, description="onnxruntime, torch, or a list: one workload per backend "
        "(<name>-ort, <name>-torch), compared within each environment")] = ["onnxruntime"]
    batch: Optional[Annotated[list[Batch], BeforeValidator(_one_or_list), Field(
        min_length=1, description="samples per request (the first dimension of inputs whose "
        "first dimension is dynamic), or a list: one workload per size (<name>-b8)")]] = None
    network: Optional[Slug] = Field(default=None, description=(
        "workloads of one network are compared with each other within each environment; "
        "default: the workload's name (a backend or batch list shares it)"))
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
    rounds: Optional[Annotated[int, Field(ge=1, le=100, description=(
        "interleaved rounds: each round runs repeats/rounds processes of every cell in turn; "
        "null: as many rounds as repeats"))]] = _MEASURE.rounds
    threads: Optional[Annotated[int, Field(ge=1, le=1024)]] = _MEASURE.threads
    cpuset: Optional[Cpuset] = _MEASURE.cpuset
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] = _MEASURE.timeout_s
    build_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = _MEASURE.build_timeout_s
    memory_limit: MemoryText = _MEASURE.memory_limit
    pids_limit: Annotated[int, Field(ge=16, le=1_000_000)] = _MEASURE.pids_limit
    gpus: Gpus = Field(default=_MEASURE.gpus, description="GPUs of cuda and tensorrt cells (all, "
                       "or indexes/UUIDs); an environment's gpus: wins")
    adaptive: bool = Field(default=_MEASURE.adaptive, description=(
        "look at each comparison every look_every rounds and stop a cell once all its "
        "comparisons are settled (repeats is then the most rounds); false: every round"))
    look_every: Annotated[int, Field(ge=1, le=100, description=(
        "rounds between two looks of an adaptive run; below the rounds"))] = _MEASURE.look_every

    @model_validator(mode="after")
    def _rounds_divide_repeats(self) -> "MeasureSpec":
        # Every round runs the same number of processes per cell: the paired verdict compares
        # rounds with each other, so they must be alike.
        rounds = self.rounds
        if rounds is not None and (rounds > self.repeats or self.repeats % rounds):
            divisors = [d for d in range(1, self.repeats + 1) if self.repeats % d == 0]
            raise _custom(f"rounds: {rounds} does not divide repeats: {self.repeats} (each "
                          "round runs repeats/rounds processes of every cell).",
                          f"set rounds to one of {divisors}, or null for {self.repeats} rounds "
                          "of one process each.")
        return self

    @model_validator(mode="after")
    def _looks_before_the_budget(self) -> "MeasureSpec":
        # A look_every asked for but at or past the budget would never look before the end:
        # an adaptive run that silently runs every round. The default (8) is left alone, so a
        # small quick matrix (repeats: 5) simply has its one look at the end.
        rounds = self.rounds if self.rounds is not None else self.repeats
        if self.adaptive and "look_every" in self.model_fields_set and self.look_every >= rounds:
            raise _custom(f"look_every: {self.look_every} leaves no look before the last of "
                          f"{rounds} rounds, so no cell could leave the rounds early.",
                          f"set look_every below {rounds} (8 is the default), raise "
                          "repeats/rounds, or set adaptive: false to run every round.")
        return self


_VERDICT = VerdictSettings()
# Limits shared with the command line's --alpha and --min-effect (envmatrix.gate).
ALPHA_RANGE = (0.001, 0.5)
MIN_EFFECT_RANGE = (0.0, 1.0)
FailOnWord = Literal["slower", "parity", "invalid"]


class VerdictSpec(_Strict):
    alpha: Annotated[float, Field(ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1], description=(
        "error rate of the verdict: intervals are (1 - alpha) intervals"))] = _VERDICT.alpha
    min_effect: Annotated[float, Field(ge=MIN_EFFECT_RANGE[0], le=MIN_EFFECT_RANGE[1],
                                       description=(
        "smallest change (0.02 = 2%) that counts as faster or slower"))] = _VERDICT.min_effect
    fail_on: list[FailOnWord] = Field(default=[], description=(
        "verdicts that make `matrix` and `report` exit 11: slower, parity, invalid"))
    min_node_share: Annotated[float, Field(ge=0, le=1, description=(
        "warn when the requested execution provider ran less than this share of the compute "
        "nodes (1: all of them)"))] = _VERDICT.min_node_share
    equivalence: Annotated[float, Field(gt=0, le=1, description=(
        "equivalent when the whole interval lies within +-equivalence (0.05 = 5%)"))] = \
        _VERDICT.equivalence
    error_rate: Literal["comparison", "run"] = Field(
        default="comparison", description=("comparison: each verdict errs at most alpha; run: "
                                           "all the run's verdicts together (Holm)"))

    @field_validator("fail_on")
    @classmethod
    def _unique_words(cls, value: list[str]) -> list[str]:
        return _listed_once(value)


class BuildSpec(_Strict):
    ca_bundle: Optional[PathText] = Field(
        default="auto", description="auto: the host's PIP_CERT, SSL_CERT_FILE, "
        "REQUESTS_CA_BUNDLE or pip's cert setting; null: none; else a PEM file")
    wheelhouse: Optional[PathText] = None
    host_wheels: list[PackageName] = Field(default=[], description=(
        "packages whose wheel the host's pip downloads for each environment pinning them "
        "(that pin, its Python, no dependencies) into the build's wheelhouse"))
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
    verdict: VerdictSpec = VerdictSpec()
    baseline: Optional[Slug] = None
    build: BuildSpec = BuildSpec()
    model_export: ModelExportSpec = ModelExportSpec()
    model_dirs: list[PathText] = []
    hosts: dict[Slug, Optional[HostSpec]] = Field(default={}, description=(
        "Docker engines that measure cells; default: the local engine"))


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
        why = ctx.get("why", f"unknown key {key!r}{problems.did_you_mean(key, known)}")
        fix = ctx.get("fix", f"remove it or use one of: {', '.join(known)}.")
        return Problem(path, why + ".", fix, at_key=True)
    if kind == "missing":
        example = _MISSING_EXAMPLES.get(str(path[-1]), f"{path[-1]}: ...")
        return Problem(path[:-1], f"required key {path[-1]!r} is missing.",
                       f"add `{example}` (see {REFERENCE}).")
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = problems.did_you_mean(str(err["input"]), choices)
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


def validate(model: type[BaseModel], data: Any, root: KeyPath = ()) -> Any:
    """Validate or raise PlanError with every problem found, each in our words."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise problems.PlanError(_problem_from_error(e, root) for e in err.errors()) from None
