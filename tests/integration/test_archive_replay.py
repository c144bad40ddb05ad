"""Archive, remove, restore, replay on the real engine, without touching any shared image.

The run's one environment is the bullseye environment of matrices/two_envs.yaml copied exactly
plus one environment variable holding a token unique to this test: its Dockerfile differs only
in a last `ENV` line, so the build reuses every cached step of the shared image and adds a
throw-away image of our own (own content hash, own tag, own id). That image is the only one
this test removes: after `archive` it is deleted from the engine, `replay` is refused with the
fix, `restore` loads it back from its tarball under the recorded id, and `replay` measures the
cell again in it: nothing is built or pulled. The base (debian:bullseye) is archived too but is
never removed, so restore finds it present and leaves it alone.

That the tarball alone could bring the image back even if its layers were gone too is checked
directly: every layer file the tarball lists hashes to the image's RootFS diff id, in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pipelinelib import CliRun, envmatrix_cli

from envmatrix.reproduce import archive
from envmatrix.rundir import planfile
from envmatrix.running.engine import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWO_ENVS = Path(__file__).resolve().parent / "matrices" / "two_envs.yaml"
ENV = "bullseye-ort1.8.0"
CELL = f"{ENV}--mlp--cpu"
HEADLINE = re.compile(rf"^{re.escape(CELL)}: same image [0-9a-f]{{12}}, measured again, this "
                      r"cell (measures the same|is inconclusive|measures \d+% "
                      r"(slower|faster))\b.*\(p50 [\d.]+ -> [\d.]+ ms, [+-][\d.]+% \[",
                      re.MULTILINE)


def throwaway_matrix(folder: Path, token: str) -> Path:
    """two_envs.yaml's bullseye environment, exactly, plus ENV ARCHIVE_TEST_TOKEN=token;
    5 rounds so that a comparison across runs gets an interval (5 units a side)."""
    doc = yaml.safe_load(TWO_ENVS.read_text())
    env = next(e for e in doc["environments"] if e["base"] == "bullseye")
    doc["environments"] = [{**env, "env": {"ARCHIVE_TEST_TOKEN": token}}]
    doc["bases"] = {"bullseye": doc["bases"]["bullseye"]}
    doc["measure"] = {**doc["measure"], "repeats": 5, "rounds": 5}
    path = folder / "archive_test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="module")
def first_run(engine: Engine, workdir: Path) -> Iterator[tuple[CliRun, str, str]]:
    """The run to archive, in a throw-away image; (run, tag, image id). The image goes after."""
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    matrix = throwaway_matrix(workdir, token)
    out = workdir / "run1"
    run = envmatrix_cli(["matrix", "--matrix", str(matrix), "--out", str(out)], workdir, out)
    image = planfile.read_resolved(out / "matrix.resolved.yaml").run.images.get(ENV)
    tag, image_id = (image.tag, image.image_id) if image else (None, None)
    try:
        assert run.code == 0, run.stderr
        assert tag and image_id and engine.image_labels(image_id)  # our own image
        yield run, tag, image_id
    finally:
        if tag:  # only the tag this test made; an image other tags share would stay
            engine.remove_image(tag)
        shutil.rmtree(workdir / "run1.archive", ignore_errors=True)  # ~0.6 GB of tarballs


def test_archive_remove_restore_replay(engine: Engine, workdir: Path,
                                       first_run: tuple[CliRun, str, str]) -> None:
    run, tag, image_id = first_run
    assert f"{ENV}: built {tag}" in run.stderr, "the throw-away image must be ours, built now"
    assert engine.image_id(tag) == image_id

    # -- archive
    started = time.monotonic()
    saved = envmatrix_cli(["archive", str(run.out)], workdir, run.out)
    archive_s = time.monotonic() - started
    assert saved.code == 0, saved.stderr
    where = run.out.parent / "run1.archive"
    assert saved.stdout.strip().splitlines()[-1] == f"Archive: {where}"
    manifest = json.loads((where / "archive.json").read_text())
    entry = manifest["environments"][ENV]
    assert entry["image_id"] == image_id and entry["tag"] == tag
    assert entry["sha256"] == archive.sha256_file(where / entry["file"])
    base = manifest["bases"]["bullseye"]
    assert entry["base"]["image_id"] == base["image_id"] == engine.image_id("debian:bullseye")
    layers_in_tar(where / entry["file"], engine, image_id)
    print(f"archive: {manifest['totals']['files']} tarballs, "
          f"{archive.mb(manifest['totals']['bytes'])} in {archive_s:.1f}s; image "
          f"{archive.mb(entry['size_bytes'])} -> {archive.mb(entry['file_bytes'])} tarball; base "
          f"{archive.mb(base['size_bytes'])} -> {archive.mb(base['file_bytes'])} "
          f"(found by {entry['base']['source']})")

    # -- the image goes; replay refuses, with the fix, and builds nothing
    assert engine.remove_image(tag) and engine.image_id(image_id) is None
    refused = envmatrix_cli(["replay", str(run.out), "--out", str(workdir / "refused")],
                            workdir, run.out)
    assert refused.code == 3 and "nox -s restore -- ARCHIVE" in refused.stderr, refused.stderr
    assert engine.image_id(image_id) is None and not (workdir / "refused").exists()

    # -- restore
    started = time.monotonic()
    restored = envmatrix_cli(["restore", str(where)], workdir, where)
    restore_s = time.monotonic() - started
    assert restored.code == 0, restored.stderr
    assert engine.image_id(image_id) == image_id and engine.image_id(tag) == image_id
    record = json.loads((where / "restore.json").read_text())["restores"][-1]
    items = {i["kind"]: i for i in record["images"]}
    assert items["base"]["action"] == "present"  # the shared base is never touched
    loaded = items["environment"]
    assert loaded["action"] == "loaded" and loaded["tag_status"] == "restored"
    assert loaded["changes"]["image_id"] == "kept"
    assert loaded["changes"]["parent"].startswith("lost: ")  # a local build had a parent
    assert loaded["changes"]["layers"] == "same"
    print(f"restore: {restore_s:.1f}s (verify + load {loaded['seconds']}s); changes: "
          f"{loaded['changes']}")

    # -- replay in the restored image: nothing built, same inputs, a comparison with headlines
    out = workdir / "replay"
    started = time.monotonic()
    again = envmatrix_cli(["replay", str(run.out), "--out", str(out)], workdir, out)
    replay_s = time.monotonic() - started
    assert again.code == 0, again.stderr
    assert not re.search(r"\b(build|base)\s+\S+: ", again.stderr), "replay must build nothing"
    assert not list((out / "logs").glob("build-*.log"))
    resolved = planfile.read_resolved(out / "matrix.resolved.yaml")
    assert resolved.run.images[ENV].image_id == image_id
    assert (out / "report.md").is_file() and (out / f"compare-{run.out.name}.md").is_file()
    new = json.loads((out / "results" / f"{CELL}.json").read_text())
    old = json.loads((run.out / "results" / f"{CELL}.json").read_text())
    assert new["status"] == "ok" and new["host"]["image_id"] == image_id
    assert [i["sha256"] for i in new["inputs"]] == [i["sha256"] for i in old["inputs"]]
    assert new["model"]["sha256"] == old["model"]["sha256"]
    match = HEADLINE.search(again.stdout)
    assert match, again.stdout
    print(f"replay: {replay_s:.1f}s; {again.stdout.strip().splitlines()[0]}")


def layers_in_tar(path: Path, engine: Engine, image_id: str) -> None:
    """The tarball holds every layer of the image: each listed layer file hashes to its diff
    id, in order (docker save's manifest.json, in either the classic or the OCI layout)."""
    facts = engine.image_facts(image_id)
    assert facts is not None
    with tarfile.open(path) as tar:
        listed = json.load(tar.extractfile("manifest.json"))[0]["Layers"]  # type: ignore[arg-type]
        digests = []
        for name in listed:
            handle = tar.extractfile(name)
            assert handle is not None, name
            digest = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
            digests.append(f"sha256:{digest.hexdigest()}")
    assert digests == list(facts.layers)
