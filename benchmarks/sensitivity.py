"""How sensitive is the sequential verdict here, and what equivalence margin can it reach?

Records (or loads) interleaved rounds of real processes, then replays the report's own verdict
procedure (`envmatrix.analysis.stats.compare_units`, paired, on p50; docs/report.md) on them
and prints, for true changes of 0, 2, 3, 5, 10 and 30% and for the real slow model, side by
side for the adaptive procedure (a look every `--look-every` rounds up to `--budget`, the
first settled look decides) and the fixed budget (one look after `--budget` rounds):
- the shares called slower (found), equivalent, faster (the wrong side) and inconclusive, and
  at 0% the false-alarm share (faster or slower);
- the mean rounds used (the rounds at the deciding look: always the budget for the fixed one);
- how often the interval at the deciding look holds the true change;
and, for A' against A (no change), the interval's half-width max(|low - 1|, |high - 1|) at the
end of the fixed budget and at each look of the adaptive one (median, 90th percentile): the
equivalence margin this machine can reach, to choose `verdict.equivalence` from a measurement.

How the changes are made real: the baseline A is a model of BLOCKS identical MatMul+Relu
blocks; every round also measures the same model again in a separate process (A') and a model
with BLOCKS/20 more blocks (5% more work; its true slowdown, the median of its per-round
ratios over all recorded rounds, is printed as a calibration). A true change s is A' with its
latencies multiplied by 1 + s against A: real process-to-process and round-to-round noise,
exactly known truth (1 + s, since A and A' are the same model; the recording's own A'/A median
over all rounds is printed: how far this one recording sits from that truth).

How the processes are recorded: like `envmatrix.running.runner` measures a matrix, in interleaved
rounds. Each round runs one fresh process each of A, the slow model and A', in an order that
rotates from round to round, with the harness's own timing loop (`harness.measure.warm_up` /
`timed_loop`) and the default Measure settings (10 warm-up iterations, then at least 50
iterations and 1 s). Whatever the machine's speed does over minutes, the three processes of a
round see nearly the same of it.

How the trials are made (`--draw`): measuring hundreds of full matrices would take hours on 2
cores, so each trial replays one comparison on `--budget` whole rounds of the recording, in the
order the looks see them:
- `subsets` (default): `--budget` distinct rounds drawn WITHOUT replacement, in random order.
  No round repeats within a trial, as in a real run (drawing with replacement repeats rounds:
  a trial's median then spreads around the recording's by the full bootstrap spread, on top of
  the recording's own offset from the truth, and repeated values tie the order statistics; with
  the earlier bootstrap interval such a replay reported 95% intervals covering a true 5% change
  only 66-81% of the time). What it does not
  measure: the trials are NOT independent. Any two share budget**2 / recorded rounds on
  average (20 of 40 from 80), and all of them share the recording's own offset from the truth
  (its A'/A median). A subset's median spreads around the recording's median by about
  1 - budget/recorded of what independent rounds would give (finite-population correction);
  the recording's offset adds the rest, so over many recordings the spread is right, but the
  shares printed describe this one recording and lean toward its offset. More trials only
  smooth the draw: they do not make a share more certain than `recorded` rounds allow.
  Random order also mixes away the time order: a real run's first looks see consecutive
  rounds, which share the machine's slow drift.
- `windows`: every run of `--budget` consecutive rounds in time order (recorded - budget + 1
  windows, overlapping almost entirely: 41 trials from 80 rounds): the drift as a real run
  sees it, but very few distinct trials.
- `replacement`: the old replay, rounds drawn with replacement; kept to show the flaw above.

Usage: python benchmarks/sensitivity.py [--rounds-recorded 80] [--threads 1]
[--save rec.json | --load rec.json] [--budget 40] [--look-every 8] [--equivalence 0.05]
[--trials 1000] [--draw subsets|windows|replacement] [--seed 2]. The command line, the trials
each figure rests on and the load average are printed with the figures: the verdict's
guarantees are for a machine that measures one thing at a time. Recording takes ~4 s a round;
short checks (seconds): `--load rec.json --trials 20`, or, recording,
`--rounds-recorded 4 --budget 4 --look-every 2 --trials 20`.
"""

from __future__ import annotations

import argparse
import json
import math
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

from envmatrix.analysis import sequential  # noqa: E402
from envmatrix.analysis.stats import (  # noqa: E402
    EQUIVALENT,
    FASTER,
    INCONCLUSIVE,
    SLOWER,
    RatioCI,
    VerdictRules,
    compare_units,
)
from envmatrix.rundir.plan import Measure  # noqa: E402

