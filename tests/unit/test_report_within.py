"""Backends and settings side by side: samples per second, sections per network, the
"Within each environment" section and its answers, parity by position, results.csv fields.

Two synthetic environments measured in 10 interleaved rounds: one with network `cnn` as
cnn-ort, cnn-torch (torch names its output `output`) and cnn-b8; one OpenVINO-like with
concurrency 1/2/4 and a load_config knob. The numbers differ by 25% or more with 1-2% noise,
so every paired verdict is certain.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fakeruns import BASELINE, CANDIDATE, fake_result, make_run

from envmatrix import gate
from envmatrix.analysis.rundata import load_run
from envmatrix.analysis.stats import VerdictRules, point_value, process_stat, unit_values
from envmatrix.report.build import build_report
from envmatrix.rundir.layout import create_run_dir

RULES = VerdictRules()  # fewer resamples: same code paths, faster tests
ENV = "bookworm-ort1.20.1"
OV = "bookworm-ortov1.24.1"
ORT, TORCH, B8 = (f"{ENV}--cnn-{w}--cpu" for w in ("ort", "torch", "b8"))
OV_PREFIX = f"{OV}--cnn-ort--openvino"
C1 = f"{OV_PREFIX}--c1--load_config-latency"
C2 = f"{OV_PREFIX}--c2--load_config-latency"
C2T = f"{OV_PREFIX}--c2--load_config-throughput"
C4 = f"{OV_PREFIX}--c4--load_config-throughput"
HINT = {"latency": {"CPU": {"PERFORMANCE_HINT": "LATENCY"}},
        "throughput": {"CPU": {"PERFORMANCE_HINT": "THROUGHPUT"}}}
PACKAGES = {"onnxruntime": "1.20.1", "numpy": "1.26.4"}


def _workload(name: str, backend: str, batch: int) -> dict[str, Any]:
    return {"name": name, "model": "zoo:cnn", "backend": backend, "batch": batch,
            "network": "cnn"}


def _cell(cid: str, env: str, workload: str, provider: str, knobs: dict[str, Any] | None = None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": cid, "environment": env, "workload": workload, "provider": provider,
            "provider_options": options or {}, **({"knobs": knobs} if knobs else {}),
            "config_hash": "h-" + cid}


def _plan() -> dict[str, Any]:
    env = {"base": "b", "image": "debian:bookworm", "python": "system", "packages": PACKAGES}
    ov_cells = [_cell(cid, OV, "cnn-ort", "openvino", {"concurrency": c},
                      {"load_config": HINT[hint]})
                for cid, c, hint in ((C1, 1, "latency"), (C2, 2, "latency"),
                                     (C2T, 2, "throughput"), (C4, 4, "throughput"))]
    return {
        "schema": "envmatrix.plan/1", "source": "matrix.yaml", "baseline": ENV,
        "measure": {"warmup": 10, "min_iterations": 50, "min_time_s": 0.1, "repeats": 10,
                    "rounds": 10, "memory_limit": "4g", "pids_limit": 512},
        "environments": [{**env, "id": ENV, "providers": ["cpu"]},
                         {**env, "id": OV, "providers": ["openvino"]}],
        "workloads": [_workload("cnn-ort", "onnxruntime", 1), _workload("cnn-torch", "torch", 1),
                      _workload("cnn-b8", "onnxruntime", 8)],
        "cells": [_cell(ORT, ENV, "cnn-ort", "cpu"), _cell(TORCH, ENV, "cnn-torch", "cpu"),
                  _cell(B8, ENV, "cnn-b8", "cpu"), *ov_cells],
        "run": {"run_id": "run-1"},
    }  # fmt: skip


def _result(cid: str, p50: float, samples_per_s: float, seed: int, batch: int = 1,
            concurrency: int = 1, backend: str = "onnxruntime") -> dict[str, Any]:
    """A result of the extended harness: per repeat samples_per_s (1% noise) and its round."""
    env, workload, provider = cid.split("--")[:3]
    name = "OpenVINOExecutionProvider" if provider == "openvino" else "CPUExecutionProvider"
    res = fake_result(f"{env}--{workload}--{provider}", p50=p50, repeats=10, iterations=100,
                      seed=seed, provider=name, packages=PACKAGES)
    rng = np.random.default_rng(seed + 1000)
    scenario = "offline" if concurrency > 1 else "single-stream"
    for i, rep in enumerate(res["repeats"]):
        rate = samples_per_s * float(np.exp(rng.normal(0.0, 0.01)))
        rep.update(round=i, samples_per_s=rate, requests_per_s=rate / batch,
                   concurrency=concurrency, cpu_per_sample_s=rep["cpu_time_s"] / 100 / batch)
    res["summary"].update(batch=batch, concurrency=concurrency, scenario=scenario,
                          samples_per_s=samples_per_s, requests_per_s=samples_per_s / batch)
    res["host"].update(config_hash="h-" + cid, started_at="2026-11-23T12:00:00Z",
                       finished_at="2026-11-23T12:10:00Z")
    res.update(cell=cid, backend=backend)
    return res


def _crashed(cid: str) -> dict[str, Any]:
    return {"schema": "envmatrix.result/1", "status": "crashed", "reason": "killed by SIGSEGV",
            "log_tail": "Segmentation fault", "cell": cid, "environment": OV,
            "workload": "cnn-ort", "provider": {"requested": "OpenVINOExecutionProvider"},
            "repeats": None, "summary": None, "fingerprint": None,
            "host": {"config_hash": "h-" + cid}}


def _make_run(root: Path) -> Path:
    run = create_run_dir(root, run_id="run-1")
    (run.path / "matrix.resolved.yaml").write_text(yaml.safe_dump(_plan(), sort_keys=False))
    results = [_result(ORT, 0.004, 250.0, 1), _result(TORCH, 0.006, 167.0, 2, backend="torch"),
               _result(B8, 0.020, 400.0, 3, batch=8), _result(C1, 0.0025, 400.0, 4),
               _result(C2, 0.004, 500.0, 5, concurrency=2),
               _result(C2T, 0.0049, 812.0, 6, concurrency=2), _crashed(C4)]
    for res in results:
        (run.results_dir / f"{res['cell']}.json").write_text(json.dumps(res))
    y = np.random.default_rng(0).normal(size=(1, 10)).astype(np.float32)
    outputs = {ORT: {"logits": y}, TORCH: {"output": y + np.float32(1e-7)},
               B8: {"logits": np.repeat(y, 8, axis=0)}, C1: {"logits": y}, C2: {"logits": y},
               C2T: {"logits": y}}
    for cid, arrays in outputs.items():
        np.savez(run.outputs_dir / f"{cid}.npz", **arrays)
    return run.path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _make_run(tmp_path_factory.mktemp("within"))
    build_report(path, RULES)
    return path


@pytest.fixture(scope="module")
def report(run: Path) -> str:
    return (run / "report.md").read_text()


def _section(report: str, title: str) -> str:
    body = report.split(f"\n{title}\n", 1)[1]
    return re.split(r"\n###? ", body, maxsplit=1)[0] if title.startswith("###") else \
        body.split("\n## ", 1)[0]


def _rows(block: str) -> dict[str, list[str]]:
    """Table rows by their first cell, each split into its cells."""
    rows = {}
    for line in block.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_the_section_sits_between_summary_and_networks(report: str) -> None:
    titles = re.findall(r"^## .*$", report, flags=re.M)
    assert titles[:3] == ["## Summary", "## Within each environment", "## Workload cnn"]
    assert "## Workload cnn-ort" not in report  # one section per network, not per workload


def test_backends_and_batches_of_one_environment(report: str) -> None:
    group = _section(report, f"### {ENV} / cnn")
    header = next(line for line in group.splitlines() if line.startswith("| setting"))
    assert "CPU per sample (ms)" in header  # a batch of 8 in the group
    rows = _rows(group)
    assert list(rows) == ["`ort b1` (reference)", "`torch`", "`b8`"]
    torch, b8 = rows["`torch`"], rows["`b8`"]
    # torch: 6 ms against 4: +50% p50 (slower), 167 against 250 samples/s (slower)
    assert re.fullmatch(r"\+(4[5-9]|5[0-5])\.\d% \[\+\d+\.\d%, \+\d+\.\d%\]", torch[4]), torch
    assert torch[6:8] == ["**slower**", "**slower**"]
    assert torch[-1] == "pass (matched by position)"
    # b8: 400 samples/s against 250 (faster) at 20 ms a request (slower); outputs of 8 samples
    assert b8[6:8] == ["**slower**", "**faster**"] and b8[-1] == "batch differs"
    cpu_inference, cpu_sample = float(b8[8]), float(b8[9])
    assert cpu_sample == pytest.approx(cpu_inference / 8, rel=0.01)
    assert re.search(r"Highest throughput: `b8`, 4\d\d samples/s against 2\d\d for `ort b1` "
                     r"\(\+(5[5-9]|6[0-5])\.\d% \[95%: \+\d+\.\d%, \+\d+\.\d%\], faster\), "
                     r"at p50 2\d\.\d vs (3\.9|4\.0)\d ms\.", group), group
    assert re.search(r"Lowest latency: `ort b1` \(the reference\), p50 (3\.9|4\.0)\d ms; next "
                     r"`torch`, p50 [56]\.\d\d ms \(\+\d+\.\d% \[95%: [^\]]+\], slower\), at "
                     r"2\d\d vs 1\d\d samples/s\.", group), group
    assert ("Outputs match the reference's (`torch` matched by position); not compared: `b8` "
            "(batch differs).") in group


def test_concurrency_and_load_config_of_one_environment(report: str) -> None:
    group = _section(report, f"### {OV} / cnn")
    rows = _rows(group)
    assert list(rows) == ["`c1 load_config-latency` (reference)", "`c2`",
                          "`c2 load_config-throughput`", "`c4 load_config-throughput`"]
    best = rows["`c2 load_config-throughput`"]
    assert best[6:8] == ["**slower**", "**faster**"] and best[-1] == "pass"
    assert rows["`c4 load_config-throughput`"][6:8] == ["**invalid**", "**invalid**"]
    sentence = re.search(
        r"Highest throughput: `c2 load_config-throughput`, (\d+) samples/s against (\d+) for "
        r"`c1 load_config-latency` \(\+(\d+\.\d)% \[95%: \+\d+\.\d%, \+\d+\.\d%\], faster\), "
        r"at p50 (\d\.\d\d) vs (\d\.\d\d) ms\.", group)
    assert sentence, group
    # The sentence's numbers are the table's.
    ref = rows["`c1 load_config-latency` (reference)"]
    assert (sentence[1], sentence[2]) == (best[3], ref[3])
    assert (sentence[4], sentence[5]) == (best[1], ref[1])
    assert 790 <= int(sentence[1]) <= 830 and 390 <= int(sentence[2]) <= 410
    assert best[5].startswith(f"+{sentence[3]}%")
    assert re.search(r"Lowest latency: `c1 load_config-latency` \(the reference\), p50 2\.\d\d "
                     r"ms; next `c2`, p50 [34]\.\d\d ms \(\+\d+\.\d% \[95%: [^\]]+\], slower\)",
                     group), group
    assert ("Left out: `c4 load_config-throughput` (invalid: status crashed: killed by "
            "SIGSEGV).") in group


def test_the_summary_alone_gives_the_answers(report: str) -> None:
    summary = _section(report, "## Summary")
    assert "(#within-each-environment)" in summary
    for env, winner in ((ENV, "`b8`"), (OV, "`c2 load_config-throughput`")):
        line = next(x for x in summary.splitlines() if x.startswith(f"- **{env}** / cnn: "))
        assert f"Highest throughput: {winner}" in line and "Lowest latency: " in line


def test_the_network_table_tells_the_workloads_apart(report: str) -> None:
    block = _section(report, "## Workload cnn")
    assert "Network cnn, as workloads cnn-ort, cnn-torch, cnn-b8." in block
    header = next(line for line in block.splitlines() if line.startswith("| environment"))
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names[:7] == ["environment", "provider", "backend", "batch", "concurrency",
                         "provider_options.load_config", "nodes on provider (%)"]
    assert "samples/s" in names and "throughput (/s)" not in names
    assert "![cnn-latency](plots/cnn-latency.png)" in block


def test_results_csv_carries_the_new_fields(run: Path) -> None:
    rows = {r["cell"]: r for r in csv.DictReader((run / "results.csv").open())}
    assert {r["network"] for r in rows.values()} == {"cnn"}
    assert (rows[TORCH]["backend"], rows[TORCH]["batch"], rows[TORCH]["concurrency"]) == (
        "torch", "1", "")
    assert (rows[C2T]["concurrency"], rows[C2T]["scenario"]) == ("2", "offline")
    assert rows[ORT]["scenario"] == "single-stream"
    for row in rows.values():
        assert row["samples_per_s"] == row["throughput_per_s"]
    assert float(rows[B8]["cpu_per_sample_ms"]) == pytest.approx(
        float(rows[B8]["cpu_per_inference_ms"]) / 8, rel=1e-4)
    c1 = rows[C1]  # against the baseline's cnn-ort cpu cell: 400 against 250 samples/s
    low, ratio, high = (float(c1[f"throughput_{k}"]) for k in ("low", "ratio", "high"))
    assert low <= ratio <= high and ratio == pytest.approx(1.6, rel=0.03)
    assert ratio == pytest.approx(float(c1["samples_per_s"]) / float(rows[ORT]["samples_per_s"]),
                                  rel=1e-5)
    assert rows[ORT]["throughput_ratio"] == "" and rows[C4]["samples_per_s"] == ""


def test_within_numbers_come_from_the_verdicts_procedure(run: Path) -> None:
    data = load_run(run, RULES)
    group = next(g for g in data.within if g.environment == OV)
    assert group.reference.id == C1 and [c.id for c in group.cells] == [C1, C2, C2T, C4]
    v = group.verdicts[C2T]
    assert v.method == "paired rounds" and v.rounds == 10
    ci = v.ratios["throughput"]
    # the median of the per-round ratios of the repeats' samples_per_s
    base, cand = unit_values(data.results[C1], "throughput"), unit_values(
        data.results[C2T], "throughput")
    assert ci.ratio == pytest.approx(float(np.exp(np.median(
        [np.log(cand[r] / base[r]) for r in sorted(base)]))))
    assert group.parity[C2T].status == "pass" and not group.parity[C2T].matched_by_position


def test_an_old_result_without_samples_per_s_keeps_its_throughput(tmp_path: Path) -> None:
    base, cand = f"{BASELINE}--cnn--cpu", f"{CANDIDATE}--cnn--cpu"
    old = fake_result(base, p50=0.01, seed=1)
    assert not any("samples_per_s" in r for r in old["repeats"])
    want = float(np.median([process_stat(np.asarray(r["latencies_s"]), "throughput")
                            for r in old["repeats"]]))
    assert want == pytest.approx(float(np.median(
        [len(r["latencies_s"]) / sum(r["latencies_s"]) for r in old["repeats"]])))
    assert point_value(old, "throughput") == pytest.approx(want)
    path = make_run(tmp_path, [old, fake_result(cand, p50=0.005, seed=2)])
    build_report(path, RULES)
    rows = {r["cell"]: r for r in csv.DictReader((path / "results.csv").open())}
    assert float(rows[base]["samples_per_s"]) == pytest.approx(want, rel=1e-5)
    assert rows[base]["throughput_per_s"] == rows[base]["samples_per_s"]
    assert (rows[base]["batch"], rows[base]["concurrency"], rows[base]["network"],
            rows[base]["scenario"]) == ("", "", "cnn", "single-stream")
    assert 1.8 < float(rows[cand]["throughput_ratio"]) < 2.2
    report = (path / "report.md").read_text()
    assert "## Within each environment" not in report  # nothing to put side by side


def test_a_repeats_samples_per_s_is_its_throughput() -> None:
    res = fake_result(f"{BASELINE}--cnn--cpu", repeats=5, seed=3)
    for i, rep in enumerate(res["repeats"]):
        rep["samples_per_s"] = 1000.0 + i  # e.g. 8 samples a request, two in flight
    assert unit_values(res, "throughput") == {i: 1000.0 + i for i in range(5)}
    assert point_value(res, "throughput") == 1002.0


def test_a_cell_at_another_load_is_decided_on_samples_per_s(run: Path, report: str) -> None:
    data = load_run(run, RULES)
    c2, c1 = data.verdict_of(C2), data.verdict_of(C1)
    # c2 against the baseline's single-stream cell: the same p50, twice the samples/s
    assert (c2.decided_by, c2.verdict, c2.tail_verdict) == ("throughput", "faster", None)
    assert c2.decided is c2.ratios["throughput"] and c2.p_value == c2.decided.p_value
    assert (c1.decided_by, c1.verdict) == ("p50", "faster")
    rows = {r["cell"]: r for r in csv.DictReader((run / "results.csv").open())}
    assert (rows[C2]["verdict_on"], rows[C1]["verdict_on"], rows[ORT]["verdict_on"]) == (
        "throughput", "p50", "")
    summary = _section(report, "## Summary")
    line = next(x for x in summary.splitlines() if x.startswith(f"- **{OV} (c2 load\\_config"
                                                                  "-latency)**"))
    assert re.search(r"more samples/s on cnn-ort \(\+\d+\.\d%, 2 in flight\)", line), line
    row = next(x for x in summary.splitlines() if x.startswith(f"| {OV} (c2 load\\_config"
                                                               "-latency)"))
    assert "| **faster** (samples/s) |" in row.replace("  ", " ").replace("  ", " ")
    assert "decided the same way on samples/s" in summary


def test_twice_the_latency_at_twice_the_load_is_not_slower(tmp_path: Path) -> None:
    """Two requests in flight on the same cores: each waits for the other, p50 doubles, the
    samples/s stay. Not a slowdown, and a `--fail-on slower` gate lets it through."""
    path = _make_run(tmp_path)
    same = _result(C2, 0.008, 250.0, 5, concurrency=2)
    (path / "results" / f"{C2}.json").write_text(json.dumps(same))
    data = load_run(path, RULES)
    v = data.verdict_of(C2)
    assert v.ratios["p50"].ratio == pytest.approx(2.0, rel=0.05) and v.p50.verdict == "slower"
    assert (v.decided_by, v.verdict) == ("throughput", "equivalent")
    assert not [f for f in gate.run_findings(data, ["slower"]) if C2 in f]
    slower = _result(C2, 0.008, 200.0, 5, concurrency=2)  # fewer samples/s: that is slower
    (path / "results" / f"{C2}.json").write_text(json.dumps(slower))
    findings = gate.run_findings(load_run(path, RULES), ["slower"])
    assert [f for f in findings if C2 in f] == [
        next(f for f in findings if f.startswith(f"slower: {C2} (samples/s -"))]
