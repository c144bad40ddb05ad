"""Result files (docs/result-schema.md): classify a cell's outcome, merge, write, load.

The harness writes the measurement part inside the container; the host adds `host` and has
the last word on `status`: what the engine saw (timeout, OOM flag, a signal, the exit code)
beats what the harness claimed. Every status carries evidence in `host` and a one-line reason.

Loading a run's results (`load_results`) is strict about what it cannot interpret and
explicit about what no longer applies:
- a file that is not JSON or has an unknown `schema` raises RunDirError naming the file:
  numbers from another format must never be read as ours;
- with the resolved plan given, a result whose `host.config_hash` differs from the cell's
  current hash is *stale*: it is replaced by a `skipped` result whose reason says so and
  how to re-measure, and its numbers are dropped (the original status and hash stay in
  `host.stale`). A plan cell without a file becomes `skipped` ("not run"). So the report
  always has one row per cell and never mixes numbers of two configurations.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from envmatrix.errors import RunDirError
from envmatrix.grammar import PROVIDER_NAMES
from envmatrix.rundir.layout import RunDir, atomic_write_json
from envmatrix.rundir.plan import Cell, Measure, ResolvedPlan
from envmatrix.rundir.resultfile import SCHEMA, Result, ResultLike, host_of
from envmatrix.toolwords import clean

KNOWN_SCHEMAS = frozenset({SCHEMA})
STATUSES = (
    "ok",
    "error",
    "build_failed",
    "crashed",
    "oom",
    "timeout",
    "no_result",
    "no_gpu",
    "interrupted",
    "host_unreachable",
    "skipped",
    "env_mismatch",  # measured, but the image's installed set is not its pins or its lock
)
# Keys of a result, in the order the schema documents them; absent ones are null.
RESULT_KEYS = (
    "schema", "status", "reason", "log_tail", "cell", "environment", "workload", "backend",
    "harness_version", "started_at", "finished_at", "provider", "model", "settings",
    "repeats", "summary", "outputs", "fingerprint", "host",
)  # fmt: skip
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 6000
REASON_CHARS = 400
NOT_RUN = "not run: the run stopped before this cell"
RESUME_HINT = "re-measure it with `nox -s matrix -- --resume <run_dir>`"


class OutcomeLike(Protocol):
    """What classification needs from engine.ContainerOutcome (kept free of docker imports)."""

    @property
    def exit_code(self) -> int | None: ...
    @property
    def oom_killed(self) -> bool: ...
    @property
    def timed_out(self) -> bool: ...


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    flat = " ".join(clean(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def log_tail(text: str | None, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last lines of a log as plain text, capped in size: enough to see a traceback's end.

    Colour codes and progress-bar redraws are dropped (`toolwords.clean`): they are noise in a
    report and would be counted as lines.
    """
    if not text:
        return None
    tail = "\n".join(clean(text).rstrip().split("\n")[-lines:])
    return tail[-LOG_TAIL_CHARS:] or None


def last_log_line(text: str | None) -> str | None:
    """The last non-blank line: for a Python failure, the exception and its message."""
    for line in reversed(clean(text or "").split("\n")):
        if line.strip():
            return line.strip()
    return None


