"""matrix.yaml loading: the shipped files, matrix entries, paths, errors, resolved plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from unitlib import HEAD, write

from envmatrix.config import cabundle
from envmatrix.config import load as config
from envmatrix.errors import ConfigError, RunDirError
from envmatrix.rundir import planfile
from envmatrix.rundir.plan import plan_to_dict

# HEAD declares more bases than most tests use; the warning about that has its own test.
pytestmark = pytest.mark.filterwarnings("ignore:.*are declared but no environment uses them")

REPO = Path(__file__).resolve().parents[2]
BROKEN = Path(__file__).resolve().parent / "broken"

def load(tmp_path: Path, body: str, **kwargs):
    return config.load_plan(write(tmp_path, body), **kwargs)


# -- the shipped matrix files ---------------------------------------------------------------


def test_default_matrix_is_the_seed_story():
    plan = config.load_plan(REPO / "matrix.yaml")
    assert [e.id for e in plan.environments] == [
        "bullseye-ort1.8.0", "bookworm-ort1.20.1", "bookworm-ortov1.24.1", "trixie-ort1.32.0"]
    assert plan.baseline == "bullseye-ort1.8.0"
    assert plan.environment("bullseye-ort1.8.0").package_dict["numpy"].startswith("1.")
    assert [w.name for w in plan.workloads] == ["cnn", "transformer"]
    assert len(plan.cells) == 10
    ov = [c for c in plan.cells if c.provider == "openvino"]
    assert [c.provider_options for c in ov] == [(("device_type", "CPU"),)] * 2
    assert plan.extra["model_export"] == {"ir_version": 7, "opset": 11}
    assert plan.extra["warnings"] == []


def test_cuda_example_loads():
    plan = config.load_plan(REPO / "examples" / "cuda-upgrade.yaml")
    old = plan.environment("cuda10-bionic-ortgpu1.6.0")
    assert old.base.family == "ubuntu" and old.base.cuda == "10.2" and old.python == "system"
    assert [c.id for c in plan.cells if c.provider == "cuda"] == [
        "cuda10-bionic-ortgpu1.6.0--cnn--cuda",
        "cuda10-bionic-ortgpu1.6.0--transformer--cuda",
        "cuda12-jammy-ortgpu1.22.0--cnn--cuda",
        "cuda12-jammy-ortgpu1.22.0--transformer--cuda"]
    assert plan.baseline == old.id


def test_committed_json_schema_is_current():
    committed = json.loads(config.SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(config.matrix_json_schema())), \
        "regenerate with: python -m envmatrix schema --write"


def test_the_schema_command_prints_and_writes_the_committed_schema(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envmatrix import cli

    assert cli.main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config.matrix_json_schema()
    target = tmp_path / "matrix.schema.json"
    monkeypatch.setattr(config, "SCHEMA_FILE", target)
    assert cli.main(["schema", "--write"]) == 0
    assert target.read_text() == config.schema_text() and not capsys.readouterr().out


# -- values as written ----------------------------------------------------------------------


def test_unquoted_numbers_keep_their_text(tmp_path):
    plan = load(tmp_path, """\
        environments:
          - base: bookworm
            packages: {onnxruntime: 1.20}
            env: {OMP_NUM_THREADS: 2}
        measure: {repeats: 3, min_time_s: 0.5}
        """)
    env = plan.environments[0]
    assert env.package_dict == {"onnxruntime": "1.20"} and env.id == "bookworm-ort1.20"
    assert env.env == (("OMP_NUM_THREADS", "2"),)
    assert plan.measure.repeats == 3 and plan.measure.min_time_s == 0.5


def test_package_names_are_normalized_and_full_provider_names_shortened(tmp_path):
    plan = load(tmp_path, """\
        environments:
          - base: bookworm
            packages: {ONNXRuntime_OpenVINO: "1.24.1"}
            providers: [OpenVINOExecutionProvider, CPUExecutionProvider]
        """)
    env = plan.environments[0]
    assert env.packages == (("onnxruntime-openvino", "1.24.1"),)
    assert env.providers == ("openvino", "cpu")


def test_merge_keys_may_be_overridden_but_not_repeated(tmp_path):
    plan = load(tmp_path, """\
        environments:
          - &common
            base: bookworm
            packages: {onnxruntime: "1.20.1"}
          - <<: *common
            base: trixie
        """)
    assert [e.id for e in plan.environments] == ["bookworm-ort1.20.1", "trixie-ort1.20.1"]


def test_defaults_are_filled_in(tmp_path):
    plan = load(tmp_path, """\
        environments:
          - {base: bookworm, packages: {onnxruntime: "1.20.1"}}
        """)
    assert plan.environments[0].providers == ("cpu",)
    assert plan.environments[0].template == "default.Dockerfile.j2"
    assert plan.measure == config.Measure()
    assert plan.ca_bundle is None and plan.baseline == "bookworm-ort1.20.1"
    assert [b.name for b in plan.bases] == ["bookworm"]  # only used bases reach the plan


def test_unused_bases_warn(tmp_path):
    with pytest.warns(config.ConfigWarning, match="bases bullseye, trixie are declared"):
        plan = load(tmp_path, """\
            environments:
              - {base: bookworm, packages: {onnxruntime: "1.20.1"}}
            """)
    assert "bullseye, trixie" in plan.extra["warnings"][0]


# -- matrix entries -------------------------------------------------------------------------

MATRIX = """\
environments:
  - matrix:
      base: [bookworm, trixie]
      onnxruntime: ["1.20.1", "1.32.0"]
      exclude: [{base: trixie, onnxruntime: "1.20.1"}]
      include:
        - {base: trixie, env: {OMP_NUM_THREADS: "1"}}
        - {base: bookworm, onnxruntime: "1.24.1", description: "new"}
    providers: [cpu]
    description: "upgrade"
