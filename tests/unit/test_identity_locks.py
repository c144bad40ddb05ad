"""Image identity (the base's id in the tag) and locks (format, comparison, messages), no engine.

The shared `FakeEngine` (tests/fakes.py) stands in for the Docker engine, so the
decisions are checked here: a re-made base gives a new tag, a lock enters the tag and is held
against the image, pip's failure on a locked version names it. The real engine does the same in
tests/integration/test_identity.py.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from fakeruns import BASELINE, CANDIDATE, failed_result, fake_result, make_run
from fakes import FakeEngine, outcome, spy_execute

from envmatrix import grammar
from envmatrix.config import load as config
from envmatrix.errors import BaseImageError, BuildError, ConfigError
from envmatrix.images import bases, locks
from envmatrix.images import build as images
from envmatrix.images.render import render_environment
from envmatrix.report.build import build_report
from envmatrix.rundir.plan import Base, BaseIdentity, ImageRecord, plan_from_dict, plan_to_dict
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import BuildStepError, ContainerOutcome
from envmatrix_harness import installed as harness_installed

REPO = Path(__file__).resolve().parents[2]
TWO_ENVS = REPO / "tests" / "integration" / "matrices" / "two_envs.yaml"
TRIXIE = "trixie-ort1.32.0"
SHA = "a" * 64


def installed(numpy: str = "2.3.4", sha: str | None = SHA) -> locks.InstalledSet:
    return locks.InstalledSet(
        pip={"numpy": locks.PipDist(numpy, sha), "onnxruntime": locks.PipDist("1.32.0", SHA),
             "pip": locks.PipDist("25.3", SHA)},
        apt={"python3": "3.13.5-1"}, python="3.13.5")


def prints_installed(spec: ContainerSpec) -> ContainerOutcome:
    """The installed-set reader of every image: least privilege, the same set each time."""
    assert spec.user == "65534:65534" and spec.network_disabled and spec.read_only_root
    return outcome(0, locks.MARKER + json.dumps(locks.installed_to_dict(installed())) + "\n")


def trixie_engine(base_id: str = "sha256:base1") -> FakeEngine:
    """The calls ensure_image makes: debian:trixie is `base_id`, builds succeed."""
    return FakeEngine.holding({"debian:trixie": base_id}, reader=prints_installed)


@pytest.fixture()
def matrix(tmp_path: Path) -> Path:
    path = tmp_path / "two_envs.yaml"
    shutil.copyfile(TWO_ENVS, path)
    return path


def ensure(engine: FakeEngine, matrix: Path, tmp_path: Path, **kw: Any) -> images.BuiltImage:
    plan = config.load_plan(matrix, only=[TRIXIE])
    return images.ensure_image(engine, plan.environment(TRIXIE), plan, run_dir=tmp_path / "run",
                               **kw)


# -- identity ----------------------------------------------------------------------------------


def test_a_re_made_base_under_the_same_reference_gives_a_new_tag(matrix: Path,
                                                                 tmp_path: Path) -> None:
    engine = trixie_engine("sha256:base1")
    first = ensure(engine, matrix, tmp_path)
    again = ensure(engine, matrix, tmp_path)
    assert first.built and not again.built and again.tag == first.tag
    engine.add_image("debian:trixie", "sha256:base2")  # same `debian:trixie`, other content
    remade = ensure(engine, matrix, tmp_path)
    assert remade.built and remade.tag != first.tag
    assert remade.base == BaseIdentity("debian:trixie", "sha256:base2")
    engine.add_image("debian:trixie", "sha256:base2",
                     digests=("debian@sha256:" + "b" * 64,))  # the same id, now pulled
    assert ensure(engine, matrix, tmp_path).tag != remade.tag


def test_tags_need_the_base_identity_and_labels_record_it(matrix: Path, tmp_path: Path) -> None:
    plan = config.load_plan(matrix, only=[TRIXIE])
    env = plan.environment(TRIXIE)
    ctx = render_environment(env, plan, harness_dir=images.packaged_harness_dir(),
                             out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="base image's id"):
        images.tag_for(env, ctx)
    base = BaseIdentity("debian:trixie", "sha256:x", ("debian@sha256:" + "c" * 64,))
    labelled = render_environment(env, plan, harness_dir=images.packaged_harness_dir(),
                                  out_dir=tmp_path / "d", base=base)
    tag = images.tag_for(env, labelled)
    for folder, other_base, same in (("e", base, True),
                                     ("f", BaseIdentity("debian:trixie", "sha256:y"), False)):
        other = render_environment(env, plan, harness_dir=images.packaged_harness_dir(),
                                   out_dir=tmp_path / folder, base=other_base)
        assert (images.tag_for(env, other) == tag) is same
    labels = images.image_labels(env, plan, labelled)
    assert labels["envmatrix.base-id"] == "sha256:x"
    assert labels["envmatrix.base-digest"] == "debian@sha256:" + "c" * 64
    assert images.context_id(env, plan) == ctx.content_hash[:16]


def test_run_record_keeps_the_base_and_old_records_still_load() -> None:
    plan = config.load_plan(REPO / "matrix.yaml")
    doc = json.loads(json.dumps(plan_to_dict(plan)))
    env_a, env_b = plan.environments[0].id, plan.environments[1].id
    doc["run"] = {"images": {
        env_a: {"tag": "t", "image_id": "sha256:i", "size_bytes": 3, "base_image": "debian:x",
                "base_id": "sha256:b", "base_digest": "debian@sha256:" + "d" * 64},
        env_b: {"tag": "u", "image_id": "sha256:j"}}}  # written before bases were recorded
    back = plan_from_dict(doc).run.images
    assert back[env_a] == ImageRecord("t", "sha256:i", 3, "debian:x", "sha256:b",
                                      "debian@sha256:" + "d" * 64)
    assert back[env_b] == ImageRecord("u", "sha256:j")


@pytest.mark.parametrize("ref", [
    "debian@sha256:" + "e" * 64,
    "nvidia/cuda:12.4.1-runtime-ubuntu22.04@sha256:" + "f" * 64,
    "localhost:5000/team/base:1@sha256:" + "0" * 64,
])
def test_digest_pinned_bases_are_accepted_and_looked_up_by_digest(ref: str) -> None:
    assert grammar.matches("image", ref)
    name, digest = ref.split("@")
    looked = bases.lookup_ref(ref)
    assert looked.endswith("@" + digest)
    assert ":" not in looked.split("@")[0].rsplit("/", 1)[-1]  # the tag beside it is dropped
    expected_repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    assert looked == f"{expected_repo}@{digest}"
    assert bases.lookup_ref("debian:trixie") == "debian:trixie"


def test_a_digest_pinned_base_is_pulled_by_digest_and_its_digest_recorded(tmp_path: Path) -> None:
    ref = "nvidia/cuda:12.4.1-runtime-ubuntu22.04@sha256:" + "1" * 64
    engine = FakeEngine()
    base = Base("cuda", ref, "ubuntu")
    said: list[str] = []
    assert bases.ensure_base(engine, base, log_path=tmp_path / "b.log",
                             progress=said.append) == "sha256:pulled"
    assert engine.pulled == ["nvidia/cuda@sha256:" + "1" * 64]
    assert "nvidia/cuda@sha256:" + "1" * 64 in (tmp_path / "b.log").read_text()
    assert said and "pulled" in said[0]
    identity = bases.base_identity(engine, base)
    assert identity.digest == "nvidia/cuda@sha256:" + "1" * 64


def test_a_missing_base_is_named_when_the_tag_is_asked_for() -> None:
    with pytest.raises(BaseImageError, match="not in the engine"):
        bases.base_identity(FakeEngine(), Base("b", "debian:trixie", "debian"))


# -- debootstrap progress ------------------------------------------------------------------------

# debootstrap 1.0.128's own lines (its `info` messages, /usr/share/debootstrap/functions); a
# list file has no version, so its line ends in a space (written "|" here, cut below).
DEBOOTSTRAP = """\
I: Target architecture can be executed
I: Retrieving InRelease |
I: Checking Release signature
I: Valid Release signature (key id 4D64FEC119C2029067D6E791F8D2585B8783D481)
I: Retrieving Packages |
I: Validating Packages |
I: Resolving dependencies of required packages...
I: Resolving dependencies of base packages...
I: Checking component main on http://mirror.example/debian...
I: Retrieving adduser 3.134
I: Validating adduser 3.134
I: Retrieving apt 2.6.1
I: Validating apt 2.6.1
I: Retrieving base-files 12.4+deb12u5
I: Validating base-files 12.4+deb12u5
I: Chosen extractor for .deb packages: dpkg-deb
I: Extracting adduser...
I: Extracting apt...
I: Installing core packages...
I: Unpacking required packages...
I: Unpacking adduser...
I: Unpacking apt...
I: Configuring required packages...
I: Configuring debian-archive-keyring...
I: Unpacking the base system...
I: Unpacking ca-certificates...
I: Configuring the base system...
I: Configuring ca-certificates...
I: Base system installed successfully.
""".replace("|\n", "\n").splitlines()


def test_debootstrap_lines_map_to_stages() -> None:
    assert bases.debootstrap_stage("I: Retrieving apt 2.6.1") == ("retrieving packages",
                                                                  "apt 2.6.1")
    assert bases.debootstrap_stage("I: Retrieving InRelease ") == (
        "reading the release and package lists", None)
    assert bases.debootstrap_stage("I: Unpacking the base system...") == (
        "unpacking the base system", None)
    assert bases.debootstrap_stage("I: Configuring ca-certificates...") == (None,
                                                                           "ca-certificates")
    assert bases.debootstrap_stage("Get:1 something") is None


def test_debootstrap_progress_says_each_stage_once_with_the_time() -> None:
    now = [100.0]
    said: list[str] = []
    watch = bases.DebootstrapProgress(said.append, heartbeat_s=10.0, clock=lambda: now[0])
    for line in DEBOOTSTRAP:  # one line a second
        now[0] += 1.0
        watch.feed(line)
    assert said == [
        "reading the release and package lists (2s)",
        "retrieving packages (10s)",
        "extracting packages (16s)",
        "installing core packages (19s)",
        "unpacking required packages (20s)",
        "configuring required packages (23s)",
        "unpacking the base system (25s)",
        "configuring the base system (27s)",
        "base system installed successfully (29s)",
    ]


def test_debootstrap_progress_beats_while_a_long_stage_lasts_and_shows_errors() -> None:
    now = [0.0]
    said: list[str] = []
    watch = bases.DebootstrapProgress(said.append, heartbeat_s=10.0, clock=lambda: now[0])
    for index in range(300):  # 300 packages at 0.1 s each: 30 s in one stage
        now[0] += 0.1
        watch.feed(f"I: Retrieving pkg{index} 1.{index}")
    watch.feed("E: Couldn't download packages: pkg300")
    assert said[0] == "retrieving packages (0s)"
    assert 3 <= len(said) <= 5  # a line every 10 s, not one per package
    assert said[1].startswith("retrieving packages: ") and "so far (pkg" in said[1]
    assert said[-1] == "E: Couldn't download packages: pkg300 (30s)"


# -- the installed set and the lock file ---------------------------------------------------------


def test_harness_reader_prints_the_set_the_host_parses(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    hashes = tmp_path / "hashes.json"
    hashes.write_text(json.dumps({"numpy": {"version": "2.3.4", "sha256": SHA},
                                  "onnxruntime": {"version": "0.1", "sha256": SHA}}))
    monkeypatch.setattr(harness_installed, "HASHES_FILE", str(hashes))
    monkeypatch.setattr(harness_installed.fingerprint, "distributions",
                        lambda: {"numpy": "2.3.4", "onnxruntime": "1.32.0"})
    monkeypatch.setattr(harness_installed, "apt_set", lambda: {"python3": "3.13.5-1"})
    assert harness_installed.main() == 0
    got = locks.parse_installed("some noise\n" + capsys.readouterr().out)
    assert got.pip == {"numpy": locks.PipDist("2.3.4", SHA),
                       "onnxruntime": locks.PipDist("1.32.0", None)}  # a hash of 0.1 is not 1.32's
    assert got.apt == {"python3": "3.13.5-1"}
    with pytest.raises(ValueError):
        locks.parse_installed("Traceback: nothing printed")


def test_pip_report_is_reduced_to_names_versions_and_hashes(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    report = {"version": "1", "install": [
        {"download_info": {"url": "https://user:secret@index.example/numpy.whl",
                           "archive_info": {"hash": f"sha256={SHA}", "hashes": {"sha256": SHA}}},
         "metadata": {"name": "NumPy", "version": "2.3.4"}},
        {"download_info": {"url": "file:///wheels/x.whl", "archive_info": {}},
         "metadata": {"name": "Some_Pkg", "version": "1.0"}}]}
    (tmp_path / "report-packages.json").write_text(json.dumps(report))
    script = REPO / "dockerfiles" / "scripts" / "pip_hashes.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "report-packages.json"),
                                      str(tmp_path / "report-*.json")])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"numpy": {"version": "2.3.4", "sha256": SHA},
                               "some-pkg": {"version": "1.0", "sha256": None}}
    assert "secret" not in out and "index.example" not in out


def test_lock_file_round_trip_and_format(tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.yaml"
    base = BaseIdentity("debian:trixie", "sha256:b", ("debian@sha256:" + "9" * 64,))
    path = locks.write_lock(matrix, {TRIXIE: locks.EnvLock(TRIXIE, installed(), base)})
    assert path == tmp_path / "matrix.lock.yaml"
    text = path.read_text()
    assert text.startswith("# envmatrix lock file")
    assert "schema: envmatrix.lock/1" in text and "  trixie-ort1.32.0:\n    base:\n" in text
    back = locks.load_lock(matrix)
    assert back is not None
    assert back.environments[TRIXIE] == locks.EnvLock(TRIXIE, installed(), base)


def test_locked_requirements_use_hashes_only_when_every_entry_has_one() -> None:
    hashed = locks.requirements_text(locks.EnvLock(TRIXIE, installed()))
    assert "--require-hashes\n" in hashed
    assert f"numpy==2.3.4 --hash=sha256:{SHA}\n" in hashed
    partial = locks.requirements_text(locks.EnvLock(TRIXIE, installed(sha=None)))
    assert "--require-hashes" not in partial and "--hash" not in partial
    assert "numpy==2.3.4\n" in partial and "onnxruntime==1.32.0\n" in partial


@pytest.mark.parametrize("version", ["1.0 --index-url http://evil", "1.0\nevil==1", "-r x"])
def test_a_lock_cannot_smuggle_pip_options(tmp_path: Path, version: str) -> None:
    matrix = tmp_path / "matrix.yaml"
    path = locks.write_lock(matrix, {TRIXIE: locks.EnvLock(TRIXIE, installed())})
    doc = path.read_text().replace("version: 2.3.4", f"version: {json.dumps(version)}")
    path.write_text(doc)
    with pytest.raises(ConfigError, match="not a usable lock file"):
        locks.load_lock(matrix)


def test_differences_name_each_distribution() -> None:
    assert locks.differences({"numpy": "1.23.5", "onnx": "1.0", "same": "1"},
                             {"numpy": "1.24.0", "extra": "2.0", "same": "1"}) == [
        "extra: not in the lock, image 2.0",
        "numpy: lock 1.23.5, image 1.24.0",
        "onnx: lock 1.0, not in the image",
    ]


def test_a_cell_is_checked_against_its_pins_and_its_lock(matrix: Path) -> None:
    env = config.load_plan(matrix, only=[TRIXIE]).environment(TRIXIE)
    lock = locks.EnvLock(TRIXIE, installed())
    fingerprint = {"numpy": "2.3.4", "onnxruntime": "1.32.0", "pip": "25.3"}
    assert locks.cell_problems(fingerprint, env, lock) == []
    assert locks.cell_problems(fingerprint, env, None) == []
    moved = {**fingerprint, "numpy": "2.3.5"}
    assert locks.cell_problems(moved, env, lock) == ["numpy: lock 2.3.4, image 2.3.5"]
    assert locks.cell_problems({**fingerprint, "onnxruntime": "1.31.0"}, env, None) == [
        "onnxruntime==1.32.0 requested but 1.31.0 installed"]


# -- builds from a lock --------------------------------------------------------------------------


def write_lock_for(matrix: Path, contents: locks.InstalledSet) -> Path:
    return locks.write_lock(matrix, {TRIXIE: locks.EnvLock(TRIXIE, contents)})


def test_a_lock_enters_the_tag_and_is_what_the_builder_installs(matrix: Path,
                                                                tmp_path: Path) -> None:
    engine = trixie_engine()
    unlocked = ensure(engine, matrix, tmp_path)
    assert [b.requirements for b in engine.builds] == [""] and not unlocked.locked
    saved = json.loads((tmp_path / "run" / "locks" / f"{TRIXIE}.json").read_text())
    assert saved["schema"] == "envmatrix.installed/1" and saved["tag"] == unlocked.tag
    assert saved["pip"]["numpy"] == {"version": "2.3.4", "sha256": SHA}
    assert saved["base"] == {"image": "debian:trixie", "id": "sha256:base1", "digest": None}
    write_lock_for(matrix, installed())
    locked = ensure(engine, matrix, tmp_path)
    assert locked.locked and locked.built and locked.tag != unlocked.tag
    last = engine.builds[-1].requirements
    assert "--require-hashes" in last and "numpy==2.3.4 --hash" in last
    assert ensure(engine, matrix, tmp_path).tag == locked.tag  # reused: same lock, same base
    assert ensure(engine, matrix, tmp_path, use_lock=False).tag == unlocked.tag


def test_an_image_that_does_not_hold_the_lock_fails_with_the_difference(matrix: Path,
                                                                        tmp_path: Path) -> None:
    write_lock_for(matrix, installed(numpy="1.23.5"))
    with pytest.raises(BuildError, match=r"does not reproduce two_envs\.lock\.yaml: "
                                         r"numpy: lock 1\.23\.5, image 2\.3\.4$"):
        ensure(trixie_engine(), matrix, tmp_path)


def test_a_locked_version_pip_cannot_find_is_named(matrix: Path, tmp_path: Path) -> None:
    contents = installed()
    contents.pip["onnxruntime"] = locks.PipDist("1.99.0", SHA)
    write_lock_for(matrix, contents)
    engine = trixie_engine()
    engine.build_fails = "pip: ERROR: No matching distribution found for onnxruntime==1.99.0"
    with pytest.raises(BuildStepError) as failed:
        ensure(engine, matrix, tmp_path)
    assert failed.value.cause == ("onnxruntime==1.99.0: not installable: pip: ERROR: No matching "
                                  "distribution found for onnxruntime==1.99.0")


def test_a_damaged_lock_file_is_a_matrix_error(matrix: Path, tmp_path: Path) -> None:
    locks.lock_path(matrix).write_text("schema: something/else\n")
    with pytest.raises(ConfigError, match="two_envs.lock.yaml: not a usable lock file"):
        ensure(trixie_engine(), matrix, tmp_path)


def test_the_report_lists_an_env_mismatch_cell_with_its_difference(tmp_path: Path) -> None:
    cell = f"{CANDIDATE}--cnn--cpu"
    mismatch = failed_result(cell, status="env_mismatch", log_tail="",
                             reason="installed set differs: numpy: lock 1.23.5, image 1.24.0")
    run = make_run(tmp_path, [fake_result(f"{BASELINE}--cnn--cpu"), mismatch])
    text = build_report(run).read_text()
    failed = text.split("## Cells without valid numbers", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in failed.splitlines() if line.startswith(f"| {cell}"))
    assert "env\\_mismatch" in row and "numpy: lock 1.23.5, image 1.24.0" in row


def test_what_a_lock_cannot_pin_is_a_warning(matrix: Path, tmp_path: Path) -> None:
    contents = installed()
    recorded = BaseIdentity("debian:trixie", "sha256:old", ("debian@sha256:" + "7" * 64,))
    apt_moved = locks.InstalledSet(contents.pip, {"python3": "3.13.4-1"}, contents.python)
    locks.write_lock(matrix, {TRIXIE: locks.EnvLock(TRIXIE, apt_moved, recorded)})
    notes = ensure(trixie_engine("sha256:new"), matrix, tmp_path).notes
    assert notes == (
        f"{TRIXIE}: 1 Debian package(s) differ from two_envs.lock.yaml (apt installs the "
        "mirror's current versions): python3: lock 3.13.4-1, image 3.13.5-1",
        f"{TRIXIE}: base debian:trixie is sha256:new, two_envs.lock.yaml recorded sha256:old "
        f"(debian@sha256:{'7' * 64}); pin the base by digest in the matrix to build on that one")
    locks.write_lock(matrix, {"other-env": locks.EnvLock("other-env", contents)})
    assert ensure(trixie_engine(), matrix, tmp_path).notes == (
        f"{TRIXIE} is not in two_envs.lock.yaml: built from its pins (`nox -s lock` adds it)",)


def test_lock_command_writes_the_lock_and_keeps_other_environments(
    matrix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    from envmatrix import cli, pipeline
    from envmatrix.running.engine import Engine

    engine = trixie_engine()
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: engine))
    monkeypatch.chdir(tmp_path)
    kept = locks.EnvLock("bullseye-ort1.8.0", installed(numpy="1.23.5"))
    write_lock_for(matrix, installed(numpy="0.1"))  # ignored: `lock` builds from the pins
    locks.write_lock(matrix, {**locks.load_lock(matrix).environments,  # type: ignore[union-attr]
                              "bullseye-ort1.8.0": kept})
    jobs = spy_execute(monkeypatch)
    code = cli.main(["lock", "--matrix", str(matrix), "--only", TRIXIE, "--out",
                     str(tmp_path / "lock-run")])
    assert code == 0
    assert [type(j) for j in jobs] == [pipeline.LockJob]  # the pipeline's stages, in its order
    assert capsys.readouterr().out.strip() == f"Lock: {locks.lock_path(matrix)}"
    assert [b.requirements for b in engine.builds] == [""]  # from the pins, not from the old lock
    lock = locks.load_lock(matrix)
    assert lock is not None
    assert lock.environments[TRIXIE].installed == installed()
    assert lock.environments[TRIXIE].base == BaseIdentity("debian:trixie", "sha256:base1")
    assert lock.environments["bullseye-ort1.8.0"] == kept
