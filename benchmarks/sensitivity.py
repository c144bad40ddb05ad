"""How sensitive is the verdict at the default measurement budget on this machine?

Prints two figures (not a timed test):
- detection rate: how often a real ~5% slowdown gets the verdict "slower" (goal >= 95%);
- false-positive rate: how often one unchanged model measured twice gets "faster" or "slower"
  (goal <= 5%);
plus the same rates for other effect floors and round counts, the unpaired test on the same
processes for comparison, and how often the paired bootstrap interval covers the true ratio.

How the slowdown is made real: a model of BLOCKS identical MatMul+Relu blocks (the baseline A)
and the same model with BLOCKS/20 more blocks (5% more work). Its true slowdown is measured
over every recorded round and printed (the calibration). No hook in the harness: the extra
work is in the model.

How the processes are recorded: like `envmatrix.runner` measures a matrix, in interleaved
rounds. Each round runs one fresh process each of A, the slow model and A again (A'), in an
order that rotates from round to round, with the harness's own timing loop
(`harness.measure.warm_up` / `timed_loop`) and the default Measure settings (10 warm-up
iterations, then at least 50 iterations and 1 s). Whatever the machine's speed does over
minutes, the three processes of a round see nearly the same of it.

How the trials are made: measuring hundreds of full matrices would take hours on 2 cores, so a
trial draws ROUNDS_PER_TRIAL whole rounds with replacement (10: the default matrix's rounds,
one process per cell and round) and applies the verdict rule of envmatrix.stats for cells
measured in the same rounds: the Wilcoxon signed-rank test over the per-round log p50 ratios,
the median ratio as the effect, the minimum-effect floor. Detection: slow vs A is "slower".
False positive: A' vs A is anything but "no significant change".

Usage: python benchmarks/sensitivity.py [--rounds 60] [--threads 1] [--save rec.json |
--load rec.json]. On a machine shared with other work, the load average is printed with the
figures: the goals are for a machine that measures one thing at a time.
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

from envmatrix.plan import Measure  # noqa: E402
from envmatrix.stats import (  # noqa: E402
    SLOWER,
    UNCHANGED,
    VerdictRules,
    decide,
    min_rounds_for,
    paired_effect,
    paired_log_ratios,
    repeats_p_value,
    rounds_p_value,
)

BLOCKS = 20  # the slow model has BLOCKS + 1 blocks: 5% more work
BATCH, WIDTH = 32, 384
SIDES = ("base", "slow", "again")  # A, the slow model, A measured a second time (A')
ROUNDS_PER_TRIAL = Measure().round_count  # the default matrix's rounds: 10

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


def as_result(p50s: np.ndarray) -> dict[str, Any]:
    """A result dict whose round r holds one repeat of p50 p50s[r]: what stats reads."""
    return {"repeats": [{"round": r, "latencies_s": [float(v)]} for r, v in enumerate(p50s)]}


def paired_verdict(base: np.ndarray, cand: np.ndarray, rules: VerdictRules) -> str:
    """The verdict word of envmatrix.stats for two cells measured in the same rounds."""
    logs = paired_log_ratios(as_result(base), as_result(cand))
    if logs.size < min_rounds_for(rules.alpha):
        return UNCHANGED  # stats would fall back to the unpaired test: not this design
    return decide(float(np.exp(np.median(logs))), rounds_p_value(logs), rules)


def unpaired_verdict(base: np.ndarray, cand: np.ndarray, rules: VerdictRules) -> str:
    """The Mann-Whitney rule on the same processes, ignoring their rounds."""
    return decide(float(np.median(cand) / np.median(base)), repeats_p_value(base, cand), rules)


def rates(table: dict[str, np.ndarray], n: int, trials: int, rules: VerdictRules,
          paired: bool = True, seed: int = 2) -> tuple[float, float]:
    """(detection, false positives) over trials of n whole rounds drawn with replacement."""
    rng = np.random.default_rng(seed)
    rule = paired_verdict if paired else unpaired_verdict
    detected = false_pos = 0
    for _ in range(trials):
        pick = rng.integers(0, table["base"].size, size=n)
        base = table["base"][pick]
        detected += rule(base, table["slow"][pick], rules) == SLOWER
        false_pos += rule(base, table["again"][pick], rules) != UNCHANGED
    return detected / trials, false_pos / trials


def ci_coverage(table: dict[str, np.ndarray], truth: float, n: int, trials: int,
                rules: VerdictRules) -> float:
    """How often the paired bootstrap interval of n drawn rounds covers the true ratio."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(trials):
        pick = rng.integers(0, table["base"].size, size=n)
        logs = np.log(table["slow"][pick] / table["base"][pick])
        _, low, high = paired_effect(logs, rules, rng)
        covered += low <= truth <= high
    return covered / trials


