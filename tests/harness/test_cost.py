"""The cost of compute, measured by the real harness on the oldest and the newest runtime:
cores used, CPU per inference, threads, import and cold start per repeat and in the summary;
and a fingerprint that lists every installed distribution, as pip does."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from harness_testlib import RUNTIMES, HarnessRun, run_harness

from envmatrix_harness.fingerprint import normalize_name

pytestmark = pytest.mark.slow

OLDEST, NEWEST = "py36-ort1.7", "py313-ort1.32"
ARGS = ["--shape", "x=4,16", "--shape", "ids=4,8", "--warmup", "3", "--min-iterations", "30",
        "--min-time", "0.2", "--repeats", "2"]
# One busy thread keeps about one core; on a shared 2-core machine the process is sometimes
# runnable but not running, so the floor is low. The ceiling catches unit mistakes.
CORES_FLOOR = 0.25


@pytest.fixture(scope="module")
def runs(venv: Callable[[str], Path], models: dict,
         tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int | None], HarnessRun]:
    done = {}
    for label, threads in ((OLDEST, 1), (NEWEST, 1), (NEWEST, None)):
        folder = tmp_path_factory.mktemp(f"{label}-{threads}")
        asked = ["--threads", str(threads)] if threads else []
        done[label, threads] = run_harness(
            venv(label), ["--model", str(models["tiny"]), *ARGS, *asked], folder)
    return done


@pytest.mark.parametrize(("label", "threads"), [(OLDEST, 1), (NEWEST, 1), (NEWEST, None)])
def test_every_repeat_says_what_its_latency_cost(runs: dict, label: str,
                                                 threads: int | None) -> None:
    run = runs[label, threads]
    assert run.code == 0 and run.doc["status"] == "ok", run.doc["reason"]
    for rep in run.doc["repeats"]:
        block = rep["threads"]
        cpus = block["cpus_available"]
        assert cpus >= 1
        assert CORES_FLOOR <= rep["cores_used"] <= cpus + 0.5, rep["cores_used"]
        assert rep["cores_used"] == pytest.approx(rep["cpu_time_s"] / rep["measure_wall_s"])
        assert rep["cpu_per_inference_s"] > 0
        assert rep["cpu_per_inference_s"] == pytest.approx(
            rep["cpu_time_s"] / len(rep["latencies_s"]))
        assert 0 < rep["import_s"] < 60 and 0 < rep["interpreter_start_s"] < 60
        # the cold start spans these, one after the other, and the harness's own preparation
        parts = (rep["interpreter_start_s"] + rep["import_s"] + rep["session_create_s"]
                 + rep["first_inference_s"])
        assert parts < rep["cold_start_s"] < 120, (parts, rep["cold_start_s"])
        assert rep["cold_start_s"] > rep["session_create_s"] + rep["first_inference_s"]
        assert block["alive_in_loop"] >= 1
        assert block["intra_op_requested"] == threads
        assert block["inter_op_requested"] is None
        # onnxruntime says the count only when one was asked (it keeps 0 for its default)
        assert block["intra_op_effective"] == threads
        assert block["inter_op_effective"] is None


@pytest.mark.parametrize(("label", "threads"), [(OLDEST, 1), (NEWEST, 1), (NEWEST, None)])
def test_summary_gives_the_median_cost(runs: dict, label: str, threads: int | None) -> None:
    doc = runs[label, threads].doc
    repeats, summary = doc["repeats"], doc["summary"]
    for key in ("cores_used", "cpu_per_inference_s", "cold_start_s", "import_s"):
        assert summary[key] == pytest.approx(float(np.median([r[key] for r in repeats]))), key
    assert summary["threads"] == dict(
        repeats[0]["threads"], alive_in_loop=max(r["threads"]["alive_in_loop"] for r in repeats))


def test_cost_figures_on_the_oldest_and_newest(runs: dict) -> None:
    """What the two runtimes report, printed for the record (pytest -s shows it)."""
    for key, run in runs.items():
        summary = run.doc["summary"]
        print(key, {name: summary[name] for name in
                    ("cores_used", "cpu_per_inference_s", "cold_start_s", "import_s",
                     "session_create_s", "threads")})
    # one intra-op thread asked on onnxruntime 1.7: one busy thread, no more than a core's CPU
    assert runs[OLDEST, 1].doc["summary"]["cores_used"] < 1.5


def _pip_list(python: Path) -> dict[str, str]:
    done = subprocess.run([str(python), "-m", "pip", "list", "--format=json",
                           "--disable-pip-version-check"], capture_output=True, text=True,
                          check=True)
    return {normalize_name(item["name"]): item["version"] for item in json.loads(done.stdout)}


@pytest.mark.parametrize("label", [OLDEST, NEWEST])
def test_fingerprint_lists_every_installed_distribution(runs: dict, venv: Callable[[str], Path],
                                                        label: str) -> None:
    """Not a fixed list: what pip lists, so any pin (numpy, protobuf, ...) can be checked."""
    packages = runs[label, 1].doc["fingerprint"]["packages"]
    assert packages == _pip_list(venv(label))
    for pin in RUNTIMES[label][1]:
        name, version = pin.split("==")
        assert packages[name] == version
    assert "numpy" in packages and "protobuf" in packages  # a dependency nobody pinned
    assert list(packages) == sorted(packages)
