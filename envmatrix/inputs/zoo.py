"""The workload zoo: small, deterministic models made on the host, so nothing is downloaded.

Each model is built op by op with `onnx.helper` from weights drawn from
`numpy.random.default_rng(seed)`, at the IR version and opset the caller asks for (the oldest
runtime in the matrix decides them: onnxruntime 1.8 reads IR 7 at most). Only ops whose opset-11
definitions old runtimes implement are used; LayerNorm is decomposed for the same reason.
The same arguments give byte-identical files, so the host can cache them.

Every model takes one sample (first dim 1) unless `dynamic_batch=True`: then the first dim of
every input and output is the named dynamic dim "batch" (BATCH_DIM), and each sample of a
batch is computed independently of the others.

With `torchscript=True` the same network with the same weights is also saved as TorchScript
(see `envmatrix.inputs.zoo_torch`), for the torch backend.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from envmatrix.rundir.layout import atomic_write_bytes
from envmatrix.rundir.plan import ZOO_MODELS
from envmatrix_harness.inputs import make_inputs

MIN_OPSET = 11  # Clip takes min/max as inputs from opset 11 on; older opsets are not built
VOCAB_SIZE = 1024  # >= INT_HIGH: every token id the harness generates must be a valid row
SEQ_LEN = 128
MASK_BIAS = -10000.0  # added to attention scores of masked-out tokens (BERT's convention)
LN_EPS = 1e-5
BATCH_DIM = "batch"  # name of the dynamic first dim of models written with dynamic_batch=True
# Batch size of the example a dynamic-batch TorchScript twin is traced on: a trace at 1 could
# bake in size-1 broadcasting; at 2 the first dim is a real batch dim (and 1 not special).
TRACE_BATCH = 2


@dataclass(frozen=True)
class InputSpec:
    """One model input or output: dims are ints, or strings for named dynamic dims."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64"
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ZooModel:
    name: str
    onnx_path: Path
    torchscript_path: Path | None
    ir_version: int
    opset: int
    inputs: tuple[InputSpec, ...]
    outputs: tuple[InputSpec, ...]
    note: str = ""  # why a requested TorchScript file was not written, else empty


class ZooWarning(UserWarning):
    """Something asked of the zoo could not be done; the model itself is fine."""


def write_model(
    name: str,
    out_dir: Path,
    *,
    ir_version: int = 7,
    opset: int = 11,
    seed: int = 0,
    torchscript: bool = False,
    perturb: float = 0.0,
    dynamic_batch: bool = False,
) -> ZooModel:
    """Write `<out_dir>/<name>.onnx` (and `<name>.pt` when asked and torch is importable).

    `dynamic_batch`: first dim of every input and output is BATCH_DIM instead of 1 (False
    writes the very bytes written before this option existed).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}: choose one of {', '.join(ZOO_MODELS)}")
    if opset < MIN_OPSET:
        raise ValueError(f"zoo models need opset >= {MIN_OPSET}, got {opset}")
    graph = _GraphBuilder(opset, seed, perturb, BATCH_DIM if dynamic_batch else 1)
    _BUILDERS[name](graph)
    model = graph.to_model(name, ir_version)
    onnx.checker.check_model(model, full_check=True)
    out_dir = Path(out_dir)
    onnx_path = out_dir / f"{name}.onnx"
    write_if_changed(onnx_path, model.SerializeToString(deterministic=True))
    inputs, outputs = io_specs(model)
    ts_path, note = None, ""
    if torchscript:
        example = example_inputs(inputs, seed, batch=TRACE_BATCH if dynamic_batch else None)
        ts_path, note = _write_torchscript(name, model, example, out_dir / f"{name}.pt")
    return ZooModel(name, onnx_path, ts_path, ir_version, opset, inputs, outputs, note)


def io_specs(model: onnx.ModelProto) -> tuple[tuple[InputSpec, ...], tuple[InputSpec, ...]]:
    """The graph's real inputs (initializers excluded) and outputs as InputSpecs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_spec(vi) for vi in model.graph.input if vi.name not in initializers)
    return inputs, tuple(_spec(vi) for vi in model.graph.output)


