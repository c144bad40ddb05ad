"""Output parity: dtype-aware tolerances, failures named with their worst elements."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envmatrix.parity import cell_parity, compare_output, compare_outputs, parity_of


def _logits(dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 5, size=(2, 1000)).astype(dtype)


def test_fp32_within_tolerance_passes() -> None:
    base = _logits()
    # What another kernel does: a few ulps of relative error everywhere.
    cand = (base * (1 + np.random.default_rng(1).normal(0, 3e-7, base.shape))).astype(np.float32)
    row = compare_output("y", base, cand)
    assert row.passed, row.reason
    assert 0 < row.max_abs < 1e-4 and row.cosine is not None and row.cosine > 0.999999


def test_fp32_perturbed_fails_and_names_the_worst_element() -> None:
    base = _logits()
    cand = base.copy()
    cand[1, 123] += 0.5
    cand[0, 7] += 0.01
    row = compare_output("y", base, cand)
    assert not row.passed and row.mismatched == 2
    assert row.worst[0].index == (1, 123)
    assert abs(row.worst[0].abs_diff - 0.5) < 1e-5
    assert row.worst[1].index == (0, 7)


def test_fp16_is_looser_than_fp32() -> None:
    base = _logits(np.float16)
    cand = (base.astype(np.float32) * 1.002).astype(np.float16)
    assert compare_output("y", base, cand).passed
    base32 = base.astype(np.float32)
    assert not compare_output("y", base32, base32 * np.float32(1.002)).passed


def test_integers_must_match_exactly() -> None:
    ids = np.arange(100, dtype=np.int64)
    assert compare_output("ids", ids, ids.copy()).passed
    off = ids.copy()
    off[42] += 1
    row = compare_output("ids", ids, off)
    assert not row.passed and row.worst[0].index == (42,)
    mask = np.array([True, False])
    assert not compare_output("mask", mask, ~mask).passed


def test_nan_matches_nan_only_in_the_same_place() -> None:
    base = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    assert compare_output("y", base, base.copy()).passed
    moved = np.array([np.nan, 2.0, 3.0], dtype=np.float32)
    assert not compare_output("y", base, moved).passed


def test_shape_dtype_and_missing_outputs_fail() -> None:
    base = _logits()
    assert "shape" in compare_output("y", base, base[:1]).reason
    assert "dtype" in compare_output("y", base, base.astype(np.float64)).reason
    rows = compare_outputs({"y": base, "z": base}, {"y": base})
    assert [(r.name, r.passed) for r in rows] == [("y", True), ("z", False)]
    assert parity_of("a", {"y": base}, "b", {"y": base + 1}).status == "fail"


def test_cell_parity_reads_npz_and_reports_missing_files(tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    np.savez(tmp_path / "outputs" / "a.npz", y=_logits())
    np.savez(tmp_path / "outputs" / "b.npz", y=_logits())
    assert cell_parity(tmp_path, "a", "b").status == "pass"
    missing = cell_parity(tmp_path, "a", "c")
    assert missing.status == "missing" and "c.npz" in missing.reason
