"""A run directory read back and analysed: what every part of the report says, as numbers.

`load_run` reads the plan, the results and the outputs and computes, once, each cell's
validity, verdict against its baseline cell, costs, noise and output parity, and the cells of
one network in one environment side by side (`WithinGroup`). The rest are pure questions of a
loaded run (a cell's shown numbers, its row of results.csv); nothing here writes markdown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envmatrix.analysis.decision import COST_METRICS, Costs, Noise, cell_costs, cost_ratios, noise
from envmatrix.analysis.parity import CellParity, cell_parity
from envmatrix.analysis.stats import (
    INVALID,
    PAIRED,
    RatioCI,
    Validity,
    Verdict,
    VerdictRules,
    check_validity,
    compare_cells,
    load_of,
    node_share,
    point_value,
    repeat_cv,
    rules_for,
    run_verdicts,
)
from envmatrix.analysis.stopping import within_cell_groups
from envmatrix.rundir import run as rundir_run
from envmatrix.rundir.idwords import knob_names, knob_values
from envmatrix.rundir.layout import RunDir
from envmatrix.rundir.plan import Cell, Plan, RunRecord
from envmatrix.rundir.resultfile import Result
from envmatrix.rundir.run import Run


@dataclass(frozen=True)
class WithinGroup:
    """The cells of one network in one environment on one host, each compared with the
    first in plan order (the reference) by the verdicts' own procedure."""

    environment: str
    network: str
    host: str | None
    cells: tuple[Cell, ...]  # plan order; cells[0] is the reference
    verdicts: dict[str, Verdict]  # cell id -> against the reference (stats.compare_cells)
    parity: dict[str, CellParity]  # cell id -> outputs against the reference's

    @property
    def reference(self) -> Cell:
        return self.cells[0]


@dataclass
class RunData:
    """Everything the report says, computed once from a run read back (`rundir.run.Run`)."""

    source: Run  # the run as read back once (rundir.run.load_run); the four below are its parts
    run_dir: RunDir
    plan: Plan  # the plan the run used, read back typed
    run: RunRecord  # what the run recorded beside it: id, images, hosts
    results: dict[str, Result]  # cell id -> result, every plan cell in plan order
    rules: VerdictRules
    validity: dict[str, Validity] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    parity: dict[str, CellParity] = field(default_factory=dict)  # candidate cell id ->
    costs: dict[str, Costs | None] = field(default_factory=dict)  # cell id ->
    # candidate cell id -> cost metric -> vs its baseline cell (decision.cost_ratios)
    cost_ratios: dict[str, dict[str, RatioCI]] = field(default_factory=dict)
    noise: dict[str, Noise | None] = field(default_factory=dict)  # cell id -> (noisy cells)
    within: list[WithinGroup] = field(default_factory=list)  # settings side by side

    @property
    def baseline(self) -> str:
        return self.plan.baseline

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self.plan.cells

    def verdict_of(self, cell_id: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.candidate == cell_id), None)


def load_run(path: Path, rules: VerdictRules | None = None) -> RunData:
    """Read a run directory and analyse it (`analyze`)."""
    return analyze(rundir_run.load_run(path), rules)


def analyze(run: Run, rules: VerdictRules | None = None) -> RunData:
    """Validity, verdicts, costs, noise and parity of every cell of a run read back.

    Without `rules`, the verdict settings the run's plan recorded (matrix.yaml `verdict:`).
    """
    results = run.results
    data = RunData(run, run.run_dir, run.plan, run.record, results,
                   rules or rules_for(run.plan.verdict, run.plan.measure))
    data.validity = {cid: check_validity(r, data.rules) for cid, r in results.items()}
    data.verdicts = run_verdicts(data.plan, results, data.rules)
    data.costs = {cid: cell_costs(r) for cid, r in results.items()}
    data.cost_ratios = {v.candidate: cost_ratios(v.baseline, results[v.baseline], v.candidate,
                                                 results[v.candidate], data.rules)
                        for v in data.verdicts if v.verdict != INVALID and v.baseline}
    data.noise = {cid: noise(r, data.costs[cid], data.rules.cv_warn) if data.validity[cid].valid
                  else None for cid, r in results.items()}
    for v in data.verdicts:
        if v.baseline and run.all_ok(v.baseline, v.candidate):
            data.parity[v.candidate] = cell_parity(run.path, v.baseline, v.candidate)
    data.within = within_groups(data)
    return data


BATCH_DIFFERS = "batch differs"  # CellParity.reason of cells whose outputs are not comparable


def within_groups(data: RunData) -> list[WithinGroup]:
    """Every (environment, network, host) with two or more cells, in plan order."""
    return [_within_group(data, key, cells)
            for key, cells in within_cell_groups(data.cells).items()]


