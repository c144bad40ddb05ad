"""Knobs: session settings, provider options, threads/cpuset/memory per environment and as axes.

Config refusals name the environment, the setting and the release that introduced it; ids
are short, stable and unique; the harness gets settings as data (JSON), never via a shell.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from envmatrix.analysis.rundata import knob_fields, load_run
from envmatrix.config import expand, spec
from envmatrix.config import load as config
from envmatrix.errors import ConfigError
from envmatrix.report.build import build_report
from envmatrix.report.sections import with_knob_columns
from envmatrix.rundir import planfile
from envmatrix.rundir.idwords import knob_names, knob_part
from envmatrix.rundir.plan import (
    NO_KNOBS,
    Base,
    Cell,
    Environment,
    Knobs,
    Measure,
    Workload,
    plan_from_dict,
    plan_to_dict,
)
from envmatrix.running import containers
from envmatrix_harness import cli as harness_cli
from envmatrix_harness import compat, optiontable, parent

pytestmark = pytest.mark.filterwarnings("ignore:.*are declared but no environment uses them")

HEAD = """\
version: 1
bases:
  bookworm: {image: "debian:bookworm"}
  trixie: {image: "debian:trixie"}
workloads:
  mlp: {model: "zoo:mlp"}
build: {ca_bundle: null}
"""
OV = """\
  - base: bookworm
    packages: {onnxruntime-openvino: "%s"}
    providers: [openvino, cpu]
    provider_options:
      openvino: %s
"""


def load(tmp_path: Path, body: str, **kwargs):
    path = tmp_path / "matrix.yaml"
    path.write_text(HEAD + "environments:\n" + textwrap.dedent(body))
    return config.load_plan(path, **kwargs)


def refused(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, body)
    return str(err.value)


# -- axes and ids ---------------------------------------------------------------------------


def test_threads_axis_makes_one_environment_with_two_cells(tmp_path):
    plan = load(tmp_path, """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
          matrix: {threads: [1, 2]}
        """)
    assert [e.id for e in plan.environments] == ["trixie-ort1.32.0"]  # one image
    assert [c.id for c in plan.cells] == ["trixie-ort1.32.0--mlp--cpu--t1",
                                          "trixie-ort1.32.0--mlp--cpu--t2"]
    assert [c.knobs.threads for c in plan.cells] == [1, 2]
    assert [c.measure_for(plan.measure).threads for c in plan.cells] == [1, 2]


def test_cells_that_set_nothing_new_keep_their_ids_and_hashes(tmp_path):
    body = """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
        """
    plan = load(tmp_path, body)
    assert [c.id for c in plan.cells] == ["trixie-ort1.32.0--mlp--cpu"]
    assert plan.cells[0].knobs == NO_KNOBS
    # The hash a cell had before knobs existed: asdict without the knobs field.
    old = replace(plan.cells[0])
    assert old.config_hash(plan.measure) == plan.cells[0].config_hash(plan.measure)
    fixed = load(tmp_path, body + "  threads: 2\n")  # set, but not varied: same id
    assert [c.id for c in fixed.cells] == ["trixie-ort1.32.0--mlp--cpu"]
    assert fixed.cells[0].config_hash(plan.measure) != plan.cells[0].config_hash(plan.measure)


def test_session_axes_and_include_slug_every_varied_setting(tmp_path):
    plan = load(tmp_path, """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
          matrix:
            session.graph_optimization: [basic, all]
            session.execution_mode: [sequential, parallel]
            include:
              - {session.execution_mode: parallel, session.inter_op_threads: 2}
          session: {enable_mem_pattern: false, config: {session.intra_op.allow_spinning: "0"}}
        """)
    ids = [c.id.split("--", 3)[3] for c in plan.cells]
    assert ids == ["opt-basic--seq", "opt-basic--inter2--par", "opt-all--seq",
                   "opt-all--inter2--par"]
    session = plan.cells[1].knobs.session_dict
    assert session == {"graph_optimization": "basic", "execution_mode": "parallel",
                       "inter_op_threads": 2, "enable_mem_pattern": False,
                       "config": {"session.intra_op.allow_spinning": "0"}}


def test_knob_parts_are_short_and_stable():
    part = knob_part
    assert part("threads", 1) == "t1"
    assert part("cpuset", "0-1") == "cpu0-1" and part("cpuset", "0,1") == "cpu0_1"
    assert part("memory_limit", "2g") == "mem2g"
    assert part("session.graph_optimization", "all") == "opt-all"
    assert part("session.enable_cpu_mem_arena", False) == "arena-off"
    assert part("session.config.session.intra_op.allow_spinning", "0") == \
        "intra_op.allow_spinning-0"
    assert part("provider_options.num_streams", 2) == "num_streams-2"
    assert part("provider_options.device_type", "GPU.0") == "device_type-gpu.0"
    mapping = {"CPU": {"PERFORMANCE_HINT": "LATENCY"}}
    assert part("provider_options.load_config", mapping) == \
        part("provider_options.load_config", json.loads(json.dumps(mapping)))  # stable
    assert part("provider_options.load_config", mapping) == "load_config-latency"
    assert part("provider_options.load_config", mapping, exact=True).startswith("load_config-h")
    long = {"CPU": {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", "X": "a b"}}
    assert part("provider_options.load_config", long).startswith("load_config-h")
    assert part("provider_options.cache_dir", "/tmp/a b").startswith("cache_dir-h")


def test_provider_option_axis_ids_and_shared_cpu_cell(tmp_path):
    plan = load(tmp_path, OV % ("1.24.1", "{device_type: CPU}") + """\
    matrix: {provider_options.openvino.num_streams: [1, 2]}
