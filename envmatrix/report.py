"""The upgrade-impact report of one run directory: report.md, results.json/csv, plots/.

Built from the run directory alone (resolved plan, results/, outputs/) and byte-for-byte
reproducible: no clock is read, keys and rows are sorted or in plan order, the bootstrap is
seeded per comparison (envmatrix.stats) and the figures are deterministic (envmatrix.plots).
Every user-controlled string (environment, workload and cell names, reasons, log tails) goes
through `md()` or a code fence before it reaches the markdown.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from envmatrix import config, plots
from envmatrix.containers import reproduce_argv
from envmatrix.parity import CellParity, cell_parity
from envmatrix.plan import Cell, Environment, Plan, RunRecord
from envmatrix.results import load_results
from envmatrix.rundir import RunDir, atomic_write_bytes, atomic_write_text, open_run_dir
from envmatrix.stats import (
    INVALID,
    UNCHANGED,
    UNPAIRED,
    Validity,
    Verdict,
    VerdictRules,
    check_validity,
    method_phrase,
    point_value,
    repeat_cv,
    repeat_latencies,
    rules_for,
    run_verdicts,
    too_few_note,
)

REPORT_SCHEMA = "envmatrix.report/1"
DASH = "–"
PROVIDER_DISPLAY = {"cpu": "CPU", "openvino": "OpenVINO", "cuda": "CUDA",
                    "tensorrt": "TensorRT", "dnnl": "oneDNN", "rocm": "ROCm",
                    "coreml": "CoreML"}


# ---------------------------------------------------------------- loading a run


@dataclass
class RunData:
    """Everything the report says, computed once from a run directory."""

    run_dir: RunDir
    plan: Plan  # the plan the run used, read back typed (config.read_resolved)
    run: RunRecord  # what the run recorded beside it: id, images
    results: dict[str, dict[str, Any]]  # cell id -> result, plan order
    rules: VerdictRules
    validity: dict[str, Validity] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    parity: dict[str, CellParity] = field(default_factory=dict)  # candidate cell id ->

    @property
    def baseline(self) -> str:
        return self.plan.baseline

    @property
    def cells(self) -> tuple[Cell, ...]:
        return self.plan.cells

    def verdict_of(self, cell_id: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.candidate == cell_id), None)


def load_run(path: Path, rules: VerdictRules | None = None) -> RunData:
    """Read a run directory and compute validity, verdicts and parity for every cell.

    Without `rules`, the verdict settings the run's plan recorded (matrix.yaml `verdict:`).
    """
    run_dir = open_run_dir(path)
    resolved = config.read_resolved(run_dir.resolved_path)
    results = {str(r["cell"]): r for r in load_results(run_dir, resolved)}
    rules = rules or rules_for(resolved.plan.verdict)
    data = RunData(run_dir, resolved.plan, resolved.run, results, rules)
    data.validity = {cid: check_validity(r, data.rules) for cid, r in results.items()}
    data.verdicts = run_verdicts(data.plan, results, data.rules)
    for v in data.verdicts:
        if v.baseline and _both_ok(results, v.baseline, v.candidate):
            data.parity[v.candidate] = cell_parity(run_dir.path, v.baseline, v.candidate)
    return data


def _both_ok(results: Mapping[str, Mapping[str, Any]], a: str, b: str) -> bool:
    return all((results.get(c) or {}).get("status") == "ok" for c in (a, b))


# ---------------------------------------------------------------- markdown helpers

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")


def md(text: Any) -> str:
    """Text safe inside a GitHub markdown paragraph or table cell (user-controlled names)."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\r\n|\r|\n", "<br>", s)


def fence(text: str, lang: str = "") -> str:
    """A fenced code block that no backtick run inside the text can close early."""
    runs = [len(m) for m in re.findall(r"`+", text)]
    ticks = "`" * max(3, max(runs, default=0) + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def details(summary: str, body: str) -> str:
    """A collapsed block (GitHub renders <details>); summary must already be escaped."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[DASH if c is None or c == "" else c for c in row] for row in rows]
    return tabulate(rows, headers=list(headers), tablefmt="github", disable_numparse=True)


def fmt_ms(seconds: float | None) -> str | None:
    """Milliseconds with about three significant digits."""
    if seconds is None:
        return None
    ms = seconds * 1000.0
    digits = 0 if ms >= 100 else 1 if ms >= 10 else 2 if ms >= 1 else 3
    return f"{ms:.{digits}f}"


def fmt_pct(ratio: float) -> str:
    return f"{(ratio - 1.0) * 100:+.1f}%"


def fmt_change(v: Verdict, metric: str = "p50") -> str | None:
    ci = v.ratios.get(metric)
    if ci is None:
        return None
    return f"{fmt_pct(ci.ratio)} [{fmt_pct(ci.low)}, {fmt_pct(ci.high)}]"


def provider_name(short: str) -> str:
    return PROVIDER_DISPLAY.get(short, short)


def slug(text: str) -> str:
    """A file-name-safe, collision-free form of a user-controlled name (plot file names)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:60]
    if safe == text:
        return safe
    return f"{safe or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- summary