BLOCKS = 20  # the slow model has BLOCKS + 1 blocks: 5% more work
BATCH, WIDTH = 32, 384
SIDES = ("base", "slow", "again")  # A, the slow model, A measured a second time (A')
CHANGES = (0.0, 0.02, 0.03, 0.05, 0.10, 0.30)  # true changes made from A' by scaling it
DRAWS = ("subsets", "windows", "replacement")  # how a trial's rounds are drawn (docstring)
WORDS = (SLOWER, EQUIVALENT, FASTER, INCONCLUSIVE)

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


def draws(recorded: int, budget: int, trials: int, how: str, seed: int) -> list[np.ndarray]:
    """The round indices of each trial, in the order its looks see them (module docstring)."""
    rng = np.random.default_rng(seed)
    if how == "windows":
        return [np.arange(start, start + budget) for start in range(recorded - budget + 1)]
    if how == "replacement":
        return [rng.integers(0, recorded, size=budget) for _ in range(trials)]
    return [rng.permutation(recorded)[:budget] for _ in range(trials)]


def compare(base: np.ndarray, cand: np.ndarray, rules: VerdictRules) -> RatioCI:
    """The report's paired procedure on two cells measured in the same rounds, in this order."""
    return compare_units("base", dict(enumerate(base.tolist())), "cand",
                         dict(enumerate(cand.tolist())), True, rules, "p50")


def half_width(low: float, high: float) -> float:
    """How far from 1 the interval reaches: the smallest margin it would be equivalent at."""
    return max(abs(low - 1.0), abs(high - 1.0))


def margin_needed(low: float, high: float) -> float:
    """The smallest verdict.equivalence m that calls this interval equivalent: the product's
    margin is symmetric on the log scale, [1 / (1 + m), 1 + m] (stats.decide_interval)."""
    return max(1.0 / low - 1.0 if low > 0 else math.inf, high - 1.0)


def look_intervals(base: np.ndarray, cand: np.ndarray,
                   rules: VerdictRules) -> list[tuple[float, float]]:
    """The interval (low, high) at every planned look (the design the procedure reads with,
    `VerdictRules.design_for`, and its order-statistic interval, `sequential.sign_interval`),
    whether or not the comparison would have stopped before: infinite where none is finite."""
    look_design, looks = rules.design_for(base.size)
    logs = np.log(cand) - np.log(base)
    intervals = []
    for look in looks:
        low, high = sequential.sign_interval(logs[:look], look_design.rank_at(look))
        intervals.append((math.exp(low), math.exp(high)))
    return intervals


class Tally:
    """One row of the table: verdict words, rounds used and coverage over the trials."""

    def __init__(self) -> None:
        self.words: dict[str, int] = dict.fromkeys(WORDS, 0)
        self.rounds: list[int] = []
        self.covered = 0

    def add(self, ci: RatioCI, truth: float) -> None:
        self.words[ci.verdict or INCONCLUSIVE] = self.words.get(ci.verdict or INCONCLUSIVE,
                                                                0) + 1
        self.rounds.append(int(ci.look or 0))
        self.covered += ci.low <= truth <= ci.high

    @property
    def trials(self) -> int:
        return len(self.rounds)

    def share(self, word: str) -> float:
        return self.words.get(word, 0) / self.trials


def replay(table: dict[str, np.ndarray], picks: list[np.ndarray], procedures: dict[str,
           VerdictRules], model_truth: float) -> tuple[dict[tuple[str, str], Tally],
                                                       dict[str, list[list[tuple[float, float]]]]]:
    """Every trial through every procedure: a Tally per (change, procedure), and per
    procedure the intervals of A' vs A at each of its looks (one list per trial)."""
    tallies: dict[tuple[str, str], Tally] = {}
    widths: dict[str, list[list[tuple[float, float]]]] = {name: [] for name in procedures}
    for pick in picks:
        base, again = table["base"][pick], table["again"][pick]
        cases = [(f"{s:.0%}", again * (1.0 + s), 1.0 + s) for s in CHANGES]
        cases.append(("model", table["slow"][pick], model_truth))
        for name, rules in procedures.items():
            for label, cand, truth in cases:
                tallies.setdefault((label, name), Tally()).add(compare(base, cand, rules), truth)
            widths[name].append(look_intervals(base, again, rules))
    return tallies, widths


