"""Costs and noise causes on synthetic cells of known truth."""

from __future__ import annotations

from fakeruns import CANDIDATE, fake_result

from envmatrix.analysis import decision
from envmatrix.analysis.decision import Costs

CELL = f"{CANDIDATE}--cnn--cpu"


def _costs(cores: float | None, cpu: float | None, **kw: object) -> Costs:
    fields = dict(cores_used=cores, cpu_per_inference_s=cpu, cold_start_s=None,
                  session_create_s=None, first_inference_s=None, peak_rss_bytes=None,
                  threads_alive=None, intra_op_threads=None, cpus_available=2.0)
    fields.update(kw)
    return Costs(**fields)  # type: ignore[arg-type]


def test_costs_fall_back_to_cpu_time_over_wall_time_for_older_results() -> None:
    res = fake_result(CELL, p50=0.004, cores_used=1.5)
    costs = decision.cell_costs(res)
    assert costs is not None and abs(costs.cores_used - 1.5) < 1e-9  # type: ignore[operator]
    assert costs.cpu_per_inference_s is not None
    assert abs(costs.cpu_per_inference_s / (1.5 * 0.004) - 1) < 0.05


def test_cores_phrase_only_when_cores_differ() -> None:
    one, two = _costs(1.0, 0.004), _costs(2.0, 0.005)
    assert decision.cores_phrase(one, two) == "using 2.0 cores instead of 1.0"
    assert decision.cores_phrase(one, _costs(1.1, 0.004)) is None
    assert decision.cores_phrase(one, _costs(None, 0.004)) is None


def test_two_modes_are_found_and_one_mode_is_not() -> None:
    found = decision.two_modes([2.2e-3, 2.3e-3, 2.25e-3, 2.2e-3, 4.4e-3, 4.5e-3])
    assert found is not None and found[0] == 4 and found[2] == 2
    assert decision.two_modes([2.2e-3, 2.3e-3, 2.4e-3, 2.5e-3, 2.6e-3, 2.7e-3]) is None


def test_drift_over_rounds_is_a_cause() -> None:
    res = fake_result(CELL, p50=0.005, cv=0.0, repeats=12, seed=4)
    for i, rep in enumerate(res["repeats"]):
        rep["round"] = i
        rep["latencies_s"] = [x * (1 + 0.03 * i) for x in rep["latencies_s"]]
    del res["summary"]["repeat_p50_s"]  # recomputed from the drifting latencies
    found = decision.noise(res, None, cv_warn=0.05)
    assert found is not None
    assert any(c.startswith("drift: p50 moved +") for c in found.causes), found.causes


def test_more_threads_than_cores_is_a_cause() -> None:
    busy = _costs(1.9, 0.004, threads_alive=5)
    assert "5 runtime threads on 2 available cores" in (decision._oversubscribed(busy) or "")