""")
    assert [c.id for c in plan.cells] == [
        "bookworm-ortov1.24.1--mlp--openvino--num_streams-1",
        "bookworm-ortov1.24.1--mlp--openvino--num_streams-2",
        "bookworm-ortov1.24.1--mlp--cpu"]  # the cpu cell does not use openvino options: once
    assert dict(plan.cells[1].provider_options) == {"device_type": "CPU", "num_streams": 2}


def test_threads_reach_openvino_num_of_threads(tmp_path):
    plan = load(tmp_path, OV % ("1.24.1", "{device_type: CPU}") + "    threads: 2\n")
    ov = plan.cells[0]
    assert dict(ov.provider_options) == {"device_type": "CPU", "num_of_threads": 2}
    explicit = load(tmp_path, OV % ("1.24.1", "{num_of_threads: 4}") + "    threads: 2\n")
    assert dict(explicit.cells[0].provider_options) == {"num_of_threads": 4}


def test_same_environment_in_two_entries_with_different_knobs_are_variants(tmp_path):
    plan = load(tmp_path, """\
        - {base: trixie, packages: {onnxruntime: "1.32.0"}, cpuset: "0"}
        - {base: trixie, packages: {onnxruntime: "1.32.0"}, cpuset: "0,1", memory_limit: 2g}
        """)
    assert [c.id for c in plan.cells] == ["trixie-ort1.32.0--mlp--cpu--cpu0",
                                          "trixie-ort1.32.0--mlp--cpu--cpu0_1--mem2g"]
    assert plan.cells[1].measure_for(plan.measure).memory_limit == "2g"
    text = refused(tmp_path, """\
        - {base: trixie, packages: {onnxruntime: "1.32.0"}, cpuset: "0"}
        - {base: trixie, packages: {onnxruntime: "1.32.0"}, cpuset: "0"}
        """)
    assert "is also the id of environments[0]" in text


def test_ids_stay_unique_in_a_bigger_matrix(tmp_path):
    plan = load(tmp_path, """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
          matrix:
            threads: [1, 2, 4]
            cpuset: ["0", "0-1"]
            session.enable_mem_pattern: [true, false]
        """)
    ids = [c.id for c in plan.cells]
    assert len(ids) == len(set(ids)) == 12
    assert "trixie-ort1.32.0--mlp--cpu--t4--cpu0-1--mempat-off" in ids


# -- refusals -------------------------------------------------------------------------------


def test_openvino_option_newer_than_the_pin_is_refused_with_its_release(tmp_path):
    text = refused(tmp_path, OV % ("1.17.0", "{load_config: {CPU: {PERFORMANCE_HINT: LATENCY}}}"))
    assert "environments[0].provider_options.openvino.load_config: environment " \
        "bookworm-ortov1.17.0: OpenVINO provider option 'load_config' was introduced in " \
        "onnxruntime-openvino 1.20 (pinned: 1.17.0)." in text


def test_unknown_and_mistyped_openvino_options(tmp_path):
    text = refused(tmp_path, OV % ("1.24.1", "{num_stream: 2, enable_qdq_optimizer: maybe}"))
    assert "'num_stream' is not an OpenVINO EP option (did you mean 'num_streams'?)" in text
    assert "'enable_qdq_optimizer' must be true or false, got 'maybe'" in text
    removed = refused(tmp_path, OV % ("1.24.1", "{enable_npu_fast_compile: true}"))
    assert "was removed in onnxruntime-openvino 1.24" in removed


def test_session_config_key_newer_than_the_pin_is_refused(tmp_path):
    text = refused(tmp_path, """\
        - base: bookworm
          packages: {onnxruntime: "1.7.0", numpy: "1.23.5"}
          session: {config: {session.intra_op.allow_spinning: "0"}}
        """)
    assert "environment bookworm-ort1.7.0: session config key " \
        "'session.intra_op.allow_spinning' was introduced in onnxruntime 1.8, and " \
        "onnxruntime 1.7.0 does not know it." in text


def test_unknown_config_key_warns(tmp_path):
    with pytest.warns(config.ConfigWarning, match="session.intra_op.alow_spinning"):
        load(tmp_path, """\
            - base: trixie
              packages: {onnxruntime: "1.32.0"}
              session: {config: {session.intra_op.alow_spinning: "0"}}
            """)


@pytest.mark.parametrize(("body", "words"), [
    ("matrix: {thread: [1]}", "unknown matrix key 'thread' (did you mean 'threads'?)"),
    ("matrix: {session.graph_optimisation: [all]}",
     "(did you mean 'session.graph_optimization'?)"),
    ("session: {graph_optimisation: all}", "(did you mean 'graph_optimization'?)"),
    ("session: {graph_optimization: fast}", "'fast' is not allowed here"),
    ("session: {intra_op_threads: 0}", "too small"),
    ("threads: 2\nsession: {intra_op_threads: 3}", "contradicts threads 2"),
    ("provider_options: {cpu: {x: {CPU: 'a;b'}}}", "'a;b' is not an option value"),
    ("cpuset: '0;rm -rf /'", "is not a CPU list"),
    ("session: {config: {'session.x': '$(id)'}}", "is not an option value"),
    ("matrix: {provider_options.openvino: [1]}", "unknown matrix key"),
])
def test_knob_mistakes_are_config_errors(tmp_path, body, words):
    text = refused(tmp_path, "  - base: trixie\n    packages: {onnxruntime: \"1.32.0\"}\n"
                   + textwrap.indent(body, "    ") + "\n")
    assert words in text


def test_session_settings_need_onnxruntime(tmp_path):
    text = refused(tmp_path, """\
        - base: trixie
          packages: {torch: "2.5.0"}
          session: {graph_optimization: all}
        """)
    assert "session settings are onnxruntime's" in text


def test_session_spec_names_match_the_harness_table():
    assert set(spec.SessionSpec.model_fields) - {"config"} == set(optiontable.SESSION_SETTINGS)
    assert set(expand.SESSION_AXES) == {f"session.{n}" for n in optiontable.SESSION_SETTINGS}


# -- hand-off to the harness, plan file, report ---------------------------------------------


def test_typed_options_and_session_reach_the_harness_as_json(tmp_path):
    plan = load(tmp_path, OV % ("1.24.1", "{device_type: CPU, num_streams: 2, "
                                "load_config: {CPU: {PERFORMANCE_HINT: \"LATENCY /x\"}}}")
                + "    session: {graph_optimization: all}\n")
    cell = plan.cells[0]
    argv = containers.harness_command(cell, cell.measure_for(plan.measure),
                                      containers.INPUTS_MOUNT / "m.onnx",
                                      containers.INPUTS_MOUNT / "i.npz")
    options = json.loads(argv[argv.index("--provider-options-json") + 1])
    assert options["load_config"] == {"CPU": {"PERFORMANCE_HINT": "LATENCY /x"}}
    assert options["num_streams"] == 2
    assert json.loads(argv[argv.index("--session-options") + 1]) == {"graph_optimization": "all"}
    # the harness parses exactly that back, and hands its children the same data
    assert argv[:3] == [containers.VENV_PYTHON, "-m", "harness"]
    args = harness_cli.build_parser().parse_args(argv[3:])
    settings = harness_cli.settings_from(args)
    assert settings["provider_options"] == options
    child = parent.child_argv(settings, 0, "c.json")
    assert json.loads(child[child.index("--provider-options-json") + 1]) == options
    strings = compat.runtime_option_values(compat.OPENVINO, options, (1, 24, 1))
    assert strings["num_streams"] == "2" and json.loads(strings["load_config"]) == \
        options["load_config"]


def test_text_only_options_keep_the_old_command_line(tmp_path):
    plan = load(tmp_path, OV % ("1.24.1", "{device_type: CPU}"))
    argv = containers.harness_command(plan.cells[0], plan.measure,
                                      containers.INPUTS_MOUNT / "m.onnx",
                                      containers.INPUTS_MOUNT / "i.npz")
    assert "--provider-option" in argv and "device_type=CPU" in argv
    assert "--provider-options-json" not in argv and "--session-options" not in argv


def test_resolved_plan_round_trips_knobs(tmp_path):
    plan = load(tmp_path, OV % ("1.24.1", "{load_config: {CPU: {NUM_STREAMS: '2'}}}") + """\
    session: {execution_mode: parallel, config: {session.intra_op.allow_spinning: "0"}}
    matrix: {threads: [1, 2], memory_limit: [1g]}
