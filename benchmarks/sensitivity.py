"""How sensitive is the verdict at a given measurement budget on this machine?

Prints, for each number of rounds asked for (`--rounds 10,20,30`), over `--trials` trials:
- how often a 3% and a 5% slowdown get the verdict "slower" (goal at 5%: >= 95%);
- how often the real slow model (5% more work; its true slowdown printed) gets "slower";
- how often one unchanged model measured twice gets "faster" or "slower" (goal <= 5%);
plus the same for the unpaired comparison of the same processes, and how often the interval
covers the true ratio. The verdicts come from `envmatrix.analysis.stats.measured_comparison`, the
function the report uses, so this measures the procedure the report prints (docs/report.md).

How the slowdowns are made real: the baseline A is a model of BLOCKS identical MatMul+Relu
blocks; every round also measures the same model again in a separate process (A') and a model
with BLOCKS/20 more blocks (5% more work, its true slowdown measured over all rounds and
printed as a calibration). The 3% and 5% slowdowns are A' with its latencies multiplied by
1.03 and 1.05: real process-to-process and round-to-round noise, exactly known truth.

How the processes are recorded: like `envmatrix.running.runner` measures a matrix, in interleaved
rounds. Each round runs one fresh process each of A, the slow model and A', in an order that
rotates from round to round, with the harness's own timing loop (`harness.measure.warm_up` /
`timed_loop`) and the default Measure settings (10 warm-up iterations, then at least 50
iterations and 1 s). Whatever the machine's speed does over minutes, the three processes of a
round see nearly the same of it.

How the trials are made: measuring hundreds of full matrices would take hours on 2 cores, so a
trial draws N whole rounds with replacement from the recording (N from `--rounds`, one
process per cell and round, as the default matrix measures) and compares the cells as two
cells of one run measured in the same N rounds. Detection: the slowed cell is "slower". False
positive: A' vs A is anything but "no significant change".

Usage: python benchmarks/sensitivity.py [--rounds-recorded 60] [--rounds 10,20,30]
[--trials 1000] [--threads 1] [--save rec.json | --load rec.json]. On a machine shared with
other work, the load average is printed with the figures: the goals are for a machine that
measures one thing at a time. Recording takes ~5 s a round; a short check of the analysis:
`--rounds-recorded 4 --rounds 8 --trials 20`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from envmatrix.analysis.stats import (  # noqa: E402
    SLOWER,
    UNCHANGED,
    VerdictRules,
    measured_comparison,
    min_rounds_for,
)
from envmatrix.rundir.plan import Measure  # noqa: E402

BLOCKS = 20  # the slow model has BLOCKS + 1 blocks: 5% more work
BATCH, WIDTH = 32, 384
SIDES = ("base", "slow", "again")  # A, the slow model, A measured a second time (A')
SLOWDOWNS = (0.03, 0.05)  # made from A' by scaling its latencies

CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from envmatrix_harness.measure import timed_loop, warm_up
model, shape = sys.argv[1], tuple(json.loads(sys.argv[5]))
warmup, min_iter, min_time = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
opts = ort.SessionOptions()
if int(sys.argv[6]):
    opts.intra_op_num_threads = int(sys.argv[6])
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
warm_up(sess.run, (None, feeds), warmup)
lat, wall = timed_loop(sess.run, (None, feeds), min_iter, min_time)
print(json.dumps({"latencies_s": lat, "measure_wall_s": wall}))
"""


def build_model(blocks: int, path: Path) -> None:
    """A chain of identical MatMul+Relu blocks (He-scaled weights keep values finite)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(blocks):
        w = (rng.standard_normal((WIDTH, WIDTH)) * np.sqrt(2.0 / WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, WIDTH])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [BATCH, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))


def measure_process(model: Path, m: Measure) -> dict[str, Any]:
    """One fresh process, as the harness runs one repeat."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(m.warmup), str(m.min_iterations),
         str(m.min_time_s), json.dumps([BATCH, WIDTH]), str(m.threads or 0)],
        cwd=REPO, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def round_order(index: int) -> tuple[str, ...]:
    """A, slow, A' rotated by one place per round: no side is always first or last."""
    shift = index % len(SIDES)
    return SIDES[shift:] + SIDES[:shift]


