"""Outcome classification, result merging, stale-result refusal and resume selection."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from envmatrix.errors import RunDirError
from envmatrix.rundir import results
from envmatrix.rundir.layout import RunDir, atomic_write_json, create_run_dir
from envmatrix.rundir.plan import (
    Base,
    Cell,
    Environment,
    Measure,
    Plan,
    ResolvedPlan,
    RunRecord,
    Workload,
)

MEASURE = Measure(repeats=2, min_time_s=0.5)


@dataclass(frozen=True)
class FakeOutcome:
    exit_code: int | None
    oom_killed: bool = False
    timed_out: bool = False


def make_cell(provider: str = "cpu", version: str = "1.8.0") -> Cell:
    base = Base(name="bullseye", image="debian:bullseye", family="debian")
    env = Environment(
        id=f"bullseye-ort{version}",
        base=base,
        python="system",
        packages=(("numpy", "1.21.6"), ("onnxruntime", version)),
        providers=("cpu",),
    )
    wl = Workload(name="cnn", model="zoo:cnn", shapes=(("x", (1, 3, 8, 8)),), seed=3)
    return Cell(id=f"{env.id}--cnn--{provider}", environment=env, workload=wl, provider=provider)


def harness_doc(status: str = "ok", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": results.SCHEMA,
        "status": status,
        "reason": None if status == "ok" else "model is newer than this runtime",
        "harness_version": "1",
        "summary": {"iterations": 100, "latency_s": {"p50": 0.005}},
        "repeats": [{"index": 0, "latencies_s": [0.005, 0.006]}],
    }
    doc.update(extra)
    return doc


def classify(
    outcome: FakeOutcome,
    harness: dict[str, Any] | None = None,
    problem: str | None = None,
    log: str | None = None,
) -> tuple[str, str | None]:
    return results.classify(outcome, harness, problem, timeout_s=3, memory_limit="64m", log=log)


@pytest.mark.parametrize(
    ("outcome", "harness", "status", "words"),
    [
        (FakeOutcome(0), harness_doc(), "ok", None),
        (FakeOutcome(None, timed_out=True), None, "timeout", "3 s limit"),
        (FakeOutcome(137, oom_killed=True), None, "oom", "64m"),
        (FakeOutcome(137), None, "crashed", "SIGKILL (exit code 137) without the OOM flag"),
        (FakeOutcome(139), harness_doc(), "crashed", "SIGSEGV"),
        (FakeOutcome(-11), None, "crashed", "SIGSEGV"),
        (FakeOutcome(134), None, "crashed", "SIGABRT"),
        (FakeOutcome(None), None, "interrupted", "interrupted"),
        (FakeOutcome(2), harness_doc("error"), "error", "newer than this runtime"),
        (FakeOutcome(1), None, "error", "exited with code 1: ImportError: no numpy"),
        (FakeOutcome(3), harness_doc(), "error", "exited with code 3"),
        (FakeOutcome(0), harness_doc("error"), "error", "newer than this runtime"),
        (FakeOutcome(0), harness_doc("skipped", reason="no GPU"), "skipped", "no GPU"),
    ],
)
def test_classification(
    outcome: FakeOutcome, harness: dict[str, Any] | None, status: str, words: str | None
) -> None:
    got_status, reason = classify(outcome, harness, log="Traceback\nImportError: no numpy\n")
    assert got_status == status
    if words is None:
        assert reason is None
    else:
        assert reason is not None and words in reason


def test_timeout_wins_over_everything_the_container_said() -> None:
    status, _ = classify(FakeOutcome(137, oom_killed=True, timed_out=True), harness_doc())
    assert status == "timeout"


def test_exit_zero_without_a_valid_file_is_no_result(tmp_path: Path) -> None:
    missing, problem = results.read_harness_file(tmp_path / "result.json")
    assert missing is None and problem is not None
    assert classify(FakeOutcome(0), None, problem) == (
        "no_result",
        f"exited with code 0 but {problem}",
    )
    for text, words in [
        ('{"schema": "envmatrix.result/1", "status": "ok"', "not valid JSON"),
        ("[1, 2]", "no JSON object"),
        ('{"schema": "other/9", "status": "ok"}', "schema 'other/9'"),
        ('{"schema": "envmatrix.result/1", "status": "great"}', "unknown status"),
    ]:
        (tmp_path / "result.json").write_text(text)
        doc, problem = results.read_harness_file(tmp_path / "result.json")
        assert doc is None and problem is not None and words in problem
        assert classify(FakeOutcome(0), doc, problem)[0] == "no_result"


@pytest.mark.parametrize(("code", "name"), [(0, None), (1, None), (139, "SIGSEGV"), (-9, "SIGKILL"),
                                            (255, None), (None, None)])  # fmt: skip
def test_signal_of(code: int | None, name: str | None) -> None:
    assert results.signal_of(code) == name


def test_finalize_keeps_harness_numbers_and_adds_the_host_part() -> None:
    cell = make_cell()
    doc = results.finalize_result(
        harness_doc(cell="label-from-harness", backend="onnxruntime"),
        cell=cell, measure=MEASURE, status="ok", reason=None, log_tail="noise",
        host={"exit_code": 0, "image_id": "sha256:abc"},
    )  # fmt: skip
    assert set(results.RESULT_KEYS) <= set(doc)
    assert doc["cell"] == cell.id and doc["environment"] == cell.environment.id
    assert doc["summary"]["latency_s"]["p50"] == 0.005
    assert doc["log_tail"] is None and doc["reason"] is None
    assert doc["host"]["config_hash"] == cell.config_hash(MEASURE)
    assert doc["host"]["requested_packages"] == {"numpy": "1.21.6", "onnxruntime": "1.8.0"}
    assert doc["host"]["image_id"] == "sha256:abc"


def test_host_override_drops_the_summary_but_keeps_raw_values() -> None:
    doc = results.finalize_result(
        harness_doc(), cell=make_cell(), measure=MEASURE, status="crashed",
        reason="killed by SIGSEGV\n(exit code 139)", log_tail="Segmentation fault", host={},
    )  # fmt: skip
    assert doc["status"] == "crashed" and doc["summary"] is None
    assert doc["repeats"][0]["latencies_s"] == [0.005, 0.006]
    assert doc["reason"] == "killed by SIGSEGV (exit code 139)"  # one line
    assert doc["log_tail"] == "Segmentation fault"


def test_failure_result_has_every_key_and_the_requested_settings() -> None:
    cell = replace(make_cell("openvino"), provider_options=(("device_type", "CPU"),))
    doc = results.failure_result(cell, "build_failed", "pip failed", "E: tail", {}, measure=MEASURE)
    assert set(results.RESULT_KEYS) <= set(doc)
    assert doc["schema"] == results.SCHEMA and doc["status"] == "build_failed"
    assert doc["provider"]["requested"] == "OpenVINOExecutionProvider"
    assert doc["provider"]["options"] == {"device_type": "CPU"}
    assert doc["settings"]["repeats"] == 2 and doc["settings"]["shapes"] == {"x": [1, 3, 8, 8]}
    assert doc["summary"] is None and doc["host"]["exit_code"] is None
    with pytest.raises(ValueError, match="unknown status"):
        results.failure_result(cell, "exploded", "?", None, {})


def test_log_tail_is_bounded() -> None:
    text = "\n".join(f"line {i}" for i in range(1000))
    tail = results.log_tail(text)
    assert tail is not None and tail.splitlines()[-1] == "line 999"
    assert len(tail.splitlines()) == results.LOG_TAIL_LINES
    assert results.log_tail("") is None


def test_log_tail_and_reason_are_plain_text() -> None:
    """Colour codes and progress-bar redraws are terminal noise: neither reaches a result."""
    log = ("loading\r\x1b[K 10%\r\x1b[K100%\n"
           "\x1b[31mTraceback (most recent call last):\x1b[0m\n"
           '  File "x.py", line 1\n\x1b[1;31mValueError: bad shape\x1b[0m\n')
    tail = results.log_tail(log)
    assert tail == ('100%\nTraceback (most recent call last):\n  File "x.py", line 1\n'
                    "ValueError: bad shape")
    assert results.last_log_line(log) == "ValueError: bad shape"
    assert results.one_line("\x1b[31mERROR:\x1b[0m  no\n wheel") == "ERROR: no wheel"


def _write_ok(run: RunDir, cell: Cell, measure: Measure, **host: Any) -> dict[str, Any]:
    doc = results.finalize_result(harness_doc(), cell=cell, measure=measure, status="ok",
                                  reason=None, log_tail=None, host=host)  # fmt: skip
    results.write_result(run, doc)
    return doc


def _resolved(cells: list[Cell], measure: Measure) -> ResolvedPlan:
    plan = Plan(source=Path("matrix.yaml"), bases=(cells[0].environment.base,),
                environments=tuple(dict.fromkeys(c.environment for c in cells)),
                workloads=(cells[0].workload,), measure=measure,
                baseline=cells[0].environment.id, cells=tuple(cells))
    return ResolvedPlan(plan=plan, run=RunRecord())


def test_load_results_one_per_plan_cell_with_stale_and_missing_marked(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "r")
    fresh, changed, missing = make_cell(), make_cell(version="1.16.0"), make_cell("openvino")
    _write_ok(run, fresh, MEASURE)
    _write_ok(run, changed, replace(MEASURE, repeats=9))  # measured under other settings
    loaded = results.load_results(run, _resolved([fresh, changed, missing], MEASURE))
    assert [d["cell"] for d in loaded] == [fresh.id, changed.id, missing.id]
    assert [d["status"] for d in loaded] == ["ok", "skipped", "skipped"]
    assert loaded[1]["reason"].startswith("stale: measured with config hash")
    assert loaded[1]["summary"] is None and loaded[1]["host"]["stale"]["status"] == "ok"
    assert "not run" in loaded[2]["reason"] and "--resume" in loaded[2]["reason"]
    assert loaded[2]["provider"]["requested"] == "OpenVINOExecutionProvider"
    assert [d["cell"] for d in results.load_results(run, None)] == sorted([fresh.id, changed.id])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"schema": "envmatrix.result/2", "status": "ok", "cell": "c"}, "result schema"),
        ({"schema": "envmatrix.result/1", "status": "weird", "cell": "c"}, "no valid status"),
        ("not json", "not a readable result"),
    ],
)
def test_load_results_refuses_files_it_cannot_interpret(
    tmp_path: Path, content: object, words: str
) -> None:
    run = create_run_dir(tmp_path, "r")
    path = run.result_path("c")
    if isinstance(content, str):
        path.write_text(content)
    else:
        atomic_write_json(path, content)
    with pytest.raises(RunDirError, match=words) as info:
        results.load_results(run, None)
    assert str(path) in str(info.value)


MODEL_SHA, INPUTS_SHA = "a" * 64, "b" * 64


def _identity(cell: Cell, measure: Measure = MEASURE, **changes: Any) -> results.Identity:
    return replace(results.Identity(cell.config_hash(measure), MODEL_SHA, INPUTS_SHA), **changes)


def _kept(run: RunDir, cell: Cell, image: str | None = None, **changes: Any) -> tuple[Any, Any]:
    return results.reuse_check(run, cell, _identity(cell, **changes), image)


def test_resume_keeps_only_ok_results_whose_config_model_and_inputs_match(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "r")
    cell = make_cell()
    assert _kept(run, cell) == (None, None)  # nothing yet: measured, nothing to explain
    _write_ok(run, cell, MEASURE, image_tag="envmatrix/x:1", model_sha256=MODEL_SHA,
              inputs_sha256=INPUTS_SHA)
    assert _kept(run, cell, "envmatrix/x:1")[0] is not None
    assert _kept(run, cell)[0] is not None
    doc, why = _kept(run, cell, "envmatrix/x:2")
    assert doc is None and "image envmatrix/x:1" in why and "envmatrix/x:2" in why
    doc, why = results.reuse_check(run, cell, _identity(cell, replace(MEASURE, warmup=1)))
    assert doc is None and why.startswith("config hash") and "settings differ" in why
    doc, why = _kept(run, cell, model_sha256="c" * 64)
    assert doc is None and why == ("model sha256 aaaaaaaaaaaa in its result, cccccccccccc "
                                   "prepared now (the model file changed since it was measured)")
    doc, why = _kept(run, cell, inputs_sha256="d" * 64)
    assert doc is None and why.startswith("inputs sha256 bbbbbbbbbbbb in its result, dddd")
    failed = results.failure_result(cell, "timeout", "slow", None, {}, measure=MEASURE)
    results.write_result(run, failed)
    assert _kept(run, cell) == (None, "its earlier result is timeout")  # failures are re-run
    run.result_path(cell.id).write_text("{broken")
    doc, why = _kept(run, cell)
    assert doc is None and why.startswith("its result file is unreadable")


def test_resume_prefers_the_harness_model_hash_and_needs_every_hash_recorded(
    tmp_path: Path,
) -> None:
    run = create_run_dir(tmp_path, "r")
    cell = make_cell()
    # The harness's model.sha256 (what it read in the container) is the recorded one.
    doc = results.finalize_result(harness_doc(model={"sha256": "e" * 64}), cell=cell,
                                  measure=MEASURE, status="ok", reason=None, log_tail=None,
                                  host={"model_sha256": MODEL_SHA, "inputs_sha256": INPUTS_SHA})
    results.write_result(run, doc)
    assert "model sha256 eeeeeeeeeeee in its result" in _kept(run, cell)[1]
    _write_ok(run, cell, MEASURE, inputs_sha256=INPUTS_SHA)  # no model hash anywhere
    assert _kept(run, cell) == (None, "its result records no model sha256, so it cannot be "
                                      "checked")
    _write_ok(run, cell, MEASURE, model_sha256=MODEL_SHA)  # no inputs hash, no tensor digests
    assert _kept(run, cell)[1] == "its result records no inputs sha256, so it cannot be checked"


def test_resume_checks_older_results_by_the_harness_tensor_digests(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "r")
    cell = make_cell()
    fed = [{"name": "x", "sha256": "f1"}, {"name": "y", "sha256": "f0"}]
    doc = results.finalize_result(harness_doc(inputs=fed), cell=cell, measure=MEASURE,
                                  status="ok", reason=None, log_tail=None,
                                  host={"model_sha256": MODEL_SHA})
    results.write_result(run, doc)
    assert _kept(run, cell, tensor_sha256s=("f0", "f1"))[0] is not None
    doc, why = _kept(run, cell, tensor_sha256s=("f0", "f2"))
    assert doc is None and "input tensors its harness fed differ" in why


def test_written_result_round_trips(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "r")
    doc = _write_ok(run, make_cell(), MEASURE)
    assert json.loads(run.result_path(doc["cell"]).read_text()) == doc


def test_from_json_types_a_result_loaded_elsewhere(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "r")
    doc = _write_ok(run, make_cell(), MEASURE)
    assert results.from_json(json.loads(json.dumps(doc)), "results.json") == doc


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ([1, 2], "result schema 'list'"),
        ({"status": "ok", "cell": "c"}, "result schema None"),
        ({"schema": "envmatrix.result/1", "status": "ok", "cell": ""}, "no valid status/cell"),
        ({"schema": "envmatrix.result/1", "status": None, "cell": "c"}, "status None"),
    ],
)
def test_from_json_refuses_what_read_result_refuses(tmp_path: Path, doc: object,
                                                    words: str) -> None:
    with pytest.raises(RunDirError, match=words) as info:
        results.from_json(doc, "archive member c.json")
    assert str(info.value).startswith("archive member c.json ")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RunDirError, match=words):
        results.read_result(path)


def test_a_truncated_result_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"schema": "envmatrix.result/1", "status": "ok", "cell": "c", "rep')
    with pytest.raises(RunDirError, match="is not a readable result") as info:
        results.read_result(path)
    assert str(path) in str(info.value) and "--resume" in str(info.value)
