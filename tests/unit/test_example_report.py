"""The committed example reports are what their own run directories rebuild, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from envmatrix.report.build import build_report

REPORTS = Path(__file__).resolve().parents[2] / "reports"
# the default matrix's, and those of examples/openvino-tuning.yaml and examples/torch-vs-onnx.yaml
EXAMPLES = ("example", "openvino-tuning", "torch-vs-onnx")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_report_rebuilds_byte_for_byte(tmp_path: Path, name: str) -> None:
    example = REPORTS / name
    copy = tmp_path / name
    shutil.copytree(example, copy, symlinks=True)
    for made in ("report.md", "results.json", "results.csv"):
        (copy / made).unlink()
    shutil.rmtree(copy / "plots")
    build_report(copy)
    committed, rebuilt = _files(example), _files(copy)
    assert sorted(rebuilt) == sorted(committed)
    differ = [name for name in committed if committed[name] != rebuilt[name]]
    assert not differ, f"rebuilt files differ from the committed ones: {differ}"