"""


def test_matrix_entry_expands_with_include_and_exclude(tmp_path):
    plan = load(tmp_path, MATRIX)
    assert [e.id for e in plan.environments] == [
        "bookworm-ort1.20.1", "bookworm-ort1.32.0", "trixie-ort1.32.0", "bookworm-ort1.24.1"]
    trixie = plan.environment("trixie-ort1.32.0")
    assert trixie.env == (("OMP_NUM_THREADS", "1"),) and trixie.description == "upgrade"
    assert plan.environment("bookworm-ort1.20.1").env == ()
    assert plan.environment("bookworm-ort1.24.1").description == "new"


def test_matrix_include_adds_new_combination_when_it_contradicts(tmp_path):
    plan = load(tmp_path, """\
        environments:
          - matrix:
              base: [bookworm, trixie]
              onnxruntime: ["1.32.0"]
              include:
                - {base: bullseye, onnxruntime: "1.8.0", numpy: "1.23.5", id: legacy}
        """)
    assert [e.id for e in plan.environments] == ["bookworm-ort1.32.0", "trixie-ort1.32.0",
                                                 "legacy"]
    legacy = plan.environment("legacy")
    assert legacy.package_dict == {"numpy": "1.23.5", "onnxruntime": "1.8.0"}
    assert legacy.base.name == "bullseye"


def test_include_extending_rows_with_a_second_runtime_is_caught(tmp_path):
    """GitHub's rule: an include matching on base alone extends every row of that base."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, """\
            environments:
              - matrix:
                  base: [bookworm]
                  onnxruntime: ["1.20.1"]
                  include: [{base: bookworm, onnxruntime-openvino: "1.24.1"}]
            """)
    text = str(err.value)
    assert "matrix.yaml:14: environments[0].matrix.include[0]['onnxruntime-openvino']" not in text
    assert "onnxruntime and onnxruntime-openvino both install the onnxruntime module" in text
    assert "give it an axis value no combination has" in text


def test_matrix_package_axis_enters_the_id(tmp_path):
    plan = load(tmp_path, """\
        environments:
          - matrix:
              packages.numpy: ["1.26.4", "2.1.3"]
            base: bookworm
            packages: {onnxruntime: "1.20.1"}
        """)
    assert [e.id for e in plan.environments] == ["bookworm-ort1.20.1-numpy1.26.4",
                                                 "bookworm-ort1.20.1-numpy2.1.3"]


def test_matrix_provider_axis_enters_the_id(tmp_path):
    plan = load(tmp_path, """\
        environments:
          - matrix:
              providers: [[cpu], [openvino, cpu]]
            base: bookworm
            packages: {onnxruntime-openvino: "1.24.1"}
        """)
    assert [(e.id, e.providers) for e in plan.environments] == [
        ("bookworm-ortov1.24.1-cpu", ("cpu",)),
        ("bookworm-ortov1.24.1-openvino-cpu", ("openvino", "cpu"))]


# -- only / skip ----------------------------------------------------------------------------


def test_only_and_skip_filter_cells_and_environments(tmp_path):
    path = write(tmp_path, MATRIX)
    with pytest.warns(config.ConfigWarning, match="baseline bookworm-ort1.20.1 is not selected"):
        plan = config.load_plan(path, only=["trixie-*"])
    assert [c.id for c in plan.cells] == ["trixie-ort1.32.0--cnn--cpu"]
    assert [b.name for b in plan.bases] == ["trixie"]
    assert plan.baseline == "trixie-ort1.32.0"
    skipped = config.load_plan(path, skip=["trixie-*", "*1.24.1*"])
    assert [c.id for c in skipped.cells] == ["bookworm-ort1.20.1--cnn--cpu",
                                             "bookworm-ort1.32.0--cnn--cpu"]


def test_only_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="matches no environment or cell id"):
        config.load_plan(write(tmp_path, MATRIX), only=["buster-*"])


# -- files ----------------------------------------------------------------------------------


def test_user_models_inside_the_folder_or_model_dirs(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vad.onnx").write_bytes(b"onnx")
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "big.onnx").write_bytes(b"onnx")
    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "models").symlink_to(tmp_path / "models")
    head = HEAD.replace("workloads:\n  cnn: {model: \"zoo:cnn\"}\n", "")
    path = write(sub, """\
        environments:
          - {base: bookworm, packages: {onnxruntime: "1.20.1"}}
        workloads:
          vad: {model: models/vad.onnx, shapes: {input: [1, 512]}, values: {sr: 16000}}
          big: {model: ../shared/big.onnx}
        model_dirs: [../shared]
        """, head=head)
    with pytest.raises(ConfigError) as err:  # the symlink leads outside: refused
        config.load_plan(path)
    assert "workloads.vad.model" in str(err.value) and "outside" in str(err.value)
    path.write_text(path.read_text().replace("[../shared]", "[../shared, ../models]"))
    plan = config.load_plan(path)
    vad = next(w for w in plan.workloads if w.name == "vad")
    assert vad.model == str((tmp_path / "models" / "vad.onnx").resolve())
    assert vad.shapes == (("input", (1, 512)),) and vad.values == (("sr", "16000"),)


def test_ca_bundle_auto_prefers_pip_cert(tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("pem")
    monkeypatch.setenv("PIP_CERT", str(bundle))
    assert cabundle.resolve_ca_bundle() == bundle.resolve()
    assert cabundle.resolve_ca_bundle({"SSL_CERT_FILE": str(bundle)}) == bundle.resolve()
    path = write(tmp_path, """\
        environments:
          - {base: bookworm, packages: {onnxruntime: "1.20.1"}}
        """, head=HEAD.replace("build: {ca_bundle: null}", "build: {ca_bundle: auto}"))
    plan = config.load_plan(path)
    assert plan.ca_bundle == str(bundle.resolve())
    assert plan_to_dict(plan)["build"]["ca_bundle"] == "auto"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such matrix file"):
        config.load_plan(tmp_path / "nope.yaml")


# -- broken files: each names file, line, key path and fix ----------------------------------

BROKEN_CASES = [
    # (file, line, key path, words of the message, words of the fix)
    ("syntax_error", "7:1", None, "YAML syntax error", "correct the YAML"),
    ("duplicate_key", 8, "environments[0].packages.onnxruntime", "appears twice",
     "remove or merge"),
    ("unknown_top_key", 9, "meassure", "did you mean 'measure'", "remove it or use one of"),
    ("unknown_env_key", 6, "environments[0].pakages", "did you mean 'packages'", "remove it"),
    ("version_range", 6, "environments[0].packages.onnxruntime", "'>=1.20' is not an exact",
     'like "1.20.1"'),
    ("shell_in_env", 8, "environments[0].env.OMP_NUM_THREADS", "$(curl", "like \"2\""),
    ("unknown_base", 5, "environments[0].base", "did you mean 'bookworm'", "add it under bases"),
    ("unknown_baseline", 9, "baseline", "did you mean 'bookworm-ort1.20.1'", "use one of"),
    ("python_not_provided", 6, "environments[0].python", "not python 3.6",
     "python_source: deadsnakes"),
    ("numpy2_old_runtime", 8, "environments[0].packages.numpy", "fails to import with numpy 2",
     "pin numpy<2"),
    ("duplicate_ids", 7, "environments[1]", "is also the id of environments[0]",
     "add a distinct id:"),
    ("model_escape", 9, "workloads.stolen.model", "outside the matrix file's folder",
     "model_dirs"),
    ("bad_image", 3, "bases.bookworm.image", "not a docker image reference",
     "like debian:bookworm"),
    ("not_a_mapping", 1, "(top level)", "holds a list, not a mapping", "version: 1"),
    ("repeats_zero", 10, "measure.repeats", "0 is too small: it must be at least 1",
     "value >= 1"),
    ("exclude_matches_nothing", 10, "environments[0].matrix.exclude[0]",
     "matches no combination", "or remove it"),
    ("bad_mirror", 5, "bases.bookworm.bootstrap.mirror", "without spaces or quotes",
     "http://deb.example.org/debian"),
    ("python_tag", 3, "bases.bookworm.image", "python/object/apply:os.system",
     "remove the tag"),
    ("unknown_zoo_model", 8, "workloads.cnn.model", "'zoo:resnet' is not in the zoo",
     "zoo:cnn"),
    ("provider_without_package", 7, "environments[0].providers",
     "'openvino' needs onnxruntime-openvino", "add onnxruntime-openvino"),
    ("unknown_axis", 7, "environments[0].matrix.onnxruntme", "did you mean 'onnxruntime'",
     "packages.<name>"),
    ("bad_axis_value", 8, "environments[0].matrix.onnxruntime[1]", "--index-url",
     "exact version"),
    ("missing_version", 1, "(top level)", "required key 'version' is missing",
     "add `version: 1`"),
    ("ir_too_new", 9, "model_export.ir_version", "newer than environment bullseye-ort1.8.0",
     "model_export.ir_version: 7"),
]


@pytest.mark.parametrize("name, line, keypath, message, fix", BROKEN_CASES,
                         ids=[c[0] for c in BROKEN_CASES])
def test_broken_matrix_files(name, line, keypath, message, fix):
    path = BROKEN / f"{name}.yaml"
    with pytest.raises(ConfigError) as err:
        config.load_plan(path)
    text = str(err.value)
    where = f"{path}:{line}: " + (f"{keypath}: " if keypath else "")
    assert text.startswith(where), text
    first = text.splitlines()[0]
    assert message in first, text
    assert "Fix: " in text and fix in text.split("Fix: ", 1)[1], text
    assert "pydantic" not in text and "errors.pydantic.dev" not in text


def test_every_broken_fixture_is_tested():
    assert {p.stem for p in BROKEN.glob("*.yaml")} == {c[0] for c in BROKEN_CASES}


def test_several_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, """\
            environments:
              - base: bookworm
                packages: {onnxruntime: "1.20 ; rm"}
                env: {lower: "1"}
            measure: {repeats: -1}
            """)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'matrix.yaml'}: 3 problems:")
    for where in ("matrix.yaml:11: environments[0].packages.onnxruntime",
                  "matrix.yaml:12: environments[0].env.lower",
                  "matrix.yaml:13: measure.repeats"):
        assert where in text


def test_matrix_entry_cannot_carry_an_id(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, """\
            environments:
              - id: mine
                matrix: {base: [bookworm]}
                packages: {onnxruntime: "1.20.1"}
            """)
    assert "matrix.yaml:10: environments[0].id: a matrix entry makes several" in str(err.value)
    assert "include entry that sets id:" in str(err.value)


def test_axis_and_shared_value_conflict(tmp_path):
    with pytest.raises(ConfigError, match=r"environments\[0\].matrix.base: 'base' is both an "
                                          "axis and a shared value"):
        load(tmp_path, """\
            environments:
              - matrix: {base: [bookworm]}
                base: trixie
                packages: {onnxruntime: "1.20.1"}
            """)


def test_generated_id_collision_in_a_matrix(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, """\
            environments:
              - matrix:
                  include:
                    - {base: bookworm, onnxruntime: "1.20.1"}
                    - {base: bookworm, onnxruntime: "1.20.1", env: {A: "1"}}
            """)
    assert ("matrix.yaml:10: environments[0]: environment id 'bookworm-ort1.20.1' is also the "
            "id of environments[0] (another combination of this matrix)") in str(err.value)


# -- resolved plan --------------------------------------------------------------------------


def test_dump_and_read_resolved_round_trip(tmp_path):
    plan = config.load_plan(REPO / "matrix.yaml")
    target = tmp_path / "run" / "matrix.resolved.yaml"
    planfile.dump_resolved(plan, target, {"run_id": "r1", "out": tmp_path})
    back = planfile.read_resolved(target)
    assert back.run.run_id == "r1"
    assert back.plan == plan
    assert plan_to_dict(back.plan) == json.loads(json.dumps(plan_to_dict(plan)))
    assert [p.name for p in target.parent.iterdir()] == ["matrix.resolved.yaml"]


def test_read_resolved_refuses_other_files(tmp_path):
    with pytest.raises(RunDirError, match="missing"):
        planfile.read_resolved(tmp_path / "none.yaml")
    other = tmp_path / "x.yaml"
    other.write_text("schema: something/9\n")
    with pytest.raises(RunDirError, match="expected schema envmatrix.plan/1"):
        planfile.read_resolved(other)
