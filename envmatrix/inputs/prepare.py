"""Workloads prepared once on the host, shared read-only by every cell.

For each workload this writes, into its own folder: the model (a zoo model made by
`envmatrix.inputs.zoo`, or the user's file copied in) and `inputs.npz` (uncompressed), so every cell
reads the same bytes whatever numpy it has. Inputs come from the user's `.npz` after checking
it against the model, or from the harness's own generator (`harness.inputs.make_inputs`), the
very code that would make them inside a container.

A workload's `batch:` sets the first dim of every input the model declares with a dynamic
first dim (zoo models are then written with one); see `prepare_workload`.

Every problem is a `ConfigError` naming the workload, the matrix key, the input and the fix.
"""

from __future__ import annotations

import difflib
import io
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from envmatrix.errors import ConfigError
from envmatrix.inputs import zoo
from envmatrix.inputs.zoo import InputSpec
from envmatrix.rundir.layout import atomic_write_bytes
from envmatrix.rundir.plan import ZOO_MODELS, Workload
from envmatrix_harness.errors import HarnessInputError
from envmatrix_harness.inputs import make_inputs

INPUTS_FILE = "inputs.npz"
# Zoo weights never depend on the workload's seed (that one picks the inputs), so two
# workloads on the same zoo model measure the same network.
ZOO_WEIGHT_SEED = 0


@dataclass(frozen=True)
class PreparedWorkload:
    name: str
    model_path: Path  # the .onnx (or, for a user TorchScript model, the .pt) every cell loads
    torchscript_path: Path | None  # for the torch backend
    inputs_path: Path  # inputs.npz, one array per model input, in the model's input order
    input_specs: tuple[InputSpec, ...]  # the model's inputs as it declares them
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # concrete, per input
    values: dict[str, str] = field(default_factory=dict)  # the workload's fixed values


class ModelVersionWarning(UserWarning):
    """A user model is newer (IR or opset) than the oldest runtime of the matrix reads."""


def prepare_workload(
    workload: Workload,
    out_dir: Path,
    *,
    ir_version: int,
    opset: int,
    base_dir: Path | None = None,
) -> PreparedWorkload:
    """Write the workload's model and inputs.npz into `out_dir`.

    `ir_version`/`opset`: what zoo models are written with (the oldest runtime's limits);
    a user model newer than that is copied as it is, with a ModelVersionWarning.
    `base_dir`: the matrix file's folder, against which relative paths resolve (default: cwd).

    `workload.batch` (when set) is the first dim of every input whose declared first dim is
    dynamic: zoo models are written with a dynamic first dim; a user model needs at least one
    such input. Other dynamic dims of such an input still come from `shapes:`, whose first dim
    is then replaced by the batch. Inputs from a user .npz (and so a user TorchScript model)
    fix the batch themselves and cannot be combined with it.
    """
    _check_batch_source(workload)
    base = Path.cwd() if base_dir is None else Path(base_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if workload.is_zoo:
        model_path, ts_path, specs = _zoo_model(workload, out_dir, ir_version, opset)
    else:
        model_path, ts_path, specs = _user_model(workload, out_dir, base, ir_version, opset)
    feeds = _make_feeds(workload, specs, base)
    buffer = _npz_bytes(feeds)
    atomic_write_bytes(out_dir / INPUTS_FILE, buffer)
    return PreparedWorkload(
        name=workload.name,
        model_path=model_path,
        torchscript_path=ts_path,
        inputs_path=out_dir / INPUTS_FILE,
        input_specs=specs,
        shapes={name: tuple(int(d) for d in array.shape) for name, array in feeds.items()},
        values=dict(workload.values),
    )


def model_versions(path: Path) -> tuple[int, dict[str, int]]:
    """(IR version, {opset domain: version}) of an ONNX file; "" is the default domain."""
    model = _load_onnx(Path(path), what=f"ONNX file {path}")
    opsets = {}
    for entry in model.opset_import:
        domain = "" if entry.domain in ("", "ai.onnx") else entry.domain
        opsets[domain] = int(entry.version)
    return int(model.ir_version), opsets


def read_specs(path: Path) -> tuple[InputSpec, ...]:
    """The inputs an ONNX file declares (initializers excluded), dims as int or name."""
    return zoo.io_specs(_load_onnx(Path(path), what=f"ONNX file {path}"))[0]


# --- models ------------------------------------------------------------------------------


def _where(workload: Workload, key: str) -> str:
    return f"workload {workload.name!r} (matrix key workloads.{workload.name}.{key})"


def _zoo_model(
    workload: Workload, out_dir: Path, ir_version: int, opset: int
) -> tuple[Path, Path | None, tuple[InputSpec, ...]]:
    name = workload.model.split(":", 1)[1]
    if name not in ZOO_MODELS:
        choices = ", ".join(f"zoo:{n}" for n in ZOO_MODELS)
        raise ConfigError(
            f"{_where(workload, 'model')}: {workload.model!r} is not in the zoo"
            f"{_hint(name, ZOO_MODELS)}; use one of {choices}, or a path to an .onnx file"
        )
    want_torch = workload.backend == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zoo.ZooWarning)  # turned into a ConfigError below
        made = zoo.write_model(name, out_dir, ir_version=ir_version, opset=opset,
                               seed=ZOO_WEIGHT_SEED, torchscript=want_torch,
                               dynamic_batch=workload.batch is not None)
    if want_torch and made.torchscript_path is None:
        raise ConfigError(f"{_where(workload, 'backend')}: {made.note}")
    return made.onnx_path, made.torchscript_path, made.inputs


