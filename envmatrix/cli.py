"""`python -m envmatrix COMMAND`: what the nox sessions call.

Exit codes: 0 all cells ok; 10 the run finished but some cells failed; 11 the report holds a
verdict that --fail-on names (wins over 10); 2 bad matrix.yaml or arguments; 3 engine problem
(replay/archive: an image of the run is not in the engine); 4 base image; 5 build; 6 run
directory (or archive: missing, damaged); 7 compare: the runs were measured on different
hardware; 130 interrupted. Each is the `exit_code` of an exception of envmatrix.errors, which
the commands raise and `exit_code` below maps.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from envmatrix import __version__, gate, pipeline
from envmatrix.config import expand
from envmatrix.config import load as config
from envmatrix.errors import (
    BuildError,
    CellsFailed,
    ConfigError,
    EnvmatrixError,
    GateFailed,
    Interrupted,
)
from envmatrix.progress import Progress
from envmatrix.rundir.layout import create_run_dir, open_run_dir

if TYPE_CHECKING:  # the report module imports the plotting stack: only when a report is made
    from envmatrix.analysis.rundata import RunData

REPORTS_ROOT = Path("reports")
DEFAULT_MATRIX = Path("matrix.yaml")


def _plan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", type=Path, default=None,
                        help="the matrix file (default: matrix.yaml); with --resume the "
                             "run's own plan is used and a file given must match it")
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
                                 "failed cells run again (--only/--skip pick which of its "
                                 "cells run now; its plan never changes)")


def _verdict_args(parser: argparse.ArgumentParser, *, fail_on: bool = True) -> None:
    """--alpha, --min-effect (and --fail-on): over matrix.yaml's `verdict:` (envmatrix.gate)."""
    parser.add_argument("--alpha", type=gate.alpha_value, default=None,
                        help="verdict error rate: intervals are (1 - alpha) intervals "
                             "(default: the matrix's verdict.alpha, else 0.05)")
    parser.add_argument("--min-effect", type=gate.min_effect_value, default=None,
                        metavar="FRACTION", help="smallest p50 change that counts, e.g. 0.05 "
                                                 "(default: verdict.min_effect, else 0.02)")
    parser.add_argument("--equivalence", type=gate.equivalence_value, default=None,
                        metavar="FRACTION", help="\"equivalent\" when the whole interval lies "
                                                 "within ±FRACTION (default: "
                                                 "verdict.equivalence, else 0.05)")
    parser.add_argument("--error-rate", type=gate.error_rate_value, default=None,
                        metavar="comparison|run",
                        help="alpha per comparison, or for all the run's verdicts together "
                             "(Holm) (default: verdict.error_rate, else comparison)")
    if fail_on:
        parser.add_argument("--fail-on", type=gate.fail_on_words, default=None,
                            metavar="slower,parity,invalid",
                            help="exit 11 when the report has a verdict of these kinds "
                                 "(default: verdict.fail_on; 'none' turns it off)")