def _within_group(data: RunData, key: tuple[str, str, str | None],
                  cells: Sequence[Cell]) -> WithinGroup:
    # The cells of one environment run in the same interleaved rounds: compare_cells pairs
    # them round by round, exactly as a candidate is paired with its baseline cell.
    ref, others = cells[0], cells[1:]
    verdicts = {c.id: compare_cells(ref, c, data.results, data.rules) for c in others}
    parity = {c.id: _within_parity(data, ref, c) for c in others
              if data.source.all_ok(ref.id, c.id)}
    return WithinGroup(*key, tuple(cells), verdicts, parity)


def _within_parity(data: RunData, ref: Cell, cell: Cell) -> CellParity:
    """Outputs against the reference's; another batch gives other output shapes by design."""
    if ref.workload.batch != cell.workload.batch:
        return CellParity(ref.id, cell.id, "missing", BATCH_DIFFERS)
    return cell_parity(data.run_dir.path, ref.id, cell.id)


def networks(data: RunData) -> list[str]:
    """The networks of the plan in plan order: a workload declared with several backends or
    batch sizes is one network of several workloads (`Workload.network_name`)."""
    return list(dict.fromkeys(c.workload.network_name for c in data.cells))


def network_cells(data: RunData, network: str) -> list[Cell]:
    return [c for c in data.cells if c.workload.network_name == network]


def image_size(data: RunData, env_id: str) -> int | None:
    record = data.run.images.get(env_id)
    return record.size_bytes if record else None


def env_fingerprint(data: RunData, env_id: str) -> dict[str, Any]:
    """The fingerprint of an environment's first cell that produced one."""
    for c in data.plan.cells_of(env_id):
        fingerprint = (data.results.get(c.id) or {}).get("fingerprint")
        if fingerprint:
            return dict(fingerprint)
    return {}


def cost_changes(data: RunData, v: Verdict) -> dict[str, float | None]:
    """Candidate / baseline for CPU per inference, cold start and peak RSS (`cost_ratios`)."""
    ratios = data.cost_ratios.get(v.candidate, {})
    return {name: (ratios[name].ratio if name in ratios else None)
            for name, _key, _label in COST_METRICS}


def _latency(result: Mapping[str, Any], key: str) -> float | None:
    if result.get("status") != "ok":
        return None
    return point_value(result, key)


def point_against(v: Verdict | None, result: Mapping[str, Any], metric: str) -> float | None:
    """The number a table shows for a cell compared in `v`: its point from that comparison
    (paired: its value corrected for the reference's drift, so the columns divide to the
    change), else the cell's own median (`point_value`)."""
    ci = v.ratios.get(metric) if v else None
    if ci is not None and ci.cand is not None and math.isfinite(ci.cand):
        return ci.cand
    return _latency(result, metric)


def shown_point(data: RunData, cell: Cell, metric: str) -> float | None:
    """The number the tables show for a cell against its baseline cell (`point_against`)."""
    return point_against(data.verdict_of(cell.id), data.results.get(cell.id) or {}, metric)


def within_point(data: RunData, group: WithinGroup, cell: Cell, metric: str) -> float | None:
    """A cell's number in its group's table: from its comparison with the reference
    (`point_against`), the reference's own median for the reference."""
    return point_against(group.verdicts.get(cell.id), data.results.get(cell.id) or {}, metric)


def samples_per_request(cell: Cell, result: Mapping[str, Any]) -> int:
    """Samples in one request: what the harness ran (`summary.batch`), else the plan's batch,
    else 1 (results written before batches existed)."""
    batch = (result.get("summary") or {}).get("batch") or cell.workload.batch
    return int(batch) if batch else 1


def scenario(cell: Cell, result: Mapping[str, Any]) -> str:
    """single-stream (one request in flight) or offline (several): as the harness recorded
    it, else from the cell's concurrency."""
    recorded = (result.get("summary") or {}).get("scenario")
    if recorded:
        return str(recorded)
    return "offline" if load_of(cell) > 1 else "single-stream"


def measured_totals(data: RunData) -> dict[str, float]:
    """Processes, timed iterations, measured seconds and CPU seconds over every result."""
    processes = iterations = 0
    wall = cpu = 0.0
    for res in data.results.values():
        for rep in res.get("repeats") or []:
            processes += 1
            iterations += len(rep.get("latencies_s") or [])
            wall += float(rep.get("measure_wall_s") or sum(rep.get("latencies_s") or []))
            cpu += float(rep.get("cpu_time_s") or 0.0)
    return {"processes": processes, "iterations": iterations, "measured_s": wall, "cpu_s": cpu}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def interval_bounds(ci: RatioCI) -> tuple[float | None, float | None]:
    """(low, high) as results.csv/json carry them: both None when the interval has no finite
    bound (too few rounds: on the ratio scale it runs from 0 to infinity) or no value."""
    return (ci.low, ci.high) if ci.bounded else (None, None)


def _ci(v: Verdict | None, metric: str) -> tuple[Any, Any, Any]:
    ci = v.ratios.get(metric) if v else None
    if ci is None:
        return None, None, None
    return (ci.ratio if math.isfinite(ci.ratio) else None, *interval_bounds(ci))


