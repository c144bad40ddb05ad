"""Workload preparation: models and inputs.npz made once on the host, every error explained."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from envmatrix.errors import ConfigError
from envmatrix.inputs import zoo
from envmatrix.inputs.prepare import (
    INPUTS_FILE,
    ModelVersionWarning,
    PreparedWorkload,
    model_versions,
    prepare_workload,
    read_specs,
)
from envmatrix.rundir.plan import Workload
from envmatrix_harness.inputs import make_inputs

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit:DeprecationWarning")


def _prepare(workload: Workload, tmp_path: Path) -> PreparedWorkload:
    """As the pipeline calls it: the matrix file's folder is `tmp_path`."""
    out_dir = tmp_path / "prepared" / workload.name
    return prepare_workload(workload, out_dir, ir_version=7, opset=11, base_dir=tmp_path)


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.fixture()
def user_mlp(tmp_path: Path) -> Path:
    """A user's model: the zoo's own mlp file, in a folder of the matrix."""
    return zoo.write_model("mlp", tmp_path / "models").onnx_path


@pytest.fixture()
def dynamic_model(tmp_path: Path) -> Path:
    """A user model with a dynamic batch dim and a scalar-like second input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["y"])], "g", [x, scale],
                              [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    return path


def test_zoo_workload_gets_model_and_the_harness_inputs(tmp_path: Path) -> None:
    workload = Workload(name="tf", model="zoo:transformer", seed=7)
    prepared = _prepare(workload, tmp_path)
    assert prepared.model_path.name == "transformer.onnx" and prepared.torchscript_path is None
    assert prepared.inputs_path == tmp_path / "prepared" / "tf" / INPUTS_FILE
    arrays = _npz(prepared.inputs_path)
    specs = [(s.name, s.dtype, list(s.shape)) for s in prepared.input_specs]
    expected = make_inputs(specs, 7)  # the harness's generator, as a container would call it
    assert list(arrays) == ["input_ids", "attention_mask"]
    for name, array in expected.items():
        assert arrays[name].tobytes() == array.tobytes() and arrays[name].dtype == array.dtype
    assert prepared.shapes == {"input_ids": (1, 128), "attention_mask": (1, 128)}
    outputs = ort.InferenceSession(str(prepared.model_path)).run(None, arrays)
    assert np.isfinite(outputs[0]).all()


def test_preparing_twice_gives_the_same_model_and_inputs(tmp_path: Path) -> None:
    first = _prepare(Workload(name="cnn", model="zoo:cnn"), tmp_path / "a")
    second = _prepare(Workload(name="cnn", model="zoo:cnn"), tmp_path / "b")
    assert first.model_path.read_bytes() == second.model_path.read_bytes()
    a, b = _npz(first.inputs_path), _npz(second.inputs_path)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    other = _npz(_prepare(Workload(name="cnn", model="zoo:cnn", seed=1), tmp_path / "c")
                 .inputs_path)
    assert not np.array_equal(a["input"], other["input"])


def test_zoo_workload_for_torch_gets_torchscript(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    prepared = _prepare(Workload(name="m", model="zoo:mlp", backend="torch"), tmp_path)
    assert prepared.torchscript_path is not None and prepared.torchscript_path.is_file()


def test_zoo_workload_for_torch_without_torch_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    monkeypatch.setitem(sys.modules, "envmatrix.inputs.zoo_torch", None)
    with pytest.raises(ConfigError, match=r"workloads\.m\.backend.*torch is not importable.*"
                                          r"pip install torch"):
        _prepare(Workload(name="m", model="zoo:mlp", backend="torch"), tmp_path)


def test_unknown_zoo_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _prepare(Workload(name="w", model="zoo:cnnn"), tmp_path)
    message = str(err.value)
    assert "workload 'w'" in message and "workloads.w.model" in message
    assert "did you mean 'cnn'" in message and "zoo:transformer" in message


def test_user_model_is_copied_from_a_path_relative_to_the_matrix(
    tmp_path: Path, user_mlp: Path
) -> None:
    prepared = _prepare(Workload(name="u", model="models/mlp.onnx"), tmp_path)
    assert prepared.model_path == tmp_path / "prepared" / "u" / "mlp.onnx"
    assert prepared.model_path.read_bytes() == user_mlp.read_bytes()
    assert prepared.input_specs == (zoo.InputSpec("input", "float32", (1, 256)),)
    assert _npz(prepared.inputs_path)["input"].shape == (1, 256)


def test_missing_model_file_names_the_path_and_the_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _prepare(Workload(name="u", model="models/nope.onnx"), tmp_path)
    message = str(err.value)
    assert "workloads.u.model" in message and str(tmp_path / "models" / "nope.onnx") in message
    assert f"relative paths resolve against {tmp_path}" in message


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfenot a protobuf at all")
    with pytest.raises(ConfigError, match=r"workloads\.j\.model.*cannot be read as an ONNX"):
        _prepare(Workload(name="j", model="junk.onnx"), tmp_path)


def test_dynamic_dim_without_a_shape_says_how_to_set_it(
    tmp_path: Path, dynamic_model: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        _prepare(Workload(name="d", model=str(dynamic_model)), tmp_path)
    message = str(err.value)
    assert "workloads.d.shapes" in message and "input 'x'" in message and "'batch'" in message
    assert "shapes: {x: [1,4]}" in message


def test_shapes_and_values_fill_dynamic_dims_and_scalars(
    tmp_path: Path, dynamic_model: Path
) -> None:
    workload = Workload(name="d", model=str(dynamic_model), shapes=(("x", (3, 4)),),
                        values=(("scale", "0.5"),))
    prepared = _prepare(workload, tmp_path)
    arrays = _npz(prepared.inputs_path)
    assert arrays["x"].shape == (3, 4) and arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(arrays["scale"], np.array([0.5], dtype=np.float32))
    assert prepared.shapes == {"x": (3, 4), "scale": (1,)}
    assert prepared.values == {"scale": "0.5"}


@pytest.mark.parametrize(
    ("key", "workload_kwargs", "expected"),
    [
        ("shapes", {"shapes": (("xx", (3, 4)),)}, "'xx' is not an input.*did you mean 'x'"),
        ("values", {"values": (("sacle", "1"),)}, "'sacle' is not an input.*did you mean 'scale'"),
        ("shapes", {"shapes": (("x", (3, 5)),)}, "input 'x' gets shape \\[3, 5\\]"),
        ("shapes", {"shapes": (("x", (3,)),)}, "input 'x' gets shape \\[3\\]"),
    ],
)
def test_bad_shapes_and_values_name_the_key_and_the_input(
    tmp_path: Path, dynamic_model: Path, key: str, workload_kwargs: dict, expected: str
) -> None:
    workload = Workload(name="d", model=str(dynamic_model), **workload_kwargs)
    with pytest.raises(ConfigError, match=rf"workload 'd' \(matrix key workloads\.d\.{key}\)"
                                          rf".*{expected}"):
        _prepare(workload, tmp_path)


def test_bad_value_text_is_a_config_error(tmp_path: Path, user_mlp: Path) -> None:
    workload = Workload(name="u", model=str(user_mlp), values=(("input", "lots"),))
    with pytest.raises(ConfigError, match="workload 'u'.*'lots' is not a valid float32"):
        _prepare(workload, tmp_path)


def test_user_npz_is_used_as_given(tmp_path: Path, user_mlp: Path) -> None:
    mine = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    np.savez_compressed(tmp_path / "mine.npz", input=mine)
    prepared = _prepare(Workload(name="u", model=str(user_mlp), inputs="mine.npz"), tmp_path)
    np.testing.assert_array_equal(_npz(prepared.inputs_path)["input"], mine)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"input": np.zeros((1, 256), np.float64)}, "'input'.*is float64 but the model wants "
                                                    "float32.*astype\\('float32'\\)"),
        ({"input": np.zeros((2, 256), np.float32)}, "input 'input' gets shape \\[2, 256\\]"),
        ({"inputs": np.zeros((1, 256), np.float32)}, "missing: \\['input'\\], unknown: "
                                                     "\\['inputs'\\]"),
        ({"input": np.zeros((1, 256), np.float32), "extra": np.zeros(1)}, "unknown: \\['extra'\\]"),
    ],
)
def test_user_npz_that_does_not_fit_the_model_is_refused(
    tmp_path: Path, user_mlp: Path, arrays: dict[str, np.ndarray], expected: str
) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)  # type: ignore[arg-type]
    workload = Workload(name="u", model=str(user_mlp), inputs="bad.npz")
    with pytest.raises(ConfigError, match=rf"workloads\.u\.inputs.*{expected}"):
        _prepare(workload, tmp_path)


def test_user_npz_together_with_values_is_ambiguous(tmp_path: Path, user_mlp: Path) -> None:
    np.savez(tmp_path / "in.npz", input=np.zeros((1, 256), np.float32))
    workload = Workload(name="u", model=str(user_mlp), inputs="in.npz", values=(("input", "1"),))
    with pytest.raises(ConfigError, match="either an .npz under `inputs:` or"):
        _prepare(workload, tmp_path)


def test_missing_or_unreadable_npz(tmp_path: Path, user_mlp: Path) -> None:
    with pytest.raises(ConfigError, match=r"workloads\.u\.inputs.*none\.npz not found"):
        _prepare(Workload(name="u", model=str(user_mlp), inputs="none.npz"), tmp_path)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ConfigError, match=r"workloads\.u\.inputs.*not a readable \.npz"):
        _prepare(Workload(name="u", model=str(user_mlp), inputs="text.npz"), tmp_path)


def test_torch_backend_needs_a_torchscript_file(tmp_path: Path, user_mlp: Path) -> None:
    with pytest.raises(ConfigError, match=r"workloads\.u\.backend.*needs a TorchScript \.pt"):
        _prepare(Workload(name="u", model=str(user_mlp), backend="torch"), tmp_path)


def test_user_torchscript_takes_its_inputs_from_the_npz(tmp_path: Path) -> None:
    (tmp_path / "net.pt").write_bytes(b"a TorchScript archive, as far as preparation cares")
    with pytest.raises(ConfigError, match=r"workloads\.t\.inputs.*does not declare its inputs"):
        _prepare(Workload(name="t", model="net.pt", backend="torch"), tmp_path)
    np.savez(tmp_path / "in.npz", x=np.ones((2, 3), np.float32))
    prepared = _prepare(Workload(name="t", model="net.pt", backend="torch", inputs="in.npz"),
                        tmp_path)
    assert prepared.torchscript_path == prepared.model_path and prepared.model_path.is_file()
    assert prepared.input_specs == (zoo.InputSpec("x", "float32", (2, 3)),)


def test_model_versions_reads_ir_and_opsets(tmp_path: Path) -> None:
    made = zoo.write_model("mlp", tmp_path, ir_version=8, opset=13)
    assert model_versions(made.onnx_path) == (8, {"": 13})
    assert read_specs(made.onnx_path) == made.inputs
    with pytest.raises(ConfigError, match="file not found"):
        model_versions(tmp_path / "absent.onnx")


def test_user_model_newer_than_the_oldest_runtime_warns(tmp_path: Path) -> None:
    zoo.write_model("mlp", tmp_path / "new", ir_version=9, opset=18)
    with pytest.warns(ModelVersionWarning, match="IR version 9 and opset 18.*IR 7 / opset 11"):
        _prepare(Workload(name="n", model="new/mlp.onnx"), tmp_path)


def test_user_model_with_external_weights_is_copied_whole(tmp_path: Path, user_mlp: Path) -> None:
    model = onnx.load(str(user_mlp))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    location="ext.weights", size_threshold=0)
    prepared = _prepare(Workload(name="e", model="ext.onnx"), tmp_path)
    assert (prepared.model_path.parent / "ext.weights").is_file()
    feeds = _npz(prepared.inputs_path)
    ours = ort.InferenceSession(str(prepared.model_path)).run(None, feeds)[0]
    np.testing.assert_array_equal(ours, ort.InferenceSession(str(user_mlp)).run(None, feeds)[0])


# --- batch -------------------------------------------------------------------------------


@pytest.fixture()
def seq_model(tmp_path: Path) -> Path:
    """A user model whose input has a dynamic first dim and a dynamic second one."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "seq"])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    path = tmp_path / "seq.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_batched_zoo_workload_gets_a_dynamic_model_and_batch_inputs(
    name: str, tmp_path: Path
) -> None:
    prepared = _prepare(Workload(name="w", model=f"zoo:{name}", batch=8, seed=3), tmp_path)
    assert all(spec.shape[0] == zoo.BATCH_DIM for spec in prepared.input_specs)
    arrays = _npz(prepared.inputs_path)
    assert prepared.shapes == {n: a.shape for n, a in arrays.items()}
    assert all(shape[0] == 8 for shape in prepared.shapes.values())
    # the harness's generator at the batch shapes, as a container would call it
    specs = [(s.name, s.dtype, [8, *s.shape[1:]]) for s in prepared.input_specs]
    for n, array in make_inputs(specs, 3).items():
        assert arrays[n].tobytes() == array.tobytes()
    outputs = ort.InferenceSession(str(prepared.model_path)).run(None, arrays)
    assert all(out.shape[0] == 8 and np.isfinite(out).all() for out in outputs)