def describe(rec: dict[str, Any], table: dict[str, np.ndarray]) -> float:
    """Print what was recorded and the calibration; returns the true slowdown ratio."""
    rounds = rec["rounds"]
    iterations = sum(len(r[s]["latencies_s"]) for r in rounds for s in SIDES)
    print(f"recorded: {len(rounds)} interleaved rounds x (A, slow, A') fresh processes, "
          f"{iterations} iterations; settings {rec['measure']}; load average before "
          f"{rec.get('load_before')}, after {rec.get('load_after')}, nice {rec.get('nice')}")
    truth = float(np.median(table["slow"] / table["base"]))
    pooled = float(np.median(table["slow"]) / np.median(table["base"]))
    print(f"baseline p50 {np.median(table['base']) * 1e3:.3f} ms; true slowdown of the slow "
          f"model (median of the per-round ratios over all rounds): {truth - 1:+.2%}; of the "
          f"medians: {pooled - 1:+.2%} (calibration)")
    base = table["base"]
    print(f"drift: A's per-round p50 spans {base.min() * 1e3:.3f}..{base.max() * 1e3:.3f} ms "
          f"(CV {np.std(base, ddof=1) / np.mean(base):.2%} across rounds); within a round, "
          f"A' vs A differ by a median {np.median(np.abs(table['again'] / base - 1)):.2%}")
    return truth


def report(rec: dict[str, Any], trials: int) -> None:
    table = p50_table(rec)
    truth = describe(rec, table)
    rules = VerdictRules()
    n = ROUNDS_PER_TRIAL
    det, fp = rates(table, n, trials, rules)
    print(f"\ndefault rule (alpha {rules.alpha}, min_effect {rules.min_effect:.0%}), {n} rounds "
          f"of one process per cell, {trials} trials:")
    print(f"  paired (Wilcoxon over rounds): detection {det:.1%}, false positives {fp:.1%}")
    det_u, fp_u = rates(table, n, trials, rules, paired=False)
    print(f"  unpaired (Mann-Whitney, same processes): detection {det_u:.1%}, false positives "
          f"{fp_u:.1%}")
    print(f"\npaired rule by rounds and floor ({trials} trials each): detection / false "
          f"positives")
    print(f"  {'rounds':>6} {'min_effect':>10} {'detect':>8} {'false+':>8}")
    for count in (6, 8, 10, 15, 20):
        for floor in (0.0, 0.02, 0.03):
            d, f = rates(table, count, trials, VerdictRules(min_effect=floor))
            print(f"  {count:>6} {floor:>10.0%} {d:>8.1%} {f:>8.1%}")
    cov = ci_coverage(table, truth, n, 200, VerdictRules(n_boot=1000))
    print(f"\n95% paired bootstrap CI of the p50 ratio covers the true ratio in {cov:.0%} of "
          f"200 trials of {n} rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60, help="rounds to record")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the runtime's, as Measure.threads)")
    parser.add_argument("--save", type=Path, help="write the recorded processes here")
    parser.add_argument("--load", type=Path, help="analyse a recording instead of measuring")
    args = parser.parse_args()
    if args.load:
        rec = json.loads(args.load.read_text())
        if "again" not in (rec.get("rounds") or [{}])[0]:
            parser.error(f"{args.load} was recorded by the block design (no A' per round): "
                         "record again with this version")
    else:
        rec = record(args.rounds, Measure(threads=args.threads))
    if args.save:
        args.save.write_text(json.dumps(rec))
    report(rec, args.trials)


if __name__ == "__main__":
    main()
