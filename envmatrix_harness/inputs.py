"""Deterministic input tensors, identical bytes on every numpy version.

numpy's random streams are not promised to stay the same across releases, so inputs are made
from a counter-based hash (splitmix64) computed with plain uint64 array arithmetic, which wraps
identically in every numpy since 1.13. Each input gets its own 64-bit key derived with sha256
from the seed and the input's name, so adding an input never changes another input's bytes.

Value ranges (documented contract, see envmatrix_harness/README.md):
- floating point: k / 2**23 - 1 for k in [0, 2**24): uniform in [-1, 1), exact in float32;
- integers: [0, 1000) (token-id like), narrowed to the type's range for 8/16-bit types;
- bool: the top bit of the hash.
`values` fill a whole tensor (or a scalar) with one number; `fixed` tensors (from an .npz file)
are taken as they are, after checking their names, dtypes and fixed dimensions.
"""

import collections
import hashlib

import numpy as np

from .errors import HarnessInputError, UsageError

GENERATOR_VERSION = "splitmix64/1"
INT_HIGH = 1000  # generated integers lie in [0, INT_HIGH)

# onnxruntime's type strings -> numpy dtype names; numpy names are accepted as they are.
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint64)": "uint64",
    "tensor(uint32)": "uint32",
    "tensor(uint16)": "uint16",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
SUPPORTED = frozenset(ORT_TYPES.values())

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def normalize_dtype(name, dtype_str):
    """'tensor(float)' or 'float32' -> 'float32'; anything we cannot generate is an error.

    None (a TorchScript model says nothing about dtypes) means float32.
    """
    text = "float32" if dtype_str is None else str(dtype_str)
    text = ORT_TYPES.get(text, text)
    if text not in SUPPORTED:
        raise HarnessInputError(
            "input '{}' has type {}, which the harness cannot feed; supported: {}".format(
                name, dtype_str, ", ".join(sorted(SUPPORTED))))
    return text


def input_key(seed, name):
    """The 64-bit key of one input's stream: independent of the other inputs."""
    text = f"envmatrix-inputs/1|{int(seed)}|{name}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def splitmix64(key, count):
    """`count` 64-bit hashes of (key, 1..count); uint64 arrays wrap silently on overflow."""
    index = np.arange(1, count + 1, dtype=np.uint64)
    z = np.uint64(key) + index * _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def generate(name, dtype, shape, seed):
    """One deterministic tensor of `dtype` (numpy name) and `shape` (tuple of ints)."""
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    bits = splitmix64(input_key(seed, name), count)
    np_dtype = np.dtype(dtype)
    if np_dtype.kind == "f":
        data = (bits >> np.uint64(40)).astype(np.float64) / float(2 ** 23) - 1.0
    elif np_dtype.kind == "b":
        data = (bits >> np.uint64(63)) == np.uint64(1)
    else:
        high = min(INT_HIGH, int(np.iinfo(np_dtype).max) + 1)
        data = bits % np.uint64(high)
    return contiguous(data.astype(np_dtype).reshape(shape))


def contiguous(array):
    """A C-contiguous array of the same shape (np.ascontiguousarray turns 0-d into 1-d)."""
    return array if array.flags.c_contiguous else np.array(array, order="C")


def parse_value(name, dtype, text):
    """'16000' -> the number in the input's dtype; bools accept true/false/1/0."""
    np_dtype = np.dtype(dtype)
    word = str(text).strip()
    try:
        if np_dtype.kind == "b":
            lowered = word.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(word)
            return lowered in ("true", "1")
        if np_dtype.kind in "iu":
            number = int(word, 0)
            info = np.iinfo(np_dtype)
            if not info.min <= number <= info.max:
                raise ValueError(word)
            return number
        return float(word)
    except ValueError:
        raise HarnessInputError(
            f"--value {name}={text}: '{text}' is not a valid {dtype} value (the model's type for "
            "this input)") from None


def _dim_label(dim):
    return f"'{dim}'" if isinstance(dim, str) and dim else "unnamed"


def _is_fixed(dim):
    return isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0


def resolve_shape(name, model_shape, given):
    """The concrete shape of one input: the model's, with dynamic dims taken from `given`."""
    if given is not None:
        given = tuple(int(d) for d in given)
        if model_shape is not None:
            check_against_model(name, model_shape, given, f"--shape {name}")
        return given
    if model_shape is None:
        raise HarnessInputError(
            f"input '{name}' has an unknown rank; pass --shape {name}=D1,D2,...")
    for index, dim in enumerate(model_shape):
        if not _is_fixed(dim):
            raise HarnessInputError(
                f"input '{name}' dimension {index} ({_dim_label(dim)}) is dynamic and unset; "
                f"pass --shape {name}=D1,...,D{len(model_shape)} "
                f"(model shape {format_shape(model_shape)})")
    return tuple(model_shape)


def check_against_model(name, model_shape, shape, what):
    """A given shape must have the model's rank and agree with every fixed dimension."""
    if len(shape) != len(model_shape):
        raise HarnessInputError(
            f"{what} has rank {len(shape)} but the model's input '{name}' has rank "
            f"{len(model_shape)} (shape {format_shape(model_shape)})")
    for index, (want, got) in enumerate(zip(model_shape, shape)):
        if _is_fixed(want) and want != got:
            raise HarnessInputError(
                f"{what} gives dimension {index} = {got} but the model fixes it at {want} "
                f"(shape {format_shape(model_shape)})")