""")
    doc = json.loads(json.dumps(plan_to_dict(plan)))
    back = plan_from_dict(doc).plan
    assert back == plan
    assert [c.config_hash(back.measure) for c in back.cells] == [
        c.config_hash(plan.measure) for c in plan.cells]


def test_report_adds_a_column_only_for_varied_settings(tmp_path):
    plan = load(tmp_path, """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
          session: {execution_mode: sequential}
          matrix: {threads: [1, 2]}
        """)
    assert knob_names(plan.cells) == ["threads"]
    headers, rows = with_knob_columns(plan.cells, ["environment", "provider", "p50"],
                                             [["e", "cpu", 1.0], ["e", "cpu", 2.0]])
    assert headers == ["environment", "provider", "threads", "p50"]
    assert [r[2] for r in rows] == ["1", "2"]
    assert knob_fields(plan.cells, plan.cells[1]) == {"threads": 2}
    still = load(tmp_path, """\
        - {base: trixie, packages: {onnxruntime: "1.32.0"}}
        """)
    assert knob_names(still.cells) == []
    assert with_knob_columns(still.cells, ["a", "b"], [[1, 2]]) == (["a", "b"], [[1, 2]])


def test_knobs_to_dict_and_measure_override():
    knobs = Knobs(threads=2, memory_limit="1g", session=(("graph_optimization", "all"),))
    assert knobs.to_dict() == {"threads": 2, "memory_limit": "1g",
                               "session": {"graph_optimization": "all"}}
    measure = Measure(threads=4, cpuset="0")
    env = Environment("e", Base("b", "debian:trixie", "debian"), "system",
                      (("onnxruntime", "1.32.0"),), ("cpu",))
    cell = Cell("e--w--cpu", env, Workload("w", "zoo:mlp"), "cpu", (), knobs=knobs)
    got = cell.measure_for(measure)
    assert (got.threads, got.cpuset, got.memory_limit) == (2, "0", "1g")


def test_list_shows_each_cells_settings(tmp_path):
    plan = load(tmp_path, """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
          matrix: {threads: [1, 2]}
        """)
    assert expand.knob_summary(plan.cells[0]) == "threads=1"


# -- the harness's side of the table (no runtime needed) -------------------------------------


def test_option_table_brackets_releases():
    config_key = {"config": {"session.intra_op.allow_spinning": "0"}}
    assert optiontable.session_problems(config_key, "onnxruntime", "1.8.0") == []
    assert optiontable.session_problems(config_key, "onnxruntime", "1.7.0") == [(
        "config.session.intra_op.allow_spinning",
        "was introduced in onnxruntime 1.8, and onnxruntime 1.7.0 does not know it")]
    bracketed = {"config": {"session.force_spinning_stop": "1"}}
    assert optiontable.session_problems(bracketed, "onnxruntime", "1.12.0") == []  # may know
    assert "between onnxruntime 1.9 and 1.16" in \
        optiontable.session_problems(bracketed, "onnxruntime", "1.8.0")[0][1]
    assert "num_streams" in optiontable.openvino_names("1.16.0")
    assert "num_streams" not in optiontable.openvino_names("1.15.0")
    assert optiontable.openvino_problems({"precision": "FP32"}, "1.16.0")[0][2] == "release"


class _FakeOptions:
    intra_op_num_threads = 0

    def add_session_config_entry(self, key, value):
        self.entry = (key, value)


def test_apply_session_refuses_a_setting_the_release_lacks():
    options = _FakeOptions()
    compat.apply_session(None, options, {"intra_op_threads": 3, "config": {"a.b": "1"}})
    assert options.intra_op_num_threads == 3 and options.entry == ("a.b", "1")
    with pytest.raises(AttributeError, match="enable_mem_pattern"):
        compat.apply_session(None, _FakeOptions(), {"enable_mem_pattern": False})


def test_load_config_before_1_24_goes_as_a_file(tmp_path):
    options = {"load_config": {"CPU": {"NUM_STREAMS": "2"}}, "enable_qdq_optimizer": True}
    strings = compat.runtime_option_values(compat.OPENVINO, options, (1, 23, 0), str(tmp_path))
    assert strings["enable_qdq_optimizer"] == "true"
    assert json.loads(Path(strings["load_config"]).read_text()) == options["load_config"]
    text = compat.runtime_option_values(compat.OPENVINO, options, (1, 24, 1))["load_config"]
    assert json.loads(text) == options["load_config"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--session-options", "{"], "--session-options is not valid JSON"),
    (["--session-options", "[1]"], "must be a JSON object, got list"),
    (["--session-options", '{"graph_optimisation": "all"}'], "unknown setting"),
    (["--provider-options-json", '"x"'], "must be a JSON object, got str"),
])
def test_harness_refuses_bad_json_settings(argv, message):
    from envmatrix_harness.errors import UsageError
    with pytest.raises(UsageError, match=message):
        harness_cli.settings_from(harness_cli.build_parser().parse_args(
            ["--model", "m.onnx", *argv]))


def test_graph_optimization_flag_joins_the_session_settings():
    from envmatrix_harness import backends
    settings = {"graph_optimization": "basic", "session": {"execution_mode": "parallel"}}
    assert backends.requested_session(settings) == {"execution_mode": "parallel",
                                                    "graph_optimization": "basic"}


@pytest.mark.filterwarnings("ignore:.*is not in envmatrix's table")
def test_a_cell_id_too_long_for_a_file_name_is_refused(tmp_path):
    axes = ", ".join(f"session.config.session.k{i}.a_rather_long_config_key_name: [\"0\", \"1\"]"
                     for i in range(6))
    text = refused(tmp_path, f"""\
        - base: trixie
          packages: {{onnxruntime: "1.32.0"}}
          matrix: {{{axes}}}
        """)
    assert "is longer than 200 characters (it names files)" in text


def test_the_documented_example_loads(tmp_path):
    text = (Path(__file__).resolve().parents[2] / "docs" / "matrix-reference.md").read_text()
    section = text[text.index("## Knobs"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n", 10)]
    path = tmp_path / "matrix.yaml"
    path.write_text(HEAD + example)
    plan = config.load_plan(path)
    ids = [c.id for c in plan.cells]
    assert "trixie-ort1.32.0--mlp--cpu--t2--opt-all--par" in ids
    assert "bookworm-ortov1.24.1--mlp--openvino--num_streams-2" in ids
    assert len(ids) == len(set(ids)) == 4 + 3


def test_verdicts_pair_knob_variants(tmp_path):
    from envmatrix.analysis.stats import is_baseline_cell, match_baseline
    plan = load(tmp_path, """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
          matrix: {threads: [1, 2]}
        - base: bookworm
          packages: {onnxruntime: "1.20.1"}
          matrix: {threads: [1, 2]}
        """)
    t1, t2, other1, other2 = plan.cells
    assert [is_baseline_cell(plan, c) for c in plan.cells] == [True, False, False, False]
    assert match_baseline(plan.cells, plan.baseline, t2) == (t1, [])  # t2 against t1
    assert match_baseline(plan.cells, plan.baseline, other2) == (t2, [])  # same knobs
    assert match_baseline(plan.cells, plan.baseline, other1) == (t1, [])


def test_report_of_a_threads_axis_has_the_column_and_a_verdict_t2_against_t1(tmp_path):
    from fakeruns import fake_result

    from envmatrix.rundir.layout import create_run_dir
    plan = load(tmp_path, """\
        - base: trixie
          packages: {onnxruntime: "1.32.0"}
          matrix: {threads: [1, 2]}
        """)
    run = create_run_dir(tmp_path / "reports", run_id="run-1")
    planfile.dump_resolved(plan, run.resolved_path, {"run_id": "run-1"})
    for seed, (cell, p50) in enumerate(zip(plan.cells, (0.005, 0.004))):
        res = fake_result("trixie-ort1.32.0--mlp--cpu", p50=p50, repeats=8, seed=seed)
        res["cell"] = cell.id
        res["host"]["config_hash"] = cell.config_hash(plan.measure)
        (run.results_dir / f"{cell.id}.json").write_text(json.dumps(res))
    path = build_report(run.path)
    text = path.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| environment"))
    assert [h.strip() for h in header.strip("|").split("|")][:3] == [
        "environment", "provider", "threads"]
    data = load_run(run.path)
    verdict = data.verdict_of("trixie-ort1.32.0--mlp--cpu--t2")
    assert verdict is not None and verdict.baseline == "trixie-ort1.32.0--mlp--cpu--t1"
    assert re.search(r"\| trixie-ort1\.32\.0 \(t2\) +\| mlp", text)  # summary
    rows = (run.path / "results.csv").read_text().splitlines()
    assert rows[0].endswith(",threads") and rows[2].endswith(",2")


def test_mappings_alike_in_their_leaf_words_get_hash_ids(tmp_path):
    """{CPU: {HINT: LATENCY}} and {GPU: {HINT: LATENCY}} would both read `latency`: the ids
    of such variants fall back to the mappings' hashes, so they stay distinct."""
    from envmatrix.config import load as config
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nbases:\n  b: {image: 'debian:bookworm'}\nenvironments:\n"
        "  - base: b\n    packages: {onnxruntime-openvino: '1.24.1'}\n"
        "    providers: [openvino]\n    matrix:\n      provider_options.openvino.load_config:\n"
        "        - {CPU: {PERFORMANCE_HINT: LATENCY}}\n"
        "        - {GPU: {PERFORMANCE_HINT: LATENCY}}\n"
        "workloads:\n  mlp: {model: 'zoo:mlp'}\n")
    ids = [c.id for c in config.load_plan(path).cells]
    assert len(set(ids)) == 2 and all("--load_config-h" in i for i in ids)