def settled_round(ci: RatioCI | None) -> int | None:
    """The round at whose look a paired comparison settled (faster, slower or equivalent);
    None when unpaired, inconclusive or not compared."""
    if ci is None or ci.method != PAIRED or not ci.settled:
        return None
    return ci.look


def cell_numbers(data: RunData, cell: Cell) -> dict[str, Any]:
    """The numbers of one cell, as numbers: results.csv and results.json carry them as is,
    the tables format them."""
    cid = cell.id
    res = data.results.get(cid) or {}
    ok = res.get("status") == "ok"
    costs = data.costs.get(cid)
    v = data.verdict_of(cid)
    p50, p99, rate = _ci(v, "p50"), _ci(v, "p99"), _ci(v, "throughput")
    rss = costs.peak_rss_bytes if costs else None
    size = image_size(data, cell.environment.id)
    cpu = costs.cpu_per_inference_s if costs else None
    samples = shown_point(data, cell, "throughput") if ok else None
    wl = cell.workload
    return {
        "cell": cid, "environment": cell.environment.id, "workload": wl.name,
        "network": wl.network_name, "provider": cell.provider,
        **({"host": cell.host} if data.plan.multi_host else {}),
        "backend": wl.backend, "batch": wl.batch, "concurrency": cell.knobs.concurrency,
        "scenario": scenario(cell, res),
        "status": res.get("status"),
        "valid": data.validity[cid].valid if cid in data.validity else False,
        "p50_ms": _ms(shown_point(data, cell, "p50")), "p90_ms": _ms(_latency(res, "p90")),
        "p99_ms": _ms(shown_point(data, cell, "p99")), "mean_ms": _ms(_latency(res, "mean")),
        "p50_own_ms": _ms(_latency(res, "p50")),
        # samples per second; throughput_per_s: the same number under its older name
        "samples_per_s": samples, "throughput_per_s": samples,
        "cores_used": costs.cores_used if costs else None,
        "cpu_per_inference_ms": _ms(cpu),
        "cpu_per_sample_ms": _ms(None if cpu is None else cpu / samples_per_request(cell, res)),
        "cold_start_ms": _ms(costs.cold_start_s) if costs else None,
        "first_inference_ms": _ms(costs.first_inference_s) if costs else None,
        "session_create_ms": _ms(costs.session_create_s) if costs else None,
        "peak_rss_mib": rss / 2**20 if rss else None,
        "image_size_mb": size / 1e6 if size else None,
        "cv": repeat_cv(res) if ok else None,
        "p50_ratio": p50[0], "p50_low": p50[1], "p50_high": p50[2],
        "p99_ratio": p99[0], "p99_low": p99[1], "p99_high": p99[2],
        "throughput_ratio": rate[0], "throughput_low": rate[1], "throughput_high": rate[2],
        "method": v.method if v else None,
        # the deciding metric's look: where it settled, and the most rounds it could take
        "settled_round": settled_round(v.decided if v else None),
        "rounds_planned": v.decided.planned if v and v.decided else None,
        "error_rate": data.rules.error_rate if v else None,
        "p_value": v.p_value if v else None,  # per-run error rate only (Holm's ordering)
        "units_base": v.p50.n_base if v and v.p50 else None,
        "units_cand": v.p50.n_cand if v and v.p50 else None,
        **_cost_columns(data, cid),
        "verdict": _verdict_word(data, cid, v), "tail_verdict": v.tail_verdict if v else None,
        "verdict_on": v.decided_by if v else None,
        "parity": data.parity[cid].status if cid in data.parity else None,
        "noisy": bool(data.noise.get(cid)),
        "node_share": node_share(res) if ok else None,
        **knob_fields(data.cells, cell),
    }  # fmt: skip


def knob_fields(cells: Sequence[Cell], cell: Cell) -> dict[str, Any]:
    """One column per varied setting (results.csv/json, tables); null: the default."""
    values = knob_values(cell.knobs, cell.provider_options)
    return {name: _knob_text(values.get(name)) for name in knob_names(cells)}


def _knob_text(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def _cost_columns(data: RunData, cid: str) -> dict[str, float | None]:
    """`<metric>_ratio`, `_low`, `_high` of each cost metric against the baseline."""
    ratios = data.cost_ratios.get(cid, {})
    out: dict[str, float | None] = {}
    for name, _key, _label in COST_METRICS:
        ci = ratios.get(name)
        low, high = interval_bounds(ci) if ci else (None, None)
        out.update({f"{name}_ratio": ci.ratio if ci else None,
                    f"{name}_low": low, f"{name}_high": high})
    return out


def _verdict_word(data: RunData, cid: str, verdict: Verdict | None) -> str:
    if verdict is not None:
        return verdict.verdict
    valid = data.validity.get(cid)
    return "baseline" if valid and valid.valid else "baseline (invalid)"
