"""The zoo's models: deterministic bytes, valid ONNX at the asked versions, real outputs."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from envmatrix.inputs import zoo
from envmatrix.rundir.plan import ZOO_MODELS
from envmatrix_harness.inputs import INT_HIGH

# torch 2.9+ deprecates torch.jit; TorchScript is still what the images' torch versions load.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit:DeprecationWarning")


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zoo.ZooModel]:
    out = tmp_path_factory.mktemp("zoo")
    return {name: zoo.write_model(name, out) for name in ZOO_MODELS}


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_same_arguments_give_the_same_bytes(name: str, tmp_path: Path) -> None:
    first = zoo.write_model(name, tmp_path / "a", seed=3).onnx_path.read_bytes()
    second = zoo.write_model(name, tmp_path / "b", seed=3).onnx_path.read_bytes()
    other_seed = zoo.write_model(name, tmp_path / "c", seed=4).onnx_path.read_bytes()
    assert first == second
    assert first != other_seed


# sha256 of each model at the default arguments, as written before `dynamic_batch` existed:
# run directories and cached hashes depend on these bytes (onnx 1.23, numpy 2.4).
PINNED_SHA256 = {
    "cnn": "d36d01289d62862a92a3455e601596170f3a4d9cb8e6373514ffbd3ff871450a",
    "transformer": "74a973d36d47285238024b2b8ba1e548384650f6912e2210bcce394b4898810d",
    "mlp": "9f76aa3c4a21302da2fd2dca7bda531e6b730e3a11e5280bf592c8954a665d50",
}


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_default_bytes_are_pinned(name: str, tmp_path: Path) -> None:
    for made in (zoo.write_model(name, tmp_path / "a"),
                 zoo.write_model(name, tmp_path / "b", dynamic_batch=False)):
        assert hashlib.sha256(made.onnx_path.read_bytes()).hexdigest() == PINNED_SHA256[name]


def test_rewriting_an_unchanged_model_keeps_the_file(tmp_path: Path) -> None:
    path = zoo.write_model("mlp", tmp_path).onnx_path
    before = path.stat().st_mtime_ns
    zoo.write_model("mlp", tmp_path)
    assert path.stat().st_mtime_ns == before
    zoo.write_model("mlp", tmp_path, seed=1)
    assert path.stat().st_mtime_ns != before


@pytest.mark.parametrize("name", ZOO_MODELS)
@pytest.mark.parametrize(("ir_version", "opset"), [(7, 11), (7, 13), (9, 18)])
def test_checker_passes_at_the_asked_versions(
    name: str, ir_version: int, opset: int, tmp_path: Path
) -> None:
    made = zoo.write_model(name, tmp_path, ir_version=ir_version, opset=opset)
    model = onnx.load(str(made.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == ir_version
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    assert (made.ir_version, made.opset) == (ir_version, opset)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_every_op_exists_at_opset_11(name: str, models: dict[str, zoo.ZooModel]) -> None:
    """Old runtimes (onnxruntime 1.7/1.8) implement opset 11: no op may be newer."""
    model = onnx.load(str(models[name].onnx_path))
    for node in model.graph.node:
        schema = onnx.defs.get_schema(node.op_type, 11)
        assert schema.since_version <= 11, node.op_type


def test_cnn_has_depthwise_convs_and_a_1000_class_head(models: dict[str, zoo.ZooModel]) -> None:
    model = onnx.load(str(models["cnn"].onnx_path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    assert len(convs) >= 8
    assert sum(g > 1 for g in groups) >= 4
    assert models["cnn"].inputs == (zoo.InputSpec("input", "float32", (1, 3, 224, 224)),)
    assert models["cnn"].outputs == (zoo.InputSpec("logits", "float32", (1, 1000)),)


def test_transformer_decomposes_layer_norm_and_gelu(models: dict[str, zoo.ZooModel]) -> None:
    ops = {n.op_type for n in onnx.load(str(models["transformer"].onnx_path)).graph.node}
    assert {"ReduceMean", "Sqrt", "Div", "Erf", "Softmax", "Gather"} <= ops
    assert "LayerNormalization" not in ops


def test_vocabulary_covers_every_generated_token_id() -> None:
    assert zoo.VOCAB_SIZE >= INT_HIGH


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_onnxruntime_gives_finite_input_dependent_outputs(
    name: str, models: dict[str, zoo.ZooModel]
) -> None:
    made = models[name]
    outputs = _run(made.onnx_path, zoo.example_inputs(made.inputs, seed=0))
    others = _run(made.onnx_path, zoo.example_inputs(made.inputs, seed=1))
    for spec, out, other in zip(made.outputs, outputs, others):
        assert out.shape == spec.shape and str(out.dtype) == spec.dtype
        assert np.isfinite(out).all()
        assert out.std() > 0.05, f"{spec.name} is nearly constant"
        # Different inputs move the outputs by more than rounding: the network is not constant.
        assert np.abs(out - other).max() > 1e-3 * np.abs(out).max()


def test_attention_mask_hides_masked_tokens(models: dict[str, zoo.ZooModel]) -> None:
    path = models["transformer"].onnx_path
    feeds = zoo.example_inputs(models["transformer"].inputs)
    feeds["attention_mask"][:, 64:] = 0
    changed = {k: v.copy() for k, v in feeds.items()}
    changed["input_ids"][:, 64:] = (changed["input_ids"][:, 64:] + 1) % zoo.VOCAB_SIZE
    base, moved = _run(path, feeds)[0], _run(path, changed)[0]
    np.testing.assert_allclose(base[:, :64], moved[:, :64], atol=1e-5)  # masked tokens unseen
    unmasked = {k: v.copy() for k, v in changed.items()}
    unmasked["attention_mask"][:] = 1
    assert np.abs(_run(path, unmasked)[0][:, :64] - base[:, :64]).max() > 1e-2


def test_generated_mask_values_count_as_zero_or_one(models: dict[str, zoo.ZooModel]) -> None:
    """The harness fills int64 inputs with [0, 1000): the model reads any non-zero as 1."""
    path = models["transformer"].onnx_path
    feeds = zoo.example_inputs(models["transformer"].inputs)
    feeds["attention_mask"][:, ::3] = 0
    assert feeds["attention_mask"].max() > 1
    binary = dict(feeds, attention_mask=(feeds["attention_mask"] > 0).astype(np.int64))
    np.testing.assert_allclose(_run(path, feeds)[0], _run(path, binary)[0], atol=1e-5)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_perturbed_weights_change_outputs_measurably(name: str, tmp_path: Path) -> None:
    base = zoo.write_model(name, tmp_path / "base")
    variant = zoo.write_model(name, tmp_path / "variant", perturb=0.01)
    feeds = zoo.example_inputs(base.inputs)
    for ref, out in zip(_run(base.onnx_path, feeds), _run(variant.onnx_path, feeds)):
        relative = np.abs(ref - out).max() / np.abs(ref).max()
        # far above fp32 rounding between runtimes (~1e-6), far below a different network
        assert 1e-3 < relative < 0.5


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_torchscript_agrees_with_onnxruntime(name: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    made = zoo.write_model(name, tmp_path, torchscript=True)
    assert made.torchscript_path == tmp_path / f"{name}.pt" and made.note == ""
    feeds = zoo.example_inputs(made.inputs, seed=5)  # not the inputs the trace saw
    module = torch.jit.load(str(made.torchscript_path))
    with torch.no_grad():
        result = module(*(torch.from_numpy(a) for a in feeds.values()))
    results = [result] if isinstance(result, torch.Tensor) else list(result)
    for ref, out in zip(_run(made.onnx_path, feeds), results, strict=True):
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_torchscript_of_a_perturbed_model_disagrees(tmp_path: Path) -> None:
    """The agreement test above can fail: other weights give other outputs."""
    torch = pytest.importorskip("torch")
    base = zoo.write_model("mlp", tmp_path / "base")
    variant = zoo.write_model("mlp", tmp_path / "variant", torchscript=True, perturb=0.01)
    feeds = zoo.example_inputs(base.inputs)
    assert variant.torchscript_path is not None
    with torch.no_grad():
        out = torch.jit.load(str(variant.torchscript_path))(torch.from_numpy(feeds["input"]))
    assert not np.allclose(out.numpy(), _run(base.onnx_path, feeds)[0], rtol=1e-4, atol=1e-4)


def test_torchscript_without_torch_is_skipped_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    monkeypatch.setitem(sys.modules, "envmatrix.inputs.zoo_torch", None)
    with pytest.warns(zoo.ZooWarning, match="torch is not importable"):
        made = zoo.write_model("mlp", tmp_path, torchscript=True)
    assert made.torchscript_path is None
    assert "pip install torch" in made.note
    assert made.onnx_path.is_file() and not (tmp_path / "mlp.pt").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown zoo model 'resnet'.*cnn, transformer, mlp"):
        zoo.write_model("resnet", tmp_path)
    with pytest.raises(ValueError, match="opset >= 11"):
        zoo.write_model("mlp", tmp_path, opset=9)


# --- dynamic batch -----------------------------------------------------------------------

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zoo.ZooModel]:
    """Dynamic-batch models, with their TorchScript twins where torch is importable."""
    out = tmp_path_factory.mktemp("zoo_batch")
    torch_here = importlib.util.find_spec("torch") is not None
    return {name: zoo.write_model(name, out, dynamic_batch=True, torchscript=torch_here)
            for name in ZOO_MODELS}


def _runner(made: zoo.ZooModel, runtime: str) -> Runner:
    if runtime == "onnxruntime":
        return lambda feeds: _run(made.onnx_path, feeds)
    torch = pytest.importorskip("torch")
    assert made.torchscript_path is not None
    module = torch.jit.load(str(made.torchscript_path))

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            result = module(*(torch.from_numpy(a) for a in feeds.values()))
        return [t.numpy() for t in ([result] if isinstance(result, torch.Tensor) else result)]

    return run


def _batch_feeds(made: zoo.ZooModel, batch: int, seed: int = 5) -> dict[str, np.ndarray]:
    feeds = zoo.example_inputs(made.inputs, seed, batch=batch)
    if "attention_mask" in feeds:  # a different mask per sample: none may leak into another
        for i in range(batch):
            feeds["attention_mask"][i, 32 * (i + 1):] = 0
    return feeds


@pytest.mark.parametrize("name", ZOO_MODELS)
@pytest.mark.parametrize(("ir_version", "opset"), [(7, 11), (9, 18)])
def test_dynamic_batch_names_the_first_dim_of_every_input_and_output(
    name: str, ir_version: int, opset: int, tmp_path: Path, models: dict[str, zoo.ZooModel]
) -> None:
    made = zoo.write_model(name, tmp_path, ir_version=ir_version, opset=opset,
                           dynamic_batch=True)
    onnx.checker.check_model(onnx.load(str(made.onnx_path)), full_check=True)
    fixed = models[name]
    for specs, fixed_specs in ((made.inputs, fixed.inputs), (made.outputs, fixed.outputs)):
        assert [s.shape[0] for s in specs] == [zoo.BATCH_DIM] * len(specs)
        assert [(s.name, s.dtype, s.shape[1:]) for s in specs] == [
            (s.name, s.dtype, s.shape[1:]) for s in fixed_specs]


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_dynamic_batch_changes_only_the_declared_dims(
    name: str, batched: dict[str, zoo.ZooModel], models: dict[str, zoo.ZooModel]
) -> None:
    """The same weights: at batch 1 the dynamic model computes what the fixed one does."""
    feeds = zoo.example_inputs(models[name].inputs, seed=2)
    for ref, out in zip(_run(models[name].onnx_path, feeds), _run(batched[name].onnx_path, feeds),
                        strict=True):
        # not bit-equal: onnxruntime may pick other kernels when a dim is dynamic
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_each_sample_of_a_batch_is_computed_on_its_own(
    name: str, runtime: str, batched: dict[str, zoo.ZooModel]
) -> None:
    made = batched[name]
    run = _runner(made, runtime)
    feeds = _batch_feeds(made, 4)
    outputs = run(feeds)
    for spec, out in zip(made.outputs, outputs, strict=True):
        assert out.shape == (4, *spec.shape[1:]) and np.isfinite(out).all()
    for i in range(4):
        alone = run({k: v[i:i + 1] for k, v in feeds.items()})
        for out, single in zip(outputs, alone, strict=True):
            np.testing.assert_allclose(out[i:i + 1], single, rtol=1e-5, atol=1e-5)
    assert not np.allclose(outputs[0][0], outputs[0][1])  # the samples differ


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_dynamic_batch_torchscript_agrees_with_onnxruntime(
    name: str, batch: int, batched: dict[str, zoo.ZooModel]
) -> None:
    """Traced at zoo.TRACE_BATCH, the twin runs at other batch sizes (1 included)."""
    made = batched[name]
    feeds = _batch_feeds(made, batch)
    torch_outputs = _runner(made, "torchscript")(feeds)
    for ref, out in zip(_run(made.onnx_path, feeds), torch_outputs, strict=True):
        assert out.shape == ref.shape and out.shape[0] == batch
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
