"""envmatrix_harness/ must stay importable on Python 3.6: vermin's static check of the whole
package."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from harness_testlib import REPO


def test_vermin_finds_nothing_newer_than_python_36() -> None:
    vermin = shutil.which("vermin")
    command = [vermin] if vermin else [sys.executable, "-m", "vermin"]
    done = subprocess.run([*command, "-t=3.6-", "--violations", "--no-tips",
                           "envmatrix_harness/"], capture_output=True, text=True, cwd=str(REPO))
    if done.returncode != 0 and "No module named vermin" in done.stderr:
        pytest.fail("vermin is not installed: pip install -e .[test]")
    assert done.returncode == 0, done.stdout + done.stderr


def test_vermin_would_catch_a_violation(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    """The check above can fail: a dataclass (3.7+) in a scratch file is reported."""
    (tmp_path / "bad.py").write_text("import dataclasses\n")
    vermin = shutil.which("vermin")
    command = [vermin] if vermin else [sys.executable, "-m", "vermin"]
    done = subprocess.run([*command, "-t=3.6-", "--violations", "--no-tips", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "dataclasses" in done.stdout