def _parity_phrase(p: CellParity | None) -> str:
    if p is None:
        return "outputs not compared (a cell has no numbers)"
    if p.status == "pass":
        return "outputs match"
    if p.status == "missing":
        return f"outputs not compared ({md(p.reason)})"
    return f"**OUTPUTS DIFFER** from the baseline ({md(p.reason)})"


def summary_sentence(data: RunData, v: Verdict) -> str:
    """One sentence a manager can read about one candidate cell."""
    head = (f"{md(v.environment)} vs {md(data.baseline)} (baseline), {md(v.workload)} on "
            f"{md(provider_name(v.provider))}")
    if v.verdict == INVALID:
        return f"{head}: **invalid**: {md('; '.join(v.reasons))}."
    parts = [f"p50 {fmt_change(v)}, {v.verdict}", _parity_phrase(data.parity.get(v.candidate)),
             "runs on the requested provider"]
    parts += [md(n) for n in v.notes]
    return f"{head}: " + "; ".join(parts) + "."


def section_summary(data: RunData) -> str:
    lines = ["## Summary", ""]
    differ = [p for p in data.parity.values() if p.status == "fail"]
    if differ:
        names = ", ".join(md(p.candidate) for p in differ)
        lines += [f"> **Output parity failure:** {len(differ)} cell(s) compute different "
                  f"outputs from the baseline on identical inputs: {names}. See "
                  f"[Output parity](#output-parity).", ""]
    if not data.verdicts:
        lines.append(f"Only the baseline {md(data.baseline)} was measured: nothing to compare.")
    lines += [f"- {summary_sentence(data, v)}" for v in data.verdicts]
    lines += ["", note] if (note := budget_note(data)) else []
    rules = data.rules
    lines += ["", f"Verdicts: {verdict_methods(data.verdicts)} at alpha {rules.alpha}, "
                  f"and at least a {rules.min_effect:.0%} change in p50; intervals are "
                  f"{rules.confidence:.0%} bootstrap intervals (see docs/report.md)."]
    return "\n".join(lines)


def budget_note(data: RunData) -> str | None:
    """One line when some comparison had too few rounds for its test (so no verdict)."""
    notes = [too_few_note(ci.method, ci.n_base or 0, ci.n_cand or 0, data.rules)
             for v in data.verdicts if (ci := v.p50) is not None and ci.method]
    found = list(dict.fromkeys(n for n in notes if n))
    if not found:
        return None
    return (f"> **Too few rounds for a verdict** in {len([n for n in notes if n])} of "
            f"{len(data.verdicts)} comparison(s): {md('; '.join(found))}. Measure more rounds "
            "(measure.repeats, or --repeats N) for a decision.")


def verdict_methods(verdicts: Sequence[Verdict]) -> str:
    """Which test(s) the verdicts used, with how many cells each where they differ."""
    used = [v.method for v in verdicts if v.method]
    methods = list(dict.fromkeys(used)) or [UNPAIRED]
    if len(methods) == 1:
        return method_phrase(methods[0])
    return "; ".join(f"{method_phrase(m)} ({used.count(m)} cells)" for m in methods)


# ---------------------------------------------------------------- per-workload tables

TABLE_HEADERS = ("environment", "provider", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)",
                 "throughput (/s)", "first inference (ms)", "session creation (ms)",
                 "peak RSS (MiB)", "p50 change vs baseline [95% CI]", "verdict")


def _latency(result: Mapping[str, Any], key: str) -> float | None:
    if result.get("status") != "ok":
        return None
    return point_value(result, key)