def test_concurrency_is_a_knob_and_an_axis(tmp_path):
    from pathlib import PurePosixPath

    from envmatrix.config import load as config
    from envmatrix.running.containers import harness_command
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nbases:\n  b: {image: 'debian:bookworm'}\nenvironments:\n"
        "  - base: b\n    packages: {onnxruntime: '1.20.1'}\n    matrix:\n"
        "      concurrency: [1, 2]\nworkloads:\n  mlp: {model: 'zoo:mlp'}\n")
    plan = config.load_plan(path)
    assert [c.id.rsplit("--", 1)[1] for c in plan.cells] == ["c1", "c2"]
    argv = harness_command(plan.cells[1], plan.measure, PurePosixPath("/m"), PurePosixPath("/i"))
    assert argv[argv.index("--concurrency") + 1] == "2" and "--batch" not in argv
    assert plan.cells[0].knobs.concurrency == 1


def test_backend_and_batch_lists_expand_into_workloads_of_one_network(tmp_path):
    from pathlib import PurePosixPath

    from envmatrix.config import load as config
    from envmatrix.rundir.plan import plan_from_dict, plan_to_dict
    from envmatrix.running.containers import harness_command
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nbases:\n  b: {image: 'debian:bookworm'}\nenvironments:\n"
        "  - base: b\n    packages: {onnxruntime: '1.20.1', torch: '2.13.0+cpu'}\n"
        "workloads:\n  cnn: {model: 'zoo:cnn', backend: [onnxruntime, torch], batch: [1, 8]}\n"
        "  mlp: {model: 'zoo:mlp', batch: 4}\n")
    plan = config.load_plan(path)
    names = [(w.name, w.backend, w.batch, w.network_name) for w in plan.workloads]
    assert names == [("cnn-ort-b1", "onnxruntime", 1, "cnn"),
                     ("cnn-ort-b8", "onnxruntime", 8, "cnn"),
                     ("cnn-torch-b1", "torch", 1, "cnn"), ("cnn-torch-b8", "torch", 8, "cnn"),
                     ("mlp", "onnxruntime", 4, "mlp")]
    cell = next(c for c in plan.cells if c.workload.name == "cnn-torch-b8")
    argv = harness_command(cell, plan.measure, PurePosixPath("/m"), PurePosixPath("/i"))
    assert argv[argv.index("--batch") + 1] == "8" and argv[argv.index("--backend") + 1] == "torch"
    back = plan_from_dict(plan_to_dict(plan)).plan
    assert back.workloads == plan.workloads
    assert [c.config_hash(plan.measure) for c in back.cells] == \
        [c.config_hash(plan.measure) for c in plan.cells]


