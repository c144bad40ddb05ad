"""A failed build is reported in the failing tool's own words, without terminal noise.

The fixtures are build logs as the classic builder streams them (step headers, " ---> Running
in", the builder's own error last), with what pip 20.3 (bullseye's), pip 23/24/25, apt-get and
debootstrap print when they fail, colour codes included where pip thinks it has a terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from envmatrix.errors import BuildError
from envmatrix.images import build as images
from envmatrix.rundir import results
from envmatrix.rundir.layout import create_run_dir
from envmatrix.rundir.plan import Base, Cell, Environment, Measure, Plan, Workload
from envmatrix.running import runner
from envmatrix.running.engine import BuildStepError, Engine, _BuildStream
from envmatrix.toolwords import build_cause, clean

RED, BOLD_RED, RESET = "\x1b[31m", "\x1b[1;31m", "\x1b[0m"
RUN_PIP = (
    "set -e;     if [ -s /tmp/envmatrix-build/ca.pem ]; then         export "
    "PIP_CERT=/tmp/envmatrix-build/ca.pem; fi;     \"$PYTHON_BIN\" -m venv /opt/venv;     "
    "/opt/venv/bin/python -m pip install --find-links /tmp/envmatrix-build/wheelhouse "
    "-r /tmp/envmatrix-build/requirements.txt"
)
ENGINE_ERROR = f"The command '/bin/sh -c {RUN_PIP}' returned a non-zero code: 1"
VERSIONS = "1.8.0, 1.8.1, 1.9.0, 1.10.0, 1.11.0, 1.11.1, 1.12.0, 1.12.1, 1.13.1, 1.14.0, 1.14.1"


def build_log(step_output: str, error: str = ENGINE_ERROR, command: str = RUN_PIP) -> str:
    """A classic-builder log whose step 9 runs `command`, prints `step_output` and fails."""
    return (
        "# envmatrix build of envmatrix/bullseye-ort1.99.0:0123456789abcdef from /tmp/ctx\n"
        "Step 1/14 : ARG BASE_IMAGE=debian:bullseye\n"
        "Step 8/14 : COPY build/ /tmp/envmatrix-build/\n ---> 5d4c3b2a1f0e\n"
        f"Step 9/14 : RUN {command}\n ---> Running in 4f1c2d3e5a6b\n"
        f"{step_output}"
        f"ERROR: {error}\n"
    )


PIP_20_3 = build_log(
    "Looking in links: /tmp/envmatrix-build/wheelhouse\n"
    f"{RED}ERROR: Could not find a version that satisfies the requirement onnxruntime==1.99.0 "
    "(from -r /tmp/envmatrix-build/requirements.txt (line 1)) (from versions: "
    f"{VERSIONS}){RESET}\n"
    f"{RED}ERROR: No matching distribution found for onnxruntime==1.99.0 (from -r "
    f"/tmp/envmatrix-build/requirements.txt (line 1)){RESET}\n"
)
# pip 23+ logs through rich: red ERROR lines, and a coloured [notice] after them.
PIP_23_NOTICE = (
    f"\n\x1b[1m[{RESET}\x1b[34;49mnotice{RESET}\x1b[1;39;49m]{RESET}\x1b[39;49m A new release "
    f"of pip is available: {RESET}\x1b[31;49m23.0.1{RESET}\x1b[39;49m -> {RESET}"
    f"\x1b[32;49m25.0.1{RESET}\n"
)
PIP_23 = build_log(
    "Looking in links: /tmp/envmatrix-build/wheelhouse\n"
    f"{RED}ERROR: Could not find a version that satisfies the requirement onnxruntime==1.99.0 "
    f"(from versions: {VERSIONS}){RESET}{RED}\n{RESET}"
    f"{BOLD_RED}ERROR: No matching distribution found for onnxruntime==1.99.0{RESET}\n"
    + PIP_23_NOTICE
)
# What this template's build really streams (pip upgraded to 26 in a bullseye venv): the
# classic builder wraps each chunk of the step's stderr in red (ESC[91m ... ESC[0m), and pip 23+
# lists the versions it skipped for their Requires-Python before the errors.
STDERR, STDERR_END = "\x1b[91m", "\x1b[0m"
PIP_26_BUILDER = build_log(
    "Looking in links: /tmp/envmatrix-build/wheelhouse\n"
    "Collecting numpy==1.23.5 (from -r /tmp/envmatrix-build/requirements.txt (line 1))\n"
    "  Downloading numpy-1.23.5-cp39-cp39-manylinux_2_17_x86_64.manylinux2014_x86_64.whl "
    "(17.1 MB)\n     " + "━" * 40 + " 17.1/17.1 MB 43.5 MB/s  0:00:00\n"
    f"{STDERR}ERROR: Ignored the following versions that require a different python version: "
    "2.1.0 Requires-Python >=3.10; 2.1.1 Requires-Python >=3.10; 2.2.0 Requires-Python >=3.10\n"
    f"{STDERR_END}{STDERR}ERROR: Could not find a version that satisfies the requirement "
    f"onnxruntime==1.99.0 (from versions: {VERSIONS})\n"
    f"{STDERR_END}{STDERR}ERROR: No matching distribution found for onnxruntime==1.99.0\n"
    f"{STDERR_END}Removing intermediate container 4f1c2d3e5a6b\n"
)
# pip 24 downloads with a rich progress bar: redrawn after '\r', cursor hidden and shown.
PIP_24_CONFLICT = build_log(
    "Collecting numpy==1.16.0 (from -r /tmp/envmatrix-build/requirements.txt (line 2))\n"
    "  Downloading numpy-1.16.0.zip (5.1 MB)\n"
    f"\x1b[?25l     \x1b[90m━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━{RESET} \x1b[32m0.0/5.1 MB"
    f"{RESET} \x1b[31m?{RESET} eta \x1b[36m-:--:--{RESET}\r\x1b[2K     \x1b[90m━━━━━━━━━━━━━━━"
    f"━━━━━━━━━━━━━━━━━━━━━━━━━{RESET} \x1b[32m5.1/5.1 MB{RESET} \x1b[31m31.2 MB/s{RESET} eta "
    f"\x1b[36m0:00:00{RESET}\n\x1b[?25h"
    "INFO: pip is looking at multiple versions of onnxruntime to determine which version is "
    "compatible with other requirements. This could take a while.\n"
    "ERROR: Cannot install -r /tmp/envmatrix-build/requirements.txt (line 1) and numpy==1.16.0 "
    "because these package versions have conflicting dependencies.\n\n"
    "The conflict is caused by:\n    The user requested numpy==1.16.0\n"
    "    onnxruntime 1.8.0 depends on numpy>=1.16.6\n\n"
    "To fix this you could try to:\n1. loosen the range of package versions you've specified\n"
    "2. remove package versions to allow pip to attempt to solve the dependency conflict\n\n"
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/"
    "dependency-resolution/#dealing-with-dependency-conflicts\n"
)
PIP_25_HASHES = build_log(
    "Processing /tmp/envmatrix-build/wheelhouse/onnxruntime-1.19.2-cp39-cp39-manylinux_2_27_"
    "x86_64.manylinux_2_28_x86_64.whl\n"
    "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have "
    "updated the package versions, please update the hashes. Otherwise, examine the package "
    "contents carefully; someone may have tampered with them.\n"
    "    onnxruntime==1.19.2 from file:///tmp/envmatrix-build/wheelhouse/onnxruntime-1.19.2-"
    "cp39-cp39-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl:\n"
    "        Expected sha256 0f0e0d0c0b0a09080706050403020100\n"
    "             Got        a1b2c3d4e5f60718293a4b5c6d7e8f90\n\n"
)
# A wheel built from source fails: the cause is the build backend's traceback, not pip's
# "Failed building wheel" that follows it.
PIP_23_WHEEL = build_log(
    "Building wheels for collected packages: onnx\n"
    "  Building wheel for onnx (pyproject.toml): started\n"
    "  Building wheel for onnx (pyproject.toml): finished with status 'error'\n"
    f"  {RED}error{RESET}: {BOLD_RED}subprocess-exited-with-error{RESET}\n  \n"
    f"  {RED}×{RESET} Building wheel for onnx {BOLD_RED}({RESET}pyproject.toml{BOLD_RED}){RESET}"
    " did not run successfully.\n"
    f"  {RED}│{RESET} exit code: {BOLD_RED}1{RESET}\n"
    f"  {RED}╰─>{RESET} [6 lines of output]\n"
    "      Traceback (most recent call last):\n"
    '        File "<string>", line 12, in build_wheel\n'
    '        File "setup.py", line 80, in run\n'
    "          raise RuntimeError('Could not find cmake in PATH')\n"
    "      RuntimeError: Could not find cmake in PATH\n"
    "      [end of output]\n  \n"
    f"  {BOLD_RED}note{RESET}: This error originates from a subprocess, and is likely not a "
    "problem with pip.\n"
    f"{RED}  ERROR: Failed building wheel for onnx{RESET}\n"
    "Failed to build onnx\n"
    f"{RED}ERROR: Could not build wheels for onnx, which is required to install "
    f"pyproject.toml-based projects{RESET}\n"
)
RUN_APT = "apt-get update && apt-get install -y --no-install-recommends python3-venv libgomp2"
APT = build_log(
    "Get:1 http://mirror.invalid/debian bullseye InRelease [116 kB]\n"
    "Fetched 8299 kB in 2s (4149 kB/s)\nReading package lists...\n"
    "Building dependency tree...\nReading state information...\n"
    "E: Unable to locate package libgomp2\n",
    error=f"The command '/bin/sh -c {RUN_APT}' returned a non-zero code: 100",
    command=RUN_APT,
)
DEBOOTSTRAP = (
    "I: Retrieving InRelease \nI: Checking Release signature\n"
    "I: Valid Release signature (key id 1234ABCD)\nI: Retrieving Packages \n"
    "E: Couldn't download packages: libc6 libgcc-s1\n"
)
ENGINE_ONLY = build_log("", error=ENGINE_ERROR.replace("code: 1", "code: 137"))


@pytest.mark.parametrize(("log", "cause"), [
    (PIP_20_3, "pip: ERROR: No matching distribution found for onnxruntime==1.99.0 (from -r "
               "/tmp/envmatrix-build/requirements.txt (line 1))"),
    (PIP_23, "pip: ERROR: No matching distribution found for onnxruntime==1.99.0"),
    (PIP_26_BUILDER, "pip: ERROR: No matching distribution found for onnxruntime==1.99.0"),
    (PIP_24_CONFLICT, "pip: ERROR: Cannot install -r /tmp/envmatrix-build/requirements.txt "
                      "(line 1) and numpy==1.16.0 because these package versions have "
                      "conflicting dependencies."),
    (PIP_25_HASHES, "pip: ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS "
                    "FILE. If you have updated the package versions, please update the hashes. "
                    "Otherwise, examine the package contents carefully; someone may have "
                    "tampered with them."),
    (PIP_23_WHEEL, "python: RuntimeError: Could not find cmake in PATH"),
    (APT, "apt: E: Unable to locate package libgomp2"),
    (DEBOOTSTRAP, "debootstrap: E: Couldn't download packages: libc6 libgcc-s1"),
], ids=["pip20.3", "pip23", "pip26-builder", "pip24-conflict", "pip25-hashes", "pip23-wheel", "apt",
        "debootstrap"])  # fmt: skip
def test_the_cause_is_the_tools_own_line(log: str, cause: str) -> None:
    error = None if log is DEBOOTSTRAP else log.rstrip().rsplit("\nERROR: ", 1)[1]
    assert build_cause(log, error) == cause


def test_without_tool_words_the_engine_says_it() -> None:
    error = ENGINE_ERROR.replace("code: 1", "code: 137")
    assert build_cause(ENGINE_ONLY, error) == f"engine: {error}"
    pull = "pull access denied for envmatrix/nope, repository does not exist"
    assert build_cause(f"Step 1/3 : FROM envmatrix/nope\nERROR: {pull}\n", pull) == \
        f"engine: {pull}"
    assert build_cause("", None) is None


def test_pip_pointers_and_generic_lines_are_the_last_resort() -> None:
    only_pointer = build_log(PIP_23.split("\x1b[1;31m", 1)[0])  # no "No matching ..." line
    assert build_cause(only_pointer, ENGINE_ERROR) == (
        "pip: ERROR: Could not find a version that satisfies the requirement "
        f"onnxruntime==1.99.0 (from versions: {VERSIONS})")
    resolution = build_log("ERROR: ResolutionImpossible: for help visit the pip docs\n")
    assert build_cause(resolution, ENGINE_ERROR) == \
        "pip: ERROR: ResolutionImpossible: for help visit the pip docs"
    generic = build_log("ERROR: Ignored the following yanked versions: 1.0\n"
                        "  ERROR: Failed building wheel for onnx\nERROR: Could not build wheels"
                        " for onnx\n")
    assert build_cause(generic, ENGINE_ERROR) == "pip: ERROR: Failed building wheel for onnx"
    aside = build_log("ERROR: Ignored the following yanked versions: 1.0\n")
    assert build_cause(aside, ENGINE_ERROR) == \
        "pip: ERROR: Ignored the following yanked versions: 1.0"
    pep668 = build_log("error: externally-managed-environment\n\n× This environment is "
                       "externally managed\n")
    assert build_cause(pep668, ENGINE_ERROR) == "pip: error: externally-managed-environment"
    shell = build_log("/bin/sh: 1: /opt/venv/bin/python: not found\n")
    assert build_cause(shell, ENGINE_ERROR) == "sh: /bin/sh: 1: /opt/venv/bin/python: not found"


def test_only_the_failed_step_counts() -> None:
    # An earlier step's pip printed a non-fatal ERROR and went on; step 9 failed with apt.
    earlier = ("Step 7/14 : RUN pip install onnx\n ---> Running in 0a1b2c3d4e5f\n"
               "ERROR: some earlier complaint that did not stop the build\n ---> 9e8d7c6b5a4f\n")
    log = APT.replace("Step 8/14", earlier + "Step 8/14")
    assert build_cause(log, "x") == "apt: E: Unable to locate package libgomp2"
    warned = build_log("ERROR: pip's dependency resolver does not currently take into account "
                       "all the packages that are installed.\n")
    assert build_cause(warned, ENGINE_ERROR) == f"engine: {ENGINE_ERROR}"


def test_clean_drops_escapes_and_progress_redraws() -> None:
    text = clean(PIP_24_CONFLICT + PIP_20_3 + PIP_23 + PIP_26_BUILDER + "\x1b]0;title\x07x\r\n")
    assert "\x1b" not in text and "\r" not in text
    assert "     ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 5.1/5.1 MB 31.2 MB/s eta 0:00:00" \
        in text.split("\n")
    assert "ERROR: No matching distribution found for onnxruntime==1.99.0" in text.split("\n")
    assert clean("50%\r100%\r\n") == "100%\n"
    assert clean("text\r") == "text"


def test_results_helpers_strip_terminal_noise() -> None:
    tail = results.log_tail(PIP_23)
    assert tail is not None and "\x1b[" not in tail and "\r" not in tail
    assert "ERROR: No matching distribution found for onnxruntime==1.99.0" in tail
    assert results.one_line(f"{RED}ERROR:{RESET}  no\n wheel") == "ERROR: no wheel"
    assert results.last_log_line(f"{RED}Boom{RESET}\n\x1b[0m\n") == "Boom"
    assert results.log_tail("\x1b[0m\n") is None


def stream_of(log: str, tmp_path: Path) -> _BuildStream:
    """A finished _BuildStream fed the log in small chunks, as the engine streams it."""
    body, error = log.rstrip().rsplit("\nERROR: ", 1)
    chunks: list[dict[str, Any]] = [{"stream": body[i:i + 50]} for i in range(0, len(body), 50)]
    chunks.append({"stream": "\n"})
    chunks.append({"errorDetail": {"code": 1, "message": error}, "error": error})
    stream = _BuildStream(iter(chunks), tmp_path / "build.log")
    stream.thread.start()
    stream.thread.join(10)
    return stream


def test_a_failed_step_raises_with_the_tools_words(tmp_path: Path) -> None:
    stream = stream_of(PIP_26_BUILDER, tmp_path)
    engine = Engine(cast(Any, None))  # a failed step never asks the engine anything
    with pytest.raises(BuildStepError) as info:
        engine._build_result(stream, "envmatrix/x:0123", tmp_path / "build.log")
    err = info.value
    assert err.cause == "pip: ERROR: No matching distribution found for onnxruntime==1.99.0"
    assert str(err).startswith(f"Build of envmatrix/x:0123 failed: {err.cause} (full log: ")
    assert str(tmp_path / "build.log") in str(err)
    assert "\x1b[" not in err.log_tail and "No matching distribution" in err.log_tail
    assert "\x1b[" in (tmp_path / "build.log").read_text()  # the full log stays as it came
    assert images._failure_message(err) == err.cause
    assert images._failure_message(BuildError("Build of x took longer than 9 s")) == \
        "Build of x took longer than 9 s"


def test_every_cell_of_the_failed_environment_gets_the_tools_words(tmp_path: Path) -> None:
    stream = stream_of(PIP_20_3, tmp_path)
    with pytest.raises(BuildStepError) as info:
        Engine(cast(Any, None))._build_result(stream, "envmatrix/env:aa", tmp_path / "b.log")
    run = create_run_dir(tmp_path / "reports", "r1")
    failure = images.BuildFailure("env", images._failure_message(info.value),
                                  info.value.log_tail, run.build_log("env"), 1.0)
    plan = one_env_plan(tmp_path)
    got = runner.run_cells(cast(Any, None), plan, run, {"env": failure}, {})
    assert [r["status"] for r in got] == ["build_failed", "build_failed"]
    for result in got:
        assert result["reason"] == (
            "image build failed: pip: ERROR: No matching distribution found for "
            "onnxruntime==1.99.0 (from -r /tmp/envmatrix-build/requirements.txt (line 1))")
        assert "\x1b[" not in result["log_tail"] and "\r" not in result["log_tail"]
        assert result["host"]["build_log"] == "logs/build-env.log"


def one_env_plan(tmp_path: Path) -> Plan:
    base = Base(name="bullseye", image="debian:bullseye", family="debian")
    env = Environment(id="env", base=base, python="system",
                      packages=(("onnxruntime", "1.99.0"),), providers=("cpu",))
    cells = tuple(Cell(id=f"env--{name}--cpu", environment=env,
                       workload=Workload(name=name, model=f"zoo:{name}"), provider="cpu")
                  for name in ("cnn", "mlp"))
    return Plan(source=tmp_path / "matrix.yaml", bases=(base,), environments=(env,),
                workloads=tuple(c.workload for c in cells), measure=Measure(),
                baseline="env", cells=cells)