def _user_model(
    workload: Workload, out_dir: Path, base: Path, ir_version: int, opset: int
) -> tuple[Path, Path | None, tuple[InputSpec, ...]]:
    source = _existing_file(workload, "model", workload.model, base)
    if source.suffix == ".pt":
        if workload.backend != "torch":
            raise ConfigError(
                f"{_where(workload, 'backend')}: {source.name} is a TorchScript file; "
                "set backend: torch, or give an .onnx model"
            )
        return _user_torchscript(workload, source, out_dir, base)
    if source.suffix != ".onnx":
        raise ConfigError(
            f"{_where(workload, 'model')}: {source} is neither an .onnx nor a TorchScript .pt "
            "file; give an ONNX model, or zoo:<name> for a generated one"
        )
    if workload.backend == "torch":
        raise ConfigError(
            f"{_where(workload, 'backend')}: backend 'torch' needs a TorchScript .pt model or a "
            f"zoo model, not {source.name}; set backend: onnxruntime, or give the .pt file"
        )
    model = _load_onnx(source, what=f"{_where(workload, 'model')}: {source}")
    _warn_if_newer(workload, source, model, ir_version, opset)
    target = out_dir / source.name
    _copy(source, target)
    for location in _external_data(model):  # weights stored beside the .onnx file
        _copy(source.parent / location, out_dir / location)
    try:
        specs = zoo.io_specs(model)[0]
    except (ValueError, KeyError) as err:  # KeyError: an element type numpy has no name for
        raise ConfigError(f"{_where(workload, 'model')}: {source.name} has an input the "
                          f"harness cannot feed ({err}); use a model with tensor inputs") from err
    return target, None, specs


def _user_torchscript(
    workload: Workload, source: Path, out_dir: Path, base: Path
) -> tuple[Path, Path | None, tuple[InputSpec, ...]]:
    """A .pt file says nothing about its inputs: they must come from the user's .npz."""
    if workload.inputs is None:
        raise ConfigError(
            f"{_where(workload, 'inputs')}: a TorchScript model ({source.name}) does not declare "
            "its inputs; give an .npz of input tensors under `inputs:`"
        )
    arrays = _load_npz(workload, _existing_file(workload, "inputs", workload.inputs, base))
    specs = tuple(InputSpec(n, str(a.dtype), tuple(a.shape)) for n, a in arrays.items())
    target = out_dir / source.name
    _copy(source, target)
    return target, target, specs


def _warn_if_newer(
    workload: Workload, source: Path, model: onnx.ModelProto, ir_version: int, opset: int
) -> None:
    default_opset = max(
        (e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), default=0
    )
    if model.ir_version > ir_version or default_opset > opset:
        warnings.warn(
            f"{_where(workload, 'model')}: {source.name} has IR version {model.ir_version} and "
            f"opset {default_opset}, newer than the IR {ir_version} / opset {opset} the oldest "
            "runtime in the matrix reads; expect those cells to fail (re-export the model with "
            "an older opset to include them)",
            ModelVersionWarning,
            stacklevel=4,
        )


