"""`build.host_wheels`: wheels the host's pip fetches for a build, in the host's own setup.

Some wheels reach the host's pip and not a build: PyTorch's CPU builds on PyTorch's own index
(PyPI's Linux torch is a CUDA build of several GB), a company mirror only the host is
configured for, a find-links folder on the host. For every environment that pins a named
package, the host's pip downloads the wheel of that environment's own pin (no dependencies,
binary only, for the environment's Python) straight into the build context's wheelhouse, where
the build's pip finds it (`--find-links`). The dependencies come from the build's index as
usual, and everything else about the build stays as it was.

The image's content hash takes the requirement lines (`build/host-wheels.txt`), not the wheel's
bytes: pins are exact, and `list` shows the same context id without downloading anything.
Which pins those are, and which Python they are for, is the matrix's (envmatrix.config.hostwheels).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from envmatrix.config.hostwheels import python_of, requirements
from envmatrix.errors import BuildStepError
from envmatrix.rundir.plan import Environment
from envmatrix.toolwords import build_cause, clean

REQUIREMENTS_FILE = "host-wheels.txt"  # under the context's build/ folder
DOWNLOAD_TIMEOUT_S = 1800  # a GB-sized wheel over a slow link

def requirements_text(env: Environment, names: Sequence[str]) -> str | None:
    """The context file the content hash reads; None when the environment fetches nothing."""
    wanted = requirements(env, names)
    if not wanted:
        return None
    return f"# python {python_of(env)}\n" + "".join(f"{line}\n" for line in wanted)


def log_path_for(run_dir: Path, env: Environment) -> Path:
    return run_dir / "logs" / f"host-wheels-{env.id}.log"


def download(env: Environment, names: Sequence[str], wheelhouse: Path, log_path: Path) -> None:
    """Have the host's pip put the environment's wheels into `wheelhouse`, its output in
    `log_path`. Raises BuildStepError with pip's own words when it cannot."""
    wanted = requirements(env, names)
    if not wanted:
        return
    version = python_of(env)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--python-version", str(version), "--dest", str(wheelhouse), *wanted]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=DOWNLOAD_TIMEOUT_S)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        partial = [p.decode(errors="replace") if isinstance(p, bytes) else p or ""
                   for p in (err.stdout, err.stderr)]
        output, code = "".join(partial), -1
        output += f"\nERROR: gave up after {DOWNLOAD_TIMEOUT_S} s\n"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"# build.host_wheels: {' '.join(command[1:])}\n{clean(output)}\n",
                        encoding="utf-8")
    if code != 0:
        cause = build_cause(output) or f"pip: exit status {code}"
        raise BuildStepError(f"The host's pip could not download {', '.join(wanted)} for Python "
                             f"{version} (build.host_wheels; full log: {log_path}).",
                             clean(output)[-4000:], cause)
