"""Replay: measure cells of an old run again, in its exact images, on its exact inputs.

`replay` reads an old run directory (never writes into it), keeps the cells `--only`/`--skip`
select, checks that every image the run recorded is in the engine (by id: exactly those
images; `--image ENV=REF` names another one, e.g. rebuilt from the run's lock), creates a new
run directory with the old plan and a byte-identical copy of the old inputs (sha256 checked),
measures the cells (the old measure settings, interleaved rounds), writes the new run's report
and then the comparison old (A) vs new (B) with `compare` (two runs: unpaired). Nothing is
built or pulled. The stages are the pipeline's, in its order (`pipeline.execute`): `ReplayJob`
only opens the new run from the old one, copies its inputs and hands in the chosen images.

The headline says per cell, with the verdict machinery of `stats.measured_comparison` called
exactly as `compare` calls it (unpaired: two runs share no rounds), in the four outcomes:
"N% slower" / "N% faster" when the verdict says so; "measures the same" when it is
"equivalent" (the whole interval lies within ±verdict.equivalence); "inconclusive" otherwise,
with the interval it reached (or too few rounds for one), and a change that is real but below
the minimum effect said as such.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from envmatrix import pipeline, schedule
from envmatrix.analysis.stats import (
    EQUIVALENT,
    FASTER,
    SLOWER,
    RatioCI,
    VerdictRules,
    below_min_effect,
    check_validity,
    finite_interval,
    measured_comparison,
)
from envmatrix.config import expand
from envmatrix.errors import ConfigError, RunDirError
from envmatrix.progress import Progress
from envmatrix.report.compare import Comparison, compare
from envmatrix.report.markdown import fmt_pct
from envmatrix.reproduce.archive import MissingImages, sha256_file
from envmatrix.rundir.layout import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    create_run_dir,
)
from envmatrix.rundir.plan import ImageRecord, Plan, ResolvedPlan
from envmatrix.rundir.resultfile import Result
from envmatrix.rundir.run import Run, load_run
from envmatrix.running import runner
from envmatrix.running.engine import Engine, EngineLike

Say = Callable[[str, str], None]
REPLAY_SCHEMA = "envmatrix.replay/1"


@dataclass(frozen=True)
class Request:
    old_run: Path
    reports_root: Path
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    out: Path | None = None
    images: dict[str, str] = field(default_factory=dict)  # env id -> image ref to use instead


@dataclass(frozen=True)
class ChosenImage:
    """The image a replayed environment runs in (what runner.BuiltImageLike needs)."""

    tag: str
    image_id: str
    recorded_id: str | None
    source: str  # "recorded" | "--image"
    size_bytes: int | None = None


@dataclass(frozen=True)
class CopiedWorkload:
    """A workload's files copied from the old run (what runner.PreparedLike needs)."""

    model_path: Path
    torchscript_path: Path | None
    inputs_path: Path


@dataclass(frozen=True)
class Headline:
    cell: str
    text: str
    verdict: str | None  # the verdict machinery's word; None when not compared
    ratio: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass
class Outcome:
    run_dir: RunDir
    results: list[dict[str, Any]]
    headlines: list[Headline]
    comparison: Comparison | None = None
    report_path: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("status") != "ok"]


# ---------------------------------------------------------------- selection and images


def select_plan(plan: Plan, only: Sequence[str], skip: Sequence[str]) -> Plan:
    """The old plan with only the selected cells (globs on cell or environment ids)."""
    cells = expand.select(plan.cells, list(only) or None, list(skip) or None)
    env_ids = {c.environment.id for c in cells}
    envs = tuple(e for e in plan.environments if e.id in env_ids)
    baseline = plan.baseline if plan.baseline in env_ids else envs[0].id
    return dataclasses.replace(
        plan, cells=tuple(cells), environments=envs, baseline=baseline,
        bases=tuple(b for b in plan.bases if any(e.base.name == b.name for e in envs)),
        workloads=tuple(w for w in plan.workloads if any(c.workload.name == w.name
                                                         for c in cells)))


