"""Run directories: never overwritten, reopened only when they are ours, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from envmatrix.errors import RunDirError
from envmatrix.rundir import layout as rundir
from envmatrix.rundir.layout import (
    atomic_write_bytes,
    atomic_write_json,
    claim_run_dir,
    create_run_dir,
    open_run_dir,
)


def test_create_makes_layout_marker_and_latest(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path / "reports", None)
    for folder in (run.logs_dir, run.results_dir, run.outputs_dir, run.inputs_dir, run.scratch_dir):
        assert folder.is_dir()
    assert json.loads(run.marker_path.read_text())["run_id"] == run.run_id
    assert (tmp_path / "reports" / "latest").resolve() == run.path.resolve()
    assert open_run_dir(tmp_path / "reports" / "latest").run_id == run.run_id


def test_generated_ids_are_unique_and_latest_moves(tmp_path: Path) -> None:
    runs = [create_run_dir(tmp_path, None) for _ in range(5)]
    assert len({r.path for r in runs}) == 5
    assert open_run_dir(tmp_path / "latest").path.resolve() == runs[-1].path.resolve()


def test_explicit_existing_run_id_is_refused_and_left_alone(tmp_path: Path) -> None:
    first = create_run_dir(tmp_path, "nightly")
    atomic_write_json(first.result_path("c"), {"keep": 1})
    with pytest.raises(RunDirError, match="already exists.*--resume"):
        create_run_dir(tmp_path, "nightly")
    assert json.loads(first.result_path("c").read_text()) == {"keep": 1}


def test_colliding_generated_id_is_redrawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["same", "same", "other"])
    monkeypatch.setattr(rundir, "new_run_id", lambda now=None: next(ids))
    assert create_run_dir(tmp_path, None).run_id == "same"
    assert create_run_dir(tmp_path, None).run_id == "other"


@pytest.mark.parametrize("bad", ["../escape", "a/b", "latest", "", "x" * 200])
def test_unusable_run_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RunDirError, match="run id"):
        create_run_dir(tmp_path, bad)


def test_claim_refuses_a_folder_holding_a_run_or_other_files(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "r1")
    with pytest.raises(RunDirError, match="already holds a run.*--resume"):
        claim_run_dir(run.path)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    with pytest.raises(RunDirError, match="not empty"):
        claim_run_dir(other)
    fresh = claim_run_dir(tmp_path / "new" / "out")
    assert open_run_dir(fresh.path).run_id == "out"


def test_open_refuses_folders_that_are_not_runs(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a folder"):
        open_run_dir(tmp_path / "missing")
    with pytest.raises(RunDirError, match="not an envmatrix run directory"):
        open_run_dir(tmp_path)
    (tmp_path / rundir.MARKER).write_text(json.dumps({"schema": "envmatrix.rundir/99"}))
    with pytest.raises(RunDirError, match="another envmatrix version"):
        open_run_dir(tmp_path)


def test_latest_falls_back_to_a_text_file_without_symlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError("operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    run = create_run_dir(tmp_path, "r1")
    assert (tmp_path / "LATEST").read_text().strip() == "r1"
    assert open_run_dir(tmp_path / "latest").path == run.path


class _Boom(Exception):
    pass


def test_crash_mid_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "result.json"
    atomic_write_bytes(target, b"old")

    def crash(fd: int) -> None:  # data written but not yet durable: the crash point
        raise _Boom()

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(_Boom):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_interrupt_mid_write_also_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.txt"

    def interrupt(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"data")
    assert list(tmp_path.iterdir()) == []


def test_atomic_json_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": float("nan"), "b": [1.5, float("inf")], "c": "é"})
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": "é"}
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_create_with_out_claims_that_folder(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path / "reports", out=tmp_path / "custom")
    assert run.path == tmp_path / "custom" and run.marker_path.is_file()
    with pytest.raises(RunDirError, match="already holds a run"):
        create_run_dir(tmp_path / "reports", out=tmp_path / "custom")