def describe(rec: dict[str, Any], table: dict[str, np.ndarray]) -> float:
    """Print what was recorded and the calibration; returns the slow model's true ratio."""
    rounds = rec["rounds"]
    iterations = sum(len(r[s]["latencies_s"]) for r in rounds for s in SIDES)
    print(f"recorded: {len(rounds)} interleaved rounds x (A, slow, A') fresh processes, "
          f"{iterations} iterations; settings {rec['measure']}; load average before "
          f"{_load(rec.get('load_before'))}, after {_load(rec.get('load_after'))}, "
          f"nice {rec.get('nice')}")
    # The paired verdict estimates the median of the per-round ratios (envmatrix.analysis.stats).
    truth = float(np.exp(np.median(np.log(table["slow"] / table["base"]))))
    offset = float(np.exp(np.median(np.log(table["again"] / table["base"]))))
    print(f"baseline p50 {np.median(table['base']) * 1e3:.3f} ms; true slowdown of the slow "
          f"model (median of the per-round ratios over all rounds, the statistic the paired "
          f"verdict estimates): {truth - 1:+.2%}; ratio of the medians: "
          f"{np.median(table['slow']) / np.median(table['base']) - 1:+.2%} (calibration)")
    base = table["base"]
    print(f"drift: A's per-round p50 spans {base.min() * 1e3:.3f}..{base.max() * 1e3:.3f} ms "
          f"(CV {np.std(base, ddof=1) / np.mean(base):.2%} across rounds); within a round, "
          f"A' vs A differ by a median {np.median(np.abs(table['again'] / base - 1)):.2%}; "
          f"this recording's A'/A median over all rounds: {offset - 1:+.2%} (truth: 0)")
    return truth


def _load(values: Any) -> str:
    return "n/a" if not values else " ".join(f"{v:.2f}" for v in values)


def _pct(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.1%}"


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))


