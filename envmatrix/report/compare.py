"""Compare two run directories: timings with the verdict machinery of envmatrix.analysis.stats, and
output parity with envmatrix.analysis.parity.

Run A is the reference, run B the candidate. Cells are matched by (environment, workload,
provider); `mapping` {env of A: env of B} renames environments of A before matching (e.g. the
same stack built under another name a year later); environments it does not name match by
their own name.

Output parity: the first-inference outputs of every matched pair of cells (A as baseline) are
compared with the tolerances of envmatrix.analysis.parity. Both runs made their inputs on the
host from the workload's seed, so the same workload sees the same bytes; when the recorded
input digests differ the outputs are not compared (a different input explains any difference).
A parity failure is the first thing the comparison says, as in the main report: a faster stack
that computes something else is not an upgrade.

Numbers from different hardware are not comparable: when the CPU model, its flags or the
core count seen by the cells differ between the runs, the comparison is refused unless
`allow_different_hardware` is set, and then the comparison says so at the top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envmatrix.analysis.parity import CellParity, OutputParity, files_parity
from envmatrix.analysis.rundata import RunData, analyze
from envmatrix.analysis.stats import (
    INVALID,
    UNPAIRED,
    Verdict,
    VerdictRules,
    check_validity,
    measured_comparison,
    method_phrase,
    point_value,
)
from envmatrix.errors import ConfigError, DifferentHardwareError
from envmatrix.report.markdown import (
    DASH,
    band,
    fmt_change,
    fmt_ms,
    md,
    outcome_phrase,
    parity_tables,
    provider_name,
    table,
)
from envmatrix.report.sections import cpu_flags_diff
from envmatrix.rundir.layout import atomic_write_text
from envmatrix.rundir.run import Run, load_run

__all__ = ["Comparison", "DifferentHardwareError", "compare", "match_cells",
           "pair_parity"]

Key = tuple[str, str, str]  # (environment, workload, provider)
NOT_COMPARABLE = "not comparable"  # CellParity.status when the two cells saw other inputs


@dataclass(frozen=True)
class Pair:
    """One cell of A matched with one cell of B, and the parity of B's outputs against A's."""

    a: str
    b: str
    parity: CellParity | None  # None: a cell of the pair has no numbers (status not ok)
    verdict: str | None = None  # B against A: the p50 verdict word, or "invalid" (the gate)


@dataclass(frozen=True)
class Comparison:
    """What `compare` wrote and found."""

    path: Path
    pairs: tuple[Pair, ...]
    unmatched: tuple[str, ...]
    hardware_differences: tuple[str, ...]

    @property
    def parity_failures(self) -> tuple[Pair, ...]:
        return tuple(p for p in self.pairs if p.parity is not None and p.parity.status == "fail")


# ---------------------------------------------------------------- hardware


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


# ---------------------------------------------------------------- matching


def _keyed(data: RunData) -> dict[Key, str]:
    return {(c.environment.id, c.workload.name, c.provider): c.id for c in data.cells}


def _environments(data: RunData) -> list[str]:
    return [env.id for env in data.plan.environments]


def check_mapping(a: RunData, b: RunData, mapping: Mapping[str, str]) -> None:
    """Every environment the mapping names exists in its run; else say which do."""
    for side, data, names in (("A", a, mapping.keys()), ("B", b, mapping.values())):
        envs = _environments(data)
        unknown = [n for n in names if n not in envs]
        if unknown:
            raise ConfigError(
                f"--map: run {side} ({data.run_dir.path}) has no environment "
                f"{', '.join(repr(n) for n in unknown)}. Its environments: {', '.join(envs)}. "
                "Fix the --map ENV_A=ENV_B argument (environment ids of run A = of run B).")


def match_cells(a: RunData, b: RunData, mapping: Mapping[str, str] | None = None
                ) -> tuple[list[tuple[str, str]], list[str]]:
    """(pairs of cell ids A, B) and the cells of either run left without a partner."""
    cells_a, cells_b = _keyed(a), _keyed(b)
    mapping = mapping or {}
    pairs, unmatched = [], []
    for (env, workload, provider), cid in cells_a.items():
        target = (mapping.get(env, env), workload, provider)
        if target in cells_b:
            pairs.append((cid, cells_b.pop(target)))
        else:
            unmatched.append(f"A: {cid}")
    unmatched += [f"B: {cid}" for cid in cells_b.values()]
    return pairs, unmatched


# ---------------------------------------------------------------- parity


def _digests(result: Mapping[str, Any], key: str) -> dict[str, str]:
    """name -> sha256 of the recorded inputs or outputs of a result."""
    return {str(t.get("name")): str(t.get("sha256")) for t in result.get(key) or []
            if isinstance(t, Mapping)}


def pair_parity(a: RunData, b: RunData, ida: str, idb: str) -> CellParity | None:
    """Parity of B's cell against A's; None when either cell has no numbers."""
    ra, rb = a.results.get(ida) or {}, b.results.get(idb) or {}
    if ra.get("status") != "ok" or rb.get("status") != "ok":
        return None
    ins_a, ins_b = _digests(ra, "inputs"), _digests(rb, "inputs")
    if ins_a and ins_b and ins_a != ins_b:
        return CellParity(ida, idb, NOT_COMPARABLE, "the cells were fed different inputs "
                          "(input digests differ: another seed, shape or inputs file)")
    path_a, path_b = a.run_dir.output_path(ida), b.run_dir.output_path(idb)
    for side, path in (("A", path_a), ("B", path_b)):
        if not path.is_file():
            return CellParity(ida, idb, "missing", f"run {side} has no outputs/{path.name}")
    return files_parity(ida, path_a, idb, path_b)


def model_difference(a: RunData, b: RunData, ida: str, idb: str) -> str | None:
    """A line when the two cells ran different model files (by sha256), else None."""
    sha_a = ((a.results.get(ida) or {}).get("model") or {}).get("sha256")
    sha_b = ((b.results.get(idb) or {}).get("model") or {}).get("sha256")
    if sha_a and sha_b and sha_a != sha_b:
        return f"the model files differ (sha256 {sha_a[:12]} in A, {sha_b[:12]} in B)"
    return None


def _fmt_g(x: float | None) -> str:
    return DASH if x is None else f"{x:.3g}"


def output_failure(o: OutputParity) -> str:
    """One failed output in a line: what failed and by how much."""
    if o.max_abs is None:  # dtype, shape or presence differs: nothing was measured
        return f"{o.name}: {o.reason}"
    cosine = DASH if o.cosine is None else f"{o.cosine:.6f}"
    return (f"{o.name}: {o.reason}; max abs diff {_fmt_g(o.max_abs)}, max rel diff "
            f"{_fmt_g(o.max_rel)}, cosine {cosine}")


def parity_word(p: CellParity | None) -> str:
    """The parity column of the main table."""
    if p is None:
        return "not compared (no numbers)"
    if p.status == "fail":
        return "**FAIL**"
    return p.status if p.status == "pass" else f"{p.status}: {md(p.reason)}"


def pair_verdict(a: RunData, b: RunData, ida: str, idb: str, rules: VerdictRules) -> str:
    """B's p50 verdict against A, as the table's row says it; "invalid" without numbers."""
    ra, rb = a.results.get(ida) or {}, b.results.get(idb) or {}
    if not (check_validity(ra, rules).valid and check_validity(rb, rules).valid):
        return INVALID
    return str(measured_comparison(f"A:{ida}", ra, f"B:{idb}", rb, rules,
                                   metrics=("p50",))["verdict"])


# ---------------------------------------------------------------- rendering


def _row(a: RunData, b: RunData, pair: Pair, rules: VerdictRules) -> list[Any]:
    ida, idb = pair.a, pair.b
    ra, rb = a.results.get(ida) or {}, b.results.get(idb) or {}
    va, vb = check_validity(ra, rules), check_validity(rb, rules)
    cell = b.plan.cell(idb)
    lead = [md(cell.workload.name), md(provider_name(cell.provider)), md(ida), md(idb),
            fmt_ms(point_value(ra, "p50")) if va.valid else None,
            fmt_ms(point_value(rb, "p50")) if vb.valid else None]
    parity = parity_word(pair.parity)
    if not (va.valid and vb.valid):
        why = [f"A: {r}" for r in va.reasons] + [f"B: {r}" for r in vb.reasons]
        return lead + [None, None, f"**{INVALID}**: {md('; '.join(why))}", parity]
    res = measured_comparison(f"A:{ida}", ra, f"B:{idb}", rb, rules)
    p50 = res["ratios"]["p50"]
    shown = Verdict(idb, ida, cell.environment.id, cell.workload.name, cell.provider,
                    res["verdict"], ratios=res["ratios"])
    notes = "; ".join(md(n) for n in res["notes"])
    word = md(outcome_phrase(p50, rules)) + (f" ({notes})" if notes else "")
    return lead + [fmt_change(shown, "p50"), word, parity]


HEADERS = ("workload", "provider", "cell in A", "cell in B", "p50 A (ms)", "p50 B (ms)",
           "p50 change B vs A [95% CI]", "verdict", "output parity")


def parity_headline(a: RunData, b: RunData, failures: tuple[Pair, ...]) -> list[str]:
    """The quoted block at the top: every pair whose outputs differ, with by how much."""
    if not failures:
        return []
    lines = [f"> **Output parity failure:** {len(failures)} matched cell(s) of run B compute "
             "different outputs from run A on identical inputs:", ">"]
    for pair in failures:
        assert pair.parity is not None  # failures hold compared pairs only
        why = [output_failure(o) for o in pair.parity.outputs if not o.passed]
        model = model_difference(a, b, pair.a, pair.b)
        why += [model] if model else []
        lines.append(f"> - {md(pair.b)} (B) vs {md(pair.a)} (A): {md('; '.join(why))}")
    return lines + [">", "> See [Output parity](#output-parity).", ""]


def hardware_headline(hw_diff: list[str]) -> list[str]:
    if not hw_diff:
        return []
    lines = ["> **Different hardware:** these runs were measured on different machines; "
             "changes below mix the software change with the hardware change.", ">"]
    return lines + [f"> - {md(d)}" for d in hw_diff] + [""]


def section_parity(pairs: tuple[Pair, ...]) -> str:
    """Per output of every compared pair: differences, tolerances, result; worst elements."""
    lines = ["## Output parity", "",
             "Each cell of B's first-inference outputs against its partner's in A, on "
             "identical inputs. Tolerances by dtype are in docs/report.md.", ""]
    compared = [p for p in pairs if p.parity is not None]
    if not compared:
        return "\n".join(lines + ["No matched pair of cells had numbers on both sides."])
    parities = {pair.b: pair.parity for pair in compared if pair.parity is not None}
    lines += parity_tables(parities, first_column="cell in B", sides=("A", "B"))
    return "\n".join(lines).rstrip()


def render_comparison(a: RunData, b: RunData, comparison: Comparison,
                      rules: VerdictRules) -> str:
    lines = [f"# Comparison: run {md(b.run_dir.run_id)} (B) vs run {md(a.run_dir.run_id)} (A)",
             ""]
    lines += parity_headline(a, b, comparison.parity_failures)
    lines += hardware_headline(list(comparison.hardware_differences))
    rows = [_row(a, b, pair, rules) for pair in comparison.pairs]
    lines += [table(HEADERS, rows), ""]
    if comparison.unmatched:
        lines += ["Cells without a partner in the other run:", ""]
        lines += [f"- {md(u)}" for u in comparison.unmatched] + [""]
    # Two runs are never measured in shared rounds, so their cells compare unpaired.
    lines += [f"Verdicts: {method_phrase(UNPAIRED)}, at {rules.confidence:.0%} confidence, on "
              "p50. Four outcomes: \"faster\" or \"slower\" when the whole interval is on "
              f"that side of no change and the estimate is beyond a {rules.min_effect:.0%} "
              f"change; \"equivalent\" when the whole interval lies within "
              f"{band(rules.equivalence)}; else \"inconclusive\", with the interval reached. "
              f"Error rate per comparison: each verdict is wrong at most "
              f"{rules.level_alpha:.0%} of the time (docs/report.md).", ""]
    lines.append(section_parity(comparison.pairs))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- entry points


def _named(run: Path | Run) -> Path:
    """A run as the user named it (a path they gave), or where it was read from."""
    return run.path if isinstance(run, Run) else run


def compare(
    run_a: Path | Run,
    run_b: Path | Run,
    out: Path | None = None,
    *,
    mapping: Mapping[str, str] | None = None,
    allow_different_hardware: bool = False,
    rules: VerdictRules | None = None,
) -> Comparison:
    """Write a comparison of run B against run A (markdown) and say what it found.

    A run already read back (`rundir.run.Run`) is analysed as it is, not read again.
    Default path: <run_b>/compare-<run A id>.md. Raises DifferentHardwareError when the
    runs' CPUs differ and allow_different_hardware is not set, ConfigError when `mapping`
    names an environment a run does not have.
    """
    rules = rules or VerdictRules()
    a, b = (analyze(r if isinstance(r, Run) else load_run(r), rules) for r in (run_a, run_b))
    hw_diff = hardware_differences(a, b)
    if hw_diff and not allow_different_hardware:
        raise DifferentHardwareError(
            f"{_named(run_a)} and {_named(run_b)} were measured on different hardware ("
            + "; ".join(hw_diff) + "): their timings do not compare. Measure both on one "
            "machine, or pass --allow-different-hardware to compare anyway (the comparison "
            "then says so at the top).")
    if mapping:
        check_mapping(a, b, mapping)
    matched, unmatched = match_cells(a, b, mapping)
    pairs = tuple(Pair(ida, idb, pair_parity(a, b, ida, idb), pair_verdict(a, b, ida, idb, rules))
                  for ida, idb in matched)
    path = out or b.run_dir.path / f"compare-{a.run_dir.run_id}.md"
    result = Comparison(path, pairs, tuple(unmatched), tuple(hw_diff))
    atomic_write_text(path, render_comparison(a, b, result, rules))
    return result

