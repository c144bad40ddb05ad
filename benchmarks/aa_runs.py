"""How often does a real A/A matrix get a decisive verdict? The product's own runs, end to end.

Writes an A/A matrix (one environment twice: the second a copy that differs only by its id,
so its image reuses the first's cached layers and holds the same packages, as
tests/integration/matrices/same_packages.yaml), with several zoo workloads, and runs it
`--runs` times through the product's command line (`python -m envmatrix matrix`), each run in
its own run directory. Nothing differs between the two environments, so every decisive verdict
(faster or slower) is a false alarm. From each run's results.json (its `verdicts`; results.csv's
`verdict` column when there is no results.json) it prints:
- per comparison (candidate cell against its baseline cell): the shares faster or slower
  (decisive, with an exact Clopper-Pearson 95% interval, scipy's binomtest), equivalent,
  inconclusive and invalid, and the mean rounds used (the rounds at the deciding look);
- per run: the share of runs with any decisive verdict, with its exact interval;
- per workload: the same shares, and the wall time of every run.

What the figures rest on: `--runs` x workloads comparisons. The comparisons of one run share
its minutes on the machine, so they are not independent: the per-comparison interval treats
them as if they were (too narrow when the machine's moments matter); the per-run share, from
runs made one after the other, is the honest one. The verdict's error rate (alpha, over all
looks) bounds each comparison's chance of a wrong interval; an A/A comparison is decisive only
when its interval excludes 1 and its estimate is beyond min_effect too, so the share should be
well below alpha on a quiet machine. On a machine shared with other work it measures that work
too: the load average is printed before and after.

Usage: python benchmarks/aa_runs.py [--runs 10] [--repeats 40] [--workloads cnn,mlp,transformer]
[--threads 1] [--fixed] [--look-every 8] [--equivalence 0.05] [--min-time-s 1.0]
[--base trixie] [--onnxruntime 1.32.0] [--out reports/aa-STAMP]
[--summarize reports/aa-STAMP]. The run directories, the matrix and each run's log go
under --out (default reports/aa-<time>/, which git ignores); `--summarize DIR` prints the
figures of the runs already in DIR without measuring. The first run builds the two images
unless they are cached (trixie + onnxruntime 1.32.0 usually is: `docker images envmatrix/*`).
A short real check: `--runs 2 --repeats 8` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from envmatrix.rundir.plan import ZOO_MODELS, Measure  # noqa: E402

FASTER, SLOWER, EQUIVALENT, INCONCLUSIVE, INVALID = (
    "faster", "slower", "equivalent", "inconclusive", "invalid")
OUTCOMES = (FASTER, SLOWER, EQUIVALENT, INCONCLUSIVE, INVALID, "other")
DECISIVE = (FASTER, SLOWER)

MATRIX = """\
# A/A matrix written by benchmarks/aa_runs.py: one environment twice, the second differing only
# by its id. Nothing changed, so every faster or slower verdict is a false alarm.
version: 1
bases:
  {base}: {{image: "debian:{base}", bootstrap: {{suite: {base}}}}}
environments:
  - description: "A: {base}, onnxruntime {ort}"
    base: {base}
    packages: {{onnxruntime: "{ort}"}}
    providers: [cpu]
  - id: {again}
    description: "A again: the same packages, only the id differs"
    base: {base}
    packages: {{onnxruntime: "{ort}"}}
    providers: [cpu]
