"""The suite-wide CI rule (conftest.py at the top of the repository) turns skips into failures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SKIPPING = '''
import pytest

def test_needs_something_missing():
    pytest.importorskip("no_such_module_envmatrix")

@pytest.mark.skipif(True, reason="no such interpreter")
def test_marked():
    pass

def test_fine():
    pass
'''


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    shutil.copy(REPO / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / "tests" / "testlib.py", tmp_path / "tests" / "testlib.py")  # its in_ci
    (tmp_path / "test_sample.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_skips_fail_in_ci_with_their_reason(tmp_path: Path, ci: str) -> None:
    done = _run(tmp_path, ci)
    assert done.returncode == 1, done.stdout
    closing = done.stdout.strip().splitlines()[-1]
    # A skip in the call phase becomes a failure, one decided at setup (a skipif mark) an error.
    assert "1 failed, 1 passed, 1 error" in closing and "skipped" not in closing
    assert "no_such_module_envmatrix" in done.stdout and "no such interpreter" in done.stdout


def test_skips_stay_skips_on_a_developer_machine(tmp_path: Path) -> None:
    done = _run(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped" in done.stdout