def cell_row(data: RunData, cell: Cell) -> dict[str, Any]:
    """The numbers of one cell as the table, the CSV and results.json show them."""
    cid = cell.id
    res = data.results.get(cid) or {}
    summary = res.get("summary") or {}
    ok = res.get("status") == "ok"
    verdict = data.verdict_of(cid)
    rss = summary.get("peak_rss_bytes") if ok else None
    thr = summary.get("throughput_per_s") if ok else None
    return {
        "cell": cid, "environment": cell.environment.id, "workload": cell.workload.name,
        "provider": cell.provider, "status": res.get("status"),
        "valid": data.validity[cid].valid if cid in data.validity else False,
        "p50_ms": fmt_ms(_latency(res, "p50")), "p90_ms": fmt_ms(_latency(res, "p90")),
        "p99_ms": fmt_ms(_latency(res, "p99")), "mean_ms": fmt_ms(_latency(res, "mean")),
        "throughput_per_s": f"{thr:.1f}" if thr else None,
        "first_inference_ms": fmt_ms(summary.get("first_inference_s") if ok else None),
        "session_create_ms": fmt_ms(summary.get("session_create_s") if ok else None),
        "peak_rss_mib": f"{rss / 2**20:.0f}" if rss else None,
        "p50_change": fmt_change(verdict) if verdict else None,
        "verdict": _verdict_word(data, cid, verdict),
        "parity": data.parity[cid].status if cid in data.parity else None,
    }  # fmt: skip


def _verdict_word(data: RunData, cid: str, verdict: Verdict | None) -> str:
    if verdict is not None:
        return verdict.verdict
    valid = data.validity.get(cid)
    return "baseline" if valid and valid.valid else "baseline (invalid)"


def _table_cells(row: Mapping[str, Any]) -> list[Any]:
    change = row["p50_change"] or ("baseline" if row["verdict"].startswith("baseline") else None)
    verdict = row["verdict"]
    if verdict not in (UNCHANGED, "baseline"):
        verdict = f"**{verdict}**"
    return [md(row["environment"]), md(provider_name(row["provider"])), row["p50_ms"],
            row["p90_ms"], row["p99_ms"], row["mean_ms"], row["throughput_per_s"],
            row["first_inference_ms"], row["session_create_ms"], row["peak_rss_mib"],
            change, verdict]


def workloads(data: RunData) -> list[str]:
    return list(dict.fromkeys(c.workload.name for c in data.cells))


def section_workload(data: RunData, workload: str, plot_files: Sequence[str]) -> str:
    cells = [c for c in data.cells if c.workload.name == workload]
    rows = [_table_cells(cell_row(data, c)) for c in cells]
    lines = [f"## Workload {md(workload)}", "", table(TABLE_HEADERS, rows), ""]
    notes = [(c.id, n) for c in cells for n in _cell_notes(data, c.id)]
    lines += [f"- {md(cid)}: {md(note)}" for cid, note in notes]
    if notes:
        lines.append("")
    lines += [f"![{md(Path(p).stem)}]({p})" for p in plot_files]
    return "\n".join(lines)


def _cell_notes(data: RunData, cid: str) -> list[str]:
    verdict = data.verdict_of(cid)
    if verdict is not None:
        return list(verdict.notes)
    return list(data.validity[cid].warnings) if cid in data.validity else []


# ---------------------------------------------------------------- environments, failures


def env_fingerprint(data: RunData, env_id: str) -> dict[str, Any]:
    """The fingerprint of an environment's first cell that produced one."""
    for c in data.plan.cells_of(env_id):
        res = data.results.get(c.id) or {}
        if res.get("fingerprint"):
            return dict(res["fingerprint"])
    return {}


def _runtime(env: Environment, fp: Mapping[str, Any]) -> str | None:
    runtime = env.runtime()
    if runtime is None:
        return None
    pkgs = fp.get("packages") or {}
    name = runtime[0]
    return f"{name} {pkgs.get(name) or pkgs.get(name.replace('-', '_')) or '?'}"


def section_environments(data: RunData) -> str:
    rows = []
    for env in data.plan.environments:
        fp = env_fingerprint(data, env.id)
        name = md(env.id) + (" (baseline)" if env.id == data.baseline else "")
        rows.append([name, md(env.base.image), md((fp.get("python") or {}).get("version")
                                                  or env.python),
                     md((fp.get("os") or {}).get("pretty_name") or ""), md(fp.get("glibc") or ""),
                     md(_runtime(env, fp) or ""), md((fp.get("packages") or {}).get("numpy", "")),
                     md(", ".join(fp.get("providers_available") or []))])
    headers = ("environment", "base image", "Python", "OS", "glibc", "runtime", "numpy",
               "providers available")
    return "\n".join(["## Environments", "", table(headers, rows)])


