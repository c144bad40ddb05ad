"""Pure plan logic: matrix expansion (GitHub Actions semantics), ids, cells, selection."""

from __future__ import annotations

import json
import re

import pytest

from envmatrix import grammar, problems
from envmatrix.config import expand
from envmatrix.errors import ConfigError
from envmatrix.rundir import idwords
from envmatrix.rundir import plan as planmod
from envmatrix.rundir.plan import Base, Cell, Environment, Measure, Plan, Workload

WHERE = ("environments", 0, "matrix")


def axes(**values: list) -> dict[str, list[expand.Src]]:
    return {k: [expand.Src(v, (*WHERE, k, i)) for i, v in enumerate(vs)]
            for k, vs in values.items()}


def entries(*dicts: dict, kind: str = "include") -> list[dict[str, expand.Src]]:
    return [{k: expand.Src(v, (*WHERE, kind, i, k)) for k, v in d.items()}
            for i, d in enumerate(dicts)]


def plain(combos: list[dict[str, expand.Src]]) -> list[dict]:
    return [{k: s.value for k, s in c.items()} for c in combos]


# -- expansion ------------------------------------------------------------------------------


def test_product_order_follows_axes_and_values():
    got = plain(expand.expand_matrix(axes(base=["a", "b"], onnxruntime=["1", "2"]), [], [], WHERE))
    assert got == [{"base": "a", "onnxruntime": "1"}, {"base": "a", "onnxruntime": "2"},
                   {"base": "b", "onnxruntime": "1"}, {"base": "b", "onnxruntime": "2"}]


def test_github_actions_documented_include_example():
    """The example from GitHub's docs on matrix include, with the documented result."""
    got = plain(expand.expand_matrix(
        axes(fruit=["apple", "pear"], animal=["cat", "dog"]), [],
        entries({"color": "green"}, {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"}, {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"}),
        WHERE))
    assert got == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_include_never_overwrites_an_original_axis_value():
    got = plain(expand.expand_matrix(axes(base=["a"]), [], entries({"base": "b", "python": "3.8"}),
                                WHERE))
    assert got == [{"base": "a"}, {"base": "b", "python": "3.8"}]


def test_exclude_removes_combinations_matching_all_keys():
    got = plain(expand.expand_matrix(axes(base=["a", "b"], onnxruntime=["1", "2"]),
                                entries({"base": "b", "onnxruntime": "1"}, kind="exclude"), [],
                                WHERE))
    assert {"base": "b", "onnxruntime": "1"} not in got and len(got) == 3


def test_exclude_on_one_key_removes_a_whole_row():
    got = plain(expand.expand_matrix(axes(base=["a", "b"], onnxruntime=["1", "2"]),
                                entries({"base": "a"}, kind="exclude"), [], WHERE))
    assert got == [{"base": "b", "onnxruntime": "1"}, {"base": "b", "onnxruntime": "2"}]


def test_exclude_runs_before_include():
    got = plain(expand.expand_matrix(axes(base=["a", "b"]), entries({"base": "a"}, kind="exclude"),
                                entries({"base": "a", "python": "3.8"}), WHERE))
    assert got == [{"base": "b"}, {"base": "a", "python": "3.8"}]


def test_list_values_compare_whole():
    got = plain(expand.expand_matrix(axes(providers=[["cpu"], ["openvino", "cpu"]]),
                                entries({"providers": ["cpu"]}, kind="exclude"), [], WHERE))
    assert got == [{"providers": ["openvino", "cpu"]}]


def test_include_only_matrix_gives_one_combination_per_entry():
    got = plain(expand.expand_matrix({}, [], entries({"base": "a"}, {"base": "b"}), WHERE))
    assert got == [{"base": "a"}, {"base": "b"}]


@pytest.mark.parametrize("ax, exclude, include, path, text", [
    (axes(base=[]), [], [], (*WHERE, "base"), "axis 'base' has no values"),
    (axes(base=["a"]), entries({"base": "a"}, kind="exclude"), [], WHERE,
     "expands to no environment"),
    (axes(base=["a"]), entries({"base": "zzz"}, kind="exclude"), [], (*WHERE, "exclude", 0),
     "matches no combination"),
    (axes(base=["a"]), entries({"python": "3.8"}, kind="exclude"), [], (*WHERE, "exclude", 0),
     "not an axis"),
    ({}, [], [], WHERE, "expands to no environment"),
])
def test_expansion_errors_carry_the_key_path(ax, exclude, include, path, text):
    with pytest.raises(problems.PlanError) as err:
        expand.expand_matrix(ax, exclude, include, WHERE)
    assert err.value.problems[0].path == path
    assert text in err.value.problems[0].message