def test_unbatched_zoo_workload_keeps_the_fixed_model(tmp_path: Path) -> None:
    plain = _prepare(Workload(name="p", model="zoo:mlp"), tmp_path)
    batched = _prepare(Workload(name="b", model="zoo:mlp", batch=1), tmp_path)
    assert plain.model_path.read_bytes() == zoo.write_model("mlp", tmp_path / "z").onnx_path \
        .read_bytes()
    assert batched.model_path.read_bytes() != plain.model_path.read_bytes()
    assert plain.shapes == batched.shapes == {"input": (1, 256)}


def test_batched_zoo_workload_for_torch_runs_at_the_batch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    prepared = _prepare(Workload(name="t", model="zoo:transformer", backend="torch", batch=3),
                        tmp_path)
    assert prepared.torchscript_path is not None
    arrays = _npz(prepared.inputs_path)
    with torch.no_grad():
        hidden, pooled = torch.jit.load(str(prepared.torchscript_path))(
            *(torch.from_numpy(a) for a in arrays.values()))
    assert hidden.shape == (3, 128, 256) and pooled.shape == (3, 256)


def test_batch_sets_the_dynamic_first_dim_of_a_user_model(
    tmp_path: Path, dynamic_model: Path
) -> None:
    workload = Workload(name="d", model=str(dynamic_model), batch=8, values=(("scale", "2"),))
    prepared = _prepare(workload, tmp_path)
    assert prepared.shapes == {"x": (8, 4), "scale": (1,)}  # scale's first dim is fixed
    # a `shapes:` entry's first dim is replaced by the batch
    shaped = _prepare(Workload(name="d", model=str(dynamic_model), batch=8,
                               shapes=(("x", (3, 4)),), values=(("scale", "2"),)), tmp_path)
    assert shaped.shapes == prepared.shapes


