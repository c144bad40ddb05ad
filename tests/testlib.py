"""What every test folder shares: whether this is CI, and this checkout's code in a subprocess.

tests/ is on sys.path through the conftest.py at the top of the repository. This module needs
nothing but the standard library: that conftest imports it before anything else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout these tests belong to
# Generous: a first run on a fresh engine builds two images (about 2 minutes each on 2 cores).
CLI_TIMEOUT_S = 1200


def in_ci() -> bool:
    """CI is set, to anything but "", "0", "false" or "no": there a test may not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def checkout_env(*, only_checkout: bool = False) -> dict[str, str]:
    """This process's environment with this checkout first on PYTHONPATH, so a subprocess
    imports its envmatrix; `only_checkout`: the checkout alone on PYTHONPATH (an interpreter
    of another Python version must not import this one's packages)."""
    kept = None if only_checkout else os.environ.get("PYTHONPATH")
    path = os.pathsep.join(p for p in (str(REPO), kept) if p)
    return {**os.environ, "PYTHONPATH": path}


def _cli_env(extra: dict[str, str]) -> dict[str, str]:
    return {**checkout_env(), "COLUMNS": "200", **extra}  # rich never wraps a progress line


def envmatrix_process(*args: str, cwd: Path, timeout: float = CLI_TIMEOUT_S,
                      **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m envmatrix ARGS` from `cwd` on this checkout, `env` added to the environment;
    what it printed is shown with the test's output."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "envmatrix", *args], cwd=cwd, env=_cli_env(env),
                          capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - started
    print(f"$ envmatrix {' '.join(args)}  -> exit {proc.returncode} in {seconds:.1f}s")
    print(proc.stdout)
    print(proc.stderr)
    return proc


def envmatrix_started(*args: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    """The same command started and left running, its output piped (to interrupt it, or to
    run several at once)."""
    return subprocess.Popen([sys.executable, "-m", "envmatrix", *args], cwd=cwd,
                            env=_cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