def test_axis_keys_are_canonical():
    assert expand.axis_key("base", ()) == "base"
    assert expand.axis_key("onnxruntime_openvino", ()) == "packages.onnxruntime-openvino"
    assert expand.axis_key("packages.Scipy", ()) == "packages.scipy"
    with pytest.raises(problems.PlanError) as err:
        expand.axis_key("pyhton", ("m",))
    assert "did you mean 'python'" in err.value.problems[0].message


# -- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("base, python, packages, varied, expected", [
    ("bullseye", "system", {"onnxruntime": "1.8.0", "numpy": "1.23.5"}, (), "bullseye-ort1.8.0"),
    ("bookworm", "system", {"onnxruntime-openvino": "1.24.1"}, (), "bookworm-ortov1.24.1"),
    ("ubuntu18.04", "3.6", {"onnxruntime-gpu": "1.7.0"}, (), "ubuntu18.04-py3.6-ortgpu1.7.0"),
    ("bookworm", "system", {"onnxruntime": "1.20.1", "numpy": "2.1.0"}, ("numpy",),
     "bookworm-ort1.20.1-numpy2.1.0"),
    ("bookworm", "system", {"torch": "2.5.0+cpu"}, (), "bookworm-torch2.5.0-cpu"),
])
def test_generated_ids(base, python, packages, varied, expected):
    assert expand.environment_id(base, python, packages, varied) == expected
    assert grammar.check_id(expected) is None


def test_ids_do_not_depend_on_package_order():
    a = expand.environment_id("b", "system", {"numpy": "1", "onnxruntime": "2"}, ("numpy",))
    b = expand.environment_id("b", "system", {"onnxruntime": "2", "numpy": "1"}, ("numpy",))
    assert a == b == "b-ort2-numpy1"


@pytest.mark.parametrize("bad", ["Upper", "-lead", "trail-", "a--b", "a b", "x" * 64, "a\n"])
def test_bad_ids_are_refused(bad):
    assert grammar.check_id(bad)


def test_slug_collapses_separators():
    assert idwords.slug("A+B__c..d") == "a-b_c.d"


def test_a_file_slug_keeps_every_id_and_never_joins_two_names():
    for name in ("cnn", "cnn-b8", "a.b_c", "x" * 60):
        assert idwords.file_slug(name) == name
    # what config refuses (a run directory edited by hand) gets its hash: no shared file
    names = ["CNN", "cnn ", "c/n/n", "../cnn", "x" * 61, "\u00e9"]
    slugs = [idwords.file_slug(n) for n in names]
    assert len(set(slugs) | {"cnn"}) == len(names) + 1
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*", s) for s in slugs)


def test_cell_ids_use_short_provider_names():
    assert expand.cell_id("e", "cnn", "openvino") == "e--cnn--openvino"
    assert expand.cell_id("e", "cnn", "MIGraphXExecutionProvider") == "e--cnn--migraphx"


# -- environments, cells, selection ---------------------------------------------------------

BASE = Base("bookworm", "debian:bookworm", "debian")


def env(env_id: str, providers=("cpu",), **packages: str) -> Environment:
    pins = tuple(sorted((k.replace("_", "-"), v) for k, v in packages.items()))
    return Environment(env_id, BASE, "system", pins, tuple(providers))


def test_check_environment_finds_known_breakage():
    found = expand.check_environment(env("e", ("openvino",), onnxruntime="1.8.0", numpy="2.0.0"))
    keys = [key for key, _, _ in found]
    assert keys == [("providers",), ("packages", "numpy")]
    assert expand.check_environment(env("e", ("cpu",), onnxruntime="1.20.1", numpy="2.0.0")) == []
    two = expand.check_environment(env("e", onnxruntime="1.20.1", onnxruntime_openvino="1.24.1"))
    assert "both install the onnxruntime module" in two[0][1]


