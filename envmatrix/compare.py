"""Compare two run directories with the verdict machinery of envmatrix.stats.

Run A is the reference, run B the candidate. Cells are matched by (environment, workload,
provider); with `mapping` {env of A: env of B}, environment A's cells are matched with
environment B's (e.g. the same image measured on two days under different names).

Numbers from different hardware are not comparable: when the CPU model, its flags or the
core count seen by the cells differ between the runs, the comparison is refused unless
`allow_different_hardware` is set, and then every page of the comparison says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from envmatrix.errors import EnvmatrixError
from envmatrix.report import (
    RunData,
    cpu_flags_diff,
    fmt_ms,
    fmt_pct,
    load_run,
    md,
    point_value,
    provider_name,
    table,
)
from envmatrix.rundir import atomic_write_text
from envmatrix.stats import INVALID, VerdictRules, check_validity, measured_comparison


class DifferentHardwareError(EnvmatrixError):
    """Two runs were measured on different CPUs; their numbers do not compare."""

    exit_code = 7


Key = tuple[str, str, str]  # (environment, workload, provider)


def hardware(data: RunData) -> dict[str, Any]:
    """CPU model(s), core count(s) and flags seen by the cells of a run that have numbers."""
    models, cores, flags = set(), set(), set()
    for res in data.results.values():
        cpu = ((res.get("fingerprint") or {}).get("cpu")) or {}
        if cpu:
            models.add(str(cpu.get("model")))
            cores.add(str(cpu.get("cores_visible")))
            flags.add(tuple(sorted(cpu.get("flags") or [])))
    return {"models": models, "cores": cores, "flags": flags}


def hardware_differences(a: RunData, b: RunData) -> list[str]:
    """One line per difference between the machines of two runs; empty when the same."""
    ha, hb = hardware(a), hardware(b)
    out = []
    if ha["models"] != hb["models"]:
        out.append(f"CPU model: {', '.join(sorted(ha['models']))} (A) vs "
                   f"{', '.join(sorted(hb['models']))} (B)")
    if ha["cores"] != hb["cores"]:
        out.append(f"cores visible: {', '.join(sorted(ha['cores']))} (A) vs "
                   f"{', '.join(sorted(hb['cores']))} (B)")
    if ha["flags"] != hb["flags"]:
        fa = set().union(*ha["flags"]) if ha["flags"] else set()
        fb = set().union(*hb["flags"]) if hb["flags"] else set()
        out.append(f"CPU flags: {cpu_flags_diff(sorted(fa), sorted(fb))} (B relative to A)")
    return out


def _keyed(data: RunData) -> dict[Key, str]:
    return {(str(c["environment"]), str(c["workload"]), str(c["provider"])): str(c["id"])
            for c in data.cells}


def match_cells(a: RunData, b: RunData, mapping: Mapping[str, str] | None = None
                ) -> tuple[list[tuple[str, str]], list[str]]:
    """(pairs of cell ids A, B) and the cells of either run left without a partner."""
    cells_a, cells_b = _keyed(a), _keyed(b)
    pairs, unmatched = [], []
    for (env, workload, provider), cid in cells_a.items():
        if mapping is not None and env not in mapping:
            continue
        target = (mapping[env] if mapping is not None else env, workload, provider)
        if target in cells_b:
            pairs.append((cid, cells_b.pop(target)))
        else:
            unmatched.append(f"A: {cid}")
    unmatched += [f"B: {cid}" for cid in cells_b.values()]
    return pairs, unmatched


def _row(a: RunData, b: RunData, ida: str, idb: str, rules: VerdictRules) -> list[Any]:
    ra, rb = a.results[ida], b.results[idb]
    va, vb = check_validity(ra, rules), check_validity(rb, rules)
    cell = next(c for c in b.cells if c["id"] == idb)
    lead = [md(cell["workload"]), md(provider_name(str(cell["provider"]))), md(ida), md(idb),
            fmt_ms(point_value(ra, "p50")) if va.valid else None,
            fmt_ms(point_value(rb, "p50")) if vb.valid else None]
    if not (va.valid and vb.valid):
        why = [f"A: {r}" for r in va.reasons] + [f"B: {r}" for r in vb.reasons]
        return lead + [None, None, f"**{INVALID}**: {md('; '.join(why))}"]
    res = measured_comparison(f"A:{ida}", ra, f"B:{idb}", rb, rules)
    p50 = res["ratios"]["p50"]
    change = f"{fmt_pct(p50.ratio)} [{fmt_pct(p50.low)}, {fmt_pct(p50.high)}]"
    notes = "; ".join(md(n) for n in res["notes"])
    word = res["verdict"] + (f" ({notes})" if notes else "")
    return lead + [change, f"{res['p_value']:.3f}" if res["p_value"] is not None else None, word]


HEADERS = ("workload", "provider", "cell in A", "cell in B", "p50 A (ms)", "p50 B (ms)",
           "p50 change B vs A [95% CI]", "p-value", "verdict")


def render_comparison(a: RunData, b: RunData, pairs: list[tuple[str, str]],
                      unmatched: list[str], hw_diff: list[str], rules: VerdictRules) -> str:
    lines = [f"# Comparison: run {md(b.run_dir.run_id)} (B) vs run {md(a.run_dir.run_id)} (A)",
             ""]
    if hw_diff:
        lines += ["> **Different hardware:** these runs were measured on different machines; "
                  "changes below mix the software change with the hardware change.", ">"]
        lines += [f"> - {md(d)}" for d in hw_diff] + [""]
    lines += [table(HEADERS, [_row(a, b, ida, idb, rules) for ida, idb in pairs]), ""]
    if unmatched:
        lines += ["Cells without a partner in the other run:", ""]
        lines += [f"- {md(u)}" for u in unmatched] + [""]
    lines.append(f"Verdicts: Mann-Whitney U over the per-process p50s at alpha {rules.alpha}, "
                 f"at least a {rules.min_effect:.0%} change in p50 (docs/report.md).")
    return "\n".join(lines) + "\n"


def compare_runs(
    run_a: Path,
    run_b: Path,
    out: Path | None = None,
    *,
    mapping: Mapping[str, str] | None = None,
    allow_different_hardware: bool = False,
    rules: VerdictRules | None = None,
) -> Path:
    """Write a comparison of run B against run A (markdown); returns its path.

    Default path: <run_b>/compare-<run A id>.md. Raises DifferentHardwareError when the
    runs' CPUs differ and allow_different_hardware is not set.
    """
    rules = rules or VerdictRules()
    a, b = load_run(run_a, rules), load_run(run_b, rules)
    hw_diff = hardware_differences(a, b)
    if hw_diff and not allow_different_hardware:
        raise DifferentHardwareError(
            f"{run_a} and {run_b} were measured on different hardware ("
            + "; ".join(hw_diff) + "): their timings do not compare. Measure both on one "
            "machine, or pass --allow-different-hardware to compare anyway (the comparison "
            "then says so at the top).")
    pairs, unmatched = match_cells(a, b, mapping)
    path = out or b.run_dir.path / f"compare-{a.run_dir.run_id}.md"
    atomic_write_text(path, render_comparison(a, b, pairs, unmatched, hw_diff, rules))
    return path