def format_shape(shape):
    if shape is None:
        return "unknown"
    return "[" + ", ".join(str(d) if _is_fixed(d) else str(d or "?") for d in shape) + "]"


def _check_names(option, names, known):
    for name in names:
        if name not in known:
            raise HarnessInputError(
                "{} names input '{}', which the model does not have; model inputs: {}".format(
                    option, name, ", ".join(known)))


def _fixed_tensor(name, dtype, model_shape, array):
    array = np.asarray(array)
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise HarnessInputError(
            f"--inputs tensor '{name}' is {array.dtype} but the model wants {dtype}")
    if model_shape is not None:
        check_against_model(name, model_shape, array.shape, f"--inputs tensor '{name}'")
    return contiguous(array)


def make_inputs(specs, seed, shapes=None, values=None, fixed=None):
    """Input tensors for a model, in the model's input order.

    specs: list of (name, dtype_str, shape); dtype_str a numpy name or onnxruntime's
        'tensor(float)' form (None: unknown, float32 when generated); shape a list of int, or
        None/str for dynamic dims (or None for an unknown rank).
    seed: int; shapes: {name: tuple of ints} fixing dynamic dims; values: {name: text} filling
        an input with one number; fixed: {name: ndarray} taken as they are (an .npz file).
    Raises HarnessInputError (a ValueError) with a one-line message naming the input and the fix.
    """
    shapes = dict(shapes or {})
    values = dict(values or {})
    fixed = dict(fixed or {})
    known = [spec[0] for spec in specs]
    _check_names("--shape", shapes, known)
    _check_names("--value", values, known)
    _check_names("--inputs file", fixed, known)
    for name in fixed:
        for option, given in (("--value", values), ("--shape", shapes)):
            if name in given:
                raise HarnessInputError(
                    f"input '{name}' is given both by --inputs and {option}; drop one")
    feeds = collections.OrderedDict()
    for name, dtype_str, model_shape in specs:
        model_shape = None if model_shape is None else list(model_shape)
        if name in fixed:
            dtype = None if dtype_str is None else normalize_dtype(name, dtype_str)
            feeds[name] = _fixed_tensor(name, dtype, model_shape, fixed[name])
            continue
        dtype = normalize_dtype(name, dtype_str)
        shape = resolve_shape(name, model_shape, shapes.get(name))
        if name in values:
            number = parse_value(name, dtype, values[name])
            feeds[name] = np.full(shape, number, dtype=np.dtype(dtype))
        else:
            feeds[name] = generate(name, dtype, shape, seed)
    return feeds


def check_batch(specs, feeds, batch):
    """--batch N against the tensors made for a model (specs as in make_inputs): the first
    dimension of a tensor is its batch, which the host set (--shape, --inputs).

    Every fed input whose first dimension the model leaves dynamic, or whose shape it does not
    declare at all (TorchScript), must have N there. Inputs with a fixed first dimension are
    left alone (silero's state [2, batch, 128]) unless the model has no dynamic one: then the
    batch is what the model fixes, and N must be it. Scalars carry no batch.
    """
    if batch is None:
        return
    declared = dict((name, shape) for name, _, shape in specs)
    dynamic, fixed = 0, []
    for name, array in feeds.items():
        shape = declared.get(name)
        if array.ndim == 0:
            continue
        if shape is not None and _is_fixed(shape[0]):
            fixed.append((name, shape))
            continue
        dynamic += 1
        if array.shape[0] != batch:
            raise UsageError(
                "--batch {}: input '{}' is fed with shape {}, whose first dimension (the batch) "
                "is not {}; feed it {} (--shape {}={} or an --inputs file)".format(
                    batch, name, list(array.shape), batch,
                    [batch] + list(array.shape[1:]), name,
                    ",".join(str(d) for d in (batch,) + array.shape[1:])))
    # a model of scalars only takes one sample per request
    firsts = set(shape[0] for _, shape in fixed) or {1}
    if not dynamic and firsts != {batch}:
        raise UsageError(
            "--batch {}: the model has no dynamic batch dimension (inputs: {}); re-export it "
            "with a dynamic first dimension, or drop --batch".format(
                batch, ", ".join(f"{name} {format_shape(shape)}"
                                 for name, shape in fixed) or "scalars only"))


def parse_assignments(option, items):
    """['a=1', 'b=2'] -> OrderedDict; a malformed item is a one-line error naming the option."""
    result = collections.OrderedDict()
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise HarnessInputError(
                f"{option} {item}: expected NAME=VALUE")
        if name.strip() in result:
            raise HarnessInputError(f"{option} {item}: '{name.strip()}' given twice")
        result[name.strip()] = text.strip()
    return result


def parse_shapes(items):
    """['x=1,3,224,224'] -> {'x': (1, 3, 224, 224)}; dims must be non-negative integers."""
    shapes = collections.OrderedDict()
    for name, text in parse_assignments("--shape", items).items():
        try:
            dims = tuple(int(part) for part in text.split(",")) if text else ()
        except ValueError:
            dims = (-1,)
        if any(d < 0 for d in dims):
            raise HarnessInputError(
                f"--shape {name}={text}: expected comma-separated non-negative integers, "
                f"e.g. --shape {name}=1,3,224,224")
        shapes[name] = dims
    return shapes


def load_npz(path):
    """{name: ndarray} from an .npz file, read fully so the file can be closed."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return collections.OrderedDict((name, archive[name]) for name in archive.files)
    except (OSError, ValueError) as err:
        raise HarnessInputError(f"--inputs {path}: cannot read it as .npz ({err})") from err