def signal_of(exit_code: int | None) -> str | None:
    """The signal name behind an exit code (128+N from the engine, -N from subprocess)."""
    if exit_code is None:
        return None
    number = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 160 else 0
    if number <= 0:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def read_harness_file(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The harness's result file: (document, None), or (None, what is wrong with it)."""
    if not path.is_file():
        return None, "the harness wrote no result file"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"the harness's result file is not valid JSON ({one_line(str(err), 120)})"
    if not isinstance(doc, dict):
        return None, "the harness's result file holds no JSON object"
    if doc.get("schema") not in KNOWN_SCHEMAS:
        return None, f"the harness's result file has schema {doc.get('schema')!r}, not {SCHEMA!r}"
    if doc.get("status") not in STATUSES:
        return None, f"the harness's result file has an unknown status {doc.get('status')!r}"
    return doc, None


def classify(
    outcome: OutcomeLike,
    harness: dict[str, Any] | None,
    problem: str | None,
    *,
    timeout_s: float,
    memory_limit: str | None,
    log: str | None = None,
) -> tuple[str, str | None]:
    """(status, reason) of a finished container; the engine's evidence comes first."""
    last = last_log_line(log)
    said = f": {last}" if last else ""
    if outcome.timed_out:
        return "timeout", (
            f"no result within the {timeout_s:g} s limit; the container was stopped "
            f"(raise measure.timeout_s if the cell is just slow)"
        )
    if outcome.oom_killed:
        return "oom", (
            f"killed by the out-of-memory killer at the {memory_limit} memory limit "
            f"(raise measure.memory_limit)"
        )
    if outcome.exit_code is None:
        return "interrupted", "stopped before it finished (interrupted)"
    sig = signal_of(outcome.exit_code)
    if sig:
        why = " without the OOM flag: killed from outside" if sig == "SIGKILL" else ""
        return "crashed", f"killed by {sig} (exit code {outcome.exit_code}){why}{said}"
    if outcome.exit_code != 0:
        if harness is not None and harness.get("status") not in (None, "ok"):
            return str(harness["status"]), _harness_reason(harness)
        return "error", f"the harness exited with code {outcome.exit_code}{said}"
    if harness is None:
        return "no_result", f"exited with code 0 but {problem or 'no result was read'}"
    if harness.get("status") == "ok":
        return "ok", None
    return str(harness["status"]), _harness_reason(harness)


def _harness_reason(harness: dict[str, Any]) -> str:
    reason = harness.get("reason")
    return one_line(str(reason)) if reason else f"the harness reported {harness.get('status')}"


def _skeleton(cell_id: str, environment: str | None, workload: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    doc.update(schema=SCHEMA, cell=cell_id, environment=environment, workload=workload)
    return doc


def _provider_part(cell: Cell) -> dict[str, Any]:
    return {
        "requested": PROVIDER_NAMES.get(cell.provider, cell.provider),
        "options": dict(cell.provider_options),
        "available": None,
        "active": None,
        "fallback": None,
    }


def _settings_part(cell: Cell, measure: Measure | None) -> dict[str, Any] | None:
    """What the harness would have been asked to do: so failures show their settings too."""
    if measure is None:
        return None
    measure = cell.measure_for(measure)
    wl = cell.workload
    return {
        "warmup": measure.warmup,
        "min_iterations": measure.min_iterations,
        "min_time_s": measure.min_time_s,
        "repeats": measure.repeats,
        "threads": measure.threads,
        "seed": wl.seed,
        "shapes": {name: list(dims) for name, dims in wl.shapes},
        "values": dict(wl.values),
        "inputs_file": wl.inputs,
        "provider_options": dict(cell.provider_options),
        **({"session": cell.knobs.session_dict} if cell.knobs.session else {}),
        **({"batch": wl.batch} if wl.batch is not None else {}),
        **({"concurrency": cell.knobs.concurrency} if cell.knobs.concurrency else {}),
    }


def finalize_result(
    harness_json: dict[str, Any] | None,
    *,
    cell: Cell,
    measure: Measure | None,
    status: str,
    reason: str | None,
    log_tail: str | None,
    host: dict[str, Any],
) -> dict[str, Any]:
    """The final result: the harness's document (if any) plus the host's verdict and part.

    `status`/`reason` are the host's (see `classify`) and override the harness's. Labels are
    taken from the plan's cell, so a result can always be matched to its cell. A summary is
    kept only for ok results: numbers of a failed cell must not reach a comparison.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    doc = _skeleton(cell.id, cell.environment.id, cell.workload.name)
    doc.update({k: v for k, v in (harness_json or {}).items() if v is not None})
    doc.update(
        schema=SCHEMA,
        status=status,
        reason=None if status == "ok" else one_line(reason or f"status {status}"),
        log_tail=None if status == "ok" else log_tail,
        cell=cell.id,
        environment=cell.environment.id,
        workload=cell.workload.name,
    )
    doc["backend"] = doc["backend"] or cell.workload.backend
    doc["provider"] = doc["provider"] or _provider_part(cell)
    doc["settings"] = doc["settings"] or _settings_part(cell, measure)
    if status != "ok":
        doc["summary"] = None
    doc["host"] = _host_part(cell, measure, host)
    doc["started_at"] = doc["started_at"] or doc["host"].get("started_at")
    doc["finished_at"] = doc["finished_at"] or doc["host"].get("finished_at")
    return doc


def _host_part(cell: Cell, measure: Measure | None, host: dict[str, Any]) -> dict[str, Any]:
    part = dict(host)
    if measure is not None:
        part.setdefault("config_hash", cell.config_hash(measure))
    part.setdefault("requested_packages", cell.environment.package_dict)
    for key in ("exit_code", "oom_killed", "timed_out", "signal", "duration_s"):
        part.setdefault(key, None)
    return part


def failure_result(
    cell: Cell,
    status: str,
    reason: str,
    log_tail: str | None,
    host: dict[str, Any],
    *,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """A result for a cell that produced no harness file (build failed, crash, timeout...)."""
    return finalize_result(
        None, cell=cell, measure=measure, status=status, reason=reason,
        log_tail=log_tail, host=host,
    )  # fmt: skip


def write_result(run_dir: RunDir, result: ResultLike) -> Path:
    """Write results/<cell>.json atomically; returns its path."""
    path = run_dir.result_path(str(result["cell"]))
    atomic_write_json(path, result)
    return path


def read_result(path: Path) -> Result:
    """One result file, refused (RunDirError) when it is not a result we can interpret."""
    return from_json(_parsed(path), path)


def as_document(result: Result) -> dict[str, Any]:
    """A result read back, as the plain document the running stage completes and writes
    again (a resumed cell kept, a host's machine stamped on it): a copy, typed loosely."""
    return dict(result)


def from_json(doc: object, source: Path | str) -> Result:
    """A result loaded elsewhere (a result file's JSON, a list in results.json), as a typed
    Result: refused like `read_result` refuses a file, `source` naming where it came from."""
    if not _is_result(doc):
        raise _refusal(doc, source)
    return doc


def _parsed(path: Path) -> object:
    try:
        doc: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunDirError(
            f"{path} is not a readable result ({one_line(str(err), 120)}): delete it and "
            f"{RESUME_HINT}"
        ) from err
    return doc


def _is_result(doc: object) -> TypeGuard[Result]:
    """A result this envmatrix can interpret: a known schema (numbers from another format must
    never be read as ours), a known status and a cell (else the file is damaged)."""
    return (isinstance(doc, dict) and doc.get("schema") in KNOWN_SCHEMAS
            and doc.get("status") in STATUSES and bool(doc.get("cell")))


def _refusal(doc: object, source: Path | str) -> RunDirError:
    """What `_is_result` refused in `doc`, and what to do about it."""
    if not isinstance(doc, dict) or doc.get("schema") not in KNOWN_SCHEMAS:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        return RunDirError(
            f"{source} has result schema {found!r}; this envmatrix reads "
            f"{', '.join(sorted(KNOWN_SCHEMAS))}: report it with the envmatrix that made it, "
            f"or delete it and {RESUME_HINT}"
        )
    return RunDirError(
        f"{source} has no valid status/cell (status {doc.get('status')!r}): the file is "
        f"damaged; delete it and {RESUME_HINT}"
    )


@dataclass(frozen=True)
class Identity:
    """What a kept result must have been measured with to stand for its cell on --resume.

    The config hash says the settings are the same; the two file hashes say the model and
    the input tensors are the same bytes (a regenerated zoo model or a changed .npz changes
    the numbers without changing any setting).
    """

    config_hash: str
    model_sha256: str
    inputs_sha256: str
    # sha256 of each tensor in the inputs file, sorted, as the harness digests them: checks
    # results written before the host recorded `inputs_sha256` (the harness always recorded
    # what it fed)
    tensor_sha256s: tuple[str, ...] = ()


def reuse_check(
    run_dir: RunDir, cell: Cell, expected: Identity, image_tag: str | None = None
) -> tuple[Result | None, str | None]:
    """For --resume: (the cell's earlier result, None) when it is ok and still applies, else
    (None, why not); why is None when there is no earlier result at all.

    "Still applies": the same config hash, model sha256 and inputs sha256 (all three must be
    recorded and equal) and, when both are known, the same image tag (a content hash).
    """
    path = run_dir.result_path(cell.id)
    if not path.is_file():
        return None, None
    try:
        doc = read_result(path)
    except RunDirError as err:
        return None, f"its result file is unreadable ({one_line(str(err), 120)})"
    why = _not_reusable(doc, expected, image_tag)
    return (None, why) if why else (doc, None)


def _not_reusable(doc: ResultLike, expected: Identity, image_tag: str | None) -> str | None:
    host = host_of(doc)
    if doc.get("status") != "ok":
        return f"its earlier result is {doc.get('status')}"
    if host.get("config_hash") != expected.config_hash:
        return (f"config hash {host.get('config_hash')} in its result, {expected.config_hash} "
                "in the run's plan (the cell's settings differ)")
    model = recorded_model_sha256(doc)
    if model != expected.model_sha256:
        return _hash_change("model", model, expected.model_sha256)
    inputs = recorded_inputs_sha256(doc)
    fed = _tensor_shas(doc)
    if inputs is None and fed and expected.tensor_sha256s:
        if fed != expected.tensor_sha256s:
            return ("the input tensors its harness fed differ from the inputs file prepared "
                    "now (the inputs changed since it was measured)")
    elif inputs != expected.inputs_sha256:
        return _hash_change("inputs", inputs, expected.inputs_sha256)
    if image_tag and host.get("image_tag") and host["image_tag"] != image_tag:
        return f"it ran in image {host['image_tag']}, the environment's image is now {image_tag}"
    return None


def _hash_change(what: str, recorded: str | None, now: str) -> str:
    if recorded is None:
        return f"its result records no {what} sha256, so it cannot be checked"
    return (f"{what} sha256 {recorded[:12]} in its result, {now[:12]} prepared now (the "
            f"{what} file changed since it was measured)")


def recorded_model_sha256(doc: ResultLike) -> str | None:
    """The model file's sha256 as the harness read it inside the container, else the host's."""
    harness = (doc.get("model") or {}).get("sha256")
    return str(harness or host_of(doc).get("model_sha256") or "") or None


def recorded_inputs_sha256(doc: ResultLike) -> str | None:
    """The inputs file's sha256 as the host recorded it when it mounted the file."""
    return host_of(doc).get("inputs_sha256") or None


def _tensor_shas(doc: ResultLike) -> tuple[str, ...]:
    """The harness's own digests of the tensors it fed, sorted (empty when it recorded none)."""
    fed = doc.get("inputs")
    if not isinstance(fed, list):
        return ()
    return tuple(sorted(str((t or {}).get("sha256")) for t in fed if isinstance(t, dict)))


def load_results(run_dir: RunDir, resolved: ResolvedPlan | None) -> list[Result]:
    """Every result of a run; with the resolved plan, exactly one per plan cell, in plan order.

    Unknown schemas raise RunDirError; stale and missing cells become `skipped` (module doc).
    """
    files = sorted(run_dir.results_dir.glob("*.json"))
    found = {doc["cell"]: doc for doc in map(read_result, files)}
    if resolved is None:
        return [found[key] for key in sorted(found)]
    loaded: list[Result] = []
    for cell in resolved.plan.cells:
        doc = found.get(cell.id)
        recorded = resolved.config_hash(cell)
        if doc is None:
            loaded.append(_placeholder(cell, recorded, NOT_RUN))
        elif host_of(doc).get("config_hash") != recorded:
            loaded.append(_stale(doc, cell, recorded))
        else:
            loaded.append(doc)
    return loaded


def _placeholder(cell: Cell, config_hash: str, reason: str,
                 stale: dict[str, Any] | None = None) -> Result:
    doc = _skeleton(cell.id, cell.environment.id, cell.workload.name)
    doc.update(
        status="skipped",
        reason=f"{reason}; {RESUME_HINT}",
        backend=cell.workload.backend,
        provider=_provider_part(cell),
        host={"config_hash": config_hash, "exit_code": None, "oom_killed": None,
              "timed_out": None, "signal": None, "duration_s": None},
    )  # fmt: skip
    if stale is not None:
        doc["host"]["stale"] = stale
    return from_json(doc, cell.id)


def _stale(doc: ResultLike, cell: Cell, config_hash: str) -> Result:
    old_hash = host_of(doc).get("config_hash")
    reason = (
        f"stale: measured with config hash {old_hash}, but the plan now says "
        f"{config_hash} (the cell's settings changed)"
    )
    return _placeholder(cell, config_hash, reason,
                        stale={"status": doc.get("status"), "config_hash": old_hash})
