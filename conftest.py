"""Suite-wide rule for tests/: in CI (env CI set), a test that would skip fails instead.

On a developer's machine a missing interpreter, torch wheel, root, debootstrap or Docker engine
skips the tests that need it, with the reason. In CI those skips would let a green run hide
that the cross-version harness tests, the TorchScript tests or the engine tests never ran, so
there every skip is turned into a failure that carries the skip's own reason.

It also puts tests/ on sys.path, for the helpers every test folder shares: tests/testlib.py
(in_ci, this checkout's CLI in a subprocess), tests/fakes.py (the one fake engine and its
containers) and tests/fakeruns.py (fake results, runs and plans). No test module is imported
by another.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from testlib import in_ci  # noqa: E402  (found through the line above)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"CI is set, so this test may not skip; it would have skipped because: "
                       f"{reason}")
