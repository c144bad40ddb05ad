"""Replay with a fake engine: cell selection, exact images (or the fix when missing), inputs
copied byte for byte, a new run directory, and the headline's wording from the verdict."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from fakeruns import BASELINE, CANDIDATE, fake_result, make_run
from fakes import Behaviour, FakeEngine, arg, outcome, spy_execute

from envmatrix import cli
from envmatrix.analysis.stats import EQUIVALENT, FASTER, INCONCLUSIVE, SLOWER, VerdictRules
from envmatrix.config import load as config
from envmatrix.errors import ConfigError, RunDirError
from envmatrix.reproduce import replay
from envmatrix.reproduce.archive import MissingImages, sha256_file
from envmatrix.rundir import planfile
from envmatrix.rundir.plan import ImageRecord
from envmatrix.running.containers import ContainerSpec
from envmatrix.running.engine import ContainerOutcome

CELLS = [f"{BASELINE}--cnn--cpu", f"{CANDIDATE}--cnn--cpu"]
IDS = {BASELINE: "sha256:" + "a" * 64, CANDIDATE: "sha256:" + "c" * 64}


def measuring(p50: dict[str, float]) -> dict[str, Behaviour]:
    """Containers that measure like the fake results: p50 per cell, a new seed each round."""
    rounds = itertools.count(1)

    def measure(spec: ContainerSpec, out: Path) -> ContainerOutcome:
        cell = arg(spec, "--cell")
        doc = fake_result(cell, p50=p50[cell], cv=0.01, repeats=1, seed=100 + next(rounds))
        for key in ("reason", "log_tail", "host"):
            doc.pop(key)
        (out / PurePosixPath(arg(spec, "--out")).name).write_text(json.dumps(doc))
        return outcome(0, "measured\n")

    return {cell: measure for cell in p50}


def engine_with(images: dict[str, str], p50: dict[str, float]) -> FakeEngine:
    """Images by id (ref -> id), and containers that measure like the fake results."""
    return FakeEngine.holding(images, behaviours=measuring(p50))


def old_run(root: Path, p50: float = 0.005) -> Path:
    """A finished run of two cells with its inputs and the images it recorded."""
    path = make_run(root, [fake_result(c, p50=p50, cv=0.01, seed=i) for i, c in
                           enumerate(CELLS)], run_id="old")
    folder = path / "inputs" / "cnn"
    folder.mkdir(parents=True)
    (folder / "cnn.onnx").write_bytes(b"onnx model bytes")
    np.savez(folder / "inputs.npz", x=np.arange(4, dtype=np.float32))
    resolved = path / "matrix.resolved.yaml"
    doc = config.yamlsrc.read_plain(resolved)
    doc["run"]["images"] = {env: {"tag": f"envmatrix/{env}:h", "image_id": IDS[env]}
                            for env in IDS}
    resolved.write_text(config.yamlsrc.dump_plain(doc), encoding="utf-8")
    return path


def fake(monkeypatch: pytest.MonkeyPatch, engine: FakeEngine) -> None:
    monkeypatch.setattr(replay.Engine, "connect", classmethod(lambda cls: engine))


def request(tmp_path: Path, old: Path, **kw: Any) -> replay.Request:
    return replay.Request(old_run=old, reports_root=tmp_path / "reports", **kw)


# -- selection and images --------------------------------------------------------------------


def test_only_selects_cells_and_keeps_their_environments(tmp_path: Path) -> None:
    plan = planfile.read_resolved(old_run(tmp_path) / "matrix.resolved.yaml").plan
    kept = replay.select_plan(plan, [f"{CANDIDATE}--cnn--cpu"], [])
    assert [c.id for c in kept.cells] == [f"{CANDIDATE}--cnn--cpu"]
    assert [e.id for e in kept.environments] == [CANDIDATE] and kept.baseline == CANDIDATE
    assert replay.select_plan(plan, [], [f"{CANDIDATE}*"]).baseline == BASELINE
    with pytest.raises(ConfigError, match="matches no environment or cell id"):
        replay.select_plan(plan, ["nope*"], [])


def test_a_missing_image_is_named_with_both_fixes(tmp_path: Path) -> None:
    plan = planfile.read_resolved(old_run(tmp_path) / "matrix.resolved.yaml").plan
    engine = engine_with({IDS[BASELINE]: IDS[BASELINE]}, {})
    records = {env: ImageRecord(f"envmatrix/{env}:h", i) for env, i in IDS.items()}
    with pytest.raises(MissingImages) as err:
        replay.choose_images(engine, plan, records, {}, tmp_path)
    text = str(err.value)
    assert CANDIDATE in text and IDS[CANDIDATE] in text and BASELINE + ":" not in text
    assert "nox -s restore -- ARCHIVE" in text and "--image ENV=TAG" in text
    assert err.value.exit_code == 3
    engine.add_image("rebuilt:1", "sha256:" + "e" * 64)
    chosen = replay.choose_images(engine, plan, records, {CANDIDATE: "rebuilt:1"},
                                  tmp_path)
    assert chosen[CANDIDATE].image_id == "sha256:" + "e" * 64
    assert chosen[CANDIDATE].source == "--image" and chosen[BASELINE].source == "recorded"
    with pytest.raises(MissingImages, match="not an environment"):
        replay.choose_images(engine, plan, records, {"other": "x"}, tmp_path)


# -- headline wording ------------------------------------------------------------------------


@pytest.mark.parametrize(("verdict", "ratio", "low", "high", "words"), [
    (SLOWER, 1.07, 1.04, 1.10, "measures 7% slower"),
    (FASTER, 0.88, 0.85, 0.91, "measures 12% faster"),
    (EQUIVALENT, 1.004, 0.99, 1.015, "measures the same (equivalent within ±5%"),
    (INCONCLUSIVE, 1.01, 0.95, 1.08, "is inconclusive (between -5.0% and +8.0%: too wide"),
    (INCONCLUSIVE, 1.015, 1.005, 1.06, "is inconclusive (+1.5%, below the 2% that counts"),
    (INCONCLUSIVE, 1.2, math.nan, math.nan, "is inconclusive (too few rounds"),
    (INCONCLUSIVE, 1.2, 0.0, math.inf, "is inconclusive (too few rounds"),
])
def test_headline_words(verdict: str, ratio: float, low: float, high: float,
                        words: str) -> None:
    assert replay.headline_phrase(verdict, ratio, low, high, 0.02, 0.05).startswith(words)


def test_headline_numbers_are_the_comparison_table_numbers(tmp_path: Path) -> None:
    from envmatrix.report.compare import compare
    from envmatrix.rundir.run import load_run
    cell = CELLS[0]
    a = make_run(tmp_path, [fake_result(cell, p50=0.005, cv=0.01, seed=1)], run_id="a")
    b = make_run(tmp_path, [fake_result(cell, p50=0.0056, cv=0.01, seed=2)], run_id="b")
    rules = VerdictRules()
    table = compare(a, b, rules=rules).path.read_text()
    image = replay.ChosenImage("t", IDS[BASELINE], IDS[BASELINE], "recorded")
    [line] = replay.headlines(load_run(a), load_run(b), {BASELINE: image}, rules)
    row = next(r for r in table.splitlines() if r.startswith("| cnn"))
    change = row.split("|")[7].strip()
    assert f"{change.split(' [')[0]} [" in line.text and change.split(" [")[1] in line.text
    assert line.verdict == SLOWER and "this cell measures 13% slower" in line.text
    assert line.text.startswith(f"{cell}: same image aaaaaaaaaaaa, measured again, ")


# -- the whole replay ------------------------------------------------------------------------


def test_replay_measures_again_in_a_new_run_and_compares(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    old = old_run(tmp_path / "old")
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    engine = engine_with({i: i for i in IDS.values()}, {c: 0.005 for c in CELLS})
    fake(monkeypatch, engine)
    jobs = spy_execute(monkeypatch)
    done = replay.replay(request(tmp_path, old, only=[f"{CANDIDATE}*"], out=tmp_path / "new"))
    assert [type(j) for j in jobs] == [replay.ReplayJob]  # the pipeline's stages, in its order
    assert done.run_dir.path == tmp_path / "new" and not done.failed
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before  # untouched
    # Exactly the recorded image, the old measure settings (5 rounds), nothing built.
    assert {s.image for s in engine.runs} == {IDS[CANDIDATE]} and len(engine.runs) == 5
    new = done.run_dir.path
    for name in ("cnn.onnx", "inputs.npz"):
        assert sha256_file(new / "inputs" / "cnn" / name) == sha256_file(old / "inputs/cnn" / name)
    resolved = planfile.read_resolved(new / "matrix.resolved.yaml")
    assert [c.id for c in resolved.plan.cells] == [f"{CANDIDATE}--cnn--cpu"]
    recorded = planfile.read_resolved(old / "matrix.resolved.yaml")
    assert resolved.plan.measure == recorded.plan.measure
    assert resolved.run.images[CANDIDATE].image_id == IDS[CANDIDATE]
    assert (new / "report.md").is_file() and (new / "compare-old.md").is_file()
    summary = json.loads((new / "replay.json").read_text())
    assert summary["of_run_dir"] == "../old/old" and summary["of_run"] == "old"
    assert summary["images"][CANDIDATE]["source"] == "recorded"
    [line] = done.headlines
    assert line.cell == f"{CANDIDATE}--cnn--cpu" and line.verdict == EQUIVALENT
    assert line.text in (new / "replay.md").read_text()


def test_replay_cli_prints_headlines_and_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    old = old_run(tmp_path / "old")
    engine = engine_with({IDS[BASELINE]: IDS[BASELINE]}, {c: 0.005 for c in CELLS})
    fake(monkeypatch, engine)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["replay", str(old)]) == 3  # the candidate's image is missing
    assert "nox -s restore -- ARCHIVE" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()  # refused before any run directory
    assert cli.main(["replay", str(old), "--only", BASELINE]) == 0
    printed = capsys.readouterr().out
    assert f"{BASELINE}--cnn--cpu: same image" in printed and "Comparison: " in printed
    assert cli.main(["replay", str(old), "--only", "zz*"]) == 2


def test_inputs_changed_after_the_run_are_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    old = old_run(tmp_path / "old")
    result_path = old / "results" / f"{BASELINE}--cnn--cpu.json"
    result = json.loads(result_path.read_text())
    result["model"] = {"sha256": "0" * 64}
    result_path.write_text(json.dumps(result))
    fake(monkeypatch, engine_with({i: i for i in IDS.values()}, {c: 0.005 for c in CELLS}))
    with pytest.raises(RunDirError, match="were changed after it ran"):
        replay.replay(request(tmp_path, old, out=tmp_path / "new"))


def test_environments_whose_build_failed_are_left_out_with_a_note(tmp_path: Path) -> None:
    plan = planfile.read_resolved(old_run(tmp_path) / "matrix.resolved.yaml").plan
    records = {BASELINE: ImageRecord("t", IDS[BASELINE]), CANDIDATE: ImageRecord(None, None)}
    said: list[str] = []
    kept = replay.drop_unbuilt(plan, records, {}, lambda stage, text: said.append(text))
    assert [c.id for c in kept.cells] == [f"{BASELINE}--cnn--cpu"]
    assert said and CANDIDATE in said[0] and "build failed" in said[0]
    assert replay.drop_unbuilt(plan, records, {CANDIDATE: "t2"}, print) == plan
    with pytest.raises(ConfigError, match="nothing to replay"):
        replay.drop_unbuilt(kept, {}, {}, print)