def test_numpy_warning_only_for_old_runtime_without_numpy():
    assert "pin numpy" in (expand.numpy_warning(env("e", onnxruntime="1.8.0")) or "")
    assert expand.numpy_warning(env("e", onnxruntime="1.19.0")) is None
    assert expand.numpy_warning(env("e", onnxruntime="1.8.0", numpy="1.23.5")) is None


def test_model_limits_pick_the_oldest_runtime():
    envs = [env("new", onnxruntime="1.20.1"), env("old", onnxruntime="1.8.0"),
            env("older", onnxruntime_gpu="1.6.0")]
    assert expand.model_limits(envs) == (7, 13, "older")
    assert expand.model_limits([env("new", onnxruntime="1.20.1")]) is None


def test_cells_pair_backends_with_runtimes():
    ort = env("ort", ("openvino", "cpu"), onnxruntime_openvino="1.24.1")
    torch = env("torch", ("cpu", "openvino"), torch="2.5.0")
    wls = [Workload("cnn", "zoo:cnn"), Workload("tcnn", "zoo:cnn", backend="torch")]
    cells = expand.make_cells([ort, torch], wls, {"ort": {"openvino": (("device_type", "CPU"),)}})
    assert [c.id for c in cells] == ["ort--cnn--openvino", "ort--cnn--cpu", "torch--tcnn--cpu"]
    assert cells[0].provider_options == (("device_type", "CPU"),)
    assert cells[1].provider_options == ()


def _cells() -> list[Cell]:
    envs = [env("bullseye-ort1.8.0", onnxruntime="1.8.0"),
            env("bookworm-ortov1.24.1", ("openvino", "cpu"), onnxruntime_openvino="1.24.1")]
    return expand.make_cells(envs, [Workload("cnn", "zoo:cnn"), Workload("tf", "zoo:transformer")])


@pytest.mark.parametrize("only, skip, expected", [
    (None, None, 6),
    (["bookworm-*"], None, 4),
    (["*--openvino"], None, 2),
    (["bullseye-ort1.8.0", "*--tf--cpu"], None, 3),
    (None, ["*--cnn--*"], 3),
    (["bookworm-*"], ["*--cpu"], 2),
])
def test_select_globs_match_environment_and_cell_ids(only, skip, expected):
    assert len(expand.select(_cells(), only, skip)) == expected


def test_select_glob_matching_nothing_lists_the_ids():
    with pytest.raises(ConfigError) as err:
        expand.select(_cells(), ["trixie-*"], None)
    text = str(err.value)
    assert "--only 'trixie-*' matches no environment or cell id" in text
    assert "bookworm-ortov1.24.1--cnn--openvino" in text and "Fix:" in text
    with pytest.raises(ConfigError, match="--skip 'nope' matches no"):
        expand.select(_cells(), None, ["nope"])
    with pytest.raises(ConfigError, match="leaves no cell"):
        expand.select(_cells(), ["bookworm-*"], ["bookworm-*"])


def test_plan_to_dict_is_json_and_complete():
    cells = _cells()
    envs = tuple(dict.fromkeys(c.environment for c in cells))
    plan = Plan(source=__import__("pathlib").Path("m.yaml"), bases=(BASE,), environments=envs,
                workloads=tuple(dict.fromkeys(c.workload for c in cells)), measure=Measure(),
                baseline=envs[0].id, cells=tuple(cells), extra={"model_export": {"opset": 11}})
    doc = json.loads(json.dumps(planmod.plan_to_dict(plan)))
    assert doc["schema"] == "envmatrix.plan/1" and doc["source"] == "m.yaml"
    assert [e["id"] for e in doc["environments"]] == [e.id for e in envs]
    assert doc["environments"][0]["packages"] == {"onnxruntime": "1.8.0"}
    assert doc["cells"][0]["config_hash"] == cells[0].config_hash(Measure())
    assert doc["bases"][0] == {"name": "bookworm", "image": "debian:bookworm", "family": "debian",
                               "bootstrap": None, "python_source": "system", "cuda": None,
                               "cudnn": None}
    assert set(doc) >= {"baseline", "measure", "build", "workloads", "cells"}


def test_format_path():
    assert problems.format_path(("environments", 1, "packages", "onnxruntime")) == \
        "environments[1].packages.onnxruntime"
    assert problems.format_path(("workloads", "my model")) == "workloads['my model']"
    assert problems.format_path(()) == "(top level)"