def _external_data(model: onnx.ModelProto) -> list[str]:
    """Files (relative to the model) holding weights stored outside the .onnx file."""
    locations = set()
    for tensor in model.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if Path(location).is_absolute() or ".." in Path(location).parts:
                raise ConfigError(f"external data location {location!r} of tensor "
                                  f"{tensor.name!r} must be a path inside the model's folder")
            locations.add(location)
    return sorted(locations)


# --- inputs ------------------------------------------------------------------------------


def _make_feeds(
    workload: Workload, specs: Sequence[InputSpec], base: Path
) -> dict[str, np.ndarray]:
    """Check the workload's shapes/values/inputs against the model, then make the tensors."""
    names = [spec.name for spec in specs]
    shapes = {name: tuple(dims) for name, dims in workload.shapes}
    values = dict(workload.values)
    _check_known(workload, "shapes", shapes, names)
    _check_known(workload, "values", values, names)
    if workload.batch is not None:
        shapes = _batched_shapes(workload, workload.batch, specs, shapes)
    fixed: dict[str, np.ndarray] = {}
    if workload.inputs is not None:
        fixed = _load_npz(workload, _existing_file(workload, "inputs", workload.inputs, base))
        _check_npz(workload, specs, fixed, shapes, values)
    else:
        _check_dynamic(workload, specs, shapes, values)
    try:
        feeds = make_inputs([(s.name, s.dtype, list(s.shape)) for s in specs], workload.seed,
                            shapes, values, fixed)
    except HarnessInputError as err:  # what our own checks above do not catch (bad value text)
        raise ConfigError(f"workload {workload.name!r} (matrix key workloads.{workload.name}): "
                          f"{err}") from err
    return dict(feeds)


def _check_known(
    workload: Workload, key: str, given: Mapping[str, object], names: Sequence[str]
) -> None:
    for name in given:
        if name not in names:
            raise ConfigError(
                f"{_where(workload, key)}: {name!r} is not an input of the model"
                f"{_hint(name, names)}; the model's inputs are: {', '.join(names)}"
            )


def _check_dynamic(
    workload: Workload,
    specs: Sequence[InputSpec],
    shapes: Mapping[str, tuple[int, ...]],
    values: Mapping[str, str],
) -> None:
    """Every input with a dynamic dim needs a shape (a value alone fixes no dims)."""
    for spec in specs:
        dynamic = [i for i, d in enumerate(spec.shape) if isinstance(d, str)]
        if dynamic and spec.name not in shapes:
            example_dims = [1 if isinstance(d, str) else d for d in spec.shape]
            if workload.batch is not None and dynamic[0] == 0:  # shows where the batch goes
                example_dims[0] = workload.batch
            example = ",".join(str(d) for d in example_dims)
            raise ConfigError(
                f"{_where(workload, 'shapes')}: input {spec.name!r} has dynamic dims "
                f"{[spec.shape[i] for i in dynamic]} (shape {list(spec.shape)}) and no shape; "
                f"add e.g. `shapes: {{{spec.name}: [{example}]}}`"
            )
        if spec.name in shapes:
            _check_shape(workload, "shapes", spec, shapes[spec.name])


def _check_batch_source(workload: Workload) -> None:
    """A batch is made by generating inputs; tensors the user gives fix their own first dim."""
    batch = workload.batch
    if batch is None:
        return
    if batch < 1:
        raise ConfigError(f"{_where(workload, 'batch')}: batch: {batch} is not a sample count; "
                          "give an integer >= 1, or remove batch:")
    if not workload.is_zoo and Path(workload.model).suffix == ".pt":
        raise ConfigError(
            f"{_where(workload, 'batch')}: a TorchScript model ({Path(workload.model).name}) "
            f"takes its inputs from the .npz under `inputs:`, which fixes the batch size; save "
            f"the .npz at batch size {batch} and remove batch:"
        )
    if workload.inputs is not None:
        raise ConfigError(
            f"{_where(workload, 'batch')}: the .npz under `inputs:` ({workload.inputs}) fixes "
            f"every tensor, batch size included; save the .npz at batch size {batch} and remove "
            "batch:, or remove inputs: to have the inputs generated"
        )