def write_if_changed(path: Path, data: bytes) -> None:
    """Write atomically, but leave an identical file alone so its mtime (and caches) stay."""
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def _spec(vi: onnx.ValueInfoProto) -> InputSpec:
    if not vi.type.HasField("tensor_type"):
        raise ValueError(f"{vi.name!r} is not a tensor (sequence/map inputs are not supported)")
    tensor_type = vi.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    dims: list[int | str] = []
    for i, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:  # a named or anonymous dynamic dim: name anonymous ones so they can be reported
            dims.append(dim.dim_param or f"{vi.name}_dim{i}")
    return InputSpec(vi.name, dtype, tuple(dims))


def _write_torchscript(
    name: str, model: onnx.ModelProto, example: dict[str, np.ndarray], path: Path
) -> tuple[Path | None, str]:
    try:  # torch is optional on the host; zoo_torch imports it
        zoo_torch = importlib.import_module("envmatrix.inputs.zoo_torch")
    except ImportError as err:
        note = (
            f"TorchScript for zoo model {name!r} not written: torch is not importable on the host"
            f" ({err}); install torch (pip install torch) or use the onnxruntime backend"
        )
        warnings.warn(note, ZooWarning, stacklevel=3)
        return None, note
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    zoo_torch.save_torchscript(name, weights, example, path)
    return path, ""


def example_inputs(
    specs: Sequence[InputSpec], seed: int = 0, batch: int | None = None
) -> dict[str, np.ndarray]:
    """Inputs made by the harness's own generator, as every cell gets them (ints in [0, 1000)).

    `batch`: the first dim of every input whose first dim is dynamic (a dynamic-batch model).
    """
    def dims(spec: InputSpec) -> list[int | str]:
        shape = list(spec.shape)
        if batch is not None and shape and isinstance(shape[0], str):
            shape[0] = batch
        return shape

    feeds = make_inputs([(s.name, s.dtype, dims(s)) for s in specs], seed)
    return dict(feeds)


class _GraphBuilder:
    """Collects nodes and initializers; draws weights in a fixed order from one seeded stream."""

    def __init__(self, opset: int, seed: int, perturb: float, batch: int | str) -> None:
        self.opset = opset
        self.batch = batch  # first dim of every graph input and output: 1 or BATCH_DIM
        self.rng = np.random.default_rng(seed)
        # A separate stream, so a perturbed variant has the same base weights times the noise.
        self.noise = np.random.default_rng([seed, 1]) if perturb else None
        self.perturb = perturb
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def input(self, name: str, elem_type: int, sample_shape: Sequence[int]) -> str:
        """A graph input of one batch of samples of `sample_shape`."""
        shape = [self.batch, *sample_shape]
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, sample_shape: Sequence[int]) -> None:
        shape = [self.batch, *sample_shape]
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def weight(self, name: str, shape: Sequence[int], std: float, mean: float = 0.0) -> str:
        """A float32 weight ~ N(mean, std); perturbed by (1 + perturb * noise) when asked."""
        array = mean + std * self.rng.standard_normal(tuple(shape))
        if self.noise is not None:
            array = array * (1.0 + self.perturb * self.noise.standard_normal(array.shape))
        return self.tensor(name, array.astype(np.float32))

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, values: Sequence[float] | Sequence[int] | float, dtype: type) -> str:
        """An unnamed constant (shapes, scalars): never perturbed."""
        self._count += 1
        return self.tensor(f"const_{self._count}", np.asarray(values, dtype=dtype))

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def reduce_mean_last(self, x: str) -> str:
        if self.opset >= 18:  # axes became an input in opset 18
            return self.op("ReduceMean", [x, self.const([-1], np.int64)], keepdims=1)
        return self.op("ReduceMean", [x], axes=[-1], keepdims=1)

    def to_model(self, name: str, ir_version: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, f"envmatrix_zoo_{name}", self.inputs, self.outputs, self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="envmatrix.zoo",
            doc_string=f"envmatrix zoo model {name}: deterministic weights, not trained",
        )
        model.ir_version = ir_version
        return model


# --- cnn: MobileNet-like stem + depthwise-separable blocks, BN folded, 1000 logits ------------

CNN_STEM = 32
# (output channels, stride) of each depthwise-separable block
CNN_BLOCKS: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (512, 2))
CNN_CLASSES = 1000


