"""The report's sections after the summary: per network, hosts, environments, problems,
parity, provenance, how much was measured, how to reproduce, fingerprints."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from envmatrix.analysis.rundata import (
    RunData,
    cell_numbers,
    env_fingerprint,
    knob_fields,
    measured_totals,
    network_cells,
    shown_point,
)
from envmatrix.analysis.stats import CROSS_HOST_NOTE, repeat_cv
from envmatrix.report.markdown import (
    DASH,
    details,
    fence,
    fmt_change,
    fmt_ms,
    fmt_number,
    md,
    parity_tables,
    provider_name,
    shell_join,
    table,
    verdict_words,
)
from envmatrix.rundir.idwords import WORKLOAD_FIELDS, knob_names
from envmatrix.rundir.plan import Cell, Environment
from envmatrix.running.containers import reproduce_argv

TABLE_HEADERS = ("environment", "provider", "nodes on provider (%)", "p50 (ms)", "p90 (ms)",
                 "p99 (ms)", "samples/s", "cores used", "CPU per inference (ms)",
                 "cold start (ms)", "first inference (ms)", "session creation (ms)",
                 "peak RSS (MiB)",
                 "p50 change [95% CI]", "p99 change [95% CI]", "verdict p50 / p99")


def section_network(data: RunData, network: str, plot_files: Sequence[str]) -> str:
    """## Workload <network>: every cell of the network's workloads, one table."""
    cells = network_cells(data, network)
    rows = [_table_cells(data, c) for c in cells]
    headers, rows = with_host_column(data, cells, rows)
    headers, rows = with_knob_columns(cells, headers, rows)
    headers, rows = with_workload_columns(cells, headers, rows)
    lines = [f"## Workload {md(network)}", ""]
    names = list(dict.fromkeys(c.workload.name for c in cells))
    if names != [network]:
        lines += [f"Network {md(network)}, as workloads {', '.join(md(n) for n in names)}.", ""]
    lines += [table(headers, rows), ""]
    lines += [f"![{md(Path(p).stem)}]({p})" for p in plot_files]
    return "\n".join(lines)


def _table_cells(data: RunData, cell: Cell) -> list[Any]:
    n = cell_numbers(data, cell)
    v = data.verdict_of(cell.id)
    baseline = n["verdict"].startswith("baseline")
    verdict = (n["verdict"] if baseline or v is None
               else verdict_words(v, data.rules.equivalence))
    return [md(n["environment"]), md(provider_name(n["provider"])),
            fmt_number(None if n["node_share"] is None else 100 * n["node_share"], ".0f"),
            fmt_ms(shown_point(data, cell, "p50")),
            fmt_number(n["p90_ms"], ".3g"), fmt_number(n["p99_ms"], ".3g"),
            fmt_number(n["samples_per_s"], ".1f"), fmt_number(n["cores_used"], ".2f"),
            fmt_number(n["cpu_per_inference_ms"], ".3g"), fmt_number(n["cold_start_ms"], ".0f"),
            fmt_number(n["first_inference_ms"], ".3g"), fmt_number(n["session_create_ms"], ".3g"),
            fmt_number(n["peak_rss_mib"], ".0f"),
            "baseline" if baseline else (fmt_change(v, "p50") if v else None),
            None if baseline else (fmt_change(v, "p99") if v else None), verdict]


def with_host_column(data: RunData, cells: Sequence[Cell], rows: list[list[Any]]
                     ) -> tuple[Sequence[str], list[list[Any]]]:
    """A host column after the environment when the plan has several hosts, and a marker on
    each verdict whose baseline cell ran on another machine."""
    if not data.plan.multi_host:
        return TABLE_HEADERS, rows
    out = []
    for cell, row in zip(cells, rows):
        v = data.verdict_of(cell.id)
        if v is not None and CROSS_HOST_NOTE in v.notes:
            row = [*row[:-1], f"{row[-1]} (cross-host)"]
        out.append([row[0], md(cell.host or ""), *row[1:]])
    return (TABLE_HEADERS[0], "host", *TABLE_HEADERS[1:]), out


def with_knob_columns(cells: Sequence[Cell], headers: Sequence[str],
                      rows: list[list[Any]]) -> tuple[Sequence[str], list[list[Any]]]:
    """Headers and rows with a column per varied setting after `provider` (none: as given)."""
    names = knob_names(cells)
    if not names:
        return list(headers), rows
    values = [[md("default" if v is None else str(v).lower() if isinstance(v, bool) else v)
               for v in knob_fields(cells, c).values()] for c in cells]
    at = list(headers).index("provider") + 1
    return ([*headers[:at], *names, *headers[at:]],
            [[*row[:at], *extra, *row[at:]] for row, extra in zip(rows, values)])


