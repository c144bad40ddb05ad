"""Output parity: does a candidate compute the same outputs as the baseline on the same inputs?

Both cells ran the first inference on the same input bytes (made once on the host), and the
harness saved the outputs to `outputs/<cell>.npz`. Here every output is compared with a
tolerance chosen by dtype:

- float32: rtol 1e-4, atol 1e-5 x scale. Different runtime versions pick different kernels
  (blocked GEMM, fused conv, other summation orders), which moves float32 results by a few ulps
  per op; 1e-4 relative leaves room for ~100 such ops while catching any real numerical bug.
- float16 (and bfloat16-ish data stored as float16): rtol 1e-2, atol 1e-3 x scale; 11 bits of
  mantissa make 1e-3 relative errors per op normal.
- float64: rtol 1e-7, atol 1e-9 x scale.
- integers and bools (class ids, masks, token ids): exact.

"scale" is the largest magnitude of the baseline output (at least 1): the absolute error of a
float sum grows with the magnitude of its terms, so a logit vector in the hundreds needs a
larger absolute floor than a softmax in [0, 1]. An element passes when
|cand - base| <= atol * scale + rtol * |base| (numpy.isclose's rule); NaN matches NaN.

Outputs are paired by name. Two backends of one network name them differently: torch
`output`, `output.0`, `output.1` (the harness's names for a tensor, a tuple, a dict), and
onnxruntime the graph's own (`logits`, `last_hidden_state`, `pooled_output`). So when the two
sides' names differ but their count, shapes and dtypes match position by position, the
outputs are paired in the order they were saved (the model's output order, which the harness
keeps in the .npz) and the parity says so (`CellParity.matched_by_position`, named
`<baseline name> vs <candidate name>`). Anything else that differs in names still fails as
missing on one side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# dtype kind/name -> (rtol, atol before scaling)
TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-2, 1e-3),
    "float32": (1e-4, 1e-5),
    "float64": (1e-7, 1e-9),
}
WORST_SHOWN = 5


@dataclass(frozen=True)
class Offender:
    index: tuple[int, ...]
    baseline: float
    candidate: float
    abs_diff: float


@dataclass(frozen=True)
class OutputParity:
    name: str
    dtype: str
    shape: tuple[int, ...]
    passed: bool
    reason: str = ""  # why it failed ("" when passed)
    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    rtol: float = 0.0
    atol: float = 0.0  # after scaling
    mismatched: int = 0  # elements outside the tolerance
    worst: tuple[Offender, ...] = ()


@dataclass(frozen=True)
class CellParity:
    baseline: str  # cell id
    candidate: str
    status: str  # "pass" | "fail" | "missing"
    reason: str = ""
    outputs: tuple[OutputParity, ...] = field(default_factory=tuple)
    matched_by_position: bool = False  # names differed: outputs paired in saved order


def tolerance_for(dtype: np.dtype, scale: float) -> tuple[float, float]:
    """(rtol, atol) for a dtype; exact (0, 0) for integers, bools and unknown kinds."""
    rtol, atol = TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))
    return rtol, atol * max(1.0, scale)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    # Exactly rounded sums (math.fsum) rather than BLAS's dot and norm: their last digit
    # depends on the BLAS kernel (OPENBLAS_CORETYPE), so a report rebuilt on another machine
    # would not be byte for byte the one written; elementwise products are exact IEEE anywhere.
    na, nb = math.sqrt(math.fsum((a * a).tolist())), math.sqrt(math.fsum((b * b).tolist()))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return math.fsum((a * b).tolist()) / (na * nb)


def _worst(base: np.ndarray, cand: np.ndarray, excess: np.ndarray) -> tuple[Offender, ...]:
    """The elements furthest outside the tolerance, worst first (stable for ties)."""
    flat = excess.ravel()
    order = np.argsort(-flat, kind="stable")[:WORST_SHOWN]
    rows = []
    for i in order:
        if not flat[i] > 0:
            break
        idx = tuple(int(x) for x in np.unravel_index(int(i), base.shape))
        b, c = float(base.ravel()[i]), float(cand.ravel()[i])
        rows.append(Offender(idx, b, c, abs(c - b)))
    return tuple(rows)


def compare_output(name: str, base: np.ndarray, cand: np.ndarray) -> OutputParity:
    """Parity of one output array of the candidate against the baseline's."""
    shape = tuple(int(d) for d in base.shape)
    dtype = str(base.dtype)
    if base.dtype != cand.dtype:
        return OutputParity(name, dtype, shape, False, f"dtype {cand.dtype} != {base.dtype}")
    if base.shape != cand.shape:
        return OutputParity(name, dtype, shape, False, f"shape {cand.shape} != {base.shape}")
    b64 = base.astype(np.float64).ravel()
    c64 = cand.astype(np.float64).ravel()
    finite = np.isfinite(b64)
    scale = float(np.max(np.abs(b64[finite]))) if finite.any() else 1.0
    rtol, atol = tolerance_for(base.dtype, scale)
    diff = np.abs(c64 - b64)
    both_nan = np.isnan(b64) & np.isnan(c64)
    diff = np.where(both_nan, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only: infinitely off
    excess = diff - (atol + rtol * np.abs(np.nan_to_num(b64)))
    bad = int(np.count_nonzero(excess > 0))
    # Relative error only where the baseline is clearly away from zero (above atol).
    rel_mask = np.abs(b64) > max(atol, np.finfo(np.float64).tiny)
    max_rel = float(np.max(diff[rel_mask] / np.abs(b64[rel_mask]))) if rel_mask.any() else 0.0
    ok_values = np.isfinite(b64) & np.isfinite(c64)
    return OutputParity(
        name, dtype, shape, passed=bad == 0,
        reason="" if bad == 0 else f"{bad} of {b64.size} elements outside tolerance",
        max_abs=float(np.max(diff)) if diff.size else 0.0, max_rel=max_rel,
        cosine=_cosine(b64[ok_values], c64[ok_values]), rtol=rtol, atol=atol,
        mismatched=bad,
        worst=_worst(base.astype(np.float64), cand.astype(np.float64), excess.reshape(shape)),
    )


def compare_outputs(
    base: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]
) -> tuple[OutputParity, ...]:
    """Every output of the baseline, in name order; outputs only one side has fail."""
    rows = []
    for name in sorted(set(base) | set(cand)):
        if name not in cand:
            arr = base[name]
            rows.append(OutputParity(name, str(arr.dtype), tuple(arr.shape), False,
                                     "missing in the candidate"))
        elif name not in base:
            arr = cand[name]
            rows.append(OutputParity(name, str(arr.dtype), tuple(arr.shape), False,
                                     "not produced by the baseline"))
        else:
            rows.append(compare_output(name, np.asarray(base[name]), np.asarray(cand[name])))
    return tuple(rows)


