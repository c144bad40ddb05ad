"""Archive and restore with a fake engine: the manifest, checksums, the id check, re-tagging,
and what a round trip changes (recorded in restore.json)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakeruns import plan_dict
from fakes import FakeEngine

from envmatrix import cli
from envmatrix.reproduce import archive
from envmatrix.reproduce.archive import ArchiveError, MissingImages, archive_run, restore_archive
from envmatrix.rundir import planfile
from envmatrix.rundir.layout import create_run_dir
from envmatrix.running.engine import ImageFacts

ENV_A, ENV_B = "bullseye-ort1.8.0", "bullseye-ort1.16.0"
BASE_ID = "sha256:" + "b" * 64


def facts(image_id: str, *, tags: tuple[str, ...] = (), parent: str = "",
          layers: tuple[str, ...] = ("l-base",), labels: dict[str, str] | None = None,
          digests: tuple[str, ...] = ()) -> ImageFacts:
    return ImageFacts(image_id=image_id, tags=tags, repo_digests=digests, parent=parent,
                      created="2026-11-23T12:00:00Z", size_bytes=1000 + len(layers),
                      layers=layers, labels=labels or {})


def env_id(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


def make_run(root: Path, run_images: dict[str, Any]) -> Path:
    run = create_run_dir(root, run_id="run-1")
    doc = plan_dict([f"{ENV_A}--cnn--cpu", f"{ENV_B}--cnn--cpu"])
    doc["run"] = {"run_id": "run-1", "envmatrix_version": "0.1.0", "images": run_images}
    (run.path / "matrix.resolved.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return run.path


def store() -> FakeEngine:
    """Two environment images built on one base (parent chains), the base pulled once."""
    base = facts(BASE_ID, tags=("debian:bullseye",), digests=("debian@sha256:" + "d" * 64,))
    step = facts("sha256:" + "5" * 64, parent=BASE_ID)
    images = {BASE_ID: base, step.image_id: step}
    for name in (ENV_A, ENV_B):
        images[env_id(name)] = facts(env_id(name), tags=(f"envmatrix/{name}:h",),
                                     parent=step.image_id, layers=("l-base", f"l-{name}"))
    return FakeEngine(images=images)


def recorded() -> dict[str, Any]:
    return {n: {"tag": f"envmatrix/{n}:h", "image_id": env_id(n), "size_bytes": 1002}
            for n in (ENV_A, ENV_B)}


def archived(tmp_path: Path, engine: FakeEngine | None = None) -> tuple[FakeEngine, Path]:
    engine = engine or store()
    run = make_run(tmp_path / "reports", recorded())
    return engine, archive_run(engine, run).path


# -- archive ---------------------------------------------------------------------------------


def test_archive_json_lists_each_image_with_its_tarball_and_checksum(tmp_path: Path) -> None:
    engine, path = archived(tmp_path)
    assert path == tmp_path / "reports" / "run-1.archive"
    text = (path / "archive.json").read_text()
    manifest = json.loads(text)
    assert manifest["schema"] == "envmatrix.archive/1" and manifest["run_id"] == "run-1"
    assert manifest["run_dir"] == "../run-1" and str(tmp_path) not in text  # relative only
    entry = manifest["environments"][ENV_A]
    assert entry["tag"] == f"envmatrix/{ENV_A}:h" and entry["image_id"] == env_id(ENV_A)
    assert entry["file"] == f"images/{ENV_A}.tar"
    assert entry["sha256"] == archive.sha256_file(path / entry["file"])
    assert entry["file_bytes"] == (path / entry["file"]).stat().st_size
    assert entry["base"] == {"name": "b", "ref": "debian:bullseye", "image_id": BASE_ID,
                             "digest": None, "source": "parent chain",
                             "file": f"bases/b-{'b' * 12}.tar"}
    # One base tarball for both environments, with the base's registry digest recorded.
    assert list(manifest["bases"]) == ["b"]
    assert manifest["bases"]["b"]["repo_digests"] == ["debian@sha256:" + "d" * 64]
    assert manifest["totals"] == {"files": 3, "bytes": sum(
        (path / f).stat().st_size for f in (entry["file"], f"images/{ENV_B}.tar",
                                             f"bases/b-{'b' * 12}.tar"))}
    assert not list(path.rglob(".*.partial"))


def test_the_base_id_the_run_recorded_wins_then_labels_then_layers(tmp_path: Path) -> None:
    engine = store()
    env = engine.images[env_id(ENV_A)]
    by_label = dataclasses.replace(env, parent="", labels={"envmatrix.base-id": BASE_ID})
    by_layers = dataclasses.replace(env, parent="")
    plan_env = planfile.read_resolved(
        make_run(tmp_path, recorded()) / "matrix.resolved.yaml").plan.environments[0]
    recorded_base = {"base": {"image_id": "sha256:rec", "digest": "debian@sha256:e"}}
    found = archive.find_base(engine, plan_env, env, recorded_base)
    assert (found.image_id, found.digest, found.source) == ("sha256:rec", "debian@sha256:e",
                                                            "run record")
    assert archive.find_base(engine, plan_env, by_label, {}).source == "image label"
    assert archive.find_base(engine, plan_env, by_layers, {}).image_id == BASE_ID
    foreign = dataclasses.replace(by_layers, layers=("other", "l-x"))
    missing = archive.find_base(engine, plan_env, foreign, {})
    assert missing.image_id is None and missing.source.startswith("not found")


def test_an_existing_archive_is_never_overwritten(tmp_path: Path) -> None:
    engine, path = archived(tmp_path)
    with pytest.raises(ArchiveError, match="never overwritten"):
        archive_run(engine, tmp_path / "reports" / "run-1")


def test_archiving_a_run_whose_image_is_gone_says_how_to_get_it_back(tmp_path: Path) -> None:
    engine = store()
    engine.remove(env_id(ENV_B))
    run = make_run(tmp_path / "reports", recorded())
    with pytest.raises(MissingImages) as err:
        archive_run(engine, run)
    assert ENV_B in str(err.value) and "nox -s restore -- ARCHIVE" in str(err.value)
    assert err.value.exit_code == 3
    assert not (tmp_path / "reports" / "run-1.archive").exists()


# -- restore ---------------------------------------------------------------------------------


def test_a_corrupted_tarball_is_refused_before_anything_loads(tmp_path: Path) -> None:
    engine, path = archived(tmp_path)
    engine.remove(env_id(ENV_A))
    tar = path / "images" / f"{ENV_A}.tar"
    expected = archive.sha256_file(tar)
    tar.write_bytes(tar.read_bytes()[:-1] + b"X")
    with pytest.raises(ArchiveError) as err:
        restore_archive(engine, path)
    message = str(err.value)
    assert f"images/{ENV_A}.tar" in message and expected in message
    assert archive.sha256_file(tar) in message and "Nothing was loaded" in message
    assert engine.loaded == [] and not (path / "restore.json").exists()
    assert err.value.exit_code == 6


def test_restore_loads_what_is_missing_checks_ids_and_records_the_round_trip(
        tmp_path: Path) -> None:
    engine, path = archived(tmp_path)
    engine.remove(env_id(ENV_A))
    done = restore_archive(engine, path)
    assert engine.loaded == [env_id(ENV_A)]  # the base and ENV_B were there: not loaded
    assert engine.image_id(f"envmatrix/{ENV_A}:h") == env_id(ENV_A)  # tag put back
    record = json.loads((path / "restore.json").read_text())
    images = {i["name"]: i for i in record["restores"][0]["images"]}
    assert [i["kind"] for i in record["restores"][0]["images"]] == ["base", "environment",
                                                                    "environment"]
    loaded = images[ENV_A]
    assert loaded["action"] == "loaded" and loaded["tag_status"] == "restored"
    assert loaded["changes"]["image_id"] == "kept"
    assert loaded["changes"]["parent"].startswith("lost: sha256:555")
    assert loaded["changes"]["size_bytes"] == "same" and loaded["changes"]["layers"] == "same"
    assert images[ENV_B]["action"] == "present" and images[ENV_B]["tag_status"] == "in place"
    assert done.path == path / "restore.json"
    # A second restore is appended; nothing is loaded twice.
    restore_archive(engine, path)
    assert len(json.loads((path / "restore.json").read_text())["restores"]) == 2
    assert engine.loaded == [env_id(ENV_A)]


def test_a_loaded_base_loses_its_registry_digest_and_that_is_recorded(tmp_path: Path) -> None:
    engine, path = archived(tmp_path)
    for name in (ENV_A, ENV_B):
        engine.remove(env_id(name))
    engine.remove("sha256:" + "5" * 64)
    engine.remove(BASE_ID)
    restore_archive(engine, path)
    base = json.loads((path / "restore.json").read_text())["restores"][0]["images"][0]
    assert base["action"] == "loaded" and base["tag"] == "debian:bullseye"
    assert base["changes"]["repo_digests"].startswith("lost: debian@sha256:ddd")
    assert base["changes"]["image_id"] == "kept"
    assert engine.image_id("debian:bullseye") == BASE_ID


def test_a_load_that_gives_another_id_is_refused(tmp_path: Path) -> None:
    engine, path = archived(tmp_path)
    engine.remove(env_id(ENV_A))
    engine.load_as[env_id(ENV_A)] = "sha256:" + "9" * 64
    with pytest.raises(ArchiveError, match=f"records {env_id(ENV_A)}"):
        restore_archive(engine, path)


def test_a_tag_that_now_names_another_image_is_left_alone(tmp_path: Path) -> None:
    engine, path = archived(tmp_path)
    engine.remove(env_id(ENV_A))
    engine.tags[f"envmatrix/{ENV_A}:h"] = env_id(ENV_B)
    done = restore_archive(engine, path)
    item = next(i for i in done.images if i.name == ENV_A)
    assert item.tag_status.startswith("left alone") and env_id(ENV_B) in item.tag_status
    assert engine.tags[f"envmatrix/{ENV_A}:h"] == env_id(ENV_B)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.tar"])
def test_manifest_paths_must_stay_inside_the_archive(tmp_path: Path, name: str) -> None:
    engine, path = archived(tmp_path)
    manifest = json.loads((path / "archive.json").read_text())
    manifest["environments"][ENV_A]["file"] = name
    (path / "archive.json").write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match="relative paths inside"):
        restore_archive(engine, path)


def test_a_folder_without_a_manifest_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="holds no archive.json"):
        restore_archive(store(), tmp_path)


def test_cli_commands_parse() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["archive", "reports/r1", "--out", "a"]).out == Path("a")
    assert parser.parse_args(["restore", "reports/r1.archive"]).archive == Path(
        "reports/r1.archive")
    args = parser.parse_args(["replay", "reports/r1", "--only", "x*", "--image", "e=t:1"])
    assert args.only == ["x*"] and args.images == [("e", "t:1")]


def test_an_archive_that_cannot_fit_is_refused_before_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = store()
    run = make_run(tmp_path / "reports", recorded())
    monkeypatch.setattr(archive.shutil, "disk_usage",
                        lambda path: type("U", (), {"free": 10})())
    with pytest.raises(ArchiveError, match="needs about 0.0 MB but .* has 0.0 MB free"):
        archive_run(engine, run)
    assert not (tmp_path / "reports" / "run-1.archive").exists()
