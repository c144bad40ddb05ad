"""Fixtures of the unit tests (their shared builders are in unitlib.py, the fakes in
tests/fakes.py and tests/fakeruns.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def harness(tmp_path: Path) -> Path:
    """A harness package folder to copy into a build context, with a cache to leave out."""
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VERSION = '1'\n")
    (pkg / "__main__.py").write_text("print('hi')\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    return pkg
