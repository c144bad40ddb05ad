"""The command line without an engine: matrix errors stop everything before any engine contact.

`envmatrix.cli.main` runs in-process with the working directory a temporary folder, so a
`reports/` folder it wrongly creates shows up there. Engine contact is refused and recorded by
replacing `Engine.connect` and `docker.from_env`: a matrix error must be found before either.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from envmatrix import __version__, cli
from envmatrix.config import load as config
from envmatrix.running.engine import Engine

REPO = Path(__file__).resolve().parents[2]
BROKEN = Path(__file__).resolve().parent / "broken"
DEFAULT_MATRIX = REPO / "matrix.yaml"
TEST_MATRICES = REPO / "tests" / "integration" / "matrices"

# HEAD-style matrices in these tests declare bases they do not all use; that warning is tested
# in test_config.py.
pytestmark = pytest.mark.filterwarnings("ignore::envmatrix.config.load.ConfigWarning")

# (fixture name, line, key path): fourteen kinds of broken matrix files, each from
# tests/unit/broken/, each found by a different rule of the loader.
BROKEN_CASES = [
    ("bad_axis_value", 8, "environments[0].matrix.onnxruntime[1]"),
    ("bad_image", 3, "bases.bookworm.image"),
    ("bad_mirror", 5, "bases.bookworm.bootstrap.mirror"),
    ("duplicate_ids", 7, "environments[1]"),
    ("duplicate_key", 8, "environments[0].packages.onnxruntime"),
    ("exclude_matches_nothing", 10, "environments[0].matrix.exclude[0]"),
    ("ir_too_new", 9, "model_export.ir_version"),
    ("numpy2_old_runtime", 8, "environments[0].packages.numpy"),
    ("provider_without_package", 7, "environments[0].providers"),
    ("python_not_provided", 6, "environments[0].python"),
    ("python_tag", 3, "bases.bookworm.image"),
    ("repeats_zero", 10, "measure.repeats"),
    ("shell_in_env", 8, "environments[0].env.OMP_NUM_THREADS"),
    ("unknown_axis", 7, "environments[0].matrix.onnxruntme"),
    ("unknown_base", 5, "environments[0].base"),
    ("unknown_baseline", 9, "baseline"),
    ("unknown_env_key", 6, "environments[0].pakages"),
    ("unknown_top_key", 9, "meassure"),
    ("unknown_zoo_model", 8, "workloads.cnn.model"),
    ("version_range", 6, "environments[0].packages.onnxruntime"),
]


class EngineContacted(AssertionError):
    """Raised by the replaced engine entry points: nothing may reach for the engine."""


@pytest.fixture()
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Run in an empty working folder; record (and refuse) every attempt to reach the engine."""
    calls: list[str] = []

    def refuse(name: str) -> Callable[..., None]:
        def _refused(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise EngineContacted(f"{name} was called")
        return _refused

    monkeypatch.setattr(Engine, "connect", classmethod(refuse("Engine.connect")))
    monkeypatch.setattr(docker, "from_env", refuse("docker.from_env"))
    monkeypatch.setattr(docker, "DockerClient", refuse("docker.DockerClient"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return calls


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def message_body(err: str, path: Path) -> str:
    """The error message without its location prefix and the progress stamp."""
    text = err.split(f"{path}:", 1)[1]
    return re.sub(r"^\d+(:\d+)?: ", "", text).strip()


# -- matrix errors: exit 2, a message naming file, line, key and fix, nothing touched --------


@pytest.mark.parametrize("name, line, keypath", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
@pytest.mark.parametrize("command", ["matrix", "build"])
def test_broken_matrix_stops_before_engine_and_run_dir(
    name: str, line: int, keypath: str, command: str, no_engine: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = BROKEN / f"{name}.yaml"
    code, out, err = run_cli([command, "--matrix", str(path)], capsys)
    assert code == 2, err
    assert f"{path}:{line}: {keypath}: " in err, err
    assert re.search(r"^\s*Fix: \S", err, re.MULTILINE), err
    assert no_engine == [], "a matrix error must be reported before any engine contact"
    assert list(Path.cwd().iterdir()) == [], "no reports/ or run directory on a matrix error"
    assert "Report:" not in out


def test_broken_matrix_messages_are_all_different(no_engine: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Each kind of mistake gets its own explanation, not one generic 'invalid matrix'."""
    bodies = {}
    for name, _line, _keypath in BROKEN_CASES:
        path = BROKEN / f"{name}.yaml"
        code, _out, err = run_cli(["matrix", "--matrix", str(path)], capsys)
        assert code == 2
        bodies[name] = message_body(err, path)
    assert len(set(bodies.values())) == len(BROKEN_CASES), bodies
    assert no_engine == []


def test_broken_matrix_with_out_creates_no_folder(no_engine: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"
    code, _out, err = run_cli(["matrix", "--matrix", str(BROKEN / "unknown_base.yaml"),
                               "--out", str(out_dir)], capsys)
    assert code == 2 and "did you mean 'bookworm'" in err
    assert not out_dir.exists() and no_engine == []


def test_missing_matrix_file_is_a_matrix_error(no_engine: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(["matrix"], capsys)  # no matrix.yaml in the working folder
    assert code == 2 and "matrix.yaml" in err, err
    assert no_engine == [] and list(Path.cwd().iterdir()) == []


def _write_matrix(folder: Path, body: str) -> Path:
    head = """\
        version: 1
        bases:
          trixie: {image: "debian:trixie"}
        build: {ca_bundle: null}
        """
    path = folder / "m.yaml"
    path.write_text(textwrap.dedent(head) + textwrap.dedent(body))
    return path


def test_missing_template_is_a_matrix_error_before_the_engine(
    no_engine: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found only when rendering: still exit 2, before a run directory or the engine."""
    path = _write_matrix(tmp_path, """\
        environments:
          - {base: trixie, packages: {onnxruntime: "1.32.0"}, template: nothere.Dockerfile.j2}
        workloads:
          mlp: {model: "zoo:mlp"}
        """)
    code, _out, err = run_cli(["matrix", "--matrix", str(path)], capsys)
    assert code == 2, err
    assert str(path) in err and "'nothere.Dockerfile.j2' not found" in err and "Fix:" in err
    assert no_engine == [] and list(Path.cwd().iterdir()) == []


def test_unreadable_user_model_is_a_matrix_error_before_the_engine(
    no_engine: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
    path = _write_matrix(tmp_path, """\
        environments:
          - {base: trixie, packages: {onnxruntime: "1.32.0"}}
        workloads:
          mine: {model: model.onnx}
        """)
    code, _out, err = run_cli(["matrix", "--matrix", str(path), "--out",
                               str(tmp_path / "run")], capsys)
    assert code == 2, err
    assert "workloads.mine.model" in err and "model.onnx" in err
    assert no_engine == []


# -- commands that need no engine -------------------------------------------------------------


def test_list_prints_every_cell_and_one_context_per_environment(
    no_engine: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No engine: a tag hashes the base's id, so `list` shows the context id and the base."""
    plan = config.load_plan(DEFAULT_MATRIX)
    code, out, _err = run_cli(["list", "--matrix", str(DEFAULT_MATRIX)], capsys)
    assert code == 0
    found = re.findall(r"^(\S+)\tcontext ([0-9a-f]{16}) \+ base (\S+)$", out, re.MULTILINE)
    assert sorted(env_id for env_id, _, _ in found) == sorted(e.id for e in plan.environments)
    assert {env_id: base for env_id, _, base in found} == {
        e.id: e.base.image for e in plan.environments}
    assert "`nox -s build` prints them" in out
    listed = re.findall(r"^  (\S+)(?:\t.*)?$", out, re.MULTILINE)  # then its knobs, if any
    assert "  bookworm-ortov1.24.1--cnn--openvino\tprovider_options.device_type=CPU" in out
    assert listed == [c.id for env in plan.environments for c in plan.cells
                      if c.environment.id == env.id]
    assert len(listed) == len(plan.cells) == 10
    assert f"baseline {plan.baseline}" in out
    assert no_engine == [] and list(Path.cwd().iterdir()) == []


def test_integration_matrix_reuses_the_default_images(
    no_engine: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The end-to-end test matrix must keep the default matrix's tags, or it builds new images."""
    def tags(path: Path) -> dict[str, str]:
        code, out, _err = run_cli(["list", "--matrix", str(path)], capsys)
        assert code == 0
        return dict(re.findall(r"^(\S+)\t(context .+)$", out, re.MULTILINE))

    default, small = tags(DEFAULT_MATRIX), tags(TEST_MATRICES / "two_envs.yaml")
    assert sorted(small) == ["bullseye-ort1.8.0", "trixie-ort1.32.0"]
    assert {env_id: default[env_id] for env_id in small} == small
    bad = tags(TEST_MATRICES / "bad_pin.yaml")
    assert bad["trixie-ort1.32.0"] == default["trixie-ort1.32.0"]
    assert "bullseye-ort1.8.99" in bad


def test_render_writes_one_dockerfile_per_environment(
    no_engine: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = config.load_plan(DEFAULT_MATRIX)
    out_dir = tmp_path / "rendered"
    code, out, _err = run_cli(["render", "--matrix", str(DEFAULT_MATRIX), "--out",
                               str(out_dir)], capsys)
    assert code == 0
    files = sorted(p.name for p in (out_dir / "dockerfiles").iterdir())
    assert files == sorted(f"{env.id}.Dockerfile" for env in plan.environments)
    for env in plan.environments:
        text = (out_dir / "dockerfiles" / f"{env.id}.Dockerfile").read_text()
        assert f"environment {env.id};" in text and f"ARG BASE_IMAGE={env.base.image}\n" in text
    assert str(out_dir / "dockerfiles") in out
    assert no_engine == [] and list(Path.cwd().iterdir()) == []


def test_only_matching_nothing_lists_the_ids(no_engine: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    plan = config.load_plan(DEFAULT_MATRIX)
    code, _out, err = run_cli(["matrix", "--matrix", str(DEFAULT_MATRIX),
                               "--only", "nomatch-*"], capsys)
    assert code == 2
    assert "--only 'nomatch-*' matches no environment or cell id" in err
    for env in plan.environments:
        assert f"  {env.id}\n" in err
    assert all(cell.id in err for cell in plan.cells)
    assert "Fix:" in err
    assert no_engine == [] and list(Path.cwd().iterdir()) == []


def test_report_on_a_folder_that_is_not_a_run_dir(no_engine: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    code, _out, err = run_cli(["report", str(folder)], capsys)
    assert code == 6
    assert f"{folder} is not an envmatrix run directory" in err and "reports/latest" in err
    assert list(folder.iterdir()) == [], "report must not write into a folder it refused"


def test_report_on_a_missing_folder(no_engine: list[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(["report", str(tmp_path / "nowhere")], capsys)
    assert code == 6 and "is not a folder" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"envmatrix {__version__}"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bild"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'bild'" in capsys.readouterr().err