def test_batch_leaves_other_dynamic_dims_to_shapes(tmp_path: Path, seq_model: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _prepare(Workload(name="s", model=str(seq_model), batch=8), tmp_path)
    message = str(err.value)
    assert "workloads.s.shapes" in message and "'seq'" in message
    assert "shapes: {x: [8,1]}" in message
    prepared = _prepare(Workload(name="s", model=str(seq_model), batch=8,
                                 shapes=(("x", (1, 16)),)), tmp_path)
    assert prepared.shapes == {"x": (8, 16)}
    with pytest.raises(ConfigError, match=r"workloads\.s\.shapes.*input 'x' gets shape \[8\]"):
        _prepare(Workload(name="s", model=str(seq_model), batch=8, shapes=(("x", (1,)),)),
                 tmp_path)


def test_batch_on_a_model_without_a_dynamic_first_dim_says_how_to_fix_it(
    tmp_path: Path, user_mlp: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        _prepare(Workload(name="u", model="models/mlp.onnx", batch=8), tmp_path)
    message = str(err.value)
    assert "workload 'u' (matrix key workloads.u.batch)" in message
    assert "input [1, 256]" in message
    assert "export the model with a dynamic first dimension, or remove batch:" in message


def test_batch_with_a_user_npz_is_refused(tmp_path: Path, dynamic_model: Path) -> None:
    np.savez(tmp_path / "in.npz", x=np.zeros((8, 4), np.float32),
             scale=np.ones(1, np.float32))
    workload = Workload(name="d", model=str(dynamic_model), inputs="in.npz", batch=8)
    with pytest.raises(ConfigError, match=r"workloads\.d\.batch.*in\.npz.*fixes every tensor.*"
                                          r"at batch size 8 and remove batch:, or remove inputs:"):
        _prepare(workload, tmp_path)
    assert not (tmp_path / "prepared" / "d").exists()  # refused before anything is written


def test_batch_with_a_user_torchscript_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "net.pt").write_bytes(b"a TorchScript archive, as far as preparation cares")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 3), np.float32))
    for inputs in (None, "in.npz"):
        workload = Workload(name="t", model="net.pt", backend="torch", inputs=inputs, batch=4)
        with pytest.raises(ConfigError, match=r"workloads\.t\.batch.*TorchScript model \(net\.pt\)"
                                              r".*at batch size 4 and remove batch:"):
            _prepare(workload, tmp_path)


def test_batch_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"workloads\.m\.batch.*batch: 0.*integer >= 1"):
        _prepare(Workload(name="m", model="zoo:mlp", batch=0), tmp_path)