def test_a_backend_list_needs_a_zoo_model(tmp_path):
    from envmatrix.config import load as config
    from envmatrix.errors import ConfigError
    (tmp_path / "m.onnx").write_bytes(b"x")
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nbases:\n  b: {image: 'debian:bookworm'}\nenvironments:\n"
        "  - base: b\n    packages: {onnxruntime: '1.20.1', torch: '2.13.0+cpu'}\n"
        "workloads:\n  net: {model: m.onnx, backend: [onnxruntime, torch]}\n")
    with pytest.raises(ConfigError) as err:
        config.load_plan(path)
    assert "workloads.net.backend" in str(err.value) and "network:" in str(err.value)


def test_list_shows_the_backend_and_batch_of_expanded_workloads(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nbases:\n  b: {image: 'debian:bookworm'}\nenvironments:\n"
        "  - base: b\n    packages: {onnxruntime: '1.20.1', torch: '2.13.0+cpu'}\n"
        "    concurrency: 2\nworkloads:\n"
        "  cnn: {model: 'zoo:cnn', backend: [onnxruntime, torch], batch: 8}\n"
        "  mlp: {model: 'zoo:mlp'}\n")
    summaries = {c.id.split("--")[1]: expand.knob_summary(c)
                 for c in config.load_plan(path).cells}
    assert summaries == {"cnn-ort": "backend=onnxruntime batch=8 concurrency=2",
                         "cnn-torch": "backend=torch batch=8 concurrency=2",
                         "mlp": "concurrency=2"}