def drop_unbuilt(plan: Plan, recorded: Mapping[str, ImageRecord],
                 overrides: Mapping[str, str], say: Say) -> Plan:
    """Without the environments the old run had no image for (failed builds), saying so."""
    unbuilt = [e.id for e in plan.environments
               if not (recorded.get(e.id) or ImageRecord(None, None)).image_id
               and e.id not in overrides]
    if not unbuilt:
        return plan
    if len(unbuilt) == len(plan.environments):
        raise ConfigError(f"the old run has no image for {', '.join(unbuilt)} (their builds "
                          "failed): nothing to replay. Fix: select other cells, or pass "
                          "--image ENV=TAG with an image built since.")
    say("replay", f"skipping {', '.join(unbuilt)}: the old run has no image for it (its "
                  "build failed)")
    return select_plan(plan, [], unbuilt)


def choose_images(engine: EngineLike, plan: Plan, recorded: Mapping[str, ImageRecord],
                  overrides: Mapping[str, str], run_path: Path) -> dict[str, ChosenImage]:
    """The exact image of every selected environment; MissingImages names all that lack one."""
    unknown = sorted(set(overrides) - {e.id for e in plan.environments})
    if unknown:
        raise MissingImages(f"--image names {', '.join(unknown)}, not an environment of the "
                            f"selected cells ({', '.join(e.id for e in plan.environments)}).")
    chosen, missing = {}, []
    for env in plan.environments:
        record = recorded.get(env.id) or ImageRecord(None, None)
        ref = overrides.get(env.id) or record.image_id
        found = engine.image_id(ref) if ref else None
        if found is None:
            missing.append(f"{env.id}: " + (f"{ref} ({record.tag})" if ref else
                                             "the run recorded no image (its build failed)"))
            continue
        source = "--image" if env.id in overrides else "recorded"
        chosen[env.id] = ChosenImage(record.tag or str(ref), found, record.image_id, source,
                                     engine.image_size(found))
    if missing:
        raise MissingImages(
            f"{len(missing)} image(s) of {run_path} are not in the engine:\n  "
            + "\n  ".join(missing) + "\nFix: restore the run's archive (`nox -s restore -- "
            "ARCHIVE`), or rebuild the environment from the run's lock (docs/reproduce.md) "
            "and pass `--image ENV=TAG`.")
    return chosen


# ---------------------------------------------------------------- inputs


def copy_inputs(old: RunDir, new: RunDir, plan: Plan,
                old_results: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, CopiedWorkload],
                                                                       dict[str, str]]:
    """Copy each workload's folder from the old run; every byte checked by sha256.

    Returns the workloads for the runner and {relative file: sha256}. The model each old
    result recorded must be the file copied (else the old run's inputs were changed since).
    """
    hashes: dict[str, str] = {}
    copied = {}
    for workload in plan.workloads:
        source, target = old.workload_inputs(workload.name), new.workload_inputs(workload.name)
        if not source.is_dir():
            raise RunDirError(f"{source} is missing: the old run's inputs are gone, so its "
                              "cells cannot be fed the same bytes. Restore the run directory.")
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            want, got = sha256_file(path), sha256_file(dest)
            if want != got:
                raise RunDirError(f"copying {path} gave other bytes (sha256 {got}, source "
                                  f"{want}): check the disk and replay again.")
            hashes[dest.relative_to(new.path).as_posix()] = got
        copied[workload.name] = _workload_files(target, workload.backend)
        _check_model(copied[workload.name], workload.name, plan, old_results)
    return copied, hashes


def _workload_files(folder: Path, backend: str) -> CopiedWorkload:
    onnx = sorted(folder.glob("*.onnx"))
    torchscript = sorted(folder.glob("*.pt"))
    inputs_path = folder / "inputs.npz"
    if not inputs_path.is_file() or not (onnx or torchscript):
        raise RunDirError(f"{folder} lacks inputs.npz or a model (.onnx/.pt): the old run's "
                          "inputs are incomplete.")
    model = onnx[0] if onnx else torchscript[0]
    ts = torchscript[0] if backend == "torch" and torchscript else None
    return CopiedWorkload(model, ts, inputs_path)


def _check_model(files: CopiedWorkload, workload: str, plan: Plan,
                 old_results: Mapping[str, Mapping[str, Any]]) -> None:
    loaded = files.torchscript_path or files.model_path
    digest = sha256_file(loaded)
    for cell in plan.cells:
        recorded = ((old_results.get(cell.id) or {}).get("model") or {}).get("sha256")
        if cell.workload.name == workload and recorded and recorded != digest:
            raise RunDirError(
                f"{loaded.name} of workload {workload} has sha256 {digest}, but cell {cell.id} "
                f"recorded {recorded}: the old run's inputs were changed after it ran.")