def section_problems(data: RunData) -> str:
    """Every cell that did not produce valid numbers, with status, reasons and log tail."""
    bad = [(cid, res) for cid, res in data.results.items() if not data.validity[cid].valid]
    lines = ["## Cells without valid numbers", ""]
    if not bad:
        return "\n".join(lines + ["Every cell produced valid numbers."])
    rows = [[md(cid), md(res.get("status")), md("; ".join(data.validity[cid].reasons))]
            for cid, res in bad]
    lines += [table(("cell", "status", "reasons"), rows), ""]
    for cid, res in bad:
        if res.get("log_tail"):
            lines += [details(f"log tail: {md(cid)}", fence(str(res["log_tail"]))), ""]
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- parity


def _fmt_g(x: float | None) -> str | None:
    return None if x is None else f"{x:.3g}"


def parity_tables(parities: Mapping[str, CellParity], *, first_column: str,
                  sides: tuple[str, str] = ("baseline", "candidate")) -> list[str]:
    """Per output of each compared cell: differences, tolerances, result; worst elements.

    Shared by the report (candidate vs baseline) and compare (run B vs run A).
    """
    rows = []
    for cid, p in parities.items():
        if not p.outputs:
            rows.append([md(cid), DASH, None, None, None, None, None, None,
                         f"{p.status}: {md(p.reason)}"])
        for o in p.outputs:
            rows.append([md(cid), md(o.name), md(o.dtype), _fmt_g(o.max_abs), _fmt_g(o.max_rel),
                         None if o.cosine is None else f"{o.cosine:.6f}",
                         f"{o.rtol:.0e}" if o.rtol else "exact", f"{o.atol:.1e}" if o.atol else
                         "exact", "pass" if o.passed else f"**FAIL**: {md(o.reason)}"])
    headers = (first_column, "output", "dtype", "max abs diff", "max rel diff", "cosine",
               "rtol", "atol", "result")
    lines = [table(headers, rows), ""]
    for cid, p in parities.items():
        for o in p.outputs:
            if o.worst:
                worst = table(("index", *sides, "abs diff"),
                              [[str(list(w.index)), f"{w.baseline:.7g}", f"{w.candidate:.7g}",
                                f"{w.abs_diff:.3g}"] for w in o.worst])
                lines += [details(f"worst elements: {md(cid)} / {md(o.name)}", worst), ""]
    return lines


def section_parity(data: RunData) -> str:
    lines = ["## Output parity", "",
             "Each candidate's first-inference outputs against the baseline's, on identical "
             "inputs. Tolerances by dtype are in docs/report.md.", ""]
    if not data.parity:
        return "\n".join(lines + ["No pair of cells had outputs to compare."])
    lines += parity_tables(data.parity, first_column="candidate")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- provenance


def cpu_flags_diff(base: Iterable[str], cand: Iterable[str]) -> str:
    b, c = set(base), set(cand)
    if b == c:
        return f"same ({len(b)} flags)"
    added = " ".join(f"+{f}" for f in sorted(c - b))
    removed = " ".join(f"-{f}" for f in sorted(b - c))
    return " ".join(x for x in (added, removed) if x)


def _active_providers(data: RunData, cell: Cell) -> str:
    active = ((data.results.get(cell.id) or {}).get("provider") or {}).get("active") or ["?"]
    return f"{cell.provider}: {', '.join(active)}"


def provenance_items(data: RunData, env_id: str) -> list[tuple[str, str]]:
    """(item, value) pairs that identify what an environment ran on, in a fixed order."""
    env = data.plan.environment(env_id)
    fp = env_fingerprint(data, env_id)
    image = data.run.images.get(env_id)
    cpu = fp.get("cpu") or {}
    pkgs = fp.get("packages") or {}
    active = sorted({_active_providers(data, c) for c in data.plan.cells_of(env_id)})
    return [
        ("base image", env.base.image),
        ("image id", str((image.image_id if image else None)
                         or (fp.get("image") or {}).get("id") or "?")),
        ("Python", str((fp.get("python") or {}).get("version") or env.python)),
        ("OS", str((fp.get("os") or {}).get("pretty_name") or "?")),
        ("kernel", str((fp.get("os") or {}).get("kernel") or "?")),
        ("glibc", str(fp.get("glibc") or "?")),
        ("runtime", str(_runtime(env, fp) or "?")),
        ("numpy", str(pkgs.get("numpy") or "?")),
        ("providers active", "; ".join(active) or "?"),
        ("CPU model", str(cpu.get("model") or "?")),
        ("cores visible", str(cpu.get("cores_visible") or "?")),
    ]