def varied_workload_fields(cells: Sequence[Cell]) -> list[str]:
    return [f for f in WORKLOAD_FIELDS if len({getattr(c.workload, f) for c in cells}) > 1]


def with_workload_columns(cells: Sequence[Cell], headers: Sequence[str],
                          rows: list[list[Any]]) -> tuple[Sequence[str], list[list[Any]]]:
    """A backend and/or batch column after `provider` where the cells' workloads differ in
    them (several workloads of one network); none: as given."""
    names = varied_workload_fields(cells)
    if not names:
        return list(headers), rows
    at = list(headers).index("provider") + 1
    values = [[md(getattr(c.workload, f) or "default") for f in names] for c in cells]
    return ([*headers[:at], *names, *headers[at:]],
            [[*row[:at], *extra, *row[at:]] for row, extra in zip(rows, values)])


def host_rows(data: RunData) -> list[list[Any]]:
    """One row per host: what its engine said (run.hosts) and the CPU its cells saw."""
    rows = []
    for host in data.plan.hosts:
        record = data.run.hosts.get(host.name) or {}
        fp = record.get("fingerprint") or {}
        cpu: Mapping[str, Any] = next(
            ((r.get("fingerprint") or {}).get("cpu") or {} for c in data.cells
                    if c.host == host.name and (r := data.results.get(c.id) or {})
                    .get("fingerprint")), {})  # fmt: skip
        memory = fp.get("memory_bytes")
        rows.append([md(host.name), md(host.address), md(fp.get("engine_version") or ""),
                     md(" / ".join(str(x) for x in (fp.get("os"), fp.get("kernel")) if x)),
                     md(cpu.get("model") or fp.get("arch") or ""), fp.get("cpus"),
                     f"{memory / 2**30:.1f} GiB" if memory else None,
                     md(", ".join(fp.get("runtimes") or [])),
                     md(record.get("unreachable") or "")])
    return rows


def section_hosts(data: RunData) -> str:
    """## Hosts: the machines that measured, so a cross-host comparison can be judged."""
    headers = ("host", "address", "engine", "OS / kernel", "CPU", "cores", "memory",
               "runtimes", "unreachable")
    return "\n".join(["## Hosts", "", "Verdicts between cells of different hosts compare "
                      "different machines (marked cross-host).", "",
                      table(headers, host_rows(data))])


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
    """Every cell without valid numbers, with status and reasons; a log tail shown once.

    The cells of an environment whose build failed share one build log: it is shown once,
    with the cells listed under it, and the reason is the failing tool's own words.
    """
    bad = [(cid, res) for cid, res in data.results.items() if not data.validity[cid].valid]
    lines = ["## Cells without valid numbers", ""]
    if not bad:
        return "\n".join(lines + ["Every cell produced valid numbers."])
    rows = [[md(cid), md(res.get("status")), md("; ".join(data.validity[cid].reasons))]
            for cid, res in bad]
    lines += [table(("cell", "status", "reasons"), rows), ""]
    builds: dict[str, list[str]] = {}
    for cid, res in bad:
        if res.get("status") == "build_failed":
            builds.setdefault(str(res.get("environment")), []).append(cid)
        elif res.get("log_tail"):
            lines += [details(f"log tail: {md(cid)}", fence(str(res["log_tail"]))), ""]
    for env_id, cids in builds.items():
        first = data.results[cids[0]]
        cells = ", ".join(md(c) for c in cids)
        body = f"Cells: {cells}\n\n" + fence(str(first.get("log_tail") or "no log recorded"))
        lines += [details(f"build log of {md(env_id)}: {md(first.get('reason'))}", body), ""]
    return "\n".join(lines).rstrip()


def section_parity(data: RunData) -> str:
    lines = ["## Output parity", "",
             "Each candidate's first-inference outputs against the baseline's, on identical "
             "inputs. Tolerances by dtype are in docs/report.md.", ""]
    if not data.parity:
        return "\n".join(lines + ["No pair of cells had outputs to compare."])
    lines += parity_tables(data.parity, first_column="candidate")
    return "\n".join(lines).rstrip()


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
    """The `docker run` of one cell, from what its result recorded (running.containers)."""
    host = (data.results.get(cell.id) or {}).get("host") or {}
    return reproduce_argv(data.run_dir.run_id, cell.id, host, data.plan.measure)


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
        f"Settings: {'up to ' if m.looks_early else ''}{m.repeats} fresh processes per cell "
        f"({'each cell stopped once its comparisons were settled; ' if m.looks_early else ''}"
        f"the table gives each cell's own count), each {m.warmup} warm-up "
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