# ---------------------------------------------------------------- headlines


def headline_phrase(verdict: str, ratio: float, low: float, high: float,
                    min_effect: float, equivalence: float) -> str:
    """The verdict in the issue's words (module docstring)."""
    if verdict == SLOWER:
        return f"measures {(ratio - 1.0) * 100:.0f}% slower"
    if verdict == FASTER:
        return f"measures {(1.0 - ratio) * 100:.0f}% faster"
    margin = f"±{equivalence * 100:g}%"
    if verdict == EQUIVALENT:
        return f"measures the same (equivalent within {margin}: the whole interval lies within it)"
    if not finite_interval(low, high):
        return "is inconclusive (too few rounds for an interval)"
    reached = f"between {fmt_pct(low)} and {fmt_pct(high)}"
    if below_min_effect(RatioCI("p50", ratio, low, high), min_effect):
        return (f"is inconclusive ({fmt_pct(ratio)}, below the {min_effect:.0%} that counts, "
                f"{reached}: too wide to say it measures the same within {margin})")
    return (f"is inconclusive ({reached}: too wide to say it measures the same within "
            f"{margin})")


def cell_headline(old: Run, new: Run, ida: str, idb: str, origin: str,
                  rules: VerdictRules) -> Headline:
    """One line for one replayed cell, from the same call `compare` makes for its row."""
    ra, rb = old.results.get(ida) or {}, new.results.get(idb) or {}
    va, vb = check_validity(ra, rules), check_validity(rb, rules)
    if not (va.valid and vb.valid):
        why = [f"recorded: {r}" for r in va.reasons] + [f"replayed: {r}" for r in vb.reasons]
        return Headline(idb, f"{idb}: {origin}, not compared: {'; '.join(why)}", None)
    res = measured_comparison(f"A:{ida}", ra, f"B:{idb}", rb, rules)
    p50 = res["ratios"]["p50"]
    phrase = headline_phrase(res["verdict"], p50.ratio, p50.low, p50.high, rules.min_effect,
                             rules.equivalence)
    finite = p50.bounded
    interval = f"[{fmt_pct(p50.low)}, {fmt_pct(p50.high)}]" if finite else "[no interval]"
    figures = (f"p50 {p50.base * 1e3:.3f} -> {p50.cand * 1e3:.3f} ms, {fmt_pct(p50.ratio)} "
               f"{interval}")
    # replay.json is strict JSON: an interval without finite bounds is null at both ends
    return Headline(idb, f"{idb}: {origin}, this cell {phrase} ({figures})", res["verdict"],
                    p50.ratio, p50.low if finite else None, p50.high if finite else None)


def origin_words(image: ChosenImage) -> str:
    if image.source == "--image":
        return f"rebuilt today ({image.tag})"
    return f"same image {image.image_id.split(':')[-1][:12]}, measured again"


def headlines(old: Run, new: Run, images: Mapping[str, ChosenImage],
              rules: VerdictRules | None = None) -> list[Headline]:
    rules = rules or VerdictRules()
    out = []
    for cell in new.plan.cells:
        if cell.id in old.results:
            origin = origin_words(images[cell.environment.id])
            out.append(cell_headline(old, new, cell.id, cell.id, origin, rules))
    return out


# ---------------------------------------------------------------- the replay