workloads:
{workloads}
measure: {measure}
verdict: {verdict}
baseline: {baseline}
build: {{ca_bundle: auto, wheelhouse: null, pip_index_url: null}}
model_export: {{ir_version: 7, opset: 11}}
"""


def write_matrix(args: argparse.Namespace, path: Path) -> None:
    """The A/A matrix of these arguments (environment ids as envmatrix derives them)."""
    baseline = f"{args.base}-ort{args.onnxruntime}"
    measure: dict[str, Any] = {
        "warmup": args.warmup, "min_iterations": args.min_iterations,
        "min_time_s": args.min_time_s, "repeats": args.repeats, "threads": args.threads,
        "adaptive": not args.fixed, "timeout_s": 600}
    if args.look_every < args.repeats:  # else one look at the end: the matrix says nothing
        measure["look_every"] = args.look_every
    verdict: dict[str, Any] = {}
    if args.equivalence is not None:
        verdict["equivalence"] = args.equivalence
    workloads = "\n".join(f'  {w}: {{model: "zoo:{w}"}}' for w in args.workloads)
    path.write_text(MATRIX.format(
        base=args.base, ort=args.onnxruntime, again=f"{baseline}-again", baseline=baseline,
        workloads=workloads, measure=json.dumps(measure), verdict=json.dumps(verdict)))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_once(matrix: Path, out: Path, repeats: int) -> tuple[int, float]:
    """One run through the product's command line: (exit code, wall seconds)."""
    cmd = [sys.executable, "-m", "envmatrix", "matrix", "--matrix", str(matrix),
           "--out", str(out), "--repeats", str(repeats)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    started = time.monotonic()
    with open(out.with_suffix(".log"), "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              check=False).returncode
    return code, time.monotonic() - started


# ---------------------------------------------------------------- reading the verdicts


def outcome(word: Any) -> str:
    """One of OUTCOMES for whatever verdict word a report wrote (older reports wrote
    "no significant change" or "unchanged": neither decisive nor one of the new outcomes)."""
    text = str(word or "").strip().lower()
    for known in (FASTER, SLOWER, EQUIVALENT, INCONCLUSIVE, INVALID):
        if text.startswith(known):
            return known
    return "other"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _rounds_used(verdict: dict[str, Any]) -> float | None:
    """The rounds at the deciding look: the deciding metric's `look`, else its units."""
    ci = (verdict.get("ratios") or {}).get(verdict.get("decided_by") or "p50") or {}
    for value in (ci.get("look"), ci.get("n_base"), verdict.get("rounds")):
        if _number(value) is not None:
            return _number(value)
    return None


def read_verdicts(run_dir: Path) -> list[dict[str, Any]]:
    """[{candidate, workload, outcome, word, rounds}] of one run's comparisons against the
    baseline: results.json's `verdicts`, else results.csv's rows that carry a verdict."""
    doc_path, csv_path = run_dir / "results.json", run_dir / "results.csv"
    found = []
    if doc_path.is_file():
        for v in json.loads(doc_path.read_text()).get("verdicts") or []:
            found.append({"candidate": v.get("candidate"), "workload": v.get("workload"),
                          "outcome": outcome(v.get("verdict")), "word": v.get("verdict"),
                          "rounds": _rounds_used(v)})
        return found
    if csv_path.is_file():
        with csv_path.open(newline="") as f:
            for row in csv.DictReader(f):
                word = row.get("verdict")
                if not word or word.startswith("baseline"):
                    continue  # the baseline's own row
                found.append({"candidate": row.get("cell"), "workload": row.get("workload"),
                              "outcome": outcome(word), "word": word,
                              "rounds": _number(row.get("units_base"))})
    return found


# ---------------------------------------------------------------- the figures


def share(k: int, n: int) -> str:
    """k of n with its exact (Clopper-Pearson) 95% interval."""
    if n == 0:
        return "0/0"
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return f"{k}/{n} = {k / n:.1%} [{ci.low:.1%}, {ci.high:.1%}]"


def shares_line(verdicts: list[dict[str, Any]]) -> dict[str, str]:
    n = len(verdicts)
    counts = {o: sum(v["outcome"] == o for v in verdicts) for o in OUTCOMES}
    rounds = [v["rounds"] for v in verdicts if v["rounds"] is not None]
    return {"comparisons": str(n),
            "decisive (faster or slower)": share(counts[FASTER] + counts[SLOWER], n),
            "faster": share(counts[FASTER], n), "slower": share(counts[SLOWER], n),
            "equivalent": share(counts[EQUIVALENT], n),
            "inconclusive": share(counts[INCONCLUSIVE], n),
            "invalid": str(counts[INVALID]), "other words": str(counts["other"]),
            "mean rounds used": f"{np.mean(rounds):.1f}" if rounds else "n/a"}


def _rounds_text(rounds: float | None) -> str:
    return "?" if rounds is None else f"{rounds:g}"


def summarize(out: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print and return the figures of the runs recorded in `runs` (one dict per run)."""
    every = [v for r in runs for v in r["verdicts"]]
    print(f"\n{len(runs)} runs, {len(every)} comparisons (A' against A, per workload); "
          f"run directories under {out}")
    for r in runs:
        words = ", ".join(f"{v['workload']}: {v['word']} ({_rounds_text(v['rounds'])} rounds)"
                          for v in r["verdicts"]) or "no verdicts read"
        print(f"  {r['name']}: exit {r['exit']}, {r['wall_s']:.0f} s, load {r['load_before']}"
              f" -> {r['load_after']}; {words}")
    overall = shares_line(every)
    print("\nper comparison, k/n = share [exact Clopper-Pearson 95% interval] (the comparisons "
          "of one run are not independent: the interval treats them as if they were):")
    for key, value in overall.items():
        print(f"  {key:>28}: {value}")
    measured = [r for r in runs if r["verdicts"]]
    any_decisive = sum(any(v["outcome"] in DECISIVE for v in r["verdicts"]) for r in measured)
    per_run = share(any_decisive, len(measured))
    print(f"\nper run (any decisive verdict in the run; runs one after the other): {per_run}")
    print("\nper workload:")
    workloads = sorted({str(v["workload"]) for v in every})
    by_workload = {}
    for w in workloads:
        line = shares_line([v for v in every if str(v["workload"]) == w])
        by_workload[w] = line
        print(f"  {w}: decisive {line['decisive (faster or slower)']}; equivalent "
              f"{line['equivalent']}; inconclusive {line['inconclusive']}; mean rounds "
              f"{line['mean rounds used']}")
    walls = [r["wall_s"] for r in runs]
    print(f"\nwall time per run: {', '.join(f'{w:.0f} s' for w in walls)} "
          f"(total {sum(walls):.0f} s)")
    return {"overall": overall, "per_run_any_decisive": per_run, "by_workload": by_workload}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Measure()
    parser.add_argument("--runs", type=int, default=10, help="A/A runs, one after the other")
    parser.add_argument("--repeats", type=int, default=default.repeats,
                        help="the budget: rounds per cell (the most, when adaptive)")
    parser.add_argument("--workloads", default="cnn,mlp,transformer",
                        help=f"zoo models, comma-separated (of {', '.join(ZOO_MODELS)})")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the runtime's)")
    parser.add_argument("--fixed", action="store_true",
                        help="measure.adaptive: false (one look at the end of the budget)")
    parser.add_argument("--look-every", type=int, default=default.look_every)
    parser.add_argument("--equivalence", type=float, default=None,
                        help="verdict.equivalence (default: the product's)")
    parser.add_argument("--warmup", type=int, default=default.warmup)
    parser.add_argument("--min-iterations", type=int, default=default.min_iterations)
    parser.add_argument("--min-time-s", type=float, default=default.min_time_s)
    parser.add_argument("--base", default="trixie", help="a Debian suite")
    parser.add_argument("--onnxruntime", default="1.32.0")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the matrix, the run directories and their logs")
    parser.add_argument("--summarize", type=Path, default=None, metavar="DIR",
                        help="print the figures of the runs in DIR (from its aa_runs.json)")
    args = parser.parse_args()
    print("command: " + " ".join(["python", *sys.argv]))
    if args.summarize:
        earlier = json.loads((args.summarize / "aa_runs.json").read_text())
        for r in earlier["runs"]:
            r["verdicts"] = read_verdicts(Path(r["dir"]))
        summarize(args.summarize, earlier["runs"])
        return
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workloads if w not in ZOO_MODELS]
    if unknown or not args.workloads:
        parser.error(f"--workloads: zoo models are {', '.join(ZOO_MODELS)}, not {unknown}")
    if args.runs < 1 or args.repeats < 1:
        parser.error("--runs and --repeats must be at least 1")
    out = (args.out or REPO / "reports" / time.strftime("aa-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    matrix = out / "matrix.yaml"
    write_matrix(args, matrix)
    print(f"load average now (1, 5, 15 min): {load()}; cores: {os.cpu_count()}; "
          f"matrix: {matrix}")
    record: dict[str, Any] = {"command": sys.argv, "runs": []}
    for k in range(1, args.runs + 1):
        run_dir = out / f"run-{k:02d}"
        before = load()
        code, wall = run_once(matrix, run_dir, args.repeats)
        verdicts = read_verdicts(run_dir)
        print(f"run {k}/{args.runs}: exit {code}, {wall:.0f} s, "
              f"{len(verdicts)} verdicts: {', '.join(str(v['word']) for v in verdicts)}",
              flush=True)
        record["runs"].append({"name": run_dir.name, "dir": str(run_dir), "exit": code,
                               "wall_s": wall, "load_before": before, "load_after": load(),
                               "verdicts": verdicts})
        (out / "aa_runs.json").write_text(json.dumps(record, indent=1))
    record["figures"] = summarize(out, record["runs"])
    (out / "aa_runs.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
