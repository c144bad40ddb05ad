"""How much the harness's timing loop adds to a bare `session.run` loop (target: < 2 %).

Both loops time the same onnxruntime session (same session options), on the same inputs
(the harness's generator), for the same number of iterations, each iteration with two
time.perf_counter() reads. They alternate for several rounds so that drift (thermal, other
processes) hits both alike; the figure is the median over rounds of each loop's p50.

    python benchmarks/harness_overhead.py [--model cnn] [--iterations 200] [--rounds 7]

`--concurrency N` compares the offline scenario instead: the harness's
`measure.concurrent_loop` (N threads behind a barrier, a shared count under a lock) against
N hand-written threads that each run their share of the iterations with no shared state; the
figures are requests per second (completed requests / wall time) and p50.

`--subprocess` also runs the whole harness (`python -m harness`, fresh processes) for a
figure that includes everything the harness does around the loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envmatrix_harness import measure  # noqa: E402 - the checkout's harness, not an installed one
from envmatrix_harness.inputs import make_inputs  # noqa: E402


def bare_loop(run: Callable[..., Any], feed: dict[str, np.ndarray], count: int) -> list[float]:
    """The loop a person would write by hand: preallocated, fixed count."""
    perf = time.perf_counter
    latencies = [0.0] * count
    for index in range(count):
        t0 = perf()
        run(None, feed)
        latencies[index] = perf() - t0
    return latencies


def harness_loop(run: Callable[..., Any], feed: dict[str, np.ndarray], count: int) -> list[float]:
    latencies, _ = measure.timed_loop(run, (None, feed), count, 0.0)
    return latencies


def bare_threads(run: Callable[..., Any], feed: dict[str, np.ndarray], count: int,
                 concurrency: int) -> tuple[list[float], float]:
    """N threads by hand, a fixed share each, nothing shared: (latencies, wall seconds)."""
    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    out: list[list[float]] = [[] for _ in shares]
    threads = [threading.Thread(target=lambda i=i: out[i].extend(bare_loop(run, feed,
                                                                           shares[i])))
               for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [lat for part in out for lat in part], time.perf_counter() - start


def harness_threads(run: Callable[..., Any], feed: dict[str, np.ndarray], count: int,
                    concurrency: int) -> tuple[list[float], float]:
    return measure.concurrent_loop(run, (None, feed), concurrency, count, 0.0)


def offline(model: Path, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """(requests/s, p50) per round of each loop, alternating which goes first."""
    session = make_session(model, args.threads)
    feed = feed_for(session, args.shapes)
    run = session.run
    measure.concurrent_warm_up(run, (None, feed), args.concurrency, args.warmup)
    figures: dict[str, list[tuple[float, float]]] = {"harness": [], "bare": []}
    loops = [("harness", harness_threads), ("bare", bare_threads)]
    for round_index in range(args.rounds):
        for name, loop in (loops[::-1] if round_index % 2 else loops):
            latencies, wall = loop(run, feed, args.iterations, args.concurrency)
            figures[name].append((len(latencies) / wall, float(np.percentile(latencies, 50))))
    return figures


def report_offline(model: Path, args: argparse.Namespace) -> None:
    figures = offline(model, args)
    print(f"model {args.model}: {args.rounds} alternating rounds x {args.iterations} requests, "
          f"{args.concurrency} in flight, same session and inputs")
    for name, rows in figures.items():
        print(f"  {name:7} requests/s per round: " + " ".join(f"{r:.1f}" for r, _ in rows))
    pairs = list(zip(figures["harness"], figures["bare"]))
    rate = statistics.median(h[0] / b[0] for h, b in pairs)
    p50 = statistics.median(h[1] / b[1] for h, b in pairs)
    print(f"harness/bare median paired ratio: requests/s {rate:.4f} ({(rate - 1) * 100:+.2f} %)"
          f" | p50 {p50:.4f} ({(p50 - 1) * 100:+.2f} %)")


def make_session(model: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def feed_for(session: Any, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    specs = [(arg.name, arg.type, arg.shape) for arg in session.get_inputs()]
    return dict(make_inputs(specs, 0, shapes))


def in_process(model: Path, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    session = make_session(model, args.threads)
    feed = feed_for(session, args.shapes)
    run = session.run
    for _ in range(args.warmup):
        run(None, feed)
    harness_p50: list[float] = []
    bare_p50: list[float] = []
    for round_index in range(args.rounds):
        pair = [("harness", harness_loop), ("bare", bare_loop)]
        if round_index % 2:  # alternate which goes first
            pair.reverse()
        for name, loop in pair:
            p50 = float(np.percentile(loop(run, feed, args.iterations), 50))
            (harness_p50 if name == "harness" else bare_p50).append(p50)
    return harness_p50, bare_p50


def whole_harness(model: Path, args: argparse.Namespace) -> float:
    """p50 of `python -m harness` (fresh processes) over the same iteration count."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "r.json"
        command = [sys.executable, "-m", "envmatrix_harness", "--model", str(model), "--warmup",
                   str(args.warmup), "--min-iterations", str(args.iterations), "--min-time",
                   "0", "--repeats", "3", "--out", str(out)]
        for name, dims in args.shapes.items():
            command += ["--shape", f"{name}={','.join(map(str, dims))}"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        subprocess.run(command, check=True, cwd=str(REPO), capture_output=True)
        return float(json.loads(out.read_text())["summary"]["latency_s"]["p50"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", help="zoo model name or an .onnx path")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight: above 1, compare the offline loop")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2")
    parser.add_argument("--subprocess", action="store_true",
                        help="also time the whole harness in fresh processes")
    args = parser.parse_args(argv)
    args.shapes = {item.split("=")[0]: tuple(int(d) for d in item.split("=")[1].split(","))
                   for item in args.shape}
    return args


def resolve_model(name: str, folder: Path) -> Path:
    if name.endswith(".onnx"):
        return Path(name)
    from envmatrix.inputs import zoo

    return Path(zoo.write_model(name, folder).onnx_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = resolve_model(args.model, Path(folder))
        if args.concurrency > 1:
            report_offline(model, args)
            return 0
        harness_p50, bare_p50 = in_process(model, args)
        h, b = statistics.median(harness_p50), statistics.median(bare_p50)
        print(f"model {args.model}: {args.rounds} alternating rounds x {args.iterations} "
              f"iterations, same session and inputs")
        print("  harness p50 per round (ms): " + " ".join(f"{v * 1e3:.3f}" for v in harness_p50))
        print("  bare    p50 per round (ms): " + " ".join(f"{v * 1e3:.3f}" for v in bare_p50))
        # rounds are paired (adjacent in time), so the median of per-round ratios is the
        # figure least disturbed by drift and by other load on the machine
        paired = statistics.median(x / y for x, y in zip(harness_p50, bare_p50))
        print(f"harness loop p50 {h * 1e3:.3f} ms | bare loop p50 {b * 1e3:.3f} ms | "
              f"ratio of medians {h / b:.4f} | median paired ratio {paired:.4f} "
              f"({(paired - 1) * 100:+.2f} %)")
        if args.subprocess:
            whole = whole_harness(model, args)
            print(f"whole harness (python -m harness, 3 fresh processes) p50 {whole * 1e3:.3f} "
                  f"ms | ratio to bare loop {whole / b:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