def by_position(base: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]) -> bool:
    """Pair the outputs in order rather than by name? When the names differ but the count,
    shapes and dtypes agree position by position (module docstring)."""
    if set(base) == set(cand) or len(base) != len(cand):
        return False
    return all(np.asarray(b).shape == np.asarray(c).shape
               and np.asarray(b).dtype == np.asarray(c).dtype
               for b, c in zip(base.values(), cand.values()))


def compare_by_position(
    base: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]
) -> tuple[OutputParity, ...]:
    """Every output paired with the other side's output at the same position."""
    return tuple(compare_output(f"{b_name} vs {c_name}", np.asarray(b), np.asarray(c))
                 for (b_name, b), (c_name, c) in zip(base.items(), cand.items()))


def load_outputs(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an outputs .npz (no pickles: a result folder is not trusted code)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def cell_parity(run_dir: Path, base_cell: str, cand_cell: str) -> CellParity:
    """Parity of two cells of a run directory from their `outputs/<cell>.npz` files."""
    return files_parity(base_cell, run_dir / "outputs" / f"{base_cell}.npz",
                        cand_cell, run_dir / "outputs" / f"{cand_cell}.npz")


def files_parity(base_cell: str, base_path: Path, cand_cell: str, cand_path: Path
                 ) -> CellParity:
    """Parity of two cells from their outputs .npz files, wherever they are (two runs)."""
    missing = [p.name for p in (base_path, cand_path) if not p.is_file()]
    if missing:
        return CellParity(base_cell, cand_cell, "missing", f"no outputs/{', '.join(missing)}")
    return parity_of(base_cell, load_outputs(base_path), cand_cell, load_outputs(cand_path))


def parity_of(base_cell: str, base: Mapping[str, np.ndarray], cand_cell: str,
              cand: Mapping[str, np.ndarray]) -> CellParity:
    positional = by_position(base, cand)
    outputs = compare_by_position(base, cand) if positional else compare_outputs(base, cand)
    failed = [f"{o.name}: {o.reason}" for o in outputs if not o.passed]
    if not outputs:
        return CellParity(base_cell, cand_cell, "missing", "no outputs saved")
    reason = "; ".join(failed)
    return CellParity(base_cell, cand_cell, "fail" if failed else "pass", reason, outputs,
                      matched_by_position=positional)
