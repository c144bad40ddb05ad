"""Pure logic of harness.inputs: the deterministic generator, shapes, values, errors."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envmatrix_harness import inputs
from envmatrix_harness.errors import HarnessInputError

SPECS = [("x", "tensor(float)", ["batch", 16]), ("ids", "int64", [None, 8]),
         ("sr", "tensor(int64)", [])]
SHAPES = {"x": (2, 16), "ids": (2, 8)}


def test_same_seed_same_bytes_and_other_seed_other_bytes() -> None:
    first = inputs.make_inputs(SPECS, 0, SHAPES)
    again = inputs.make_inputs(SPECS, 0, SHAPES)
    other = inputs.make_inputs(SPECS, 1, SHAPES)
    assert list(first) == ["x", "ids", "sr"]
    for name in first:
        assert first[name].tobytes() == again[name].tobytes()
    assert first["x"].tobytes() != other["x"].tobytes()


def test_an_input_does_not_depend_on_the_others() -> None:
    alone = inputs.make_inputs([SPECS[1]], 3, {"ids": (2, 8)})
    together = inputs.make_inputs(SPECS, 3, SHAPES)
    assert alone["ids"].tobytes() == together["ids"].tobytes()


def test_generator_matches_a_pure_python_splitmix64() -> None:
    """The numpy uint64 arithmetic equals the reference algorithm on Python ints, so the
    bytes cannot depend on how a numpy version handles overflow or type promotion."""
    mask = (1 << 64) - 1
    key = inputs.input_key(5, "x")
    expected = []
    for i in range(1, 65):
        z = (key + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        expected.append(z ^ (z >> 31))
    assert inputs.splitmix64(key, 64).tolist() == expected
    floats = inputs.generate("x", "float32", (64,), 5)
    assert floats.tolist() == [(z >> 40) / 2.0**23 - 1.0 for z in expected]


def test_ranges_and_dtypes() -> None:
    feeds = inputs.make_inputs(
        [("f", "float32", [4096]), ("h", "float16", [64]), ("i", "int64", [4096]),
         ("b", "bool", [256]), ("u", "uint8", [4096]), ("k", "int8", [4096])], 0)
    assert feeds["f"].dtype == np.float32 and -1.0 <= feeds["f"].min() < feeds["f"].max() < 1.0
    assert feeds["h"].dtype == np.float16
    assert feeds["i"].dtype == np.int64 and feeds["i"].min() >= 0 and feeds["i"].max() < 1000
    assert feeds["i"].max() > 900  # the whole range is used, not a corner of it
    assert feeds["b"].dtype == np.bool_ and 0 < feeds["b"].sum() < 256
    assert feeds["u"].max() <= 255 and feeds["k"].min() >= 0 and feeds["k"].max() <= 127
    assert all(array.flags.c_contiguous for array in feeds.values())


def test_values_fill_scalars_and_tensors_in_the_models_dtype() -> None:
    feeds = inputs.make_inputs(SPECS, 0, SHAPES, {"sr": "16000", "x": "0.5"})
    assert feeds["sr"].shape == () and feeds["sr"].dtype == np.int64 and int(feeds["sr"]) == 16000
    assert feeds["x"].shape == (2, 16) and np.all(feeds["x"] == np.float32(0.5))


def test_fixed_tensors_are_taken_as_they_are() -> None:
    ids = np.arange(16, dtype=np.int64).reshape(2, 8)
    feeds = inputs.make_inputs(SPECS, 0, {"x": (2, 16)}, None, {"ids": ids})
    assert feeds["ids"].tobytes() == ids.tobytes()


@pytest.mark.parametrize(
    ("shapes", "values", "fixed", "message"),
    [
        ({"x": (2, 16), "ids": (2, 8), "nope": (1,)}, {}, {},
         "--shape names input 'nope', which the model does not have; model inputs: x, ids, sr"),
        (SHAPES, {"rate": "1"}, {}, "--value names input 'rate'"),
        ({"x": (2, 16)}, {}, {}, "input 'ids' dimension 0 (unnamed) is dynamic and unset; "
                                 "pass --shape ids="),
        ({"ids": (2, 8)}, {}, {}, "input 'x' dimension 0 ('batch') is dynamic and unset"),
        ({"x": (2, 17), "ids": (2, 8)}, {}, {},
         "--shape x gives dimension 1 = 17 but the model fixes it at 16"),
        ({"x": (2, 16, 1), "ids": (2, 8)}, {}, {},
         "--shape x has rank 3 but the model's input 'x' has rank 2"),
        (SHAPES, {"sr": "16k"}, {}, "--value sr=16k: '16k' is not a valid int64 value"),
        (SHAPES, {}, {"extra": np.zeros(1)}, "--inputs file names input 'extra'"),
        ({"x": (2, 16)}, {}, {"ids": np.zeros((2, 8), np.int32)},
         "--inputs tensor 'ids' is int32 but the model wants int64"),
        (SHAPES, {}, {"ids": np.zeros((2, 8), np.int64)},
         "input 'ids' is given both by --inputs and --shape"),
    ],
)
def test_bad_input_names_the_problem(shapes: dict, values: dict, fixed: dict,
                                     message: str) -> None:
    with pytest.raises(HarnessInputError, match="^" + _literal(message)):
        inputs.make_inputs(SPECS, 0, shapes, values, fixed)


def _literal(text: str) -> str:
    return re.escape(text)


def test_input_errors_are_value_errors_for_the_host() -> None:
    assert issubclass(HarnessInputError, ValueError)


def test_unsupported_dtype_is_reported() -> None:
    with pytest.raises(HarnessInputError, match="input 's' has type tensor.string."):
        inputs.make_inputs([("s", "tensor(string)", [1])], 0)


@pytest.mark.parametrize(("items", "expected"), [
    (["x=1,3,224,224"], {"x": (1, 3, 224, 224)}),
    (["sr="], {"sr": ()}),
    ([" a = 2 ", "b=3"], {"a": (2,), "b": (3,)}),
])
def test_parse_shapes(items: list[str], expected: dict) -> None:
    assert dict(inputs.parse_shapes(items)) == expected


@pytest.mark.parametrize(("items", "message"), [
    (["x"], "--shape x: expected NAME=VALUE"),
    (["x=1,a"], "--shape x=1,a: expected comma-separated non-negative integers"),
    (["x=-1"], "expected comma-separated non-negative integers"),
    (["x=1", "x=2"], "'x' given twice"),
])
def test_parse_shapes_rejects(items: list[str], message: str) -> None:
    with pytest.raises(HarnessInputError, match=_literal(message)):
        inputs.parse_shapes(items)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), name=st.text(min_size=1, max_size=12),
       shape=st.lists(st.integers(0, 5), max_size=3))
def test_generation_is_a_pure_function(seed: int, name: str, shape: list[int]) -> None:
    first = inputs.generate(name, "float32", tuple(shape), seed)
    assert inputs.make_inputs([(name, "float32", shape)], seed)[name].shape == tuple(shape)
    second = inputs.generate(name, "float32", tuple(shape), seed)
    assert first.shape == tuple(shape)
    assert hashlib.sha256(first.tobytes()).digest() == hashlib.sha256(second.tobytes()).digest()
