"""How sensitive is the verdict at the default measurement budget on this machine?

Prints two figures (not a timed test):
- detection rate: how often a real 5% slowdown gets the verdict "slower" (goal >= 95%);
- false-positive rate: how often one unchanged model measured twice gets "faster" or "slower"
  (goal <= 5%);
plus the same rates for other effect floors and repeat counts, and how often the bootstrap
interval covers the true ratio.

How the slowdown is made real: a model of BLOCKS identical MatMul+Relu blocks (the baseline)
and the same model with BLOCKS/20 more blocks (5% more work). Its true slowdown is measured
over every recorded process and printed (the calibration). No hook in the harness: the
extra work is in the model.

How the trials are made: the two models are measured in fresh processes with the harness's own
timing loop (`harness.measure.warm_up` / `timed_loop`, the default Measure settings: 10
warm-up iterations, then at least 50 iterations and 1 s), in rounds of REPEATS baseline
processes followed by REPEATS slow processes, like a run measures one cell after another.
Measuring hundreds of full cells would take hours on 2 cores, so the trials then resample
these recorded processes: a trial draws REPEATS processes of each side without replacement and
applies the verdict rule of envmatrix.stats. "Unchanged measured twice" draws both sides from
the baseline's processes (two disjoint sets); "paired rounds" uses whole rounds as recorded
(round i against round j), which keeps the drift between rounds that resampling hides.

Usage: python benchmarks/sensitivity.py [--rounds 10] [--save rec.json | --load rec.json]
On a machine shared with other work, the load average is printed with the figures: the goals
are for a machine that measures one thing at a time (`nice -n -10` approximates one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from envmatrix.model import Measure  # noqa: E402
from envmatrix.stats import (  # noqa: E402
    VerdictRules,
    comparison_rng,
    decide,
    ratio_cis,
    repeats_p_value,
)

BLOCKS = 20  # the slow model has BLOCKS + 1 blocks: 5% more work
BATCH, WIDTH = 32, 384
SLOWER = "slower"

CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from harness.measure import timed_loop, warm_up
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


def record(rounds: int, m: Measure) -> dict[str, Any]:
    """rounds x (repeats baseline processes, then repeats slow processes)."""
    tmp = Path(tempfile.mkdtemp(prefix="envmatrix-sensitivity-"))
    base_model, slow_model = tmp / "base.onnx", tmp / "slow.onnx"
    build_model(BLOCKS, base_model)
    build_model(BLOCKS + BLOCKS // 20, slow_model)
    rec: dict[str, Any] = {"rounds": [], "measure": {
        "warmup": m.warmup, "min_iterations": m.min_iterations, "min_time_s": m.min_time_s,
        "repeats": m.repeats, "threads": m.threads}}
    rec["load_before"] = os.getloadavg()
    for r in range(rounds):
        started = time.monotonic()
        base = [measure_process(base_model, m) for _ in range(m.repeats)]
        slow = [measure_process(slow_model, m) for _ in range(m.repeats)]
        rec["rounds"].append({"base": base, "slow": slow})
        print(f"round {r + 1}/{rounds}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    rec["load_after"] = os.getloadavg()
    rec["nice"] = os.nice(0)
    return rec


def _p50s(procs: list[dict[str, Any]]) -> np.ndarray:
    return np.array([np.percentile(p["latencies_s"], 50) for p in procs])


def _pooled_p50(procs: list[dict[str, Any]]) -> float:
    return float(np.percentile(np.concatenate([p["latencies_s"] for p in procs]), 50))


def verdict(base: list[dict[str, Any]], cand: list[dict[str, Any]], rules: VerdictRules) -> str:
    """The verdict word envmatrix.stats gives these processes (the rule, without the CI)."""
    ratio = _pooled_p50(cand) / _pooled_p50(base)
    return decide(ratio, repeats_p_value(_p50s(base), _p50s(cand)), rules)


def resampled_rates(pool_a: list[Any], pool_b: list[Any], n: int, trials: int,
                    rules: VerdictRules, seed: int, same_pool: bool) -> tuple[float, float]:
    """(share 'slower', share of any change) over trials drawing n processes a side."""
    rng = np.random.default_rng(seed)
    slower = changed = 0
    for _ in range(trials):
        if same_pool:  # two disjoint draws from one pool: the unchanged case
            idx = rng.permutation(len(pool_a))[: 2 * n]
            a, b = [pool_a[i] for i in idx[:n]], [pool_a[i] for i in idx[n:]]
        else:
            a = [pool_a[i] for i in rng.permutation(len(pool_a))[:n]]
            b = [pool_b[i] for i in rng.permutation(len(pool_b))[:n]]
        word = verdict(a, b, rules)
        slower += word == SLOWER
        changed += word != "no significant change"
    return slower / trials, changed / trials


def ci_coverage(pool_a: list[Any], pool_b: list[Any], truth: float, n: int, trials: int,
                rules: VerdictRules) -> float:
    rng = np.random.default_rng(1)
    covered = 0
    for t in range(trials):
        a = [np.asarray(pool_a[i]["latencies_s"]) for i in rng.permutation(len(pool_a))[:n]]
        b = [np.asarray(pool_b[i]["latencies_s"]) for i in rng.permutation(len(pool_b))[:n]]
        low, high = ratio_cis(a, b, rules, comparison_rng(rules, "a", str(t)))["p50"]
        covered += low <= truth <= high
    return covered / trials


def report(rec: dict[str, Any], trials: int) -> None:
    rounds = rec["rounds"]
    base_pool = [p for r in rounds for p in r["base"]]
    slow_pool = [p for r in rounds for p in r["slow"]]
    n = int(rec["measure"]["repeats"])
    truth = _pooled_p50(slow_pool) / _pooled_p50(base_pool)
    cvs = [float(np.std(_p50s(r["base"]), ddof=1) / np.mean(_p50s(r["base"]))) for r in rounds]
    rules = VerdictRules()
    print(f"recorded: {len(rounds)} rounds x ({n} baseline + {n} slow) fresh processes, "
          f"{sum(len(p['latencies_s']) for p in base_pool + slow_pool)} iterations; settings "
          f"{rec['measure']}; load average before {rec.get('load_before')}, after "
          f"{rec.get('load_after')}, nice {rec.get('nice')}")
    print(f"baseline p50 {_pooled_p50(base_pool) * 1e3:.3f} ms; true slowdown of the slow "
          f"model over all processes: {truth - 1:+.2%} (calibration)")
    print(f"CV of the {n} repeat p50s within a round: median {np.median(cvs):.2%}, "
          f"max {max(cvs):.2%}")
    pairs = list(combinations(range(len(rounds)), 2))
    det = [verdict(rounds[i]["base"], rounds[j]["slow"], rules) == SLOWER
           for i in range(len(rounds)) for j in range(len(rounds))]
    fp = [verdict(rounds[i]["base"], rounds[j]["base"], rules) != "no significant change"
          for i, j in pairs]
    print(f"\ndefault rule {rules.alpha=} {rules.min_effect=}, {n} repeats:")
    print(f"  paired rounds: detection {np.mean(det):.1%} of {len(det)} pairs; false "
          f"positives {np.mean(fp):.1%} of {len(fp)} pairs")
    print(f"\nresampled, {trials} trials each: detection (5% slower -> 'slower') / false "
          f"positives (unchanged -> any change)")
    print(f"  {'repeats':>7} {'min_effect':>10} {'detect':>8} {'false+':>8}")
    for reps in sorted({3, 4, n, 7, 10}):
        if 2 * reps > len(base_pool):
            continue
        for floor in (0.0, 0.02, 0.03, 0.04):
            r = VerdictRules(min_effect=floor)
            det_rate, _ = resampled_rates(base_pool, slow_pool, reps, trials, r, 2, False)
            _, fp_rate = resampled_rates(base_pool, base_pool, reps, trials, r, 3, True)
            print(f"  {reps:>7} {floor:>10.0%} {det_rate:>8.1%} {fp_rate:>8.1%}")
    cov = ci_coverage(base_pool, slow_pool, truth, n, 100, VerdictRules(n_boot=1000))
    print(f"\n95% bootstrap CI of the p50 ratio covers the true ratio in {cov:.0%} of 100 "
          f"resampled trials")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the runtime's, as Measure.threads)")
    parser.add_argument("--save", type=Path, help="write the recorded processes here")
    parser.add_argument("--load", type=Path, help="analyse a recording instead of measuring")
    args = parser.parse_args()
    if args.load:
        rec = json.loads(args.load.read_text())
    else:
        rec = record(args.rounds, Measure(threads=args.threads))
    if args.save:
        args.save.write_text(json.dumps(rec))
    report(rec, args.trials)


if __name__ == "__main__":
    main()