def record(rounds: int, m: Measure) -> dict[str, Any]:
    """`rounds` interleaved rounds, each one process of A, the slow model and A'."""
    tmp = Path(tempfile.mkdtemp(prefix="envmatrix-sensitivity-"))
    models = {"base": tmp / "base.onnx", "slow": tmp / "slow.onnx"}
    build_model(BLOCKS, models["base"])
    build_model(BLOCKS + BLOCKS // 20, models["slow"])
    models["again"] = models["base"]
    rec: dict[str, Any] = {"design": "interleaved rounds", "rounds": [], "measure": {
        "warmup": m.warmup, "min_iterations": m.min_iterations, "min_time_s": m.min_time_s,
        "threads": m.threads}}
    rec["load_before"] = os.getloadavg()
    started = time.monotonic()
    for r in range(rounds):
        order = round_order(r)
        entry: dict[str, Any] = {"order": list(order)}
        for side in order:
            entry[side] = measure_process(models[side], m)
        rec["rounds"].append(entry)
        if (r + 1) % 10 == 0:
            print(f"round {r + 1}/{rounds}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    rec["load_after"] = os.getloadavg()
    rec["nice"] = os.nice(0)
    return rec


# ---------------------------------------------------------------- analysis


def p50_table(rec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per side, the p50 of each round's process (seconds)."""
    return {side: np.array([np.percentile(r[side]["latencies_s"], 50) for r in rec["rounds"]])
            for side in SIDES}  # fmt: skip


def as_result(p50s: np.ndarray, run_id: str = "trial") -> dict[str, Any]:
    """A result dict of one cell measured in len(p50s) interleaved rounds of one process each
    (round r's process has p50 p50s[r]), in run `run_id`: what envmatrix.analysis.stats reads."""
    return {"repeats": [{"round": r, "latencies_s": [float(v)]} for r, v in enumerate(p50s)],
            "host": {"run_id": run_id, "started_at": "2026-01-01T00:00:00Z",
                     "finished_at": "2026-01-01T01:00:00Z"}}


def verdict_of(base: np.ndarray, cand: np.ndarray, rules: VerdictRules, paired: bool = True,
               key: str = "") -> tuple[str, float, float]:
    """(verdict word, low, high) of stats.measured_comparison, the report's own function, for
    two cells measured in the same rounds (paired) or in two runs (unpaired)."""
    res = measured_comparison(f"base{key}", as_result(base), f"cand{key}",
                              as_result(cand, "trial" if paired else "other run"), rules,
                              metrics=("p50",))
    p50 = res["ratios"]["p50"]
    return str(res["verdict"]), p50.low, p50.high


def rates(table: dict[str, np.ndarray], n: int, trials: int, rules: VerdictRules,
          paired: bool = True, seed: int = 2) -> dict[str, float]:
    """Over trials of n whole rounds drawn with replacement: the fraction detected "slower"
    per slowdown ("3%", "5%", "model"), "false+" (A' vs A flagged) and "covered" (the 5%
    slowdown's interval holds 1.05)."""
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys([f"{s:.0%}" for s in SLOWDOWNS] + ["model", "false+", "covered"], 0)
    for t in range(trials):
        pick = rng.integers(0, table["base"].size, size=n)
        base, again = table["base"][pick], table["again"][pick]
        for s in SLOWDOWNS:
            word, low, high = verdict_of(base, again * (1 + s), rules, paired, f"{t}")
            counts[f"{s:.0%}"] += word == SLOWER
            if s == 0.05:
                counts["covered"] += low <= 1.05 <= high
        counts["model"] += verdict_of(base, table["slow"][pick], rules, paired, f"{t}")[0] == SLOWER
        counts["false+"] += verdict_of(base, again, rules, paired, f"{t}")[0] != UNCHANGED
    return {k: v / trials for k, v in counts.items()}


def describe(rec: dict[str, Any], table: dict[str, np.ndarray]) -> float:
    """Print what was recorded and the calibration; returns the true slowdown ratio."""
    rounds = rec["rounds"]
    iterations = sum(len(r[s]["latencies_s"]) for r in rounds for s in SIDES)
    print(f"recorded: {len(rounds)} interleaved rounds x (A, slow, A') fresh processes, "
          f"{iterations} iterations; settings {rec['measure']}; load average before "
          f"{rec.get('load_before')}, after {rec.get('load_after')}, nice {rec.get('nice')}")
    # The paired verdict estimates the median of the per-round ratios (envmatrix.analysis.stats).
    truth = float(np.exp(np.median(np.log(table["slow"] / table["base"]))))
    print(f"baseline p50 {np.median(table['base']) * 1e3:.3f} ms; true slowdown of the slow "
          f"model (median of the per-round ratios over all rounds, the statistic the paired "
          f"verdict estimates): {truth - 1:+.2%}; ratio of the medians: "
          f"{np.median(table['slow']) / np.median(table['base']) - 1:+.2%} (calibration)")
    base = table["base"]
    print(f"drift: A's per-round p50 spans {base.min() * 1e3:.3f}..{base.max() * 1e3:.3f} ms "
          f"(CV {np.std(base, ddof=1) / np.mean(base):.2%} across rounds); within a round, "
          f"A' vs A differ by a median {np.median(np.abs(table['again'] / base - 1)):.2%}")
    return truth


def report(rec: dict[str, Any], trials: int, round_counts: list[int]) -> None:
    table = p50_table(rec)
    describe(rec, table)
    rules = VerdictRules()
    print(f"\nverdict rule: {rules.confidence:.0%} percentile bootstrap of the p50 ratio, "
          f"min_effect {rules.min_effect:.0%}; pairing needs {min_rounds_for(rules.level_alpha)} "
          f"rounds; {trials} trials per row, rounds drawn with replacement from "
          f"{len(rec['rounds'])} recorded")
    head = ["rounds", "test", "trials", "3% det", "5% det", "model det", "false+", "5% CI cov"]
    print("  " + " ".join(f"{h:>9}" for h in head))
    for n in round_counts:
        for paired in (True, False):
            r = rates(table, n, trials, rules, paired)
            cells = [str(n), "paired" if paired else "unpaired", str(trials)]
            cells += [f"{r[k]:.1%}" for k in ("3%", "5%", "model", "false+", "covered")]
            print("  " + " ".join(f"{c:>9}" for c in cells))
    print("\ngoal: 5% det >= 95% and false+ <= 5% (paired, the report's test for one run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds-recorded", type=int, default=60, help="rounds to record")
    parser.add_argument("--rounds", default="10,20,30",
                        help="rounds drawn per trial, comma-separated (the budget to assess)")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the runtime's, as Measure.threads)")
    parser.add_argument("--save", type=Path, help="write the recorded processes here")
    parser.add_argument("--load", type=Path, help="analyse a recording instead of measuring")
    args = parser.parse_args()
    try:
        round_counts = [int(x) for x in args.rounds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--rounds {args.rounds!r}: comma-separated whole numbers expected")
    if not round_counts or min(round_counts) < 1:
        parser.error("--rounds: at least one count, each at least 1")
    if args.load:
        rec = json.loads(args.load.read_text())
        if "again" not in (rec.get("rounds") or [{}])[0]:
            parser.error(f"{args.load} was recorded by the block design (no A' per round): "
                         "record again with this version")
    else:
        rec = record(args.rounds_recorded, Measure(threads=args.threads))
    if args.save:
        args.save.write_text(json.dumps(rec))
    report(rec, args.trials, round_counts)


if __name__ == "__main__":
    main()