def report(rec: dict[str, Any], args: argparse.Namespace) -> None:
    table = p50_table(rec)
    model_truth = describe(rec, table)
    recorded = len(rec["rounds"])
    procedures = {
        "adaptive": VerdictRules(budget=args.budget, look_every=args.look_every,
                                 equivalence=args.equivalence),
        "fixed": VerdictRules(budget=args.budget, look_every=None,
                              equivalence=args.equivalence),
    }
    picks = draws(recorded, args.budget, args.trials, args.draw, args.seed)
    trials = len(picks)
    rules = procedures["adaptive"]
    ad_design, ad_looks = rules.design_for(args.budget)
    fx_design, _ = procedures["fixed"].design_for(args.budget)
    print(f"\nverdict: stats.compare_units, paired, p50; error rate {rules.alpha:.0%} over all "
          f"looks, min_effect {rules.min_effect:.0%}, equivalence +-{rules.equivalence:.0%}")
    print(f"  adaptive: looks at {', '.join(map(str, ad_looks))} rounds, order statistic "
          f"{', '.join(map(str, ad_design.ranks))} from each end (joint miss probability "
          f"{ad_design.error:.2%}); fixed: one look at {args.budget} rounds, order statistic "
          f"{fx_design.ranks[0]} from each end ({fx_design.error:.2%})")
    shared = args.budget ** 2 / recorded
    what = {
        "subsets": (f"{args.budget} distinct rounds of the {recorded} recorded, drawn without "
                    f"replacement in random order"),
        "windows": f"every {args.budget} consecutive rounds of the {recorded}, in time order",
        "replacement": (f"{args.budget} rounds drawn WITH replacement from the {recorded} "
                        f"(rounds repeat within a trial: intervals too narrow)"),
    }[args.draw]
    print(f"trials: {trials} per row, each {what}.")
    if args.draw != "windows":
        print(f"  Trials are not independent: two share ~{shared:.0f} rounds on average and "
              f"all share this recording's offset; the shares describe this one recording of "
              f"{recorded} rounds (module docstring), not a spread over recordings.")
    else:
        print("  Consecutive windows overlap almost entirely: far fewer distinct trials than "
              "the count says.")
    tallies, widths = replay(table, picks, procedures, model_truth)

    print("\nverdicts per true change (A' scaled by 1 + change against A; model: the slow "
          f"model, its {model_truth - 1:+.2%} over all recorded rounds taken as the truth: "
          f"estimated from the same rounds, so its coverage is optimistic)")
    head = ["change", "procedure", "trials", "slower", "equivalent", "faster", "inconclusive",
            "false alarm", "mean rounds", "covers truth"]
    rows = []
    for label in [f"{s:.0%}" for s in CHANGES] + ["model"]:
        for name in procedures:
            t = tallies[(label, name)]
            alarm = t.share(SLOWER) + t.share(FASTER) if label == "0%" else None
            rows.append([label, name, str(t.trials), _pct(t.share(SLOWER)),
                         _pct(t.share(EQUIVALENT)), _pct(t.share(FASTER)),
                         _pct(t.share(INCONCLUSIVE)), "-" if alarm is None else _pct(alarm),
                         f"{np.mean(t.rounds):.1f}", _pct(t.covered / t.trials)])
    print_table(head, rows)
    print("  slower at a true slowdown: found; faster there: a false alarm on the wrong side; "
          "covers truth: the interval at the deciding look holds 1 + change "
          f"(goal {1 - rules.alpha:.0%})")

    print(f"\nequivalence margin this machine reaches: A' vs A (no change), the interval at "
          f"each look, whether or not the comparison would have stopped earlier ({trials} "
          f"trials each). half-width: max(|low-1|, |high-1|); margin needed: the smallest "
          f"verdict.equivalence m that calls it equivalent, max(1/low - 1, high - 1)")
    margins = (0.02, 0.03, 0.05, 0.075, 0.10)
    head = ["procedure", "rounds", "trials", "half-width median", "p90", "margin needed median",
            "p90"] + [f"equiv at {m:.1%}".replace(".0%", "%") for m in margins]
    rows = []
    for name in procedures:
        looks = procedures[name].design_for(args.budget)[1]
        per_look = np.array(widths[name], dtype=float)  # trials x looks x (low, high)
        for k, look in enumerate(looks):
            lows, highs = per_look[:, k, 0], per_look[:, k, 1]
            half = np.array([half_width(lo, hi) for lo, hi in zip(lows, highs)])
            need = np.array([margin_needed(lo, hi) for lo, hi in zip(lows, highs)])
            with np.errstate(invalid="ignore"):  # inf - inf between two infinite widths
                spots = [_pct(float(np.percentile(x, q))) for x in (half, need) for q in (50, 90)]
            rows.append([name, str(look), str(half.size)] + spots
                        + [_pct(float(np.mean(need <= m + 1e-12))) for m in margins])
    print_table(head, rows)
    print("  equiv at m: the share of trials whose interval lies inside [1/(1+m), 1+m] at that "
          "look: called equivalent there at verdict.equivalence m (fixed: at the end; "
          "adaptive: at that look, had it got that far). Half-widths are of one recording: "
          "the trials share its rounds (above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds-recorded", type=int, default=80, help="rounds to record")
    # --rounds: the earlier name (it took a list of budgets); one budget now.
    parser.add_argument("--budget", "--rounds", type=int, default=Measure().repeats,
                        help="rounds per trial: the most a comparison may take (default: "
                             "measure.repeats' default)")
    parser.add_argument("--look-every", type=int, default=sequential.LOOK_EVERY,
                        help="rounds between two looks of the adaptive procedure")
    parser.add_argument("--equivalence", type=float, default=VerdictRules().equivalence,
                        help="the equivalence margin to replay the verdicts at")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--draw", choices=DRAWS, default="subsets",
                        help="how a trial's rounds are drawn (module docstring)")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the runtime's, as Measure.threads)")
    parser.add_argument("--save", type=Path, help="write the recorded processes here")
    parser.add_argument("--load", type=Path, help="analyse a recording instead of measuring")
    args = parser.parse_args()
    if args.budget < 1 or args.look_every < 1 or args.trials < 1:
        parser.error("--budget, --look-every and --trials must be at least 1")
    if args.load:
        rec = json.loads(args.load.read_text())
        if "again" not in (rec.get("rounds") or [{}])[0]:
            parser.error(f"{args.load} was recorded by the block design (no A' per round): "
                         "record again with this version")
    else:
        rec = record(args.rounds_recorded, Measure(threads=args.threads))
    if args.save:
        args.save.write_text(json.dumps(rec))
    recorded = len(rec["rounds"])
    if args.draw != "replacement" and args.budget > recorded:
        parser.error(f"--budget {args.budget} is more than the {recorded} rounds recorded: "
                     f"drawing without replacement needs --budget <= {recorded}")
    print("command: " + " ".join(["python", *sys.argv]))
    print(f"load average now (1, 5, 15 min): {_load(os.getloadavg())}; cores: {os.cpu_count()}")
    report(rec, args)


if __name__ == "__main__":
    main()
