"""`python -m envmatrix COMMAND`: what the nox sessions call.

Exit codes: 0 all cells ok; 10 the run finished but some cells failed; 2 bad matrix.yaml or
arguments; 3 engine problem; 4 base image; 5 build; 6 run directory; 7 compare: the runs were
measured on different hardware; 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from envmatrix import __version__, config, pipeline
from envmatrix.errors import BuildError, CellsFailed, ConfigError, EnvmatrixError
from envmatrix.progress import Progress
from envmatrix.rundir import create_run_dir, open_run_dir

REPORTS_ROOT = Path("reports")
DEFAULT_MATRIX = Path("matrix.yaml")


def _plan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", type=Path, default=None,
                        help="the matrix file (default: matrix.yaml; with --resume, the run's)")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="keep only environments or cells whose id matches (repeatable)")
    parser.add_argument("--skip", action="append", default=[], metavar="GLOB",
                        help="drop environments or cells whose id matches (repeatable)")


def _run_args(parser: argparse.ArgumentParser, *, build_only: bool = False) -> None:
    _plan_args(parser)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="the run directory to create (default: reports/<run-id>)")
    parser.add_argument("--rebuild", action="store_true",
                        help="build every image again even when an identical one exists")
    if not build_only:
        parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                            help="finish an interrupted or partly failed run: only missing or "
                                 "failed cells run again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="envmatrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"envmatrix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_args(sub.add_parser("matrix", help="all stages: bases, builds, cells, report"))
    _run_args(sub.add_parser("run", help="bases, builds and cells, no report"))
    _run_args(sub.add_parser("build", help="bases and image builds only"), build_only=True)
    render_p = sub.add_parser("render", help="render the Dockerfiles, build nothing")
    _plan_args(render_p)
    render_p.add_argument("--out", type=Path, default=None, metavar="DIR")
    _plan_args(sub.add_parser("list", help="dry run: every cell id and build context id"))
    _run_args(sub.add_parser("lock", help="build from the pins and write <matrix>.lock.yaml"),
              build_only=True)
    report_p = sub.add_parser("report", help="rebuild the report of a run directory")
    report_p.add_argument("run_dir", type=Path, nargs="?", default=REPORTS_ROOT / "latest")
    compare_p = sub.add_parser("compare", help="compare two run directories")
    compare_p.add_argument("run_a", type=Path)
    compare_p.add_argument("run_b", type=Path)
    compare_p.add_argument("--out", type=Path, default=None, metavar="FILE")
    compare_p.add_argument("--allow-different-hardware", action="store_true",
                           help="compare runs whose CPUs differ (flagged in the report)")
    compare_p.add_argument("--map", action="append", default=[], type=_env_pair,
                           metavar="ENV_A=ENV_B", dest="mapping",
                           help="match environment ENV_A of run A with ENV_B of run B "
                                "(repeatable); other environments match by name")
    clean_p = sub.add_parser("clean", help="remove the containers and images envmatrix made")
    clean_p.add_argument("--bases", action="store_true",
                         help="also remove base images that envmatrix bootstrapped")
    return parser


def _env_pair(text: str) -> tuple[str, str]:
    """`--map ENV_A=ENV_B` -> (ENV_A, ENV_B); argparse turns the error into a usage message."""
    env_a, sep, env_b = text.partition("=")
    if not (sep and env_a.strip() and env_b.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ENV_A=ENV_B: give an environment id of run A, '=', and the "
            "environment id of run B it should be compared with")
    return env_a.strip(), env_b.strip()


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C: containers removed, finished results kept.
    raise KeyboardInterrupt


def _matrix_path(args: argparse.Namespace) -> Path:
    """The matrix file: as given, else the one a resumed run was made from, else matrix.yaml."""
    if args.matrix is not None:
        return Path(args.matrix)
    if getattr(args, "resume", None):
        return config.read_resolved(open_run_dir(args.resume).resolved_path).plan.source
    return DEFAULT_MATRIX


STOP_AFTER: dict[str, pipeline.Stop] = {"matrix": "report", "run": "run", "build": "build"}


def cmd_pipeline(args: argparse.Namespace, progress: Progress) -> int:
    """matrix / run / build: pipeline.run up to where the command stops."""
    request = pipeline.Request(
        matrix=_matrix_path(args), reports_root=REPORTS_ROOT, only=args.only, skip=args.skip,
        out=args.out, rebuild=args.rebuild, resume=getattr(args, "resume", None),
        stop_after=STOP_AFTER[args.command])
    try:
        outcome = pipeline.run(request, progress)
    except pipeline.Interrupted as stop:
        progress.fail("stop", str(stop))
        print(stop.run_dir.resume_hint())
        return stop.exit_code
    if request.stop_after == "build":
        for failure in outcome.build_failures:
            progress.fail("build", f"{failure.env_id}: {failure.message}")
        return BuildError.exit_code if outcome.build_failures else 0
    total, results, failed = progress.elapsed(), outcome.results, outcome.failed
    progress("done", f"{len(results) - len(failed)}/{len(results)} cells ok; wall {total:.1f}s, "
                     f"inside containers {outcome.harness_s:.1f}s, overhead "
                     f"{total - outcome.harness_s:.1f}s")
    for r in failed:
        progress.fail("failed", f"{r.get('cell')}: {r.get('status')}: {r.get('reason')}")
    if outcome.report_path is not None:
        print(f"Report: {outcome.report_path}")
    else:
        print(f"Results: {outcome.run_dir.results_dir}")
    return CellsFailed.exit_code if failed else 0


def cmd_render(args: argparse.Namespace, progress: Progress) -> int:
    plan = config.load_plan(_matrix_path(args), only=args.only, skip=args.skip)
    pipeline.check_templates(plan)  # no half-filled run directory on a template error
    run_dir = create_run_dir(REPORTS_ROOT, out=args.out)
    pipeline.render_all(plan, run_dir, progress)
    print(f"Dockerfiles: {run_dir.dockerfiles_dir}")
    return 0


def cmd_list(args: argparse.Namespace, progress: Progress) -> int:
    """No engine is contacted: a tag also hashes its base image's id, which only the engine
    knows, so each environment shows its build context id and its base instead."""
    plan = config.load_plan(_matrix_path(args), only=args.only, skip=args.skip)
    ids = pipeline.context_ids(plan)
    for env in plan.environments:
        print(f"{env.id}\tcontext {ids[env.id]} + base {env.base.image}")
        for cell in plan.cells:
            if cell.environment.id == env.id:
                print(f"  {cell.id}")
    print(f"{len(plan.environments)} environments, {len(plan.cells)} cells; baseline "
          f"{plan.baseline}")
    print("Image tags hash the context and the base image's id: `nox -s build` prints them.")
    return 0


def cmd_lock(args: argparse.Namespace, progress: Progress) -> int:
    request = pipeline.Request(matrix=_matrix_path(args), reports_root=REPORTS_ROOT,
                               only=args.only, skip=args.skip, out=args.out,
                               rebuild=args.rebuild, stop_after="build")
    print(f"Lock: {pipeline.lock(request, progress)}")
    return 0


def cmd_report(args: argparse.Namespace, progress: Progress) -> int:
    run_dir = open_run_dir(args.run_dir)
    print(f"Report: {pipeline.write_report(run_dir, progress)}")
    return 0


def cmd_compare(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.compare import compare

    mapping = dict(args.mapping)
    if len(mapping) < len(args.mapping):
        raise ConfigError("--map names an environment of run A twice: give each ENV_A once.")
    result = compare(args.run_a, args.run_b, args.out, mapping=mapping or None,
                     allow_different_hardware=args.allow_different_hardware)
    for pair in result.parity_failures:
        progress.warn("parity", f"{pair.b} (B) computes different outputs from {pair.a} (A)")
    print(f"Comparison: {result.path}")
    return 0


def cmd_clean(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.containers import MANAGED
    from envmatrix.engine import Engine

    engine = Engine.connect()
    containers = engine.remove_labelled_containers(dict(MANAGED))
    removed = engine.remove_labelled_images(dict(MANAGED), include_bases=args.bases)
    progress("clean", f"removed {containers} container(s) and {removed} image(s)")
    return 0


COMMANDS: dict[str, Any] = {
    "matrix": cmd_pipeline, "run": cmd_pipeline, "build": cmd_pipeline,
    "render": cmd_render, "list": cmd_list, "lock": cmd_lock, "report": cmd_report,
    "compare": cmd_compare, "clean": cmd_clean,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ctrl-C and SIGTERM both take the interrupt path (containers removed, results kept), also
    # when a script started us in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    progress = Progress()
    started = time.monotonic()
    try:
        return int(COMMANDS[args.command](args, progress))
    except EnvmatrixError as err:
        progress.fail("error", str(err))
        return err.exit_code
    except KeyboardInterrupt:
        progress.fail("stop", f"interrupted after {time.monotonic() - started:.1f}s")
        return 130


if __name__ == "__main__":
    sys.exit(main())