def _folded_conv(g: _GraphBuilder, name: str, cout: int, cin_per_group: int, k: int) -> str:
    """Conv weight and bias with a random BatchNorm folded in, as exporters leave them."""
    fan_in = cin_per_group * k * k
    w = g.rng.standard_normal((cout, cin_per_group, k, k)) * np.sqrt(2.0 / fan_in)
    gamma = 1.0 + 0.1 * g.rng.standard_normal(cout)
    beta = 0.1 * g.rng.standard_normal(cout)
    mean = 0.1 * g.rng.standard_normal(cout)
    var = 1.0 + 0.1 * np.abs(g.rng.standard_normal(cout))
    scale = gamma / np.sqrt(var + 1e-5)
    w_folded, b_folded = w * scale[:, None, None, None], beta - mean * scale
    if g.noise is not None:
        w_folded = w_folded * (1.0 + g.perturb * g.noise.standard_normal(w_folded.shape))
    g.tensor(f"{name}.b", b_folded.astype(np.float32))
    return g.tensor(f"{name}.w", w_folded.astype(np.float32))


def _conv(g: _GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, stride: int,
          group: int = 1) -> str:
    w = _folded_conv(g, name, cout, cin // group, k)
    pad = k // 2
    return g.op("Conv", [x, w, f"{name}.b"], kernel_shape=[k, k], strides=[stride, stride],
                pads=[pad] * 4, group=group)


def _relu6(g: _GraphBuilder, x: str) -> str:
    return g.op("Clip", [x, g.const(0.0, np.float32), g.const(6.0, np.float32)])


def _build_cnn(g: _GraphBuilder) -> None:
    x = g.input("input", TensorProto.FLOAT, [3, 224, 224])
    x = _relu6(g, _conv(g, x, "stem", 3, CNN_STEM, 3, 2))
    cin = CNN_STEM
    for i, (cout, stride) in enumerate(CNN_BLOCKS):
        x = _relu6(g, _conv(g, x, f"block{i}.dw", cin, cin, 3, stride, group=cin))
        x = g.op("Relu", [_conv(g, x, f"block{i}.pw", cin, cout, 1, 1)])
        cin = cout
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    w = g.weight("fc.w", [CNN_CLASSES, cin], std=np.sqrt(1.0 / cin))
    b = g.weight("fc.b", [CNN_CLASSES], std=0.01)
    g.output(g.op("Gemm", [x, w, b], transB=1), "logits", TensorProto.FLOAT, [CNN_CLASSES])


# --- transformer: DistilBERT-like encoder, post-LN, GELU via Erf ------------------------------

TF_HIDDEN = 256
TF_HEADS = 4
TF_FFN = 1024
TF_LAYERS = 2


def _linear(g: _GraphBuilder, x: str, name: str, fan_in: int, fan_out: int) -> str:
    """x @ W + b with W stored [in, out] (MatMul handles the 3-D activations; Gemm would not)."""
    w = g.weight(f"{name}.w", [fan_in, fan_out], std=np.sqrt(1.0 / fan_in))
    b = g.weight(f"{name}.b", [fan_out], std=0.02)
    return g.op("Add", [g.op("MatMul", [x, w]), b])


def _layer_norm(g: _GraphBuilder, x: str, name: str) -> str:
    """LayerNormalization is opset 17; old runtimes need it spelled out."""
    gamma = g.weight(f"{name}.gamma", [TF_HIDDEN], std=0.05, mean=1.0)
    beta = g.weight(f"{name}.beta", [TF_HIDDEN], std=0.05)
    centered = g.op("Sub", [x, g.reduce_mean_last(x)])
    var = g.reduce_mean_last(g.op("Pow", [centered, g.const(2.0, np.float32)]))
    std = g.op("Sqrt", [g.op("Add", [var, g.const(LN_EPS, np.float32)])])
    return g.op("Add", [g.op("Mul", [g.op("Div", [centered, std]), gamma]), beta])


def _gelu(g: _GraphBuilder, x: str) -> str:
    erf = g.op("Erf", [g.op("Div", [x, g.const(np.sqrt(2.0), np.float32)])])
    half_x = g.op("Mul", [x, g.const(0.5, np.float32)])
    return g.op("Mul", [half_x, g.op("Add", [erf, g.const(1.0, np.float32)])])


def _attention(g: _GraphBuilder, x: str, name: str, mask_bias: str) -> str:
    head_dim = TF_HIDDEN // TF_HEADS
    split = g.const([0, 0, TF_HEADS, head_dim], np.int64)  # 0: keep that dim (batch, seq)

    def heads(proj: str, perm: list[int]) -> str:
        y = _linear(g, x, f"{name}.{proj}", TF_HIDDEN, TF_HIDDEN)
        return g.op("Transpose", [g.op("Reshape", [y, split])], perm=perm)

    q = heads("q", [0, 2, 1, 3])  # [b, h, s, d]
    k_t = heads("k", [0, 2, 3, 1])  # [b, h, d, s]
    v = heads("v", [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, k_t]), g.const(head_dim**-0.5, np.float32)])
    probs = g.op("Softmax", [g.op("Add", [scores, mask_bias])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const([0, 0, TF_HIDDEN], np.int64)])
    return _linear(g, ctx, f"{name}.out", TF_HIDDEN, TF_HIDDEN)