def section_provenance(data: RunData) -> str:
    lines = ["## Provenance", "", "What differs between the baseline and each candidate "
             "environment (from the fingerprints the harness recorded inside each image).", ""]
    base_items = dict(provenance_items(data, data.baseline))
    base_flags = (env_fingerprint(data, data.baseline).get("cpu") or {}).get("flags") or []
    for env in data.plan.environments:
        if env.id == data.baseline:
            continue
        lines += [f"### {md(env.id)} vs {md(data.baseline)}", ""]
        fingerprint = env_fingerprint(data, env.id)
        if not fingerprint:
            lines += ["No fingerprint: no cell of this environment reached the harness.", ""]
            continue
        rows = []
        for item, value in provenance_items(data, env.id):
            same = value == base_items.get(item)
            rows.append([item, md(base_items.get(item)), md(value),
                         "same" if same else "**differs**"])
        flag_diff = cpu_flags_diff(base_flags, (fingerprint.get("cpu") or {}).get("flags") or [])
        rows.append(["CPU flags seen", DASH, md(flag_diff),
                     "same" if flag_diff.startswith("same") else "**differs**"])
        lines += [table(("", "baseline", "candidate", ""), rows), ""]
    return "\n".join(lines).rstrip()


def docker_run_command(data: RunData, cell: Cell) -> list[str]:
    """The `docker run` of one cell, from what its result recorded (envmatrix.containers)."""
    host = (data.results.get(cell.id) or {}).get("host") or {}
    return reproduce_argv(data.run_dir.run_id, cell.id, host, data.plan.measure)


def shell_join(argv: Sequence[str]) -> str:
    """shlex.join, except that "$PWD/..." stays expandable by the shell."""
    return " ".join(f'"{a}"' if a.startswith("$PWD/") else shlex.quote(a) for a in argv)


def section_reproduce(data: RunData) -> str:
    lines = ["## How to reproduce", "",
             "Rebuild and measure one environment with the same matrix, or rerun one cell's "
             "container by hand from inside the run directory (the same flags as the runner; "
             "first `mkdir -p scratch/<cell> && chmod 777 scratch/<cell>`).", ""]
    source = str(data.plan.source)
    for env in data.plan.environments:
        cell = next(iter(data.plan.cells_of(env.id)), None)
        nox = shlex.join(["nox", "-s", "matrix", "--", "--matrix", source, "--only", env.id])
        body = [f"### {md(env.id)}", "", fence(nox, "sh")]
        host = (data.results.get(cell.id) or {}).get("host") or {} if cell else {}
        if cell is not None and host.get("image_id") and host.get("command"):
            body += ["", f"Cell {md(cell.id)}:", "",
                     fence(shell_join(docker_run_command(data, cell)), "sh")]
        lines += body + [""]
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- measured amount, appendix


def measured_totals(data: RunData) -> dict[str, float]:
    processes = iterations = 0
    wall = cpu = 0.0
    for res in data.results.values():
        for rep in res.get("repeats") or []:
            processes += 1
            iterations += len(rep.get("latencies_s") or [])
            wall += float(rep.get("measure_wall_s") or sum(rep.get("latencies_s") or []))
            cpu += float(rep.get("cpu_time_s") or 0.0)
    return {"processes": processes, "iterations": iterations, "measured_s": wall, "cpu_s": cpu}


def section_measured(data: RunData) -> str:
    m = data.plan.measure
    t = measured_totals(data)
    rows = []
    for cid, res in data.results.items():
        reps = res.get("repeats") or []
        cv = repeat_cv(res)
        rows.append([md(cid), str(len(reps)),
                     " / ".join(str(len(r.get("latencies_s") or [])) for r in reps) or None,
                     f"{sum(float(r.get('measure_wall_s') or 0) for r in reps):.1f}" if reps
                     else None, f"{cv:.1%}" if cv is not None else None])
    return "\n".join([
        "## How much was measured", "",
        f"Settings: {m.repeats} fresh processes per cell, each {m.warmup} warm-up "
        f"iterations then at least {m.min_iterations} timed iterations and "
        f"{m.min_time_s} s. In all: {t['processes']} processes, {t['iterations']} timed "
        f"iterations, {t['measured_s']:.1f} s measured, {t['cpu_s']:.1f} s CPU time.", "",
        table(("cell", "repeats", "iterations per repeat", "measured (s)",
               "CV of repeat p50s"), rows)])


