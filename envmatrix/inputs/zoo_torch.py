"""TorchScript twins of the zoo models: the same networks, fed the ONNX files' own weights.

Imported only when a TorchScript file is asked for, so torch stays optional on the host. The
forward passes are written independently of the ONNX graphs (torch's own layer_norm, gelu,
softmax), so the agreement test in tests/unit/test_zoo.py checks two implementations.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from envmatrix.inputs import zoo
from envmatrix.rundir.layout import atomic_write_bytes


class _ZooModule(torch.nn.Module):
    """Holds the weights as buffers under their ONNX names ('.' is not allowed in buffer names)."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        for name, array in weights.items():
            if not name.startswith("const_"):  # shape and scalar constants of the ONNX graph
                self.register_buffer(name.replace(".", "_"), torch.from_numpy(array.copy()))

    def w(self, name: str) -> torch.Tensor:
        tensor: torch.Tensor = getattr(self, name.replace(".", "_"))
        return tensor


class Cnn(_ZooModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv(x, "stem", stride=2).clamp(0.0, 6.0)
        cin = zoo.CNN_STEM
        for i, (cout, stride) in enumerate(zoo.CNN_BLOCKS):
            x = self._conv(x, f"block{i}.dw", stride=stride, groups=cin).clamp(0.0, 6.0)
            x = F.relu(self._conv(x, f"block{i}.pw", stride=1))
            cin = cout
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.w("fc.w"), self.w("fc.b"))

    def _conv(self, x: torch.Tensor, name: str, stride: int, groups: int = 1) -> torch.Tensor:
        weight = self.w(f"{name}.w")
        pad = weight.shape[-1] // 2
        return F.conv2d(x, weight, self.w(f"{name}.b"), stride, pad, 1, groups)


class Transformer(_ZooModule):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.embedding(ids, self.w("embed.tokens")) + self.w("embed.positions")
        x = self._ln(x, "embed.ln")
        bias = (1.0 - mask.float().clamp(0.0, 1.0)) * zoo.MASK_BIAS
        bias = bias[:, None, None, :]
        for i in range(zoo.TF_LAYERS):
            x = self._ln(x + self._attention(x, f"layer{i}.attn", bias), f"layer{i}.ln1")
            hidden = F.gelu(self._linear(x, f"layer{i}.ffn1"))
            x = self._ln(x + self._linear(hidden, f"layer{i}.ffn2"), f"layer{i}.ln2")
        pooled = torch.tanh(self._linear(x[:, 0], "pooler"))
        return x, pooled

    def _attention(self, x: torch.Tensor, name: str, bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape  # traced as size ops, so the view below keeps the batch dynamic
        head_dim = zoo.TF_HIDDEN // zoo.TF_HEADS

        def heads(proj: str) -> torch.Tensor:
            y = self._linear(x, f"{name}.{proj}")
            return y.view(b, s, zoo.TF_HEADS, head_dim).transpose(1, 2)

        q, k, v = heads("q"), heads("k"), heads("v")
        scores = q @ k.transpose(-1, -2) * head_dim**-0.5 + bias
        ctx = torch.softmax(scores, dim=-1) @ v
        return self._linear(ctx.transpose(1, 2).reshape(b, s, zoo.TF_HIDDEN), f"{name}.out")

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.w(f"{name}.w") + self.w(f"{name}.b")  # stored [in, out], as in ONNX

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        shape = (zoo.TF_HIDDEN,)
        return F.layer_norm(x, shape, self.w(f"{name}.gamma"), self.w(f"{name}.beta"), zoo.LN_EPS)


class Mlp(_ZooModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(zoo.MLP_WIDTHS) - 2
        for i in range(last + 1):
            x = F.linear(x, self.w(f"fc{i}.w"), self.w(f"fc{i}.b"))
            if i < last:
                x = F.relu(x)
        return x


MODULES: dict[str, type[_ZooModule]] = {"cnn": Cnn, "transformer": Transformer, "mlp": Mlp}


def build_module(name: str, weights: Mapping[str, np.ndarray]) -> torch.nn.Module:
    """The torch network of zoo model `name` with the given (ONNX initializer) weights."""
    return MODULES[name](weights).eval()


def save_torchscript(
    name: str, weights: Mapping[str, np.ndarray], example: Mapping[str, np.ndarray], path: Path
) -> None:
    """Trace the twin on example inputs (in the ONNX input order) and save it atomically.

    The traced module runs at any batch size: every op works per sample (a dynamic-batch model is
    traced on zoo.TRACE_BATCH samples so that no size-1 dim of the example gets baked in).
    """
    module = build_module(name, weights)
    args = tuple(torch.from_numpy(array) for array in example.values())
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.9+ deprecates TorchScript, but it is what the torch versions of the matrix
        # (back to 1.x) load; the images' torch, not the host's, decides what is usable.
        warnings.filterwarnings("ignore", message=r".*torch\.jit", category=DeprecationWarning)
        traced = torch.jit.trace(module, args)
        torch.jit.save(traced, buffer)
    atomic_write_bytes(path, buffer.getvalue())