def _batched_shapes(
    workload: Workload,
    batch: int,
    specs: Sequence[InputSpec],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, tuple[int, ...]]:
    """`shapes` with the batch as first dim of every input whose declared first dim is dynamic.

    Such an input gets the model's other dims when they are fixed; otherwise its `shapes:`
    entry gives them (first dim replaced), and without one `_check_dynamic` asks for it.
    """
    batched = [spec for spec in specs if spec.shape and isinstance(spec.shape[0], str)]
    if not batched:
        declared = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in specs)
        raise ConfigError(
            f"{_where(workload, 'batch')}: batch: {batch} sets the first dim of the inputs whose "
            f"first dim is dynamic, but {workload.model} has none (its inputs: {declared}); "
            "export the model with a dynamic first dimension, or remove batch:"
        )
    result = dict(shapes)
    for spec in batched:
        given, rest = shapes.get(spec.name), spec.shape[1:]
        if given:  # an empty shape is left for _check_shape to refuse
            result[spec.name] = (batch, *given[1:])
        elif given is None and all(isinstance(d, int) for d in rest):
            result[spec.name] = (batch, *(int(d) for d in rest))
    return result


def _check_shape(workload: Workload, key: str, spec: InputSpec, shape: Sequence[int]) -> None:
    fits = len(shape) == len(spec.shape) and all(
        isinstance(want, str) or want == got for want, got in zip(spec.shape, shape)
    )
    if not fits:
        raise ConfigError(
            f"{_where(workload, key)}: input {spec.name!r} gets shape {list(shape)} but the "
            f"model declares {list(spec.shape)}; keep the model's rank and fixed dims"
        )


def _check_npz(
    workload: Workload,
    specs: Sequence[InputSpec],
    arrays: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    values: Mapping[str, str],
) -> None:
    """The user's tensors must be exactly the model's inputs, with their dtypes and dims."""
    names = [spec.name for spec in specs]
    if shapes or values:
        raise ConfigError(
            f"{_where(workload, 'inputs')}: give either an .npz under `inputs:` or "
            "`shapes:`/`values:`, not both (the .npz already fixes every tensor)"
        )
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in names]
    if missing or extra:
        raise ConfigError(
            f"{_where(workload, 'inputs')}: {workload.inputs} holds {sorted(arrays)} but the "
            f"model's inputs are {names} (missing: {missing}, unknown: {extra}); save one array "
            "per model input under the input's name"
        )
    for spec in specs:
        array = arrays[spec.name]
        if str(array.dtype) != spec.dtype:
            raise ConfigError(
                f"{_where(workload, 'inputs')}: tensor {spec.name!r} in {workload.inputs} is "
                f"{array.dtype} but the model wants {spec.dtype}; save it with "
                f".astype('{spec.dtype}')"
            )
        _check_shape(workload, "inputs", spec, array.shape)


def _load_npz(workload: Workload, path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{_where(workload, 'inputs')}: {path} is not a readable .npz of plain arrays "
            f"({err}); write it with numpy.savez(path, name=array, ...)"
        ) from err


def _npz_bytes(feeds: Mapping[str, np.ndarray]) -> bytes:
    """np.savez (uncompressed) into memory, so the file is then written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **feeds)  # type: ignore[arg-type]  # numpy's stub confuses the kwargs
    return buffer.getvalue()


# --- files -------------------------------------------------------------------------------


def _existing_file(workload: Workload, key: str, text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    resolved = path if path.is_absolute() else (base / path)
    if not resolved.is_file():
        relative = "" if path.is_absolute() else f" (relative paths resolve against {base})"
        raise ConfigError(
            f"{_where(workload, key)}: file {resolved} not found{relative}; fix the path"
        )
    return resolved.resolve()


def _load_onnx(path: Path, what: str) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as err:
        raise ConfigError(f"{what}: file not found. Fix: correct the path") from err
    except Exception as err:  # protobuf's DecodeError and friends: not an ONNX file
        raise ConfigError(f"{what}: cannot be read as an ONNX model ({err}). Fix: point `model:` "
                          "at an .onnx file (export it with torch.onnx.export or tf2onnx)") from err


def _copy(source: Path, target: Path) -> None:
    """Copy unless the same bytes are already there (keeps mtimes; files can be large)."""
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and target.read_bytes() == source.read_bytes():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def _hint(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