def section_appendix(data: RunData) -> str:
    lines = ["## Appendix: fingerprints", ""]
    for env in data.plan.environments:
        fp = env_fingerprint(data, env.id)
        body = fence(json.dumps(fp, indent=2, sort_keys=True), "json") if fp else "none recorded"
        lines += [details(f"{md(env.id)}", body), ""]
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------- files


def _plot_series(data: RunData, workload: str) -> list[plots.Series]:
    series = []
    for c in data.cells:
        if c.workload.name != workload:
            continue
        res = data.results.get(c.id) or {}
        lat = [x * 1000.0 for rep in repeat_latencies(res) for x in rep.tolist()]
        verdict = data.verdict_of(c.id)
        ok = res.get("status") == "ok"
        series.append(plots.Series(
            label=f"{c.environment.id} / {provider_name(c.provider)}",
            latencies_ms=lat if ok else [],
            throughput_per_s=point_value(res, "throughput") if ok and lat else None,
            p50=verdict.ratios.get("p50") if verdict else None,
            p99=verdict.ratios.get("p99") if verdict else None))
    return series


def write_plots(data: RunData, workload: str) -> list[str]:
    """The figures of one workload; their paths relative to the run directory."""
    series = _plot_series(data, workload)
    name = slug(workload)
    figures = {f"plots/{name}-latency.png": plots.latency_png(f"{workload}: latency", series)}
    if any(s.p50 for s in series):
        figures[f"plots/{name}-ratio.png"] = plots.ratio_png(
            f"{workload}: change vs baseline", series, data.rules.min_effect)
    if any(s.throughput_per_s for s in series):
        figures[f"plots/{name}-throughput.png"] = plots.throughput_png(
            f"{workload}: throughput", series)
    for rel, png in figures.items():
        atomic_write_bytes(data.run_dir.path / rel, png)
    return list(figures)


CSV_COLUMNS = ("cell", "environment", "workload", "provider", "status", "valid", "p50_ms",
               "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "first_inference_ms",
               "session_create_ms", "peak_rss_mib", "p50_change", "verdict", "parity")


def results_csv(data: RunData) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in data.cells:
        writer.writerow(cell_row(data, c))
    return buf.getvalue()


def results_document(data: RunData) -> dict[str, Any]:
    """results.json: every cell's result merged, with validity, verdicts and parity."""
    return {
        "schema": REPORT_SCHEMA,
        "run_id": data.run_dir.run_id,
        "baseline": data.baseline,
        "rules": asdict(data.rules),
        "cells": data.results,
        "validity": {cid: asdict(v) for cid, v in data.validity.items()},
        "verdicts": [asdict(v) for v in data.verdicts],
        "parity": {cid: asdict(p) for cid, p in data.parity.items()},
    }


def render_markdown(data: RunData, plot_files: Mapping[str, Sequence[str]]) -> str:
    head = [f"# Upgrade-impact report: run {md(data.run_dir.run_id)}", "",
            f"Matrix {md(data.plan.source)}; baseline environment **{md(data.baseline)}**; "
            f"{len(data.cells)} cells in {len(data.plan.environments)} environments."]
    sections = ["\n".join(head), section_summary(data)]
    sections += [section_workload(data, w, plot_files.get(w, ())) for w in workloads(data)]
    sections += [section_environments(data), section_problems(data), section_parity(data),
                 section_provenance(data), section_measured(data), section_reproduce(data),
                 section_appendix(data)]
    return "\n\n".join(sections) + "\n"


def _strict(obj: Any) -> Any:
    """NaN and infinities as null: results.json is strict JSON like every result file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _json_text(obj: Any) -> str:
    return json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def build_report(run_dir: Path, rules: VerdictRules | None = None) -> Path:
    """Write report.md, results.json, results.csv and plots/ into run_dir; report.md's path."""
    return write_report_files(load_run(run_dir, rules))


def write_report_files(data: RunData) -> Path:
    """build_report for a run already loaded (the CLI's gate reads the same RunData)."""
    plot_files = {w: write_plots(data, w) for w in workloads(data)}
    atomic_write_text(data.run_dir.results_json, _json_text(results_document(data)))
    atomic_write_text(data.run_dir.results_csv, results_csv(data))
    atomic_write_text(data.run_dir.report_path, render_markdown(data, plot_files))
    return data.run_dir.report_path