@dataclass
class ReplayJob(pipeline.Job):
    """The pipeline's stages for a replay: the new run opened from the old one (its plan, the
    images chosen before any run directory), its inputs copied, its images the chosen ones,
    all on this machine's engine."""

    request: Request
    old: RunDir
    resolved: ResolvedPlan
    plan: Plan  # the selected cells
    chosen: dict[str, ChosenImage]
    old_results: Mapping[str, Result]  # the old run's, by cell id
    adjust: runner.Adjust | None = None
    hashes: dict[str, str] = field(default_factory=dict)  # the copied inputs, once copied
    local = True  # the images are in this engine, whichever hosts measured the old run

    def open(self, progress: Progress) -> pipeline.Opened:
        new = create_run_dir(self.request.reports_root, out=self.request.out)
        progress("replay", f"new run directory {new.path}")
        pipeline.write_resolved(self.plan, new)
        return pipeline.Opened(self.plan, new)

    def inputs(self, plan: Plan, run_dir: RunDir, progress: Progress) -> dict[str, Any]:
        prepared, self.hashes = copy_inputs(self.old, run_dir, plan, self.old_results)
        progress("inputs", f"{len(self.hashes)} file(s) copied from the old run, sha256 "
                           "identical")
        return dict(prepared)

    def images(self, engine: EngineLike, plan: Plan, *, build_dir: Path,
               progress: schedule.Progress) -> dict[str, Any]:
        for env_id, image in self.chosen.items():
            progress("image", f"{env_id}: {image.image_id[:19]} ({image.source}); nothing is "
                              "built")
        return dict(self.chosen)

    def record(self, opened: pipeline.Opened, spread: schedule.Spread) -> None:
        pipeline.write_resolved(opened.plan, opened.run_dir, spread.images(),
                                replay=self.summary(opened.run_dir))

    def resume_hint(self, run_dir: RunDir) -> str | None:
        return None  # a resume would make new inputs: replay again

    def summary(self, new: RunDir) -> dict[str, Any]:
        """What was replayed, recorded in the new run (matrix.resolved.yaml, replay.json)."""
        where = os.path.relpath(self.old.path.resolve(), new.path.resolve())  # no machine paths
        return {"schema": REPLAY_SCHEMA, "of_run": self.old.run_id, "of_run_dir": where,
                "of_envmatrix_version": self.resolved.run.envmatrix_version,
                "only": list(self.request.only), "skip": list(self.request.skip),
                "images": {env: {"recorded": i.recorded_id, "used": i.image_id,
                                 "source": i.source} for env, i in self.chosen.items()},
                "inputs_sha256": dict(self.hashes)}


def replay(request: Request, progress: Progress | None = None,
           adjust: runner.Adjust | None = None) -> Outcome:
    say = progress or Progress(Console(quiet=True))
    recorded = load_run(request.old_run)  # the old run, read once for everything below
    old, resolved = recorded.run_dir, recorded.resolved
    plan = select_plan(resolved.plan, request.only, request.skip)
    plan = drop_unbuilt(plan, resolved.run.images, request.images, say)
    say("replay", f"{len(plan.cells)} cell(s) of run {old.run_id} ({old.path})")
    # Refused before any run directory exists when an image is missing.
    chosen = choose_images(Engine.connect(), plan, resolved.run.images, request.images,
                           old.path)
    job = ReplayJob(request, old, resolved, plan, chosen, recorded.results, adjust)
    ran = pipeline.execute(job, say)
    new = ran.run_dir
    # The new run as its report read it; read here only when the report stage did not run.
    measured = ran.report_data.source if ran.report_data else load_run(new)
    outcome = Outcome(new, ran.results, [], report_path=ran.report_path)
    outcome.comparison = compare(recorded, measured, new.path / f"compare-{old.run_id}.md",
                                 allow_different_hardware=True)
    outcome.headlines = headlines(recorded, measured, chosen)
    write_summary(new, old, outcome, job.summary(new))
    return outcome


def write_summary(new: RunDir, old: RunDir, outcome: Outcome, record: dict[str, Any]) -> None:
    """replay.md (the headlines, for people) and replay.json (the same, for tools)."""
    comparison = outcome.comparison
    diff = list(comparison.hardware_differences) if comparison else []
    lines = [f"# Replay of run {old.run_id}", "",
             f"Cells of {old.path} measured again in run {new.run_id}, in the recorded images "
             "on byte-identical inputs; verdicts of the comparison "
             f"({comparison.path.name if comparison else '-'}): unpaired across runs.", ""]
    lines += [f"> Different hardware: {d}" for d in diff] + ([""] if diff else [])
    lines += [f"- {h.text}" for h in outcome.headlines]
    atomic_write_text(new.path / "replay.md", "\n".join(lines) + "\n")
    atomic_write_json(new.path / "replay.json", {
        **record, "run_id": new.run_id, "hardware_differences": diff,
        "comparison": comparison.path.name if comparison else None,
        "cells": [{"cell": h.cell, "headline": h.text, "verdict": h.verdict, "ratio": h.ratio,
                   "low": h.low, "high": h.high} for h in outcome.headlines]})