def _overrides(args: argparse.Namespace) -> gate.Overrides:
    return gate.Overrides(repeats=getattr(args, "repeats", None), alpha=args.alpha,
                          min_effect=args.min_effect, fail_on=getattr(args, "fail_on", None),
                          equivalence=args.equivalence, error_rate=args.error_rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="envmatrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"envmatrix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    matrix_p = sub.add_parser("matrix", help="all stages: bases, builds, cells, report")
    run_p = sub.add_parser("run", help="bases, builds and cells, no report")
    for measuring in (matrix_p, run_p):
        _run_args(measuring)
        measuring.add_argument("--repeats", type=gate.repeats_value, default=None, metavar="N",
                               help="measure N processes per cell instead of measure.repeats "
                                    "(in N rounds unless measure.rounds divides N)")
    _verdict_args(matrix_p)
    _verdict_args(run_p, fail_on=False)  # no report, nothing to gate; recorded in the plan
    _run_args(sub.add_parser("build", help="bases and image builds only"), build_only=True)
    render_p = sub.add_parser("render", help="render the Dockerfiles, build nothing")
    _plan_args(render_p)
    render_p.add_argument("--out", type=Path, default=None, metavar="DIR")
    _plan_args(sub.add_parser("list", help="check the matrix (dry run): every cell id and "
                                           "build context id"))
    schema_p = sub.add_parser("schema", help="print the JSON schema of matrix.yaml for editors")
    schema_p.add_argument("--write", action="store_true",
                          help="write it to the committed schema file instead")
    _run_args(sub.add_parser("lock", help="build from the pins and write <matrix>.lock.yaml"),
              build_only=True)
    report_p = sub.add_parser("report", help="rebuild the report of a run directory")
    report_p.add_argument("run_dir", type=Path, nargs="?", default=REPORTS_ROOT / "latest")
    _verdict_args(report_p)
    compare_p = sub.add_parser("compare", help="compare two run directories")
    compare_p.add_argument("run_a", type=Path)
    compare_p.add_argument("run_b", type=Path)
    compare_p.add_argument("--out", type=Path, default=None, metavar="FILE")
    compare_p.add_argument("--allow-different-hardware", action="store_true",
                           help="compare runs whose CPUs differ (flagged in the report)")
    _verdict_args(compare_p)
    compare_p.add_argument("--map", action="append", default=[], type=_env_pair,
                           metavar="ENV_A=ENV_B", dest="mapping",
                           help="match environment ENV_A of run A with ENV_B of run B "
                                "(repeatable); other environments match by name")
    _reproduce_args(sub)
    push_p = sub.add_parser("push", help="push a run's images to a registry (registry.json)")
    push_p.add_argument("run_dir", type=Path, nargs="?", default=REPORTS_ROOT / "latest")
    push_p.add_argument("--registry", default=None, metavar="HOST[:PORT][/PREFIX]",
                        help="where to push (default: $ENVMATRIX_REGISTRY); credentials come "
                             "from your docker config (`docker login`)")
    clean_p = sub.add_parser("clean", help="remove the containers and images envmatrix made")
    clean_p.add_argument("--bases", action="store_true",
                         help="also remove base images that envmatrix bootstrapped")
    return parser


def _reproduce_args(sub: Any) -> None:
    """archive / restore / replay (envmatrix.reproduce.archive, envmatrix.reproduce.replay;
    docs/reproduce.md)."""
    archive_p = sub.add_parser("archive", help="save a run's images and bases with checksums")
    archive_p.add_argument("run_dir", type=Path)
    archive_p.add_argument("--out", type=Path, default=None, metavar="DIR",
                           help="the archive folder (default: <run-dir>.archive beside it)")
    restore_p = sub.add_parser("restore", help="verify and load an archive's images")
    restore_p.add_argument("archive", type=Path)
    replay_p = sub.add_parser("replay", help="measure cells of a run again in its images")
    replay_p.add_argument("run_dir", type=Path)
    replay_p.add_argument("--only", action="append", default=[], metavar="GLOB",
                          help="replay only cells or environments whose id matches (repeatable)")
    replay_p.add_argument("--skip", action="append", default=[], metavar="GLOB")
    replay_p.add_argument("--out", type=Path, default=None, metavar="DIR",
                          help="the new run directory (default: reports/<run-id>)")
    replay_p.add_argument("--image", action="append", default=[], type=_env_pair,
                          metavar="ENV=REF", dest="images",
                          help="run environment ENV in image REF instead of the recorded one "
                               "(e.g. rebuilt from the run's lock)")


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
    """The matrix file: as given, else matrix.yaml."""
    return DEFAULT_MATRIX if args.matrix is None else Path(args.matrix)


STOP_AFTER: dict[str, pipeline.Stop] = {"matrix": "report", "run": "run", "build": "build"}


def cmd_pipeline(args: argparse.Namespace, progress: Progress) -> int:
    """matrix / run / build: pipeline.run up to where the command stops."""
    resume = getattr(args, "resume", None)
    # --resume finishes the run's own plan; a --matrix given with it is only checked against it
    request = pipeline.Request(
        matrix=args.matrix if resume else _matrix_path(args), reports_root=REPORTS_ROOT,
        only=args.only, skip=args.skip, out=args.out, rebuild=args.rebuild, resume=resume,
        stop_after=STOP_AFTER[args.command],
        overrides=_overrides(args) if args.command != "build" else gate.Overrides())
    outcome = pipeline.run(request, progress)
    if request.stop_after == "build":
        for failure in outcome.build_failures:
            progress.fail("build", f"{failure.env_id}: {failure.message}")
        if outcome.build_failures:
            raise BuildError(f"{len(outcome.build_failures)} image build(s) failed")
        return 0
    total, results, failed = progress.elapsed(), outcome.results, outcome.failed
    progress("done", f"{len(results) - len(failed)}/{len(results)} cells ok; wall {total:.1f}s, "
                     f"inside containers {outcome.harness_s:.1f}s, overhead "
                     f"{total - outcome.harness_s:.1f}s")
    _say_failed(failed, progress)
    if outcome.report_data is None:
        print(f"Results: {outcome.run_dir.results_dir}")
    else:
        print(f"Report: {outcome.report_path}")
        _gate(outcome.report_data, request.overrides, progress)  # wins over failed cells
    _check_cells(results, failed)
    return 0


def _say_failed(failed: list[dict[str, Any]], progress: Progress) -> None:
    for r in failed:
        progress.fail("failed", f"{r.get('cell')}: {r.get('status')}: {r.get('reason')}")


def _check_cells(results: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
    if failed:
        raise CellsFailed(f"{len(failed)} of {len(results)} cell(s) gave no numbers")


def _gate(data: RunData, overrides: gate.Overrides, progress: Progress) -> None:
    """After a report: the job summary for GitHub, then the gate (GateFailed)."""
    _step_summary(data, progress)
    fail_on = gate.verdict_settings(data.plan.verdict, overrides).fail_on
    _check_gate(gate.run_findings(data, fail_on), fail_on, progress)


def _check_gate(findings: list[str], fail_on: Sequence[str], progress: Progress) -> None:
    """Each finding, then GateFailed when there are any."""
    for line in findings:
        progress.fail("gate", line)
    if findings:
        raise GateFailed(f"--fail-on {','.join(fail_on)}: {len(findings)} finding(s); "
                         f"exit {GateFailed.exit_code}")


def _step_summary(data: RunData, progress: Progress) -> None:
    from envmatrix.report import summary as report

    try:
        gate.write_step_summary(report.section_summary(data))
    except OSError as err:  # a job summary is a convenience: never fail the run for it
        progress.warn("summary", f"could not append to ${gate.STEP_SUMMARY}: {err}")


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
                knobs = expand.knob_summary(cell)
                print(f"  {cell.id}" + (f"\t{knobs}" if knobs else ""))
    print(f"{len(plan.environments)} environments, {len(plan.cells)} cells; baseline "
          f"{plan.baseline}")
    print("Image tags hash the context and the base image's id: `nox -s build` prints them.")
    return 0


def cmd_schema(args: argparse.Namespace, progress: Progress) -> int:
    if args.write:
        config.SCHEMA_FILE.write_text(config.schema_text(), encoding="utf-8")
    else:
        sys.stdout.write(config.schema_text())
    return 0


def cmd_lock(args: argparse.Namespace, progress: Progress) -> int:
    request = pipeline.Request(matrix=_matrix_path(args), reports_root=REPORTS_ROOT,
                               only=args.only, skip=args.skip, out=args.out,
                               rebuild=args.rebuild, stop_after="build")
    print(f"Lock: {pipeline.lock(request, progress)}")
    return 0


def cmd_report(args: argparse.Namespace, progress: Progress) -> int:
    run_dir = open_run_dir(args.run_dir)
    overrides = _overrides(args)
    data = pipeline.write_report(run_dir, progress, overrides)
    print(f"Report: {run_dir.report_path}")
    _gate(data, overrides, progress)
    return 0


def cmd_compare(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.analysis.stats import rules_for
    from envmatrix.report.compare import compare
    from envmatrix.rundir.run import load_run

    mapping = dict(args.mapping)
    if len(mapping) < len(args.mapping):
        raise ConfigError("--map names an environment of run A twice: give each ENV_A once.")
    # Run B is the candidate: its matrix's verdict settings, under the command line's.
    run_b = load_run(args.run_b)  # read once: its settings here, its numbers in compare
    settings = gate.verdict_settings(run_b.plan.verdict, _overrides(args))
    result = compare(args.run_a, run_b, args.out, mapping=mapping or None,
                     allow_different_hardware=args.allow_different_hardware,
                     rules=rules_for(settings))
    for pair in result.parity_failures:
        progress.warn("parity", f"{pair.b} (B) computes different outputs from {pair.a} (A)")
    print(f"Comparison: {result.path}")
    fail_on = args.fail_on or ()  # compare gates only when asked on its command line
    _check_gate(gate.comparison_findings(result, fail_on), fail_on, progress)
    return 0


def cmd_push(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.reproduce import registry
    from envmatrix.running.engine import Engine

    target = args.registry or registry.default_registry()
    if not target:
        raise ConfigError(f"push needs a registry. Fix: --registry HOST[:PORT][/PREFIX], or set "
                          f"{registry.REGISTRY_VARIABLE}.")
    run_dir = open_run_dir(args.run_dir)
    print(f"Pushed: {registry.push_run(Engine.connect(), run_dir, target, progress)}")
    return 0


def cmd_clean(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.running.containers import MANAGED
    from envmatrix.running.engine import Engine

    engine = Engine.connect()
    containers = engine.remove_labelled_containers(dict(MANAGED))
    volumes = engine.remove_labelled_volumes(dict(MANAGED))  # remote-path hosts' leftovers
    removed = engine.remove_labelled_images(dict(MANAGED), include_bases=args.bases)
    progress("clean", f"removed {containers} container(s), {volumes} volume(s) and {removed} "
                      "image(s)")
    return 0


def cmd_archive(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.reproduce import archive
    from envmatrix.running.engine import Engine

    done = archive.archive_run(Engine.connect(), args.run_dir, args.out, progress)
    progress("done", f"{done.manifest['totals']['files']} tarball(s), "
                     f"{archive.mb(done.total_bytes)} in {done.seconds:.1f}s")
    print(f"Archive: {done.path}")
    return 0


def cmd_restore(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.reproduce import archive
    from envmatrix.running.engine import Engine

    done = archive.restore_archive(Engine.connect(), args.archive, progress)
    loaded = sum(1 for r in done.images if r.action == "loaded")
    progress("done", f"{loaded} image(s) loaded, {len(done.images) - loaded} already present, "
                     f"every id as recorded, in {done.seconds:.1f}s")
    print(f"Restore record: {done.path}")
    return 0


def cmd_replay(args: argparse.Namespace, progress: Progress) -> int:
    from envmatrix.reproduce import replay

    request = replay.Request(old_run=args.run_dir, reports_root=REPORTS_ROOT, only=args.only,
                             skip=args.skip, out=args.out, images=dict(args.images))
    outcome = replay.replay(request, progress)
    for line in outcome.headlines:
        print(line.text)
    _say_failed(outcome.failed, progress)
    if outcome.comparison is not None:
        print(f"Comparison: {outcome.comparison.path}")
    _check_cells(outcome.results, outcome.failed)
    return 0


COMMANDS: dict[str, Any] = {
    "matrix": cmd_pipeline, "run": cmd_pipeline, "build": cmd_pipeline,
    "render": cmd_render, "list": cmd_list, "schema": cmd_schema, "lock": cmd_lock,
    "report": cmd_report,
    "compare": cmd_compare, "push": cmd_push, "clean": cmd_clean,
    "archive": cmd_archive, "restore": cmd_restore, "replay": cmd_replay,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ctrl-C and SIGTERM both take the interrupt path (containers removed, results kept), also
    # when a script started us in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    progress = Progress()
    try:
        return int(COMMANDS[args.command](args, progress))
    except (EnvmatrixError, KeyboardInterrupt) as err:
        return exit_code(err, progress)


def exit_code(err: EnvmatrixError | KeyboardInterrupt, progress: Progress) -> int:
    """The one place an exception becomes the exit code its class carries (errors), its
    message said once under its stage."""
    if isinstance(err, Interrupted) and err.hint is not None:
        progress.fail(err.stage, str(err))
        print(err.hint)
        return err.exit_code
    if isinstance(err, (KeyboardInterrupt, Interrupted)):  # nothing to resume
        progress.fail(Interrupted.stage, f"interrupted after {progress.elapsed():.1f}s")
        return Interrupted.exit_code
    progress.fail(err.stage, str(err))
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
