"""Output parity: dtype-aware tolerances, failures named with their worst elements."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envmatrix.analysis.parity import cell_parity, compare_output, compare_outputs, parity_of


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


def test_outputs_named_differently_by_two_backends_are_matched_by_position() -> None:
    """onnxruntime names the graph's outputs, torch `output.0`, `output.1`: same count, shapes
    and dtypes in order, so they are compared in order and the parity says so."""
    hidden, pooled = _logits(), _logits()[:, :10]
    ort = {"last_hidden_state": hidden, "pooled_output": pooled}
    torch = {"output.0": hidden.copy(), "output.1": pooled.copy()}
    found = parity_of("ort", ort, "torch", torch)
    assert found.status == "pass" and found.matched_by_position
    assert [o.name for o in found.outputs] == ["last_hidden_state vs output.0",
                                               "pooled_output vs output.1"]
    torch["output.1"] = pooled + 1.0
    failed = parity_of("ort", ort, "torch", torch)
    assert failed.status == "fail" and "pooled_output vs output.1" in failed.reason


def test_position_is_used_only_when_names_differ_and_shapes_agree() -> None:
    y = _logits()
    same_names = parity_of("a", {"y": y, "z": y[:1]}, "b", {"z": y[:1], "y": y})
    assert same_names.status == "pass" and not same_names.matched_by_position
    other_shapes = parity_of("a", {"logits": y}, "b", {"output": y[:1]})
    assert other_shapes.status == "fail" and not other_shapes.matched_by_position
    assert "missing in the candidate" in other_shapes.reason


def test_saved_order_is_the_position(tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    first, second = _logits(), _logits()[:, :3]
    np.savez(tmp_path / "outputs" / "ort.npz", logits=first, probs=second)
    np.savez(tmp_path / "outputs" / "torch.npz", output_b=first, output_a=second)
    found = cell_parity(tmp_path, "ort", "torch")
    assert found.status == "pass" and found.matched_by_position
