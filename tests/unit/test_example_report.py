"""The committed example report is what its own run directory rebuilds, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

from envmatrix.report import build_report

EXAMPLE = Path(__file__).resolve().parents[2] / "reports" / "example"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_example_report_rebuilds_byte_for_byte(tmp_path: Path) -> None:
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy, symlinks=True)
    for made in ("report.md", "results.json", "results.csv"):
        (copy / made).unlink()
    shutil.rmtree(copy / "plots")
    build_report(copy)
    committed, rebuilt = _files(EXAMPLE), _files(copy)
    assert sorted(rebuilt) == sorted(committed)
    differ = [name for name in committed if committed[name] != rebuilt[name]]
    assert not differ, f"rebuilt files differ from the committed ones: {differ}"