def _mask_bias(g: _GraphBuilder, mask: str) -> str:
    """[b, s] 0/1 mask -> [b, 1, 1, s] additive bias; values are clipped to 0..1 first."""
    m = g.op("Clip", [g.op("Cast", [mask], to=TensorProto.FLOAT),
                      g.const(0.0, np.float32), g.const(1.0, np.float32)])
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), m]),
                        g.const(MASK_BIAS, np.float32)])
    return g.op("Reshape", [bias, g.const([0, 1, 1, SEQ_LEN], np.int64)])


def _build_transformer(g: _GraphBuilder) -> None:
    ids = g.input("input_ids", TensorProto.INT64, [SEQ_LEN])
    mask = g.input("attention_mask", TensorProto.INT64, [SEQ_LEN])
    tokens = g.weight("embed.tokens", [VOCAB_SIZE, TF_HIDDEN], std=1.0)
    positions = g.weight("embed.positions", [SEQ_LEN, TF_HIDDEN], std=0.5)
    x = g.op("Add", [g.op("Gather", [tokens, ids], axis=0), positions])  # [b,s,h] + [s,h]
    x = _layer_norm(g, x, "embed.ln")
    bias = _mask_bias(g, mask)
    for i in range(TF_LAYERS):
        x = _layer_norm(g, g.op("Add", [x, _attention(g, x, f"layer{i}.attn", bias)]),
                        f"layer{i}.ln1")
        hidden = _gelu(g, _linear(g, x, f"layer{i}.ffn1", TF_HIDDEN, TF_FFN))
        x = _layer_norm(g, g.op("Add", [x, _linear(g, hidden, f"layer{i}.ffn2", TF_FFN,
                                                   TF_HIDDEN)]), f"layer{i}.ln2")
    g.output(x, "last_hidden_state", TensorProto.FLOAT, [SEQ_LEN, TF_HIDDEN])
    first = g.op("Gather", [x, g.const(0, np.int64)], axis=1)  # [CLS]-style token: [b, h]
    pooled = g.op("Tanh", [_linear(g, first, "pooler", TF_HIDDEN, TF_HIDDEN)])
    g.output(pooled, "pooled_output", TensorProto.FLOAT, [TF_HIDDEN])


# --- mlp: Gemm + Relu stack ----------------------------------------------------------------

MLP_WIDTHS: tuple[int, ...] = (256, 512, 512, 256, 10)  # input, hidden..., classes


def _build_mlp(g: _GraphBuilder) -> None:
    x = g.input("input", TensorProto.FLOAT, [MLP_WIDTHS[0]])
    layers = list(zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:]))
    for i, (fan_in, fan_out) in enumerate(layers):
        w = g.weight(f"fc{i}.w", [fan_out, fan_in], std=np.sqrt(2.0 / fan_in))
        b = g.weight(f"fc{i}.b", [fan_out], std=0.05)
        x = g.op("Gemm", [x, w, b], transB=1)
        if i < len(layers) - 1:
            x = g.op("Relu", [x])
    g.output(x, "logits", TensorProto.FLOAT, [MLP_WIDTHS[-1]])


_BUILDERS: dict[str, Callable[[_GraphBuilder], None]] = {
    "cnn": _build_cnn,
    "transformer": _build_transformer,
    "mlp": _build_mlp,
}
