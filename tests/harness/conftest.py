"""Fixtures of the harness tests (helpers live in harness_testlib.py, importable by name)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from harness_testlib import (
    CACHE,
    RUNTIMES,
    SILERO_VERSION,
    _run,
    make_venv,
    tiny_model,
    unique_model,
)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "tiny": tiny_model(folder / "tiny.onnx"),
        "ir10": tiny_model(folder / "ir10.onnx", ir_version=10, opset=11),
        "opset21": tiny_model(folder / "opset21.onnx", ir_version=7, opset=21),
        "future": tiny_model(folder / "future.onnx", ir_version=99, opset=99, check=False),
        "unique": unique_model(folder / "unique.onnx"),
    }


@pytest.fixture(scope="session")
def zoo_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    zoo = pytest.importorskip("envmatrix.inputs.zoo")
    return Path(zoo.write_model("cnn", tmp_path_factory.mktemp("zoo")).onnx_path)


@pytest.fixture(scope="session")
def venv() -> Callable[[str], Path]:
    """venv('py311-ort1.16') -> python of that cached environment (see RUNTIMES)."""
    def get(label: str) -> Path:
        version, pins = RUNTIMES[label]
        return make_venv(version, pins)
    return get


@pytest.fixture(scope="session")
def ort_python(venv: Callable[[str], Path]) -> Path:
    """An interpreter with onnxruntime: this one when it has it, else a cached venv."""
    probe = subprocess.run([sys.executable, "-c", "import onnxruntime"], capture_output=True)
    return Path(sys.executable) if probe.returncode == 0 else venv("py311-ort1.16")


@pytest.fixture(scope="session")
def silero_model() -> Path:
    """silero_vad.onnx from the silero-vad wheel on PyPI (a real model nobody here made)."""
    folder = CACHE / "silero-vad" / SILERO_VERSION
    model = folder / "silero_vad.onnx"
    if model.exists():
        return model
    folder.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest",
          str(folder), f"silero-vad=={SILERO_VERSION}"], "pip download silero-vad")
    wheel = next(folder.glob("silero_vad-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read("silero_vad/data/silero_vad.onnx")
    partial = model.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(model)
    return model
