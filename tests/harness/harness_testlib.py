"""Helpers that run the real harness as a subprocess under real interpreters and runtimes.

Virtual environments are made once per (interpreter, pinned packages) under
`<repo>/.cache/venvs/<key>` (git-ignored; ENVMATRIX_CACHE_DIR overrides `<repo>/.cache`) and
reused; a half-made one (no `.complete` marker) is made again. Interpreters are found through
`pyenv root` first, then `pythonX.Y` on PATH; a missing one skips its tests with the reason,
or fails them in CI (testlib.in_ci); a wheel pip cannot install always fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from testlib import REPO, checkout_env, in_ci

CACHE = Path(os.environ.get("ENVMATRIX_CACHE_DIR", REPO / ".cache"))
SILERO_VERSION = "6.2.3"  # silero-vad wheel that ships silero_vad/data/silero_vad.onnx

# The runtimes the harness is proven against: (label, python, pins). Old onnxruntime is built
# against numpy 1.x; Python 3.6's bundled pip (18.1) cannot read manylinux2014 tags, so it is
# upgraded to the last pip for 3.6 first. 1.5.1 and 1.6.0 are the CUDA 10.2 / cuDNN 8.0.3
# releases of onnxruntime-gpu (1.7 moved to CUDA 11): their CPU wheels stand in for them here
# (same Python API and profiler); numpy 1.19.5 is the last numpy for Python 3.6, and the one
# they import with (they need numpy < 1.20, which 3.6 cannot exceed anyway).
RUNTIMES = {
    "py36-ort1.5": ("3.6", ("onnxruntime==1.5.1", "numpy==1.19.5")),
    "py36-ort1.6": ("3.6", ("onnxruntime==1.6.0", "numpy==1.19.5")),
    "py36-ort1.7": ("3.6", ("onnxruntime==1.7.0", "numpy==1.19.5")),
    "py38-ort1.8": ("3.8", ("onnxruntime==1.8.0", "numpy==1.23.5")),
    "py311-ort1.16": ("3.11", ("onnxruntime==1.16.3", "numpy==1.26.4")),
    "py313-ort1.32": ("3.13", ("onnxruntime==1.32.0",)),
    "py311-ov1.24": ("3.11", ("onnxruntime-openvino==1.24.1",)),
}
PIP_UPGRADES = {"3.6": "pip==21.3.1"}


def find_interpreter(version: str) -> Path | None:
    """pythonX.Y from pyenv's versions folder, else from PATH; None when there is none."""
    candidates: list[Path] = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        versions = Path(root) / "versions"
        if versions.is_dir():
            found = sorted(versions.glob(f"{version}.*"), reverse=True)
            candidates += [v / "bin" / f"python{version}" for v in found]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        probe = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(map(int,
                                                                           version.split(".")))):
            return candidate
    return None


def make_venv(version: str, pins: Sequence[str]) -> Path:
    """The python of a cached venv with `pins` installed (made on first use)."""
    key = f"py{version}-" + "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", p) for p in sorted(pins))
    target = CACHE / "venvs" / key
    python = target / "bin" / "python"
    if (target / ".complete").exists():
        return python
    interpreter = find_interpreter(version)
    if interpreter is None:
        why = f"no Python {version} interpreter here (pyenv or python{version} on PATH)"
        if in_ci():  # a broken CI setup must not pass by skipping the runtimes it should prove
            pytest.fail(f"CI is set but there is {why}", pytrace=False)
        pytest.skip(why)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _run([str(interpreter), "-m", "venv", str(target)], f"venv for Python {version}")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if version in PIP_UPGRADES:
        _run(pip + ["--upgrade", PIP_UPGRADES[version]], "pip upgrade", env)
    _run(pip + list(pins), f"pip install {' '.join(pins)}", env)
    (target / ".complete").write_text(" ".join(pins) + "\n")
    return python


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")


@dataclass
class HarnessRun:
    code: int
    doc: dict[str, Any]
    stderr: str
    out: Path


def run_harness(python: Path | str, args: Sequence[str], workdir: Path,
                name: str = "result.json", timeout: float = 600) -> HarnessRun:
    """Run `python -m harness ARGS --out workdir/name` from this checkout; read the result."""
    out = workdir / name
    env = checkout_env(only_checkout=True)
    done = subprocess.run([str(python), "-m", "envmatrix_harness", *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(workdir),
                          timeout=timeout)
    assert out.exists(), f"no result file; stderr:\n{done.stderr[-3000:]}"
    return HarnessRun(done.returncode, json.loads(out.read_text()), done.stderr, out)


def tiny_model(path: Path, ir_version: int = 7, opset: int = 11, check: bool = True) -> Path:
    """Two inputs (float x [batch, 16], int64 ids [batch, 8]) and two outputs; every
    onnxruntime since 1.5 runs it (IR 7, opset 11)."""
    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    table = numpy_helper.from_array(rng.standard_normal((1000, 4)).astype(np.float32), "E")
    average = numpy_helper.from_array(np.full((8, 1), 1 / 8, np.float32), "A")
    to_2d = numpy_helper.from_array(np.array([0, 4], np.int64), "S")
    # Only ops whose definition is the same from opset 11 to 21+ (no axes attributes).
    nodes = [
        helper.make_node("Gemm", ["x", "W", "B"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
        helper.make_node("Gather", ["E", "ids"], ["emb"], axis=0),  # [batch, 8, 4]
        helper.make_node("Transpose", ["emb"], ["embt"], perm=[0, 2, 1]),  # [batch, 4, 8]
        helper.make_node("MatMul", ["embt", "A"], ["avg"]),  # [batch, 4, 1]
        helper.make_node("Reshape", ["avg", "S"], ["z"]),  # [batch, 4]
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weight, bias, table, average, to_2d])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    if check:  # off for models stamped with versions from the future
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unique_model(path: Path) -> Path:
    """x [batch, 16] -> MatMul "matmul" -> Relu "relu" -> y, and Unique "unique_values" over y
    -> u: the OpenVINO EP takes MatMul and Relu (one fused subgraph) and leaves Unique to the
    CPU (onnxruntime-openvino 1.24.1; Det falls back the same way)."""
    weight = numpy_helper.from_array(
        np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
             helper.make_node("Relu", ["h"], ["y"], name="relu"),
             helper.make_node("Unique", ["y"], ["u"], name="unique_values", sorted=1)]
    graph = helper.make_graph(
        nodes, "unique", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, ["n"])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_shared_library(source: Path, target: Path, *defines: str) -> Path:
    """cc -shared -fPIC source -o target [-DNAME...]; skips without a C compiler (fails in CI)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        if in_ci():
            pytest.fail("CI is set but there is no C compiler (cc) for the fake NVML",
                        pytrace=False)
        pytest.skip("no C compiler (cc) to build the fake NVML library")
    _run([compiler, "-shared", "-fPIC", "-O1", "-o", str(target), str(source),
          *(f"-D{name}" for name in defines)], f"cc {source.name}")
    return target
